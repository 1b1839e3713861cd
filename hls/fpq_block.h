// fpq_block.h: the block-scaled datapath (OCP MX, NVFP4, block<ELEM,SCALE,K>) of fpq's HLS
// projects: fpq's hls4ml layers FpqBlockQuant, FpqBlockDense and FpqBlockConv (fpq/hls/blocks.py). It computes
// exactly what the numpy reference fpq.numerics.blocks (quantization) and fpq.numerics.block_dot
// (the exact dot product, rounded to odd at 53 bits before the next quantizer) define.
//
// A block-quantized tensor travels as one word per value (``word_bits`` bits):
//   bit 0                      the sign of the element
//   bits 1 .. idx_bits         the element's magnitude index: its rank among the element format's
//                              non-negative values (a minifloat's code without its sign bit)
//   bits idx_bits + 1 ..       the block's scale code: E8M0's code e + 127, or the rank of the
//                              block scale among the scale format's normal values (NVFP4: ue4m3)
// Every value of a block carries its block's scale code (the wire of one block holds k copies;
// a design that stores the scale once per block is the same circuit after sharing).
//
// Quantization (FpqBlockQuant): per block, amax = max |x|; E8M0: e = floor(log2 amax) - emax_elem (OCP;
// ceil / even / rceil: block_scale)
// clamped to -127 .. 127 (-127 for a zero block: the leading-one position of amax); a scale with
// mantissa bits: the rank of RNE(amax / (max_elem * s_t)) among the scale's normal values,
// saturating, at least the smallest normal, found by comparing amax with the static thresholds
// midpoint * max_elem * s_t (s_t: the static float32 tensor scale). Elements: RNE(|x| / S),
// saturating, by comparing |x| with midpoint * S (per block: small integer products and exponent
// adds). Every comparison is between exact numbers (the thresholds have at most ~40 significant
// bits), so no division happens and none rounds. The comparisons are written on C++ doubles, which
// hold every operand exactly (a sign, an exponent and a significand of at most 53 bits).
// The input of a block quantizer is the float32 port or the exact sum of a FpqBlockDense; the sum
// is first rounded to odd at 53 bits (exact_double), as the reference does: rounding to odd keeps
// every comparison with a number of at most 52 significant bits, and floor(log2 |x|).
//
// Dot product (FpqBlockDense): per pair of (sub)blocks of g = gcd(k_x, k_w) values, the exact
// integer sum of element products, times both scales' significands, shifted by the sum of both
// scale exponents into an exact integer accumulator (a Kulisch accumulator: wide enough for every
// exponent the two scale formats allow); then times the product of the two static tensor scales,
// plus the bias, all exact. fpq computes every width in Python (fpq/hls/blocks.py).
// Convolution (FpqBlockConv): the same dot product per output pixel, output channel and kernel tap
// over one input pixel's channels (blocks along the channels, fpq.numerics.block_conv's layout).
#ifndef FPQ_BLOCK_H_
#define FPQ_BLOCK_H_

#include <cmath>

#include "ap_fixed.h"
#include "ap_int.h"
#include "hls_stream.h"
#include "nnet_common.h"  // PRAGMA_DATA_PACK
#include "fpq_stream.h"  // stream_to_array, array_to_stream

