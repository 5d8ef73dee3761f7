// Training form of the recurrent layers on the GEMM engine: a forward pass
// that keeps a workspace, and backpropagation through time that reads it.
// The weights come in the one layout of python/fastsim/rnn/weights.py
// (PyTorch's) and are packed per call (W_hh, and W_hh^T for the backward);
// the cell kinds and the workspace width are cell.hpp's.
// The NumPy reference (python/fastsim/_reference/rnn_backward.py) is the
// specification; names and equations follow it.
//
// One direction of one layer, time-major arrays: row (t, b) of a (T, B, .)
// array is at t * B + b.  PyTorch layout and gate order (LSTM i f g o, GRU
// r z n), G gates, GH = G * H.
//
// Workspace of a direction (written by the forward, read by the backward):
//   act    (T, B, A)  LSTM [i f g o] (A = 4H); GRU [r z n a_hn] (A = 4H, a_hn =
//                     W_hn h + b_hn); RNN [h'] (A = H)
//   h_prev (T, B, H)  the hidden state entering each step
//   c_prev (T, B, H)  LSTM: the cell state entering each step
//   tanh_c (T, B, H)  LSTM: tanh of the new cell state
//
// Forward: one GEMM projects every step (XW = X W_ih^T + bias); per step the
// recurrent GEMM h W_hh^T lands in a (B, GH) buffer and one vectorized pass
// applies the gates, writing the new states, the outputs and the workspace.
//
// Backward: the steps are walked in the other order.  Per step one GEMM
// dA_h(t) W_hh gives the hidden-state gradient; its epilogue, while the tile
// is in registers, finishes dh(t-1) (plus the GRU's z-path term) and applies
// the gate derivatives of the next step back, writing that step's dA_x and
// dA_h rows, so the gates need no pass of their own.  Afterwards the input
// and weight gradients are large GEMMs over all steps at once:
//   dX = dA_x W_ih,  dW_ih = dA_x^T X,  dW_hh = dA_h^T H_prev
// (the latter two by gemm_tn over k = T * B, reading the time-major arrays
// in place; the bias gradients are the column sums of dA, taken meanwhile).
// Packed-sequence semantics: a row inactive at step t (t >= lengths[b])
// passes its state gradient through and its dA rows are 0; its (padding)
// inputs count as zeros in dW_ih.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "../gemm.hpp"
#include "../vecmath.hpp"
#include "cell.hpp"
#include "forward.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {
namespace train {

// f(j, V{}) over j = 0, L, 2L, ... then f(j, V1{}) over the tail, V1 a
// one-lane vector: the same expression code serves both.
template <class T, class F>
inline void for_lanes(index_t n, F&& f) {
  using V = vec_t<T>;
  typedef T V1 __attribute__((vector_size(sizeof(T))));
  constexpr index_t L = Simd<T>::lanes;
  index_t j = 0;
  for (; j + L <= n; j += L) f(j, V{});
  for (; j < n; ++j) f(j, V1{});
}

// Buffers of the calling thread kept for its next call: the backward's
// gradient buffers are tens of MiB at the course's sizes, and fresh pages
// cost their first touch (the kernel clearing pages took 12% of a
// (512, 32, 128, 128) LSTM backward).
enum KeptBuffer { kKeptXW = 0, kKeptRec, kKeptDAx, kKeptDAh, kKeptDirect, kKeptBuffers };

template <class T>
inline T* kept(int slot, index_t n) {
  thread_local AlignedBuffer<unsigned char> buffers[kKeptBuffers];
  buffers[slot].resize(static_cast<std::size_t>(std::max<index_t>(n, 1)) * sizeof(T));
  return reinterpret_cast<T*>(buffers[slot].data());
}

template <class V, class T>
inline V ld(const T* p) {
  return load<V>(p);
}

// max(a, 0) keeping NaN (as NumPy's maximum)
template <class V>
inline V relu_keep_nan(V a) {
  return ((a > 0) | (a != a)) ? a : V{};
}

// Threads over slices of the batch, each running the whole time loop on its
// rows with single-threaded GEMMs: the rows of a recurrent step are
// independent, so no thread waits for another between steps.  (A barrier per
// step, with a parallel GEMM and a parallel gate pass, ran 8-15x slower than
// one thread on this shared 2-core host whenever a neighbour's process took
// one of the cores.)  About 16 rows per thread at least.
inline int slice_threads(index_t B) {
  int nt = 1;
#ifdef _OPENMP
  nt = static_cast<int>(std::max<index_t>(1, std::min<index_t>(num_threads(), B / 16)));
#else
  (void)B;
#endif
  return nt;
}

// Slices start at multiples of the micro-kernel's MR rows, so every slice's
// register tiles are the tiles of a one-thread run (the last one's edge tile
// included): results do not depend on the thread count.  (Boundaries at
// multiples of 8 rows, with MR = 6, gave the step GEMMs other edge tiles, and
// other last bits, than one thread did.)
template <class T, class F>
inline void over_slices(index_t B, F&& f) {
  const int nt = slice_threads(B);
  constexpr index_t MR = GemmShape<T>::MR;
  auto run = [&](int tid, int nthr) {
    const index_t b0 = (B * tid / nthr) / MR * MR, b1 = tid + 1 == nthr ? B : (B * (tid + 1) / nthr) / MR * MR;
    if (b1 > b0) f(b0, b1);
  };
  run_threads(nt, run);
}

template <class T>
struct Dims {
  Cell cell;
  index_t Tn, B, D, H, G, GH, A;
  // Row stride of the backward's dA buffers: GH, plus one cache line when
  // rows would lie a multiple of 2 KiB apart (GH = 1024 float), whose loads
  // then share L1 sets and alias the epilogue's stores 4 KiB away.
  index_t LA;
  Dims(int c, index_t T_len, index_t B_, index_t D_, index_t H_) : cell(static_cast<Cell>(c)), Tn(T_len), B(B_), D(D_), H(H_) {
    G = gate_count(cell);
    GH = G * H;
    A = workspace_width(cell, H);
    const index_t bytes = GH * static_cast<index_t>(sizeof(T));
    LA = GH + ((bytes % 2048 == 0) ? 64 / static_cast<index_t>(sizeof(T)) : 0);
  }
};

// out = A^T for A (rows x cols) row-major (the weight matrices' small transposes)
template <class T>
void transpose(const T* a, index_t rows, index_t cols, T* out) {
  constexpr index_t blk = 32;
  for (index_t c0 = 0; c0 < cols; c0 += blk)
    for (index_t r0 = 0; r0 < rows; r0 += blk) {
      const index_t r1 = std::min(rows, r0 + blk), c1 = std::min(cols, c0 + blk);
      for (index_t c = c0; c < c1; ++c)
        for (index_t r = r0; r < r1; ++r) out[c * rows + r] = a[r * cols + c];
    }
}

// ---------------------------------------------------------------- forward

template <class T>
void forward(int cell_id, const T* x, index_t T_len, index_t B, index_t D, index_t H, const T* W_ih, const T* W_hh,
             const T* b_ih, const T* b_hh, const int64_t* lengths, bool reverse, T* h, T* c, T* out, T* act,
             T* h_prev, T* c_prev, T* tanh_c) {
  const Dims<T> d(cell_id, T_len, B, D, H);
  if (T_len <= 0 || B <= 0) return;
  const index_t GH = d.GH, A = d.A;
  const Cell cell = d.cell;
  // Input projection of every step, with the biases that fold into it.
  std::vector<T> bias_x(static_cast<std::size_t>(GH)), bias_h(static_cast<std::size_t>(GH), T(0));
  for (index_t g = 0; g < GH; ++g) {
    bias_x[g] = b_ih[g] + (cell == Cell::GRU ? T(0) : b_hh[g]);
    if (cell == Cell::GRU) bias_h[g] = b_hh[g];
  }
  T* xw = kept<T>(kKeptXW, T_len * B * GH);
  BiasStoreEpilogue<T> proj{xw, GH, bias_x.data()};
  GemmOptions opt;
  opt.flush_denormals = true;
  // a small projection on the calling thread (see the backward's products)
  if (2.0 * static_cast<double>(T_len * B) * static_cast<double>(GH) * static_cast<double>(D) < 1.6e7) opt.threads = 1;
  if (D > 0)
    gemm_nt<T>(x, D, W_ih, D, T_len * B, GH, D, proj, opt);
  else
    for (index_t r = 0; r < T_len * B; ++r) std::copy(bias_x.begin(), bias_x.end(), xw + r * GH);
  PackedB<T> whh;
  whh.pack(W_hh, H, GH, H);
  T* rec = kept<T>(kKeptRec, B * GH);
  GemmOptions one;
  one.threads = 1;
  over_slices<T>(B, [&](index_t b0, index_t b1) {
    DenormalGuard denormals(true);
    const index_t rows = b1 - b0;
    for (index_t s = 0; s < T_len; ++s) {
      const index_t t = reverse ? T_len - 1 - s : s;
      std::memcpy(h_prev + (t * B + b0) * H, h + b0 * H, sizeof(T) * static_cast<std::size_t>(rows * H));
      if (c_prev) std::memcpy(c_prev + (t * B + b0) * H, c + b0 * H, sizeof(T) * static_cast<std::size_t>(rows * H));
      StoreEpilogue<T> st{rec + b0 * GH, GH, T(1)};
      gemm_nt<T>(h + b0 * H, H, nullptr, 0, rows, GH, H, st, one, &whh);
      const T* pxw = xw + t * B * GH;
      for (index_t b = b0; b < b1; ++b) {
        if (t >= lengths[b]) continue;  // frozen: state kept, output stays 0
        const T* xr = pxw + b * GH;
        const T* hr = rec + b * GH;
        T* ar = act + (t * B + b) * A;
        T* hb = h + b * H;
        T* ob = out + (t * B + b) * H;
        if (cell == Cell::LSTM) {
          T* cb = c + b * H;
          T* tc = tanh_c + (t * B + b) * H;
          for_lanes<T>(H, [&](index_t j, auto tag) {
            using V = decltype(tag);
            const V i = vsigmoid<T>(ld<V>(xr + j) + ld<V>(hr + j));
            const V f = vsigmoid<T>(ld<V>(xr + H + j) + ld<V>(hr + H + j));
            const V g = vtanh<T>(ld<V>(xr + 2 * H + j) + ld<V>(hr + 2 * H + j));
            const V o = vsigmoid<T>(ld<V>(xr + 3 * H + j) + ld<V>(hr + 3 * H + j));
            const V cn = f * ld<V>(cb + j) + i * g;
            const V tcn = vtanh<T>(cn);
            const V hn = o * tcn;
            store(ar + j, i);
            store(ar + H + j, f);
            store(ar + 2 * H + j, g);
            store(ar + 3 * H + j, o);
            store(tc + j, tcn);
            store(cb + j, cn);
            store(hb + j, hn);
            store(ob + j, hn);
          });
        } else if (cell == Cell::GRU) {
          const T* bh = bias_h.data();
          for_lanes<T>(H, [&](index_t j, auto tag) {
            using V = decltype(tag);
            const V hn_part = ld<V>(hr + 2 * H + j) + ld<V>(bh + 2 * H + j);
            const V r = vsigmoid<T>(ld<V>(xr + j) + ld<V>(hr + j) + ld<V>(bh + j));
            const V z = vsigmoid<T>(ld<V>(xr + H + j) + ld<V>(hr + H + j) + ld<V>(bh + H + j));
            const V n = vtanh<T>(ld<V>(xr + 2 * H + j) + r * hn_part);
            const V hn = (T(1) - z) * n + z * ld<V>(hb + j);
            store(ar + j, r);
            store(ar + H + j, z);
            store(ar + 2 * H + j, n);
            store(ar + 3 * H + j, hn_part);
            store(hb + j, hn);
            store(ob + j, hn);
          });
        } else {
          const bool relu = cell == Cell::RNN_RELU;
          for_lanes<T>(H, [&](index_t j, auto tag) {
            using V = decltype(tag);
            const V a = ld<V>(xr + j) + ld<V>(hr + j);
            const V hn = relu ? relu_keep_nan(a) : vtanh<T>(a);
            store(ar + j, hn);
            store(hb + j, hn);
            store(ob + j, hn);
          });
        }
      }
    }
  });
}

// ---------------------------------------------------------------- backward

// The gate derivatives of step t for row b, columns [j0, j0 + n) of the
// hidden state: reads dh (carried) + d_out, writes the step's dA rows and
// updates dc (LSTM) or the z-path term `direct` (GRU).
template <class T>
struct GateBackward {
  Dims<T> d;
  const T* act;
  const T* h_prev;
  const T* c_prev;
  const T* tanh_c;
  const T* d_out;
  const T* dh;
  T* dc;
  T* direct;
  T* da_x;
  T* da_h;

