"""Digits MLP end to end: train float, convert to each format, calibrate (PTQ), QAT; print a table.

    python examples/digits_mlp.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import run, table  # noqa: E402

from fpq.data import load_digits_split  # noqa: E402


class DigitsMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Dropout(0.1), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def main(quick: bool = False, seed: int = 0, verbose: bool = True) -> dict:
    torch.set_num_threads(1)  # tiny tensors: one thread beats two contended ones
    data = load_digits_split(seed=0)
    results = run(DigitsMLP, data, epochs=5 if quick else 30, qat_epochs=1 if quick else 8,
                  seed=seed, verbose=verbose)
    if verbose:
        print(table(results, "digits MLP (scikit-learn digits, 450 held-out images)"))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="few epochs (a smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(quick=a.quick, seed=a.seed)
