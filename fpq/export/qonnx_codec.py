"""fpq's QONNX conventions, read and written in one place: the codec of quantizer nodes.

Reading (``quantizer_of``): a ``Quant`` / ``IntQuant`` / ``FloatQuant`` / ``BipolarQuant`` /
``Trunc`` node (with its ``fpq_format`` attribute where the export wrote one) becomes an
:class:`fpq.ir.Quantizer` with fpq's semantics; a half-step node and the node it feeds are one
quantizer (``TWO_NODE_ROUNDING``). Writing (``write_formats``, run by ``export_qonnx`` as ``transforms.AnnotateFormats``): the
``fpq_format`` attribute, a Fixed's 2^-frac scale, QONNX's rounding_mode / narrow where they
express the format, and the two-node form of RND / RND_MIN_INF. Where QONNX and fpq differ
(qonnx's ``float_quant`` ignores ``has_subnormal``; fixed WRAP), ``Quantizer.qonnx_exact`` is False
and ``Quantizer.note`` says why.
"""
from __future__ import annotations

import numpy as np

from ..formats import QONNX_ROUNDING, ROUNDING_TO_QONNX, Binary, Fixed, Format, Int, Minifloat, parse_format
from ..ir import Quantizer, UnsupportedGraphError
from ..typeplan import TensorType, po2_exponents

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas", "",
                 "fpq.export.custom_op")   # the last: fpq's own ops (FpqTable), fpq.export.custom_op
QUANT_OPS = ("Quant", "IntQuant", "FloatQuant", "BipolarQuant", "Trunc")
FPQ_FORMAT_ATTR = "fpq_format"
# ap_fixed's RND (ties to +inf) and RND_MIN_INF (ties to -inf) have no QONNX rounding_mode; the
# export writes them exactly as two Quant nodes (transforms.AnnotateFormats): a "half-step" node
# (attribute fpq_role="half_step") onto the grid of half an LSB, then the format's own node:
#   RND(x)         = Quant_CEIL (Quant_FLOOR(x, scale=s/2, bits=W+1), scale=s, bits=W)
#   RND_MIN_INF(x) = Quant_FLOOR(Quant_CEIL (x, scale=s/2, bits=W+1), scale=s, bits=W)
# Why this is exact (t = x/s; codes before clipping): with n = floor(2t), ceil(n/2) = floor(t+1/2):
# n = 2k means k <= t < k+1/2, both are k; n = 2k+1 means k+1/2 <= t < k+1, both are k+1 (a tie
# t = k+1/2 goes up: RND). Mirrored, with n = ceil(2t), floor(n/2) = ceil(t-1/2) (ties go down:
# RND_MIN_INF). Clipping: qonnx clamps then rounds, and for integer bounds that equals rounding
# then clamping. g(n) = ceil(n/2) or floor(n/2) is non-decreasing, so g(clip(n, lo1, hi1)) =
# clip(g(n), g(lo1), g(hi1)); the (W+1)-bit range maps onto [-2^(W-1), 2^(W-1)] (ceil) or
# [-2^(W-1), 2^(W-1)-1] (floor), signed, and onto [0, 2^W] or [0, 2^W-1] unsigned: each contains
# the W-bit range, so the second node's clamp alone decides, as SAT does on the rounded code.
# SAT_SYM (signed) is the second node with narrow=1 (clamp to +-(2^(W-1)-1)); unsigned SAT_SYM is
# SAT. The half-step values must be exact in float32 (qonnx casts quantizer outputs to it): W+1 <= 24.
FPQ_ROLE_ATTR = "fpq_role"
HALF_STEP_ROLE = "half_step"
# ap_fixed rounding -> (rounding_mode of the half-step node, of the format's node)
TWO_NODE_ROUNDING = {"RND": ("FLOOR", "CEIL"), "RND_MIN_INF": ("CEIL", "FLOOR")}


