// fpq: softmax and LayerNorm over the last axis as exact fixed-point pipelines.
//
// The same integer recipe as fpq.numerics.normalization (its docstring defines each step and
// where it rounds; RHU = round half up, i.e. (v + 2^(s-1)) >> s with an arithmetic shift). The
// input's raw codes k (x = k 2^-in_frac) are read through an ap_fixed of in_frac fractional bits;
// every later step is ap_int / ap_uint arithmetic of bounded width (no float, no transcendental
// function at run time: exp is a table the Python side wrote into CONFIG_T). Rows of n_row values
// are contiguous (the normalized axis is the last, innermost one).
//
// CONFIG_T (written by fpq.hls.normalization): n_in, n_row, io_type, reuse_factor, a static
// template function row<in_T, out_T>(x, y) calling softmax_row / layernorm_row, kw, typedefs
// kfix_t (ap_fixed<KW, KW - in_frac>) and k_t (ap_int<KW>), and
//   softmax:   shift, offset, exp_frac, recip_bits, out_frac, sum_t, static exp_at(i)
//   layernorm: n, eps_int, norm_bits, rsqrt_frac, z_frac, y_shift (Fy - Fo, may be < 0), y_bits,
//              y_frac, static gamma_at(i) / beta_at(i) (already shifted onto the 2^-Fy grid)
#ifndef FPQ_NORMALIZATION_H_
#define FPQ_NORMALIZATION_H_

#include "ap_fixed.h"
#include "ap_int.h"
#include "hls_stream.h"
#include "nnet_common.h"
#include "fpq_stream.h"

