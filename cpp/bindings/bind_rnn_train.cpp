// Training form of the recurrent layers (rnn/train.hpp): one direction of one
// layer, time-major, every array allocated by the caller (the Python layer in
// fastsim._rnn_train).  Checks every shape, dtype and length, then releases
// the GIL and calls the kernel of the SIMD level in use.
#include <string>

#include "arrays.hpp"
#include "fastsim/kernels.hpp"
#include "fastsim/rnn/cell.hpp"

namespace fastsim::bind {

namespace {

void require_shape(const py::array& a, std::initializer_list<index_t> shape, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int k = 0;
  for (index_t s : shape) {
    if (!ok) break;
    ok = a.shape(k++) == s;
  }
  std::string want = "(";
  for (index_t s : shape) want += std::to_string(s) + ",";
  want += ")";
  if (!ok) throw std::invalid_argument(std::string(name) + " must have shape " + want);
  require_c_contiguous(a, name);
}

struct Sizes {
  int cell;
  index_t T_len, B, D, H, GH, A;
};

Sizes sizes(int cell, const py::array& x, const py::array& W_hh) {
  const Cell kind = checked_cell(cell);
  require_ndim(x, 3, "x");
  require_ndim(W_hh, 2, "W_hh");
  Sizes s{cell, x.shape(0), x.shape(1), x.shape(2), W_hh.shape(1), 0, 0};
  s.GH = gate_count(kind) * s.H;
  s.A = workspace_width(kind, s.H);
  return s;
}

const int64_t* checked_lengths(const py::array& lengths, const Sizes& s) {
  if (!lengths.dtype().equal(py::dtype::of<int64_t>())) throw py::type_error("lengths must be int64");
  require_shape(lengths, {s.B}, "lengths");
  const int64_t* p = cptr<int64_t>(lengths);
  for (index_t b = 0; b < s.B; ++b)
    if (p[b] < 1 || p[b] > s.T_len) throw std::invalid_argument("lengths must lie within 1..T");
  return p;
}

template <class T>
T* opt_ptr(py::object o, const Sizes& s, std::initializer_list<index_t> shape, const char* name, DType dt) {
  if (!has_cell_state(static_cast<Cell>(s.cell))) {
    if (!o.is_none()) throw std::invalid_argument(std::string(name) + " must be None without a cell state");
    return nullptr;
  }
  if (o.is_none()) throw std::invalid_argument(std::string(name) + " is required for the LSTM");
  py::array a = o.cast<py::array>();
  require_same_dtype(a, dt, name);
  require_shape(a, shape, name);
  require_writeable(a, name);
  return mptr<T>(a);
}

template <class T>
void forward_t(const Sizes& s, DType dt, py::array x, py::array W_ih, py::array W_hh, py::array b_ih, py::array b_hh,
               py::array lengths, bool reverse, py::array h, py::object c, py::array out, py::array act,
               py::array h_prev, py::object c_prev, py::object tanh_c) {
  require_shape(x, {s.T_len, s.B, s.D}, "x");
  require_shape(W_ih, {s.GH, s.D}, "W_ih");
  require_shape(W_hh, {s.GH, s.H}, "W_hh");
  require_shape(b_ih, {s.GH}, "b_ih");
  require_shape(b_hh, {s.GH}, "b_hh");
  require_shape(h, {s.B, s.H}, "h");
  require_shape(out, {s.T_len, s.B, s.H}, "out");
  require_shape(act, {s.T_len, s.B, s.A}, "act");
  require_shape(h_prev, {s.T_len, s.B, s.H}, "h_prev");
  const char* names[] = {"W_ih", "W_hh", "b_ih", "b_hh", "h", "out", "act", "h_prev"};
  py::array arrays[] = {W_ih, W_hh, b_ih, b_hh, h, out, act, h_prev};
  for (int i = 0; i < 8; ++i) require_same_dtype(arrays[i], dt, names[i]);
  for (int i = 4; i < 8; ++i) require_writeable(arrays[i], names[i]);
  const int64_t* len = checked_lengths(lengths, s);
  T* pc = opt_ptr<T>(c, s, {s.B, s.H}, "c", dt);
  T* pcp = opt_ptr<T>(c_prev, s, {s.T_len, s.B, s.H}, "c_prev", dt);
  T* ptc = opt_ptr<T>(tanh_c, s, {s.T_len, s.B, s.H}, "tanh_c", dt);
  const T* px = cptr<T>(x);
  const T *wi = cptr<T>(W_ih), *wh = cptr<T>(W_hh), *bi = cptr<T>(b_ih), *bh = cptr<T>(b_hh);
  T *ph = mptr<T>(h), *po = mptr<T>(out), *pa = mptr<T>(act), *php = mptr<T>(h_prev);
  auto fn = typed_kernels<T>().rnn_train_forward;
  py::gil_scoped_release release;  // every array is referenced by the caller's frame
  fn(s.cell, px, s.T_len, s.B, s.D, s.H, wi, wh, bi, bh, len, reverse, ph, pc, po, pa, php, pcp, ptc);
}

template <class T>
void backward_t(const Sizes& s, DType dt, py::array x, py::array W_ih, py::array W_hh, py::array lengths, bool reverse,
                py::array act, py::array h_prev, py::object c_prev, py::object tanh_c, py::array d_out, py::array dh,
                py::object dc, py::array dx, py::array dW_ih, py::array dW_hh, py::array db_ih, py::array db_hh) {
  require_shape(x, {s.T_len, s.B, s.D}, "x");
  require_shape(W_ih, {s.GH, s.D}, "W_ih");
  require_shape(W_hh, {s.GH, s.H}, "W_hh");
  require_shape(act, {s.T_len, s.B, s.A}, "act");
  require_shape(h_prev, {s.T_len, s.B, s.H}, "h_prev");
  require_shape(d_out, {s.T_len, s.B, s.H}, "d_out");
  require_shape(dh, {s.B, s.H}, "dh");
  require_shape(dx, {s.T_len, s.B, s.D}, "dx");
  require_shape(dW_ih, {s.GH, s.D}, "dW_ih");
  require_shape(dW_hh, {s.GH, s.H}, "dW_hh");
  require_shape(db_ih, {s.GH}, "db_ih");
  require_shape(db_hh, {s.GH}, "db_hh");
  const char* names[] = {"W_ih", "W_hh", "act", "h_prev", "d_out", "dh", "dx", "dW_ih", "dW_hh", "db_ih", "db_hh"};
  py::array arrays[] = {W_ih, W_hh, act, h_prev, d_out, dh, dx, dW_ih, dW_hh, db_ih, db_hh};
  for (int i = 0; i < 11; ++i) require_same_dtype(arrays[i], dt, names[i]);
  for (int i = 5; i < 11; ++i) require_writeable(arrays[i], names[i]);
  const int64_t* len = checked_lengths(lengths, s);
  const T* pcp = opt_ptr<T>(c_prev, s, {s.T_len, s.B, s.H}, "c_prev", dt);
  const T* ptc = opt_ptr<T>(tanh_c, s, {s.T_len, s.B, s.H}, "tanh_c", dt);
  T* pdc = opt_ptr<T>(dc, s, {s.B, s.H}, "dc", dt);
  const T *px = cptr<T>(x), *wi = cptr<T>(W_ih), *wh = cptr<T>(W_hh), *pa = cptr<T>(act), *php = cptr<T>(h_prev);
  const T* pdo = cptr<T>(d_out);
  T *pdh = mptr<T>(dh), *pdx = mptr<T>(dx), *pwi = mptr<T>(dW_ih), *pwh = mptr<T>(dW_hh);
  T *pbi = mptr<T>(db_ih), *pbh = mptr<T>(db_hh);
  auto fn = typed_kernels<T>().rnn_train_backward;
  py::gil_scoped_release release;  // every array is referenced by the caller's frame
  fn(s.cell, px, s.T_len, s.B, s.D, s.H, wi, wh, len, reverse, pa, php, pcp, ptc, pdo, pdh, pdc, pdx, pwi, pwh, pbi,
     pbh);
}

}  // namespace

void bind_rnn_train(py::module_& m) {
  m.def(
      "rnn_train_forward",
      [](int cell, py::array x, py::array W_ih, py::array W_hh, py::array b_ih, py::array b_hh, py::array lengths,
         bool reverse, py::array h, py::object c, py::array out, py::array act, py::array h_prev, py::object c_prev,
         py::object tanh_c) {
        const Sizes s = sizes(cell, x, W_hh);
        const DType dt = dtype_of(x, "x");
        if (dt == DType::F64)
          forward_t<double>(s, dt, x, W_ih, W_hh, b_ih, b_hh, lengths, reverse, h, c, out, act, h_prev, c_prev, tanh_c);
        else
          forward_t<float>(s, dt, x, W_ih, W_hh, b_ih, b_hh, lengths, reverse, h, c, out, act, h_prev, c_prev, tanh_c);
      },
      py::arg("cell"), py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"),
      py::arg("lengths"), py::arg("reverse"), py::arg("h"), py::arg("c").none(true), py::arg("out"), py::arg("act"),
      py::arg("h_prev"), py::arg("c_prev").none(true), py::arg("tanh_c").none(true),
      "One direction's training forward, time-major: updates h (and c) to the final states, writes out and the "
      "workspace (act, h_prev, c_prev, tanh_c).");
  m.def(
      "rnn_train_backward",
      [](int cell, py::array x, py::array W_ih, py::array W_hh, py::array lengths, bool reverse, py::array act,
         py::array h_prev, py::object c_prev, py::object tanh_c, py::array d_out, py::array dh, py::object dc,
         py::array dx, py::array dW_ih, py::array dW_hh, py::array db_ih, py::array db_hh) {
        const Sizes s = sizes(cell, x, W_hh);
        const DType dt = dtype_of(x, "x");
        if (dt == DType::F64)
          backward_t<double>(s, dt, x, W_ih, W_hh, lengths, reverse, act, h_prev, c_prev, tanh_c, d_out, dh, dc, dx,
                             dW_ih, dW_hh, db_ih, db_hh);
        else
          backward_t<float>(s, dt, x, W_ih, W_hh, lengths, reverse, act, h_prev, c_prev, tanh_c, d_out, dh, dc, dx,
                            dW_ih, dW_hh, db_ih, db_hh);
      },
      py::arg("cell"), py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("lengths"), py::arg("reverse"),
      py::arg("act"), py::arg("h_prev"), py::arg("c_prev").none(true), py::arg("tanh_c").none(true),
      py::arg("d_out"), py::arg("dh"), py::arg("dc").none(true), py::arg("dx"), py::arg("dW_ih"), py::arg("dW_hh"),
      py::arg("db_ih"), py::arg("db_hh"),
      "One direction's backward from its workspace: dh (and dc) in: the final states' gradients, out: the initial "
      "states'; writes dx and the weight and bias gradients.");
}

}  // namespace fastsim::bind
