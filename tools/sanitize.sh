#!/usr/bin/env bash
# Build the extension with AddressSanitizer and UndefinedBehaviorSanitizer
# (CMake option FASTSIM_SANITIZE=ON) and run the whole test suite against it.
# Fails when a test fails or when any sanitizer report appears.
#
#   tools/sanitize.sh [pytest arguments...]
#
#   SANITIZE_BUILD_DIR  build directory (default: build/sanitize)
#   SANITIZE_JOBS       parallel compile jobs (default: number of CPUs)
#   PYTHON              interpreter to test with (default: python)
#   SANITIZE_CXX        GCC C++ compiler to build with (default: g++)
#
# How it works: the sanitized _core*.so goes into a temporary copy of
# python/fastsim that PYTHONPATH puts first, so the tests import it instead
# of any installed build.  The interpreter itself is not instrumented, so the
# ASan runtime is preloaded; libstdc++ is preloaded right after it because
# python does not link it: ASan resolves its C++ exception interceptor
# (__cxa_throw) at start-up, and without libstdc++ loaded by then the first
# exception thrown by the bindings (every bad-input test) aborts with
# "CHECK failed: ... real___cxa_throw".  ASan reports go to per-process log
# files (the tests start subprocesses too); the test output is searched too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${SANITIZE_BUILD_DIR:-build/sanitize}
python=${PYTHON:-python}
jobs=${SANITIZE_JOBS:-$(nproc)}
cxx=${SANITIZE_CXX:-g++}  # GCC: its libasan is what gets preloaded

# Build tools: pybind11 is a build requirement of the package, not installed
# with it; cmake and ninja usually come from the system or pip.
missing=()
"$python" -c "import pybind11" 2> /dev/null || missing+=("pybind11>=2.12")
command -v cmake > /dev/null 2>&1 || missing+=("cmake>=3.18")
command -v ninja > /dev/null 2>&1 || missing+=(ninja)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "sanitize.sh: installing ${missing[*]} with pip"
  "$python" -m pip install --quiet "${missing[@]}"
fi

libasan=$("$cxx" -print-file-name=libasan.so)
libstdcxx=$("$cxx" -print-file-name=libstdc++.so)
for lib in "$libasan" "$libstdcxx"; do
  [[ -e $lib ]] || { echo "sanitize.sh: $cxx has no $lib (install its libasan / libstdc++ development files)"; exit 1; }
done

start=$(date +%s)
mkdir -p "$build"
CXX=$cxx cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFASTSIM_SANITIZE=ON \
  -DPython_EXECUTABLE="$(command -v "$python")" \
  -Dpybind11_DIR="$("$python" -c "import pybind11; print(pybind11.get_cmake_dir())")" > "$build.configure.log" 2>&1 \
  || { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j "$jobs"
so=$(ls "$build"/_core*.so)
echo "sanitize.sh: built $so in $(($(date +%s) - start)) s"
# The module must really be instrumented, and UB must abort (no *_recover handlers).
# (The symbol list is captured first: `nm | grep -q` under pipefail fails when
# grep exits early and nm is killed by SIGPIPE.)
symbols=$(nm -D "$so")
grep -q "__asan_report_load" <<< "$symbols" || { echo "sanitize.sh: $so is not built with ASan"; exit 1; }
grep -q "__ubsan_handle_.*_abort" <<< "$symbols" || { echo "sanitize.sh: $so is not built with UBSan (abort)"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r python/fastsim "$work/"
rm -f "$work"/fastsim/_core*.so
cp "$so" "$work/fastsim/"
mkdir "$work/logs"

export PYTHONPATH=$work${PYTHONPATH:+:$PYTHONPATH}
export LD_PRELOAD="$libasan $libstdcxx"
# detect_leaks=0: LeakSanitizer reports, at exit, the memory CPython, NumPy,
# Numba's LLVM and torch deliberately keep until the process ends, and every
# process that inherits the preload does the same: with it on, the 22 passing
# tests of tests/test_vecmath.py end with exit status 1 over CPython's own
# objects (gc_alloc, PyFloat_FromDouble; none from _core), and a shell wrapper
# such as a pyenv shim fails outright.  The kernels' buffers are RAII-owned;
# the fuzz target (fuzz/run.sh) runs the C++ entry points with leak detection on.
export ASAN_OPTIONS="detect_leaks=0:log_path=$work/logs/asan:print_summary=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$work/logs/ubsan:${UBSAN_OPTIONS:-}"
# Every Python object through malloc, so ASan guards them too.
export PYTHONMALLOC=malloc

# Positive controls: the sanitized module is the one imported, and the ASan
# runtime is live (the byte past a fresh allocation is poisoned).
"$python" - "$work" << 'EOF'
import ctypes, sys
import fastsim, fastsim._core as core
assert core.__file__.startswith(sys.argv[1]), f"imported {core.__file__}, not the sanitized build"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
poisoned = libc.__asan_address_is_poisoned
poisoned.argtypes = [ctypes.c_void_p]
p = libc.malloc(8)
assert poisoned(p + 8) == 1 and poisoned(p) == 0, "AddressSanitizer is not active"
libc.free(ctypes.c_void_p(p))
print("sanitize.sh: testing", core.__file__, "with AddressSanitizer active")
EOF

start=$(date +%s)
set +e
# --capture=sys: pytest captures Python's streams only, so a report written
# to file descriptor 2 just before an abort still reaches this output (GCC's
# UBSan writes there even with log_path set).
"$python" -m pytest -p no:cacheprovider --capture=sys "$@" 2>&1 | tee "$work/logs/pytest.out"
status=${PIPESTATUS[0]}
set -e
echo "sanitize.sh: test suite exit status $status after $(($(date +%s) - start)) s"

pattern='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer|AddressSanitizer: CHECK failed'
reports=$(grep -l -E "$pattern" "$work"/logs/* 2> /dev/null || true)
if [[ -n $reports ]]; then
  for f in $reports; do
    echo "---------------- $f"
    head -n 80 "$f"
  done
  echo "sanitize.sh: FAILED: sanitizer reports above"
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "sanitize.sh: FAILED: the test suite failed under the sanitizers"
  exit "$status"
fi
echo "sanitize.sh: no sanitizer report"