  inline void operator()(index_t t, index_t b, index_t j0, index_t n) const {
    const index_t H = d.H;
    const index_t row = t * d.B + b;
    const T* ar = act + row * d.A;
    const T* dhb = dh + b * H;
    const T* go = d_out + row * H;
    T* dx = da_x + row * d.LA;
    if (d.cell == Cell::LSTM) {
      const T* tc = tanh_c + row * H;
      const T* cp = c_prev + row * H;
      T* dcb = dc + b * H;
      for_lanes<T>(n, [&](index_t jj, auto tag) {
        using V = decltype(tag);
        const index_t j = j0 + jj;
        const V i = ld<V>(ar + j), f = ld<V>(ar + H + j), g = ld<V>(ar + 2 * H + j), o = ld<V>(ar + 3 * H + j);
        const V tcn = ld<V>(tc + j);
        const V dhn = ld<V>(dhb + j) + ld<V>(go + j);
        const V dco = dhn * tcn;
        const V dcs = ld<V>(dcb + j) + dhn * o * (T(1) - tcn * tcn);
        store(dx + j, dcs * g * i * (T(1) - i));
        store(dx + H + j, dcs * ld<V>(cp + j) * f * (T(1) - f));
        store(dx + 2 * H + j, dcs * i * (T(1) - g * g));
        store(dx + 3 * H + j, dco * o * (T(1) - o));
        store(dcb + j, dcs * f);
      });
    } else if (d.cell == Cell::GRU) {
      const T* hp = h_prev + row * H;
      T* dhr = da_h + row * d.LA;
      T* dir = direct + b * H;
      for_lanes<T>(n, [&](index_t jj, auto tag) {
        using V = decltype(tag);
        const index_t j = j0 + jj;
        const V r = ld<V>(ar + j), z = ld<V>(ar + H + j), nn = ld<V>(ar + 2 * H + j), hn = ld<V>(ar + 3 * H + j);
        const V dhn = ld<V>(dhb + j) + ld<V>(go + j);
        const V dan = dhn * (T(1) - z) * (T(1) - nn * nn);
        const V dar = dan * hn * r * (T(1) - r);
        const V daz = dhn * (ld<V>(hp + j) - nn) * z * (T(1) - z);
        store(dx + j, dar);
        store(dx + H + j, daz);
        store(dx + 2 * H + j, dan);
        store(dhr + j, dar);
        store(dhr + H + j, daz);
        store(dhr + 2 * H + j, dan * r);
        store(dir + j, dhn * z);
      });
    } else {
      const bool relu = d.cell == Cell::RNN_RELU;
      for_lanes<T>(n, [&](index_t jj, auto tag) {
        using V = decltype(tag);
        const index_t j = j0 + jj;
        const V hn = ld<V>(ar + j);
        const V dhn = ld<V>(dhb + j) + ld<V>(go + j);
        // 1 above 0, 0 at and below, NaN for NaN (as the reference)
        const V deriv = relu ? ((hn > 0) ? V{} + T(1) : hn * T(0)) : (T(1) - hn * hn);
        store(dx + j, dhn * deriv);
      });
    }
  }

