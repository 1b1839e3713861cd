"""hls4ml's io_stream structures the cost model adds to a layer's row (FIFOs between layers, a conv's
line buffer and window), and the BRAM18 mapping they share with the weight memories."""
from __future__ import annotations

import math

import numpy as np

from ..formats import BlockFormat
from ..ir import CONV_KINDS, POOL_KINDS
from ..ir.plan import native_pool
from ..typeplan import TensorType

BRAM18_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))


def _in_shape(lp):
    """The shape of the layer's (first) input, from the TypePlan's ``in_shapes``."""
    shapes = lp.attrs.get("in_shapes") or [None]
    return shapes[0]


def _bram18(width_bits: int, depth: int) -> int:
    for d, w in BRAM18_SHAPES:
        if depth <= d:
            return math.ceil(width_bits / w)
    return math.ceil(width_bits / 1) * math.ceil(depth / 16384)


# hls4ml's io_stream: an hls::stream FIFO of (channels x bits) words between layers, its depth the
# number of pixels (hls4ml's StreamVariableConverter). How the memory is inferred (priced in ``_fifo``):
# * up to SRL_MAX_BITS (depth x width; Vitis' auto_srl_max_bits default) in shift registers: one
#   SRL32 LUT per bit and 32 words;
# * otherwise a RAM. Up to LUTRAM_MAX_DEPTH words it is distributed RAM (LUTRAM): a simple
#   dual-port RAM32M (32 words x 6 bits) or RAM64M (64 x 3) per 4 LUTs. A BRAM18's shallowest
#   shape is 512 x 36, so a <= 64-word memory would leave 7/8 of every block empty: Vivado's RAM
#   inference keeps such shallow memories in LUTs. Deeper ones go to BRAM18s at the aspect
#   ratio that needs the fewest (``_bram18``).
SRL_MAX_BITS = 1024
LUTRAM_MAX_DEPTH = 64


def lutram_luts(width_bits: int, depth: int) -> int:
    """LUTs of a simple dual-port distributed RAM of ``depth`` x ``width_bits`` (RAM32M / RAM64M:
    4 LUTs hold 32 x 6 or 64 x 3 bits)."""
    per = 6 if depth <= 32 else 3
    return 4 * math.ceil(width_bits / per) * math.ceil(depth / 64 if depth > 32 else 1)


def _bits_of(t) -> int | None:
    if isinstance(t, TensorType) and isinstance(t.format, BlockFormat):
        from ..numerics.block_hw import make_wire  # a block word: sign, element index, scale code
        return make_wire(t.format, t.scale, "stream").word_bits
    if isinstance(t, TensorType):
        vc = t.value_carrier()      # float scales: the exact float32 values the HLS project carries
        return vc.width if vc is not None else None
    return None


def _fifo(shape, bits) -> tuple:
    """(LUTs, BRAM18) of one hls::stream FIFO of a feature map of ``shape`` (depth: its pixels):
    SRL, LUTRAM or BRAM18 by depth x width as described above."""
    if shape is None or len(shape) <= 2 or not bits:
        return 0, 0
    width, depth = int(shape[1]) * bits, int(np.prod(shape[2:]))
    if depth <= 1:
        return 0, 0
    if width * depth <= SRL_MAX_BITS:
        return width * math.ceil(depth / 32), 0
    if depth <= LUTRAM_MAX_DEPTH:
        return lutram_luts(width, depth), 0
    return 0, _bram18(width, depth)


def stream_readers(tp) -> dict:
    """{layer: how many layers read its output}; a requantizer fused into a layer counts as it."""
    out = {}
    for lp in tp:
        if lp.attrs.get("fused_into"):
            continue   # computed by the layer it reads: no stream between them
        for src in lp.attrs.get("inputs") or []:
            owner = tp[src].attrs.get("fused_into") or src if src in tp.layers else src
            out[owner] = out.get(owner, 0) + 1
    return out


def add_clone_fifos(row: dict, lp, readers: dict) -> None:
    """hls4ml's io_stream Clone of a feature map read by n > 1 layers (a U-Net's skip, a residual,
    parallel branches before a concat): n more FIFOs of it, one per copy (``clone_fifos``)."""
    n = readers.get(lp.name, 0)
    if n < 2:
        return
    bits = _bits_of(lp.tensors.get("output")) or row.get("acc_bits") or _bits_of(lp.tensors.get("input"))
    lut, bram = _fifo(lp.attrs.get("out_shape"), bits)
    row["lut"] += n * lut
    row["bram18"] += n * bram
    row.update(clone_fifos=n, clone_fifo_lut=n * lut, clone_fifo_bram18=n * bram)


