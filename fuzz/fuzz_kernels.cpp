// Coverage-guided fuzz target (libFuzzer) for the compiled kernels.
//
// It links the same objects the extension is built from (cpp/src/kernels_isa.cpp
// once per SIMD level, dispatch.cpp, threads.cpp) and calls the entry points of
// the kernel table exactly as the bindings do.  The fuzz bytes choose the
// operation, the dtype, every shape (0 and 1 included, odd sizes, sometimes
// large enough to use several threads and cache blocks), the thread count and
// the values: random data at several magnitudes, small integers (exact ties,
// zero rows), duplicated rows, and injected NaN, inf, subnormals, 1e30, the
// extremes of the type.  Each kernel runs at every SIMD level this CPU supports
// and is checked against a scalar long-double reference:
//
//  * cosine (matrix, rows): rows holding NaN or inf give NaN (the self diagonal
//    too); a zero row gives exactly 0 (the self diagonal exactly 1 or 0);
//    otherwise the value is within (2k + 16) eps of the reference for rows of
//    any finite magnitude (the kernels rescale rows whose squared norm leaves
//    a safe range by a power of two, so subnormal and near-maximal rows get
//    the usual accuracy);
//  * gemm_nt: NaN where the reference is NaN, otherwise within the standard
//    error bound (2k + 8) eps sum|a_i b_i| while that sum is representable;
//  * triplet forward: positive, mean and closest negative and its index agree
//    exactly with the mining rules applied to the kernel's own cosine matrix
//    (ties, "equal to the positive counts", lowest index, empty-set modes, NaN
//    rows), the mean within rounding; the backward pass against the reference
//    gradient of DESIGN.md;
//  * top_k: exactly the first k of the kernel's own similarity row sorted by
//    (NaN last, score descending, index ascending), NaN / -1 past the candidates;
//  * LSTM, GRU, RNN (tanh, relu): outputs and final states against the
//    reference recurrences (NaN positions exactly), including lengths, reverse,
//    batch- or time-major rows and output offsets; entries the kernel must not
//    write keep a sentinel;
//  * the training forward and backward of the recurrent layers: outputs,
//    states and every gradient against long-double backpropagation through
//    time, padding rows' input gradients exactly 0;
//  * vec_math: exp, sigmoid, tanh within their stated accuracy.
//
// Results must also be bitwise identical with one thread and with several, and
// the caller's floating-point mode (MXCSR) must be unchanged after every call.
// Any mismatch prints what differed and aborts, so libFuzzer keeps the input.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "fastsim/kernels.hpp"

namespace {

using fastsim::index_t;
using LD = long double;

std::string g_where;  // what is being checked, printed with any failure

[[noreturn]] __attribute__((format(printf, 1, 2))) void fail(const char* fmt, ...) {
  std::fprintf(stderr, "\nfuzz_kernels: MISMATCH in %s: ", g_where.c_str());
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  std::abort();
}

// ----------------------------------------------------------------- input bytes

class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t u16() { return u8() | (uint32_t(u8()) << 8); }
  uint32_t u24() { return u16() | (uint32_t(u8()) << 16); }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(u8()) << (8 * i);
    return v;
  }
  bool flag() { return u8() & 1; }
  // Mostly 0..small (every edge tile and odd size), sometimes up to `big`.
  index_t dim(index_t lo, index_t small, index_t big) {
    const uint8_t b = u8();
    if (b < 232) return lo + b % (small - lo + 1);
    return lo + u16() % (big - lo + 1);
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

struct Rng {  // splitmix64
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double symmetric() { return 2 * uniform() - 1; }                // [-1, 1)
};

// Shrink the largest of the dimensions until their product fits the budget, so
// every run stays in milliseconds.
void fit_budget(std::vector<index_t*> dims, double budget) {
  auto product = [&] {
    double p = 1;
    for (index_t* d : dims) p *= double(std::max<index_t>(*d, 1));
    return p;
  };
  while (product() > budget) {
    index_t* big = *std::max_element(dims.begin(), dims.end(), [](index_t* a, index_t* b) { return *a < *b; });
    *big /= 2;
  }
}

// ----------------------------------------------------------------- values

template <class T>
T special_value(uint8_t code) {
  using L = std::numeric_limits<T>;
  switch (code % 20) {
    case 0: return T(0);
    case 1: return -T(0);
    case 2: return T(1);
    case 3: return T(-1);
    case 4: return L::quiet_NaN();
    case 5: return L::infinity();
    case 6: return -L::infinity();
    case 7: return L::denorm_min();
    case 8: return -L::denorm_min() * T(3);
    case 9: return L::min();
    case 10: return -L::min() / T(2);  // subnormal
    case 11: return T(1e30);
    case 12: return T(-1e30);
    case 13: return T(1e-30);
    case 14: return L::max();
    case 15: return L::lowest();
    case 16: return T(0.5);
    case 17: return T(1e-20);
    case 18: return T(1e20);
    default: return T(-2);
  }
}

// Fill a rows x cols matrix from the fuzz bytes: a base pattern, duplicated
// rows (exact ties between scores) and injected special values.
template <class T>
void fill(Bytes& in, std::vector<T>& v, index_t rows, index_t cols) {
  Rng rng{in.u64()};
  const uint8_t mode = in.u8();
  static const double scales[] = {1, 1e-3, 1e3, 1e-19, 1e19, 1e-30, 1e30, 1e-160, 1e160};
  switch (mode % 4) {
    case 0: {
      const double scale = scales[(mode / 4) % 9];
      for (T& x : v) x = T(rng.symmetric() * scale);
      break;
    }
    case 1:
      for (T& x : v) x = T(int(rng.next() % 7) - 3);
      break;
    case 2:
      for (T& x : v) x = T(0);
      break;
    default: {
      static const T few[] = {T(0), T(1), T(-1), T(0.5)};
      for (T& x : v) x = few[rng.next() % 4];
    }
  }
  if (rows > 1 && cols > 0) {
    const int dups = in.u8() % 4;
    for (int d = 0; d < dups; ++d) {
      const index_t src = in.u16() % rows, dst = in.u16() % rows;
      std::copy(v.begin() + src * cols, v.begin() + (src + 1) * cols, v.begin() + dst * cols);
    }
  }
  if (!v.empty()) {
    const int specials = in.u8() % 6;
    for (int s = 0; s < specials; ++s) {
      const size_t pos = in.u24() % v.size();
      v[pos] = special_value<T>(in.u8());
    }
  }
}

// ----------------------------------------------------------------- helpers

template <class T>
constexpr LD eps() {
  return LD(std::numeric_limits<T>::epsilon());
}

template <class T>
bool same(T a, T b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

template <class T>
const char* tname() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

// The control bits of MXCSR (exception masks, rounding, FTZ, DAZ); the low six
// bits are sticky exception flags that any arithmetic may raise.
unsigned fp_mode() {
#if defined(__x86_64__) || defined(__i386__)
  return _mm_getcsr() & ~0x3Fu;
#else
  return 0;
#endif
}

// Calls fn and checks that it left the caller's floating-point mode alone.
template <class F>
void guarded(F&& fn) {
  const unsigned before = fp_mode();
  fn();
  const unsigned after = fp_mode();
  if (before != after) fail("the floating-point control word changed from %#x to %#x", before, after);
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// A row as the cosine kernels see it.
struct RowInfo {
  bool finite = true;  // no NaN or inf
  bool nan = false;    // holds a NaN
  bool zero = true;    // every entry == 0
  bool in_range = true;  // finite, and zero or with a squared norm inside the type's normal range
  LD sumsq = 0;
};

template <class T>
RowInfo row_info(const T* x, index_t k) {
  RowInfo r;
  for (index_t i = 0; i < k; ++i) {
    r.finite &= std::isfinite(x[i]) != 0;
    r.nan |= std::isnan(x[i]) != 0;
    r.zero &= x[i] == T(0);
    r.sumsq += LD(x[i]) * LD(x[i]);
  }
  // Below min/eps some products of the dot lose their precision as subnormals;
  // above max/8 partial sums of the T dot product can overflow.
  const LD lo = LD(std::numeric_limits<T>::min()) / eps<T>();
  const LD hi = LD(std::numeric_limits<T>::max()) / 8;
  r.in_range = r.finite && (r.zero || (r.sumsq >= lo && r.sumsq <= hi));
  return r;
}

template <class T>
std::vector<RowInfo> rows_info(const std::vector<T>& a, index_t rows, index_t k) {
  std::vector<RowInfo> out(static_cast<size_t>(rows));
  for (index_t i = 0; i < rows; ++i) out[i] = row_info(a.data() + i * k, k);
  return out;
}

// The reference cosine of two finite rows (DESIGN.md): u.v / (|u| |v|) clamped,
// 0 when either is a zero vector.
template <class T>
LD cos_ref(const T* x, const T* y, index_t k, const RowInfo& rx, const RowInfo& ry) {
  if (rx.zero || ry.zero) return 0;
  LD dot = 0;
  for (index_t i = 0; i < k; ++i) dot += LD(x[i]) * LD(y[i]);
  const LD s = dot / (std::sqrt(rx.sumsq) * std::sqrt(ry.sumsq));
  return std::min<LD>(1, std::max<LD>(-1, s));
}

template <class T>
void check_cos(T s, const T* x, const RowInfo& rx, const T* y, const RowInfo& ry, index_t k, index_t i, index_t j) {
  if (!rx.finite || !ry.finite) {
    if (!std::isnan(s)) fail("S[%td, %td] = %.9Lg, expected NaN (a row holds NaN or inf)", i, j, LD(s));
    return;
  }
  if (!std::isnan(s) && !(s >= T(-1) && s <= T(1))) fail("S[%td, %td] = %.9Lg is outside [-1, 1]", i, j, LD(s));
  if (rx.zero || ry.zero) {
    if (s != T(0)) fail("S[%td, %td] = %.9Lg, expected exactly 0 (zero row)", i, j, LD(s));
    return;
  }
  const LD want = cos_ref(x, y, k, rx, ry);
  const LD tol = (2 * LD(k) + 16) * eps<T>();
  if (!(std::fabs(LD(s) - want) <= tol))
    fail("S[%td, %td] = %.17Lg, reference %.17Lg, |diff| %.3Lg > tol %.3Lg (k=%td)", i, j, LD(s), want,
         std::fabs(LD(s) - want), tol, k);
}

template <class T>
void check_cos_matrix(const std::vector<T>& S, const std::vector<T>& a, index_t m, const std::vector<T>& b, index_t n,
                      index_t k) {
  const auto ra = rows_info(a, m, k), rb = rows_info(b, n, k);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j)
      check_cos(S[i * n + j], a.data() + i * k, ra[i], b.data() + j * k, rb[j], k, i, j);
}

struct Op {
  std::vector<std::string> levels;
  int threads;
};

void set_level(const std::string& level, const char* op, const char* dtype, int threads) {
  fastsim::set_simd_level(level);
  g_where = std::string(op) + " [" + dtype + ", level " + level + ", " + std::to_string(threads) + " thread(s)]";
}

// ----------------------------------------------------------------- gemm_nt

template <class T>
void fuzz_gemm(Bytes& in, const Op& op) {
  index_t m = in.dim(0, 20, 400), n = in.dim(0, 20, 3000), k = in.dim(0, 40, 1200);
  fit_budget({&m, &n, &k}, 3e6);
  std::vector<T> a(m * k), b(n * k);
  fill(in, a, m, k);
  fill(in, b, n, k);
  // Reference and the bound of each entry, once.
  std::vector<LD> ref(m * n), bound(m * n);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      LD s = 0, abs_sum = 0;
      for (index_t kk = 0; kk < k; ++kk) {
        const LD p = LD(a[i * k + kk]) * LD(b[j * k + kk]);
        s += p;
        abs_sum += std::fabs(p);
      }
      ref[i * n + j] = s;
      bound[i * n + j] = abs_sum;
    }
  const LD representable = LD(std::numeric_limits<T>::max()) / 4;
  const LD tiny = LD(std::numeric_limits<T>::denorm_min());
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    std::vector<T> c(m * n, T(-7));
    guarded([&] { fastsim::typed_kernels<T>().gemm_nt(a.data(), b.data(), m, n, k, c.data()); });
    return c;
  };
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], "gemm_nt", tname<T>(), op.threads);
    const std::vector<T> c = run(op.threads);
    for (index_t i = 0; i < m * n; ++i) {
      const LD want = ref[i], got = c[i];
      if (std::isnan(want)) {
        if (!std::isnan(got)) fail("C[%td] = %Lg, expected NaN", i, got);
      } else if (std::isinf(want)) {
        if (!(got == want || std::isnan(got))) fail("C[%td] = %Lg, expected %Lg or NaN", i, got, want);
      } else if (bound[i] <= representable) {
        const LD tol = (2 * LD(k) + 8) * eps<T>() * bound[i] + 4 * (LD(k) + 1) * tiny;
        if (!(std::fabs(got - want) <= tol))
          fail("C[%td] (m=%td n=%td k=%td) = %.17Lg, reference %.17Lg, tol %.3Lg", i, m, n, k, got, want, tol);
      }
    }
    if (l == 0 && op.threads > 1 && !same_bits(c, run(1))) fail("one thread and %d threads differ", op.threads);
  }
}

