"""Outside probe of the physics laws, round four (docs/reliability_python.md, section 46): the
closure's diagnostic outputs (growth rate, Box3D's growth proxy, uncertainty, status) and their
frame and units, through dodo.Closure (the default model and "box3d") and the C API
(dodo_apply_diagnostics).

Found no violated law. The growth rate is the comoving (fluid rest frame) rate, as runtime.md and
dodo.h say: the same cell moving at any speed has the same rate, not the rest-frame one over W
(a lab observer's). The README, Box3DResult's docstring and the C++, Fortran and Julia comments
named s^-1 without the frame; they now say "comoving frame" (README and runtime.md also that the
rate per unit lab time of a moving cell is the returned one over W).

Reported as documented behaviour of the spec's Box3D, not a defect: Box3D's change jumps where one
quadrature direction changes the side of G = 0 (spec section 2, step 3: P is 1/3 on the smaller
side and P_large on the other), and so do the network inputs built from it; the learned growth
rate, the uncertainty and F_pred of the default model jump there with them. The proxy
sqrt(I+ I-) is continuous there (runtime.md says so now).

The tests are regression tests of laws no earlier test asserts on these outputs.
"""
from __future__ import annotations


import numpy as np
import pytest

import dodo
from conftest import random_states
from dodo.conventions import GROWTH_RATE_PER_NTOT
from libdodo_ctypes import default_model_diagnostics, load_libdodo


@pytest.fixture(scope="module")
def closures():
    return {"model": dodo.Closure(threads=1), "box3d": dodo.Closure("box3d", threads=1)}


def _velocity(W: float, n: int) -> np.ndarray:
    direction = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    u = np.empty((n, 4))
    u[:, 0] = W
    u[:, 1:] = np.sqrt(W * W - 1.0) * direction
    return u


def _c_diagnostics(F: np.ndarray, u: np.ndarray):
    _, status, growth, uncertainty = default_model_diagnostics(load_libdodo(), F, u)
    return status, growth, uncertainty


@pytest.mark.parametrize("W", [1.5, 10.0])
def test_growth_rate_is_the_comoving_rate_whatever_the_fluid_speed(closures, W):
    """docs/runtime.md: the rate is in s^-1 in the comoving frame. A cell moving at W has its
    rest-frame cell's rate (not that over W, a lab observer's), its uncertainty and its status:
    Python (both models) and the C API alike."""
    F_rest = random_states(np.random.default_rng(46), 300, max_flux_factor=0.6, scale=1e32)
    u = _velocity(W, len(F_rest))
    F_lab = dodo.boost_from_rest(F_rest, u[:, None, :])
    for name, closure in closures.items():
        rest, lab = closure.apply(F_rest), closure.apply(F_lab, u)
        crossing = rest.status == 0
        assert crossing.sum() > 250, name
        np.testing.assert_array_equal(lab.status, rest.status, err_msg=name)
        tolerance = 1e-6 if name == "model" else 1e-10  # the network in float32; Box3D in float64
        np.testing.assert_allclose(lab.growth_rate, rest.growth_rate, rtol=tolerance, atol=0, err_msg=name)
        np.testing.assert_allclose(lab.growth_rate_proxy, rest.growth_rate_proxy, rtol=1e-10, atol=0, err_msg=name)
        np.testing.assert_allclose(lab.uncertainty, rest.uncertainty, rtol=0, atol=1e-7, err_msg=name)
        # far from the lab observer's rate (the rest-frame rate over W)
        assert np.all(np.abs(lab.growth_rate[crossing] * W / rest.growth_rate[crossing] - 1) > 0.4), name
    status, growth, uncertainty = _c_diagnostics(F_lab, u)
    rest = closures["model"].apply(F_rest)
    np.testing.assert_array_equal(status, rest.status)
    np.testing.assert_allclose(growth, rest.growth_rate, rtol=1e-6, atol=0)
    np.testing.assert_allclose(uncertainty, rest.uncertainty, rtol=0, atol=1e-7)


