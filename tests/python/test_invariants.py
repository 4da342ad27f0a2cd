"""The 27 invariant features: definition, frame independence, scale independence."""
import numpy as np

import dodo
from conftest import lorentz_boost_matrix, random_states, random_velocities
from dodo.conventions import METRIC, invariant_pairs


def test_invariants_follow_their_definition(rng):
    F = random_states(rng, 50)
    u = random_velocities(rng, 50)
    features = dodo.invariants(F, u)
    ntot = dodo.comoving_density(F, u)
    comoving = -np.einsum("cam,m,cm->ca", F, METRIC, u)
    np.testing.assert_allclose(features[:, :6], comoving / ntot[:, None], rtol=1e-12)
    for k, (a, b) in enumerate(invariant_pairs()):
        dot = np.einsum("cm,m,cm->c", F[:, a], METRIC, F[:, b])
        np.testing.assert_allclose(features[:, 6 + k], dot / ntot**2, rtol=1e-10, atol=1e-14)


def test_invariants_are_frame_and_scale_independent(rng):
    F_rest = random_states(rng, 200)
    u = random_velocities(rng, 200, max_speed=0.9)
    F_lab = np.einsum("cmn,can->cam", np.array([lorentz_boost_matrix(v) for v in u]), F_rest)
    np.testing.assert_allclose(dodo.invariants(F_lab, u), dodo.invariants(F_rest), atol=1e-12)
    np.testing.assert_allclose(dodo.invariants(F_rest * 1e-20), dodo.invariants(F_rest), atol=1e-14)


def test_comoving_densities_sum_to_one(rng):
    features = dodo.invariants(random_states(rng, 100))
    np.testing.assert_allclose(features[:, :6].sum(axis=1), 1.0, rtol=1e-14)


def test_cell_without_density_gives_zero_features():
    np.testing.assert_array_equal(dodo.invariants(np.zeros((6, 4))), 0.0)


def test_public_boosts_match_the_boost_matrix_and_invert(rng):
    u = random_velocities(rng, 30, max_speed=0.95)
    F_rest = random_states(rng, 30)
    matrices = np.array([lorentz_boost_matrix(v) for v in u])
    F_lab = dodo.boost_from_rest(F_rest, u[:, None, :])
    np.testing.assert_allclose(F_lab, np.einsum("cmn,can->cam", matrices, F_rest), rtol=1e-12, atol=1e-12 * F_rest.max())
    np.testing.assert_allclose(dodo.boost_to_rest(F_lab, u[:, None, :]), F_rest, rtol=1e-12, atol=1e-12 * F_rest.max())
    np.testing.assert_allclose(dodo.boost_to_rest(u, u), np.tile([1.0, 0, 0, 0], (30, 1)), atol=1e-12)


def test_boost_refuses_a_bad_velocity():
    import pytest

    with pytest.raises(ValueError, match="four-velocity"):
        dodo.boost_to_rest(np.ones(4), np.array([1.0, 0.5, 0, 0]))
