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


def pytest_collection_modifyitems(config, items):
    """Cases marked ``full`` (minutes each) run only with FPQ_FULL=1 (``make test-full``), so that
    ``make test`` stays under 20 minutes on CI's 2 cores."""
    if os.environ.get("FPQ_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="heavy case: run with FPQ_FULL=1 (make test-full)")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


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
