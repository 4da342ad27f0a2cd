"""Outside probe, scale-out round four (docs/reliability_python.md, "Scale-out failure probe").

Each test failed on the code before its fix (its docstring says what that code did). The mpirun and
torchrun runs skip with a reason where mpirun, mpi4py or torch's gloo backend is missing.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

from mpi_helpers import mpi_environment, mpirun, skip_without
from test_probe_scaleout_round2 import _run_guarded

#: A guard against a hang, not a timing: each job below ends in a few seconds.
GUARD_S = 300
SMALL = ["--ncell", "16", "--nphi", "8", "--batch-size", "1"]
#: What Open MPI prints when a rank calls MPI_Abort, and what dodo printed in the ranks it then ended.
ABORT_TRACES = ("MPI_ABORT was invoked", "terminated; stopping all")


def _needs_mpi4py():
    if importlib.util.find_spec("mpi4py") is None:
        skip_without("mpi4py is not installed (pip install '.[mpi]' in the repository)")


def _per_rank(arguments_of_rank_one: str, arguments: str) -> list:
    """A command whose rank 1 runs ``dodo simulate`` with other words than every other rank (a job script's
    per-rank variable, a node's own paths): ``sh -c`` that execs dodo, so the process is still the rank."""
    script = (f'if [ "${{OMPI_COMM_WORLD_RANK:-$PMI_RANK}}" = 1 ]; then exec "$0" -m dodo simulate {arguments_of_rank_one}; '
              f'else exec "$0" -m dodo simulate {arguments}; fi')
    return ["sh", "-c", script, sys.executable]


def _dodo_lines(output: str) -> list:
    return [line for line in output.splitlines() if line.startswith("dodo simulate")]


def _interrupted_campaign(output):
    """OUT and OUT.partial.npz of another campaign (3 states), stopped after its first batch."""
    from dodo.qke import parallel
    from dodo.qke.campaign import simulate_states
    from dodo.qke.solver import SolverConfig

    states = np.zeros((3, 6, 4))
    for i in range(3):
        states[i, 0] = [1.0, 0, 0.02 * i, 0.25 + 0.05 * i]
        states[i, 3] = [1.0 + 0.05 * i, 0, 0, -0.3]
        states[i, [1, 2, 4, 5], 0] = 0.1

    def stop(message):
        if "states done" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_states(states * 1e33, str(output), SolverConfig(ncell=16, nphi_equator=8, seed=4), batch_size=1,
                        report=stop, communicator=parallel.SerialCommunicator())
    assert os.path.isfile(f"{output}.partial.npz")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mpirun with a POSIX shell wrapper")
@pytest.mark.parametrize("case", ["every rank refuses", "rank 1 alone: its input is missing",
                                  "rank 1 alone: other arguments", "rank 1 alone: another OUT",
                                  "rank 0 alone: a checkpoint of another campaign"])
def test_a_refusal_before_any_work_ends_every_rank_with_one_line(tmp_path, case):
    """Before: a rank that refused its arguments or inputs printed its line and called MPI_Abort; Open MPI's
    8-line "MPI_ABORT was invoked on rank 1 ... You may or may not see output from other processes" page
    followed, and each rank it then ended printed "dodo simulate: terminated; stopping all 2 ranks", as if the
    user had stopped the job. A refusal every rank met (here --linear-only) was printed by each rank that got to
    it first, and "rank 1 alone" did not say that the input was missing on one rank only. Other arguments on
    rank 1 (another --random), and a checkpoint of another campaign beside OUT (rank 0 reads the checkpoints),
    the same: the line twice or once, then the abort page and "terminated". Rank 1 given another OUT ran:
    rank 0 wrote its OUT, and rank 1's checkpoint OTHER.partial.rank1.npz stayed for ever (where neither rank
    0's clean-up nor a rerun looks: a job killed midway lost that rank's batches), exit 0. Now every rank ends with exit 2
    and rank 0 prints the job's one line, naming the rank where not every rank met it; Open MPI's own report
    of the exit status follows (not dodo's words)."""
    _needs_mpi4py()
    launcher = mpirun(2)
    common = "out.h5 --random 3 --seed 4 " + " ".join(SMALL)
    if case == "every rank refuses":
        command = launcher + [sys.executable, "-m", "dodo", "simulate", "out.h5", "--random", "2", "--linear-only"]
        expected = "dodo simulate: error: --linear-only runs in one process"
    elif case == "rank 1 alone: its input is missing":
        (tmp_path / "in.yaml").write_text("states:\n  - [[1e33, 0, 0, 0.3], [1e32, 0, 0, 0], [1e32, 0, 0, 0], "
                                          "[1.2e33, 0, 0, -0.3], [1e32, 0, 0, 0], [1e32, 0, 0, 0]]\n")
        command = launcher + _per_rank("out.h5 --input node_local.yaml " + " ".join(SMALL),
                                       "out.h5 --input in.yaml " + " ".join(SMALL))
        expected = ("dodo simulate: error: rank 1 of 2: cannot read node_local.yaml: no such file")
    elif case == "rank 1 alone: other arguments":
        command = launcher + _per_rank(common.replace("--random 3", "--random 4"), common)
        expected = ("dodo simulate: error: the MPI ranks do not hold the same states and settings: rank(s) 1 differ "
                    "from rank 0")
    elif case == "rank 1 alone: another OUT":
        command = launcher + _per_rank(common.replace("out.h5", "other.h5"), common)
        expected = (f"dodo simulate: error: the MPI ranks do not name the same output: rank 0 names {tmp_path}"
                    f"{os.sep}out.h5, rank 1: {tmp_path}{os.sep}other.h5; rank 0 writes OUT, each rank checkpoints")
    else:
        _interrupted_campaign(tmp_path / "out.h5")
        command = launcher + [sys.executable, "-m", "dodo", "simulate"] + common.split()
        expected = "dodo simulate: error: out.h5.partial.npz does not belong to this campaign"
    before = sorted(os.listdir(tmp_path))
    code, output = _run_guarded(command, GUARD_S, env=mpi_environment(), cwd=tmp_path)
    assert code == 2, output[-3000:]
    lines = _dodo_lines(output)
    assert len(lines) == 1 and lines[0].startswith(expected), output[-3000:]
    if case.startswith("rank 1 alone: its"):
        assert lines[0].endswith("(rank 0 was ready; the job ends)"), lines
    assert not any(trace in output for trace in ABORT_TRACES), output[-3000:]
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no lock left, the checkpoint kept


def test_a_rank_that_fails_alone_during_the_campaign_names_itself_and_stops_the_job(tmp_path, monkeypatch, capsys):
    """Past the checks, one rank's failure (its checkpoint on a full disk) still stops the job with MPI_Abort
    (the others may be computing); its line said neither which rank failed nor that the job stops."""
    from dodo import cli as dodo_cli
    from dodo.qke import campaign, parallel

    class RankOneOfTwo(parallel.SerialCommunicator):
        rank, size, aborted = 1, 2, None

        def abort(self, code):
            self.aborted = code
            raise SystemExit(code)

    comm = RankOneOfTwo()
    monkeypatch.setattr(parallel, "world", lambda: comm)

    def full_disk(*args, **kwargs):
        raise OSError(28, "cannot write the checkpoint out.h5.partial.rank1of2.npz (No space left on device)")

    monkeypatch.setattr(campaign, "simulate_states", full_disk)
    with pytest.raises(SystemExit):
        dodo_cli.main(["simulate", "--random", "2", *SMALL, str(tmp_path / "out.h5")])
    assert comm.aborted == 2
    assert capsys.readouterr().err.strip() == (
        "dodo simulate: error: rank 1 of 2: [Errno 28] cannot write the checkpoint out.h5.partial.rank1of2.npz (No "
        "space left on device); stopping all 2 ranks")


def test_the_job_line_names_the_ranks_of_each_error():
    """The words of the line above for many ranks (no launcher needed)."""
    from dodo.qke.parallel import joined_rank_errors

    assert joined_rank_errors([None, None, None]) is None
    assert joined_rank_errors(["E", "E"]) == "E"  # every rank met it: the error alone, as one process says it
    assert joined_rank_errors(["A", None, "B", "B", "C", "D"]) == (
        "rank 0 of 6: A; ranks 2, 3 of 6: B; rank 4 of 6: C; and 1 other error (rank 1 was ready; the job ends)")
    assert joined_rank_errors(["x"] + ["y"] * 9 + [None] * 3) == (
        "rank 0 of 13: x; ranks 1-9 of 13: y (ranks 10-12 were ready; the job ends)")


def test_dodo_info_under_torchrun_and_mpirun_agree_and_name_the_process():
    """Before: `torchrun --nproc-per-node 2 -m dodo info` (and `reference`) were refused ("only dodo train runs
    data-parallel"), exit 2, where `mpirun -n 2 dodo info` printed the listing once per rank; neither said a
    word of the ranks. Now both print in each process, and `dodo info` ends with the launcher's line."""
    from dodo._launcher import launch_line as _launch_line
    from dodo.cli import _mpi_replica_problem, _torchrun_replica_problem

    torchrun = {"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "2", "RANK": "1"}
    for command in ("info", "reference"):
        assert _torchrun_replica_problem(command, torchrun) is None
        assert _mpi_replica_problem(command, {"OMPI_COMM_WORLD_SIZE": "2"}) is None
    assert _torchrun_replica_problem("score", torchrun) is not None  # the others are still refused
    assert _launch_line(torchrun).startswith("launcher: torchrun, process 1 of 2 (RANK=1, WORLD_SIZE=2): dodo train "
                                             "runs data-parallel")
    assert _launch_line({}) is None and _launch_line(dict(torchrun, WORLD_SIZE="1")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun and mpirun on Linux")
@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_dodo_info_under_a_launcher_prints_in_each_process(tmp_path, launcher):
    """The same through the launchers themselves: exit 0, one listing and one launcher line per process."""
    if launcher == "torchrun":
        torch = pytest.importorskip("torch")
        if not torch.distributed.is_available():
            pytest.skip("this torch has no torch.distributed")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "dodo", "info"]
        env, named = dict(os.environ, OMP_NUM_THREADS="1"), "launcher: torchrun, process {} of 2"
    else:
        command = mpirun(2) + [sys.executable, "-m", "dodo", "info"]
        env, named = mpi_environment(), "launcher: MPI, rank {} of 2 (OMPI_COMM_WORLD_SIZE=2)"  # Open MPI's mpirun
    code, output = _run_guarded(command, GUARD_S, env=env, cwd=tmp_path)
    assert code == 0, output[-3000:]
    assert sum(line.startswith("core module: ") for line in output.splitlines()) == 2, output[-3000:]
    for rank in (0, 1):
        assert sum(line.startswith(named.format(rank)) for line in output.splitlines()) == 1, output[-3000:]


GLOO_PEER_ENDED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                   "[127.0.0.1]:1722. This is typically caused by a remote worker crashing. Check the logs of the remote "
                   "worker before reporting an error. GLHF! \U0001f3d6\ufe0f")


def test_a_collective_that_fails_because_another_process_ended_says_so():
    """The words of the torchrun case below, without torchrun: gloo's error becomes one line naming what the
    process waited for; any other error of a collective is left as it is."""
    pytest.importorskip("torch")
    from dodo.training.distributed import Distribution

    with pytest.raises(RuntimeError) as raised:
        with Distribution(0, 2)._peers_may_end("compare that they train on the same data"):
            raise RuntimeError(GLOO_PEER_ENDED)
    assert str(raised.value) == (
        "another process of this 2-process data-parallel job ended while process 0 waited to compare that they "
        "train on the same data (its own line, or torchrun's report of its exit, says why; the backend said: "
        "Connection closed by peer [127.0.0.1]:1722): this process stops too")
    with pytest.raises(RuntimeError, match="^something else$"):
        with Distribution(0, 2)._peers_may_end("meet them"):
            raise RuntimeError("something else")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun with a POSIX shell wrapper")
def test_torchrun_process_whose_data_file_is_missing_leaves_the_other_one_clear_words(tmp_path):
    """Before: `torchrun --nproc-per-node 2 --no-python sh -c 'dodo train --config c$RANK.yaml'` whose process 1
    names a data file missing on its node: process 1 said so in one line, and process 0, waiting to compare the
    data with it, printed gloo's `dodo train: error: [/__w/pytorch/.../gloo/transport/tcp/pair.cc:553] Connection
    closed by peer [127.0.0.1]:1722. This is typically caused by a remote worker crashing ... GLHF! 🏖️`. Now
    process 0 says another process of the job ended while it waited, and that that process's line says why."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("h5py")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend (torch.distributed)")
    from training_helpers import synth_and_preprocess, write_training_config

    data = synth_and_preprocess(tmp_path, 200, seed=3)
    for rank, path in ((0, data), (1, tmp_path / "node_local.h5")):
        write_training_config(tmp_path / f"c{rank}.yaml", path, tmp_path / "run",
                              model={"head": "equivariant", "hidden_dim": 8, "n_blocks": 1},
                              training={"epochs": 1, "threads": 1, "seed": 1, "device": "cpu"})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
               "sh", "-c", 'exec "$0" -m dodo train --config c$RANK.yaml', sys.executable]
    code, output = _run_guarded(command, GUARD_S, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert code != 0
    ours = [line for line in output.splitlines() if line.startswith("dodo train")]
    assert any(line.startswith("dodo train: error: preprocessed file not found") for line in ours), output[-3000:]
    # torchrun may end process 0 (SIGTERM) before its collective fails: then it says "terminated".
    survivor = [line for line in ours if "preprocessed file not found" not in line]
    assert len(survivor) <= 1 and "GLHF" not in output and "pair.cc" not in output, output[-3000:]
    if survivor and survivor[0] != "dodo train: terminated":
        assert survivor[0].startswith("dodo train: error: another process of this 2-process data-parallel job ended "
                                      "while process 0 waited"), output[-3000:]
