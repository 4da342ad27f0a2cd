"""Outside probe of the physics laws, round thirteen (docs/reliability_python.md, "Physics-law probe, round
thirteen"): the laws of the closure's other outputs (growth rate, uncertainty) and of scale, on random,
M1-like, merger-like, mu = tau and nearly stable cells, at rest and boosted up to v = 0.99: scale
covariance from 1e-30 to 1e30 about densities of 1e30 ... 1e35 cm^-3 and out to the ends of the double
range; the growth rate and uncertainty under relabellings, reflections, time reversal and boosts, on
Box3D-only handles, at the stability threshold, at the flux-factor limit and across the default model's
distance gate; and their parity between Python, the C API and the two network evaluators.

No law was found broken in the code; the docs' "Box3D's proxy is continuous in the inputs" (runtime.md,
"Continuity") was false at the flux-factor limit, where a deep crossing's rate drops to 0 in one ulp.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import dodo

if not dodo.runtime_available():
    pytest.skip("dodo built without the closure runtime", allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
from conftest import random_states  # noqa: E402
from test_box3d_screen import m1_like  # noqa: E402
from test_probe_physics_round11 import _nearly_stable  # noqa: E402
from test_probe_physics_round12 import _threshold_cells  # noqa: E402

pytestmark = pytest.mark.usefixtures("native_evaluator")

NO_CROSSING = int(dodo.CellStatus.NO_CROSSING)
FLUX_FACTOR = int(dodo.CellStatus.FLUX_FACTOR)
REJECTED = 2 | 4 | 8 | 16 | 32
MU_TAU, NU_NUBAR, BOTH = [0, 2, 1, 3, 5, 4], [3, 4, 5, 0, 1, 2], [3, 5, 4, 0, 2, 1]


def _merger_like(rng, n):
    """All six species beamed about a common axis (flux factors 0.5-0.95), nubar_e 0.8-1.3 times nu_e."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    F = np.zeros((n, 6, 4))
    F[..., 0] = rng.uniform(0.2, 1.0, (n, 6))
    F[:, 3, 0] = F[:, 0, 0] * rng.uniform(0.8, 1.3, n)
    direction = axis[:, None, :] + rng.normal(scale=0.2, size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 1:] = (F[..., 0] * rng.uniform(0.5, 0.95, (n, 6)))[..., None] * direction
    return F


def _deep_kinds(rng, n):
    """Rest-frame cells of order-1 density whose crossings (where they cross) are deep."""
    return {"random": random_states(rng, n, scale=1.0), "m1": m1_like(rng, n) / 1e33,
            "merger": _merger_like(rng, n), "mu=tau": random_states(rng, n, scale=1.0, mu_equals_tau=True)}


def _velocities(rng, n, fastest):
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    v = rng.uniform(0.0, fastest, n)
    W = 1 / np.sqrt(1 - v * v)
    return np.concatenate([W[:, None], (W * v)[:, None] * direction], axis=1)


def _moving(F, u):
    return dodo.boost_from_rest(F, u[:, None, :])


def _relative(a, b):
    return np.where(b > 0, np.abs(a - b) / np.where(b > 0, b, 1.0), np.abs(a))


def _bits(a):
    return a.view(np.uint64)


def test_every_output_scales_with_the_density_from_1e_minus_30_to_1e30(closures):
    """physics.md section 1, scale: F_pred(lambda F) = lambda F_pred(F), the growth rate (s^-1) lambda times
    (mu = sqrt(2) G_F n), growth_over_ntot and the uncertainty (units of N_tot) unchanged. Measured on 2,000
    cells of four kinds (deep crossings; 0.99 fastest), densities 1e30 ... 1e35 cm^-3, lambda 1e-30 ... 1e30:
    statuses equal, F_pred 2.7e-14 N_tot, rate 2.5e-13 relative, growth_over_ntot 6.1e-15, uncertainty the
    same bits; powers of two every field bit for bit (the three paths alike)."""
    rng = np.random.default_rng(1301)
    for kind, F0 in _deep_kinds(rng, 120).items():
        for moving in (False, True):
            u = _velocities(rng, len(F0), 0.99) if moving else None
            base = (_moving(F0, u) if moving else F0) * 10.0 ** rng.uniform(30, 35, len(F0))[:, None, None]
            ntot = dodo.comoving_density(base, u)
            for name, closure in closures.items():
                before = closure.apply(base, u)
                assert (before.growth_over_ntot > 0).sum() > len(F0) // 2, (kind, name)  # mostly crossing cells
                for lam in (1e-30, 1e-10, 3.0, 1e10, 1e30, 2.0 ** -100, 2.0 ** 100):
                    after = closure.apply(base * lam, u)
                    label = (kind, moving, name, lam)
                    assert np.array_equal(after.status, before.status), label
                    assert np.array_equal(_bits(after.uncertainty), _bits(before.uncertainty)), label
                    if np.log2(lam) == int(np.log2(lam)):  # exact scaling: the same bits, scaled
                        assert np.array_equal(after.F_pred, before.F_pred * lam), label
                        assert np.array_equal(after.growth_rate, before.growth_rate * lam), label
                        assert np.array_equal(after.growth_over_ntot, before.growth_over_ntot), label
                        continue
                    F_error = np.abs(after.F_pred / lam - before.F_pred).max(axis=(1, 2)) / ntot
                    assert F_error.max() <= 1e-12, (label, F_error.max())
                    assert _relative(after.growth_rate / lam, before.growth_rate).max() <= 1e-11, label
                    assert _relative(after.growth_rate_proxy / lam, before.growth_rate_proxy).max() <= 1e-11, label
                    assert np.abs(after.growth_over_ntot - before.growth_over_ntot).max() <= 1e-13, label


