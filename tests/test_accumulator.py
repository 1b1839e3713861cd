"""Narrow wrapping accumulators (fpq.convert(accumulator_bits=...)): the exact accumulator's LSB,
fewer top bits, wrap on overflow as ap_fixed's AP_WRAP -- torch, QONNX (as Add/Div/Floor/Mul/Sub),
qonnx's executor, both emulator backends and the HLS C-sim agree bit for bit, on inputs where the
wrap really changes the outputs."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import fpq
from fpq.testing.networks import conv2d_bn_net, mlp
from fpq.export.graph import read_graph
from fpq.formats import Fixed
from fpq.testing.conformance import probe_inputs
from fpq.typeplan import narrow_accumulator


def test_narrow_accumulator_keeps_the_lsb_and_wraps():
    exact = Fixed(26, 10, True)
    acc = narrow_accumulator(exact, 12)
    assert (acc.width, acc.frac_bits, acc.signed, acc.overflow) == (12, exact.frac_bits, True, "WRAP")
    assert narrow_accumulator(exact, 26) == exact and narrow_accumulator(exact, 40) == exact
    for bad in (1, 0, 12.5, True, "12"):
        with pytest.raises(ValueError, match="accumulator_bits must be an integer >= 2"):
            narrow_accumulator(exact, bad)
    # the wrap equals ap_fixed WRAP (fpq.quantize to the WRAP type) on every value of a range, in both backends
    from fpq.typeplan import wrap
    y = np.arange(-5000, 5000) * 2.0 ** -exact.frac_bits * 7
    np.testing.assert_array_equal(wrap(y, acc), fpq.quantize(y, acc))
    np.testing.assert_array_equal(wrap(torch.from_numpy(y), acc).numpy(), fpq.quantize(y, acc))


def _without_wrap(q):
    q0 = copy.deepcopy(q)
    for mod in q0.modules():
        if getattr(mod, "fpq_accumulator_bits", None) is not None:
            mod.fpq_accumulator_bits = None
    return q0


@pytest.mark.slow
@pytest.mark.parametrize("name,io_type,backend", [("mlp", "io_parallel", "Vitis"), ("conv", "io_stream", "Vivado")])
def test_every_path_wraps_identically(name, io_type, backend, tmp_path):
    m, shape = mlp() if name == "mlp" else conv2d_bn_net(groups=1)
    q = fpq.convert(m, fmt="int8", bias="fixed<24,16>", accumulator_bits={"*": 13, "0": 12})
    fpq.calibrate(q, [torch.randn(256, *shape, generator=torch.Generator().manual_seed(0)) * 2], progress=False)
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.zeros(1, *shape))
    g = read_graph(path)
    weighted = [op for op in g.ops if op.weight is not None]
    assert [op.attrs.get("accumulator_bits") for op in weighted] == [12] + [13] * (len(weighted) - 1)
    x = probe_inputs(g, 2000, seed=3)
    with torch.no_grad():
        y_torch = q(torch.from_numpy(x)).double().numpy()
        y_exact = _without_wrap(q)(torch.from_numpy(x)).double().numpy()
    rows_changed = np.mean(np.any(y_torch != y_exact, axis=1))
    assert rows_changed > 0.05, rows_changed          # the wrap is exercised, not idle
    y_emu = fpq.emulate(path, x)
    np.testing.assert_array_equal(y_emu, y_torch)
    np.testing.assert_array_equal(fpq.emulate(path, x, backend="torch").numpy(), y_torch)
    rep = fpq.verify(q, x[:300], qonnx_subset=6)
    assert rep.exact and any(r["path"] == "qonnx" for r in rep.table)
    proj = fpq.to_hls(path, tmp_path / "prj", backend=backend, io_type=io_type)
    accs = [proj.info["layers"][op.name]["accum"] for op in weighted]
    assert all(a.startswith(("fixed<12,", "fixed<13,")) and a.endswith("WRAP>") for a in accs), accs
    np.testing.assert_array_equal(np.asarray(proj.predict(x), np.float64).reshape(y_emu.shape), y_emu)


def test_refusals_and_training():
    m, shape = mlp()
    x = torch.randn(64, *shape)
    # the default int16 bias (scale from its max) would be finer than the products: calibrate gives it
    # the products' LSB; a Fixed bias carries its own scaling, so a finer one is refused naming the fix
    q = fpq.convert(m, fmt="int8", accumulator_bits=16)
    fpq.calibrate(q, [x], progress=False)
    for lp in fpq.plan(q):
        if "accumulator" in lp.tensors:
            assert lp.tensors["bias"].carrier().frac_bits == lp.tensors["product"].frac_bits
            assert lp.tensors["accumulator"].width == 16
    q = fpq.convert(m, fmt="int8", bias="fixed<24,2>", accumulator_bits=16)
    with pytest.raises(ValueError, match=r"layer '0': .*Quantize the bias on the product grid"):
        fpq.calibrate(q, [x], progress=False)
    with pytest.raises(ValueError, match=r"accumulator_bits entries \['nope'\] match no Linear/Conv"):
        fpq.convert(m, fmt="int8", accumulator_bits={"nope": 12})
    with pytest.raises(ValueError, match="integer >= 2"):
        fpq.convert(m, fmt="int8", accumulator_bits=1)
    # QAT: the forward pass wraps, the gradient passes straight through
    q = fpq.convert(m, fmt="int8", bias="fixed<24,16>", accumulator_bits=12)
    fpq.calibrate(q, [x], progress=False)
    q.train()
    out = q(x)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in q.named_parameters()
               if n.endswith("weight"))
    q.eval()


@pytest.mark.slow
def test_da_refuses_and_cost_model_prices_the_narrow_accumulator(tmp_path):
    m, shape = mlp()
    q = fpq.convert(m, fmt="int8", bias="fixed<24,16>", accumulator_bits=12)
    fpq.calibrate(q, [torch.randn(256, *shape)], progress=False)
    with pytest.raises(ValueError, match="narrow wrapping accumulator"):
        fpq.to_hls(q, tmp_path / "prj", strategy="distributed_arithmetic", example_input=torch.zeros(1, *shape))
    assert not (tmp_path / "prj").exists()
    narrow, exact = fpq.estimate_cost(q), fpq.estimate_cost(_without_wrap(q))
    assert narrow.total["ff"] < exact.total["ff"] and narrow.total["lut"] < exact.total["lut"]


@pytest.mark.slow
def test_accumulator_example_smoke(load_script):
    """examples/accumulator_digits.py --quick: every width's emulator == torch on the test images;
    narrower accumulators change more images, the narrowest most of them."""
    ex = load_script("examples/accumulator_digits.py")
    out = ex.main(quick=True, verbose=False)
    rows = out["rows"]
    assert rows[0]["bits"] == "exact" and all(r["exact_emulation"] for r in rows)
    assert max(out["exact_widths"].values()) > 16
    # an image whose logits change at N bits has a sum that overflows N bits, and so N - 1 bits
    changed = [r["changed"] for r in rows[1:]]
    assert changed == sorted(changed) and changed[-1] > 50.0
    assert rows[-1]["cost"]["ff"] < rows[0]["cost"]["ff"]
