// The one description of the recurrent cells on the compiled side: the
// cell kinds and what the kernels and bindings ask of them (gate count,
// states, width of the training workspace).  The numbers are those of
// python/fastsim/rnn/cells.py (Cell.core_id); one definition for every SIMD
// level, the bindings included.
#pragma once

#include <stdexcept>

#include "../common.hpp"

namespace fastsim {

enum class Cell : int { LSTM = 0, GRU = 1, RNN_TANH = 2, RNN_RELU = 3 };

// G: W_ih is (G*H, D), W_hh (G*H, H), in PyTorch's gate order.
constexpr int gate_count(Cell cell) { return cell == Cell::LSTM ? 4 : (cell == Cell::GRU ? 3 : 1); }

// Whether the cell carries a cell state c besides h (the LSTM).
constexpr bool has_cell_state(Cell cell) { return cell == Cell::LSTM; }

// Values per step and row of the training workspace `act` (train.hpp):
// LSTM [i f g o], GRU [r z n a_hn], RNN [h'].
constexpr index_t workspace_width(Cell cell, index_t H) {
  return (cell == Cell::LSTM || cell == Cell::GRU) ? 4 * H : H;
}

// A cell number from Python, checked.
inline Cell checked_cell(int cell) {
  if (cell < 0 || cell > 3)
    throw std::invalid_argument("cell must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN relu)");
  return static_cast<Cell>(cell);
}

}  // namespace fastsim
