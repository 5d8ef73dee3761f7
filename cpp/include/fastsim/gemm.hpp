// The GEMM engine every kernel reuses: C = A . B^T with a fused epilogue.
//
//   A : m x k, row-major, row stride lda      (queries, v2, hidden states, ...)
//   B : n x k, row-major, row stride ldb      (corpus, v1, weight rows, ...)
//
// B is packed into micro-panels (NR rows, k-major inside a panel); A is read
// in place.  The register-blocked micro-kernel accumulates one MR x NR tile
// over the whole k in vector registers, and then hands the accumulators to the
// caller's epilogue while they are still in registers.  The epilogue decides
// what a tile becomes: scaled and clamped similarities written to C, per-row
// running sums and masked maxima, LSTM gate updates... so no kernel ever
// writes an intermediate m x n matrix it does not need.
//
// Blocking: a block of B (NC rows x k, sized by gemm_block_bytes() to half of
// the per-core L2) is packed once, cooperatively, and shared by all threads.
// Each thread then walks its A rows MR at a time: those MR rows (MR x k, a few
// KiB) stay in L1 while every B micro-panel of the block streams past them
// from L2.  k is not split: the epilogue always sees complete dot products, so
// no m x n accumulation buffer exists anywhere; NC shrinks as k grows.
//
// Epilogue interface (a class with a templated call operator):
//
//   template <int MR, int NV, class V>
//   void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int thread);
//
// acc[r][v] holds C[i0 + r, j0 + v*L .. j0 + v*L + L-1] (L = vector lanes);
// only r < mr and columns < nr are real (the rest are padding zeros).  With
// the Rows split every row is owned by exactly one thread for the whole call,
// so per-row reductions need no synchronisation; an epilogue that keeps no
// per-row state can set GemmOptions::independent_rows and have row chunks
// dealt to the threads dynamically instead.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "simd.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastsim {
namespace FASTSIM_LEVEL {

// Register blocking per SIMD level: MR rows x NV vectors of accumulators.
template <class T>
struct MicroShape;

#if defined(FASTSIM_LEVEL_avx512)
// 32 zmm registers. float: 6 x 4 accumulators + 4 B vectors + a broadcast; on
// the 2048^2 x 256 product, single thread, it ran 10-20% faster than 12 x 2
// (110 vs 90-100 GFLOP/s) and 14 x 2, with 8 x 3 in between. double: the same
// shape took the float64 1024^2 x 256 cosine from 1.15x to 1.35x NumPy's time.
template <> struct MicroShape<float> { static constexpr int MR = 6, NV = 4; };
template <> struct MicroShape<double> { static constexpr int MR = 6, NV = 4; };
#elif defined(FASTSIM_LEVEL_avx2)
// 16 ymm registers: 6 x 2 accumulators + 2 B vectors + 1 broadcast.
template <> struct MicroShape<float> { static constexpr int MR = 6, NV = 2; };
template <> struct MicroShape<double> { static constexpr int MR = 6, NV = 2; };
#else
template <> struct MicroShape<float> { static constexpr int MR = 6, NV = 2; };
template <> struct MicroShape<double> { static constexpr int MR = 6, NV = 2; };
#endif

enum class Split { Auto, Rows, Cols };

// Rows per thread from which a Rows split packs B privately (see gemm_nt).
inline constexpr index_t kPrivatePackRows = 1024;

template <class T>
struct GemmShape {
  static constexpr int MR = MicroShape<T>::MR;
  static constexpr int NV = MicroShape<T>::NV;
  static constexpr int L = Simd<T>::lanes;
  static constexpr int NR = NV * L;
};

// In-register transpose of an L x L block held as L vectors (row r in v[r]):
// log2(L) rounds, round s swapping the off-diagonal s x s sub-blocks of every
// pair of rows (i, i + s), each a single two-source shuffle.
// Lane J of the result takes lane shuffle_lane(J) of the concatenation [a, b].
template <int L, int S, bool Hi>
constexpr int shuffle_lane(int j) {
  return Hi ? (((j & S) == 0) ? j + S : L + j) : (((j & S) == 0) ? j : L + j - S);
}

template <int L, int S, bool Hi, class V, std::size_t... J>
inline V shuffle_pair(V a, V b, std::index_sequence<J...>) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, shuffle_lane<L, S, Hi>(static_cast<int>(J))...);
#else
  using T = typename std::remove_reference<decltype(a[0])>::type;
  using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  typedef I M __attribute__((vector_size(sizeof(V))));
  constexpr M mask{static_cast<I>(shuffle_lane<L, S, Hi>(static_cast<int>(J)))...};
  return __builtin_shuffle(a, b, mask);
#endif
}

