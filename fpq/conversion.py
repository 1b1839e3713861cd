"""fpq.convert: a float PyTorch model -> a quantized model built from Brevitas layers.

One policy (format strings for weights / activations / bias / inputs, scale kind, granularity,
per-module overrides) becomes fpq quantizers (``fpq.nn.quantizers``) inside Brevitas quant
layers. The model is traced with torch.fx; BatchNorm is folded with Brevitas' merge_bn where it
directly follows a Conv/Linear, else (or with ``batchnorm="keep"``) kept element-wise as an
``FpqBatchNorm`` (fpq.nn.batchnorm); Dropout is removed; residual adds become ``FpqAdd``
modules; torch.cat and nearest upsampling stay as they are (values moved, no quantizer: the join's type is the
union of its inputs'); products of two activations become ``FpqMatMul`` and nn.MultiheadAttention its
hand-written form (fpq.nn.attention); an explicit input quantizer is the first op. The original is never mutated.
"""
from __future__ import annotations

import copy
import fnmatch
import operator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from .formats import Binary, Fixed, parse_format
from .functional import CAT_FUNCTIONS, check_cat, check_upsample, functional_to_modules, unique_name
from .typeplan import narrow_accumulator
from .nn.batchnorm import FpqBatchNorm, from_batchnorm
from .nn.block_axes import check_block_layer, set_conv_input_axes
from .nn.layers import (FpqAct, FpqAdd, FpqAvgPool, FpqClamp, FpqConv1d, FpqConv2d, FpqInput,
                        FpqLinear, link_input_quantizers, quant_layer)
from .nn.tables import FpqTable, table_spec
from .nn.normalization import FpqLayerNorm, FpqSoftmax, from_module as normalization_layer
from .nn.attention import FpqMatMul, FpqPositional, attention_to_modules, rewrite_multihead_attention, token_means
from .nn.embedding import FpqEmbedding
from .graphcheck import _TABLE_MODULES, _check_graph, _check_modules

SUPPORTED = ("Linear", "Conv1d", "Conv2d",
             "BatchNorm1d/2d (folded into the Conv/Linear before it, else element-wise)",
             "ReLU", "ReLU6", "Hardtanh", "Identity", "MaxPool1d", "MaxPool2d", "AvgPool1d",
             "AvgPool2d", "AdaptiveAvgPool1d/2d(1)", "Flatten", "Dropout (removed)",
             "residual add (x + y, torch.add)", "torch.flatten / view / reshape", "F.relu / torch.relu",
             "F.relu6 / F.hardtanh / torch.clamp (constant bounds)", "F.max_pool1d/2d", "F.avg_pool1d/2d",
             "F.adaptive_avg_pool1d/2d(x, 1)", "x.mean(spatial dims)",
             "torch.cat / torch.concat (any non-batch dim)",
             "nn.Upsample / F.interpolate (mode='nearest', integer scale_factor)",
             "Sigmoid, Tanh, SiLU, Hardswish, Hardsigmoid, GELU (erf / tanh), ELU, Softplus, LeakyReLU, PReLU "
             "(exact tables over an input of at most 16 bits) and their functional forms",
             "Softmax(dim=-1) / F.softmax / torch.softmax / x.softmax(-1), LayerNorm over the last axis (exact pipelines)",
             "a @ b / torch.matmul / torch.bmm of two quantized activations (* a constant scale), x.transpose / permute, "
             "nn.MultiheadAttention / TransformerEncoder(Layer) (batch_first, unmasked), F.scaled_dot_product_attention"
             "(scale=c), x.mean(1) over tokens, x + learned positional embedding, nn.Embedding (inputs='ufixed<b,b>')",
             "a Hugging Face BertModel whole (sequence_length=T, fpq.nn.bert)")
_KEEP_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Upsample, FpqMatMul, FpqPositional, FpqEmbedding)
_DROP_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_KEEP_FUNCTIONS = (F.relu, torch.relu, torch.flatten, torch.transpose, torch.permute) + CAT_FUNCTIONS
_KEEP_METHODS = ("view", "reshape", "flatten", "relu", "size", "contiguous", "transpose", "permute")
_ADD_FUNCTIONS = (operator.add, torch.add, operator.iadd)
_DROPOUT_FUNCTIONS = (F.dropout,)
DEFAULT_BIAS = "int16"
BATCHNORM_MODES = ("fold", "keep")


