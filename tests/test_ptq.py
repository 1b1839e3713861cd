"""fpq.ptq: method ordering and options, GPTQ / learned rounding never worse than rounding to
nearest (layer-output MSE), format_search picks the minimum-error candidate, torch == emulator
(atol=0) after every method, and clear errors naming the layer where a method cannot apply."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpq
from fpq.ptq import _common

FORMATS = ["int4", "e2m1"]


class ChainCNN(nn.Module):
    """conv -> relu -> conv -> relu -> pool -> flatten -> linear: every pair equalizable."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=bias)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 3 * 3, 5, bias=bias)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = h + torch.relu(self.fc2(h))
        return self.fc3(h)


def _model(cls=ChainCNN, **kw):
    torch.manual_seed(0)
    m = cls(**kw).eval()
    with torch.no_grad():  # uneven channel ranges, as trained nets have (equalization matters)
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(torch.logspace(-1, 0.5, p.shape[0]).view(-1, *([1] * (p.dim() - 1))))
    return m


def _batches(shape=(2, 6, 6), n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(48, *shape, generator=g) for _ in range(n)]


def _random_inputs(shape=(2, 6, 6)):
    g = torch.Generator().manual_seed(7)
    return torch.randn(64, *shape, generator=g) * 4.0   # beyond the calibrated range too


def _assert_torch_equals_emulator(q, x):
    with torch.no_grad():
        y = q(x).detach().numpy().astype(np.float64)
    ye = np.asarray(fpq.emulate(q, x.numpy()), dtype=np.float64)
    assert np.array_equal(y, ye)


def _on_grid(q):
    for name, m in _common.weight_layers(q):
        y, _ = m.fpq_weight.quantize(m.weight.detach())
        assert torch.equal(y, m.weight.detach()), name


# --- independent layer-output error: the real layer op on the captured inputs ---------------------
def _captured_inputs(q, batches):
    xs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, _n=n: xs.setdefault(_n, []).append(inp[0].detach()))
             for n, m in _common.weight_layers(q)]
    with torch.no_grad():
        for b in batches:
            q(b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).to(torch.float64) for n, v in xs.items()}


def _op_error(m, x, w_ref, w_q):
    w_ref, w_q = w_ref.to(torch.float64), w_q.to(torch.float64)
    if isinstance(m, nn.Linear):
        d = F.linear(x, w_ref) - F.linear(x, w_q)
    else:
        d = F.conv2d(x, w_ref, padding=m.padding) - F.conv2d(x, w_q, padding=m.padding)
    return float(torch.mean(d ** 2))


ROUNDING_CASES = [("int4", "tensor", "po2"), ("e2m1", "tensor", "po2"), ("e2m1", "channel", "po2"),
                  ("int4", "channel", "float")]


@pytest.mark.parametrize("fmt, granularity, scale", ROUNDING_CASES)
@pytest.mark.parametrize("method", ["gptq", "learned_round"])
def test_rounding_never_worse_than_nearest(fmt, granularity, scale, method):
    q = fpq.convert(_model(), fmt, granularity=granularity, scale=scale)
    w0 = {n: m.weight.detach().clone() for n, m in _common.weight_layers(q)}
    data = _batches()
    rep = {}
    kw = {"round_iters": 150} if method == "learned_round" else {}
    fpq.ptq(q, data, methods=[method], progress=False, report=rep, **kw)
    _on_grid(q)
    xs = _captured_inputs(q, data)
    improved = 0
    for n, m in _common.weight_layers(q):
        rtn = m.fpq_weight.quantize(w0[n])[0].detach()
        e_new = _op_error(m, xs[n], w0[n], m.weight.detach())
        e_rtn = _op_error(m, xs[n], w0[n], rtn)
        assert e_new <= e_rtn * (1 + 1e-12), (n, e_new, e_rtn)
        improved += e_new < e_rtn
    assert improved >= 1, rep        # the method did something
    _assert_torch_equals_emulator(q, _random_inputs())


