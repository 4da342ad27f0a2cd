"""Outside probe, round nine (docs/reliability_cpp.md, "Round three"): what a simulation code's
developer hits when linking libdodo into a transport code, and the MPI paths; each case failed
before its fix."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("h5py")

from dodo.qke import parallel  # noqa: E402
from dodo.qke.campaign import simulate_states  # noqa: E402
from dodo.qke.solver import SolverConfig  # noqa: E402


def _states() -> np.ndarray:
    states = np.zeros((2, 6, 4))
    for i in range(2):
        states[i, 0] = [1.0, 0, 0, 0.3]
        states[i, 3] = [1.0 + 0.1 * i, 0, 0, -0.3]
        states[i, [1, 2, 4, 5], 0] = 0.1
    return states * 1e33


class _RankZeroOfTwo(parallel.SerialCommunicator):
    """Rank 0 of a 2-rank job whose rank 1 holds `other` (what comm.gather hands rank 0)."""

    rank, size = 0, 2

    def __init__(self, other=None):
        self.other = other

    def gather(self, value, root=0):
        return [value, value if self.other is None else self.other(value)]


@pytest.mark.parametrize("other", [lambda value: ("another fingerprint",) + tuple(value[1:]),
                                   lambda value: (value[0], 2.5)],
                         ids=["other states", "other max_cost"])
def test_ranks_holding_other_states_or_settings_are_refused_before_any_simulation(tmp_path, other):
    """`mpirun -n 1 dodo simulate ... --seed 1 : -n 1 dodo simulate ... --seed 2` wrote rank 1's
    final states beside rank 0's initial ones (number off by up to 187x), exit 0."""
    output = tmp_path / "out.h5"
    config = SolverConfig(ncell=16, nphi_equator=8, seed=4)
    with pytest.raises(ValueError, match=r"MPI ranks do not hold the same states and settings: rank\(s\) 1 differ"):
        simulate_states(_states(), str(output), config, batch_size=1, report=lambda message: None,
                        communicator=_RankZeroOfTwo(other))
    assert not list(tmp_path.iterdir())  # nothing simulated, no checkpoint
