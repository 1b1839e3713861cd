"""Suite-wide settings: the suite runs as 2 xdist workers on 2 cores, so each worker keeps torch
to one thread (two threads per worker oversubscribe the cores and slow QAT tests ~10x)."""
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency; keep formats tests runnable
    pass


@pytest.fixture(scope="session")
def load_script():
    """Import a script of the repository (``examples/qfx_digits.py``, ``tests/golden/make_golden.py``) as a
    module, by its path relative to the repository root."""
    def load(relpath):
        path = ROOT / relpath
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
