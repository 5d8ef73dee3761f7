#include "arrays.hpp"
#include "fastsim/kernels.hpp"

namespace fastsim::bind {

namespace {

template <class T>
py::array cosine_matrix_t(py::array& a, py::object& b_obj, py::object& out_obj) {
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
  py::array out = result_or_out<T>(out_obj, {m, n});
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* po = mptr<T>(out);
  auto fn = typed_kernels<T>().cosine_matrix;
  {
    // Safe: a, b and out are held by this frame and no Python object is touched.
    py::gil_scoped_release release;
    fn(pa, m, pb, n, k, po, self);
  }
  return out;
}

template <class T>
py::array cosine_rows_t(py::array& a, py::array& b, py::object& out_obj) {
  const index_t n = a.shape(0), k = a.shape(1);
  if (b.shape(0) != n || b.shape(1) != k) throw std::invalid_argument("a and b must have the same shape");
  py::array out = result_or_out<T>(out_obj, {n});
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* po = mptr<T>(out);
  auto fn = typed_kernels<T>().cosine_rows;
  {
    py::gil_scoped_release release;  // arrays held by this frame
    fn(pa, pb, n, k, po);
  }
  return out;
}

// One pair: the NumPy scalar of T.  The GIL is kept for short vectors, where
// releasing it would cost more than the three dot products.
template <class T>
py::object cosine_pair_t(py::array& u, py::array& v) {
  const index_t d = u.shape(0);
  if (v.shape(0) != d) throw std::invalid_argument("u and v must have the same length");
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

void check_two_d(py::array& a, const char* name) {
  require_ndim(a, 2, name);
  require_c_contiguous(a, name);
}


}  // namespace

void bind_cosine(py::module_& m) {
  m.def(
      "cosine_matrix",
      [](py::array a, py::object b, py::object out) {
        check_two_d(a, "a");
        return dtype_of(a, "a") == DType::F32 ? cosine_matrix_t<float>(a, b, out) : cosine_matrix_t<double>(a, b, out);
      },
      py::arg("a"), py::arg("b").none(true), py::arg("out").none(true),
      "S[i, j] = cos(a[i], b[j]) (b None: a with itself) into out, or into a new array when out is None.");
  m.def(
      "cosine_rows",
      [](py::array a, py::array b, py::object out) {
        check_two_d(a, "a");
        check_two_d(b, "b");
        const DType t = dtype_of(a, "a");
        require_same_dtype(b, t, "b");
        return t == DType::F32 ? cosine_rows_t<float>(a, b, out) : cosine_rows_t<double>(a, b, out);
      },
      py::arg("a"), py::arg("b"), py::arg("out").none(true),
      "cos(a[i], b[i]) for every row into out, or into a new array when out is None.");
  m.def(
      "cosine_pair",
      [](py::array u, py::array v) {
        require_ndim(u, 1, "u");
        require_ndim(v, 1, "v");
        require_c_contiguous(u, "u");
        require_c_contiguous(v, "v");
        const DType t = dtype_of(u, "u");
        require_same_dtype(v, t, "v");
        return t == DType::F32 ? cosine_pair_t<float>(u, v) : cosine_pair_t<double>(u, v);
      },
      py::arg("u"), py::arg("v"), "cos(u, v) of two vectors, as a NumPy scalar.");
  m.def(
      "gemm_nt",
      [](py::array a, py::array b, py::array out) {
        check_two_d(a, "a");
        check_two_d(b, "b");
        const DType t = dtype_of(a, "a");
        require_same_dtype(b, t, "b");
        check_out_array(out, t, 2);
        if (t == DType::F32)
          gemm_nt_t<float>(a, b, out);
        else
          gemm_nt_t<double>(a, b, out);
      },
      py::arg("a"), py::arg("b"), py::arg("out"),
      "out = a @ b.T through the packed GEMM engine (for tests and benchmarks).");
}

}  // namespace fastsim::bind
