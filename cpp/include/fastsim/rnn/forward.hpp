// Recurrent forward passes (LSTM, GRU, vanilla RNN) on the GEMM engine.
//
// One direction of one layer at a time.
//  Input projection: one GEMM projects every time step at once
//     (XW = X W_ih^T + bias), or, for the Siamese encoder, every row of the
//     embedding table once (rnn_direction_ids then picks rows by token id).
//  LSTM and RNN: per step, one GEMM h_{t-1} W_hh^T whose epilogue adds the
//     step's XW row, applies the gates and updates the state while the tile
//     is in registers.  When XW would pass kProjectBytes the step GEMM
//     multiplies the staged row [x_t | h_{t-1}] by [W_ih | W_hh] (K = D + H)
//     instead, and no projection buffer exists.
//  GRU: its n gate needs the input and recurrent parts apart: per step the
//     recurrent GEMM h_{t-1} W_hh^T + b_hh is followed by the gate pass.
//
// LSTM fusion: the rows of W_ih and W_hh are permuted so that every NR-wide
// micro-panel holds the four gates (i, f, g, o) of G = NR / 4 hidden units;
// a tile then carries everything needed to update those units' c and h.
// tanh(x) = 2 sigmoid(2x) - 1 lets one vector sigmoid serve all four gates.
//
// Variable lengths follow PyTorch's packed sequences: at step s a row whose
// length is <= s is frozen (state kept, nothing written; outputs there stay
// the zeros the caller allocated); the reverse direction runs step s at time
// length - 1 - s, i.e. over each sequence's own length.
//
// Weights: RnnWeights (weights.hpp); cell kinds: cell.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "../gemm.hpp"
#include "../vecmath.hpp"
#include "cell.hpp"
#include "weights.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

// XW[r, :] = X[r, :] W_ih^T + bias_x, for all N = B*T rows at once.
template <class T>
struct BiasStoreEpilogue {
  T* c;
  index_t ldc;
  const T* bias;
  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    if (nr == NV * L) {
      V bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = load<V>(bias + j0 + v * L);
      for (int r = 0; r < mr; ++r)
        for (int v = 0; v < NV; ++v) store(c + (i0 + r) * ldc + j0 + v * L, acc[r][v] + bv[v]);
    } else {
      alignas(64) T t[MR * NV * L];
      tile_to_array<MR, NV>(acc, t);
      for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nr; ++j) c[(i0 + r) * ldc + j0 + j] = t[r * NV * L + j] + bias[j0 + j];
    }
  }
};

// Optional pooled sums of the outputs: sum[i * ld + column] += h at the steps
// where t < until[i]; with them the output rows may be skipped (out = null).
template <class T>
struct Pooling {
  T* sum = nullptr;
  index_t ld = 0;
  const int64_t* until = nullptr;
};

// Where the h of step t of batch row i goes: row i * row_b + t * row_t of out
// (rows of out_ld values, columns out_off .. out_off + H; not written when out
// is null) and the pooled sums (same columns).
template <class T>
struct StepOutputs {
  T* out;
  index_t out_ld, out_off;
  index_t row_b, row_t;
  Pooling<T> pool;
  T* out_row(index_t i, index_t t) const {
    return out ? out + (i * row_b + t * row_t) * out_ld + out_off : nullptr;
  }
  T* pool_row(index_t i, index_t t) const {
    return pool.sum && t < pool.until[i] ? pool.sum + i * pool.ld + out_off : nullptr;
  }
};

// Geometry shared by the step epilogues.
template <class T>
struct StepContext {
  const T* bias;          // cols: b_ih + b_hh, in the permuted column order
  index_t H;
  const index_t* t_of;    // per batch row: time index processed this step, or -1 if frozen
  const T* h_prev;        // row i at h_prev + i * ld_h (H values)
  T* h_next;              // likewise
  index_t ld_h;
  T* c;                   // B x H (LSTM), updated in place
  StepOutputs<T> dst;
  // Per batch row: its precomputed input projection for this step (bias
  // included, cols values), or null when the GEMM itself multiplies x_t and
  // only the bias is added.
  const T* const* xrow;
  index_t rows;  // B: rows of xrow
  const T* addend(index_t i) const { return xrow ? xrow[i] : bias; }
  // The projection rows are scattered (table rows picked by token ids, or
  // rows of a large XW): ask for the same columns of the row one micro-panel
  // ahead, which the next pass over these columns will read.
  template <int MR, int NR>
  void prefetch_ahead(index_t i, index_t j0) const {
    if (!xrow || i + MR >= rows) return;
    const char* p = reinterpret_cast<const char*>(xrow[i + MR] + j0);
    for (int b = 0; b < NR * static_cast<int>(sizeof(T)); b += 64) __builtin_prefetch(p + b, 0, 2);
  }
};

