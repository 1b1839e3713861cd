"""Activation side of fpq.ptq (LLM-FP4): act_search picks the minimum-error candidate of each
activation tensor, act_channel_scales folds per-channel power-of-two scales into the weights
without changing the float function, and torch == emulator (atol=0) after both."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import fpq
from fpq.ptq import act_search
from test_ptq import ResCNN, _assert_torch_equals_emulator, _batches, _model, _random_inputs
from torch import nn


def _float_outputs(m, data):
    with torch.no_grad():
        return [m(x).to(torch.float64) for x in data]


def _mse(q, data, ys):
    q.eval()
    with torch.no_grad():
        return float(np.mean(np.concatenate([((q(x).to(torch.float64) - y) ** 2).reshape(-1).numpy()
                                             for x, y in zip(data, ys)])))


@pytest.mark.parametrize("fmt, scale", [("e2m1", "po2"), ("int4", "po2"), ("e2m1", "float")])
def test_act_search_picks_minimum_error_candidate(fmt, scale):
    m = _model()
    q = fpq.convert(m, fmt, scale=scale)
    data = _batches()
    rep = {}
    fpq.ptq(q, data, methods=["act_search"], progress=False, report=rep, act_shifts=3)
    chosen = rep["act_search"]
    assert list(chosen) == ["input_quant", "conv1", "conv2", "fc"]   # execution order
    # the last activation tensor (fc's output) is searched with every other choice final: redo
    # its candidates independently against the float model's own output
    ys = _float_outputs(m, data)
    tq = q.fc.fpq_output
    picked = float(tq.scale().detach())
    errs = {}
    for (f, s) in chosen["fc"]["errors"]:
        tq.set_scale(s)
        errs[s] = _mse(q, data, ys)
    tq.set_scale(picked)
    assert len(errs) == (4 if scale == "po2" else 7)
    assert errs[picked] <= min(errs.values()) * (1 + 1e-6), errs
    for name, c in chosen.items():       # each choice is the minimum of its own table
        assert c["error"] == min(c["errors"].values()), name
    # the search did something: some activation now clips (a shift below the max rule)
    assert any(c["scale"] != next(iter(c["errors"]))[1] for c in chosen.values())
    _assert_torch_equals_emulator(q, _random_inputs())


def test_act_search_over_formats_records_the_choice_and_stays_exact():
    q = fpq.convert(_model(), "e2m1")
    rep = {}
    fpq.ptq(q, _batches(), methods=["act_search", "format_search"], progress=False, report=rep,
            act_format_candidates=["e2m1", "e3m0", "int4"], act_metric="kl")
    chosen = {n: c["format"] for n, c in rep["act_search"].items()}
    # each chosen activation quantizer: the layer's fused requantizer, else its own quant layer
    tp = fpq.plan(q)
    for name, fmt in chosen.items():
        lp = tp[name]
        lp = lp if "output" in lp.tensors else tp[lp.name.replace(lp.op, "quant", 1)]
        assert str(lp.tensors["output"].format) == fmt, name
        assert {f for f, _ in rep["act_search"][name]["errors"]} == {"e2m1", "e3m0", "int4"}
    assert q.fpq_policy.inputs == chosen["input_quant"]
    assert q.fpq_policy.layers["conv2"]["activations"] == chosen["conv2"]
    _assert_torch_equals_emulator(q, _random_inputs())
    rep2 = fpq.verify(q, _random_inputs()[:16], qonnx_subset=4)
    assert rep2.exact, str(rep2)


def test_channel_shifts():
    k = act_search.channel_shifts(torch.tensor([8.0, 1.0, 0.3, 0.0, 5.0], dtype=torch.float64), 3)
    assert k.tolist() == [0.0, 3.0, 3.0, 0.0, 0.0]


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_act_channel_scales_keep_float_function_exactly_and_stay_exact(granularity):
    m = _model()
    q = fpq.convert(m, "e2m1", granularity=granularity)
    data = _batches()
    w1, w2 = q.conv1.weight.detach().clone(), q.conv2.weight.detach().clone()
    rep = {}
    fpq.ptq(q, data, methods=["act_channel_scales"], progress=False, report=rep,
            equalize_layers=["conv1"], act_max_shift=4)
    k = torch.tensor(rep["act_channel_scales"]["shifts"]["conv1"], dtype=torch.float32)
    assert k.max() > 0 and k.min() == 0
    # power-of-two factors: P's rows times 2**k, C's columns times 2**-k, exactly
    assert torch.equal(q.conv1.weight.detach(), w1 * torch.exp2(k).view(-1, 1, 1, 1))
    assert torch.equal(q.conv2.weight.detach(), w2 * torch.exp2(-k).view(1, -1, 1, 1))
    # the float network (quantizers bypassed) computes bit for bit the same function
    tqs = [tq for _, _, tq in q.fpq_quantizers()]
    x = _random_inputs()
    for tq in tqs:
        tq.observer = lambda t: None
    try:
        with torch.no_grad():
            y = q(x)
    finally:
        for tq in tqs:
            tq.observer = None
    ref = fpq.convert(m, "e2m1", granularity=granularity)
    for tq in [tq for _, _, tq in ref.fpq_quantizers()]:
        tq.observer = lambda t: None
    with torch.no_grad():
        assert torch.equal(y, ref(x))
    _assert_torch_equals_emulator(q, x)


def test_act_channel_scales_lower_the_error_of_small_channels():
    """With per-channel weight scales the producer's weights quantize exactly as before (scaled);
    the stretched small channels of conv1's output then lose less to the activation quantizer."""
    m = _model()
    data = _batches()
    errs = {}
    for methods in ([], ["act_channel_scales"]):
        q = fpq.convert(m, "e2m1", weights="e4m3", granularity="channel")
        fpq.ptq(q, data, methods=methods, progress=False,
                **({"equalize_layers": ["conv1"]} if methods else {}))
        errs[bool(methods)] = _mse(q, data, _float_outputs(m, data))
    assert errs[True] < errs[False], errs


