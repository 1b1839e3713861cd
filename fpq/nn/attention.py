"""Attention for fpq.convert: the product of two quantized activations (``FpqMatMul``), the
attention scale folded exactly, and ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoder`` /
``nn.TransformerEncoderLayer``) rewritten into the hand-written
form (Q/K/V Linear, ``q @ k.transpose(-2, -1)``, scale, softmax, ``@ v``, output Linear);
``F.scaled_dot_product_attention`` with an explicit ``scale=`` is decomposed into that form.

``FpqMatMul``: y = Q_out(alpha * (a @ b)) for two tensors that each leave an fpq quantizer (through
reshapes / transposes / ReLU only, checked at convert time). In eval mode the product is exact:
one float64 matmul when the sum fits 53 bits, else summed in pieces and rounded to odd
(``fpq.numerics.wide``), which the output quantizer rounds as it would the exact sum. ``alpha`` is
a power of two (exact in float64); it exports as a standard ONNX MatMul (and a Mul by alpha),
which the reader reads as one ``matmul`` op whose exact accumulator the TypePlan derives like a
Linear's (``fpq.typeplan.LayerPlan.derive``).

Why written here: Brevitas' QuantMultiheadAttention / QuantScaledDotProductAttention configure their
quantizers through Brevitas' own injectors, not from fpq Formats, and fpq's reader would need handlers
for what they export; the product itself is one float64 matmul, so a small module whose quantizers are
fpq's (FpqAct) keeps one quantizer family and one export path. (Not checked: whether Brevitas' layers
would export exactly; fpq does not use them.)
"""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..numerics.wide import exact_bilinear
from .layers import FpqAct, _value

