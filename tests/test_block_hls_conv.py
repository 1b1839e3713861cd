"""Block-scaled convolutions in HLS (issue 20): fpq.to_hls of Conv1d / Conv2d networks converted with
mxfp4, nvfp4, mxfp8_e4m3, mxint8 builds ``FpqBlockConv`` (hls/fpq_block.h, fpq::block_conv: blocks of
input channels per pixel and kernel tap, as fpq.numerics.block_conv defines them) and its C-sim equals
the emulator and torch bit for bit (atol=0) on off-grid inputs over 16 binades with all-zero blocks
(pixels whose channels are all zero) and one huge outlier per sample. The maps have channel counts
that are not multiples of the block size (zero-padded blocks), padding, strides and a dilation, and the
last convolution's output is blocked along the map's width (fpq.convert's choice for a tensor no
convolution reads); the 2-D nets end in Flatten -> Linear. The default suite builds one small case; the 16-case matrix (format x Conv1d /
Conv2d x io_parallel / io_stream, 2,000 inputs each) runs with FPQ_FULL=1."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.emulate import Emulator
from fpq.hls.types import HLSUnsupportedError

FORMATS = ["mxfp4", "nvfp4", "mxfp8_e4m3", "mxint8"]


def net(nd: int, small: bool = False) -> nn.Sequential:
    """Conv (padding) -> ReLU -> strided Conv -> ReLU -> 1x1 Conv (2-D); Conv (dilation 2, padding)
    -> ReLU -> strided Conv (1-D). 36 and 34 channels: a whole block of 32 and a padded one. The 2-D
    net (and the small one) end in Flatten -> Linear: the map arrives channels-last, its blocks do not
    line up with the Linear's weight blocks (torch order), so fpq::block_dense pairs scales per product."""
    torch.manual_seed(nd)
    if small:
        return nn.Sequential(nn.Conv1d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 4, 2, stride=2), nn.ReLU(),
                             nn.Flatten(), nn.Linear(16, 5))
    if nd == 2:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 36, 3, stride=2), nn.ReLU(),
                             nn.Conv2d(36, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(20, 7))
    return nn.Sequential(nn.Conv1d(4, 34, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv1d(34, 6, 2, stride=2))


def inputs(shape: tuple, n: int) -> torch.Tensor:
    """Off-grid float32 inputs; every 7th sample has a row of all-zero pixels, every 11th a huge
    outlier (3e4), and every sample's scale is 2^-8 .. 2^7."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n,) + shape) * np.exp2(rng.integers(-8, 8, size=(n,) + (1,) * len(shape)))
    x[::7, :, 2] = 0.0
    x[::11, 1, shape[-1] // 2] = 3e4
    return torch.tensor(x, dtype=torch.float32)


def check(fmt: str, nd: int, io_type: str, tmp_path, n: int = 2000, small: bool = False):
    model = net(nd, small)
    shape = ((3, 8) if small else (4, 9)) if nd == 1 else (3, 6, 6)
    x = inputs(shape, n)
    q = fpq.convert(model, fmt=fmt)
    fpq.calibrate(q, [x[:256]], progress=False)
    prj = fpq.to_hls(q, tmp_path / "prj", x[:1], io_type=io_type)
    kinds = [L.class_name for L in prj.hls_model.get_layers()]
    assert kinds.count("FpqBlockConv") == (2 if small or nd == 1 else 3)
    assert kinds.count("FpqBlockDense") == (0 if nd == 1 and not small else 1)
    y = np.asarray(prj.predict(x.numpy()), dtype=np.float64)
    emu = Emulator(fpq.export.read_graph(fpq.export_qonnx(q, None, x[:1])))
    want = np.asarray(emu(x.numpy()), dtype=np.float64)
    assert y.shape == want.shape and np.array_equal(y, want), np.argwhere(y != want)[:5]
    assert np.array_equal(want, q(x).detach().double().numpy())
    assert np.abs(want).max() > 0 and (x.numpy() == 0).all(axis=1).any()   # outputs, and all-zero channel blocks
    return q, x, prj


def test_small_conv1d_mxfp4(tmp_path):
    """The default case (one build, ~25 s): C-sim == emulator == torch, and fpq.verify says EXACT."""
    q, x, prj = check("mxfp4", 1, "io_parallel", tmp_path, n=500, small=True)
    r = fpq.verify(q, x[:100], project=prj, qonnx_subset=8)
    assert r.status == "EXACT", (r.first_mismatch, r.notes)
    assert any("block-scaled convolution" in s and "reuse factor does not apply" in s for s in prj.info["notes"])
    # the cost model prices the circuit the project holds: the same exact accumulators, per output pixel
    import re
    text = (prj.outdir / "firmware" / "parameters.h").read_text()
    built = [int(a) for a in re.findall(r"typedef ap_int<(\d+)> acc_t;", text)]
    rows = {r["layer"]: r for r in fpq.estimate_cost(q, example_input=x[:1]).layers}
    macs = [rows[n] for n in ("conv1d_0", "conv1d_2", "linear_5")]
    assert built == [c["acc_bits"] for c in macs] and all(c["parts"]["elem_mult"] > 0 for c in macs)
    assert macs[0]["n_out"] == 6 * 8 and macs[1]["fan_in"] == 6 * 2
    assert any("linear_5" in s and "one scale pair per product" in s for s in prj.info["notes"])


def test_refusals_name_the_layer(tmp_path):
    """A convolution with block weights but scalar activations is refused before any file is written."""
    x = inputs((3, 8), 64)
    q = fpq.convert(net(1, small=True), weights="mxfp4", activations="int8")
    fpq.calibrate(q, [x], progress=False)
    with pytest.raises(HLSUnsupportedError, match=r"conv1d 'conv1d_0': HLS builds a block-scaled convolution whose "
                                                  r"input and weights are both block-scaled; it has input int8 and "
                                                  r"weights block<e2m1,e8m0,32,axis=1>"):
        fpq.to_hls(q, tmp_path / "f", x[:1])
    assert not (tmp_path / "f").exists()


@pytest.mark.full   # 25-60 s per build
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_matrix(fmt, nd, io_type, tmp_path):
    check(fmt, nd, io_type, tmp_path)