  // an inactive row: no gradient through this step
  inline void zero(index_t t, index_t b) const {
    const index_t row = t * d.B + b;
    std::fill(da_x + row * d.LA, da_x + row * d.LA + d.GH, T(0));
    if (da_h != da_x) std::fill(da_h + row * d.LA, da_h + row * d.LA + d.GH, T(0));
  }
};

// Epilogue of the step GEMM dA_h(t) W_hh: finishes dh for the rows active at
// t, then applies the gate derivatives of step `next` (if any).
template <class T>
struct StepEpilogue {
  const GateBackward<T>* gates;
  T* dh;
  const T* direct;  // GRU only
  const int64_t* lengths;
  index_t t, next;  // next < 0: no further step
  index_t H;
  index_t row0;  // the GEMM's row 0 is batch row row0 (a thread's slice)

  template <int MR, int NV, class V>
  inline void operator()(index_t i0, index_t j0, int mr, int nr, V (&acc)[MR][NV], int) {
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(T));
    alignas(64) T tile[MR * NV * L];
    tile_to_array<MR, NV>(acc, tile);
    for (int r = 0; r < mr; ++r) {
      const index_t b = row0 + i0 + r;
      if (t < lengths[b]) {
        T* dhb = dh + b * H + j0;
        const T* tr = tile + r * NV * L;
        if (direct) {
          const T* dr = direct + b * H + j0;
          for (int j = 0; j < nr; ++j) dhb[j] = tr[j] + dr[j];
        } else {
          for (int j = 0; j < nr; ++j) dhb[j] = tr[j];
        }
      }
      if (next >= 0 && next < lengths[b]) (*gates)(next, b, j0, nr);
    }
  }
};

