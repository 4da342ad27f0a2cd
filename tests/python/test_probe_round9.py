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


# Cells of a C-level adversarial run (densities 1e-300 ... 1e308, some species 1e-300 of the
# others, beamed species), u in the last four values; each gave an output outside the cone.
_UNREALIZABLE_BEFORE = {
    # nu_mu and nubar_tau of density 5e-324: Box3D's change returned them as -5e-324 (status 0,
    # the closure CORRECTION_LIMITED); a host's n >= 0 failed.
    "negative density": [
        "0x1.73b394fddddcdp-78", "0x1.109ffeed0e09fp-79", "0x1.34341446f4a23p-81", "0x1.5881bd406a6d1p-79",
        "0x0.0000000000001p-1022", "-0x0.0000000000001p-1022", "-0x0.0p+0", "-0x0.0p+0",
        "0x1.014d8dcf79caap-79", "-0x1.c941b572c662ap-85", "-0x1.9695946c8a48ep-83", "0x1.2bca718514bedp-82",
        "0x0.0p+0", "0x0.0p+0", "0x0.0p+0", "-0x0.0p+0",
        "0x1.3de1b5dd3543ap-78", "-0x1.30bcd731c9589p-79", "0x1.16b7068275384p-81", "0x1.1a6863e3e44bdp-80",
        "0x0.0000000000001p-1022", "-0x0.0p+0", "0x0.0p+0", "-0x0.0p+0",
        "0x1.0956a62648b05p+1", "0x1.3cbd00d1e9d09p-5", "-0x1.3ae2e9638be67p+0", "0x1.55ce10dc91bcbp+0"],
    # A beamed species (flux factor 1 to rounding), rejected FLUX_FACTOR and returned as given,
    # although sqrt(Fx^2 + Fy^2 + Fz^2) exceeded n by an ulp.
    "beamed, rejected": [
        "0x1.4b3dbf26fd616p-951", "-0x1.39a8e0e9d01b7p-952", "0x1.0e3ad680297b9p-951", "0x1.b80481b11002cp-953",
        "0x1.ede93115bf88cp-953", "0x1.9898283b1288ap-953", "0x1.1cee7fbc62cbcp-954", "0x1.dc3e7f8c7edfep-954",
        "0x1.621652ec071f1p-950", "0x1.3bc043de06ab8p-953", "-0x1.49402575b0de6p-958", "0x1.2688ce64035c4p-951",
        "0x1.52c7109662b59p-950", "0x1.ec964c56b8b3cp-954", "0x1.100e33be47f7cp-955", "-0x1.3c28d4a3040a0p-956",
        "0x1.6652211e0ef12p-950", "-0x1.854893247f357p-952", "0x1.198f1ee1c9fd0p-951", "0x1.8882f1862aea2p-954",
        "0x1.8a6acaff02db5p-951", "-0x1.729ef03798377p-953", "-0x1.30afa072e66d8p-952", "0x1.49c99671b1408p-951",
        "0x1.1375b54fd71fcp+0", "-0x1.be9fee58368c8p-4", "-0x1.8724cf21e1f90p-2", "-0x1.ce36649ec77e1p-9"],
    # Subnormal species (3e-317) in a cell of 1e-16: the cone test scaled by 2^1051 = inf, read
    # inf - inf as inside, and returned |F| = 1.39 n with status 0.
    "subnormal species": [
        "0x1.90022a67cf120p-56", "-0x1.2ab4d10be798ap-59", "-0x1.fa2e2b8b8d15ep-60", "0x1.17bd3280cdd1bp-56",
        "0x0.00000005a3b72p-1022", "-0x0.0000000021fc7p-1022", "-0x0.000000002e097p-1022", "0x0.000000000553ap-1022",
        "0x1.b323221abb1b0p-56", "0x1.21fa3af97de37p-61", "-0x1.42495ee810f5fp-61", "0x1.581696e0d9463p-66",
        "0x0.00000002ab3f0p-1022", "0x0.00000001491f3p-1022", "0x0.00000000fbc62p-1022", "0x0.000000015468dp-1022",
        "0x1.36bcba370f496p-54", "-0x1.c6d4dff7082eep-56", "-0x1.6b7a7ea7ce8b9p-56", "-0x1.ad3022d95befdp-57",
        "0x0.00000007b5270p-1022", "0x0.00000005eb346p-1022", "0x0.000000001de96p-1022", "-0x0.000000023580cp-1022",
        "0x1.003519ad38263p+0", "-0x1.55a94cbfcae9bp-6", "0x1.14effd272dd4ep-5", "-0x1.affffd9f6523fp-8"],
}


def _outside_cone(species: np.ndarray) -> bool:
    """n < 0 or sqrt(Fx^2 + Fy^2 + Fz^2) > n, evaluated after an exact power-of-two scaling (so that
    subnormal and huge species are judged to rounding, not to underflow)."""
    largest = np.max(np.abs(species))
    if largest == 0.0:
        return False
    scaled = np.ldexp(species, -int(np.frexp(largest)[1]))
    return bool(scaled[0] < 0.0 or np.sqrt(np.sum(scaled[1:] ** 2)) > scaled[0])


@pytest.mark.parametrize("case", sorted(_UNREALIZABLE_BEFORE))
@pytest.mark.parametrize("model", ["box3d", None], ids=["box3d", "default model"])
def test_adversarial_cells_come_back_inside_the_cone(case, model):
    import dodo

    values = np.array([float.fromhex(text) for text in _UNREALIZABLE_BEFORE[case]])
    F, u = values[:24].reshape(6, 4), values[24:]
    closure = dodo.Closure(model) if model else dodo.Closure()
    result = closure.apply(F, u)
    assert np.all(np.isfinite(result.F_pred))
    outside = [a for a in range(6) if _outside_cone(result.F_pred[a])]
    assert not outside, f"{case}: species {outside} outside the cone, status {int(result.status)}: {result.F_pred}"
    if result.status & 62 == 0:  # accepted cells conserve the flavour-summed four-fluxes
        for kind in (slice(0, 3), slice(3, 6)):
            scale = np.abs(F[:, 0]).sum()
            assert np.all(np.abs(result.F_pred[kind].sum(0) - F[kind].sum(0)) <= 1e-14 * scale * u[0] ** 2)
