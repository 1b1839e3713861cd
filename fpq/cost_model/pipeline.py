"""The one pipeline-register rule of ``fpq.to_rtl``'s circuit, read by the writer and the cost model.

``fpq.to_rtl(..., pipeline_every=N)`` writes every constant-coefficient dot product (a Linear
output, a Conv output element) as a balanced adder tree of ``tree_depth(fan_in + bias)`` levels;
``fpq.estimate_cost(..., pipeline_every=N)`` prices the same registers. Both take from here:

* which terms enter a tree (the nonzero constant products of the in-map taps, then a nonzero
  bias) and how wide each is (``product_width``: the input code times the constant, exact,
  capped at the accumulator);
* how wide each adder is (``sum_width``: one bit more than its wider operand, capped);
* which levels are registered (``registered``: every ``N`` levels and the tree's root, none when
  ``N == 0``) and so the register bits (``adder_tree``) and the cycles (``cycles``: a layer takes
  ``ceil(depth / N)``, the network the sum along its path).

Quantizers, ReLU and wiring are combinational in that circuit: no register, no cycle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..formats import Fixed

# the ops fpq.to_rtl builds (fpq.rtl.network reads this tuple)
RTL_KINDS = ("input_quant", "linear", "conv1d", "conv2d", "quant", "relu", "flatten", "reshape", "output")
MAC_RTL_KINDS = ("linear", "conv1d", "conv2d")


def check_every(pipeline_every) -> int:
    """Validate a ``pipeline_every``.

    Args:
        pipeline_every (int): adder levels between pipeline registers; 0: none.

    Returns:
        int: the value.

    Raises:
        ValueError: not an integer >= 0 (a bool is refused).

    Example:
        >>> check_every(2)
        2
    """
    if isinstance(pipeline_every, bool) or not isinstance(pipeline_every, (int, np.integer)) or pipeline_every < 0:
        raise ValueError(f"pipeline_every must be an integer >= 0 (0: no registers), got {pipeline_every!r}")
    return int(pipeline_every)


def tree_depth(n_terms: int) -> int:
    """Adder levels of a balanced tree over ``n_terms`` terms (zero terms still count: the depth is
    the layer's, the same for every output).

    Args:
        n_terms (int): fan-in, plus one with a bias.

    Returns:
        int: ceil(log2(n_terms)), 0 for one term or none.

    Example:
        >>> tree_depth(5), tree_depth(1)
        (3, 0)
    """
    return math.ceil(math.log2(n_terms)) if n_terms > 1 else 0


def registered(level: int, depth: int, every: int) -> bool:
    """Whether adder level ``level`` (1 .. depth) of a tree is followed by registers.

    Args:
        level (int): the level, 1 at the leaves' sums.
        depth (int): the tree's levels.
        every (int): ``pipeline_every``.

    Returns:
        bool: every ``every`` levels and at the root; never when ``every == 0``.

    Example:
        >>> [registered(lev, 5, 2) for lev in range(1, 6)]
        [False, True, False, True, True]
    """
    return every > 0 and (level % every == 0 or level == depth)


def cycles(depth: int, every: int) -> int:
    """Clock cycles through one adder tree.

    Args:
        depth (int): its levels.
        every (int): ``pipeline_every``.

    Returns:
        int: ceil(depth / every); 0 when combinational or without adders.

    Example:
        >>> cycles(5, 2), cycles(5, 0), cycles(0, 1)
        (3, 0, 0)
    """
    return 0 if every == 0 or depth == 0 else math.ceil(depth / every)


def bits_signed(k: int) -> int:
    """Bits of an integer as a signed two's complement number.

    Args:
        k (int): the integer.

    Returns:
        int: its width.

    Example:
        >>> bits_signed(3), bits_signed(-4), bits_signed(0)
        (3, 3, 1)
    """
    return (k if k >= 0 else ~k).bit_length() + 1


def product_width(x_width: int, k: int, cap: int) -> int:
    """Width of the product of an input code and a constant.

    Args:
        x_width (int): the input code's width as a signed number (one more for an unsigned code).
        k (int): the constant (the weight in the accumulator's units over the input's).
        cap (int): the accumulator's width.

    Returns:
        int: ``min(cap, x_width + bits_signed(k))``.

    Example:
        >>> product_width(5, 3, 12)
        8
    """
    return min(cap, x_width + bits_signed(k))


def sum_width(widths, cap: int) -> int:
    """Width of one adder-tree node.

    Args:
        widths (list[int]): its one or two operands' widths.
        cap (int): the accumulator's width (a narrow accumulator wraps).

    Returns:
        int: a lone operand passes through; a sum is one bit wider than its wider operand, capped.

    Example:
        >>> sum_width([8, 6], 12), sum_width([8], 12), sum_width([12, 12], 12)
        (9, 8, 12)
    """
    return min(cap, max(widths) + 1) if len(widths) == 2 else widths[0]


@dataclass
class TreeLevel:
    """One level of an adder tree: its node widths and whether registers follow it.

    Args:
        level (int): 1 .. depth.
        widths (list[int]): node k adds the previous level's nodes 2k and 2k + 1 (a lone last one
            passes through).
        registered (bool): whether each node is a register.

    Example:
        >>> adder_tree([4, 4, 3], 2, 1, 16)[1]
        TreeLevel(level=2, widths=[6], registered=True)
    """

    level: int
    widths: list
    registered: bool


def adder_tree(leaf_widths, depth: int, every: int, cap: int) -> list[TreeLevel]:
    """The levels of a balanced adder tree of exactly ``depth`` levels over ``leaf_widths``.

    Args:
        leaf_widths (list[int]): the terms' widths, in order (at most 2 ** depth).
        depth (int): the layer's ``tree_depth``.
        every (int): ``pipeline_every``.
        cap (int): the accumulator's width.

    Returns:
        list[TreeLevel]: one per level; the last has one node, the root.

    Raises:
        ValueError: more terms than the depth holds.

    Example:
        >>> [(t.widths, t.registered) for t in adder_tree([4, 4, 3], 2, 1, 16)]
        [([5, 3], True), ([6], True)]
    """
    widths = [int(w) for w in leaf_widths]
    if len(widths) > 2 ** depth:
        raise ValueError(f"{len(widths)} terms do not fit a tree of {depth} levels")
    out = []
    for lev in range(1, depth + 1):
        widths = [sum_width(widths[k:k + 2], cap) for k in range(0, len(widths), 2)]
        out.append(TreeLevel(lev, widths, registered(lev, depth, every)))
    return out


def register_bits(levels: list[TreeLevel]) -> int:
    """Flip-flops of a tree: the widths of its registered nodes.

    Args:
        levels (list[TreeLevel]): from ``adder_tree``.

    Returns:
        int: the register bits.

    Example:
        >>> register_bits(adder_tree([4, 4, 3], 2, 1, 16))
        14
    """
    return sum(sum(t.widths) for t in levels if t.registered)


def linear_taps(n_out: int, n_in: int) -> tuple[list, list]:
    """The taps of a Linear layer's outputs.

    Args:
        n_out (int): outputs.
        n_in (int): inputs.

    Returns:
        tuple[list, list]: (taps, channels): output j reads [(input i, weight index (j, i))], its
        bias is channel j.

    Example:
        >>> linear_taps(2, 2)[0]
        [[(0, (0, 0)), (1, (0, 1))], [(0, (1, 0)), (1, (1, 1))]]
    """
    return [[(i, (j, i)) for i in range(n_in)] for j in range(n_out)], list(range(n_out))


def conv_taps(in_shape, out_shape, weight_shape, attrs: dict) -> tuple[list, list, int, int]:
    """The taps of an N-d convolution unrolled over its output map: every output element (channel,
    position) reads the window's inputs that lie inside the map (padding zeros are omitted).

    Args:
        in_shape (tuple): (N, C, *spatial) of the input.
        out_shape (tuple): (N, O, *spatial) of the output.
        weight_shape (tuple): (O, C / groups, *kernel).
        attrs (dict): ``groups``, ``kernel``, ``strides``, ``dilations``, ``pads`` (ONNX's).

    Returns:
        tuple[list, list, int, int]: (taps, channels, fan_in, pixels): output element j reads
        [(flat input index, weight index)] and the bias of channel ``channels[j]``.

    Example:
        >>> taps, ch, fan_in, px = conv_taps((1, 1, 3), (1, 1, 3), (1, 1, 3), dict(pads=(1, 1)))
        >>> [len(t) for t in taps], fan_in, px
        ([2, 3, 2], 3, 3)
    """
    C, sp = int(in_shape[1]), [int(d) for d in in_shape[2:]]
    O, osp = int(out_shape[1]), [int(d) for d in out_shape[2:]]
    g = int(attrs.get("groups", 1) or 1)
    nd = len(sp)
    kern = [int(k) for k in attrs.get("kernel", weight_shape[2:])]
    st = [int(v) for v in attrs.get("strides", (1,) * nd)]
    dil = [int(v) for v in attrs.get("dilations", (1,) * nd)]
    pads = [int(v) for v in attrs.get("pads", (0,) * (2 * nd))]
    cg, og = C // g, O // g
    taps, chans = [], []
    for o in range(O):
        for pos in np.ndindex(*osp):
            tj = []
            for c in range(cg):
                ci = (o // og) * cg + c
                for kk in np.ndindex(*kern):
                    at = [pos[d] * st[d] - pads[d] + kk[d] * dil[d] for d in range(nd)]
                    if all(0 <= at[d] < sp[d] for d in range(nd)):
                        tj.append((ci * int(np.prod(sp)) + int(np.ravel_multi_index(at, sp)), (o, c) + kk))
            taps.append(tj)
            chans.append(o)
    return taps, chans, cg * int(np.prod(kern)), int(np.prod(osp))


@dataclass
class MacRegisters:
    """The pipeline registers of one unrolled MAC layer of ``fpq.to_rtl``'s circuit.

    Args:
        adder_levels (int): levels of each output's tree.
        cycles (int): clock cycles through the layer.
        register_bits (int): flip-flops of all its trees.
        registers (int): registered nodes (each a signed register of its width).

    Example:
        >>> MacRegisters(2, 2, 14, 3).register_bits
        14
    """

    adder_levels: int
    cycles: int
    register_bits: int
    registers: int


def mac_registers(lp, x: Fixed, every: int) -> MacRegisters:
    """The registers ``fpq.to_rtl`` writes for one Linear / Conv layer of a TypePlan.

    Args:
        lp (LayerPlan): the layer (weights, bias, shapes and attributes as the plan holds them).
        x (Fixed): the carrier of its input codes.
        every (int): ``pipeline_every``.

    Returns:
        MacRegisters: levels, cycles, register bits and registers.

    Raises:
        ValueError: no exact accumulator, no weight values, an accumulator coarser than the
            products, or a conv without shapes.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> lp = fpq.plan(q)["0"]
        >>> mac_registers(lp, lp.tensors["input"].carrier(), 1).cycles
        3
    """
    from .rtl import _units

    acc, W = lp.exact_sum(), lp.values.get("weight")
    if acc is None or W is None:
        raise ValueError(f"{lp.op} {lp.name!r}: no exact fixed-point accumulator or weight values; "
                         "fpq.to_rtl does not build it")
    shift = acc.frac_bits - x.frac_bits
    W = np.asarray(W, dtype=np.float64)
    K = _units(W.ravel(), shift).reshape(W.shape) if shift >= 0 else None
    if K is None:
        raise ValueError(f"{lp.op} {lp.name!r}: accumulator {acc} is coarser than its products")
    if lp.op == "linear":
        taps, chans = linear_taps(W.shape[0], W.shape[1])
        fan_in = W.shape[1]
    else:
        ins, outs = (lp.attrs.get("in_shapes") or [None])[0], lp.attrs.get("out_shape")
        if ins is None or outs is None:
            raise ValueError(f"{lp.op} {lp.name!r}: input / output shape unknown")
        taps, chans, fan_in, _ = conv_taps(ins, outs, W.shape, lp.attrs)
    b = lp.values.get("bias")
    bias = None if b is None else _units(np.asarray(b, np.float64), acc.frac_bits)
    depth = tree_depth(fan_in + (1 if bias is not None else 0))
    xw = x.width + (0 if x.signed else 1)
    bits = regs = 0
    for j, tj in enumerate(taps):
        leaves = [product_width(xw, int(K[w]), acc.width) for _, w in tj if int(K[w])]
        if bias is not None and int(bias[chans[j]]):
            leaves.append(min(acc.width, bits_signed(int(bias[chans[j]]))))
        levels = adder_tree(leaves or [acc.width], depth, every, acc.width)
        bits += register_bits(levels)
        regs += sum(len(t.widths) for t in levels if t.registered)
    return MacRegisters(depth, cycles(depth, every), bits, regs)


def check_rtl_settings(tp, pipeline_every, reuse_factor, strategy, io_type) -> int:
    """Refuse, before any work, an estimate of ``fpq.to_rtl``'s circuit it does not describe.

    Args:
        tp (TypePlan): the plan.
        pipeline_every (int): adder levels between registers.
        reuse_factor (int | dict): must be 1 (the circuit is fully unrolled).
        strategy (str | dict): must be "Latency".
        io_type (str): must be "io_parallel".

    Returns:
        int: ``pipeline_every``.

    Raises:
        ValueError: a bad ``pipeline_every``, another reuse factor / strategy / io_type, or an op
            ``fpq.to_rtl`` does not build.

    Example:
        >>> from fpq.typeplan import TypePlan
        >>> check_rtl_settings(TypePlan(), 2, 1, "Latency", "io_parallel")
        2
    """
    every = check_every(pipeline_every)
    rfs = reuse_factor.values() if isinstance(reuse_factor, dict) else [reuse_factor]
    sts = strategy.values() if isinstance(strategy, dict) else [strategy]
    if any(rf != 1 for rf in rfs) or any(str(s).lower() != "latency" for s in sts) or io_type != "io_parallel":
        raise ValueError("pipeline_every prices fpq.to_rtl's fully unrolled circuit: use reuse_factor=1, "
                         f"strategy='Latency', io_type='io_parallel' (got {reuse_factor!r}, {strategy!r}, {io_type!r})")
    bad = [f"{lp.name} ({lp.op})" for lp in tp if lp.op.lower() not in RTL_KINDS]
    if bad:
        raise ValueError(f"pipeline_every prices fpq.to_rtl's circuit, which does not build {', '.join(bad)}; "
                         f"it builds {', '.join(RTL_KINDS)}")
    return every


def apply_registers(tp, report, every: int) -> None:
    """Replace a report's FF and latency by ``fpq.to_rtl``'s pipeline registers (in place).

    Args:
        tp (TypePlan): the plan priced.
        report (CostReport): ``estimate``'s report of it (reuse 1, Latency, io_parallel).
        every (int): ``pipeline_every``.

    Returns:
        None: MAC rows get ``ff`` = their register bits, ``latency_cycles`` = their cycles and
        ``register_bits`` / ``registers`` / ``adder_levels``; every other row 0 FF and 0 cycles.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> fpq.estimate_cost(q, pipeline_every=1).total["latency_cycles"]
        3
    """
    rows = {r["layer"]: r for r in report.layers}
    for r in report.layers:
        r.update(ff=0.0, latency_cycles=0, ii=1)
    for lp in tp:
        if lp.op.lower() in MAC_RTL_KINDS and lp.name in rows:
            x = lp.tensors.get("input")
            xc = x if isinstance(x, Fixed) else x.carrier()
            m = mac_registers(lp, xc, every)
            rows[lp.name].update(ff=float(m.register_bits), latency_cycles=m.cycles, register_bits=m.register_bits,
                                 registers=m.registers, adder_levels=m.adder_levels)
    tot = report.total
    tot["ff"] = float(sum(r["ff"] for r in report.layers))
    tot["latency_cycles"] = int(sum(r["latency_cycles"] for r in report.layers))
    tot["ii"] = 1
    tot["latency_ns"] = tot["latency_cycles"] * float(report.settings.get("clock_period", 5.0))
    report.notes[:] = [n for n in report.notes if not n.startswith("LUTs from yosys synth_xilinx")]
    report.notes.append("LUTs from yosys synth_xilinx measurements (not Vivado)")
    report.notes.append(f"FF and latency: fpq.to_rtl's pipeline registers (every {every} adder levels and at each "
                        "tree root; fpq.cost_model.pipeline), not hls4ml's stages")
