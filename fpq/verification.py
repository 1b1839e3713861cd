"""``fpq.verify``: torch == emulator == qonnx executor == HLS C-sim, bit for bit, layer by layer.

Paths (each compared with the emulator, atol=0, NaN equal to NaN):

* ``torch``: the quantized torch model in eval mode (only when a torch model is given). Layer
  values come from forward hooks on the modules whose last IR op they produce.
* ``emulator``: ``fpq.emulate`` on the graph IR (the reference of the comparison).
* ``qonnx``: ``qonnx.core.onnx_exec.execute_onnx`` one sample at a time on the first
  ``qonnx_subset`` inputs, on a copy of the graph rewritten by ``ComputeInDouble`` so that its
  sums are exact (in float32 ONNX Runtime would round a sum of wide products; see
  ``fpq.export.transforms``). Quantizers whose format QONNX cannot express (e.g. fixed WRAP)
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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .export.graph import Graph, read_graph

REFERENCE = "emulator"


@dataclass
class Mismatch:
    layer: str
    path: str          # the path that differs from the emulator
    index: tuple       # first differing index (sample first)
    values: dict       # path -> value at that index

    def __str__(self):
        vals = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"layer {self.layer!r}: {self.path} differs from {REFERENCE} at index {self.index} ({vals})"


@dataclass
class VerifyReport:
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
        """'EXACT', 'NOT EXACT' or 'NOT VERIFIED' (no independent path was compared)."""
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
    """Off-grid float32 inputs for ``graph``: uniform over +-spread x the input format's range
    (so about a third saturate) mixed with small normal values near the fine grid."""
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
                if op.kind in ("linear", "conv1d", "conv2d") and oq is not None and getattr(oq, "is_quant_enabled", False):
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
    """A copy of a QONNX model whose sums run exactly in float64 (``ComputeInDouble``);
    ``input_dtype`` float64 declares the graph input double, so the value given is quantized."""
    from onnx import TensorProto
    from .export.graph import load_model
    from .export.transforms import ComputeInDouble, RemoveFloatCasts, RemoveInitializersFromInputs
    mw = load_model(model)
    mw = mw.transform(RemoveInitializersFromInputs()).transform(RemoveFloatCasts())
    if np.dtype(input_dtype) == np.float64:   # (transform works on a copy: the caller's model is untouched)
        for vi in mw.graph.input:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return mw.transform(ComputeInDouble())


def qonnx_trace(model, x, graph: Graph, mw=None):
    """qonnx's executor, one sample at a time: final output and {IR op: value}. ``mw``: the
    ``qonnx_double_model`` of ``model`` for x's dtype, when already built."""
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
    """Compare every path on the same inputs; see the module docstring.

    ``q``: a converted torch model or a QONNX path / ModelWrapper.
    ``x``: inputs (N, ...); None draws ``n`` off-grid random inputs (``random_inputs``).
    ``model``: the QONNX file to check against a torch ``q`` (default: ``q`` exported in memory).
    ``chunk``: rows run and compared at a time (memory: one chunk's per-layer values per path).
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
        notes.append(f"not fixed-point exact by construction: {inexact} (a float scale, or a mean / division "
                     "rounded once in float64): agreement there is checked here, not proven")
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
