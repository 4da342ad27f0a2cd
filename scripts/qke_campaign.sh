#!/usr/bin/env bash
# Resumable, chunked QKE data campaign (issue 10; docs/dataset.md). Runs the chunks of
# data/qke/campaign_plan.txt ("FAMILY SEED COUNT [targeted]" per line) with JOBS processes at once (default 2,
# one per core) and skips chunks whose file is complete; an interrupted chunk resumes from its
# .partial.npz. Rerun the same command to continue; add lines to the plan to extend the campaign.
# A line ending in "targeted" draws 6 x COUNT states of the family and simulates the COUNT the shipped
# model is least sure of (dodo simulate --select-by default; docs/dataset.md, "Targeted chunks").
#   bash scripts/qke_campaign.sh [JOBS] [PLAN]
# Growth-rate labels only (linear theory, no time integration; docs/dataset.md):
#   DODO_CAMPAIGN_DIR=data/qke_linear DODO_CAMPAIGN_ARGS=--linear-only \
#     bash scripts/qke_campaign.sh 1 data/qke_linear/campaign_plan.txt
set -euo pipefail
# Its own session and process group, stopped as a whole by Ctrl-C or a kill of this script
# (scripts/own_session.sh).
. "$(dirname "$0")/own_session.sh" "$0" "$@"
root="$(cd "$(dirname "$0")/.." && pwd)"
jobs="${1:-2}"
case "$jobs" in
  '' | *[!0-9]* | 0* | ???????*) echo "qke_campaign: JOBS must be a positive integer up to 999999 (processes at once); got '$jobs'" >&2; exit 2 ;;
esac
# A niceness nice(1) refuses failed every chunk with "nice: invalid adjustment" and "rerun to retry"
# (outside probe, round 32): checked once, before any chunk.
[[ "${DODO_CAMPAIGN_NICE:-10}" =~ ^[-+]?[0-9]{1,9}$ ]] || {
  echo "qke_campaign: DODO_CAMPAIGN_NICE must be an integer, the chunks' niceness (nice -n; default 10); got '$DODO_CAMPAIGN_NICE'" >&2; exit 2; }