// ----------------------------------------------------------------- gemm_tn

// C = A^T B with A (k x m), B (k x n), the column sums of A and rows of B
// flagged as zeros: against a long double reference with the bound of each
// entry, and bit for bit between one thread and several (threads own fixed
// row panels of C).
template <class T>
void fuzz_gemm_tn(Bytes& in, const Op& op) {
  index_t m = in.dim(0, 20, 600), n = in.dim(0, 20, 300), k = in.dim(0, 40, 3000);
  fit_budget({&m, &n, &k}, 3e6);
  std::vector<T> a(k * m), b(k * n);
  fill(in, a, k, m);
  fill(in, b, k, n);
  const bool with_zero = in.flag(), with_sums = in.flag();
  std::vector<uint8_t> zero_k(static_cast<size_t>(std::max<index_t>(k, 1)), 0);
  if (with_zero) {
    Rng rng{in.u64()};
    for (index_t kk = 0; kk < k; ++kk) zero_k[kk] = rng.next() % 3 == 0;
  }
  std::vector<LD> ref(m * n, 0), bound(m * n, 0), sum_ref(m, 0);
  for (index_t kk = 0; kk < k; ++kk) {
    for (index_t i = 0; i < m; ++i) sum_ref[i] += LD(a[kk * m + i]);
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        const LD p = LD(a[kk * m + i]) * (zero_k[kk] ? LD(0) : LD(b[kk * n + j]));
        ref[i * n + j] += p;
        bound[i * n + j] += std::fabs(p);
      }
  }
  // a flagged row of B is a row of zeros, whatever it holds (NaN and inf included)
  const LD representable = LD(std::numeric_limits<T>::max()) / 4;
  const LD tiny = LD(std::numeric_limits<T>::denorm_min());
  auto check = [&](const char* what, index_t i, LD want, LD abs_bound, LD got, index_t terms) {
    if (std::isnan(want)) {
      if (!std::isnan(got)) fail("%s[%td] = %Lg, expected NaN", what, i, got);
    } else if (std::isinf(want)) {
      if (!(got == want || std::isnan(got))) fail("%s[%td] = %Lg, expected %Lg or NaN", what, i, got, want);
    } else if (abs_bound <= representable) {
      const LD tol = (2 * LD(terms) + 8) * eps<T>() * abs_bound + 4 * (LD(terms) + 1) * tiny;
      if (!(std::fabs(got - want) <= tol))
        fail("%s[%td] (m=%td n=%td k=%td) = %.17Lg, reference %.17Lg, tol %.3Lg", what, i, m, n, k, got, want, tol);
    }
  };
  auto run = [&](int threads, std::vector<T>& sums) {
    fastsim::set_num_threads(threads);
    std::vector<T> c(m * n, T(-7));
    sums.assign(static_cast<size_t>(m), T(-7));
    guarded([&] {
      fastsim::typed_kernels<T>().gemm_tn(a.data(), b.data(), m, n, k, c.data(), with_sums ? sums.data() : nullptr,
                                          with_zero ? zero_k.data() : nullptr);
    });
    return c;
  };
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], "gemm_tn", tname<T>(), op.threads);
    std::vector<T> sums;
    const std::vector<T> c = run(op.threads, sums);
    for (index_t i = 0; i < m * n; ++i) check("C", i, ref[i], bound[i], c[i], k);
    if (with_sums)
      for (index_t i = 0; i < m; ++i) {
        LD bs = 0;
        for (index_t kk = 0; kk < k; ++kk) bs += std::fabs(LD(a[kk * m + i]));
        check("col_sums", i, sum_ref[i], bs, sums[i], k);
      }
    else
      for (index_t i = 0; i < m; ++i)
        if (!same(sums[i], T(-7))) fail("col_sums[%td] was written although not asked for", i);
    std::vector<T> sums1;
    if (l == 0 && op.threads > 1 && !same_bits(c, run(1, sums1))) fail("one thread and %d threads differ", op.threads);
  }
}