def _ref_layer_errors(m, x, w, fmt, shifts):
    """Errors of fmt at the po2 scales 2**ceil(log2(max|w| / max(fmt))) * 2**-k (numpy reference)."""
    wn = w.detach().numpy().astype(np.float32)
    s0 = 2.0 ** math.ceil(math.log2(float(np.abs(wn).max()) / float(fpq.finfo(fmt).max)))
    errs = []
    for k in range(shifts + 1):
        s = np.float32(s0 * 2.0 ** -k)
        wq = torch.from_numpy(fpq.quantize(wn, fmt, s).astype(np.float32))
        errs.append(_op_error(m, x, w, wq))
    return errs


@pytest.mark.parametrize("start, cands", [("e2m1", None), ("int4", ["int4", "e2m1", "e3m0"])])
def test_format_search_picks_minimum_error_candidate(start, cands):
    q = fpq.convert(_model(), start)
    w0 = {n: m.weight.detach().clone() for n, m in _common.weight_layers(q)}
    data = _batches()
    kw = {} if cands is None else {"format_candidates": cands}
    fpq.ptq(q, data, methods=["format_search"], progress=False, search_shifts=3, **kw)
    candidates = cands or ["e1m2", "e2m1", "e3m0"]
    xs = _captured_inputs(q, data)
    chosen = set()
    for n, m in _common.weight_layers(q):
        best = {c: min(_ref_layer_errors(m, xs[n], w0[n], fpq.parse_format(c), 3)) for c in candidates}
        fmt = str(m.fpq_weight.fmt)
        chosen.add(fmt)
        assert best[fmt] == min(best.values()), (n, fmt, best)
        # the installed quantizer realizes that minimum; the policy records the choice
        assert math.isclose(_op_error(m, xs[n], w0[n], m.fpq_weight.quantize(w0[n])[0]), best[fmt], rel_tol=1e-9)
        assert q.fpq_policy.layers[n]["weights"] == fmt
    assert {str(l.tensors["weight"].format) for l in fpq.plan(q) if "weight" in l.tensors} == chosen
    _assert_torch_equals_emulator(q, _random_inputs())


def test_format_search_per_channel_exponent_bias():
    q = fpq.convert(_model(), "e2m1", granularity="channel")
    fpq.ptq(q, _batches(), methods=["format_search"], progress=False)
    s = q.conv2.fpq_weight.scale().detach()
    assert s.shape == (8,) and torch.all(torch.log2(s) == torch.round(torch.log2(s)))
    assert len(set(s.tolist())) > 1       # channels got their own shift
    _assert_torch_equals_emulator(q, _random_inputs())


METHOD_SETS = [["weight_equalization"], ["act_equalization"], ["act_channel_scales"], ["act_search"],
               ["format_search"], ["gptq"], ["learned_round"], ["bias_correction"],
               ["act_equalization", "format_search", "gptq", "bias_correction"],
               ["act_channel_scales", "act_search", "format_search", "learned_round", "bias_correction"],
               ["block_round"], ["act_search", "format_search", "block_round", "bias_correction"]]


@pytest.mark.parametrize("fmt", ["int4", "e2m1", "e3m2"])
@pytest.mark.parametrize("methods", METHOD_SETS, ids=["+".join(m) for m in METHOD_SETS])
def test_torch_equals_emulator_after_each_method(fmt, methods):
    q = fpq.convert(_model(), fmt)
    kw = {"round_iters": 40} if "learned_round" in methods or "block_round" in methods else {}
    fpq.ptq(q, _batches(), methods=methods, progress=False, **kw)
    _assert_torch_equals_emulator(q, _random_inputs())
    tp = fpq.plan(q)
    assert all(isinstance(t.format, (fpq.Int, fpq.Minifloat)) for l in tp
               for r, t in l.tensors.items() if r in ("weight", "output"))