plan="${2:-$root/data/qke/campaign_plan.txt}"
case "$plan" in /*) ;; *) plan="$PWD/$plan" ;; esac  # a relative PLAN is the caller's, not the root's
# A plan given through a pipe (`qke_campaign.sh 2 <(grep emu plan.txt)`, a FIFO) is read once, as a file is: it was
# "plan /dev/fd/63 not found" (outside probe, data-loss round fourteen).
if ! [ -f "$plan" ] && ! [ -p "$plan" ]; then
  if [ -e "$plan" ]; then
    echo "qke_campaign: plan $plan is not a file of lines (a directory or a device?): give the plan file" >&2
  else
    echo "qke_campaign: plan $plan not found" >&2
  fi
  exit 2
fi
cd "$root"
dodo="${DODO_VENV:-$root/.venv}/bin/dodo"
# Every chunk's options besides its own (and DODO_CAMPAIGN_ARGS): run_chunk runs them, chunk_state_py compares
# a complete file's recorded settings with them.
export qke_chunk_options="--batch-size 2 --max-cost 2.5 --backend cpp --quiet"
[ -x "$dodo" ] || { echo "qke_campaign: $dodo not found (bash scripts/setup_venv.sh first)" >&2; exit 2; }
run_chunk() {
  local family="$1" seed="$2" count="$3" targeted="${4:-}"
  local select=()
  [ "$targeted" = targeted ] && select=(--select-by default)
  local out="${DODO_CAMPAIGN_DIR:-data/qke}/${family}_seed${seed}.h5"
  # A directory named "-x..." made every chunk's output look like an option to dodo simulate (its
  # usage text, "rerun to retry", which no rerun fixed; data-loss probe, round seven).
  case "$out" in -*) out="./$out" ;; esac
  # The campaign's directory moved (mv, a rename by another client of a network file system) or removed
  # while the campaign ran: the chunk after it made the directory again at the old path (dodo simulate
  # makes an output's missing directory), unguarded by the lock (which went with the moved one), and the
  # campaign went on there, its chunks split over two directories and an interrupted chunk's checkpoint
  # left in the other (outside probe, data-loss round fourteen). No chunk starts then; the end says so.
  if ! directory_still_at "$campaign_dir" "${campaign_lock:-}"; then
    return 255  # xargs starts no more chunks
  fi
  if [ -f "$out" ]; then
    local done=0
    "${DODO_VENV:-$root/.venv}/bin/python" -c "$chunk_state_py" one "$out" "$family" "$seed" "$count" "$targeted" || done=$?
    [ "$done" -eq 0 ] && return 0
    [ "$done" -eq 3 ] && return 1  # another campaign's complete file: kept, said why (above)
  fi
  nice -n "${DODO_CAMPAIGN_NICE:-10}" "$dodo" simulate "$out" --random "$count" --seed "$seed" --family "$family" \
    $qke_chunk_options "${select[@]}" ${DODO_CAMPAIGN_ARGS:-} \
    || { echo "qke_campaign: chunk $family $seed failed (exit $?); rerun to retry" >&2; return 1; }
}
# Every line FAMILY SEED COUNT, checked before any chunk starts (comments, also after the three
# fields, and blank lines aside; a CR of a Windows line end dropped). xargs -L 1 read a line ending
# in a blank as continued on the next one, so that next chunk never ran and the campaign still
# ended with 0; a fourth field was dropped without a word, and a line of two fields ran
# `--random ''` (argparse's usage per chunk; solver round 3). A chunk planned twice ran twice onto one
# file (the second refused by its lock) or, one after the other, was skipped as complete whatever its
# second COUNT said.
# A seed with leading zeros (emu 007) passed that check beside emu 7 and ran the same seed into a
# second file (emu_seed007.h5): refused (round 32's left-alone list).
chunks="$(awk -v plan="$plan" '
  { sub(/\r$/, ""); sub(/#.*/, "") }
  /^[[:space:]]*$/ { next }
  (NF != 3 && !(NF == 4 && $4 == "targeted")) || $1 !~ /^(emu|three_flavour|merger)$/ || $2 !~ /^(0|[1-9][0-9]*)$/ || $3 !~ /^[0-9]*[1-9][0-9]*$/ {
    printf "qke_campaign: %s, line %d: expected FAMILY SEED COUNT [targeted] (family emu, three_flavour or merger; seed an integer >= 0 without leading zeros; count >= 1; a fourth word, if any, targeted), got \"%s\"\n", plan, NR, $0 > "/dev/stderr"
    bad = 1; next
  }
  ($1 " " $2) in line {
    printf "qke_campaign: %s, line %d: chunk %s %s is also on line %d (one output file per FAMILY and SEED)\n", plan, NR, $1, $2, line[$1 " " $2] > "/dev/stderr"
    bad = 1; next
  }
  NF == 4 && $2 >= 900 && $2 <= 999 {
    printf "qke_campaign: %s, line %d: seeds 900-999 are the held-out chunks, random draws of their family (docs/dataset.md): not targeted, got \"%s\"\n", plan, NR, $0 > "/dev/stderr"
    bad = 1; next
  }
  # No trailing blank on a three-field line: xargs -L 1 would read the next line as its continuation.
  { line[$1 " " $2] = NR; print (NF == 4 ? $1 " " $2 " " $3 " " $4 : $1 " " $2 " " $3) }
  END { exit bad }' "$plan")" || exit 2
