"""Kill sweep (docs/reliability_python.md, section 14): a killed, terminated or interrupted command
never destroys a good file, leaves no temporary that a rerun trips over, and a long command keeps
the work it finished.

The moment of the signal is deterministic: the child process runs `dodo` with ``os.fsync`` replaced
by a function that marks a sentinel file and waits, so the signal arrives while the temporary of
the output exists beside it, complete but not yet renamed (the last moment before a write lands).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cli_helpers import digest, run

_CHILD = textwrap.dedent("""
    import os, sys, time
    sentinel = sys.argv[1]

    def stalled_fsync(fd):  # the output's temporary is complete: hold it there until signalled
        open(sentinel, "w").close()
        time.sleep(120)

    os.fsync = stalled_fsync
    from dodo.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _default_signal_dispositions() -> None:
    # The child starts as from a terminal, whatever ran the tests: pytest's own SIGINT handling,
    # or `nohup`'s ignored SIGHUP (dodo keeps an ignored SIGHUP by design), are not inherited.
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _signal_while_temporary_exists(tmp_path: Path, argv: list[str], target: Path, signum: int):
    """Run `dodo ARGV` in a child, send ``signum`` while TARGET's temporary is complete and not yet
    renamed; return (exit status, stderr, the temporaries there when the signal was sent)."""
    sentinel = tmp_path / "stalled"
    sentinel.unlink(missing_ok=True)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(sentinel), *argv], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_default_signal_dispositions)
    try:
        deadline = time.monotonic() + 120
        while not sentinel.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never reached the write"
            time.sleep(0.02)
        temporaries = sorted(target.parent.glob(f".{target.name}.*.tmp"))
        child.send_signal(signum)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()  # reaps the child and closes its pipes, also after a failed assertion
    return child.returncode, err, temporaries


@pytest.mark.parametrize("signum, status, word", [(signal.SIGTERM, 143, "terminated"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_sigint_at_the_rename_keep_the_good_file_and_remove_the_temporary(tmp_path, signum, status, word):
    """SIGTERM (`kill PID`, a batch system's time limit) took Python's default action: the process
    ended on the spot with no message and left its temporary `.OUT.HOST.PID.XXXX.tmp` beside the
    output (removed only by the next write of that file). It now unwinds as Ctrl-C does: exit 143,
    one line `dodo synth: terminated`, the temporary removed, the good file byte-identical."""
    target = tmp_path / "db.h5"
    target.write_bytes(b"a good file from an earlier run\n" * 100)  # not HDF5: replaced only with --overwrite
    good = digest(target)
    code, err, temporaries = _signal_while_temporary_exists(
        tmp_path, ["synth", "-o", str(target), "-n", "50", "--seed", "4", "-q", "--overwrite"], target, signum)
    assert len(temporaries) == 1, temporaries  # the signal did arrive while the temporary existed
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status and lines == [f"dodo synth: {word}"], (code, err)
    assert digest(target) == good
    assert list(tmp_path.glob(".db.h5.*")) == []


def test_sigkill_at_the_rename_keeps_the_good_file_and_a_rerun_removes_the_temporary(tmp_path, capsys):
    """SIGKILL cannot be caught: the temporary stays, the good file is untouched, and the next write
    of the same file removes the dead writer's temporary and completes."""
    target = tmp_path / "db.h5"
    target.write_bytes(b"a good file from an earlier run\n" * 100)  # not HDF5: replaced only with --overwrite
    good = digest(target)
    argv = ["synth", "-o", str(target), "-n", "50", "--seed", "4", "-q", "--overwrite"]
    code, _, temporaries = _signal_while_temporary_exists(tmp_path, argv, target, signal.SIGKILL)
    assert code == -signal.SIGKILL and len(temporaries) == 1
    assert digest(target) == good and list(tmp_path.glob(".db.h5.*")) == temporaries
    code, _, err = run(capsys, argv)
    assert code == 0, err
    assert list(tmp_path.glob(".db.h5.*")) == [] and digest(target) != good
    import h5py

    with h5py.File(target, "r") as handle:
        assert handle["F4_initial(1|ccm)"].shape[0] == 50


def test_a_killed_study_keeps_its_finished_runs_in_the_summary(tmp_path, monkeypatch, capsys):
    """`dodo study` wrote summary.{json,txt} only after its last run: killed (or Ctrl-C) in its second
    run, it left no summary, and the rerun, which numbers its runs after the run_XXX already there,
    listed none of the runs the killed study had finished (seen in the sweep: run_000 completed,
    killed in run_001, rerun's summary = run_002..run_004 only). The summary is now rewritten
    after every run."""
    pytest.importorskip("torch")
    from cli_helpers import synthetic_preprocessed, tiny_study_base

    import dodo.training.train as training

    synthetic_preprocessed(tmp_path, cells=200)
    tiny_study_base(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: base.yaml\ntag: kill\noutput_root: {tmp_path / 'studies'}\n"
                    "grid: {training.lr: [1.0e-3, 2.0e-3, 3.0e-3]}\n")
    real_train, calls = training.train, []

    def killed_in_the_second_run(config, **kwargs):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does; SIGKILL stops at the same point, harder
        return real_train(config, **kwargs)

    monkeypatch.setattr(training, "train", killed_in_the_second_run)
    code, _, err = run(capsys, ["study", str(grid)])
    assert code == 130 and "interrupted" in err, err
    summary = tmp_path / "studies" / "kill" / "summary.json"
    rows = json.loads(summary.read_text())
    assert [(row["run"], row["status"]) for row in rows] == [("run_000", "completed")]
    assert "run_000" in (tmp_path / "studies" / "kill" / "summary.txt").read_text()

    monkeypatch.setattr(training, "train", real_train)
    code, _, err = run(capsys, ["study", str(grid)])
    assert code == 0, err
    rows = json.loads(summary.read_text())
    # run_001 was interrupted before it wrote anything: its empty directory is removed (round 23),
    # so the rerun's runs follow run_000 (a run killed outright keeps its directory, and the number).
    assert [row["run"] for row in rows] == ["run_000", "run_001", "run_002", "run_003"]
    assert all(row["status"] == "completed" for row in rows)


def test_main_restores_the_sigterm_disposition(capsys):
    """The SIGTERM handler is `dodo`'s only while a command runs: main() called from a program
    (tests, a notebook) leaves that program's disposition as it was."""
    from dodo.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["info"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    capsys.readouterr()
