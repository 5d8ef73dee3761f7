// The packed inference layout of one direction of one recurrent layer.
//
// The weights arrive in the one layout of python/fastsim/rnn/weights.py
// (PyTorch's: W_ih (G*H, D), W_hh (G*H, H), gate blocks in PyTorch's order)
// and are packed once per layer and SIMD level for the GEMM engine; the
// LSTM's rows are permuted so that every NR-wide micro-panel holds the four
// gates (i, f, g, o) of G = NR / 4 hidden units, and a tile then carries
// everything needed to update those units' c and h (forward.hpp).
#pragma once

#include <algorithm>
#include <vector>

#include "../gemm.hpp"
#include "cell.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

// Weights of one direction of one layer, packed for this SIMD level.
template <class T>
struct RnnWeights {
  Cell cell = Cell::LSTM;
  index_t D = 0, H = 0;
  index_t cols = 0;        // columns of XW and of the recurrent GEMM (permuted/padded for LSTM)
  PackedB<T> w_ih, w_hh;  // W_ih (cols x D) and W_hh (cols x H), permuted like the columns
  PackedB<T> w_cat;       // LSTM and RNN: [W_ih | W_hh], K = D + H
  std::vector<T> bias_x;   // added to XW (b_ih, plus b_hh where it can be folded)
  std::vector<T> bias_h;   // GRU only: b_hh, added to the recurrent part before r multiplies it
  std::vector<index_t> src_row;  // permuted column -> PyTorch row (-1 for padding)

  // W_ih (gates*H, D), W_hh (gates*H, H), biases (gates*H) or null; PyTorch gate order.
  void build(Cell c, const T* W_ih, const T* W_hh, const T* b_ih, const T* b_hh, index_t D_, index_t H_) {
    cell = c;
    D = D_;
    H = H_;
    const index_t gates = gate_count(c);
    constexpr int NR = GemmShape<T>::NR;
    src_row.clear();
    if (c == Cell::LSTM) {
      const index_t G = NR / 4;
      const index_t panels = (H + G - 1) / G;
      cols = panels * NR;
      for (index_t p = 0; p < cols; ++p) {
        const index_t q = p / NR, w = p % NR, gate = w / G, unit = q * G + w % G;
        src_row.push_back(unit < H ? gate * H + unit : -1);
      }
    } else {
      cols = gates * H;
      for (index_t p = 0; p < cols; ++p) src_row.push_back(p);
    }
    std::vector<T> wi(static_cast<std::size_t>(cols * std::max<index_t>(D, 1)), T(0));
    std::vector<T> wh(static_cast<std::size_t>(cols * std::max<index_t>(H, 1)), T(0));
    bias_x.assign(static_cast<std::size_t>(cols), T(0));
    bias_h.assign(static_cast<std::size_t>(cols), T(0));
    for (index_t p = 0; p < cols; ++p) {
      const index_t s = src_row[p];
      if (s < 0) continue;
      for (index_t k = 0; k < D; ++k) wi[p * D + k] = W_ih[s * D + k];
      for (index_t k = 0; k < H; ++k) wh[p * H + k] = W_hh[s * H + k];
      const T bi = b_ih ? b_ih[s] : T(0), bh = b_hh ? b_hh[s] : T(0);
      if (c == Cell::GRU) {
        bias_x[p] = bi;
        bias_h[p] = bh;
      } else {
        bias_x[p] = bi + bh;
      }
    }
    // Every cell keeps W_ih and W_hh packed apart: the input projection of
    // all steps (or of a whole embedding table) is one GEMM on W_ih, and the
    // steps then multiply h by W_hh alone.
    w_ih.pack(wi.data(), D, cols, D);
    w_hh.pack(wh.data(), H, cols, H);
    if (c != Cell::GRU) {
      const index_t K = D + H;
      std::vector<T> cat(static_cast<std::size_t>(cols * K));
      for (index_t p = 0; p < cols; ++p) {
        std::copy(wi.begin() + p * D, wi.begin() + (p + 1) * D, cat.begin() + p * K);
        std::copy(wh.begin() + p * H, wh.begin() + (p + 1) * H, cat.begin() + p * K + D);
      }
      w_cat.pack(cat.data(), K, cols, K);
    }
  }
};

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