# One campaign per directory at a time (outside probe, data-loss round two): a second campaign on
# the same directory (the same command typed twice, or a rerun while a campaign whose parent was
# SIGKILLed still runs in its own session) ran its chunks beside the first one's, twice JOBS
# processes, each refused chunk reported as "failed; rerun to retry", and both campaigns ended with
# exit 123 although every chunk finished. A lock (flock) on the directory itself, so no file is left
# in it; inherited by the chunks, so it is held while any of them runs, and released by the kernel
# however they end. Without flock(1) the campaign runs unguarded, as before.
campaign_dir="${DODO_CAMPAIGN_DIR:-data/qke}"
if command -v flock > /dev/null; then
  mkdir -p -- "$campaign_dir" 2> /dev/null || true
fi
lock_directory_or_refuse qke_campaign "$campaign_dir" \
  "another qke_campaign.sh (or its chunks) is running in $campaign_dir" \
  "a second campaign on one directory would run the same chunks beside it" \
  "a second campaign there would not be refused: run one campaign at a time in it"
campaign_lock="$directory_lock"
# Whether a chunk's file is done: complete, and this campaign's chunk (exit 0); complete but another
# campaign's (exit 3, the reason on standard error); else not done (1). Another campaign's file was done:
# a campaign with DODO_CAMPAIGN_ARGS=--linear-only run into the solver's directory by mistake (or the solver's
# into data/qke_linear, a plan line's COUNT changed, a random chunk where the plan says targeted) left files
# the other campaign then skipped as finished, exit 0 and no word: its data set held linear growth labels
# instead of solver runs (outside probe, data-loss round fifteen). Judged by what the file records of its
# run: kind, source's random (COUNT), random_seed, family (the first campaigns' files have none) and
# selected_by (targeted), and --linear-only among DODO_CAMPAIGN_ARGS; and the settings it records against the
# chunk's options with DODO_CAMPAIGN_ARGS (dodo.qke.cli.settings_differing: --ncell, --nphi, --max-cost, the
# random draw's --max-flux-factor and --oversample ...), which were not compared: a chunk made with
# DODO_CAMPAIGN_ARGS="--ncell 16" was skipped as complete by the campaign at the default 64 cells (outside
# probe, data-loss round fifteen; the draw's limit: original findings round four).
chunk_state_py='
import json, os, shlex, sys

def chunk_state(path, family, seed, count, targeted):
    try:
        import h5py
    except ImportError:  # the chunk decides
        return 1, ""
    if not os.path.isfile(path):
        return 1, ""
    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except Exception:  # unreadable: the chunk decides (it refuses or resumes)
        return 1, ""
    if not attrs.get("complete"):
        return 1, ""
    text = lambda value: value.decode() if isinstance(value, bytes) else str(value)
    try:
        source = json.loads(text(attrs.get("source", "{}")))
    except ValueError:
        source = {}
    source = source if isinstance(source, dict) else {}
    linear = "--linear-only" in shlex.split(os.environ.get("DODO_CAMPAIGN_ARGS", ""))
    run = lambda is_linear, states, chosen: (("linear growth labels" if is_linear else "solver runs")
                                             + f" of {states} states" + (", targeted" if chosen else ""))
    has = run(text(attrs.get("kind", "")) == "linear_growth_labels", source.get("random"), "selected_by" in source)
    wanted = run(linear, int(count), targeted == "targeted")
    options = [path, "--random", count, "--seed", seed, "--family", family,
               *shlex.split(os.environ.get("qke_chunk_options", "")),
               *(["--select-by", "default"] if targeted == "targeted" else []),
               *shlex.split(os.environ.get("DODO_CAMPAIGN_ARGS", ""))]
    try:
        from dodo.qke.cli import settings_differing
        differing = settings_differing(attrs, options)
    except ImportError:  # the chunk decides
        differing = []
    if (has == wanted and not differing and source.get("random_seed") == int(seed)
            and source.get("family", family) == family):
        return 0, ""
    command = text(attrs.get("command", ""))
    its_seed, its_family = source.get("random_seed"), source.get("family")
    its = has + f", seed {its_seed}" + (f", family {its_family}" if its_family else "")
    with_options = lambda side: ", with " + " ".join(  # noqa: E731
        f"no {difference[0]}" if difference[side] == "not given" else f"{difference[0]} {difference[side]}"
        for difference in differing) if differing else ""
    its += with_options(1) + (f"; written by `{command}`" if command else "")
    return 3, (f"qke_campaign: chunk {family} {seed}: {path} is a complete file of another run ({its}), not "
               f"a chunk of this campaign ({wanted}, seed {seed}, family {family}{with_options(2)}): it is kept and "
               "the chunk not run; give this campaign a directory of its own (DODO_CAMPAIGN_DIR), or move that file "
               "away and rerun")

