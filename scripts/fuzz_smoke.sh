#!/usr/bin/env bash
# Short fuzzing run for CI (issue 5; fuzz/README.md): builds the libFuzzer targets with clang
# (ASan + UBSan, clang installed if missing), writes the seed corpora, runs each target for a fixed
# number of executions, then the atheris target of the Python API. Any crash, sanitizer report or
# failed check stops the script with a non-zero status; the crashing input is left in
# build/fuzz/smoke/artifacts/.
# Usage: scripts/fuzz_smoke.sh [RUNS]
#   RUNS (default 20000): executions of fuzz_apply and fuzz_metadata;
#   DODO_FUZZ_LOADER_RUNS (default RUNS/4): executions of fuzz_loader (most mutants stop at the
#   content digest), and a tenth of that in its resign mode (DODO_FUZZ_LOADER_RESIGN=1: mutants
#   get a fresh digest and reach ONNX Runtime, which creates a session: 10-30x slower);
#   DODO_FUZZ_PYTHON_RUNS (default RUNS/4): executions of the atheris target (~2x slower).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs="${1:-20000}"
loader_runs="${DODO_FUZZ_LOADER_RUNS:-$((runs / 4))}"
python_runs="${DODO_FUZZ_PYTHON_RUNS:-$((runs / 4))}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
start=$(date +%s)

# clang with libFuzzer (Debian: clang + libclang-rt-N-dev).
if ! command -v clang++ > /dev/null || ! echo 'int LLVMFuzzerTestOneInput(const char*, long) { return 0; }' |
     clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2> /dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q clang > /dev/null || { $sudo apt-get update -q > /dev/null && $sudo apt-get install -y -q clang > /dev/null; }
  major="$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n 1)"
  $sudo apt-get install -y -q "libclang-rt-$major-dev" > /dev/null || true
fi

cmake_bin="$(command -v cmake || echo "$(dirname "$python")/cmake")"
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
build="$root/build/fuzz"
CC=clang CXX=clang++ "$cmake_bin" -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDODO_BUILD_FUZZERS=ON -DDODO_SANITIZE=ON -DPython3_EXECUTABLE="$python" > "$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
"$cmake_bin" --build "$build" --target fuzz_apply fuzz_loader fuzz_metadata
"$python" fuzz/make_seeds.py "$build/seeds"

smoke="$build/smoke"
rm -rf "$smoke"
mkdir -p "$smoke/artifacts"
# Leak detection off: ONNX Runtime keeps process-lifetime allocations (scripts/valgrind_leaks.sh
# checks libdodo's own create/destroy cycle for leaks).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
run_target() {  # name, executions[, label: corpus/log name, default the target's]
  local name="$1" n="$2" label="${3:-$1}" t0
  t0=$(date +%s)
  mkdir -p "$smoke/corpus/$label"
  # fuzz/regressions/NAME: inputs that once crashed, replayed first by every run.
  local regressions=()
  [ -d "fuzz/regressions/$name" ] && regressions=("fuzz/regressions/$name")
  # The default model (qke_default.onnx, 52 KB) is a loader seed: a shorter limit would cut it.
  local max_len=32768
  [ "$name" = loader ] && max_len=65536
  "$build/fuzz/fuzz_$name" -runs="$n" -seed=1 -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$smoke/artifacts/$label-" \
    "$smoke/corpus/$label" "$build/seeds/$name" "${regressions[@]}" > "$smoke/$label.log" 2>&1 || {
    tail -n 60 "$smoke/$label.log"
    echo "fuzz_$label FAILED (log: $smoke/$label.log)"
    exit 1
  }
  echo "fuzz_$label: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$smoke/$label.log" | grep -o '[0-9]*$') executions, 0 crashes, $(( $(date +%s) - t0 )) s"
}
run_target apply "$runs"
run_target metadata "$runs"
run_target loader "$loader_runs"
DODO_FUZZ_LOADER_RESIGN=1 run_target loader "$((loader_runs / 10))" loader_resigned

"$python" -c 'import atheris' 2> /dev/null || "$python" -m pip install --quiet atheris
t0=$(date +%s)
mkdir -p "$smoke/corpus/python"
cp "$build/seeds/python/"* "$smoke/corpus/python/"
"$python" fuzz/python/fuzz_python_api.py -runs="$python_runs" -seed=1 -print_final_stats=1 -artifact_prefix="$smoke/artifacts/python-" \
  "$smoke/corpus/python" > "$smoke/python.log" 2>&1 || {
  tail -n 60 "$smoke/python.log"
  echo "fuzz_python_api FAILED (log: $smoke/python.log)"
  exit 1
}
echo "fuzz_python_api: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$smoke/python.log" | grep -o '[0-9]*$') executions, 0 crashes, $(( $(date +%s) - t0 )) s"
echo "fuzz smoke passed in $(( $(date +%s) - start )) s"
