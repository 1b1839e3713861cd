"""``fpq.to_hls``: an exact hls4ml project from a quantized model, written and compiled for C-sim.

The project is written and compiled in a temporary sibling folder and moved to ``outdir`` only
when g++ succeeded, with an ``fpq_project.json`` stamp written last: a failed compile leaves
nothing that looks like a finished project. Refusals (an op, format or scale that cannot be
exact in HLS) happen while planning, before any file is written.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .builder import HLSPlan, HLSUnsupportedError, plan_hls

BACKENDS = {"vitis": "Vitis", "vivado": "Vivado"}
IO_TYPES = ("io_parallel", "io_stream")
STRATEGIES = {"latency": "Latency", "resource": "Resource"}
STAMP = "fpq_project.json"
PROJECT_NAME = "fpq_model"


class HLSProject:
    """A written, compiled hls4ml project of an fpq model.

    ``predict(x)`` runs the C simulation (torch layouts in and out, float64 values);
    ``trace(x)`` returns every layer's output keyed by the IR op names; ``build(...)`` runs the
    vendor flow (Vivado / Vitis HLS must be installed).
    """

    def __init__(self, hls_model, plan: HLSPlan, outdir: Path, graph, compile_s: float):
        self.hls_model = hls_model
        self.plan = plan
        self.outdir = Path(outdir)
        self.graph = graph
        self.compile_s = compile_s

    def __repr__(self):
        return f"HLSProject({str(self.outdir)!r}, {len(self.plan.layers)} hls4ml layers)"

    # -- inputs / outputs in torch layout
    def _prepare(self, x) -> tuple[np.ndarray, int]:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ValueError(f"predict takes floating-point inputs, got dtype {x.dtype}")
        shape = self.plan.input_shape
        if x.shape == shape:
            x = x[None]
        if x.shape[1:] != shape:
            raise ValueError(f"input of shape {x.shape}; the model takes (batch, {', '.join(map(str, shape))})")
        if np.isnan(x).any():
            raise ValueError("NaN input: fixed-point hardware has no NaN")
        x64 = x.astype(np.float64)
        if self.plan.input_float32 and not np.array_equal(x64.astype(np.float32).astype(np.float64), x64,
                                                          equal_nan=True):
            raise ValueError("this design's input port is exact for float32 values (its first quantizer runs "
                             "after the port); pass float32 inputs (x.astype(np.float32))")
        n = x64.shape[0]
        flat = x64.reshape(n, -1)
        if self.plan.input_perm is not None:
            flat = flat[:, self.plan.input_perm]
        return np.ascontiguousarray(flat), n

    def _to_torch(self, y: np.ndarray, n: int, shape: tuple, perm) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64).reshape(n, -1)
        if perm is not None:
            out = np.empty_like(y)
            out[:, perm] = y
            y = out
        return y.reshape((n,) + tuple(shape))

    def predict(self, x) -> np.ndarray:
        """C-sim of the compiled project on ``x`` (batch, *input shape) -> (batch, *output shape)."""
        flat, n = self._prepare(x)
        y = self.hls_model.predict(flat)
        return self._to_torch(y, n, self.plan.output_shape, self.plan.output_perm)

    def trace(self, x) -> dict:
        """Output of every traced layer for ``x``, keyed by the IR op whose value it holds
        (an op fused into its producer, e.g. a re-quantization, is reported under its own name)."""
        flat, n = self._prepare(x)
        lib = self.hls_model._top_function_lib
        top, _ = self.hls_model._get_top_function(flat)
        layers = {}
        for layer in self.hls_model.get_layers():
            if layer.get_attr("function_cpp", None) and layer.get_attr("trace", False):
                layers[layer.name] = int(np.prod(layer.get_output_variable().shape))

        class _Trace(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p)]

        lib.allocate_trace_storage.argtypes = [ctypes.c_size_t]
        lib.collect_trace_output.argtypes = [ctypes.POINTER(_Trace)]
        slots = (_Trace * len(layers))()
        per_layer = {name: [] for name in layers}
        out_size = int(np.prod(self.plan.output_shape))
        lib.allocate_trace_storage(ctypes.sizeof(ctypes.c_double))
        try:
            for i in range(n):
                res = np.zeros(out_size, dtype=np.float64)
                top(np.ascontiguousarray(flat[i]), res)
                lib.collect_trace_output(slots)
                for s in slots:
                    name = s.name.decode()
                    ptr = ctypes.cast(s.data, ctypes.POINTER(ctypes.c_double))
                    per_layer[name].append(np.ctypeslib.as_array(ptr, shape=(layers[name],)).copy())
        finally:
            lib.free_trace_storage()
        out = {}
        for op_name, layer in self.plan.op_layer.items():
            if layer in per_layer and self.plan.layer_op.get(layer) == op_name:
                shape, perm = self.plan.layer_shape[layer]
                out[op_name] = self._to_torch(np.array(per_layer[layer]), n, shape, perm)
        return out

    def build(self, **kwargs):
        """Run the vendor HLS flow (hls4ml's ``build``: csim, synth, ...). Needs Vivado/Vitis HLS."""
        return self.hls_model.build(**kwargs)


def _check_args(backend, io_type, strategy, reuse_factor, clock_period):
    b = BACKENDS.get(str(backend).lower())
    if b is None:
        raise ValueError(f"backend {backend!r} is not supported; allowed: Vitis, Vivado")
    if io_type not in IO_TYPES:
        raise ValueError(f"io_type {io_type!r} is not supported; allowed: {', '.join(IO_TYPES)}")
    s = STRATEGIES.get(str(strategy).lower())
    if s is None:
        raise ValueError(f"strategy {strategy!r} is not supported; allowed: Latency, Resource")
    if isinstance(reuse_factor, bool) or not isinstance(reuse_factor, int) or reuse_factor < 1:
        raise ValueError(f"reuse_factor must be an integer >= 1, got {reuse_factor!r}")
    if not isinstance(clock_period, (int, float)) or not clock_period > 0:
        raise ValueError(f"clock_period must be a positive number of ns, got {clock_period!r}")
    return b, s


def _read_graph(q, example_input):
    """The fpq graph IR of a converted torch model, a QONNX file / ModelWrapper / ModelProto, or an IR Graph."""
    from ..export.graph import Graph, read_graph

    if isinstance(q, Graph):
        return q
    try:
        import torch
        is_module = isinstance(q, torch.nn.Module)
    except ImportError:  # pragma: no cover - torch is a dependency
        is_module = False
    if is_module:
        from ..export import export_qonnx

        if example_input is None:
            raise ValueError("to_hls of a torch model needs example_input= (a tensor of the input shape) "
                             "to export it to QONNX first")
        return read_graph(export_qonnx(q, None, example_input))
    if isinstance(q, (str, os.PathLike)) and not Path(q).is_file():
        raise FileNotFoundError(f"no QONNX file at {q}")
    return read_graph(q)


def _config(plan: HLSPlan, backend: str, io_type, part, clock_period, reuse_factor, strategy, outdir) -> dict:
    from hls4ml.backends import get_backend

    config = get_backend(backend).create_initial_config(part=part, clock_period=clock_period, io_type=io_type)
    config["Backend"] = backend
    config["TraceOutput"] = True  # trace code is compiled for C-sim only (#ifndef __SYNTHESIS__)
    config["ProjectName"] = PROJECT_NAME
    config["OutputDir"] = str(outdir)
    from . import cpp

    layer_cfg = {}
    for name, prec in plan.precisions.items():
        layer_cfg[name] = {"Precision": {k: cpp.hls4ml_precision(v) for k, v in prec.items()}, "Trace": True,
                           "ReuseFactor": reuse_factor, "Strategy": strategy}
    # The model-level default precision is never used: every variable gets an explicit type and
    # _check_precisions() verifies it after hls4ml's passes ran.
    config["HLSConfig"] = {"Model": {"Precision": "fixed<16,6>", "ReuseFactor": reuse_factor, "Strategy": strategy,
                                     "BramFactor": 1_000_000_000},
                           "LayerName": layer_cfg}
    return config


def _same(p, fixed) -> bool:
    from hls4ml.model.types import FixedPrecisionType

    if not isinstance(p, FixedPrecisionType):
        return False
    return (p.width, p.integer, p.signed) == (fixed.width, fixed.int_bits, fixed.signed) and \
        str(p.rounding_mode).split(".")[-1].replace("AP_", "") == fixed.rounding and \
        str(p.saturation_mode).split(".")[-1].replace("AP_", "") == fixed.overflow


def _check_precisions(hls_model, plan: HLSPlan) -> None:
    """After hls4ml's passes: every planned type is in place, and every layer hls4ml inserted
    (clones, zero padding, stream repacking) keeps its input's type."""
    planned = plan.precisions
    for layer in hls_model.get_layers():
        want = planned.get(layer.name)
        out = layer.get_output_variable().type.precision
        if want is None:
            inp = layer.get_input_variable().type.precision if layer.inputs else None
            if inp is None or str(inp) != str(out):
                raise AssertionError(f"hls4ml layer {layer.name!r} ({layer.class_name}) inserted by a pass "
                                     f"changes the type {inp} -> {out}")
            continue
        if not _same(out, want["result"]):
            raise AssertionError(f"layer {layer.name!r}: result type {out} is not the planned {want['result']}")
        for var in ("weight", "bias"):
            if var in want and layer.weights.get(var) is not None:
                p = layer.weights[var].type.precision
                if not _same(p, want[var]):
                    raise AssertionError(f"layer {layer.name!r}: {var} type {p} is not the planned {want[var]}")
        if "accum" in want:
            acc = layer.get_attr("accum_t")
            if acc is not None and not _same(acc.precision, want["accum"]):
                raise AssertionError(f"layer {layer.name!r}: accumulator {acc.precision} is not the planned {want['accum']}")


def to_hls(q_or_onnx, outdir, *, backend="Vitis", io_type="io_parallel", part="xcvu9p-flga2104-2-e",
           clock_period=5, reuse_factor=1, strategy="Latency", example_input=None) -> HLSProject:
    """Write an exact hls4ml project of a quantized model and compile it for C simulation.

    ``q_or_onnx``: a model from ``fpq.convert`` (give ``example_input``), a QONNX file path,
    a qonnx ModelWrapper / onnx ModelProto, or an fpq graph IR. Every precision comes from fpq's
    TypePlan (never hls4ml's ``auto``). Raises ``HLSUnsupportedError`` (a ValueError) naming the
    op and the reason, before writing anything, for what cannot be exact in HLS.
    """
    backend, strategy = _check_args(backend, io_type, strategy, reuse_factor, clock_period)
    graph = _read_graph(q_or_onnx, example_input)
    from ..export.graph import typeplan_from_graph

    plan = plan_hls(graph, typeplan_from_graph(graph))  # refusals happen here, before any file
    outdir = Path(outdir).resolve()
    if outdir.exists() and any(outdir.iterdir()) and not (outdir / STAMP).is_file():
        raise FileExistsError(f"{outdir} exists and is not an fpq HLS project; refusing to overwrite it")

    from hls4ml.model.graph import ModelGraph

    from .layers import register

    register()
    outdir.parent.mkdir(parents=True, exist_ok=True)
    # Written in a temporary sibling, moved into place, then compiled there (hls4ml's C-sim
    # library reads its weight files from the folder it was compiled in). A failed compile
    # moves the folder aside to <outdir>.failed; the stamp file is written last.
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        config = _config(plan, backend, io_type, part, clock_period, reuse_factor, strategy, tmp)
        hls_model = ModelGraph.from_layer_list(config, plan.layers, inputs=[plan.input_name],
                                               outputs=[plan.output_layer])
        _check_precisions(hls_model, plan)
        hls_model.write()
        if outdir.exists():
            shutil.rmtree(outdir)
        os.replace(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    hls_model.config.config["OutputDir"] = str(outdir)
    t0 = time.perf_counter()
    try:
        hls_model._compile()  # g++ of the written project (write() already ran)
    except BaseException as err:
        failed = outdir.with_name(outdir.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(outdir, failed)
        raise RuntimeError(f"compiling the HLS project failed ({err}); the sources are in {failed}") from err
    compile_s = time.perf_counter() - t0
    (outdir / STAMP).write_text(json.dumps({
        "fpq_project": PROJECT_NAME, "backend": backend, "io_type": io_type, "part": part,
        "clock_period": clock_period, "reuse_factor": reuse_factor, "strategy": strategy,
        "input_shape": list(plan.input_shape), "output_shape": list(plan.output_shape),
        "layers": {name: {k: str(v) for k, v in prec.items()} for name, prec in plan.precisions.items()},
        "compile_seconds": round(compile_s, 2)}, indent=1))
    return HLSProject(hls_model, plan, outdir, graph, compile_s)


__all__ = ["to_hls", "HLSProject", "HLSUnsupportedError"]
