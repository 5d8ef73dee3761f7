// Array intake for the bindings: the Python layer converts and validates
// every argument (fastsim._validation, one place for every backend); these
// checks only make the C++ entry points safe on their own (never trust a
// caller with raw pointers).  Results the bindings allocate come from
// new_result, which is NumPy's allocator.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastsim/common.hpp"

namespace fastsim::bind {

namespace py = pybind11;

// Results below this size come from np.empty without 64-byte alignment
// (fastsim._validation.SMALL_RESULT_BYTES, the same threshold).
inline constexpr std::size_t kSmallResultBytes = std::size_t(1) << 16;

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

// A fresh C-contiguous result, allocated where every fastsim result is
// allocated: fastsim._validation.empty_aligned (NumPy's allocator, which
// offers arrays of 4 MiB and more to transparent huge pages, with the data
// on a 64-byte boundary), freed with the array.  Small results come straight
// from NumPy (as empty_aligned gives them) without the call into Python.
// A fresh 64 MiB matrix from posix_memalign was faulted in 4 KiB pages: the
// default call took 1.7x the time of the same call into a preallocated out.
template <class T>
py::array new_result(std::initializer_list<index_t> shape) {
  std::size_t count = 1;
  std::vector<py::ssize_t> dims;
  for (index_t extent : shape) {
    count *= static_cast<std::size_t>(extent);
    dims.push_back(static_cast<py::ssize_t>(extent));
  }
  if (count * sizeof(T) < kSmallResultBytes) return py::array_t<T>(dims);
  static PyObject* const empty_aligned =
      py::object(py::module_::import("fastsim._validation").attr("empty_aligned")).release().ptr();
  py::tuple py_shape(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i) py_shape[i] = py::int_(dims[i]);
  return py::reinterpret_borrow<py::function>(empty_aligned)(py_shape, py::dtype::of<T>());
}

// A caller's out (already checked by the Python layer: shape, dtype, layout,
// no overlap) made safe to write here: the right number of dimensions,
// extents, dtype, C-contiguous, writeable.
inline void check_out_array(const py::array& out, DType t, int ndim) {
  require_ndim(out, ndim, "out");
  require_c_contiguous(out, "out");
  require_writeable(out, "out");
  require_same_dtype(out, t, "out");
}

// `out` when the caller passed one (checked as above, and of `shape`), else
// a fresh result (new_result).
template <class T>
py::array result_or_out(const py::object& out_obj, std::initializer_list<index_t> shape) {
  if (out_obj.is_none()) return new_result<T>(shape);
  if (!py::isinstance<py::array>(out_obj)) throw py::type_error("out must be a numpy.ndarray or None");
  auto out = py::reinterpret_borrow<py::array>(out_obj);
  check_out_array(out, sizeof(T) == 4 ? DType::F32 : DType::F64, static_cast<int>(shape.size()));
  int axis = 0;
  for (index_t extent : shape)
    if (out.shape(axis++) != extent) throw std::invalid_argument("out has the wrong shape");
  return out;
}

// The NumPy scalar type of T (numpy.float32 or numpy.float64), kept for the
// life of the process.
template <class T>
inline py::handle numpy_scalar_type() {
  static PyObject* const type =
      py::object(py::module_::import("numpy").attr(sizeof(T) == 4 ? "float32" : "float64")).release().ptr();
  return py::handle(type);
}

}  // namespace fastsim::bind
