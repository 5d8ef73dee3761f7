// Run-time choice of the SIMD level: the best one both compiled in and
// supported by this CPU (and its OS), unless FASTSIM_SIMD or set_simd_level()
// asks for a lower one.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastsim/kernels.hpp"

namespace fastsim {
#ifdef FASTSIM_HAVE_AVX512
namespace avx512 { extern const KernelTable table; }
#endif
#ifdef FASTSIM_HAVE_AVX2
namespace avx2 { extern const KernelTable table; }
#endif
namespace generic { extern const KernelTable table; }

namespace {

std::vector<const KernelTable*> supported_tables() {
  std::vector<const KernelTable*> out;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
#ifdef FASTSIM_HAVE_AVX512
  // libgcc's checks include the OS enabling the zmm/opmask state (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    out.push_back(&avx512::table);
#endif
#ifdef FASTSIM_HAVE_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(&avx2::table);
#endif
#endif
  out.push_back(&generic::table);
  return out;
}

const std::vector<const KernelTable*>& tables() {
  static const std::vector<const KernelTable*> t = supported_tables();
  return t;
}

const KernelTable* find_table(const std::string& name) {
  if (name == "best" || name.empty()) return tables().front();
  for (const KernelTable* t : tables())
    if (name == t->name) return t;
  return nullptr;
}

// The best level; FASTSIM_SIMD is read by the Python layer (fastsim._env) and
// applied through set_simd_level at import.
std::atomic<const KernelTable*>& current() {
  static std::atomic<const KernelTable*> c{tables().front()};
  return c;
}

}  // namespace

const KernelTable& kernels() { return *current().load(std::memory_order_acquire); }

std::string simd_level() { return kernels().name; }

std::vector<std::string> simd_levels() {
  std::vector<std::string> names;
  for (const KernelTable* t : tables()) names.emplace_back(t->name);
  return names;
}

void set_simd_level(const std::string& level) {
  const KernelTable* t = find_table(level);
  if (!t) throw std::invalid_argument("level must be one of the supported SIMD levels or 'best'; got '" + level + "'");
  current().store(t, std::memory_order_release);
}

}  // namespace fastsim
