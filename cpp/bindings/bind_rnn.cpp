// RnnLayer: the weights of one direction of one recurrent layer, packed once
// for the SIMD level in use and repacked only if that level changes.
#include <memory>
#include <string>
#include <type_traits>

#include "arrays.hpp"
#include "fastsim/kernels.hpp"

namespace fastsim::bind {

namespace {

index_t checked_mul(index_t a, index_t b) {
  index_t r;
  if (__builtin_mul_overflow(a, b, &r))
    throw std::invalid_argument("B, T and the layer sizes give more elements than fit in an array");
  return r;
}

template <class T>
class RnnLayerT {
 public:
  RnnLayerT(int cell, py::array W_ih, py::array W_hh, py::object b_ih, py::object b_hh)
      : cell_(cell), W_ih_(W_ih), W_hh_(W_hh), b_ih_(b_ih), b_hh_(b_hh) {
    D_ = W_ih.shape(1);
    H_ = W_hh.shape(1);
    pack();
  }
  ~RnnLayerT() { release(); }
  RnnLayerT(const RnnLayerT&) = delete;
  RnnLayerT& operator=(const RnnLayerT&) = delete;

  void run(py::array x, index_t B, index_t T_len, index_t row_b, index_t row_t, py::object lengths, bool reverse,
           py::array h, py::object c, py::array out, index_t out_ld, index_t out_off) {
    if (table_ != &kernels()) pack();  // the SIMD level changed since the weights were packed
    const DType t = std::is_same<T, float>::value ? DType::F32 : DType::F64;
    require_same_dtype(x, t, "x");
    require_same_dtype(h, t, "h");
    require_same_dtype(out, t, "out");
    require_c_contiguous(x, "x");
    require_c_contiguous(h, "h");
    require_c_contiguous(out, "out");
    require_writeable(h, "h");
    require_writeable(out, "out");
    if (B < 0 || T_len < 0 || out_ld < 0) throw std::invalid_argument("B, T and out_ld must be >= 0");
    // Sizes in elements, refused rather than wrapped when they overflow (a
    // wrapped product could match an empty array and let B through).
    const index_t rows = checked_mul(B, T_len);
    if (x.size() != checked_mul(rows, D_)) throw std::invalid_argument("x does not hold B * T rows of D features");
    if (h.size() != checked_mul(B, H_)) throw std::invalid_argument("h must hold B x H values");
    if (out.size() != checked_mul(rows, out_ld) || out_off < 0 || out_off > out_ld - H_)
      throw std::invalid_argument("out does not hold B * T rows of out_ld features");
    if (!((row_b == T_len && row_t == 1) || (row_b == 1 && row_t == B)))
      throw std::invalid_argument("rows must be batch-major or time-major");
    const int64_t* plen = nullptr;
    py::array len_arr;
    if (!lengths.is_none()) {
      len_arr = py::array(lengths);
      require_c_contiguous(len_arr, "lengths");
      if (!len_arr.dtype().equal(py::dtype::of<int64_t>()) || len_arr.size() != B)
        throw std::invalid_argument("lengths must be int64 of shape (B,)");
      plen = cptr<int64_t>(len_arr);
      for (index_t i = 0; i < B; ++i)
        if (plen[i] < 1 || plen[i] > T_len) throw std::invalid_argument("lengths must lie within 1..T");
    }
    T* pc = nullptr;
    py::array c_arr;
    if (cell_ == 0) {
      if (c.is_none()) throw std::invalid_argument("an LSTM needs the cell state c");
      // c is written in place: a list would be converted to a copy and the final state lost
      if (!py::isinstance<py::array>(c)) throw py::type_error("c must be a numpy array");
      c_arr = py::array(c);
      require_c_contiguous(c_arr, "c");
      require_writeable(c_arr, "c");
      require_same_dtype(c_arr, t, "c");  // a narrower c would be overrun by the kernel
      if (c_arr.size() != B * H_) throw std::invalid_argument("c must hold B x H values");
      pc = mptr<T>(c_arr);
    }
    const T* px = cptr<T>(x);
    T* ph = mptr<T>(h);
    T* po = mptr<T>(out);
    auto run_fn = typed().rnn_run;
    void* handle = handle_;
    py::gil_scoped_release release;  // arrays are held by this frame and by the layer
    run_fn(handle, px, B, T_len, row_b, row_t, plen, reverse, ph, pc, po, out_ld, out_off);
  }

  index_t input_size() const { return D_; }
  index_t hidden_size() const { return H_; }

