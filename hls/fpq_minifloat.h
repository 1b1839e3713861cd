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

// Window pooling of fpq's hls4ml layer FpqPool: the max or the exact sum over a pool_height x
// pool_width window, any stride, any padding that leaves a real value in every window. A padded
// position holds no value at all: the max ignores it (exact -inf padding, for signed and unsigned
// types alike) and the sum adds nothing (zero padding). A sum pool's divisor is not applied here:
// the quantizer after it divides exactly (a threshold lookup over the exact sum). hls4ml's own
// pooling pads a max with the sign bit set (not the minimum of an unsigned type), divides every
// average in its accumulator type, and streams only windows with stride == size and no padding.
// CONFIG_T: in_height, in_width, n_filt, out_height, out_width, pool_height, pool_width,
// stride_height, stride_width, pad_top, pad_left (pad_bottom / pad_right follow from out_*),
// is_max, accum_t (the input type for a max, the exact sum type for a sum).
template <class T, typename CONFIG_T>
typename CONFIG_T::accum_t pool_reduce(const T win[CONFIG_T::pool_height * CONFIG_T::pool_width],
                                       const bool valid[CONFIG_T::pool_height * CONFIG_T::pool_width]) {
    #pragma HLS INLINE
    typename CONFIG_T::accum_t acc = 0;
    bool any = false;
PoolReduce:
    for (unsigned i = 0; i < CONFIG_T::pool_height * CONFIG_T::pool_width; i++) {
        #pragma HLS UNROLL
        if (!valid[i]) continue;
        if (CONFIG_T::is_max) {
            if (!any || win[i] > acc) acc = win[i];
        } else {
            acc += win[i];
        }
        any = true;
    }
    return acc;
}

template <class data_T, class res_T, typename CONFIG_T>
void pool_layer(data_T data[CONFIG_T::in_height * CONFIG_T::in_width * CONFIG_T::n_filt],
                res_T res[CONFIG_T::out_height * CONFIG_T::out_width * CONFIG_T::n_filt]) {
    #pragma HLS PIPELINE
    const int H = CONFIG_T::in_height, W = CONFIG_T::in_width, C = CONFIG_T::n_filt;
    const int KH = CONFIG_T::pool_height, KW = CONFIG_T::pool_width;
PoolRows:
    for (int oh = 0; oh < (int)CONFIG_T::out_height; oh++) {
    PoolCols:
        for (int ow = 0; ow < (int)CONFIG_T::out_width; ow++) {
        PoolChannels:
            for (int c = 0; c < C; c++) {
                data_T win[KH * KW];
                bool valid[KH * KW];
                for (int kh = 0; kh < KH; kh++) {
                    for (int kw = 0; kw < KW; kw++) {
                        int ih = oh * (int)CONFIG_T::stride_height + kh - (int)CONFIG_T::pad_top;
                        int iw = ow * (int)CONFIG_T::stride_width + kw - (int)CONFIG_T::pad_left;
                        bool v = ih >= 0 && ih < H && iw >= 0 && iw < W;
                        valid[kh * KW + kw] = v;
                        win[kh * KW + kw] = v ? data[(ih * W + iw) * C + c] : data_T(0);
                    }
                }
                res[(oh * CONFIG_T::out_width + ow) * C + c] = pool_reduce<data_T, CONFIG_T>(win, valid);
            }
        }
    }
}

// io_stream: one pixel (its n_filt channels) per stream word in, one per output pixel out. The
// last pool_height input rows are kept in a ring of row buffers (static: off the C-sim stack, a
// memory in hardware); an output row is computed as soon as its last input row has arrived.
template <class data_T, class res_T, typename CONFIG_T>
void pool_layer(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    typedef typename data_T::value_type T;
    const int H = CONFIG_T::in_height, W = CONFIG_T::in_width, C = CONFIG_T::n_filt;
    const int KH = CONFIG_T::pool_height, KW = CONFIG_T::pool_width;
    static_assert(data_T::size == CONFIG_T::n_filt && res_T::size == CONFIG_T::n_filt,
                  "fpq::pool_layer streams one pixel (all its channels) per word");
    static T rows[KH][W * C];
    int oh = 0;
PoolInRows:
    for (int ih = 0; ih < H; ih++) {
    PoolInCols:
        for (int iw = 0; iw < W; iw++) {
            #pragma HLS PIPELINE
            data_T px = data.read();
            for (int c = 0; c < C; c++) {
                #pragma HLS UNROLL
                rows[ih % KH][iw * C + c] = px[c];
            }
        }
    PoolOutRows:
        while (oh < (int)CONFIG_T::out_height) {
            int last = oh * (int)CONFIG_T::stride_height - (int)CONFIG_T::pad_top + KH - 1;
            if ((last < H - 1 ? last : H - 1) != ih) break;
        PoolOutCols:
            for (int ow = 0; ow < (int)CONFIG_T::out_width; ow++) {
                #pragma HLS PIPELINE
                res_T out;
                PRAGMA_DATA_PACK(out)
                for (int c = 0; c < C; c++) {
                    #pragma HLS UNROLL
                    T win[KH * KW];
                    bool valid[KH * KW];
                    for (int kh = 0; kh < KH; kh++) {
                        for (int kw = 0; kw < KW; kw++) {
                            int r = oh * (int)CONFIG_T::stride_height + kh - (int)CONFIG_T::pad_top;
                            int iw = ow * (int)CONFIG_T::stride_width + kw - (int)CONFIG_T::pad_left;
                            bool v = r >= 0 && r < H && iw >= 0 && iw < W;
                            valid[kh * KW + kw] = v;
                            win[kh * KW + kw] = v ? rows[r % KH][iw * C + c] : T(0);
                        }
                    }
                    out[c] = pool_reduce<T, CONFIG_T>(win, valid);
                }
                res.write(out);
            }
            oh++;
        }
    }
}

} // namespace fpq

#endif