// ----------------------------------------------------------------- cosine

template <class T>
void fuzz_cosine_matrix(Bytes& in, const Op& op) {
  const bool self = in.flag();
  index_t m = in.dim(0, 20, 400), n = self ? m : in.dim(0, 20, 3000), k = in.dim(0, 40, 1200);
  fit_budget({&m, &n, &k}, 3e6);
  if (self) n = m;
  std::vector<T> a(m * k), b(self ? 0 : n * k);
  fill(in, a, m, k);
  if (!self) fill(in, b, n, k);
  const std::vector<T>& bb = self ? a : b;
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    std::vector<T> S(m * n, T(-7));
    guarded([&] {
      fastsim::typed_kernels<T>().cosine_matrix(a.data(), m, self ? nullptr : b.data(), n, k, S.data(), self);
    });
    return S;
  };
  const auto ra = rows_info(a, m, k);
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], self ? "cosine_matrix(self)" : "cosine_matrix", tname<T>(), op.threads);
    const std::vector<T> S = run(op.threads);
    if (self) {
      // Off the diagonal as any pair; the diagonal exactly 1 (a nonzero finite
      // row of any magnitude), 0 (a zero row) or NaN (a row holding NaN or inf,
      // as its other entries and as in _reference/cosine.py).
      for (index_t i = 0; i < m; ++i) {
        const T d = S[i * n + i];
        if (!ra[i].finite) {
          if (!std::isnan(d)) fail("diagonal %td = %g, expected NaN (a row holding NaN or inf)", i, double(d));
        } else if (ra[i].zero) {
          if (d != T(0)) fail("diagonal %td = %g, expected 0 (zero row)", i, double(d));
        } else if (d != T(1)) {
          fail("diagonal %td = %.9g, expected 1", i, double(d));
        }
      }
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j)
          if (i != j) check_cos(S[i * n + j], a.data() + i * k, ra[i], a.data() + j * k, ra[j], k, i, j);
    } else {
      check_cos_matrix(S, a, m, bb, n, k);
    }
    if (l == 0 && op.threads > 1 && !same_bits(S, run(1))) fail("one thread and %d threads differ", op.threads);
  }
}

template <class T>
void fuzz_cosine_rows(Bytes& in, const Op& op) {
  index_t n = in.dim(0, 30, 3000), k = in.dim(0, 40, 2000);
  fit_budget({&n, &k}, 1e6);
  std::vector<T> a(n * k), b(n * k);
  fill(in, a, n, k);
  fill(in, b, n, k);
  const auto ra = rows_info(a, n, k), rb = rows_info(b, n, k);
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    std::vector<T> out(n, T(-7));
    guarded([&] { fastsim::typed_kernels<T>().cosine_rows(a.data(), b.data(), n, k, out.data()); });
    return out;
  };
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], "cosine_rows", tname<T>(), op.threads);
    const std::vector<T> out = run(op.threads);
    for (index_t i = 0; i < n; ++i) check_cos(out[i], a.data() + i * k, ra[i], b.data() + i * k, rb[i], k, i, i);
    if (l == 0 && op.threads > 1 && !same_bits(out, run(1))) fail("one thread and %d threads differ", op.threads);
  }
}

// ----------------------------------------------------------------- triplet

