// fpq_attention.h: the product of two quantized activations (attention's Q K^T and A V) and the
// re-layout of a tensor, for fpq's HLS projects (io_parallel arrays and io_stream).
//
// matmul: res[g, m, n] = 2^alpha * sum_k a[g, m, k] * b[g, k, n] over n_batch groups g (the heads),
// with both operands stored contiguously in torch order (fpq.hls.attention lays them out). Every
// product is ap_fixed's full-precision product and the sum runs in accum_t, which fpq sizes so that
// no sum can overflow (fpq.typeplan): the sum is exact. The power-of-two factor 2^alpha is not an
// arithmetic step: the accumulator's bits are read as shift_t, the same width with the binary point
// moved by alpha (exact). The last step, res_T(shifted), is the only rounding: a cast quantizer fused
// into the layer (fpq.ir.plan.REQUANT_FUSING), or no rounding when res_T is shift_t itself.
// hls4ml's own Einsum layer is io_parallel and Latency only and has no place for 2^alpha.
//
// CONFIG_T (fpq.hls.attention): n_batch, n_m, n_k, n_n, io_type, reuse_factor, accum_t, shift_t.
//
// permute: res[j] = data[index(j)] with a constant index table (a transpose after a reshape, the
// heads split or joined): wiring in io_parallel; io_stream buffers the tensor once.
// CONFIG_T: n_in, io_type, reuse_factor, static index(j).
#ifndef FPQ_ATTENTION_H_
#define FPQ_ATTENTION_H_

#include "ap_fixed.h"
#include "hls_stream.h"
#include "nnet_common.h"
#include "fpq_stream.h"  // stream_to_array, array_to_stream

namespace fpq {

template <class in0_T, class in1_T, class res_T, typename CONFIG_T>
void matmul_core(const in0_T a[CONFIG_T::n_batch * CONFIG_T::n_m * CONFIG_T::n_k],
                 const in1_T b[CONFIG_T::n_batch * CONFIG_T::n_k * CONFIG_T::n_n],
                 res_T res[CONFIG_T::n_batch * CONFIG_T::n_m * CONFIG_T::n_n]) {
    #pragma HLS INLINE
    typedef typename CONFIG_T::accum_t accum_t;
    typedef typename CONFIG_T::shift_t shift_t;
Groups:
    for (unsigned g = 0; g < CONFIG_T::n_batch; g++) {
    Rows:
        for (unsigned m = 0; m < CONFIG_T::n_m; m++) {
        Cols:
            for (unsigned n = 0; n < CONFIG_T::n_n; n++) {
                accum_t acc = 0;
            Terms:
                for (unsigned k = 0; k < CONFIG_T::n_k; k++) {
                    acc += a[(g * CONFIG_T::n_m + m) * CONFIG_T::n_k + k] * b[(g * CONFIG_T::n_k + k) * CONFIG_T::n_n + n];
                }
                shift_t s;
                s.range(accum_t::width - 1, 0) = acc.range(accum_t::width - 1, 0);
                res[(g * CONFIG_T::n_m + m) * CONFIG_T::n_n + n] = s;
            }
        }
    }
}

template <class in0_T, class in1_T, class res_T, typename CONFIG_T>
void matmul(in0_T a[CONFIG_T::n_batch * CONFIG_T::n_m * CONFIG_T::n_k],
            in1_T b[CONFIG_T::n_batch * CONFIG_T::n_k * CONFIG_T::n_n],
            res_T res[CONFIG_T::n_batch * CONFIG_T::n_m * CONFIG_T::n_n]) {
    #pragma HLS PIPELINE II = CONFIG_T::reuse_factor
    matmul_core<in0_T, in1_T, res_T, CONFIG_T>(a, b, res);
}

template <class in0_T, class in1_T, class res_T, typename CONFIG_T>
void matmul(hls::stream<in0_T> &a, hls::stream<in1_T> &b, hls::stream<res_T> &res) {
    static const unsigned na = CONFIG_T::n_batch * CONFIG_T::n_m * CONFIG_T::n_k;
    static const unsigned nb = CONFIG_T::n_batch * CONFIG_T::n_k * CONFIG_T::n_n;
    static const unsigned nr = CONFIG_T::n_batch * CONFIG_T::n_m * CONFIG_T::n_n;
    typename in0_T::value_type abuf[na];
    typename in1_T::value_type bbuf[nb];
    typename res_T::value_type rbuf[nr];
    stream_to_array<in0_T, na>(a, abuf);
    stream_to_array<in1_T, nb>(b, bbuf);
    matmul_core<typename in0_T::value_type, typename in1_T::value_type, typename res_T::value_type, CONFIG_T>(
        abuf, bbuf, rbuf);
    array_to_stream<res_T, nr>(rbuf, res);
}

template <class data_T, class res_T, typename CONFIG_T>
void permute(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in]) {
    #pragma HLS PIPELINE
Wires:
    for (unsigned j = 0; j < CONFIG_T::n_in; j++) {
        #pragma HLS UNROLL
        res[j] = data[CONFIG_T::index(j)];
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void permute(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    typename data_T::value_type buf[CONFIG_T::n_in];
    typename res_T::value_type out[CONFIG_T::n_in];
    stream_to_array<data_T, CONFIG_T::n_in>(data, buf);
Moves:
    for (unsigned j = 0; j < CONFIG_T::n_in; j++) {
        #pragma HLS PIPELINE
        out[j] = buf[CONFIG_T::index(j)];
    }
    array_to_stream<res_T, CONFIG_T::n_in>(out, res);
}

} // namespace fpq

#endif