namespace fpq {

// An integer v times 2^lsb as a double, rounded to odd at 53 bits (exact when it fits).
template <int W> double ro53_int(ap_int<W> v, int lsb) {
    #pragma HLS INLINE
    const bool neg = v < 0;
    ap_uint<W> m = neg ? ap_uint<W>(-v) : ap_uint<W>(v);  // |v| (2^(W-1) fits W unsigned bits)
    int p = -1;
BlockLeadingOne:
    for (int i = 0; i < W; i++) {
        #pragma HLS UNROLL
        if (m[i]) p = i;
    }
    if (p < 0) return 0.0;
    const int s = p > 52 ? p - 52 : 0;
    ap_uint<W> top = m >> s;
    unsigned long long t = top.to_uint64();
    if (s > 0 && (top << s) != m) t |= 1ULL;  // sticky: round to odd
    const double d = std::ldexp(double(t), s + lsb);
    return neg ? -d : d;
}

inline double exact_double(float x) { return double(x); }
inline double exact_double(double x) { return x; }

template <int W, int I, ap_q_mode Q, ap_o_mode O, int N> double exact_double(ap_fixed<W, I, Q, O, N> x) {
    #pragma HLS INLINE
    ap_int<W> raw;
    raw.range(W - 1, 0) = x.range(W - 1, 0);
    return ro53_int<W>(raw, I - W);
}

template <int W, int I, ap_q_mode Q, ap_o_mode O, int N> double exact_double(ap_ufixed<W, I, Q, O, N> x) {
    #pragma HLS INLINE
    ap_int<W + 1> raw = 0;
    raw.range(W - 1, 0) = x.range(W - 1, 0);
    return ro53_int<W + 1>(raw, I - W);
}

// The number of ascending thresholds t_j = th(j) that a passes, ties to even:
// a > t_j, or a == t_j and the value above t_j has an even code (up(j)).
template <int N, class TH, class UP> int round_rank(double a, TH th, UP up) {
    #pragma HLS INLINE
    int lo = 0, hi = N;
BlockRankSearch:
    for (int step = 0; step < 12; step++) {  // 2^12 > any element or scale format fpq builds
        #pragma HLS UNROLL
        if (lo < hi) {
            const int mid = (lo + hi) / 2;
            const double t = th(mid);
            if (a > t || (a == t && up(mid))) lo = mid + 1;
            else hi = mid;
        }
    }
    return lo;
}

struct table_th {
    const double *t;
    double operator()(int j) const { return t[j]; }
};
template <class CONFIG_T> struct elem_up {
    bool operator()(int j) const { return CONFIG_T::elem_up(j); }
};
template <class CONFIG_T> struct scale_th {
    double operator()(int j) const { return CONFIG_T::scale_th(j); }
};
template <class CONFIG_T> struct scale_up {
    bool operator()(int j) const { return CONFIG_T::scale_up(j); }
};

// The block scale of a block of largest magnitude amax: its code and the value S = sig * 2^ex that
// divides the elements (E8M0: sig = 1; else the block scale's significand times the static tensor
// scale's, an integer product of at most 28 bits).
template <class CONFIG_T, bool PO2> struct block_scale;

// E8M0 scale rounding (CONFIG_T::scale_mode; fpq.numerics.blocks.e8m0_exponents is the reference):
//   0 floor (OCP MX v1.0): e = floor(log2 amax) - emax_elem
//   1 ceil:  one more unless amax is a power of two
//   2 even:  one more when amax, rounded half-up to the element's P significant bits, carries into
//            the next binade: its significand m (amax = m 2^fe, m in [0.5, 1)) >= even_th = 1 - 2^-(P+1)
//   3 rceil: the smallest e with elem_max 2^e >= amax: with elem_max = me 2^ee, e = fe - ee + (m > me)
// (torchao's names for 1..3). Only exact comparisons of significands: frexp is exact. torchao 0.18's
// rceil is one code low in a corner case (measured: a block maximum one float32 ulp above
// elem_max 2^e, e.g. mxfp4 amax = 96.0000076 -> torchao code 131, its largest element then
// saturates); fpq follows the definition (no element saturates), as its numpy reference does
// (tests/test_block_formats.py::test_rceil_corner_vs_torchao, tests/test_block_hls_cpp.py).
template <class CONFIG_T> struct block_scale<CONFIG_T, true> {
    static void of(double amax, int &scode, long long &sig, int &ex) {
        #pragma HLS INLINE
        int e = -127;  // a zero block: the smallest scale, code 0x00
        if (amax != 0.0) {
            int fe;
            const double m = std::frexp(amax, &fe);  // amax = m 2^fe, m in [0.5, 1): floor(log2 amax) = fe - 1
            e = fe - 1 - CONFIG_T::emax_elem;
            if (CONFIG_T::scale_mode == 1) e += (m != 0.5);
            if (CONFIG_T::scale_mode == 2) e += (m >= CONFIG_T::even_th);
            if (CONFIG_T::scale_mode == 3) e = fe - CONFIG_T::max_ee + (m > CONFIG_T::max_me);
            if (e < -127) e = -127;
            if (e > 127) e = 127;
        }
        scode = e + 127;
        sig = 1;
        ex = e;
    }
};

template <class CONFIG_T> struct block_scale<CONFIG_T, false> {  // a scale with mantissa bits
    static void of(double amax, int &scode, long long &sig, int &ex) {
        #pragma HLS INLINE
        scode = round_rank<CONFIG_T::n_scale_mid>(amax, scale_th<CONFIG_T>(), scale_up<CONFIG_T>());
        sig = CONFIG_T::scale_sig(scode) * CONFIG_T::st_sig;
        ex = CONFIG_T::scale_exp(scode) + CONFIG_T::st_exp;
    }
};

// FpqBlockQuant (io_parallel): n_in values in rows of n_chan, each row in blocks of k (the last one
// zero-padded) -> one word per value (see the top). Value c of row r is data[(r / row_inner) *
// row_outer + r % row_inner + c * row_stride]: an MLP's vector is one row (stride 1); a channels-last
// feature map blocked along its channels a row per pixel (inner 1, outer n_chan, stride 1); blocked
// along its width (torch's last axis) a row per (height, channel) (inner C, outer W C, stride C).
// CONFIG_T: n_in, n_chan, row_inner, row_outer, row_stride, k, n_blocks (per row), po2, emax_elem, scale_mode, even_th, max_me, max_ee, idx_bits,
// word_bits, n_elem_mid, elem_mid_sig(j), elem_mid_exp(j), elem_up(j); a tensor-scaled format also
// n_scale_mid, scale_th(j), scale_up(j), scale_sig(c), scale_exp(c), st_sig, st_exp.
template <typename CONFIG_T> unsigned block_index(unsigned r, unsigned c) {
    #pragma HLS INLINE
    return (r / CONFIG_T::row_inner) * CONFIG_T::row_outer + r % CONFIG_T::row_inner + c * CONFIG_T::row_stride;
}

template <class data_T, class res_T, typename CONFIG_T>
void block_quant_layer(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in]) {
    #pragma HLS PIPELINE
BlockQuantRows:
    for (unsigned r = 0; r < CONFIG_T::n_in / CONFIG_T::n_chan; r++) {
        #pragma HLS UNROLL
    BlockQuantBlocks:
        for (unsigned b = 0; b < CONFIG_T::n_blocks; b++) {
            #pragma HLS UNROLL
            double v[CONFIG_T::k];
            double amax = 0.0;
        BlockQuantMax:
            for (unsigned t = 0; t < CONFIG_T::k; t++) {
                #pragma HLS UNROLL
                const unsigned c = b * CONFIG_T::k + t;
                v[t] = c < CONFIG_T::n_chan ? exact_double(data[block_index<CONFIG_T>(r, c)]) : 0.0;  // zero padding
                const double a = std::fabs(v[t]);
                if (a > amax) amax = a;
            }
            int scode, ex;
            long long sig;
            block_scale<CONFIG_T, CONFIG_T::po2>::of(amax, scode, sig, ex);
            double thr[CONFIG_T::n_elem_mid];  // the element grid's midpoints x S: exact (<= 53 bits)
        BlockQuantThresholds:
            for (int j = 0; j < CONFIG_T::n_elem_mid; j++) {
                #pragma HLS UNROLL
                thr[j] = std::ldexp(double(CONFIG_T::elem_mid_sig(j) * sig), CONFIG_T::elem_mid_exp(j) + ex);
            }
            const table_th th = {thr};
        BlockQuantElements:
            for (unsigned t = 0; t < CONFIG_T::k; t++) {
                #pragma HLS UNROLL
                const unsigned c = b * CONFIG_T::k + t;
                if (c >= CONFIG_T::n_chan) continue;
                const int j = round_rank<CONFIG_T::n_elem_mid>(std::fabs(v[t]), th, elem_up<CONFIG_T>());
                ap_uint<CONFIG_T::word_bits> w = ap_uint<CONFIG_T::word_bits>(scode);
                w = (w << (CONFIG_T::idx_bits + 1)) | (ap_uint<CONFIG_T::word_bits>(j) << 1);
                if (v[t] < 0 && j > 0) w[0] = 1;
                res[block_index<CONFIG_T>(r, c)].range(CONFIG_T::word_bits - 1, 0) = w;
            }
        }
    }
}