@dataclass
class Policy:
    """The quantization policy of a converted model (format strings are canonical)."""

    weights: str
    activations: str
    bias: str
    inputs: str
    scale: str = "po2"
    granularity: str = "tensor"
    overrides: dict = field(default_factory=dict)
    method: str = "ste"    # "biper": binary weights binarized by BiPer's square wave (fpq.nn.biper)
    batchnorm: object = "fold"   # "fold" | "keep" | {BatchNorm name or glob: "fold" | "keep"}
    accumulator_bits: object = None   # None | int | {Linear/Conv name or glob: int}
    # module path -> {"weights": ..., "activations": ..., "bias": ...} actually used
    layers: dict = field(default_factory=dict)


def _fmt(value, what: str) -> str:
    if value is None:
        raise ValueError(f"no format for {what}: pass fmt=... or {what}=...")
    return str(parse_format(value))  # bad strings raise parse_format's ValueError


class FpqModel(fx.GraphModule):
    """A converted model: a torch.fx GraphModule of fpq / Brevitas layers plus its policy.

    Returned by ``fpq.convert`` (the class of a converted ``nn.Sequential`` is a subclass named
    ``SequentialFpq``); users do not construct it. It is an ``nn.Module`` like any other: run it,
    train it (QAT), ``.to(device)`` it. Every fpq function that takes "a converted model" takes
    it: ``fpq.calibrate``, ``fpq.ptq``, ``fpq.plan``, ``fpq.export_qonnx``, ``fpq.emulate``,
    ``fpq.to_hls``, ``fpq.verify``, ``fpq.estimate_cost``.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> isinstance(q, fpq.conversion.FpqModel), q.fpq_policy.weights
        (True, 'int8')
    """

    @property
    def fpq_policy(self) -> Policy:
        """The conversion's Policy: default formats per role, overrides and per-layer formats.
        """
        return self.meta["fpq_policy"]

    def fpq_typeplan(self, example_input=None):
        """The model's TypePlan (the same as ``fpq.plan(self, example_input)``).

        Args:
            example_input (torch.Tensor | None): an input of the model's shape; None uses the shape
                ``fpq.calibrate`` recorded or a leading Linear's ``in_features``.

        Returns:
            TypePlan: every tensor's exact type, read from the model's in-memory QONNX export.
        """
        from .export import typeplan_of   # the one TypePlan: read from the in-memory QONNX export
        return typeplan_of(self, example_input)

    def fpq_quantizers(self):
        """Every tensor quantizer of the model, in module order.

        Returns:
            list[tuple[str, str, torch.nn.Module]]: (module name, role "weight" | "bias" | "output",
            fpq tensor quantizer) triples.
        """
        out = []
        for name, m in self.named_modules():
            if isinstance(m, (FpqLinear, FpqConv1d, FpqConv2d, FpqBatchNorm)):
                for role, tq in (("weight", m.fpq_weight), ("bias", m.fpq_bias), ("output", m.fpq_output)):
                    if tq is not None:
                        out.append((name, role, tq))
            elif isinstance(m, FpqAct):
                tq = m.fpq_output
                if tq is not None:
                    out.append((name, "output", tq))
        return out

    @torch.no_grad()
    def fpq_record_shapes(self, x: torch.Tensor) -> None:
        """Run ``x`` through the model once (in eval mode) and keep every node's output shape.

        The TypePlan reads these shapes; ``fpq.calibrate`` and ``fpq.ptq`` call this.

        Args:
            x (torch.Tensor): one batch of inputs of the model's shape.
        """
        from torch.fx.passes.shape_prop import ShapeProp
        was = self.training
        self.eval()
        ShapeProp(self).propagate(x)
        self.train(was)
        metas = {node.name: node.meta.get("tensor_meta") for node in self.graph.nodes}
        self.meta["fpq_shapes"] = {n: tuple(tm.shape) for n, tm in metas.items() if hasattr(tm, "shape")}


def _unsupported(path: str, what: str) -> ValueError:
    return ValueError(f"fpq.convert: unsupported layer {path!r} of type {what}; "
                      f"supported: {', '.join(SUPPORTED)}")


