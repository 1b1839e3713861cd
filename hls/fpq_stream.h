// fpq_stream.h: io_stream helpers shared by fpq's HLS layers (fpq_attention.h, fpq_block.h,
// fpq_normalization.h): read one packed hls::stream of N values into a flat array, and write a flat
// array back as packets, in order.
// A layer that needs its whole input at once (a matmul, a permutation, the block datapath) wraps its
// io_parallel function between the two.
#ifndef FPQ_STREAM_H_
#define FPQ_STREAM_H_

#include "hls_stream.h"
#include "nnet_common.h"  // PRAGMA_DATA_PACK

namespace fpq {

template <class data_T, unsigned N>
void stream_to_array(hls::stream<data_T> &s, typename data_T::value_type buf[N]) {
ReadWords:
    for (unsigned w = 0; w < N / data_T::size; w++) {
        #pragma HLS PIPELINE
        data_T in = s.read();
        for (unsigned j = 0; j < data_T::size; j++) {
            #pragma HLS UNROLL
            buf[w * data_T::size + j] = in[j];
        }
    }
}

template <class res_T, unsigned N>
void array_to_stream(const typename res_T::value_type buf[N], hls::stream<res_T> &s) {
WriteWords:
    for (unsigned w = 0; w < N / res_T::size; w++) {
        #pragma HLS PIPELINE
        res_T o;
        PRAGMA_DATA_PACK(o)
        for (unsigned j = 0; j < res_T::size; j++) {
            #pragma HLS UNROLL
            o[j] = buf[w * res_T::size + j];
        }
        s.write(o);
    }
}

}  // namespace fpq

#endif
