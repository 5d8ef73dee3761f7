// RnnLayer: the weights of one direction of one recurrent layer, packed once
// for the SIMD level in use and repacked only if that level changes.
// RnnInputTable: an embedding projected through those weights, made by
// RnnLayer.project and read by RnnLayer.run_ids; which table to keep, and
// for how long, is the Python side's decision (fastsim.rnn.EmbeddingProjection).
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "arrays.hpp"
#include "fastsim/kernels.hpp"
#include "fastsim/rnn/cell.hpp"

namespace fastsim::bind {

namespace {

index_t checked_mul(index_t a, index_t b) {
  index_t r;
  if (__builtin_mul_overflow(a, b, &r))
    throw std::invalid_argument("B, T and the layer sizes give more elements than fit in an array");
  return r;
}

// Immutable once made: the projected rows with the packed weights and the
// SIMD level they were made by, so a table stays usable after its layer
// repacks for another level.
struct RnnInputTable {
  std::uint64_t layer = 0;        // serial of the RnnLayer that made it
  const KernelTable* level = nullptr;
  std::shared_ptr<void> handle;   // the packed weights the rows came from
  std::shared_ptr<void> rows;     // AlignedBuffer<T> of V x cols values
  index_t V = 0, cols = 0;
  bool f64 = false;
};

inline std::uint64_t next_layer_serial() {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

template <class T>
class RnnLayerT {
 public:
  RnnLayerT(int cell, py::array W_ih, py::array W_hh, py::object b_ih, py::object b_hh)
      : cell_(cell), serial_(next_layer_serial()), W_ih_(W_ih), W_hh_(W_hh), b_ih_(b_ih), b_hh_(b_hh) {
    D_ = W_ih.shape(1);
    H_ = W_hh.shape(1);
    pack();
  }
  ~RnnLayerT() = default;
  RnnLayerT(const RnnLayerT&) = delete;
  RnnLayerT& operator=(const RnnLayerT&) = delete;

  void run(py::array x, index_t B, index_t T_len, index_t row_b, index_t row_t, py::object lengths, bool reverse,
           py::array h, py::object c, py::object out, index_t out_ld, index_t out_off, py::object pool,
           py::object pool_until) {
    if (table_ != &kernels()) pack();  // the SIMD level changed since the weights were packed
    require_same_dtype(x, dtype(), "x");
    require_c_contiguous(x, "x");
    if (!((row_b == T_len && row_t == 1) || (row_b == 1 && row_t == B)))
      throw std::invalid_argument("rows must be batch-major or time-major");
    State st = state(B, T_len, lengths, h, c, out, out_ld, out_off, pool, pool_until);
    if (x.size() != checked_mul(checked_mul(B, T_len), D_))
      throw std::invalid_argument("x does not hold B * T rows of D features");
    const T* px = cptr<T>(x);
    auto run_fn = typed().rnn_run;
    // Owned by this call too: another thread may repack (a new SIMD level) meanwhile.
    const std::shared_ptr<void> handle = handle_;
    py::gil_scoped_release release;  // arrays are held by this frame and by the layer
    run_fn(handle.get(), px, B, T_len, row_b, row_t, st.lengths, reverse, st.h, st.c, st.out, out_ld, out_off,
           st.pool, st.pool_ld, st.pool_until);
  }

  // The input projection of every row of `embedding` (V, D), bias included,
  // at the current SIMD level (GIL released while it is computed).
  std::shared_ptr<RnnInputTable> project(py::object embedding) {
    py::array e = checked_embedding(embedding);
    if (table_ != &kernels()) pack();
    auto made = std::make_shared<RnnInputTable>();
    made->layer = serial_;
    made->level = table_;
    made->handle = handle_;
    made->f64 = std::is_same<T, double>::value;
    const TypedKernels<T>& k = kernels_of(made->level);
    made->V = e.shape(0);
    made->cols = k.rnn_cols(made->handle.get());
    auto rows = std::make_shared<AlignedBuffer<T>>(static_cast<std::size_t>(checked_mul(made->V, made->cols)));
    const T* pe = cptr<T>(e);
    {
      py::gil_scoped_release release;  // e (the caller's) and the new table are held by this frame
      k.rnn_project(made->handle.get(), pe, made->V, rows->data());
    }
    made->rows = rows;
    return made;
  }

  // Made by this layer from its current packing: projecting again would give the same rows.
  bool is_current(const RnnInputTable& t) const { return t.layer == serial_ && t.level == &kernels() && t.handle == handle_; }

  // Steps over rows of a projected table picked by token ids.
  void run_ids(const RnnInputTable& t, py::array ids, index_t B, index_t T_len, py::object lengths, bool reverse,
               py::array h, py::object c, py::object out, index_t out_ld, index_t out_off, py::object pool,
               py::object pool_until) {
    if (t.layer != serial_) throw std::invalid_argument("table was projected by another RnnLayer");
    require_c_contiguous(ids, "ids");
    if (!ids.dtype().equal(py::dtype::of<int64_t>())) throw py::type_error("ids must be int64");
    State st = state(B, T_len, lengths, h, c, out, out_ld, out_off, pool, pool_until);
    if (ids.size() != checked_mul(B, T_len)) throw std::invalid_argument("ids must hold B x T token ids");
    const int64_t* pid = cptr<int64_t>(ids);
    for (index_t i = 0, n = B * T_len; i < n; ++i)
      if (pid[i] < 0 || pid[i] >= t.V) throw std::invalid_argument("ids must lie within 0..V-1 (the table's rows)");
    // the table's own weights and level: the layer may have repacked since
    auto run_fn = kernels_of(t.level).rnn_run_ids;
    const T* rows = static_cast<AlignedBuffer<T>*>(t.rows.get())->data();
    py::gil_scoped_release release;  // the caller holds the table and the arrays
    run_fn(t.handle.get(), rows, pid, B, T_len, st.lengths, reverse, st.h, st.c, st.out, out_ld, out_off, st.pool,
           st.pool_ld, st.pool_until);
  }

  index_t input_size() const { return D_; }
  index_t hidden_size() const { return H_; }

 private:
  const TypedKernels<T>& typed() const;
  static const TypedKernels<T>& kernels_of(const KernelTable* level);
  void release() { handle_.reset(); }
  void pack() {
    release();
    table_ = &kernels();
    const T* bi = b_ih_.is_none() ? nullptr : cptr<T>(py::array(b_ih_));
    const T* bh = b_hh_.is_none() ? nullptr : cptr<T>(py::array(b_hh_));
    auto destroy = typed().rnn_destroy;
    handle_ = std::shared_ptr<void>(typed().rnn_create(cell_, cptr<T>(W_ih_), cptr<T>(W_hh_), bi, bh, D_, H_), destroy);
  }

  py::array checked_embedding(py::object embedding) const {
    if (!py::isinstance<py::array>(embedding)) throw py::type_error("embedding must be a numpy array");
    py::array e(embedding);
    require_ndim(e, 2, "embedding");
    require_c_contiguous(e, "embedding");
    require_same_dtype(e, dtype(), "embedding");
    if (e.shape(1) != D_) throw std::invalid_argument("embedding must have D columns (the layer's input size)");
    return e;
  }

  struct State {
    const int64_t* lengths = nullptr;
    T* h = nullptr;
    T* c = nullptr;
    T* out = nullptr;
    T* pool = nullptr;
    index_t pool_ld = 0;
    const int64_t* pool_until = nullptr;
    py::array len_arr, c_arr, out_arr, pool_arr, until_arr;  // keep converted arrays alive
  };
  static DType dtype() { return std::is_same<T, float>::value ? DType::F32 : DType::F64; }

  // Checks shared by run and run_ids: states, lengths, the output rows and the pooled sums.
  State state(index_t B, index_t T_len, py::object lengths, py::array h, py::object c, py::object out, index_t out_ld,
              index_t out_off, py::object pool, py::object pool_until) {
    const DType t = dtype();
    require_same_dtype(h, t, "h");
    require_c_contiguous(h, "h");
    require_writeable(h, "h");
    if (B < 0 || T_len < 0 || out_ld < 0) throw std::invalid_argument("B, T and out_ld must be >= 0");
    // Sizes in elements, refused rather than wrapped when they overflow (a
    // wrapped product could match an empty array and let B through).
    const index_t rows = checked_mul(B, T_len);
    if (h.size() != checked_mul(B, H_)) throw std::invalid_argument("h must hold B x H values");
    State st;
    st.h = mptr<T>(h);
    if (out.is_none() && pool.is_none()) throw std::invalid_argument("out may be None only when pool is given");
    if (!out.is_none()) {
      if (!py::isinstance<py::array>(out)) throw py::type_error("out must be a numpy array");
      st.out_arr = py::array(out);
      require_same_dtype(st.out_arr, t, "out");
      require_c_contiguous(st.out_arr, "out");
      require_writeable(st.out_arr, "out");
      if (st.out_arr.size() != checked_mul(rows, out_ld) || out_off < 0 || out_off > out_ld - H_)
        throw std::invalid_argument("out does not hold B * T rows of out_ld features");
      st.out = mptr<T>(st.out_arr);
    }
    if (!pool.is_none()) {
      // written in place: a list would be converted to a copy and the sums lost
      if (!py::isinstance<py::array>(pool)) throw py::type_error("pool must be a numpy array");
      st.pool_arr = py::array(pool);
      require_same_dtype(st.pool_arr, t, "pool");
      require_ndim(st.pool_arr, 2, "pool");
      require_c_contiguous(st.pool_arr, "pool");
      require_writeable(st.pool_arr, "pool");
      st.pool_ld = st.pool_arr.shape(1);
      if (st.pool_arr.shape(0) != B || out_off < 0 || out_off > st.pool_ld - H_)
        throw std::invalid_argument("pool must have B rows holding columns out_off .. out_off + H");
      if (pool_until.is_none()) throw std::invalid_argument("pool needs pool_until");
      st.until_arr = py::array(pool_until);
      require_c_contiguous(st.until_arr, "pool_until");
      if (!st.until_arr.dtype().equal(py::dtype::of<int64_t>()) || st.until_arr.size() != B)
        throw std::invalid_argument("pool_until must be int64 of shape (B,)");
      st.pool = mptr<T>(st.pool_arr);
      st.pool_until = cptr<int64_t>(st.until_arr);
    }
    if (!lengths.is_none()) {
      st.len_arr = py::array(lengths);
      require_c_contiguous(st.len_arr, "lengths");
      if (!st.len_arr.dtype().equal(py::dtype::of<int64_t>()) || st.len_arr.size() != B)
        throw std::invalid_argument("lengths must be int64 of shape (B,)");
      st.lengths = cptr<int64_t>(st.len_arr);
      for (index_t i = 0; i < B; ++i)
        if (st.lengths[i] < 1 || st.lengths[i] > T_len) throw std::invalid_argument("lengths must lie within 1..T");
    }
    if (has_cell_state(static_cast<Cell>(cell_))) {
      if (c.is_none()) throw std::invalid_argument("an LSTM needs the cell state c");
      // c is written in place: a list would be converted to a copy and the final state lost
      if (!py::isinstance<py::array>(c)) throw py::type_error("c must be a numpy array");
      st.c_arr = py::array(c);
      require_c_contiguous(st.c_arr, "c");
      require_writeable(st.c_arr, "c");
      require_same_dtype(st.c_arr, t, "c");  // a narrower c would be overrun by the kernel
      if (st.c_arr.size() != B * H_) throw std::invalid_argument("c must hold B x H values");
      st.c = mptr<T>(st.c_arr);
    }
    return st;
  }

  int cell_;
  std::uint64_t serial_;
  py::array W_ih_, W_hh_;
  py::object b_ih_, b_hh_;
  index_t D_ = 0, H_ = 0;
  const KernelTable* table_ = nullptr;
  std::shared_ptr<void> handle_;  // packed weights of table_'s level
};

template <>
const TypedKernels<float>& RnnLayerT<float>::kernels_of(const KernelTable* level) { return level->f32; }
template <>
const TypedKernels<double>& RnnLayerT<double>::kernels_of(const KernelTable* level) { return level->f64; }
template <class T>
const TypedKernels<T>& RnnLayerT<T>::typed() const { return kernels_of(table_); }

// The Python-facing class dispatches on dtype once, at construction.
class RnnLayer {
 public:
  RnnLayer(int cell, py::array W_ih, py::array W_hh, py::object b_ih, py::object b_hh) {
    const Cell kind = checked_cell(cell);
    require_ndim(W_ih, 2, "W_ih");
    require_ndim(W_hh, 2, "W_hh");
    require_c_contiguous(W_ih, "W_ih");
    require_c_contiguous(W_hh, "W_hh");
    const DType t = dtype_of(W_ih, "W_ih");
    require_same_dtype(W_hh, t, "W_hh");
    const index_t gates = gate_count(kind);
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
           py::object c, py::object out, index_t out_ld, index_t out_off, py::object pool, py::object pool_until) {
    const index_t row_b = batch_first ? T_len : 1, row_t = batch_first ? 1 : B;
    if (f64_)
      d_->run(x, B, T_len, row_b, row_t, lengths, reverse, h, c, out, out_ld, out_off, pool, pool_until);
    else
      f_->run(x, B, T_len, row_b, row_t, lengths, reverse, h, c, out, out_ld, out_off, pool, pool_until);
  }
  std::shared_ptr<RnnInputTable> project(py::object embedding) {
    return f64_ ? d_->project(embedding) : f_->project(embedding);
  }
  bool is_current(const RnnInputTable& t) const { return t.f64 == f64_ && (f64_ ? d_->is_current(t) : f_->is_current(t)); }
  void run_ids(const RnnInputTable& t, py::array ids, index_t B, index_t T_len, py::object lengths, bool reverse,
               py::array h, py::object c, py::object out, index_t out_ld, index_t out_off, py::object pool,
               py::object pool_until) {
    if (t.f64 != f64_) throw std::invalid_argument("table was projected by another RnnLayer");
    if (f64_)
      d_->run_ids(t, ids, B, T_len, lengths, reverse, h, c, out, out_ld, out_off, pool, pool_until);
    else
      f_->run_ids(t, ids, B, T_len, lengths, reverse, h, c, out, out_ld, out_off, pool, pool_until);
  }
  bool is_f64() const { return f64_; }

 private:
  bool f64_ = false;
  std::unique_ptr<RnnLayerT<float>> f_;
  std::unique_ptr<RnnLayerT<double>> d_;
};

}  // namespace

void bind_rnn(py::module_& m) {
  py::class_<RnnInputTable, std::shared_ptr<RnnInputTable>>(
      m, "RnnInputTable", "An embedding projected through one RnnLayer's weights (RnnLayer.project); immutable.")
      .def_property_readonly("vocab_size", [](const RnnInputTable& t) { return t.V; })
      .def_property_readonly("nbytes", [](const RnnInputTable& t) {
        return t.V * t.cols * static_cast<index_t>(t.f64 ? sizeof(double) : sizeof(float));
      });
  py::class_<RnnLayer>(m, "RnnLayer",
                       "One direction of one recurrent layer with its weights packed once (PyTorch layout in).")
      .def(py::init<int, py::array, py::array, py::object, py::object>(), py::arg("cell"), py::arg("W_ih"),
           py::arg("W_hh"), py::arg("b_ih").none(true), py::arg("b_hh").none(true))
      .def("run", &RnnLayer::run, py::arg("x"), py::arg("B"), py::arg("T"), py::arg("batch_first"),
           py::arg("lengths").none(true), py::arg("reverse"), py::arg("h"), py::arg("c").none(true),
           py::arg("out").none(true), py::arg("out_ld"), py::arg("out_off"), py::arg("pool") = py::none(),
           py::arg("pool_until") = py::none(),
           "Run over x (B*T rows of D, batch- or time-major); h (and c) hold the initial state in and the final "
           "state out; writes H columns of out starting at out_off (rows of out_ld).  With pool (B, F) and "
           "pool_until (B,) int64, also adds h into pool[i, out_off:out_off + H] at the steps t < pool_until[i]; "
           "out may then be None.")
      .def("project", &RnnLayer::project, py::arg("embedding"),
           "The input projection of every row of embedding (V, D), bias included, at the current SIMD level.")
      .def("is_current", &RnnLayer::is_current, py::arg("table"),
           "True if table was projected by this layer from its current packing (projecting again gives the same).")
      .def("run_ids", &RnnLayer::run_ids, py::arg("table"), py::arg("ids"), py::arg("B"), py::arg("T"),
           py::arg("lengths").none(true),
           py::arg("reverse"), py::arg("h"), py::arg("c").none(true), py::arg("out").none(true), py::arg("out_ld"),
           py::arg("out_off"), py::arg("pool") = py::none(), py::arg("pool_until") = py::none(),
           "Run over token ids (B, T) int64, step t of row i reading row ids[i, t] of table (made by this "
           "layer's project); outputs batch-major (rows i * T + t of out_ld).")
      .def_property_readonly("is_f64", &RnnLayer::is_f64);
}

}  // namespace fastsim::bind