def test_act_search_errors_name_the_layer():
    q = fpq.convert(_model(), weights="int4", activations="fixed<6,2>")
    with pytest.raises(ValueError, match=r"layer 'input_quant'|layer 'conv1'.*Fixed"):
        fpq.ptq(q, _batches(), methods=["act_search"], progress=False)
    q = fpq.convert(_model(), "int4")
    with pytest.raises(ValueError, match="act_metric must be one of"):
        fpq.ptq(q, _batches(), methods=["act_search"], progress=False, act_metric="l1")
    with pytest.raises(ValueError, match="Int or Minifloat"):
        fpq.ptq(q, _batches(), methods=["act_search"], progress=False, act_format_candidates=["fixed<4,2>"])
    with pytest.raises(ValueError, match="act_max_shift must be an int"):
        fpq.ptq(q, _batches(), methods=["act_channel_scales"], progress=False, act_max_shift=-1,
                equalize_layers=["conv1"])
    with pytest.raises(ValueError, match="recalibrated"):
        fpq.ptq(q, _batches(), methods=["act_channel_scales"], progress=False, calibration=None)


class SharedPool(nn.Module):
    """A residual add, an in-place ReLU and one max pool called twice (a module with a quantizer,
    an AvgPool, may be called only once: fpq.convert refuses it, the export could not name it)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 1 * 1, 3)

    def forward(self, x):
        h = self.pool(self.relu(self.conv1(x)))
        h = h + self.relu(self.conv2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.mark.parametrize("cls, fmt", [(SharedPool, "e2m1"), (ResCNN, "int4")])
def test_act_search_prefix_cache_makes_the_same_choices(cls, fmt):
    """Running only the nodes after the searched tensor's owner (the prefix cached) gives every
    candidate exactly the error of a whole-network run, so the same choices and the same model."""
    m, data = _model(cls), _batches()
    kw = dict(act_shifts=3, act_metric="kl", act_format_candidates=[fmt, "e3m0"])
    reps, outs = [], []
    for cache in (True, False):
        q = fpq.convert(m, fmt)
        fpq.calibrate(q, data, progress=False)
        rep = {}
        act_search.run(q, data, progress=False, report=rep, prefix_cache=cache, **kw)
        reps.append(rep["act_search"])
        q.eval()
        with torch.no_grad():
            outs.append(q(_random_inputs()))
    assert reps[0] == reps[1]          # every candidate's error, bit for bit
    assert torch.equal(outs[0], outs[1])
    assert len(reps[0]) >= 5


def test_run_until_stops_after_the_last_call_of_the_recorded_modules():
    """The PTQ passes that only need some layers' inputs stop each forward after those layers'
    last calls (a module called twice: after its second call), with the inputs a full pass sees."""
    from fpq.ptq import _common
    q = fpq.convert(_model(SharedPool), "e2m1")
    data = _batches()
    fpq.calibrate(q, data, progress=False)
    full, early, fc_calls = {"pool": [], "conv1": []}, {"pool": [], "conv1": []}, []
    hooks = [q.get_submodule(n).register_forward_pre_hook(
        lambda mod, inp, n=n: full[n].append(inp[0].clone())) for n in full]
    q.eval()
    with torch.no_grad():
        for x in data:
            q(x)
    for h in hooks:
        h.remove()
    h = q.fc.register_forward_pre_hook(lambda mod, inp: fc_calls.append(1))
    _common.run_until(q, data, {n: (lambda mod, inp, n=n: early[n].append(inp[0].clone())) for n in early})
    h.remove()
    assert fc_calls == []                                 # fc (after pool's second call) never ran
    assert len(early["pool"]) == 2 * len(data) and len(early["conv1"]) == len(data)
    for n in full:
        assert all(torch.equal(a, b) for a, b in zip(full[n], early[n])), n
