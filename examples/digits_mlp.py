"""Digits MLP end to end: train float, convert to each format, calibrate (PTQ), QAT; print a table.

    python examples/digits_mlp.py [--quick]
"""
from __future__ import annotations

import os
import sys

from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import parser, study  # noqa: E402


class DigitsMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Dropout(0.1), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def main(quick: bool = False, seed: int = 0, verbose: bool = True) -> dict:
    return study(DigitsMLP, "digits MLP", quick=quick, seed=seed, verbose=verbose, qat_epochs=8)


if __name__ == "__main__":
    a = parser(__doc__).parse_args()
    main(quick=a.quick, seed=a.seed)
