"""Outside probe, data loss, hangs and signals, round fifteen (docs/reliability_python.md, section 121).

Each test failed on the code before its fix (its docstring says what that code did), except those marked
as guards. The signal cases run a child interpreter that raises the signal itself at a set point of the
write (`signal.raise_signal`, whose Python handler runs before it returns): no timing involved.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: A hang guard only (a child interpreter importing h5py and the package).
CHILD_TIMEOUT_S = 300

# A child: an HDF5 output written through dodo._atomic.atomic_hdf5 whose body makes one small dataset and
# calls no check() of its own; the signal is raised right after atomic_hdf5's last check() has returned
# (its final sink.check(), once HDF5 closed the file): the moment between that check and the end of the
# signal hold. SIGTERM has a handler that raises (as dodo's does); SIGINT Python's own.
_SIGNAL_AFTER_THE_LAST_CHECK = textwrap.dedent("""
    import os, signal, sys
    from dodo import _atomic

    output, name = sys.argv[1], sys.argv[2]
    signum = getattr(signal, name)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class Stopped(BaseException):
        pass

    def stop(number, frame):
        raise Stopped(number)

    if signum != signal.SIGINT:
        signal.signal(signum, stop)
    original, armed = _atomic.WriteErrorLatch.check, [True]

    def check(self):
        original(self)
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signum)

    _atomic.WriteErrorLatch.check = check
    try:
        with _atomic.atomic_hdf5(output) as (handle, _):
            handle.create_dataset("x", data=[1.0, 2.0, 3.0])
        print("completed")
    except BaseException as error:
        print("ended by", type(error).__name__)
    print("left", sorted(os.listdir(os.path.dirname(output))))
    print("handler back", signal.getsignal(signum) in (signal.default_int_handler, stop))
