// Cosine similarity kernels built on the GEMM engine.
//
// Semantics (DESIGN.md): cos(u, v) = u.v / (|u| |v|) clamped to [-1, 1]; a
// zero vector scores 0 with everything; NaN (or inf, through inf/inf) gives NaN.
#pragma once

#include <cmath>

#include "gemm.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

// 1/|row| per row (0 for a zero row, NaN stays NaN, an infinite row gives 0 so
// that inf * 0 turns its similarities into NaN). Accumulated in double.
template <class T>
void inverse_row_norms(const T* a, index_t lda, index_t m, index_t k, T* inv) {
  auto body = [&](index_t i) {
    const T* row = a + i * lda;
    const double s = static_cast<double>(dot<T>(row, row, k));
    const double nrm = std::sqrt(s);
    inv[i] = (nrm == 0.0 || std::isinf(nrm)) ? T(0) : static_cast<T>(1.0 / nrm);
    if (std::isnan(nrm)) inv[i] = static_cast<T>(NAN);
  };
  const int nt = (m * k > (1 << 18)) ? num_threads() : 1;
  (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
#endif
  for (index_t i = 0; i < m; ++i) body(i);
}

// Epilogue: S[i, j] = clamp(dot * inv_a[i] * inv_b[j]); with `self_diag` the
// diagonal becomes exactly 1 for nonzero rows (0 for zero rows, NaN for NaN).
template <class T>
struct CosineEpilogue {
  const T* inv_a;
  const T* inv_b;
  T* c;
  index_t ldc;
  bool self_diag;
  bool streaming = false;  // non-temporal stores for outputs far larger than the caches

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    const V one = splat<V>(T(1)), minus_one = splat<V>(T(-1));
    if (mr == MR && nr == NV * L) {
      V rb[NV];
      for (int v = 0; v < NV; ++v) rb[v] = load<V>(inv_b + j0 + v * L);
      for (int r = 0; r < MR; ++r) {
        const V ra = splat<V>(inv_a[i0 + r]);
        for (int v = 0; v < NV; ++v) {
          const V s = clamp_keep_nan(acc[r][v] * ra * rb[v], minus_one, one);
          if (streaming)
            store_stream(c + (i0 + r) * ldc + j0 + v * L, s);
          else
            store(c + (i0 + r) * ldc + j0 + v * L, s);
        }
      }
    } else {
      alignas(64) T t[MR * NV * L];
      tile_to_array<MR, NV>(acc, t);
      for (int r = 0; r < mr; ++r) {
        const T ra = inv_a[i0 + r];
        for (int j = 0; j < nr; ++j)
          c[(i0 + r) * ldc + j0 + j] = clamp_keep_nan(t[r * NV * L + j] * ra * inv_b[j0 + j], T(-1), T(1));
      }
    }
    if (self_diag) {
      // The tile touches the diagonal when its row and column ranges overlap.
      const index_t lo = std::max(i0, j0), hi = std::min(i0 + mr, j0 + nr);
      for (index_t d = lo; d < hi; ++d) {
        const T w = inv_a[d];
        c[d * ldc + d] = (w != w) ? w : (w > T(0) ? T(1) : T(0));
      }
    }
  }
};

template <class T>
void cosine_matrix(const T* a, index_t m, const T* b, index_t n, index_t k, T* out, bool self) {
  AlignedBuffer<T> inv(static_cast<std::size_t>(m + (self ? 0 : n) + 1));
  T* inv_a = inv.data();
  T* inv_b = self ? inv_a : inv_a + m;
  inverse_row_norms(a, k, m, k, inv_a);
  if (!self) inverse_row_norms(b, k, n, k, inv_b);
  CosineEpilogue<T> ep{inv_a, inv_b, out, n, self};
  ep.streaming = static_cast<double>(m) * static_cast<double>(n) * sizeof(T) > 32.0 * 1024 * 1024;
  gemm_nt<T>(a, k, self ? a : b, k, m, n, k, ep);
#if defined(__x86_64__) || defined(__i386__)
  if (ep.streaming) _mm_sfence();  // order the non-temporal stores before the caller reads
#endif
}

template <class T>
void cosine_rows(const T* a, const T* b, index_t n, index_t k, T* out) {
  const int nt = (n * k > (1 << 18)) ? num_threads() : 1;
  (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
#endif
  for (index_t i = 0; i < n; ++i) {
    const T* x = a + i * k;
    const T* y = b + i * k;
    const double nx = std::sqrt(static_cast<double>(dot<T>(x, x, k)));
    const double ny = std::sqrt(static_cast<double>(dot<T>(y, y, k)));
    const double xy = static_cast<double>(dot<T>(x, y, k));
    double s;
    if (std::isnan(nx) || std::isnan(ny) || std::isnan(xy) || std::isinf(nx) || std::isinf(ny))
      s = NAN;
    else if (nx == 0.0 || ny == 0.0)
      s = 0.0;
    else
      s = clamp_keep_nan(xy / (nx * ny), -1.0, 1.0);
    out[i] = static_cast<T>(s);
  }
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