// ReLU of a block word: a negative element becomes +0 (the block's scale code stays).
template <class in_T, class out_T, int IDX_BITS> out_T block_relu(in_T x) {
    #pragma HLS INLINE
    ap_uint<in_T::width> w = x.range(in_T::width - 1, 0);
    if (w[0]) w.range(IDX_BITS, 0) = 0;
    out_T r;
    r.range(out_T::width - 1, 0) = w;
    return r;
}

// A block word -> its exact value in out_T (ap_fixed with LSB 2^(elem lsb + lowest scale exponent
// + tensor-scale exponent)): +-(elem_int * sig * STM) << (exp - EXP_MIN).
template <class in_T, class out_T, int IDX_BITS, int SCALE_BITS>
out_T block_decode(in_T x, const long long elem_int[], const long long sig[], const int exp[], long long STM,
                   int EXP_MIN) {
    #pragma HLS INLINE
    ap_uint<in_T::width> w = x.range(in_T::width - 1, 0);
    const int idx = w.range(IDX_BITS, 1).to_int();
    const int sc = w.range(IDX_BITS + SCALE_BITS, IDX_BITS + 1).to_int();
    ap_int<out_T::width> m = ap_int<out_T::width>(elem_int[idx]) * sig[sc] * STM;
    m <<= (exp[sc] - EXP_MIN);
    if (w[0]) m = -m;
    out_T r;
    r.range(out_T::width - 1, 0) = m.range(out_T::width - 1, 0);
    return r;
}

