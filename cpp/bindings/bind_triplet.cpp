#include <algorithm>
#include <vector>

#include "arrays.hpp"
#include "fastsim/kernels.hpp"

namespace fastsim::bind {

namespace {

void check_pair(py::array& v1, py::array& v2) {
  require_ndim(v1, 2, "v1");
  require_ndim(v2, 2, "v2");
  require_c_contiguous(v1, "v1");
  require_c_contiguous(v2, "v2");
  if (v1.shape(0) != v2.shape(0) || v1.shape(1) != v2.shape(1))
    throw std::invalid_argument("v1 and v2 must have the same shape");
  if (v1.shape(0) < 2) throw std::invalid_argument("the batch size must be >= 2");
  require_same_dtype(v2, dtype_of(v1, "v1"), "v2");
}

template <class T>
py::tuple forward_t(py::array& v1, py::array& v2, int empty) {
  const index_t b = v1.shape(0), d = v1.shape(1);
  py::array_t<T> positive(b), mean_neg(b), closest(b);
  py::array_t<int64_t> closest_idx(b);
  const T* p1 = cptr<T>(v1);
  const T* p2 = cptr<T>(v2);
  T* pp = positive.mutable_data();
  T* pm = mean_neg.mutable_data();
  T* pc = closest.mutable_data();
  int64_t* pi = closest_idx.mutable_data();
  auto fn = typed_kernels<T>().triplet_forward;
  {
    py::gil_scoped_release release;  // every array is owned by this frame
    fn(p1, p2, b, d, empty, pp, pm, pc, pi);
  }
  return py::make_tuple(positive, mean_neg, closest, closest_idx);
}

// The reduced cost (the kernel computes the hinges and their sum).
template <class T>
py::object cost_t(py::array& v1, py::array& v2, double margin, int empty, bool mean) {
  const index_t b = v1.shape(0), d = v1.shape(1);
  const T* p1 = cptr<T>(v1);
  const T* p2 = cptr<T>(v2);
  auto fn = typed_kernels<T>().triplet_cost;
  double cost;
  {
    py::gil_scoped_release release;  // only the caller's arrays, held by this frame
    cost = fn(p1, p2, b, d, empty, margin, mean);
  }
  return numpy_scalar_type<T>()(cost);
}

template <class T>
py::tuple hard_negatives_t(py::array& sim, int empty) {
  const index_t b = sim.shape(0);
  py::array_t<T> positive(b), mean_neg(b), closest(b);
  py::array_t<int64_t> closest_idx(b);
  const T* ps = cptr<T>(sim);
  T* pp = positive.mutable_data();
  T* pm = mean_neg.mutable_data();
  T* pc = closest.mutable_data();
  int64_t* pi = closest_idx.mutable_data();
  auto fn = typed_kernels<T>().hard_negatives;
  {
    py::gil_scoped_release release;  // the outputs are owned by this frame; sim is held by the caller
    fn(ps, b, b, empty, pp, pm, pc, pi);
  }
  return py::make_tuple(positive, mean_neg, closest, closest_idx);
}

template <class T>
py::tuple backward_t(py::array& v1, py::array& v2, py::array& closest_idx, py::array& active1, py::array& active2,
                     py::array& weight) {
  const index_t b = v1.shape(0), d = v1.shape(1);
  auto check_vec = [b](py::array& a, const char* name, py::dtype dt) {
    require_ndim(a, 1, name);
    require_c_contiguous(a, name);
    if (a.shape(0) != b) throw std::invalid_argument(std::string(name) + " must have one entry per row");
    if (!a.dtype().equal(dt)) throw py::type_error(std::string(name) + " has the wrong dtype");
  };
  check_vec(closest_idx, "closest_idx", py::dtype::of<int64_t>());
  check_vec(active1, "active1", py::dtype::of<uint8_t>());
  check_vec(active2, "active2", py::dtype::of<uint8_t>());
  const int64_t* idx = cptr<int64_t>(closest_idx);
  for (index_t i = 0; i < b; ++i)
    if (idx[i] < -1 || idx[i] >= b) throw std::invalid_argument("closest_idx out of range");
  require_ndim(weight, 1, "weight");
  require_c_contiguous(weight, "weight");
  if (weight.shape(0) != b) throw std::invalid_argument("weight must have one entry per row");
  if (!weight.dtype().equal(py::dtype::of<double>())) throw py::type_error("weight must be float64");
  const double* weights = cptr<double>(weight);
  py::array_t<T> g1({b, d}), g2({b, d});
  const T* p1 = cptr<T>(v1);
  const T* p2 = cptr<T>(v2);
  const uint8_t* a1 = cptr<uint8_t>(active1);
  const uint8_t* a2 = cptr<uint8_t>(active2);
  T* pg1 = g1.mutable_data();
  T* pg2 = g2.mutable_data();
  auto fn = typed_kernels<T>().triplet_backward;
  {
    py::gil_scoped_release release;  // every array is owned by this frame
    fn(p1, p2, b, d, idx, a1, a2, weights, pg1, pg2);
  }
  return py::make_tuple(g1, g2);
}

}  // namespace

void bind_triplet(py::module_& m) {
  m.def(
      "triplet_forward",
      [](py::array v1, py::array v2, int empty) {
        check_pair(v1, v2);
        if (empty != 0 && empty != 1) throw std::invalid_argument("empty must be 0 (shift) or 1 (floor)");
        return dtype_of(v1, "v1") == DType::F32 ? forward_t<float>(v1, v2, empty) : forward_t<double>(v1, v2, empty);
      },
      py::arg("v1"), py::arg("v2"), py::arg("empty"),
      "Per-row (positive, mean_negative, closest_negative, closest_index) of s[i, j] = cos(v2[i], v1[j]), "
      "streamed over GEMM tiles; closest_index is -1 where the closest value is the constant -2.");
  m.def(
      "hard_negatives",
      [](py::array sim, int empty) {
        require_ndim(sim, 2, "sim");
        require_c_contiguous(sim, "sim");
        if (sim.shape(0) != sim.shape(1)) throw std::invalid_argument("sim must be square");
        if (sim.shape(0) < 2) throw std::invalid_argument("the batch size must be >= 2");
        if (empty != 0 && empty != 1) throw std::invalid_argument("empty must be 0 (shift) or 1 (floor)");
        return dtype_of(sim, "sim") == DType::F32 ? hard_negatives_t<float>(sim, empty)
                                                   : hard_negatives_t<double>(sim, empty);
      },
      py::arg("sim"), py::arg("empty"),
      "Per-row (positive, mean_negative, closest_negative, closest_index) of a C-contiguous square score matrix.");
  m.def(
      "triplet_cost",
      [](py::array v1, py::array v2, double margin, int empty, bool mean) {
        check_pair(v1, v2);
        if (empty != 0 && empty != 1) throw std::invalid_argument("empty must be 0 (shift) or 1 (floor)");
        if (v1.shape(1) < 1) throw std::invalid_argument("v1 and v2 need at least one column");
        return dtype_of(v1, "v1") == DType::F32 ? cost_t<float>(v1, v2, margin, empty, mean)
                                                 : cost_t<double>(v1, v2, margin, empty, mean);
      },
      py::arg("v1"), py::arg("v2"), py::arg("margin"), py::arg("empty"), py::arg("mean"),
      "sum_i (or mean_i) of L1_i + L2_i, accumulated in double; the caller casts to the input dtype.");
  m.def(
      "triplet_backward",
      [](py::array v1, py::array v2, py::array closest_idx, py::array active1, py::array active2, py::array weight) {
        check_pair(v1, v2);
        return dtype_of(v1, "v1") == DType::F32 ? backward_t<float>(v1, v2, closest_idx, active1, active2, weight)
                                                 : backward_t<double>(v1, v2, closest_idx, active1, active2, weight);
      },
      py::arg("v1"), py::arg("v2"), py::arg("closest_idx"), py::arg("active1"), py::arg("active2"),
      py::arg("weight"), "Gradient (d cost/d v1, d cost/d v2) of sum_i weight_i * (L1_i + L2_i); weight is (b,) float64.");
}

}  // namespace fastsim::bind
