"""Edge cases: empty species, zero fluxes, zero cells, non-finite and unphysical input, extremes."""
import numpy as np
import pytest

import dodo
from conftest import random_states
from dodo.reference import conservation_error

S = dodo.CellStatus


def _fiducial():
    F = np.zeros((6, 4))
    F[0] = [1.0, 0.0, 0.0, 0.5]
    F[3] = [1.0, 0.0, 0.0, -0.5]
    return F


def test_empty_species_give_no_nan_and_conserve(rng):
    F = random_states(rng, 500)
    F[:, [2, 5]] = 0.0  # no tau neutrinos at all
    result = dodo.box3d(F)
    assert np.isfinite(result.F_box).all()
    assert conservation_error(F, result.F_box).max() <= 1e-12


def test_zero_fluxes_are_isotropic_and_stable():
    F = np.zeros((6, 4))
    F[:, 0] = [1.0, 0.5, 0.5, 0.8, 0.4, 0.4]
    result = dodo.box3d(F)
    assert result.status == S.NO_CROSSING  # isotropic distributions cannot cross
    np.testing.assert_array_equal(result.F_box, F)


def test_all_zero_cell_is_flagged_and_returned():
    result = dodo.box3d(np.zeros((6, 4)))
    assert result.status == S.ZERO_DENSITY
    np.testing.assert_array_equal(result.F_box, 0.0)
    assert result.growth_over_ntot == 0.0 and result.growth_rate == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_flagged_never_nan(bad):
    F = np.stack([_fiducial()] * 4)
    F[1, 2, 3] = bad
    u = np.tile([1.0, 0, 0, 0], (4, 1))
    u[2, 0] = bad
    result = dodo.box3d(F, u)
    assert np.isfinite(result.F_box).all()
    assert np.isfinite(result.growth_rate).all()
    assert result.status[1] == S.NONFINITE and result.status[2] == S.NONFINITE
    assert result.status[0] == S.OK and result.status[3] == S.OK  # neighbours are untouched


def test_negative_density_is_flagged_and_clamped_to_a_realizable_output():
    F = _fiducial()
    F[1, 0] = -0.1
    result = dodo.box3d(F)
    assert result.status == S.NEGATIVE_DENSITY
    expected = F.copy()
    expected[1] = 0.0  # n -> 0 and the flux scaled onto the cone |F| <= n (issue 5); others unchanged
    np.testing.assert_array_equal(result.F_box, expected)


def test_flux_factor_0p99_is_flagged_and_returned_unchanged():
    F = _fiducial()
    F[0, 3] = 0.99
    result = dodo.box3d(F)
    assert result.status == S.FLUX_FACTOR
    np.testing.assert_array_equal(result.F_box, F)


def test_flux_without_density_is_flagged():
    F = _fiducial()
    F[2] = [0.0, 0.1, 0.0, 0.0]
    assert dodo.box3d(F).status == S.FLUX_FACTOR


def test_flux_factor_limit_is_a_setting():
    F = _fiducial()
    F[0, 3] = 0.95
    assert dodo.box3d(F).status == S.OK
    assert dodo.box3d(F, max_flux_factor=0.9).status == S.FLUX_FACTOR


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e33, 1e40])
def test_densities_across_seventy_decades(scale):
    F = _fiducial() * scale
    result = dodo.box3d(F)
    assert result.status == S.OK
    np.testing.assert_allclose(result.F_box[:, 0] / scale, 1.0 / 3.0, rtol=1e-12)
    assert conservation_error(F, result.F_box) <= 1e-12


def test_status_descriptions_name_every_bit():
    text = dodo.describe_status(int(S.NONFINITE | S.NO_CROSSING))
    assert any(line.startswith("NONFINITE:") for line in text)
    assert any(line.startswith("NO_CROSSING:") for line in text)
