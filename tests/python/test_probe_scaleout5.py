"""Outside probe, scale-out round five (the record: docs/reliability_python.md, "Scale-out probe, round five").

Each test failed on the code before its fix (its docstring says what that code did). The mpirun runs skip with
a reason where mpirun, an MPI compiler wrapper or mpi4py is missing.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mpi_helpers import mpi_environment, mpirun
from test_mpi_examples import build
from test_native_programs import PATHS

from dodo.models import default_model_path

#: A guard against a hang, not a timing: each job below ends in a few seconds.
GUARD_S = 300
#: Open MPI's own report of a rank's non-zero exit, which no rank can silence: left out of the lines counted.
LAUNCHER_WORDS = ("Primary job", "a non-zero exit code", "mpirun detected", "the job to be terminated",
                  "Process name", "Exit code")


def _own_lines(text: str) -> list:
    """The lines each starting a message (an indented line continues one: the ONNX Runtime libraries tried)."""
    return [line for line in text.splitlines() if line.strip() and not line[0].isspace() and
            not line.startswith("---") and not any(word in line for word in LAUNCHER_WORDS)]


# --- (d) dodo test under a launcher ----------------------------------------------------------------------------

def test_dodo_test_is_not_refused_under_mpirun_or_torchrun():
    """Before: `mpirun -n 2 dodo test` and `torchrun --nproc-per-node 2 -m dodo test` were refused in each process
    ("each rank would run the whole command: run dodo test as one process"), exit 2, although the check writes no
    file and is what a cluster user runs to check each node. Now it runs in each process and its summary names it."""
    from dodo._launcher import launched_process
    from dodo.cli import _mpi_replica_problem, _torchrun_replica_problem

    torchrun = {"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "2", "RANK": "1"}
    assert _torchrun_replica_problem("test", torchrun) is None
    assert _mpi_replica_problem("test", {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}) is None
    assert _torchrun_replica_problem("synth", torchrun) is not None  # a command that writes is still refused
    assert launched_process(torchrun) == "torchrun process 1 of 2"
    assert launched_process({"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2"}) == "MPI rank 2 of 3"
    assert launched_process({}) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mpirun on Linux")
def test_dodo_test_under_mpirun_checks_each_rank(tmp_path):
    command = mpirun(2) + [sys.executable, "-m", "dodo", "test"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=GUARD_S, env=mpi_environment(),
                            cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for rank in (0, 1):
        assert sum(line.endswith(f": OK (MPI rank {rank} of 2)") for line in output.splitlines()) == 1, output[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun's variables on Linux")
def test_dodo_test_in_a_torchrun_process_names_it(tmp_path):
    """torchrun's refusal depends on its variables alone: the process as torchrun starts it, without the rendezvous."""
    env = dict(os.environ, TORCHELASTIC_RUN_ID="probe", WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    result = subprocess.run([sys.executable, "-m", "dodo", "test"], capture_output=True, text=True,
                            timeout=GUARD_S, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].endswith(": OK (torchrun process 1 of 2)"), result.stdout


# --- (b) the MPI examples print an error every rank meets once -----------------------------------------------

@pytest.fixture(params=["c", "fortran"])
def example(request, tmp_path):
    assert PATHS["pkgconfig_dir"]
    return build(tmp_path, request.param)


def _launch(program, ranks, *arguments, rank_one_environment=None):
    if rank_one_environment is None:
        command = mpirun(ranks) + [str(program), *map(str, arguments)]
    else:  # rank 1 alone with other variables; exec keeps the process the rank
        settings = " ".join(f"{key}={value}" for key, value in rank_one_environment.items())
        script = (f'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then {settings} exec "$0" "$@"; else exec "$0" "$@"; fi')
        command = mpirun(ranks) + ["sh", "-c", script, str(program), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=GUARD_S, env=mpi_environment())


def test_an_error_every_rank_meets_is_printed_once(example, tmp_path):
    """Before: `mpirun -n 3 ./mpi_closure not_a_model.onnx` printed `rank 0: ...`, `rank 1: ...`, `rank 2: ...`,
    the same error three times (and the Fortran program `STOP 1` three times). Now: `all 3 ranks: ...` once."""
    junk = tmp_path / "not_a_model.onnx"
    junk.write_bytes(bytes(range(256)) * 8)
    result = _launch(example, 3, junk)
    assert result.returncode == 1
    lines = _own_lines(result.stdout + result.stderr)
    assert len(lines) == 1 and lines[0].startswith("all 3 ranks: dodo_"), lines
    assert "not an ONNX model" in lines[0], lines


def test_an_error_of_one_rank_alone_is_printed_by_that_rank(example):
    """Rank 1 alone cannot load ONNX Runtime (its DODO_ONNXRUNTIME_LIBRARY names no file): its line, no other."""
    result = _launch(example, 3, default_model_path(), rank_one_environment={"DODO_ONNXRUNTIME_LIBRARY": "/no/such.so"})
    assert result.returncode == 1
    lines = _own_lines(result.stdout + result.stderr)
    assert len(lines) == 1 and lines[0].startswith("rank 1: dodo_"), lines


# --- (a), (c) signals under mpirun -----------------------------------------------------------------------------

SMALL = ["--ncell", "16", "--nphi", "8", "--batch-size", "1"]
#: Rank 1's checks stall before the ranks meet (a hung file system), the others wait for it at the meeting;
#: each rank marks that it reached the meeting. The process is still the rank (python under mpirun).
STALLED_RANK_ONE = """
import os, runpy, sys, time
from dodo.qke import parallel

original = parallel.MPICommunicator.stop_together
mark_directory = sys.argv.pop(1)

def stop_together(self, error):
    open(os.path.join(mark_directory, f"meeting.{self.rank}"), "w").close()
    if self.rank == 1:
        time.sleep(600)
    return original(self, error)

parallel.MPICommunicator.stop_together = stop_together
runpy.run_module("dodo", run_name="__main__")
"""


def _needs_mpi4py():
    import importlib.util

    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install '.[mpi]' in the repository)")