def load_model(model):
    """A qonnx ModelWrapper from a path, ModelWrapper or onnx.ModelProto, shapes inferred."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    if isinstance(model, ModelWrapper):
        mw = ModelWrapper(onnx.ModelProto.FromString(model.model.SerializeToString()))
    elif isinstance(model, onnx.ModelProto):
        mw = ModelWrapper(onnx.ModelProto.FromString(model.SerializeToString()))
    else:
        mw = ModelWrapper(str(model))
    _constants_to_initializers(mw)
    # a foreign file: refuse what the reader cannot read, and rewrite channels-last ops, before
    # shape inference (qonnx's takes 30-60 s on channels-last Convs of large feature maps)
    from .foreign import channels_last_to_first, check_foreign
    from .reader import SUPPORTED_OPS
    check_foreign(mw.model, SUPPORTED_OPS)
    channels_last_to_first(mw.model)
    return mw.transform(InferShapes())


def _constants_to_initializers(mw) -> None:
    from onnx import numpy_helper
    for node in list(mw.graph.node):
        if node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            if "value" not in attr:
                raise UnsupportedGraphError(f"Constant node {node.name!r} without a tensor 'value' is not supported")
            mw.set_initializer(node.output[0], numpy_helper.to_array(attr["value"].t))
            mw.graph.node.remove(node)


def _attrs(node) -> dict:
    from onnx import helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# ----------------------------------------------------------------------------- quantizers

def _scalar(mw, name, what, node) -> float:
    v = mw.get_initializer(name)
    if v is None:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: {what} ({name!r}) must be a constant")
    v = np.asarray(v)
    if v.size != 1:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: {what} must be a scalar, got shape {v.shape}")
    return float(v.ravel()[0])


def _flat_scale(scale: np.ndarray, node) -> np.ndarray:
    """Broadcast-layout scale -> () or (C,) for the TensorType."""
    s = np.asarray(scale, dtype=np.float32)
    if s.size == 1:
        return s.reshape(())
    nontrivial = [d for d in s.shape if d != 1]
    if len(nontrivial) != 1:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: scale of shape {s.shape} is neither "
                                    "per-tensor nor per-channel")
    return s.reshape(-1)


def _check_scale(scale, node):
    s = np.asarray(scale, dtype=np.float64)
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: scale must be finite and > 0")


def _minifloat_from_floatquant(node, mw) -> tuple[Minifloat, bool, str]:
    """fpq Minifloat of a QONNX FloatQuant node, plus whether qonnx's executor agrees."""
    a = _attrs(node)
    e = _scalar(mw, node.input[2], "exponent_bitwidth", node)
    m = _scalar(mw, node.input[3], "mantissa_bitwidth", node)
    b = _scalar(mw, node.input[4], "exponent_bias", node)
    max_val = _scalar(mw, node.input[5], "max_val", node)
    for v, what in ((e, "exponent_bitwidth"), (m, "mantissa_bitwidth"), (b, "exponent_bias")):
        if v != int(v):
            raise UnsupportedGraphError(f"FloatQuant node {node.name!r}: {what} {v} is not an integer")
    e, m, b = int(e), int(m), int(b)
    rounding = str(a.get("rounding_mode", "ROUND")).upper()
    if rounding not in ("ROUND", "HALF_EVEN"):
        raise UnsupportedGraphError(f"FloatQuant node {node.name!r}: rounding_mode {rounding} is not supported "
                                    "(fpq minifloats round to nearest, ties to even: ROUND)")
    has_inf, has_nan = bool(a.get("has_inf", 0)), bool(a.get("has_nan", 0))
    sub, sat = bool(a.get("has_subnormal", 1)), bool(a.get("saturation", 1))
    if has_inf:
        cands = ["ieee"]
    elif has_nan:
        cands = ["fn", "fnuz"]
    else:
        cands = ["none"]
    tried = []
    for sp in cands:
        try:
            f = Minifloat(e, m, b, True, sub, sp, sat if sp != "none" else True)
        except ValueError as err:
            tried.append(f"{sp}: {err}")
            continue
        if f.max_value == max_val:
            notes = []
            if not sub:
                notes.append("qonnx's float_quant ignores has_subnormal=0 (it always keeps subnormals)")
            if not sat and sp != "none":
                notes.append("qonnx's float_quant maps out-of-range values differently without saturation")
            return f, not notes, "; ".join(notes)
        tried.append(f"{sp}: max {f.max_value}")
    raise UnsupportedGraphError(
        f"FloatQuant node {node.name!r}: e{e}m{m} bias {b} has_inf={int(has_inf)} has_nan={int(has_nan)} with "
        f"max_val={max_val} matches no fpq minifloat ({'; '.join(tried)}). A max_val below the format's "
        "largest value is not supported; put the range in the scale instead.")


