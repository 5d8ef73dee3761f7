#include "arrays.hpp"
#include "fastsim/kernels.hpp"

namespace fastsim::bind {

namespace {

template <class T>
void cosine_matrix_t(py::array& a, py::object& b_obj, py::array& out) {
  const index_t m = a.shape(0), k = a.shape(1);
  const bool self = b_obj.is_none();
  py::array b = self ? a : py::array(b_obj);
  if (!self) {
    require_ndim(b, 2, "b");
    require_c_contiguous(b, "b");
    require_same_dtype(b, dtype_of(a, "a"), "b");
    if (b.shape(1) != k) throw std::invalid_argument("a and b must have the same number of columns");
  }
  const index_t n = b.shape(0);
  if (out.shape(0) != m || out.shape(1) != n) throw std::invalid_argument("out has the wrong shape");
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* po = mptr<T>(out);
  auto fn = typed_kernels<T>().cosine_matrix;
  // Safe: a, b and out are held by this frame and no Python object is touched.
  py::gil_scoped_release release;
  fn(pa, m, pb, n, k, po, self);
}

template <class T>
void cosine_rows_t(py::array& a, py::array& b, py::array& out) {
  const index_t n = a.shape(0), k = a.shape(1);
  if (b.shape(0) != n || b.shape(1) != k) throw std::invalid_argument("a and b must have the same shape");
  if (out.shape(0) != n) throw std::invalid_argument("out has the wrong shape");
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* po = mptr<T>(out);
  auto fn = typed_kernels<T>().cosine_rows;
  py::gil_scoped_release release;  // arrays held by this frame
  fn(pa, pb, n, k, po);
}

template <class T>
void gemm_nt_t(py::array& a, py::array& b, py::array& out) {
  const index_t m = a.shape(0), k = a.shape(1), n = b.shape(0);
  if (b.shape(1) != k) throw std::invalid_argument("a and b must have the same number of columns");
  if (out.shape(0) != m || out.shape(1) != n) throw std::invalid_argument("out has the wrong shape");
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* po = mptr<T>(out);
  auto fn = typed_kernels<T>().gemm_nt;
  py::gil_scoped_release release;  // arrays held by this frame
  fn(pa, pb, m, n, k, po);
}

// The whole of cosine_similarity_matrix for the common call, with every check
// the Python layer makes done here at C speed: `a` (and `b`) exact ndarrays
// of one dtype, float32 or float64, 2-D, C-contiguous, aligned, non-empty,
// with the same number of columns; `out` None or usable as it is (plain_out).
// Anything else returns None and the caller takes the general path, which
// converts, validates and raises the documented errors; so this adds no
// behaviour, it only removes ~4 us of Python per call (a third of a
// 64 x 64 x 128 call).
template <class T>
py::object cosine_matrix_fast_t(const py::array& a, const py::object& b_obj, const py::object& out_obj) {
  const bool self = b_obj.is_none();
  py::array b = self ? a : py::reinterpret_borrow<py::array>(b_obj);
  const index_t m = a.shape(0), k = a.shape(1), n = b.shape(0);
  if (!self && (!plain_2d(b) || b.shape(1) != k || !a.dtype().is(b.dtype()))) return py::none();
  py::array out;
  if (out_obj.is_none())
    out = new_result<T>({m, n});
  else if (!plain_out(out_obj, {m, n}, a, a, b, out))
    return py::none();
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* po = mptr<T>(out);
  auto fn = typed_kernels<T>().cosine_matrix;
  {
    py::gil_scoped_release release;  // a, b and out are held by this frame
    fn(pa, m, pb, n, k, po, self);
  }
  return std::move(out);
}

py::object cosine_matrix_fast(const py::object& a_obj, const py::object& b_obj, const py::object& out_obj) {
  if (!is_plain_array(a_obj) || !(b_obj.is_none() || is_plain_array(b_obj))) return py::none();
  const auto a = py::reinterpret_borrow<py::array>(a_obj);
  if (!plain_2d(a)) return py::none();
  switch (plain_float_size(a)) {
    case 4: return cosine_matrix_fast_t<float>(a, b_obj, out_obj);
    case 8: return cosine_matrix_fast_t<double>(a, b_obj, out_obj);
    default: return py::none();
  }
}

// The same for cosine_similarity_rows: a and b plain 2-D arrays of one shape
// and dtype; out None (a fresh array, as np.empty gives the general path) or
// usable as it is (plain_out, n entries).
template <class T>
py::object cosine_rows_fast_t(const py::array& a, const py::array& b, const py::object& out_obj) {
  const index_t n = a.shape(0), k = a.shape(1);
  py::array out;
  if (out_obj.is_none())
    out = py::array_t<T>(n);
  else if (!plain_out(out_obj, {n}, a, a, b, out))
    return py::none();
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* po = mptr<T>(out);
  auto fn = typed_kernels<T>().cosine_rows;
  {
    py::gil_scoped_release release;  // a, b and out are held by this frame
    fn(pa, pb, n, k, po);
  }
  return std::move(out);
}

py::object cosine_rows_fast(const py::object& a_obj, const py::object& b_obj, const py::object& out_obj) {
  if (!is_plain_array(a_obj) || !is_plain_array(b_obj)) return py::none();
  const auto a = py::reinterpret_borrow<py::array>(a_obj);
  const auto b = py::reinterpret_borrow<py::array>(b_obj);
  if (!plain_2d(a) || !plain_2d(b) || a.shape(0) != b.shape(0) || a.shape(1) != b.shape(1) ||
      !a.dtype().is(b.dtype()))
    return py::none();
  switch (plain_float_size(a)) {
    case 4: return cosine_rows_fast_t<float>(a, b, out_obj);
    case 8: return cosine_rows_fast_t<double>(a, b, out_obj);
    default: return py::none();
  }
}

// And for cosine_similarity: two plain contiguous, aligned 1-D arrays of one
// dtype and d >= 1 entries; the result is the NumPy scalar of that dtype.
// The GIL is kept for short vectors, where releasing it would cost more than
// the three dot products.
template <class T>
py::object cosine_pair_fast_t(const py::array& u, const py::array& v) {
  const index_t d = u.shape(0);
  const T* pu = cptr<T>(u);
  const T* pv = cptr<T>(v);
  auto fn = typed_kernels<T>().cosine_rows;
  T r;
  if (d >= (index_t(1) << 16)) {
    py::gil_scoped_release release;  // u and v are held by this frame
    fn(pu, pv, 1, d, &r);
  } else {
    fn(pu, pv, 1, d, &r);
  }
  return numpy_scalar_type<T>()(static_cast<double>(r));
}

py::object cosine_pair_fast(const py::object& u_obj, const py::object& v_obj) {
  if (!is_plain_array(u_obj) || !is_plain_array(v_obj)) return py::none();
  const auto u = py::reinterpret_borrow<py::array>(u_obj);
  const auto v = py::reinterpret_borrow<py::array>(v_obj);
  if (u.ndim() != 1 || v.ndim() != 1 || u.shape(0) < 1 || u.shape(0) != v.shape(0) || !plain_layout(u) ||
      !plain_layout(v) || !u.dtype().is(v.dtype()))
    return py::none();
  switch (plain_float_size(u)) {
    case 4: return cosine_pair_fast_t<float>(u, v);
    case 8: return cosine_pair_fast_t<double>(u, v);
    default: return py::none();
  }
}

void check_two_d(py::array& a, const char* name) {
  require_ndim(a, 2, name);
  require_c_contiguous(a, name);
}

void check_out(py::array& out, DType t, int ndim) {
  require_ndim(out, ndim, "out");
  require_c_contiguous(out, "out");
  require_writeable(out, "out");
  require_same_dtype(out, t, "out");
}

}  // namespace

void bind_cosine(py::module_& m) {
  m.def(
      "cosine_matrix",
      [](py::array a, py::object b, py::array out) {
        check_two_d(a, "a");
        const DType t = dtype_of(a, "a");
        check_out(out, t, 2);
        if (t == DType::F32)
          cosine_matrix_t<float>(a, b, out);
        else
          cosine_matrix_t<double>(a, b, out);
      },
      py::arg("a"), py::arg("b").none(true), py::arg("out"));
  m.def("cosine_matrix_fast", &cosine_matrix_fast, py::arg("a"), py::arg("b").none(true),
        py::arg("out").none(true),
        "cosine_similarity_matrix for plain float32/float64 C-contiguous arrays, checked here; None when "
        "the call needs the general path (conversion, validation, errors).");
  m.def("cosine_rows_fast", &cosine_rows_fast, py::arg("a"), py::arg("b"), py::arg("out").none(true),
        "cosine_similarity_rows for plain float32/float64 C-contiguous arrays, checked here; None when the "
        "call needs the general path.");
  m.def("cosine_pair_fast", &cosine_pair_fast, py::arg("u"), py::arg("v"),
        "cosine_similarity for two plain float32/float64 contiguous vectors, checked here (a NumPy scalar); "
        "None when the call needs the general path.");
  m.def(
      "cosine_rows",
      [](py::array a, py::array b, py::array out) {
        check_two_d(a, "a");
        check_two_d(b, "b");
        const DType t = dtype_of(a, "a");
        require_same_dtype(b, t, "b");
        check_out(out, t, 1);
        if (t == DType::F32)
          cosine_rows_t<float>(a, b, out);
        else
          cosine_rows_t<double>(a, b, out);
      },
      py::arg("a"), py::arg("b"), py::arg("out"));
  m.def(
      "gemm_nt",
      [](py::array a, py::array b, py::array out) {
        check_two_d(a, "a");
        check_two_d(b, "b");
        const DType t = dtype_of(a, "a");
        require_same_dtype(b, t, "b");
        check_out(out, t, 2);
        if (t == DType::F32)
          gemm_nt_t<float>(a, b, out);
        else
          gemm_nt_t<double>(a, b, out);
      },
      py::arg("a"), py::arg("b"), py::arg("out"),
      "out = a @ b.T through the packed GEMM engine (for tests and benchmarks).");
}

}  // namespace fastsim::bind
