// Shared definitions for every kernel translation unit. No Python headers here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastsim {

using index_t = std::ptrdiff_t;  // 64-bit: b = 65536 squared does not overflow

// Number of worker threads the kernels may use (set from Python, which reads
// FASTSIM_NUM_THREADS); defined in threads.cpp, compiled for the baseline ISA.
// No kernel reads the environment: fastsim._env does, once.
int num_threads();
void set_num_threads(int n);
bool openmp_enabled();

// The recurrent layers' step form: -1 chooses by size, 1 projects every
// step's input first, 0 multiplies [x_t | h] per step (FASTSIM_RNN_PROJECT).
int rnn_projection();
void set_rnn_projection(int mode);

// Bytes of packed B a GEMM block may occupy (it must stay in the per-core L2
// while the A micro-panels stream past it): half the L2 reported by the OS,
// or set_gemm_block_bytes (FASTSIM_GEMM_BLOCK_BYTES through the Python layer) (0 restores the default).
std::size_t gemm_block_bytes();
void set_gemm_block_bytes(std::size_t bytes);

// Cache-line aligned scratch memory that frees itself.
inline constexpr std::size_t kHugePage = std::size_t(2) << 20;
inline constexpr std::size_t kHugeBytes = std::size_t(4) << 20;

template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t n) { resize(n); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(ptr_); }
  void resize(std::size_t n) {
    if (n <= size_) return;
    std::free(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    // Large buffers (packed tables, per-step input projections) are read a
    // few rows at a time at scattered addresses: with 4 KiB pages nearly
    // every row costs a TLB miss and a page walk.  They are aligned to 2 MiB
    // and offered to the kernel's transparent huge pages (advice only).
    const bool huge = bytes >= kHugeBytes;
    std::size_t align = 64;
    if (huge) {
      align = kHugePage;
      bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    }
    void* p = nullptr;
    if (posix_memalign(&p, align, bytes ? bytes : 64) != 0) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    ptr_ = static_cast<T*>(p);
    size_ = n;
  }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  std::size_t size() const { return size_; }

 private:
  T* ptr_ = nullptr;
  std::size_t size_ = 0;
};

// Per-thread scratch memory that grows and is kept for the next call, so small
// calls pay neither malloc nor fresh-page faults. One slot per concurrent use.
enum ScratchSlot { kScratchPackB = 0, kScratchKernel = 1, kScratchInput = 2, kScratchSlots = 3 };

template <class T>
inline T* scratch(int slot, std::size_t n) {
  thread_local AlignedBuffer<unsigned char> buffers[kScratchSlots];
  buffers[slot].resize(n * sizeof(T));
  return reinterpret_cast<T*>(buffers[slot].data());
}

}  // namespace fastsim
