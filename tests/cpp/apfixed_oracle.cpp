// ap_fixed oracle for fpq's numpy reference (driven by tests/test_apfixed_oracle.py).
//
// For each type listed in the generated file ORACLE_TYPES (lines T(index, S, W, I, Q, O, FX)),
// converts inputs to ap_fixed<W,I,Q,O> (S=1) or ap_ufixed<W,I,Q,O> (S=0) with the ap_types
// headers shipped inside hls4ml, in the two ways an hls4ml C simulation converts:
//   * from double: `input_t x = float_value` (network inputs);
//   * if FX: from a wide ap_fixed: `res_t y = accum` (a layer output quantized from its exact
//     accumulator), with the source SRC_T holding every grid input exactly.
// and writes the integer code of each result (the value is code * 2**(I - W)).
//
// Instantiating thousands of ap_fixed types is slow to compile, so the same source builds
// several translation units, compiled in parallel:
//   g++ -DORACLE_Q=<0..6> -c   the conversions of one quantization mode (kQ index)
//   g++ -c                      (no ORACLE_Q) main(): I/O and dispatch
//
// Protocol (little-endian binary):
//   input : int32 n_extra, n_extra float64 (raw inputs, used for every type, double only),
//           then for S in (1, 0), W in 1..WMAX (64): int32 n, n int32 j. The grid input of type
//           <W, I> is x = j * 2**(I - W - 2), in quarter steps of the type's LSB, so codes,
//           ties and the points either side of a tie are integers j; one j list per (S, W)
//           serves every I (the Python side chooses the lists).
//   output: for each listed type in index order, int64 codes: n grid (from double),
//           n_extra (from double), then if FX n grid (from SRC_T).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "ap_fixed.h"

constexpr int WMAX = 64;  // types up to 54 bits (float64's widest), codes as int64
constexpr ap_q_mode kQ[7] = {AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF,
                             AP_RND_CONV, AP_TRN, AP_TRN_ZERO};
constexpr ap_o_mode kO[4] = {AP_SAT, AP_SAT_ZERO, AP_SAT_SYM, AP_WRAP};
typedef ap_fixed<48, 20, AP_TRN, AP_SAT> SRC_T;  // exact for every grid input (checked in Python)

typedef void (*ConvFn)(const double* x, long n, long n_grid, int64_t* from_double,
                       int64_t* from_fixed);

struct TypeDesc {
  int s, w, i, q, o, fx;
};
constexpr TypeDesc kTypes[] = {
#define T(idx, s, w, i, q, o, fx) {s, w, i, q, o, fx},
#include ORACLE_TYPES
#undef T
};
constexpr int NTYPES = sizeof(kTypes) / sizeof(kTypes[0]);

// Each translation unit with ORACLE_Q defined fills the slots of that quantization mode.
template <int Q>
void register_q(ConvFn* table);

template <int W, bool S>
static int64_t code_of(const ap_private<W, S>& v) {
  static_assert(W < 63, "codes are returned as int64");
  long long c = v.to_int64() & ((1LL << W) - 1);  // the W-bit pattern
  if (S && (c >> (W - 1))) c -= 1LL << W;            // two's complement
  return (int64_t)c;
}

#ifdef ORACLE_Q

template <bool S, int W, int I, int O, bool FX>
static void conv(const double* x, long n, long n_grid, int64_t* from_double,
                 int64_t* from_fixed) {
  typedef typename std::conditional<S, ap_fixed<W, I, kQ[ORACLE_Q], kO[O]>,
                                    ap_ufixed<W, I, kQ[ORACLE_Q], kO[O]> >::type Dst;
  for (long k = 0; k < n; ++k) {
    Dst y = x[k];
    from_double[k] = code_of<W, S>(y.V);
  }
  if constexpr (FX) {  // only where asked: the second conversion costs compile time
    for (long k = 0; k < n_grid; ++k) {
      SRC_T src = x[k];
      Dst y = src;
      from_fixed[k] = code_of<W, S>(y.V);
    }
  }
}

template <int Q, int S, int W, int I, int O, int FX>
static void maybe_register(ConvFn* table, int idx) {
  if constexpr (Q == ORACLE_Q) table[idx] = &conv<S != 0, W, I, O, FX != 0>;
}

template <>
void register_q<ORACLE_Q>(ConvFn* table) {
#define T(idx, s, w, i, q, o, fx) maybe_register<q, s, w, i, o, fx>(table, idx);
#include ORACLE_TYPES
#undef T
}

#else  // main translation unit

static void die(const char* what) {
  fprintf(stderr, "apfixed_oracle: %s\n", what);
  exit(2);
}

template <typename X>
static void read_n(FILE* f, X* dst, size_t n) {
  if (n && fread(dst, sizeof(X), n, f) != n) die("truncated input");
}

int main(int argc, char** argv) {
  if (argc != 3) die("usage: apfixed_oracle INPUT OUTPUT");
  std::vector<ConvFn> table(NTYPES, nullptr);
  register_q<0>(table.data());
  register_q<1>(table.data());
  register_q<2>(table.data());
  register_q<3>(table.data());
  register_q<4>(table.data());
  register_q<5>(table.data());
  register_q<6>(table.data());
  for (ConvFn f : table)
    if (!f) die("a listed type has no instantiation");

  FILE* in = fopen(argv[1], "rb");
  if (!in) die("cannot open input");
  int32_t n_extra;
  read_n(in, &n_extra, 1);
  std::vector<double> extra(n_extra);
  read_n(in, extra.data(), n_extra);
  std::vector<int32_t> grid[2][WMAX + 1];
  for (int s = 1; s >= 0; --s)
    for (int w = 1; w <= WMAX; ++w) {
      int32_t n;
      read_n(in, &n, 1);
      grid[s][w].resize(n);
      read_n(in, grid[s][w].data(), n);
    }
  fclose(in);

  FILE* out = fopen(argv[2], "wb");
  if (!out) die("cannot open output");
  std::vector<double> x;
  std::vector<int64_t> codes;
  for (int t = 0; t < NTYPES; ++t) {
    const TypeDesc& d = kTypes[t];
    const std::vector<int32_t>& g = grid[d.s][d.w];
    long n_grid = (long)g.size(), n = n_grid + n_extra;
    x.resize(n);
    for (long k = 0; k < n_grid; ++k) x[k] = std::ldexp((double)g[k], d.i - d.w - 2);
    for (long k = 0; k < n_extra; ++k) x[n_grid + k] = extra[k];
    codes.resize(n + (d.fx ? n_grid : 0));
    table[t](x.data(), n, n_grid, codes.data(), codes.data() + n);
    if (fwrite(codes.data(), sizeof(int64_t), codes.size(), out) != codes.size())
      die("write failed");
  }
  if (fclose(out) != 0) die("write failed");
  return 0;
}

#endif