// The mining rules of DESIGN.md / _reference/triplet.py applied to a score
// matrix, in the score type (comparisons and the -2 shift are exact there).
template <class T>
void expected_mining(const std::vector<T>& S, index_t b, int empty_mode, index_t i, T& closest, int64_t& idx,
                     bool& nan_row, bool& nan_negative) {
  const T* s = S.data() + i * b;
  const T pos = s[i];
  nan_row = false;
  nan_negative = false;
  for (index_t j = 0; j < b; ++j) {
    nan_row |= std::isnan(s[j]) != 0;
    if (j != i) nan_negative |= std::isnan(s[j]) != 0;
  }
  closest = T(0);
  idx = -1;
  if (nan_row) {
    closest = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  bool any = false;
  for (index_t j = 0; j < b; ++j) {
    if (j == i || !(s[j] <= pos)) continue;
    if (!any || s[j] > closest) {
      closest = s[j];
      idx = j;
      any = true;
    }
  }
  if (any) return;
  T largest = T(0);
  int64_t largest_j = -1;
  for (index_t j = 0; j < b; ++j) {
    if (j == i) continue;
    if (largest_j < 0 || s[j] > largest) {
      largest = s[j];
      largest_j = j;
    }
  }
  const T shifted = largest - T(2);
  if (empty_mode == 0 && shifted > T(-2)) {
    closest = shifted;
    idx = largest_j;
  } else {
    closest = T(-2);
    idx = -1;
  }
}

// Reference gradient of cost = sum_i w_i (L1_i + L2_i) (the formula in
// _reference/triplet.py), in long double.
template <class T>
void reference_grad(const std::vector<T>& v1, const std::vector<T>& v2, index_t b, index_t d,
                    const std::vector<int64_t>& cidx, const std::vector<uint8_t>& a1, const std::vector<uint8_t>& a2,
                    const std::vector<double>& w, std::vector<LD>& g1, std::vector<LD>& g2, std::vector<LD>& scale1,
                    std::vector<LD>& scale2) {
  std::vector<LD> inv1(b), inv2(b), u1(b * d), u2(b * d);
  for (index_t i = 0; i < b; ++i) {
    LD s1 = 0, s2 = 0;
    for (index_t k = 0; k < d; ++k) {
      s1 += LD(v1[i * d + k]) * v1[i * d + k];
      s2 += LD(v2[i * d + k]) * v2[i * d + k];
    }
    inv1[i] = s1 > 0 ? 1 / std::sqrt(s1) : 0;
    inv2[i] = s2 > 0 ? 1 / std::sqrt(s2) : 0;
    for (index_t k = 0; k < d; ++k) {
      u1[i * d + k] = v1[i * d + k] * inv1[i];
      u2[i * d + k] = v2[i * d + k] * inv2[i];
    }
  }
  // G[i, j] = d cost / d s[i, j], dense (b is small here).
  std::vector<LD> G(b * b, 0);
  for (index_t i = 0; i < b; ++i) {
    const LD wi = w[i];
    G[i * b + i] -= wi * (LD(a1[i] != 0) + LD(a2[i] != 0));
    if (a1[i])
      for (index_t j = 0; j < b; ++j)
        if (j != i) G[i * b + j] += wi / LD(b - 1);
    if (a2[i] && cidx[i] >= 0) G[i * b + cidx[i]] += wi;
  }
  std::vector<LD> gu1(b * d, 0), gu2(b * d, 0);
  scale1.assign(b, 0);
  scale2.assign(b, 0);
  for (index_t i = 0; i < b; ++i)
    for (index_t j = 0; j < b; ++j) {
      const LD gij = G[i * b + j];
      if (gij == 0) continue;
      scale2[i] += std::fabs(gij);
      scale1[j] += std::fabs(gij);
      for (index_t k = 0; k < d; ++k) {
        gu2[i * d + k] += gij * u1[j * d + k];
        gu1[j * d + k] += gij * u2[i * d + k];
      }
    }
  g1.assign(b * d, 0);
  g2.assign(b * d, 0);
  for (int which = 0; which < 2; ++which) {
    const std::vector<LD>& gu = which ? gu2 : gu1;
    const std::vector<LD>& u = which ? u2 : u1;
    const std::vector<LD>& inv = which ? inv2 : inv1;
    std::vector<LD>& g = which ? g2 : g1;
    std::vector<LD>& scale = which ? scale2 : scale1;
    for (index_t i = 0; i < b; ++i) {
      LD dotu = 0;
      for (index_t k = 0; k < d; ++k) dotu += gu[i * d + k] * u[i * d + k];
      for (index_t k = 0; k < d; ++k) g[i * d + k] = (gu[i * d + k] - dotu * u[i * d + k]) * inv[i];
      scale[i] *= inv[i];
    }
  }
}

template <class T>
void fuzz_triplet(Bytes& in, const Op& op) {
  index_t b = in.dim(2, 30, 700), d = in.dim(0, 40, 800);
  fit_budget({&b, &b, &d}, 2e6);
  b = std::max<index_t>(b, 2);  // the bindings reject b < 2
  const int empty_mode = in.u8() & 1;
  std::vector<T> v1(b * d), v2(b * d);
  fill(in, v1, b, d);
  fill(in, v2, b, d);
  if (in.u8() % 4 == 0) v2 = v1;  // identical batches: every positive ties with duplicates
  // Gradient inputs: activity flags per row and the per-row weights.
  std::vector<uint8_t> act1(b), act2(b);
  for (index_t i = 0; i < b; ++i) {
    const uint8_t f = in.u8();
    act1[i] = f & 1;
    act2[i] = (f >> 1) & 1;
  }
  std::vector<double> w(b);
  {
    static const double grid[] = {1, 0.5, 0.25, 2, -1, 0, 3, 1e-3};
    const uint8_t mode = in.u8();
    for (index_t i = 0; i < b; ++i) w[i] = (mode & 1) ? grid[(mode >> 1) % 8] : grid[in.u8() % 8];
    if ((mode >> 4) == 15) w[in.u16() % b] = std::numeric_limits<double>::quiet_NaN();
  }
  const auto r1 = rows_info(v1, b, d), r2 = rows_info(v2, b, d);
  bool grad_checkable = true;
  for (index_t i = 0; i < b; ++i) grad_checkable &= r1[i].in_range && r2[i].in_range && std::isfinite(w[i]);

  struct Result {
    std::vector<T> S, pos, mean, closest, g1, g2;
    std::vector<int64_t> idx;
  };
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    Result r;
    const auto& K = fastsim::typed_kernels<T>();
    r.S.assign(b * b, T(-7));
    r.pos.assign(b, T(-7));
    r.mean.assign(b, T(-7));
    r.closest.assign(b, T(-7));
    r.idx.assign(b, -7);
    guarded([&] { K.cosine_matrix(v2.data(), b, v1.data(), b, d, r.S.data(), false); });
    guarded([&] {
      K.triplet_forward(v1.data(), v2.data(), b, d, empty_mode, r.pos.data(), r.mean.data(), r.closest.data(),
                        r.idx.data());
    });
    r.g1.assign(b * d, T(-7));
    r.g2.assign(b * d, T(-7));
    guarded([&] {
      K.triplet_backward(v1.data(), v2.data(), b, d, r.idx.data(), act1.data(), act2.data(), w.data(), r.g1.data(),
                         r.g2.data());
    });
    return r;
  };
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], empty_mode ? "triplet(floor)" : "triplet(shift)", tname<T>(), op.threads);
    const Result r = run(op.threads);
    // The scores themselves (s[i, j] = cos(v2[i], v1[j])).
    check_cos_matrix(r.S, v2, b, v1, b, d);
    for (index_t i = 0; i < b; ++i) {
      if (!same(r.pos[i], r.S[i * b + i]))
        fail("positive[%td] = %a but the tile computes s[i, i] = %a (b=%td d=%td)", i, double(r.pos[i]),
             double(r.S[i * b + i]), b, d);
      T closest;
      int64_t idx;
      bool nan_row, nan_negative;
      expected_mining(r.S, b, empty_mode, i, closest, idx, nan_row, nan_negative);
      if (!same(r.closest[i], closest) || r.idx[i] != idx)
        fail("row %td: closest negative %.9g at %lld, expected %.9g at %lld (positive %.9g, b=%td d=%td)", i,
             double(r.closest[i]), (long long)r.idx[i], double(closest), (long long)idx, double(r.pos[i]), b, d);
      LD sum = 0;
      for (index_t j = 0; j < b; ++j)
        if (j != i) sum += r.S[i * b + j];
      const LD mean = sum / LD(b - 1);
      if (nan_negative ? !std::isnan(r.mean[i]) : !(std::fabs(LD(r.mean[i]) - mean) <= 128 * eps<T>()))
        fail("row %td: mean negative %.17g, expected %.17Lg", i, double(r.mean[i]), mean);
    }
    if (grad_checkable) {
      std::vector<LD> g1, g2, s1, s2;
      reference_grad(v1, v2, b, d, r.idx, act1, act2, w, g1, g2, s1, s2);
      const LD limit = LD(std::numeric_limits<T>::max()) / 16;
      for (int which = 0; which < 2; ++which) {
        const std::vector<T>& got = which ? r.g2 : r.g1;
        const std::vector<LD>& want = which ? g2 : g1;
        const std::vector<LD>& scale = which ? s2 : s1;
        for (index_t i = 0; i < b; ++i) {
          if (scale[i] > limit) continue;  // the gradient itself is not representable in T
          const LD tol = 4 * (LD(b) + LD(d) + 16) * eps<T>() * scale[i] + 8 * LD(std::numeric_limits<T>::min());
          for (index_t k = 0; k < d; ++k) {
            const LD diff = std::fabs(LD(got[i * d + k]) - want[i * d + k]);
            if (!(diff <= tol))
              fail("g%d[%td, %td] = %.17g, reference %.17Lg, tol %.3Lg (b=%td d=%td)", which + 1, i, k,
                   double(got[i * d + k]), want[i * d + k], tol, b, d);
          }
        }
      }
    }
    if (l == 0 && op.threads > 1) {
      const Result r1t = run(1);
      if (!same_bits(r.pos, r1t.pos) || !same_bits(r.mean, r1t.mean) || !same_bits(r.closest, r1t.closest) ||
          !same_bits(r.idx, r1t.idx) || !same_bits(r.g1, r1t.g1) || !same_bits(r.g2, r1t.g2) ||
          !same_bits(r.S, r1t.S))
        fail("one thread and %d threads differ", op.threads);
    }
  }
}

// ----------------------------------------------------------------- top-k

template <class T>
bool ranks_before(T sa, int64_t ia, T sb, int64_t ib) {
  const bool an = std::isnan(sa), bn = std::isnan(sb);
  if (an != bn) return bn;
  if (!an && sa != sb) return sa > sb;
  return ia < ib;
}

template <class T>
void fuzz_topk(Bytes& in, const Op& op) {
  const bool exclude_self = in.flag();
  const bool alias = in.flag();  // queries and corpus the same array, as x, x from Python
  index_t m = in.dim(0, 20, 400), n = (exclude_self || alias) ? m : in.dim(0, 40, 3000), d = in.dim(0, 40, 600);
  fit_budget({&m, &n, &d}, 2e6);
  if (exclude_self || alias) n = m;
  const index_t candidates = std::max<index_t>(0, n - (exclude_self ? 1 : 0));
  const index_t k = 1 + in.u16() % (candidates + 2);  // up to two past the candidates: NaN / -1 filler
  std::vector<T> q(m * d), c(alias ? 0 : n * d);
  fill(in, q, m, d);
  if (!alias) fill(in, c, n, d);
  const std::vector<T>& cc = alias ? q : c;
  struct Result {
    std::vector<T> S, scores, self_scores;
    std::vector<int64_t> idx, self_idx;
  };
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    const auto& K = fastsim::typed_kernels<T>();
    Result r;
    r.S.assign(m * n, T(-7));
    r.scores.assign(m * k, T(-7));
    r.idx.assign(m * k, -7);
    guarded([&] { K.cosine_matrix(q.data(), m, cc.data(), n, d, r.S.data(), false); });
    guarded([&] { K.top_k(q.data(), m, cc.data(), n, d, k, exclude_self, r.scores.data(), r.idx.data()); });
    if (alias) {  // the self form, which must give top_k(x, x)
      r.self_scores.assign(m * k, T(-7));
      r.self_idx.assign(m * k, -7);
      guarded([&] { K.top_k_self(q.data(), m, d, k, exclude_self, r.self_scores.data(), r.self_idx.data()); });
    }
    return r;
  };
  std::vector<int64_t> order;
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], exclude_self ? "top_k(exclude_self)" : "top_k", tname<T>(), op.threads);
    const Result r = run(op.threads);
    check_cos_matrix(r.S, q, m, cc, n, d);
    for (index_t i = 0; i < m; ++i) {
      const T* s = r.S.data() + i * n;
      order.clear();
      for (index_t j = 0; j < n; ++j)
        if (!(exclude_self && j == i)) order.push_back(j);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t x, int64_t y) { return ranks_before(s[x], x, s[y], y); });
      for (index_t r_ = 0; r_ < k; ++r_) {
        const T got_s = r.scores[i * k + r_];
        const int64_t got_i = r.idx[i * k + r_];
        const bool real = r_ < static_cast<index_t>(order.size());
        const int64_t want_i = real ? order[r_] : -1;
        const T want_s = real ? s[want_i] : std::numeric_limits<T>::quiet_NaN();
        if (got_i != want_i || !same(got_s, want_s))
          fail("query %td rank %td: (%.9g, %lld), expected (%.9g, %lld) (m=%td n=%td d=%td k=%td)", i, r_,
               double(got_s), (long long)got_i, double(want_s), (long long)want_i, m, n, d, k);
      }
    }
    // the self form multiplies each pair once: the same indices and the same values (the bits of a NaN or the
    // sign of a zero may differ)
    if (alias) {
      index_t p = 0;
      while (p < m * k && same(r.scores[p], r.self_scores[p]) && r.idx[p] == r.self_idx[p]) ++p;
      if (p < m * k)
        fail("top_k_self differs from top_k(x, x) at query %td rank %td: (%.9g, %lld) against (%.9g, %lld) "
           "(m=%td d=%td k=%td exclude_self=%d)", p / k, p % k, double(r.self_scores[p]), (long long)r.self_idx[p],
           double(r.scores[p]), (long long)r.idx[p], m, d, k, int(exclude_self));
    }
    if (l == 0 && op.threads > 1) {
      const Result r1t = run(1);
      if (!same_bits(r.scores, r1t.scores) || !same_bits(r.idx, r1t.idx) || !same_bits(r.self_scores, r1t.self_scores) ||
          !same_bits(r.self_idx, r1t.self_idx))
        fail("one thread and %d threads differ", op.threads);
    }
  }
}

