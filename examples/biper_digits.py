"""BiPer vs sign/STE binarization on the digits CNN (first and last layers int8, the rest binary).

Both variants start from the same float initialization, use the same policy (binary weights
with a per-output-channel po2 scale, binary activations, int8 input / first / last layer),
the same two-stage loop (``fpq.nn.biper.train_two_stage``: Adam, cosine decay, fresh optimizer
per stage) and the same epochs; only the weight binarizer differs:
  * BiPer: sign(sin(omega * w)), sine-surrogate gradient, stage 1 with sin(omega * w) weights,
    regularizer tau * mean(sin(omega * w)^2);
  * baseline: sign(w) with the clipped straight-through gradient (stage 1 is the same as 2).

    python examples/biper_digits.py [--quick] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fpq
from fpq.data import load_digits_split
from fpq.nn import biper

OMEGA = 32.0     # latent weights start in +-1/sqrt(fan_in) ~ +-0.08: omega*w spans about one period
TAU = 1e-4
LR = 3e-3


class BinaryDigitsCNN(nn.Module):
    """8x8 digits: conv(1->32) int8 | conv(32->64) bin | pool | conv(64->64) bin | pool | fc int8."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64 * 2 * 2, 10)

    def forward(self, x):
        x = self.conv1(x)                  # its binary output quantizer is the sign activation
        x = self.pool(self.conv2(x))       # 4x4
        x = self.pool(self.conv3(x))       # 2x2
        return self.fc(torch.flatten(x, 1))


def convert(model: nn.Module, method: str):
    kw = dict(omega=OMEGA) if method == "biper" else {}
    return fpq.convert(model, fmt="binary", inputs="int8", granularity="channel",
                       overrides=biper.end_layer_overrides(model, "int8"), method=method, **kw)


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def run_seed(data, seed: int, epochs: tuple) -> dict:
    torch.manual_seed(seed)
    init = BinaryDigitsCNN()
    calib = [x for x, _ in data.batches(256, train=True)]
    out = {}
    for method in ("ste", "biper"):
        q = convert(init, method)
        fpq.calibrate(q, calib, progress=False)
        t0 = time.time()
        biper.train_two_stage(q, lambda ep: data.batches(64, train=True, shuffle=True, seed=seed * 1000 + ep),
                              epochs, lr=LR, tau=TAU if method == "biper" else 0.0, seed=seed)
        out[method] = accuracy(q, data.x_test, data.y_test)
        out[method + "_s"] = time.time() - t0
        out[method + "_model"] = q
    return out


def main(quick: bool = False, seeds=(0, 1, 2), verbose: bool = True) -> dict:
    torch.set_num_threads(1)
    data = load_digits_split(seed=0)
    epochs = (1, 1) if quick else (8, 12)
    rows = {}
    for s in seeds:
        rows[s] = run_seed(data, s, epochs)
        if verbose:
            r = rows[s]
            print(f"seed {s}: sign/STE {r['ste']:.2f}%  BiPer {r['biper']:.2f}%  "
                  f"({r['ste_s']:.0f} s + {r['biper_s']:.0f} s)", flush=True)
    mean = {m: sum(rows[s][m] for s in seeds) / len(seeds) for m in ("ste", "biper")}
    if verbose:
        print(table(rows, mean, epochs))
    return {"seeds": rows, "mean": mean, "epochs": epochs}


def table(rows: dict, mean: dict, epochs: tuple) -> str:
    lines = [f"digits binary CNN (int8 first/last layer), {epochs[0]}+{epochs[1]} epochs, test accuracy %",
             f"{'seed':<6} {'sign/STE':>9} {'BiPer':>7}", "-" * 24]
    for s, r in rows.items():
        lines.append(f"{s:<6} {r['ste']:>9.2f} {r['biper']:>7.2f}")
    lines.append(f"{'mean':<6} {mean['ste']:>9.2f} {mean['biper']:>7.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1+1 epochs (a smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    main(quick=a.quick, seeds=tuple(a.seeds))
