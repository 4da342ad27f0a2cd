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
    from dodo.cli import _mpi_replica_problem, _torchrun_replica_problem, launched_process

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