// ----------------------------------------------------------------- range search

// Every pair with cosine >= threshold, against the checked cosine matrix: a
// pair whose matrix score lies more than the rounding band from the threshold
// is in the result exactly when it qualifies; every returned score is within
// the band of the matrix's and passes the threshold; rows come best first;
// max_per_row keeps the best; one thread and several agree bit for bit.
template <class T>
void fuzz_range(Bytes& in, const Op& op) {
  const bool self = in.flag();
  const int mode = self ? int(in.u8() % 3) : 0;  // 0 all, 1 without (i, i), 2 only j > i
  index_t m = in.dim(0, 20, 400), n = self ? m : in.dim(0, 40, 2000), d = in.dim(0, 40, 600);
  fit_budget({&m, &n, &d}, 2e6);
  if (self) n = m;
  std::vector<T> q(m * d), c(self ? 0 : n * d);
  fill(in, q, m, d);
  if (!self) fill(in, c, n, d);
  const std::vector<T>& cc = self ? q : c;
  const index_t max_per_row = (in.u8() % 3 == 0) ? 1 + in.u8() % 5 : 0;
  const uint8_t tcode = in.u8();
  std::vector<T> S(m * n, T(-7));
  guarded([&] { fastsim::typed_kernels<T>().cosine_matrix(q.data(), m, cc.data(), n, d, S.data(), false); });
  static const double fixed[] = {0.9, 0.5, 0.0, -1.0, 1.0, 0.999, -0.5, 0.1};
  T threshold = T(fixed[tcode % 8]);
  if ((tcode & 8) && m * n > 0) {  // a score of the matrix itself: ties at the threshold
    const T v = S[in.u24() % (m * n)];
    if (!std::isnan(v)) threshold = v;
  }
  const LD band = 2 * (2 * LD(d) + 16) * eps<T>();
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    fastsim::RangeResult<T> r;
    guarded([&] {
      r = fastsim::typed_kernels<T>().range_search(q.data(), m, cc.data(), n, d, threshold, mode, 0, 0, max_per_row,
                                                   std::numeric_limits<index_t>::max());
    });
    return r;
  };
  auto wanted = [&](index_t i, index_t j) { return !(mode == 1 && i == j) && !(mode == 2 && j <= i); };
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], "range_search", tname<T>(), op.threads);
    const fastsim::RangeResult<T> r = run(op.threads);
    check_cos_matrix(S, q, m, cc, n, d);
    if (!r.complete) fail("the result is partial without a max_hits");
    if (static_cast<index_t>(r.indptr.size()) != m + 1 || r.indptr[0] != 0)
      fail("indptr has %zu entries, expected %td", r.indptr.size(), m + 1);
    std::vector<uint8_t> got(static_cast<size_t>(n));
    for (index_t i = 0; i < m; ++i) {
      const int64_t b = r.indptr[i], e = r.indptr[i + 1];
      if (e < b) fail("indptr decreases at row %td", i);
      std::fill(got.begin(), got.end(), 0);
      T worst = std::numeric_limits<T>::infinity();
      for (int64_t p = b; p < e; ++p) {
        const int64_t j = r.indices[p];
        const T sc = r.scores[p];
        if (j < 0 || j >= n) fail("row %td: index %lld out of range", i, (long long)j);
        if (!wanted(i, j)) fail("row %td: pair (%td, %lld) is excluded by mode %d", i, i, (long long)j, mode);
        if (got[j]) fail("row %td: index %lld twice", i, (long long)j);
        got[j] = 1;
        if (std::isnan(sc) || !(sc >= threshold)) fail("row %td: score %.9g below the threshold %.9g", i, double(sc), double(threshold));
        const T sm = S[i * n + j];
        if (std::isnan(sm) || !(std::fabs(LD(sc) - LD(sm)) <= band))
          fail("row %td col %lld: score %.17g, the matrix says %.17g", i, (long long)j, double(sc), double(sm));
        if (p > b && !ranks_before(r.scores[p - 1], r.indices[p - 1], sc, j))
          fail("row %td: not best first at position %lld", i, (long long)(p - b));
        worst = sc;
      }
      const index_t count = static_cast<index_t>(e - b);
      if (max_per_row > 0 && count > max_per_row) fail("row %td: %td pairs, max_per_row %td", i, count, max_per_row);
      const bool capped = max_per_row > 0 && count == max_per_row;
      for (index_t j = 0; j < n; ++j) {
        const T sm = S[i * n + j];
        if (got[j] || !wanted(i, j) || std::isnan(sm)) continue;
        if (LD(sm) >= LD(threshold) + band && !(capped && LD(worst) + band >= LD(sm)))
          fail("row %td: pair with col %td (matrix score %.17g >= threshold %.9g) missing", i, j, double(sm),
               double(threshold));
      }
    }
    if (l == 0 && op.threads > 1) {
      const fastsim::RangeResult<T> r1 = run(1);
      if (r1.indptr != r.indptr || r1.indices != r.indices || !same_bits(r1.scores, r.scores))
        fail("one thread and %d threads differ", op.threads);
    }
  }
}

// ----------------------------------------------------------------- recurrent layers

LD sigmoid_ref(LD x) { return 1 / (1 + std::exp(-x)); }

template <class T>
struct RnnCase {
  int cell;  // 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu
  index_t D, H, B, T_len, out_ld, out_off;
  bool batch_first, reverse, has_lengths, has_bih, has_bhh;
  std::vector<int64_t> lengths;
  std::vector<T> W_ih, W_hh, b_ih, b_hh, x, h0, c0;
  index_t row_of(index_t i, index_t t) const { return batch_first ? i * T_len + t : t * B + i; }
  index_t len(index_t i) const { return has_lengths ? lengths[i] : T_len; }
};

