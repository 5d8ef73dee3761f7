#include "arrays.hpp"
#include "fastsim/kernels.hpp"

namespace fastsim::bind {

namespace {

template <class T>
py::tuple top_k_t(py::array& q, py::array& c, index_t k, bool exclude_self) {
  const index_t m = q.shape(0), n = c.shape(0), d = q.shape(1);
  py::array_t<T> scores({m, k});
  py::array_t<int64_t> indices({m, k});
  const T* pq = cptr<T>(q);
  const T* pc = cptr<T>(c);
  T* ps = scores.mutable_data();
  int64_t* pi = indices.mutable_data();
  auto fn = typed_kernels<T>().top_k;
  {
    py::gil_scoped_release release;  // every array is owned by this frame
    fn(pq, m, pc, n, d, k, exclude_self, ps, pi);
  }
  return py::make_tuple(scores, indices);
}

}  // namespace

void bind_topk(py::module_& m) {
  m.def(
      "top_k",
      [](py::array queries, py::array corpus, index_t k, bool exclude_self) {
        require_ndim(queries, 2, "queries");
        require_ndim(corpus, 2, "corpus");
        require_c_contiguous(queries, "queries");
        require_c_contiguous(corpus, "corpus");
        const DType t = dtype_of(queries, "queries");
        require_same_dtype(corpus, t, "corpus");
        if (corpus.shape(1) != queries.shape(1))
          throw std::invalid_argument("queries and corpus must have the same number of columns");
        if (exclude_self && queries.shape(0) != corpus.shape(0))
          throw std::invalid_argument("exclude_self needs as many queries as corpus rows");
        const index_t candidates = corpus.shape(0) - (exclude_self ? 1 : 0);
        if (k < 1 || k > candidates)
          throw std::invalid_argument("k must lie within 1..number of candidates (" + std::to_string(candidates) + ")");
        return t == DType::F32 ? top_k_t<float>(queries, corpus, k, exclude_self)
                               : top_k_t<double>(queries, corpus, k, exclude_self);
      },
      py::arg("queries"), py::arg("corpus"), py::arg("k"), py::arg("exclude_self"),
      "Exact cosine top-k: (scores, indices), each (m, k), best first.");
}

}  // namespace fastsim::bind