""")


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_last_check_of_an_hdf5_write_is_not_dropped(tmp_path, name):
    """Before: a Ctrl-C or SIGTERM that came after atomic_hdf5's last check() (while HDF5's file was closed
    and checked, or between that and the end of the hold) was held by the hold and never handed on when
    the hold ended: the write completed, the output was replaced and the process went on (exit 0) as if
    no signal had come. Now the hold hands a signal still held on when it ends: the write ends as
    interrupted, the earlier file byte for byte, no temporary, the handler back."""
    pytest.importorskip("h5py")
    output = tmp_path / "out.h5"
    output.write_bytes(b"an earlier good file")
    child = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_THE_LAST_CHECK, str(output), name],
                           capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    expected = "KeyboardInterrupt" if name == "SIGINT" else "Stopped"
    assert child.returncode == 0 and child.stdout.splitlines() == [
        f"ended by {expected}", "left ['out.h5']", "handler back True"], (child.stdout, child.stderr[-2000:])
    assert output.read_bytes() == b"an earlier good file"


def test_the_round_three_flush_child_started_with_sigint_ignored_still_gets_its_ctrl_c(tmp_path):
    """Before: tests/python/test_probe_data_loss_round3.py's SIGINT child relied on the SIGINT handling
    it was started with. A suite run in the background of a shell without job control (`pytest ... &`
    in a script; the lead's whole-suite run) starts every child with SIGINT ignored; Python then
    installs no KeyboardInterrupt handler, the hold leaves an ignored signal alone (as it should), and
    the child's raised SIGINT was ignored: "completed", a failure seen once "under load" that no
    foreground rerun showed. Now the child sets Python's handler itself: the same result whatever
    the suite was started with."""
    pytest.importorskip("h5py")
    import test_probe_data_loss_round3 as round3

    output = tmp_path / "out.h5"
    output.write_bytes(b"an earlier good file")
    child = subprocess.run([sys.executable, "-c", round3._SIGNAL_IN_A_FLUSH, str(output), "SIGINT"],
                           capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert child.returncode == 0 and child.stdout.strip() == "ended by KeyboardInterrupt", (child.stdout,
                                                                                            child.stderr[-2000:])
    assert output.read_bytes() == b"an earlier good file"


def test_a_lock_file_on_a_full_file_system_says_to_free_space(monkeypatch, tmp_path):
    """Before: `dodo simulate full/s.h5` on a full 64 KiB tmpfs: `[Errno 28] cannot write the lock file
    full/.s.h5.lock: No space left on device`, nothing on what to do. Now `(its file system is full: free
    space there and rerun the command)`; the lock file is removed as before."""
    import errno

    import dodo._atomic as atomic

    output = tmp_path / "s.h5"

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match=r"cannot write the lock file .*\.s\.h5\.lock: No space left on device \(its file "
                                      r"system is full: free space there and rerun the command\)$"):
        with atomic.exclusive_output(output, "dodo simulate"):
            pytest.fail("the block ran without its lock")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == []


def test_a_lock_file_over_the_file_size_limit_names_the_limit(tmp_path):
    """Before: under `ulimit -f 0` (a batch system's per-process limit), `dodo simulate s.h5`: `[Errno 27]
    cannot write the lock file .s.h5.lock: File too large`, neither the limit nor what to do (round thirteen
    named it for the outputs, not for their lock files). Now the limit and `raise it, e.g. ulimit -f
    unlimited`."""
    script = textwrap.dedent("""
        import resource, sys
        import dodo._atomic as atomic
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            with atomic.exclusive_output(sys.argv[1], "dodo simulate"):
                print("locked")
        except OSError as error:
            print(error)
    """)
    child = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s.h5")], capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert child.returncode == 0 and child.stdout.strip().endswith(
        ".s.h5.lock: File too large (this process may write files of at most 0 bytes: its file-size limit, ulimit "
        "-f; raise it, e.g. ulimit -f unlimited, and rerun the command)"), (child.stdout, child.stderr[-2000:])
    assert list(tmp_path.iterdir()) == []


# --- a campaign whose directory holds another campaign's complete chunk -----------------------------------------------

def _campaign_copy(tmp_path):
    """A copy of the campaign scripts whose stand-in `dodo` records its arguments; the plan `emu 1 3`."""
    from cli_helpers import stand_in_venv

    root = Path(__file__).resolve().parents[2]
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("qke_campaign.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((root / "scripts" / name).read_text())
    calls = tmp_path / "calls.txt"
    venv = stand_in_venv(tmp_path, f'echo "$@" >> {calls}; exit 0')
    (tmp_path / "plan.txt").write_text("emu 1 3\n")
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DODO_CAMPAIGN")}
    env.update(DODO_VENV=str(venv), DODO_CAMPAIGN_DIR=str(chunks), DODO_CAMPAIGN_NICE="0")
    return repo, env, chunks, calls


def _chunk_file(path, kind=None, family="emu", seed=1, count=3, targeted=False):
    """A complete chunk file with the attributes `dodo simulate` records of its run (no data)."""
    import json

    import h5py

    source = {"random": count, "random_seed": seed, "max_flux_factor": 0.9, "heavy_equal": True}
    if family is not None:
        source["family"] = family
    if targeted:
        source["selected_by"] = "default"
    with h5py.File(path, "w") as handle:
        handle.attrs["complete"] = True
        handle.attrs["source"] = json.dumps(source)
        handle.attrs["command"] = f"dodo simulate {path.name} --random {count} --seed {seed}" + (
            " --linear-only" if kind else "")
        if kind:
            handle.attrs["kind"] = kind


def _campaign(repo, env, plan):
    return subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", str(plan)], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash of Linux")


@linux_only
@pytest.mark.parametrize("case, made, linear, wanted", [
    ("linear labels in a solver campaign", dict(kind="linear_growth_labels"), False, "solver runs of 3 states"),
    ("solver runs in a labels campaign", dict(), True, "linear growth labels of 3 states"),
    ("another COUNT", dict(count=2), False, "solver runs of 3 states"),
    ("random where the plan says targeted", dict(), False, "solver runs of 3 states, targeted"),
], ids=["linear-in-solver", "solver-in-linear", "count", "targeted"])
def test_another_campaigns_complete_chunk_is_not_taken_as_this_ones(tmp_path, case, made, linear, wanted):
    """Before: the campaign skipped any complete file of a chunk's name as finished: `qke_campaign.sh` run with
    DODO_CAMPAIGN_ARGS=--linear-only into the solver's directory by mistake (or the other way round; a plan line
    whose COUNT was changed; a random chunk where the plan now says targeted) left files that the other campaign
    then passed over, exit 0 and no word: its data set held linear growth labels instead of solver runs. Now
    such a chunk is not run and not skipped: one line names the file, what it holds, what this campaign wanted
    and what to do; the file is kept; the campaign ends non-zero."""
    pytest.importorskip("h5py")
    repo, env, chunks, calls = _campaign_copy(tmp_path)
    chunk = chunks / "emu_seed1.h5"
    _chunk_file(chunk, **made)
    before = chunk.read_bytes()
    if linear:
        env["DODO_CAMPAIGN_ARGS"] = "--linear-only"
    plan = tmp_path / "plan.txt"
    if case.startswith("random"):
        plan.write_text("emu 1 3 targeted\n")
    done = _campaign(repo, env, plan)
    assert done.returncode != 0 and not calls.exists(), (done.returncode, done.stderr)
    assert (f"qke_campaign: chunk emu 1: {chunk} is a complete file of another run (" in done.stderr
            and f"), not a chunk of this campaign ({wanted}, seed 1, family emu): it is kept and the chunk not run; give "
                "this campaign a directory of its own (DODO_CAMPAIGN_DIR), or move that file away and rerun"
            in done.stderr), done.stderr
    assert chunk.read_bytes() == before


@linux_only
@pytest.mark.parametrize("family", ["emu", None], ids=["family", "first-campaign-without-family"])
def test_this_campaigns_complete_chunk_is_still_skipped(tmp_path, family):
    """Guard: a complete file of this campaign's own chunk (also one of the first campaigns, whose source records
    no family) is skipped as before: no chunk run, exit 0, nothing said."""
    pytest.importorskip("h5py")
    repo, env, chunks, calls = _campaign_copy(tmp_path)
    _chunk_file(chunks / "emu_seed1.h5", family=family)
    done = _campaign(repo, env, tmp_path / "plan.txt")
    assert done.returncode == 0 and not calls.exists() and done.stderr == "", (done.returncode, done.stderr)


def test_no_lock_file_is_left_on_a_file_system_without_flocks(monkeypatch, tmp_path):
    """Before: `dodo simulate d/s.h5` on a file system that takes no flocks (ENOLCK: an NFS mount without its
    lock service; shown with an LD_PRELOAD flock() that fails so) wrote s.h5, exit 0, and left `.s.h5.lock`
    beside it: the run goes unguarded there (as documented), but its lock file was never removed. Now it is
    removed at the end as on any other file system."""
    import errno

    import dodo._atomic as atomic

    fcntl = pytest.importorskip("fcntl")

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    output = tmp_path / "s.h5"
    with atomic.exclusive_output(output, "dodo simulate"):
        output.write_bytes(b"the run's output")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.h5"]


def _no_locks_flock(tmp_path, env):
    """A stand-in flock(1) first on PATH that fails as util-linux's does where the file system takes no locks
    (ENOLCK: "flock: 12: No locks available", exit 71, EX_OSERR)."""
    bin_directory = tmp_path / "bin"
    bin_directory.mkdir()
    (bin_directory / "flock").write_text('#!/bin/bash\necho "flock: $2: No locks available" >&2\nexit 71\n')
    (bin_directory / "flock").chmod(0o755)
    env["PATH"] = f"{bin_directory}{os.pathsep}{env.get('PATH', '')}"


@linux_only
def test_a_campaign_on_a_file_system_without_locks_runs_unguarded(tmp_path):
    """Before: on a file system that takes no locks, `qke_campaign.sh` printed flock's "No locks available" and
    "qke_campaign: another qke_campaign.sh (or its chunks) is running in DIR: wait for it to end", exit 2, of a
    campaign that never ran: no campaign could run there at all (its comment says: without locks, unguarded).
    Now a note that the directory cannot be locked, and the chunks run."""
    pytest.importorskip("h5py")
    repo, env, chunks, calls = _campaign_copy(tmp_path)
    _no_locks_flock(tmp_path, env)
    done = _campaign(repo, env, tmp_path / "plan.txt")
    assert done.returncode == 0 and calls.exists() and "emu_seed1.h5" in calls.read_text(), (done.returncode,
                                                                                              done.stderr)
    assert "is running" not in done.stderr and done.stderr.strip() == (
        f"qke_campaign: note: {chunks} cannot be locked (flock exit 71; its file system takes no locks?), so a second "
        "campaign there would not be refused: run one campaign at a time in it"), done.stderr


@linux_only
def test_a_relabelling_on_a_file_system_without_locks_is_not_called_running(tmp_path):
    """The same in relabel_growth.sh (before: "another relabel_growth.sh (or its chunks) is running into DIR",
    exit 2); here with no complete chunk to label, it goes on to say so."""
    repo, env, chunks, calls = _campaign_copy(tmp_path)
    (repo / "scripts" / "relabel_growth.sh").write_text(
        (Path(__file__).resolve().parents[2] / "scripts" / "relabel_growth.sh").read_text())
    _no_locks_flock(tmp_path, env)
    done = subprocess.run(["bash", str(repo / "scripts" / "relabel_growth.sh"), "1"], env=env, capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert "is running" not in done.stderr and "No locks available" not in done.stderr, done.stderr
    assert f"relabel_growth: note: {chunks}_growth cannot be locked (flock exit 71" in done.stderr, done.stderr


# A child: the first SIGINT comes inside HDF5's write callback (held), the second in the block's own code before any
# check() (handed on at once: the user insists); the exception that ends the write is printed with its context.
_TWO_SIGNALS = textwrap.dedent("""
    import signal, sys
    import numpy as np
    from dodo import _atomic

    signal.signal(signal.SIGINT, signal.default_int_handler)
    armed = [False]
    original = _atomic.WriteErrorLatch._pwrite

    def pwrite(self, view, offset):
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)
        return original(self, view, offset)

    _atomic.WriteErrorLatch._pwrite = pwrite
    try:
        with _atomic.atomic_hdf5(sys.argv[1]) as (handle, check):
            armed[0] = True
            handle.create_dataset("x", data=np.arange(1000.0))
            handle.flush()
            signal.raise_signal(signal.SIGINT)
            print("not interrupted")
    except BaseException as error:
        print("ended by", type(error).__name__, "context", type(error.__context__).__name__)
""")


def test_a_second_ctrl_c_while_one_is_held_ends_the_write_once(tmp_path):
    """Guard of this round's hand-on at the end of the hold: a Ctrl-C held inside HDF5's callback and a second one
    in the caller's code (handed on at once) end the write with one KeyboardInterrupt, not a second one raised
    from the held signal while the first unwinds (which the hand-on did before it looked at what ended the
    block); the earlier file byte for byte."""
    pytest.importorskip("h5py")
    output = tmp_path / "out.h5"
    output.write_bytes(b"an earlier good file")
    child = subprocess.run([sys.executable, "-c", _TWO_SIGNALS, str(output)], capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert child.returncode == 0 and child.stdout.strip() == "ended by KeyboardInterrupt context NoneType", (
        child.stdout, child.stderr[-2000:])
    assert output.read_bytes() == b"an earlier good file" and sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