@pytest.mark.parametrize("scale", [3.0, 1e-7, 7e5])
def test_growth_rate_scales_with_the_densities_and_the_uncertainty_does_not(closures, scale):
    """rate = growth_over_ntot * N_tot * sqrt(2) G_F / hbar: all densities times s give the rate
    times s; growth_over_ntot, the uncertainty (units of N_tot), F_pred / N_tot and the status are
    unchanged. Moving cells (u = (W, W v), W up to 2) too."""
    rng = np.random.default_rng(4601)
    F_rest = random_states(rng, 300, max_flux_factor=0.6, scale=1e32)
    u = _velocity(2.0, len(F_rest))
    u[::2] = (1.0, 0.0, 0.0, 0.0)
    F = dodo.boost_from_rest(F_rest, u[:, None, :])
    ntot = dodo.comoving_density(F, u)
    for name, closure in closures.items():
        one, scaled = closure.apply(F, u), closure.apply(F * scale, u)
        np.testing.assert_array_equal(scaled.status, one.status, err_msg=name)
        np.testing.assert_allclose(scaled.growth_rate, scale * one.growth_rate, rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(scaled.growth_rate_proxy, scale * one.growth_rate_proxy, rtol=1e-12, atol=0,
                                   err_msg=name)
        np.testing.assert_allclose(scaled.growth_over_ntot, one.growth_over_ntot, rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(scaled.uncertainty, one.uncertainty, rtol=0, atol=1e-9, err_msg=name)
        assert np.max(np.abs(scaled.F_pred / scale - one.F_pred) / ntot[:, None, None]) < 1e-12, name
        np.testing.assert_allclose(one.growth_rate, one.growth_over_ntot * ntot * GROWTH_RATE_PER_NTOT,
                                   rtol=1e-14, atol=0, err_msg=name)


def test_growth_proxy_is_the_spec_formula_of_the_crossing_integrals(closures):
    """Spec section 2, step 6: the proxy is max over pairs of sqrt(I+ I-) (units of N_tot), times
    N_tot * 1.9255e-22 cm^3/s in s^-1; the model's growth_rate_proxy is Box3D's, and the model's
    uncertainty is dimensionless (0 for Box3D alone)."""
    F = random_states(np.random.default_rng(4602), 400, max_flux_factor=0.6, scale=1e32)
    box, model = closures["box3d"].apply(F), closures["model"].apply(F)
    integrals = dodo.crossing_features(F).reshape(-1, 3, 6)[:, :, :2]
    proxy = np.sqrt(integrals[..., 0] * integrals[..., 1]).max(axis=1)
    np.testing.assert_array_equal(box.growth_over_ntot, proxy)
    assert GROWTH_RATE_PER_NTOT == 1.9255e-22
    np.testing.assert_allclose(box.growth_rate, proxy * F[..., 0].sum(axis=-1) * 1.9255e-22, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(model.growth_rate_proxy, box.growth_rate)
    assert not box.uncertainty.any()
    crossing = model.status == 0
    assert np.all(np.isfinite(model.growth_rate)) and np.all(model.growth_rate[crossing] > 0)
    assert np.all((model.uncertainty[crossing] > 0) & (model.uncertainty[crossing] < 0.1))


def _threshold_cell(b) -> np.ndarray:
    """nu_e isotropic (n = 1), nubar_e of density b with flux factor 0.5 along z, heavy species
    0.4 with small fluxes: the e-x pairs cross for b above ~0.3044."""
    b = np.atleast_1d(np.asarray(b, float))
    F = np.zeros((len(b), 6, 4))
    F[:, 0, 0] = 1.0
    F[:, 3, 0], F[:, 3, 3] = b, 0.5 * b
    F[:, (1, 2, 4, 5), 0] = 0.4
    F[:, (1, 2), 3], F[:, (4, 5), 3] = 0.05, 0.08
    return F


def _bisect(first_side, lo: float, hi: float) -> tuple[float, float]:
    """Adjacent doubles lo < hi with first_side(lo) true and first_side(hi) false."""
    assert first_side(lo) and not first_side(hi)
    while np.nextafter(lo, hi) < hi:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if first_side(mid) else (lo, mid)
    return lo, hi


def test_growth_proxy_is_continuous_at_the_threshold_and_where_a_direction_changes_side(closures):
    """At the stability threshold the proxy goes from 0 to at most sqrt(1e-12 I_large) (the lobe
    noise bound), and the model's rate with it; where one Lebedev direction changes the side of
    G = 0 inside a crossing, Box3D's change jumps (spec section 2, step 3) but the proxy does not."""
    box, model = closures["box3d"], closures["model"]
    lo, hi = _bisect(lambda b: box.apply(_threshold_cell(b)).status[0] != 0, 0.30, 0.31)
    stable, crossing = box.apply(_threshold_cell([lo, hi])), model.apply(_threshold_cell([lo, hi]))
    assert stable.growth_over_ntot[0] == 0 and crossing.growth_over_ntot[0] == 0
    assert crossing.uncertainty[0] == 0
    I_large = dodo.crossing_features(_threshold_cell(hi))[0, :2].max()  # the e-mu pair's (e-tau's the same)
    assert 0 < stable.growth_over_ntot[1] <= np.sqrt(1e-12 * I_large) and 0 < crossing.growth_over_ntot[1] < 1e-5
    # a direction changing side: Box3D's F_box jumps by 7.7e-3 N_tot between adjacent doubles
    jump = lambda a, b: np.ptp(box.apply(_threshold_cell([a, b])).F_pred, axis=0).max()  # noqa: E731
    lo, hi = _bisect(lambda b: jump(0.5037, b) < 1e-3, 0.5037, 0.50405)
    across = box.apply(_threshold_cell([lo, hi]))
    assert np.all(across.status == 0)
    ntot = _threshold_cell(lo)[0, :, 0].sum()  # 3.1
    assert np.abs(across.F_pred[1] - across.F_pred[0]).max() > 5e-3 * ntot
    assert abs(across.growth_over_ntot[1] - across.growth_over_ntot[0]) < 1e-12
    learned = model.apply(_threshold_cell([lo, hi]))
    assert np.all(np.isfinite(learned.growth_rate)) and np.all(learned.growth_rate > 0)
    np.testing.assert_array_equal(learned.growth_rate_proxy, across.growth_rate)