// One row of a block dot product into the exact accumulator: the n values x[0 .. n) (block words)
// against row ``wrow`` of the static weights (element words w_word(wrow * n + i), block scale codes
// w_scale(wrow * nbw + i / kw)), per sub-block of g values (n_sub = ceil(n / g); zero padding adds
// nothing). A sub-block lies inside one block of each operand (g divides both block sizes).
template <class data_T, typename CONFIG_T>
void block_dot_row(const data_T *x, unsigned n, unsigned wrow, typename CONFIG_T::acc_t &acc) {
    #pragma HLS INLINE
    typedef typename CONFIG_T::psum_t psum_t;
    typedef typename CONFIG_T::term_t term_t;
    typedef typename CONFIG_T::acc_t acc_t;
    const int XI = CONFIG_T::x_idx_bits, WI = CONFIG_T::w_idx_bits;
BlockDotSub:
    for (unsigned s = 0; s < CONFIG_T::n_sub; s++) {
        #pragma HLS UNROLL
        const unsigned i0 = s * CONFIG_T::g;
        if (i0 >= n) continue;  // a padded sub-block: zeros
        psum_t p = 0;
    BlockDotProducts:
        for (unsigned t = 0; t < CONFIG_T::g; t++) {
            #pragma HLS UNROLL
            const unsigned i = i0 + t;
            if (i >= n) continue;
            ap_uint<CONFIG_T::x_word_bits> xw = x[i].range(CONFIG_T::x_word_bits - 1, 0);
            const unsigned ww = CONFIG_T::w_word(wrow * n + i);
            psum_t xe = CONFIG_T::x_elem(xw.range(XI, 1).to_int());
            psum_t we = CONFIG_T::w_elem((ww >> 1) & ((1u << WI) - 1));
            psum_t pr = xe * we;
            p += (xw[0] != (ww & 1u)) ? psum_t(-pr) : pr;
        }
        ap_uint<CONFIG_T::x_word_bits> x0 = x[i0].range(CONFIG_T::x_word_bits - 1, 0);
        const int xc = (x0 >> (XI + 1)).to_int();
        const int wc = CONFIG_T::w_scale(wrow * CONFIG_T::nbw + i0 / CONFIG_T::kw);
        term_t term = term_t(p) * CONFIG_T::x_sig(xc) * CONFIG_T::w_sig(wc);
        acc += acc_t(term) << (CONFIG_T::x_exp(xc) + CONFIG_T::w_exp(wc) - CONFIG_T::e_min);
    }
}

// The exact result of output o: the accumulator times the tensor scales' product, plus the bias.
template <class res_T, typename CONFIG_T> res_T block_finish(typename CONFIG_T::acc_t acc, unsigned o) {
    #pragma HLS INLINE
    typedef typename CONFIG_T::y_t y_t;
    y_t y = y_t(acc) * CONFIG_T::cm;
    y <<= CONFIG_T::acc_shift;
    y += y_t(CONFIG_T::bias_int(o)) << CONFIG_T::bias_shift;
    res_T r;
    r.range(res_T::width - 1, 0) = y.range(res_T::width - 1, 0);
    return r;
}

// FpqBlockDense (io_parallel): y[o] = sum_i x[i] w[o][i] + b[o], exact (see the top).
// CONFIG_T: n_in, n_out, g, n_sub, kw, nbw, x_idx_bits, x_word_bits, w_idx_bits, x_elem(i),
// w_elem(i), x_sig(c), x_exp(c), w_sig(c), w_exp(c), w_word(n) (element sign | index),
// w_scale(n) (per weight block), bias_int(o), e_min, cm (the tensor scales' product significand),
// acc_shift, bias_shift; types psum_t, term_t, acc_t, y_t (ap_int of the exact widths).
template <class data_T, class res_T, typename CONFIG_T>
void block_dense(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_out]) {
    #pragma HLS PIPELINE
BlockDenseOut:
    for (unsigned o = 0; o < CONFIG_T::n_out; o++) {
        #pragma HLS UNROLL
        typename CONFIG_T::acc_t acc = 0;
        block_dot_row<data_T, CONFIG_T>(data, CONFIG_T::n_in, o, acc);
        res[o] = block_finish<res_T, CONFIG_T>(acc, o);
    }
}

