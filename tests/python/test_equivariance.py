"""Symmetries: transform the inputs, and the outputs transform the same way."""
import numpy as np
import pytest

import dodo
from conftest import lorentz_boost_matrix, random_rotation, random_states, random_velocities

SWAP_NU_NUBAR = [3, 4, 5, 0, 1, 2]
SWAP_MU_TAU = [0, 2, 1, 3, 5, 4]


def _deviation_over_ntot(a, b, F, u=None):
    return (np.abs(a - b).max(axis=(-1, -2)) / dodo.comoving_density(F, u)).max()


def test_boosted_input_gives_boosted_output(rng):
    F_rest = random_states(rng, 1000)
    u = random_velocities(rng, 1000, max_speed=0.9)
    boosts = np.array([lorentz_boost_matrix(v) for v in u])
    F_lab = np.einsum("cmn,can->cam", boosts, F_rest)
    box_rest = dodo.box3d(F_rest).F_box
    box_lab = dodo.box3d(F_lab, u).F_box
    assert _deviation_over_ntot(box_lab, np.einsum("cmn,can->cam", boosts, box_rest), F_rest) <= 1e-10


@pytest.mark.parametrize("order, tolerance", [(17, 4e-3), (131, 1e-4)])
def test_rotated_input_gives_rotated_output_within_quadrature_tolerance(rng, order, tolerance):
    n = 300 if order == 17 else 40
    F = random_states(rng, n, max_flux_factor=0.7)
    rotations = np.array([random_rotation(rng) for _ in range(n)])
    rotate = lambda G: np.concatenate([G[..., :1], np.einsum("cij,caj->cai", rotations, G[..., 1:])], axis=-1)
    box = dodo.box3d(F, lebedev_order=order).F_box
    box_of_rotated = dodo.box3d(rotate(F), lebedev_order=order).F_box
    assert _deviation_over_ntot(box_of_rotated, rotate(box), F) <= tolerance


@pytest.mark.parametrize("permutation", [SWAP_NU_NUBAR, SWAP_MU_TAU], ids=["nu<->nubar", "mu<->tau"])
def test_species_exchange_commutes_with_box3d(rng, permutation):
    F = random_states(rng, 2000)
    u = random_velocities(rng, 2000)
    F = dodo._core.boost_to_rest(F, u, inverse=True)
    box = dodo.box3d(F, u).F_box
    box_of_swapped = dodo.box3d(F[:, permutation], u).F_box
    assert _deviation_over_ntot(box_of_swapped, box[:, permutation], F, u) <= 1e-10


@pytest.mark.parametrize("scale", [1e-30, 3.7e-5, 1.0, 2.0**40, 1e40])
def test_scaled_input_gives_scaled_output(rng, scale):
    F = random_states(rng, 1000, scale=1.0)
    box = dodo.box3d(F).F_box
    box_scaled = dodo.box3d(F * scale).F_box
    assert np.abs(box_scaled / scale - box).max() <= 1e-10 * dodo.comoving_density(F).max()
    growth = dodo.box3d(F * scale).growth_over_ntot
    np.testing.assert_allclose(growth, dodo.box3d(F).growth_over_ntot, rtol=1e-10, atol=1e-14)
