"""MLPerf Tiny keyword spotting DS-CNN (small), 49x10x1 MFCC input, 12 classes.

Source: MLCommons Tiny benchmark, benchmark/training/keyword_spotting/keras_model.py (``ds_cnn``),
after Zhang et al., "Hello Edge: Keyword Spotting on Microcontrollers", arXiv:1711.07128:
Conv 10x4 stride 2 (64) + BN + ReLU; four depthwise-separable blocks (depthwise 3x3 + BN + ReLU,
pointwise 1x1 (64) + BN + ReLU); average pool over the whole 25x5 map; Dense 12 (softmax left out;
dropout is the identity at inference and left out).

Differences from the Keras model: the first conv's ``padding="same"`` at stride 2 is asymmetric
in Keras (4 rows above, 5 below); here padding=(5, 1), the same 25x5 output.
"""
from __future__ import annotations

from torch import nn

SOURCE = "MLPerf Tiny keyword_spotting/keras_model.py (ds_cnn), arXiv:1711.07128"
TASK = "keyword spotting (Speech Commands v2, MFCC)"


def _dw_block(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding="same", groups=c), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(),
    )


def build(quick: bool = False):
    c = 8 if quick else 64
    model = nn.Sequential(
        nn.Conv2d(1, c, (10, 4), stride=2, padding=(5, 1)), nn.BatchNorm2d(c), nn.ReLU(),
        *[_dw_block(c) for _ in range(4)],
        nn.AvgPool2d((25, 5)),
        nn.Flatten(),
        nn.Linear(c, 12),
    )
    return model, (1, 49, 10)
