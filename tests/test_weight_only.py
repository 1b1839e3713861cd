"""Weight-only conversion of untraceable models (fpq.convert(scope="modules"), fpq.nn.weight_only):
every Linear / Conv swapped in place of the module tree, per-tensor / channel / group scales equal
to the numpy reference, and the eval forward equal, bit for bit, to an independent oracle of its
contract: the exact dot product (Python fractions) rounded once to float32."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.nn.weight_only import (WeightOnlyLayer, effective_bits, emulate_layer, layer_mode,
                                weight_only_layers)

transformers = pytest.importorskip("transformers")

FORMATS = [("int4", "group", 32), ("int3", "group", 64), ("e2m1", "channel", None), ("e4m3", "tensor", None),
           ("int2", "group", 32), ("e3m2", "group", 32)]


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def bert_inputs(n=6, length=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 120, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _f32(q: Fraction) -> np.float32:
    """q rounded to the nearest float32 (ties to even), by integer arithmetic."""
    if q == 0:
        return np.float32(0.0)
    neg, q = q < 0, abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    while q >= Fraction(2) ** (e + 1):
        e += 1
    while q < Fraction(2) ** e:
        e -= 1
    ulp = Fraction(2) ** (max(e, -126) - 23)
    n = q / ulp
    fl = n.numerator // n.denominator
    rem = n - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2):
        fl += 1
    v = float(fl * ulp)
    return np.float32(-v if neg else v)


def oracle_linear(x: np.ndarray, w: np.ndarray, b) -> np.ndarray:
    """RN_float32(x @ w.T + b), exactly, from Fractions: independent of fpq.numerics.wide."""
    xf = [[Fraction(float(v)) for v in row] for row in x.reshape(-1, x.shape[-1])]
    wf = [[Fraction(float(v)) for v in row] for row in w]
    bf = [Fraction(0)] * w.shape[0] if b is None else [Fraction(float(v)) for v in b]
    out = np.array([[_f32(sum(a * c for a, c in zip(row, wr)) + bo) for wr, bo in zip(wf, bf)] for row in xf],
                   dtype=np.float32)
    return out.reshape(*x.shape[:-1], w.shape[0])


def captured_inputs(q, inputs):
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, a[0].detach().clone()))
             for n, m in weight_only_layers(q)]
    with torch.no_grad():
        q(**inputs)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("fmt,gran,group", FORMATS)
def test_convert_swaps_every_linear_and_quantizes_like_the_reference(fmt, gran, group):
    m = tiny_bert()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    q = fpq.convert(m, weights=fmt, scope="modules", granularity=gran, group_size=group or 128)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())   # the original is untouched
    assert not any(type(x) is nn.Linear for x in q.modules())
    layers = weight_only_layers(q)
    assert len(layers) == sum(type(x) is nn.Linear for x in m.modules()) == 13
    assert q.fpq_weight_only["layers"] == {n: fmt for n, _ in layers}
    for name, layer in layers:
        tq = layer.fpq_weight
        s = tq.expand(tq.scale()).detach()
        shape = {"tensor": (1, 1), "channel": (layer.weight.shape[0], 1),
                 "group": (layer.weight.shape[0], layer.weight.shape[1] // (group or 1))}[gran]
        assert tuple(tq.log2_scale.shape) == shape
        assert torch.equal(s.to(torch.float16).to(torch.float32), s)       # float16 scales
        ref = fpq.quantize(layer.weight.detach().numpy(), fmt, scale=s.numpy())
        got = layer.quantized_weight().detach().numpy()
        np.testing.assert_array_equal(got, ref)
        assert np.all(np.abs(got / s.numpy()) <= tq.qmax)


@pytest.mark.parametrize("fmt,gran,group", FORMATS[:4])
def test_eval_forward_is_the_exact_dot_rounded_once(fmt, gran, group):
    q = fpq.convert(tiny_bert(), weights=fmt, scope="modules", granularity=gran, group_size=group or 128)
    xs = captured_inputs(q, bert_inputs())
    g = torch.Generator().manual_seed(3)
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense", "pooler.dense"):
        layer = q.get_submodule(name)
        x_model = xs[name].reshape(-1, xs[name].shape[-1])[:4]
        # off-grid inputs spanning 2^-40 .. 2^20 (several pieces and limbs), and saturating weights
        x_wide = (torch.randn(3, x_model.shape[1], generator=g) *
                  torch.exp2(torch.randint(-40, 20, (3, x_model.shape[1]), generator=g).float())).float()
        with torch.no_grad():
            layer.fpq_weight.log2_scale.sub_(1.0)     # halve the scales: the largest weights saturate
        for x in (x_model, x_wide):
            w = layer.quantized_weight().detach().numpy()
            with torch.no_grad():
                y = layer(x)
            assert y.dtype == torch.float32
            oracle = oracle_linear(x.numpy(), w, layer.bias.detach().numpy())
            np.testing.assert_array_equal(y.numpy(), oracle)
            np.testing.assert_array_equal(emulate_layer(layer, x.numpy()), oracle)


def test_whole_model_emulation_is_order_independent():
    """Summing the products in another order (a transposed, reversed weight layout) gives the same
    bits in the exact mode, not in plain float32."""
    q = fpq.convert(tiny_bert(), weights="e2m1", scope="modules", granularity="group", group_size=32)
    inp = bert_inputs()
    with torch.no_grad():
        a = q(**inp).last_hidden_state
        b = q(**inp).last_hidden_state
    assert torch.equal(a, b)
    layer = q.get_submodule("encoder.layer.0.intermediate.dense")
    x = captured_inputs(q, inp)["encoder.layer.0.intermediate.dense"]
    with torch.no_grad():
        y = layer(x)
        w = layer.quantized_weight()
        perm = torch.randperm(w.shape[1])
        x2, w2 = x[..., perm].contiguous(), w[:, perm].contiguous()
        from fpq.nn.weight_only import exact_forward
        assert torch.equal(exact_forward(layer, x2, w2), y)


def test_fast_and_float_modes_and_gradients():
    m = tiny_bert()
    q = fpq.convert(m, weights="int4", scope="modules", group_size=32)
    inp = bert_inputs()
    with torch.no_grad(), layer_mode(q, "float"):
        yf = q(**inp).last_hidden_state
    assert torch.equal(yf, m(**inp).last_hidden_state)
    with torch.no_grad(), layer_mode(q, "fast"):
        yq = q(**inp).last_hidden_state
    with torch.no_grad():
        ye = q(**inp).last_hidden_state
    assert (yq - ye).abs().max() < 1e-4
    layer = q.get_submodule("encoder.layer.0.attention.self.key")
    layer.train()
    layer(torch.randn(5, 64)).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.fpq_weight.log2_scale.grad is not None


def test_conv_layers_and_po2_scales():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 6 * 6, 10))
    q = fpq.convert(net, weights="int4", scope="modules", granularity="group", group_size=9, scale="po2")
    conv = q[0]
    assert isinstance(conv, WeightOnlyLayer) and conv.op == "conv2d"
    s = conv.fpq_weight.scale().detach()
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y = conv(x)
    cols = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    w = conv.quantized_weight().detach().reshape(8, -1)
    oracle = oracle_linear(cols.numpy(), w.numpy(), conv.bias.detach().numpy())
    np.testing.assert_array_equal(y.permute(0, 2, 3, 1).reshape(-1, 8).numpy(), oracle)
    assert q(x).shape == (2, 10)


def test_effective_bits_count_scales():
    q = fpq.convert(tiny_bert(), weights="int4", scope="modules", group_size=32)
    eb = effective_bits(q)
    assert eb["total"] == pytest.approx(4 + 16 / 32)
    q8 = fpq.convert(tiny_bert(), weights="e4m3", scope="modules", granularity="channel", scale="po2")
    lay = effective_bits(q8)["layers"]["encoder.layer.0.intermediate.dense"]
    assert lay == pytest.approx(8 + 128 * 8 / (128 * 64))


def test_overrides_keep_float_and_refusals():
    q = fpq.convert(tiny_bert(), weights="int4", scope="modules", group_size=32,
                    overrides={"pooler.*": None, "encoder.layer.1.*": "e4m3"})
    assert type(q.pooler.dense) is nn.Linear
    assert q.encoder.layer[1].output.dense.fpq_weight.fmt == fpq.parse_format("e4m3")
    m = tiny_bert()
    with pytest.raises(ValueError, match="must divide the fan-in 64"):
        fpq.convert(m, weights="int4", scope="modules", group_size=48)
    with pytest.raises(ValueError, match="quantizes weights only.*activations"):
        fpq.convert(m, weights="int4", scope="modules", activations="int8")
    with pytest.raises(ValueError, match="unknown scope"):
        fpq.convert(m, weights="int4", scope="linear")
    with pytest.raises(ValueError, match="Int .* or Minifloat"):
        fpq.convert(m, weights="fixed<8,3>", scope="modules")
    with pytest.raises(ValueError, match="match no Linear"):
        fpq.convert(m, weights="int4", scope="modules", overrides={"decoder.*": None})
    with pytest.raises(ValueError, match="unknown granularity"):
        fpq.convert(m, weights="int4", scope="modules", granularity="row")
    with pytest.raises(ValueError, match="group_size applies to scope='modules'"):
        fpq.convert(nn.Sequential(nn.Linear(4, 4)), "int8", group_size=2)
    with pytest.raises(ValueError, match="already quantized"):
        fpq.convert(q, weights="int4", scope="modules")


def test_any_float32_span_is_exact():
    """Inputs from 2^-120 to 2^100 in one row (many pieces, many limbs), signs mixed, with cancellation."""
    q = fpq.convert(tiny_bert(), weights="e4m3", scope="modules", granularity="channel")
    layer = q.get_submodule("encoder.layer.0.attention.self.query")
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 64, generator=g) * torch.exp2(torch.randint(-120, 100, (4, 64), generator=g).float())).float()
    x[0, :2] = torch.tensor([2.0 ** 100, -(2.0 ** 100)])      # cancelling giants leave the small terms
    with torch.no_grad():
        y = layer(x)
    w = layer.quantized_weight().detach().numpy()
    np.testing.assert_array_equal(y.numpy(), oracle_linear(x.numpy(), w, layer.bias.detach().numpy()))
    np.testing.assert_array_equal(emulate_layer(layer, x.numpy()), y.numpy())


def test_exact_sum_any_span_matches_fractions():
    from fpq.numerics.wide import bit_span, exact_sum_rounded_to_odd_any
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 12))
        terms = [(rng.standard_normal(50) * 2.0 ** rng.integers(-300, 300, 50)) for _ in range(n)]
        terms[0][:5] = -terms[1][:5]                          # exact cancellation
        spans = [bit_span(t) for t in terms]
        got = exact_sum_rounded_to_odd_any(terms, spans)
        for j in range(50):
            exact = sum(Fraction(float(t[j])) for t in terms)
            f = float(exact)                                  # RN_53; round to odd differs only when inexact
            if Fraction(f) != exact:
                lo, hi = (f, np.nextafter(f, np.inf)) if Fraction(f) < exact else (np.nextafter(f, -np.inf), f)
                f = lo if int(np.float64(lo).view(np.int64)) & 1 else hi
            assert got[j] == f, (trial, j)
