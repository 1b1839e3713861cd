"""A zoo of public edge-ML architectures, written here from their published definitions (each
module's docstring names its source; the code is ours). Every entry gives a float ``nn.Module``,
its input shape (without the batch axis) and seeded calibration inputs of that shape.

None of these models' data sets ships offline (jet substructure, CIFAR-10, Speech Commands,
COCO visual wake words, ToyADMOS, ImageNet), so the zoo carries random-init weights and random (seeded)
calibration inputs: what it measures is exactness, resources and timing, not accuracy.

``ZOO[name](quick=False)`` -> ``ZooModel``; ``quick=True`` gives the same topology at reduced
widths (and, where the full input is large, a smaller input) for fast tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import ad_autoencoder, ds_cnn, jet_mlp, mobilenet_v1, resnet8, resnet18


@dataclass
class ZooModel:
    name: str
    model: nn.Module                # float, eval mode, seeded random init
    input_shape: tuple              # one sample, without the batch axis (channels first)
    source: str                     # where the architecture is defined
    task: str
    calib_scale: float = 1.0        # std of the random calibration inputs

    def calibration(self, n: int = 256, seed: int = 0) -> torch.Tensor:
        """``n`` seeded random inputs of the model's shape (normal, std ``calib_scale``)."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn((n,) + tuple(self.input_shape), generator=g) * self.calib_scale

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _entry(mod, name) -> Callable[..., ZooModel]:
    def make(quick: bool = False, seed: int = 0) -> ZooModel:
        torch.manual_seed(seed)
        model, shape = mod.build(quick=quick)
        return ZooModel(name, model.eval(), tuple(shape), mod.SOURCE, mod.TASK)
    make.__doc__ = mod.__doc__
    return make


ZOO = {
    "jet_mlp": _entry(jet_mlp, "jet_mlp"),
    "resnet8": _entry(resnet8, "resnet8"),
    "ds_cnn": _entry(ds_cnn, "ds_cnn"),
    "mobilenet_v1": _entry(mobilenet_v1, "mobilenet_v1"),
    "ad_autoencoder": _entry(ad_autoencoder, "ad_autoencoder"),
    "resnet18": _entry(resnet18, "resnet18"),   # torchvision's, written here (see its module)
}

# The MLPerf Tiny models (their hls4ml submissions ran on a Pynq-Z2, xc7z020).
MLPERF_TINY = ("resnet8", "ds_cnn", "mobilenet_v1", "ad_autoencoder")

__all__ = ["ZOO", "ZooModel", "MLPERF_TINY"]
