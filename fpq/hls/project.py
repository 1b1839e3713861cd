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

from ..export import as_graph
from . import da
from .builder import HLSPlan, HLSUnsupportedError, plan_hls

BACKENDS = {"vitis": "Vitis", "vivado": "Vivado"}
IO_TYPES = ("io_parallel", "io_stream")
STRATEGIES = {"latency": "Latency", "resource": "Resource"}
STAMP = "fpq_project.json"
PROJECT_NAME = "fpq_model"


class _CSim:
    """The compiled C-sim library of a project, called through ctypes (the double entry point:
    inputs reach ap_fixed's constructor with every bit they have)."""

    def __init__(self, so_path: Path, n_in: int, n_out: int, traced: dict):
        self.lib = ctypes.CDLL(str(so_path))
        self.n_in, self.n_out, self.traced = n_in, n_out, dict(traced)
        self.top = getattr(self.lib, f"{PROJECT_NAME}_double")
        self.top.argtypes = [ctypes.c_void_p, ctypes.c_void_p]  # raw row pointers: no per-call checks
        self.top.restype = None

    def _rows(self, flat: np.ndarray, out: np.ndarray):
        assert flat.dtype == out.dtype == np.float64 and flat.flags.c_contiguous and out.flags.c_contiguous
        assert flat.shape[1] == self.n_in and out.shape[1] == self.n_out
        a, b = flat.ctypes.data, out.ctypes.data
        sa, sb = flat.strides[0], out.strides[0]
        return ((a + i * sa, b + i * sb) for i in range(flat.shape[0]))

    def run(self, flat: np.ndarray) -> np.ndarray:
        out = np.zeros((flat.shape[0], self.n_out), dtype=np.float64)
        top = self.top
        for pa, pb in self._rows(flat, out):  # the top function takes one sample
            top(pa, pb)
        return out

    def trace(self, flat: np.ndarray) -> dict:
        class _Slot(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p)]

        lib = self.lib
        lib.allocate_trace_storage.argtypes = [ctypes.c_size_t]
        lib.collect_trace_output.argtypes = [ctypes.POINTER(_Slot)]
        slots = (_Slot * len(self.traced))()
        per_layer = {name: np.zeros((flat.shape[0], size)) for name, size in self.traced.items()}
        out = np.zeros((flat.shape[0], self.n_out), dtype=np.float64)
        lib.allocate_trace_storage(ctypes.sizeof(ctypes.c_double))
        try:
            for i, (pa, pb) in enumerate(self._rows(flat, out)):
                self.top(pa, pb)
                lib.collect_trace_output(slots)
                for slot in slots:
                    name = slot.name.decode()
                    ptr = ctypes.cast(slot.data, ctypes.POINTER(ctypes.c_double))
                    per_layer[name][i] = np.ctypeslib.as_array(ptr, shape=(self.traced[name],))
        finally:
            lib.free_trace_storage()
        return per_layer


def _perm(p):
    return None if p is None else np.asarray(p, dtype=np.int64)


