"""Commands started by an MPI launcher: only `dodo simulate` shares its work over the ranks.

`mpirun -n 2 dodo apply` (score, synth, preprocess, export ...) ran the whole command in every rank,
the same work twice and the same -o file written by both, without a word; each rank is now refused
in one line. A child process that a rank's own program starts (a transport code or a Python driver
calling `subprocess.run(["dodo", ...])`) inherits the launcher's variables but is no rank: it runs as
one process (`dodo simulate` there failed in Open MPI's MPI_Init, "ompi_rte_init failed").
The mpirun cases skip where mpirun is missing (CI installs it: DODO_REQUIRE_MPI=1 makes that a failure).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


from mpi_helpers import mpi_environment, mpirun

from dodo import cli
from dodo.qke import parallel

EMU_FILE = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"


def test_a_rank_is_refused_every_command_but_simulate():
    """The decision from the environment alone (no launcher above this test process, so the
    variables are taken at their word, as a rank's)."""
    for environ in ({"OMPI_COMM_WORLD_SIZE": "2"}, {"PMI_SIZE": "3"},
                    {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}):
        for command in ("apply", "score", "synth", "preprocess", "export", "train", "train-ensemble"):
            problem = cli._mpi_replica_problem(command, environ)
            assert problem and "only dodo simulate shares its work over MPI ranks" in problem, (command, environ)
            assert f"run dodo {command} as one process" in problem and "unset it" in problem
        assert cli._mpi_replica_problem("simulate", environ) is None
        assert cli._mpi_replica_problem("info", environ) is None
    assert "torchrun" in cli._mpi_replica_problem("train", {"OMPI_COMM_WORLD_SIZE": "2"})
    for environ in ({}, {"OMPI_COMM_WORLD_SIZE": "1"}, {"PMI_SIZE": "x"}):
        assert cli._mpi_replica_problem("apply", environ) is None


def test_no_launcher_above_this_process_means_no_rank_program():
    """pytest's ancestors hold no mpirun: the walk finds no launcher and says nothing."""
    assert parallel.rank_program_above() is None
    assert parallel.rank_program_above(pid=999_999_999) is None  # no such process: /proc cannot tell


def _run_under_mpirun(tmp_path, argv, timeout=300):
    completed = subprocess.run(mpirun(2) + argv, capture_output=True, text=True, cwd=tmp_path,
                               env=mpi_environment(), timeout=timeout)
    return completed.returncode, completed.stdout, completed.stderr


def test_mpirun_of_a_one_process_command_refuses_each_rank_in_one_line(tmp_path):
    code, out, err = _run_under_mpirun(tmp_path, [sys.executable, "-m", "dodo", "score", "box3d", str(EMU_FILE)])
    assert code != 0
    # (mpirun ends the job when the first rank exits non-zero: the other's line may not come.)
    refusals = [line for line in err.splitlines() if line.startswith("dodo score: error:")]
    assert len(refusals) >= 1, err
    assert all("one of 2 ranks (OMPI_COMM_WORLD_SIZE=2)" in line for line in refusals)
    assert "bootstrap CI" not in out  # no rank scored
    # Through a job script's shell the process is still a rank.
    code, _, err = _run_under_mpirun(tmp_path, ["bash", "-c", f"exec env {sys.executable} -m dodo score box3d "
                                                              f"{EMU_FILE} || exit $?"])
    assert code != 0 and err.count("dodo score: error: started by an MPI launcher") >= 1, err


def test_dodo_started_by_a_ranks_own_program_runs_as_one_process(tmp_path):
    """A Python driver of two ranks runs `dodo score` and a tiny `dodo simulate` from rank 0 as child
    processes: both complete, the simulation's file is written, and the score is printed."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os, subprocess, sys
        if os.environ["OMPI_COMM_WORLD_RANK"] == "0":
            score = subprocess.run([sys.executable, "-m", "dodo", "score", "box3d", {str(EMU_FILE)!r}],
                                   capture_output=True, text=True)
            print("score", score.returncode, score.stdout.count("bootstrap CI"), score.stderr.strip()[-300:])
            sim = subprocess.run([sys.executable, "-m", "dodo", "simulate", "--random", "1", "--ncell", "16",
                                  "--nphi", "8", "-q", "-o", "child.h5"], capture_output=True, text=True)
            print("simulate", sim.returncode, sim.stderr.strip()[-300:])
    """))
    code, out, err = _run_under_mpirun(tmp_path, [sys.executable, str(driver)])
    assert code == 0, err
    score_line = next(line for line in out.splitlines() if line.startswith("score"))
    assert score_line.split()[1] == "0" and int(score_line.split()[2]) >= 1, out
    simulate_line = next(line for line in out.splitlines() if line.startswith("simulate"))
    assert simulate_line.split()[1] == "0", out
    assert (tmp_path / "child.h5").exists() and os.path.getsize(tmp_path / "child.h5") > 0
