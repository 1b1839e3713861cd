"""Block-scaled formats in HLS (issue 20, item 5): fpq.to_hls of an MLP converted with mxfp4, nvfp4,
mxfp8_e4m3, mxint8 (and weights nvfp4 with mxfp8_e4m3 activations) builds fpq's block layers
(fpq.hls.blocks, hls/fpq_block.h), and its C-sim equals the emulator bit for bit (atol=0) on
2,000 off-grid inputs with all-zero blocks and a huge outlier, plus rows whose blocks lie 2^200
apart (sums float64 cannot hold: the emulator and the C-sim both round them to odd at 53 bits)
and rows of exact ties of the element grid (io_parallel; io_stream in the slow set). The MLP's hidden width 48 is not a multiple of the
block size 32: blocks are zero-padded, as fpq.numerics.blocks pads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fpq
from fpq.emulate import Emulator
from fpq.hls.types import HLSUnsupportedError
from test_block_convert import inputs, mlp


def converted(w_fmt, a_fmt, x):
    q = fpq.convert(mlp(), weights=w_fmt, activations=a_fmt)
    fpq.calibrate(q, [x[:256]], progress=False)
    return q


def hard_rows(a_fmt) -> torch.Tensor:
    """Rows the random inputs rarely hit: blocks 2^200 apart, and (e8m0 activations) elements exactly
    on the midpoints of the element grid next to a block maximum that fixes the scale."""
    x = inputs(64).numpy().astype(np.float64)
    x[:32, 40:] *= 2.0 ** 100
    x[:32, :32] *= 2.0 ** -100
    f = fpq.parse_format(a_fmt)
    if f.po2_scale:
        from fpq.numerics.block_hw import elem_grid
        mids = elem_grid(f, "test").mids
        rng = np.random.default_rng(5)
        for r in range(32, 64):
            j = int(rng.integers(-6, 6))
            row = rng.choice(mids, size=64) * rng.choice([-1.0, 1.0], size=64)
            row[0::32] = f.elem_max            # the block maximum: scale exponent 0
            x[r] = np.ldexp(row, j)
    return torch.tensor(x, dtype=torch.float32)


def check(w_fmt, a_fmt, tmp_path, n=2000, io_type="io_parallel"):
    x = inputs(n)
    q = converted(w_fmt, a_fmt, x)
    x = torch.cat([x, hard_rows(a_fmt)])
    assert np.array_equal(x.numpy().astype(np.float64), x.numpy())
    prj = fpq.to_hls(q, tmp_path / "prj", x[:1], io_type=io_type)
    assert any(L.class_name == "FpqBlockDense" for L in prj.hls_model.get_layers())
    y = np.asarray(prj.predict(x.numpy()), dtype=np.float64)
    emu = Emulator(fpq.export.read_graph(fpq.export_qonnx(q, None, x[:1])))
    want = np.asarray(emu(x.numpy()), dtype=np.float64)
    assert np.array_equal(y, want), np.argwhere(y != want)[:5]
    assert emu.block_inexact["linear_0"] > 0      # some sums needed the exact (round-to-odd) path
    assert np.array_equal(want, q(x).detach().double().numpy())
    return q, x, prj


def test_mixed_nvfp4_weights_mxfp8_activations(tmp_path):
    """One build (~25 s): NVFP4 weights (ue4m3 block scales, 16 values, fp32 tensor scale) with
    MXFP8 activations (e8m0, 32 values): the dot product pairs sub-blocks of gcd(16, 32) = 16."""
    assert 48 % 32 != 0   # the second layer's reduction axis is padded to whole blocks
    q, x, prj = check("nvfp4", "mxfp8_e4m3", tmp_path)
    r = fpq.verify(q, x[:300], project=prj)
    assert r.status == "EXACT", (r.first_mismatch, r.notes)
    assert "hls" in {row["path"] for row in r.table}
    assert any("linear_0: block-scaled" in n and "reuse factor does not apply" in n for n in prj.info["notes"])
    # the cost model prices the circuit the project holds: the same exact accumulators
    import re
    text = (prj.outdir / "firmware" / "parameters.h").read_text()
    built = [int(a) for a in re.findall(r"typedef ap_int<(\d+)> acc_t;", text)]
    rows = {r["layer"]: r for r in fpq.estimate_cost(q, example_input=x[:1]).layers}
    assert built == [rows["linear_0"]["acc_bits"], rows["linear_2"]["acc_bits"]]


def test_cost_names_the_block_operators():
    """fpq.estimate_cost prices a block model (no refusal): each block Linear's breakdown names the
    element multipliers, the per-block adder tree, the exponent adder and shifter into the exact
    accumulator; each block quantizer the max / exponent unit and the element rounding. Wider
    elements cost more; the E8M0 x E8M0 accumulator spans the scales' exponent range."""
    x = inputs(300)
    costs = {}
    for fmt in ("mxfp4", "mxfp8_e4m3", "nvfp4"):
        c = fpq.estimate_cost(converted(fmt, fmt, x), example_input=x[:1])
        rows = {r["layer"]: r for r in c.layers}
        lin, qz = rows["linear_0"], rows["quant_0"]
        assert {"elem_decode", "elem_mult", "block_tree", "scale_mult", "exp_add", "shifter", "accumulate", "bias",
                "round_to_odd"} <= set(lin["parts"]) and lin["parts"]["elem_mult"] > 0 and lin["parts"]["shifter"] > 0
        assert {"block_max", "scale", "thresholds", "elem_round"} == set(qz["parts"]) and min(qz["parts"].values()) > 0
        assert lin["lut"] == pytest.approx(sum(lin["parts"].values()), abs=1)
        assert "uncalibrated composition" in lin["approximate"] and any("block-scaled" in n for n in c.notes)
        costs[fmt] = (lin, c.total["lut"])
    assert costs["mxfp8_e4m3"][0]["parts"]["elem_mult"] > costs["mxfp4"][0]["parts"]["elem_mult"]
    assert costs["mxfp4"][0]["acc_bits"] > 2 * 127           # e8m0 x e8m0: a Kulisch accumulator
    assert costs["nvfp4"][0]["acc_bits"] < costs["mxfp4"][0]["acc_bits"] and \
        costs["nvfp4"][0]["parts"]["scale_mult"] > 0        # ue4m3 significands multiply
    q = converted("mxfp4", "mxfp4", x)      # io_stream: the same circuit, vectors in one packet each
    assert fpq.estimate_cost(q, example_input=x[:1], io_type="io_stream").total["lut"] == costs["mxfp4"][1]
    # one TypePlan: the QONNX file prices exactly as the model
    assert fpq.estimate_cost(fpq.export_qonnx(q, None, x[:1])).total == \
        fpq.estimate_cost(q, example_input=x[:1]).total


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e4m3", "mxint8"])
def test_format_matrix(fmt, tmp_path):
    check(fmt, fmt, tmp_path)


