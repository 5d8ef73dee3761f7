// Portable SIMD vectors through GCC/Clang vector extensions.
//
// Each kernel translation unit is compiled once per SIMD level with that
// level's -m flags and FASTSIM_LEVEL set to its name; everything below lives
// in namespace fastsim::FASTSIM_LEVEL so the copies never collide at link time.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "common.hpp"

#ifndef FASTSIM_LEVEL
#error "FASTSIM_LEVEL must name the SIMD level this translation unit is compiled for"
#endif

namespace fastsim {
namespace FASTSIM_LEVEL {

#if defined(FASTSIM_LEVEL_avx512)
inline constexpr int kVectorBytes = 64;
inline constexpr const char* kLevelName = "avx512";
#elif defined(FASTSIM_LEVEL_avx2)
inline constexpr int kVectorBytes = 32;
inline constexpr const char* kLevelName = "avx2";
#else
inline constexpr int kVectorBytes = 16;
inline constexpr const char* kLevelName = "generic";
#endif

template <class T>
struct Simd {
  static constexpr int lanes = kVectorBytes / static_cast<int>(sizeof(T));
  typedef T vec __attribute__((vector_size(kVectorBytes)));
};

template <class T>
using vec_t = typename Simd<T>::vec;

template <class V, class T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));  // an unaligned vector load once optimized
  return v;
}

template <class V, class T>
inline void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// Non-temporal store of one full vector to a vector-aligned address: large
// outputs that will not be read back soon skip the read-for-ownership and
// do not evict the packed operands from cache.  Falls back to a plain store.
template <class V, class T>
inline void store_stream(T* p, V v) {
#if defined(__x86_64__) || defined(__i386__)
  if ((reinterpret_cast<std::uintptr_t>(p) & (sizeof(V) - 1)) == 0) {
    constexpr bool f32 = sizeof(T) == 4;
#if defined(FASTSIM_LEVEL_avx512)
    if constexpr (f32) _mm512_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m512&>(v));
    else _mm512_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m512d&>(v));
#elif defined(FASTSIM_LEVEL_avx2)
    if constexpr (f32) _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m256&>(v));
    else _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m256d&>(v));
#else
    if constexpr (f32) _mm_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m128&>(v));
    else _mm_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m128d&>(v));
#endif
    return;
  }
#endif
  store(p, v);
}

template <class V, class T>
inline V splat(T x) {
  // x - (+0) is exactly x (also for -0 and NaN), so this folds to a broadcast.
  return x - V{};
}

// Clamp that keeps NaN from `x` (comparisons with NaN are false); works for
// scalars and vectors alike.
template <class V>
inline V clamp_keep_nan(V x, V lo, V hi) {
  x = (x > hi) ? hi : x;
  x = (x < lo) ? lo : x;
  return x;
}

// a + x * y for scalars, rounded the way the vector kernels round `acc += x * y`:
// one fused operation where the level has FMA instructions (the vector code is
// contracted to them), a product and a sum where it has none.  Scalar code
// that must reproduce a vector accumulation bit for bit uses this instead of
// trusting the compiler to contract a scalar expression.
template <class T>
inline T fmadd(T x, T y, T a) {
#if defined(__FMA__)
  return std::fma(x, y, a);
#else
  return a + x * y;
#endif
}

// a + x * y lane by lane, as one fused operation wherever the level has FMA
// instructions.  Every accumulation whose exact rounding matters (the GEMM
// micro-kernel, and code reproducing a tile bit for bit) calls this rather than
// writing `acc += x * y` and trusting the compiler to contract it: an
// unoptimized or instrumented build (-O0, the sanitizers) may not.
template <class V>
inline V vfmadd(V x, V y, V a) {
#if defined(__FMA__) && (defined(__x86_64__) || defined(__i386__))
  using T = std::remove_cv_t<std::remove_reference_t<decltype(x[0])>>;
  constexpr bool f32 = sizeof(T) == 4;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    if constexpr (f32)
      return reinterpret_cast<V>(_mm512_fmadd_ps(reinterpret_cast<__m512>(x), reinterpret_cast<__m512>(y),
                                                 reinterpret_cast<__m512>(a)));
    else
      return reinterpret_cast<V>(_mm512_fmadd_pd(reinterpret_cast<__m512d>(x), reinterpret_cast<__m512d>(y),
                                                 reinterpret_cast<__m512d>(a)));
  } else