def _wait_for(path, launcher, deadline_s=GUARD_S):
    import time

    deadline = time.monotonic() + deadline_s
    while not path.exists():
        if launcher.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{path.name} never appeared:\n" + launcher.communicate()[0][-3000:])
        time.sleep(0.1)


def _ended(launcher, what):
    try:
        return launcher.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        launcher.kill()
        pytest.fail(f"the job did not end after {what}:\n" + launcher.communicate()[0][-3000:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mpirun and signals on Linux")
def test_sigterm_to_a_rank_waiting_for_the_others_stops_the_job(tmp_path):
    """Before: rank 0, waiting in the ranks' meeting (MPI's allgather) for rank 1 whose checks stalled, ran no
    Python signal handler until the call returned: `kill PID` of rank 0 did nothing and the job waited for ever.
    Now the ranks meet at a non-blocking barrier tested between short sleeps: rank 0 stops the job at once."""
    _needs_mpi4py()
    script = tmp_path / "stalled.py"
    script.write_text(STALLED_RANK_ONE)
    command = mpirun(3) + [sys.executable, str(script), str(tmp_path), "simulate", str(tmp_path / "out.h5"),
                           "--random", "3", "--seed", "1", *SMALL]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=mpi_environment(), cwd=tmp_path)
    _wait_for(tmp_path / "meeting.1", launcher)
    _wait_for(tmp_path / "meeting.0", launcher)
    import time

    time.sleep(1)  # into the meeting (were it a little earlier, the same handler runs)
    ranks = subprocess.run(["pgrep", "-f", f"{script}"], capture_output=True, text=True).stdout.split()
    rank_zero = [p for p in map(int, ranks) if _rank_of(p) == 0]
    assert rank_zero, ranks
    os.kill(rank_zero[0], 15)
    output = _ended(launcher, "SIGTERM to rank 0")
    assert launcher.returncode != 0
    assert "dodo simulate: terminated; stopping all 3 ranks" in output, output[-3000:]


def _rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for entry in handle.read().split(b"\0"):
                if entry.startswith(b"OMPI_COMM_WORLD_RANK="):
                    return int(entry.split(b"=", 1)[1])
    except OSError:
        return None
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mpirun and signals on Linux")
@pytest.mark.parametrize("stop", ["Ctrl-C on mpirun", "rank 1 killed"])
def test_the_launcher_stopping_the_job_gives_one_line_and_no_abort(tmp_path, stop):
    """Before: Ctrl-C on mpirun (which sends SIGTERM to every rank) or a rank killed (Open MPI then sends SIGTERM
    to the others) made every rank still running print `dodo simulate: terminated; stopping all 3 ranks` and call
    MPI_Abort (Open MPI's `MPI_ABORT was invoked ... errorcode 143` page), as if a user had stopped each. Now a
    rank tells the launcher's signal (sent by its parent, mpirun) from a user's: rank 0 prints one line, no rank
    aborts, each ends at once."""
    _needs_mpi4py()
    script = tmp_path / "stalled.py"
    script.write_text(STALLED_RANK_ONE)  # the job holds still (ranks 0 and 2 at the meeting, rank 1 asleep)
    command = mpirun(3) + [sys.executable, str(script), str(tmp_path), "simulate", str(tmp_path / "out.h5"),
                           "--random", "3", "--seed", "1", *SMALL]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=mpi_environment(), cwd=tmp_path)
    for rank in (0, 1, 2):
        _wait_for(tmp_path / f"meeting.{rank}", launcher)
    if stop == "Ctrl-C on mpirun":
        launcher.send_signal(2)
    else:
        ranks = subprocess.run(["pgrep", "-f", f"{script}"], capture_output=True, text=True).stdout.split()
        os.kill([p for p in map(int, ranks) if _rank_of(p) == 1][0], 9)
    output = _ended(launcher, stop)
    assert launcher.returncode != 0
    dodo_lines = [line for line in output.splitlines() if line.startswith("dodo simulate")]
    assert len(dodo_lines) == 1, output[-3000:]
    assert dodo_lines[0].startswith("dodo simulate: terminated by the launcher, mpirun (pid "), dodo_lines
    assert "MPI_ABORT was invoked" not in output, output[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals' senders on Linux")
def test_the_core_records_who_sent_a_signal():
    """What tells the launcher's SIGTERM from a user's: the pid of the sender, recorded by a handler that wraps
    Python's (which it still runs); a signal at its default action is not wrapped."""
    import signal

    from dodo import _core

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        assert _core._record_signal_senders([int(signal.SIGUSR1), int(signal.SIGUSR2)]) == [int(signal.SIGUSR1)]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _core._signal_sender(int(signal.SIGUSR1)) == os.getpid()
        child = subprocess.Popen([sys.executable, "-c", f"import os; os.kill({os.getpid()}, {int(signal.SIGUSR1)})"])
        child.wait(timeout=GUARD_S)
        assert _core._signal_sender(int(signal.SIGUSR1)) == child.pid
    finally:
        signal.signal(signal.SIGUSR1, previous)