if sys.argv[1] == "one":
    state, why = chunk_state(*sys.argv[2:7])
    if why:
        print(why, file=sys.stderr)
    sys.exit(state)
try:
    import h5py
except ImportError:
    h5py = None
directory = os.environ.get("DODO_CAMPAIGN_DIR") or "data/qke"
for line in sys.stdin:  # list: the chunks not done; others: those whose file belongs to another run
    fields = line.split()
    path = os.path.join(directory, f"{fields[0]}_seed{fields[1]}.h5")
    state = 1 if h5py is None else chunk_state(path, *fields[:3], fields[3] if len(fields) > 3 else "")[0]
    if (state != 0) if sys.argv[1] == "list" else (state == 3):
        print(line.rstrip("\n"))
'
# The finished chunks, found by one Python process: run_chunk's own check (a Python start per chunk,
# at the chunks' nice) took over half an hour over the ~3,000 lines of the plan on a busy machine
# before the first chunk started. run_chunk still checks the rest; without h5py every line is kept.
if unfinished="$(printf '%s' "$chunks${chunks:+$'\n'}" | "${DODO_VENV:-$root/.venv}/bin/python" -c "$chunk_state_py" list 2>/dev/null)"; then
  chunks="$unfinished"
fi
trap 'trap - TERM; kill 0' INT TERM  # stopping the campaign stops its chunks too
export -f run_chunk directory_still_at
export root dodo campaign_dir chunk_state_py
[ -z "${campaign_lock:-}" ] || export campaign_lock
# In the background and waited for: bash runs the TERM trap only between commands, and `wait`
# is where a signal interrupts it.
# -r: an empty plan runs nothing. A failed chunk makes xargs, and so the campaign, exit non-zero.
printf '%s' "$chunks${chunks:+$'\n'}" | xargs -r -P "$jobs" -L 1 bash -c 'run_chunk "$0" "$1" "$2" "${3:-}"' &
status=0
wait $! || status=$?
if [ "$status" -ne 0 ] && ! directory_still_at "$campaign_dir" "${campaign_lock:-}"; then
  echo "qke_campaign: the campaign directory $campaign_dir was $(moved_directory_text "$campaign_lock") while the campaign ran, so no chunk was started after that; the chunks done so far are there: move it back, or rerun with DODO_CAMPAIGN_DIR set to where it is now" >&2
  exit 2
fi
# A chunk whose file is another run's is refused again by every rerun: "rerun to retry" alone sent the user round
# that loop (outside probe, data-loss round fifteen).
if [ "$status" -ne 0 ]; then
  others="$(printf '%s' "$chunks${chunks:+$'\n'}" | "${DODO_VENV:-$root/.venv}/bin/python" -c "$chunk_state_py" others 2>/dev/null | grep -c . || true)"
  if [ "${others:-0}" -gt 0 ]; then
    echo "qke_campaign: not every chunk finished (exit $status; see above): $others chunk file(s) of another run are kept and not run, and a rerun leaves them so: move them away or give this campaign a directory of its own (DODO_CAMPAIGN_DIR); any other chunk that failed: rerun to retry" >&2
  else
    echo "qke_campaign: not every chunk finished (exit $status; see above); rerun to retry" >&2
  fi
  exit "$status"
fi
