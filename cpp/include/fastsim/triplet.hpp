// Hard-negative mining and the modified triplet loss, streaming over GEMM tiles.
//
// Scores s[i, j] = cos(v2[i], v1[j]) are never stored: the GEMM engine runs
// with A = v2, B = v1 and an epilogue that folds every tile into per-row
// running state (sum of negatives, closest negative at or below the positive
// with its index, largest negative with its index).  Rows are owned by one
// thread for the whole call (Split::Rows) and visited in increasing column
// order, so a strict ">" keeps the lowest index among ties with no locking.
// Extra memory is O(b) per-row state plus the engine's packing buffers.
//
// The gradient needs no second pass: with c_i the weight of row i's mean
// term and e_i that of its closest term,
//   dC/du2_i = -(a1_i + a2_i) w_i u1_i + c_i (sum_j u1_j - u1_i) + e_i u1_{k_i}
//   dC/du1_j = -(a1_j + a2_j) w_j u2_j + (sum_i c_i u2_i - c_j u2_j) + sum_{i: k_i = j} e_i u2_i
// (u = x / |x|), then dC/dx = (g - (g.u) u) / |x|; all O(b d).
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "cosine.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

enum class EmptyMode : int { Shift = 0, Floor = 1 };

template <class T>
struct TripletState {
  T* positive;       // s[i, i]
  double* neg_sum;   // sum over j != i of s[i, j]
  T* best;           // closest negative so far (max s[i, j] <= s[i, i], j != i)
  int64_t* best_j;   // its index, -1 while none
  T* top;            // largest negative so far (for the "shift" fallback)
  int64_t* top_j;
};

template <class T>
struct TripletEpilogue {
  const T* inv_a;  // 1/|v2[i]|
  const T* inv_b;  // 1/|v1[j]|
  TripletState<T> st;
  // The first pass of triplet_forward: store s[i, i] of the tiles crossing the
  // diagonal into st.positive and nothing else.
  bool positives_only = false;

  // One row of a tile, scalar: edge tiles and tiles crossing the diagonal.
  inline void row_scalar(index_t i, index_t j0, int nr, const T* vals) {
    const T pos = st.positive[i], ra = inv_a[i];
    double sum = 0;
    T best = st.best[i], top = st.top[i];
    int64_t best_j = st.best_j[i], top_j = st.top_j[i];
    for (int jj = 0; jj < nr; ++jj) {
      const index_t j = j0 + jj;
      if (j == i) continue;
      const T s = clamp_keep_nan(vals[jj] * ra * inv_b[j], T(-1), T(1));
      sum += s;
      if (s > top) { top = s; top_j = j; }
      if (s <= pos && s > best) { best = s; best_j = j; }
    }
    st.neg_sum[i] += sum;
    st.best[i] = best; st.best_j[i] = best_j;
    st.top[i] = top; st.top_j[i] = top_j;
  }

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    const bool crosses_diag = (i0 < j0 + nr) && (j0 < i0 + mr);
    if (positives_only) {
      alignas(64) T t[MR * NR];
      tile_to_array<MR, NV>(acc, t);
      for (int r = 0; r < mr; ++r) {
        const index_t i = i0 + r, jj = i - j0;
        // the very expression row_scalar() evaluates for j == i
        if (jj >= 0 && jj < nr) st.positive[i] = clamp_keep_nan(t[r * NR + jj] * inv_a[i] * inv_b[i], T(-1), T(1));
      }
      return;
    }
    if (mr == MR && nr == NR && !crosses_diag) {
      V rb[NV];
      for (int v = 0; v < NV; ++v) rb[v] = load<V>(inv_b + j0 + v * L);
      const V lo = splat<V>(T(-1)), hi = splat<V>(T(1)), below = splat<V>(T(-4));
      for (int r = 0; r < MR; ++r) {
        const index_t i = i0 + r;
        const V ra = splat<V>(inv_a[i]);
        const V pos = splat<V>(st.positive[i]);
        V s[NV], sum = V{}, mx = below, cand = below;
        for (int v = 0; v < NV; ++v) {
          s[v] = clamp_keep_nan(acc[r][v] * ra * rb[v], lo, hi);
          sum += s[v];
          mx = (s[v] > mx) ? s[v] : mx;
          const V c = (s[v] <= pos) ? s[v] : below;
          cand = (c > cand) ? c : cand;
        }
        st.neg_sum[i] += static_cast<double>(hsum<T>(sum));
        T tile_top = T(-4), tile_best = T(-4);
        for (int l = 0; l < L; ++l) {
          tile_top = mx[l] > tile_top ? mx[l] : tile_top;
          tile_best = cand[l] > tile_best ? cand[l] : tile_best;
        }
        // Only when the tile improves a running maximum do we look for the
        // first column reaching it (lowest index wins ties).
        if (tile_top > st.top[i]) {
          for (int v = 0, done = 0; v < NV && !done; ++v)
            for (int l = 0; l < L; ++l)
              if (s[v][l] == tile_top) { st.top[i] = tile_top; st.top_j[i] = j0 + v * L + l; done = 1; break; }
        }
        if (tile_best > st.best[i]) {
          for (int v = 0, done = 0; v < NV && !done; ++v)
            for (int l = 0; l < L; ++l)
              if (s[v][l] == tile_best && s[v][l] <= st.positive[i]) {
                st.best[i] = tile_best; st.best_j[i] = j0 + v * L + l; done = 1; break;
              }
        }
        // A NaN anywhere in the row must reach the loss: the vector max above
        // skips NaN, the sum does not.
      }
    } else {
      alignas(64) T t[MR * NR];
      tile_to_array<MR, NV>(acc, t);
      for (int r = 0; r < mr; ++r) row_scalar(i0 + r, j0, nr, t + r * NR);
    }
  }
};