// Two half-width vectors joined into one, and the halves of one.
template <class V, class VH, std::size_t... I>
inline V join_halves(VH lo, VH hi, std::index_sequence<I...>) {
  return __builtin_shufflevector(lo, hi, static_cast<int>(I)...);
}
template <class VH, std::size_t Off, class V, std::size_t... I>
inline VH half_of(V x, std::index_sequence<I...>) {
  return __builtin_shufflevector(x, x, static_cast<int>(I + Off)...);
}

// The cell update of one or two rows' units: c' = f c + i g, h = o tanh(c').
// One function for every width, so that a unit's bits never depend on which
// width carried it.
template <class T, class W>
inline void lstm_cell(W ig, W fg, W gg, W og, W& cv, W& hv) {
  cv = fg * cv + ig * gg;
  hv = og * vtanh<T>(cv);
}

// LSTM step: gates = XW_t + h W_hh^T (+ bias when XW is not used).  A panel of
// NR columns holds G = NR / 4 units of each gate (see RnnWeights), so one
// tile row finishes G units: c and h are updated right here.
template <class T>
struct LstmStepEpilogue {
  StepContext<T> ctx;

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    constexpr int G = NR / 4;
    static_assert(NR % 4 == 0, "an LSTM panel must split into four gates");
    typedef T VG __attribute__((vector_size(G * sizeof(T))));
    const index_t u0 = (j0 / NR) * G;
    const index_t H = ctx.H;
    const int units = static_cast<int>(std::min<index_t>(G, H - u0));
    // Per-lane constants: the g gate (third quarter) becomes tanh = 2 sigmoid(2x) - 1.
    V scale[NV], shift[NV];
    for (int v = 0; v < NV; ++v)
      for (int l = 0; l < L; ++l) {
        const bool is_g = ((v * L + l) / G) == 2;
        scale[v][l] = is_g ? T(2) : T(1);
        shift[v][l] = is_g ? T(-1) : T(0);
      }
    // Gates of every live row first; frozen rows carry their state over.
    alignas(64) T gate[MR][NR];
    bool live[MR];
    for (int r = 0; r < mr; ++r) {
      const index_t i = i0 + r;
      live[r] = ctx.t_of[i] >= 0;
      if (!live[r]) {
        for (int u = 0; u < units; ++u) ctx.h_next[i * ctx.ld_h + u0 + u] = ctx.h_prev[i * ctx.ld_h + u0 + u];
        continue;
      }
      ctx.template prefetch_ahead<MR, NR>(i, j0);
      const T* add = ctx.addend(i) + j0;
      for (int v = 0; v < NV; ++v) {
        const V pre = (acc[r][v] + load<V>(add + v * L)) * scale[v];
        store(gate[r] + v * L, vsigmoid<T>(pre) * scale[v] + shift[v]);
      }
    }
    // Then the cell updates.  With two vectors per panel (AVX2 and narrower)
    // a row has only half a vector of units: two live rows go through
    // lstm_cell together, one full-width tanh instead of two half-width ones.
    for (int r = 0; r < mr;) {
      if (!live[r]) {
        ++r;
        continue;
      }
      if constexpr (2 * G == L) {
        if (units == G && r + 1 < mr && live[r + 1]) {
          using Seq = std::make_index_sequence<static_cast<std::size_t>(L)>;
          using Half = std::make_index_sequence<static_cast<std::size_t>(G)>;
          auto both = [&](int q, const T* a, const T* b) {
            VG lo, hi;
            std::memcpy(&lo, a + q * G, sizeof(VG));
            std::memcpy(&hi, b + q * G, sizeof(VG));
            return join_halves<V>(lo, hi, Seq{});
          };
          T* c0 = ctx.c + (i0 + r) * H + u0;
          T* c1 = ctx.c + (i0 + r + 1) * H + u0;
          V cv = both(0, c0, c1), hv;
          lstm_cell<T>(both(0, gate[r], gate[r + 1]), both(1, gate[r], gate[r + 1]), both(2, gate[r], gate[r + 1]),
                       both(3, gate[r], gate[r + 1]), cv, hv);
          const VG c_lo = half_of<VG, 0>(cv, Half{}), c_hi = half_of<VG, G>(cv, Half{});
          const VG h_lo = half_of<VG, 0>(hv, Half{}), h_hi = half_of<VG, G>(hv, Half{});
          std::memcpy(c0, &c_lo, sizeof(VG));
          std::memcpy(c1, &c_hi, sizeof(VG));
          store_h(i0 + r, u0, h_lo);
          store_h(i0 + r + 1, u0, h_hi);
          r += 2;
          continue;
        }
      }
      const index_t i = i0 + r;
      VG ig, fg, gg, og, cv, hv;
      std::memcpy(&ig, gate[r], sizeof(VG));
      std::memcpy(&fg, gate[r] + G, sizeof(VG));
      std::memcpy(&gg, gate[r] + 2 * G, sizeof(VG));
      std::memcpy(&og, gate[r] + 3 * G, sizeof(VG));
      T* c = ctx.c + i * H + u0;
      if (units == G) {
        std::memcpy(&cv, c, sizeof(VG));
        lstm_cell<T>(ig, fg, gg, og, cv, hv);
        std::memcpy(c, &cv, sizeof(VG));
        store_h(i, u0, hv);
      } else {
        alignas(64) T cbuf[G] = {};
        for (int u = 0; u < units; ++u) cbuf[u] = c[u];
        std::memcpy(&cv, cbuf, sizeof(VG));
        lstm_cell<T>(ig, fg, gg, og, cv, hv);
        T* hn = ctx.h_next + i * ctx.ld_h + u0;
        T* o = ctx.dst.out_row(i, ctx.t_of[i]);
        T* pl = ctx.dst.pool_row(i, ctx.t_of[i]);
        if (o) o += u0;
        if (pl) pl += u0;
        for (int u = 0; u < units; ++u) {
          c[u] = cv[u];
          hn[u] = hv[u];
          if (o) o[u] = hv[u];
          if (pl) pl[u] += hv[u];
        }
      }
      ++r;
    }
  }

  // h of G units of row i: the next state, the output row and the pooled sum.
  template <class VG>
  inline void store_h(index_t i, index_t u0, VG hv) {
    const index_t t = ctx.t_of[i];
    std::memcpy(ctx.h_next + i * ctx.ld_h + u0, &hv, sizeof(VG));
    if (T* o = ctx.dst.out_row(i, t)) std::memcpy(o + u0, &hv, sizeof(VG));
    if (T* pl = ctx.dst.pool_row(i, t)) {
      VG sum;
      std::memcpy(&sum, pl + u0, sizeof(VG));
      sum += hv;
      std::memcpy(pl + u0, &sum, sizeof(VG));
    }
  }
};

