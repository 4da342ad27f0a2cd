"""Initial states of the QKE solver: direction set, maximum-entropy occupations, seeds."""
import numpy as np
import pytest

from dodo.qke.directions import uniform_sphere
from dodo.qke.initial import initial_density_matrices, inverse_langevin, maxent_direction_weights


def test_emu_direction_set_has_92_unit_directions_with_no_net_flux():
    directions = uniform_sphere(16)
    assert directions.shape == (92, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(directions.sum(axis=0), 0.0, atol=1e-12)
    assert uniform_sphere(8).shape == (24, 3) and uniform_sphere(12).shape == (54, 3)


def test_inverse_langevin_solves_the_minerbo_relation():
    f = np.array([0.01, 0.3, 0.7, 0.9])
    Z = inverse_langevin(f)
    np.testing.assert_allclose(1 / np.tanh(Z) - 1 / Z, f, rtol=1e-10)


def test_discrete_moments_of_the_maximum_entropy_distribution_equal_the_inputs():
    rng = np.random.default_rng(3)
    directions = uniform_sphere(16)
    density = rng.uniform(0.1, 2.0, 20)
    flux_dir = rng.normal(size=(20, 3))
    flux = (density * rng.uniform(0, 0.85, 20))[:, None] * flux_dir / np.linalg.norm(flux_dir, axis=1, keepdims=True)
    weights = maxent_direction_weights(density, flux, directions)
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=-1), density, rtol=1e-12)
    np.testing.assert_allclose(weights @ directions, flux, atol=1e-12 * density.max())


def test_emu_minerbo_particles_are_reproduced_from_their_own_moments():
    # Emu weights directions by exp(Z mu) with Z from the continuous relation; the same
    # exponential family, so matching Emu's discrete moments must give back Emu's weights.
    directions = uniform_sphere(16)
    flux_hat = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    Z = inverse_langevin(np.array(0.6))
    emu_weights = np.exp(Z * directions @ flux_hat)
    emu_weights *= 2.5 / emu_weights.sum()
    ours = maxent_direction_weights(np.array(2.5), emu_weights @ directions, directions)
    np.testing.assert_allclose(ours, emu_weights, rtol=1e-10)


def test_zero_density_and_zero_flux_are_handled():
    directions = uniform_sphere(8)
    weights = maxent_direction_weights(np.array([0.0, 1.0]), np.zeros((2, 3)), directions)
    np.testing.assert_array_equal(weights[0], 0.0)
    np.testing.assert_allclose(weights[1], 1.0 / len(directions))


@pytest.mark.parametrize("density, flux", [(-1.0, [0, 0, 0]), (1.0, [0.97, 0, 0]), (np.nan, [0, 0, 0])])
def test_unphysical_moments_are_rejected(density, flux):
    with pytest.raises(ValueError):
        maxent_direction_weights(np.array(density), np.array(flux, float), uniform_sphere(8))


def test_seeds_are_hermitian_small_and_leave_the_diagonal_exact():
    directions = uniform_sphere(8)
    four_flux = np.zeros((1, 6, 4))
    four_flux[0, :, 0] = [1.0, 0.3, 0.3, 0.8, 0.3, 0.3]
    four_flux[0, 0, 3], four_flux[0, 3, 3] = 0.2, -0.3
    rho = initial_density_matrices(four_flux, directions, ncell=4, perturbation_amplitude=1e-6,
                                   rng=np.random.default_rng(0))
    assert rho.shape == (1, 2, 4, len(directions), 3, 3)
    np.testing.assert_allclose(rho, np.conj(np.swapaxes(rho, -1, -2)), atol=0)
    offdiag = np.abs(rho[..., 0, 1])
    assert 0 < offdiag.max() <= 1e-6 * np.abs(rho[..., 0, 0] - rho[..., 1, 1]).max() * np.sqrt(2) + 1e-30
    np.testing.assert_allclose(rho.sum(axis=3)[0, 0, 0, 0, 0].real, 1.0, rtol=1e-12)
