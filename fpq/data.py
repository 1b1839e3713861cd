"""The digits data set (scikit-learn's bundled 8x8 handwritten digits): offline, fixed splits.

Used by the examples, the tests and the sweeps so that every accuracy figure refers to the same
held-out samples. Nothing downloads: the data ships inside scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TEST_FRACTION = 0.25


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor   # (N, 1, 8, 8) float32 in [0, 1] (pixel / 16: exact in 5 fraction bits)
    y_train: torch.Tensor   # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor

    def flat(self) -> "DigitsSplit":
        """The same split with images flattened to 64 features (for MLPs)."""
        return DigitsSplit(self.x_train.reshape(len(self.x_train), -1), self.y_train,
                           self.x_test.reshape(len(self.x_test), -1), self.y_test)

    def batches(self, batch_size: int = 64, train: bool = True, shuffle: bool = False, seed: int = 0):
        """A list of (x, y) batches (shuffled with a fixed seed when asked)."""
        x, y = (self.x_train, self.y_train) if train else (self.x_test, self.y_test)
        idx = torch.arange(len(x))
        if shuffle:
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        return [(x[idx[i:i + batch_size]], y[idx[i:i + batch_size]]) for i in range(0, len(x), batch_size)]


def load_digits_split(seed: int = 0, test_fraction: float = TEST_FRACTION) -> DigitsSplit:
    """Stratified train/test split of the 1797 digits; identical for identical arguments."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return DigitsSplit(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte))