def _int_from_quant(node, mw) -> tuple[Format, bool, str]:
    a = _attrs(node)
    zp = mw.get_initializer(node.input[2])
    if zp is None or np.any(np.asarray(zp) != 0):
        raise UnsupportedGraphError(f"Quant node {node.name!r}: zero-point must be a constant 0 "
                                    f"(got {None if zp is None else np.asarray(zp).ravel()[:4]}); "
                                    "fpq supports symmetric quantizers only")
    bits = _scalar(mw, node.input[3], "bitwidth", node)
    if bits != int(bits) or bits < 1:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: bitwidth {bits} is not a positive integer")
    bits = int(bits)
    signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
    rounding = str(a.get("rounding_mode", "ROUND")).upper()
    if bits == 1 and signed:
        return Binary(), True, ""  # qonnx's int_quant maps signed 1-bit to bipolar
    if rounding not in QONNX_ROUNDING:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: rounding_mode {rounding} has no ap_fixed "
                                    f"equivalent; supported: {', '.join(QONNX_ROUNDING)}")
    if narrow and not signed:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: unsigned narrow range (max 2^b-2) is not supported")
    if QONNX_ROUNDING[rounding] == "RND_CONV":
        return Int(bits, signed, narrow), True, ""
    # integer codes with another rounding: a Fixed with step 1 (the scale stays outside); qonnx
    # clips to the integer range before rounding, the same as after for integer bounds, and its
    # narrow range +-(2^(b-1) - 1) is ap_fixed's SAT_SYM
    return Fixed(bits, bits, signed, QONNX_ROUNDING[rounding], "SAT_SYM" if narrow else "SAT"), True, ""


def quantizer_of(node, mw) -> Quantizer:
    """The fpq Quantizer of a QONNX Quant / FloatQuant / BipolarQuant / Trunc node (a Quant node
    after a half-step node: the Fixed RND / RND_MIN_INF the pair computes)."""
    op = node.op_type
    if is_half_step(node):
        raise UnsupportedGraphError(f"{op} node {node.name!r} is a half-step node ({FPQ_ROLE_ATTR}={HALF_STEP_ROLE}): "
                                    "it is read only together with the Quant node it feeds")
    scale = mw.get_initializer(node.input[1])
    if scale is None:
        raise UnsupportedGraphError(f"{op} node {node.name!r}: the scale ({node.input[1]!r}) must be a constant")
    scale = np.asarray(scale, dtype=np.float32)
    _check_scale(scale, node)
    if op in ("Quant", "IntQuant"):
        half = mw.find_producer(node.input[0])
        half = half if half is not None and is_half_step(half) else None
        declared = _attrs(node).get(FPQ_FORMAT_ATTR)
        declared = parse_format(declared) if declared is not None else None
        if half is not None:
            return _fixed_two_node(node, half, mw, declared)
        if has_two_node_form(declared) and \
                str(_attrs(node).get("rounding_mode", "ROUND")).upper() == TWO_NODE_ROUNDING[declared.rounding][1]:
            raise UnsupportedGraphError(
                f"Quant node {node.name!r}: fpq_format {declared} with rounding_mode "
                f"{TWO_NODE_ROUNDING[declared.rounding][1]} is the second node of a two-node form, but no half-step "
                f"node ({FPQ_ROLE_ATTR}={HALF_STEP_ROLE}) feeds it")
    pre = None
    if op in ("Quant", "IntQuant"):
        fmt, exact, note = _int_from_quant(node, mw)
    elif op == "FloatQuant":
        fmt, exact, note = _minifloat_from_floatquant(node, mw)
    elif op == "BipolarQuant":
        fmt, exact, note = Binary(), True, ""
    elif op == "Trunc":
        fmt, pre, scale, exact, note = _trunc(node, mw, scale)
    else:  # pragma: no cover - guarded by callers
        raise UnsupportedGraphError(f"{op} is not a quantizer")
    a = _attrs(node)
    if FPQ_FORMAT_ATTR in a:
        declared = parse_format(a[FPQ_FORMAT_ATTR])
        if isinstance(declared, Fixed) and op in ("Quant", "IntQuant"):
            return _fixed_over_quant(node, declared, fmt, scale)
        if declared != fmt:
            why = _contradiction(declared, fmt)
            if why:
                raise UnsupportedGraphError(
                    f"{op} node {node.name!r}: fpq_format {declared} contradicts the node's QONNX attributes "
                    f"({fmt}): {why}; refusing an ambiguous file")
            exact = False
            note = (note + "; " if note else "") + (f"fpq_format {declared} refines the QONNX attributes ({fmt}): "
                                                   "qonnx's executor computes the latter")
        fmt = declared
    return Quantizer(TensorType(fmt, _flat_scale(scale, node)), scale, node.name, op, exact, note, pre)


