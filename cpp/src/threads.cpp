#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#include <unistd.h>

#include "fastsim/common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastsim {
namespace {

// Every core; FASTSIM_NUM_THREADS is read by the Python layer (fastsim._env)
// and applied through set_num_threads at import.
int initial_threads() {
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

std::size_t default_block_bytes() {
  long l2 = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
  l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  if (l2 <= 0) l2 = 1 << 20;
  // Half of L2, within sane bounds (some hypervisors report nonsense).
  return std::clamp<std::size_t>(static_cast<std::size_t>(l2) / 2, 128 * 1024, 4 * 1024 * 1024);
}

std::atomic<std::size_t>& block_bytes() {
  static std::atomic<std::size_t> n{default_block_bytes()};
  return n;
}

}  // namespace

std::size_t gemm_block_bytes() { return block_bytes().load(std::memory_order_relaxed); }

void set_gemm_block_bytes(std::size_t bytes) {
  block_bytes().store(bytes ? std::clamp<std::size_t>(bytes, 16 * 1024, 64 * 1024 * 1024) : default_block_bytes(),
                      std::memory_order_relaxed);
}

int num_threads() {
#ifdef _OPENMP
  return thread_count().load(std::memory_order_relaxed);
#else
  return 1;
#endif
}

void set_num_threads(int n) { thread_count().store(std::max(1, n), std::memory_order_relaxed); }

namespace {
std::atomic<int>& projection_mode() {
  static std::atomic<int> mode{-1};
  return mode;
}
}  // namespace

int rnn_projection() { return projection_mode().load(std::memory_order_relaxed); }

void set_rnn_projection(int mode) { projection_mode().store(mode < 0 ? -1 : (mode ? 1 : 0), std::memory_order_relaxed); }

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fastsim
