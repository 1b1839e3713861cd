"""``fpq.verify``: torch == emulator == qonnx executor == HLS C-sim, bit for bit, layer by layer.

Paths (each compared with the emulator, atol=0, NaN equal to NaN):

* ``torch``: the quantized torch model in eval mode (only when a torch model is given). Layer
  values come from forward hooks on the modules whose last IR op they produce.
* ``emulator``: ``fpq.emulate`` on the graph IR (the reference of the comparison).
* ``qonnx``: ``qonnx.core.onnx_exec.execute_onnx`` one sample at a time on the first
  ``qonnx_subset`` inputs, on a copy of the graph rewritten by ``ComputeInDouble`` so that its
  sums are exact (in float32 ONNX Runtime would round a sum of wide products; see
  ``ComputeInDouble`` below). Quantizers whose format QONNX cannot express (e.g. fixed WRAP)
  make the qonnx path not comparable; the report says so.
* ``hls``: ``project.predict(x)`` and, when the project has it, ``project.trace(x)`` ({layer:
  values}, keyed by IR op names).

Inputs follow the rule of every fpq path (``fpq.emulate.check_input``): the value the user gave
is compared in its own dtype (a float64 input stays float64 on every path; NaN / inf are refused).
The inputs run in chunks of ``chunk`` rows: each chunk's per-layer values are compared and
dropped, so memory stays bounded by one chunk's trace whatever the number of inputs.

The headline is EXACT only when at least one path independent of the emulator was compared and
counted and nothing counted differs; when none was (qonnx not comparable, no torch model, no
project), it is NOT VERIFIED and ``exact`` is False.

Over 600 lines because the qonnx path's graph rewrite (``ComputeInDouble``, at the end) is
verification-only and lives here, with the one reader of its results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .export import read_graph
from .ir import MAC_KINDS, Graph

REFERENCE = "emulator"


@dataclass
class Mismatch:
    """The first value a path computes differently from the emulator (``VerifyReport.first_mismatch``).

    Args:
        layer: the IR op whose value differs.
        path: the path that differs ("torch", "qonnx" or "hls").
        index: the first differing index, sample first.
        values: path -> the value at that index.

    Example:
        >>> from fpq.verification import Mismatch
        >>> print(Mismatch("linear_0", "hls", (3, 1), {"emulator": 0.5, "hls": 0.25}))
        layer 'linear_0': hls differs from emulator at index (3, 1) (emulator=0.5, hls=0.25)
    """
    layer: str
    path: str          # the path that differs from the emulator
    index: tuple       # first differing index (sample first)
    values: dict       # path -> value at that index

    def __str__(self):
        vals = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"layer {self.layer!r}: {self.path} differs from {REFERENCE} at index {self.index} ({vals})"


@dataclass
class VerifyReport:
    """What ``fpq.verify`` found: per layer and path, values compared and mismatches against the emulator.

    ``exact`` is True only when at least one path independent of the emulator was compared and
    nothing counted differs. ``print`` it for a table.

    Args:
        exact (bool): verified and no counted mismatch.
        first_mismatch (Mismatch | None): the first counted difference (layer, path, index, values).
        table (list[dict]): rows of layer, path, compared, mismatches, max_abs_diff.
        paths (list[str]): "emulator" (the reference) and the paths compared with it ("torch",
            "qonnx", "hls").
        n_inputs (int): inputs compared.
        notes (list[str]): why a path was not comparable, or what is checked rather than proven.
        outputs (dict): path -> final output.
        verified (bool): some path independent of the emulator was compared and counts.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int8")
        >>> x = torch.randn(16, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> rep = fpq.verify(q, x, qonnx_subset=0)
        >>> rep.status, rep.paths, rep.first_mismatch
        ('EXACT', ['emulator', 'torch'], None)
    """
    exact: bool                          # verified and no counted mismatch
    first_mismatch: Mismatch | None
    table: list                          # rows: dict(layer, path, compared, mismatches, max_abs_diff)
    paths: list
    n_inputs: int
    notes: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict, repr=False)   # path -> final output
    verified: bool = True                # some path independent of the emulator was compared and counts

    @property
    def status(self) -> str:
        """'EXACT', 'NOT EXACT' or 'NOT VERIFIED' (no independent path was compared).
        """
        if not self.verified:
            return "NOT VERIFIED"
        return "EXACT" if self.exact else "NOT EXACT"

    def __str__(self):
        head = f"fpq.verify: {self.status} over {self.n_inputs} inputs; " \
               f"paths: {', '.join(self.paths)} (reference: {REFERENCE})"
        lines = [head]
        if self.first_mismatch is not None:
            lines.append(f"first mismatch: {self.first_mismatch}")
        rows = [("layer", "path", "compared", "mismatches", "max |diff|")]
        for r in self.table:
            rows.append((r["layer"], r["path"], str(r["compared"]), str(r["mismatches"]),
                         f"{r['max_abs_diff']:.6g}" if r["compared"] else "-"))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * x for x in w))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def _is_module(q) -> bool:
    try:
        import torch
        return isinstance(q, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


def random_inputs(graph: Graph, n: int, seed: int = 0, *, spread: float = 1.5) -> np.ndarray:
    """Off-grid float32 inputs for ``graph``.

    Uniform over +-spread x the input format's range (so about a third saturate), mixed with small normal values near the fine grid.

    Args:
        graph: the graph IR.
        n: how many inputs.
        seed: the random seed.
        spread: the range multiple of the input format's range.

    Returns:
        np.ndarray: float32 inputs of the graph's input shape.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> from fpq.emulate import as_graph
        >>> from fpq.verification import random_inputs
        >>> x = random_inputs(as_graph(q), 5, seed=0)
        >>> x.shape, x.dtype
        ((5, 4), dtype('float32'))
    """
    from .formats import finfo
    rng = np.random.default_rng(seed)
    name = graph.inputs[0]
    shape = (n,) + tuple(graph.input_shapes[name][1:])
    first = graph.ops[0]
    hi = 4.0
    if first.quant is not None:
        info = finfo(first.quant.format)
        hi = float(max(abs(info.max), abs(info.min)) * np.max(first.quant.scale))
    x = rng.uniform(-spread * hi, spread * hi, size=shape)
    small = rng.random(shape) < 0.3
    x[small] = rng.normal(0.0, hi / 16, size=int(small.sum()))
    return x.astype(np.float32)


def _torch_trace(q, x, graph: Graph):
    """Final output and {IR op: value} of the torch model (forward hooks on modules)."""
    import torch

    modules = dict(q.named_modules())
    stop = {"export_handler", "act_quant", "activation_impl", "weight_quant", "output_quant", "bias_quant"}
    last_op = {}   # module path -> the last IR op it produces (its output is the module's output)
    acc_hooks = {}
    for op in graph.ops:
        for node in op.onnx_nodes[-1:]:
            parts = [p for p in node.split("/") if p][:-1]
            cut = next((i for i, p in enumerate(parts) if p in stop), len(parts))
            path = ".".join(parts[:cut])
            # a module's output is the last op inside it (FpqAdd: the add, then its quantizer)
            for j in range(1, cut + 1):
                prefix = ".".join(parts[:j])
                if prefix in modules:
                    last_op[prefix] = op.name
                oq = getattr(modules[path], "output_quant", None) if path in modules else None
                if op.kind in MAC_KINDS and oq is not None and getattr(oq, "is_quant_enabled", False):
                    acc_hooks[f"{path}.output_quant"] = op.name  # the accumulator enters the output quantizer
    values, handles = {}, []

    calls, shared = {}, set()

    def hook(name, path):
        def fn(_m, _i, out):
            v = getattr(out, "value", out)
            calls[path] = calls.get(path, 0) + 1
            if calls[path] > 1:
                shared.add(name)
            if isinstance(v, torch.Tensor):
                values[name] = v.detach().cpu().to(torch.float64).numpy()
        return fn

    def pre_hook(name):
        def fn(_m, args):
            v = getattr(args[0], "value", args[0])
            if isinstance(v, torch.Tensor):
                values[name] = v.detach().cpu().to(torch.float64).numpy()
        return fn

    for path, op_name in last_op.items():
        handles.append(modules[path].register_forward_hook(hook(op_name, path)))
    for path, op_name in acc_hooks.items():
        handles.append(modules[path].register_forward_pre_hook(pre_hook(op_name)))
    was = q.training
    q.eval()
    try:
        with torch.no_grad():
            try:
                out = q(torch.as_tensor(x))   # the user's dtype: float64 inputs are quantized as doubles
            except RuntimeError as e:
                if x.dtype != np.float64:
                    raise
                raise ValueError(f"fpq.verify: the torch model cannot run float64 inputs ({e}); every path "
                                 "quantizes the value given, so pass float32 inputs to compare in float32") from e
    finally:
        for h in handles:
            h.remove()
        q.train(was)
    out = getattr(out, "value", out)
    # a module called more than once (a shared nn.ReLU) has no single per-layer value
    values = {k: v for k, v in values.items() if k not in shared}
    return out.detach().cpu().to(torch.float64).numpy(), values


def qonnx_double_model(model, input_dtype=np.float32):
    """A copy of a QONNX model whose sums run exactly in float64 (``ComputeInDouble``).

    ``input_dtype`` float64 declares the graph input double, so the value given is quantized.

    Args:
        model: the QONNX model.
        input_dtype: the dtype of the values given.

    Returns:
        ModelWrapper: the float64 copy.

    Example:
        >>> import os, tempfile
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> from fpq.verification import qonnx_double_model
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = fpq.export_qonnx(q, os.path.join(d, "m.onnx"), torch.randn(1, 4))
        ...     mw = qonnx_double_model(os.path.join(d, "m.onnx"))
        >>> type(mw).__name__
        'ModelWrapper'
    """
    from onnx import TensorProto
    from .export.qonnx_codec import load_model
    from .export.transforms import RemoveFloatCasts, RemoveInitializersFromInputs
    mw = load_model(model)
    mw = mw.transform(RemoveInitializersFromInputs()).transform(RemoveFloatCasts())
    if np.dtype(input_dtype) == np.float64:   # (transform works on a copy: the caller's model is untouched)
        for vi in mw.graph.input:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return mw.transform(ComputeInDouble())


def qonnx_trace(model, x, graph: Graph, mw=None):
    """Run qonnx's executor one sample at a time: the final output and {IR op: value}.

    ``mw``: the ``qonnx_double_model`` of ``model`` for x's dtype, when already built.

    Args:
        model: the QONNX model.
        x: the inputs.
        graph: its graph IR.
        mw: the float64 copy, when already built.

    Returns:
        tuple: the outputs and the per-op values.

    Example:
        >>> import os, tempfile
        >>> import numpy as np, torch, fpq
        >>> from fpq.emulate import as_graph
        >>> from fpq.verification import qonnx_trace
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "m.onnx")
        ...     _ = fpq.export_qonnx(q, path, torch.randn(1, 4))
        ...     out, per_op = qonnx_trace(path, np.zeros((2, 4), np.float32), as_graph(path))
        >>> out.shape, sorted(per_op)
        ((2, 3), ['input_quant', 'linear_0', 'output', 'quant_0', 'relu_1'])
    """
    from qonnx.core.onnx_exec import execute_onnx
    x = np.asarray(x)
    dt = np.float64 if x.dtype == np.float64 else np.float32
    if mw is None:
        mw = qonnx_double_model(model, dt)
    name = graph.inputs[0]
    per_op = {op.name: [] for op in graph.ops}
    outs = []
    for i in range(len(x)):
        ctx = execute_onnx(mw, {name: np.asarray(x[i:i + 1], dtype=dt)}, return_full_exec_context=True)
        for op in graph.ops:
            t = op.outputs[0]
            if t in ctx and ctx[t] is not None:
                per_op[op.name].append(np.asarray(ctx[t], dtype=np.float64))
        outs.append(np.asarray(ctx[graph.outputs[0]], dtype=np.float64))
    trace = {k: np.concatenate(v, axis=0) for k, v in per_op.items() if len(v) == len(x)}
    return np.concatenate(outs, axis=0), trace


def _compare(ref: np.ndarray, other: np.ndarray):
    ref = np.asarray(ref, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if other.shape != ref.shape:
        if other.size == ref.size:
            other = other.reshape(ref.shape)
        else:
            return ref.size, ref.size, float("inf"), (0,)
    both_nan = np.isnan(ref) & np.isnan(other)
    diff = (ref != other) & ~both_nan
    n = int(diff.sum())
    with np.errstate(invalid="ignore"):
        d = np.abs(ref - other)
    d = np.where(both_nan, 0.0, d)
    d = np.where(np.isnan(d), np.inf, d)
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), ref.shape)) if n else None
    return ref.size, n, float(d.max()) if d.size else 0.0, first


def verify(q, x=None, project=None, *, qonnx_subset: int = 64, n: int = 1000, seed: int = 0,
           model=None, chunk: int = 1024) -> VerifyReport:
    """Compare every path of a quantized network on the same inputs, bit for bit, layer by layer.

    The emulator (``fpq.emulate``) is the reference; compared with it, at atol=0 (NaN equal to NaN):
    the torch model in eval mode (when ``q`` is one), qonnx's executor in float64 on the first
    ``qonnx_subset`` inputs, and the HLS C simulation when ``project`` is given (see the module
    docstring). Inputs run ``chunk`` rows at a time, so memory stays bounded.

    Args:
        q (FpqModel | str | os.PathLike | ModelWrapper): a converted torch model, or a QONNX file
            path / ModelWrapper.
        x (numpy.ndarray | torch.Tensor | None): inputs (N, ...), finite; compared in their own
            dtype. None draws ``n`` off-grid random inputs (not with a torch model).
        project (HLSProject | None): an ``fpq.to_hls`` project whose C simulation is compared too.
        qonnx_subset (int): inputs run through qonnx's executor (it is slow, ~0.2 s a sample);
            0 skips that path.
        n (int): number of random inputs when ``x`` is None.
        seed (int): seed of the random inputs.
        model (str | ModelWrapper | None): with a torch ``q``: the QONNX file to check against it
            (default: ``q`` exported in memory).
        chunk (int): rows run and compared at a time (>= 1).

    Returns:
        VerifyReport: ``status`` "EXACT", "NOT EXACT" or "NOT VERIFIED", ``exact``,
        ``first_mismatch``, the per-layer ``table`` and ``notes``.

    Raises:
        ValueError: ``chunk`` not a positive integer, a torch model without ``x``, ``model`` given
            with a non-torch ``q``, or inputs of the wrong shape or with NaN / inf.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="e3m2")
        >>> x = torch.randn(16, 4) * 3          # off-grid values, some saturating
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> rep = fpq.verify(q, x, qonnx_subset=2)
        >>> rep.status, rep.exact, rep.paths
        ('EXACT', True, ['emulator', 'torch', 'qonnx'])
    """
    from .emulate import Emulator, check_input
    from .export import export_qonnx

    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"verify: chunk must be a positive integer (rows per pass), got {chunk!r}")
    chunk = int(chunk)
    notes = []
    if _is_module(q):
        if x is None:
            raise ValueError("verify: a torch model needs inputs x (their shape defines the export)")
        if model is None:
            model = export_qonnx(q, None, x[:1])
    else:
        if model is not None:
            raise ValueError("verify: pass model=... only with a torch model q")
        model = q
    graph = read_graph(model)
    if x is None:
        x = random_inputs(graph, n, seed)
    emu = Emulator(graph)
    # the rule of every path (fpq.emulate.check_input): the user's dtype, NaN / inf refused
    x = check_input(x, bool(emu.float32_inputs), who="fpq.verify")
    inexact = [k for k, v in emu.exact.items() if not v]
    if inexact:
        notes.append(f"not fixed-point exact by construction: {inexact} (a float scale, or a mean / division / "
                     "element-wise constant op rounded once in float64): agreement there is checked here, not proven")
    paths = ["torch"] if _is_module(q) else []
    qonnx_ok = True
    bad = [op.quant or op.weight_quant for op in graph.ops
           if (op.quant is not None and not op.quant.qonnx_exact)
           or (op.weight_quant is not None and not op.weight_quant.qonnx_exact)]
    if bad:
        qonnx_ok = False
        why = {}
        for b in bad:
            why.setdefault(b.note, []).append(b.node)
        notes.append("qonnx path not comparable (its executor computes another function): " + "; ".join(
            f"{note} [{len(nodes)} node(s), first {nodes[0]}]" for note, nodes in why.items()))
    wide = sorted(emu.rounded_to_odd)
    if wide:
        qonnx_ok = False
        notes.append(f"layers {wide} sum more than 53 bits: fpq holds each sum rounded to odd, which every "
                     "quantizer after it rounds as the true sum; qonnx's float64 executor may round such "
                     "sums, and the C-sim's wide accumulator reads back as a plain double, so those values "
                     "are compared but do not count (the quantized tensors after them do, for torch and hls)")
    k_qonnx = min(int(qonnx_subset), len(x)) if qonnx_subset and qonnx_subset > 0 else 0
    qonnx_mw = None
    if k_qonnx:
        paths.append("qonnx")
        try:
            qonnx_mw = qonnx_double_model(model, x.dtype)
        except ValueError as e:
            notes.append(f"qonnx path skipped: {e}")
            qonnx_ok, k_qonnx = False, 0
            paths.remove("qonnx")
    if project is not None:
        paths.append("hls")

    order = {name: i for i, name in enumerate([op.name for op in graph.ops] + ["<output>"])}
    stats = {}        # (layer index, path index) -> table row
    firsts = {}       # (layer index, path index) -> first counted Mismatch (global sample index)
    outputs = {p: [] for p in [REFERENCE] + paths}

    def counts(layer, path):
        return not (path == "qonnx" and not qonnx_ok) and not (layer in wide and path == "hls")

    def compare(layer, path, ref, other, offset):
        compared, mism, maxd, idx = _compare(ref, other)
        key = (order[layer], paths.index(path))
        row = stats.setdefault(key, {"layer": layer, "path": path, "compared": 0, "mismatches": 0,
                                     "max_abs_diff": 0.0})
        row["compared"] += compared
        row["mismatches"] += mism
        row["max_abs_diff"] = max(row["max_abs_diff"], maxd)
        if mism and counts(layer, path) and key not in firsts:
            o = np.asarray(other, dtype=np.float64).reshape(np.shape(ref)) if np.size(other) == np.size(ref) else None
            vals = {REFERENCE: float(np.asarray(ref)[idx])}
            if o is not None:
                vals[path] = float(o[idx])
            firsts[key] = Mismatch(layer, path, (idx[0] + offset,) + tuple(idx[1:]), vals)

    for start in range(0, len(x), chunk):
        xc = x[start:start + chunk]
        ref_out, ref_trace = emu(xc, return_trace=True)
        ref_out = np.asarray(ref_out, dtype=np.float64)
        block_wide = sorted(k for k, v in emu.block_inexact.items() if v)
        if block_wide and qonnx_ok and k_qonnx > start:
            # fpq.numerics.block_dot: those sums span more than 53 bits for these inputs' scale exponents
            qonnx_ok = False
            notes.append(f"block-scaled layers {block_wide} have sums that float64 cannot hold for these inputs "
                         "(their blocks' scale exponents lie too far apart): fpq holds each rounded to odd, qonnx's "
                         "float64 MatMul may round them, so the qonnx path is compared but does not count")
        outputs[REFERENCE].append(ref_out)
        results = {}   # path -> (output, trace, rows of this chunk it covers)
        if "torch" in paths:
            out, tr = _torch_trace(q, xc, graph)
            results["torch"] = (out, tr, len(xc))
        if k_qonnx > start:
            try:
                out, tr = qonnx_trace(model, xc[:k_qonnx - start], graph, qonnx_mw)
                results["qonnx"] = (out, tr, len(out))
            except ValueError as e:
                notes.append(f"qonnx path skipped: {e}")
                qonnx_ok, k_qonnx = False, 0
        if project is not None:
            out = np.asarray(project.predict(xc), dtype=np.float64)
            tr = {}
            if callable(getattr(project, "trace", None)):
                tr = {k: np.asarray(v, dtype=np.float64) for k, v in dict(project.trace(xc)).items()}
            results["hls"] = (out, tr, len(xc))
        for path, (out, tr, rows) in results.items():
            outputs[path].append(out)
            for layer, ref in ref_trace.items():
                if layer in tr:
                    compare(layer, path, np.asarray(ref)[:rows], tr[layer], start)
            compare("<output>", path, ref_out[:rows], out, start)
        del ref_trace, results   # this chunk's per-layer values: dropped before the next one

    rows = [stats[k] for k in sorted(stats)]
    verified = any(r["compared"] > 0 and counts(r["layer"], r["path"]) for r in rows)
    first = firsts[min(firsts)] if firsts else None
    exact = verified and first is None
    if not verified:
        notes.append("NOT VERIFIED: no path independent of the emulator was compared and counted (pass the "
                     "torch model, an HLS project, or a qonnx_subset > 0 on a model qonnx can execute); "
                     "the emulator alone proves nothing")
    outs = {p: np.concatenate(v, axis=0) for p, v in outputs.items() if v}
    return VerifyReport(exact, first, rows, [REFERENCE] + [p for p in paths if outputs.get(p)], len(x), notes,
                        outs, verified)


__all__ = ["verify", "VerifyReport", "Mismatch", "random_inputs", "qonnx_trace", "qonnx_double_model"]


# ----------------------------------------------------------------------------- exact qonnx execution
# ComputeInDouble: qonnx's executor runs standard nodes in ONNX Runtime, in the graph's float32; a
# sum of wide products is not exact there (e4m3 x e4m3 products need 38 bits). This rewrites the
# graph so that every MatMul / Gemm / Add / Mul / Div / pooling runs in float64, and lowers Conv
# (ONNX Runtime has no double Conv) to an exact float32 patch extraction (a Conv with one-hot
# kernels: each output is one input times 1.0) followed by a double MatMul. Quantizer nodes keep
# their float32 outputs (qonnx casts them), so what the next quantizer reads is the exact sum.
# Verification only: no exported file carries it. qonnx is imported here, at first use of verify.
from onnx import TensorProto, helper  # noqa: E402
from qonnx.transformation.base import Transformation  # noqa: E402


# Floor: the wrap of accumulator_bits; Clip: its float32 bounds are exact in float64 too, and its
# input and bounds must share one type
_DOUBLE_OPS = ("MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "ReduceSum", "Floor", "Clip",
               "Concat")   # a Concat of float32 and float64 tensors: all in float64, exactly
# value-preserving ops: exact in float32 and float64 alike
_PASS_OPS = ("Relu", "MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze",
             "Resize", "Upsample",   # nearest (the reader accepts no other): values repeated
             "Gather")   # an embedding's rows of a quantized table


def _is_custom(node):
    return node.domain not in ("", "ai.onnx")


class ComputeInDouble(Transformation):
    """Run every standard compute node in float64 (see the module docstring for why)."""

    def apply(self, model):
        from qonnx.transformation.infer_shapes import InferShapes

        model = model.transform(InferShapes())
        g = model.graph
        self._lower(model)
        dtype = {}  # tensor -> TensorProto elem type as executed
        for vi in g.input:
            dtype[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            dtype[init.name] = init.data_type
        new_nodes = []
        cast_cache = {}
        for node in list(g.node):
            if _is_custom(node):
                new_nodes.append(node)
                for o in node.output:
                    dtype[o] = TensorProto.FLOAT  # qonnx casts quantizer outputs to float32
                if node.op_type == "BipolarQuant" and dtype.get(node.input[0]) == TensorProto.DOUBLE:
                    # except BipolarQuant, which keeps its input's dtype: cast its +-scale values
                    # (exact in float32) back to float32, as the other quantizers give
                    out = node.output[0]
                    # (a name of its own: consumers' casts of ``out`` back to float64 are named out__f64)
                    node.output[0] = f"{out}__bipolar_f64"
                    dtype[node.output[0]] = TensorProto.DOUBLE
                    new_nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT,
                                                      name=f"fpq_bipolar_cast_{len(new_nodes)}"))
                continue
            if node.op_type == "Cast":
                dtype[node.output[0]] = helper.get_attribute_value(node.attribute[0])
                new_nodes.append(node)
                continue
            if node.op_type == "Conv" and node.name.startswith("fpq_patches"):
                if dtype.get(node.input[0]) == TensorProto.DOUBLE:
                    raise ValueError(f"ComputeInDouble: the input of Conv {node.name!r} is not a quantized tensor")
                for o in node.output:
                    dtype[o] = TensorProto.FLOAT
                new_nodes.append(node)
                continue
            if node.op_type == "LeakyRelu" and dtype.get(node.input[0], TensorProto.FLOAT) == TensorProto.FLOAT:
                # after a quantizer: fpq's reader accepted it only if alpha * x is exact in float32
                dtype[node.output[0]] = TensorProto.FLOAT
                new_nodes.append(node)
                continue
            if node.op_type not in _DOUBLE_OPS + _PASS_OPS:
                raise ValueError(f"ComputeInDouble: node {node.name!r} ({node.op_type}) has no exact float64 "
                                 f"form in ONNX Runtime; supported: {', '.join(_DOUBLE_OPS + _PASS_OPS)}, Conv "
                                 "and GlobalAveragePool (lowered)")
            if node.op_type in _PASS_OPS or (node.op_type == "Concat" and len(
                    {dtype.get(t, TensorProto.FLOAT) for t in node.input}) == 1):  # exact in any float type: keep the input's
                for o in node.output:
                    dtype[o] = dtype.get(node.input[0], TensorProto.FLOAT)
                new_nodes.append(node)
                continue
            for k, t in enumerate(node.input):
                if not t or dtype.get(t) != TensorProto.FLOAT:
                    continue
                init = model.get_initializer(t)
                if init is not None:
                    name = f"{t}__f64"
                    if model.get_initializer(name) is None:
                        model.set_initializer(name, np.asarray(init, dtype=np.float64))
                    dtype[name] = TensorProto.DOUBLE
                    node.input[k] = name
                else:
                    if t not in cast_cache:
                        out = f"{t}__f64"
                        new_nodes.append(helper.make_node("Cast", [t], [out], to=TensorProto.DOUBLE,
                                                          name=f"fpq_cast_{len(cast_cache)}"))
                        cast_cache[t] = out
                        dtype[out] = TensorProto.DOUBLE
                    node.input[k] = cast_cache[t]
            floats = [dtype.get(t) for t in node.input if t and dtype.get(t) in (TensorProto.FLOAT, TensorProto.DOUBLE)]
            for o in node.output:
                dtype[o] = TensorProto.DOUBLE if floats else dtype.get(node.input[0], TensorProto.FLOAT)
            new_nodes.append(node)
        del g.node[:]
        g.node.extend(new_nodes)
        del g.value_info[:]  # stale float32 types; shapes are inferred again
        model = model.transform(InferShapes())
        g = model.graph
        # qonnx's executor builds single-node ONNX Runtime models from value_info: make the types
        # what is actually computed
        for vi in list(g.value_info) + list(g.output):
            if vi.name in dtype and dtype[vi.name] in (TensorProto.FLOAT, TensorProto.DOUBLE):
                vi.type.tensor_type.elem_type = dtype[vi.name]
        known = {vi.name for vi in g.value_info} | {vi.name for vi in g.output} | {vi.name for vi in g.input}
        for t, dt in dtype.items():
            if t not in known and model.get_initializer(t) is None:
                shape = model.get_tensor_shape(t)
                if shape is not None:
                    g.value_info.append(helper.make_tensor_value_info(t, dt, shape))
        return model, False

    def _lower(self, model):
        """Conv -> one-hot patch Conv (float32, exact) + double MatMul; GlobalAveragePool ->
        ReduceSum + Div; AveragePool is refused (no exact double form here)."""
        g = model.graph
        out_nodes = []
        for node in list(g.node):
            if node.op_type == "Conv":
                out_nodes.extend(self._lower_conv(model, node))
            elif node.op_type == "GlobalAveragePool":
                shape = model.get_tensor_shape(node.input[0])
                axes = list(range(2, len(shape)))
                n = int(np.prod(shape[2:]))
                axes_name = f"{node.name}__axes"
                model.set_initializer(axes_name, np.asarray(axes, dtype=np.int64))
                cnt = f"{node.name}__count"
                model.set_initializer(cnt, np.asarray(float(n), dtype=np.float64))
                s = f"{node.output[0]}__sum"
                out_nodes.append(helper.make_node("ReduceSum", [node.input[0], axes_name], [s], keepdims=1,
                                                  name=f"{node.name}_sum"))
                out_nodes.append(helper.make_node("Div", [s, cnt], [node.output[0]], name=f"{node.name}_div"))
            elif node.op_type == "AveragePool":
                out_nodes.extend(self._lower_avgpool(model, node))
            else:
                out_nodes.append(node)
        del g.node[:]
        g.node.extend(out_nodes)

    @staticmethod
    def _lower_avgpool(model, node):
        """AveragePool -> one-hot patch Conv (exact) + double ReduceSum + Div by the window count
        (the count per output position when padding is not counted), as the emulator computes."""
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or a.get("ceil_mode", 0):
            raise ValueError(f"ComputeInDouble: AveragePool {node.name!r} with auto_pad / ceil_mode is not supported")
        k = list(a["kernel_shape"])
        nd = len(k)
        xshape = model.get_tensor_shape(node.input[0])
        yshape = model.get_tensor_shape(node.output[0])
        c, kk = xshape[1], int(np.prod(k))
        base = node.name.replace("/", "_")
        eye = np.zeros((c * kk, 1, *k), dtype=np.float32)
        for ch in range(c):
            for j in range(kk):
                eye[(ch * kk + j, 0) + np.unravel_index(j, k)] = 1.0
        model.set_initializer(f"{base}__onehot", eye)
        strides, pads = a.get("strides", [1] * nd), a.get("pads", [0] * 2 * nd)
        patches = f"{node.output[0]}__patches"
        nodes = [helper.make_node("Conv", [node.input[0], f"{base}__onehot"], [patches], name=f"fpq_patches_{base}",
                                  kernel_shape=k, strides=strides, pads=pads, group=c)]
        shp = f"{base}__shape"
        model.set_initializer(shp, np.asarray([yshape[0], c, kk] + list(yshape[2:]), dtype=np.int64))
        nodes.append(helper.make_node("Reshape", [patches, shp], [f"{patches}__r"], name=f"{base}_reshape"))
        axes = f"{base}__axes"
        model.set_initializer(axes, np.asarray([2], dtype=np.int64))
        nodes.append(helper.make_node("ReduceSum", [f"{patches}__r", axes], [f"{patches}__sum"], keepdims=0,
                                      name=f"{base}_sum"))
        if a.get("count_include_pad", 0) or not any(pads):
            count = np.asarray(float(kk))
        else:  # windows at the border see fewer real inputs
            from .emulate.kernels import window_counts

            count = window_counts(tuple(xshape[2:]), dict(kernel=tuple(k), strides=tuple(strides), pads=tuple(pads)))
        cnt = f"{base}__count"
        model.set_initializer(cnt, np.asarray(count, dtype=np.float64))
        nodes.append(helper.make_node("Div", [f"{patches}__sum", cnt], [node.output[0]], name=f"{base}_div"))
        return nodes

    @staticmethod
    def _lower_conv(model, node):
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        wshape = model.get_tensor_shape(node.input[1])
        xshape = model.get_tensor_shape(node.input[0])
        yshape = model.get_tensor_shape(node.output[0])
        cout, cin_g, *k = wshape
        nd = len(k)
        groups = int(a.get("group", 1))
        cin = xshape[1]
        kk = int(np.prod(k))
        # one-hot kernels: output channel c*kk + j copies input channel c at kernel offset j
        eye = np.zeros((cin * kk, 1, *k), dtype=np.float32)
        for c in range(cin):
            for j in range(kk):
                eye[(c * kk + j, 0) + np.unravel_index(j, k)] = 1.0
        base = node.name.replace("/", "_")
        eye_name = f"{base}__onehot"
        model.set_initializer(eye_name, eye)
        attrs = {"kernel_shape": list(k), "strides": a.get("strides", [1] * nd), "pads": a.get("pads", [0] * 2 * nd),
                 "dilations": a.get("dilations", [1] * nd), "group": cin}
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto != "NOTSET":   # padding="same": explicit pads (ONNX Runtime has no auto_pad with dilation)
            from .export.reader import auto_pads
            attrs["pads"] = list(auto_pads(auto, xshape[2:], k, attrs["strides"], attrs["dilations"]))
        patches = f"{node.output[0]}__patches"
        nodes = [helper.make_node("Conv", [node.input[0], eye_name], [patches], name=f"fpq_patches_{base}", **attrs)]
        out_sp = list(yshape[2:])
        L = int(np.prod(out_sp))
        # patches (1, cin*kk, *out) -> (1, groups, cin_g*kk, L)
        shp = f"{base}__shape1"
        model.set_initializer(shp, np.asarray([xshape[0], groups, cin_g * kk, L], dtype=np.int64))
        p2 = f"{patches}__r"
        nodes.append(helper.make_node("Reshape", [patches, shp], [p2], name=f"{base}_reshape1"))
        # weights (cout, cin_g, *k) -> (groups, cout_g, cin_g*kk); a dynamic (quantizer) weight is reshaped too
        wshp = f"{base}__wshape"
        model.set_initializer(wshp, np.asarray([groups, cout // groups, cin_g * kk], dtype=np.int64))
        w2 = f"{node.input[1]}__{base}_r"
        nodes.append(helper.make_node("Reshape", [node.input[1], wshp], [w2], name=f"{base}_wreshape"))
        mm = f"{node.output[0]}__mm"
        nodes.append(helper.make_node("MatMul", [w2, p2], [mm], name=f"{base}_matmul"))   # (1, g, cout_g, L)
        oshp = f"{base}__shape2"
        model.set_initializer(oshp, np.asarray([yshape[0], cout] + out_sp, dtype=np.int64))
        if len(node.input) > 2 and node.input[2]:
            r = f"{node.output[0]}__nobias"
            nodes.append(helper.make_node("Reshape", [mm, oshp], [r], name=f"{base}_reshape2"))
            bshp = f"{base}__bshape"
            model.set_initializer(bshp, np.asarray([cout] + [1] * nd, dtype=np.int64))
            b2 = f"{node.input[2]}__{base}_r"
            nodes.append(helper.make_node("Reshape", [node.input[2], bshp], [b2], name=f"{base}_breshape"))
            nodes.append(helper.make_node("Add", [r, b2], [node.output[0]], name=f"{base}_bias"))
        else:
            nodes.append(helper.make_node("Reshape", [mm, oshp], [node.output[0]], name=f"{base}_reshape2"))
        return nodes