// Vanilla RNN: h' = act(XW + h W_hh^T) (both biases folded into XW).
template <class T>
struct RnnStepEpilogue {
  StepContext<T> ctx;
  bool relu;
  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    constexpr int NR = NV * L;
    alignas(64) T hv[NR];
    for (int r = 0; r < mr; ++r) {
      const index_t i = i0 + r;
      const index_t t = ctx.t_of[i];
      if (t < 0) {
        for (int j = 0; j < nr; ++j) ctx.h_next[i * ctx.ld_h + j0 + j] = ctx.h_prev[i * ctx.ld_h + j0 + j];
        continue;
      }
      const index_t H = ctx.H;
      ctx.template prefetch_ahead<MR, NR>(i, j0);
      const T* bias = ctx.addend(i) + j0;
      for (int v = 0; v < NV; ++v) {
        V pre = acc[r][v];
        if (j0 + (v + 1) * L <= H) {
          pre += load<V>(bias + v * L);
        } else {
          for (int l = 0; l < L && j0 + v * L + l < H; ++l) pre[l] += bias[v * L + l];
        }
        V h = relu ? ((pre > T(0)) ? pre : V{}) : vtanh<T>(pre);
        // NaN must survive relu: (NaN > 0) is false, which would give 0.
        if (relu) h = (pre != pre) ? pre : h;
        store(hv + v * L, h);
      }
      T* o = ctx.dst.out_row(i, t);
      T* pl = ctx.dst.pool_row(i, t);
      for (int j = 0; j < nr; ++j) {
        ctx.h_next[i * ctx.ld_h + j0 + j] = hv[j];
        if (o) o[j0 + j] = hv[j];
        if (pl) pl[j0 + j] += hv[j];
      }
    }
  }
};

// XW[r, :] = X[r, :] W_ih^T + bias_x for `rows` rows of D features: the input
// projection of every time step (or of every row of an embedding table) at once.
template <class T>
void rnn_input_projection(const RnnWeights<T>& w, const T* x, index_t rows, T* xw) {
  if (rows <= 0) return;
  if (w.D == 0) {
    for (index_t r = 0; r < rows; ++r) std::copy(w.bias_x.begin(), w.bias_x.end(), xw + r * w.cols);
    return;
  }
  BiasStoreEpilogue<T> ep{xw, w.cols, w.bias_x.data()};
  GemmOptions opt;
  opt.independent_rows = true;  // the epilogue only writes its tile
  opt.row_invariant = true;     // a table row equals the projection of the same token in any batch
  gemm_nt<T>(x, w.D, nullptr, 0, rows, w.cols, w.D, ep, opt, &w.w_ih);
}

