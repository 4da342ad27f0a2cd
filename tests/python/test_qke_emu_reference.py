"""Small, fast versions of the validation against the real Emu code (full runs: docs/qke.md)."""
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from dodo.conventions import from_emu_layout  # noqa: E402
from dodo.qke.asymptotic import asymptotic_states  # noqa: E402
from dodo.qke.directions import uniform_sphere  # noqa: E402
from dodo.qke.initial import species_direction_densities  # noqa: E402
from dodo.qke.linear import box_growth_rate  # noqa: E402
from dodo.qke.solver import FastFlavourBox, SolverConfig  # noqa: E402
from dodo.qke.states import read_states, rotate_four_flux  # noqa: E402
from dodo.qke.validate import density_error  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "qke"


def test_linear_box_growth_rates_equal_the_ones_stored_with_emus_runs():
    with h5py.File(DATA / "emu_1d_validation.h5", "r") as f:
        initial = from_emu_layout(f["F4_initial(1|ccm)"][:4])
        rotation = f["rotation_R"][:4]
        expected = f["linear_growthRate_box(1|s)"][:4]
    directions = uniform_sphere(16)
    modes = np.concatenate([np.arange(1, 9), -np.arange(1, 9)])
    for state, R, rate in zip(initial, rotation, expected):
        ours, _ = box_growth_rate(rotate_four_flux(state, R), directions, 4.0, 64, modes=modes)
        assert ours == pytest.approx(rate, rel=1e-4)  # 1e-4: mu is known to 5 digits


def test_emu_initial_moments_are_reproduced_on_emus_direction_set():
    state = read_states(str(DATA / "emu_1d_validation.h5"))["four_flux"][:8]
    per_direction = species_direction_densities(state, uniform_sphere(16))
    np.testing.assert_allclose(per_direction.sum(axis=-1), state[..., 0], rtol=1e-12)
    np.testing.assert_allclose(per_direction @ uniform_sphere(16), state[..., 1:], atol=1e-12 * state[..., 0].max())


def test_nsm1_at_emus_coarsest_resolution_matches_emu():
    with h5py.File(DATA / "emu_nsm1_1d.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["directorynames"][()]]
        row = names.index("nsm1_1d_nz64_L4_nphi8")
        initial = from_emu_layout(f["F4_initial(1|ccm)"][row:row + 1])
        emu_final = from_emu_layout(f["F4_final(1|ccm)"][row:row + 1])[0]
        emu_growth = f["growthRate(1|s)"][row]
        end_time = f["tend(s)"][row]
    box = FastFlavourBox(initial, 4.0, SolverConfig(ncell=64, nphi_equator=8))
    history = box.run(np.array([end_time]))
    state = asymptotic_states(history.time, history.four_flux, history.offdiag_magnitude)
    assert state.valid[0], state.reason
    # Emu's own runs of this point differ by up to 0.0044 N_tot between resolutions.
    assert density_error(state.final[0].reshape(6, 4), emu_final, initial[0]) < 0.005
    assert state.growth_rate[0] == pytest.approx(emu_growth, rel=0.1)
