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
#include <cstdint>
#include <type_traits>
#include <limits>
#include <vector>

#include "cosine.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

enum class EmptyMode : int { Shift = 0, Floor = 1 };

// The positive s[i, i] computed with exactly the arithmetic of the micro-kernel
// tile that holds row i (same k-chains, then * inv2[i] * inv1[i]) so that a
// negative equal to the positive compares equal, as the spec requires.
template <class T>
inline T positive_score(const T* x, const T* y, index_t k, T inv_x, T inv_y, int chains) {
  return unit_score(tile_dot(x, y, k, chains), inv_x, inv_y);
}

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

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    {
      using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
      typedef I IV __attribute__((vector_size(sizeof(V))));
      IV lane{};
      for (int l = 0; l < L; ++l) lane[l] = static_cast<I>(l);
      V rb[NV];
      if (nr == NR) {
        for (int v = 0; v < NV; ++v) rb[v] = load<V>(inv_b + j0 + v * L);
      } else {
        alignas(64) T pad[NR] = {};
        for (int j = 0; j < nr; ++j) pad[j] = inv_b[j0 + j];
        for (int v = 0; v < NV; ++v) rb[v] = load<V>(pad + v * L);
      }
      const V below = splat<V>(T(-4)), zero = V{};
      for (int r = 0; r < mr; ++r) {
        const index_t i = i0 + r;
        // Lanes that are no negative: the positive's column (when the tile
        // crosses the diagonal) and the padding columns past nr.
        const index_t diag = i - j0;
        const V ra = splat<V>(inv_a[i]);
        const V pos = splat<V>(st.positive[i]);
        V s[NV], sum = V{}, mx = below, cand = below;
        for (int v = 0; v < NV; ++v) {
          s[v] = unit_score(acc[r][v], ra, rb[v]);
          const bool has_diag = diag >= v * L && diag < (v + 1) * L;
          if (has_diag || (v + 1) * L > nr) {
            const IV skip = (lane == static_cast<I>(has_diag ? diag - v * L : -1)) |
                            (lane >= static_cast<I>(nr - v * L));
            sum += skip ? zero : s[v];
            s[v] = skip ? below : s[v];
          } else {
            sum += s[v];
          }
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
        // first column reaching it (lowest index wins ties); the positive's
        // lane holds -4 and can never match.
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
    }
  }
};

// positive[i] = s[i, i] with the arithmetic of the tile that holds it.
template <class T>
void triplet_positives(const T* v1, const T* v2, index_t b, index_t d, const T* inv1, const T* inv2, T* positive) {
  // Rows of the last, partial tile run with fewer rows and so more k-chains.
  constexpr int MR = GemmShape<T>::MR;
  const index_t edge_rows = b % MR, edge_begin = b - edge_rows;
  const int full_chains = k_chains<T>(MR);
  const int edge_chains = edge_rows ? k_chains<T>(static_cast<int>(edge_rows)) : full_chains;
  index_t i = 0;
  if (full_chains == 1) {
    // L rows at a time, one row per lane: L x L blocks of both operands are
    // transposed in registers so that lane r accumulates row r's products in
    // k order with one FMA per step, exactly the single chain of its tile.
    using V = vec_t<T>;
    constexpr int L = Simd<T>::lanes;
    const index_t limit = edge_chains == 1 ? b : edge_begin;  // rows whose tile has one chain
    for (int rows = 0; i < limit; i += rows) {
      rows = static_cast<int>(std::min<index_t>(L, limit - i));
      const T* xr[L];
      const T* yr[L];
      for (int r = 0; r < L; ++r) {  // lanes past `rows` repeat the last row and are dropped
        xr[r] = v2 + (i + std::min(r, rows - 1)) * d;
        yr[r] = v1 + (i + std::min(r, rows - 1)) * d;
      }
      V acc{};
      index_t kk = 0;
      for (; kk + L <= d; kk += L) {
        V x[L], y[L];
#pragma GCC unroll 16
        for (int r = 0; r < L; ++r) {
          x[r] = load<V>(xr[r] + kk);
          y[r] = load<V>(yr[r] + kk);
        }
        transpose_round<V, L, L / 2>(x);
        transpose_round<V, L, L / 2>(y);
#pragma GCC unroll 16
        for (int t = 0; t < L; ++t) acc = vfmadd(x[t], y[t], acc);
      }
      alignas(64) T part[L];
      store(part, acc);
      for (int r = 0; r < rows; ++r) {
        T a = part[r];
        for (index_t k2 = kk; k2 < d; ++k2) a = fmadd(v2[(i + r) * d + k2], v1[(i + r) * d + k2], a);
        positive[i + r] = unit_score(a, inv2[i + r], inv1[i + r]);
      }
    }
  }
  for (; i < b; ++i) {
    const int chains = i >= edge_begin ? edge_chains : full_chains;
    positive[i] = positive_score(v2 + i * d, v1 + i * d, d, inv2[i], inv1[i], chains);
  }
}