// FpqBlockConv (io_parallel): a Conv1D / Conv2D (groups 1) of a channels-last feature map of block
// words whose blocks run along the channels of each pixel, with static weights blocked along the
// input channels of each output channel and kernel tap (fpq.numerics.block_conv, the emulator's
// layout): per output pixel and channel, the exact sum over the taps that fall inside the input
// (padding: zeros, nothing added) of block_dot_row over that pixel's n_chan words; weight row
// o * taps + tap. Any stride, dilation and padding; a Conv1D has in_height = out_height = 1.
// CONFIG_T: as FpqBlockDense (n_sub, nbw per pixel row of n_chan) plus in_height, in_width, n_chan,
// out_height, out_width, n_filt, filt_height, filt_width, stride_*, dilation_*, pad_top, pad_left.
template <class data_T, class res_T, typename CONFIG_T>
void block_conv(data_T data[CONFIG_T::in_height * CONFIG_T::in_width * CONFIG_T::n_chan],
                res_T res[CONFIG_T::out_height * CONFIG_T::out_width * CONFIG_T::n_filt]) {
    #pragma HLS PIPELINE
BlockConvPixel:
    for (unsigned op = 0; op < CONFIG_T::out_height * CONFIG_T::out_width; op++) {
        #pragma HLS UNROLL
        const int oh = op / CONFIG_T::out_width, ow = op % CONFIG_T::out_width;
    BlockConvOut:
        for (unsigned o = 0; o < CONFIG_T::n_filt; o++) {
            #pragma HLS UNROLL
            typename CONFIG_T::acc_t acc = 0;
        BlockConvTap:
            for (unsigned tap = 0; tap < CONFIG_T::filt_height * CONFIG_T::filt_width; tap++) {
                #pragma HLS UNROLL
                const int ih = oh * int(CONFIG_T::stride_height) + int(tap / CONFIG_T::filt_width) *
                               int(CONFIG_T::dilation_height) - int(CONFIG_T::pad_top);
                const int iw = ow * int(CONFIG_T::stride_width) + int(tap % CONFIG_T::filt_width) *
                               int(CONFIG_T::dilation_width) - int(CONFIG_T::pad_left);
                if (ih < 0 || ih >= int(CONFIG_T::in_height) || iw < 0 || iw >= int(CONFIG_T::in_width)) continue;
                const data_T *x = data + (ih * CONFIG_T::in_width + iw) * CONFIG_T::n_chan;
                block_dot_row<data_T, CONFIG_T>(x, CONFIG_T::n_chan, o * CONFIG_T::filt_height *
                                                CONFIG_T::filt_width + tap, acc);
            }
            res[op * CONFIG_T::n_filt + o] = block_finish<res_T, CONFIG_T>(acc, o);
        }
    }
}

// io_stream: the layers read their whole input (an MLP's vector, or a feature map: one packet of
// n_chan values per pixel), compute as in io_parallel, and write the result in the packets of res_T
// (a whole-map buffer, not a line buffer: the same circuit as io_parallel behind a stream interface).
template <class data_T, class res_T, typename CONFIG_T>
void block_quant_layer(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    typename data_T::value_type in[CONFIG_T::n_in];
    typename res_T::value_type out[CONFIG_T::n_in];
    stream_to_array<data_T, CONFIG_T::n_in>(data, in);
    block_quant_layer<typename data_T::value_type, typename res_T::value_type, CONFIG_T>(in, out);
    array_to_stream<res_T, CONFIG_T::n_in>(out, res);
}

template <class data_T, class res_T, typename CONFIG_T>
void block_dense(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    typename data_T::value_type in[CONFIG_T::n_in];
    typename res_T::value_type out[CONFIG_T::n_out];
    stream_to_array<data_T, CONFIG_T::n_in>(data, in);
    block_dense<typename data_T::value_type, typename res_T::value_type, CONFIG_T>(in, out);
    array_to_stream<res_T, CONFIG_T::n_out>(out, res);
}

template <class data_T, class res_T, typename CONFIG_T>
void block_conv(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    const unsigned N_IN = CONFIG_T::in_height * CONFIG_T::in_width * CONFIG_T::n_chan;
    const unsigned N_OUT = CONFIG_T::out_height * CONFIG_T::out_width * CONFIG_T::n_filt;
    typename data_T::value_type in[N_IN];
    typename res_T::value_type out[N_OUT];
    stream_to_array<data_T, N_IN>(data, in);
    block_conv<typename data_T::value_type, typename res_T::value_type, CONFIG_T>(in, out);
    array_to_stream<res_T, N_OUT>(out, res);
}

}  // namespace fpq

#endif