// PyTorch's recurrences in long double; out holds (B*T rows, H) in the input's row order.
template <class T>
void reference_rnn(const RnnCase<T>& p, std::vector<LD>& out, std::vector<LD>& h_fin, std::vector<LD>& c_fin) {
  const index_t D = p.D, H = p.H, gates = p.cell == 0 ? 4 : (p.cell == 1 ? 3 : 1);
  out.assign(p.B * p.T_len * H, 0);
  h_fin.assign(p.B * H, 0);
  c_fin.assign(p.B * H, 0);
  std::vector<LD> h(H), c(H), px(gates * H), ph(gates * H);
  for (index_t i = 0; i < p.B; ++i) {
    for (index_t u = 0; u < H; ++u) {
      h[u] = p.h0[i * H + u];
      c[u] = p.cell == 0 ? LD(p.c0[i * H + u]) : 0;
    }
    const index_t len = p.len(i);
    for (index_t s = 0; s < len; ++s) {
      const index_t t = p.reverse ? len - 1 - s : s;
      const T* xr = p.x.data() + p.row_of(i, t) * D;
      for (index_t r = 0; r < gates * H; ++r) {
        LD sx = p.has_bih ? LD(p.b_ih[r]) : 0, sh = p.has_bhh ? LD(p.b_hh[r]) : 0;
        for (index_t k = 0; k < D; ++k) sx += LD(p.W_ih[r * D + k]) * xr[k];
        for (index_t k = 0; k < H; ++k) sh += LD(p.W_hh[r * H + k]) * h[k];
        px[r] = sx;
        ph[r] = sh;
      }
      for (index_t u = 0; u < H; ++u) {
        if (p.cell == 0) {
          const LD ig = sigmoid_ref(px[u] + ph[u]), fg = sigmoid_ref(px[H + u] + ph[H + u]);
          const LD gg = std::tanh(px[2 * H + u] + ph[2 * H + u]), og = sigmoid_ref(px[3 * H + u] + ph[3 * H + u]);
          c[u] = fg * c[u] + ig * gg;
          px[u] = og * std::tanh(c[u]);  // new h, kept apart until every unit is done
        } else if (p.cell == 1) {
          const LD r = sigmoid_ref(px[u] + ph[u]), z = sigmoid_ref(px[H + u] + ph[H + u]);
          const LD nn = std::tanh(px[2 * H + u] + r * ph[2 * H + u]);
          px[u] = (1 - z) * nn + z * h[u];
        } else {
          const LD pre = px[u] + ph[u];
          px[u] = p.cell == 2 ? std::tanh(pre) : (std::isnan(pre) ? pre : std::max<LD>(pre, 0));
        }
      }
      for (index_t u = 0; u < H; ++u) {
        h[u] = px[u];
        out[p.row_of(i, t) * H + u] = h[u];
      }
    }
    for (index_t u = 0; u < H; ++u) {
      h_fin[i * H + u] = h[u];
      c_fin[i * H + u] = c[u];
    }
  }
}

template <class T>
void fuzz_rnn(Bytes& in, const Op& op) {
  RnnCase<T> p;
  p.cell = in.u8() % 4;
  p.D = in.dim(0, 12, 80);
  p.H = in.dim(1, 20, 90);
  p.B = in.dim(0, 9, 70);
  p.T_len = in.dim(0, 7, 40);
  const index_t gates = p.cell == 0 ? 4 : (p.cell == 1 ? 3 : 1);
  // About B * T * gates * H * (D + H) multiply-adds per run.
  while (double(std::max<index_t>(p.B, 1)) * double(std::max<index_t>(p.T_len, 1)) * double(gates * p.H) *
             double(p.D + p.H) > 2e6) {
    index_t* big = &p.B;
    for (index_t* d : {&p.T_len, &p.D, &p.H})
      if (*d > *big) big = d;
    *big /= 2;
  }
  p.H = std::max<index_t>(p.H, 1);
  p.batch_first = in.flag();
  p.reverse = in.flag();
  p.has_lengths = in.flag() && p.T_len > 0;  // lengths lie within 1..T, as the bindings require
  p.has_bih = in.u8() % 4 != 0;
  p.has_bhh = in.u8() % 4 != 0;
  p.out_off = in.u8() % 3;
  p.out_ld = p.H + p.out_off + in.u8() % 3;
  p.lengths.resize(p.B);
  for (index_t i = 0; i < p.B; ++i) p.lengths[i] = 1 + (p.T_len ? in.u8() % p.T_len : 0);
  // "Checked" inputs keep the recurrence well conditioned (weights scaled by the
  // fan-in) and may hold NaN; "wild" ones take any value and are only checked
  // for memory safety, untouched outputs and the floating-point mode.
  const bool wild = in.u8() % 4 == 0;
  const index_t G = gates * p.H;
  p.W_ih.resize(G * p.D);
  p.W_hh.resize(G * p.H);
  p.b_ih.resize(G);
  p.b_hh.resize(G);
  p.x.resize(p.B * p.T_len * p.D);
  p.h0.resize(p.B * p.H);
  p.c0.resize(p.B * p.H);
  std::vector<std::vector<T>*> arrays = {&p.W_ih, &p.W_hh, &p.b_ih, &p.b_hh, &p.x, &p.h0, &p.c0};
  if (wild) {
    for (auto* a : arrays) fill(in, *a, 1, static_cast<index_t>(a->size()));
  } else {
    Rng rng{in.u64()};
    const LD s_ih = 1 / std::sqrt(LD(std::max<index_t>(p.D, 1))), s_hh = 0.7L / std::sqrt(LD(p.H));
    for (T& v : p.W_ih) v = T(rng.symmetric() * s_ih);
    for (T& v : p.W_hh) v = T(rng.symmetric() * s_hh);
    for (T& v : p.b_ih) v = T(rng.symmetric());
    for (T& v : p.b_hh) v = T(rng.symmetric());
    for (T& v : p.x) v = T(2 * rng.symmetric());
    for (T& v : p.h0) v = T(rng.symmetric());
    for (T& v : p.c0) v = T(rng.symmetric());
    const int nans = in.u8() % 8;
    for (int s = 0; s < nans && s < 3; ++s) {
      std::vector<T>& a = *arrays[in.u8() % arrays.size()];
      if (!a.empty()) a[in.u24() % a.size()] = std::numeric_limits<T>::quiet_NaN();
    }
  }
  std::vector<LD> ref_out, ref_h, ref_c;
  if (!wild) reference_rnn(p, ref_out, ref_h, ref_c);
  const index_t rows = p.B * p.T_len;
  const T sentinel = T(12345.5);
  struct Result {
    std::vector<T> out, h, c;
  };
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    const auto& K = fastsim::typed_kernels<T>();
    Result r;
    r.out.assign(rows * p.out_ld, sentinel);
    r.h = p.h0;
    r.c = p.c0;
    guarded([&] {
      void* w = K.rnn_create(p.cell, p.W_ih.data(), p.W_hh.data(), p.has_bih ? p.b_ih.data() : nullptr,
                             p.has_bhh ? p.b_hh.data() : nullptr, p.D, p.H);
      const index_t row_b = p.batch_first ? p.T_len : 1, row_t = p.batch_first ? 1 : p.B;
      K.rnn_run(w, p.x.data(), p.B, p.T_len, row_b, row_t, p.has_lengths ? p.lengths.data() : nullptr, p.reverse,
                r.h.data(), p.cell == 0 ? r.c.data() : nullptr, r.out.data(), p.out_ld, p.out_off, nullptr, 0,
                nullptr);
      K.rnn_destroy(w);
    });
    return r;
  };
  static const char* names[] = {"lstm", "gru", "rnn_tanh", "rnn_relu"};
  const LD tol = 8 * (LD(p.D) + LD(p.H) + 8) * eps<T>() * (1 + LD(p.T_len));
  auto check = [&](T got, LD want, const char* what, index_t i, index_t u) {
    if (std::isnan(want) ? !std::isnan(got) : !(std::fabs(LD(got) - want) <= tol))
      fail("%s %s[%td, %td] = %.17g, reference %.17Lg, tol %.3Lg (D=%td H=%td B=%td T=%td)", names[p.cell], what, i, u,
           double(got), want, tol, p.D, p.H, p.B, p.T_len);
  };
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], names[p.cell], tname<T>(), op.threads);
    const Result r = run(op.threads);
    for (index_t i = 0; i < p.B; ++i)
      for (index_t t = 0; t < p.T_len; ++t) {
        const index_t row = p.row_of(i, t);
        const bool live = t < p.len(i);
        for (index_t col = 0; col < p.out_ld; ++col) {
          const T got = r.out[row * p.out_ld + col];
          const bool ours = live && col >= p.out_off && col < p.out_off + p.H;
          if (!ours) {
            if (!same(got, sentinel))
              fail("%s wrote %g at sequence %td step %td column %td, outside its output", names[p.cell], double(got), i,
                   t, col);
          } else if (!wild) {
            check(got, ref_out[row * p.H + col - p.out_off], "out", row, col - p.out_off);
          }
        }
      }
    if (!wild)
      for (index_t i = 0; i < p.B * p.H; ++i) {
        check(r.h[i], ref_h[i], "h_n", i / p.H, i % p.H);
        if (p.cell == 0) check(r.c[i], ref_c[i], "c_n", i / p.H, i % p.H);
      }
    if (l == 0 && op.threads > 1) {
      const Result r1t = run(1);
      if (!same_bits(r.out, r1t.out) || !same_bits(r.h, r1t.h) || !same_bits(r.c, r1t.c))
        fail("one thread and %d threads differ", op.threads);
    }
  }
}

