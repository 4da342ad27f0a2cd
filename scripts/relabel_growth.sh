#!/usr/bin/env bash
# Growth-rate labels along each state's refined fastest axis (issue 10; docs/dataset.md, "The box
# axis, and growth labels along the refined fastest axis"). The solver states of data/qke were run along the best of 24 coarse axes, which on
# about one state in six grows a quarter or more slower than the fastest direction; their measured
# rates are labels of that axis, not of the state. This writes, for each pool chunk
# data/qke/NAME.h5 (held-out seeds 900-999 skipped), data/qke_growth/NAME.h5: the linear growth
# rate of the box modes along the refined fastest axis (dodo simulate --linear-only, its search
# started from the chunk's own box axis, the coarse search's best: about 0.4 s per state).
# Resumable: complete outputs (of the chunk's states, at these settings) are skipped, a partial one resumes; another
# run's complete file there is kept and named, its chunk not labelled; rerun the same command to
# continue. Emu-recipe chunks first (the family of the issue's target).
#   bash scripts/relabel_growth.sh [JOBS]
# With DODO_GROWTH_AXIS=emu: data/qke_emu_axis/NAME.h5 instead, the linear rate along the fastest
# of the 38 axes Emu's validation runs were searched on (dodo simulate --linear-only --axis emu;
# docs/dataset.md, "Emu's axis search"): the rate such a run measures, ~0.6 s per state.
# With DODO_CAMPAIGN_DIR=DIR (as for scripts/qke_campaign.sh; relative paths from the repository
# root): the chunks of DIR, labelled into DIR_growth (DIR_emu_axis) instead of data/qke(_growth).
set -euo pipefail
# Its own session and process group, stopped as a whole by Ctrl-C or a kill of this script
# (scripts/own_session.sh).
. "$(dirname "$0")/own_session.sh" "$0" "$@"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
jobs="${1:-2}"
case "$jobs" in
  '' | *[!0-9]* | 0* | ???????*) echo "relabel_growth: JOBS must be a positive integer up to 999999 (processes at once); got '$jobs'" >&2; exit 2 ;;
esac
# A niceness nice(1) refuses failed every chunk with "nice: invalid adjustment" and "rerun to retry"
# (outside probe, round 32): checked once, before any chunk.
[[ "${DODO_CAMPAIGN_NICE:-10}" =~ ^[-+]?[0-9]{1,9}$ ]] || {
  echo "relabel_growth: DODO_CAMPAIGN_NICE must be an integer, the chunks' niceness (nice -n; default 10); got '$DODO_CAMPAIGN_NICE'" >&2; exit 2; }
python="${DODO_VENV:-$root/.venv}/bin/python"
dodo="${DODO_VENV:-$root/.venv}/bin/dodo"
[ -x "$dodo" ] || { echo "relabel_growth: $dodo not found (bash scripts/setup_venv.sh first)" >&2; exit 2; }
# The campaign's chunks: DODO_CAMPAIGN_DIR as qke_campaign.sh writes them (it was not read here, so
# a campaign made elsewhere had data/qke labelled into data/ instead; solver round 3).
chunks="${DODO_CAMPAIGN_DIR:-data/qke}"
while [ "${#chunks}" -gt 1 ] && [ "${chunks%/}" != "$chunks" ]; do chunks="${chunks%/}"; done
# A mistyped directory labelled nothing, exit 0, and left an empty DIR_growth behind.
[ -d "$chunks" ] || { echo "relabel_growth: $chunks is not a directory (DODO_CAMPAIGN_DIR: the campaign's chunks)" >&2; exit 2; }
case "${DODO_GROWTH_AXIS:-fastest}" in
  fastest) labels="${chunks}_growth"; axis_args="" ;;
  emu) labels="${chunks}_emu_axis"; axis_args="--axis emu --ignore-rotation" ;;
  *) echo "relabel_growth: DODO_GROWTH_AXIS must be fastest or emu; got '$DODO_GROWTH_AXIS'" >&2; exit 2 ;;
esac
mkdir -p "$labels"
# One relabelling per label directory at a time (outside probe, data-loss round two): a second one
# ran the same chunks beside the first (twice JOBS processes), each chunk the first held reported as
# "failed; rerun to retry", both ending non-zero (own_session.sh's lock_directory_or_refuse).
lock_directory_or_refuse relabel_growth "$labels" \
  "another relabel_growth.sh (or its chunks) is running into $labels" \
  "a second one would label the same chunks beside it" \
  "a second relabelling there would not be refused: run one at a time into it"
labels_lock="$directory_lock"
# Whether a chunk's label file is done: complete, and the labels of this chunk's states with this script's settings
# (exit 0); complete but another run's (exit 3, the reason on standard error); else not done (1). Any complete
# file was skipped (attrs["complete"] alone): labels made with --ncell 16 by hand, along the other axis, a solver
# run, or of the chunk's states before the chunk was made again were taken as this script's, exit 0 and no word
# (open items round eight; qke_campaign.sh's chunk_state_py compares the same way). Judged by the kind, the
# settings (dodo.qke.cli.settings_differing, the axis search) and the fingerprint of the input's states.
label_state_py='
import json, os, shlex, sys

