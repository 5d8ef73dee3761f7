// Cosine similarity kernels built on the GEMM engine.
//
// Semantics (DESIGN.md): cos(u, v) = u.v / (|u| |v|) clamped to [-1, 1]; a
// zero vector scores 0 with everything; a row holding NaN or inf scores NaN
// with every row (zero rows included) and has a NaN self-similarity.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "gemm.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

// Rows of any finite magnitude.  The kernels multiply raw rows in the input
// precision and scale the dot products by inverse norms afterwards, which is
// exact in spirit only while the squares stay inside the normal range: in
// float32 a row of 1e20 squares to inf and a row of 1e-30 to 0.  Cosine is
// invariant under scaling a row, so a row whose sum of squares leaves
// [SafeRange<T>::min, SafeRange<T>::max] is multiplied by a power of two
// (exactly) into range on a copy before the GEMM.  Inside the range no dot
// product of two rows can overflow (|x.y| <= |x| |y| <= max) and underflow in
// the products is negligible against |x| |y| >= min.
template <class T>
struct SafeRange;
template <>
struct SafeRange<float> {
  static constexpr float min = 0x1p-60f, max = 0x1p120f;
};
template <>
struct SafeRange<double> {
  static constexpr double min = 0x1p-600, max = 0x1p600;
};

// Row passes (norms, row-wise cosines, positives) fork threads only above
// this many elements: below it a fork costs more than the pass.
inline constexpr index_t kRowPassForkElements = index_t(1) << 18;

// The cosine of two rows from their dot product and inverse norms, clamped
// to [-1, 1] with NaN kept: the one formula every cosine tile (matrix,
// top-k, triplet, range search) applies, for vectors and scalars alike.
template <class V>
inline V unit_score(V dot, V inv_x, V inv_y) {
  if constexpr (std::is_floating_point_v<V>) {
    return clamp_keep_nan(dot * inv_x * inv_y, V(-1), V(1));
  } else {
    using T = std::remove_cv_t<std::remove_reference_t<decltype(dot[0])>>;
    return clamp_keep_nan(dot * inv_x * inv_y, splat<V>(T(-1)), splat<V>(T(1)));
  }
}

// The binary exponent e of a row's largest |entry| (peak = m 2^e, m in
// [0.5, 1)): scaling the row by 2^-e is exact and brings it into range.
template <class T>
inline int peak_exponent(const T* row, index_t k) {
  T peak = 0;
  for (index_t j = 0; j < k; ++j) peak = std::max(peak, std::abs(row[j]));
  int e = 0;
  std::frexp(peak, &e);
  return e;
}

// The inverse norm of one row from its sum of squares s (in T): 1/sqrt(s)
// inside the safe range, 0 for a zero row, NaN for a row holding NaN or inf,
// and -1 (a flag) for a finite row outside the range, which needs rescaling.
template <class T>
inline T classify_row(const T* row, index_t k, T s) {
  if (s >= SafeRange<T>::min && s <= SafeRange<T>::max) return static_cast<T>(1.0 / std::sqrt(static_cast<double>(s)));
  if (std::isnan(s)) return static_cast<T>(NAN);
  bool any_nonzero = false;
  for (index_t j = 0; j < k; ++j) {
    if (!std::isfinite(row[j])) return static_cast<T>(NAN);  // inf (s is inf or, with -inf and inf, NaN)
    any_nonzero |= row[j] != T(0);
  }
  return any_nonzero ? T(-1) : T(0);
}

// dst = row * 2^-e with e the exponent of the row's largest |entry| (exact,
// only the exponents change); returns the inverse norm of dst.
template <class T>
inline T rescale_row(const T* row, index_t k, T* dst) {
  const int e = peak_exponent(row, k);
  for (index_t j = 0; j < k; ++j) dst[j] = std::ldexp(row[j], -e);
  return static_cast<T>(1.0 / std::sqrt(static_cast<double>(dot<T>(dst, dst, k))));
}

// inv[i] = classify_row(row i); true when some row needs rescaling.  The sum
// of squares is accumulated in T (the vectorized dot of the row with itself),
// the square root and the division are taken in double.  Rows go in blocks:
// first every sum of squares of the block, then the inverse norms of the
// block in one vectorizable loop (a scalar square root and division per row
// were a dependent chain of ~50 cycles, longer than the dot of a 128-wide
// row), then the rare rows outside the safe range get their classification.
template <class T>
bool inverse_row_norms(const T* a, index_t lda, index_t m, index_t k, T* inv) {
  constexpr index_t kBlock = 64;
  const index_t n_blocks = (m + kBlock - 1) / kBlock;
  const int nt = (m * k > kRowPassForkElements) ? num_threads() : 1;
  (void)nt;
  int flagged = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static) reduction(| : flagged)
