#!/usr/bin/env bash
# The whole test suite, set-up included: venv + install (test and train extras), C++ unit tests
# (ctest), then pytest against the installed package.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${DODO_VENV:-$root/.venv}"
bash scripts/setup_venv.sh test train
"$venv/bin/python" -m pip install --quiet cmake ninja
"$venv/bin/cmake" -S . -B build/cpp-tests -G Ninja -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" \
  -DDODO_BUILD_TESTS=ON
"$venv/bin/cmake" --build build/cpp-tests
"$venv/bin/ctest" --test-dir build/cpp-tests --output-on-failure
"$venv/bin/python" -m pytest "$@"
