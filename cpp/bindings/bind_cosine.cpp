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
