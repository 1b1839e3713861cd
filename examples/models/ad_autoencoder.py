"""MLPerf Tiny anomaly detection autoencoder (ToyADMOS / DCASE 2020 task 2 baseline): 640 inputs
(5 frames x 128 log-mel bins) -> 4 x (Dense 128 + BN + ReLU) -> Dense 8 + BN + ReLU ->
4 x (Dense 128 + BN + ReLU) -> Dense 640 (linear). The anomaly score is the reconstruction error.

Source: MLCommons Tiny benchmark, benchmark/training/anomaly_detection/keras_model.py
(``get_model``), arXiv:2106.07597; the DCASE 2020 task 2 baseline (Koizumi et al., arXiv:2006.05822).
"""
from __future__ import annotations

from torch import nn

SOURCE = "MLPerf Tiny anomaly_detection/keras_model.py, arXiv:2106.07597"
TASK = "anomaly detection (ToyADMOS, DCASE 2020 task 2)"


def _dense_bn(cin, cout):
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]


def build(quick: bool = False):
    n_in, h, z = (64, 16, 4) if quick else (640, 128, 8)
    layers = _dense_bn(n_in, h)
    for _ in range(3):
        layers += _dense_bn(h, h)
    layers += _dense_bn(h, z) + _dense_bn(z, h)
    for _ in range(3):
        layers += _dense_bn(h, h)
    layers += [nn.Linear(h, n_in)]
    return nn.Sequential(*layers), (n_in,)