// Where the input of step t of batch row i comes from.
//   x != null   : row (i, t) of x, D features, multiplied inside the step GEMM
//                 ([x_t | h] times [W_ih | W_hh]; LSTM and RNN only)
//   pre != null : a precomputed projection row of cols values, bias included:
//                 pre + ids[i * ids_ld + t] * cols when ids is given (rows of
//                 a projected embedding table), else pre + (i*row_b + t*row_t) * cols
template <class T>
struct StepInput {
  const T* x = nullptr;
  const T* pre = nullptr;
  const int64_t* ids = nullptr;
  index_t ids_ld = 0;
};

// Threads for the steps of one direction, started once for the whole
// sequence (see rnn_steps): 1 when a step is too small to share.  Below the
// size at which a step GEMM would fork threads by itself (choose_threads), a
// barrier per step (well under a microsecond with two spinning threads)
// still pays once a step is ~10^5 FLOPs: each core then streams half of
// W_hh from its own L2, which is what a small-batch step is bound by.
inline constexpr double kStepTeamFlops = 1e5;

template <class T>
inline int step_team(index_t B, index_t cols, index_t K) {
#ifdef _OPENMP
  const int nt = num_threads();
  const index_t panels = (cols + GemmShape<T>::NR - 1) / GemmShape<T>::NR;
  const double flops = 2.0 * static_cast<double>(B) * static_cast<double>(cols) * static_cast<double>(K);
  if (nt < 2 || flops < kStepTeamFlops) return 1;
  return static_cast<int>(std::min<index_t>(nt, panels));
#else
  (void)B, (void)cols, (void)K;
  return 1;
#endif
}

