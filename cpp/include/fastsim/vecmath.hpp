// Vectorized exp, sigmoid and tanh for the recurrent kernels.
//
// exp: x = n ln2 + r with |r| <= ln2/2 (two-constant Cody-Waite reduction),
// e^r by a Taylor polynomial (degree 7 for float, 13 for double), scaled by
// 2^n through the exponent bits.  Stated accuracy, checked at every SIMD level
// by tests/test_vecmath.py against long double references: e^x relative error
// below 2e-7 (float) and 5e-16 (double); sigmoid(x) = 1 / (1 + e^-x) and
// tanh(x) = 2 sigmoid(2x) - 1 absolute errors below 3e-7 (float) and 1e-15
// (double).  Measured maxima: 1.1e-7 / 9e-8 / 1.8e-7 (float) and
// 1.8e-16 / 1.7e-16 / 3.3e-16 (double).  Inputs are clamped so nothing
// overflows; NaN propagates; sigmoid is exactly 0 below -80.
#pragma once

#include <cstdint>
#include <type_traits>

#include "simd.hpp"

namespace fastsim {
namespace FASTSIM_LEVEL {

template <class T>
struct ExpConsts;

template <>
struct ExpConsts<float> {
  using Int = int32_t;
  static constexpr float lo = -87.0f, hi = 88.0f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  static constexpr int mant = 23, bias = 127, degree = 7;
};

template <>
struct ExpConsts<double> {
  using Int = int64_t;
  static constexpr double lo = -708.0, hi = 709.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
  static constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int mant = 52, bias = 1023, degree = 13;
};

template <class T>
constexpr T inverse_factorial(int n) {
  T f = 1;
  for (int i = 2; i <= n; ++i) f *= T(i);
  return T(1) / f;
}

// Element-wise e^x for any GCC vector type of T.
template <class T, class V>
inline V vexp(V x) {
  using C = ExpConsts<T>;
  using I = typename C::Int;
  constexpr int W = sizeof(V) / sizeof(T);
  typedef I VI __attribute__((vector_size(sizeof(V))));
  const V nan_mask_src = x;
  x = (x < C::lo) ? V{} + T(C::lo) : x;
  x = (x > C::hi) ? V{} + T(C::hi) : x;
  V n = (x * T(C::log2e) + T(C::magic)) - T(C::magic);
  V r = x - n * T(C::ln2_hi);
  r = r - n * T(C::ln2_lo);
  // Horner on the Taylor series of e^r: sum_i r^i / i!, highest degree first.
  V p = V{} + inverse_factorial<T>(C::degree);
#pragma GCC unroll 16
  for (int i = C::degree - 1; i >= 0; --i) p = p * r + inverse_factorial<T>(i);
#if defined(FASTSIM_LEVEL_avx512)
  // p * 2^n in one instruction (n is integral).  A NaN x went through the
  // clamps unchanged (both comparisons are false) and made p NaN, so the
  // result is NaN without a blend.
  if constexpr (sizeof(V) == 64) {
    (void)nan_mask_src;
    if constexpr (std::is_same_v<T, float>)
      return reinterpret_cast<V>(_mm512_maskz_scalef_ps(__mmask16(0xFFFF), reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
    else
      return reinterpret_cast<V>(_mm512_maskz_scalef_pd(__mmask8(0xFF), reinterpret_cast<__m512d>(p), reinterpret_cast<__m512d>(n)));
  }
#endif
  VI ni = __builtin_convertvector(n, VI);
  VI bits = (ni + I(C::bias)) << C::mant;
  V scale;
  static_assert(sizeof(bits) == sizeof(scale), "int and float vectors must match");
  __builtin_memcpy(&scale, &bits, sizeof(V));
  V out = p * scale;
  // NaN: comparisons above were false, so x stayed NaN; the conversion of a
  // NaN n to an integer is not relied upon.
  out = (nan_mask_src != nan_mask_src) ? nan_mask_src : out;
  (void)W;
  return out;
}

// Exactly 0 below -80 (the true value is under 1.8e-35), as in the reference
// (SIGMOID_ZERO_BELOW): with exp's argument clamped the formula would give a
// tiny number there, and a closed gate times an infinite state must be
// 0 * inf = NaN in every backend, not inf.
template <class T, class V>
inline V vsigmoid(V x) {
  const V s = T(1) / (T(1) + vexp<T>(-x));
  return (x < T(-80)) ? V{} : s;
}

template <class T, class V>
inline V vtanh(V x) {
  return T(2) / (T(1) + vexp<T>(T(-2) * x)) - T(1);
}

// Scalar forms through one-lane vectors, so scalar and vector code agree bit for bit.
template <class T>
inline T sexp(T x) {
  typedef T V1 __attribute__((vector_size(sizeof(T))));
  V1 v = {x};
  return vexp<T>(v)[0];
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
