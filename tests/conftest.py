"""Suite-wide settings: the suite runs as 2 xdist workers on 2 cores, so each worker keeps torch
to one thread (two threads per worker oversubscribe the cores and slow QAT tests ~10x)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency; keep formats tests runnable
    pass
