// fpq_minifloat.h: exact quantizers on ap_fixed values for fpq's HLS projects.
//
// hls4ml has no minifloat type, so fpq carries minifloat tensors in their exact fixed-point
// carrier (fpq.exact_fixed): every value of the format, times its power-of-two scale, is a
// value of that ap_fixed type. What hls4ml lacks is the step from an exact accumulator to the
// next minifloat tensor: round to nearest, ties to even, in the binade of the value. This
// header does that exactly, for any ExMy, exponent bias, with or without subnormals,
// saturating, on any ap_fixed / ap_ufixed input. It mirrors fpq.numerics.reference (the numpy
// oracle it is tested against with g++) and is synthesizable: no floating point, fixed loops.
//
// The format is passed as integers computed by fpq (Python):
//   M      mantissa bits
//   EMIN   exponent of the smallest normal value, scale exponent included (2^EMIN)
//   EMAXB  exponent of the binade holding the largest finite value (scale included)
//   MAXM   significand of the largest finite value, hidden bit included: max = MAXM * 2^(EMAXB-M)
//   SUBN   subnormals present
//   SIGNED the format has a sign bit (an unsigned format maps negatives to 0)
// The output type must hold every value of the format (its carrier); its fractional bits
// must be at least M - EMIN.
#ifndef FPQ_MINIFLOAT_H_
#define FPQ_MINIFLOAT_H_

#include "ap_fixed.h"
#include "hls_stream.h"
#include "nnet_common.h"  // PRAGMA_DATA_PACK