MATMUL_FUNCTIONS = (torch.matmul, operator.matmul, torch.bmm)
MATMUL_METHODS = ("matmul", "bmm", "__matmul__")
_SCALE_FUNCTIONS = (operator.mul, torch.mul, operator.truediv, torch.div)
# fx nodes that only move values (a subset of the input's, unchanged): an operand may pass them
MOVING_METHODS = ("view", "reshape", "transpose", "permute", "contiguous", "flatten")
MOVING_FUNCTIONS = (torch.transpose, torch.permute, torch.reshape, torch.flatten)
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class FpqMatMul(nn.Module):
    """y = Q_out(alpha * (a @ b)) of two quantized activations (module docstring)."""

    fpq_op = "matmul"

    def __init__(self, fmt, scale_kind="po2", alpha: float = 1.0):
        super().__init__()
        self.quant = FpqAct(fmt, scale_kind)
        self.alpha = float(alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"

    @property
    def fpq_output(self):
        return self.quant.fpq_output

    def forward(self, a, b):
        a, b = _value(a), _value(b)
        if self.training:
            y = torch.matmul(a, b)
            return self.quant(y * self.alpha if self.alpha != 1.0 else y)
        a, b = a.to(torch.float64), b.to(torch.float64)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            y = torch.matmul(a, b)   # the exported graph holds a plain MatMul
        else:
            # not strict: fpq.calibrate runs unquantized float data through here
            y = exact_bilinear(torch.matmul, a, b, None, fan_in=a.shape[-1])[0]
        return self.quant(y * self.alpha if self.alpha != 1.0 else y)


class PositionalEmbedding(nn.Module):
    """A learned positional embedding ``x + weight`` (weight (1, T, d) or (T, d)), as found in the traced
    graph (``token_means``); fpq.convert makes it an ``FpqPositional``."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x):
        return x + self.weight


class FpqPositional(nn.Module):
    """y = Q_out(x + Q_w(weight)): a learned positional embedding quantized with the weights format (one
    po2 scale from max |weight|, refreshed by fpq.calibrate) and added exactly (float64 in eval). Exports
    as Quant(weight) -> Add -> Quant, which the reader reads as an ``add_const`` of a quantized constant
    whose types (input, other, output) are exact."""

    fpq_op = "add_const"

    def __init__(self, weight, weights_fmt, fmt, scale_kind="po2"):
        super().__init__()
        from .calibration_stats import choose_scale
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).detach().clone())
        self.weight_quant, self.quant = FpqAct(weights_fmt, scale_kind), FpqAct(fmt, scale_kind)
        tq = self.weight_quant.fpq_output
        if tq is not None and tq.scale_kind != "none":
            with torch.no_grad():
                tq.set_scale(choose_scale(tq, self.weight.detach().abs().reshape(-1), "max"))

    @property
    def fpq_output(self):
        return self.quant.fpq_output

    def forward(self, x):
        x, p = _value(x), _value(self.weight_quant(self.weight))
        return self.quant(x + p if self.training else x.to(torch.float64) + p.to(torch.float64))


def po2_exponent(c) -> int | None:
    """e with c == 2**e exactly (c a positive float), else None."""
    c = float(c)
    if not c > 0 or math.isinf(c):
        return None
    m, e = math.frexp(c)
    return e - 1 if m == 0.5 else None


# ----------------------------------------------------------------- nn.MultiheadAttention rewrite

class HandMultiheadAttention(nn.Module):
    """The hand-written form of an ``nn.MultiheadAttention`` (batch_first, no mask, no bias_kv,
    dropout ignored in eval), with its in_proj split into q_proj / k_proj / v_proj Linears. Its
    forward takes MHA's arguments and refuses masks naming the module."""

    def __init__(self, mha: nn.MultiheadAttention, path: str):
        super().__init__()
        self.path = path
        d, h = mha.embed_dim, mha.num_heads
        if not mha.batch_first:
            raise ValueError(f"fpq.convert: nn.MultiheadAttention {path!r} has batch_first=False; fpq keeps dimension 0 "
                             "the batch: build it with batch_first=True")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(f"fpq.convert: nn.MultiheadAttention {path!r} with add_bias_kv / add_zero_attn is not "
                             "supported (only the plain Q/K/V projections)")
        if not mha._qkv_same_embed_dim:
            raise ValueError(f"fpq.convert: nn.MultiheadAttention {path!r} with kdim / vdim other than embed_dim is "
                             "not supported")
        self.num_heads, self.head_dim = h, d // h
        has_bias = mha.in_proj_bias is not None
        w = mha.in_proj_weight.detach()
        b = mha.in_proj_bias.detach() if has_bias else None
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            lin = nn.Linear(d, d, bias=has_bias)
            with torch.no_grad():
                lin.weight.copy_(w[i * d:(i + 1) * d])
                if has_bias:
                    lin.bias.copy_(b[i * d:(i + 1) * d])
            setattr(self, name, lin)
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.softmax = nn.Softmax(-1)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        for what, v in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if v is not None:
                raise ValueError(f"fpq.convert: nn.MultiheadAttention {self.path!r} is called with {what}; attention "
                                 "masks are not supported (fpq converts unmasked self- or cross-attention)")
        if is_causal:
            raise ValueError(f"fpq.convert: nn.MultiheadAttention {self.path!r} is called with is_causal=True; causal "
                             "(decoder) masks are not supported")
        h, dh = self.num_heads, self.head_dim

        def heads(x, t):   # (B, T, d) -> (B, h, T, dh)
            return x.reshape(x.size(0), t, h, dh).transpose(1, 2)

        tq, tk = query.shape[1], key.shape[1]
        q, k, v = heads(self.q_proj(query), tq), heads(self.k_proj(key), tk), heads(self.v_proj(value), tk)
        a = self.softmax((q @ k.transpose(-2, -1)) * self.scale)
        o = (a @ v).transpose(1, 2).reshape(query.size(0), tq, h * dh)
        return self.out_proj(o), None


class HandEncoderLayer(nn.Module):
    """The hand-written form of an ``nn.TransformerEncoderLayer`` (batch_first, ReLU or GELU, pre- or
    post-LayerNorm, dropout removed in eval): its modules are the layer's own, its attention a
    HandMultiheadAttention. Masks are refused naming the module."""

    def __init__(self, layer: nn.TransformerEncoderLayer, path: str):
        super().__init__()
        self.path, self.norm_first = path, layer.norm_first
        self.self_attn = HandMultiheadAttention(layer.self_attn, path + ".self_attn")
        self.linear1, self.linear2, self.norm1, self.norm2 = layer.linear1, layer.linear2, layer.norm1, layer.norm2
        act = layer.activation
        if isinstance(act, nn.Module):
            self.activation = act
        elif act in (F.relu, F.gelu):
            self.activation = nn.ReLU() if act is F.relu else nn.GELU()
        else:
            raise ValueError(f"fpq.convert: nn.TransformerEncoderLayer {path!r} has the activation {act!r}; fpq "
                             "rewrites ReLU / GELU (functions) or an nn.Module activation")

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        if src_mask is not None or src_key_padding_mask is not None or is_causal:
            raise ValueError(f"fpq.convert: nn.TransformerEncoderLayer {self.path!r} is called with a mask "
                             "(src_mask / src_key_padding_mask / is_causal); attention masks are not supported")

        def sa(x):
            return self.self_attn(x, x, x)[0]

        def ff(x):
            return self.linear2(self.activation(self.linear1(x)))
        x = src
        if self.norm_first:
            x = x + sa(self.norm1(x))
            return x + ff(self.norm2(x))
        x = self.norm1(x + sa(x))
        return self.norm2(x + ff(x))


class HandEncoder(nn.Module):
    """An ``nn.TransformerEncoder``'s layers (each a HandEncoderLayer) and its final norm, masks refused."""

    def __init__(self, enc: nn.TransformerEncoder, path: str):
        super().__init__()
        self.path = path
        self.layers = nn.Sequential(*(HandEncoderLayer(m, f"{path}.layers.{i}") for i, m in enumerate(enc.layers)))
        self.norm = enc.norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        if mask is not None or src_key_padding_mask is not None or is_causal:
            raise ValueError(f"fpq.convert: nn.TransformerEncoder {self.path!r} is called with a mask (mask / "
                             "src_key_padding_mask / is_causal); attention masks are not supported")
        x = self.layers(src)
        return x if self.norm is None else self.norm(x)


_REWRITES = ((nn.TransformerEncoder, HandEncoder), (nn.TransformerEncoderLayer, HandEncoderLayer),
             (nn.MultiheadAttention, HandMultiheadAttention))


def rewrite_multihead_attention(model: nn.Module) -> None:
    """Replace (in place, on fpq.convert's copy) every nn.TransformerEncoder, nn.TransformerEncoderLayer and
    nn.MultiheadAttention by its hand-written form (outermost first; their modules are kept)."""
    done = []
    for path, m in list(model.named_modules()):
        if any(path.startswith(p + ".") for p in done):
            continue   # inside a module already rewritten
        for cls, hand in _REWRITES:
            if type(m) is cls:
                parent, _, name = path.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, name, hand(m, path))
                done.append(path)


