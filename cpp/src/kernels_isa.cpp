// Compiled once per SIMD level (see CMakeLists.txt); fills that level's table.
#include <chrono>

#include "fastsim/cosine.hpp"
#include "fastsim/gemm.hpp"
#include "fastsim/kernels.hpp"
#include "fastsim/range.hpp"
#include "fastsim/topk_self.hpp"
#include "fastsim/rnn/forward.hpp"
#include "fastsim/rnn/train.hpp"
#include "fastsim/topk.hpp"
#include "fastsim/triplet.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {
namespace {

template <class T>
void gemm_nt_plain(const T* a, const T* b, index_t m, index_t n, index_t k, T* c) {
  StoreEpilogue<T> ep{c, n, T(1)};
  gemm_nt<T>(a, k, b, k, m, n, k, ep);
}

template <class T>
void gemm_tn_plain(const T* a, const T* b, index_t m, index_t n, index_t k, T* c, T* col_sums, const uint8_t* zero_k) {
  gemm_tn<T>(a, m, b, n, m, n, k, c, n, col_sums, zero_k);
}

// Enough independent accumulator chains to keep both FMA pipes busy through
// their latency (2 pipes x 4-5 cycles), but few enough to stay in registers
// beside the two operands: with 16 ymm registers (AVX2, SSE) 16 chains spill
// to the stack and the loop measured 56 instead of 98 GFLOP/s on a Zen 3 core.
#if defined(FASTSIM_LEVEL_avx512)
constexpr int kChains = 16;
#else
constexpr int kChains = 12;
#endif

template <class T>
__attribute__((noinline)) void fma_block(vec_t<T>* state, vec_t<T> x, vec_t<T> y, long iterations) {
  using V = vec_t<T>;
  V acc[kChains];
#pragma GCC unroll 16
  for (int c = 0; c < kChains; ++c) acc[c] = state[c];
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * x + y;
  }
#pragma GCC unroll 16
  for (int c = 0; c < kChains; ++c) state[c] = acc[c];
}

// One thread's share of the probe: `blocks` blocks of FMAs, the flop count returned.
template <class T>
double fma_run(long blocks) {
  using V = vec_t<T>;
  constexpr int L = Simd<T>::lanes;
  alignas(64) V acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = splat<V>(T(c) * T(1e-3));
  const V x = splat<V>(T(0.999999)), y = splat<V>(T(1e-7));
  const long block = 1 << 14;
  for (long b = 0; b < blocks; ++b) fma_block<T>(acc, x, y, block);
  volatile T keep = acc[0][0];
  (void)keep;
  return static_cast<double>(blocks) * block * kChains * L * 2;
}

// Sustained FMA throughput of `threads` threads running at once, GFLOP/s.
// Every thread runs the same number of blocks between two barriers and the
// rate is the flops of all of them over the wall time between the barriers,
// as the GEMM's threads are timed: a team member that ran late or shared its
// core lowers the figure instead of being added at its own solo rate.  The
// block count is calibrated on one thread first so that a trial lasts about
// `seconds`.
double fma_peak(bool f64, double seconds, int threads) {
  using clock = std::chrono::steady_clock;
  auto run = [f64](long blocks) { return f64 ? fma_run<double>(blocks) : fma_run<float>(blocks); };
  run(8);  // warm-up: clocks ramp, code is paged in
  long blocks = 8;
  for (;;) {
    const auto t0 = clock::now();
    run(blocks);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (dt > seconds / 8 || blocks > (1L << 40)) {
      blocks = std::max(1L, static_cast<long>(static_cast<double>(blocks) * seconds / dt));
      break;
    }
    blocks *= 4;
  }
  double total = 0, elapsed = 0;
  (void)threads;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
  {
    clock::time_point t0;
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
    t0 = clock::now();
    total += run(blocks);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
    elapsed = std::chrono::duration<double>(clock::now() - t0).count();
  }
  return total / elapsed * 1e-9;
}

int micro_rows(bool f64) { return f64 ? GemmShape<double>::MR : GemmShape<float>::MR; }
int micro_cols(bool f64) { return f64 ? GemmShape<double>::NR : GemmShape<float>::NR; }

template <class T>
void triplet_forward_entry(const T* v1, const T* v2, index_t b, index_t d, int empty_mode, T* positive, T* mean_neg,
                           T* closest, int64_t* closest_idx) {
  triplet_forward<T>(v1, v2, b, d, empty_mode == 1 ? EmptyMode::Floor : EmptyMode::Shift, positive, mean_neg, closest,
                     closest_idx);
}