// Run one direction of one layer from a given step input, on `threads`.
//   row_b, row_t : row of (i, t) = i * row_b + t * row_t, for x or pre and for out
//   lengths      : B entries in 1..T, or null (all T)
//   h, c         : B x H initial states in, final states out (c: LSTM only)
//   out          : rows of out_ld features, written at columns out_off .. out_off + H
//   threads      : 0 for the library's choice, 1 to stay on the calling thread
//   s_begin, s_end : run steps s_begin .. s_end - 1 only (s_end < 0: to the
//                  last); h and c hold the states before step s_begin, and
//                  hold those after step s_end - 1 on return
template <class T>
void rnn_steps_on(const RnnWeights<T>& w, const StepInput<T>& in, index_t B, index_t T_len, index_t row_b,
                  index_t row_t, const int64_t* lengths, bool reverse, T* h, T* c, T* out, index_t out_ld,
                  index_t out_off, const Pooling<T>& pooling, int threads, index_t s_begin = 0,
                  index_t s_end = -1) {
  const index_t H = w.H, cols = w.cols;
  if (s_end < 0 || s_end > T_len) s_end = T_len;
  if (B <= 0 || T_len <= 0 || s_begin >= s_end) return;
  // Which step of each batch row step s runs (-1: its sequence has ended) and
  // where that row's input comes from; false once every sequence has ended.
  auto plan_step = [&](index_t s, std::vector<index_t>& t_of, std::vector<const T*>& xrow) {
    bool any = false;
    for (index_t i = 0; i < B; ++i) {
      const index_t len = lengths ? static_cast<index_t>(lengths[i]) : T_len;
      const index_t t = s < len ? (reverse ? len - 1 - s : s) : -1;
      t_of[i] = t;
      if (t >= 0 && in.pre) {
        const index_t r = in.ids ? static_cast<index_t>(in.ids[i * in.ids_ld + t]) : i * row_b + t * row_t;
        xrow[i] = in.pre + r * cols;
      }
      any |= t >= 0;
    }
    return any;
  };
  std::vector<index_t> t_of(static_cast<std::size_t>(B));
  std::vector<const T*> xrow(static_cast<std::size_t>(B), nullptr);
  const StepOutputs<T> dst{out, out_ld, out_off, row_b, row_t, pooling};
  GemmOptions opt;
  opt.flush_denormals = true;
  opt.threads = threads;
  // Step GEMMs split the weight columns between threads: each core then reads
  // only its share of the packed weights, every step, and that share can stay
  // in its own L2 instead of the whole matrix streaming through every core.
  opt.split = Split::Cols;

  if (w.cell != Cell::GRU) {
    // Two staging buffers of B rows [x_t | h] (or [h] alone when the input
    // projection is precomputed); the epilogue writes h_t into the other one.
    const index_t Dx = in.x ? w.D : 0;
    const index_t K = Dx + H;
    const PackedB<T>& wp = in.x ? w.w_cat : w.w_hh;
    T* stage = scratch<T>(kScratchKernel, static_cast<std::size_t>(2 * B * K));
    std::fill(stage, stage + 2 * B * K, T(0));
    for (index_t i = 0; i < B; ++i) std::copy(h + i * H, h + (i + 1) * H, stage + i * K + Dx);
    // Copies x_t of rows [i0, i1) into the x part of a staging buffer, for
    // the step whose plan is t_loc (frozen rows keep whatever they hold: their
    // epilogue only carries the state over).
    auto stage_x = [&](T* buf, const std::vector<index_t>& t_loc, index_t i0, index_t i1) {
      for (index_t i = i0; i < i1; ++i)
        if (t_loc[i] >= 0) {
          const T* xr = in.x + (i * row_b + t_loc[i] * row_t) * Dx;
          std::copy(xr, xr + Dx, buf + i * K);
        }
    };
    // All steps, as member `rank` of a team of `size` threads started once
    // for the whole sequence (size 0: alone, each step GEMM picks its own
    // threads).  A member owns the same weight columns, hence the same hidden
    // units of h, c and the outputs, at every step; one barrier per step makes
    // h_t whole before any member reads it.  With x multiplied in the step
    // GEMM, each member also stages its share of the rows of x_{t+1} into the
    // next buffer before that barrier (nobody reads that buffer during the
    // step).  Step s_begin's x is staged by the caller.  Returns the buffer
    // holding the last h.
    auto run = [&](int rank, int size, std::vector<index_t>& t_loc, std::vector<const T*>& x_loc) {
      GemmOptions o = opt;
      o.team_rank = rank;
      o.team_size = size;
      const index_t parts = std::max(1, size);
      const index_t r0 = B * rank / parts, r1 = B * (rank + 1) / parts;
      T* cur = stage;
      T* nxt = stage + B * K;
      bool live = plan_step(s_begin, t_loc, x_loc);
      for (index_t s = s_begin; s < s_end && live; ++s) {
        StepContext<T> ctx{w.bias_x.data(), H, t_loc.data(), cur + Dx, nxt + Dx, K, c, dst,
                           in.x ? nullptr : x_loc.data(), B};
        if (w.cell == Cell::LSTM) {
          LstmStepEpilogue<T> ep{ctx};
          gemm_nt<T>(cur, K, nullptr, 0, B, cols, K, ep, o, &wp);
        } else {
          RnnStepEpilogue<T> ep{ctx, w.cell == Cell::RNN_RELU};
          gemm_nt<T>(cur, K, nullptr, 0, B, cols, K, ep, o, &wp);
        }
        // Once every sequence has ended the states are final.
        live = s + 1 < s_end && plan_step(s + 1, t_loc, x_loc);
        if (live && in.x) stage_x(nxt, t_loc, r0, r1);
#ifdef _OPENMP
        if (size > 1) {
#pragma omp barrier
        }
#endif
        std::swap(cur, nxt);
      }
      return cur;
    };
    if (in.x && plan_step(s_begin, t_of, xrow)) stage_x(stage, t_of, 0, B);
    T* last = nullptr;
    const int team = threads == 1 ? 1 : step_team<T>(B, cols, K);
#ifdef _OPENMP
    if (team > 1) {
#pragma omp parallel num_threads(team)
      {
        std::vector<index_t> t_loc(static_cast<std::size_t>(B));
        std::vector<const T*> x_loc(static_cast<std::size_t>(B), nullptr);
        T* mine = run(omp_get_thread_num(), omp_get_num_threads(), t_loc, x_loc);
        if (omp_get_thread_num() == 0) last = mine;
      }
    }
#endif
    if (!last) last = run(0, 0, t_of, xrow);
    for (index_t i = 0; i < B; ++i) std::copy(last + i * K + Dx, last + i * K + Dx + H, h + i * H);
    return;
  }

  // GRU: per step the recurrent GEMM h W_hh^T + b_hh, then the gate pass
  // against the precomputed input projection.
  // The other h and the recurrent products, in this thread's scratch: the
  // lanes call this once per slice of steps, and both are written in full
  // before they are read (every row of h_next, live or frozen; every column
  // of hh by the GEMM).
  T* hbuf = scratch<T>(kScratchKernel, static_cast<std::size_t>(B * (H + cols)));
  T* hh = hbuf + B * H;
  T* h_prev = h;
  T* h_next = hbuf;
  using V = vec_t<T>;
  constexpr int L = Simd<T>::lanes;
  for (index_t s = s_begin; s < s_end; ++s) {
    if (!plan_step(s, t_of, xrow)) break;
    BiasStoreEpilogue<T> ep{hh, cols, w.bias_h.data()};
    gemm_nt<T>(h_prev, H, nullptr, 0, B, cols, H, ep, opt, &w.w_hh);
    DenormalGuard flush(true);
    for (index_t i = 0; i < B; ++i) {
      const index_t t = t_of[i];
      T* hn = h_next + i * H;
      const T* hp = h_prev + i * H;
      if (t < 0) {
        std::copy(hp, hp + H, hn);
        continue;
      }
      const T* xr = xrow[i];
      const T* hr = hh + i * cols;
      T* o = dst.out_row(i, t);
      T* pl = dst.pool_row(i, t);
      index_t u = 0;
      for (; u + L <= H; u += L) {
        const V r = vsigmoid<T>(load<V>(xr + u) + load<V>(hr + u));
        const V z = vsigmoid<T>(load<V>(xr + H + u) + load<V>(hr + H + u));
        const V n = vtanh<T>(load<V>(xr + 2 * H + u) + r * load<V>(hr + 2 * H + u));
        const V hv = (T(1) - z) * n + z * load<V>(hp + u);
        store(hn + u, hv);
        if (o) store(o + u, hv);
        if (pl) store(pl + u, load<V>(pl + u) + hv);
      }
      for (; u < H; ++u) {
        typedef T V1 __attribute__((vector_size(sizeof(T))));
        const V1 r = vsigmoid<T>(V1{xr[u] + hr[u]});
        const V1 z = vsigmoid<T>(V1{xr[H + u] + hr[H + u]});
        const V1 n = vtanh<T>(V1{xr[2 * H + u]} + r * hr[2 * H + u]);
        const T hv = ((T(1) - z) * n + z * hp[u])[0];
        hn[u] = hv;
        if (o) o[u] = hv;
        if (pl) pl[u] += hv;
      }
    }
    std::swap(h_prev, h_next);
  }
  if (h_prev != h) std::copy(h_prev, h_prev + B * H, h);
}

