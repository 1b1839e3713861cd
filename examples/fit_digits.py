"""fpq.fit on the digits CNN: the io_type, strategy and per-layer reuse factors that fit 80% of
each part, with the II and latency they give (estimates; no training, random-init weights
calibrated on the digits images -- the cost depends on the formats and weight values only).

    python examples/fit_digits.py [--fmt int8] [--parts xc7z020 xczu3eg xcu250] [--budget 0.8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_cnn import DigitsCNN  # noqa: E402

import fpq  # noqa: E402
from fpq.data import load_digits_split  # noqa: E402
from fpq.fitting import FitError  # noqa: E402


def main(fmt: str = "int8", parts=("xc7z020", "xczu3eg", "xcu250"), budget: float = 0.8) -> dict:
    torch.manual_seed(0)
    data = load_digits_split(seed=0)
    q = fpq.convert(DigitsCNN().eval(), fmt=fmt)
    fpq.calibrate(q, [data.x_train[:256]], progress=False)
    out = {}
    for part in parts:
        t0 = time.time()
        try:
            res = fpq.fit(q, part=part, budget=budget)
            print(f"{res}\n  ({time.time() - t0:.1f} s)")
            out[part] = res
        except FitError as e:
            print(f"{part}: {e}")
            out[part] = e
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fmt", default="int8")
    ap.add_argument("--parts", nargs="+", default=["xc7z020", "xczu3eg", "xcu250"])
    ap.add_argument("--budget", type=float, default=0.8)
    a = ap.parse_args()
    main(a.fmt, a.parts, a.budget)
