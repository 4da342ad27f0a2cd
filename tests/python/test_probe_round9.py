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


FORTRAN_WIDE_INTEGERS = """
program wide
  use dodo
  implicit none
  type(dodo_closure) :: closure
  integer :: stat
  character(len=512) :: message
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, threads=4294967297, stat=stat, errmsg=message)
  print '(i0, 1x, a)', stat, trim(message)
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, chunk_size=4294967360, stat=stat, errmsg=message)
  print '(i0, 1x, a)', stat, trim(message)
  call dodo_destroy(closure)
end program wide
"""


def test_fortran_options_beyond_c_int_are_refused_not_wrapped(tmp_path):
    """Compiled with -fdefault-integer-8 (legacy codes), threads = 2**32 + 1 became 1 thread and
    chunk_size = 2**32 + 64 became 64, silently (int(x, c_int) wraps)."""
    import shutil

    from test_native_programs import ROOT, pkg_config, run

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed (apt-get install gfortran)")
    source = tmp_path / "wide.f90"
    source.write_text(FORTRAN_WIDE_INTEGERS)
    program = tmp_path / "wide"
    run(["gfortran", "-fdefault-integer-8", "-J", str(tmp_path), str(ROOT / "cpp/include/dodo/dodo.f90"), str(source),
         *pkg_config("--libs"), "-o", str(program)])
    lines = run([str(program)]).splitlines()
    assert lines[0].startswith("1 ") and "threads must lie in [0, 1024]; got 2147483647" in lines[0], lines
    assert lines[1].startswith("1 ") and "chunk_size must lie in" in lines[1], lines
