"""Nonlinear activations as exact tables (issue 18): every path computes the same table.

For every activation fpq builds as a table (Sigmoid, Tanh, SiLU, Hardswish, Hardsigmoid, GELU in
both forms, ELU, Softplus, LeakyReLU, PReLU with one and per-channel slopes): torch == numpy
emulator == torch emulator == qonnx's executor (``fpq.verify`` EXACT) at atol=0 on 2,000 probe
inputs (off-grid, ties, one in ten far out of range so that the first layer saturates and the
table's first and last entries are read), at int8, e4m3 and fixed<8,3>; a conv net; functional
forms equal to module forms; refusals; the cost row; and (slow) C-sim == emulator for all of them
in two projects.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpq
from fpq.emulate import Emulator
from fpq.export import read_graph
from fpq.testing.conformance import all_paths_exact, probe_inputs

ACTS = {
    "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "silu": nn.SiLU, "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "elu": lambda: nn.ELU(0.7), "softplus": lambda: nn.Softplus(beta=2.0, threshold=3.0),
    "leaky_relu": lambda: nn.LeakyReLU(0.1), "prelu": lambda: nn.PReLU(1, init=0.3),
}


def _calibrated(model, shape, fmt, seed=0):
    torch.manual_seed(seed)
    q = fpq.convert(model, fmt)
    fpq.calibrate(q, [torch.randn((256,) + shape) * 2], progress=False)
    return q


def _all_paths(q, shape, n=2000, qonnx_subset=32):
    return all_paths_exact(q, shape, n, qonnx_subset)


def _table_inputs(g, x):
    """{table op: the input values it read} from the emulator's trace."""
    trace = Emulator(g)(x, return_trace=True)[1]
    return {op.name: np.unique(trace[g.producer(op.inputs[0]).name]) for op in g.ops if op.kind == "table"}


def _mlp(act):
    return nn.Sequential(nn.Linear(6, 12), act, nn.Linear(12, 5))


@pytest.mark.parametrize("name", sorted(ACTS))
def test_each_activation_int8_all_paths(name):
    q = _calibrated(_mlp(ACTS[name]()), (6,), "int8")
    g, x = _all_paths(q, (6,))
    (table, seen), = _table_inputs(g, x).items()
    xs = g[table].attrs["x"]
    assert len(xs) == 256 and seen[0] == xs[0] and seen[-1] == xs[-1]   # both table edges read


def _chain(n_in=6):
    """Linear -> act -> Linear -> act ... through every activation (one export per format)."""
    layers, w = [], n_in
    for name in sorted(ACTS):
        layers += [nn.Linear(w, 8), ACTS[name]()]
        w = 8
    return nn.Sequential(*layers, nn.Linear(8, 3))


@pytest.mark.parametrize("fmt", ["e4m3", "fixed<8,3>"])
def test_every_activation_minifloat_and_fixed(fmt):
    q = _calibrated(_chain(), (6,), fmt)
    g, x = _all_paths(q, (6,))
    tables = [op for op in g.ops if op.kind == "table"]
    assert len(tables) == len(ACTS)
    if fmt == "e4m3":   # a minifloat input: the table enumerates its 253 finite values
        assert all(len(op.attrs["x"]) == 253 for op in tables)


def test_conv_net_per_channel_prelu_and_gelu():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.PReLU(4), nn.Conv2d(4, 4, 3), nn.GELU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.25, -0.5, 0.1, 1.3]))
    q = _calibrated(model, (2, 6, 6), "int8")
    g, _ = _all_paths(q, (2, 6, 6), n=2000, qonnx_subset=8)
    prelu = next(op for op in g.ops if op.kind == "table" and op.attrs["y"].ndim == 2)
    assert prelu.attrs["y"].shape == (4, 256)


def test_table_is_the_reference_rounded_by_the_output_quantizer():
    """The exported table is f64 f on every input value, rounded once by the output quantizer."""
    from fpq.numerics import apply_scaled
    from fpq.numerics.activations import function_values, input_values
    q = _calibrated(_mlp(nn.Softplus(beta=2.0, threshold=3.0)), (6,), "int8")
    g = read_graph(fpq.export_qonnx(q, None, torch.zeros(1, 6)))
    op = next(o for o in g.ops if o.kind == "table")
    t_in, t_out = op.types["input"], g.consumers(op.outputs[0])[0].quant.ttype
    xs = input_values(t_in.format, t_in.scale)
    assert np.array_equal(op.attrs["x"], xs)
    want = apply_scaled(function_values("softplus", {"beta": 2.0, "threshold": 3.0}, xs), t_out.format, t_out.scale)
    assert np.array_equal(op.attrs["y"], want.astype(np.float64))


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.ModuleList(nn.Linear(6 if i == 0 else 8, 8) for i in range(10))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        fs = [torch.sigmoid, lambda t: t.tanh(), F.silu, F.hardswish, F.hardsigmoid, F.gelu,
              lambda t: F.gelu(t, approximate="tanh"), lambda t: F.elu(t, 0.7),
              lambda t: F.softplus(t, 2.0, 3.0), lambda t: F.leaky_relu(t, 0.1)]
        for lin, f in zip(self.l, fs):
            x = f(lin(x))
        return self.out(x)


