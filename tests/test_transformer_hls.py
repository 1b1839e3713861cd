"""Issue 22, the HLS half: a transformer encoder (fpq.testing.transformer: token Linear, pre-LayerNorm
blocks with two-head self-attention, GELU MLP, residual adds, mean over the tokens, a head) and a
token-id model (nn.Embedding + a learned positional embedding) through fpq.to_hls: C-sim == emulator
== torch bit for bit (atol=0) on 2,000 probe inputs (off-grid, rounding ties, saturating), every traced
layer included (fpq.verify with the project). The products of two activations (Q K^T, A V) are
fpq's FpqMatMul, the heads' reshapes and transposes cost no layer but the FpqPermute wiring in front
of a layer that needs torch order, the embedding is hls4ml's Embedding (a ROM of the table's values).

Default run: one small one-block encoder in the mixed format (int8 ends, e4m3 weights x e2m1
activations inside), io_parallel, and the refusals (no compile). FPQ_FULL=1: 2-block encoders at
int8, e4m3, e2m1 and mixed in io_parallel and io_stream, and the token-id model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.emulate import Emulator
from fpq.export import read_graph
from fpq.hls.types import HLSUnsupportedError
from fpq.testing.conformance import probe_inputs
from fpq.testing.transformer import EncoderBlock, tiny_encoder

FORMATS = {"int8": dict(fmt="int8"), "e4m3": dict(fmt="e4m3"), "e2m1": dict(fmt="e2m1"),
           # int8 first and last layers, e4m3 weights x e2m1 activations in the blocks
           "mixed": dict(weights="e4m3", activations="e2m1", inputs="int8",
                         overrides={"embed": "int8", "head": "int8"})}
N = 2000


def _calibrated(model, shape, seed=0, **kw):
    q = fpq.convert(model, **kw)
    g = torch.Generator().manual_seed(seed)
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=g) * 2], progress=False)
    return q.eval()


def _check(q, shape, outdir, io_type="io_parallel", qonnx_subset=2):
    """Build, compile and compare: C-sim == emulator == torch on N probe inputs (every traced layer)."""
    g = read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + shape)))
    x = probe_inputs(g, N, seed=3)
    assert not np.all(x == np.round(x))
    prj = fpq.to_hls(q, outdir, torch.zeros((1,) + shape), io_type=io_type)
    classes = [L.class_name for L in prj.hls_model.get_layers()]
    assert classes.count("FpqMatMul") == sum(op.kind == "matmul" for op in g) > 0
    y = prj.predict(x)
    want = Emulator(g)(x).astype(np.float64)
    assert np.array_equal(y, want), np.argwhere(y != want)[:5]
    assert np.array_equal(want, q(torch.from_numpy(x)).detach().numpy())
    assert np.unique(y).size > 8, "outputs collapsed: the probe does not exercise the network"
    rep = fpq.verify(q, x, project=prj, qonnx_subset=qonnx_subset)
    assert rep.exact, (rep.first_mismatch, rep.table)
    compared = {r["layer"] for r in rep.table if r["path"] == "hls" and r["compared"]}
    # each product checked inside the C-sim: its layer's trace, under the name of the op whose value it holds
    # (the quantizer fused into it, when a cast is)
    held = {prj.info["layer_ops"][op.name][0] for op in g if op.kind == "matmul"}
    assert held and held <= compared, (held, sorted(compared))
    return g, prj


@pytest.mark.slow
def test_small_mixed_encoder_csim_exact(tmp_path):
    """The default cell (one compile): d = 8, two heads of 4, 4 tokens, one block; the QK^T scale
    1/sqrt(4) = 1/2 stays on the matmul as a moved binary point."""
    shape = (4, 8)
    q = _calibrated(tiny_encoder(features=8, d=8, heads=2, blocks=1, classes=3), shape, **FORMATS["mixed"])
    g, prj = _check(q, shape, tmp_path / "prj")
    assert sorted(op.attrs["alpha_exp"] for op in g if op.kind == "matmul") == [-1, 0]
    # the heads' reshapes and transposes are no layer of their own: FpqPermute wires where needed
    classes = [L.class_name for L in prj.hls_model.get_layers()]
    assert "FpqPermute" in classes and "Transpose" not in classes


@pytest.mark.full
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_two_block_encoder_csim_exact(name, io_type, tmp_path):
    """The full matrix: a 2-block encoder (d = 16, 2 heads, 8 tokens, QK^T scale 1/4) per format and io type."""
    shape = (8, 16)
    q = _calibrated(tiny_encoder(blocks=2, scale=0.25), shape, **FORMATS[name])
    g, _ = _check(q, shape, tmp_path / "prj", io_type=io_type)
    assert sum(op.kind == "matmul" for op in g) == 4


class _TokenModel(nn.Module):
    """Token ids (B, 8) -> nn.Embedding(20, 16) + a learned positional embedding -> one block -> mean -> head."""

    def __init__(self):
        super().__init__()
        self.emb, self.pos = nn.Embedding(20, 16), nn.Parameter(torch.randn(1, 8, 16) * 0.5)
        self.block, self.head = EncoderBlock(16, 2, scale=0.25), nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.block(self.emb(ids) + self.pos).mean(1))


@pytest.mark.full
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_token_embedding_and_positional_embedding_csim_exact(io_type, tmp_path):
    """gather (hls4ml's Embedding, e4m3 table) and the positional add (a quantized constant): ids off the
    integer grid, ties and out of range included, exact on every path."""
    torch.manual_seed(4)
    q = fpq.convert(_TokenModel().eval(), weights="e4m3", activations="int8", inputs="ufixed<5,5>")
    fpq.calibrate(q, [torch.randint(0, 20, (256, 8)).float()], progress=False)
    q.eval()
    g, prj = _check(q, (8,), tmp_path / "prj", io_type=io_type)
    assert {"gather", "add_const"} <= {op.kind for op in g}
    assert "Embedding" in [L.class_name for L in prj.hls_model.get_layers()]


def test_unbuildable_op_is_refused_before_any_file(tmp_path):
    """A transpose in front of a convolution (a channels-last layout change) has no HLS layer: refused
    naming the op, and nothing is written."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.conv, self.head = nn.Linear(8, 8), nn.Conv1d(8, 4, 3), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.conv(self.fc(x).transpose(1, 2)).flatten(1))
    q = _calibrated(M().eval(), (4, 8), fmt="int8")
    with pytest.raises(HLSUnsupportedError, match=r"op 'transpose\w*' of kind 'transpose'.*feeds \['conv1d\w*'\]"):
        fpq.to_hls(q, tmp_path / "prj", torch.zeros(1, 4, 8))
    assert not (tmp_path / "prj").exists() and not list(tmp_path.iterdir())



def test_cost_prices_the_encoder_and_fit_runs():
    """fpq.estimate_cost prices each matmul as the FpqMatMul circuit (g M N K general multipliers, the adder
    trees, the fused requantizer), said to be an uncalibrated composition; a Linear over the tokens counts
    every token; fpq.fit chooses a setting for a one-block encoder on an xcu250."""
    shape = (4, 8)
    q = _calibrated(tiny_encoder(features=8, d=8, heads=2, blocks=1, classes=3), shape, fmt="int8")
    rep = fpq.estimate_cost(q, example_input=torch.zeros((1,) + shape))
    rows = {r["layer"]: r for r in rep.layers}
    mm = [r for r in rep.layers if r["op"] == "matmul"]
    assert len(mm) == 2 and all(r["lut"] + r["dsp"] > 0 and "uncalibrated" in r["approximate"] for r in mm)
    assert [r["n_mult"] for r in mm] == [2 * 4 * 4 * 4] * 2          # heads x T x T x head_dim, then x T x dh x T
    assert "requantizer" in mm[0]["parts"]                             # its int8 quantizer is a fused cast
    assert rows["linear_blocks_0_fc1"]["pixels"] == 4                  # one row per token
    assert any("matmul of two activations" in n for n in rep.notes)
    fit = fpq.fit(q, part="xcu250", example_input=torch.zeros((1,) + shape))
    assert fit.hls_kwargs["part"].startswith("xcu250")