namespace fpq {

template <class in_T, class out_T, int M, int EMIN, int EMAXB, int MAXM, bool SUBN, bool SIGNED>
out_T quantize_minifloat(in_T x) {
    #pragma HLS INLINE
    static const int W = in_T::width;
    static const int I = in_T::iwidth;
    static const int F = W - I;             // fractional bits of the input
    static const int FO = M - EMIN;         // fractional bits of the format's grid
    static const int CW = EMAXB + FO + 1;   // bits of the largest code on that grid
    // A signed copy one bit wider holds ap_ufixed and ap_fixed inputs alike; one more bit
    // holds the magnitude of the most negative value.
    ap_fixed<W + 2, I + 2> xs = x;
    const bool neg = xs < 0;
    ap_fixed<W + 2, I + 2> mag = neg ? ap_fixed<W + 2, I + 2>(-xs) : xs;
    ap_uint<W + 2> m = mag.range(W + 1, 0);  // |x| * 2^F as an integer

    // position of the leading one (loop without break so that it unrolls into a priority encoder)
    int p = -1;
LeadingOne:
    for (int i = 0; i < W + 2; i++) {
        #pragma HLS UNROLL
        if (m[i]) p = i;
    }

    ap_uint<CW> code = 0;  // |result| * 2^FO
    if (p >= 0) {
        int e = p - F;                    // binade of |x|: 2^e <= |x| < 2^(e+1)
        int ulp = (e < EMIN ? EMIN : e) - M;
        if (!SUBN && e < EMIN) ulp = EMIN;  // no subnormals: round to 0 or to 2^EMIN
        if (e > EMAXB) {
            code = ap_uint<CW>(MAXM) << (EMAXB - M + FO);  // beyond the top binade: saturate
        } else {
            // number of ulps, rounded half to even; at most 2^(M+1)
            ap_uint<M + 3> q;
            int s = ulp + F;  // input bits below the ulp
            if (s <= 0) {
                q = ap_uint<M + 3>(m) << (-s);  // already on the grid (exact: |x| < 2^(ulp + M + 2))
            } else {
                ap_uint<W + 2> kept = m >> s;
                ap_uint<W + 2> rest = m - (kept << s);
                ap_uint<W + 2> half = ap_uint<W + 2>(1) << (s - 1);
                bool up = rest > half || (rest == half && kept[0]);
                q = kept + (up ? 1 : 0);
            }
            if (e == EMAXB && q > MAXM) q = MAXM;  // rounded past the largest finite value
            code = ap_uint<CW>(q) << (ulp + FO);
        }
    }
    ap_ufixed<CW, CW - FO> v;
    v.range(CW - 1, 0) = code;
    if (!neg) return out_T(v);
    if (!SIGNED) return out_T(0);
    ap_fixed<CW + 1, CW + 1 - FO> sv = v;
    return out_T(-sv);
}

// Bipolar binary: +2^S for x >= 0, else -2^S (S: scale exponent, folded into out_T's grid).
template <class in_T, class out_T, int S> out_T quantize_binary(in_T x) {
    #pragma HLS INLINE
    ap_fixed<2, 2> one = x < 0 ? ap_fixed<2, 2>(-1) : ap_fixed<2, 2>(1);
    ap_fixed<2, 2 + S> v;
    v.range(1, 0) = one.range(1, 0);
    return out_T(v);
}

// Binary input quantizer on a float32 input port, with fpq's float32 semantics: the input is
// divided by its scale 2^S in float32 first, so for S >= 1 a tiny negative x underflows to -0
// there and quantizes to +1 (an ap_fixed port would need ~150 bits to see that).
template <class in_T, class out_T, int S> out_T quantize_binary_float(in_T x) {
    #pragma HLS INLINE
    float xs = float(x) / float(1ULL << S);  // exact power of two, S <= 63
    ap_fixed<2, 2> one = xs >= 0.0f ? ap_fixed<2, 2>(1) : ap_fixed<2, 2>(-1);
    ap_fixed<2, 2 + S> v;
    v.range(1, 0) = one.range(1, 0);
    return out_T(v);
}

// Integer-like clamp to [LO, HI] * 2^-FRAC after rounding by the rounding mode of round_T.
// Needed for ranges no ap_fixed overflow mode gives, e.g. narrow int8 [-127, 127]: SAT_SYM
// keeps an in-range -128.
template <class in_T, class out_T, class round_T, long long LO, long long HI>
out_T quantize_clamp(in_T x) {
    #pragma HLS INLINE
    round_T r = x;  // round_T: the output grid with one extra integer bit and AP_SAT
    round_T lo, hi;
    lo.range(round_T::width - 1, 0) = LO;
    hi.range(round_T::width - 1, 0) = HI;
    if (r < lo) r = lo;
    if (r > hi) r = hi;
    return out_T(r);
}

// Any monotone quantizer as a lookup: th[0..N-1] ascending, lv[0..N]; the result is lv[k] with
// k = the number of thresholds <= x, found by binary search (ceil(log2(N+1)) comparisons).
// fpq computes both tables from its own quantizer (fpq/hls/thresholds.py), which is how a
// scale that is not a power of two stays exact: no division by it happens in hardware.
template <class in_T, class out_T, int N>
out_T quantize_by_thresholds(in_T x, const in_T th[N], const out_T lv[N + 1]) {
    #pragma HLS INLINE
    int lo = 0, hi = N;  // the answer lies in [lo, hi]
ThresholdSearch:
    for (int step = 0; step < 20; step++) {  // 2^20 > any table fpq writes
        #pragma HLS UNROLL
        if (lo < hi) {
            int mid = (lo + hi) / 2;
            if (x >= th[mid]) lo = mid + 1;
            else hi = mid;
        }
    }
    return lv[lo];
}

// Element-wise layer wrappers used by fpq's hls4ml layer FpqQuantize. CONFIG_T supplies
// n_in and a static template function `quantize<in, out>(x)` that applies one quantizer.
template <class data_T, class res_T, typename CONFIG_T>
void quantize_layer(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in]) {
    #pragma HLS PIPELINE
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
        #pragma HLS UNROLL
        res[i] = CONFIG_T::template quantize<data_T, res_T>(data[i]);
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void quantize_layer(hls::stream<data_T> &data, hls::stream<res_T> &res) {
QuantizeLoop:
    for (unsigned i = 0; i < CONFIG_T::n_in / data_T::size; i++) {
        #pragma HLS PIPELINE
        data_T in = data.read();
        res_T out;
        PRAGMA_DATA_PACK(out)
    QuantizePack:
        for (unsigned j = 0; j < data_T::size; j++) {
            #pragma HLS UNROLL
            out[j] = CONFIG_T::template quantize<typename data_T::value_type, typename res_T::value_type>(in[j]);
        }
        res.write(out);
    }
}

} // namespace fpq

#endif