template <class V, int L, int S>
inline void transpose_round(V (&v)[L]) {
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) {
    if (i & S) continue;
    const V a = v[i], b = v[i + S];
    v[i] = shuffle_pair<L, S, false>(a, b, std::make_index_sequence<L>{});
    v[i + S] = shuffle_pair<L, S, true>(a, b, std::make_index_sequence<L>{});
  }
  if constexpr (S > 1) transpose_round<V, L, S / 2>(v);
}

// Pack rows [r0, r0 + rows) of a row-major matrix into panels of P rows:
// dst[p][kk][r] = src[r0 + p*P + r][kk], zero-padded past `rows`.
// When P is a multiple of the vector width the rows are moved L x L blocks at
// a time through an in-register transpose (contiguous loads and stores only).
template <int P, class T>
inline void pack_panels(const T* src, index_t ld, index_t r0, index_t rows, index_t k, T* dst) {
  using V = vec_t<T>;
  constexpr int L = Simd<T>::lanes;
  for (index_t p0 = 0; p0 < rows; p0 += P) {
    const int valid = static_cast<int>(std::min<index_t>(P, rows - p0));
    T* panel = dst + p0 * k;
    const T* rowp[P];
    for (int r = 0; r < P; ++r) rowp[r] = src + (r0 + p0 + std::min(r, valid - 1)) * ld;
    index_t kk = 0;
    if constexpr (P % L == 0 && L > 1) {
      for (; kk + L <= k; kk += L) {
        for (int g = 0; g < P; g += L) {
          V blk[L];
#pragma GCC unroll 16
          for (int r = 0; r < L; ++r) blk[r] = g + r < valid ? load<V>(rowp[g + r] + kk) : V{};
          transpose_round<V, L, L / 2>(blk);
#pragma GCC unroll 16
          for (int t = 0; t < L; ++t) store(panel + (kk + t) * P + g, blk[t]);
        }
      }
    }
    if (valid == P) {
      for (; kk < k; ++kk) {
#pragma GCC unroll 16
        for (int r = 0; r < P; ++r) panel[kk * P + r] = rowp[r][kk];
      }
    } else {
      for (; kk < k; ++kk)
        for (int r = 0; r < P; ++r) panel[kk * P + r] = r < valid ? rowp[r][kk] : T(0);
    }
  }
}

// Independent k-chains for a tile of R rows: with few rows there are too few
// accumulators to cover the FMA latency, so k is dealt round-robin to KU
// chains (kk % KU) that are summed in order at the end. Any scalar code that
// must reproduce a tile's value bit for bit (the triplet positive) follows
// exactly this order.
template <class T>
constexpr int k_chains(int rows) {
  const int acc = rows * GemmShape<T>::NV;
  return acc >= 8 ? 1 : (8 + acc - 1) / acc;
}

// Software prefetch of the B micro-panel a fixed distance ahead of the
// k-loop.  A micro-panel (NR x k, 64 KiB for float at k = 256) does not fit
// in L1 beside the A rows, so every k step loads NR elements from L2; on this
// class of machine the L2 streamer alone left the 2-thread 4096^2 x 256
// product at 245 GFLOP/s when the other tenants were busy and 296 when quiet;
// prefetching ~6 KiB ahead gave 297 and 305 in the same interleaved runs.
template <class T>
struct PanelPrefetch {
  static constexpr int row_bytes = GemmShape<T>::NR * static_cast<int>(sizeof(T));
  static constexpr int ahead = row_bytes >= 6144 ? 1 : 6144 / row_bytes;  // k steps
  static constexpr int lines = row_bytes >= 64 ? row_bytes / 64 : 1;      // cache lines per k step
  // A prefetch takes a load slot like a load: with 1 or 2 rows per tile the
  // k-loop is already load-bound (NV loads + R broadcasts for R * NV FMAs),
  // and the prefetches slowed the B = 1 recurrent step (a 1-row tile) by ~17%
  // on an Ice Lake host.  From 3 rows on they fit beside the loads.
  static constexpr bool pays(int rows) { return rows >= 3; }
  static inline void at(const T* bp, index_t kk) {
    const char* p = reinterpret_cast<const char*>(bp + (kk + ahead) * GemmShape<T>::NR);
#pragma GCC unroll 8
    for (int l = 0; l < lines; ++l) __builtin_prefetch(p + l * 64, 0, 3);
  }
};