namespace fpq {

template <class data_T, typename CONFIG_T> typename CONFIG_T::k_t raw_code(data_T x) {
    #pragma HLS INLINE
    typename CONFIG_T::kfix_t v = x;   // exact: x lies on the 2^-in_frac grid and in range
    typename CONFIG_T::k_t k;
    k.range(CONFIG_T::kw - 1, 0) = v.range(CONFIG_T::kw - 1, 0);
    return k;
}

template <class data_T, class res_T, typename CONFIG_T>
void softmax_row(const data_T x[CONFIG_T::n_row], res_T y[CONFIG_T::n_row]) {
    #pragma HLS INLINE
    typedef typename CONFIG_T::k_t k_t;
    k_t k[CONFIG_T::n_row];
    ap_uint<CONFIG_T::exp_frac + 1> e[CONFIG_T::n_row];
    for (unsigned i = 0; i < CONFIG_T::n_row; i++) {
        #pragma HLS UNROLL
        k[i] = raw_code<data_T, CONFIG_T>(x[i]);
    }
    k_t m = k[0];
    for (unsigned i = 1; i < CONFIG_T::n_row; i++) {
        #pragma HLS UNROLL
        if (k[i] > m) m = k[i];
    }
    typename CONFIG_T::sum_t s = 0;
    for (unsigned i = 0; i < CONFIG_T::n_row; i++) {
        #pragma HLS UNROLL
        ap_int<CONFIG_T::kw + 2> d = k[i] - m;
        ap_int<CONFIG_T::kw + 2> t = (d + ap_int<CONFIG_T::kw + 2>((1 << CONFIG_T::shift) >> 1)) >> CONFIG_T::shift;
        e[i] = (t >= -(int)CONFIG_T::offset) ? CONFIG_T::exp_at((int)t + (int)CONFIG_T::offset)
                                              : ap_uint<CONFIG_T::exp_frac + 1>(0);
        s += e[i];
    }
    ap_uint<CONFIG_T::recip_bits + 1> num = (ap_uint<CONFIG_T::recip_bits + 1>(1) << CONFIG_T::recip_bits) + (s >> 1);
    ap_uint<CONFIG_T::recip_bits + 1> r = num / s;
    for (unsigned i = 0; i < CONFIG_T::n_row; i++) {
        #pragma HLS UNROLL
        ap_uint<CONFIG_T::recip_bits + CONFIG_T::exp_frac + 3> p = e[i] * r;
        const int sh = CONFIG_T::recip_bits - CONFIG_T::out_frac;
        ap_uint<CONFIG_T::out_frac + 2> q = (p + (ap_uint<CONFIG_T::recip_bits + CONFIG_T::exp_frac + 3>(1) << (sh - 1))) >> sh;
        ap_ufixed<CONFIG_T::out_frac + 2, 2> yf;
        yf.range(CONFIG_T::out_frac + 1, 0) = q.range(CONFIG_T::out_frac + 1, 0);
        y[i] = yf;
    }
}

// floor(sqrt(a)) of a < 2^62, digit by digit (32 fixed steps, exact).
inline ap_uint<32> isqrt62(ap_uint<62> a) {
    #pragma HLS INLINE
    ap_uint<64> op = a, res = 0;
    for (int b = 30; b >= 0; b--) {
        #pragma HLS UNROLL
        ap_uint<64> one = ap_uint<64>(1) << (2 * b);
        if (op >= res + one) {
            op -= res + one;
            res = (res >> 1) + one;
        } else {
            res >>= 1;
        }
    }
    return res;
}

template <class data_T, class res_T, typename CONFIG_T>
void layernorm_row(const data_T x[CONFIG_T::n_row], res_T y[CONFIG_T::n_row]) {
    #pragma HLS INLINE
    typedef ap_int<64> w_t;   // the recipe keeps every intermediate below 2^62 (checked in Python)
    typename CONFIG_T::k_t k[CONFIG_T::n_row];
    w_t d[CONFIG_T::n_row];
    w_t s = 0;
    for (unsigned i = 0; i < CONFIG_T::n_row; i++) {
        #pragma HLS UNROLL
        k[i] = raw_code<data_T, CONFIG_T>(x[i]);
        s += k[i];
    }
    ap_uint<63> v = 0;
    for (unsigned i = 0; i < CONFIG_T::n_row; i++) {
        #pragma HLS UNROLL
        d[i] = w_t(CONFIG_T::n_row) * k[i] - s;
        v += ap_uint<63>(d[i] * d[i]);
    }
    ap_uint<63> u_full = ap_uint<63>(CONFIG_T::n_row) * v + ap_uint<63>(CONFIG_T::eps_int);
    int j = 0;
    for (int i = 0; i <= (62 - CONFIG_T::norm_bits) / 2; i++) {
        #pragma HLS UNROLL
        if (u_full >= (ap_uint<64>(1) << (CONFIG_T::norm_bits + 2 * i))) j++;
    }
    ap_uint<63> u = u_full >> (2 * j);
    if (u == 0) u = 1;
    ap_uint<62> q = (ap_uint<63>(1) << (2 * CONFIG_T::rsqrt_frac)) / u;
    ap_uint<32> inv = isqrt62(q);
    const int base = CONFIG_T::rsqrt_frac - CONFIG_T::z_frac;
    for (unsigned i = 0; i < CONFIG_T::n_row; i++) {
        #pragma HLS UNROLL
        int sh = base + j;
        w_t p = w_t(CONFIG_T::n_row) * d[i] * w_t(inv);
        w_t z = (p + (w_t(1) << (sh - 1))) >> sh;
        w_t yx = z * w_t(CONFIG_T::gamma_at(i)) + w_t(CONFIG_T::beta_at(i));
        w_t yv = CONFIG_T::y_shift > 0 ? w_t((yx + (w_t(1) << (CONFIG_T::y_shift - 1))) >> CONFIG_T::y_shift)
                                       : w_t(yx << (-CONFIG_T::y_shift));
        const w_t top = (w_t(1) << (CONFIG_T::y_bits - 1)) - 1;
        if (yv > top) yv = top;
        if (yv < -top - 1) yv = -top - 1;
        ap_fixed<CONFIG_T::y_bits, CONFIG_T::y_bits - CONFIG_T::y_frac> yf;
        yf.range(CONFIG_T::y_bits - 1, 0) = yv.range(CONFIG_T::y_bits - 1, 0);
        y[i] = yf;
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void rownorm_layer(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in]) {
    #pragma HLS PIPELINE
Rows:
    for (unsigned r = 0; r < CONFIG_T::n_in / CONFIG_T::n_row; r++) {
        CONFIG_T::template row<data_T, res_T>(data + r * CONFIG_T::n_row, res + r * CONFIG_T::n_row);
    }
}

// io_stream: the rows are gathered from the stream words (in order), computed, written back in
// words of the output's size.
template <class data_T, class res_T, typename CONFIG_T>
void rownorm_layer(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    typedef typename data_T::value_type in_t;
    typedef typename res_T::value_type out_t;
    in_t buf[CONFIG_T::n_in];
    out_t out[CONFIG_T::n_in];
    stream_to_array<data_T, CONFIG_T::n_in>(data, buf);
Rows:
    for (unsigned r = 0; r < CONFIG_T::n_in / CONFIG_T::n_row; r++) {
        CONFIG_T::template row<in_t, out_t>(buf + r * CONFIG_T::n_row, out + r * CONFIG_T::n_row);
    }
    array_to_stream<res_T, CONFIG_T::n_in>(out, res);
}

} // namespace fpq

#endif
