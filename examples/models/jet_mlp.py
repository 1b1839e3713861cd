"""The hls4ml jet-tagging MLP: 16 high-level jet features -> 64 -> 32 -> 32 -> 5 classes (g, q,
W, Z, t), ReLU between layers; softmax is left out (argmax is unchanged).

Source: J. Duarte et al., "Fast inference of deep neural networks in FPGAs for particle physics",
JINST 13 P07027 (2018), arXiv:1804.06913, the "three hidden layers" model; hls4ml's tutorial
part 1 (fastmachinelearning/hls4ml-tutorial) builds the same Dense(64)-Dense(32)-Dense(32)-Dense(5).
"""
from __future__ import annotations

from torch import nn

SOURCE = "Duarte et al. 2018 (arXiv:1804.06913); hls4ml-tutorial part 1"
TASK = "jet tagging (hls4ml LHC jet data set)"


def build(quick: bool = False):
    h = (16, 8, 8) if quick else (64, 32, 32)
    model = nn.Sequential(
        nn.Linear(16, h[0]), nn.ReLU(),
        nn.Linear(h[0], h[1]), nn.ReLU(),
        nn.Linear(h[1], h[2]), nn.ReLU(),
        nn.Linear(h[2], 5),
    )
    return model, (16,)