def _resolve(policy: Policy, path: str) -> dict:
    """Formats for one module: the policy defaults, then matching overrides (exact name wins)."""
    out = {"weights": policy.weights, "activations": policy.activations, "bias": policy.bias}
    matches = [p for p in policy.overrides if p != path and fnmatch.fnmatchcase(path, p)]
    if path in policy.overrides:
        matches.append(path)
    for pattern in matches:  # globs in the order given, the exact name last
        value = policy.overrides[pattern]
        if isinstance(value, dict):
            unknown = set(value) - {"weights", "activations", "bias"}
            if unknown:
                raise ValueError(f"override {pattern!r}: unknown keys {sorted(unknown)}; "
                                 "allowed: weights, activations, bias")
            out.update({k: _fmt(v, k) for k, v in value.items()})
        else:
            f = _fmt(value, f"override {pattern!r}")
            out["weights"] = out["activations"] = f
    return out


def _act_format(policy: Policy, path: str, kind: str) -> str:
    """The activations format of a layer that has no weights (recorded in policy.layers)."""
    f = {"activations": _resolve(policy, path)["activations"]}
    check_block_layer(path, kind, f)
    policy.layers[path] = f
    return f["activations"]


BN_SCALE_FOR_BINARY = "int8"


def _batchnorm_formats(policy: Policy, path: str) -> dict:
    """A kept BatchNorm's formats: its scale s takes the weight format, except that a binary
    weight format from the defaults gives it int8 -- binary weights mean binary conv / linear
    weights, and a binary s would keep only the sign and a power of two of each channel's scale
    (BNN practice keeps BatchNorm in higher precision). An override naming the BatchNorm's
    weights, binary included, is used as given."""
    f = _resolve(policy, path)
    if isinstance(parse_format(f["weights"]), Binary):
        probe = _resolve(replace(policy, weights=BN_SCALE_FOR_BINARY), path)
        if probe["weights"] == BN_SCALE_FOR_BINARY:   # not set by an override
            f["weights"] = BN_SCALE_FOR_BINARY
    return f


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow etc.
        raise ValueError(f"fpq.convert: the model could not be traced with torch.fx ({e}); "
                         "fpq supports feed-forward models built from: " + ", ".join(SUPPORTED)) from e


def _remove_passthrough(gm: fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        drop = ((node.op == "call_module" and isinstance(modules[node.target], _DROP_MODULES))
                or (node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS))
        if drop:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _check_batchnorm(batchnorm):
    """The batchnorm option: "fold" | "keep" | {BatchNorm module name or glob: "fold" | "keep"}."""
    if isinstance(batchnorm, str):
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"unknown batchnorm mode {batchnorm!r}; allowed: 'fold', 'keep', or a dict "
                             "{BatchNorm name or glob: 'fold' | 'keep'}")
        return batchnorm
    if not isinstance(batchnorm, dict):
        raise TypeError(f"batchnorm must be 'fold', 'keep' or a dict, got {type(batchnorm).__name__}")
    bad = {k: v for k, v in batchnorm.items() if v not in BATCHNORM_MODES}
    if bad:
        raise ValueError(f"batchnorm modes {bad}: allowed values are 'fold' and 'keep'")
    return dict(batchnorm)


def _by_name(spec: dict, path: str, default):
    """The value ``spec`` ({module name or glob: value}) gives module ``path``: the exact name wins
    over globs, among globs the last matching one in the order given; ``default`` when none does."""
    if path in spec:
        return spec[path]
    hits = [v for pattern, v in spec.items() if fnmatch.fnmatchcase(path, pattern)]
    return hits[-1] if hits else default


def _unmatched(patterns, names) -> list:
    """The names / globs among ``patterns`` that match none of ``names``."""
    return [p for p in patterns if not any(p == n or fnmatch.fnmatchcase(n, p) for n in names)]


def _bn_mode(batchnorm, path: str) -> str:
    """The mode of one BatchNorm: a string applies to all; a dict chooses by name (``_by_name``),
    unlisted BatchNorms fold."""
    return batchnorm if isinstance(batchnorm, str) else _by_name(batchnorm, path, "fold")