// Threads that run the batch as independent lanes (see rnn_steps), or 1 to
// share each step's weight columns instead.  A lane's step GEMMs read all of
// the step weights (cols x K) every step, so a lane needs enough rows to
// amortize that: at 2.8 GHz on two cores, 32 rows per lane were 2-12% faster
// than the column split from B = 64 (H = 256 and 512, weights of 1 and
// 4 MiB, L2-resident or nearly), and 8 rows 12% slower with 4 MiB of
// weights; with 16 MiB (H = 1024) 32 rows only broke even, so weights past
// kLaneL2Bytes ask for twice the rows.
inline constexpr index_t kLaneRows = 32;
inline constexpr double kLaneL2Bytes = 4.0 * (1 << 20);

inline int batch_lanes(index_t B, index_t cols, index_t K, std::size_t elem) {
#ifdef _OPENMP
  const int nt = num_threads();
  if (nt < 2) return 1;
  const double bytes = static_cast<double>(cols) * static_cast<double>(K) * static_cast<double>(elem);
  const index_t rows = bytes <= kLaneL2Bytes ? kLaneRows : 2 * kLaneRows;
  return static_cast<int>(std::max<index_t>(1, std::min<index_t>(nt, B / rows)));
#else
  (void)B, (void)cols, (void)K, (void)elem;
  return 1;
#endif
}

// Where each of `lanes` lanes of rows starts (and, last, B).  A lane's step
// GEMMs multiply all its rows until its longest sequence ends, so its cost
// is rows x (its longest length).  The bounds, at multiples of MR rows, give
// the smallest largest cost: with lengths sorted longest first (as PyTorch
// packs them) the first lane gets fewer rows than the others, and a lane
// never costs more than its share of a column split, which runs all B rows
// until the longest sequence of the whole batch ends.
inline std::vector<index_t> lane_bounds(index_t B, index_t T_len, const int64_t* lengths, int lanes, index_t MR) {
  const index_t panels = (B + MR - 1) / MR;
  std::vector<index_t> bounds(static_cast<std::size_t>(lanes) + 1, B);
  bounds[0] = 0;
  if (!lengths) {
    for (int r = 1; r < lanes; ++r) bounds[r] = std::min(B, panels * r / lanes * MR);
    return bounds;
  }
  // Longest length within each panel of MR rows.
  std::vector<index_t> longest(static_cast<std::size_t>(panels), 0);
  for (index_t i = 0; i < B; ++i) longest[i / MR] = std::max<index_t>(longest[i / MR], lengths[i]);
  // Greedy lanes of cost <= cap; the smallest cap that needs at most `lanes`
  // lanes is found by bisection (costs are whole numbers of row-steps).
  auto cut = [&](index_t cap, std::vector<index_t>* out) {
    int used = 1;
    index_t rows = 0, len = 0;
    for (index_t p = 0; p < panels; ++p) {
      const index_t prow = std::min(MR, B - p * MR);
      const index_t l = std::max(len, longest[p]);
      if (rows > 0 && (rows + prow) * l > cap) {
        if (out && used < lanes) (*out)[used] = p * MR;
        ++used;
        rows = prow;
        len = longest[p];
      } else {
        rows += prow;
        len = l;
      }
    }
    return used <= lanes;
  };
  index_t lo = 1, hi = B * T_len;
  while (lo < hi) {
    const index_t mid = lo + (hi - lo) / 2;
    if (cut(mid, nullptr)) hi = mid; else lo = mid + 1;
  }
  cut(lo, &bounds);
  return bounds;
}