#endif
  for (index_t blk = 0; blk < n_blocks; ++blk) {
    const index_t i0 = blk * kBlock, i1 = std::min(m, i0 + kBlock);
    const int count = static_cast<int>(i1 - i0);
    alignas(64) T s[kBlock];
    alignas(64) T t[kBlock];
    for (int i = 0; i < count; ++i) s[i] = dot<T>(a + (i0 + i) * lda, a + (i0 + i) * lda, k);
    for (int i = count; i < kBlock; ++i) s[i] = T(1);  // full-width loop below, padding in range
    // Fixed trip count and an int flag so that GCC vectorizes the loop (with a
    // bool flag and a variable count it emitted a scalar sqrt and compare per row).
    int in_range = 1;
#pragma GCC unroll 1
    for (int i = 0; i < kBlock; ++i) {
      const T v = s[i];
      t[i] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(v)));
      in_range &= static_cast<int>(v >= SafeRange<T>::min) & static_cast<int>(v <= SafeRange<T>::max);
    }
    std::copy(t, t + count, inv + i0);
    if (in_range) continue;
    for (index_t i = i0; i < i1; ++i) {
      inv[i] = classify_row(a + i * lda, k, s[i - i0]);
      flagged |= inv[i] < T(0);
    }
  }
  return flagged != 0;
}

