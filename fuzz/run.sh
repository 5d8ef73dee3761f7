#!/usr/bin/env bash
# Build the libFuzzer target fuzz/fuzz_kernels.cpp with clang
# (-fsanitize=fuzzer,address,undefined) and run it for a bounded time.
#
#   fuzz/run.sh [SECONDS] [extra libFuzzer options...]
#
#   SECONDS          time budget of the run (default: $FUZZ_SECONDS, else 60)
#   FUZZ_BUILD_DIR   where the objects, the binary, the growing corpus and any
#                    crash-* input go (default: build/fuzz)
#   FUZZ_REQUIRED=1  fail instead of skipping when no usable clang can be had
#
# The seeds in fuzz/corpus/ are read, never written; inputs that reach new
# coverage are kept in $FUZZ_BUILD_DIR/corpus for the next run.  A crash, a
# sanitizer report or a result mismatch stops the run with a non-zero exit and
# saves the input as $FUZZ_BUILD_DIR/crash-*; replay it with
#   $FUZZ_BUILD_DIR/fuzz_kernels $FUZZ_BUILD_DIR/crash-...
# Without clang the script installs it with apt-get when it can (root, Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
build=${FUZZ_BUILD_DIR:-build/fuzz}
mkdir -p "$build/corpus"

skip() {
  echo "================================================================"
  echo "fuzz/run.sh: FUZZING SKIPPED: $1"
  echo "================================================================"
  if [[ ${FUZZ_REQUIRED:-0} == 1 ]]; then exit 1; fi
  exit 0
}

# A clang whose libFuzzer, ASan and UBSan runtimes link; OpenMP if it has it.
probe() {
  local cxx=$1
  shift
  printf '%s\n' '#include <cstdint>' '#include <cstddef>' \
    'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' > "$build/probe.cpp"
  "$cxx" "$@" -fsanitize=fuzzer,address,undefined "$build/probe.cpp" -o "$build/probe" > /dev/null 2>&1
}
find_clang() {
  local c
  for c in ${CXX_FUZZ:-} clang++ clang++-14 clang++-15 clang++-16 clang++-17 clang++-18 clang++-19; do
    if command -v "$c" > /dev/null 2>&1 && probe "$c"; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if ! cxx=$(find_clang); then
  if command -v apt-get > /dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    echo "fuzz/run.sh: no clang with libFuzzer; installing clang, libclang-rt-dev and libomp-dev with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends clang libclang-rt-dev libomp-dev; } \
      > "$build/apt.log" 2>&1 || { tail -n 20 "$build/apt.log"; skip "apt-get could not install clang"; }
    cxx=$(find_clang) || skip "clang installed but -fsanitize=fuzzer does not link"
  else
    skip "no clang++ with the libFuzzer runtime, and apt-get is not usable here"
  fi
fi

openmp=(-fopenmp)
if ! probe "$cxx" -fopenmp; then
  echo "fuzz/run.sh: NOTE: $cxx has no OpenMP here; building single-threaded (thread-count checks are then trivial)"
  openmp=(-Wno-unknown-pragmas)
fi
echo "fuzz/run.sh: $($cxx --version | head -n 1)"

# The extension's own compile flags (CMakeLists.txt) under the sanitizers.
common=(-std=c++17 -O1 -g -fno-omit-frame-pointer -ffp-contract=fast -fno-math-errno -Wall -Wextra
        -fsanitize=address,undefined -fno-sanitize-recover=all "${openmp[@]}" -Icpp/include)
declare -A level_flags=(
  [generic]=""
  [avx2]="-mavx2 -mfma -mf16c"
  [avx512]="-mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -mf16c -mprefer-vector-width=512"
)
levels=(generic)
have=()
if [[ $(uname -m) == x86_64 ]]; then
  levels+=(avx2 avx512)
  have=(-DFASTSIM_HAVE_AVX2=1 -DFASTSIM_HAVE_AVX512=1)
fi

# Compile $2 into $1 (in the background) unless $1 is newer than it, the
# headers and this script.
compile() {
  local obj=$1 src=$2
  shift 2
  if [[ -f $obj && -z $(find "$src" cpp/include fuzz/run.sh -newer "$obj" -type f -print -quit) ]]; then return; fi
  "$cxx" "${common[@]}" -fsanitize=fuzzer-no-link "$@" -c "$src" -o "$obj" &
}
start=$(date +%s)
objects=()
for level in "${levels[@]}"; do
  # shellcheck disable=SC2086  # the flags are a word list
  compile "$build/kernels_$level.o" cpp/src/kernels_isa.cpp ${level_flags[$level]} -DFASTSIM_LEVEL="$level" \
    -DFASTSIM_LEVEL_"$level"=1
  objects+=("$build/kernels_$level.o")
done
compile "$build/dispatch.o" cpp/src/dispatch.cpp "${have[@]}"
compile "$build/threads.o" cpp/src/threads.cpp
compile "$build/fuzz_kernels.o" fuzz/fuzz_kernels.cpp
for job in $(jobs -p); do wait "$job"; done
"$cxx" "${common[@]}" -fsanitize=fuzzer "$build/fuzz_kernels.o" "${objects[@]}" "$build/dispatch.o" \
  "$build/threads.o" -o "$build/fuzz_kernels"
echo "fuzz/run.sh: built $build/fuzz_kernels in $(($(date +%s) - start)) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
echo "fuzz/run.sh: fuzzing for $seconds s"
"$build/fuzz_kernels" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -max_len=512 -print_final_stats=1 \
  -artifact_prefix="$build/" "$@" "$build/corpus" fuzz/corpus