def test_equalization_keeps_the_float_function():
    from fpq.ptq import equalize

    m = _model()
    q = fpq.convert(m, "int8")
    x = _batches(n=1)[0]
    ref = m(x).detach()
    equalize.weight_equalization(q, [x], progress=False)
    equalize.act_equalization(q, [x], progress=False, alpha=0.5)
    tqs = [tq for _, _, tq in q.fpq_quantizers()]
    for tq in tqs:               # bypass every quantizer: the float network
        tq.observer = lambda t: None
    try:
        y = q(x).detach().to(torch.float32)
    finally:
        for tq in tqs:
            tq.observer = None
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(q.conv1.weight, m.conv1.weight)


def test_learned_round_is_reproducible_with_seed():
    ws = []
    for _ in range(2):
        q = fpq.convert(_model(), "e2m1")
        fpq.ptq(q, _batches(), methods=["learned_round"], progress=False, seed=3, round_iters=30)
        ws.append(torch.cat([m.weight.detach().reshape(-1) for _, m in _common.weight_layers(q)]))
    assert torch.equal(ws[0], ws[1])


# --- errors ----------------------------------------------------------------------------------
class ResCNN(nn.Module):
    """conv -> relu -> conv -> relu -> pool -> x; x + relu(conv(x)) -> pool -> flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 1 * 1, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv2(F.relu(self.conv1(x)))))
        x = x + F.relu(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _float_forward(q, x):
    tqs = [tq for _, _, tq in q.fpq_quantizers()]
    for tq in tqs:
        tq.observer = lambda t: None
    try:
        with torch.no_grad():
            return q(x).to(torch.float32)
    finally:
        for tq in tqs:
            tq.observer = None


@pytest.mark.parametrize("cls, shape, region", [
    (Residual, (6,), (["fc1", "fc2"], ["fc2", "fc3"])),
    (ResCNN, (2, 6, 6), (["conv2", "conv3"], ["conv3", "fc"]))])
@pytest.mark.parametrize("method", ["weight_equalization", "act_equalization", "act_channel_scales"])
def test_equalization_across_residual_add(cls, shape, region, method):
    """The add's two operands take the same channel scaling: the layer producing the other operand
    joins the producers, the add's consumers join the consumers; the float function is kept."""
    from fpq.ptq import equalize

    m = _model(cls)
    q = fpq.convert(m, "e2m1")
    data = _batches(shape=shape)
    assert region in equalize.pairs(q)
    w0 = {n: l.weight.detach().clone() for n, l in _common.weight_layers(q)}
    rep = {}
    fpq.ptq(q, data, methods=[method], progress=False, report=rep)
    assert region in rep[method]["regions"]
    assert all(not torch.equal(w0[n], l.weight) for n, l in _common.weight_layers(q) if n in region[0] + region[1])
    x = data[0]
    torch.testing.assert_close(_float_forward(q, x), m(x), rtol=1e-5, atol=1e-5)
    _assert_torch_equals_emulator(q, _random_inputs(shape))


class InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) + x)


class Clamped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_equalization_that_cannot_apply_names_the_layer():
    data = _batches(shape=(6,))
    q = fpq.convert(_model(InputResidual), "int8")
    with pytest.raises(ValueError, match=r"layer 'fc1'.*residual add whose other operand comes from "
                                         r"'input_quant' \(FpqInput\).*cannot take the same"):
        fpq.ptq(q, data, methods=["weight_equalization"], progress=False)
    q = fpq.convert(_model(Clamped), "int8")
    with pytest.raises(ValueError, match=r"layer 'fc1'.*'act' \(FpqClamp\).*not positively homogeneous"):
        fpq.ptq(q, data, methods=["act_channel_scales"], progress=False)
    q = fpq.convert(_model(Residual), "int8")
    with pytest.raises(ValueError, match=r"layer 'fc3'.*graph output"):
        fpq.ptq(q, data, methods=["act_equalization"], progress=False, equalize_layers=["fc3"])
    with pytest.raises(ValueError, match=r"\['nope'\] are not Linear/Conv"):
        fpq.ptq(q, data, methods=["act_equalization"], progress=False, equalize_layers=["nope"])


