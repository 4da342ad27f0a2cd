"""Data-loss and hang probe, round two (outside probe; docs/reliability_python.md, section 48).

Each test failed against the code before its fix; its docstring says what that code did. The
campaign tests use the scripts in a scratch repository with a stand-in `dodo` (cli_helpers'
stand_in_venv) that waits for the test's word, so that "a campaign is running" is a fact, not a
timing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import stand_in_venv

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 60  # only a guard against a hang: the stand-in chunks end as soon as the test says so

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX locks; the campaign scripts are bash scripts for Linux")
needs_flock = pytest.mark.skipif(not any(Path(d, "flock").exists() for d in ("/usr/bin", "/bin")),
                                 reason="the campaign scripts' lock is flock(1) of util-linux")


def _wait_for(path: Path, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.02)


@pytest.fixture()
def scripts_copy(tmp_path):
    """The campaign scripts in a scratch repository; a `dodo` that logs its call, says it started
    (file `started`), and waits until the file `go` exists (at most HANG_GUARD_S), then exits 0."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("qke_campaign.sh", "relabel_growth.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    log, started, go = tmp_path / "calls.txt", tmp_path / "started", tmp_path / "go"
    venv = stand_in_venv(tmp_path, f"echo \"$*\" >> {log}\ntouch {started}\n"
                                   f"for i in $(seq {HANG_GUARD_S * 20}); do [ -e {go} ] && exit 0; sleep 0.05; done\n"
                                   "exit 3")
    env = dict(os.environ, DODO_VENV=str(venv), DODO_CAMPAIGN_DIR=str(tmp_path / "chunks"), DODO_CAMPAIGN_NICE="0")
    (tmp_path / "plan.txt").write_text("emu 1 3\n")
    return repo, env, log, started, go


