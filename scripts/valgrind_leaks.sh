#!/usr/bin/env bash
# valgrind memcheck over create/apply/destroy loops of the C API (tests/c/leak_loop.c): fails when
# any memory is definitely or indirectly lost, or on any memcheck error in libdodo.
# Usage: scripts/valgrind_leaks.sh [ITERATIONS]   (default 12; DODO_BUILD_DIR: build directory)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
iterations="${1:-12}"
build="${DODO_BUILD_DIR:-$root/build/valgrind}"
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDODO_BUILD_TESTS=ON > /dev/null
cmake --build "$build" --target leak_loop
model="$root/python/dodo/models/synthetic-test-equivariant.onnx"
log="$build/valgrind_leak_loop.log"
# ONNX Runtime's own process-lifetime allocations (its environment, thread pools, the library
# loaded once per process by design) are "still reachable" or "possibly lost"; what libdodo
# allocates per handle must come back: definite and indirect leaks fail the run.
status=0
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
  --errors-for-leak-kinds=definite,indirect --error-exitcode=1 --num-callers=30 \
  --suppressions="$root/tests/c/valgrind.supp" \
  --log-file="$log" "$build/cpp/src/runtime/leak_loop" "$model" "$iterations" || status=$?
grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|total heap usage" "$log"
exit $status