# ----------------------------------------------------------------- the graph rewrite (fpq.convert)

def _const_scalar(a):
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _scale_of(node: fx.Node, mm: fx.Node):
    """The constant c of ``mm * c`` / ``c * mm`` / ``mm / c`` (as a multiplier), else None."""
    if node.op != "call_function" or node.target not in _SCALE_FUNCTIONS or node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    if node.target in (operator.truediv, torch.div):
        return 1.0 / float(b) if a is mm and _const_scalar(b) and b != 0 else None
    if a is mm and _const_scalar(b):
        return float(b)
    if b is mm and _const_scalar(a):
        return float(a)
    return None


def _is_meta(n: fx.Node) -> bool:
    """A node reading a tensor's shape (x.size(0), x.shape), not its values."""
    return (n.op == "call_method" and n.target == "size") or (n.op == "call_function" and n.target is getattr)


def _is_moving(n: fx.Node) -> bool:
    return (n.op == "call_method" and n.target in MOVING_METHODS) or \
        (n.op == "call_function" and n.target in MOVING_FUNCTIONS)


def _source(node: fx.Node, modules) -> tuple:
    """(the module node whose fpq quantizer / Linear produced ``node``, the moving nodes between), or
    (None, chain) when ``node`` leaves anything else."""
    chain = []
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            return node, chain
        if not _is_moving(node):
            return None, chain
        chain.append(node)
        node = node.args[0]
    return None, chain


def _fold_into_linear(gm, mm: fx.Node, c: float, modules, where: str) -> None:
    """A scale c that is not a power of two: fold it into the (float) Linear producing the matmul's
    first operand, before quantization (the float model is unchanged up to one float32 rounding of
    each weight and bias; the quantized model is exact as converted). Refused where the operand
    does not leave a Linear that only it reads."""
    src, chain = _source(mm.args[0], modules)
    lin = modules.get(src.target) if src is not None else None
    single = src is not None and all(len([u for u in n.users if not _is_meta(u)]) == 1 for n in [src] + chain)
    if not isinstance(lin, nn.Linear) or not single:
        raise ValueError(f"fpq.convert: the attention scale {c!r} at {where!r} is not a power of two, so scaling the "
                         "quantized scores would round; fpq folds it into the Linear that produces the matmul's first "
                         "operand (q), but that operand does not come from a Linear used only there. Use a "
                         "power-of-two scale (e.g. 2**-round(log2(sqrt(d_head)))) or compute q with its own Linear")
    with torch.no_grad():
        lin.weight.mul_(c)
        if lin.bias is not None:
            lin.bias.mul_(c)


