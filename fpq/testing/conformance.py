"""Inputs that probe exactness of a quantized network (off-grid, ties, out-of-range), and the
cells of the HLS conformance matrix (issue 4) built from them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import values


def probe_inputs(graph, n: int = 2000, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    """``n`` float32 inputs for a graph IR: mostly random off-grid values at the scale of the
    input quantizer's range, one in ten far out of range (they saturate), and one in ten put
    exactly on a rounding tie of the input quantizer (the midpoint of two neighbouring values)
    or one float32 ulp beside it. The rows come in random order, so that any prefix (a qonnx
    subset, a trace) mixes all three kinds."""
    rng = np.random.default_rng(seed)
    iq = next(op for op in graph.ops if op.kind == "input_quant")
    shape = tuple(int(d) for d in graph.input_shapes[graph.inputs[0]][1:])
    tt = iq.quant.ttype
    scale = float(np.ravel(tt.scale)[0])
    grid = values(tt.format) * scale
    top = float(np.max(np.abs(grid)))
    x = rng.standard_normal((n,) + shape) * (top / spread)
    flat = x.reshape(n, -1)
    k = max(1, n // 10)
    flat[:k] *= 50.0  # saturating
    ties = (grid[1:] + grid[:-1]) / 2
    pick = rng.choice(ties, size=flat[k:2 * k].shape)
    nudge = rng.choice([-1, 0, 0, 1], size=pick.shape)
    p32 = pick.astype(np.float32)
    p32 = np.where(nudge > 0, np.nextafter(p32, np.float32(np.inf)),
                   np.where(nudge < 0, np.nextafter(p32, np.float32(-np.inf)), p32))
    flat[k:2 * k] = p32
    return flat[rng.permutation(n)].reshape(x.shape).astype(np.float32)


# ---------------------------------------------------------------- conformance cells (issue 4)

# Formats the "mixed" cell cycles through over the weighted layers: int, fixed and minifloat
# side by side, so that every layer boundary converts between two kinds of format.
MIXED_CYCLE = ("int8", "e4m3", "fixed<8,3>", "e2m1")


def mixed_overrides(model, cycle=MIXED_CYCLE) -> dict:
    """``fpq.convert`` overrides giving the Linear / Conv layers of ``model`` the formats of
    ``cycle`` in turn (definition order)."""
    from torch import nn

    weighted = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not weighted:
        raise ValueError("mixed_overrides: the model has no Linear / Conv1d / Conv2d layer")
    return {name: cycle[i % len(cycle)] for i, name in enumerate(weighted)}


@dataclass
class Cell:
    """One (format, model, backend, io type) point of the conformance matrix, built and checked."""

    report: object        # fpq.verify's VerifyReport (torch, emulator, qonnx subset, HLS)
    project: object       # the HLSProject
    onnx_path: str
    x: np.ndarray         # the probe inputs
    seconds: dict         # step -> wall seconds (convert, to_hls, gcc, verify)


def conformance_cell(model, input_shape, fmt, outdir, *, backend="Vitis", io_type="io_parallel", n=2000,
                     qonnx_subset=16, seed=0) -> Cell:
    """fpq.convert (``fmt``: a format, or "mixed" for ``mixed_overrides``), calibrate on random
    data, export QONNX, ``fpq.to_hls``, then ``fpq.verify`` on ``n`` probe inputs
    (``probe_inputs``): torch, emulator and C-sim on all of them, qonnx's executor on the first
    ``qonnx_subset``."""
    import time
    from pathlib import Path

    import torch

    import fpq
    from ..export import read_graph

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    t = {}
    t0 = time.perf_counter()
    kw = dict(fmt="int8", overrides=mixed_overrides(model)) if fmt == "mixed" else dict(fmt=fmt)
    q = fpq.convert(model, **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = torch.randn((256,) + tuple(input_shape), generator=gen) * 2
    fpq.calibrate(q, [calib])
    q.eval()
    path = str(outdir / "model.onnx")
    fpq.export_qonnx(q, path, calib[:1])
    t["convert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    proj = fpq.to_hls(path, outdir / "prj", backend=backend, io_type=io_type)
    t["to_hls"], t["gcc"] = time.perf_counter() - t0, proj.compile_s
    x = probe_inputs(read_graph(path), n, seed=seed + 2)
    t0 = time.perf_counter()
    rep = fpq.verify(q, x, proj, qonnx_subset=qonnx_subset, model=path)
    t["verify"] = time.perf_counter() - t0
    return Cell(rep, proj, path, x, t)


# The matrix of issue 4: formats x the example models (fpq.testing.networks.MODELS).
FORMATS = ("int8", "int4", "fixed<8,3>", "fixed<6,2,RND,SAT>", "e4m3", "e3m2", "e2m3", "e2m1", "e5m2", "mixed")
MODEL_NAMES = ("mlp", "conv1d", "conv2d_bn", "residual")
CONV_NETS = ("conv1d", "conv2d_bn")
BACKENDS = ("Vitis", "Vivado")


def default_cells() -> list:
    """One (format, model, backend, io type) per (format, model): the backend alternates along
    both axes (each format meets both over its models), the conv nets' io type alternates every
    two formats (each conv net meets io_stream and io_parallel, each with both backends)."""
    cells = []
    for i, fmt in enumerate(FORMATS):
        for j, model in enumerate(MODEL_NAMES):
            io = "io_stream" if model in CONV_NETS and (i // 2) % 2 == 0 else "io_parallel"
            cells.append((fmt, model, BACKENDS[(i + j) % 2], io))
    return cells


def full_cells() -> list:
    """Every format x model x backend, io_parallel everywhere and io_stream for the conv nets."""
    return [(fmt, model, backend, io) for fmt in FORMATS for model in MODEL_NAMES for backend in BACKENDS
            for io in (("io_parallel", "io_stream") if model in CONV_NETS else ("io_parallel",))]


def all_paths_exact(q, shape, n: int = 2000, qonnx_subset: int = 32, seed: int = 0):
    """Assert torch == numpy emulator == torch emulator bit for bit on ``n`` probe inputs of a
    converted model (one input of ``shape``, no batch), and ``fpq.verify`` EXACT with qonnx's
    executor counted on a subset. Returns (graph, inputs)."""
    import torch

    import fpq
    from ..emulate import Emulator
    from ..export import read_graph
    g = read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + tuple(shape))))
    x = probe_inputs(g, n, seed=seed)
    y_torch = q(torch.from_numpy(x)).detach().numpy()
    y_np = Emulator(g)(x)
    y_te = Emulator(g, backend="torch")(torch.from_numpy(x)).cpu().numpy()
    assert np.array_equal(y_torch, y_np) and np.array_equal(y_np, y_te)
    rep = fpq.verify(q, x, qonnx_subset=qonnx_subset)
    assert rep.exact, rep.table
    assert {"torch", "qonnx"} <= {r["path"] for r in rep.table}
    return g, x
