"""Issue 4's conformance matrix through HLS C-sim: torch == emulator == qonnx exec == C-sim, atol=0.

Formats x models (``fpq.testing.networks.MODELS``): each cell converts the model, calibrates it on
random data, exports QONNX, builds and compiles the hls4ml project and runs ``fpq.verify`` on
2000 probe inputs (off-grid, saturating, rounding ties; ``fpq.testing.conformance.probe_inputs``):
torch, emulator and C-sim (output and every traced layer) on all of them, qonnx's executor on
the first 16.

The default run covers every (format, model) cell once, on a backend / io type chosen so that
every format meets both backends and every conv net both io types (``default_cells``). One
compile takes ~7-20 s of CPU, so ``FPQ_CONFORMANCE_FULL=1`` runs the full cross (both backends,
io_parallel everywhere, io_stream for the conv nets; ``full_cells``) outside CI. The dense
models' cells are here, the conv nets' in test_hls_conformance_conv.py (pytest-xdist's
loadfile puts each file on one worker).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from fpq.testing.networks import MODELS
from fpq.testing.conformance import BACKENDS, CONV_NETS, FORMATS, MODEL_NAMES, conformance_cell, default_cells, full_cells

pytestmark = pytest.mark.slow

N_PROBES, QONNX_SUBSET = 2000, 16
# Every format of the matrix has an exact QONNX form, so every cell requires qonnx's agreement:
# fixed<6,2,RND,SAT> (ties towards +inf, no QONNX rounding_mode) is written as a half-step Quant
# node (FLOOR, half an LSB) and a CEIL Quant node (fpq.export.graph.TWO_NODE_ROUNDING).
CELLS = full_cells() if os.environ.get("FPQ_CONFORMANCE_FULL") == "1" else default_cells()


def cells_of(models) -> list:
    return [pytest.param(*c, id="-".join(c)) for c in CELLS if c[1] in models]


def test_default_cells_cover_the_matrix():
    cells = default_cells()
    assert len(cells) == len(FORMATS) * len(MODEL_NAMES)
    assert {(f, m) for f, m, _, _ in cells} == {(f, m) for f in FORMATS for m in MODEL_NAMES}
    for fmt in FORMATS:
        assert {b for f, _, b, _ in cells if f == fmt} == set(BACKENDS), fmt
    for model in CONV_NETS:
        seen = {(b, io) for _, m, b, io in cells if m == model}
        assert seen == {(b, io) for b in BACKENDS for io in ("io_parallel", "io_stream")}, model
    assert set(cells) <= set(full_cells())
    assert len(full_cells()) == len(FORMATS) * len(BACKENDS) * (len(MODEL_NAMES) + len(CONV_NETS))


def run_cell(fmt, model_name, backend, io_type, tmp_path):
    model, shape = MODELS[model_name]()
    cell = conformance_cell(model, shape, fmt, tmp_path, backend=backend, io_type=io_type, n=N_PROBES,
                            qonnx_subset=QONNX_SUBSET)
    rep, proj = cell.report, cell.project
    print(f"\n{fmt} {model_name} {backend} {io_type}: " + ", ".join(f"{k} {v:.1f} s" for k, v in cell.seconds.items()))
    assert rep.paths == ["emulator", "torch", "qonnx", "hls"], rep
    # every path must be comparable: no quantizer the qonnx executor computes differently
    assert not [n for n in rep.notes if "qonnx path" in n], rep.notes
    assert rep.exact, f"{fmt} {model_name} {backend} {io_type}:\n{rep}"

    out_rows = {r["path"]: r for r in rep.table if r["layer"] == "<output>"}
    n_out = int(np.prod(proj.output_shape))
    assert out_rows["hls"]["compared"] == out_rows["torch"]["compared"] == N_PROBES * n_out
    assert out_rows["qonnx"]["compared"] == QONNX_SUBSET * n_out
    assert all(r["mismatches"] == 0 for r in out_rows.values())
    assert np.unique(rep.outputs["hls"]).size > 8, "outputs collapsed: the probe is not exercising the network"
    # every weighted layer's value is compared inside the C-sim too (hls4ml's trace)
    compared = {r["layer"] for r in rep.table if r["path"] == "hls" and r["layer"] != "<output>" and r["compared"]}
    weighted = [op for layer, (op, _, _) in proj.info["layer_ops"].items() if layer.startswith(("linear", "conv"))]
    assert weighted and set(weighted) <= compared, (weighted, sorted(compared))

    assert (proj.info["backend"], proj.info["io_type"]) == (backend, io_type)
    defines = (proj.outdir / "firmware" / "defines.h").read_text()
    assert "ap_fixed<16,6>" not in defines  # every type is an fpq type, never hls4ml's default
    if model_name == "conv2d_bn":  # regression: its second conv is grouped (groups=2), built dense
        assert any("groups=2" in note for note in proj.info["notes"]), proj.info["notes"]


@pytest.mark.parametrize("fmt,model_name,backend,io_type", cells_of(("mlp", "residual")))
def test_cell(fmt, model_name, backend, io_type, tmp_path):
    run_cell(fmt, model_name, backend, io_type, tmp_path)
