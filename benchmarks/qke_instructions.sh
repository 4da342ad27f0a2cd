#!/usr/bin/env bash
# Instructions per QKE solver step, NumPy solver and compiled kernel (callgrind: noise-free on a
# shared machine). Each count is (1 + N steps) minus (1 + 0 steps) of bench_qke.py --count-steps,
# so start-up and imports cancel. Needs valgrind; takes a few minutes (the NumPy run is slow).
#   bash benchmarks/qke_instructions.sh [CELLSxNPHI] [N_CPP] [N_NUMPY]
set -euo pipefail
resolution=${1:-64x16}
python=${DODO_PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONHASHSEED=0
count() {  # backend steps -> instructions of the whole process
  TMPDIR="$work" valgrind --tool=callgrind --vgdb=no --callgrind-out-file="$work/out" "$python" "$here/bench_qke.py" \
    --count-steps "$1" "$resolution" "$2" 2> "$work/log" > /dev/null
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/log"
}
declare -A per_step
for backend in cpp numpy; do
  steps=$([ "$backend" = cpp ] && echo "${2:-20}" || echo "${3:-5}")
  base=$(count "$backend" 0)
  total=$(count "$backend" "$steps")
  per_step[$backend]=$(( (total - base) / steps ))
  echo "$resolution $backend: $(( per_step[$backend] / 1000 )) k instructions per step ($steps steps)"
done
echo "numpy/cpp: $(awk "BEGIN {printf \"%.2f\", ${per_step[numpy]} / ${per_step[cpp]}}")"