def _fold_bn(gm: fx.GraphModule, batchnorm="fold") -> fx.GraphModule:
    """Fold each BatchNorm into the Conv/Linear right before it (Brevitas' merge_bn does the math),
    unless its mode (``batchnorm``) is "keep". BatchNorms left here become FpqBatchNorm layers.

    Brevitas' own MergeBatchNorm pass only matches graphs from its deprecated fx backport, so the
    pattern is matched here on torch.fx nodes.
    """
    from brevitas.nn.utils import merge_bn
    pairs = ((nn.Linear, nn.BatchNorm1d), (nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d))
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        if _bn_mode(batchnorm, node.target) == "keep":
            continue
        prev = node.args[0] if node.args else None
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        layer, bn = modules[prev.target], modules[node.target]
        if not any(type(layer) is lt and type(bn) is bt for lt, bt in pairs):
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            continue  # batch statistics at inference: not foldable (refused by convert)
        merge_bn(layer, bn, output_channel_dim=0)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _set_module(gm: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def convert(model: nn.Module, fmt=None, *, weights=None, activations=None, bias=None, overrides=None,
            scale: str | None = None, granularity: str | None = None, inputs=None, method: str = "ste",
            omega=None, batchnorm="fold", accumulator_bits=None, hadamard: bool = False, scope: str = "graph",
            group_size: int | None = None, sequence_length: int | None = None) -> FpqModel:
    """Quantize a float torch model: every Linear / Conv weight, bias and activation gets an fpq Format.

    The model is traced with torch.fx (a copy; ``model`` is unchanged), BatchNorms are folded or
    kept element-wise, and every Linear / Conv1d / Conv2d, activation, pooling, Softmax / LayerNorm,
    attention matmul and supported element-wise op becomes an fpq layer whose quantizers compute
    ``fpq.quantize`` exactly. Weight and bias scales start from the weights, activation scales
    at 1: calibrate (``fpq.calibrate`` / ``fpq.ptq``) or train before use.

    Args:
        model (torch.nn.Module): the float model, or a model ``fpq.convert`` returned (it is
            converted again from its float weights). Already quantized Brevitas layers are refused.
        fmt (str | Format | None): default format of weights, activations and inputs.
        weights (str | Format | None): weight format (default ``fmt``).
        activations (str | Format | None): activation format (default ``fmt``).
        bias (str | Format | None): bias format (default ``int16`` with its own scale).
        overrides (dict | None): {module name or glob: format, or {"weights" | "activations" |
            "bias": format}} per layer; the exact name wins over globs.
        scale (str | None): "po2" (power-of-two scales, the default) or "float"; Fixed formats
            carry their own scaling and ignore it.
        granularity (str | None): weight scales per "tensor" (default) or per output "channel".
        inputs (str | Format | None): format of the network input quantizer (default the
            activation format).
        method (str): "ste" (straight-through quantizers) or "biper" (binary weights become BiPer
            weights, see ``fpq.nn.biper``).
        omega (float | None): BiPer's frequency; required with ``method="biper"`` and only there.
        batchnorm (str | dict): "fold" (default: fold each BatchNorm that directly follows a Conv /
            Linear into it, keep the others element-wise), "keep" (all element-wise), or {BatchNorm
            name or glob: "fold" | "keep"} (unlisted: "fold").
        accumulator_bits (int | dict | None): None (exact accumulators), an int, or {Linear / Conv
            name or glob: int}: that accumulator keeps its exact LSB and only that many bits,
            wrapping on overflow like ap_fixed's AP_WRAP, identically on every path.
        hadamard (bool): with block-scaled activations, rotate every Linear's reduction axis by a
            block-diagonal Hadamard of the block size (``fpq.nn.hadamard``).
        scope (str): "graph" (default: trace and quantize everything, as above) or "modules":
            weight-only conversion of any module tree, no tracing (``fpq.nn.weight_only``): every
            Linear / Conv1d / Conv2d gets ``weights`` (Int or Minifloat) with scales per "tensor",
            "channel" or "group" (default "group"), ``scale`` "po2" or "float" (default "float");
            activations and biases stay float; ``overrides`` {name or glob: format or None}.
        group_size (int | None): with ``scope="modules"`` only: weights per group along the input
            axis (default 128; must divide each layer's fan-in).
        sequence_length (int | None): for a Hugging Face ``BertModel`` only, and required there: the
            fixed number of tokens T; the model is rebuilt whole (``fpq.nn.bert.from_bert``) and its
            inputs format defaults to the token ids' ``ufixed<b,b>``.

    Returns:
        FpqModel: the converted model, in eval mode (``.train()`` it for QAT). With
        ``scope="modules"``: a copy of ``model`` whose layers are ``WeightOnlyLayer``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``batchnorm`` is neither a string nor a dict.
        ValueError: an invalid format string, no format for a role, an unknown ``scale``,
            ``granularity``, ``method``, ``batchnorm`` mode or ``scope``; ``omega`` without BiPer;
            ``group_size`` or graph-only options with the wrong scope; an override or batchnorm
            entry that matches no layer; a layer or op fpq cannot quantize (named in the message); a
            Hugging Face model ``fpq.nn.bert`` cannot rebuild at a fixed length, or ``sequence_length``
            given with another model.

    Example:
        >>> import torch, fpq
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> q = fpq.convert(model, fmt="int8", overrides={"0": {"weights": "e2m1"}})
        >>> q.fpq_policy.layers["0"]
        {'weights': 'e2m1', 'activations': 'int8', 'bias': 'int16'}
        >>> q(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
        >>> fpq.convert(model, fmt="int8", scale="log")
        Traceback (most recent call last):
        ...
        ValueError: unknown scale kind 'log'; allowed: 'po2', 'float'
    """
    if scope == "modules":   # weight-only, no tracing: fpq.nn.weight_only
        from .nn.weight_only import convert_scope_modules
        return convert_scope_modules(model, fmt, weights, scale, granularity, group_size, overrides, dict(
            activations=activations, bias=bias, inputs=inputs, omega=omega, accumulator_bits=accumulator_bits,
            method=None if method == "ste" else method, batchnorm=None if batchnorm == "fold" else batchnorm,
            hadamard=hadamard or None, sequence_length=sequence_length))
    if scope != "graph":
        raise ValueError(f"unknown scope {scope!r}; allowed: 'graph' (trace the model, quantize everything), "
                         "'modules' (weight-only, any module tree)")
    if group_size is not None:
        raise ValueError("group_size applies to scope='modules' (weight-only conversion) only")
    from .nn.bert import prepare   # a Hugging Face BertModel -> its fixed-length encoder form
    model, inputs = prepare(model, sequence_length, inputs)
    scale = "po2" if scale is None else scale
    granularity = "tensor" if granularity is None else granularity
    if not isinstance(model, nn.Module):
        raise TypeError(f"fpq.convert expects a torch.nn.Module, got {type(model).__name__}")
    if scale not in ("po2", "float"):
        raise ValueError(f"unknown scale kind {scale!r}; allowed: 'po2', 'float'")
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"unknown granularity {granularity!r}; allowed: 'tensor', 'channel'")
    if method not in ("ste", "biper"):
        raise ValueError(f"unknown method {method!r}; allowed: 'ste', 'biper'")
    if (omega is not None) != (method == "biper"):
        raise ValueError("omega (BiPer's frequency) is required with method='biper' and only there")
    batchnorm = _check_batchnorm(batchnorm)
    w = _fmt(weights if weights is not None else fmt, "weights")
    a = _fmt(activations if activations is not None else fmt, "activations")
    policy = Policy(weights=w, activations=a, bias=_fmt(bias if bias is not None else DEFAULT_BIAS, "bias"),
                    inputs=_fmt(inputs if inputs is not None else a, "inputs"), scale=scale,
                    granularity=granularity, overrides=dict(overrides or {}), method=method,
                    batchnorm=batchnorm, accumulator_bits=accumulator_bits)
    if isinstance(model, FpqModel):
        from .nn.plan import dequantize_model
        src, carried = dequantize_model(model)
    else:
        src, carried = copy.deepcopy(model), {}
    src.eval()
    for path, mod in src.named_modules():
        if type(mod).__module__.startswith("brevitas."):  # fpq builds its own quantizers
            raise _unsupported(path, f"{type(mod).__name__} (an already quantized Brevitas layer: "
                                     "pass the float model, or a model returned by fpq.convert)")
    _check_modules(src)
    rewrite_multihead_attention(src)   # nn.MultiheadAttention -> Q/K/V Linears, matmuls, softmax
    gm = _trace(src)
    _remove_passthrough(gm)
    token_means(gm)             # x.mean(1) of (B, T, d) tokens -> AdaptiveAvgPool1d(1) over T (fpq.nn.attention)
    functional_to_modules(gm)   # F.max_pool2d, F.hardtanh, x.mean((2, 3)), ... -> their modules
    if isinstance(batchnorm, dict):
        bns = [n for n, m in gm.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        stray = _unmatched(batchnorm, bns)
        if stray:
            raise ValueError(f"batchnorm entries {stray} match no BatchNorm; BatchNorm names: {bns}")
    gm = _fold_bn(gm, batchnorm)
    _check_graph(gm)
    names_seen = set()   # q @ k.transpose(-2, -1) * scale, a @ v: FpqMatMul (fpq.nn.attention)
    attention_to_modules(gm, lambda n: _act_format(policy, n, "matmul"), scale, unique_name, names_seen,
                         lambda n: policy.layers.setdefault(n, _resolve(policy, n)), policy.inputs)   # embeddings
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            path, m = node.target, modules[node.target]
            names_seen.add(path)
            if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d):  # subclasses (e.g. Brevitas layers) differ
                f = _resolve(policy, path)
                policy.layers[path] = f
                _set_module(gm, path, quant_layer(m, f["weights"], f["bias"], f["activations"], scale, granularity))
            elif type(m) in _TABLE_MODULES:
                f = _resolve(policy, path)
                policy.layers[path] = {"activations": f["activations"]}
                fn, params, weight = table_spec(m)
                _set_module(gm, path, FpqTable(fn, params, f["activations"], scale, weight))
            elif type(m) in (nn.Softmax, nn.LayerNorm):
                f = _resolve(policy, path)
                policy.layers[path] = dict(f) if isinstance(m, nn.LayerNorm) else {"activations": f["activations"]}
                _set_module(gm, path, normalization_layer(m, f, scale, path))
            elif isinstance(m, (nn.ReLU6, nn.Hardtanh)):
                _set_module(gm, path, FpqClamp(m.min_val, m.max_val, _act_format(policy, path, type(m).__name__), scale))
            elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
                    if any(s != 1 for s in size):
                        raise _unsupported(path, f"{type(m).__name__}(output_size={m.output_size})")
                _set_module(gm, path, FpqAvgPool(m, _act_format(policy, path, type(m).__name__), scale))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if not m.track_running_stats or m.running_mean is None:
                    raise _unsupported(path, f"{type(m).__name__} without running statistics "
                                             "(track_running_stats=False normalizes with batch statistics)")
                f = _batchnorm_formats(policy, path)
                check_block_layer(path, type(m).__name__, f)
                policy.layers[path] = dict(f, batchnorm="element-wise")
                _set_module(gm, path, from_batchnorm(m, f["weights"], f["bias"], f["activations"], scale))
            elif isinstance(m, nn.Upsample):
                check_upsample(path, m)   # nearest, integer factors: values repeated, no arithmetic
            elif not isinstance(m, _KEEP_MODULES):
                raise _unsupported(path, type(m).__name__)
        elif node.op == "call_function":
            if node.target in _ADD_FUNCTIONS:
                tensors = [x for x in node.args if isinstance(x, fx.Node)]
                if len(tensors) != 2 or len(node.args) != 2 or node.kwargs:
                    raise _unsupported(node.name, "add with a constant or alpha (only x + y of two tensors)")
                name = unique_name(gm, node.name)
                gm.add_submodule(name, FpqAdd(_act_format(policy, node.name, "add"), scale))
                with gm.graph.inserting_after(node):
                    new = gm.graph.call_module(name, tuple(node.args))
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
                names_seen.add(node.name)
            elif node.target in CAT_FUNCTIONS:
                check_cat(node, modules)   # along a constant non-batch axis: values moved, not computed
            elif node.target in (getattr, operator.getitem):
                continue
            elif node.target not in _KEEP_FUNCTIONS:
                raise _unsupported(node.name, getattr(node.target, "__name__", str(node.target)))
        elif node.op == "call_method" and node.target not in _KEEP_METHODS:
            raise _unsupported(node.name, f"tensor method .{node.target}()")
    unused = _unmatched(policy.overrides, names_seen)
    if unused:
        raise ValueError(f"overrides {unused} match no module; module names: {sorted(names_seen)}")
    # the explicit input quantizer(s): first op of the network
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, ph in enumerate(placeholders):
        name = unique_name(gm, "input_quant" if len(placeholders) == 1 else f"input_quant_{i}")
        gm.add_submodule(name, FpqInput(policy.inputs, scale))
        with gm.graph.inserting_after(ph):
            new = gm.graph.call_module(name, (ph,))
        ph.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    if hadamard is not False:
        if hadamard is not True:
            raise ValueError(f"hadamard must be True or False, got {hadamard!r}")
        from .nn.hadamard import add_hadamard
        add_hadamard(gm, policy, scale)
    gm.graph.lint()
    q = FpqModel(gm, gm.graph, class_name=type(model).__name__ + "Fpq")
    q.meta["fpq_policy"] = policy
    _carry_scales(q, carried)
    if method == "biper":
        from .nn.biper import to_biper
        to_biper(q, omega)
    _set_accumulator_bits(q, accumulator_bits)
    link_input_quantizers(q)
    set_conv_input_axes(q)   # a Conv's block-scaled input: blocks of channels (fpq.nn.block_axes)
    _check_tables(q)
    return q.eval()