def _decompose_sdpa(gm: fx.GraphModule, node: fx.Node, unique_name) -> None:
    """F.scaled_dot_product_attention(q, k, v, scale=c) -> softmax(q @ k.transpose(-2, -1) * c) @ v, the
    nodes the matmul pass below then converts. Masks, causal attention, dropout and grouped-query heads
    are refused; so is the default scale, 1/sqrt(q.size(-1)), which the traced graph does not know."""
    a = dict(zip(_SDPA_ARGS, node.args), **node.kwargs)
    why = ("attn_mask" if a.get("attn_mask") is not None else "is_causal=True" if a.get("is_causal") else
           "dropout_p > 0" if a.get("dropout_p", 0.0) else "enable_gqa=True" if a.get("enable_gqa") else
           "no scale= (the head dim is unknown when tracing)" if a.get("scale") is None else
           "a scale that is not a number" if not _const_scalar(a["scale"]) else None)
    if why is not None:
        raise ValueError(f"fpq.convert: node {node.name!r} (F.scaled_dot_product_attention) with {why} is not "
                         "supported; fpq decomposes unmasked attention without dropout given an explicit number "
                         "scale= (e.g. scale=head_dim ** -0.5), or write it out: softmax(q @ k.transpose(-2, -1) * "
                         "scale) @ v")
    name = unique_name(gm, node.name + "_softmax")
    gm.add_submodule(name, nn.Softmax(-1))
    with gm.graph.inserting_before(node):
        kt = gm.graph.call_method("transpose", (a["key"], -2, -1))
        s = gm.graph.call_function(operator.mul, (gm.graph.call_function(operator.matmul, (a["query"], kt)),
                                                  float(a["scale"])))
        out = gm.graph.call_function(operator.matmul, (gm.graph.call_module(name, (s,)), a["value"]))
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)


