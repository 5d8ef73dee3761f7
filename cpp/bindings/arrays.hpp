// Array intake for the bindings: the Python layer already converts and
// validates; these checks make the C++ entry points safe on their own
// (never trust a caller with raw pointers).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastsim/common.hpp"

namespace fastsim::bind {

namespace py = pybind11;

enum class DType { F32, F64 };

inline DType dtype_of(const py::array& a, const char* name) {
  if (py::dtype::of<float>().is(a.dtype()) || a.dtype().equal(py::dtype::of<float>())) return DType::F32;
  if (a.dtype().equal(py::dtype::of<double>())) return DType::F64;
  throw py::type_error(std::string(name) + " must be float32 or float64, got " + std::string(py::str(a.dtype())));
}

inline void require_c_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
}

inline void require_ndim(const py::array& a, int ndim, const char* name) {
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                                std::to_string(a.ndim()) + "-D");
}

inline void require_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
}

inline void require_same_dtype(const py::array& a, DType t, const char* name) {
  if (dtype_of(a, name) != t) throw py::type_error(std::string(name) + " must have the same dtype as the inputs");
}

// Element pointers, refused when misaligned (a view at an odd byte offset of
// a byte buffer): the kernels' scalar loads and stores of such elements are
// undefined behaviour.  The Python layer hands over aligned copies.
inline void require_aligned(const void* p, std::size_t align) {
  if (reinterpret_cast<std::uintptr_t>(p) % align != 0)
    throw std::invalid_argument("array data must be aligned to its element size (pass a copy)");
}

template <class T>
inline const T* cptr(const py::array& a) {
  require_aligned(a.data(), alignof(T));
  return static_cast<const T*>(a.data());
}

template <class T>
inline T* mptr(py::array& a) {
  require_aligned(a.data(), alignof(T));
  return static_cast<T*>(a.mutable_data());
}

}  // namespace fastsim::bind
