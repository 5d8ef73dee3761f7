// Parameter updates and the embedding's row gradient for the native trainer
// (fastsim.trainer, fastsim.optim): element-wise and row-wise loops, memory
// bound, threaded over rows.  The arithmetic is that of fastsim.optim (which
// is PyTorch's Adam and SparseAdam); scalars come in as double and are used in
// the parameters' type.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "fastsim/common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastsim {

// The dense Adam update of one element (torch.optim.Adam): m, v, then p.
template <class T>
struct AdamStep {
  T b1, b2, a1, a2, ss, e, bc;
  AdamStep(double step_size, double beta1, double beta2, double eps, double bc2_sqrt)
      : b1(T(beta1)), b2(T(beta2)), a1(T(1.0 - beta1)), a2(T(1.0 - beta2)), ss(T(step_size)), e(T(eps)),
        bc(T(bc2_sqrt)) {}
  void operator()(T& p, T& m, T& v, T g) const {
    m = b1 * m + a1 * g;
    v = b2 * v + a2 * (g * g);
    p -= ss * (m / (std::sqrt(v) / bc + e));
  }
};

// Dense Adam on n elements: m, v updated in place, then p.
template <class T>
void adam_dense(T* p, T* m, T* v, const T* g, index_t n, double step_size, double beta1, double beta2, double eps,
                double bc2_sqrt, double weight_decay) {
  const AdamStep<T> step(step_size, beta1, beta2, eps, bc2_sqrt);
  const T wd = T(weight_decay);
  const int nt = n >= (index_t(1) << 16) ? num_threads() : 1;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
  for (index_t i = 0; i < n; ++i) step(p[i], m[i], v[i], weight_decay != 0.0 ? g[i] + wd * p[i] : g[i]);
}

// Adam on a (V, E) matrix whose gradient is given for the ascending rows
// `rows` only (values (nrows, E)).  lazy: only those rows move, moments
// included (SparseAdam: p -= step_size * m / (sqrt(v) + eps)); otherwise every
// row takes the dense step with a zero gradient outside `rows`.
template <class T>
void adam_rows(T* p, T* m, T* v, index_t V, index_t E, const int64_t* rows, const T* vals, index_t nrows,
               double step_size, double beta1, double beta2, double eps, double bc2_sqrt, bool lazy) {
  const int nt = (lazy ? nrows : V) * E >= (index_t(1) << 16) ? num_threads() : 1;
  if (lazy) {
    const T a1 = T(1.0 - beta1), a2 = T(1.0 - beta2), ss = T(step_size), e = T(eps);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (index_t k = 0; k < nrows; ++k) {
      const index_t off = index_t(rows[k]) * E;
      const T* g = vals + k * E;
      for (index_t j = 0; j < E; ++j) {
        const index_t i = off + j;
        const T mi = m[i] + (g[j] - m[i]) * a1;
        const T vi = v[i] + (g[j] * g[j] - v[i]) * a2;
        m[i] = mi;
        v[i] = vi;
        p[i] -= ss * (mi / (std::sqrt(vi) + e));
      }
    }
    return;
  }
  const AdamStep<T> step(step_size, beta1, beta2, eps, bc2_sqrt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int nth = 1, tid = 0;
#ifdef _OPENMP
    nth = omp_get_num_threads();
    tid = omp_get_thread_num();
#endif
    const index_t r0 = V * tid / nth, r1 = V * (tid + 1) / nth;
    index_t k = std::lower_bound(rows, rows + nrows, int64_t(r0)) - rows;
    for (index_t r = r0; r < r1; ++r) {
      const bool has = k < nrows && rows[k] == r;
      const T* g = has ? vals + k * E : nullptr;
      if (has) ++k;
      for (index_t j = 0; j < E; ++j) step(p[r * E + j], m[r * E + j], v[r * E + j], has ? g[j] : T(0));
    }
  }
}

// out[s] = sum of src rows order[starts[s]] .. order[starts[s + 1] - 1]
// (the last segment ends at `total`), summed in that order.
template <class T>
void segment_sum_rows(const T* src, index_t E, const int64_t* order, const int64_t* starts, index_t nseg,
                      index_t total, T* out) {
  const int nt = total * E >= (index_t(1) << 15) ? num_threads() : 1;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
  for (index_t s = 0; s < nseg; ++s) {
    T* o = out + s * E;
    const index_t a = starts[s], b = s + 1 < nseg ? starts[s + 1] : total;
    const T* first = src + index_t(order[a]) * E;
    for (index_t j = 0; j < E; ++j) o[j] = first[j];
    for (index_t q = a + 1; q < b; ++q) {
      const T* row = src + index_t(order[q]) * E;
      for (index_t j = 0; j < E; ++j) o[j] += row[j];
    }
  }
}

}  // namespace fastsim
