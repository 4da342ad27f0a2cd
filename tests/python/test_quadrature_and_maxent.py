"""Lebedev tables and the maximum-entropy reconstruction."""
import numpy as np
import pytest
from scipy.integrate import lebedev_rule as scipy_lebedev_rule
from scipy.optimize import brentq
from scipy.special import sph_harm_y

from dodo import _core


@pytest.mark.parametrize("order, points", [(17, 110), (41, 590), (131, 5810)])
def test_weights_sum_to_four_pi_and_points_are_unit_vectors(order, points):
    directions, weights = _core.lebedev_rule(order)
    assert directions.shape == (points, 3)
    assert weights.sum() == pytest.approx(4 * np.pi, rel=1e-14)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-15)


@pytest.mark.parametrize("order", [17, 41])
def test_rule_is_exact_on_spherical_harmonics_up_to_its_degree(order):
    directions, weights = _core.lebedev_rule(order)
    theta = np.arccos(np.clip(directions[:, 2], -1, 1))
    phi = np.arctan2(directions[:, 1], directions[:, 0])
    for l in range(order + 1):
        for m in range(l + 1):
            integral = np.sum(weights * sph_harm_y(l, m, theta, phi))
            assert abs(integral - (np.sqrt(4 * np.pi) if l == 0 else 0.0)) < 1e-12, (l, m)


def test_tables_match_their_numerical_source():
    for order in _core.available_lebedev_orders():
        directions, weights = _core.lebedev_rule(order)
        source_points, source_weights = scipy_lebedev_rule(order)
        np.testing.assert_array_equal(directions, source_points.T)
        np.testing.assert_array_equal(weights, source_weights)


def test_exact_inverse_langevin_reaches_machine_precision():
    langevin = lambda Z: 1.0 / np.tanh(Z) - 1.0 / Z
    flux_factors = np.concatenate([np.linspace(0.01, 0.985, 60), [0.2, 0.5, 0.9, 0.99, 0.999, 0.9999]])
    Z = _core.inverse_langevin(flux_factors, "exact")
    for f, z in zip(flux_factors, Z):
        reference = brentq(lambda x: langevin(x) - f, 1e-6, 1e6, xtol=1e-15, rtol=1e-15)
        assert z == pytest.approx(reference, rel=1e-12)
    small = np.array([1e-300, 1e-12, 1e-6])
    np.testing.assert_allclose(_core.inverse_langevin(small, "exact"), 3 * small, rtol=1e-10)
    assert _core.inverse_langevin(np.array([0.0]), "exact")[0] == 0.0


def test_jedynak_approximation_is_close_to_exact():
    f = np.linspace(0.0, 0.97, 200)
    exact = _core.inverse_langevin(f, "exact")
    approx = _core.inverse_langevin(f, "jedynak")
    assert np.max(np.abs(approx - exact) / np.maximum(exact, 1e-300)) < 2e-3


def test_maxent_distribution_reproduces_its_moments_on_a_fine_grid():
    directions, weights = _core.lebedev_rule(131)
    for f in (0.0, 0.3, 0.7, 0.9):
        Z = _core.inverse_langevin(np.array([f]), "exact")[0]
        mu = directions[:, 2]
        shape = np.ones_like(mu) if Z == 0 else 2 * Z / -np.expm1(-2 * Z) * np.exp(Z * (mu - 1))
        g = shape / (4 * np.pi)
        assert np.sum(weights * g) == pytest.approx(1.0, abs=1e-10)
        assert np.sum(weights * g * mu) == pytest.approx(f, abs=1e-10)
