"""MLPerf Tiny image classification ResNet-8 (``resnet_v1_eembc``) for CIFAR-10, 32x32x3.

Source: MLCommons Tiny benchmark, benchmark/training/image_classification/keras_model.py
(Banbury et al., "MLPerf Tiny Benchmark", NeurIPS 2021 datasets track, arXiv:2106.07597):
Conv 3x3 (16) + BN + ReLU; three residual stacks of two 3x3 convs with BN (16, 32, 64 filters;
stride 1, 2, 2), the second and third with a 1x1 strided conv on the shortcut; add, ReLU;
8x8 average pool; Dense 10 (softmax left out).

Differences from the Keras model: Keras' ``padding="same"`` with stride 2 pads only the bottom /
right; torch's ``padding=1`` pads both sides (same output size, the window shifted by one pixel).
The blocks are a user-written ``nn.Module`` class, as in torchvision's ResNets.
"""
from __future__ import annotations

from torch import nn

SOURCE = "MLPerf Tiny image_classification/keras_model.py (resnet_v1_eembc), arXiv:2106.07597"
TASK = "image classification (CIFAR-10)"


class Block(nn.Module):
    """Two 3x3 conv + BN, the shortcut a strided 1x1 conv when the shape changes; add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride) if (stride != 1 or cin != cout) else None
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(y + s)


class ResNet8(nn.Module):
    def __init__(self, widths=(16, 32, 64), n_classes: int = 10, pool: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stack1 = Block(widths[0], widths[0], 1)
        self.stack2 = Block(widths[0], widths[1], 2)
        self.stack3 = Block(widths[1], widths[2], 2)
        self.pool = nn.AvgPool2d(pool)
        self.fc = nn.Linear(widths[2], n_classes)

    def forward(self, x):
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def build(quick: bool = False):
    if quick:   # same topology, 4-8-8 filters on a 16x16 input (final map 4x4)
        return ResNet8((4, 8, 8), pool=4), (3, 16, 16)
    return ResNet8(), (3, 32, 32)
