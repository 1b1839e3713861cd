"""examples/biper_digits.py --quick runs, learns, and its trained BiPer model exports bit-exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fpq
from fpq.nn import biper

pytestmark = pytest.mark.slow


def test_quick_run_trains_and_deploys(tmp_path, load_script):
    ex = load_script("examples/biper_digits.py")
    out = ex.main(quick=True, seeds=(0,), verbose=False)
    r = out["seeds"][0]
    assert set(out["mean"]) == set(ex.METHODS)
    assert r["biper"] > 30.0, f"BiPer after 1+1 epochs is at chance level: {r['biper']:.1f}%"
    q = r["biper_model"]
    assert [n for n, _, _ in biper.biper_quantizers(q)] == ["conv2", "conv3"]
    path = fpq.export_qonnx(q, tmp_path / "biper_digits.onnx", torch.zeros(1, 1, 8, 8))
    x = np.random.default_rng(0).uniform(-0.5, 1.5, (200, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y_torch = q(torch.from_numpy(x)).double().numpy()
    assert np.array_equal(np.asarray(fpq.emulate(path, x), dtype=np.float64), y_torch)
    assert "BiPer" in ex.table(out["seeds"], out["mean"], out["epochs"], out["channels"])