def _fixed_over_quant(node, fixed: Fixed, qfmt: Format, scale: np.ndarray) -> Quantizer:
    """A Fixed written as Quant(bitwidth=W, scale=2^-frac): the IR keeps the Fixed at scale 1."""
    want = np.float32(2.0 ** -fixed.frac_bits)
    if scale.size != 1 or scale.reshape(()) != want or qfmt.width != fixed.width or qfmt.signed != fixed.signed:
        raise UnsupportedGraphError(
            f"Quant node {node.name!r}: fpq_format {fixed} needs bitwidth {fixed.width}, signed={fixed.signed} "
            f"and scale 2^-{fixed.frac_bits}; the node has {qfmt} with scale {scale.ravel()[:2]}")
    a = _attrs(node)
    rounding = QONNX_ROUNDING.get(str(a.get("rounding_mode", "ROUND")).upper())
    narrow = bool(a.get("narrow", 0))
    same = rounding == fixed.rounding and ((fixed.overflow == "SAT" and not narrow) or
                                           (fixed.overflow == "SAT_SYM" and narrow and fixed.signed))
    # A format QONNX can write on one node (AnnotateFormats writes exactly that) must be what the node
    # says; one it cannot write keeps Brevitas' ROUND / narrow=0 (or its own rounding). Anything else
    # flips rounding or range between the node (qonnx) and the attribute (emulator, HLS): refused.
    sym = fixed.overflow == "SAT_SYM" and fixed.signed and fixed.width >= 2
    one_node = fixed.rounding in ROUNDING_TO_QONNX and (fixed.overflow == "SAT" or sym)
    bad = []
    if (one_node and rounding != fixed.rounding) or (not one_node and rounding not in ("RND_CONV", fixed.rounding)):
        bad.append(f"rounding_mode {a.get('rounding_mode', 'ROUND')} is not {fixed.rounding}")
    if (one_node and narrow != sym) or (not one_node and narrow and not sym):
        bad.append(f"narrow={int(narrow)} does not match overflow {fixed.overflow}")
    if bad:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: fpq_format {fixed} contradicts the node's QONNX "
                                    f"attributes ({'; '.join(bad)}); refusing an ambiguous file")
    note = "" if same else (f"{fixed} has no exact QONNX Quant form (rounding {fixed.rounding}, overflow "
                            f"{fixed.overflow}): qonnx's executor computes {qfmt} x 2^-{fixed.frac_bits}")
    one = np.ones_like(scale)
    return Quantizer(TensorType(fixed, _flat_scale(one, node)), one, node.name, node.op_type, same, note)