def _check_tables(q: FpqModel) -> None:
    """Each table activation knows the quantizer of its input, and that input is narrow enough
    for a table (fpq.numerics.activations.MAX_TABLE_BITS); else refused naming the layer."""
    from .nn.layers import linked_input_quantizer
    from .numerics.activations import check_table_input
    for name, m in q.named_modules():
        if isinstance(m, (FpqSoftmax, FpqLayerNorm)):
            m.fpq_layer_name = name
            if linked_input_quantizer(m) is None:
                raise ValueError(f"fpq.convert: {m.kind} {name!r} does not read the output of a quantized layer "
                                 "(through ReLU / max pool / flatten only), so its input's values are unknown and no "
                                 "exact pipeline exists; put it after a Linear / Conv / add / pool")
            check_table_input(linked_input_quantizer(m).fmt, f"fpq.convert: {m.kind} {name!r}")
            continue
        if not isinstance(m, FpqTable):
            continue
        m.fpq_layer_name = name
        tq = linked_input_quantizer(m)
        if tq is None:
            raise ValueError(f"fpq.convert: activation {name!r} ({m.extra_repr()}) does not read the output of a "
                             "quantized layer (through ReLU / max pool / flatten only), so its input's values are "
                             "unknown and no exact table exists; put it after a Linear / Conv / add / pool")
        n = 1 if m.weight is None else m.weight.numel()
        check_table_input(tq.fmt, f"fpq.convert: activation {name!r} ({m.extra_repr()})", n)