// Lanes as rnn_steps deals them: `rows` rows whose longest sequence ends at
// step `end`, run up to step `done`.
struct LaneProgress {
  index_t rows = 0, end = 0, done = 0;
  bool busy = false;
};

// Steps run per take: T / kLaneSlices, rounded up.
inline constexpr index_t kLaneSlices = 16;

// Hands out lanes: take(prev, done) gives lane `prev` back (-1: none), run
// up to step `done`, and returns the free lane with the most row-steps left,
// waiting while every unfinished lane is held by another thread, or -1 once
// all lanes are finished.  Progress is only read and written under the lock.
class LaneQueue {
 public:
  explicit LaneQueue(std::vector<LaneProgress>& lanes) : lanes_(lanes) {}
  int take(int prev, index_t done, index_t* from) {
    for (bool first = true;; first = false) {
      {
        std::lock_guard<std::mutex> hold(mu_);
        if (first && prev >= 0) {
          lanes_[static_cast<std::size_t>(prev)].busy = false;
          lanes_[static_cast<std::size_t>(prev)].done = done;
        }
        int best = -1;
        index_t most = 0;
        bool unfinished = false;
        for (std::size_t r = 0; r < lanes_.size(); ++r) {
          const LaneProgress& l = lanes_[r];
          if (l.done >= l.end) continue;
          unfinished = true;
          const index_t left = l.rows * (l.end - l.done);
          if (!l.busy && left > most) {
            most = left;
            best = static_cast<int>(r);
          }
        }
        if (best >= 0) {
          lanes_[static_cast<std::size_t>(best)].busy = true;
          *from = lanes_[static_cast<std::size_t>(best)].done;
          return best;
        }
        if (!unfinished) return -1;
      }
      std::this_thread::yield();
    }
  }

 private:
  std::vector<LaneProgress>& lanes_;
  std::mutex mu_;
};

// Run one direction of one layer from a given step input.
// Batch rows are independent sequences.  A large batch is therefore cut into
// lanes of rows, one more than there are threads, each run by one thread at
// a time: no barrier at all, where a column split meets once per step and, on
// a shared machine, makes whichever core a neighbour slowed hold the other
// up at every one of them.  Threads take the lanes in slices of steps (see
// LaneQueue), so a slowed core simply runs fewer slices.  Each lane's step
// GEMMs read all of W_hh (from L2, or L3 for [W_ih | W_hh]), which a lane of
// 16 or more rows amortizes (one thread: 12 to 48 rows of a (T, D, H) =
// (64, 128, 256) layer cost within 5% of each other per row).  Lanes start
// at multiples of MR rows, so every lane but the last has only full register
// tiles, the tiles of a single thread: results do not depend on the lanes,
// nor on which thread ran which slice.  Smaller batches keep the column
// split (rnn_steps_on).
template <class T>
void rnn_steps(const RnnWeights<T>& w, const StepInput<T>& in, index_t B, index_t T_len, index_t row_b, index_t row_t,
               const int64_t* lengths, bool reverse, T* h, T* c, T* out, index_t out_ld, index_t out_off,
               const Pooling<T>& pooling = {}) {
  if (B <= 0 || T_len <= 0) return;
  const index_t K = in.x ? w.D + w.H : w.H;
  const int threads = batch_lanes(B, w.cols, K, sizeof(T));
#ifdef _OPENMP
  if (threads > 1) {
    // One lane more than threads, run in slices of ceil(T / kLaneSlices)
    // steps: a thread runs a slice of a lane, hands the lane back and takes
    // the free lane with the most work left.  A core that a neighbour slows
    // then runs fewer slices, where one fixed lane per thread made the whole
    // call wait for it.
    const int n_lanes = static_cast<int>(std::min<index_t>(threads + 1, (B + GemmShape<T>::MR - 1) / GemmShape<T>::MR));
    const std::vector<index_t> bounds = lane_bounds(B, T_len, lengths, n_lanes, GemmShape<T>::MR);
    std::vector<LaneProgress> lane(static_cast<std::size_t>(n_lanes));
    for (int r = 0; r < n_lanes; ++r) {
      LaneProgress& l = lane[static_cast<std::size_t>(r)];
      l.rows = bounds[r + 1] - bounds[r];
      l.end = 0;
      for (index_t i = bounds[r]; i < bounds[r + 1]; ++i)
        l.end = std::max<index_t>(l.end, lengths ? static_cast<index_t>(lengths[i]) : T_len);
    }
    const index_t slice = std::max<index_t>(1, (T_len + kLaneSlices - 1) / kLaneSlices);
    LaneQueue queue(lane);
#pragma omp parallel num_threads(threads)
    {
      index_t s0 = 0, s1 = 0;
      for (int r = queue.take(-1, 0, &s0); r >= 0; r = queue.take(r, s1, &s0)) {
        const index_t i0 = bounds[r], i1 = bounds[r + 1];
        s1 = std::min(lane[static_cast<std::size_t>(r)].end, s0 + slice);
        StepInput<T> sub = in;
        if (in.x) sub.x = in.x + i0 * row_b * w.D;
        if (in.ids)
          sub.ids = in.ids + i0 * in.ids_ld;
        else if (in.pre)
          sub.pre = in.pre + i0 * row_b * w.cols;
        Pooling<T> pool = pooling;
        if (pool.sum) {
          pool.sum += i0 * pool.ld;
          pool.until += i0;
        }
        rnn_steps_on(w, sub, i1 - i0, T_len, row_b, row_t, lengths ? lengths + i0 : nullptr, reverse, h + i0 * w.H,
                     c ? c + i0 * w.H : nullptr, out ? out + i0 * row_b * out_ld : nullptr, out_ld, out_off, pool, 1,
                     s0, s1);
      }
    }
    return;
  }
#endif
  rnn_steps_on(w, in, B, T_len, row_b, row_t, lengths, reverse, h, c, out, out_ld, out_off, pooling, 0);
}