// ----------------------------------------------------------------- recurrent training

// The training forward (workspace kept) and backpropagation through time of
// one direction, time-major, against the recurrences and their derivatives
// (python/fastsim/_reference/rnn_backward.py) in long double: outputs,
// final states, the input, weight, bias and initial-state gradients, each
// entry within a bound that grows with the steps and the gradient's scale;
// padding rows get exact zeros in dx; one thread and several bit for bit.
template <class T>
void fuzz_rnn_train(Bytes& in, const Op& op) {
  const int cell = in.u8() % 4;
  index_t D = in.dim(0, 10, 60), H = in.dim(1, 17, 70), B = in.dim(1, 9, 60), Tn = in.dim(1, 7, 30);
  const index_t gates = cell == 0 ? 4 : (cell == 1 ? 3 : 1);
  while (double(B) * double(Tn) * double(gates * H) * double(D + H) > 1e6) {
    index_t* big = &B;
    for (index_t* d : {&Tn, &D, &H})
      if (*d > *big) big = d;
    *big = std::max<index_t>(*big / 2, 1);
  }
  const bool reverse = in.flag();
  const bool wild = in.u8() % 5 == 0;
  const index_t G = gates * H, A = (cell <= 1) ? 4 * H : H, N = Tn * B;
  std::vector<int64_t> lengths(B);
  const bool full = in.flag();
  for (index_t i = 0; i < B; ++i) lengths[i] = full ? Tn : 1 + in.u8() % Tn;
  std::vector<T> W_ih(G * D), W_hh(G * H), b_ih(G), b_hh(G), x(N * D), h0(B * H), c0(B * H), d_out(N * H),
      dh_n(B * H), dc_n(B * H);
  std::vector<std::vector<T>*> arrays = {&W_ih, &W_hh, &b_ih, &b_hh, &x, &h0, &c0, &d_out, &dh_n, &dc_n};
  if (wild) {
    for (auto* a : arrays) fill(in, *a, 1, static_cast<index_t>(a->size()));
  } else {
    Rng rng{in.u64()};
    const LD s_ih = 1 / std::sqrt(LD(std::max<index_t>(D, 1))), s_hh = 0.7L / std::sqrt(LD(H));
    for (T& v : W_ih) v = T(rng.symmetric() * s_ih);
    for (T& v : W_hh) v = T(rng.symmetric() * s_hh);
    for (auto* a : {&b_ih, &b_hh, &h0, &c0, &d_out, &dh_n, &dc_n})
      for (T& v : *a) v = T(rng.symmetric());
    for (T& v : x) v = T(2 * rng.symmetric());
  }
  struct Result {
    std::vector<T> out, h, c, act, h_prev, c_prev, tanh_c, dh, dc, dx, dW_ih, dW_hh, db_ih, db_hh;
  };
  const bool lstm = cell == 0;
  auto run = [&](int threads) {
    fastsim::set_num_threads(threads);
    const auto& K = fastsim::typed_kernels<T>();
    Result r;
    r.out.assign(N * H, T(0));
    r.h = h0;
    r.c = c0;
    r.act.assign(N * A, T(0));
    r.h_prev.assign(N * H, T(0));
    r.c_prev.assign(lstm ? N * H : 0, T(0));
    r.tanh_c.assign(lstm ? N * H : 0, T(0));
    r.dh = dh_n;
    r.dc = dc_n;
    r.dx.assign(N * D, T(7));  // every entry must be written
    r.dW_ih.assign(G * D, T(7));
    r.dW_hh.assign(G * H, T(7));
    r.db_ih.assign(G, T(7));
    r.db_hh.assign(G, T(7));
    guarded([&] {
      K.rnn_train_forward(cell, x.data(), Tn, B, D, H, W_ih.data(), W_hh.data(), b_ih.data(), b_hh.data(),
                          lengths.data(), reverse, r.h.data(), lstm ? r.c.data() : nullptr, r.out.data(),
                          r.act.data(), r.h_prev.data(), lstm ? r.c_prev.data() : nullptr,
                          lstm ? r.tanh_c.data() : nullptr);
      K.rnn_train_backward(cell, x.data(), Tn, B, D, H, W_ih.data(), W_hh.data(), lengths.data(), reverse,
                           r.act.data(), r.h_prev.data(), lstm ? r.c_prev.data() : nullptr,
                           lstm ? r.tanh_c.data() : nullptr, d_out.data(), r.dh.data(), lstm ? r.dc.data() : nullptr,
                           r.dx.data(), r.dW_ih.data(), r.dW_hh.data(), r.db_ih.data(), r.db_hh.data());
    });
    return r;
  };
  static const char* names[] = {"lstm_train", "gru_train", "rnn_tanh_train", "rnn_relu_train"};
  // the reference, row by row (rows are independent sequences)
  std::vector<LD> out(N * H, 0), hN(B * H), cN(B * H), dx(N * D, 0), dW_ih(G * D, 0), dW_hh(G * H, 0), db_ih(G, 0),
      db_hh(G, 0), dh0(B * H), dc0(B * H);
  if (!wild) {
    for (index_t i = 0; i < B; ++i) {
      const index_t len = lengths[i];
      std::vector<LD> h(H), c(H), px(G), ph(G);
      // per step s (in the forward's order): h and c entering it, the gates, the new c and h
      std::vector<std::vector<LD>> hp(len), cp(len), gt(len), cn(len), hn(len);
      for (index_t u = 0; u < H; ++u) {
        h[u] = h0[i * H + u];
        c[u] = lstm ? LD(c0[i * H + u]) : 0;
      }
      auto t_of = [&](index_t s) { return reverse ? len - 1 - s : s; };
      for (index_t s = 0; s < len; ++s) {
        const index_t t = t_of(s);
        const T* xr = x.data() + (t * B + i) * D;
        for (index_t r = 0; r < G; ++r) {
          LD sx = b_ih[r], sh = b_hh[r];
          for (index_t k = 0; k < D; ++k) sx += LD(W_ih[r * D + k]) * xr[k];
          for (index_t k = 0; k < H; ++k) sh += LD(W_hh[r * H + k]) * h[k];
          px[r] = sx;
          ph[r] = sh;
        }
        hp[s] = h;
        cp[s] = c;
        gt[s].assign(4 * H, 0);
        std::vector<LD> hnew(H);
        for (index_t u = 0; u < H; ++u) {
          if (cell == 0) {
            const LD ig = sigmoid_ref(px[u] + ph[u]), fg = sigmoid_ref(px[H + u] + ph[H + u]);
            const LD gg = std::tanh(px[2 * H + u] + ph[2 * H + u]), og = sigmoid_ref(px[3 * H + u] + ph[3 * H + u]);
            gt[s][u] = ig, gt[s][H + u] = fg, gt[s][2 * H + u] = gg, gt[s][3 * H + u] = og;
            c[u] = fg * c[u] + ig * gg;
            hnew[u] = og * std::tanh(c[u]);
          } else if (cell == 1) {
            const LD r = sigmoid_ref(px[u] + ph[u]), z = sigmoid_ref(px[H + u] + ph[H + u]);
            const LD nn = std::tanh(px[2 * H + u] + r * ph[2 * H + u]);
            gt[s][u] = r, gt[s][H + u] = z, gt[s][2 * H + u] = nn, gt[s][3 * H + u] = ph[2 * H + u];
            hnew[u] = (1 - z) * nn + z * h[u];
          } else {
            const LD pre = px[u] + ph[u];
            hnew[u] = cell == 2 ? std::tanh(pre) : std::max<LD>(pre, 0);
          }
        }
        cn[s] = c;
        hn[s] = hnew;
        h = hnew;
        for (index_t u = 0; u < H; ++u) out[(t * B + i) * H + u] = h[u];
      }
      for (index_t u = 0; u < H; ++u) {
        hN[i * H + u] = h[u];
        cN[i * H + u] = c[u];
      }
      // backward through the steps
      std::vector<LD> dh(H), dc(H), dax(G), dah(G), direct(H);
      for (index_t u = 0; u < H; ++u) {
        dh[u] = dh_n[i * H + u];
        dc[u] = lstm ? LD(dc_n[i * H + u]) : 0;
      }
      for (index_t s = len - 1; s >= 0; --s) {
        const index_t t = t_of(s);
        for (index_t u = 0; u < H; ++u) {
          const LD dhn = dh[u] + LD(d_out[(t * B + i) * H + u]);
          direct[u] = 0;
          if (cell == 0) {
            const LD ig = gt[s][u], fg = gt[s][H + u], gg = gt[s][2 * H + u], og = gt[s][3 * H + u];
            const LD tc = std::tanh(cn[s][u]);
            const LD dcs = dc[u] + dhn * og * (1 - tc * tc);
            dax[u] = dcs * gg * ig * (1 - ig);
            dax[H + u] = dcs * cp[s][u] * fg * (1 - fg);
            dax[2 * H + u] = dcs * ig * (1 - gg * gg);
            dax[3 * H + u] = dhn * tc * og * (1 - og);
            for (index_t q = 0; q < 4; ++q) dah[q * H + u] = dax[q * H + u];
            dc[u] = dcs * fg;
          } else if (cell == 1) {
            const LD r = gt[s][u], z = gt[s][H + u], nn = gt[s][2 * H + u], ahn = gt[s][3 * H + u];
            const LD dan = dhn * (1 - z) * (1 - nn * nn);
            const LD dar = dan * ahn * r * (1 - r), daz = dhn * (hp[s][u] - nn) * z * (1 - z);
            dax[u] = dah[u] = dar;
            dax[H + u] = dah[H + u] = daz;
            dax[2 * H + u] = dan;
            dah[2 * H + u] = dan * r;
            direct[u] = dhn * z;
          } else {
            const LD hv = hn[s][u];
            dax[u] = dah[u] = dhn * (cell == 2 ? 1 - hv * hv : (hv > 0 ? 1 : 0));
          }
        }
        const T* xr = x.data() + (t * B + i) * D;
        for (index_t k = 0; k < D; ++k) {
          LD acc = 0;
          for (index_t r = 0; r < G; ++r) acc += dax[r] * LD(W_ih[r * D + k]);
          dx[(t * B + i) * D + k] = acc;
        }
        for (index_t r = 0; r < G; ++r) {
          for (index_t k = 0; k < D; ++k) dW_ih[r * D + k] += dax[r] * xr[k];
          for (index_t k = 0; k < H; ++k) dW_hh[r * H + k] += dah[r] * hp[s][k];
          db_ih[r] += dax[r];
          db_hh[r] += dah[r];
        }
        for (index_t k = 0; k < H; ++k) {
          LD acc = direct[k];
          for (index_t r = 0; r < G; ++r) acc += dah[r] * LD(W_hh[r * H + k]);
          dh[k] = acc;
        }
      }
      for (index_t u = 0; u < H; ++u) {
        dh0[i * H + u] = dh[u];
        dc0[i * H + u] = dc[u];
      }
    }
  }
  const LD steps = 1 + LD(Tn);
  const LD base = 32 * (LD(D) + LD(H) + 8) * eps<T>() * steps * steps;
  auto check_all = [&](const std::vector<T>& got, const std::vector<LD>& want, LD sum_rows, const char* what) {
    LD scale = 1;
    for (LD w : want) scale = std::max(scale, std::fabs(w));
    const LD tol = base * scale * sum_rows;
    for (size_t e = 0; e < want.size(); ++e)
      if (!(std::fabs(LD(got[e]) - want[e]) <= tol))
        fail("%s %s[%zu] = %.17g, reference %.17Lg, tol %.3Lg (D=%td H=%td B=%td T=%td reverse=%d)", names[cell],
             what, e, double(got[e]), want[e], tol, D, H, B, Tn, int(reverse));
  };
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], names[cell], tname<T>(), op.threads);
    const Result r = run(op.threads);
    for (index_t t = 0; t < Tn; ++t)
      for (index_t i = 0; i < B; ++i)
        if (t >= lengths[i])
          for (index_t k = 0; k < D; ++k)
            if (!(r.dx[(t * B + i) * D + k] == T(0)))
              fail("%s dx of padding row %td at step %td is %g, not 0", names[cell], i, t,
                   double(r.dx[(t * B + i) * D + k]));
    if (!wild) {
      check_all(r.out, out, 1, "out");
      check_all(r.h, hN, 1, "h_n");
      if (lstm) check_all(r.c, cN, 1, "c_n");
      check_all(r.dx, dx, 1, "dx");
      check_all(r.dh, dh0, 1, "dh0");
      if (lstm) check_all(r.dc, dc0, 1, "dc0");
      const LD rows = std::sqrt(LD(B) * LD(Tn));
      check_all(r.dW_ih, dW_ih, rows, "dW_ih");
      check_all(r.dW_hh, dW_hh, rows, "dW_hh");
      check_all(r.db_ih, db_ih, rows, "db_ih");
      check_all(r.db_hh, db_hh, rows, "db_hh");
    }
    if (l == 0 && op.threads > 1) {
      const Result r1 = run(1);
      static const char* fields[] = {"out", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"};
      int f = 0;
      for (auto m : {&Result::out, &Result::h, &Result::c, &Result::dx, &Result::dh, &Result::dc, &Result::dW_ih,
                     &Result::dW_hh, &Result::db_ih, &Result::db_hh}) {
        if (!same_bits(r.*m, r1.*m))
          fail("%s: %s differs between one thread and %d threads (D=%td H=%td B=%td T=%td)", names[cell], fields[f],
               op.threads, D, H, B, Tn);
        ++f;
      }
    }
  }
}

