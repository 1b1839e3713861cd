"""Digits CNN end to end: train float, convert to each format, calibrate (PTQ), QAT; print a table.

    python examples/digits_cnn.py [--quick]
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import parser, study  # noqa: E402


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))        # 4x4
        x = x + self.relu(self.bn3(self.conv3(x)))                # residual add
        x = self.pool(x)                                          # 2x2
        return self.fc(self.drop(torch.flatten(x, 1)))


def main(quick: bool = False, seed: int = 0, verbose: bool = True) -> dict:
    return study(DigitsCNN, "digits CNN", quick=quick, seed=seed, verbose=verbose, qat_epochs=10)


if __name__ == "__main__":
    a = parser(__doc__).parse_args()
    main(quick=a.quick, seed=a.seed)
