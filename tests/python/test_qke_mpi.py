"""Issue 12: ``dodo simulate`` over MPI ranks. The batches are the ones a single process runs, shared
out by estimated cost; the rows are identical bit for bit to a single-process run; a killed job
resumes from the ranks' checkpoints with the same or another number of ranks; rank 0 writes the
file. The mpirun runs skip with a reason where mpirun or mpi4py is missing (CI installs both)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from mpi_helpers import mpi_environment, mpirun, skip_without  # noqa: E402

from dodo.qke import parallel  # noqa: E402
from dodo.qke.campaign import simulate_states  # noqa: E402
from dodo.qke.solver import SolverConfig  # noqa: E402

CONFIG = SolverConfig(ncell=16, nphi_equator=8, seed=4)
BATCH = 2


def cheap_states() -> np.ndarray:
    """Five crossing states of different (small) cost: nu_e along +z against nubar_e along -z."""
    states = np.zeros((5, 6, 4))
    for i, (fnu, fnubar) in enumerate([(0.25, 0.3), (1 / 3, 1 / 3), (0.4, 0.2), (0.3, 0.45), (0.2, 0.25)]):
        states[i, 0] = [1.0, 0, 0.02 * i, fnu]
        states[i, 3] = [1.0 + 0.05 * i, 0, 0, -fnubar]
        states[i, [1, 2, 4, 5], 0] = 0.1
    return states * 1e33


def rows(path) -> dict:
    """Every dataset of an output file (the rows; attributes such as timestamps aside)."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


def assert_same_rows(a, b):
    left, right = rows(a), rows(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert np.array_equal(left[name], right[name]), name


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("serial") / "serial.h5")
    results = simulate_states(cheap_states(), output, CONFIG, batch_size=BATCH, report=lambda message: None,
                              communicator=parallel.SerialCommunicator())
    assert results["done"].all() and results["valid"].sum() >= 3
    return output


class Killed(Exception):
    pass


