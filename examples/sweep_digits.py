"""Minifloat vs integer on the digits CNN: a format x PTQ-method sweep, Pareto fronts and a report.

    python examples/sweep_digits.py --demo     # int and one minifloat split per width, 4..8 bits,
                                               # W x A, one method (~100 points); a few minutes
    python examples/sweep_digits.py            # the paper-size grid: int and every minifloat
                                               # split of 3..8 bits, W x A, max and mse (1458 points)

Writes ``out/sweep_digits[_demo]/`` (results.csv / .json, cache.jsonl, plots, index.html) and
prints where. The trained float CNN is cached in ``out/digits_cnn_float.pt``; each point's
command in the report (``fpq sweep --model examples/sweep_digits.py:load_model ... --only ID``)
rebuilds it from that file.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _digits_common import train  # noqa: E402
from digits_cnn import DigitsCNN  # noqa: E402

FLOAT_EPOCHS = 15
MODEL_PATH = os.path.join("out", "digits_cnn_float.pt")
# one minifloat per width for the demo: the OCP / common splits (4: FP4, 6: FP6 e3m2, 8: FP8 e4m3)
DEMO_MINIFLOATS = ("e2m1", "e2m2", "e3m2", "e3m3", "e4m3")


def load_model(path: str = MODEL_PATH, epochs: int = FLOAT_EPOCHS, seed: int = 0) -> DigitsCNN:
    """The trained float digits CNN: loaded from ``path``, or trained (seeded) and saved there."""
    from fpq.data import load_digits_split
    model = DigitsCNN()
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    model = DigitsCNN()
    train(model, load_digits_split(seed=0), epochs, 3e-3, seed)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def main(demo: bool, out: str | None, workers: int, seed: int, progress: bool = True) -> str:
    import fpq.report as rep
    from fpq.report.pareto import markdown_front

    torch.set_num_threads(1)
    t0 = time.time()
    if demo:
        formats = [f"int{b}" for b in range(4, 9)] + list(DEMO_MINIFLOATS)
        methods = ("mse",)
    else:
        formats = rep.grid(range(3, 9), ("int", "minifloat"))
        methods = ("max", "mse")
    out = out or os.path.join("out", "sweep_digits_demo" if demo else "sweep_digits")
    spec = f"{os.path.relpath(os.path.join(HERE, 'sweep_digits.py'))}:load_model"
    load_model()  # train once here, before the workers load it from the file
    res = rep.sweep(spec, "fpq.data:load_digits_split", formats=formats, methods=methods, out=out,
                    workers=workers, seed=seed, verify_samples=32, progress=progress)
    page = rep.report(res, out, title=f"digits CNN: minifloat vs integer ({'demo grid' if demo else 'full grid'})")
    m = res.meta
    print(f"{m['points']} points ({m['computed']} computed, {m['cached']} cached), sweep {m['seconds']:.1f} s, "
          f"total {time.time() - t0:.1f} s with {workers} worker(s); float accuracy {m['float_accuracy']:.2f}%")
    for cost in ("lut", "dsp", "latency_ns"):
        print(f"\nPareto front, accuracy vs {cost}:\n{markdown_front(res.records, cost)}")
    not_exact = [r["id"] for r in res.records if r["exact"] is not True]
    print(f"bit-exact (torch == emulator == qonnx): {len(res.records) - len(not_exact)}/{len(res.records)}"
          + (f"; not exact or not verified: {not_exact}" if not_exact else ""))
    print(f"report: {os.path.abspath(page)}")
    return page


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", action="store_true", help="the small grid (a few minutes on 2 cores)")
    ap.add_argument("--out", default=None, help="output folder (default out/sweep_digits[_demo])")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()
    main(a.demo, a.out, a.workers, a.seed, progress=not a.no_progress)