template <class T>
void backward(int cell_id, const T* x, index_t T_len, index_t B, index_t D, index_t H, const T* W_ih, const T* W_hh,
              const int64_t* lengths, bool reverse, const T* act, const T* h_prev, const T* c_prev,
              const T* tanh_c, const T* d_out, T* dh, T* dc, T* dx, T* dW_ih, T* dW_hh, T* db_ih, T* db_hh) {
  const Dims<T> d(cell_id, T_len, B, D, H);
  const index_t GH = d.GH, LA = d.LA, N = T_len * B;
  std::fill(dW_ih, dW_ih + GH * D, T(0));
  std::fill(dW_hh, dW_hh + GH * H, T(0));
  std::fill(db_ih, db_ih + GH, T(0));
  std::fill(db_hh, db_hh + GH, T(0));
  if (T_len <= 0 || B <= 0) return;
  if (dx) std::fill(dx, dx + N * D, T(0));
  const bool split_h = d.cell == Cell::GRU;  // d a_x and d a_h differ only for the GRU
  T* da_x = kept<T>(kKeptDAx, N * LA);
  T* da_h = split_h ? kept<T>(kKeptDAh, N * LA) : da_x;
  T* direct = split_h ? kept<T>(kKeptDirect, B * H) : nullptr;
  if (direct) std::fill(direct, direct + B * H, T(0));
  GateBackward<T> gates{d, act, h_prev, c_prev, tanh_c, d_out, dh, dc, direct, da_x, da_h};
  // W_hh^T (H x GH) packed once: dh(t-1) = dA_h(t) W_hh is A B^T with B = W_hh^T.
  std::vector<T> whh_t(static_cast<std::size_t>(H * GH));
  transpose(W_hh, GH, H, whh_t.data());
  PackedB<T> whh;
  whh.pack(whh_t.data(), GH, H, GH);
  auto step_time = [&](index_t s) { return reverse ? s : T_len - 1 - s; };  // the forward's order, reversed
  GemmOptions opt;
  opt.flush_denormals = true;
  GemmOptions one;
  one.threads = 1;
  over_slices<T>(B, [&](index_t b0, index_t b1) {
    DenormalGuard denormals(true);
    const index_t t0 = step_time(0);
    for (index_t b = b0; b < b1; ++b) {
      if (t0 < lengths[b])
        gates(t0, b, 0, H);
      else
        gates.zero(t0, b);
    }
    for (index_t s = 0; s < T_len; ++s) {
      const index_t t = step_time(s);
      const index_t next = s + 1 < T_len ? step_time(s + 1) : -1;
      if (next >= 0)
        for (index_t b = b0; b < b1; ++b)
          if (next >= lengths[b]) gates.zero(next, b);
      StepEpilogue<T> ep{&gates, dh, direct, lengths, t, next, H, b0};
      gemm_nt<T>(da_h + (t * B + b0) * LA, LA, nullptr, 0, b1 - b0, H, GH, ep, one, &whh);
    }
  });
  // Input and weight gradients over all steps at once.  Small ones on the
  // calling thread: below ~32 MFLOP for the three products a second thread
  // saves tens of microseconds, and on a shared host waking it can cost
  // milliseconds (B = 1, T = 50, H = 128 backward: 16 ms instead of ~1.5 ms
  // at a load of 4.8 on 2 cores).
  const double big_flops = 2.0 * static_cast<double>(N) * static_cast<double>(GH) * static_cast<double>(2 * D + H);
  if (big_flops < 3.2e7) opt.threads = 1;
  std::vector<T> w_ih_t(static_cast<std::size_t>(D * GH));
  if (dx && D > 0) {
    transpose(W_ih, GH, D, w_ih_t.data());
    StoreEpilogue<T> st{dx, D, T(1)};
    gemm_nt<T>(da_x, LA, w_ih_t.data(), GH, N, D, GH, st, opt);
  }
  std::vector<uint8_t> inactive(static_cast<std::size_t>(N));
  for (index_t t = 0; t < T_len; ++t)
    for (index_t b = 0; b < B; ++b) inactive[t * B + b] = t >= lengths[b];
  // dW_ih = dA_x^T X (padding inputs take no part), db_ih its column sums;
  // dW_hh = dA_h^T H_prev, db_hh those of dA_h (the same as db_ih but for the GRU)
  const TnPart<T> w_ih{x, D, D, dW_ih, D, inactive.data()};
  const TnPart<T> w_hh{h_prev, H, H, dW_hh, H, nullptr};
  if (split_h) {  // GRU: two products of two dA
    gemm_tn_parts<T>(da_x, LA, GH, N, &w_ih, 1, db_ih, opt);
    gemm_tn_parts<T>(da_h, LA, GH, N, &w_hh, 1, db_hh, opt);
  } else {  // one pass over dA: [X | H_prev]
    const TnPart<T> both[2] = {w_ih, w_hh};
    gemm_tn_parts<T>(da_x, LA, GH, N, both, 2, db_ih, opt);
  }
  if (!split_h) std::copy(db_ih, db_ih + GH, db_hh);
}

}  // namespace train
}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