class KilledRank(parallel.SerialCommunicator):
    """Rank `rank` of `size`, killed after its last batch (before the results are gathered)."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size
        self.gathered = 0

    def gather(self, value, root=0):
        self.gathered += 1
        if self.gathered == 1:  # the ranks' agreement on states and settings, at the start
            return [value] * self.size
        raise Killed


def run_states(output, communicator, report=lambda message: None):
    return simulate_states(cheap_states(), output, CONFIG, batch_size=BATCH, report=report, communicator=communicator)


def killed_run(output: str, rank: int, size: int) -> None:
    with pytest.raises(Killed):
        run_states(output, KilledRank(rank, size))
    assert os.path.exists(f"{output}.partial.rank{rank}.npz") and not os.path.exists(output)


def test_batches_do_not_depend_on_progress_and_ranks_share_them_by_cost():
    cost = np.array([5.0, 1.0, 3.0, 2.0, 8.0, 1.0, 4.0])
    batches = parallel.plan_batches(cost, np.ones(7, bool), 2)
    assert [list(b) for b in batches] == [[1, 5], [3, 2], [6, 0], [4]]
    eligible = np.ones(7, bool)
    eligible[4] = False  # dropped by --max-cost: the only change to the plan
    assert [list(b) for b in parallel.plan_batches(cost, eligible, 2)] == [[1, 5], [3, 2], [6, 0]]
    owner = parallel.assign_batches([8.0, 5.0, 4.0, 3.0, 1.0], 2)
    assert list(owner) == [0, 1, 1, 0, 1]  # loads 11 and 10
    assert list(parallel.assign_batches([1.0, 2.0], 4)) == [1, 0]
    assert list(parallel.assign_batches([1.0, 2.0], 1)) == [0, 0]


def test_launcher_detection_and_a_clear_error_without_mpi4py(monkeypatch):
    assert parallel.launched_size({}) == 1
    assert parallel.launched_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert parallel.launched_size({"PMI_SIZE": "3"}) == 3
    assert parallel.launched_size({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8"}) == 8  # srun -n 8
    assert parallel.launched_size({"SLURM_NTASKS": "8"}) == 1  # a batch script outside srun: one process
    assert parallel.launched_size({"SLURM_STEP_ID": "4294967294", "SLURM_STEP_NUM_TASKS": "8"}) == 1  # batch step
    assert isinstance(parallel.world({"OMPI_COMM_WORLD_SIZE": "1"}), parallel.SerialCommunicator)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as when it is not installed
    with pytest.raises(RuntimeError, match=r"started as 2 MPI ranks, but mpi4py is not installed: pip install"):
        parallel.world({"OMPI_COMM_WORLD_SIZE": "2"})


def test_killed_ranks_resume_in_one_process_with_identical_rows(tmp_path, single_process):
    output = str(tmp_path / "resumed.h5")
    killed_run(output, 1, 3)  # of a 3-rank job only rank 1 finished its batch
    killed_run(output, 0, 2)  # then of a 2-rank job only rank 0
    held = [np.load(f"{output}.partial.rank{rank}.npz")["indices"] for rank in (1, 0)]
    assert 0 < len(held[0]) <= BATCH and 0 < len(held[1]) <= BATCH  # each holds its own rows only
    assert not set(held[0]) & set(held[1])
    messages = []
    simulate_states(cheap_states(), output, CONFIG, batch_size=BATCH, report=messages.append,
                    communicator=parallel.SerialCommunicator())
    assert messages[0].startswith("resuming: ") and not messages[0].startswith("resuming: 0/")
    assert_same_rows(single_process, output)
    assert sorted(os.listdir(tmp_path)) == ["resumed.h5"]  # every rank's checkpoint removed


def run_simulate_under_mpi(nranks, output):
    if importlib.util.find_spec("mpi4py") is None:
        skip_without("mpi4py is not installed (pip install '.[mpi]' in the repository)")
    script = ("import sys, numpy as np; sys.path.insert(0, sys.argv[2]); import test_qke_mpi as t; "
              "from dodo.qke.campaign import simulate_states; "
              "simulate_states(t.cheap_states(), sys.argv[1], t.CONFIG, batch_size=t.BATCH, report=print)")
    command = mpirun(nranks) + [sys.executable, "-c", script, output, os.path.dirname(__file__)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=mpi_environment())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_two_ranks_give_the_single_process_rows_bit_for_bit(tmp_path, single_process):
    output = str(tmp_path / "mpi.h5")
    log = run_simulate_under_mpi(2, output)
    assert "[rank 0/2]" in log and "[rank 1/2]" in log  # both ranks simulated batches
    assert_same_rows(single_process, output)
    assert sorted(os.listdir(tmp_path)) == ["mpi.h5"]


def test_a_killed_three_rank_job_resumes_on_two_ranks(tmp_path, single_process):
    output = str(tmp_path / "mpi_resumed.h5")
    killed_run(output, 0, 3)
    log = run_simulate_under_mpi(2, output)
    assert "resuming: " in log
    assert_same_rows(single_process, output)
    assert sorted(os.listdir(tmp_path)) == ["mpi_resumed.h5"]


def test_a_checkpoint_in_the_earlier_every_state_layout_still_resumes(tmp_path, single_process):
    output = str(tmp_path / "old.h5")

    def stop_after_first_batch(message):
        if "states done" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_states(output, parallel.SerialCommunicator(), report=stop_after_first_batch)
    stored = dict(np.load(output + ".partial.npz", allow_pickle=True))
    rows, fingerprint = stored.pop("indices"), stored.pop("fingerprint")
    stored.pop("max_cost")  # recorded since round 34; the earlier layout had no such entry
    nstates = len(cheap_states())
    every_state = {}
    for key, value in stored.items():  # the layout before checkpoints held only their rows
        every_state[key] = np.zeros((nstates,) + value.shape[1:], value.dtype)
        every_state[key][rows] = value
    with open(output + ".partial.npz", "wb") as stream:
        np.savez(stream, fingerprint=fingerprint, **every_state)
    messages = []
    run_states(output, parallel.SerialCommunicator(), report=messages.append)
    assert messages[0].startswith(f"resuming: {len(rows)}/{nstates}")
    assert_same_rows(single_process, output)


def test_a_job_refused_on_rank_zero_leaves_no_lock_behind(tmp_path):
    """Rank 0 takes OUT's lock, then refuses the job (here --linear-only, which runs in one
    process) and stops every rank with MPI_Abort. That call does not return, so the lock was left
    beside OUT and refused every later run on it (solver probe, round three)."""
    if importlib.util.find_spec("mpi4py") is None:
        skip_without("mpi4py is not installed (pip install '.[mpi]' in the repository)")
    command = mpirun(2) + [sys.executable, "-m", "dodo", "simulate", "out.h5", "--random", "2", "--seed", "1",
                           "--linear-only"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=mpi_environment(),
                            cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--linear-only runs in one process" in result.stderr
    assert os.listdir(tmp_path) == []
