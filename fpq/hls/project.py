"""``fpq.to_hls``: an exact hls4ml project from a quantized model, written and compiled for C-sim.

The project is written and compiled in a temporary sibling folder and moved to ``outdir`` only
when g++ succeeded, with an ``fpq_project.json`` stamp written last: a failed compile leaves
nothing that looks like a finished project. Refusals (an op, format or scale that cannot be
exact in HLS) happen while planning, before any file is written.

Trust rules (issue 15):
* A project is independent of its path: the weights are compiled into the C-sim library
  (hls4ml's C-sim reads weight text files at run time from the absolute build folder, and calls
  exit(1) inside the Python process when one is missing; fpq replaces that load by a copy from
  constant tables in the weight headers), build_lib.sh passes no path to g++, and
  hls4ml_config.yml says ``OutputDir: .``. A project can be moved or copied, and no file of it
  names a folder of the machine that built it.
* The output path may hold only letters, digits and ``/ . _ - + @ , = ~ :`` (no quote, backslash,
  ``$``, backtick, space or control character can reach a shell, Tcl or C++ string).
* fpq deletes only what it wrote: ``fpq_project.json`` lists every file of the project (its
  manifest). A non-empty ``outdir`` is refused unless ``overwrite=True``, and then only the files
  of the earlier manifest are replaced (vendor reports and the user's own files stay); a file fpq
  would write over that no manifest lists is refused. A failed compile leaves its sources in a
  fresh ``<outdir>.failed[-N]`` folder and never touches an existing one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..export import as_graph
from ..ir.plan import rotation_refusal
from . import da
from .builder import HLSPlan, HLSUnsupportedError, plan_hls
from .csim import PROJECT_NAME, STACK_DEFAULT, _CSim, csim_stack_bytes  # noqa: F401
from .options import check_args, layer_reuse_factors, layer_strategies
from .outdir import (STAMP, _check_no_paths, _check_target, _conflicts,  # noqa: F401
                     _embed_weights, _fresh_failed, _install, _manifest, _strip_build_paths, _tree,
                     check_outdir_path)

_LIBRARY = re.compile(rf"{PROJECT_NAME}-[0-9A-Za-z]+\.so")


def _perm(p):
    return None if p is None else np.asarray(p, dtype=np.int64)


class HLSProject:
    """A written, compiled hls4ml project of an fpq model (what ``fpq.to_hls`` returns).

    ``predict(x)`` runs the C simulation (torch layouts in and out, float64 values); ``trace(x)``
    returns every traced layer's output keyed by the IR op whose value it holds; ``build(...)``
    runs the vendor flow through hls4ml (Vivado / Vitis HLS must be installed). ``hls_model`` is the
    hls4ml ModelGraph (for a project loaded from disk with ``fpq.hls.load_project``, hls4ml's
    linked stand-in that can compile, predict and build). Users get it from ``fpq.to_hls`` or
    ``fpq.hls.load_project`` rather than constructing it.

    Args:
        outdir (str | os.PathLike): the project folder.
        info (dict): the project's stamp (shapes, layouts, the C-sim library's name).
        hls_model (hls4ml.model.graph.ModelGraph | None): the hls4ml model, if in memory.

    Raises:
        ValueError: a stamp whose library is not the C-sim library name of an fpq project.

    Example:
        Building compiles C++ (tens of seconds), so it is not run here:

        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int8")
        >>> x = torch.randn(16, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> proj = fpq.to_hls(q, "out/prj", x[:1])                                 # doctest: +SKIP
        >>> bool((proj.predict(x.numpy()) == fpq.emulate(q, x)).all())              # doctest: +SKIP
        True
    """

    def __init__(self, outdir, info: dict, hls_model=None):
        self.outdir = Path(outdir)
        self.info = info
        self._hls_model = hls_model
        self.compile_s = info.get("compile_seconds")
        lib = str(info.get("library", ""))
        if not _LIBRARY.fullmatch(lib):  # a stamp names its library, never a path elsewhere
            raise ValueError(f"{self.outdir / STAMP}: library {lib!r} is not a C-sim library name of an fpq project "
                             f"({PROJECT_NAME}-<stamp>.so)")
        self._csim = _CSim(self.outdir / "firmware" / lib, info["input_size"], info["output_size"], info["traced"],
                           info.get("csim_stack_bytes", STACK_DEFAULT))

    def __repr__(self):
        return f"HLSProject({str(self.outdir)!r}, {self.info['backend']}, {self.info['io_type']})"

    @property
    def hls_model(self):
        """The hls4ml ModelGraph (linked from the folder on first use for a project loaded from disk).
        """
        if self._hls_model is None:
            from hls4ml.converters import link_existing_project

            self._hls_model = link_existing_project(str(self.outdir))
            # hls4ml_config.yml says OutputDir: . (no absolute path in a project): point the
            # linked model at the folder it was loaded from, wherever that is now
            self._hls_model.config.config["OutputDir"] = str(self.outdir)
        return self._hls_model

    @property
    def input_shape(self) -> tuple:
        """One input's shape without the batch, in torch layout.
        """
        return tuple(self.info["input_shape"])

    @property
    def output_shape(self) -> tuple:
        """One output's shape without the batch, in torch layout.
        """
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
        from ..emulate import refuse_nonfinite
        refuse_nonfinite(x, "predict")  # NaN and +-inf: the one rule of every fpq path (fpq.emulate.check_input)
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
        """Run the C simulation of the compiled project.

        Args:
            x (array_like): floating-point inputs (batch, *input_shape), torch layout.

        Returns:
            numpy.ndarray: outputs (batch, *output_shape), float64, torch layout.

        Raises:
            ValueError: non-floating-point inputs, a wrong shape, or (for a float32 input port) values
                float32 cannot hold.
        """
        y = self._csim.run(self._prepare(x))
        return self._to_torch(y, self.output_shape, self.info["output_perm"])

    def trace(self, x) -> dict:
        """Every traced layer's output from the C simulation.

        An op fused into its producer (e.g. a re-quantization folded into a Dense result type) appears
        under its own IR op name.

        Args:
            x (array_like): floating-point inputs (batch, *input_shape), torch layout.

        Returns:
            dict[str, numpy.ndarray]: {IR op name: its output}, torch layout.
        """
        per_layer = self._csim.trace(self._prepare(x))
        out = {}
        for layer, (op_name, shape, perm) in self.info["layer_ops"].items():
            if layer in per_layer:
                out[op_name] = self._to_torch(per_layer[layer], shape, perm)
        return out

    def build(self, **kwargs):
        """Run the vendor HLS flow (hls4ml's ``build``: csim, synth, cosim, export, ...).

        Vivado or Vitis HLS must be installed.

        Args:
            **kwargs: hls4ml ``ModelGraph.build`` options (e.g. ``csim=False, synth=True``).

        Returns:
            dict | None: what hls4ml's ``build`` returns (its parsed reports).
        """
        return self.hls_model.build(**kwargs)


def load_project(outdir) -> HLSProject:
    """An fpq HLS project written earlier by ``to_hls`` (its compiled C-sim library is reused).
    A project may have been moved or copied since: nothing in it depends on where it was built.

    Args:
        outdir: the project folder.

    Returns:
        HLSProject: the project, ready to ``predict``.

    Raises:
        FileNotFoundError: ``outdir`` is not a complete fpq HLS project.

    Example:
        >>> import tempfile
        >>> from fpq.hls import load_project
        >>> try:
        ...     load_project(tempfile.mkdtemp())
        ... except FileNotFoundError as e:
        ...     print("not a project")
        not a project
    """
    outdir = Path(outdir)
    stamp = outdir / STAMP
    if not stamp.is_file():
        raise FileNotFoundError(f"{outdir} is not a complete fpq HLS project (no {STAMP})")
    return HLSProject(outdir, json.loads(stamp.read_text()))


def _config(plan: HLSPlan, backend: str, io_type, part, clock_period, reuse_factor, strategy, outdir,
            layer_reuse=None, layer_strategy=None) -> dict:
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
        s = da.layer_strategy(classes[name]) if strategy == da.STRATEGY else \
            (layer_strategy or {}).get(name, strategy)  # see fpq.hls.da; hls4ml's per-layer Strategy
        layer_cfg[name] = {"Precision": {k: cpp.hls4ml_precision(v) for k, v in prec.items()}, "Trace": True,
                           "ReuseFactor": (layer_reuse or {}).get(name, reuse_factor), "Strategy": s}
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


def to_hls(q, outdir, example_input=None, *, backend="Vitis", io_type="io_parallel", part="xcvu9p-flga2104-2-e",
           clock_period=5, reuse_factor=1, strategy="Latency", da_options=None, overwrite=False) -> HLSProject:
    """Write an exact hls4ml project of a quantized model and compile it for C simulation.

    Every precision comes from fpq's TypePlan (never hls4ml's ``auto``); fpq's own C++ layers
    (``hls/``) keep minifloat, block and narrow-accumulator arithmetic exact, so the C simulation
    equals ``fpq.emulate`` bit for bit. Ops that cannot be exact in HLS are refused before any file
    is written.

    Args:
        q (FpqModel | str | os.PathLike | ModelWrapper | onnx.ModelProto | Graph): a converted
            model, a QONNX file path / ModelWrapper / ModelProto, or an fpq graph IR.
        outdir (str | os.PathLike): the project folder; it must be absent or empty, or
            ``overwrite=True``.
        example_input (torch.Tensor | None): an input of a torch model's shape for its export; None
            uses the shape calibration recorded or a leading Linear's ``in_features``.
        backend (str): "Vitis" or "Vivado".
        io_type (str): "io_parallel" or "io_stream".
        part (str): the FPGA part number written into the project.
        clock_period (float): clock period in ns (> 0).
        reuse_factor (int | dict): an int >= 1 for every layer, or {layer name or torch module path:
            int} (others 1), e.g. ``fpq.fit(q, part=...).hls_kwargs``; hls4ml's Resource strategy
            replaces a reuse factor that does not divide its layer by the closest one that does.
        strategy (str | dict): "Latency", "Resource" or "distributed_arithmetic" ("da": da4ml
            shift-and-add kernels for Dense / Conv) for every layer, or {layer: "Latency" |
            "Resource"} (others Latency).
        da_options (dict | None): da4ml solver options; only with the distributed_arithmetic strategy.
        overwrite (bool): replace the files of an fpq project already in ``outdir`` (its manifest);
            anything else in the folder stays.

    Returns:
        HLSProject: the compiled project: ``predict(x)`` runs the C simulation, ``trace(x)`` gives
        per-layer values; ``fpq.verify(q, x, project=...)`` compares it with the other paths.

    Raises:
        HLSUnsupportedError: (a ValueError) an op that cannot be exact in HLS, naming it and why,
            before anything is written.
        ValueError: an unknown backend, io_type or strategy, a bad reuse factor or clock period,
            ``da_options`` without the DA strategy, a non-bool ``overwrite``, or an ``outdir`` with
            a character that could end a quoted shell, Tcl or C++ string.
        FileExistsError: ``outdir`` is a file, or a folder that is not empty (without
            ``overwrite``).

    Example:
        Arguments are checked before anything is written or compiled:

        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> fpq.to_hls(q, "prj", torch.randn(1, 4), io_type="io_serial")
        Traceback (most recent call last):
        ...
        ValueError: io_type 'io_serial' is not supported; allowed: io_parallel, io_stream

        Building compiles the generated C++ with g++ (tens of seconds), so it is not run here:

        >>> x = torch.randn(64, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> proj = fpq.to_hls(q, "out/prj", x[:1], io_type="io_parallel")  # doctest: +SKIP
        >>> fpq.verify(q, x, project=proj).status                          # doctest: +SKIP
        'EXACT'
    """
    backend, strategy = check_args(backend, io_type, strategy, reuse_factor, clock_period)
    outdir = check_outdir_path(outdir)
    _check_target(outdir, overwrite)
    graph = as_graph(q, example_input)
    why = rotation_refusal(graph.ops, "fpq.to_hls")
    if why:
        raise HLSUnsupportedError(why)
    plan = plan_hls(graph)  # refusals happen here, before any file
    block = [L["name"] for L in plan.layers if L["class_name"].startswith("FpqBlock")]
    if block and strategy == da.STRATEGY:
        raise HLSUnsupportedError(f"layers {block} are block-scaled (fpq.hls.blocks), built with the Latency or "
                                  f"Resource strategy only; got strategy={strategy!r}")
    default_rf, layer_reuse = layer_reuse_factors(graph, reuse_factor)
    strategy, per_strategy = layer_strategies(graph, strategy)
    if strategy == da.STRATEGY:
        da.check(plan, io_type=io_type, reuse_factor=max([default_rf, *layer_reuse.values()]))
        da.generate(plan, io_type=io_type, options=da_options)
    elif da_options is not None:
        raise ValueError("da_options is for strategy='distributed_arithmetic' only")
    from hls4ml.model.graph import ModelGraph

    from .layers import register

    register()
    outdir.parent.mkdir(parents=True, exist_ok=True)
    # Written and compiled in a temporary sibling (nothing in it depends on its folder), then
    # moved into place; the stamp with the manifest is written last.
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        config = _config(plan, backend, io_type, part, clock_period, default_rf, strategy, tmp, layer_reuse,
                         per_strategy)
        hls_model = ModelGraph.from_layer_list(config, plan.layers, inputs=[plan.input_name],
                                               outputs=[plan.output_layer])
        _check_precisions(hls_model, plan)
        da.check_indices(hls_model)
        hls_model.write()
        _embed_weights(tmp)
        _strip_build_paths(tmp)
        old_files, old_dirs = _manifest(outdir) if outdir.is_dir() else (set(), set())
        clash = _conflicts(outdir, _tree(tmp)[0], old_files)
        if clash:  # before the compile: nothing of the user's is replaced
            raise FileExistsError(
                f"{outdir} holds {', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''}, which the new project would "
                f"replace but no fpq manifest ({STAMP}) lists as fpq's; move them away or choose another folder")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    t0 = time.perf_counter()
    try:
        hls_model._compile()  # g++ of the written project (write() already ran)
    except BaseException as err:
        if not isinstance(err, Exception):  # Ctrl-C or a sweep's SIGTERM stopped it: not a failed compile
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        failed = _fresh_failed(outdir)
        os.replace(tmp, failed)
        raise RuntimeError(f"compiling the HLS project failed ({err}); its sources are in {failed} ({outdir} is "
                           "unchanged)") from err
    compile_s = time.perf_counter() - t0
    try:
        files, dirs = _tree(tmp)
        _check_no_paths(tmp, files, [str(tmp)])  # the only folder hls4ml saw (its name is unique)
        clash = _conflicts(outdir, files, old_files)  # the library's name is known now
        if clash:
            raise FileExistsError(f"{outdir} holds {', '.join(clash)}, which no fpq manifest lists as fpq's")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    created = _install(tmp, outdir, files, dirs, old_files, old_dirs)
    hls_model.config.config["OutputDir"] = str(outdir)
    info = _project_info(hls_model, plan, dict(backend=backend, io_type=io_type, part=part, clock_period=clock_period,
                                               reuse_factor=reuse_factor,
                                               strategy=dict(per_strategy) if per_strategy else strategy))
    info["compile_seconds"] = round(compile_s, 2)
    info["files"], info["dirs"] = files, created  # the manifest: what a later overwrite may remove
    (outdir / STAMP).write_text(json.dumps(info, indent=1))  # last: marks the project complete
    return HLSProject(outdir, info, hls_model)


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
        "csim_stack_bytes": csim_stack_bytes(hls_model),
        "layers": {name: {k: str(v) for k, v in prec.items()} for name, prec in plan.precisions.items()},
        "notes": plan.notes,
    }


__all__ = ["to_hls", "load_project", "HLSProject", "HLSUnsupportedError"]
