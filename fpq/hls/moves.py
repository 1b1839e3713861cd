"""The HLS layers of the IR's ``concat`` and ``upsample`` ops (values moved, no arithmetic): hls4ml's
own ``Concatenate`` and ``Resize`` (nearest), built channels-last like every fpq layer.

* concat: hls4ml joins two tensors (``nnet::concatenate{1,2,3}d``), so more inputs are joined in a
  chain. Its result type is the exact union of the inputs' types (``fpq.typeplan.fixed_union``):
  each ``res[i] = data[j]`` is an ap_fixed cast of a value that type holds, hence exact. A torch
  channel axis (1) is the last axis in hls4ml's layout; hls4ml's ``axis`` counts the batch, as
  Keras does (3 = channels of a 2-D map). Vectors (after a flatten) keep torch's order through
  their permutations, joined end to end.
* upsample: hls4ml's ``Resize`` with ``algorithm="nearest"`` (``nnet::resize_nearest``, one type for
  input and output: the input's), by whole factors only; a 1-D map is one of height 1.
"""
from __future__ import annotations

import numpy as np

from ..formats import Fixed
from ..typeplan import fixed_union
from .types import FloatPort, HLSUnsupportedError, _is_channels_last, _Tensor, channels_last_perm, hls_shape_of


def _fixed(t: _Tensor, op) -> Fixed:
    if isinstance(t.fixed, FloatPort):
        raise HLSUnsupportedError(f"{op.kind} {op.name!r} reads the float32 input port directly; quantize the input "
                                  "first")
    return Fixed(t.fixed.width, t.fixed.int_bits, t.fixed.signed)


def _join(b, op, name: str, x: _Tensor, y: _Tensor, axis: int) -> _Tensor:
    """One hls4ml Concatenate of ``x`` and ``y`` along the torch per-sample ``axis``."""
    out = fixed_union([_fixed(x, op), _fixed(y, op)])
    rank = len(x.torch_shape)
    shape = list(x.torch_shape)
    shape[axis] += y.torch_shape[axis]
    shape = tuple(shape)
    if rank == 1:
        px = np.arange(x.torch_shape[0]) if x.perm is None else np.asarray(x.perm)
        py = np.arange(y.torch_shape[0]) if y.perm is None else np.asarray(y.perm)
        perm = np.concatenate([px, py + x.torch_shape[0]])
        perm = None if np.array_equal(perm, np.arange(perm.size)) else perm
        hls_axis, hshape = 0, shape
    else:
        for t in (x, y):
            if not _is_channels_last(t):
                raise HLSUnsupportedError(f"concat {op.name!r}: input {t.layer!r} of shape {t.torch_shape} is not a "
                                          "feature map in hls4ml's channels-last layout")
        hls_axis = rank - 1 if axis == 0 else axis - 1     # torch (C, H, W) -> hls4ml (H, W, C)
        perm, hshape = channels_last_perm(shape), hls_shape_of(shape)
    b.add_layer({"class_name": "Concatenate", "name": name, "inputs": [x.layer, y.layer],
                 "op": f"concatenate{rank}d", "axis": hls_axis + 1}, {"result": out})
    return _Tensor(name, out, shape, hshape, perm)


def build_concat(b, op) -> None:
    srcs = [b.src(op, k) for k in range(len(op.inputs))]
    axis = int(op.attrs["axis"]) - 1    # per sample
    rank = len(srcs[0].torch_shape)
    if rank not in (1, 2, 3) or any(len(s.torch_shape) != rank for s in srcs) or not 0 <= axis < rank:
        raise HLSUnsupportedError(f"concat {op.name!r}: inputs of shapes {[s.torch_shape for s in srcs]} along axis "
                                  f"{op.attrs['axis']}; hls4ml joins vectors and 1-D / 2-D feature maps")
    for s in srcs[1:]:
        if any(d != e for k, (d, e) in enumerate(zip(s.torch_shape, srcs[0].torch_shape)) if k != axis):
            raise HLSUnsupportedError(f"concat {op.name!r}: shapes {[t.torch_shape for t in srcs]} differ off the "
                                      f"joined axis {op.attrs['axis']}")
    if len(srcs) == 1:
        b.set_out(op, srcs[0])
        return
    t = srcs[0]
    for k, s in enumerate(srcs[1:], start=1):
        t = _join(b, op, op.name if k == len(srcs) - 1 else f"{op.name}_{k}", t, s, axis)
    b.set_out(op, t)


def build_upsample(b, op) -> None:
    src = b.src(op)
    scales = tuple(int(s) for s in op.attrs["scales"])
    rank = len(src.torch_shape)
    if rank not in (2, 3) or len(scales) != rank + 1 or scales[:2] != (1, 1) or not _is_channels_last(src):
        raise HLSUnsupportedError(f"upsample {op.name!r}: factors {scales} of a tensor of shape {src.torch_shape}; "
                                  "hls4ml's Resize repeats the spatial axes of a 1-D or 2-D feature map (factors "
                                  "(1, 1, k) or (1, 1, kh, kw))")
    c, hw = src.torch_shape[0], (1,) * (3 - rank) + tuple(src.torch_shape[1:])
    f = (1,) * (3 - rank) + scales[2:]
    out = (c,) + tuple(d * k for d, k in zip(src.torch_shape[1:], scales[2:]))
    b.add_layer({"class_name": "Resize", "name": op.name, "inputs": [src.layer], "data_format": "channels_last",
                 "in_height": hw[0], "in_width": hw[1], "out_height": hw[0] * f[0], "out_width": hw[1] * f[1],
                 "n_chan": c, "algorithm": "nearest", "align_corners": False},
                {"result": src.fixed})   # nnet::resize_nearest has one type for both
    b.set_out(op, _Tensor(op.name, src.fixed, out, hls_shape_of(out), channels_last_perm(out)))


def pad_shared_conv1d_input(b, op, src: _Tensor, pads, cin: int):
    """An explicit hls4ml ZeroPadding1D before a padded Conv1D whose input other layers read too
    (parallel branches before a concat, a residual); returns (the padded tensor, zero pads).

    Why: in io_stream hls4ml 1.3's InsertZeroPaddingBeforeConv1D inserts its padding layer with
    ``insert_node`` without naming the conv (its 2-D twin does), so behind the Clone of a shared input
    it rewires the first reader of either copy: another branch then reads this padded stream and the
    conv the unpadded one (C-sim wrong at every output; two padded Conv1d on one input, or a Conv1d
    and a concat). With the padding explicit, that pass finds nothing to do."""
    w_in = int(src.torch_shape[1]) + int(pads[0]) + int(pads[1])
    name = f"{op.name}_pad"
    b.add_layer({"class_name": "ZeroPadding1D", "name": name, "inputs": [src.layer], "data_format": "channels_last",
                 "pad_left": int(pads[0]), "pad_right": int(pads[1]), "in_width": int(src.torch_shape[1]),
                 "out_width": w_in, "n_chan": cin}, {"result": src.fixed})
    shape = (cin, w_in)
    return _Tensor(name, src.fixed, shape, hls_shape_of(shape), channels_last_perm(shape)), (0, 0)


__all__ = ["build_concat", "build_upsample", "pad_shared_conv1d_input"]