def test_scale_covariance_holds_out_to_the_ends_of_the_double_range(closures):
    """Crossing cells scaled so that N_tot is 1.01e-300 (just above the vacuum bound, README "Per-cell
    status"), 1e-250, 1e250 and 1e306 (at rest: every value below DBL_MAX): statuses those of order-1 cells,
    outputs lambda times theirs, rates positive and finite (subnormal at 1e-300: the rate never rounds to 0),
    uncertainty the same bits. Below 1e-300 every cell is ZERO_DENSITY with rate and uncertainty 0."""
    rng = np.random.default_rng(1302)
    for kind, F in _deep_kinds(rng, 100).items():
        ntot = dodo.comoving_density(F, None)
        for name, closure in closures.items():
            before = closure.apply(F)
            crossing = (before.status & (NO_CROSSING | REJECTED)) == 0
            for target in (1.01e-300, 1e-250, 1e250, 1e306):
                lam = target / ntot
                after = closure.apply(F * lam[:, None, None])
                label = (kind, name, target)
                assert np.array_equal(after.status, before.status), label
                assert np.isfinite(after.F_pred).all() and np.isfinite(after.growth_rate).all(), label
                assert np.array_equal(_bits(after.uncertainty), _bits(before.uncertainty)), label
                assert (after.growth_rate[crossing] > 0).all() and (after.growth_rate[~crossing] == 0).all(), label
                error = np.abs(after.F_pred / lam[:, None, None] - before.F_pred).max(axis=(1, 2)) / ntot
                assert error.max() <= 1e-12, (label, error.max())
                if target > 1e-280:  # the rate in s^-1 is subnormal below N_tot ~1e-286 (runtime.md)
                    assert _relative(after.growth_rate / lam, before.growth_rate).max() <= 1e-11, label
            vacuum = closure.apply(F * (9.9e-301 / ntot)[:, None, None])
            assert np.all(vacuum.status == int(dodo.CellStatus.ZERO_DENSITY)), (kind, name)
            assert np.all(vacuum.growth_rate == 0) and np.all(vacuum.uncertainty == 0), (kind, name)