#endif
  if constexpr (sizeof(V) == 32) {
    if constexpr (f32)
      return reinterpret_cast<V>(_mm256_fmadd_ps(reinterpret_cast<__m256>(x), reinterpret_cast<__m256>(y),
                                                 reinterpret_cast<__m256>(a)));
    else
      return reinterpret_cast<V>(_mm256_fmadd_pd(reinterpret_cast<__m256d>(x), reinterpret_cast<__m256d>(y),
                                                 reinterpret_cast<__m256d>(a)));
  } else if constexpr (sizeof(V) == 16) {
    if constexpr (f32)
      return reinterpret_cast<V>(
          _mm_fmadd_ps(reinterpret_cast<__m128>(x), reinterpret_cast<__m128>(y), reinterpret_cast<__m128>(a)));
    else
      return reinterpret_cast<V>(
          _mm_fmadd_pd(reinterpret_cast<__m128d>(x), reinterpret_cast<__m128d>(y), reinterpret_cast<__m128d>(a)));
  } else {
    V r;
    for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(T)); ++l) r[l] = std::fma(x[l], y[l], a[l]);
    return r;
  }
#else
  return a + x * y;
#endif
}

// Sum of the lanes of v, as a tree: the upper half of the vector is added to
// the lower half until one lane is left (log2(lanes) shuffle + add pairs, not
// a chain of lanes - 1 dependent scalar adds; row norms of short rows were
// bound by that chain).
template <class T, class V, std::size_t... J>
inline auto half_sum(V v, std::index_sequence<J...>) {
  constexpr std::size_t H = sizeof...(J);
  return __builtin_shufflevector(v, v, J...) + __builtin_shufflevector(v, v, (J + H)...);
}

template <class T, class V>
inline T hsum(V v) {
  constexpr std::size_t bytes = sizeof(V);
  if constexpr (bytes == sizeof(T)) {
    return v[0];
  } else {
    // The halves as register shuffles (an extract); copying them out with
    // memcpy went through the stack, and the 32-byte reload of a 64-byte
    // store missed store forwarding (~1 us of a 64 x 64 x 128 cosine call).
    return hsum<T>(half_sum<T>(v, std::make_index_sequence<bytes / sizeof(T) / 2>{}));
  }
}

// Dot product of two contiguous arrays, several vector accumulators to hide FMA latency.
template <class T>
inline T dot_block(const T* a, const T* b, index_t n) {
  using V = vec_t<T>;
  constexpr int L = Simd<T>::lanes;
  V acc0{}, acc1{}, acc2{}, acc3{};
  index_t k = 0;
  for (; k + 4 * L <= n; k += 4 * L) {
    acc0 += load<V>(a + k) * load<V>(b + k);
    acc1 += load<V>(a + k + L) * load<V>(b + k + L);
    acc2 += load<V>(a + k + 2 * L) * load<V>(b + k + 2 * L);
    acc3 += load<V>(a + k + 3 * L) * load<V>(b + k + 3 * L);
  }
  for (; k + L <= n; k += L) acc0 += load<V>(a + k) * load<V>(b + k);
  T s = hsum<T>((acc0 + acc1) + (acc2 + acc3));
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}


// Sums over more than kSumBlock terms are taken in blocks of kSumBlock, each
// accumulated in T exactly as a short sum is, and the block sums are added in
// double.  A float32 accumulator alone drifts on long vectors: at d = 5e8 the
// cosine of two random vectors came out 0.396 instead of 0.289, as each
// chain's running sum grew until the terms it took fell below its last bit.
// Sums of at most kSumBlock terms (every usual embedding width) are unchanged.
inline constexpr index_t kSumBlock = index_t(1) << 14;

template <class T>
inline T dot(const T* a, const T* b, index_t n) {
  if (n <= kSumBlock) return dot_block<T>(a, b, n);
  double s = 0;
  for (index_t k = 0; k < n; k += kSumBlock) s += static_cast<double>(dot_block<T>(a + k, b + k, std::min(kSumBlock, n - k)));
  return static_cast<T>(s);
}

}  // namespace FASTSIM_LEVEL
}  // namespace fastsim