// Per-row results of the forward pass; the loss itself is finished in O(b).
template <class T>
void triplet_forward(const T* v1, const T* v2, index_t b, index_t d, EmptyMode empty, T* positive, T* mean_neg,
                     T* closest, int64_t* closest_idx) {
  std::vector<T> inv(static_cast<std::size_t>(2 * b));
  T* inv1 = inv.data();
  T* inv2 = inv.data() + b;
  inverse_row_norms(v1, d, b, d, inv1);
  inverse_row_norms(v2, d, b, d, inv2);
  std::vector<double> neg_sum(static_cast<std::size_t>(b), 0.0);
  std::vector<T> top(static_cast<std::size_t>(b), T(-4));
  std::vector<int64_t> top_j(static_cast<std::size_t>(b), -1);
  // Positives first, each by the same GEMM code (this epilogue's instantiation)
  // on the same row block [i0, i0 + MR) as in the main pass below, so s[i, i]
  // is bit for bit the value the main pass compares the negatives with: a
  // negative equal to the positive counts, as the spec requires.  A scalar
  // replica of the tile's dot product is not enough: whether the compiler
  // contracts a * b + c into an FMA differs between the vector micro-kernel
  // and scalar code (GCC -O3 contracts the former only).
  constexpr int MR = GemmShape<T>::MR;
  {
    GemmOptions one;
    one.threads = 1;
    for (index_t i0 = 0; i0 < b; i0 += MR) {
      const index_t mr = std::min<index_t>(MR, b - i0);
      TripletEpilogue<T> diag{inv2 + i0, inv1 + i0, {positive + i0, nullptr, nullptr, nullptr, nullptr, nullptr}};
      diag.positives_only = true;
      gemm_nt<T>(v2 + i0 * d, d, v1 + i0 * d, d, mr, mr, d, diag, one);
    }
  }
  for (index_t r = 0; r < b; ++r) {
    closest[r] = T(-4);
    closest_idx[r] = -1;
  }
  TripletEpilogue<T> ep{inv2, inv1, {positive, neg_sum.data(), closest, closest_idx, top.data(), top_j.data()}};
  GemmOptions opt;
  opt.split = Split::Rows;
  gemm_nt<T>(v2, d, v1, d, b, b, d, ep, opt);
  const double denom = static_cast<double>(b - 1);
  for (index_t i = 0; i < b; ++i) {
    const bool nan_row = std::isnan(neg_sum[i]) || std::isnan(positive[i]);
    mean_neg[i] = static_cast<T>(neg_sum[i] / denom);
    if (nan_row) {
      closest[i] = static_cast<T>(NAN);
      closest_idx[i] = -1;
    } else if (closest_idx[i] < 0) {
      if (empty == EmptyMode::Floor || !(top[i] - T(2) > T(-2))) {
        closest[i] = T(-2);
        closest_idx[i] = -1;
      } else {
        closest[i] = top[i] - T(2);
        closest_idx[i] = top_j[i];
      }
    }
  }
}