def _set_accumulator_bits(q: FpqModel, accumulator_bits) -> None:
    """fpq_accumulator_bits on each Linear / Conv the option names (an int: all; a dict: by name, ``_by_name``)."""
    if accumulator_bits is None:
        return
    layers = {n: m for n, m in q.named_modules() if isinstance(m, (FpqLinear, FpqConv1d, FpqConv2d))}
    by_name = isinstance(accumulator_bits, dict)
    for bits in (accumulator_bits.values() if by_name else [accumulator_bits]):
        narrow_accumulator(Fixed(64, 32), bits)  # raises a clear error for a bad value
    stray = _unmatched(accumulator_bits, layers) if by_name else []
    if stray:
        raise ValueError(f"accumulator_bits entries {stray} match no Linear/Conv; their names: {sorted(layers)}")
    for name, m in layers.items():
        m.fpq_layer_name = name   # for error messages
        bits = _by_name(accumulator_bits, name, None) if by_name else accumulator_bits
        if bits is not None:
            m.fpq_accumulator_bits = int(bits)


def _carry_scales(q: FpqModel, carried: dict) -> None:
    """Keep the scales of a re-converted model where the quantizer's format and kind are unchanged."""
    for name, role, tq in q.fpq_quantizers():
        old = carried.get((name, role))
        if old is None:
            continue
        fmt, kind, log2 = old
        if fmt == tq.fmt and kind == tq.scale_kind and log2.shape == tq.log2_scale.shape:
            with torch.no_grad():
                tq.log2_scale.copy_(log2)
