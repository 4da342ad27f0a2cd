#!/usr/bin/env bash
# ThreadSanitizer run of the C/C++ tests (issue 5; docs/reliability_cpp.md): the 8-thread stress
# test on one shared closure handle, the worker-pool paths of the C API, Box3D's threads.
# ONNX Runtime itself is not instrumented (its locks are, through pthread interception), so a
# race inside ORT would not be seen; every Dodo line is.
# Usage: scripts/tsan.sh        (DODO_STRESS_SECONDS: stress-test duration, default 5)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
build="$root/build/tsan"
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDODO_BUILD_TESTS=ON \
  -DDODO_SANITIZE_THREAD=ON -DCMAKE_CXX_FLAGS="-O1 -g" -DCMAKE_C_FLAGS="-O1 -g" > "$build.configure.log"
cmake --build "$build"
TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1" DODO_STRESS_SECONDS="${DODO_STRESS_SECONDS:-5}" \
  ctest --test-dir "$build" --output-on-failure