// Whether an LSTM/RNN direction projects all steps' inputs in one GEMM first
// (XW, then K = H per step) rather than multiplying [x_t | h] per step.  The
// projection reads W_ih once instead of once per step, which is what a step
// of a small batch is bound by (B = 1: twice as fast); for large batches the
// two are equal.  XW lives in per-thread scratch, so it is only used up to
// kProjectBytes; beyond, the steps multiply [x_t | h] and need no buffer.
// set_rnn_projection (FASTSIM_RNN_PROJECT=0 or 1) forces either way (the tests run both).
inline constexpr std::size_t kProjectBytes = std::size_t(64) << 20;

template <class T>
inline bool project_inputs_first(const RnnWeights<T>& w, index_t B, index_t T_len) {
  if (w.cell == Cell::GRU) return true;  // its n gate needs the input part apart
  if (const int forced = rnn_projection(); forced >= 0) return forced == 1;
  const double bytes = static_cast<double>(B) * static_cast<double>(T_len) * static_cast<double>(w.cols) * sizeof(T);
  return bytes <= static_cast<double>(kProjectBytes);
}

// Run one direction of one layer over x (rows of D features, row of (i, t) =
// i * row_b + t * row_t); see rnn_steps for the other arguments.
template <class T>
void rnn_direction(const RnnWeights<T>& w, const T* x, index_t B, index_t T_len, index_t row_b, index_t row_t,
                   const int64_t* lengths, bool reverse, T* h, T* c, T* out, index_t out_ld, index_t out_off,
                   const Pooling<T>& pooling = {}) {
  if (B <= 0 || T_len <= 0) return;
  StepInput<T> in;
  if (project_inputs_first(w, B, T_len)) {
    T* xw = scratch<T>(kScratchInput, static_cast<std::size_t>(B * T_len * w.cols));
    rnn_input_projection(w, x, B * T_len, xw);
    in.pre = xw;
  } else {
    in.x = x;
  }
  rnn_steps(w, in, B, T_len, row_b, row_t, lengths, reverse, h, c, out, out_ld, out_off, pooling);
}

// Run one direction of one layer whose inputs are rows of a projected table
// (rnn_input_projection of an embedding): step t of batch row i reads row
// ids[i * T_len + t] of `table`.  Outputs are batch-major (row i * T_len + t).
template <class T>
void rnn_direction_ids(const RnnWeights<T>& w, const T* table, const int64_t* ids, index_t B, index_t T_len,
                       const int64_t* lengths, bool reverse, T* h, T* c, T* out, index_t out_ld, index_t out_off,
                       const Pooling<T>& pooling = {}) {
  StepInput<T> in;
  in.pre = table;
  in.ids = ids;
  in.ids_ld = T_len;
  rnn_steps(w, in, B, T_len, T_len, 1, lengths, reverse, h, c, out, out_ld, out_off, pooling);
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