 private:
  const TypedKernels<T>& typed() const;
  void release() {
    if (handle_) typed().rnn_destroy(handle_);
    handle_ = nullptr;
  }
  void pack() {
    release();
    table_ = &kernels();
    const T* bi = b_ih_.is_none() ? nullptr : cptr<T>(py::array(b_ih_));
    const T* bh = b_hh_.is_none() ? nullptr : cptr<T>(py::array(b_hh_));
    handle_ = typed().rnn_create(cell_, cptr<T>(W_ih_), cptr<T>(W_hh_), bi, bh, D_, H_);
  }

  int cell_;
  py::array W_ih_, W_hh_;
  py::object b_ih_, b_hh_;
  index_t D_ = 0, H_ = 0;
  const KernelTable* table_ = nullptr;
  void* handle_ = nullptr;
};

template <>
const TypedKernels<float>& RnnLayerT<float>::typed() const { return table_->f32; }
template <>
const TypedKernels<double>& RnnLayerT<double>::typed() const { return table_->f64; }

// The Python-facing class dispatches on dtype once, at construction.
class RnnLayer {
 public:
  RnnLayer(int cell, py::array W_ih, py::array W_hh, py::object b_ih, py::object b_hh) {
    if (cell < 0 || cell > 3) throw std::invalid_argument("cell must be 0 (lstm), 1 (gru), 2 (rnn tanh) or 3 (rnn relu)");
    require_ndim(W_ih, 2, "W_ih");
    require_ndim(W_hh, 2, "W_hh");
    require_c_contiguous(W_ih, "W_ih");
    require_c_contiguous(W_hh, "W_hh");
    const DType t = dtype_of(W_ih, "W_ih");
    require_same_dtype(W_hh, t, "W_hh");
    const index_t gates = cell == 0 ? 4 : (cell == 1 ? 3 : 1);
    const index_t H = W_hh.shape(1);
    if (H < 1) throw std::invalid_argument("W_hh must have at least one column (hidden size)");
    if (W_hh.shape(0) != gates * H) throw std::invalid_argument("W_hh must have shape (gates * H, H)");
    if (W_ih.shape(0) != gates * H) throw std::invalid_argument("W_ih must have gates * H rows");
    for (auto* b : {&b_ih, &b_hh}) {
      if (b->is_none()) continue;
      py::array ba(*b);
      require_ndim(ba, 1, "bias");
      require_c_contiguous(ba, "bias");
      require_same_dtype(ba, t, "bias");
      if (ba.shape(0) != gates * H) throw std::invalid_argument("biases must have gates * H entries");
      // Keep the checked array: for a list it is a new array, and the layer
      // packs (and repacks) its weights from this memory.
      *b = ba;
    }
    f64_ = t == DType::F64;
    if (f64_)
      d_ = std::make_unique<RnnLayerT<double>>(cell, W_ih, W_hh, b_ih, b_hh);
    else
      f_ = std::make_unique<RnnLayerT<float>>(cell, W_ih, W_hh, b_ih, b_hh);
  }
  void run(py::array x, index_t B, index_t T_len, bool batch_first, py::object lengths, bool reverse, py::array h,
           py::object c, py::array out, index_t out_ld, index_t out_off) {
    const index_t row_b = batch_first ? T_len : 1, row_t = batch_first ? 1 : B;
    if (f64_)
      d_->run(x, B, T_len, row_b, row_t, lengths, reverse, h, c, out, out_ld, out_off);
    else
      f_->run(x, B, T_len, row_b, row_t, lengths, reverse, h, c, out, out_ld, out_off);
  }
  bool is_f64() const { return f64_; }

 private:
  bool f64_ = false;
  std::unique_ptr<RnnLayerT<float>> f_;
  std::unique_ptr<RnnLayerT<double>> d_;
};

}  // namespace

void bind_rnn(py::module_& m) {
  py::class_<RnnLayer>(m, "RnnLayer",
                       "One direction of one recurrent layer with its weights packed once (PyTorch layout in).")
      .def(py::init<int, py::array, py::array, py::object, py::object>(), py::arg("cell"), py::arg("W_ih"),
           py::arg("W_hh"), py::arg("b_ih").none(true), py::arg("b_hh").none(true))
      .def("run", &RnnLayer::run, py::arg("x"), py::arg("B"), py::arg("T"), py::arg("batch_first"),
           py::arg("lengths").none(true), py::arg("reverse"), py::arg("h"), py::arg("c").none(true), py::arg("out"),
           py::arg("out_ld"), py::arg("out_off"),
           "Run over x (B*T rows of D, batch- or time-major); h (and c) hold the initial state in and the final "
           "state out; writes H columns of out starting at out_off (rows of out_ld).")
      .def_property_readonly("is_f64", &RnnLayer::is_f64);
}

}  // namespace fastsim::bind
