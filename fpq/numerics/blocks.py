"""The bit-exact numpy reference of block-scaled formats (``BlockFormat``: OCP MX, NVFP4, and the
general ``block<ELEM,SCALE,K>``). The torch twin and every later path are tested against it.

Blocks: ``k`` consecutive values along ``fmt.axis`` share one scale. An axis whose length ``k``
does not divide is padded with zeros to whole blocks, as OCP MX v1.0 pads a vector (a zero never
raises a block's amax, so the padding changes no scale), and the padding is dropped again.

E8M0 scales (OCP MX v1.0, section 6.3), amax the largest magnitude of the block:
  X = 2**e, e = floor(log2(amax)) - emax_elem under scale_rounding "floor" (the spec), or
  ceil / even / rceil as torchao names them (see ``formats.block.SCALE_ROUNDINGS``), then
  clamped to E8M0's range -127 .. 127 (code e + 127); elements P = RNE(v / X) in the element
  format, saturating; the value is P * X. Choices where the spec leaves freedom:
  * a block of zeros has no log2(amax); any X gives the same (zero) elements. fpq stores the
    smallest scale, code 0x00 (2**-127), as torchao does.
  * NaN or +-inf anywhere in a block: the block's scale is E8M0's NaN code 0xFF and, as the spec
    reads a NaN scale, every value of the block is NaN (the FP4 / FP6 elements have no inf or
    NaN to carry them). torchao instead gives an inf block a finite scale and saturated elements.
  * a float64 input beyond the scale's range: e is clamped to 127 and the elements saturate.

Tensor-scaled (a ``ueXmY`` scale with mantissa bits; NVFP4 = block<e2m1,ue4m3,16>):
  s_t = float32(amax_tensor) / float32(max_scale * max_elem) in float32 (1.0 for an all-zero
  tensor; the smallest float32 subnormal if the quotient underflows), or given (static weights);
  block scale s_b = Q_scale(min(amax_block / (max_elem * s_t), max_scale)), at least the scale's
  smallest normal value ("tiny", torch.finfo's name; 2**-6 for ue4m3, as torchao's NVFP4 clamps:
  a zero block gets it too); elements P = RNE(v / (s_b * s_t)) saturating; the value is
  P * s_b * s_t. amax_tensor is the largest finite magnitude; a block holding NaN or inf is NaN
  (scale code: the scale format's NaN code, -1 if it has none).

Every product and quotient above is one float64 operation on exact operands (the formats are
checked to fit: ``BlockFormat`` refuses element x scale x float32 wider than 53 bits), so the
results are float64 (an NVFP4 value has up to 2 + 4 + 24 significant bits: float32 cannot hold it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import BlockFormat, Minifloat, parse_format
from ..formats.facts import encode
from ..formats.block import element_precision
from .reference import quantize_unscaled

E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127
F32_TINY = np.float32(2.0 ** -149)


@dataclass(frozen=True)
class BlockQuant:
    """One block quantization. ``values`` and ``elements`` have x's shape; ``scales`` and
    ``scale_codes`` have x's shape with the block axis cut to its number of blocks."""

    values: np.ndarray       # float64: elements * scales (* tensor_scale); NaN for NaN / inf blocks
    elements: np.ndarray     # float64 element values, at block scale 1
    scales: np.ndarray       # float64 block scale values (NaN for NaN / inf blocks)
    scale_codes: np.ndarray  # int64 codes of the scale format
    tensor_scale: float | None  # float32 s_t of a tensor-scaled format; None for e8m0


def as_block_format(fmt) -> BlockFormat:
    fmt = parse_format(fmt)
    if not isinstance(fmt, BlockFormat):
        raise ValueError(f"{fmt} is not a block format (block<ELEM,SCALE,K>, mxfp4, nvfp4, ...)")
    return fmt