def _add_stream_buffers(row: dict, lp) -> None:
    """Add the layer's output FIFO and (conv2d) its line buffer to ``row`` (io_stream)."""
    shape = lp.attrs.get("out_shape")
    bits = _bits_of(lp.tensors.get("output")) or row.get("acc_bits") or _bits_of(lp.tensors.get("input"))
    line_lut = window_ff = 0
    fifo_lut, fifo_bram = _fifo(shape, bits)
    ins = _in_shape(lp)
    kernel = lp.attrs.get("kernel")
    in_bits = _bits_of(lp.tensors.get("input"))
    if (lp.op in POOL_KINDS and ins is not None and len(ins) == 4 and in_bits
            and not native_pool(lp.op, lp.attrs, ins)):
        # fpq::pool_layer keeps its last pool_height input rows (all channels) in row buffers
        kh = int(ins[2]) if lp.op == "global_avgpool" else int(tuple(kernel)[0])
        line_lut = kh * int(ins[1]) * in_bits * math.ceil(int(ins[3]) / 32)
    if lp.op in CONV_KINDS and ins is not None and kernel is not None and in_bits:
        cin, k = int(ins[1]), tuple(kernel)
        window_ff = int(np.prod(k)) * cin * in_bits
        if lp.op == "conv2d" and len(ins) == 4:   # (kh - 1) rows of the input kept in shift registers
            line_lut = (k[0] - 1) * cin * in_bits * math.ceil(int(ins[3]) / 32)
    row["lut"] += fifo_lut + line_lut
    row["bram18"] += fifo_bram
    row["ff"] += window_ff
    row.update(fifo_lut=fifo_lut, fifo_bram18=fifo_bram, line_buffer_lut=line_lut)


# layers hls4ml's io_stream runs one pixel (all its channels) per cycle: their datapath is one
# pixel wide, reused over the map (II = pixels); io_parallel unrolls them over every element
PER_PIXEL_OPS = ("relu", "clip", "add", "quant", "batchnorm") + POOL_KINDS


def stream_pixels(lp) -> int:
    """Pixels an io_stream element-wise / pooling layer takes one per cycle (1: not such a layer)."""
    ins = _in_shape(lp)
    if lp.op not in PER_PIXEL_OPS or ins is None or len(ins) <= 2:
        return 1
    return int(np.prod(ins[2:]))


def per_pixel(row: dict, lp) -> None:
    """Scale an element-wise / pooling row priced over every element (io_parallel) to io_stream's
    one-pixel datapath: LUTs and FFs / pixels of its input map, II and latency + pixels."""
    pixels = stream_pixels(lp)
    if pixels <= 1:
        return
    row["lut"] = row["lut"] / pixels
    row["ff"] = row["ff"] / pixels
    row["ii"] = max(int(row.get("ii", 1)), pixels)
    row["latency_cycles"] = int(row.get("latency_cycles", 0)) + pixels - 1


def moving_stream(row: dict, lp) -> None:
    """io_stream cost of a concat / nearest upsample (values moved, no logic): hls4ml writes one
    output pixel per cycle (II and latency = the output's pixels), and ``nnet::resize_nearest``
    keeps one input row (width x channels values) in registers to repeat it (``row_buffer_ff``).
    Their output FIFO is added by ``_add_stream_buffers`` like every layer's."""
    if lp.op not in ("concat", "upsample"):
        return
    shape = lp.attrs.get("out_shape")
    if shape is None or len(shape) <= 2:
        return    # vectors: one word, written once
    pixels = int(np.prod(shape[2:]))
    row["ii"] = max(int(row.get("ii", 1)), pixels)
    row["latency_cycles"] = int(row.get("latency_cycles", 0)) + pixels
    ins = _in_shape(lp)
    bits = _bits_of(lp.tensors.get("input"))
    if lp.op == "upsample" and ins is not None and len(ins) > 2 and bits:
        buf = int(ins[-1]) * int(ins[1]) * bits
        row["ff"] += buf
        row["row_buffer_ff"] = buf
