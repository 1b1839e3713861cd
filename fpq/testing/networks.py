"""The small float networks of issue 4's conformance list, seeded, for tests, benchmarks and the
golden QONNX files (``tests/golden/``): MLP 16-64-32-32-5, a Conv1d net, a Conv2d+BN+pool net and a
residual block. Each builder returns ``(model, input_shape_without_batch)``.
"""
from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model, mean: float = 0.2, bias: float = 0.1):
    """Non-trivial statistics and affine parameters for every BatchNorm of ``model`` (so that
    folding them into the weights is exercised), drawn from torch's global generator."""
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_mean.uniform_(-mean, mean)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-bias, bias)
    return model


def mlp(dims=(16, 64, 32, 32, 5), seed: int = 0):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval(), (dims[0],)


def conv1d_net(seed: int = 0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                      nn.Conv1d(6, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3, 5))
    return m.eval(), (2, 16)


def conv2d_bn_net(seed: int = 0, groups: int = 2):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 8, 3, groups=groups), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
    randomize_batchnorm(m)
    return m.eval(), (1, 8, 8)


class ResidualBlock(nn.Module):
    def __init__(self, width=16, out=5):
        super().__init__()
        self.fc_in = nn.Linear(width, width)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, out)

    def forward(self, x):
        h = self.relu(self.fc_in(x))
        r = self.fc2(self.relu(self.fc1(h)))
        return self.head(self.relu(h + r))


def residual_block(seed: int = 0):
    torch.manual_seed(seed)
    return ResidualBlock().eval(), (16,)


class ConvResidual(nn.Module):
    """A small conv net with a residual add (4x4 input), for the QFX / multiplier-free / DA tests."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = x + torch.relu(self.c2(x))
        return self.fc(torch.flatten(x, 1))




class BasicBlock(nn.Module):
    """A ResNet basic block written as users write it: its own class, conv-bn-relu-conv-bn, skip."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(y)))


class Head(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


class NestedResNet(nn.Module):
    """Layers inside user-written submodule classes, two blocks whose layers share names
    (``layer1.0.conv1``, ``layer1.1.conv1``): the structure of ResNet-8 and torchvision's ResNets."""

    def __init__(self, c=4, side=4, out=5):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(c), BasicBlock(c))
        self.head = Head(c * side * side, out)

    def forward(self, x):
        return self.head(self.layer1(self.relu(self.stem(x))))


def nested_resnet(seed: int = 0):
    torch.manual_seed(seed)
    m = NestedResNet()
    randomize_batchnorm(m)
    return m.eval(), (1, 4, 4)


MODELS = {"mlp": mlp, "conv1d": conv1d_net, "conv2d_bn": conv2d_bn_net, "residual": residual_block,
          "nested_resnet": nested_resnet}