def has_two_node_form(fmt) -> bool:
    """Whether ``fmt`` is a Fixed the export writes exactly as a half-step node + its Quant node
    (RND / RND_MIN_INF with SAT / SAT_SYM; see TWO_NODE_ROUNDING)."""
    return isinstance(fmt, Fixed) and fmt.rounding in TWO_NODE_ROUNDING and fmt.overflow in ("SAT", "SAT_SYM") \
        and (fmt.width >= 2 or not fmt.signed) and fmt.width + 1 <= 24  # signed 1 bit: qonnx makes it bipolar


def is_half_step(node) -> bool:
    return node.op_type in ("Quant", "IntQuant") and _attrs(node).get(FPQ_ROLE_ATTR) == HALF_STEP_ROLE


def two_node_settings(fixed: Fixed) -> tuple[dict, dict]:
    """(half-step node, format's node) settings of a Fixed with ``has_two_node_form``."""
    first, second = TWO_NODE_ROUNDING[fixed.rounding]
    half = {"bitwidth": fixed.width + 1, "signed": int(fixed.signed), "narrow": 0, "rounding_mode": first,
            "scale": 2.0 ** -(fixed.frac_bits + 1)}
    main = {"bitwidth": fixed.width, "signed": int(fixed.signed),
            "narrow": int(fixed.overflow == "SAT_SYM" and fixed.signed), "rounding_mode": second,
            "scale": 2.0 ** -fixed.frac_bits}
    return half, main


def half_step_partner(half, mw):
    """The Quant node a half-step node feeds (its only consumer); an error naming the node otherwise."""
    consumers = mw.find_consumers(half.output[0])
    if len(consumers) != 1 or half.output[0] in [o.name for o in mw.graph.output] or \
            consumers[0].op_type not in ("Quant", "IntQuant") or consumers[0].input[0] != half.output[0] or \
            is_half_step(consumers[0]):
        raise UnsupportedGraphError(
            f"half-step node {half.name!r} ({FPQ_ROLE_ATTR}={HALF_STEP_ROLE}) must feed exactly one Quant node "
            f"(the second node of a Fixed RND / RND_MIN_INF), got consumers {[c.name for c in consumers]}")
    return consumers[0]


def _quant_settings(node, mw) -> dict:
    a = _attrs(node)
    zp = mw.get_initializer(node.input[2])
    if zp is None or np.any(np.asarray(zp) != 0):
        raise UnsupportedGraphError(f"Quant node {node.name!r}: zero-point must be a constant 0")
    return {"bitwidth": _scalar(mw, node.input[3], "bitwidth", node), "signed": int(a.get("signed", 1)),
            "narrow": int(a.get("narrow", 0)), "rounding_mode": str(a.get("rounding_mode", "ROUND")).upper(),
            "scale": _scalar(mw, node.input[1], "scale", node)}


def _fixed_two_node(node, half, mw, fixed) -> Quantizer:
    """The Fixed RND / RND_MIN_INF that a half-step node + Quant node compute (qonnx-exact): the IR
    holds one quantizer, exactly as for any other Fixed written as one Quant node."""
    if not has_two_node_form(fixed):
        raise UnsupportedGraphError(
            f"half-step node {half.name!r} feeds Quant node {node.name!r} whose fpq_format is {fixed}; a half-step "
            "node belongs before a Fixed with RND or RND_MIN_INF rounding, SAT or SAT_SYM overflow, "
            "at most 23 bits (2 or more when signed)")
    half_step_partner(half, mw)
    for n, want, what in zip((half, node), two_node_settings(fixed), ("half-step node", "second node")):
        got = _quant_settings(n, mw)
        bad = [f"{k}={got[k]} (expected {v})" for k, v in want.items() if got[k] != v]
        if bad:
            raise UnsupportedGraphError(f"half-step node {half.name!r} and Quant node {node.name!r} do not compute "
                                        f"{fixed}: the {what} has {', '.join(bad)}")
    one = np.ones((), dtype=np.float32)
    return Quantizer(TensorType(fixed, _flat_scale(one, node)), one, node.name, node.op_type, True, "")


