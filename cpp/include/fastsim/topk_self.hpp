// Exact cosine top-k of a set against itself at half the product: each pair
// (i, j), i < j, is multiplied once and offered to both rows' heaps.
//
// What this file owns: SelfTopKEpilogue (the symmetric sink) and
// top_k_self(), its driver.  What it may call: gemm_nt, prepare_rows /
// clamp_keep_nan (cosine.hpp) and TopKEpilogue's heaps and order (topk.hpp).
//
// The result is bit for bit that of top_k(x, x): a full tile of MR rows sums
// each dot product in one chain in k order, so dot(x_i, x_j) of row i's tile
// equals dot(x_j, x_i) of row j's tile, and the score offered to row j is
// scaled in row j's order, (dot * inv[j]) * inv[i].  The last m % MR rows,
// which top_k sums in an edge tile of its own order, are left out of the
// symmetric pass as row-j recipients and get an ordinary pass of their own.
//
// Order of arrival: every heap is per thread, and a thread offers a row's
// candidates in increasing index (from the rows before it, block by block,
// then its own columns), so TopKEpilogue's rule that an equal score loses to
// the heap's entries holds; the vector screens use >= anyway and push()
// decides ties exactly.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "cosine.hpp"
#include "topk.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

template <class T>
struct SelfTopKEpilogue {
  TopKEpilogue<T>* heaps;  // rows and columns are both rows of x (global indices)
  const T* inv;            // inverse norms of all rows
  index_t row_base;        // global row of the call's local row 0
  index_t col_base;        // global column of the call's local column 0
  index_t sym_rows;        // columns from here on are not offered to their own heap (edge rows)
  bool exclude_self;

  inline void offer(int thread, index_t row, T s, index_t cand) {
    const index_t slot = static_cast<index_t>(thread) * heaps->m + row;
    if (heaps->counts[slot] == heaps->k && !(s >= heaps->thresholds[slot])) return;
    heaps->push(thread, row, s, cand);
  }

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int thread) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    const index_t gi0 = row_base + i0, gj0 = col_base + j0;
    if (gj0 + nr - 1 < gi0) return;  // entirely below the diagonal: offered from the other side
    const index_t m = heaps->m;
    const bool upper = gj0 > gi0 + mr - 1;
    if (mr == MR && nr == NR && upper && gj0 + NR <= sym_rows) {
      V rb[NV];
      for (int v = 0; v < NV; ++v) rb[v] = load<V>(inv + gj0 + v * L);
      const V lo = splat<V>(T(-1)), hi = splat<V>(T(1));
      const T* thr_cols = heaps->thresholds + static_cast<index_t>(thread) * m + gj0;
      V tc[NV];
      for (int v = 0; v < NV; ++v) tc[v] = load<V>(thr_cols + v * L);
      // The column heaps are screened once per tile (a mask over its rows),
      // the row heaps once per row as in TopKEpilogue.
      V s_col[MR][NV];
      V pass_col[NV] = {};
      for (int r = 0; r < MR; ++r) {
        const index_t i = gi0 + r;
        const index_t slot = static_cast<index_t>(thread) * m + i;
        const V ra = splat<V>(inv[i]);
        const V tr = splat<V>(heaps->thresholds[slot]);
        V s_row[NV];
        V pass_row{};
        for (int v = 0; v < NV; ++v) {
          s_row[v] = clamp_keep_nan(acc[r][v] * ra * rb[v], lo, hi);
          s_col[r][v] = clamp_keep_nan(acc[r][v] * rb[v] * ra, lo, hi);
          pass_row = (s_row[v] >= tr) ? splat<V>(T(1)) : pass_row;
          // a NaN may still enter a column heap that is not full (its threshold is -inf)
          pass_col[v] = ((s_col[r][v] >= tc[v]) | (s_col[r][v] != s_col[r][v])) ? splat<V>(T(1)) : pass_col[v];
        }
        bool any_row = heaps->counts[slot] != heaps->k;
        for (int l = 0; l < L && !any_row; ++l) any_row = pass_row[l] != T(0);
        if (any_row)
          for (int v = 0; v < NV; ++v)
            for (int l = 0; l < L; ++l) offer(thread, i, s_row[v][l], gj0 + v * L + l);
      }
      // only the columns some row passed: each gets the tile's rows in increasing order
      for (int v = 0; v < NV; ++v)
        for (int l = 0; l < L; ++l)
          if (pass_col[v][l] != T(0))
            for (int r = 0; r < MR; ++r) offer(thread, gj0 + v * L + l, s_col[r][v][l], gi0 + r);
      return;
    }
    alignas(64) T t[MR * NR];
    tile_to_array<MR, NV>(acc, t);
    for (int r = 0; r < mr; ++r) {
      const index_t i = gi0 + r;
      for (int jj = 0; jj < nr; ++jj) {
        const index_t j = gj0 + jj;
        if (j < i) continue;
        const T dotv = t[r * NR + jj];
        if (j == i) {
          if (!exclude_self) offer(thread, i, clamp_keep_nan(dotv * inv[i] * inv[j], T(-1), T(1)), j);
          continue;
        }
        offer(thread, i, clamp_keep_nan(dotv * inv[i] * inv[j], T(-1), T(1)), j);
        if (j < sym_rows) offer(thread, j, clamp_keep_nan(dotv * inv[j] * inv[i], T(-1), T(1)), i);
      }
    }
  }
};