class HLSProject:
    """A written, compiled hls4ml project of an fpq model.

    ``predict(x)`` runs the C simulation (torch layouts in and out, float64 values);
    ``trace(x)`` returns every traced layer's output keyed by the IR op whose value it holds;
    ``build(...)`` runs the vendor flow through hls4ml (Vivado / Vitis HLS must be installed).
    ``hls_model`` is the hls4ml ModelGraph (for a project loaded from disk, hls4ml's linked
    stand-in that can compile, predict and build).
    """

    def __init__(self, outdir, info: dict, hls_model=None):
        self.outdir = Path(outdir)
        self.info = info
        self._hls_model = hls_model
        self.compile_s = info.get("compile_seconds")
        self._csim = _CSim(self.outdir / "firmware" / info["library"], info["input_size"], info["output_size"],
                           info["traced"])

    def __repr__(self):
        return f"HLSProject({str(self.outdir)!r}, {self.info['backend']}, {self.info['io_type']})"

    @property
    def hls_model(self):
        if self._hls_model is None:
            from hls4ml.converters import link_existing_project

            self._hls_model = link_existing_project(str(self.outdir))
        return self._hls_model

    @property
    def input_shape(self) -> tuple:
        return tuple(self.info["input_shape"])

    @property
    def output_shape(self) -> tuple:
        return tuple(self.info["output_shape"])

    # -- inputs / outputs in torch layout
    def _prepare(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ValueError(f"predict takes floating-point inputs, got dtype {x.dtype}")
        shape = self.input_shape
        if x.shape == shape:
            x = x[None]
        if x.shape[1:] != shape:
            raise ValueError(f"input of shape {x.shape}; the model takes (batch, {', '.join(map(str, shape))})")
        if np.isnan(x).any():
            raise ValueError("NaN input: fixed-point hardware has no NaN")
        x64 = x.astype(np.float64)
        if self.info["input_float32"] and not np.array_equal(x64.astype(np.float32).astype(np.float64), x64):
            raise ValueError("this design's input port is exact for float32 values (its first quantizer runs "
                             "after the port); pass float32 inputs (x.astype(np.float32))")
        flat = x64.reshape(x64.shape[0], -1)
        perm = _perm(self.info["input_perm"])
        if perm is not None:
            flat = flat[:, perm]  # torch (NCHW) order -> hls4ml's channels-last order
        return np.ascontiguousarray(flat)

    @staticmethod
    def _to_torch(y: np.ndarray, shape, perm) -> np.ndarray:
        n = y.shape[0]
        perm = _perm(perm)
        if perm is not None:
            out = np.empty_like(y)
            out[:, perm] = y
            y = out
        return y.reshape((n,) + tuple(shape))

    def predict(self, x) -> np.ndarray:
        """C-sim of the compiled project on ``x`` (batch, *input shape) -> (batch, *output shape)."""
        y = self._csim.run(self._prepare(x))
        return self._to_torch(y, self.output_shape, self.info["output_perm"])

    def trace(self, x) -> dict:
        """{IR op name: its output} for every layer hls4ml traces (an op fused into its
        producer, e.g. a re-quantization folded into a Dense result type, under its own name)."""
        per_layer = self._csim.trace(self._prepare(x))
        out = {}
        for layer, (op_name, shape, perm) in self.info["layer_ops"].items():
            if layer in per_layer:
                out[op_name] = self._to_torch(per_layer[layer], shape, perm)
        return out

    def build(self, **kwargs):
        """Run the vendor HLS flow (hls4ml's ``build``: csim, synth, cosim, export...)."""
        return self.hls_model.build(**kwargs)


def load_project(outdir) -> HLSProject:
    """An fpq HLS project written earlier by ``to_hls`` (its compiled C-sim library is reused)."""
    outdir = Path(outdir)
    stamp = outdir / STAMP
    if not stamp.is_file():
        raise FileNotFoundError(f"{outdir} is not a complete fpq HLS project (no {STAMP})")
    return HLSProject(outdir, json.loads(stamp.read_text()))


def _check_args(backend, io_type, strategy, reuse_factor, clock_period):
    b = BACKENDS.get(str(backend).lower())
    if b is None:
        raise ValueError(f"backend {backend!r} is not supported; allowed: Vitis, Vivado")
    if io_type not in IO_TYPES:
        raise ValueError(f"io_type {io_type!r} is not supported; allowed: {', '.join(IO_TYPES)}")
    s = da.STRATEGY if da.is_da(strategy) else STRATEGIES.get(str(strategy).lower())
    if s is None:
        raise ValueError(f"strategy {strategy!r} is not supported; allowed: Latency, Resource, distributed_arithmetic")
    if isinstance(reuse_factor, bool) or not isinstance(reuse_factor, int) or reuse_factor < 1:
        raise ValueError(f"reuse_factor must be an integer >= 1, got {reuse_factor!r}")
    if not isinstance(clock_period, (int, float)) or not clock_period > 0:
        raise ValueError(f"clock_period must be a positive number of ns, got {clock_period!r}")
    return b, s


def _config(plan: HLSPlan, backend: str, io_type, part, clock_period, reuse_factor, strategy, outdir) -> dict:
    from hls4ml.backends import get_backend

    config = get_backend(backend).create_initial_config(part=part, clock_period=clock_period, io_type=io_type)
    config["Backend"] = backend
    config["TraceOutput"] = True  # trace code is compiled for C-sim only (#ifndef __SYNTHESIS__)
    config["ProjectName"] = PROJECT_NAME
    config["OutputDir"] = str(outdir)
    from . import cpp

    layer_cfg = {}
    classes = {L["name"]: L["class_name"] for L in plan.layers}
    for name, prec in plan.precisions.items():
        s = da.layer_strategy(classes[name]) if strategy == da.STRATEGY else strategy  # see fpq.hls.da
        layer_cfg[name] = {"Precision": {k: cpp.hls4ml_precision(v) for k, v in prec.items()}, "Trace": True,
                           "ReuseFactor": reuse_factor, "Strategy": s}
    if strategy == da.STRATEGY:
        strategy = "Latency"  # the model default: hls4ml's DA pass refuses every non-Dense/Conv layer
    # The model-level default precision is never used: every variable gets an explicit type and
    # _check_precisions() verifies it after hls4ml's passes ran.
    config["HLSConfig"] = {"Model": {"Precision": "fixed<16,6>", "ReuseFactor": reuse_factor, "Strategy": strategy,
                                     "BramFactor": 1_000_000_000},
                           "LayerName": layer_cfg}
    return config


def _same(p, fixed) -> bool:
    from hls4ml.model.types import FixedPrecisionType

    if str(fixed) == "float":  # builder.FloatPort
        return "float" in str(p).lower()
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
        for var in ("weight", "bias", "scale"):
            if var in want and layer.weights.get(var) is not None:
                p = layer.weights[var].type.precision
                if not _same(p, want[var]):
                    raise AssertionError(f"layer {layer.name!r}: {var} type {p} is not the planned {want[var]}")
        if "accum" in want:
            acc = layer.get_attr("accum_t")
            if acc is not None and not _same(acc.precision, want["accum"]):
                raise AssertionError(f"layer {layer.name!r}: accumulator {acc.precision} is not the planned {want['accum']}")


def to_hls(q_or_onnx, outdir, *, backend="Vitis", io_type="io_parallel", part="xcvu9p-flga2104-2-e",
           clock_period=5, reuse_factor=1, strategy="Latency", example_input=None, da_options=None) -> HLSProject:
    """Write an exact hls4ml project of a quantized model and compile it for C simulation.

    ``q_or_onnx``: a model from ``fpq.convert`` (give ``example_input``), a QONNX file path,
    a qonnx ModelWrapper / onnx ModelProto, or an fpq graph IR. Every precision comes from fpq's
    TypePlan (never hls4ml's ``auto``). Raises ``HLSUnsupportedError`` (a ValueError) naming the
    op and the reason, before writing anything, for what cannot be exact in HLS.
    ``strategy="distributed_arithmetic"`` (or "da"): da4ml shift-and-add kernels for the Dense /
    Conv layers, solved with ``da_options`` (da4ml solver options; see ``fpq.hls.da``).
    """
    backend, strategy = _check_args(backend, io_type, strategy, reuse_factor, clock_period)
    graph = as_graph(q_or_onnx, example_input, purpose="to_hls")
    from ..export.graph import typeplan_from_graph

    plan = plan_hls(graph, typeplan_from_graph(graph))  # refusals happen here, before any file
    if strategy == da.STRATEGY:
        da.check(plan, io_type=io_type, reuse_factor=reuse_factor)
        da.generate(plan, io_type=io_type, options=da_options)
    elif da_options is not None:
        raise ValueError("da_options is for strategy='distributed_arithmetic' only")
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
        da.check_indices(hls_model)
        hls_model.write()
        if outdir.exists():
            shutil.rmtree(outdir)
        os.replace(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    hls_model.config.config["OutputDir"] = str(outdir)
    _retarget_config(outdir, tmp)
    t0 = time.perf_counter()
    try:
        hls_model._compile()  # g++ of the written project (write() already ran)
    except BaseException as err:
        failed = outdir.with_name(outdir.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(outdir, failed)
        raise RuntimeError(f"compiling the HLS project failed ({err}); the sources are in {failed}") from err
    compile_s = time.perf_counter() - t0
    info = _project_info(hls_model, plan, dict(backend=backend, io_type=io_type, part=part, clock_period=clock_period,
                                               reuse_factor=reuse_factor, strategy=strategy))
    info["compile_seconds"] = round(compile_s, 2)
    (outdir / STAMP).write_text(json.dumps(info, indent=1))  # last: marks the project complete
    return HLSProject(outdir, info, hls_model)


def _retarget_config(outdir: Path, tmp: Path) -> None:
    """hls4ml_config.yml records the folder the project was written in; point it at outdir so that
    hls4ml's link_existing_project / build work on the moved project."""
    cfg = outdir / "hls4ml_config.yml"
    if cfg.is_file():
        cfg.write_text(cfg.read_text().replace(str(tmp), str(outdir)))


def _project_info(hls_model, plan: HLSPlan, options: dict) -> dict:
    lib = Path(hls_model._top_function_lib._name).name
    traced = {layer.name: int(np.prod(layer.get_output_variable().shape)) for layer in hls_model.get_layers()
              if layer.get_attr("function_cpp", None) and layer.get_attr("trace", False)}

    def plist(p):
        return None if p is None else [int(i) for i in p]

    layer_ops = {}
    for layer, op_name in plan.layer_op.items():
        shape, perm = plan.layer_shape[layer]
        layer_ops[layer] = [op_name, list(shape), plist(perm)]
    return {
        "fpq_project": PROJECT_NAME, **options, "library": lib,
        "input_shape": list(plan.input_shape), "input_perm": plist(plan.input_perm),
        "input_size": int(np.prod(plan.input_shape)), "input_float32": plan.input_float32,
        "output_shape": list(plan.output_shape), "output_perm": plist(plan.output_perm),
        "output_size": int(np.prod(plan.output_shape)), "traced": traced, "layer_ops": layer_ops,
        "layers": {name: {k: str(v) for k, v in prec.items()} for name, prec in plan.precisions.items()},
        "notes": plan.notes,
    }


__all__ = ["to_hls", "load_project", "HLSProject", "HLSUnsupportedError"]
