#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine that has one (never CI, which has none): builds
# Dodo into that machine's Python (a torch with CUDA already installed there), runs the CUDA
# training tests and every training test with the GPU taken by default (training.device auto),
# then training throughput on the CPU and on the GPU from one benchmark script.
#
#   bash scripts/gpu_check.sh [LOG_DIR]        (default gpu_check_out/; PYTHON=... for another python)
#
# No network needed: DODO_ONNXRUNTIME_ROOT names a prefix with include/onnxruntime/ when the
# machine has no ONNX Runtime headers (the build needs only onnxruntime_c_api.h); the library is
# the onnxruntime wheel's, as on any machine. Each step's log is kept in LOG_DIR; the script exits
# non-zero when a step fails, after the remaining steps have run.
set -uo pipefail
cd "$(dirname "$0")/.."
# Without an NVIDIA driver the first step ended in "nvidia-smi: command not found", exit 1, with no word of
# what the script needs (outside probe, new user's journey round three).
if ! command -v nvidia-smi > /dev/null 2>&1; then
  echo "gpu_check: this machine has no NVIDIA driver (nvidia-smi not found): the script checks Dodo's CUDA paths and needs a machine with a CUDA GPU; elsewhere run the test suite (README) instead" >&2
  exit 1
fi
out="${1:-gpu_check_out}"
mkdir -p "$out"
python="${PYTHON:-python3}"
status=0
step() {  # step NAME COMMAND...: run, keep its log, remember a failure
  local name="$1"; shift
  echo "== $name: $*"
  local started=$SECONDS
  "$@" > "$out/$name.log" 2>&1
  local code=$?
  tail -n 15 "$out/$name.log"
  echo "== $name: exit $code after $((SECONDS - started)) s"
  [ "$code" -eq 0 ] || status=1
  return "$code"
}

step gpu bash -c "nvidia-smi -L && $python -c 'import torch, onnxruntime; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name(0)); print(\"onnxruntime\", onnxruntime.__version__, onnxruntime.get_available_providers())'" || exit 1
step build "$python" -m pip install --no-build-isolation --no-deps -e . || exit 1
export PYTHONUNBUFFERED=1
if ! step cuda_tests "$python" -m pytest -q -p no:cacheprovider -rs tests/python/test_training_cuda.py; then
  # The suite turns warnings into errors; say whether the failure is a warning of this torch or CUDA
  step cuda_tests_warnings_shown "$python" -m pytest -q -p no:cacheprovider -rs -W default \
    tests/python/test_training_cuda.py
fi
# training.device defaults to auto: on this machine every training test below trains on the GPU
step training_tests "$python" -m pytest -q -p no:cacheprovider -rs tests/python/test_training_pipeline.py \
  tests/python/test_training_physics.py tests/python/test_training_distributed.py \
  tests/python/test_closure_export_parity.py tests/python/test_train_keeps_runs.py
for device in cpu cuda; do
  step "bench_training_$device" "$python" benchmarks/bench_training.py --cells 100000 --train-cells 80000 \
    --device "$device" --torch-threads "$(nproc)"
done
step bench_training_cuda_amp "$python" benchmarks/bench_training.py --cells 100000 --train-cells 80000 \
  --device cuda --amp --torch-threads "$(nproc)"
exit "$status"