template <class T>
double triplet_cost_entry(const T* v1, const T* v2, index_t b, index_t d, int empty_mode, double margin, bool mean) {
  return triplet_cost<T>(v1, v2, b, d, empty_mode == 1 ? EmptyMode::Floor : EmptyMode::Shift, margin, mean);
}

template <class T>
void hard_negatives_entry(const T* sim, index_t ld, index_t b, int empty_mode, T* positive, T* mean_neg, T* closest,
                          int64_t* closest_idx) {
  hard_negatives_matrix<T>(sim, ld, b, empty_mode == 1 ? EmptyMode::Floor : EmptyMode::Shift, positive, mean_neg,
                           closest, closest_idx);
}

template <class T>
void vec_math(int fn, const T* x, index_t n, T* out) {
  using V = vec_t<T>;
  constexpr int L = Simd<T>::lanes;
  for (index_t i = 0; i < n; i += L) {
    alignas(64) T buf[L] = {};
    const index_t m = std::min<index_t>(L, n - i);
    for (index_t l = 0; l < m; ++l) buf[l] = x[i + l];
    V v = load<V>(buf);
    v = fn == 0 ? vexp<T>(v) : (fn == 1 ? vsigmoid<T>(v) : vtanh<T>(v));
    store(buf, v);
    for (index_t l = 0; l < m; ++l) out[i + l] = buf[l];
  }
}

template <class T>
void* rnn_create(int cell, const T* W_ih, const T* W_hh, const T* b_ih, const T* b_hh, index_t D, index_t H) {
  auto* w = new RnnWeights<T>();
  w->build(static_cast<Cell>(cell), W_ih, W_hh, b_ih, b_hh, D, H);
  return w;
}

template <class T>
void rnn_destroy(void* w) {
  delete static_cast<RnnWeights<T>*>(w);
}

template <class T>
void rnn_run(const void* w, const T* x, index_t B, index_t T_len, index_t row_b, index_t row_t, const int64_t* lengths,
             bool reverse, T* h, T* c, T* out, index_t out_ld, index_t out_off, T* pool, index_t pool_ld,
             const int64_t* pool_until) {
  rnn_direction<T>(*static_cast<const RnnWeights<T>*>(w), x, B, T_len, row_b, row_t, lengths, reverse, h, c, out,
                   out_ld, out_off, Pooling<T>{pool, pool_ld, pool_until});
}

template <class T>
void rnn_project(const void* w, const T* x, index_t rows, T* xw) {
  rnn_input_projection<T>(*static_cast<const RnnWeights<T>*>(w), x, rows, xw);
}

template <class T>
index_t rnn_cols(const void* w) {
  return static_cast<const RnnWeights<T>*>(w)->cols;
}

template <class T>
void rnn_run_ids(const void* w, const T* table, const int64_t* ids, index_t B, index_t T_len, const int64_t* lengths,
                 bool reverse, T* h, T* c, T* out, index_t out_ld, index_t out_off, T* pool, index_t pool_ld,
                 const int64_t* pool_until) {
  rnn_direction_ids<T>(*static_cast<const RnnWeights<T>*>(w), table, ids, B, T_len, lengths, reverse, h, c, out,
                       out_ld, out_off, Pooling<T>{pool, pool_ld, pool_until});
}

template <class T>
RangeResult<T> range_search_entry(const T* q, index_t m, const T* c, index_t n, index_t d, T threshold, int mode,
                                  index_t row_offset, index_t col_offset, index_t max_per_row, index_t max_hits) {
  return range_search<T>(q, m, c, n, d, threshold, static_cast<RangeMode>(mode), row_offset, col_offset, max_per_row,
                         max_hits);
}

template <class T>
constexpr TypedKernels<T> typed() {
  return TypedKernels<T>{&cosine_matrix<T>, &cosine_rows<T>, &gemm_nt_plain<T>, &triplet_forward_entry<T>,
                         &hard_negatives_entry<T>, &triplet_backward<T>, &top_k<T>, &vec_math<T>, &rnn_create<T>, &rnn_destroy<T>, &rnn_run<T>,
                         &rnn_project<T>, &rnn_cols<T>, &rnn_run_ids<T>, &triplet_cost_entry<T>,
                         &train::forward<T>, &train::backward<T>, &range_search_entry<T>, &top_k_self<T>, &gemm_tn_plain<T>};
}

}  // namespace

extern const KernelTable table;
const KernelTable table = {kLevelName, typed<float>(), typed<double>(), &fma_peak, &micro_rows, &micro_cols};

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