// The last rows (fewer than MR) in top_k's own edge-tile order: rows row_base..
// against every column, offered to their own heaps only.
template <class T>
struct EdgeRowsTopK {
  TopKEpilogue<T>* heaps;
  const T* inv;
  index_t row_base;
  bool exclude_self;

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int thread) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    alignas(64) T t[MR * NR];
    tile_to_array<MR, NV>(acc, t);
    for (int r = 0; r < mr; ++r) {
      const index_t i = row_base + i0 + r;
      for (int jj = 0; jj < nr; ++jj) {
        const index_t j = j0 + jj;
        if (exclude_self && j == i) continue;
        const T s = clamp_keep_nan(t[r * NR + jj] * inv[i] * inv[j], T(-1), T(1));
        const index_t slot = static_cast<index_t>(thread) * heaps->m + i;
        if (heaps->counts[slot] == heaps->k && !(s > heaps->thresholds[slot])) continue;
        heaps->push(thread, i, s, j);
      }
    }
  }
};

// Rows per symmetric block: a multiple of every MR; each block multiplies the
// columns from its first row on, so the triangle's waste is block / n.
inline constexpr index_t kSelfTopKBlockRows = 2040;

template <class T>
void top_k_self(const T* x, index_t m, index_t d, index_t k, bool exclude_self, T* scores, int64_t* indices) {
  if (m <= 0 || k <= 0) return;
  constexpr int MR = GemmShape<T>::MR;
  std::vector<T> inv(static_cast<std::size_t>(m));
  AlignedBuffer<T> copy;
  x = prepare_rows(x, m, d, inv.data(), copy);
  const int nt = std::max(1, num_threads());
  std::vector<Scored<T>> heap_store(static_cast<std::size_t>(nt * m * k));
  std::vector<index_t> counts(static_cast<std::size_t>(nt * m), 0);
  std::vector<T> thresholds(static_cast<std::size_t>(nt * m), -std::numeric_limits<T>::infinity());
  TopKEpilogue<T> heaps{inv.data(), inv.data(), m, k, exclude_self, heap_store.data(), counts.data(),
                        thresholds.data()};
  const index_t full_rows = m - m % MR;
  for (index_t r0 = 0; r0 < full_rows; r0 += kSelfTopKBlockRows) {
    const index_t rows = std::min(kSelfTopKBlockRows, full_rows - r0);
    SelfTopKEpilogue<T> ep{&heaps, inv.data(), r0, r0, full_rows, exclude_self};
    GemmOptions opt;
    opt.threads = nt;
    opt.independent_rows = true;  // heaps are per thread: any thread may take any row
    gemm_nt<T>(x + r0 * d, d, x + r0 * d, d, rows, m - r0, d, ep, opt);
  }
  if (full_rows < m) {
    EdgeRowsTopK<T> ep{&heaps, inv.data(), full_rows, exclude_self};
    GemmOptions opt;
    opt.threads = nt;
    opt.independent_rows = true;
    gemm_nt<T>(x + full_rows * d, d, x, d, m - full_rows, m, d, ep, opt);
  }
  std::vector<Scored<T>> merged;
  for (index_t i = 0; i < m; ++i) {
    merged.clear();
    for (int t = 0; t < nt; ++t) {
      const index_t slot = static_cast<index_t>(t) * m + i;
      merged.insert(merged.end(), heap_store.begin() + slot * k, heap_store.begin() + slot * k + counts[slot]);
    }
    const index_t take = std::min<index_t>(k, static_cast<index_t>(merged.size()));
    std::partial_sort(merged.begin(), merged.begin() + take, merged.end(), ranks_before<T>);
    for (index_t r = 0; r < take; ++r) {
      scores[i * k + r] = merged[r].score;
      indices[i * k + r] = merged[r].index;
    }
    for (index_t r = take; r < k; ++r) {
      scores[i * k + r] = static_cast<T>(NAN);
      indices[i * k + r] = -1;
    }
  }
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
