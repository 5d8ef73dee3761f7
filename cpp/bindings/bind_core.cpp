#include <pybind11/stl.h>

#include "arrays.hpp"
#include "fastsim/kernels.hpp"

#ifndef FASTSIM_COMPILER
#define FASTSIM_COMPILER "unknown"
#endif

namespace fastsim::bind {

void bind_core(py::module_& m) {
  m.def("simd_level", &fastsim::simd_level, "The SIMD level the kernels use now.");
  m.def("simd_levels", &fastsim::simd_levels, "SIMD levels compiled in and supported here, best first.");
  m.def("set_simd_level", &fastsim::set_simd_level, py::arg("level"));
  m.def("set_num_threads", &fastsim::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &fastsim::num_threads);
  m.def("openmp_enabled", &fastsim::openmp_enabled);
  m.def("gemm_block_bytes", &fastsim::gemm_block_bytes, "Bytes of packed B one GEMM block may occupy (L2 budget).");
  m.def("set_gemm_block_bytes", &fastsim::set_gemm_block_bytes, py::arg("bytes"),
        "Set the GEMM L2 block budget in bytes; 0 restores the default (half the L2 cache).");
  m.def("rnn_projection", &fastsim::rnn_projection,
        "The recurrent step form: -1 by size, 1 inputs projected first, 0 [x_t | h] per step.");
  m.def("set_rnn_projection", &fastsim::set_rnn_projection, py::arg("mode"),
        "Force the recurrent step form (1 or 0) or let the size choose (-1).");
  m.def("compiler", []() { return std::string(FASTSIM_COMPILER); });
  m.def("micro_tile", [](bool f64) { return py::make_tuple(kernels().micro_rows(f64), kernels().micro_cols(f64)); },
        py::arg("f64") = false);
  m.def(
      "vec_math",
      [](const std::string& fn, py::array x) {
        const int code = fn == "exp" ? 0 : fn == "sigmoid" ? 1 : fn == "tanh" ? 2 : -1;
        if (code < 0) throw std::invalid_argument("fn must be 'exp', 'sigmoid' or 'tanh'");
        require_ndim(x, 1, "x");
        require_c_contiguous(x, "x");
        const DType t = dtype_of(x, "x");
        if (t == DType::F32) {
          py::array_t<float> out(x.shape(0));
          kernels().f32.vec_math(code, cptr<float>(x), x.shape(0), out.mutable_data());
          return py::array(out);
        }
        py::array_t<double> out(x.shape(0));
        kernels().f64.vec_math(code, cptr<double>(x), x.shape(0), out.mutable_data());
        return py::array(out);
      },
      py::arg("fn"), py::arg("x"), "The recurrent kernels' vectorized exp/sigmoid/tanh, element-wise (for tests).");
  m.def(
      "fma_peak_gflops",
      [](bool f64, double seconds, int threads) {
        if (!(seconds > 0) || seconds > 60) throw std::invalid_argument("seconds must be in (0, 60]");
        if (threads < 1) throw std::invalid_argument("threads must be >= 1");
        auto fn = kernels().fma_peak_gflops;
        py::gil_scoped_release release;  // pure computation on no Python objects
        return fn(f64, seconds, threads);
      },
      py::arg("f64") = false, py::arg("seconds") = 0.2, py::arg("threads") = 1);
}

}  // namespace fastsim::bind
