"""Shared training / evaluation loop of the digits examples (float, PTQ and QAT rows)."""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import fpq

# (row label, convert keyword arguments, QAT?)
ROWS = [
    ("int8 W8A8 PTQ", dict(fmt="int8"), False),
    ("fixed<8,3> PTQ", dict(fmt="fixed<8,3>"), False),
    ("fixed<8,3> QAT", dict(fmt="fixed<8,3>"), True),
    ("e4m3 PTQ", dict(fmt="e4m3"), False),
    ("e3m2 PTQ", dict(fmt="e3m2"), False),
    ("e2m1 W4A4 PTQ", dict(fmt="e2m1"), False),
    ("e2m1 W4A4 QAT", dict(fmt="e2m1"), True),
]


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def train(model, data, epochs: int, lr: float, seed: int, batch_size: int = 64, weight_decay: float = 0.0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    losses = []
    for ep in range(epochs):
        model.train()
        total = 0.0
        for xb, yb in data.batches(batch_size, train=True, shuffle=True, seed=seed * 1000 + ep):
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        sched.step()
        losses.append(total / len(data.x_train))
    model.eval()
    return losses


def run(make_model, data, *, epochs: int, qat_epochs: int, seed: int = 0, rows=ROWS, verbose=True):
    """Train float, then each row: convert, calibrate, optionally QAT; returns the results dict."""
    t0 = time.time()
    torch.manual_seed(seed)
    model = make_model()
    train(model, data, epochs, 3e-3, seed)
    results = {"float": accuracy(model, data.x_test, data.y_test)}
    if verbose:
        print(f"float: {results['float']:.2f}%  ({time.time() - t0:.1f} s)")
    calib = [x for x, _ in data.batches(256, train=True)]
    for label, kw, qat in rows:
        q = fpq.convert(model, **kw)
        fpq.calibrate(q, calib, progress=False)
        if qat:
            train(q, data, qat_epochs, 1e-3, seed + 1)
        results[label] = accuracy(q, data.x_test, data.y_test)
        if verbose:
            print(f"{label}: {results[label]:.2f}%  ({time.time() - t0:.1f} s)")
    results["seconds"] = time.time() - t0
    return results


def table(results: dict, title: str) -> str:
    base = results["float"]
    lines = [f"{title}", f"{'model':<18} {'accuracy %':>10} {'vs float':>9}", "-" * 39]
    for k, v in results.items():
        if k == "seconds":
            continue
        lines.append(f"{k:<18} {v:>10.2f} {v - base:>+9.2f}")
    lines.append(f"(total {results['seconds']:.1f} s)")
    return "\n".join(lines)


def study(make_model, title: str, *, quick: bool, seed: int, verbose: bool, qat_epochs: int) -> dict:
    """The digits example's whole job: train ``make_model`` in float, then every row of ``ROWS``;
    print the table."""
    from fpq.data import load_digits_split

    torch.set_num_threads(1)  # tiny tensors: one thread beats two contended ones
    data = load_digits_split(seed=0)
    results = run(make_model, data, epochs=5 if quick else 30, qat_epochs=1 if quick else qat_epochs,
                  seed=seed, verbose=verbose)
    if verbose:
        print(table(results, f"{title} (scikit-learn digits, 450 held-out images)"))
    return results


def parser(doc: str, quick_help: str = "few epochs (a smoke run)") -> argparse.ArgumentParser:
    """The arguments every digits example takes: --quick and --seed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def trained_float(make_model, *, quick: bool, seed: int):
    """The float model the cost and accumulator studies start from: (data, model, held-out
    accuracy %, calibration batches)."""
    from fpq.data import load_digits_split

    data = load_digits_split(seed=0)
    torch.manual_seed(seed)
    model = make_model()
    train(model, data, 4 if quick else 15, 3e-3, seed)
    calib = [x for x, _ in data.batches(256, train=True)]
    return data, model, accuracy(model, data.x_test, data.y_test), calib