def _contradiction(declared: Format, qonnx_fmt: Format) -> str:
    """Why an ``fpq_format`` attribute contradicts the format its node's QONNX attributes give
    ("" when it only refines them). Widths, signedness, narrowness, rounding and overflow must
    agree: the emulator and HLS follow the attribute, qonnx's executor the node, so a flip would
    make two "exact" paths compute different functions. A refinement is only what QONNX cannot
    write: an unsigned minifloat (FloatQuant is always signed), one without subnormals (qonnx
    ignores has_subnormal), the fnuz encoding over a node without inf / NaN (QONNX has no fnuz;
    the finite values are the same, only fnuz's NaN code has no number), a Fixed's binary point
    (the scale carries it)."""
    d, q = declared, qonnx_fmt
    if type(d) is not type(q):
        return f"a {d.kind} format over a node computing {q.kind}"
    if isinstance(d, Minifloat):
        diff = [what for what, a, b in (("exponent bits", d.exp_bits, q.exp_bits), ("mantissa bits", d.man_bits, q.man_bits),
                                        ("exponent bias", d.bias, q.bias),
                                        ("inf / NaN encoding", d.specials, "fnuz" if q.specials == "none" and
                                         d.specials == "fnuz" else q.specials),
                                        ("saturation (overflow)", d.saturate, q.saturate)) if a != b]
        if d.subnormals and not q.subnormals:
            diff.append("subnormals (the node has none)")
        if d.signed and not q.signed:  # pragma: no cover - FloatQuant is always signed
            diff.append("signedness")
        return ", ".join(diff) + " differ" if diff else ""
    if isinstance(d, Int):
        diff = [what for what, a, b in (("width", d.bits, q.bits), ("signedness", d.signed, q.signed),
                                        ("narrowness", d.narrow, q.narrow)) if a != b]
        return ", ".join(diff) + " differ" if diff else ""
    if isinstance(d, Fixed):
        diff = [what for what, a, b in (("width", d.width, q.width), ("signedness", d.signed, q.signed),
                                        ("rounding", d.rounding, q.rounding), ("overflow", d.overflow, q.overflow))
                if a != b]
        return ", ".join(diff) + " differ" if diff else ""
    return ""


def _trunc(node, mw, scale):
    a = _attrs(node)
    zp = mw.get_initializer(node.input[2])
    if zp is None or np.any(np.asarray(zp) != 0):
        raise UnsupportedGraphError(f"Trunc node {node.name!r}: zero-point must be a constant 0")
    rounding = str(a.get("rounding_mode", "FLOOR")).upper()
    if rounding not in QONNX_ROUNDING:
        raise UnsupportedGraphError(f"Trunc node {node.name!r}: rounding_mode {rounding} is not supported; "
                                    f"supported: {', '.join(QONNX_ROUNDING)}")
    if len(node.input) >= 6:  # Trunc v2: output_scale, output_bit_width
        out_scale = np.asarray(mw.get_initializer(node.input[4]), dtype=np.float32)
        out_bits = _scalar(mw, node.input[5], "output_bit_width", node)
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        if narrow:
            raise UnsupportedGraphError(f"Trunc node {node.name!r}: narrow range is not supported")
        ratio = out_scale.astype(np.float64) / scale.astype(np.float64)
        if po2_exponents(ratio) is None:
            raise UnsupportedGraphError(f"Trunc node {node.name!r}: output_scale / scale must be a power of two")
    else:  # Trunc v1: drop (input_bw - output_bw) low bits, no clamp (the input width bounds it)
        in_bits = _scalar(mw, node.input[3], "input_bit_width", node)
        out_bits = _scalar(mw, node.input[4], "output_bit_width", node)
        out_scale = (scale.astype(np.float64) * 2.0 ** (in_bits - out_bits)).astype(np.float32)
        signed = True
    fmt = Fixed(int(out_bits), int(out_bits), signed, QONNX_ROUNDING[rounding], "SAT")
    return fmt, scale, out_scale, True, ""