def test_growth_rate_and_uncertainty_keep_the_symmetries_and_their_signs(closures):
    """Finite, >= 0 (no -0.0), exactly 0 on stable and rejected cells, positive on crossing cells; under
    mu <-> tau, nu <-> nubar and both the same bits; under a mirror and time reversal (every flux and v
    reversed) the rate to 6.3e-16 and the uncertainty the same bits; the comoving rate of a cell boosted up
    to v = 0.99 its rest-frame cell's to 3.1e-12 relative (deep crossings; runtime.md, "Units"); a
    Box3D-only handle has uncertainty 0 and growth rate = proxy, dodo.box3d's rate to 2 ulp (the binding
    multiplies growth_over_ntot, N_tot and the constant in another order; section 61 saw 1 ulp)."""
    rng = np.random.default_rng(1303)
    kinds = _deep_kinds(rng, 250)
    kinds["nearly stable"] = _nearly_stable(rng, 250, 10.0 ** rng.uniform(-10, -1, 250))
    for kind, F0 in kinds.items():
        u = _velocities(rng, len(F0), 0.99)
        F = _moving(F0, u)
        mirrored, mirrored_u = F.copy(), u.copy()
        mirrored[..., 1] *= -1
        mirrored_u[:, 1] *= -1
        reversed_, reversed_u = F.copy(), u.copy()
        reversed_[..., 1:] *= -1
        reversed_u[:, 1:] *= -1
        for name, closure in closures.items():
            r = closure.apply(F, u)
            label = (kind, name)
            stable_or_rejected = (r.status & (NO_CROSSING | REJECTED)) != 0
            for field in (r.growth_rate, r.growth_rate_proxy, r.growth_over_ntot, r.uncertainty):
                assert np.isfinite(field).all() and not np.signbit(field).any(), label
            assert np.all(r.growth_rate[stable_or_rejected] == 0) and np.all(r.uncertainty[stable_or_rejected] == 0)
            assert np.all(r.growth_rate[~stable_or_rejected] > 0), label
            for relabelling in (MU_TAU, NU_NUBAR, BOTH):
                s = closure.apply(F[:, relabelling], u)
                assert np.array_equal(s.status, r.status), label
                assert np.array_equal(_bits(s.growth_rate), _bits(r.growth_rate)), (label, relabelling)
                assert np.array_equal(_bits(s.uncertainty), _bits(r.uncertainty)), (label, relabelling)
            for G, v in ((mirrored, mirrored_u), (reversed_, reversed_u)):
                s = closure.apply(G, v)
                assert np.array_equal(s.status, r.status), label
                assert _relative(s.growth_rate, r.growth_rate).max() <= 1e-14, label
                assert np.array_equal(_bits(s.uncertainty), _bits(r.uncertainty)), label
            if kind != "nearly stable":  # a weak crossing keeps its rate to ~W^2 eps / p only (round eleven)
                rest = closure.apply(F0)
                assert np.array_equal(rest.status, r.status), label
                assert _relative(r.growth_rate, rest.growth_rate).max() <= 1e-10, label
                assert np.abs(r.uncertainty - rest.uncertainty).max() <= 1e-7, label
            if name == "box3d":
                assert np.all(r.uncertainty == 0), label
                assert np.array_equal(r.growth_rate, r.growth_rate_proxy), label
                box = dodo.box3d(F, u)
                assert np.array_equal(box.status, r.status)
                assert np.array_equal(box.growth_over_ntot, r.growth_over_ntot)
                ulp = np.spacing(np.maximum(box.growth_rate, r.growth_rate))
                assert np.all(np.abs(box.growth_rate - r.growth_rate) <= 2 * ulp), label


def test_at_the_stability_threshold_the_rate_is_continuous_and_the_uncertainty_steps():
    """One ulp past the flip to NO_CROSSING (the lobe-noise bound; round twelve's families, at rest and moving
    up to v = 0.99) the model's rate is a few 1e-13 N_tot (0.73-0.87 times the proxy, which is itself
    continuous from 0): continuous. The uncertainty is not: 0 on the stable side, the model's 1.6e-3 ...
    4.2e-3 N_tot on the other (docs/runtime.md, "Continuity")."""
    closure = dodo.Closure()
    for F, u in _threshold_cells(bases=6):
        r = closure.apply(F, u)
        crossing = (r.status & NO_CROSSING) == 0
        assert 0 < crossing.sum() < len(F)
        assert np.all(r.growth_over_ntot[~crossing] == 0) and np.all(r.uncertainty[~crossing] == 0)
        assert 0 < r.growth_over_ntot[crossing].min() and r.growth_over_ntot[crossing].max() < 2e-12
        assert r.uncertainty[crossing].min() > 1e-4


def _across_the_flux_factor_limit(F, species):
    """Cell F with `species`' flux factor set to 0.98 (1 + k eps), k = -6 ... 6 (its direction kept)."""
    factors = 0.98 * (1 + np.arange(-6, 7) * np.finfo(float).eps)
    cells = np.repeat(F[None], len(factors), axis=0)
    direction = F[species, 1:] / np.linalg.norm(F[species, 1:])
    cells[:, species, 1:] = direction * (factors * F[species, 0])[:, None]
    return cells