// One tile of R (<= MR) rows x NR columns over the whole k, R known at compile
// time so every accumulator lives in a register; rows R..MR-1 stay zero.
// A is read in place (rows at stride lda, broadcast one element at a time):
// the rows of a tile are only R * k elements, they stay in L1 while the tile
// is computed, and skipping the A pack makes small problems cheap.
// KMajorA: A is a packed k-major panel instead, entry (r, kk) at a[kk * MR + r]
// (gemm_tn's packing of a k-major operand; lda unused).
template <class T, int R, bool OneChain, class Epilogue, bool KMajorA = false>
inline void micro_kernel_rows(index_t k, const T* __restrict a, index_t lda, const T* __restrict bp, Epilogue& ep,
                              index_t i0, index_t j0, int nr, int thread) {
  using S = GemmShape<T>;
  using V = vec_t<T>;
  constexpr int MR = S::MR, NV = S::NV, L = S::L, NR = S::NR;
  constexpr int KU = OneChain ? 1 : k_chains<T>(R);
  // The sums build up in `c`, whose address never escapes, so the compiler
  // keeps it in registers; `acc` is handed to the epilogue by reference and,
  // used inside the loop, was stored back to the stack on every k step by
  // GCC 12 in the full extension (2-thread cosine at 85 instead of ~200
  // GFLOP/s on an Ice Lake host).
  V c[R][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = V{};
  const T* rows[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) rows[r] = a + r * lda;
  index_t kk = 0;
  if constexpr (KU > 1) {
    V part[KU][R][NV];
#pragma GCC unroll 8
    for (int u = 0; u < KU; ++u)
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) part[u][r][v] = V{};
    for (; kk + KU <= k; kk += KU) {
#pragma GCC unroll 8
      for (int u = 0; u < KU; ++u) {
        V b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = load<V>(bp + (kk + u) * NR + v * L);
#pragma GCC unroll 32
        for (int r = 0; r < R; ++r) {
          const V av = splat<V>(KMajorA ? a[(kk + u) * MR + r] : rows[r][kk + u]);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) part[u][r][v] = vfmadd(av, b[v], part[u][r][v]);
        }
      }
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = part[0][r][v];
    // the tail goes to chain 0 before the chains are summed
    for (; kk < k; ++kk) {
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const V av = splat<V>(KMajorA ? a[kk * MR + r] : rows[r][kk]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) c[r][v] = vfmadd(av, load<V>(bp + kk * NR + v * L), c[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int u = 1; u < KU; ++u)
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) c[r][v] += part[u][r][v];
  } else {
    for (; kk < k; ++kk) {
      if constexpr (PanelPrefetch<T>::pays(R)) PanelPrefetch<T>::at(bp, kk);
      V b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[v] = load<V>(bp + kk * NR + v * L);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const V av = splat<V>(KMajorA ? a[kk * MR + r] : rows[r][kk]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) c[r][v] = vfmadd(av, b[v], c[r][v]);
      }
    }
  }
  V acc[MR][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = c[r][v];
#pragma GCC unroll 32
  for (int r = R; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  ep.template operator()<MR, NV, V>(i0, j0, R, nr, acc, thread);
}

// Scalar replica of one tile entry's accumulation order (see k_chains).
template <class T>
inline T tile_dot(const T* x, const T* y, index_t k, int chains) {
  T part[8] = {};
  index_t kk = 0;
  if (chains > 1) {
    for (; kk + chains <= k; kk += chains)
      for (int u = 0; u < chains; ++u) part[u] = fmadd(x[kk + u], y[kk + u], part[u]);
  }
  T acc = part[0];
  for (; kk < k; ++kk) acc = fmadd(x[kk], y[kk], acc);
  for (int u = 1; u < chains; ++u) acc += part[u];
  return acc;
}

// Picks the kernel for `mr` rows (edge tiles and small batches such as one
// recurrent step of a single sequence).
template <class T, int R, bool OneChain, class Epilogue, bool KMajorA = false>
inline void micro_kernel_dispatch(int mr, index_t k, const T* a, index_t lda, const T* bp, Epilogue& ep, index_t i0,
                                  index_t j0, int nr, int thread) {
  if constexpr (R > 1) {
    if (mr < R)
      return micro_kernel_dispatch<T, R - 1, OneChain, Epilogue, KMajorA>(mr, k, a, lda, bp, ep, i0, j0, nr, thread);
  }
  micro_kernel_rows<T, R, OneChain, Epilogue, KMajorA>(k, a, lda, bp, ep, i0, j0, nr, thread);
}

// With `one_chain`, edge tiles sum in the order of full tiles (see
// GemmOptions::row_invariant).
template <class T, class Epilogue>
inline void micro_kernel(index_t k, const T* __restrict a, index_t lda, const T* __restrict bp, Epilogue& ep,
                         index_t i0, index_t j0, int mr, int nr, int thread, bool one_chain = false) {
  constexpr int MR = GemmShape<T>::MR;
  if (mr == MR)
    micro_kernel_rows<T, MR, false>(k, a, lda, bp, ep, i0, j0, nr, thread);
  else if (one_chain)
    micro_kernel_dispatch<T, MR - 1, true>(mr, k, a, lda, bp, ep, i0, j0, nr, thread);
  else
    micro_kernel_dispatch<T, MR - 1, false>(mr, k, a, lda, bp, ep, i0, j0, nr, thread);
}

// A block of B rows packed once and reusable across calls (e.g. LSTM weights).
template <class T>
struct PackedB {
  index_t n = 0, k = 0;
  AlignedBuffer<T> data;  // ceil(n / NR) panels of NR x k
  void pack(const T* b, index_t ldb, index_t n_, index_t k_) {
    constexpr int NR = GemmShape<T>::NR;
    n = n_;
    k = k_;
    const index_t panels = (n + NR - 1) / NR;
    data.resize(static_cast<std::size_t>(std::max<index_t>(1, panels * NR * k)));
    pack_panels<NR>(b, ldb, 0, n, k, data.data());
  }
};

struct GemmOptions {
  Split split = Split::Auto;
  int threads = 0;                // 0: fastsim::num_threads(), reduced for small problems
  bool flush_denormals = false;   // FTZ/DAZ in every worker for the call, caller's mode restored
  // The epilogue keeps no state per row (it only writes its tile): a Rows
  // split may then deal row chunks to the threads as they come free instead
  // of giving each a fixed share (see gemm_nt).
  bool independent_rows = false;
  // Every row is summed in one order, that of a full MR-row tile, wherever it
  // falls: edge tiles give up the extra k-chains that k_chains grants tiles
  // of few rows.  A row's result then does not depend on how many rows share
  // the call (the encoder's projected-embedding table and its per-call
  // projection of the same tokens agree bitwise).  Costs nothing on large
  // products; a 1-row product runs latency-bound.
  bool row_invariant = false;
  // Run as member `team_rank` of a team of `team_size` threads that the
  // caller has already started (inside its own parallel region): no fork, no
  // thread choice; every member must call with the same arguments.  Only for
  // pre-packed B with the Cols split, which needs no barrier.
  int team_rank = 0;
  int team_size = 0;
};

// Micro-panels per dynamically dealt row chunk: at most 16 (96 rows of float
// at MR = 6), and small enough that each thread gets about 8 chunks.  A fixed
// 16 split a 128-row cosine matrix into chunks of 96 and 32 rows, so one
// thread did three quarters of the work (47 us against 28 us for the evenly
// split product on a Zen 3 core pair).
inline constexpr index_t kRowChunkPanels = 16;
inline index_t row_chunk_panels(index_t m_panels, int threads) {
  return std::max<index_t>(1, std::min<index_t>(kRowChunkPanels, m_panels / (8 * static_cast<index_t>(threads))));
}

// Sets flush-to-zero and denormals-are-zero for this thread while alive, then
// restores the previous mode (MXCSR is per thread, so each worker needs one).
class DenormalGuard {
 public:
  explicit DenormalGuard(bool enable) {
#if defined(__SSE__) || defined(__x86_64__)
    if (enable) {
      __asm__ volatile("stmxcsr %0" : "=m"(saved_));
      unsigned int flushed = saved_ | 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)
      __asm__ volatile("ldmxcsr %0" : : "m"(flushed));
      active_ = true;
    }
#else
    (void)enable;
#endif
  }
  ~DenormalGuard() {
#if defined(__SSE__) || defined(__x86_64__)
    if (active_) __asm__ volatile("ldmxcsr %0" : : "m"(saved_));
#endif
  }
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;

 private:
  unsigned int saved_ = 0;
  bool active_ = false;
};

// Runs body(tid, nthr) on nt threads (an OpenMP team when nt > 1), or once on
// the calling thread.
template <class F>
inline void run_threads(int nt, F&& body) {
#ifdef _OPENMP
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#else
  (void)nt;
#endif
  body(0, 1);
}

template <class T>
inline int choose_threads(index_t m, index_t n, index_t k, int requested) {
  int nt = requested > 0 ? requested : num_threads();
#ifndef _OPENMP
  nt = 1;
#endif
  // A thread pays for itself from ~20 us of work: 4 MFLOP with 16 float lanes
  // (AVX-512), 2 MFLOP with 8 (AVX2).  On a Zen 3 pair, a 128^3 product (4.2
  // MFLOP) took 51 us on one thread and 28 us on two.
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  const double per_thread = 2.5e5 * Simd<float>::lanes;
  const int by_work = static_cast<int>(std::max(1.0, flops / per_thread));
  return std::max(1, std::min(nt, by_work));
}

// C-like driver: for every (i, j), dot(A[i], B[j]) is delivered to `ep`.
// If `packed_b` is given, `b`/`ldb` are ignored and the pre-packed panels are used.
template <class T, class Epilogue>
void gemm_nt(const T* a, index_t lda, const T* b, index_t ldb, index_t m, index_t n, index_t k, Epilogue& ep,
             GemmOptions opt = {}, const PackedB<T>* packed_b = nullptr) {
  using S = GemmShape<T>;
  constexpr int MR = S::MR, NR = S::NR;
  if (m <= 0 || n <= 0) return;
  const index_t kk = std::max<index_t>(k, 1);
  const index_t row_bytes = kk * static_cast<index_t>(sizeof(T));
  // B block: NC rows x k packed, sized to stay in L2 while the A micro-panels of
  // a thread stream past it (each A micro-panel is MR rows, L1-resident).
  const index_t NC = std::max<index_t>(NR, std::min<index_t>(NR * 64, (static_cast<index_t>(gemm_block_bytes()) / row_bytes) / NR * NR));
  const bool in_team = opt.team_size > 0;
  if (in_team && !packed_b) return;  // not supported (see GemmOptions::team_size)
  int nt = in_team ? opt.team_size : choose_threads<T>(m, n, k, opt.threads);
  Split split = in_team ? Split::Cols : opt.split;
  if (split == Split::Auto) split = (m >= static_cast<index_t>(nt) * MR * 4) ? Split::Rows : Split::Cols;
  if (split == Split::Rows) nt = static_cast<int>(std::max<index_t>(1, std::min<index_t>(nt, (m + MR - 1) / MR)));

  // Rows split: every thread reads the whole block, packed cooperatively, so a
  // barrier separates packing from use.  Two buffers alternate between blocks:
  // a thread packing block j + 1 has passed the barrier of block j, which no
  // thread passes before it finished block j - 1, the buffer's previous user;
  // one barrier per block suffices (with a single block, one buffer and one
  // barrier).  Cols split: a thread packs exactly the panels it multiplies,
  // into a region of the buffer that is its own (blocks split into different
  // panel ranges, so a shared region could be repacked by a thread already at
  // the next block while another still reads it): no barrier at all.
  //
  // With many rows per thread (tall products such as a 4096-row cosine
  // matrix) each thread instead packs every block into a buffer of its own:
  // packing B twice costs ~1% there, and the threads no longer meet at a
  // barrier per block, where on a shared machine the one that a neighbour
  // slowed down made the other wait, block after block.
  const index_t block_cols = std::min<index_t>(NC, (n + NR - 1) / NR * NR);
  const index_t block_elems = block_cols * kk;
  const bool private_blocks = nt > 1 && split == Split::Rows && m >= static_cast<index_t>(nt) * kPrivatePackRows;
  const bool two_buffers = nt > 1 && split == Split::Rows && n > NC && !private_blocks;
  const bool own_regions = nt > 1 && split == Split::Cols;
  // nthr regions of ceil(block panels / nthr) panels each fit in block panels + nthr - 1
  const index_t buffer_elems = own_regions      ? (block_cols / NR + nt) * NR * kk
                               : private_blocks ? block_elems * nt
                                                : block_elems * (two_buffers ? 2 : 1);
  T* bbuf = packed_b ? nullptr : scratch<T>(kScratchPackB, static_cast<std::size_t>(buffer_elems));
  const index_t m_panels = (m + MR - 1) / MR;
  // Dynamic rows: within each block, chunks of rows go to whichever thread
  // asks next (one counter per block, as threads may be in different blocks).
  // On a shared machine one core is often slowed by a neighbour; a static
  // half each then left the other idle for a median 3-6% (p90 over 20%) of a
  // 4096-row cosine call.  Every tile is still one micro-kernel call on the
  // same packed panels, so results do not depend on who computed them; the
  // two-buffer argument above holds as well, since a thread only moves to
  // the next block once the chunks it took are done.
  const index_t chunk_panels = row_chunk_panels(m_panels, nt);
  const bool dynamic_rows = opt.independent_rows && nt > 1 && split == Split::Rows && m_panels > chunk_panels;
  const index_t n_blocks = (n + NC - 1) / NC;
  std::unique_ptr<std::atomic<index_t>[]> next_chunk;
  if (dynamic_rows) {
    next_chunk.reset(new std::atomic<index_t>[static_cast<std::size_t>(n_blocks)]);
    for (index_t blk = 0; blk < n_blocks; ++blk) next_chunk[blk].store(0, std::memory_order_relaxed);
  }

  // The whole computation of one thread; barriers only when several run it.
  auto body = [&](const int tid, const int nthr) {
    DenormalGuard denormals(opt.flush_denormals);
    // Static row ownership: thread t always gets the same row panels.
    index_t row_begin = 0, row_end = m;
    if (split == Split::Rows) {
      row_begin = std::min(m, (m_panels * tid / nthr) * MR);
      row_end = std::min(m, (m_panels * (tid + 1) / nthr) * MR);
    }
    for (index_t jc = 0, block = 0; jc < n; jc += NC, ++block) {
      const index_t nc = std::min(NC, n - jc);
      const index_t n_panels = (nc + NR - 1) / NR;
      index_t jp_begin = 0, jp_end = n_panels;
      if (split == Split::Cols) {
        jp_begin = n_panels * tid / nthr;
        jp_end = n_panels * (tid + 1) / nthr;
      }
      const T* bblock;     // panel jp of the block is at bblock + (jp - jp_first) * NR * kk
      index_t jp_first = 0;
      if (packed_b) {
        bblock = packed_b->data.data() + jc * kk;  // panels are contiguous: a block is a slice
      } else {
        index_t p0 = n_panels * tid / nthr, p1 = n_panels * (tid + 1) / nthr;
        T* dst;
        if (private_blocks) {
          p0 = 0;
          p1 = n_panels;
          dst = bbuf + tid * block_elems;
        } else if (own_regions && nthr > 1) {
          const index_t own_panels = (block_cols / NR + nthr - 1) / nthr;  // >= p1 - p0 in every block
          dst = bbuf + tid * own_panels * NR * kk;  // this thread's panels p0 .. p1 only
          jp_first = p0;
        } else {
          dst = bbuf + (two_buffers ? (block & 1) * block_elems : 0);
        }
        if (p1 > p0)
          pack_panels<NR>(b, ldb, jc + p0 * NR, std::min(nc - p0 * NR, (p1 - p0) * NR), k,
                          dst + (p0 - jp_first) * NR * kk);
#ifdef _OPENMP
        if (nthr > 1 && split == Split::Rows && !private_blocks) {
#pragma omp barrier
        }
#endif
        bblock = dst;
      }
      auto rows = [&](index_t r0, index_t r1) {
        for (index_t i0 = r0; i0 < r1; i0 += MR) {
          const int mr = static_cast<int>(std::min<index_t>(MR, r1 - i0));
          const T* ap = a + i0 * lda;
          for (index_t jp = jp_begin; jp < jp_end; ++jp) {
            const index_t j0 = jc + jp * NR;
            const int nr = static_cast<int>(std::min<index_t>(NR, n - j0));
            micro_kernel<T>(k, ap, lda, bblock + (jp - jp_first) * NR * kk, ep, i0, j0, mr, nr, tid,
                            opt.row_invariant);
          }
        }
      };
      if (jp_end > jp_begin) {
        if (dynamic_rows) {
          const index_t chunk = chunk_panels * MR;
          const index_t n_chunks = (m + chunk - 1) / chunk;
          for (index_t c = next_chunk[block].fetch_add(1, std::memory_order_relaxed); c < n_chunks;
               c = next_chunk[block].fetch_add(1, std::memory_order_relaxed))
            rows(c * chunk, std::min(m, (c + 1) * chunk));
        } else {
          rows(row_begin, row_end);
        }
      }
    }
  };
  if (in_team) return body(opt.team_rank, opt.team_size);
  run_threads(nt, body);
}

// Copy a register tile to a plain MR x NR array (for edge tiles handled by scalar code).
template <int MR, int NV, class V, class T>
inline void tile_to_array(V (&acc)[MR][NV], T* out) {
  constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(out + r * NV * L + v * L, acc[r][v]);
}

// The plain epilogue: C[i, j] = alpha * dot (used for testing the engine and by the RNNs).
template <class T>
struct StoreEpilogue {
  T* c;
  index_t ldc;
  T alpha = T(1);
  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    if (mr == MR && nr == NV * L) {
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) store(c + (i0 + r) * ldc + j0 + v * L, acc[r][v] * alpha);
    } else {
      alignas(64) T t[MR * NV * L];
      tile_to_array<MR, NV>(acc, t);
      for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nr; ++j) c[(i0 + r) * ldc + j0 + j] = alpha * t[r * NV * L + j];
    }
  }
};


