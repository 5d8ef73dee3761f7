// The table of kernel entry points, one instance per compiled SIMD level.
// Bindings call through kernels(), which returns the level chosen at run time.
#pragma once

#include <string>
#include <vector>

#include "common.hpp"

namespace fastsim {

// Pairs of a range search (range.hpp) as compressed rows: row i's pairs are
// indices/scores[indptr[i] .. indptr[i + 1]), best first.
template <class T>
struct RangeResult {
  std::vector<int64_t> indptr;
  std::vector<int64_t> indices;
  std::vector<T> scores;
  bool complete = true;  // false: max_hits was reached and the pairs are partial
};

template <class T>
struct TypedKernels {
  void (*cosine_matrix)(const T* a, index_t m, const T* b, index_t n, index_t k, T* out, bool self);
  void (*cosine_rows)(const T* a, const T* b, index_t n, index_t k, T* out);
  // Plain C = alpha * A B^T through the engine (tests and benchmarks of the engine itself).
  void (*gemm_nt)(const T* a, const T* b, index_t m, index_t n, index_t k, T* c);
  // Modified triplet loss (triplet.hpp): per-row mining results, then the gradient.
  void (*triplet_forward)(const T* v1, const T* v2, index_t b, index_t d, int empty_mode, T* positive, T* mean_neg,
                          T* closest, int64_t* closest_idx);
  // Hard negatives of a precomputed (b, b) score matrix with row stride ld.
  void (*hard_negatives)(const T* sim, index_t ld, index_t b, int empty_mode, T* positive, T* mean_neg, T* closest,
                         int64_t* closest_idx);
  void (*triplet_backward)(const T* v1, const T* v2, index_t b, index_t d, const int64_t* closest_idx,
                           const uint8_t* active1, const uint8_t* active2, const double* weights, T* g1, T* g2);
  // Exact cosine top-k (topk.hpp): (m, k) scores and int64 indices.
  void (*top_k)(const T* q, index_t m, const T* c, index_t n, index_t d, index_t k, bool exclude_self, T* scores,
                int64_t* indices);
  // Element-wise vexp (0), vsigmoid (1), vtanh (2) of vecmath.hpp, for testing their accuracy.
  void (*vec_math)(int fn, const T* x, index_t n, T* out);
  // Recurrent layers (rnn/forward.hpp): weights packed for this level behind an opaque handle.
  void* (*rnn_create)(int cell, const T* W_ih, const T* W_hh, const T* b_ih, const T* b_hh, index_t D, index_t H);
  void (*rnn_destroy)(void* weights);
  // out may be null when pool is given: pool[i * pool_ld + out_off + u] += h at steps t < pool_until[i].
  void (*rnn_run)(const void* weights, const T* x, index_t B, index_t T_len, index_t row_b, index_t row_t,
                  const int64_t* lengths, bool reverse, T* h, T* c, T* out, index_t out_ld, index_t out_off, T* pool,
                  index_t pool_ld, const int64_t* pool_until);
  // Input projection of `rows` rows of D features (bias included), cols = rnn_cols values each.
  void (*rnn_project)(const void* weights, const T* x, index_t rows, T* xw);
  index_t (*rnn_cols)(const void* weights);
  // Steps over rows of a projected table: step t of row i reads row ids[i * T_len + t].
  void (*rnn_run_ids)(const void* weights, const T* table, const int64_t* ids, index_t B, index_t T_len,
                      const int64_t* lengths, bool reverse, T* h, T* c, T* out, index_t out_ld, index_t out_off,
                      T* pool, index_t pool_ld, const int64_t* pool_until);
  // The reduced modified triplet loss (triplet.hpp): sum (or mean) over rows of
  // L1 + L2, each row's loss rounded to T and the total accumulated in double.
  double (*triplet_cost)(const T* v1, const T* v2, index_t b, index_t d, int empty_mode, double margin, bool mean);
  // Training form (rnn/train.hpp): one direction, time-major, forward with workspace and its backward.
  void (*rnn_train_forward)(int cell, const T* x, index_t T_len, index_t B, index_t D, index_t H, const T* W_ih,
                            const T* W_hh, const T* b_ih, const T* b_hh, const int64_t* lengths, bool reverse, T* h,
                            T* c, T* out, T* act, T* h_prev, T* c_prev, T* tanh_c);
  void (*rnn_train_backward)(int cell, const T* x, index_t T_len, index_t B, index_t D, index_t H, const T* W_ih,
                             const T* W_hh, const int64_t* lengths, bool reverse, const T* act, const T* h_prev,
                             const T* c_prev, const T* tanh_c, const T* d_out, T* dh, T* dc, T* dx, T* dW_ih,
                             T* dW_hh, T* db_ih, T* db_hh);
  // Cosine range search (range.hpp): mode 0 every pair, 1 without (i, i), 2 only column > row (global
  // indices row_offset + i, col_offset + j); max_per_row <= 0 means no cap.
  RangeResult<T> (*range_search)(const T* q, index_t m, const T* c, index_t n, index_t d, T threshold, int mode,
                                 index_t row_offset, index_t col_offset, index_t max_per_row, index_t max_hits);
  // top_k of a set against itself (topk_self.hpp): each pair multiplied once; the result of top_k(x, x).
  void (*top_k_self)(const T* x, index_t m, index_t d, index_t k, bool exclude_self, T* scores, int64_t* indices);
  // C (m x n) = A^T B through the engine's second driver (gemm.hpp gemm_tn), A (k x m) and B (k x n) row-major;
  // col_sums (m, optional) the column sums of A; rows of B flagged in zero_k (k, optional) count as zeros.
  void (*gemm_tn)(const T* a, const T* b, index_t m, index_t n, index_t k, T* c, T* col_sums, const uint8_t* zero_k);
};

struct KernelTable {
  const char* name;
  TypedKernels<float> f32;
  TypedKernels<double> f64;
  // Sustained FMA throughput of this level on `threads` threads, in GFLOP/s.
  double (*fma_peak_gflops)(bool f64, double seconds, int threads);
  int (*micro_rows)(bool f64);
  int (*micro_cols)(bool f64);
};

const KernelTable& kernels();
std::string simd_level();
std::vector<std::string> simd_levels();
void set_simd_level(const std::string& level);

template <class T>
inline const TypedKernels<T>& typed_kernels();
template <>
inline const TypedKernels<float>& typed_kernels<float>() { return kernels().f32; }
template <>
inline const TypedKernels<double>& typed_kernels<double>() { return kernels().f64; }

}  // namespace fastsim