def _float_input(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind != "f" or a.dtype.itemsize > 8:
        raise ValueError(f"block quantization takes float16, float32 or float64 input, got {a.dtype}")
    if a.ndim == 0:
        raise ValueError("block quantization needs at least one axis to block along, got a scalar")
    return a.astype(np.float64)


def to_blocks(x: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, int]:
    """x (float64) with ``axis`` moved last, zero-padded to whole blocks and reshaped to
    (..., n_blocks, k); also returns the axis' length n."""
    xm = np.moveaxis(x, axis, -1)
    n = xm.shape[-1]
    nb = -(-n // k)
    if nb * k != n:
        xm = np.concatenate([xm, np.zeros(xm.shape[:-1] + (nb * k - n,))], axis=-1)
    return xm.reshape(xm.shape[:-1] + (nb, k)), n


def from_blocks(b: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Inverse of to_blocks: drop the padding and move the axis back."""
    return np.moveaxis(b.reshape(b.shape[:-2] + (-1,))[..., :n], -1, axis)


def e8m0_exponents(amax: np.ndarray, fmt: BlockFormat) -> np.ndarray:
    """The E8M0 exponent e (int64, -127..127) of blocks of finite largest magnitude ``amax``."""
    m, e2 = np.frexp(amax)                     # amax = m * 2**e2, m in [0.5, 1): exact
    floor_log2 = e2.astype(np.int64) - 1
    mode = fmt.scale_rounding
    if mode == "floor":
        e = floor_log2 - fmt.emax_elem
    elif mode == "ceil":
        e = floor_log2 + (m != 0.5) - fmt.emax_elem
    elif mode == "even":  # amax rounded half-up to the element's P significant bits reaches 2**(E+1)
        up = m >= 1.0 - 2.0 ** -(element_precision(fmt.elem) + 1)
        e = floor_log2 + up - fmt.emax_elem
    else:  # rceil: smallest e with max_elem * 2**e >= amax, compared exactly on the mantissas
        me, ee = np.frexp(fmt.elem_max)
        e = e2.astype(np.int64) - int(ee) + (m > me)
    e = np.where(amax == 0, E8M0_MIN_EXP, e)
    return np.clip(e, E8M0_MIN_EXP, E8M0_MAX_EXP)


def tensor_scale_of(x, fmt) -> np.float32:
    """s_t of a tensor-scaled block format: float32(amax) / float32(max_scale * max_elem) in
    float32, from the largest finite magnitude of x."""
    fmt = as_block_format(fmt)
    if fmt.po2_scale:
        raise ValueError(f"{fmt} has absolute e8m0 scales and no tensor scale")
    a = np.abs(_float_input(x))
    fin = np.isfinite(a)
    amax = float(a[fin].max()) if fin.any() else 0.0
    return _tensor_scale_from_amax(amax, fmt)


def _tensor_scale_from_amax(amax: float, fmt: BlockFormat) -> np.float32:
    if amax == 0:
        return np.float32(1.0)
    with np.errstate(over="ignore", under="ignore"):
        a32 = np.float32(amax)
        if not np.isfinite(a32):
            raise ValueError(f"{fmt}: the tensor's largest magnitude {amax!r} is beyond float32, which holds "
                             "the tensor scale")
        st = np.float32(a32 / np.float32(fmt.scale.max_value * fmt.elem_max))
    return st if st > 0 else F32_TINY


def check_tensor_scale(st, fmt: BlockFormat) -> np.float32:
    s32 = np.float32(st)
    if not (np.isfinite(s32) and s32 > 0 and float(s32) == float(st)):
        raise ValueError(f"{fmt}: the tensor scale must be a positive finite float32 number, got {st!r}")
    return s32


def block_quantize(x, fmt, tensor_scale=None) -> BlockQuant:
    """Quantize x to the block format ``fmt`` (see the module docstring for the exact rules).
    ``tensor_scale``: a tensor-scaled format's float32 s_t (static weights); computed from x when
    None. Returns values, elements, block scales and their codes."""
    fmt = as_block_format(fmt)
    x = _float_input(x)
    axis = fmt.axis
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{fmt}: block axis {axis} is out of range for an input of shape {x.shape}")
    blocks, n = to_blocks(x, fmt.k, axis)
    a = np.abs(blocks)
    finite = np.isfinite(a)
    bad = ~finite.all(axis=-1)                  # a NaN or inf in the block
    amax = np.where(finite, a, 0.0).max(axis=-1)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        if fmt.po2_scale:
            st = None
            if tensor_scale is not None:
                raise ValueError(f"{fmt} has absolute e8m0 scales; it takes no tensor scale")
            e = e8m0_exponents(amax, fmt)
            elems = quantize_unscaled(np.ldexp(blocks, -e[..., None]), fmt.elem)
            vals = np.ldexp(elems, e[..., None])
            scales = np.ldexp(1.0, e)
            codes = e + 127
            nan_code = 255
        else:
            sf: Minifloat = fmt.scale
            if tensor_scale is None:
                fin = np.isfinite(x)
                st = _tensor_scale_from_amax(float(np.abs(x[fin]).max()) if fin.any() else 0.0, fmt)
            else:
                st = check_tensor_scale(tensor_scale, fmt)
            d = np.minimum(amax / (fmt.elem_max * float(st)), sf.max_value)
            scales = np.maximum(quantize_unscaled(d, sf), sf.min_normal)
            S = scales * float(st)
            elems = quantize_unscaled(blocks / S[..., None], fmt.elem)
            vals = elems * S[..., None]
            codes = encode(np.where(bad, 1.0, scales), sf)
            nan_code = int(encode(np.nan, sf)) if sf.has_nan else -1
        elems = np.where(bad[..., None], np.nan, elems)
        vals = np.where(bad[..., None], np.nan, vals)
        scales = np.where(bad, np.nan, scales)
        codes = np.where(bad, nan_code, codes).astype(np.int64)
    ax = axis % x.ndim
    return BlockQuant(from_blocks(vals, n, axis), from_blocks(elems, n, axis), np.moveaxis(scales, -1, ax),
                      np.moveaxis(codes, -1, ax), None if st is None else float(st))


def quantize_block(x, fmt, tensor_scale=None) -> np.ndarray:
    """The block-quantized values of x (float64, x's shape)."""
    return block_quantize(x, fmt, tensor_scale).values


def dequantize_block(elements, scales, fmt, tensor_scale=None) -> np.ndarray:
    """Values from element values and per-block scale values (the inverse of the storage)."""
    fmt = as_block_format(fmt)
    el = np.asarray(elements, dtype=np.float64)
    blocks, n = to_blocks(el, fmt.k, fmt.axis)
    s = np.moveaxis(np.asarray(scales, dtype=np.float64), fmt.axis % el.ndim, -1)
    if s.shape != blocks.shape[:-1]:
        raise ValueError(f"{fmt}: scales of shape {np.shape(scales)} do not match {el.shape} in blocks of {fmt.k}")
    if tensor_scale is not None:
        s = s * float(check_tensor_scale(tensor_scale, fmt))
    return from_blocks(blocks * s[..., None], n, fmt.axis)


__all__ = ["BlockQuant", "block_quantize", "quantize_block", "dequantize_block", "tensor_scale_of",
           "e8m0_exponents", "to_blocks", "from_blocks", "as_block_format"]