@pytest.mark.slow
def test_io_stream(tmp_path):
    check("nvfp4", "mxfp8_e4m3", tmp_path, io_type="io_stream")


def test_refusals_name_the_layer(tmp_path):
    x = inputs(8)
    q = converted("mxfp4", "mxfp4", x)
    with pytest.raises(HLSUnsupportedError, match=r"layers \['input_quant', 'linear_0', 'quant_0', 'linear_2', "
                                                  r"'quant_2'\] are block-scaled .* Latency or Resource strategy "
                                                  r"only; got strategy='distributed_arithmetic'"):
        fpq.to_hls(q, tmp_path / "s", x[:1], strategy="distributed_arithmetic")
    q = fpq.convert(mlp(), weights="nvfp4", activations="int8")
    fpq.calibrate(q, [x], progress=False)
    with pytest.raises(HLSUnsupportedError, match=r"linear 'linear_0': HLS builds a block-scaled Linear whose input "
                                                  r"and weights are both block-scaled; it has input int8 and weights "
                                                  r"block<e2m1,ue4m3,16>"):
        fpq.to_hls(q, tmp_path / "i", x[:1])
    assert not any(p.exists() for p in (tmp_path / "s", tmp_path / "i"))


@pytest.mark.full   # ~25 s each; tests/test_block_hls_cpp.py checks every mode's quantizer on its edges by default
@pytest.mark.parametrize("mode", ["ceil", "even", "rceil"])
def test_scale_rounding_modes(mode, tmp_path):
    """The run-time activation scale rounded with torchao's ceil / even / rceil (floor is OCP's): the
    C-sim equals the emulator (and torch), atol=0. rceil follows its definition where torchao 0.18
    is one code low (hls/fpq_block.h, tests/test_block_formats.py::test_rceil_corner_vs_torchao)."""
    check("mxfp4", f"block<e2m1,e8m0,32,rounding={mode}>", tmp_path, n=500)


def test_weight_codes_rebuild_the_weights():
    """The static weights as element codes x block scale codes (x tensor scale) give back exactly
    the values the emulator multiplies, also where re-quantizing them would pick another scale."""
    from fpq.numerics.block_hw import make_wire, weight_codes
    from fpq.numerics.blocks import block_quantize
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 40)) * np.exp2(rng.integers(-4, 4, size=(6, 1)))
    for fmt in ("mxfp4", "nvfp4", "mxfp8_e4m3", "mxint8"):
        f = fpq.parse_format(fmt)
        bq = block_quantize(w, f)
        st = 1.0 if f.po2_scale else bq.tensor_scale
        wire = make_wire(f, np.float32(st), fmt)
        idx, neg, codes = weight_codes(bq.values, wire, fmt)
        elem = np.where(neg, -1.0, 1.0) * wire.elem.pos[idx]
        s = np.repeat(wire.scale_vals[codes], f.k, axis=1)[:, :40] * st
        assert np.array_equal(elem * s, bq.values), fmt
