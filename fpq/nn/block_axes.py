"""Which axis a block-scaled format blocks along, per layer (fpq.convert): the reduction axis of
the layer that reads the tensor. A Linear reduces over its input's last axis (its weight's axis 1 ==
-1); a Conv1d / Conv2d over its input channels per kernel tap, so its weight (O, C, *kernel) and its
input (N, C, *spatial) are both blocked along axis 1 (why channels per tap and not im2col's C x
kernel window: fpq.numerics.block_conv). Other layers take scalar formats only (refused here,
naming the layer)."""
from __future__ import annotations

import dataclasses

from torch import nn

from ..formats import BlockFormat, parse_format

BLOCK_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _is_block(f) -> bool:
    return f is not None and isinstance(parse_format(f), BlockFormat)


def check_block_layer(path: str, kind: str, formats: dict) -> None:
    """Refuse block-scaled formats on a layer that is not a Linear / Conv1d / Conv2d, naming it."""
    for role, f in formats.items():
        if isinstance(f, str) and _is_block(f):
            raise ValueError(f"fpq.convert: layer {path!r} ({kind}) has the block-scaled {role} format {f}; block "
                             "formats are built for Linear, Conv1d and Conv2d layers (blocks along the reduction "
                             "axis) and the activations between them: give this layer a scalar format with "
                             f"overrides={{{path!r}: 'e4m3'}} (or int8, ...)")


def conv_block_weights(module: nn.Module, weights):
    """A Conv's weight format: a block format blocks along axis 1 (input channels per kernel tap);
    groups other than 1 and string paddings are refused with block formats."""
    if not _is_block(weights):
        return weights
    fmt = parse_format(weights)
    name = type(module).__name__
    if module.groups != 1:
        raise ValueError(f"fpq.convert: {name}(groups={module.groups}) with the block-scaled weight format {fmt}: "
                         "block-scaled convolutions are built for groups=1 (blocks of input channels per tap)")
    if isinstance(module.padding, str):
        raise ValueError(f"fpq.convert: {name}(padding={module.padding!r}) with the block-scaled weight format "
                         f"{fmt}: give the padding as integers")
    return str(dataclasses.replace(fmt, axis=1))


def set_conv_input_axes(q) -> None:
    """Block the input of every Conv along its channels (axis 1): the block quantizer that produces
    it (linked by link_input_quantizers) gets axis 1. Runs after link_input_quantizers."""
    from .layers import FpqConv1d, FpqConv2d, linked_input_quantizer
    for name, m in q.named_modules():
        if not isinstance(m, (FpqConv1d, FpqConv2d)):
            continue
        tq = linked_input_quantizer(m)
        if tq is None or not isinstance(getattr(tq, "fmt", None), BlockFormat):
            continue
        if m.groups != 1:
            raise ValueError(f"fpq.convert: conv {name!r} (groups={m.groups}) reads the block-scaled format {tq.fmt}: "
                             "block-scaled convolutions are built for groups=1")
        tq.fmt = dataclasses.replace(tq.fmt, axis=1)


__all__ = ["BLOCK_LAYERS", "check_block_layer", "conv_block_weights", "set_conv_input_axes"]
