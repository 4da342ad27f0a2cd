#!/usr/bin/env bash
# Growth-rate labels along each state's refined fastest axis (issue 10; docs/dataset.md, "Growth
# labels"). The solver states of data/qke were run along the best of 24 coarse axes, which on
# about one state in six grows a quarter or more slower than the fastest direction; their measured
# rates are labels of that axis, not of the state. This writes, for each pool chunk
# data/qke/NAME.h5 (held-out seeds 900-999 skipped), data/qke_growth/NAME.h5: the linear growth
# rate of the box modes along the refined fastest axis (dodo simulate --linear-only, its search
# started from the chunk's own box axis, the coarse search's best: about 0.4 s per state).
# Resumable: complete outputs are skipped, a partial one resumes; rerun the same command to
# continue. Emu-recipe chunks first (the family of the issue's target).
#   bash scripts/relabel_growth.sh [JOBS]
set -euo pipefail
if [ "${DODO_CAMPAIGN_GROUP:-}" != inner ] && command -v setsid > /dev/null; then
  exec setsid -w env DODO_CAMPAIGN_GROUP=inner bash "$0" "$@"
fi
if [ -w /proc/self/autogroup ]; then
  echo "${DODO_CAMPAIGN_NICE:-10}" > /proc/self/autogroup 2> /dev/null || true
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
jobs="${1:-2}"
case "$jobs" in
  '' | *[!0-9]* | 0*) echo "relabel_growth: JOBS must be a positive integer (processes at once); got '$jobs'" >&2; exit 2 ;;
esac
python="${DODO_VENV:-$root/.venv}/bin/python"
dodo="${DODO_VENV:-$root/.venv}/bin/dodo"
[ -x "$dodo" ] || { echo "relabel_growth: $dodo not found (bash scripts/setup_venv.sh first)" >&2; exit 2; }
mkdir -p data/qke_growth
relabel() {
  local input="$1" out="data/qke_growth/$(basename "$1")"
  if [ -f "$out" ] && "$python" -c "import h5py,sys; sys.exit(0 if h5py.File('$out','r').attrs.get('complete') else 1)" 2>/dev/null; then
    return 0
  fi
  nice -n "${DODO_CAMPAIGN_NICE:-10}" "$dodo" simulate "$out" --input "$input" --linear-only --quiet \
    || { echo "relabel_growth: $input failed (exit $?); rerun to retry" >&2; return 1; }
}
trap 'trap - TERM; kill 0' INT TERM
export -f relabel
export python dodo
# Pool chunks only (held-out seeds 900-999 never labelled), complete ones, emu family first.
status=0
"$python" - <<'EOF' | xargs -r -P "$jobs" -L 1 bash -c 'relabel "$0"' || status=$?
import glob, re, h5py
files = [p for p in sorted(glob.glob("data/qke/*_seed*.h5")) if not re.search(r"_seed9\d\d\.h5$", p)]
def complete(p):
    try:
        with h5py.File(p, "r") as f:
            return bool(f.attrs.get("complete"))
    except OSError:
        return False
files = [p for p in files if complete(p)]
for p in sorted(files, key=lambda p: (not p.split("/")[-1].startswith("emu_"), p)):
    print(p)
EOF
[ "$status" -eq 0 ] || { echo "relabel_growth: not every chunk finished (exit $status; see above); rerun to retry" >&2; exit "$status"; }
