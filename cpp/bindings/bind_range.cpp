// Bindings of the cosine range search (range.hpp) and of the self top-k
// (topk_self.hpp): check the arrays, release the GIL, call the kernel of the
// current SIMD level and hand the results back as NumPy arrays.  Nothing else lives here: the Python layer
// (fastsim/mining.py) validates the options and builds the CSR matrix.
#include <cstring>

#include "arrays.hpp"
#include "fastsim/kernels.hpp"

namespace fastsim::bind {

namespace {

template <class V>
py::array_t<V> to_numpy(const std::vector<V>& v) {
  py::array_t<V> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(V));
  return a;
}

template <class T>
py::tuple range_t(py::array& q, py::array& c, double threshold, int mode, index_t row_offset, index_t col_offset,
                  index_t max_per_row, index_t max_hits) {
  const index_t m = q.shape(0), n = c.shape(0), d = q.shape(1);
  const T* pq = cptr<T>(q);
  const T* pc = cptr<T>(c);
  const T thr = static_cast<T>(threshold);
  auto fn = typed_kernels<T>().range_search;
  RangeResult<T> res;
  {
    py::gil_scoped_release release;  // q and c are owned by the caller's frame for the whole call
    res = fn(pq, m, pc, n, d, thr, mode, row_offset, col_offset, max_per_row, max_hits);
  }
  return py::make_tuple(to_numpy(res.indptr), to_numpy(res.indices), to_numpy(res.scores), res.complete);
}

template <class T>
py::tuple top_k_self_t(py::array& x, index_t k, bool exclude_self) {
  const index_t m = x.shape(0), d = x.shape(1);
  py::array_t<T> scores({m, k});
  py::array_t<int64_t> indices({m, k});
  const T* px = cptr<T>(x);
  T* ps = scores.mutable_data();
  int64_t* pi = indices.mutable_data();
  auto fn = typed_kernels<T>().top_k_self;
  {
    py::gil_scoped_release release;  // every array is owned by this frame
    fn(px, m, d, k, exclude_self, ps, pi);
  }
  return py::make_tuple(scores, indices);
}

}  // namespace

void bind_range(py::module_& m) {
  m.def(
      "top_k_self",
      [](py::array x, index_t k, bool exclude_self) {
        require_ndim(x, 2, "x");
        require_c_contiguous(x, "x");
        const DType t = dtype_of(x, "x");
        if (x.shape(1) < 1) throw std::invalid_argument("x must have at least one column");
        const index_t candidates = x.shape(0) - (exclude_self ? 1 : 0);
        if (k < 1 || k > candidates)
          throw std::invalid_argument("k must lie within 1..number of candidates (" + std::to_string(candidates) + ")");
        return t == DType::F32 ? top_k_self_t<float>(x, k, exclude_self) : top_k_self_t<double>(x, k, exclude_self);
      },
      py::arg("x"), py::arg("k"), py::arg("exclude_self"),
      "top_k(x, x, k) with each pair multiplied once: (scores, indices), each (m, k), best first.");
  m.def(
      "range_search",
      [](py::array queries, py::array corpus, double threshold, int mode, index_t row_offset, index_t col_offset,
         index_t max_per_row, index_t max_hits) {
        require_ndim(queries, 2, "queries");
        require_ndim(corpus, 2, "corpus");
        require_c_contiguous(queries, "queries");
        require_c_contiguous(corpus, "corpus");
        const DType t = dtype_of(queries, "queries");
        require_same_dtype(corpus, t, "corpus");
        if (corpus.shape(1) != queries.shape(1))
          throw std::invalid_argument("queries and corpus must have the same number of columns");
        if (queries.shape(1) < 1) throw std::invalid_argument("queries must have at least one column");
        if (!(threshold >= -1.0 && threshold <= 1.0)) throw std::invalid_argument("threshold must lie within [-1, 1]");
        if (mode < 0 || mode > 2) throw std::invalid_argument("mode must be 0 (all), 1 (exclude self) or 2 (upper)");
        if (row_offset < 0 || col_offset < 0) throw std::invalid_argument("offsets must be >= 0");
        if (max_hits < 0) throw std::invalid_argument("max_hits must be >= 0");
        return t == DType::F32
                   ? range_t<float>(queries, corpus, threshold, mode, row_offset, col_offset, max_per_row, max_hits)
                   : range_t<double>(queries, corpus, threshold, mode, row_offset, col_offset, max_per_row, max_hits);
      },
      py::arg("queries"), py::arg("corpus"), py::arg("threshold"), py::arg("mode"), py::arg("row_offset"),
      py::arg("col_offset"), py::arg("max_per_row"), py::arg("max_hits"),
      "Cosine range search: (indptr, indices, scores, complete), rows best first.");
}

}  // namespace fastsim::bind
