"""MLPerf Tiny visual wake words MobileNetV1, width multiplier 0.25, 96x96x3 input, 2 classes.

Source: MLCommons Tiny benchmark, benchmark/training/visual_wake_words/vww_model.py (from Silicon
Labs' platform_ml_models mobilenet_v1_eembc.py), after Howard et al., "MobileNets",
arXiv:1704.04861: Conv 3x3 stride 2 (8) + BN + ReLU, then 13 depthwise-separable blocks
(depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU) with 16, 32, 32, 64, 64, 128 (x6), 256,
256 filters and stride 2 at the 2nd, 4th, 6th and 12th; average pool over the final 3x3 map;
Dense 2 (softmax left out). ReLU, not ReLU6, as in the MLPerf Tiny model.

Differences from the Keras model: ``padding="same"`` at stride 2 pads only bottom / right in
Keras; here padding=1 on both sides (same output sizes).
"""
from __future__ import annotations

from torch import nn

SOURCE = "MLPerf Tiny visual_wake_words/vww_model.py (mobilenet_v1, alpha 0.25), arXiv:1704.04861"
TASK = "visual wake words (COCO 2014 person / no person)"

# (pointwise filters at alpha 1, depthwise stride)
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def _conv_bn(cin, cout, k, stride=1, groups=1):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU()]


def build(quick: bool = False, alpha: float = 0.25):
    size = 32 if quick else 96
    if quick:
        alpha = 0.0625        # 2 .. 64 filters
    c = max(2, int(32 * alpha))
    layers = _conv_bn(3, c, 3, stride=2)
    for f, s in BLOCKS:
        out = max(2, int(f * alpha))
        layers += _conv_bn(c, c, 3, stride=s, groups=c) + _conv_bn(c, out, 1)
        c = out
    final = size // 32
    layers += [nn.AvgPool2d(final), nn.Flatten(), nn.Linear(c, 2)]
    return nn.Sequential(*layers), (3, size, size)
