"""fpq.to_hls refuses what it cannot make exact, before writing any file, and never leaves a
failed project that looks complete. Also: a weight with a float (non power-of-two) scale is
carried exactly in fixed point."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.export.graph import read_graph
from fpq.formats import Minifloat
from fpq.hls import HLSUnsupportedError
from fpq.hls.builder import values_carrier
from fpq.typeplan import TensorType


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _export(tmp, name, **conv_kw):
    q = fpq.convert(_mlp(), **conv_kw)
    x = torch.randn(128, 8, generator=torch.Generator().manual_seed(1)) * 2
    fpq.calibrate(q, [x])
    q.eval()
    path = str(tmp / f"{name}.onnx")
    fpq.export_qonnx(q, path, x[:1])
    return path


@pytest.fixture(scope="module")
def int8_path(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ref"), "int8", fmt="int8")


def _assert_refused(target, out, match, exc=HLSUnsupportedError, **kw):
    with pytest.raises(exc, match=match):
        fpq.to_hls(target, out, **kw)
    assert not out.exists(), "a refused model must not leave files"
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_float_scales_on_weights_and_activations_are_refused_naming_the_layer(tmp_path):
    """Float-scaled activations are built as exact lookup tables (test_hls_float_scales.py), but
    not after a sum of float-scaled inputs times float-scaled weights: that sum is wider than 53
    bits, and the quantizer is defined on its float64 value."""
    path = _export(tmp_path, "float", fmt="int8", scale="float")
    g = read_graph(path)
    quant_ops = [op.name for op in g.ops if op.kind in ("input_quant", "quant")]
    with pytest.raises(HLSUnsupportedError) as err:
        fpq.to_hls(path, tmp_path / "prj")
    msg = str(err.value)
    assert "not a power of two" in msg and "wider than 53 bits" in msg and "power-of-two (or Fixed) weight" in msg
    assert any(f"quantizer '{name}'" in msg for name in quant_ops), msg
    assert not (tmp_path / "prj").exists()


def test_unsupported_op_is_refused(int8_path, tmp_path):
    g = read_graph(int8_path)
    relu = next(op for op in g.ops if op.kind == "relu")
    relu.kind, relu.attrs = "mul", {"value": np.float32(3.0)}
    _assert_refused(g, tmp_path / "prj", match=rf"op '{relu.name}' of kind 'mul' is not supported.*supported: .*linear")


def test_non_saturating_minifloat_is_refused(int8_path, tmp_path):
    g = read_graph(int8_path)
    op = next(op for op in g.ops if op.kind == "quant")
    fmt = Minifloat(4, 3, specials="ieee", saturate=False)
    op.quant = dataclasses.replace(op.quant, ttype=TensorType(fmt, op.quant.ttype.scale))
    _assert_refused(g, tmp_path / "prj", match=rf"quantizer '{op.name}'.*non-saturating")


def test_per_channel_activation_scale_is_refused(int8_path, tmp_path):
    g = read_graph(int8_path)
    op = next(op for op in g.ops if op.kind == "quant")
    n = op.out_shape[-1]
    scales = (2.0 ** -(np.arange(n) % 3)).astype(np.float32)
    op.quant = dataclasses.replace(op.quant, ttype=TensorType(op.quant.format, scales), scale=scales.reshape(1, n))
    _assert_refused(g, tmp_path / "prj", match=rf"quantizer '{op.name}': per-channel activation scales")


def test_bad_arguments(int8_path, tmp_path):
    for kw, match in ((dict(backend="Quartus"), "backend 'Quartus'"), (dict(io_type="io_serial"), "io_type"),
                      (dict(strategy="Fast"), "strategy"), (dict(reuse_factor=0), "reuse_factor"),
                      (dict(clock_period=-1), "clock_period")):
        _assert_refused(int8_path, tmp_path / "prj", match=match, exc=ValueError, **kw)


def test_torch_model_needs_example_input(tmp_path):
    # a conv-first model tells no input size (a Linear-first one does: its in_features)
    q = fpq.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), fmt="int8")
    _assert_refused(q, tmp_path / "prj", match="example_input", exc=ValueError)


def test_foreign_outdir_is_not_overwritten(int8_path, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        fpq.to_hls(int8_path, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_failed_compile_leaves_no_complete_project(int8_path, tmp_path, monkeypatch):
    from hls4ml.model.graph import ModelGraph

    def broken(self):
        raise RuntimeError("g++ exploded")

    monkeypatch.setattr(ModelGraph, "_compile", broken)
    out = tmp_path / "prj"
    with pytest.raises(RuntimeError, match="compiling the HLS project failed.*g\\+\\+ exploded"):
        fpq.to_hls(int8_path, out)
    assert not out.exists()
    failed = tmp_path / "prj.failed"
    assert (failed / "build_prj.tcl").is_file()            # sources kept for debugging
    assert not (failed / "fpq_project.json").exists()      # but never stamped complete
    assert not list(tmp_path.glob(".prj.tmp-*"))


def test_values_carrier_is_exact_and_minimal():
    rng = np.random.default_rng(0)
    v = (rng.integers(-127, 128, 200) * np.float32(0.0123)).astype(np.float32)
    c = values_carrier(v)
    assert np.array_equal(fpq.quantize(v.astype(np.float64), c), v.astype(np.float64))
    smaller = fpq.Fixed(c.width - 1, c.int_bits - 1)  # one fractional bit less
    assert not np.array_equal(fpq.quantize(v.astype(np.float64), smaller), v.astype(np.float64))


@pytest.mark.slow
def test_float_weight_scale_is_carried_exactly(int8_path, tmp_path):
    """Weights whose scale is not a power of two are still dyadic float32 numbers: fpq carries
    them in a wide exact fixed type; activations keep power-of-two scales, so C-sim stays exact."""
    g = read_graph(int8_path)
    lin = next(op for op in g.ops if op.kind == "linear")
    s = np.float32(0.7)
    lin.weight = (lin.weight * s).astype(np.float32)
    wt = lin.types["weight"]
    lin.types["weight"] = TensorType(wt.format, (wt.scale * s).astype(np.float32))
    proj = fpq.to_hls(g, tmp_path / "prj")
    w_type = fpq.parse_format(proj.info["layers"][lin.name]["weight"])
    assert w_type.width > 8  # wider than int8: the carrier of the actual float32 values
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 8)) * 2).astype(np.float32)
    y = proj.predict(x)
    assert np.array_equal(y, np.asarray(fpq.emulate(g, x), dtype=np.float64))
    assert np.unique(y).size > 8


@pytest.mark.slow
def test_cli_hls_then_load_project_and_verify(int8_path, tmp_path, capsys):
    """`fpq hls` writes a project; load_project reuses it; fpq.verify finds C-sim exact."""
    import argparse

    from fpq.cli.hls import cli_register
    from fpq.hls import load_project

    parser = argparse.ArgumentParser(prog="fpq")
    cli_register(parser.add_subparsers())
    out = tmp_path / "cli_prj"
    args = parser.parse_args(["hls", int8_path, "--out", str(out), "--backend", "Vivado", "--reuse-factor", "2",
                              "--strategy", "Resource"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "accum=fixed<" in printed
    proj = load_project(out)
    assert proj.info["strategy"] == "Resource" and proj.info["reuse_factor"] == 2
    x = (np.random.default_rng(5).standard_normal((300, 8)) * 3).astype(np.float32)
    assert np.array_equal(proj.predict(x), np.asarray(fpq.emulate(int8_path, x), dtype=np.float64))
    assert callable(proj.hls_model.build)  # hls4ml's linked project: build() runs the vendor flow
    rep = fpq.verify(int8_path, x[:200], project=proj, qonnx_subset=8)
    assert rep.exact, str(rep)
    with pytest.raises(FileNotFoundError, match="not a complete fpq HLS project"):
        load_project(tmp_path)