// Gradient of cost = sum_i w_i * (L1_i + L2_i) with respect to v1 and v2.
// active1/active2 mark rows whose hinge is strictly positive; `closest_idx`
// is -1 where the closest term is a constant (floor or empty without index).
template <class T>
void triplet_backward(const T* v1, const T* v2, index_t b, index_t d, const int64_t* closest_idx,
                      const uint8_t* active1, const uint8_t* active2, const double* w, T* g1, T* g2) {
  std::vector<double> inv(static_cast<std::size_t>(2 * b)), nrm(static_cast<std::size_t>(2 * b));
  for (index_t i = 0; i < b; ++i) {
    for (int which = 0; which < 2; ++which) {
      const T* x = (which ? v2 : v1) + i * d;
      double s = 0;
      for (index_t k = 0; k < d; ++k) s += static_cast<double>(x[k]) * x[k];
      const double n = std::sqrt(s);
      nrm[which * b + i] = n;
      inv[which * b + i] = (n > 0 && std::isfinite(n)) ? 1.0 / n : 0.0;
    }
  }
  const double inv_negatives = 1.0 / static_cast<double>(b - 1);
  // Column sums of the normalized rows: sum_j u1_j and sum_i c_i u2_i.
  std::vector<double> sum_u1(static_cast<std::size_t>(d), 0.0), sum_cu2(static_cast<std::size_t>(d), 0.0);
  for (index_t i = 0; i < b; ++i) {
    const double s1 = inv[i], s2 = inv[b + i] * (active1[i] ? w[i] * inv_negatives : 0.0);
    for (index_t k = 0; k < d; ++k) {
      sum_u1[k] += v1[i * d + k] * s1;
      sum_cu2[k] += v2[i * d + k] * s2;
    }
  }
  // g1 first accumulates dC/du1 (scattered closest terms land on any row),
  // then is turned into dC/dv1 in place: no extra b x d buffer.
  T* gu1 = g1;
  for (index_t i = 0; i < b * d; ++i) gu1[i] = T(0);
  std::vector<double> gu2(static_cast<std::size_t>(d));
  for (index_t i = 0; i < b; ++i) {
    const double a1 = active1[i] ? 1.0 : 0.0, a2 = active2[i] ? 1.0 : 0.0;
    const double ci = a1 * w[i] * inv_negatives;
    const double pos_w = -(a1 + a2) * w[i];
    const double i1 = inv[i], i2 = inv[b + i];
    const int64_t kj = active2[i] ? closest_idx[i] : -1;
    const double ik = kj >= 0 ? inv[kj] : 0.0;
    for (index_t k = 0; k < d; ++k) {
      const double u1 = v1[i * d + k] * i1, u2 = v2[i * d + k] * i2;
      double g = pos_w * u1 + ci * (sum_u1[k] - u1);
      if (kj >= 0) g += w[i] * v1[kj * d + k] * ik;
      gu2[k] = g;
      gu1[i * d + k] += static_cast<T>(pos_w * u2 + (sum_cu2[k] - ci * u2));
      if (kj >= 0) gu1[kj * d + k] += static_cast<T>(w[i] * u2);
    }
    // Through u2 = v2 / |v2|: (g - (g.u) u) / |v2|.
    double gdotu = 0;
    for (index_t k = 0; k < d; ++k) gdotu += gu2[k] * v2[i * d + k] * i2;
    for (index_t k = 0; k < d; ++k) g2[i * d + k] = static_cast<T>((gu2[k] - gdotu * v2[i * d + k] * i2) * i2);
  }
  for (index_t j = 0; j < b; ++j) {
    const double i1 = inv[j];
    double gdotu = 0;
    for (index_t k = 0; k < d; ++k) gdotu += static_cast<double>(gu1[j * d + k]) * v1[j * d + k] * i1;
    for (index_t k = 0; k < d; ++k) g1[j * d + k] = static_cast<T>((gu1[j * d + k] - gdotu * v1[j * d + k] * i1) * i1);
  }
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
