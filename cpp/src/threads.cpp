#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#include "fastsim/common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastsim {
namespace {

int initial_threads() {
  if (const char* env = std::getenv("FASTSIM_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
#ifdef _OPENMP
  return std::max(1, omp_get_num_procs());
#else
  return 1;
#endif
}

std::atomic<int>& thread_count() {
  static std::atomic<int> n{initial_threads()};
  return n;
}

}  // namespace

int num_threads() {
#ifdef _OPENMP
  return thread_count().load(std::memory_order_relaxed);
#else
  return 1;
#endif
}

void set_num_threads(int n) { thread_count().store(std::max(1, n), std::memory_order_relaxed); }

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fastsim