def test_bias_correction_without_bias_names_the_layer():
    q = fpq.convert(_model(bias=False), "int4")
    with pytest.raises(ValueError, match=r"\['conv1', 'conv2', 'fc'\] have no bias"):
        fpq.ptq(q, _batches(), methods=["bias_correction"], progress=False)


def test_format_search_on_fixed_weights_names_the_layer():
    q = fpq.convert(_model(), "fixed<6,2>")
    with pytest.raises(ValueError, match=r"layer 'conv1'.*fixed<6,2"):
        fpq.ptq(q, _batches(), methods=["format_search"], progress=False)


def _grouped():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, groups=2), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, groups=3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)).eval()


@pytest.mark.parametrize("method", ["gptq", "weight_equalization", "act_channel_scales"])
def test_grouped_conv_names_the_layer(method):
    q = fpq.convert(_grouped(), "int4")
    with pytest.raises(ValueError, match=r"layer '0': grouped convolution \(groups=2\).*only groups=1"):
        fpq.ptq(q, _batches(), methods=[method], progress=False)


@pytest.mark.parametrize("fmt", ["int4", "e2m1"])
def test_grouped_conv_learned_round_format_search_bias_correction(fmt):
    """Grouped convolutions: format search keeps the minimum, learned rounding is never worse than
    nearest (independent error: the real grouped conv), bias correction runs; all exact."""
    q = fpq.convert(_grouped(), fmt)
    data = _batches()
    rep = {}
    fpq.ptq(q, data, methods=["format_search"], progress=False, report=rep, search_shifts=2)
    for n, r in rep["format_search"].items():
        assert r["errors"][r["format"]] == min(r["errors"].values()), n
    w0 = {n: m.weight.detach().clone() for n, m in _common.weight_layers(q)}
    fpq.ptq(q, data, methods=["learned_round", "bias_correction"], calibration=None, progress=False,
            round_iters=150)
    _on_grid(q)
    xs = _captured_inputs(q, data)
    improved = 0
    for n, m in _common.weight_layers(q):
        rtn = m.fpq_weight.quantize(w0[n])[0].detach().double()
        if isinstance(m, nn.Linear):
            continue
        def out(w):
            return F.conv2d(xs[n], w.double(), padding=m.padding, groups=m.groups)
        ref = out(w0[n])
        e_new, e_rtn = float(torch.mean((out(m.weight.detach()) - ref) ** 2)), float(torch.mean((out(rtn) - ref) ** 2))
        assert e_new <= e_rtn * (1 + 1e-12), (n, e_new, e_rtn)
        improved += e_new < e_rtn
    assert improved >= 1
    _assert_torch_equals_emulator(q, _random_inputs())


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=["adaround"]), "unknown method"),
    (dict(methods=["gptq", "learned_round"]), "pick one"),
    (dict(methods=["learned_round", "block_round"]), "learned_round and block_round .*pick one"),
    (dict(methods=["gptq", "gptq"]), "listed twice"),
    (dict(methods=["gptq"], alpha=0.5), r"option\(s\) \['alpha'\]"),
    (dict(methods=["weight_equalization"], calibration=None), "recalibrated"),
    (dict(methods=["act_equalization"], alpha=2.0), "alpha must be in"),
    (dict(methods=["format_search"], format_candidates=["fixed<4,2>"]), "Int or Minifloat"),
])
def test_bad_arguments(kwargs, match):
    q = fpq.convert(_model(), "int4")
    with pytest.raises(ValueError, match=match):
        fpq.ptq(q, _batches(), progress=False, **kwargs)


def test_not_a_converted_model():
    with pytest.raises(TypeError, match="fpq.convert"):
        fpq.ptq(nn.Linear(2, 2), _batches(), methods=["gptq"])


