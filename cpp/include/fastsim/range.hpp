// Cosine range search: every pair (i, j) with cos(q[i], c[j]) >= threshold,
// as compressed rows, without the (m, n) similarity matrix.
//
// What this file owns: RangeEpilogue, the sink that the GEMM engine's tiles
// feed (it keeps only qualifying entries, in per-thread per-row lists), and
// range_search(), the driver that walks row blocks of the queries, merges the
// threads' lists of each row and sorts them into the output order.
// What it may call: gemm_nt (gemm.hpp), prepare_rows / clamp_keep_nan
// (cosine.hpp) and the Scored / ranks_before order of topk.hpp, so a score
// here is computed exactly as the cosine matrix and top-k compute it.
//
// Scores: the tile's dot products times the two inverse norms, clamped, as in
// CosineEpilogue.  The GEMM runs with GemmOptions::row_invariant, so a pair's
// score does not depend on where its row falls in a block: results are the
// same whatever the caller's (or Dask's) chunking, and equal bit for bit to
// cosine_similarity_matrix wherever that matrix sums a row in full-tile order
// (every row but the last m % MR).
//
// Modes, on global indices (row_offset + i, col_offset + j):
//   All          every pair;
//   ExcludeSelf  all but the pairs of a row with itself;
//   Upper        only pairs with column > row (the self-join i < j).
// In Upper mode each row block only multiplies the columns to the right of its
// first row, so a self-join costs half the product plus the diagonal blocks.
//
// Memory: the results, plus per-thread per-row lists for one row block.  A
// caller's max_hits bounds the pairs held: past it the kernel stops appending
// and reports overflow instead of exhausting memory.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cosine.hpp"
#include "kernels.hpp"
#include "topk.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

enum class RangeMode { All = 0, ExcludeSelf = 1, Upper = 2 };

template <class T>
struct RangeEpilogue {
  const T* inv_q;  // of this call's rows (index i0 + r)
  const T* inv_c;  // of this call's columns (index j0 + l)
  T threshold;
  RangeMode mode;
  // The global pair of local (i, j) is (i + row_base, j + col_base); a pair is
  // the diagonal when j == i + diag with diag = row_base - col_base.
  index_t diag;
  index_t rows;  // rows of this call: lists are [thread][row]
  index_t cap;   // at most this many per row (max_per_row), kept as a heap once full
  std::vector<Scored<T>>* lists;
  index_t* held;       // [thread]: entries held in this thread's lists
  index_t budget;      // per thread, for this call
  std::atomic<bool>* overflow;

  struct Worse {
    bool operator()(const Scored<T>& a, const Scored<T>& b) const { return ranks_before(a, b); }
  };

  inline void keep(int thread, index_t i, T s, int64_t j) {
    std::vector<Scored<T>>& h = lists[static_cast<index_t>(thread) * rows + i];
    const Scored<T> cand{s, j};
    const index_t size = static_cast<index_t>(h.size());
    if (size < cap) {
      if (held[thread] >= budget) {
        overflow->store(true, std::memory_order_relaxed);
        return;
      }
      ++held[thread];
      h.push_back(cand);
      if (size + 1 == cap) std::make_heap(h.begin(), h.end(), Worse{});
    } else if (ranks_before(cand, h[0])) {
      std::pop_heap(h.begin(), h.end(), Worse{});
      h.back() = cand;
      std::push_heap(h.begin(), h.end(), Worse{});
    }
  }

  inline bool wanted(index_t i, index_t j) const {
    if (mode == RangeMode::Upper) return j > i + diag;
    if (mode == RangeMode::ExcludeSelf) return j != i + diag;
    return true;
  }

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int thread) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    // Tiles entirely on the excluded side of the diagonal, and tiles the
    // diagonal crosses, in global terms (column j is row j - diag).
    if (mode == RangeMode::Upper && j0 + nr - 1 <= i0 + diag) return;
    const bool every_pair = mode == RangeMode::All || (mode == RangeMode::Upper && j0 > i0 + mr - 1 + diag) ||
                            (mode == RangeMode::ExcludeSelf && !(i0 + diag < j0 + nr && j0 < i0 + mr + diag));
    if (mr == MR && nr == NR && every_pair) {
      V rb[NV];
      for (int v = 0; v < NV; ++v) rb[v] = load<V>(inv_c + j0 + v * L);
      const V lo = splat<V>(T(-1)), hi = splat<V>(T(1)), thr = splat<V>(threshold);
      for (int r = 0; r < MR; ++r) {
        const V ra = splat<V>(inv_q[i0 + r]);
        V s[NV];
        V pass{};
        for (int v = 0; v < NV; ++v) {
          s[v] = clamp_keep_nan(acc[r][v] * ra * rb[v], lo, hi);
          pass = (s[v] >= thr) ? splat<V>(T(1)) : pass;
        }
        bool any = false;
        for (int l = 0; l < L && !any; ++l) any = pass[l] != T(0);
        if (!any) continue;  // the common case: one compare per vector and no branch per lane
        for (int v = 0; v < NV; ++v)
          for (int l = 0; l < L; ++l)
            if (s[v][l] >= threshold) keep(thread, i0 + r, s[v][l], j0 + v * L + l);
      }
      return;
    }
    alignas(64) T t[MR * NR];
    tile_to_array<MR, NV>(acc, t);
    for (int r = 0; r < mr; ++r) {
      const index_t i = i0 + r;
      for (int jj = 0; jj < nr; ++jj) {
        const index_t j = j0 + jj;
        if (!wanted(i, j)) continue;
        const T s = clamp_keep_nan(t[r * NR + jj] * inv_q[i] * inv_c[j], T(-1), T(1));
        if (s >= threshold) keep(thread, i, s, j);
      }
    }
  }
};