// One operand-and-result pair of gemm_tn: B (k x n, row stride ldb) and its C
// (m x n, row stride ldc); rows of B flagged in zero_k (optional, k) count
// as rows of zeros, whatever they hold.
template <class T>
struct TnPart {
  const T* b;
  index_t ldb;
  index_t n;
  T* c;
  index_t ldc;
  const uint8_t* zero_k = nullptr;
};

// Writes a tile of a product over one k-chunk into C (the first chunk) or adds
// it (the later ones); column j of the tile goes to the part that holds it.
template <class T>
struct ChunkEpilogue {
  const TnPart<T>* parts;
  const index_t* start;  // first column of each part, and the total
  int n_parts;
  bool first;
  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    int p = 0;
    while (j0 >= start[p + 1]) ++p;
    if (mr == MR && nr == NV * L && j0 + nr <= start[p + 1]) {
      T* c = parts[p].c + (j0 - start[p]);
      const index_t ldc = parts[p].ldc;
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) {
          T* q = c + (i0 + r) * ldc + v * L;
          store(q, first ? acc[r][v] : load<V>(q) + acc[r][v]);
        }
      return;
    }
    alignas(64) T t[MR * NV * L];
    tile_to_array<MR, NV>(acc, t);
    for (int j = 0; j < nr; ++j) {
      const index_t col = j0 + j;
      while (col >= start[p + 1]) ++p;
      T* c = parts[p].c + (col - start[p]);
      const index_t ldc = parts[p].ldc;
      for (int r = 0; r < mr; ++r) {
        T* q = c + (i0 + r) * ldc;
        *q = first ? t[r * NV * L + j] : *q + t[r * NV * L + j];
      }
    }
  }
};