def test_at_the_flux_factor_limit_a_deep_crossing_rate_drops_to_zero_in_one_ulp(closures):
    """physics.md section 2 flags flux factors at or above ~0.98; a flagged cell is rejected (FLUX_FACTOR),
    with growth rate, proxy and uncertainty 0 (runtime.md's table). So across the limit the proxy is not
    continuous, which runtime.md's "Continuity" said it was: on 300 random crossing cells (flux factors up to
    0.7, one species scanned across 0.98 by ulps) the proxy fell from 0.20 N_tot (median; up to 0.37) to 0
    between adjacent doubles, the model's rate by up to 0.46 N_tot and its uncertainty by up to 3.4e-2. A
    rate of 0 there does not mean stable: the status says why."""
    rng = np.random.default_rng(1305)
    F = random_states(rng, 40, scale=1.0, max_flux_factor=0.7)
    species = rng.integers(0, 6, len(F))
    drops = []
    for name, closure in closures.items():
        for k in range(len(F)):
            cells = _across_the_flux_factor_limit(F[k], species[k])
            r = closure.apply(cells)
            flagged = (r.status & FLUX_FACTOR) != 0
            assert flagged[-1] and not flagged[0], (name, k)  # the scan straddles the limit
            edge = np.flatnonzero(flagged)[0]
            assert np.all(flagged[edge:]) and not flagged[:edge].any(), (name, k)  # one decision per value
            assert np.all(r.growth_rate[flagged] == 0) and np.all(r.growth_rate_proxy[flagged] == 0)
            assert np.all(r.uncertainty[flagged] == 0)
            assert np.array_equal(r.F_pred[flagged], cells[flagged])  # realizable as given: returned
            if r.status[edge - 1] & NO_CROSSING == 0:
                drops.append(r.growth_over_ntot[edge - 1])
    assert len(drops) > len(closures) * len(F) // 2
    assert np.median(drops) > 0.05, np.median(drops)  # a deep crossing's rate, not a vanishing one


def test_growth_rate_and_uncertainty_are_continuous_across_the_distance_gate():
    """The distance gate exp(-max(0, d^2 - d2_max)/d2_max) scales the correction only; the rate
    (proxy x exp(log_growth_ratio)) and the uncertainty come from the same network rows and must not step
    where d^2 = d2_max (round twelve's lines from an in-distribution to a far-out cell). Measured between
    points 5e-9 apart there: rate 1.2e-6 relative, uncertainty 1.5e-8 N_tot (either evaluator)."""
    pytest.importorskip("onnx")
    from gate_windows import distance_ratio, windows_across_the_gate

    from dodo.training.gate_graph import far_out_probe_cells

    closure = dodo.Closure()
    near = random_states(np.random.default_rng(5), 200) / 1e33
    crossed = 0
    for F in windows_across_the_gate(closure, distance_ratio(), near, far_out_probe_cells(400)):
        result = closure.apply(F)
        if len(np.unique(result.status)) != 1:
            continue  # a status change inside the window is Box3D's step, not the gate's
        rate, spread = result.growth_over_ntot, result.uncertainty
        assert rate.min() > 0 and spread.min() > 0
        assert np.abs(np.diff(rate)).max() <= 1e-5 * rate.mean()
        assert np.abs(np.diff(spread)).max() <= 1e-7
        crossed += 1
    assert crossed >= 3


def test_growth_rate_and_uncertainty_agree_between_python_the_c_api_and_both_evaluators(closures):
    """The C API's dodo_apply_diagnostics gives Python's bytes (Box3D alone and the default model; moving
    cells up to v = 0.99, densities 1 and 1e33); ONNX Runtime's graph the native evaluator's statuses (but
    for CORRECTION_LIMITED) and zeros, the rate to 5.5e-6 relative and the uncertainty to 1.5e-7 N_tot
    (float32 rounding; runtime.md, "Precision", 2e-5)."""
    from libdodo_ctypes import create_closure, load_libdodo
    from test_probe_physics_round8 import _capi

    import dodo.models

    lib = load_libdodo()
    rng = np.random.default_rng(1306)
    kinds = _deep_kinds(rng, 300)
    kinds["nearly stable"] = _nearly_stable(rng, 300, 10.0 ** rng.uniform(-10, -1, 300))
    for name, path in (("box3d", None), ("model", str(dodo.models.default_model_path()).encode())):
        code, message, handle = create_closure(lib, path, threads=2)
        assert code == 0, message
        try:
            for kind, F0 in kinds.items():
                u = _velocities(rng, len(F0), 0.99)
                for scale in (1.0, 1e33):
                    F = np.ascontiguousarray(_moving(F0, u) * scale)
                    r = closures[name].apply(F, u)
                    out, status, growth, spread = _capi(lib, handle, F, u)
                    label = (name, kind, scale)
                    assert np.array_equal(out, r.F_pred) and np.array_equal(status, r.status), label
                    assert np.array_equal(_bits(growth), _bits(r.growth_rate)), label
                    assert np.array_equal(_bits(spread), _bits(r.uncertainty)), label
                    if name == "model" and "onnxruntime" in closures:
                        o = closures["onnxruntime"].apply(F, u)
                        assert np.array_equal(o.status | 256, r.status | 256), label
                        assert np.array_equal(o.growth_rate > 0, r.growth_rate > 0), label
                        assert _relative(o.growth_rate, r.growth_rate).max() <= 2e-5, label
                        assert np.abs(o.uncertainty - r.uncertainty).max() <= 1e-6, label
        finally:
            lib.dodo_closure_destroy(handle)