// Rows per block of the driver: a multiple of every micro-tile height (so
// blocks start on tile boundaries), large enough that packing the columns
// once per block is a small share of the block's product, small enough that
// Upper mode wastes little of the triangle and the per-row lists stay few.
inline constexpr index_t kRangeBlockRows = 2040;

// Every pair of q (m rows) and c (n rows) with score >= threshold (a T,
// compared in T: the caller rounds its threshold up to T), as CSR rows of q;
// indices are col_offset + column.  max_per_row keeps the best ones per row
// (ties to the lower index), max_hits bounds the pairs held at any time.
template <class T>
RangeResult<T> range_search(const T* q, index_t m, const T* c, index_t n, index_t d, T threshold, RangeMode mode,
                            index_t row_offset, index_t col_offset, index_t max_per_row, index_t max_hits) {
  RangeResult<T> out;
  out.indptr.assign(static_cast<std::size_t>(m + 1), 0);
  if (m <= 0 || n <= 0) return out;
  const bool same = q == c && m == n && row_offset == col_offset;
  std::vector<T> inv(static_cast<std::size_t>(m + (same ? 0 : n)));
  AlignedBuffer<T> copy_q, copy_c;
  q = prepare_rows(q, m, d, inv.data(), copy_q);
  const T* inv_c = inv.data();
  if (same) {
    c = q;
  } else {
    c = prepare_rows(c, n, d, inv.data() + m, copy_c);
    inv_c = inv.data() + m;
  }
  const int nt = std::max(1, num_threads());
  const index_t block = std::min<index_t>(m, kRangeBlockRows);
  std::vector<std::vector<Scored<T>>> lists(static_cast<std::size_t>(nt * block));
  std::vector<index_t> held(static_cast<std::size_t>(nt), 0);
  std::atomic<bool> overflow{false};
  const index_t cap = max_per_row > 0 ? max_per_row : std::numeric_limits<index_t>::max();
  std::vector<Scored<T>> merged;
  for (index_t r0 = 0; r0 < m && !overflow.load(); r0 += block) {
    const index_t rows = std::min(block, m - r0);
    // Upper mode: the block's first row is r0 + row_offset, so no column at or
    // left of it (global) can pair with any row of the block.
    index_t c0 = 0;
    if (mode == RangeMode::Upper) c0 = std::clamp<index_t>(r0 + row_offset - col_offset + 1, 0, n);
    if (c0 < n) {
      const index_t used = static_cast<index_t>(out.indices.size());
      const index_t left = max_hits > used ? max_hits - used : 0;
      std::fill(held.begin(), held.end(), 0);
      RangeEpilogue<T> ep{inv.data() + r0, inv_c + c0, threshold, mode, (r0 + row_offset) - (c0 + col_offset),
                          rows, cap, lists.data(), held.data(), left, &overflow};
      GemmOptions opt;
      opt.threads = nt;
      opt.independent_rows = true;  // the sink's lists are per thread, so any thread may take any row
      opt.row_invariant = true;     // a pair's score does not depend on the blocking
      gemm_nt<T>(q + r0 * d, d, c + c0 * d, d, rows, n - c0, d, ep, opt);
      index_t total = 0;
      for (index_t h : held) total += h;
      if (total > left) overflow.store(true);
      for (index_t i = 0; i < rows; ++i) {
        merged.clear();
        for (int t = 0; t < nt; ++t) {
          std::vector<Scored<T>>& l = lists[static_cast<std::size_t>(t * rows + i)];
          merged.insert(merged.end(), l.begin(), l.end());
          std::vector<Scored<T>>().swap(l);  // give the memory back: a dense row block can be large
        }
        const index_t take = std::min<index_t>(cap, static_cast<index_t>(merged.size()));
        std::partial_sort(merged.begin(), merged.begin() + take, merged.end(), ranks_before<T>);
        for (index_t r = 0; r < take; ++r) {
          out.indices.push_back(merged[r].index + c0 + col_offset);
          out.scores.push_back(merged[r].score);
        }
        out.indptr[r0 + i + 1] = static_cast<int64_t>(out.indices.size());
      }
    } else {
      for (index_t i = 0; i < rows; ++i) out.indptr[r0 + i + 1] = static_cast<int64_t>(out.indices.size());
    }
  }
  if (overflow.load()) {
    out.complete = false;
    const int64_t last = static_cast<int64_t>(out.indices.size());
    for (index_t i = 1; i <= m; ++i) out.indptr[i] = std::min(std::max(out.indptr[i], out.indptr[i - 1]), last);
  }
  return out;
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
