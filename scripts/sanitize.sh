#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run (issue 5; docs/reliability_cpp.md):
#   1. the C/C++ tests (ctest: tests/cpp, tests/c) built with -DDODO_SANITIZE=ON (GCC);
#   2. the Python test suite against a sanitized build of the package (dodo._core and libdodo),
#      with the ASan runtime preloaded into python and leak detection off (the interpreter itself
#      is not instrumented and keeps its allocations until exit).
# Usage: scripts/sanitize.sh [pytest arguments]   (PYTHON: the interpreter, default .venv's or python3)
# Set DODO_SANITIZE_SKIP_PYTHON=1 for the ctest part only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
cmake_bin="$(command -v cmake || echo "$(dirname "$python")/cmake")"
ctest_bin="$(dirname "$cmake_bin")/ctest"
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
build="$root/build/sanitize"
# DODO_NO_MULTIVERSION: no GNU ifunc (target_clones) under the sanitizers; same results, baseline ISA.
flags="-DDODO_NO_MULTIVERSION -O1 -g"
start=$(date +%s)

echo "== sanitize: C/C++ tests (ASan + UBSan)"
"$cmake_bin" -S . -B "$build/ctest" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDODO_BUILD_TESTS=ON \
  -DDODO_SANITIZE=ON -DPython3_EXECUTABLE="$python" -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" > "$build.ctest-configure.log"
"$cmake_bin" --build "$build/ctest"
# Leak detection stays on here: a leak in libdodo fails the C and C++ tests.
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  DODO_STRESS_SECONDS="${DODO_STRESS_SECONDS:-3}" "$ctest_bin" --test-dir "$build/ctest" --output-on-failure
ctest_done=$(date +%s)
echo "== sanitize: ctest passed in $((ctest_done - start)) s (build included)"
[ "${DODO_SANITIZE_SKIP_PYTHON:-0}" = 1 ] && exit 0

echo "== sanitize: Python package built with -DDODO_SANITIZE=ON"
target="$build/python"
rm -rf "$target"
# Without build isolation where the interpreter has the build requirements (faster, offline).
isolation=()
"$python" -c 'import scikit_build_core, pybind11' 2> /dev/null && isolation=(--no-build-isolation)
"$python" -m pip install --quiet --no-deps "${isolation[@]}" --target "$target" \
  -Cbuild-dir="$build/wheel" -Ccmake.define.DODO_SANITIZE=ON \
  -Ccmake.define.CMAKE_CXX_FLAGS="$flags" -Ccmake.define.CMAKE_C_FLAGS="$flags" .
# libstdc++ is preloaded too: python is not a C++ program, and ASan's __cxa_throw interceptor
# needs the real one resolved at start-up (else "CHECK failed ... real___cxa_throw" on the first
# C++ exception thrown in dodo._core).
asan_runtime="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
# python -S: no .pth files, so an editable install of dodo elsewhere cannot shadow the sanitized
# build; the interpreter's own site-packages (numpy, pytest, onnxruntime, ...) follow it on the path.
site="$("$python" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"] + ":" + p["platlib"])')"
export PYTHONPATH="$target:$site"
# Reports also go to build/sanitize/python-asan.log.<pid> (pytest captures stderr).
export LD_PRELOAD="$asan_runtime" ASAN_OPTIONS="detect_leaks=0:log_path=$build/python-asan.log" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$build/python-asan.log"
rm -f "$build"/python-asan.log.*
"$python" -S -c 'import dodo, dodo._core; print("sanitized dodo from", dodo.__file__)'
"$python" -S -m pytest -p no:cacheprovider "$@" || {
  cat "$build"/python-asan.log.* 2> /dev/null | head -n 80
  echo "sanitize: pytest failed"
  exit 1
}
echo "== sanitize: all passed in $(( $(date +%s) - start )) s (ctest $((ctest_done - start)) s)"