def label_state(path, chunk):
    try:
        import h5py
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except Exception:  # unreadable: dodo simulate decides (it refuses or resumes)
        return 1, ""
    if not attrs.get("complete"):
        return 1, ""
    text = lambda value: value.decode() if isinstance(value, bytes) else str(value)
    emu = os.environ.get("DODO_GROWTH_AXIS") == "emu"
    why = []
    try:
        settings = json.loads(text(attrs.get("settings", "{}")))
    except ValueError:
        settings = None
    if text(attrs.get("kind", "")) != "linear_growth_labels" or not isinstance(settings, dict):
        why.append("not a growth-label file (" + (text(attrs.get("kind")) if "kind" in attrs else "solver runs") + ")")
    else:
        from dodo.qke.cli import settings_differing
        from dodo.qke.states import AXIS_SEARCH, EMU_AXIS_SEARCH
        from dodo.qke.growth_labels import _fingerprint
        from dodo.qke.states import read_states
        if settings.get("axis_search") != (EMU_AXIS_SEARCH if emu else AXIS_SEARCH):
            why.append("labels along " + ("the refined fastest axis" if emu else "the fastest of Emu\x27s 38 axes"))
        for option, theirs, ours in settings_differing(attrs, [path, "--input", chunk, "--linear-only",
                                                               *shlex.split(os.environ.get("axis_args", ""))]):
            why.append(f"{option} {theirs}")
        try:
            states = read_states(chunk)["four_flux"]
        except Exception:
            states = None
        if states is not None and _fingerprint(states, settings) != text(attrs.get("fingerprint", "")):
            why.append(f"labels of other states than {chunk} holds now (made before the chunk was made again?)")
    if not why:
        return 0, ""
    command, why = text(attrs.get("command", "")), "; ".join(why)
    return 3, (f"relabel_growth: {path} is a complete file of another run ({why}"
               + (f"; written by `{command}`" if command else "") + "), not the labels of " + chunk
               + " this script makes: it is kept and the chunk not labelled; move that file away and rerun")

state, why = label_state(sys.argv[1], sys.argv[2])
if why:
    print(why, file=sys.stderr)
sys.exit(state)
'
relabel() {
  local input="$1" out="$labels/$(basename "$1")"
  # The label directory moved or removed meanwhile: no chunk is started in one made again at the old path,
  # outside the lock (as qke_campaign.sh; outside probe, data-loss round fourteen). The end says so.
  directory_still_at "$labels" "${labels_lock:-}" || return 255
  if [ -f "$out" ]; then
    local done=0
    "$python" -c "$label_state_py" "$out" "$input" || done=$?
    [ "$done" -eq 0 ] && return 0
    [ "$done" -eq 3 ] && return 1  # another run's complete file: kept, said why
  fi
  nice -n "${DODO_CAMPAIGN_NICE:-10}" "$dodo" simulate "$out" --input "$input" --linear-only $axis_args --quiet \
    || { echo "relabel_growth: $input failed (exit $?); rerun to retry" >&2; return 1; }
}
trap 'trap - TERM; kill 0' INT TERM
export -f relabel directory_still_at
export python dodo labels axis_args chunks label_state_py
[ -z "${labels_lock:-}" ] || export labels_lock
# Pool chunks only (held-out seeds 900-999 never labelled), complete ones, emu family first.
status=0
"$python" - <<'EOF' | xargs -r -d '\n' -n 1 -P "$jobs" bash -c 'relabel "$0"' || status=$?
import glob, os, re, sys, h5py
files = [p for p in sorted(glob.glob(os.path.join(glob.escape(os.environ["chunks"]), "*_seed*.h5")))
         if not re.search(r"_seed9\d\d\.h5$", p)]
def complete(p):
    try:
        with h5py.File(p, "r") as f:
            return bool(f.attrs.get("complete"))
    except OSError:
        return False
files = [p for p in files if complete(p)]
if not files:  # a campaign just started: say so (with --axis emu this was max()'s traceback, exit 1)
    print(f"relabel_growth: no complete chunk in {os.environ['chunks']} yet (FAMILY_seedN.h5 of a finished "
          "dodo simulate; held-out seeds 900-999 are never labelled): nothing to label", file=sys.stderr)
files = sorted(files, key=lambda p: (not p.split("/")[-1].startswith("emu_"), p))
if os.environ.get("DODO_GROWTH_AXIS") == "emu":
    # Every family from the start (two emu chunks to one of each other family), so that a study or
    # a training run on what is labelled so far sees them all.
    by_family = {}
    for p in files:
        by_family.setdefault(p.split("/")[-1].rsplit("_seed", 1)[0], []).append(p)
    share = {family: (2 if family == "emu" else 1) for family in by_family}
    rounds = max((-(-len(chunks) // share[family]) for family, chunks in by_family.items()), default=0)
    files = [p for r in range(rounds) for family, chunks in sorted(by_family.items())
             for p in chunks[r * share[family]:(r + 1) * share[family]]]
for p in files:
    print(p)
EOF
if [ "$status" -ne 0 ] && ! directory_still_at "$labels" "${labels_lock:-}"; then
  echo "relabel_growth: the label directory $labels was $(moved_directory_text "$labels_lock") while it ran, so no chunk was started after that; the labels done so far are there: move it back and rerun" >&2
  exit 2
fi
[ "$status" -eq 0 ] || { echo "relabel_growth: not every chunk finished (exit $status; see above); rerun to retry" >&2; exit "$status"; }
