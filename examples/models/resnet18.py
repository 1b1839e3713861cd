"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385,
table 1), with torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``) so that a torchvision ``resnet18`` state dict loads into it.

Why written here: PyPI's torchvision does not import beside the pinned torch 2.13.0 wheel
("operator torchvision::nms does not exist"), so ``torchvision.models.resnet18`` is not available.
Structure (the paper's, as torchvision builds it): 7x7 conv stride 2 (64) + BN + ReLU, 3x3 max
pool stride 2 padding 1; four stages of two BasicBlocks (64, 128, 256, 512 filters; the first
block of stages 2-4 strided 2 with a 1x1 conv + BN on the shortcut); adaptive average pool to
1x1; Linear 1000. Convs have no bias (the BN that follows carries it).

``quick=True``: the same topology with widths / 8 (8, 16, 32, 64), 10 classes, 32x32 input; the full
model takes 224x224 (and any size >= 32: the pool is adaptive).
"""
from __future__ import annotations

from torch import nn

SOURCE = "He et al., CVPR 2016 (arXiv:1512.03385), table 1; torchvision.models.resnet18's module names"
TASK = "image classification (ImageNet)"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)
        self.relu2 = nn.ReLU()    # torchvision reuses self.relu; a second module keeps one op per module

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return self.relu2(y + s)


class ResNet18(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512), n_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, w in enumerate(widths, 1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], n_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def build(quick: bool = False):
    if quick:
        return ResNet18((8, 16, 32, 64), 10), (3, 32, 32)
    return ResNet18(), (3, 224, 224)
