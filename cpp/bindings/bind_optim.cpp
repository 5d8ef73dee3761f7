// The native trainer's parameter updates and embedding row gradients
// (fastsim/optim.hpp), for fastsim.optim and fastsim.trainer: checks shapes,
// dtypes, contiguity and every index, then releases the GIL and runs the loop.
#include <string>

#include "arrays.hpp"
#include "fastsim/optim.hpp"

namespace fastsim::bind {

namespace {

void require_like(const py::array& a, const py::array& ref, DType dt, const char* name) {
  require_same_dtype(a, dt, name);
  require_c_contiguous(a, name);
  if (a.ndim() != ref.ndim()) throw std::invalid_argument(std::string(name) + " must have the parameter's shape");
  for (py::ssize_t k = 0; k < a.ndim(); ++k)
    if (a.shape(k) != ref.shape(k)) throw std::invalid_argument(std::string(name) + " must have the parameter's shape");
}

// The parameter and its two moments: one float dtype, one shape, C-contiguous, writeable.
DType checked_state(py::array& p, py::array& m, py::array& v) {
  const DType dt = dtype_of(p, "p");
  require_c_contiguous(p, "p");
  require_writeable(p, "p");
  require_writeable(m, "m");
  require_writeable(v, "v");
  require_like(m, p, dt, "m");
  require_like(v, p, dt, "v");
  return dt;
}

void require_int64(const py::array& a, int ndim, const char* name) {
  if (!a.dtype().equal(py::dtype::of<int64_t>())) throw py::type_error(std::string(name) + " must be int64");
  require_ndim(a, ndim, name);
  require_c_contiguous(a, name);
}

template <class T>
void dense_t(py::array p, py::array m, py::array v, py::array g, double step_size, double b1, double b2, double eps,
             double bc2_sqrt, double wd) {
  T *pp = mptr<T>(p), *pm = mptr<T>(m), *pv = mptr<T>(v);
  const T* pg = cptr<T>(g);
  const index_t n = p.size();
  py::gil_scoped_release release;
  adam_dense<T>(pp, pm, pv, pg, n, step_size, b1, b2, eps, bc2_sqrt, wd);
}

template <class T>
void rows_t(py::array p, py::array m, py::array v, py::array rows, py::array vals, double step_size, double b1,
            double b2, double eps, double bc2_sqrt, bool lazy) {
  const index_t V = p.shape(0), E = p.shape(1), n = rows.shape(0);
  const int64_t* pr = cptr<int64_t>(rows);
  for (index_t k = 0; k < n; ++k) {
    if (pr[k] < 0 || pr[k] >= V) throw std::invalid_argument("rows must lie within 0..V-1");
    if (k > 0 && pr[k] <= pr[k - 1]) throw std::invalid_argument("rows must be strictly ascending");
  }
  T *pp = mptr<T>(p), *pm = mptr<T>(m), *pv = mptr<T>(v);
  const T* pg = cptr<T>(vals);
  py::gil_scoped_release release;
  adam_rows<T>(pp, pm, pv, V, E, pr, pg, n, step_size, b1, b2, eps, bc2_sqrt, lazy);
}

template <class T>
py::array segment_t(py::array src, py::array order, py::array starts) {
  const index_t M = src.shape(0), E = src.shape(1), total = order.shape(0), nseg = starts.shape(0);
  const int64_t *po = cptr<int64_t>(order), *ps = cptr<int64_t>(starts);
  for (index_t q = 0; q < total; ++q)
    if (po[q] < 0 || po[q] >= M) throw std::invalid_argument("order must index rows of src");
  for (index_t s = 0; s < nseg; ++s) {
    const int64_t end = s + 1 < nseg ? ps[s + 1] : total;
    if (ps[s] < 0 || ps[s] >= end || end > total)
      throw std::invalid_argument("starts must begin at 0, rise strictly and stay below len(order)");
  }
  if (nseg > 0 && ps[0] != 0) throw std::invalid_argument("starts must begin at 0");
  if (nseg == 0 && total != 0) throw std::invalid_argument("starts is empty but order is not");
  py::array out = new_result<T>({nseg, E});
  T* pout = mptr<T>(out);
  const T* psrc = cptr<T>(src);
  {
    py::gil_scoped_release release;
    segment_sum_rows<T>(psrc, E, po, ps, nseg, total, pout);
  }
  return out;
}

}  // namespace

void bind_optim(py::module_& m) {
  m.def(
      "adam_dense",
      [](py::array p, py::array mo, py::array v, py::array g, double step_size, double b1, double b2, double eps,
         double bc2_sqrt, double weight_decay) {
        const DType dt = checked_state(p, mo, v);
        require_like(g, p, dt, "g");
        if (dt == DType::F64)
          dense_t<double>(p, mo, v, g, step_size, b1, b2, eps, bc2_sqrt, weight_decay);
        else
          dense_t<float>(p, mo, v, g, step_size, b1, b2, eps, bc2_sqrt, weight_decay);
      },
      py::arg("p"), py::arg("m"), py::arg("v"), py::arg("g"), py::arg("step_size"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("bc2_sqrt"), py::arg("weight_decay"),
      "One dense Adam step in place: m, v, then p -= step_size * m / (sqrt(v) / bc2_sqrt + eps).");
  m.def(
      "adam_rows",
      [](py::array p, py::array mo, py::array v, py::array rows, py::array vals, double step_size, double b1,
         double b2, double eps, double bc2_sqrt, bool lazy) {
        const DType dt = dtype_of(p, "p");
        require_ndim(p, 2, "p");
        checked_state(p, mo, v);
        require_int64(rows, 1, "rows");
        require_same_dtype(vals, dt, "values");
        require_ndim(vals, 2, "values");
        require_c_contiguous(vals, "values");
        if (vals.shape(0) != rows.shape(0) || vals.shape(1) != p.shape(1))
          throw std::invalid_argument("values must have shape (len(rows), E)");
        if (dt == DType::F64)
          rows_t<double>(p, mo, v, rows, vals, step_size, b1, b2, eps, bc2_sqrt, lazy);
        else
          rows_t<float>(p, mo, v, rows, vals, step_size, b1, b2, eps, bc2_sqrt, lazy);
      },
      py::arg("p"), py::arg("m"), py::arg("v"), py::arg("rows"), py::arg("values"), py::arg("step_size"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("bc2_sqrt"), py::arg("lazy"),
      "Adam on a (V, E) matrix with the gradient of the ascending rows only: lazy moves those rows (SparseAdam), "
      "otherwise every row with a zero gradient elsewhere.");
  m.def(
      "segment_sum_rows",
      [](py::array src, py::array order, py::array starts) -> py::array {
        const DType dt = dtype_of(src, "src");
        require_ndim(src, 2, "src");
        require_c_contiguous(src, "src");
        require_int64(order, 1, "order");
        require_int64(starts, 1, "starts");
        return dt == DType::F64 ? segment_t<double>(src, order, starts) : segment_t<float>(src, order, starts);
      },
      py::arg("src"), py::arg("order"), py::arg("starts"),
      "Row sums of src over segments of order: out[s] = sum of src[order[starts[s]:starts[s+1]]].");
}

}  // namespace fastsim::bind