class _Modules(_Functional):
    def __init__(self):
        super().__init__()
        self.acts = nn.ModuleList([nn.Sigmoid(), nn.Tanh(), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.GELU(),
                                   nn.GELU(approximate="tanh"), nn.ELU(0.7), nn.Softplus(2.0, 3.0),
                                   nn.LeakyReLU(0.1)])

    def forward(self, x):
        for lin, a in zip(self.l, self.acts):
            x = a(lin(x))
        return self.out(x)


def test_functional_forms_equal_module_forms():
    torch.manual_seed(0)
    fun = _Functional()
    mod = _Modules()
    mod.load_state_dict(fun.state_dict(), strict=False)
    qf, qm = _calibrated(fun, (6,), "int8"), _calibrated(mod, (6,), "int8")
    x = torch.randn(500, 6) * 3
    assert torch.equal(qf(x), qm(x))
    assert sum(isinstance(m, fpq.nn.tables.FpqTable) for m in qf.modules()) == 10
    _all_paths(qf, (6,), n=500, qonnx_subset=8)


def test_training_forward_is_the_table_backward_the_derivative():
    q = _calibrated(_mlp(nn.Sigmoid()), (6,), "int8")
    x = torch.randn(64, 6)
    y_eval = q(x)
    q.train()
    y = q(x)
    assert torch.equal(y, y_eval)
    y.sum().backward()
    assert q.get_submodule("0").weight.grad.abs().sum() > 0


def test_input_too_wide_for_a_table_is_refused():
    with pytest.raises(ValueError, match=r"activation '1'.*fixed<20,8.*20 bits.*at most 16 bits.*narrow the quantizer"):
        fpq.convert(_mlp(nn.Tanh()), "int8", overrides={"0": "fixed<20,8>"})


def test_functional_prelu_and_off_grid_inputs_are_refused():
    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return F.prelu(self.fc(x), self.w)

    with pytest.raises(ValueError, match="F.prelu.*use nn.PReLU"):
        fpq.convert(P(), "int8")
    q = _calibrated(_mlp(nn.Sigmoid()), (6,), "int8")
    g = read_graph(fpq.export_qonnx(q, None, torch.zeros(1, 6)))
    table = next(op for op in g.ops if op.kind == "table")
    from fpq.numerics.activations import lookup
    with pytest.raises(ValueError, match="not one of the 256 values"):
        lookup(table.attrs["x"], table.attrs["y"], np.array([table.attrs["x"][3] + 1e-3]), "t")


def test_hls_refuses_per_channel_tables_and_cost_prices_tables(tmp_path):
    q = _calibrated(nn.Sequential(nn.Linear(6, 4), nn.PReLU(4), nn.Linear(4, 3)), (6,), "int8")
    from fpq.hls import HLSUnsupportedError
    with pytest.raises(HLSUnsupportedError, match="PReLU with 4 slopes.*nn.PReLU\\(\\)"):
        fpq.to_hls(q, tmp_path / "prj", torch.zeros(1, 6))
    c = fpq.estimate_cost(_calibrated(_mlp(nn.GELU()), (6,), "int8"), part="xcvu9p")
    row = next(r for r in c.layers if r["op"] == "table")
    assert row["thresholds"] == 255 and row["lookups"] == 12 and row["lut"] > 0 and row["function"] == "gelu"


@pytest.mark.slow
@pytest.mark.parametrize("fmt,io_type", [("int8", "io_parallel"), ("e4m3", "io_stream")])
def test_csim_equals_emulator_every_activation(tmp_path, fmt, io_type):
    """One project per format chains every activation (PReLU with one slope): C-sim == emulator
    == torch on 2,000 probe inputs."""
    q = _calibrated(_chain(), (6,), fmt)
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.zeros(1, 6))
    proj = fpq.to_hls(path, tmp_path / "prj", io_type=io_type)
    x = probe_inputs(read_graph(path), 2000)
    rep = fpq.verify(q, x, proj, qonnx_subset=8, model=path)
    assert rep.exact, rep.table
    assert "hls" in {r["path"] for r in rep.table}
