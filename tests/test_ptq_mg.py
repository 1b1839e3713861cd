"""mg_ptq (fpq/ptq/mg_ptq.py) on a tiny random BertModel: the GNN column allocator respects the
average-bit budget (effective bits counted by ``layer_bits``: weights, scales, kept columns, their
indices and per-row scales), runs on int4, e2m1 and e4m3, never ends above round-to-nearest in the
layer-output error it optimizes (recomputed here), its GNN selection is never worse than the plain
per-column importance on the same budget, and the layers with two formats stay exact."""
from __future__ import annotations

import pytest
import torch

import fpq
from fpq.nn.weight_only import effective_bits, layer_bits, weight_only_layers

pytest.importorskip("transformers")
from test_ptq_llm_methods import FIRST, _batches, _exact_checks, _w  # noqa: E402
from test_weight_only import tiny_bert  # noqa: E402


@pytest.mark.parametrize("fmt,budget,high", [("int4", None, None), ("e2m1", None, None), ("e4m3", None, None),
                                             ("int4", 4.9, "int8")])
def test_mg_ptq_budget_objective_and_exactness(fmt, budget, high):
    from fpq.ptq.weight_only import layer_error, layer_rows, relative_rows
    batches = _batches()
    q = fpq.convert(tiny_bert(), weights=fmt, scope="modules", group_size=32)
    floats = {n: _w(m) for n, m in weight_only_layers(q)}
    bits0 = effective_bits(q)
    x = relative_rows(layer_rows(q, FIRST, batches), floats[FIRST])     # FIRST's inputs: no quantized layer before
    e_rtn = layer_error(x, floats[FIRST], q.get_submodule(FIRST).quantized_weight().detach())
    rep = {}
    opts = ({} if budget is None else {"mg_bits": budget}) | ({} if high is None else {"mg_high": high})
    fpq.ptq(q, batches, methods=["mg_ptq"], mg_steps=6, report=rep, progress=False, **opts)
    r = rep["mg_ptq"]
    assert set(r) == set(floats)
    eb = effective_bits(q)
    for n, m in weight_only_layers(q):
        lim = bits0["layers"][n] if budget is None else budget
        assert eb["layers"][n] <= lim + 1e-12 and layer_bits(m) == r[n]["bits"]
        assert r[n]["error"] <= r[n]["error_rtn"]
        for c in r[n]["candidates"].values():
            assert c["error_gnn"] <= c["error_diag"]
        assert torch.equal(m.quantized_weight(), m.weight)              # grid values written back
        assert str(m.fpq_weight.fmt) == q.fpq_weight_only["layers"][n] == r[n]["format"]
        assert m.keep_cols.numel() == r[n]["high_cols"]
    assert eb["total"] <= (bits0["total"] if budget is None else budget) + 1e-12
    assert rep["effective_bits"] == pytest.approx(eb["total"])
    layer = q.get_submodule(FIRST)
    assert layer_error(x, floats[FIRST], layer.weight.detach()) == pytest.approx(r[FIRST]["error"], rel=1e-9)
    assert r[FIRST]["error_rtn"] == pytest.approx(e_rtn, rel=1e-9)
    mixed = [m for _, m in weight_only_layers(q) if m.has_kept()]
    if fmt == "e4m3" or budget:                  # a lower base format with kept columns wins somewhere here
        assert mixed and sum(v["error"] for v in r.values()) < sum(v["error_rtn"] for v in r.values())
    for m in mixed[:2]:
        _exact_checks(m)
    _exact_checks(q.get_submodule("encoder.layer.1.intermediate.dense"))


def test_mg_ptq_with_gptq_and_refusals():
    b = _batches()
    q = fpq.convert(tiny_bert(), weights="int4", scope="modules", group_size=32)
    rep = {}
    fpq.ptq(q, b, methods=["gptq", "mg_ptq"], mg_bits=4.9, mg_high=["int8"], mg_steps=3, report=rep, progress=False)
    assert set(rep["gptq"]) == set(rep["mg_ptq"]) and effective_bits(q)["total"] <= 4.9
    assert any(m.has_kept() for _, m in weight_only_layers(q))
    for _, m in weight_only_layers(q):
        assert torch.equal(m.quantized_weight(), m.weight)
    q = fpq.convert(tiny_bert(), weights="int4", scope="modules", group_size=32)
    for kw, msg in [(dict(methods=["mg_ptq", "mixed_precision"]), "pick one"),
                    (dict(methods=["mg_ptq"], mg_steps=0), "mg_topk and mg_steps must be >= 1"),
                    (dict(methods=["mg_ptq"], mg_bits=0), "mg_bits"),
                    (dict(methods=["mg_ptq"], mg_high="int4"), "must be wider than its format int4"),
                    (dict(methods=["mg_ptq"], mg_bits=1.0, mg_steps=2), "cannot meet mg_bits=1.0")]:
        with pytest.raises(ValueError, match=msg):
            fpq.ptq(q, b, progress=False, **kw)