def attention_to_modules(gm: fx.GraphModule, fmt_of, scale_kind: str, unique_name, names_seen: set,
                         formats_of=None, inputs: str | None = None) -> None:
    """Rewrite every product of two activations (torch.matmul / @ / torch.bmm / x.matmul) into an
    ``FpqMatMul`` (format: ``fmt_of(node name)``, the activations format there), folding a constant
    scale that follows it (power of two: alpha; else into q's Linear, ``_fold_into_linear``).
    F.scaled_dot_product_attention(q, k, v, scale=c) is decomposed first (``_decompose_sdpa``) and each
    PositionalEmbedding becomes an FpqPositional (``formats_of(name)``: its formats). Refuses a
    matmul whose operand is a constant or does not leave a quantized layer, naming the node."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            _decompose_sdpa(gm, node, unique_name)
        elif node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Embedding:
            from .embedding import FpqEmbedding, check_ids_format
            emb = gm.get_submodule(node.target)
            if node.args[0].op != "placeholder":
                raise ValueError(f"fpq.convert: nn.Embedding {node.target!r} must read the network input (the token "
                                 "ids) directly")
            bits = check_ids_format(inputs, emb.num_embeddings, repr(node.target))
            gm.add_submodule(node.target, FpqEmbedding(emb, bits, formats_of(node.target)["weights"], scale_kind))
            names_seen.add(node.target)
        elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), PositionalEmbedding):
            f = formats_of(node.target)   # weights and activations of that name
            pe = gm.get_submodule(node.target)
            gm.add_submodule(node.target, FpqPositional(pe.weight, f["weights"], f["activations"], scale_kind))
            names_seen.add(node.target)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_mm = (node.op == "call_function" and node.target in MATMUL_FUNCTIONS) or \
            (node.op == "call_method" and node.target in MATMUL_METHODS)
        if not is_mm:
            continue
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            raise ValueError(f"fpq.convert: matmul {node.name!r} must multiply two tensors (no out= or constant "
                             "operand; a constant matrix is an nn.Linear)")
        for i, a in enumerate(node.args):
            src, _ = _source(a, modules)
            if src is None:
                raise ValueError(f"fpq.convert: operand {i} of matmul {node.name!r} ({a.name}) does not come from a "
                                 "layer fpq quantizes (a Linear, softmax, activation, add) through reshapes / "
                                 "transposes only, so its values are unknown; fpq supports the product of two "
                                 "quantized activations")
        alpha, out = 1.0, node
        if len(node.users) == 1:
            user = next(iter(node.users))
            c = _scale_of(user, node)
            if c is not None:
                if po2_exponent(abs(c)) is not None and c > 0:
                    alpha = c
                else:
                    _fold_into_linear(gm, node, c, modules, user.name)
                out = user
        fmt = fmt_of(node.name)
        name = unique_name(gm, node.name)
        gm.add_submodule(name, FpqMatMul(fmt, scale_kind, alpha))
        with gm.graph.inserting_after(out):
            new = gm.graph.call_module(name, tuple(node.args))
        out.replace_all_uses_with(new)
        if out is not node:
            gm.graph.erase_node(out)
        gm.graph.erase_node(node)
        names_seen.add(node.name)
    gm.recompile()


def token_means(gm: fx.GraphModule) -> None:
    """Rewrite ``x.mean(1)`` / ``torch.mean(x, 1)`` / ``x.mean(dim=1, keepdim=...)`` of a tensor that is not a
    Conv / pool feature map (a (B, T, d) token tensor) into ``x.transpose(1, 2)`` -> ``nn.AdaptiveAvgPool1d(1)``
    -> ``torch.flatten(., 1)`` (or a transpose back, keepdim=True): the mean over the tokens becomes fpq's exact
    average pool with its quantizer, and exports as a Transpose and a global average the reader already reads.
    Other means are left to fpq.functional (which takes the spatial means of feature maps). Also
    ``x + self.pos`` (a learned positional embedding) -> ``PositionalEmbedding`` (``_positional``)."""
    from ..functional import _spatial_axes, unique_name
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2 \
                and not node.kwargs:
            _positional(gm, node, unique_name)
            continue
        if not ((node.op == "call_method" and node.target == "mean") or
                (node.op == "call_function" and node.target is torch.mean)):
            continue
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if dim not in (1, (1,), [1]) or node.kwargs.get("dtype") is not None or not isinstance(keep, bool) \
                or _spatial_axes(node.args[0], modules) is not None:
            continue
        name = unique_name(gm, node.name)
        gm.add_submodule(name, nn.AdaptiveAvgPool1d(1))
        with gm.graph.inserting_before(node):
            t = gm.graph.call_method("transpose", (node.args[0], 1, 2))
            pooled = gm.graph.call_module(name, (t,))
            out = gm.graph.call_method("transpose", (pooled, 1, 2)) if keep else \
                gm.graph.call_function(torch.flatten, (pooled, 1))
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
    gm.recompile()


def _positional(gm: fx.GraphModule, node: fx.Node, unique_name) -> None:
    """``x + self.pos`` (a parameter of shape (1, T, d) or (T, d) read only there) -> PositionalEmbedding."""
    params = [a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
    others = [a for a in node.args if isinstance(a, fx.Node) and a.op != "get_attr"]
    if len(params) != 1 or len(others) != 1 or len(params[0].users) != 1:
        return
    w = gm.get_parameter(params[0].target) if params[0].target in dict(gm.named_parameters()) else None
    if w is None or w.dim() not in (2, 3) or (w.dim() == 3 and w.shape[0] != 1):
        return
    owner, _, attr = params[0].target.rpartition(".")
    delattr(gm.get_submodule(owner) if owner else gm, attr)   # it moves into the PositionalEmbedding
    holder = gm.get_submodule(owner) if owner else None
    if holder is not None and not list(holder.children()) and not list(holder.parameters()) and \
            not list(holder.buffers()):   # a module that held only it (a traced-through PositionalEmbedding)
        parent, _, leaf = owner.rpartition(".")
        delattr(gm.get_submodule(parent) if parent else gm, leaf)
        name = owner
    else:
        name = unique_name(gm, params[0].target.replace(".", "_"))
    gm.add_submodule(name, PositionalEmbedding(w))
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (others[0],))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    gm.graph.erase_node(params[0])
