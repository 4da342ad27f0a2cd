#!/usr/bin/env bash
# The whole test suite, set-up included: venv + install (test and train extras), C++ unit tests
# (ctest), then pytest against the installed package (MPI tests where mpirun is installed).
# Run by another shell (`sh scripts/test.sh`: dash stopped at once with "set: Illegal option -o
# pipefail"): run again by bash (outside probe, fresh machine round two).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${DODO_VENV:-$root/.venv}"
. "$root/scripts/_venv_environment.sh"
use_the_venvs_python_only test.sh
extras=(test train)
# With an MPI on the machine (DODO_WITH_MPI=1 scripts/install_system_deps.sh), mpi4py too: the MPI
# tests then run instead of skipping.
command -v mpirun >/dev/null 2>&1 && extras+=(mpi)
bash scripts/setup_venv.sh "${extras[@]}"
"$venv/bin/python" -m pip install --quiet cmake ninja
# The venv's Python tells CMake where the onnxruntime wheel keeps its library: the system python3
# of a fresh machine has no onnxruntime (issue 11).
"$venv/bin/cmake" -S . -B build/cpp-tests -G Ninja -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" \
  -DDODO_BUILD_TESTS=ON -DPython3_EXECUTABLE="$venv/bin/python"
used="$(sed -n 's/^DODO_ORT_BUILD_HINT_PYTHON:INTERNAL=//p' build/cpp-tests/CMakeCache.txt)"
if [ -z "${DODO_ONNXRUNTIME_LIBRARY:-}" ] && [ "$used" != "$venv/bin/python" ]; then
  echo "scripts/test.sh: the C/C++ tests took ONNX Runtime from '$used', not from $venv/bin/python" >&2
  exit 1
fi
"$venv/bin/cmake" --build build/cpp-tests
"$venv/bin/ctest" --test-dir build/cpp-tests --output-on-failure
"$venv/bin/python" -m pytest "$@"