def test_calibration_none_keeps_scales_and_default_recalibrates():
    q = fpq.convert(_model(), "int4")
    data = _batches()
    fpq.calibrate(q, data, method="mse", progress=False)
    acts = {(n, r): tq.scale().clone() for n, r, tq in q.fpq_quantizers() if r == "output"}
    fpq.ptq(q, data, methods=["gptq"], calibration=None, progress=False)
    assert all(torch.equal(tq.scale(), acts[(n, r)]) for n, r, tq in q.fpq_quantizers() if r == "output")
    fpq.ptq(q, data, methods=[], progress=False)          # max calibration: other scales
    assert any(not torch.equal(tq.scale(), acts[(n, r)]) for n, r, tq in q.fpq_quantizers() if r == "output")


# --- the PTQ result goes through every path unchanged -------------------------------------------
FULL = ["act_equalization", "format_search", "gptq", "bias_correction"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_exact_after_ptq(fmt):
    q = fpq.convert(_model(), fmt)
    fpq.ptq(q, _batches(), methods=FULL, progress=False)
    rep = fpq.verify(q, _random_inputs(), qonnx_subset=8)
    assert rep.exact, str(rep)
    assert rep.paths == ["emulator", "torch", "qonnx"]


@pytest.mark.slow
def test_hls_csim_exact_after_ptq(tmp_path):
    q = fpq.convert(_model(), "e2m1")
    fpq.ptq(q, _batches(), methods=["format_search", "learned_round", "bias_correction"],
            progress=False, round_iters=40)
    x = _random_inputs()[:32]
    proj = fpq.to_hls(q, tmp_path / "prj", example_input=x[:1])
    rep = fpq.verify(q, x, project=proj, qonnx_subset=0)
    assert rep.exact and "hls" in rep.paths, str(rep)


@pytest.mark.parametrize("rounding", [None, "gptq", "learned_round"])
def test_bias_correction_removes_mean_layer_error(rounding):
    """Against the float weights from before rounding (the rounded weights alone show no error)."""
    q = fpq.convert(_model(), "int4", bias="int16")
    data = _batches()
    w0 = {n: m.weight.detach().clone() for n, m in _common.weight_layers(q)}
    b0 = {n: m.bias.detach().clone() for n, m in _common.weight_layers(q)}
    methods = ([rounding] if rounding else []) + ["bias_correction"]
    kw = {"round_iters": 40} if rounding == "learned_round" else {}
    fpq.ptq(q, data, methods=methods, progress=False, **kw)
    xs = _captured_inputs(q, data)
    for n, m in _common.weight_layers(q):
        def out(w, b):
            y = F.linear(xs[n], w.double(), b.double()) if isinstance(m, nn.Linear) else \
                F.conv2d(xs[n], w.double(), b.double(), padding=m.padding)
            return y.transpose(0, 1).reshape(y.shape[1], -1).mean(1)
        target = out(w0[n], b0[n])
        wq = m.fpq_weight.quantize(m.weight.detach())[0]
        before = (out(wq, b0[n]) - target).abs()
        after = (out(wq, m.fpq_bias.quantize(m.bias.detach())[0]) - target).abs()
        assert after.sum() < before.sum(), n
        assert float(after.max()) <= float(m.fpq_bias.scale()) / 2 * 1.0001, n   # only bias rounding left


def test_methods_run_in_the_documented_order_whatever_the_list_order():
    from fpq.ptq import ORDER

    assert ORDER == ("weight_equalization", "act_equalization", "act_channel_scales", "act_search",
                     "format_search", "gptq", "learned_round", "block_round", "bias_correction")
    states = []
    for methods in (["gptq", "format_search", "bias_correction"], ["bias_correction", "gptq", "format_search"]):
        q = fpq.convert(_model(), "e2m1")
        fpq.ptq(q, _batches(), methods=methods, progress=False)
        states.append({k: v.clone() for k, v in q.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
