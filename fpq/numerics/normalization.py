"""Softmax and LayerNorm over the last axis as exact fixed-point pipelines: one integer recipe,
written once here (numpy, and its torch twin), that torch (``fpq.nn.normalization``), both
emulator backends, qonnx's executor (``FpqSoftmax`` / ``FpqLayerNorm``, ``fpq.export.custom_op``)
and the HLS project (``hls/fpq_normalization.h``) all compute bit for bit.

The input x comes from a quantizer, so every value it holds is known (``input_values``) and lies
on one grid: x = k * 2^-F with integer k (F: the smallest such exponent of those values). Every
step below is integer arithmetic on k; the only floating-point function ever evaluated is exp,
ONCE, when the softmax recipe is built (numpy, float64), and the resulting integer table travels
with the model (the QONNX node holds it; the reader checks it against a rebuild). No path
evaluates exp, sqrt or a division in floating point at run time.

Rounding is named where it happens: RHU = round half up, floor((v + 2^(s-1)) / 2^s) for a right
shift by s (ap_fixed's AP_RND on the raw integer); RNE = round half to even (table building only).

Softmax (``SoftmaxRecipe``), per row of n values along the last axis:
  1. m = max k; d = k - m <= 0 (exact).
  2. t = d >> shift, RHU (shift = 0 unless the table would exceed ``MAX_EXP_ENTRIES``: then the
     smallest shift that fits; the table's input is x - max rounded to 2^(shift-F)).
  3. e = EXP[t + T] for t >= -T, else 0; EXP[i] = RNE(exp((i - T) 2^(shift-F)) 2^EXP_FRAC), an
     unsigned ufixed<EXP_FRAC+1, 1> code (EXP[T] = 2^EXP_FRAC is exp(0) = 1). T is the smallest
     offset beyond which every entry would be 0, or the input's whole range.
  4. s = sum e (exact; s >= 2^EXP_FRAC because the maximum reads exp(0)).
  5. r = floor((2^RECIP_BITS + floor(s / 2)) / s): 2^RECIP_BITS / s RHU, by integer division.
  6. y = (e r) >> (RECIP_BITS - OUT_FRAC), RHU: y in [0, 1] as ufixed<OUT_FRAC+1, 1>, exact in
     float32; the softmax's output quantizer then rounds it (a second, documented rounding).

LayerNorm (``LayerNormRecipe``), per row of n values, torch's definition (biased variance,
(x - mean) / sqrt(var + eps) * gamma + beta):
  1. S = sum k; D_i = n k_i - S (= n (x_i - mean) 2^F, exact).
  2. V = sum D_i^2; U = n V + E, E = RNE(eps n^4 2^(2F)) with eps as float32 (so that
     var + eps = U / (n^4 2^(2F)) and (x_i - mean) / sqrt(var + eps) = n D_i / sqrt(U)).
  3. j = the smallest j >= 0 with U < 2^(NORM_BITS + 2j); u = max(1, U >> 2j) (truncation).
  4. inv = isqrt(floor(2^(2 RSQRT_FRAC) / u)) = floor(2^RSQRT_FRAC / sqrt(u)) exactly (floor of
     sqrt of a floor is the floor of sqrt): >= 16 significant bits, an integer algorithm.
  5. Z_i = (n D_i inv) >> (RSQRT_FRAC + j - Z_FRAC), RHU: the normalized value on 2^-Z_FRAC.
  6. gamma and beta are quantized like a layer's weight and bias (their formats, a power-of-two
     scale by the max rule, ``quantize_affine``): gamma = G 2^-Fg, beta = B 2^-Fb. The exact
     Yx = Z G 2^(Fy - Z_FRAC - Fg) + B 2^(Fy - Fb) on 2^-Fy, Fy = max(Z_FRAC + Fg, Fb).
  7. y = Yx >> (Fy - Fo), RHU (or << when Fy < Fo), saturated to 24 bits: fixed<24, Io> with Io
     from the bound |y| <= sqrt(n - 1) max|gamma| + max|beta|; exact in float32. The layer's
     output quantizer then rounds it.
Widths are checked when a recipe is built (integers stay below 2^62), naming the layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..formats import Fixed, finfo

EXP_FRAC = 17          # exp table entries: ufixed<18, 1>
RECIP_BITS = 40        # r = 2^40 / s
OUT_FRAC = 23          # softmax's y: ufixed<24, 1>
MAX_EXP_ENTRIES = 4096
MAX_ROW = 4096         # values along the normalized axis
NORM_BITS = 32         # u < 2^32 before the inverse square root
RSQRT_FRAC = 31        # inv = floor(2^31 / sqrt(u))
Z_FRAC = 16            # normalized value on 2^-16
Y_BITS = 24            # LayerNorm's y before its output quantizer
LIMIT = 1 << 62


def grid_exponent(values) -> int:
    """The smallest F (may be negative) with every value * 2^F an integer (finite float64 values)."""
    v = np.abs(np.asarray(values, dtype=np.float64).ravel())
    v = v[v != 0]
    if v.size == 0:
        return 0
    m, e = np.frexp(v)
    k = np.ldexp(m, 53).astype(np.int64)
    trailing = np.log2((k & -k).astype(np.float64)).astype(np.int64)
    return int(np.max(53 - e - trailing))


def to_codes(x, frac: int, who: str) -> np.ndarray:
    """int64 k with x = k 2^-frac; an x off that grid is an error naming ``who``."""
    x = np.asarray(x, dtype=np.float64)
    k = np.ldexp(x, frac)
    if not np.all(np.isfinite(k)) or np.any(k != np.rint(k)) or np.any(np.abs(k) >= 2.0 ** 62):
        bad = x[~np.isfinite(k) | (k != np.rint(k))].ravel()
        raise ValueError(f"{who}: input {float(bad[0] if bad.size else x.ravel()[0])!r} is not on its quantizer's grid "
                         f"(multiples of 2^{-frac}); the input must come from the quantizer the layer was built for")
    return k.astype(np.int64)


def _rhu(v, s: int):
    """v >> s rounded half up (numpy or torch int64, s >= 0 an int or an array)."""
    return (v + ((1 << s) >> 1)) >> s if isinstance(s, int) else (v + ((np.int64(1) << s) >> 1)) >> s


@dataclass(frozen=True)
class SoftmaxRecipe:
    in_frac: int
    shift: int
    exp_table: tuple          # ints, EXP[0] reads t = -T, EXP[-1] = 2^EXP_FRAC
    exp_frac: int = EXP_FRAC
    recip_bits: int = RECIP_BITS
    out_frac: int = OUT_FRAC

    @property
    def offset(self) -> int:
        return len(self.exp_table) - 1

    def attrs(self) -> dict:
        return dict(in_frac=self.in_frac, shift=self.shift, exp_table=list(self.exp_table), exp_frac=self.exp_frac,
                    recip_bits=self.recip_bits, out_frac=self.out_frac)

    def formats(self, n: int) -> dict:
        """The internal types (TypePlan roles): exp entries, row sum, reciprocal, output."""
        sum_bits = (n << self.exp_frac).bit_length()
        r_bits = ((1 << self.recip_bits) >> self.exp_frac).bit_length()
        return {"exp": Fixed(self.exp_frac + 1, 1, False), "sum": Fixed(sum_bits, sum_bits - self.exp_frac, False),
                "reciprocal": Fixed(r_bits, r_bits - (self.recip_bits - self.exp_frac), False),
                "output": Fixed(self.out_frac + 1, 1, False)}


def softmax_recipe(in_values, who: str) -> SoftmaxRecipe:
    """The softmax recipe of an input that takes the values ``in_values`` (see the docstring)."""
    f = grid_exponent(in_values)
    k = to_codes(in_values, f, who)
    span = int(k.max() - k.min())
    for shift in range(0, 64):
        half = (1 << shift) >> 1
        t_range = -((-span + half) >> shift)              # the most negative t is -t_range
        step = math.ldexp(1.0, shift - f)
        t_under = int(math.floor((EXP_FRAC + 1) * math.log(2.0) / step)) + 1
        offset = min(t_range, t_under)
        if offset + 1 <= MAX_EXP_ENTRIES:
            break
    t = np.arange(-offset, 1, dtype=np.float64)
    table = np.rint(np.exp(t * step) * 2.0 ** EXP_FRAC).astype(np.int64)
    return SoftmaxRecipe(f, shift, tuple(int(v) for v in table))


def check_row(n: int, who: str) -> None:
    if n < 1 or n > MAX_ROW:
        raise ValueError(f"{who}: {n} values along the last axis; fpq's exact pipeline takes 1 to {MAX_ROW}")


def softmax_codes(k: np.ndarray, r: SoftmaxRecipe) -> np.ndarray:
    """Softmax over the last axis of int64 codes ``k``: the int64 output codes (on 2^-out_frac)."""
    d = k - k.max(axis=-1, keepdims=True)
    t = _rhu(d, r.shift) + r.offset
    table = np.asarray(r.exp_table, dtype=np.int64)
    e = np.where(t >= 0, table[np.clip(t, 0, r.offset)], 0)
    s = e.sum(axis=-1, keepdims=True)
    rec = ((np.int64(1) << r.recip_bits) + (s >> 1)) // s
    return _rhu(e * rec, r.recip_bits - r.out_frac)


def softmax(x, r: SoftmaxRecipe, who: str) -> np.ndarray:
    """The exact softmax of quantized ``x`` (float), float32 (values of ufixed<out_frac+1, 1>)."""
    x = np.asarray(x)
    check_row(x.shape[-1], who)
    return np.ldexp(softmax_codes(to_codes(x, r.in_frac, who), r).astype(np.float64), -r.out_frac).astype(np.float32)


def quantize_affine(values, fmt, who: str) -> np.ndarray:
    """gamma / beta quantized like a weight / bias: ``fmt`` (a Format) at a power-of-two scale by
    the max rule (Fixed: its own scaling); float32 values on the grid."""
    from .scaled import apply_scaled
    v = np.asarray(values, dtype=np.float32).astype(np.float64)
    scale = 1.0
    if not isinstance(fmt, Fixed):
        m = float(np.max(np.abs(v))) if v.size else 0.0
        top = float(finfo(fmt).max)
        scale = math.ldexp(1.0, math.ceil(math.log2(m / top))) if m > 0 else 1.0
    return np.asarray(apply_scaled(v, fmt, np.float32(scale)), dtype=np.float32)


@dataclass(frozen=True)
class LayerNormRecipe:
    in_frac: int
    n: int
    eps_int: int
    gamma: tuple              # ints G (gamma = G 2^-gamma_frac)
    gamma_frac: int
    beta: tuple               # ints B
    beta_frac: int
    out_int_bits: int         # y: fixed<Y_BITS, out_int_bits>
    z_max: int                # bound on |Z|
    z_frac: int = Z_FRAC
    norm_bits: int = NORM_BITS
    rsqrt_frac: int = RSQRT_FRAC

    @property
    def out_frac(self) -> int:
        return Y_BITS - self.out_int_bits

    @property
    def y_frac(self) -> int:      # Fy: the exact affine result's grid
        return max(self.z_frac + self.gamma_frac, self.beta_frac)

    def attrs(self) -> dict:
        return dict(in_frac=self.in_frac, eps_int=self.eps_int, out_int_bits=self.out_int_bits, z_frac=self.z_frac,
                    norm_bits=self.norm_bits, rsqrt_frac=self.rsqrt_frac)

    def formats(self, in_bits: int) -> dict:
        """The internal types (TypePlan roles) of the pipeline, for an input of ``in_bits``-bit codes:
        sum (of x), diff (n (x - mean)), variance (the integer U of step 2, a code: var + eps =
        U / (n^4 2^(2F))), rsqrt (inv 2^-31), norm (Z), affine (Yx) and output (y)."""
        n, fy = self.n, self.y_frac
        d_bits = (self.n * ((1 << in_bits) - 1)).bit_length() + 1
        u_bits = (self.n * self.n * (self.n - 1) ** 2 * (1 << 2 * in_bits) + self.eps_int).bit_length()
        z_bits = self.z_max.bit_length() + 1
        ymax = self.z_max * max(map(abs, self.gamma)) << (fy - self.z_frac - self.gamma_frac)
        ymax += max(map(abs, self.beta)) << (fy - self.beta_frac)
        yx_bits = ymax.bit_length() + 1
        s_bits = (n << in_bits).bit_length() + 1
        return {"sum": Fixed(s_bits, s_bits - self.in_frac, True),
                "diff": Fixed(d_bits, d_bits - self.in_frac, True), "variance": Fixed(u_bits, u_bits, False),
                "rsqrt": Fixed(self.rsqrt_frac + 1, 1, False), "norm": Fixed(z_bits, z_bits - self.z_frac, True),
                "affine": Fixed(yx_bits, yx_bits - fy, True), "output": Fixed(Y_BITS, self.out_int_bits, True)}


def _ints(values, who: str, what: str) -> tuple[tuple, int]:
    f = grid_exponent(values)
    return tuple(int(v) for v in to_codes(values, f, f"{who} ({what})")), f


def layernorm_recipe(in_values, n: int, eps: float, gamma, beta, who: str) -> LayerNormRecipe:
    """The LayerNorm recipe over rows of ``n`` values of an input taking ``in_values``; ``gamma`` /
    ``beta``: the quantized affine values (float32, n each) or None (1 and 0)."""
    check_row(n, who)
    f = grid_exponent(in_values)
    k = to_codes(in_values, f, who)
    span = int(k.max() - k.min())
    u_max = n * n * (n - 1) ** 2 * span * span
    eps32 = Fraction(float(np.float32(eps)))
    e_int = round(eps32 * n ** 4 * (Fraction(2) ** (2 * f)))
    if u_max + e_int >= LIMIT:
        raise ValueError(f"{who}: its variance needs {(u_max + e_int).bit_length()} bits (input grid 2^-{f}, "
                         f"{span + 1} codes, {n} values per row), more than the 62 fpq's exact pipeline holds; narrow "
                         "the quantizer before it (e.g. activations='int8') or normalize fewer values")
    g, fg = _ints(np.ones(n) if gamma is None else gamma, who, "gamma")
    b, fb = _ints(np.zeros(n) if beta is None else beta, who, "beta")
    if len(g) != n or len(b) != n:
        raise ValueError(f"{who}: gamma / beta hold {len(g)} / {len(b)} values for rows of {n}")
    zb = math.isqrt((n - 1) << (2 * Z_FRAC)) + 1
    z_max = zb + (zb >> 12) + 2
    fy = max(Z_FRAC + fg, fb)
    ymax = (z_max * max(map(abs, g)) << (fy - Z_FRAC - fg)) + (max(map(abs, b)) << (fy - fb))
    if ymax >= LIMIT:
        raise ValueError(f"{who}: gamma x normalized value + beta needs {ymax.bit_length()} bits on the grid 2^-{fy}; "
                         "more than 62: use coarser weight / bias formats for its gamma / beta")
    out_int = ((ymax >> fy) + 1).bit_length() + 1
    return LayerNormRecipe(f, n, int(e_int), g, fg, b, fb, out_int, z_max)


def isqrt64(a: np.ndarray) -> np.ndarray:
    """floor(sqrt(a)) of int64 a in [0, 2^62), exactly: a float64 estimate corrected by integer
    comparisons (the result is the integer square root, not the float one)."""
    r = np.floor(np.sqrt(a.astype(np.float64))).astype(np.int64)
    r = np.where(r * r > a, r - 1, r)
    r = np.where((r + 1) * (r + 1) <= a, r + 1, r)
    return r


def layernorm_codes(k: np.ndarray, r: LayerNormRecipe) -> np.ndarray:
    """LayerNorm over the last axis of int64 codes ``k``: int64 codes of y on 2^-out_frac."""
    n = r.n
    d = n * k - k.sum(axis=-1, keepdims=True)
    u_full = n * (d * d).sum(axis=-1, keepdims=True) + r.eps_int
    j = np.zeros_like(u_full)
    for i in range((62 - r.norm_bits) // 2 + 1):
        j += (u_full >= (np.int64(1) << (r.norm_bits + 2 * i))).astype(np.int64)
    u = np.maximum(u_full >> (2 * j), 1)
    inv = isqrt64((np.int64(1) << (2 * r.rsqrt_frac)) // u)
    z = _rhu(n * d * inv, r.rsqrt_frac - r.z_frac + j)
    fy = r.y_frac
    g = np.asarray(r.gamma, dtype=np.int64) << (fy - r.z_frac - r.gamma_frac)
    b = np.asarray(r.beta, dtype=np.int64) << (fy - r.beta_frac)
    yx = z * g + b
    y = _rhu(yx, fy - r.out_frac) if fy >= r.out_frac else yx << (r.out_frac - fy)
    return np.clip(y, -(1 << (Y_BITS - 1)), (1 << (Y_BITS - 1)) - 1)


def layernorm(x, r: LayerNormRecipe, who: str) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1] != r.n:
        raise ValueError(f"{who}: rows of {x.shape[-1]} values, the layer normalizes {r.n}")
    return np.ldexp(layernorm_codes(to_codes(x, r.in_frac, who), r).astype(np.float64), -r.out_frac).astype(np.float32)


# ---- the torch twin: the same integer steps on int64 tensors (CPU or GPU) ----

def to_codes_torch(x, frac: int, who: str):
    import torch
    x64 = x.detach().to(torch.float64)
    k = torch.ldexp(x64, torch.tensor(float(frac), dtype=torch.float64, device=x.device))
    if not bool(torch.all(torch.isfinite(k) & (k == torch.round(k)) & (k.abs() < 2.0 ** 62))):
        bad = x64[~(torch.isfinite(k) & (k == torch.round(k)))].reshape(-1)
        raise ValueError(f"{who}: input {bad[0].item() if bad.numel() else x64.reshape(-1)[0].item()!r} is not on "
                         f"its quantizer's grid (multiples of 2^{-frac}); the input must come from the quantizer the "
                         "layer was built for")
    return k.to(torch.int64)


def _from_codes_torch(y, frac: int):
    import torch
    return torch.ldexp(y.to(torch.float64), torch.tensor(float(-frac), dtype=torch.float64, device=y.device)
                       ).to(torch.float32)


def softmax_torch(x, r: SoftmaxRecipe, who: str):
    import torch
    check_row(x.shape[-1], who)
    k = to_codes_torch(x, r.in_frac, who)
    d = k - k.amax(dim=-1, keepdim=True)
    t = _rhu(d, r.shift) + r.offset
    table = torch.tensor(r.exp_table, dtype=torch.int64, device=k.device)
    e = torch.where(t >= 0, table[t.clamp(0, r.offset)], torch.zeros_like(t))
    s = e.sum(dim=-1, keepdim=True)
    rec = torch.div((1 << r.recip_bits) + (s >> 1), s, rounding_mode="floor")
    return _from_codes_torch(_rhu(e * rec, r.recip_bits - r.out_frac), r.out_frac)


def _isqrt64_torch(a):
    import torch
    r = torch.floor(torch.sqrt(a.to(torch.float64))).to(torch.int64)
    r = torch.where(r * r > a, r - 1, r)
    return torch.where((r + 1) * (r + 1) <= a, r + 1, r)


def layernorm_torch(x, r: LayerNormRecipe, who: str):
    import torch
    if x.shape[-1] != r.n:
        raise ValueError(f"{who}: rows of {x.shape[-1]} values, the layer normalizes {r.n}")
    k = to_codes_torch(x, r.in_frac, who)
    n = r.n
    d = n * k - k.sum(dim=-1, keepdim=True)
    u_full = n * (d * d).sum(dim=-1, keepdim=True) + r.eps_int
    j = torch.zeros_like(u_full)
    for i in range((62 - r.norm_bits) // 2 + 1):
        j += (u_full >= (1 << (r.norm_bits + 2 * i))).to(torch.int64)
    u = torch.clamp(u_full >> (2 * j), min=1)
    inv = _isqrt64_torch(torch.div(torch.full_like(u, 1 << (2 * r.rsqrt_frac)), u, rounding_mode="floor"))
    sh = r.rsqrt_frac - r.z_frac + j
    z = (n * d * inv + ((torch.ones_like(sh) << sh) >> 1)) >> sh
    fy = r.y_frac
    g = torch.tensor(r.gamma, dtype=torch.int64, device=k.device) << (fy - r.z_frac - r.gamma_frac)
    b = torch.tensor(r.beta, dtype=torch.int64, device=k.device) << (fy - r.beta_frac)
    yx = z * g + b
    y = _rhu(yx, fy - r.out_frac) if fy >= r.out_frac else yx << (r.out_frac - fy)
    y = y.clamp(-(1 << (Y_BITS - 1)), (1 << (Y_BITS - 1)) - 1)
    return _from_codes_torch(y, r.out_frac)


__all__ = ["SoftmaxRecipe", "LayerNormRecipe", "softmax_recipe", "layernorm_recipe", "softmax", "layernorm",
           "softmax_torch", "layernorm_torch", "quantize_affine", "grid_exponent", "to_codes", "MAX_ROW"]
