"""fpq.calibrate: scale rules per method, NaN/Inf errors, progress bar; fpq.data split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fpq


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()


def _batches(n=3, scale=3.0):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(32, 4, generator=g) * scale for _ in range(n)]


def test_max_po2_scale_is_smallest_power_of_two_covering_the_max():
    q = fpq.convert(mlp(), "int8")
    data = _batches()
    fpq.calibrate(q, data, method="max", progress=False)
    tq = q.get_submodule("input_quant").fpq_output
    m = max(float(b.abs().max()) for b in data)
    s = float(tq.scale())
    assert s == 2.0 ** round(math.log2(s))
    assert s * 127 >= m > s * 127 / 2
    # the input quantizer then saturates nothing of the calibration data
    x = torch.cat(data)
    y = q.get_submodule("input_quant")(x)
    assert torch.equal(y, torch.from_numpy(fpq.quantize(x.numpy(), "int8", np.float32(s))))
    assert float((y - x).abs().max()) <= s / 2


def test_float_scale_maps_max_to_format_max():
    q = fpq.convert(mlp(), "e4m3", scale="float")
    data = _batches()
    fpq.calibrate(q, data, method="max", progress=False)
    s = float(q.get_submodule("input_quant").fpq_output.scale())
    m = max(float(b.abs().max()) for b in data)
    assert s == pytest.approx(m / 448, rel=1e-6)


def test_percentile_and_mse_choose_smaller_or_equal_scales():
    data = _batches(scale=1.0)
    data[0][0, 0] = 20.0   # one outlier: clipping it costs less than a coarse grid
    scales = {}
    for method in ("max", "percentile", "mse"):
        q = fpq.convert(mlp(), "int4")
        fpq.calibrate(q, data, method=method, percentile=99.0, progress=False)
        scales[method] = float(q.get_submodule("input_quant").fpq_output.scale())
        assert scales[method] == 2.0 ** round(math.log2(scales[method]))
    assert scales["percentile"] < scales["max"] and scales["mse"] < scales["max"]


def test_fixed_formats_keep_scale_one():
    q = fpq.convert(mlp(), "fixed<8,3>")
    fpq.calibrate(q, _batches(), progress=False)
    for _, _, tq in q.fpq_quantizers():
        if str(tq.fmt).startswith("fixed"):
            assert float(tq.scale().reshape(-1)[0]) == 1.0 and not tq.log2_scale.requires_grad


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_in_data_is_an_error_naming_the_batch(bad):
    q = fpq.convert(mlp(), "int8")
    data = _batches()
    data[2][5, 1] = bad
    with pytest.raises(ValueError, match=r"batch 2 contains 1 NaN/Inf"):
        fpq.calibrate(q, data, progress=False)


def test_bad_method_and_empty_data_and_tuples(capsys):
    q = fpq.convert(mlp(), "int8")
    with pytest.raises(ValueError, match="unknown calibration method"):
        fpq.calibrate(q, _batches(), method="kl")
    with pytest.raises(ValueError, match="no batches"):
        fpq.calibrate(q, [], progress=False)
    with pytest.raises(TypeError, match="fpq.convert"):
        fpq.calibrate(mlp(), _batches())
    # (inputs, targets) tuples work, and the progress bar reports on stderr
    fpq.calibrate(q, [(b, torch.zeros(len(b))) for b in _batches()], progress=True)
    assert "fpq.calibrate" in capsys.readouterr().err


def test_calibrated_model_changes_only_scales():
    m = mlp()
    q = fpq.convert(m, "int8")
    w = q.get_submodule("0").weight.clone()
    fpq.calibrate(q, _batches(), progress=False)
    assert torch.equal(q.get_submodule("0").weight, w)
    assert not q.training


def test_digits_split_fixed_and_offline():
    from fpq.data import load_digits_split
    a, b = load_digits_split(seed=0), load_digits_split(seed=0)
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    # pixels are k/16: exactly representable in fixed<8,3>
    x = a.x_test.numpy()
    assert np.array_equal(fpq.quantize(x, "fixed<8,3>"), x)
    assert torch.bincount(a.y_test).min() >= 43   # stratified
    assert a.flat().x_train.shape == (1347, 64)
    c = load_digits_split(seed=1)
    assert not torch.equal(a.y_test, c.y_test)
