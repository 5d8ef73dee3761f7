// The private extension module fastsim._core: one bind_<area> call per area.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastsim::bind {
void bind_core(py::module_& m);
void bind_cosine(py::module_& m);
void bind_triplet(py::module_& m);
void bind_topk(py::module_& m);
void bind_rnn(py::module_& m);
void bind_rnn_train(py::module_& m);
void bind_range(py::module_& m);
void bind_optim(py::module_& m);
}  // namespace fastsim::bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastsim compiled kernels (private; use the fastsim package)";
  fastsim::bind::bind_core(m);
  fastsim::bind::bind_cosine(m);
  fastsim::bind::bind_triplet(m);
  fastsim::bind::bind_topk(m);
  fastsim::bind::bind_rnn(m);
  fastsim::bind::bind_rnn_train(m);
  fastsim::bind::bind_range(m);
  fastsim::bind::bind_optim(m);
}
