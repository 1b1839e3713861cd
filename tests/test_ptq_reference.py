"""reference="float" for learned rounding and bias correction: the rounded / corrected layer is
compared with the float network's own layer output (inputs from the float network), checked
against the original float torch model, independently of fpq's float-network bypass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpq
from fpq.ptq import _common
from test_ptq import _assert_torch_equals_emulator, _batches, _captured_inputs, _model, _on_grid, _random_inputs


def _float_io(m, data):
    """{layer name: (inputs, outputs)} of the float model's Linear / Conv layers, float64."""
    ins, outs = {}, {}

    def hook(mod, i, o, _n):
        ins.setdefault(_n, []).append(i[0].detach())
        outs.setdefault(_n, []).append(o.detach())
    hooks = [mod.register_forward_hook(lambda mod, i, o, _n=n: hook(mod, i, o, _n))
             for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for x in data:
            m(x)
    for h in hooks:
        h.remove()
    return {n: (torch.cat(ins[n]).double(), torch.cat(outs[n]).double()) for n in ins}


def _op(mod, x, w, b=None):
    w = w.double()
    b = None if b is None else b.double()
    return F.linear(x, w, b) if isinstance(mod, nn.Linear) else F.conv2d(x, w, b, padding=mod.padding)


@pytest.mark.parametrize("fmt", ["int4", "e2m1"])
def test_learned_round_float_reference_never_worse_than_nearest(fmt):
    m = _model()
    q = fpq.convert(m, fmt)
    data = _batches()
    w0 = {n: l.weight.detach().clone() for n, l in _common.weight_layers(q)}
    rep = {}
    fpq.ptq(q, data, methods=["learned_round"], progress=False, report=rep, round_iters=150,
            reference="float")
    _on_grid(q)
    xq = _captured_inputs(q, data)
    fio = _float_io(m, data)
    improved = 0
    for n, l in _common.weight_layers(q):
        xf, _ = fio[n]
        ref = _op(l, xf, w0[n])                                  # the float layer on float inputs
        rtn = l.fpq_weight.quantize(w0[n])[0].detach()
        e_new = float(torch.mean((_op(l, xq[n], l.weight.detach()) - ref) ** 2))
        e_rtn = float(torch.mean((_op(l, xq[n], rtn) - ref) ** 2))
        assert e_new <= e_rtn * (1 + 1e-6), (n, e_new, e_rtn)
        improved += e_new < e_rtn * (1 - 1e-6)
    assert improved >= 1, rep
    _assert_torch_equals_emulator(q, _random_inputs())


@pytest.mark.parametrize("rounding", [None, "gptq"])
def test_bias_correction_float_reference_matches_float_means(rounding):
    m = _model()
    q = fpq.convert(m, "e2m1", bias="int16")
    data = _batches()
    b0 = {n: l.bias.detach().clone() for n, l in _common.weight_layers(q)}
    fpq.ptq(q, data, methods=([rounding] if rounding else []) + ["bias_correction"], progress=False,
            reference="float")
    xq = _captured_inputs(q, data)
    fio = _float_io(m, data)

    def chan_mean(y):
        return y.transpose(0, 1).reshape(y.shape[1], -1).mean(1)
    for n, l in _common.weight_layers(q):
        target = chan_mean(fio[n][1])                           # the float network's mean output
        wq = l.fpq_weight.quantize(l.weight.detach())[0].detach()
        before = (chan_mean(_op(l, xq[n], wq, b0[n])) - target).abs()
        after = (chan_mean(_op(l, xq[n], wq, l.fpq_bias.quantize(l.bias.detach())[0].detach())) - target).abs()
        assert after.sum() < before.sum(), n
        # left: the bias' own rounding and float32 vs float64 of the reference model
        assert float(after.max()) <= float(l.fpq_bias.scale().detach()) / 2 + 1e-5, n
    _assert_torch_equals_emulator(q, _random_inputs())


def test_reference_must_be_known():
    q = fpq.convert(_model(), "int4")
    with pytest.raises(ValueError, match=r"reference must be one of \('quantized', 'float'\)"):
        fpq.ptq(q, _batches(), methods=["bias_correction"], progress=False, reference="fp")