// The second driver: C = A^T B for A (k x m) and B (k x n), both row-major
// with k the row index, as the weight gradients of a recurrent layer (dW =
// dA^T X over k = T * B steps and rows).  B may come in parts side by side
// (dW_ih and dW_hh of one dA in one pass: [X | H_prev], each with its own C);
// no transposed copy of any operand is made.  k is taken in chunks of kc
// rows; per chunk each thread packs the B rows into micro-panels (a
// contiguous copy of NR columns per k) and, for each of its MR-row panels of
// C, the A columns into a k-major MR x kc panel in L1 (MR contiguous entries
// of each row of A); the micro-kernel of gemm_nt runs on them (KMajorA), and
// the chunk's tile is written or added to C.
//   col_sums (optional, m): the column sums of A (the bias gradient), taken in
//            double from each packed panel.
// Threads own fixed row panels of C, so the result does not depend on timing.
template <class T>
void gemm_tn_parts(const T* a, index_t lda, index_t m, index_t k, const TnPart<T>* parts, int n_parts, T* col_sums,
                   GemmOptions opt = {}) {
  using S = GemmShape<T>;
  using V = vec_t<T>;
  constexpr int MR = S::MR, NR = S::NR, NV = S::NV, L = S::L;
  if (m <= 0) return;
  std::vector<index_t> start(static_cast<std::size_t>(n_parts) + 1, 0);
  for (int p = 0; p < n_parts; ++p) start[p + 1] = start[p] + std::max<index_t>(parts[p].n, 0);
  const index_t n = start[n_parts];
  if (k <= 0 || n <= 0) {
    for (int p = 0; p < n_parts; ++p)
      for (index_t i = 0; i < m && parts[p].n > 0; ++i)
        std::fill(parts[p].c + i * parts[p].ldc, parts[p].c + i * parts[p].ldc + parts[p].n, T(0));
    if (col_sums) {
      std::vector<double> sums(static_cast<std::size_t>(m), 0.0);
      for (index_t kk = 0; kk < k; ++kk)
        for (index_t i = 0; i < m; ++i) sums[static_cast<std::size_t>(i)] += static_cast<double>(a[kk * lda + i]);
      for (index_t i = 0; i < m; ++i) col_sums[i] = static_cast<T>(sums[static_cast<std::size_t>(i)]);
    }
    return;
  }
  const index_t n_panels = (n + NR - 1) / NR;
  // k-chunks of 2 KiB per row of an A panel (512 float, 256 double): the A
  // panel (MR x kc) stays in L1.  On a Zen 3 pair, 512 float rows ran the
  // 512 x 256 x 16384 product at 141 GFLOP/s against 104 for 256 rows and 139
  // for 128 (the L2 share of gemm_nt's blocks gave 256 there).
  constexpr index_t kc = 2048 / static_cast<index_t>(sizeof(T));
  const index_t m_panels = (m + MR - 1) / MR;
  int nt = choose_threads<T>(m, n, k, opt.threads);
  nt = static_cast<int>(std::max<index_t>(1, std::min<index_t>(nt, m_panels)));
  auto body = [&](const int tid, const int nthr) {
    DenormalGuard denormals(opt.flush_denormals);
    const index_t p_begin = m_panels * tid / nthr, p_end = m_panels * (tid + 1) / nthr;
    if (p_end <= p_begin) return;
    T* bpack = scratch<T>(kScratchPackB, static_cast<std::size_t>(n_panels * NR * kc));
    alignas(64) T apack[MR * (2048 / sizeof(T))];  // MR x kc
    std::vector<double> row_sums;
    if (col_sums) row_sums.assign(static_cast<std::size_t>((p_end - p_begin) * MR), 0.0);
    for (index_t k0 = 0; k0 < k; k0 += kc) {
      const index_t kn = std::min(kc, k - k0);
      int part = 0;
      for (index_t jp = 0; jp < n_panels; ++jp) {
        const index_t j0 = jp * NR;
        while (j0 >= start[part + 1]) ++part;
        T* dst = bpack + jp * NR * kn;
        if (j0 + NR <= start[part + 1]) {  // the panel lies in one part
          const TnPart<T>& pt = parts[part];
          const T* src0 = pt.b + (j0 - start[part]);
          for (index_t kk = 0; kk < kn; ++kk) {
            T* d = dst + kk * NR;
            if (pt.zero_k && pt.zero_k[k0 + kk]) {
              for (int v = 0; v < NV; ++v) store(d + v * L, V{});
            } else {
              const T* src = src0 + (k0 + kk) * pt.ldb;
#pragma GCC unroll 4
              for (int v = 0; v < NV; ++v) store(d + v * L, load<V>(src + v * L));
            }
          }
        } else {  // across a boundary between parts, or past the last column
          for (index_t kk = 0; kk < kn; ++kk) {
            T* d = dst + kk * NR;
            int q = part;
            for (index_t j = 0; j < NR; ++j) {
              const index_t col = j0 + j;
              while (q < n_parts && col >= start[q + 1]) ++q;
              if (q >= n_parts) {
                d[j] = T(0);
              } else {
                const TnPart<T>& pt = parts[q];
                d[j] = (pt.zero_k && pt.zero_k[k0 + kk]) ? T(0) : pt.b[(k0 + kk) * pt.ldb + (col - start[q])];
              }
            }
          }
        }
      }
      ChunkEpilogue<T> ep{parts, start.data(), n_parts, k0 == 0};
      for (index_t ip = p_begin; ip < p_end; ++ip) {
        const index_t i0 = ip * MR;
        const int mr = static_cast<int>(std::min<index_t>(MR, m - i0));
        // the panel k-major: MR contiguous entries of each row of A
        const T* src = a + k0 * lda + i0;
        if (mr == MR) {
          for (index_t kk = 0; kk < kn; ++kk) std::memcpy(apack + kk * MR, src + kk * lda, sizeof(T) * MR);
        } else {
          for (index_t kk = 0; kk < kn; ++kk)
            for (int r = 0; r < mr; ++r) apack[kk * MR + r] = src[kk * lda + r];
        }
        if (col_sums) {  // the panel's column sums, from L1: entry q of the panel belongs to row q % MR
          constexpr int W = 2 * MR;
          double sum[W] = {};
          const index_t total = kn * MR;
          index_t q = 0;
          for (; q + W <= total; q += W)
#pragma GCC unroll 16
            for (int u = 0; u < W; ++u) sum[u] += static_cast<double>(apack[q + u]);
          for (; q < total; ++q) sum[q % W] += static_cast<double>(apack[q]);
          double* acc = row_sums.data() + (ip - p_begin) * MR;
          for (int r = 0; r < mr; ++r) acc[r] += sum[r] + sum[r + MR];
        }
        for (index_t jp = 0; jp < n_panels; ++jp) {
          const index_t j0 = jp * NR;
          const int nr = static_cast<int>(std::min<index_t>(NR, n - j0));
          const T* bp = bpack + jp * NR * kn;
          if (mr == MR)
            micro_kernel_rows<T, MR, false, ChunkEpilogue<T>, true>(kn, apack, 0, bp, ep, i0, j0, nr, tid);
          else
            micro_kernel_dispatch<T, MR - 1, false, ChunkEpilogue<T>, true>(mr, kn, apack, 0, bp, ep, i0, j0, nr,
                                                                            tid);
        }
      }
    }
    if (col_sums)
      for (index_t i = p_begin * MR; i < std::min(m, p_end * MR); ++i)
        col_sums[i] = static_cast<T>(row_sums[static_cast<std::size_t>(i - p_begin * MR)]);
  };
  run_threads(nt, body);
}

// C (m x n, row stride ldc) = A^T B with one B (see gemm_tn_parts).
template <class T>
void gemm_tn(const T* a, index_t lda, const T* b, index_t ldb, index_t m, index_t n, index_t k, T* c, index_t ldc,
             T* col_sums = nullptr, const uint8_t* zero_k = nullptr, GemmOptions opt = {}) {
  const TnPart<T> part{b, ldb, n, c, ldc, zero_k};
  gemm_tn_parts<T>(a, lda, m, k, &part, 1, col_sums, opt);
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
