"""fpq.ptq on weight-only models (gptq, owq, signround; fpq/ptq/weight_only.py, signround.py) on a
tiny random BertModel: every method runs on int4, e2m1 and e4m3, leaves grid weights, never ends
above round-to-nearest in the error it optimizes (recomputed here from the layer / block inputs),
and the emulated layers still equal the torch forward bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fpq
from fpq.nn.weight_only import effective_bits, emulate_layer, layer_mode, weight_only_layers

pytest.importorskip("transformers")
from test_weight_only import bert_inputs, oracle_linear, tiny_bert  # noqa: E402

FIRST = "encoder.layer.0.attention.self.query"   # its input does not depend on any quantized layer


def _batches():
    return [bert_inputs(n=4, length=10, seed=s) for s in range(3)]


def _layer_err(q, name, w_ref, w_q, batches):
    from fpq.ptq.weight_only import layer_rows
    x = layer_rows(q, name, batches)
    d = (w_ref - w_q).to(torch.float64)
    return float(torch.mean((x @ d.T) ** 2))


# signround's runs are 10-30 s each on 2 cores: tests/test_ptq_llm_methods.py covers it on
# int4 / e2m1 / e4m3 in make test; here it runs in make test-full
@pytest.mark.parametrize("method", ["gptq", "owq", pytest.param("signround", marks=pytest.mark.full)])
@pytest.mark.parametrize("fmt", ["int4", "e2m1", "e4m3"])
def test_method_runs_keeps_grid_and_beats_rtn(method, fmt):
    m = tiny_bert()
    q = fpq.convert(m, weights=fmt, scope="modules", group_size=32)
    rtn = {n: l.quantized_weight().detach().clone() for n, l in weight_only_layers(q)}
    floats = {n: l.weight.detach().clone() for n, l in weight_only_layers(q)}
    batches = _batches()
    rep = {}
    fpq.ptq(q, batches, methods=[method], report=rep, progress=False, **({"round_iters": 60} if method == "signround" else {}))
    key = "loss" if method == "signround" else "error"
    assert all(r[key] <= r[key + "_rtn"] for r in rep[method].values())
    for n, layer in weight_only_layers(q):       # grid values of the final scales
        assert torch.equal(layer.quantized_weight(), layer.weight)
    if method == "signround":
        from fpq.ptq.signround import _first, capture
        block = q.get_submodule("encoder.layer.0")
        inputs = capture(q, block, batches)
        q0 = fpq.convert(m, weights=fmt, scope="modules", group_size=32)   # float weights, RTN scales
        with torch.no_grad(), layer_mode(q0.encoder.layer[0], "float"):
            tg = [_first(q0.encoder.layer[0](*a, **k)) for a, k in inputs]
        with torch.no_grad(), layer_mode(block, "fast"):
            got = sum(float(torch.mean((_first(block(*a, **k)) - t) ** 2)) for (a, k), t in zip(inputs, tg))
        with torch.no_grad(), layer_mode(q0.encoder.layer[0], "fast"):
            ref = sum(float(torch.mean((_first(q0.encoder.layer[0](*a, **k)) - t) ** 2)) for (a, k), t in zip(inputs, tg))
        assert got <= ref
        assert rep["signround"]["encoder.layer.0"]["loss_rtn"] == pytest.approx(ref / len(inputs), rel=1e-6)
    else:
        w = floats[FIRST].to(torch.float64)
        e_final = _layer_err(q, FIRST, w, q.get_submodule(FIRST).weight.detach(), batches)
        e_rtn = _layer_err(q, FIRST, w, rtn[FIRST], batches)
        assert e_final < e_rtn
    # the eval forward is still the exact contract: torch == numpy twin == the Fractions oracle
    layer = q.get_submodule("encoder.layer.1.intermediate.dense")
    x = torch.randn(3, 64) * 3
    with torch.no_grad():
        y = layer(x)
    np.testing.assert_array_equal(emulate_layer(layer, x.numpy()), y.numpy())
    np.testing.assert_array_equal(y.numpy(), oracle_linear(x.numpy(), layer.quantized_weight().detach().numpy(),
                                                           layer.bias.detach().numpy()))


def test_owq_keeps_sensitive_columns_in_float16_and_counts_them():
    q = fpq.convert(tiny_bert(), weights="int3", scope="modules", group_size=32)
    rep = {}
    fpq.ptq(q, _batches(), methods=["owq"], owq_ratio=0.05, report=rep, progress=False)
    layer = q.get_submodule("encoder.layer.0.intermediate.dense")     # fan-in 64: 3 kept columns
    k = layer.keep_cols
    assert k.numel() == 3
    w = layer.weight.detach()
    assert torch.equal(w[:, k], w[:, k].to(torch.float16).to(torch.float32))
    bits = effective_bits(q)
    want = (128 * 61 * 3 + 128 * 3 * 16 + 128 * 2 * 16 + 3 * 16) / (128 * 64)
    assert bits["layers"]["encoder.layer.0.intermediate.dense"] == pytest.approx(want)
    assert rep["effective_bits"] == pytest.approx(bits["total"])


def test_refusals():
    q = fpq.convert(tiny_bert(), weights="int4", scope="modules", group_size=32)
    b = _batches()
    with pytest.raises(ValueError, match="do not apply to a weight-only model"):
        fpq.ptq(q, b, methods=["act_search"], progress=False)
    with pytest.raises(ValueError, match="pick one"):
        fpq.ptq(q, b, methods=["gptq", "signround"], progress=False)
    with pytest.raises(ValueError, match=r"option\(s\) \['alpha'\]"):
        fpq.ptq(q, b, methods=["gptq"], alpha=0.5, progress=False)
    with pytest.raises(ValueError, match="owq_ratio"):
        fpq.ptq(q, b, methods=["owq"], owq_ratio=1.5, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fpq.ptq(q, [], methods=["gptq"], progress=False)


@pytest.mark.parametrize("method", ["gptq", "owq", "signround"])
def test_methods_on_a_conv_net(method):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 5 * 5, 6))
    q = fpq.convert(net, weights="int3", scope="modules", granularity="channel")
    batches = [torch.randn(8, 3, 5, 5) for _ in range(3)]
    rep = {}
    fpq.ptq(q, batches, methods=[method], report=rep, progress=False,
            **({"round_iters": 40} if method == "signround" else {}))
    key = "loss" if method == "signround" else "error"
    assert all(r[key] <= r[key + "_rtn"] for r in rep[method].values())
    assert any(r[key] < r[key + "_rtn"] for r in rep[method].values())