// The rows the kernels multiply: `a` itself, or (when some row is out of the
// safe range) a copy in `copy` with those rows rescaled.  Fills inv[0..m):
// 1/|row| of the returned rows, 0 for zero rows, NaN for rows holding NaN/inf.
template <class T>
const T* prepare_rows(const T* a, index_t m, index_t k, T* inv, AlignedBuffer<T>& copy) {
  if (!inverse_row_norms(a, k, m, k, inv)) return a;
  copy.resize(static_cast<std::size_t>(std::max<index_t>(1, m * k)));
  T* c = copy.data();
  for (index_t i = 0; i < m; ++i) {
    if (inv[i] < T(0))
      inv[i] = rescale_row(a + i * k, k, c + i * k);
    else
      std::copy(a + i * k, a + (i + 1) * k, c + i * k);
  }
  return c;
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
    if (mr == MR && nr == NV * L) {
      V rb[NV];
      for (int v = 0; v < NV; ++v) rb[v] = load<V>(inv_b + j0 + v * L);
      for (int r = 0; r < MR; ++r) {
        const V ra = splat<V>(inv_a[i0 + r]);
        for (int v = 0; v < NV; ++v) {
          const V s = unit_score(acc[r][v], ra, rb[v]);
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
          c[(i0 + r) * ldc + j0 + j] = unit_score(t[r * NV * L + j], ra, inv_b[j0 + j]);
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

// Adds each tile, in double, to a row block of a double accumulator (the
// long-k path of cosine_matrix).
template <class T>
struct AccumulateEpilogue {
  double* c;  // the sums of the row block the GEMM was called on
  index_t ldc;
  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    alignas(64) T t[MR * NV * L];
    tile_to_array<MR, NV>(acc, t);
    for (int r = 0; r < mr; ++r)
      for (int j = 0; j < nr; ++j) c[(i0 + r) * ldc + j0 + j] += static_cast<double>(t[r * NV * L + j]);
  }
};

// Dot products over more than kSumBlock terms: the GEMM runs once per block
// of kSumBlock columns of a and b, and the block products are added in
// double (as dot() does), over row blocks of the output that keep the double
// sums within 32 MiB.  The GEMM alone accumulates the whole of k in T.
template <class T>
void cosine_matrix_long_k(const T* a, index_t m, const T* b, index_t n, index_t k, const T* inv_a, const T* inv_b,
                          T* out, bool self) {
  const index_t rows = std::max<index_t>(1, std::min<index_t>(m, (index_t(32) << 20) / (8 * n)));
  std::vector<double> sums(static_cast<std::size_t>(rows * n));
  for (index_t r0 = 0; r0 < m; r0 += rows) {
    const index_t mr = std::min(rows, m - r0);
    std::fill(sums.begin(), sums.begin() + mr * n, 0.0);
    for (index_t k0 = 0; k0 < k; k0 += kSumBlock) {
      AccumulateEpilogue<T> ep{sums.data(), n};
      GemmOptions opt;
      opt.independent_rows = true;
      gemm_nt<T>(a + r0 * k + k0, k, b + k0, k, mr, n, std::min(kSumBlock, k - k0), ep, opt);
    }
    for (index_t i = 0; i < mr; ++i)
      for (index_t j = 0; j < n; ++j) {
        const index_t gi = r0 + i;
        T s = static_cast<T>(unit_score(sums[i * n + j], static_cast<double>(inv_a[gi]), static_cast<double>(inv_b[j])));
        if (self && gi == j) {
          const T w = inv_a[gi];
          s = (w != w) ? w : (w > T(0) ? T(1) : T(0));
        }
        out[gi * n + j] = s;
      }
  }
}

template <class T>
void cosine_matrix(const T* a, index_t m, const T* b, index_t n, index_t k, T* out, bool self) {
  // The inverse norms live in this thread's scratch (no allocation per call).
  T* inv_a = scratch<T>(kScratchKernel, static_cast<std::size_t>(m + (self ? 0 : n) + 1));
  AlignedBuffer<T> copy_a, copy_b;
  T* inv_b = self ? inv_a : inv_a + m;
  a = prepare_rows(a, m, k, inv_a, copy_a);
  b = self ? a : prepare_rows(b, n, k, inv_b, copy_b);
  if (k > kSumBlock && sizeof(T) == 4) return cosine_matrix_long_k<T>(a, m, b, n, k, inv_a, inv_b, out, self);
  CosineEpilogue<T> ep{inv_a, inv_b, out, n, self};
  ep.streaming = static_cast<double>(m) * static_cast<double>(n) * sizeof(T) > 32.0 * 1024 * 1024;
  GemmOptions opt;
  opt.independent_rows = true;  // the epilogue only writes its tile
  gemm_nt<T>(a, k, b, k, m, n, k, ep, opt);
#if defined(__x86_64__) || defined(__i386__)
  if (ep.streaming) _mm_sfence();  // order the non-temporal stores before the caller reads
#endif
}

// x.x, y.y and x.y in one pass over x and y, each accumulated exactly as
// dot() accumulates it (same chains, same order, same tail), so the results
// are bit for bit those of three dot() calls at half the loads.  The twelve
// accumulators are written out: with them in arrays and a loop over them GCC 12
// generated different code for the tail and changed the last bit of some rows.
template <class T>
inline void dot3_block(const T* x, const T* y, index_t n, T& xx, T& yy, T& xy) {
  using V = vec_t<T>;
  constexpr int L = Simd<T>::lanes;
  V a0{}, a1{}, a2{}, a3{}, b0{}, b1{}, b2{}, b3{}, c0{}, c1{}, c2{}, c3{};
  index_t k = 0;
  for (; k + 4 * L <= n; k += 4 * L) {
    const V x0 = load<V>(x + k), x1 = load<V>(x + k + L), x2 = load<V>(x + k + 2 * L), x3 = load<V>(x + k + 3 * L);
    const V y0 = load<V>(y + k), y1 = load<V>(y + k + L), y2 = load<V>(y + k + 2 * L), y3 = load<V>(y + k + 3 * L);
    a0 += x0 * x0;
    a1 += x1 * x1;
    a2 += x2 * x2;
    a3 += x3 * x3;
    b0 += y0 * y0;
    b1 += y1 * y1;
    b2 += y2 * y2;
    b3 += y3 * y3;
    c0 += x0 * y0;
    c1 += x1 * y1;
    c2 += x2 * y2;
    c3 += x3 * y3;
  }
  for (; k + L <= n; k += L) {
    const V x0 = load<V>(x + k), y0 = load<V>(y + k);
    a0 += x0 * x0;
    b0 += y0 * y0;
    c0 += x0 * y0;
  }
  xx = hsum<T>((a0 + a1) + (a2 + a3));
  yy = hsum<T>((b0 + b1) + (b2 + b3));
  xy = hsum<T>((c0 + c1) + (c2 + c3));
  for (; k < n; ++k) {
    xx += x[k] * x[k];
    yy += y[k] * y[k];
    xy += x[k] * y[k];
  }
}

// Long rows in blocks of kSumBlock terms whose sums are added in double, as dot() does.
template <class T>
inline void dot3(const T* x, const T* y, index_t n, T& xx, T& yy, T& xy) {
  if (n <= kSumBlock) return dot3_block<T>(x, y, n, xx, yy, xy);
  double sxx = 0, syy = 0, sxy = 0;
  for (index_t k = 0; k < n; k += kSumBlock) {
    T bxx, byy, bxy;
    dot3_block<T>(x + k, y + k, std::min(kSumBlock, n - k), bxx, byy, bxy);
    sxx += bxx;
    syy += byy;
    sxy += bxy;
  }
  xx = static_cast<T>(sxx);
  yy = static_cast<T>(syy);
  xy = static_cast<T>(sxy);
}

template <class T>
void cosine_rows(const T* a, const T* b, index_t n, index_t k, T* out) {
  const int nt = (n * k > kRowPassForkElements) ? num_threads() : 1;
  (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
#endif
  for (index_t i = 0; i < n; ++i) {
    const T* x = a + i * k;
    const T* y = b + i * k;
    T sxx, syy, sxy;
    dot3(x, y, k, sxx, syy, sxy);
    T ix = classify_row(x, k, sxx);
    T iy = classify_row(y, k, syy);
    std::vector<T> scaled;  // only for rows outside the safe range
    if (ix < T(0) || iy < T(0)) {
      scaled.resize(static_cast<std::size_t>(2 * k));
      if (ix < T(0)) {
        ix = rescale_row(x, k, scaled.data());
        x = scaled.data();
      }
      if (iy < T(0)) {
        iy = rescale_row(y, k, scaled.data() + k);
        y = scaled.data() + k;
      }
      sxy = dot<T>(x, y, k);  // of the rescaled rows
    }
    double s;
    if (std::isnan(ix) || std::isnan(iy))
      s = NAN;
    else if (ix == T(0) || iy == T(0))
      s = 0.0;
    else
      s = unit_score(static_cast<double>(sxy), static_cast<double>(ix), static_cast<double>(iy));
    out[i] = static_cast<T>(s);
  }
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
