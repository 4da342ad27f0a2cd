"""Outside probe, scale-out round two (docs/reliability_python.md, "Scale-out probe, round two").

Each test failed on the code before its fix (its docstring says what that code did). The round's
findings: two processes of `torchrun -m dodo train` given different data files hung the whole job in
mismatched collectives; the C MPI example gave a rank bound to one core as many workers as the
node's cores divided by its ranks; the Fortran MPI example without an argument said it could not read
the model package "" instead of its usage.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mpi_helpers import mpi_environment, skip_without


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; none where it cannot tell)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            children = [int(word) for word in listing.read().split()]
    except (OSError, ValueError):
        return []
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _run_guarded(command, guard_s, **options):
    """``command`` in its own session; killed (all of it) and reported as a hang past ``guard_s``."""
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           text=True, start_new_session=True, **options)
    try:
        output, _ = job.communicate(timeout=guard_s)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in sessions of their own: each descendant is killed by its id.
        for pid in [job.pid] + _descendants(job.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            output, _ = job.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            output = "(no output: a descendant still holds the pipe)"
        pytest.fail(f"still running {guard_s} s later (a hang): {' '.join(map(str, command))}\n{output[-3000:]}")
    return job.returncode, output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun with a POSIX shell wrapper")
@pytest.mark.parametrize("case", ["other row count", "same row count, other rows and learning rate"])
def test_torchrun_processes_given_different_data_stop_with_one_line_each(tmp_path, case):
    """Before: `torchrun --nproc-per-node 2 --no-python sh -c 'dodo train --config c$RANK.yaml'` with
    process 1's config naming a file of 300 rows beside process 0's 400 (a node's stale copy): both
    logged the start, then process 1 ran out of batches first and entered the validation all-reduce
    while process 0 sat in DDP's gradient all-reduce: no output, no end (killed by the probe's
    5-minute guard; SIGTERM to torchrun needed its 30 s SIGKILL). A file of the same row count but
    other rows, or a config with another learning rate, trained without a word (the gradients
    averaged over two data sets, each optimiser stepping by its own rate; fixed by the lead after the
    round). Now the processes compare the data file's SHA-256, the split sizes and the settings that
    make the model (then, as a second line of defence, the training rows, global batch size and batch
    count) before any work: each stops with one line naming the difference, within seconds."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("h5py")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend (torch.distributed)")
    from training_helpers import synth_and_preprocess, write_training_config

    same_rows = case.startswith("same")
    configs = []
    for rank, rows in enumerate((400, 400 if same_rows else 300)):
        folder = tmp_path / f"data{rank}"
        folder.mkdir()
        data = synth_and_preprocess(folder, rows, seed=3 + rank)
        lr = 3e-3 if rank == 0 or not same_rows else 1e-3
        configs.append(write_training_config(tmp_path / f"c{rank}.yaml", data, tmp_path / "run",
                                             training={"epochs": 3, "lr": lr, "threads": 1, "seed": 1,
                                                       "log_interval": 100000, "device": "cpu"}))
    script = f'exec "{sys.executable}" -m dodo train --config "{tmp_path}/c$RANK.yaml"'
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--no-python", "sh", "-c", script]
    code, output = _run_guarded(command, 180, env=dict(os.environ, OMP_NUM_THREADS="1"))  # a guard: ~10 s now
    assert code != 0, output[-3000:]
    # One line from each process; counted in the whole output, since the two processes write their
    # stderr lines at the same moment and torchrun's log may interleave them within a line.
    assert output.count("do not train on the same data") == 2, output[-3000:]
    line = output[output.index("do not train on the same data"):].split("identical copies)")[0]
    assert "data file SHA-256: " in line and " in process 1" in line, line
    if same_rows:
        assert "split sizes" not in line and "training.lr: 0.003 in process 0, 0.001 in process 1" in line, line
        assert "training.epochs" not in line, line  # only what differs is named
    else:
        assert "split sizes (train, val, test): " in line, line
    assert not (tmp_path / "run" / "checkpoints" / "final.pt").exists()


def _online_cores() -> int:
    try:
        return int(os.sysconf("SC_NPROCESSORS_ONLN"))
    except (ValueError, OSError, AttributeError):
        return 1


def _build(tmp_path, language):
    from test_mpi_examples import build

    return build(tmp_path, language)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity (Linux)")
def test_c_mpi_example_gives_a_rank_no_more_workers_than_the_cores_it_is_bound_to(tmp_path):
    """Before: examples/c/mpi_closure.c took its workers per rank from sysconf's online cores divided
    by the node's ranks, whatever the rank was bound to: `taskset -c 0 mpirun -n 1 --bind-to none`
    (as `mpirun --bind-to core` or `srun --cpus-per-task 1`) printed "2 threads each" here, and on a
    128-core node a rank bound to one core got 128 / ranks workers on it (docs/runtime.md: never more
    than the cores the rank is bound to). Now at most the rank's affinity mask: 1."""
    if _online_cores() < 2:
        pytest.skip("one online core: a rank bound to one core and one given all of them are the same")
    taskset, launcher = shutil.which("taskset"), shutil.which("mpirun")
    if not taskset:
        pytest.skip("taskset is not installed (util-linux)")
    if not launcher:
        skip_without("mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)")
    from dodo.models import default_model_path

    program = _build(tmp_path, "c")
    core = min(os.sched_getaffinity(0))
    command = [taskset, "-c", str(core), launcher, "-n", "1", "--bind-to", "none"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-run-as-root")
    code, output = _run_guarded(command + [str(program), str(default_model_path())], 120, env=mpi_environment())
    assert code == 0, output
    assert "1 rank (1 thread each," in output, output


def test_fortran_mpi_example_without_a_model_argument_prints_its_usage(tmp_path):
    """Before: examples/fortran/mpi_closure.f90 started with no argument said `cannot read the model
    package "" (missing, empty, unreadable or not a regular file)` (the C example prints its usage).
    Now rank 0 prints `usage: mpi_closure MODEL.onnx [cuda]` and every rank stops with status 2."""
    from mpi_helpers import mpirun

    program = _build(tmp_path, "fortran")
    code, output = _run_guarded(mpirun(2) + [str(program)], 120, env=mpi_environment())
    assert code != 0, output
    assert output.count("usage: mpi_closure MODEL.onnx [cuda]") == 1, output
    assert "cannot read the model package" not in output, output
