# Sourced by the campaign scripts (qke_campaign.sh, relabel_growth.sh): runs the calling script
# again in a session of its own and returns only in that copy. The campaign then has its own
# process group, so that stopping it stops exactly its chunks and nothing of the shell that
# started it, and its own autogroup, so that nice makes it yield (below). This first copy stays as
# the waiting parent: a Ctrl-C (SIGINT to the terminal's foreground group, which the new session is
# not in), SIGTERM or SIGHUP reaching it is passed on to the campaign's whole group, whose own trap
# stops its chunks; the parent then waits for that and exits with the campaign's status. (An
# `exec setsid` parent died at once and left the campaign running, orphaned.)
#   . "$(dirname "$0")/own_session.sh" "$0" "$@"
if [ "${DODO_CAMPAIGN_GROUP:-}" != inner ] && command -v setsid > /dev/null; then
  # A non-interactive shell's background job is no process-group leader, so setsid(1) does not
  # fork: $! is the new session's leader, and its pid is the campaign's process group.
  DODO_CAMPAIGN_GROUP=inner setsid bash "$@" &
  campaign_pid=$!
  trap 'kill -TERM -- "-$campaign_pid" 2> /dev/null || kill -TERM "$campaign_pid" 2> /dev/null || true' INT TERM HUP
  campaign_status=0
  wait "$campaign_pid" || campaign_status=$?
  # A trapped signal ends `wait` early: wait again for the campaign's own exit.
  while kill -0 "$campaign_pid" 2> /dev/null; do
    campaign_status=0
    wait "$campaign_pid" || campaign_status=$?
  done
  # Its trap stops the chunks (kill 0) and ends at once, before they have saved their work and
  # ended: the script returned while a chunk still ran, and the "rerun the same command" right
  # after (`timeout -s TERM 1h bash scripts/qke_campaign.sh; bash scripts/qke_campaign.sh`) was
  # refused as "another qke_campaign.sh (or its chunks) is running" (outside probe, data-loss round
  # nine). So the group's last process is waited for too (at most a minute: a chunk that does not
  # end is named, not waited on for ever).
  for _ in $(seq 300); do
    kill -0 -- "-$campaign_pid" 2> /dev/null || exit "$campaign_status"
    sleep 0.2
  done
  echo "$(basename "$1" .sh): processes of the stopped campaign are still running a minute later (process group $campaign_pid)" >&2
  exit "$campaign_status"
fi
# With the kernel's autogroup scheduling on (Linux's default for desktops and many VMs), nice acts
# only within a session's group and the new session above gets a full share of the CPU against
# the user's training and benchmarks whatever its nice; the group's own nice makes it yield.
if [ -w /proc/self/autogroup ]; then
  echo "${DODO_CAMPAIGN_NICE:-10}" > /proc/self/autogroup 2> /dev/null || true
fi
# The process that holds a campaign's directory lock (DIR, opened and flocked by the running copy
# and inherited by its chunks), for the refusal of a second copy: " (pid N)", or with ", stopped:
# ..." where it is suspended (SIGSTOP to its group, a batch system's suspend). "another
# qke_campaign.sh ... is running in DIR: wait for it to end" named no process, and said "running"
# of a campaign that waits, stopped, until continued (outside probe, data-loss round fourteen).
# /proc/locks cannot say: it names the flock(1) process that took the lock and has ended. So the
# processes that hold DIR open are found in /proc/*/fd; the earliest of them (the campaign's own
# shell, its group's leader) is named. Empty where /proc cannot tell (not Linux, no Python).
lock_holder_text() {
  "${DODO_VENV:-$root/.venv}/bin/python" - "$1" "$$" 2> /dev/null <<'PYTHON' || true
import os, sys
directory, asking = os.path.realpath(sys.argv[1]), int(sys.argv[2])
def stat_fields(pid):
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()  # state, ppid, pgrp, ...
holders = []
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) in (asking, os.getpid(), os.getppid()):  # the asking copy's own
        continue
    try:
        if any(os.readlink(f"/proc/{name}/fd/{fd}") == directory for fd in os.listdir(f"/proc/{name}/fd")):
            fields = stat_fields(name)
            holders.append((int(name), fields[0].decode(), int(fields[2])))
    except (OSError, ValueError, IndexError):
        continue
if holders:
    leaders = [holder for holder in holders if holder[0] == holder[2]]
    pid, state, group = min(leaders or holders)
    if any(holder[1] in ("T", "t") for holder in holders):
        print(f" (pid {pid}, stopped: it holds the lock until it is continued and ends; kill -CONT -- -{group} "
              "continues it and its chunks)", end="")
    else:
        print(f" (pid {pid})", end="")
PYTHON
}
# One run of a script per directory: DIR opened on a descriptor bash chooses (10 or above: under `ulimit
# -n 10` bash keeps the script itself open on 9, and `exec 9<` took its place; outside probe, data-loss
# round seven), its number left in directory_lock, and flocked without waiting: inherited by the chunks,
# released by the kernel however they end. PROGRAM: the name that starts each line; RUNNING: what the
# refusal says runs there; SECOND: what a second run would do; ONE_AT_A_TIME: the note's advice. -E 75:
# only a lock another process holds refuses; any other failure (ENOLCK: a file system that takes no
# locks, an NFS mount without its lock service) runs unguarded with a note, as dodo simulate's chunks do
# (it said "another ... is running" of a run that never was, and none could run there: data-loss round
# fifteen). Without flock(1), or where DIR cannot be opened, unguarded, directory_lock empty.
lock_directory_or_refuse() {
  local program="$1" directory="$2" running="$3" second="$4" one_at_a_time="$5" lock_status=0
  directory_lock=""
  command -v flock > /dev/null || return 0
  { exec {directory_lock}< "$directory"; } 2> /dev/null || { directory_lock=""; return 0; }
  flock -n -E 75 "$directory_lock" 2> /dev/null || lock_status=$?
  if [ "$lock_status" -eq 75 ]; then
    echo "$program: $running$(lock_holder_text "$directory"): wait for it to end ($second)" >&2; exit 2
  elif [ "$lock_status" -ne 0 ]; then
    echo "$program: note: $directory cannot be locked (flock exit $lock_status; its file system takes no locks?), so $one_at_a_time" >&2
  fi
}
# Whether DIR still names the directory open on descriptor FD (a campaign's lock, inherited by its
# chunks); true without FD, or where /proc cannot tell.
directory_still_at() {
  [ -z "${2:-}" ] || [ ! -e "/proc/self/fd/$2" ] || [ "$1" -ef "/proc/self/fd/$2" ]
}
# "moved or renamed (it is now PATH)" or "removed", of the directory open on descriptor FD.
moved_directory_text() {
  local now
  now="$(readlink "/proc/self/fd/$1" 2> /dev/null)" || now=""
  case "$now" in
    *" (deleted)" | "") echo "removed (or moved where this process cannot see it)" ;;
    *) echo "moved or renamed (it is now $now)" ;;
  esac
}