// Per-row results of the forward pass; the loss itself is finished in O(b).
template <class T>
void triplet_forward(const T* v1, const T* v2, index_t b, index_t d, EmptyMode empty, T* positive, T* mean_neg,
                     T* closest, int64_t* closest_idx) {
  std::vector<T> inv(static_cast<std::size_t>(2 * b));
  T* inv1 = inv.data();
  T* inv2 = inv.data() + b;
  AlignedBuffer<T> copy1, copy2;  // used only when some row's magnitude is out of the safe range
  v1 = prepare_rows(v1, b, d, inv1, copy1);
  v2 = prepare_rows(v2, b, d, inv2, copy2);
  std::vector<double> neg_sum(static_cast<std::size_t>(b), 0.0);
  std::vector<T> top(static_cast<std::size_t>(b), T(-4));
  std::vector<int64_t> top_j(static_cast<std::size_t>(b), -1);
  triplet_positives(v1, v2, b, d, inv1, inv2, positive);
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

// The cost alone: the forward pass, then L1 + L2 of every row, rounded to T
// as the per-row losses are, summed in double (as the Python layer sums a
// float32 loss vector), divided by b for the mean.  max(x, 0) keeps NaN, as
// numpy.maximum does.
template <class T>
double triplet_cost(const T* v1, const T* v2, index_t b, index_t d, EmptyMode empty, double margin, bool mean) {
  T* parts = scratch<T>(kScratchKernel, static_cast<std::size_t>(3 * b));
  int64_t* idx = scratch<int64_t>(kScratchInput, static_cast<std::size_t>(b));
  T* pos = parts;
  T* mean_neg = pos + b;
  T* closest = mean_neg + b;
  triplet_forward<T>(v1, v2, b, d, empty, pos, mean_neg, closest, idx);
  const T m = static_cast<T>(margin);
  double total = 0;
  for (index_t i = 0; i < b; ++i) {
    const T x1 = mean_neg[i] - pos[i] + m, x2 = closest[i] - pos[i] + m;
    const T l1 = x1 < T(0) ? T(0) : x1, l2 = x2 < T(0) ? T(0) : x2;
    total += static_cast<double>(static_cast<T>(l1 + l2));
  }
  return mean ? total / static_cast<double>(b) : total;
}

// Hard negatives of a precomputed square score matrix (rows at stride ld),
// used as given: no clamping, infinities are ordinary values.  Per row: the
// diagonal, the mean of the b - 1 others (summed in double), the largest
// other entry not above the diagonal (lowest column on ties, -inf counts), or
// the `empty` fallback; a NaN anywhere in the row makes the closest NaN.
// One vector pass per row finds the maxima, a scan from the left their column.
template <class T>
void hard_negatives_matrix(const T* sim, index_t ld, index_t b, EmptyMode empty, T* positive, T* mean_neg, T* closest,
                           int64_t* closest_idx) {
  using V = vec_t<T>;
  using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  typedef I IV __attribute__((vector_size(sizeof(V))));
  constexpr int L = Simd<T>::lanes;
  const T ninf = -std::numeric_limits<T>::infinity();
  auto row = [&](index_t i) {
    const T* s = sim + i * ld;
    const T p = s[i];
    const V pv = splat<V>(p), lo = splat<V>(ninf);
    V sum = V{}, mx = lo, cand = lo;
    IV nan = IV{}, valid = IV{};
    double total = 0;
    index_t j = 0;
    auto fold = [&](V x, IV keep) {  // keep: lanes that are negatives
      sum += keep ? x : V{};
      nan |= keep & (x != x);
      mx = (keep & (x > mx)) ? x : mx;
      const IV ok = keep & (x <= pv);
      valid |= ok;
      cand = (ok & (x > cand)) ? x : cand;
    };
    IV lane{};
    for (int l = 0; l < L; ++l) lane[l] = static_cast<I>(l);
    for (; j + L <= b; j += L) {
      const IV keep = (lane + static_cast<I>(j)) != static_cast<I>(i);
      fold(load<V>(s + j), keep);
      if ((j & (64 * L - 1)) == 64 * L - L) {  // flush to double now and then: long rows keep their digits
        total += static_cast<double>(hsum<T>(sum));
        sum = V{};
      }
    }
    if (j < b) {
      alignas(64) T tail[L];
      for (int l = 0; l < L; ++l) tail[l] = j + l < b ? s[j + l] : T(0);
      const IV keep = ((lane + static_cast<I>(j)) != static_cast<I>(i)) & (lane < static_cast<I>(b - j));
      fold(load<V>(tail), keep);
    }
    total += static_cast<double>(hsum<T>(sum));
    bool any_nan = p != p, any_valid = false;
    T top = ninf, best = ninf;
    for (int l = 0; l < L; ++l) {
      any_nan |= nan[l] != 0;
      any_valid |= valid[l] != 0;
      top = mx[l] > top ? mx[l] : top;
      best = cand[l] > best ? cand[l] : best;
    }
    positive[i] = p;
    mean_neg[i] = static_cast<T>(total / static_cast<double>(b - 1));
    auto first = [&](T value, bool below_positive) {
      for (index_t c = 0; c < b; ++c)
        if (c != i && s[c] == value && (!below_positive || s[c] <= p)) return static_cast<int64_t>(c);
      return int64_t{-1};
    };
    if (any_nan) {
      closest[i] = static_cast<T>(NAN);
      closest_idx[i] = -1;
    } else if (any_valid) {
      closest[i] = best;
      closest_idx[i] = first(best, true);
    } else {
      const T shifted = top - T(2);
      if (empty == EmptyMode::Shift && shifted > T(-2)) {
        closest[i] = shifted;
        closest_idx[i] = first(top, false);
      } else {
        closest[i] = T(-2);
        closest_idx[i] = -1;
      }
    }
  };
  const int nt = (b * b > kRowPassForkElements) ? num_threads() : 1;
  (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
#endif
  for (index_t i = 0; i < b; ++i) row(i);
}

// Unit rows for the gradient, in double: u = (x * pre) * post.  pre is 1 and
// post = 1/|x| for rows whose sum of squares is in the safe range; other finite
// rows are scaled by 2^-e (e the exponent of their largest entry) in two
// representable steps, pre = 2^-(e/2) and post = 2^-(e - e/2) / |x 2^-e|.
// 1/|x| = pre * post (inf when it exceeds the range of double: the true
// gradient magnitude).  Zero rows: post = 0; rows holding NaN or inf: NaN.
template <class T>
inline void unit_factors(const T* x, index_t d, double& pre, double& post) {
  double s = 0;
  for (index_t k = 0; k < d; ++k) s += static_cast<double>(x[k]) * x[k];
  pre = 1.0;
  if (s >= SafeRange<double>::min && s <= SafeRange<double>::max) {
    post = 1.0 / std::sqrt(s);
    return;
  }
  double peak = 0;
  for (index_t k = 0; k < d; ++k) {
    const double v = std::abs(static_cast<double>(x[k]));
    if (!(v <= std::numeric_limits<double>::max())) {  // inf or NaN
      post = static_cast<double>(NAN);
      return;
    }
    peak = std::max(peak, v);
  }
  if (peak == 0) {
    post = 0.0;
    return;
  }
  const int e = peak_exponent(x, d);  // of the same peak, taken in T
  const int e1 = e / 2, e2 = e - e1;
  double s2 = 0;
  for (index_t k = 0; k < d; ++k) {
    const double v = std::ldexp(static_cast<double>(x[k]), -e);
    s2 += v * v;
  }
  pre = std::ldexp(1.0, -e1);
  post = std::ldexp(1.0 / std::sqrt(s2), -e2);
}

// Gradient of cost = sum_i w_i * (L1_i + L2_i) with respect to v1 and v2.
// active1/active2 mark rows whose hinge is strictly positive; `closest_idx`
// is -1 where the closest term is a constant (floor or empty without index).
template <class T>
void triplet_backward(const T* v1, const T* v2, index_t b, index_t d, const int64_t* closest_idx,
                      const uint8_t* active1, const uint8_t* active2, const double* w, T* g1, T* g2) {
  // pre[which * b + i], post[...]: u = (x * pre) * post, 1/|x| = pre * post (see unit_factors)
  std::vector<double> pre(static_cast<std::size_t>(2 * b)), post(static_cast<std::size_t>(2 * b));
  for (index_t i = 0; i < b; ++i) {
    unit_factors(v1 + i * d, d, pre[i], post[i]);
    unit_factors(v2 + i * d, d, pre[b + i], post[b + i]);
  }
  auto u1_at = [&](index_t i, index_t k) { return static_cast<double>(v1[i * d + k]) * pre[i] * post[i]; };
  auto u2_at = [&](index_t i, index_t k) { return static_cast<double>(v2[i * d + k]) * pre[b + i] * post[b + i]; };
  const double inv_negatives = 1.0 / static_cast<double>(b - 1);
  // Column sums of the normalized rows: sum_j u1_j and sum_i c_i u2_i.
  std::vector<double> sum_u1(static_cast<std::size_t>(d), 0.0), sum_cu2(static_cast<std::size_t>(d), 0.0);
  for (index_t i = 0; i < b; ++i) {
    const double c = active1[i] ? w[i] * inv_negatives : 0.0;
    for (index_t k = 0; k < d; ++k) {
      sum_u1[k] += u1_at(i, k);
      sum_cu2[k] += u2_at(i, k) * c;
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
    const int64_t kj = active2[i] ? closest_idx[i] : -1;
    for (index_t k = 0; k < d; ++k) {
      const double u1 = u1_at(i, k), u2 = u2_at(i, k);
      double g = pos_w * u1 + ci * (sum_u1[k] - u1);
      if (kj >= 0) g += w[i] * u1_at(kj, k);
      gu2[k] = g;
      gu1[i * d + k] += static_cast<T>(pos_w * u2 + (sum_cu2[k] - ci * u2));
      if (kj >= 0) gu1[kj * d + k] += static_cast<T>(w[i] * u2);
    }
    // Through u2 = v2 / |v2|: (g - (g.u) u) / |v2|; a zero row gets 0 whatever g is (even NaN).
    const double inv_norm = pre[b + i] * post[b + i];
    if (inv_norm == 0) {
      for (index_t k = 0; k < d; ++k) g2[i * d + k] = T(0);
      continue;
    }
    double gdotu = 0;
    for (index_t k = 0; k < d; ++k) gdotu += gu2[k] * u2_at(i, k);
    for (index_t k = 0; k < d; ++k) g2[i * d + k] = static_cast<T>((gu2[k] - gdotu * u2_at(i, k)) * inv_norm);
  }
  for (index_t j = 0; j < b; ++j) {
    const double inv_norm = pre[j] * post[j];
    if (inv_norm == 0) {
      for (index_t k = 0; k < d; ++k) g1[j * d + k] = T(0);
      continue;
    }
    double gdotu = 0;
    for (index_t k = 0; k < d; ++k) gdotu += static_cast<double>(gu1[j * d + k]) * u1_at(j, k);
    for (index_t k = 0; k < d; ++k)
      g1[j * d + k] = static_cast<T>((gu1[j * d + k] - gdotu * u1_at(j, k)) * inv_norm);
  }
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
