// Exact cosine top-k over a corpus, FAISS-style: GEMM tiles feed per-row heaps
// and the (m, n) similarity matrix never exists.
//
// Order (the reference's): higher score first, equal scores to the lower index,
// NaN below every number (NaNs among themselves by index).  Each thread keeps
// its own heaps and sees its columns in increasing order, so a candidate only
// enters a full heap when it ranks strictly above the current worst; heaps of
// different threads are merged at the end.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cosine.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

template <class T>
struct Scored {
  T score;
  int64_t index;
};

// a ranks before b in the output order.
template <class T>
inline bool ranks_before(const Scored<T>& a, const Scored<T>& b) {
  const bool an = std::isnan(a.score), bn = std::isnan(b.score);
  if (an != bn) return bn;
  if (!an && a.score != b.score) return a.score > b.score;
  return a.index < b.index;
}

template <class T>
struct TopKEpilogue {
  const T* inv_q;
  const T* inv_c;
  index_t m, k;
  bool exclude_self;
  Scored<T>* heaps;  // [thread][row][k], a binary heap whose root is the worst kept entry
  index_t* counts;   // [thread][row]
  T* thresholds;     // [thread][row]: root score once full, else -inf (NaN-free)

  struct Worse {
    bool operator()(const Scored<T>& a, const Scored<T>& b) const { return ranks_before(a, b); }
  };

  inline void push(int thread, index_t i, T s, int64_t j) {
    const index_t slot = static_cast<index_t>(thread) * m + i;
    Scored<T>* h = heaps + slot * k;
    index_t& c = counts[slot];
    const Scored<T> cand{s, j};
    if (c < k) {
      h[c++] = cand;
      std::push_heap(h, h + c, Worse{});
    } else if (ranks_before(cand, h[0])) {
      std::pop_heap(h, h + k, Worse{});
      h[k - 1] = cand;
      std::push_heap(h, h + k, Worse{});
    } else {
      return;
    }
    if (c == k) {
      const T root = h[0].score;
      thresholds[slot] = std::isnan(root) ? -std::numeric_limits<T>::infinity() : root;
    }
  }

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int thread) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    const bool crosses_diag = exclude_self && (i0 < j0 + nr) && (j0 < i0 + mr);
    alignas(64) T t[MR * NR];
    if (mr == MR && nr == NR && !crosses_diag) {
      V rb[NV];
      for (int v = 0; v < NV; ++v) rb[v] = load<V>(inv_c + j0 + v * L);
      for (int r = 0; r < MR; ++r) {
        const index_t i = i0 + r;
        const index_t slot = static_cast<index_t>(thread) * m + i;
        const bool full = counts[slot] == k;
        const V ra = splat<V>(inv_q[i]);
        const V thr = splat<V>(thresholds[slot]);
        V s[NV];
        V pass{};
        for (int v = 0; v < NV; ++v) {
          s[v] = unit_score(acc[r][v], ra, rb[v]);
          pass = (s[v] > thr) ? splat<V>(T(1)) : pass;
        }
        bool any = !full;
        for (int l = 0; l < L && !any; ++l) any = pass[l] != T(0);
        if (!any) continue;  // the common case once the heap is warm: one compare per 2 vectors
        for (int v = 0; v < NV; ++v)
          for (int l = 0; l < L; ++l) {
            const T sv = s[v][l];
            if (!(counts[slot] == k && !(sv > thresholds[slot]))) push(thread, i, sv, j0 + v * L + l);
          }
      }
    } else {
      tile_to_array<MR, NV>(acc, t);
      for (int r = 0; r < mr; ++r) {
        const index_t i = i0 + r;
        for (int jj = 0; jj < nr; ++jj) {
          const index_t j = j0 + jj;
          if (exclude_self && j == i) continue;
          push(thread, i, unit_score(t[r * NR + jj], inv_q[i], inv_c[j]), j);
        }
      }
    }
  }
};

// scores/indices: (m, k) outputs, k <= number of candidates per row.
template <class T>
void top_k(const T* q, index_t m, const T* c, index_t n, index_t d, index_t k, bool exclude_self, T* scores,
           int64_t* indices) {
  if (m <= 0 || k <= 0) return;
  std::vector<T> inv(static_cast<std::size_t>(m + n));
  AlignedBuffer<T> copy_q, copy_c;
  q = prepare_rows(q, m, d, inv.data(), copy_q);
  c = prepare_rows(c, n, d, inv.data() + m, copy_c);
  const int nt = std::max(1, num_threads());
  std::vector<Scored<T>> heaps(static_cast<std::size_t>(nt * m * k));
  std::vector<index_t> counts(static_cast<std::size_t>(nt * m), 0);
  std::vector<T> thresholds(static_cast<std::size_t>(nt * m), -std::numeric_limits<T>::infinity());
  TopKEpilogue<T> ep{inv.data(), inv.data() + m, m, k, exclude_self, heaps.data(), counts.data(), thresholds.data()};
  GemmOptions opt;
  opt.threads = nt;
  gemm_nt<T>(q, d, c, d, m, n, d, ep, opt);
  // Merge the per-thread heaps of each row and sort them into the output order.
  std::vector<Scored<T>> merged;
  for (index_t i = 0; i < m; ++i) {
    merged.clear();
    for (int t = 0; t < nt; ++t) {
      const index_t slot = static_cast<index_t>(t) * m + i;
      merged.insert(merged.end(), heaps.begin() + slot * k, heaps.begin() + slot * k + counts[slot]);
    }
    const index_t take = std::min<index_t>(k, static_cast<index_t>(merged.size()));
    std::partial_sort(merged.begin(), merged.begin() + take, merged.end(), ranks_before<T>);
    for (index_t r = 0; r < take; ++r) {
      scores[i * k + r] = merged[r].score;
      indices[i * k + r] = merged[r].index;
    }
    for (index_t r = take; r < k; ++r) {  // only when k exceeds the candidates (the caller clips k)
      scores[i * k + r] = static_cast<T>(NAN);
      indices[i * k + r] = -1;
    }
  }
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
