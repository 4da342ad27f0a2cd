"""Default worker threads under an MPI launcher (dodo._box3d._default_threads): a rank's closure
and Box3D without `threads` take no more than the node's cores divided by the ranks on the node, so
that ranks whose masks span many cores (an unbound launch, Open MPI's socket binding) do not each
start a worker on every core (docs/runtime.md, "Threads per rank")."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import dodo
from dodo import _box3d
from mpi_helpers import mpi_environment, mpirun

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity (Linux)")


@pytest.fixture
def node_of_eight(monkeypatch):
    """A process allowed on all 8 cores of an 8-core node, outside any launcher."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for name in _box3d.LOCAL_RANKS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", _box3d.LOCAL_RANKS_VARIABLES)
@pytest.mark.parametrize("ranks, expected", [("1", 8), ("2", 4), ("3", 2), ("4", 2), ("8", 1), ("16", 1)])
def test_ranks_sharing_a_node_share_its_cores(node_of_eight, monkeypatch, variable, ranks, expected):
    monkeypatch.setenv(variable, ranks)
    assert _box3d._threads(None) == expected
    assert _box3d._threads(8) == 8  # asked for: as asked


def test_a_rank_bound_to_fewer_cores_than_its_share_keeps_its_mask(node_of_eight, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    assert _box3d._threads(None) == 1


@pytest.mark.parametrize("value", ["", "0", "-2", "two", "2.5", "\u00b2"])
def test_a_launcher_variable_that_is_not_a_rank_count_is_ignored(node_of_eight, monkeypatch, value):
    monkeypatch.setenv("MPI_LOCALNRANKS", value)
    assert _box3d._threads(None) == 8


def test_outside_a_launcher_every_usable_core(node_of_eight):
    assert _box3d._threads(None) == 8


# Each rank writes its count to a file of its own (two ranks' lines on mpirun's shared stdout came
# interleaved: "11").
WRITE_THREADS = ("import os, dodo; rank = os.environ.get('OMPI_COMM_WORLD_RANK') or os.environ['PMI_RANK']; "
                 "open(f'threads.{rank}', 'w').write(str(dodo.Closure(None).threads))")


def test_unbound_mpi_ranks_of_a_node_each_take_their_share(tmp_path):
    """Two ranks launched unbound on this machine: each closure's default is the node's cores over 2
    (before: every core, each rank)."""
    cores = len(os.sched_getaffinity(0))
    command = mpirun(2) + ["--bind-to", "none", sys.executable, "-c", WRITE_THREADS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=mpi_environment(),
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    counts = [int((tmp_path / f"threads.{rank}").read_text()) for rank in (0, 1)]
    expected = max(1, min(cores, (os.cpu_count() or cores) // 2))
    assert counts == [expected, expected], (counts, result.stderr)
    assert dodo.Closure(None).threads == cores  # this process: no launcher
