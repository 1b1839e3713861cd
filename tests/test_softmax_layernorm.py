"""Softmax and LayerNorm as exact fixed-point pipelines (issues 18 and 22).

The integer recipe (fpq.numerics.normalization) is checked against an independent oracle written
with Python's unbounded integers (math.isqrt, exact division) and against torch's float64
functions (error bounds); then torch == numpy emulator == torch emulator == qonnx's executor
(fpq.verify EXACT) at atol=0 on 2,000 probe inputs (off-grid, ties, one in ten far out of range so
that the layers before saturate) for a Linear -> LayerNorm -> Linear -> Softmax model at int8 and
e4m3; functional forms; training; refusals; the cost rows; and (slow) C-sim == emulator.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpq
from fpq.emulate import Emulator
from fpq.export import read_graph
from fpq.formats import parse_format
from fpq.numerics import normalization as N
from fpq.numerics.activations import input_values
from fpq.testing.conformance import all_paths_exact, probe_inputs


class Block(nn.Module):
    """Linear -> LayerNorm (affine) -> Linear -> softmax; ``form`` picks the softmax spelling."""

    def __init__(self, form="module", d=16, out=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.ln, self.b = nn.Linear(6, d), nn.LayerNorm(d), nn.Linear(d, out)
        self.sm, self.form = nn.Softmax(dim=-1), form
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.b(self.ln(self.a(x)))
        if self.form == "F":
            return F.softmax(h, dim=-1)
        if self.form == "torch":
            return torch.softmax(h, -1)
        if self.form == "method":
            return h.softmax(-1)
        return self.sm(h)


def _calibrated(model, fmt, seed=0, **kw):
    torch.manual_seed(seed)
    q = fpq.convert(model, fmt, **kw)
    fpq.calibrate(q, [torch.randn(256, 6) * 2], progress=False)
    return q


# ---- the recipe against independent oracles ----

def _softmax_oracle(k_row, r):
    """The recipe with Python integers (unbounded; exact division)."""
    m = max(k_row)
    es = []
    for k in k_row:
        d = k - m
        t = (d + ((1 << r.shift) >> 1)) >> r.shift
        es.append(r.exp_table[t + r.offset] if t >= -r.offset else 0)
    s = sum(es)
    rec = ((1 << r.recip_bits) + s // 2) // s
    return [(e * rec + (1 << (r.recip_bits - r.out_frac - 1))) >> (r.recip_bits - r.out_frac) for e in es]


def _layernorm_oracle(k_row, r):
    n = r.n
    d = [n * k - sum(k_row) for k in k_row]
    u_full = n * sum(v * v for v in d) + r.eps_int
    j = 0
    while u_full >= 1 << (r.norm_bits + 2 * j):
        j += 1
    u = max(1, u_full >> (2 * j))
    inv = math.isqrt((1 << (2 * r.rsqrt_frac)) // u)
    assert inv == math.floor(2 ** r.rsqrt_frac / math.sqrt(u)) or abs(inv - 2 ** r.rsqrt_frac / math.sqrt(u)) < 1
    sh = r.rsqrt_frac + j - r.z_frac
    out = []
    fy = r.y_frac
    for v, g, b in zip(d, r.gamma, r.beta):
        z = (n * v * inv + (1 << (sh - 1))) >> sh
        yx = z * (g << (fy - r.z_frac - r.gamma_frac)) + (b << (fy - r.beta_frac))
        y = (yx + (1 << (fy - r.out_frac - 1))) >> (fy - r.out_frac) if fy > r.out_frac else yx << (r.out_frac - fy)
        out.append(min(max(y, -(1 << 23)), (1 << 23) - 1))
    return out


@pytest.mark.parametrize("fmt,scale", [("int8", 2.0 ** -4), ("e4m3", 2.0 ** -6), ("fixed<8,3>", 1.0)])
def test_recipes_equal_the_python_integer_oracle_and_approximate_torch(fmt, scale):
    xs = input_values(parse_format(fmt), scale)
    rng = np.random.default_rng(1)
    x = rng.choice(xs, size=(300, 12))
    x[:20] = x[:20, :1]                    # constant rows: the variance is eps alone
    x[20:40, 0] = xs[-1]
    x[20:40, 1:] = xs[0]                   # one huge value against the rest: exp underflows
    sm = N.softmax_recipe(xs, "sm")
    k = N.to_codes(x, sm.in_frac, "sm")
    got = N.softmax_codes(k, sm)
    assert [list(map(int, row)) for row in got] == [_softmax_oracle(list(map(int, row)), sm) for row in k]
    y = N.softmax(x, sm, "sm").astype(np.float64)
    ref = torch.softmax(torch.from_numpy(x), -1).numpy()
    # each exp entry is within 2^-18 of exp: the sum within n 2^-18; the coarsened e4m3 table: 2^-8 steps
    assert np.abs(y - ref).max() < (12 * 2.0 ** -17 if sm.shift == 0 else 1e-3)
    gamma = N.quantize_affine(rng.normal(1, 0.3, 12), parse_format("int8"), "g")
    beta = N.quantize_affine(rng.normal(0, 0.3, 12), parse_format("int16"), "b")
    ln = N.layernorm_recipe(xs, 12, 1e-5, gamma, beta, "ln")
    got = N.layernorm_codes(N.to_codes(x, ln.in_frac, "ln"), ln)
    assert [list(map(int, row)) for row in got] == [_layernorm_oracle(list(map(int, row)), ln)
                                                     for row in N.to_codes(x, ln.in_frac, "ln")]
    y = N.layernorm(x, ln, "ln").astype(np.float64)
    ref = F.layer_norm(torch.from_numpy(x), (12,), torch.from_numpy(gamma).double(), torch.from_numpy(beta).double(),
                       1e-5).numpy()
    assert np.abs(y - ref).max() < 1e-3
    # the torch twin on the same rows, bit for bit
    assert np.array_equal(N.softmax_torch(torch.from_numpy(x), sm, "sm").numpy(), N.softmax(x, sm, "sm"))
    assert np.array_equal(N.layernorm_torch(torch.from_numpy(x), ln, "ln").numpy(), N.layernorm(x, ln, "ln"))


def test_integer_square_root_is_exact_at_the_edges():
    a = []
    for r in (1, 2, 3, 2 ** 15, 2 ** 26 + 3, 2 ** 31 - 1):
        a += [r * r - 1, r * r, r * r + 1, (r + 1) ** 2 - 1]
    a += [2 ** 62 - 1, 2 ** 53 + 1, 2 ** 53 - 1, 0]
    a = np.asarray(a, dtype=np.int64)
    assert N.isqrt64(a).tolist() == [math.isqrt(int(v)) for v in a]


# ---- every path, bit for bit ----

def _all_paths(q, n=2000, qonnx_subset=32):
    return all_paths_exact(q, (6,), n, qonnx_subset)


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_linear_layernorm_linear_softmax_all_paths(fmt):
    q = _calibrated(Block(), fmt)
    g, x = _all_paths(q)
    kinds = [op.kind for op in g.ops]
    assert "layernorm" in kinds and "softmax" in kinds
    trace = Emulator(g)(x, return_trace=True)[1]
    first = next(op for op in g.ops if op.kind == "quant")
    t = first.types["output"]
    top = float(np.max(input_values(t.format, t.scale)))
    assert np.max(trace[first.name]) == top          # the probes saturate the first layer
    sm = next(op for op in g.ops if op.kind == "softmax")
    y = trace[sm.name]
    assert np.all(y >= 0) and np.all(y <= 1)
    plan = fpq.plan(q)
    ln = next(lp for lp in plan if lp.op == "layernorm")
    assert {"sum", "diff", "variance", "rsqrt", "norm", "affine", "output"} <= set(ln.tensors)
    assert {"exp", "sum", "reciprocal"} <= set(plan[sm.name].tensors)


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_softmax_of_saturated_rows_reads_both_table_edges(fmt):
    """Linear -> Softmax with large weights: rows where one value takes everything (y = 1, the
    others below the table: 0) and rows of ties, through every path."""
    model = nn.Sequential(nn.Linear(6, 6), nn.Softmax(-1))
    with torch.no_grad():
        model[0].weight.mul_(8.0)
    q = _calibrated(model, fmt)
    g, x = _all_paths(q)
    sm = next(op for op in g.ops if op.kind == "softmax")
    trace = Emulator(g)(x, return_trace=True)[1]
    xin = trace[g.producer(sm.inputs[0]).name].astype(np.float64)
    rec = sm.attrs["recipe"]
    d = N.to_codes(xin, rec.in_frac, "t") - N.to_codes(xin, rec.in_frac, "t").max(-1, keepdims=True)
    t = (d + ((1 << rec.shift) >> 1)) >> rec.shift
    assert np.any(t <= -rec.offset) and np.any(t == 0)          # the table's first entry (or beyond) and exp(0)
    assert np.any((t > -rec.offset) & (t < -rec.offset // 2))   # and its far half
    y = trace[sm.name]
    assert np.any(y == 1.0) and np.any(y == 0.0)


def test_functional_softmax_forms_equal_the_module():
    torch.manual_seed(0)
    ref = Block("module")
    x = torch.randn(300, 6) * 3
    qm = _calibrated(ref, "int8")
    for form in ("F", "torch", "method"):
        m = Block(form)
        m.load_state_dict(ref.state_dict())
        qf = _calibrated(m, "int8")
        assert sum(isinstance(v, fpq.nn.normalization.FpqSoftmax) for v in qf.modules()) == 1
        assert torch.equal(qf(x), qm(x)), form
    _all_paths(qf, n=300, qonnx_subset=8)


def test_layernorm_without_affine_and_rows_of_tokens():
    """elementwise_affine=False; a (batch, tokens, features) input: each token normalized."""
    sm = N.softmax_recipe(input_values(parse_format("int8"), 2.0 ** -3), "sm")
    x = np.random.default_rng(3).integers(-128, 128, size=(7, 5, 9)) / 8.0
    assert np.array_equal(N.softmax(x, sm, "sm").reshape(35, 9), N.softmax(x.reshape(35, 9), sm, "sm"))
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8, elementwise_affine=False), nn.Linear(8, 3))
    q = _calibrated(model, "int8")
    assert q.get_submodule("1").weight is None
    _all_paths(q, n=500, qonnx_subset=8)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8, bias=False), nn.Linear(8, 3))   # gamma only
    q = _calibrated(model, "int8")
    assert q.get_submodule("1").weight is not None and q.get_submodule("1").bias is None
    _all_paths(q, n=500, qonnx_subset=8)


def test_training_forward_is_exact_backward_is_the_float_derivative():
    q = _calibrated(Block(), "int8")
    x = torch.randn(64, 6)
    y_eval = q(x)
    q.train()
    y = q(x)
    assert torch.equal(y, y_eval)
    (y * torch.randn_like(y)).sum().backward()
    assert q.get_submodule("a").weight.grad.abs().sum() > 0
    assert q.get_submodule("ln").weight.grad.abs().sum() > 0 and q.get_submodule("ln").bias.grad.abs().sum() > 0


# ---- refusals ----

def test_refusals_name_the_layer():
    with pytest.raises(ValueError, match=r"LayerNorm 'ln'.*\(4, 4\).*last axis"):
        _convert_ln2d()
    with pytest.raises(ValueError, match=r"softmax '1'.*dim=None"):
        fpq.convert(nn.Sequential(nn.Linear(6, 4), nn.Softmax()), "int8")
    with pytest.raises(ValueError, match=r"softmax '1'.*over dim=0.*last axis only"):
        q = _calibrated(nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=0)), "int8")
        q(torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"LayerNorm '1'.*fixed<20,8.*at most 16 bits"):
        fpq.convert(nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2)), "int8",
                    overrides={"0": "fixed<20,8>"})

    class D(nn.Module):
        def forward(self, x):
            return F.softmax(x, dim=-1, dtype=torch.float64)

    with pytest.raises(ValueError, match=r"node 'softmax'.*with a dtype.*dim=-1"):
        fpq.convert(D(), "int8")
    xs = input_values(parse_format("fixed<16,8>"), 1.0)
    with pytest.raises(ValueError, match=r"LayerNorm 'big'.*variance needs 80 bits.*65536 codes, 4096 values.*narrow the quantizer"):
        N.layernorm_recipe(xs, 4096, 1e-5, None, None, "LayerNorm 'big'")
    with pytest.raises(ValueError, match=r"sm.*5000 values.*1 to 4096"):
        N.softmax(np.zeros((1, 5000)), N.softmax_recipe(xs, "sm"), "sm")
    with pytest.raises(ValueError, match=r"sm: input 0.3.*not on its quantizer's grid"):
        N.softmax(np.array([[0.3, 0.5]]), N.softmax_recipe(input_values(parse_format("int8"), 0.25), "sm"), "sm")


def _convert_ln2d():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.ln = nn.Linear(6, 16), nn.LayerNorm((4, 4))

        def forward(self, x):
            return self.ln(self.fc(x).view(x.size(0), 4, 4))

    return fpq.convert(M(), "int8")


def test_a_node_whose_recipe_does_not_match_its_input_is_refused():
    import onnx
    from fpq.ir import UnsupportedGraphError
    q = _calibrated(Block(), "int8")
    model = fpq.export_qonnx(q, None, torch.zeros(1, 6))
    proto = model.model if hasattr(model, "model") else model
    node = next(n for n in proto.graph.node if n.op_type == "FpqSoftmax")
    att = next(a for a in node.attribute if a.name == "exp_table")
    mid = len(att.ints) // 2
    att.ints[mid] += 1              # one code: the node's table is what every path runs
    g = read_graph(proto)
    sm = next(op for op in g.ops if op.kind == "softmax")
    assert sm.attrs["recipe"].exp_table[mid] == att.ints[mid]
    att.ints[mid] += 1              # two codes: not the table of this input
    with pytest.raises(UnsupportedGraphError, match=r"FpqSoftmax node .*exp_table differ"):
        read_graph(proto)
    shift = next(a for a in node.attribute if a.name == "in_frac")
    shift.i += 1
    with pytest.raises(UnsupportedGraphError, match=r"FpqSoftmax node .*in_frac"):
        read_graph(onnx.ModelProto.FromString(proto.SerializeToString()))
    shift.i -= 1
    att.ints[mid] -= 2
    ln = next(n for n in proto.graph.node if n.op_type == "FpqLayerNorm")
    next(a for a in ln.attribute if a.name == "eps_int").i += 1
    with pytest.raises(UnsupportedGraphError, match=r"FpqLayerNorm node .*eps_int differ"):
        read_graph(proto)


def test_cost_rows_price_each_operator():
    q = _calibrated(Block(), "int8")
    c = fpq.estimate_cost(q, part="xcvu9p")
    rows = {r["op"]: r for r in c.layers if r["op"] in ("softmax", "layernorm")}
    sm, ln = rows["softmax"], rows["layernorm"]
    assert set(sm["parts"]) == {"max", "diff", "exp_rom", "sum", "divider", "mul", "round"}
    assert set(ln["parts"]) >= {"square", "divider", "isqrt", "scale", "gamma"}
    assert all(v > 0 for r in (sm, ln) for v in r["parts"].values())
    assert sm["lut"] == pytest.approx(sum(sm["parts"].values()), rel=1e-3) and sm["latency_cycles"] >= 1
    # the ROM follows the table: e4m3's coarsened 3,196-entry table costs more than int8's
    e4 = next(r for r in fpq.estimate_cost(_calibrated(Block(), "e4m3"), part="xcvu9p").layers if r["op"] == "softmax")
    assert e4["parts"]["exp_rom"] > sm["parts"]["exp_rom"]
    assert any("approximate" in n for n in c.notes)


# ---- HLS ----

@pytest.mark.slow
def test_csim_equals_emulator_int8_io_parallel(tmp_path):
    """ONE project: Linear -> LayerNorm -> Linear (weights x16, so that softmax rows saturate: y = 1
    and 0 occur) -> Softmax at int8, io_parallel. C-sim == emulator == torch on 2,000 probes."""
    model = Block()
    with torch.no_grad():
        model.b.weight.mul_(16.0)
    q = _calibrated(model, "int8")
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.zeros(1, 6))
    proj = fpq.to_hls(path, tmp_path / "prj", io_type="io_parallel")
    g = read_graph(path)
    x = probe_inputs(g, 2000)
    rep = fpq.verify(q, x, proj, qonnx_subset=8, model=path)
    assert rep.exact, rep.table
    assert "hls" in {r["path"] for r in rep.table}
    y = proj.predict(x)
    assert np.array_equal(y, Emulator(g)(x))
    sm = next(op for op in g.ops if op.kind == "softmax")
    ys = Emulator(g)(x, return_trace=True)[1][sm.name]
    assert np.any(ys == 1.0) and np.any(ys == 0.0)