# ----------------------------------------------------------------------------- writer

def set_attr(node, name, value):
    from onnx import helper
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def write_formats(model, formats: dict) -> None:
    """The writer (``transforms.AnnotateFormats`` runs it): for each quantizer node named in
    ``formats`` ({node name: Format}), the fpq_format attribute; a Fixed gets its 2^-frac scale and
    QONNX's rounding_mode / narrow, or the two-node form of RND / RND_MIN_INF."""
    for node in list(model.graph.node):
        fmt = formats.get(node.name)
        if fmt is None:
            continue
        fmt = parse_format(fmt)
        set_attr(node, FPQ_FORMAT_ATTR, str(fmt))
        if isinstance(fmt, Fixed) and node.op_type in ("Quant", "IntQuant"):
            scale = model.get_initializer(node.input[1])
            step = np.float32(2.0 ** -fmt.frac_bits)
            if scale is None or not (np.all(np.asarray(scale) == step) or np.all(np.asarray(scale) == 1)):
                raise ValueError(f"quantizer {node.name!r} of {fmt}: expected scale 1 or {step}, got {scale}")
            if not np.all(np.asarray(scale) == step):
                name = model.make_new_valueinfo_name()
                model.set_initializer(name, np.asarray(2.0 ** -fmt.frac_bits, dtype=np.float32))
                node.input[1] = name
            if has_two_node_form(fmt):
                _write_two_node(model, node, fmt)
            else:
                _write_one_node(node, fmt)


def _write_one_node(node, fmt: Fixed) -> None:
    """Set the node's rounding_mode and narrow to the format's where QONNX has them (Brevitas
    writes ROUND on every weight node, and narrow only for narrow Ints), so that qonnx's executor
    computes the format itself; other formats keep what Brevitas wrote (the reader notes them)."""
    sym = fmt.overflow == "SAT_SYM" and fmt.signed and fmt.width >= 2
    if fmt.rounding in ROUNDING_TO_QONNX and (fmt.overflow == "SAT" or sym):
        set_attr(node, "rounding_mode", ROUNDING_TO_QONNX[fmt.rounding])
        set_attr(node, "narrow", int(sym))


def _write_two_node(model, node, fmt: Fixed) -> None:
    """Insert the half-step Quant node before ``node`` and set both nodes as
    ``graph.two_node_settings`` says (Quant_CEIL(Quant_FLOOR(x, s/2, W+1), s, W) for RND)."""
    from onnx import helper

    g = model.graph
    producer = model.find_producer(node.input[0])
    if producer is not None and is_half_step(producer):
        return  # already written (the transformation ran before)
    half_set, main_set = two_node_settings(fmt)
    for k in ("signed", "narrow", "rounding_mode"):
        set_attr(node, k, main_set[k])
    bits = model.get_initializer(node.input[3])
    if bits is None or float(np.asarray(bits)) != main_set["bitwidth"]:
        raise ValueError(f"quantizer {node.name!r} of {fmt}: expected bitwidth {main_set['bitwidth']}, got {bits}")
    base = f"{node.name}_half_step"
    inits = {}
    for what, value in (("scale", half_set["scale"]), ("zeropt", 0.0), ("bitwidth", half_set["bitwidth"])):
        inits[what] = f"{base}_{what}"  # node names are unique: so are these (and the file is reproducible)
        model.set_initializer(inits[what], np.asarray(value, dtype=np.float32))
    out = f"{base}_out"
    half = helper.make_node(node.op_type, [node.input[0], inits["scale"], inits["zeropt"], inits["bitwidth"]],
                            [out], name=base, domain=node.domain, signed=half_set["signed"],
                            narrow=half_set["narrow"], rounding_mode=half_set["rounding_mode"])
    half.attribute.append(helper.make_attribute(FPQ_ROLE_ATTR, HALF_STEP_ROLE))
    node.input[0] = out
    g.node.insert(list(g.node).index(node), half)