// ----------------------------------------------------------------- vec_math

template <class T>
void fuzz_vecmath(Bytes& in, const Op& op) {
  const int fn = in.u8() % 3;
  const index_t n = in.dim(0, 40, 600);
  std::vector<T> x(n);
  fill(in, x, 1, n);
  // Stated accuracy (vecmath.hpp): e^x relative 2e-7 / 5e-16 on the clamped
  // range, sigmoid and tanh absolute 3e-7 / 1e-15.
  const bool f32 = sizeof(T) == 4;
  const LD lo = f32 ? -87.0L : -708.0L, hi = f32 ? 88.0L : 709.0L;
  const LD exp_rel = f32 ? 2e-7L : 5e-16L, abs_tol = f32 ? 3e-7L : 1e-15L;
  static const char* names[] = {"vexp", "vsigmoid", "vtanh"};
  for (size_t l = 0; l < op.levels.size(); ++l) {
    set_level(op.levels[l], names[fn], tname<T>(), 1);
    std::vector<T> out(n, T(-7));
    guarded([&] { fastsim::typed_kernels<T>().vec_math(fn, x.data(), n, out.data()); });
    for (index_t i = 0; i < n; ++i) {
      const LD v = x[i], got = out[i];
      if (std::isnan(v)) {
        if (!std::isnan(got)) fail("%s(NaN) = %Lg", names[fn], got);
        continue;
      }
      bool ok;
      LD want;
      if (fn == 0) {
        want = std::exp(std::min(hi, std::max(lo, v)));  // inputs are clamped to [lo, hi]
        ok = std::fabs(got - want) <= exp_rel * want;
      } else if (fn == 1) {
        want = sigmoid_ref(v);
        ok = std::fabs(got - want) <= abs_tol;
      } else {
        want = std::tanh(v);
        ok = std::fabs(got - want) <= abs_tol;
      }
      if (!ok) fail("%s(%.17Lg) = %.17Lg, reference %.17Lg", names[fn], v, got, want);
    }
  }
}

// ----------------------------------------------------------------- driver

const std::vector<std::string>& levels() {
  static const std::vector<std::string> l = fastsim::simd_levels();
  return l;
}

template <class T>
void dispatch(int which, Bytes& in, const Op& op) {
  switch (which) {
    case 0: return fuzz_gemm<T>(in, op);
    case 1: return fuzz_cosine_matrix<T>(in, op);
    case 2: return fuzz_cosine_rows<T>(in, op);
    case 3: return fuzz_triplet<T>(in, op);
    case 4: return fuzz_topk<T>(in, op);
    case 5: return fuzz_rnn<T>(in, op);
    case 6: return fuzz_gemm_tn<T>(in, op);
    case 7: return fuzz_range<T>(in, op);
    case 8: return fuzz_rnn_train<T>(in, op);
    default: return fuzz_vecmath<T>(in, op);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  const uint8_t head = in.u8();
  Op op;
  op.levels = levels();
  op.threads = 1 + (head >> 4) % 4;
  const int which = head % 10;
  if ((head >> 3) & 1)
    dispatch<double>(which, in, op);
  else
    dispatch<float>(which, in, op);
  fastsim::set_simd_level("best");
  return 0;
}
