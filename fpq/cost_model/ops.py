"""Operator costs: exact lookup in the measured table, else a fit on it.

Every fit is a non-negative least-squares model on features that grow with the bit widths, so
a prediction never falls when an operand gets wider (the monotonic sanity the tests check).
The features follow the structure of the circuits:

* variable multiplier a x b: a*b partial-product bits, with a log2(min(a, b)) adder growth;
* constant multiplier x * k: (n - 1) adders of about x bits where n is the number of nonzero
  digits of k in canonical signed digit (CSD) form (and its binary popcount: yosys does not
  always find the CSD form); zero costs nothing, a power of two is wiring plus a negation
  when k < 0;
* minifloat multiplier: significand product bits, the barrel shifter (output bits x shift
  bits), the negation of the narrow product;
* adders / adder trees: total adder bits; xnor-popcount: number of pairs.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from ..formats import Binary, Minifloat, parse_format
from .synth import TABLE, read_table, table_meta


def csd_digits(k: int) -> int:
    """Number of nonzero digits of ``k`` in canonical signed-digit form (0 for 0)."""
    k = abs(int(k))
    n = 0
    while k:
        if k & 1:
            n += 1
            k = k - 1 if (k & 3) == 1 else k + 1   # ...01 -> digit +1, ...11 -> digit -1
        k >>= 1
    return n


def trailing_zeros(k: int) -> int:
    k = abs(int(k))
    return (k & -k).bit_length() - 1 if k else 0


def significant_bits(k: int) -> int:
    """Bits between the highest and lowest set bit of |k| (0 for 0)."""
    k = abs(int(k))
    return (k >> trailing_zeros(k)).bit_length() if k else 0


def significant_bits_array(K) -> np.ndarray:
    """``significant_bits`` of every entry of an integer array (|k| < 2**53), vectorized: the cost
    model prices every weight of a layer, at many reuse factors when fpq.fit searches."""
    a = np.abs(np.asarray(K, dtype=np.int64))
    odd = np.where(a > 0, a // np.maximum(a & -a, 1), 0)
    return np.where(odd > 0, np.frexp(odd.astype(np.float64))[1], 0).astype(np.int64)


# ----------------------------------------------------------------------------- features
# Feature sets were chosen by leave-one-out cross-validation on the calibration table only
# (median |relative error|: multipliers 4.5%, minifloat multipliers 11%, constants of wide x 10%).
LUT_INPUTS = 4   # x of at most this many bits: each product bit is one small LUT function of x


def mul_features(a: int, b: int, a_signed=True, b_signed=True) -> list[float]:
    """a x b in fabric: 1- and 2-bit operands are AND / mux arrays (a*b LUTs); from 3 bits on a
    partial-product array whose adders grow with log2 of the narrow operand."""
    a, b = sorted((a, b))
    big = float(a >= 3)
    return [a * b, a * b * big, a * b * math.log2(max(a, 1)) * big, (a + b) * big]


def csd_signs(k: int) -> list[int]:
    """The nonzero signed digits (+1 / -1) of ``k`` in canonical signed-digit form, LSB first."""
    k, out = int(k), []
    while k:
        if k & 1:
            d = 2 - (k & 3)      # ...01 -> +1, ...11 -> -1
            out.append(d)
            k -= d
        k >>= 1
    return out


def cmul_features(x_bits: int, k: int) -> list[float]:
    """Features of x * k; all zero for k == 0 (free) and for powers of two (wiring, and a
    negation in the carry chain when k < 0, which costs no LUT).

    Wide x: a base adder of x bits, an explicit negation when every CSD digit is negative
    (nothing to subtract from), and adders that grow with the square of the digit count
    (binary popcount and CSD: yosys does not always find the CSD form). Narrow x (at most
    LUT_INPUTS bits): every product bit is one small LUT function of x."""
    n = csd_digits(k)
    if n <= 1:
        return [0.0] * 5
    if x_bits <= LUT_INPUTS:
        return [0.0, 0.0, 0.0, 0.0, float(significant_bits(k) + x_bits)]
    pop = bin(abs(k) >> trailing_zeros(k)).count("1")
    all_negative = float(all(d < 0 for d in csd_signs(k)))
    return [float(x_bits), all_negative * x_bits, (pop - 1) ** 2 * x_bits / 4, (n - 1) ** 2 * x_bits / 4, 0.0]


def _operand_parts(f):
    """(significand bits, shift bits, carries a sign) of one multiplier operand."""
    if isinstance(f, Minifloat):
        return f.man_bits + 1, max(1, (f.max_exp_field - 1).bit_length()), f.signed
    if isinstance(f, Binary):
        return 1, 0, True
    return f.width, 0, False


def mfmul_features(params: dict, mul_model) -> list[float]:
    """Code-level multiplier: the significand multiplier (priced by ``mul_model``), the barrel
    shifter (output bits x shift bits) and the narrow negation."""
    (sa, ha, na), (sb, hb, nb) = (_operand_parts(parse_format(params["a"])), _operand_parts(parse_format(params["b"])))
    sig = mul_model(sa, sb) if min(sa, sb) > 1 else float(max(sa, sb))
    shift = ha + hb + (1 if ha and hb else 0)
    neg = na or nb
    prod_bits = sa + sb + int(neg)
    return [sig, params["out_bits"] * shift, prod_bits * shift, (sa + sb) * neg, params["out_bits"]]


def adder_bits(n_terms: int, term_bits: float, max_bits: float | None = None) -> float:
    """Total bits of the adders of a balanced tree summing n_terms terms of term_bits bits; with
    ``max_bits`` (a wrapping accumulator) no adder is wider than that: the bits above it wrap
    away and synthesis drops them."""
    if n_terms <= 1:
        return 0.0
    total, level_bits, n = 0.0, term_bits, n_terms
    while n > 1:
        pairs = n // 2
        level_bits += 1
        total += pairs * (level_bits if max_bits is None else min(level_bits, max_bits))
        n = n - pairs
    return total


def thr_steps(n: int) -> int:
    """Comparator levels of the unrolled binary search over n thresholds: ceil(log2(n + 1))."""
    return max(1, math.ceil(math.log2(n + 1))) if n > 0 else 0


def thr_features(n: int, span: int, out_bits: int) -> list[float]:
    """Features of a threshold lookup (fpq::quantize_by_thresholds) over n thresholds that
    differ in ``span`` input bits, with ``out_bits``-bit levels.

    * ``steps x span``: one comparator per search level on the path;
    * the threshold ROMs the comparators read. When n + 1 is a power of two the search is a
      regular tree (mid = lo + a constant) and the ROMs grow as n x span; otherwise mid is a
      data-dependent sum and yosys keeps more of it: n x span x steps (from the table: 2-3x
      the regular cost at n = 200). n counts only up to half of the 2**span input grid: a
      table holding nearly every input value is nearly the identity.
    * the level ROM: (n + 1) x out_bits.
    Chosen by leave-one-out cross-validation on the calibration table (median |rel err| 15%)."""
    if n <= 0:
        return [0.0] * 4
    s = thr_steps(n)
    n_eff = min(n, (1 << min(span, 62)) - n)
    regular = (n + 1) & n == 0
    return [s * span, n_eff * span / 16 if regular else 0.0, 0.0 if regular else n_eff * span * s / 128,
            (n + 1) * out_bits / 16]


def thr_carry_features(n: int, span: int) -> list[float]:
    s = thr_steps(n)
    regular = (n + 1) & n == 0
    return [s * span if regular else 0.0, 0.0 if regular else s * span]


def minifloat_quantizer_shape(fmt: Minifloat, scale_exp: int, in_bits: int, in_frac: int) -> tuple[int, int, int]:
    """(binades with a rounding adder, select candidates, code bits) of the unrolled minifloat
    quantizer ``fpq.to_rtl`` writes (``network.Writer._minifloat``, the HLS project's
    ``fpq::quantize_minifloat``) for ``fmt`` x 2^scale_exp after a signed fixed input of ``in_bits``
    bits, ``in_frac`` of them fractional: a binade above the input's range folds away, one below
    its resolution is a plain shift."""
    m = fmt.man_bits
    emin = fmt.emin + scale_exp
    emaxb = math.frexp(fmt.max_value)[1] - 1 + scale_exp
    lowest = emin - 1 if not fmt.subnormals else emin
    reach = in_bits + 1 - in_frac                 # |x| < 2^reach
    rounders, cands = 0, int(emaxb + 1 < reach)   # the saturation candidate
    for e in range(emaxb, lowest - 1, -1):
        if e >= reach and e > lowest:
            continue
        cands += 1
        ulp = emin if (not fmt.subnormals and e < emin) else max(e, emin) - m
        rounders += int(ulp + in_frac > 0)
    return rounders, cands, emaxb + m - emin + 2


def quant_features(kind: str, p: dict) -> list[float]:
    """Features of one element of a requantizer ``fpq.to_rtl`` writes (params as the calibration
    rows hold them: fmt, scale_exp, in_bits, in_frac, out_bits, out_frac).

    * ``castq`` (an ap_fixed cast): the rounding increment and the saturation compares on the
      input bits kept after the shift, the sticky OR of the bits dropped, the output mux;
    * ``mfq`` (a minifloat): |x| on the input bits, one (mantissa + 3)-bit rounding adder per binade
      the input reaches and resolves, the priority select of the candidates' code bits, the sign
      put back on the output."""
    if kind == "castq":
        dropped = max(0, p["in_frac"] - p["out_frac"])
        kept = max(1, p["in_bits"] - dropped)
        return [float(kept), float(dropped), float(p["out_bits"]), 1.0]
    fmt = parse_format(p["fmt"])
    r, c, cw = minifloat_quantizer_shape(fmt, p["scale_exp"], p["in_bits"], p["in_frac"])
    return [float(p["in_bits"]), float(r * (fmt.man_bits + 3)), float(c * cw), float(p["out_bits"]), 1.0]


def varying_bits(codes, width: int) -> int:
    """Bit positions (of ``width``-bit two's complement codes) in which the codes are not all equal:
    the bits a threshold ROM holds; a constant column folds away."""
    m = (1 << width) - 1
    ks = [int(c) & m for c in codes]
    if not ks:
        return 0
    ors, ands = 0, m
    for k in ks:
        ors, ands = ors | k, ands & k
    return bin(ors & ~ands & m).count("1")


def f32q_features(n: int, cols: int, lv_bits: int) -> list[float]:
    """Features of the float32 network-input lookup of n thresholds whose keys differ in ``cols``
    bits, levels of ``lv_bits`` bits: one comparator of the varying bits per search level, the
    level ROM, the 32-bit key negation of the port. (A float-scaled table varies in every mantissa
    bit, a power-of-two one in few: the po2 e4m3 input table costs half the float-scaled one.)
    Chosen on the 7 fitted lookups, checked on 3 held out (fpq.rtl.calibration)."""
    if n <= 0:
        return [0.0, 0.0, 0.0]
    return [float(cols * thr_steps(n)), (n + 1) * lv_bits / 16, 32.0]


@dataclass
class Fit:
    coef: np.ndarray
    n: int
    mare: float            # median absolute relative error on the fitted rows

    def __call__(self, feats) -> float:
        return float(np.dot(self.coef, feats))


def _fit(X, y) -> Fit:
    X, y = np.asarray(X, float), np.asarray(y, float)
    # relative weighting: small operators matter as much as big ones
    w = 1.0 / np.maximum(y, 4.0)
    coef, _ = nnls(X * w[:, None], y * w)
    pred = X @ coef
    ok = y > 0
    mare = float(np.median(np.abs(pred[ok] - y[ok]) / y[ok])) if ok.any() else 0.0
    return Fit(coef, len(y), mare)


# ----------------------------------------------------------------------------- the model
class OperatorCosts:
    """Measured operator costs with fitted models for what was not measured.

    ``exclude`` drops rows by name before fitting (used by the benchmark's held-out checks)."""

    def __init__(self, path: Path = TABLE, exclude=()):
        self.path = Path(path)
        self.meta = table_meta(self.path)
        rows = [r for r in read_table(self.path) if r["name"] not in set(exclude)]
        self.rows = rows
        self.use_lookup = True   # False: every operator from its fit (the benchmark's held-out check)
        lut = [r for r in rows if r["flow"] == "lut"]
        self._by = {(r["name"], r["flow"]): r for r in rows}

        mul = [r for r in lut if r["kind"] == "mul"]
        # measured multipliers by operand signedness, keyed (a_bits, b_bits); equal signedness
        # is symmetric. A running max makes the measured set itself monotone (synthesis noise).
        self._mul_points = {}
        for r in mul:
            p = r["params"]
            sig = (p["a_signed"], p["b_signed"])
            pts = self._mul_points.setdefault(sig, {})
            pts[(p["a_bits"], p["b_bits"])] = r["lut"]
            if sig[0] == sig[1]:
                pts[(p["b_bits"], p["a_bits"])] = r["lut"]
        for pts in self._mul_points.values():
            for (x, y) in sorted(pts):
                pts[(x, y)] = max([v for (u, w), v in pts.items() if u <= x and w <= y])
        self.mul_fit = _fit([mul_features(r["params"]["a_bits"], r["params"]["b_bits"]) for r in mul],
                            [r["lut"] for r in mul])
        cm = [r for r in lut if r["kind"] == "cmul"]
        # measured constants by (odd part of k, x signed): x_bits -> LUTs (running max over x)
        self._cmul_points = {}
        for r in cm:
            p = r["params"]
            k = int(p["const"])
            if k:
                kk = k >> trailing_zeros(k) if k > 0 else -((-k) >> trailing_zeros(k))
                d = self._cmul_points.setdefault((kk, bool(p["x_signed"])), {})
                d[p["x_bits"]] = max(d.get(p["x_bits"], 0), r["lut"])
        for d in self._cmul_points.values():
            for x in sorted(d):
                d[x] = max(v for u, v in d.items() if u <= x)
        self.cmul_fit = _fit([cmul_features(r["params"]["x_bits"], r["params"]["const"]) for r in cm],
                             [r["lut"] for r in cm])
        mf = [r for r in lut if r["kind"] in ("mfmul", "xnor")]
        self.mfmul_fit = _fit([mfmul_features(r["params"], self._mul_model) for r in mf],
                              [r["lut"] for r in mf]) if mf else None
        add = [r for r in lut if r["kind"] in ("add", "tree")]
        self.add_fit = _fit([[self._add_row_bits(r), 1.0] for r in add], [r["lut"] for r in add])
        xp = [r for r in lut if r["kind"] == "xnorpop"]
        self.xnorpop_fit = _fit([[r["params"]["n"], 1.0] for r in xp], [r["lut"] for r in xp])
        dsp = [r for r in rows if r["flow"] == "dsp"]
        # fabric left around DSP-mapped multipliers (sign handling, the adders between tiles)
        self.dsp_lut_fit = _fit([[max(0, r["params"]["out_bits"] - 36) if r["dsp"] > 1 else 0.0, 1.0]
                                 for r in dsp], [r["lut"] for r in dsp]) if dsp else None
        dense = [r for r in lut if r["kind"] == "dense" and r["params"]["x"] != "binary"]
        self.dense_fit = self._fit_dense(dense) if dense else None
        # binary x binary layers: synthesis makes each output's sum of +-1 terms something between
        # an adder tree and a popcount; priced from measured layers, per output, by fan-in
        # (no simple fit holds: 8 inputs collapse into LUT6 popcounts), interpolated in fan-in
        bd = sorted((r["params"]["n_in"], r["lut"] / r["params"]["n_out"])
                    for r in lut if r["kind"] == "dense" and r["params"]["x"] == "binary")
        self._binary_dense_points = bd
        thr = [r for r in lut if r["kind"] == "thr"]
        if thr:
            def feats(r, f):
                p = r["params"]
                return f(p["n"], p["span"], p["out_bits"]) if f is thr_features else f(p["n"], p["span"])
            self.thr_fit = _fit([feats(r, thr_features) for r in thr], [r["lut"] for r in thr])
            self.thr_carry_fit = _fit([feats(r, thr_carry_features) for r in thr], [r["carry"] for r in thr])
        else:
            self.thr_fit = self.thr_carry_fit = None
        # to_rtl's requantizers, one element each (fpq.rtl.calibration): casts, minifloats, and the
        # float32 network-input lookup (the threshold fit plus the port's key negation)
        self.quant_fits = {k: _fit([quant_features(k, r["params"]) for r in rows_k], [r["lut"] for r in rows_k])
                           for k in ("castq", "mfq") if (rows_k := [r for r in lut if r["kind"] == k])}
        f32 = [r for r in lut if r["kind"] == "f32q"]
        self.f32q_fit = _fit([f32q_features(r["params"]["n"], r["params"]["cols"], r["params"]["lv_bits"]) for r in f32],
                             [r["lut"] for r in f32]) if f32 else None

    def _mul_model(self, a: int, b: int) -> float:
        return max(0.0, self.mul_fit(mul_features(a, b)))

    @staticmethod
    def _add_row_bits(r) -> float:
        p = r["params"]
        if r["kind"] == "add":
            return float(max(p["a_bits"], p["b_bits"]) + 1)
        return adder_bits(p["n"], p["bits"])

    # -- lookups with fallbacks
    def measured(self, name: str, flow: str = "lut"):
        return self._by.get((name, flow)) if self.use_lookup else None

    def mul_luts(self, a: int, b: int, a_signed=True, b_signed=True) -> tuple[float, str]:
        """LUTs of a general a x b multiplier in fabric: the measurement where there is one,
        else the fit clamped between the measured multipliers it dominates and those that
        dominate it (so the estimate never falls when an operand gets wider)."""
        if a == 0 or b == 0:
            return 0.0, "zero"
        sig, key = (bool(a_signed), bool(b_signed)), (a, b)
        if sig == (True, False):     # mixed signedness: the table keys it unsigned operand first
            sig, key = (False, True), (b, a)
        pts = self._mul_points.get(sig, {})
        if self.use_lookup and key in pts:
            return float(pts[key]), "measured"
        f = max(0.0, self.mul_fit(mul_features(a, b)))
        if not self.use_lookup:
            return f, "fit"
        lo = max([v for (x, y), v in pts.items() if x <= key[0] and y <= key[1]], default=0.0)
        hi = min([v for (x, y), v in pts.items() if x >= key[0] and y >= key[1]], default=math.inf)
        return float(min(max(f, lo), hi)), "fit"

    def cmul_luts(self, x_bits: int, k: int, x_signed=True) -> tuple[float, str]:
        """LUTs of x * k for an integer constant k (x in its carrier, k in the weight's carrier):
        the measurement of this constant and input width where there is one, else the fit,
        clamped between the measurements of the same constant at narrower and wider x."""
        k = int(k)
        if k == 0:
            return 0.0, "zero"
        # the cost depends on the odd part of k only: trailing zeros are wiring
        kk = k >> trailing_zeros(k) if k > 0 else -((-k) >> trailing_zeros(k))
        pts = self._cmul_points.get((kk, bool(x_signed)), {}) if self.use_lookup else {}
        if x_bits in pts:
            return float(pts[x_bits]), "measured"
        f = self.cmul_fit(cmul_features(x_bits, kk))
        if x_bits > LUT_INPUTS:   # continuous across the narrow / wide regimes
            f = max(f, self.cmul_fit(cmul_features(LUT_INPUTS, kk)))
        lo = max([v for x, v in pts.items() if x <= x_bits], default=0.0)
        hi = min([v for x, v in pts.items() if x >= x_bits], default=math.inf)
        return float(min(max(f, lo), hi)), "fit"

    def mfmul_luts(self, fa, fb) -> tuple[float, str]:
        """LUTs of the code-level multiplier of two formats (minifloat / binary / int)."""
        from .rtl import multiplier  # names and params come from the generator itself

        op = multiplier(fa, fb)
        for o in (op, multiplier(fb, fa)):   # the table holds one operand order
            r = self.measured(o.name)
            if r:
                return float(r["lut"]), "measured"
        if op.kind == "mul":
            return self.mul_luts(op.params["a_bits"], op.params["b_bits"], op.params["a_signed"],
                                 op.params["b_signed"])
        return max(0.0, self.mfmul_fit(mfmul_features(op.params, self._mul_model))), "fit"

    def add_luts(self, bits: float) -> float:
        return max(0.0, self.add_fit([bits, 1.0])) if bits > 0 else 0.0

    def tree_luts(self, n_terms: int, term_bits: float) -> float:
        b = adder_bits(n_terms, term_bits)
        return max(0.0, self.add_fit([b, 1.0])) if b > 0 else 0.0

    def binary_dense_luts(self, n_in: int, n_out: int) -> float:
        """An unrolled binary x binary layer as fpq's HLS project builds it (+-1 terms summed):
        measured LUTs per output, linear in fan-in between and beyond the measured layers."""
        pts = self._binary_dense_points
        if len(pts) < 2:
            return n_out * self.xnorpop_luts(n_in)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if n_in <= xs[0]:
            per = ys[0] * n_in / xs[0]
        elif n_in >= xs[-1]:
            per = ys[-1] + (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * (n_in - xs[-1])
        else:
            per = float(np.interp(n_in, xs, ys))
        return max(0.0, n_out * per)

    def thr_luts(self, in_bits: int, n: int, out_bits: int, span: int | None = None) -> tuple[float, float]:
        """(LUTs, CARRY4s) of a threshold lookup over a signed ``in_bits``-bit input, n thresholds
        and ``out_bits``-bit levels (the fit: every table is new). ``span``: the input bits the
        thresholds differ in (``rtl.threshold_span``); None bounds it by the input width."""
        if self.thr_fit is None:
            raise RuntimeError(f"{self.path} has no threshold lookup rows (kind 'thr'): run "
                               "`python -m fpq.cost_model.synth --family thr`")
        if n <= 0:
            return 0.0, 0.0   # no threshold: the output is a constant
        span = in_bits if span is None else min(span, in_bits)
        return (max(0.0, self.thr_fit(thr_features(n, span, out_bits))),
                max(0.0, self.thr_carry_fit(thr_carry_features(n, span))))

    def quant_luts(self, fmt, scale_exp: int, in_t, out_t) -> float:
        """LUTs of one element of the requantizer to ``fmt`` x 2^scale_exp from the signed Fixed
        ``in_t`` to the carrier ``out_t``: the circuit ``fpq.to_rtl`` (and the HLS project's cast /
        ``fpq::quantize_minifloat``) builds, priced by the fit on the synthesized quantizers."""
        kind = "mfq" if isinstance(fmt, Minifloat) else "castq"
        if kind not in self.quant_fits:
            raise RuntimeError(f"{self.path} has no {kind} rows: run `python -m fpq.rtl.calibration`")
        p = dict(fmt=str(fmt), scale_exp=int(scale_exp), in_bits=int(in_t.width) + (0 if in_t.signed else 1),
                 in_frac=int(in_t.frac_bits), out_bits=int(out_t.width), out_frac=int(out_t.frac_bits))
        return max(0.0, self.quant_fits[kind](quant_features(kind, p)))

    def float32_lookup_luts(self, n: int, cols: int, lv_bits: int) -> float:
        """LUTs of one element of a network-input quantizer over the float32 port: the order-preserving
        key of the float32 pattern and a lookup of ``n`` thresholds whose keys differ in ``cols``
        bits (``varying_bits``), levels of ``lv_bits`` bits."""
        if self.f32q_fit is None:
            raise RuntimeError(f"{self.path} has no f32q rows: run `python -m fpq.rtl.calibration`")
        return max(0.0, self.f32q_fit(f32q_features(n, cols, lv_bits))) if n > 0 else 0.0

    def xnorpop_luts(self, n: int) -> float:
        return max(0.0, self.xnorpop_fit([n, 1.0])) if n > 0 else 0.0

    def dsp_fabric_luts(self, out_bits: int, tiles: int) -> float:
        if self.dsp_lut_fit is None:
            return 0.0
        return max(0.0, self.dsp_lut_fit([max(0, out_bits - 36) if tiles > 1 else 0.0, 1.0]))

    # -- the unrolled constant-weight dot products (hls4ml Latency, reuse factor 1)
    def dense_features(self, x_bits: int, K: np.ndarray, x_signed=True, wrap_bits=None) -> list[float]:
        """Features of an unrolled layer with integer constant matrix K (n_in, n_out): the sum of
        the constant multipliers' costs and the adder-tree bits of each output. Each distinct
        constant is priced once (a layer has many weights but few distinct codes)."""
        K = np.asarray(K, dtype=np.int64)
        nz = K != 0
        vals, counts = np.unique(K[nz], return_counts=True)
        cm = float(sum(int(c) * self.cmul_luts(x_bits, int(v), x_signed)[0] for v, c in zip(vals, counts)))
        # terms of x * k carry about x_bits + significant bits of k
        n_col = nz.sum(0)
        w_sum = np.where(nz, x_bits + significant_bits_array(K), 0).sum(0)
        tree = sum(adder_bits(int(n), float(w) / int(n), wrap_bits) for n, w in zip(n_col, w_sum) if n)
        return [cm, float(tree), float(np.count_nonzero(n_col))]

    def _fit_dense(self, rows) -> Fit:
        X, y = [], []
        for r in rows:
            p = r["params"]
            K = np.array(p["consts"], dtype=np.int64).reshape(p["n_in"], p["n_out"])
            X.append(self.dense_features(p["x_bits"], K, p["x_signed"]))
            y.append(r["lut"])
        return _fit(X, y)

    def dense_luts(self, x_bits: int, K: np.ndarray, x_signed=True, wrap_bits=None) -> float:
        """``wrap_bits``: the width of a wrapping (narrow) accumulator, which caps the adder tree."""
        f = self.dense_features(x_bits, K, x_signed, wrap_bits)
        if self.dense_fit is None:  # no layer-level calibration: operators plus adders as measured
            return f[0] + self.add_fit([f[1], 0.0])
        return max(0.0, self.dense_fit(f))

    def summary(self) -> dict:
        fits = {**{f"quant_{k}": f for k, f in self.quant_fits.items()}, "f32q": self.f32q_fit, "mul": self.mul_fit, "cmul": self.cmul_fit, "mfmul": self.mfmul_fit, "add": self.add_fit,
                "xnorpop": self.xnorpop_fit, "dense": self.dense_fit, "thr": self.thr_fit,
                "thr_carry": self.thr_carry_fit}
        return {k: {"coef": [round(float(c), 4) for c in f.coef], "rows": f.n, "fit_mare": round(f.mare, 4)}
                for k, f in fits.items() if f is not None}


@functools.lru_cache(maxsize=4)
def default_costs(path: str = str(TABLE)) -> OperatorCosts:
    return OperatorCosts(Path(path))