def _script(repo: Path, env: dict, name: str, *args, background: bool = False):
    command = ["bash", str(repo / "scripts" / name), *args]
    if background:
        with open(repo.parent / f"{name}.{time.monotonic_ns()}.stderr", "w") as stderr:  # no pipe left open
            process = subprocess.Popen(command, cwd=repo.parent, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        process.stderr_path = Path(stderr.name)
        return process
    return subprocess.run(command, cwd=repo.parent, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@needs_flock
def test_a_second_campaign_on_the_same_directory_is_refused_at_once(scripts_copy):
    """Two `qke_campaign.sh` on one DODO_CAMPAIGN_DIR at once (the command typed twice): the second
    ran the plan's chunks beside the first one's (twice JOBS solver processes), every chunk the
    first held was refused by its lock and reported as "chunk ... failed (exit 2); rerun to retry",
    and both campaigns ended with exit 123 although every chunk finished (probe: 4 chunks, JOBS 2,
    A and B both 123). Now the second stops at once, exit 2, one line; its `dodo` never starts; the
    first ends 0; a campaign after it runs."""
    repo, env, log, started, go = scripts_copy
    first = _script(repo, env, "qke_campaign.sh", "1", "plan.txt", background=True)
    try:
        _wait_for(started, "the first campaign's chunk")
        second = _script(repo, env, "qke_campaign.sh", "1", "plan.txt")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another qke_campaign.sh" in lines[0] and "chunks" in lines[0], second.stderr
        assert len(_calls(log)) == 1  # the first campaign's chunk only
    finally:
        go.touch()
        assert first.wait(timeout=HANG_GUARD_S) == 0, first.stderr_path.read_text()
    third = _script(repo, env, "qke_campaign.sh", "1", "plan.txt")  # the lock went with the first campaign
    assert third.returncode == 0, third.stderr
    assert len(_calls(log)) == 2
    assert sorted(os.listdir(env["DODO_CAMPAIGN_DIR"])) == []  # no lock file left in the campaign's directory


@needs_flock
def test_a_rerun_while_the_chunks_of_a_killed_campaign_still_run_is_refused(scripts_copy):
    """SIGKILL of the campaign's command (`kill -9`, the OOM killer): the campaign runs on in its own
    session (scripts/own_session.sh), its chunks too. The documented "rerun the same command to
    continue" then started every chunk again beside them: one "failed; rerun to retry" per chunk
    still running, exit 123 (probe: 2 such chunks). Now the rerun is refused in one line while any
    chunk of the killed campaign runs, and runs once they ended."""
    repo, env, log, started, go = scripts_copy
    first = _script(repo, env, "qke_campaign.sh", "1", "plan.txt", background=True)
    try:
        _wait_for(started, "the first campaign's chunk")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=HANG_GUARD_S)
        rerun = _script(repo, env, "qke_campaign.sh", "1", "plan.txt")
        assert rerun.returncode == 2 and "another qke_campaign.sh" in rerun.stderr, rerun.stderr
        assert len(_calls(log)) == 1
    finally:
        go.touch()
    deadline = time.monotonic() + HANG_GUARD_S
    while True:  # the orphaned chunk ends when told; then the lock is free
        rerun = _script(repo, env, "qke_campaign.sh", "1", "plan.txt")
        if rerun.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rerun.returncode == 0, rerun.stderr


@needs_flock
def test_a_second_relabelling_into_the_same_directory_is_refused_at_once(scripts_copy):
    """`relabel_growth.sh` twice at once on one campaign: as the campaign above, both labelled the same
    chunks side by side and the second reported each chunk the first held as failed. Now the second
    stops at once, exit 2, one line; the first ends 0."""
    h5py = pytest.importorskip("h5py")
    repo, env, log, started, go = scripts_copy
    chunks = Path(env["DODO_CAMPAIGN_DIR"])
    chunks.mkdir()
    with h5py.File(chunks / "emu_seed1.h5", "w") as handle:
        handle.attrs["complete"] = True
    first = _script(repo, env, "relabel_growth.sh", "1", background=True)
    try:
        _wait_for(started, "the first relabelling's chunk")
        second = _script(repo, env, "relabel_growth.sh", "1")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another relabel_growth.sh" in lines[0], second.stderr
        assert len(_calls(log)) == 1
    finally:
        go.touch()
        assert first.wait(timeout=HANG_GUARD_S) == 0, first.stderr_path.read_text()


# --- an output a running `dodo simulate` holds, written by another command ----------------------------------

_HOLDER = """
import sys
from dodo._atomic import exclusive_output
with exclusive_output(sys.argv[1], "dodo simulate"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes the pipe
"""


@pytest.fixture()
def simulate_lock_held():
    """Hold OUT's output lock in a child process as a running `dodo simulate OUT` does (exclusive_output,
    the function the solver calls), until the test ends."""
    holders = []

    def hold(path: Path):
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder

    yield hold
    for holder in holders:
        holder.stdin.close()
        holder.wait(timeout=HANG_GUARD_S)
        holder.stdout.close()


def test_a_file_a_running_simulate_writes_is_not_replaced_by_another_command(tmp_path, capsys, simulate_lock_held):
    """`dodo synth -o OUT` (or export, preprocess, apply -o, any --json report) while `dodo simulate
    OUT` runs: only simulate and qke.validate took the output's lock, so the other command wrote OUT
    (exit 0), and the solver's next batch replaced it without a word (or, the other command ending
    last, its rename replaced the solver's finished database). Now every command refuses, before any
    work, a file whose lock another process holds: exit 2, one line naming the holder."""
    from cli_helpers import run

    pytest.importorskip("h5py")
    out = tmp_path / "run.h5"
    holder = simulate_lock_held(out)
    code, _, err = run(capsys, ["synth", "-o", str(out), "-n", "5", "-q"])
    assert code == 2 and err.count("\n") == 1, err
    assert f"being written by another dodo simulate (pid {holder.pid})" in err, err  # the lock names its command
    assert not out.exists()
    assert [name for name in os.listdir(tmp_path) if not name.startswith(".run.h5.lock")] == []  # no temporary left


def test_a_write_that_began_before_the_simulate_is_refused_at_its_rename(tmp_path, simulate_lock_held):
    """The same race the other way round: a writer that passed its checks before the solver took the
    lock renamed its file over the solver's output at its end. atomic_path checks the lock again just
    before the rename: refused, the earlier file byte for byte, the temporary removed. The lock's own
    holder still writes (the solver's batches)."""
    from dodo._atomic import OutputInUseError, atomic_path, exclusive_output

    out = tmp_path / "run.h5"
    out.write_bytes(b"the solver's database")
    with pytest.raises(OutputInUseError, match=r"being written by another dodo simulate \(pid \d+\)"):
        with atomic_path(out) as temporary:
            temporary.write_bytes(b"another command's file")
            simulate_lock_held(out)
    assert out.read_bytes() == b"the solver's database"
    assert sorted(os.listdir(tmp_path)) == [".run.h5.lock", "run.h5"]
    other = tmp_path / "own.h5"
    with exclusive_output(other, "dodo simulate"):
        with atomic_path(other) as temporary:
            temporary.write_bytes(b"a batch")
    assert other.read_bytes() == b"a batch"


def test_the_other_ranks_of_an_mpi_simulate_do_not_refuse_rank_zeros_lock(tmp_path, capsys, monkeypatch,
                                                                          simulate_lock_held):
    """Guard of the check above under MPI: rank 0 alone takes the job's lock on OUT; ranks above 0
    check the output too, at the same time, and must not take rank 0's lock for another writer's
    (they would stop the job: "OUT is being written by another dodo simulate (pid of rank 0)"). Not
    a defect of released code: found in review of the check, before its commit."""
    pytest.importorskip("h5py")
    from cli_helpers import run
    from dodo.qke import campaign, parallel

    class RankOne(parallel.SerialCommunicator):
        rank, size = 1, 2

        def abort(self, code):
            raise SystemExit(code)

    reached = []

    def stand_in(*args, **kwargs):  # the engine: past every check of the command
        reached.append(True)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(parallel, "world", lambda *args, **kwargs: RankOne())
    monkeypatch.setattr(campaign, "simulate_states", stand_in)
    out = tmp_path / "run.h5"
    simulate_lock_held(out)  # rank 0, as far as this rank can tell
    code, _, err = run(capsys, ["simulate", str(out), "--random", "1", "--ncell", "16", "--nphi", "8", "--quiet"])
    assert reached and "stopped by the test" in err and "being written" not in err, err


# --- lock files that are not regular files ------------------------------------------------------------------

def _dodo(*args, cwd) -> subprocess.CompletedProcess:
    """`dodo ARGS` in a child (a hang is a failure after HANG_GUARD_S, never a stuck test run)."""
    return subprocess.run([sys.executable, "-m", "dodo", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)


def test_a_fifo_under_an_outputs_lock_name_is_refused_not_waited_on(tmp_path):
    """A FIFO named `.OUT.lock` beside OUT: `dodo simulate OUT` opened it with open(lock, "a") and
    waited for a reader for ever (SIGTERM the only way out). Now refused in one line naming the lock
    file; another command's write of OUT is not held up by it (no lock of dodo's); a directory of
    that name is named as the lock file, not as "cannot create a file in DIR: Is a directory"."""
    pytest.importorskip("h5py")
    os.mkfifo(tmp_path / ".run.h5.lock")
    small = ["--random", "1", "--ncell", "16", "--nphi", "8", "--quiet"]
    result = _dodo("simulate", "run.h5", *small, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "its lock file" in result.stderr and "is a FIFO (named pipe)" in result.stderr, result.stderr
    assert _dodo("synth", "-o", "run.h5", "-n", "5", "-q", cwd=tmp_path).returncode == 0
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".run.h5.lock").mkdir()
    result = _dodo("simulate", "d/run.h5", *small, cwd=tmp_path)
    assert result.returncode == 2 and "its lock file" in result.stderr and "is a directory" in result.stderr, \
        result.stderr


def test_a_symbolic_link_under_a_lock_name_does_not_truncate_its_target(tmp_path):
    """`.OUT.lock` (dodo simulate's) or a checkpoint directory's `.dodo.lock` (dodo train's) that is a
    symbolic link (planted in a shared directory, or a run directory made of links to another run's
    files): the lock was opened with open(path, "a+") and the holder truncated it and wrote its pid,
    so the link's target lost its contents (shown: a text file became `23118`). Now the link is
    refused in one line, its target byte for byte."""
    from dodo._atomic import exclusive_directory, exclusive_output

    precious = tmp_path / "notes.txt"
    precious.write_text("a user's notes\n")
    (tmp_path / ".run.h5.lock").symlink_to(precious)
    with pytest.raises(ValueError, match="its lock file .* is a symbolic link"):
        with exclusive_output(tmp_path / "run.h5", "dodo simulate"):
            pass
    run_directory = tmp_path / "ck"
    run_directory.mkdir()
    (run_directory / ".dodo.lock").symlink_to(precious)
    with pytest.raises(ValueError, match=r"\.dodo\.lock is a symbolic link \(to .*notes.txt\)"):
        with exclusive_directory(run_directory, "dodo train"):
            pass
    assert precious.read_text() == "a user's notes\n"


# --- a report file and a standard output that goes away ----------------------------------------------------

@pytest.mark.parametrize("stdout", ["closed pipe", "/dev/full"])
def test_a_json_report_is_written_when_standard_output_fails(tmp_path, stdout):
    """`dodo score M F --json r.json | head -1` (the reader gone before the table is printed) and
    `> /dev/full`: the table was printed before the report was written, so the command ended at the
    print (exit 141 quietly, or one line and 2) and r.json was never written: the scoring was lost.
    Now the report is written first (`_cli_common.emit`, also evaluate and inspect), then the table."""
    if stdout == "/dev/full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    pytest.importorskip("h5py")
    assert _dodo("synth", "-o", "syn.h5", "-n", "20", "-q", cwd=tmp_path).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the table
    try:
        with open(write_end, "wb", closefd=False) if stdout == "closed pipe" else open("/dev/full", "wb") as sink:
            result = subprocess.run([sys.executable, "-m", "dodo", "score", "default", "syn.h5", "--json", "r.json"],
                                    cwd=tmp_path, stdout=sink, stderr=subprocess.PIPE, text=True,
                                    timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    assert result.returncode == (141 if stdout == "closed pipe" else 2), result.stderr
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dodo_report"] == "dodo score", sorted(report)


def test_the_emu32_validation_writes_its_report_before_printing_its_summary(tmp_path, monkeypatch):
    """`python -m dodo.qke.validate emu32 --json r.json | head -1`: the summary was printed at the end of
    the validation, before r.json was written, so a reader that went away (or a full standard output)
    ended the command there and the report of the finished validation was lost. Now --json is
    written first. (The validation itself is a stand-in here: only the order is under test; the
    reference is a scratch file, never the held-out validation file.)"""
    pytest.importorskip("h5py")
    import io
    import json

    from dodo.qke import validate

    order = []

    def stand_in(*args, print_summary=True, **kwargs):
        report = {"nstates": 32, "nvalid": 32, "per_state_error": [0.0] * 32}
        if print_summary:  # as validate_emu32 does
            print(json.dumps({key: value for key, value in report.items() if key != "per_state_error"}, indent=1))
        return report

    class GoneReader(io.StringIO):
        def write(self, text):
            order.append("print")
            raise BrokenPipeError(32, "Broken pipe")

    real_write = validate.write_json_atomic
    monkeypatch.setattr(validate, "validate_emu32", stand_in)
    monkeypatch.setattr(validate, "write_json_atomic", lambda *a, **k: (order.append("json"), real_write(*a, **k)))
    monkeypatch.setattr(sys, "stdout", GoneReader())
    reference = tmp_path / "reference.h5"
    reference.write_bytes(b"")
    code = validate.main(["emu32", "--reference", str(reference), "--output", str(tmp_path / "v.h5"),
                          "--json", str(tmp_path / "r.json")])
    assert order[:1] == ["json"], order
    assert code == 141
    assert json.loads((tmp_path / "r.json").read_text())["nvalid"] == 32
