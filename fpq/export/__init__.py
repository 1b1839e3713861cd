"""QONNX export of a converted model (``export_qonnx``) and fpq's QONNX transformations; the
reader of QONNX files into the graph IR ``fpq.ir`` is ``fpq.export.reader`` (``read_graph``,
``typeplan_from_qonnx``).

``export_qonnx`` runs Brevitas' QONNX export, then fpq's transformations (``transforms``), never
qonnx's ``cleanup_model``: that constant-folds the weight quantizers and loses the formats.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from ..formats import BlockFormat
from ..ir import Graph, Op, Quantizer, UnsupportedGraphError
from ..ir.plan import typeplan_from_graph
from ..typeplan import TypePlan
from .qonnx_codec import FPQ_FORMAT_ATTR, QUANT_OPS
from .reader import read_graph, typeplan_from_qonnx

def _quantizer_nodes(q, model) -> dict:
    """{export node name: fpq tensor quantizer} for a converted model: each quantizer node is matched
    to the fpq tensor quantizer whose Brevitas proxy produced it (by module path)."""
    quants = getattr(q, "fpq_quantizers", None)
    if not callable(quants):
        return {}
    paths = {id(m): p for p, m in q.named_modules()}
    tq_paths = []
    for _, _, tq in quants():
        p = paths.get(id(tq))
        if p is not None:
            tq_paths.append((p, tq))
    out, missing = {}, []
    for node in model.graph.node:
        if node.op_type not in QUANT_OPS:
            continue
        parts = [s for s in node.name.split("/") if s][:-1]
        parts = [s for s in parts if s != "export_handler"]
        proxy = ".".join(parts)
        best = None
        for p, tq in tq_paths:
            if p.startswith(proxy + ".") and (best is None or len(p) < len(best[0])):
                best = (p, tq)
        if best is None:
            missing.append(node.name)
        else:
            out[node.name] = best[1]
    if missing:
        raise RuntimeError(f"export_qonnx: quantizer nodes {missing} match no fpq quantizer of the model "
                           f"(known: {[p for p, _ in tq_paths]}); the export's node naming changed")
    return out


@contextlib.contextmanager
def _full_scope_names(q):
    """Name every module the model calls in the export by its full path.

    The TorchScript exporter names a node by the modules on the call stack, each by the last
    non-numeric atom of its path ("inner.fc" -> "fc"). A converted model is an fx GraphModule
    that calls ``inner.fc`` directly (``Inner.forward`` is traced away), so its nodes would read
    "/fc/..." and collide across blocks (every ResNet block has a ``conv1``). While exporting, each
    dotted call target is also registered first in the root's module dict as "inner/fc" (a name
    without dots, so the exporter keeps it whole; modules named twice keep their first name), and
    the nodes read "/inner/fc/...", the path fpq's reader and ``_quantizer_nodes`` expect.
    """
    graph = getattr(q, "graph", None)
    targets = [n.target for n in getattr(graph, "nodes", ()) if getattr(n, "op", None) == "call_module"]
    aliases = {t.replace(".", "/"): q.get_submodule(t) for t in dict.fromkeys(targets) if "." in t}
    if not aliases:
        yield
        return
    saved = q._modules
    q._modules = type(saved)(list(aliases.items()) + list(saved.items()))
    try:
        yield
    finally:
        q._modules = saved


def _as_tensor(example_input):
    import torch
    if isinstance(example_input, torch.Tensor):
        return example_input.detach().to(torch.float32)
    return torch.as_tensor(np.asarray(example_input, dtype=np.float32))


def export_qonnx(q, path=None, example_input=None, *, input_name="input", output_name="output"):
    """Export a quantized torch model (``fpq.convert`` or plain Brevitas layers) to QONNX.

    The file keeps every weight quantizer (Quant / FloatQuant / BipolarQuant nodes), carries the
    exact fpq Format of each quantizer in an ``fpq_format`` attribute, passes ``onnx.checker`` and
    runs in qonnx's executor. The export uses batch 1 (``example_input[:1]``).

    Args:
        q (torch.nn.Module): the quantized model (exported in eval mode; its mode is restored).
        path (str | os.PathLike | None): the .onnx file to write; None writes no file.
        example_input (torch.Tensor | array_like | None): an input with a batch dimension; None
            uses the input shape the model recorded (``fpq.calibrate``) or a leading Linear's
            ``in_features``.
        input_name (str): name of the graph input.
        output_name (str): name of the graph output.

    Returns:
        str | qonnx.core.modelwrapper.ModelWrapper: ``path``; with ``path=None`` the ModelWrapper.

    Raises:
        ValueError: no ``example_input`` and no recorded input shape, an ``example_input`` without a
            batch dimension, or an op the export cannot write exactly (named in the message).

    Example:
        >>> import os, tempfile, torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="e4m3")
        >>> x = torch.randn(8, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = fpq.export_qonnx(q, os.path.join(d, "m.onnx"), x)
        ...     bool((torch.from_numpy(fpq.emulate(path, x)) == q(x)).all())
        True
    """
    import onnx
    import torch
    from brevitas.export import export_qonnx as brevitas_export
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    from ..nn.layers import exportable_weights
    from .block_ops import write_block_quant
    from .transforms import (AnnotateFormats, RemoveDoubleDivision, RemoveFloatCasts, RemoveInitializersFromInputs,
                             RenameIO)

    if example_input is None:
        example_input = recorded_input(q)
    if example_input is None:
        raise ValueError("export_qonnx needs example_input (a tensor of the model's input shape): this model "
                         "neither starts with a Linear nor recorded its input shape (fpq.calibrate records it)")
    x = _as_tensor(example_input)
    if x.dim() == 0:
        raise ValueError("example_input must have a batch dimension")
    # the export runs where the model is (x may be on a GPU while the model stays on the CPU)
    home = next(iter(q.parameters()), None)
    x = x[:1].to(home.device if home is not None else "cpu")
    was_training = q.training
    q.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "raw.onnx")
            # BiPer / K-hot latent weights become ones the plain QONNX nodes quantize identically
            with torch.no_grad(), exportable_weights(q), _full_scope_names(q):
                # TorchScript export: one self-contained file with module-scoped node names
                # (the dynamo exporter writes external data and loses the scopes)
                brevitas_export(q, x, raw, dynamo=False)
            model = ModelWrapper(raw)
    finally:
        q.train(was_training)
    quantizers = _quantizer_nodes(q, model)
    formats = {name: tq.fmt for name, tq in quantizers.items() if not isinstance(tq.fmt, BlockFormat)}
    for node in list(model.graph.node):   # block formats: fpq's BlockQuant node (export.block_ops)
        tq = quantizers.get(node.name)
        if tq is not None and isinstance(tq.fmt, BlockFormat):
            ts = None if tq.fmt.po2_scale or tq.role == "weight" else float(tq.tensor_scale_t)
            write_block_quant(model, node, tq.fmt, ts)
    sum_pools = [name for name, m in q.named_modules()
                 if callable(getattr(m, "exact_mean", None)) and getattr(m, "window", lambda: None)() is not None]
    if sum_pools:
        model = model.transform(RemoveDoubleDivision(sum_pools))
    model = model.transform(RemoveInitializersFromInputs())
    model = model.transform(RemoveFloatCasts())
    model = model.transform(AnnotateFormats(formats))
    model = model.transform(RenameIO([input_name], [output_name]))
    model = model.transform(InferShapes())
    onnx.checker.check_model(model.model)
    if path is None:
        return model
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    return path


__all__ = ["export_qonnx", "read_graph", "plan", "typeplan_from_qonnx", "typeplan_of", "Graph", "Op", "Quantizer",
           "UnsupportedGraphError", "FPQ_FORMAT_ATTR"]


def as_graph(q_or_onnx, example_input=None):
    """The fpq graph IR of a converted torch model (exported first, so it needs ``example_input``),
    a QONNX file / ModelWrapper / ModelProto, or a Graph (returned as is)."""
    from pathlib import Path

    if isinstance(q_or_onnx, Graph):
        return q_or_onnx
    try:
        import torch
        is_module = isinstance(q_or_onnx, torch.nn.Module)
    except ImportError:  # pragma: no cover - torch is a dependency
        is_module = False
    if is_module:   # export_qonnx finds the input shape the model knows, or says what to pass
        return read_graph(export_qonnx(q_or_onnx, None, example_input))
    if isinstance(q_or_onnx, (str, os.PathLike)) and not Path(q_or_onnx).is_file():
        raise FileNotFoundError(f"no QONNX file at {q_or_onnx}")
    return read_graph(q_or_onnx)


def recorded_input(q):
    """An example input (batch 1, zeros) of a converted model, from the input shape it recorded
    (``fpq_record_shapes``, run by ``fpq.calibrate``) or, for a model that starts with a Linear,
    its ``in_features``; None when neither tells the shape."""
    import torch
    from torch import nn

    shapes = (getattr(q, "meta", None) or {}).get("fpq_shapes") or {}
    graph = getattr(q, "graph", None)
    for node in getattr(graph, "nodes", ()):
        if node.op == "placeholder" and node.name in shapes:
            return torch.zeros((1,) + tuple(shapes[node.name][1:]))
    if any(getattr(m, "fpq_op", None) == "matmul" for m in q.modules()):
        return None    # a token model (attention): its first Linear's in_features does not tell the tokens
    for m in q.modules():
        if isinstance(m, nn.Linear):
            return torch.zeros(1, m.in_features)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            break
    return None


def typeplan_of(q, example_input=None):
    """The one TypePlan of a converted model, read from its in-memory QONNX export.

    So ``fpq.plan(q)`` and ``fpq.plan("q.onnx")`` are the same plan (the cost model, the emulator and
    the HLS builder all read this one).

    Args:
        q: a model from ``fpq.convert``.
        example_input: an input of its shape (None: the recorded one).

    Returns:
        TypePlan: the plan.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> from fpq.export import typeplan_of
        >>> [layer.name for layer in typeplan_of(q)]
        ['input_quant', 'linear_0', 'quant_0', 'relu_1', 'output']
    """
    return typeplan_from_graph(as_graph(q, example_input))


def plan(q, example_input=None) -> TypePlan:
    """The TypePlan of a quantized network: every tensor's exact format, scale and derived type.

    A converted model, a QONNX file and a Graph are all read from the same graph IR (a converted
    model through its in-memory QONNX export), so ``fpq.plan(q)`` and ``fpq.plan("q.onnx")`` agree.
    Products and accumulators are derived exactly from the operands' fixed-point carriers.

    Args:
        q (FpqModel | str | os.PathLike | ModelWrapper | onnx.ModelProto | Graph | TypePlan): a
            model from ``fpq.convert``, a QONNX file path / ModelWrapper / ModelProto, an fpq graph
            IR, or a TypePlan (returned as is).
        example_input (torch.Tensor | None): for a converted model: an input of its shape; None uses
            the shape ``fpq.calibrate`` recorded or a leading Linear's ``in_features``.

    Returns:
        TypePlan: per-layer types in execution order; ``print`` it for a table.

    Raises:
        ValueError: a converted model with no known input shape, or a graph with an op fpq does not
            know (named in the message).

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)   # the accumulator's width follows the weights and the bias
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> tp = fpq.plan(q)
        >>> [layer.name for layer in tp]
        ['input_quant', 'linear_0', 'quant_0', 'relu_1', 'output']
        >>> str(tp["0"].tensors["accumulator"])    # exact: no sum can overflow
        'fixed<22,6,RND_CONV,SAT>'
    """
    if isinstance(q, TypePlan):
        return q
    builder = getattr(q, "fpq_typeplan", None)
    if callable(builder):
        return builder(example_input) if example_input is not None else builder()
    return typeplan_from_qonnx(q)
