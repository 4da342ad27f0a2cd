"""A flavour pair whose ELN difference is rounding noise does not cross (box3d.hpp, kLobeNoise).

Where two flavours' ELNs agree as functions (isotropic species with equal lepton numbers, here
boosted to the lab frame, whose rest-frame fluxes come back as rounding), G = ELN_i - ELN_j is a
few ulp with both signs. Box3D used to count that as a crossing: its 1/k mixing and the pair's
survival then followed the last bits of the input, so scaling a cell by 10^e changed its output
(an outside probe: mu densities 1.0667 to 1.0998 for one cell). A lobe at most 1e-12 of the pair's
n_i + nbar_i + n_j + nbar_j is now empty."""
import numpy as np
import pytest

import dodo
from box3d_oracle import box3d as oracle_box3d
from box3d_oracle import crossing_features_oracle
from conftest import random_velocities

NO_CROSSING = int(dodo.CellStatus.NO_CROSSING)
MU_TAU = slice(12, 18)  # the (mu, tau) pair's six crossing inputs


def equal_heavy_eln_cells(rng, n):
    """Rest-frame cells: nu_e and nubar_e crossing (opposite z-fluxes), the four heavy species
    isotropic with different densities but n_mu - n_mubar = n_tau - n_taubar."""
    F = np.zeros((n, 6, 4))
    F[:, 0, 0] = rng.uniform(0.8, 1.2, n)
    F[:, 3, 0] = rng.uniform(0.8, 1.2, n)
    F[:, 0, 3] = rng.uniform(0.1, 0.4, n) * F[:, 0, 0]
    F[:, 3, 3] = -rng.uniform(0.2, 0.5, n) * F[:, 3, 0]
    mu, tau = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n)
    eln = rng.uniform(-0.4, 0.4, n)
    F[:, 1, 0], F[:, 4, 0] = mu + eln, mu
    F[:, 2, 0], F[:, 5, 0] = tau + eln, tau
    return F


def test_the_probe_cell_gives_one_output_at_every_scale():
    F = np.zeros((6, 4))
    F[:, 0] = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    F[0, 3], F[3, 3] = 0.3, -0.5
    u = np.array([1.25, 0.75, 0.0, 0.0])
    lab = dodo.boost_from_rest(F[None], u[None, None, :])[0]
    scales = 10.0 ** np.arange(-30, 31, 3)
    cells = lab[None] * scales[:, None, None]
    result = dodo.box3d(cells, np.broadcast_to(u, (len(scales), 4)))
    per_scale = result.F_box / scales[:, None, None]
    # The mu-tau pair does not cross: every scale gives the e-pairs' mixing alone (1/k with k = 2).
    np.testing.assert_allclose(per_scale, np.broadcast_to(per_scale[10], per_scale.shape), rtol=0, atol=1e-13 * 7.5)
    features = dodo.crossing_features(cells, np.broadcast_to(u, (len(scales), 4)))
    np.testing.assert_array_equal(features[:, MU_TAU], 0.0)


def test_noise_lobes_give_the_oracles_output_boosted_and_at_rest(rng):
    F = equal_heavy_eln_cells(rng, 300)
    u = random_velocities(rng, 300, max_speed=0.8)
    u[:100] = [1.0, 0.0, 0.0, 0.0]
    lab = dodo.boost_from_rest(F, u[:, None, :])
    result = dodo.box3d(lab, u)
    expected, growth = oracle_box3d(lab, u)
    ntot = F[:, :, 0].sum(axis=1)
    np.testing.assert_allclose(result.F_box / ntot[:, None, None], expected / ntot[:, None, None], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.growth_over_ntot, growth, rtol=0, atol=1e-9)
    assert not np.any(result.status == NO_CROSSING)  # the e pairs still cross
    features = dodo.crossing_features(lab, u)
    np.testing.assert_array_equal(features[:, MU_TAU], 0.0)
    np.testing.assert_allclose(features, crossing_features_oracle(F / ntot[:, None, None]), rtol=0, atol=1e-9)


def test_a_cell_whose_only_crossing_is_noise_is_stable_and_returned_unchanged(rng):
    """Heavy species as above, nu_e and nubar_e isotropic with the same lepton number as them: no
    pair has a lobe above the noise, so the cell is stable for Box3D and the closure."""
    F = equal_heavy_eln_cells(rng, 50)
    e = rng.uniform(0.5, 1.5, 50)
    eln = F[:, 1, 0] - F[:, 4, 0]
    F[:, 0] = 0.0
    F[:, 3] = 0.0
    F[:, 0, 0], F[:, 3, 0] = e + eln, e
    u = random_velocities(rng, 50, max_speed=0.8)
    lab = dodo.boost_from_rest(F, u[:, None, :])
    result = dodo.box3d(lab, u)
    assert np.all(result.status == NO_CROSSING)
    np.testing.assert_array_equal(result.growth_over_ntot, 0.0)
    closure = dodo.Closure()
    applied = closure.apply(lab, u)
    assert np.all(applied.status & NO_CROSSING)
    np.testing.assert_array_equal(applied.F_pred, lab)


@pytest.mark.parametrize("difference", [1e-9, 1e-6, 1e-3])
def test_a_small_genuine_crossing_still_crosses(difference):
    """mu and tau with the same density and slightly different flux factors: G has two real lobes
    of ~difference, far above the noise; the pair crosses and feeds the growth proxy."""
    F = np.zeros((1, 6, 4))
    F[0, :, 0] = 1.0
    F[0, 1, 3] = 0.3
    F[0, 2, 3] = 0.3 * (1 + difference)
    F[0, 4, 3] = F[0, 5, 3] = 0.3
    F[0, 0, 3] = F[0, 3, 3] = 0.1  # e: no ELN; its pairs with mu and tau cross only as mu-tau does
    result = dodo.box3d(F)
    assert result.status[0] != NO_CROSSING
    assert result.growth_over_ntot[0] > 0.0
    features = dodo.crossing_features(F)
    assert features[0, 12] > 0.0 and features[0, 13] > 0.0
