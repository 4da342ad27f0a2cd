"""Outside probe of the physics laws, round five (docs/reliability_python.md, section 49): continuity
along smooth one-parameter families of cells, the stability (NO_CROSSING) boundary, cells near the
flux cone, zero and dominant species, densities spanning 1e-30 ... 1, Lorentz covariance up to
W = 1e4 and bit-for-bit determinism across threads, chunks, orders and batch membership; through
dodo.Closure (the default model and "box3d"), dodo.box3d and the C API.

No law of ../shared/spec/physics.md section 3 was found violated. Continuity is not one of its laws:
along smooth families F_pred steps only where the spec's Box3D steps (a quadrature direction changes
the side of G = 0 inside a crossing, documented in docs/runtime.md) or where the status changes
(the stability boundary, a species reaching the 0.98 flux-factor limit). The step at the stability
boundary is the spec's (P = 1/3 on the smaller side however small, spec section 2 step 3): measured
between adjacent doubles on 242 merger-like beamed cells it is 1.0e-2 N_tot at the median and up
to 0.12 (L1 of the six density changes; one species up to 3.0e-2) for Box3D, 1.6e-2 and 0.11 for
the closure, where section 12 of the reliability document had 1.6e-3 on random cells;
docs/runtime.md now gives these sizes. A continuous Box3D is a spec change (reported, not made here).

The tests are regression tests of laws no earlier test asserts on these families and cells.
"""
from __future__ import annotations

import numpy as np
import pytest

import dodo

if not dodo.runtime_available():
    pytest.skip("dodo built without the closure runtime", allow_module_level=True)

EPS = np.finfo(float).eps
REJECTED = 2 | 4 | 8 | 16 | 32  # FLUX_FACTOR, NEGATIVE_DENSITY, NONFINITE, ZERO_DENSITY, BAD_VELOCITY


# 'native' means native whatever the caller's environment (bit-for-bit tests below).
pytestmark = pytest.mark.usefixtures("native_evaluator")


@pytest.fixture(scope="module")
def closures(native_evaluator):
    return {"model": dodo.Closure(threads=1), "box3d": dodo.Closure("box3d", threads=1)}


def _unit(rng, shape):
    d = rng.normal(size=shape + (3,))
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _cells(rng, density, flux_factor):
    F = np.empty(density.shape + (4,))
    F[..., 0] = density
    F[..., 1:] = _unit(rng, density.shape) * (density * flux_factor)[..., None]
    return F


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _family_base():
    F = np.zeros((6, 4))
    F[0] = [1.0, 0.1, 0.0, 0.0]
    F[3] = [0.9, 0.0, 0.0, 0.45]
    F[1] = [0.4, 0.05, 0.0, 0.1]
    F[2] = [0.38, 0.04, 0.01, 0.1]
    F[4] = [0.4, 0.0, 0.05, 0.12]
    F[5] = [0.41, 0.0, 0.04, 0.12]
    return F


def _families(n):
    base = _family_base()
    angle = np.linspace(0.0, np.pi, n)
    rotated = np.repeat(base[None], n, 0)
    for i, a in enumerate(angle):
        rotated[i, 3, 1:] = _rotation([1, 0.3, 0], a) @ base[3, 1:]
    scale = np.linspace(0.5, 1.5, n)  # n_nubar_e - n_nu_e crosses 0 (the flavour images' blend band)
    scaled = np.repeat(base[None], n, 0)
    scaled[:, 3] *= scale[:, None]
    factor = np.linspace(0.0, 0.975, n)
    fluxed = np.repeat(base[None], n, 0)
    fluxed[:, 3, 3] = 0.9 * factor
    speed = np.linspace(0.0, 0.99, n)  # the lab cell fixed, the fluid's speed varied
    W = 1 / np.sqrt(1 - speed**2)
    u = np.zeros((n, 4))
    u[:, 0] = W
    u[:, 1:] = (W * speed)[:, None] * np.array([0.6, 0.0, 0.8])
    return {"rotate nubar_e's flux": (rotated, None), "scale nubar_e": (scaled, None),
            "nubar_e's flux factor": (fluxed, None), "boost": (np.repeat(base[None], n, 0), u)}


@pytest.mark.parametrize("family", ["rotate nubar_e's flux", "scale nubar_e", "nubar_e's flux factor", "boost"])
def test_F_pred_steps_only_where_a_direction_changes_side_or_the_status_changes(closures, family):
    """Along a smooth one-parameter family (1,500 steps), every step of F_pred / N_tot above 30 times
    the family's median step lies where a Lebedev direction changes the side of G = 0 in some pair
    (the solid-angle fraction of dodo.crossing_features changes: spec section 2 step 3, documented in
    docs/runtime.md) or where the status changes. The flavour images' blend and the gate are smooth."""
    n = 1500
    F, u = _families(n)[family]
    N_tot = np.asarray(dodo.comoving_density(F, u)).reshape(n, -1).sum(-1)
    fraction = dodo.crossing_features(F, u)[:, [2, 8, 14]]
    side_change = np.any(np.diff(fraction, axis=0) != 0, axis=1) | np.any(np.isnan(fraction[1:] + fraction[:-1]), 1)
    for name, closure in closures.items():
        result = closure.apply(F, u)
        change = (result.F_pred - F).reshape(n, -1) / N_tot[:, None]
        step = np.abs(np.diff(change, axis=0)).max(1)
        typical = np.median(step[step > 0])
        status_change = result.status[1:] != result.status[:-1]
        unexplained = np.where((step > 30 * typical) & ~side_change & ~status_change)[0]
        assert unexplained.size == 0, (name, family, typical, [(k, step[k]) for k in unexplained[:5]])
        assert np.all(np.isfinite(result.F_pred)), name


def _threshold_cells(seed, m=1500):
    """Merger-like cells (fluxes about one axis, flux factors 0.5-0.95), each at its stability
    boundary: nubar_e's four-flux scaled by b, bisected to adjacent doubles b_lo (NO_CROSSING) and
    b_hi (crossing). Returns (F_lo, F_hi) of the cells where a boundary was found."""
    rng = np.random.default_rng(seed)
    axis = _unit(rng, (m,))
    density = np.c_[np.ones(m), rng.uniform(0.2, 0.6, (m, 2)), rng.uniform(0.5, 1.5, m), rng.uniform(0.2, 0.6, (m, 2))]
    flux_factor = rng.uniform(0.5, 0.95, (m, 6))
    base = np.zeros((m, 6, 4))
    for a in range(6):
        direction = axis + 0.3 * _unit(rng, (m,))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        base[:, a, 0] = density[:, a]
        base[:, a, 1:] = direction * (density[:, a] * flux_factor[:, a])[:, None]
    box = dodo.Closure("box3d", threads=1)

    def family(b):
        F = base.copy()
        F[:, 3] *= b[:, None]
        return F

    grid = np.linspace(0.2, 3.0, 120)
    status = np.array([box.apply(family(np.full(m, b))).status for b in grid])
    lo, hi = np.full(m, np.nan), np.full(m, np.nan)
    for i in range(m):
        for k in range(len(grid) - 1):
            if {status[k, i], status[k + 1, i]} == {0, 1}:
                lo[i], hi[i] = (grid[k], grid[k + 1]) if status[k, i] == 1 else (grid[k + 1], grid[k])
                break
    found = ~np.isnan(lo)
    lo, hi = lo[found], hi[found]
    base = base[found]
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        stable = box.apply(family(mid)).status == 1
        lo, hi = np.where(stable, mid, lo), np.where(stable, hi, mid)
    assert np.all(np.nextafter(lo, hi) == hi)
    return family(lo), family(hi)


def test_the_step_at_the_stability_boundary_is_the_documented_one(closures):
    """Adjacent doubles of a family across the NO_CROSSING boundary: the stable side is its input bit
    for bit (growth rate and uncertainty 0), the crossing side is a crossing cell with a growth proxy
    at the lobe-noise scale (< 1e-6 N_tot) that obeys the laws, and the step in the densities is
    within what docs/runtime.md states (one species' density at most 0.05 N_tot, the L1 sum of
    the six below 0.2 N_tot, Box3D and the closure; measured on 242 such cells: 3.0e-2 and 0.12 at
    most). The step is not small: the spec's Box3D equilibrates the smaller side of G = 0 however
    small (P = 1/3), so the flavour content of that side's directions moves with it (median 1e-2)."""
    F_lo, F_hi = _threshold_cells(49)
    assert len(F_lo) >= 3
    N_tot = F_hi[..., 0].sum(-1)
    steps = {}
    for name, closure in closures.items():
        lo, hi = closure.apply(F_lo), closure.apply(F_hi)
        assert np.all(lo.status == 1) and np.all(hi.status & ~np.uint32(256) == 0), name
        assert lo.F_pred.tobytes() == F_lo.tobytes(), name
        assert np.all(lo.growth_rate == 0) and np.all(lo.uncertainty == 0), name
        assert np.all(hi.growth_over_ntot > 0) and np.all(hi.growth_over_ntot < 1e-6), name
        change = hi.F_pred - F_hi
        flavour_sums = np.abs(np.concatenate([change[:, :3].sum(1), change[:, 3:].sum(1)], 1)).max(1)
        lepton = np.abs(change[:, :3, 0] - change[:, 3:, 0]).max(1)
        assert np.all(flavour_sums <= 1e-12 * N_tot) and np.all(lepton <= 1e-12 * N_tot), name
        norm = np.sqrt(hi.F_pred[..., 1] ** 2 + hi.F_pred[..., 2] ** 2 + hi.F_pred[..., 3] ** 2)
        assert np.all(norm <= hi.F_pred[..., 0]), name
        steps[name] = np.abs(change[..., 0]).sum(1) / N_tot
        assert np.all(steps[name] < 0.2), (name, steps[name].max())
        assert np.all(np.abs(change[..., 0]) <= 0.05 * N_tot[:, None]), name
    # the step is Box3D's, not rounding: a third of the smaller side's flavour difference moves
    assert np.median(steps["box3d"]) > 1e-3


def _laws(F, u, result, rest_tolerance):
    """Conservation (lab flavour sums, rest-frame lepton number per flavour, in N_tot), realizability
    of every output species in the documented order, finiteness; stable cells bit for bit."""
    P = result.F_pred
    rest = (lambda X: dodo.boost_to_rest(X, u[:, None, :])) if u is not None else (lambda X: X)
    F_rest, P_rest = rest(F), rest(P)
    N_tot = F_rest[..., 0].sum(-1)
    accepted = (result.status & REJECTED) == 0
    change = P - F
    flavour_sums = np.abs(np.concatenate([change[:, :3].sum(1), change[:, 3:].sum(1)], 1)).max(1) / N_tot
    d = P_rest - F_rest
    lepton = np.abs(d[:, :3, 0] - d[:, 3:, 0]).max(1) / N_tot
    assert flavour_sums[accepted].max(initial=0) <= rest_tolerance
    assert lepton[accepted].max(initial=0) <= rest_tolerance
    assert np.all(np.isfinite(P)) and np.all(np.isfinite(result.growth_rate))
    norm = np.sqrt(P[..., 1] ** 2 + P[..., 2] ** 2 + P[..., 3] ** 2)
    assert np.all(P[..., 0] >= 0) and np.all(norm <= P[..., 0]), np.argwhere(norm > P[..., 0])[:3]
    stable = result.status == 1
    assert P[stable].tobytes() == F[stable].tobytes()
    assert np.all(result.growth_rate[~accepted | stable] == 0)


def _edge_cells(case, rng, n=800):
    density = rng.uniform(0.1, 1.0, (n, 6))
    u = None
    if case == "near the cone at rest":
        flux_factor = rng.uniform(0.0, 0.6, (n, 6))
        for _ in range(2):
            flux_factor[np.arange(n), rng.integers(0, 6, n)] = rng.uniform(0.95, 1.0, n)
        F = _cells(rng, density, flux_factor)
    elif case == "near the cone after the boost":
        F = _cells(rng, density, rng.uniform(0.0, 0.9, (n, 6)))
        speed, direction = rng.uniform(0.5, 0.99, n), _unit(rng, (n,))
        W = 1 / np.sqrt(1 - speed**2)
        u = np.c_[W, (W * speed)[:, None] * direction]
        F[:, 0, 1:] = -0.9 * direction * F[:, 0, :1]  # against the flow: f' from 0.966 to 0.9995
    elif case == "a species of zero density":
        F = _cells(rng, density, rng.uniform(0.0, 0.8, (n, 6)))
        F[np.arange(n), rng.integers(0, 6, n)] = 0.0
        u = np.c_[np.full(n, 3.0), np.sqrt(8.0) * _unit(rng, (n,))]
        F = dodo.boost_from_rest(F, u[:, None, :])
    elif case == "one species with 99.99% of N_tot":
        F = _cells(rng, density * 1e-4 / 6, rng.uniform(0.0, 0.8, (n, 6)))
        F[np.arange(n), rng.integers(0, 6, n)] *= 6e4
    else:  # densities spanning 1e-30 ... 1, moving at W = 10
        F = _cells(rng, 10 ** rng.uniform(-30, 0, (n, 6)), rng.uniform(0.0, 0.9, (n, 6)))
        u = np.c_[np.full(n, 10.0), np.sqrt(99.0) * _unit(rng, (n,))]
        F = dodo.boost_from_rest(F, u[:, None, :])
    return F, u


@pytest.mark.parametrize("case", ["near the cone at rest", "near the cone after the boost", "a species of zero density",
                                  "one species with 99.99% of N_tot", "densities spanning 1e-30 ... 1"])
def test_edge_cells_keep_the_laws_and_their_flags(closures, case):
    """Conservation to rounding (1e-12 N_tot, README's bound; measured 1.3e-16 at rest, 5e-14 at W =
    10, the check's own boost), every output species realizable, stable cells their input, and
    FLUX_FACTOR exactly where a rest-frame flux factor reaches 0.98 (Box3D and the closure alike)."""
    F, u = _edge_cells(case, np.random.default_rng(len(case) * 1009 + ord(case[-1])))
    F_rest = dodo.boost_to_rest(F, u[:, None, :]) if u is not None else F
    flux_factor = np.linalg.norm(F_rest[..., 1:], axis=-1) / np.where(F_rest[..., 0] > 0, F_rest[..., 0], 1)
    beyond = np.any(flux_factor >= 0.98, axis=1)
    statuses = {}
    for name, closure in closures.items():
        result = closure.apply(F, u)
        _laws(F, u, result, 1e-12)
        statuses[name] = result.status
        margin = np.abs(flux_factor - 0.98).min(1) > 1e-12
        np.testing.assert_array_equal(((result.status & 2) != 0)[margin], beyond[margin], err_msg=name)
    np.testing.assert_array_equal(statuses["model"] & ~np.uint32(256), statuses["box3d"])
    assert np.sum(statuses["box3d"] == 0) > 100  # the laws were tested on crossing cells


@pytest.mark.parametrize("W", [100.0, 1e3, 1e4])
def test_closure_commutes_with_boosts_up_to_W_1e4(closures, W):
    """closure(boost(F), u) boosted back equals closure(F) at rest within the double boost's
    rounding (10 W^2 eps N_tot; the network reads float32 inputs, so 1e-7 more for the model;
    measured 2.6e-8 and 3.5e-8 at W = 1e4), the same status, the comoving growth rate to 1e-5 and
    the uncertainty to 1e-7; the C API gives Python's answer for the moving cells."""
    rng = np.random.default_rng(int(W))
    n = 600
    F = _cells(rng, rng.uniform(0.05, 1.0, (n, 6)) * 1e32, rng.uniform(0.0, 0.9, (n, 6)))
    u = np.c_[np.full(n, W), np.sqrt(W * W - 1) * _unit(rng, (n,))]
    F_lab = dodo.boost_from_rest(F, u[:, None, :])
    N_tot = F[..., 0].sum(-1)
    for name, closure in closures.items():
        at_rest, moving = closure.apply(F), closure.apply(F_lab, u)
        np.testing.assert_array_equal(moving.status, at_rest.status, err_msg=name)
        back = dodo.boost_to_rest(moving.F_pred, u[:, None, :])
        error = np.abs(back - at_rest.F_pred).reshape(n, -1).max(1) / N_tot
        tolerance = 10 * W * W * EPS + (1e-7 if name == "model" else 0.0)
        assert error.max() <= tolerance, (name, W, error.max())
        np.testing.assert_allclose(moving.growth_rate, at_rest.growth_rate, rtol=1e-5, atol=0, err_msg=name)
        np.testing.assert_allclose(moving.uncertainty, at_rest.uncertainty, rtol=0, atol=1e-7, err_msg=name)
        assert np.sum(at_rest.status == 0) > 300
        _laws(F_lab, u, moving, 100 * W * W * EPS)
    from libdodo_ctypes import default_model_diagnostics, load_libdodo

    F_pred, status, growth, uncertainty = default_model_diagnostics(load_libdodo(), F_lab, u)
    python = closures["model"].apply(F_lab, u)
    np.testing.assert_array_equal(status, python.status)
    assert F_pred.tobytes() == python.F_pred.tobytes()
    np.testing.assert_array_equal(growth, python.growth_rate)
    np.testing.assert_array_equal(uncertainty, python.uncertainty)


def _bytes(result, index=slice(None)):
    return b"".join(np.ascontiguousarray(np.asarray(getattr(result, f))[index]).tobytes() for f in result._fields)


@pytest.mark.parametrize("model", [None, "box3d"])
def test_the_same_cells_give_the_same_bits_whatever_threads_chunks_order_or_company(model):
    """Moving cells (W up to 100) of every kind (crossing, flavour-image band, mu = tau, beamed to
    0.97, so some FLUX_FACTOR): threads 1, 2, 8 x chunk sizes 1, 7, 1024; a shuffled batch; each
    of 40 cells alone: every output field the same bits."""
    rng = np.random.default_rng(8)
    n = 1100
    density = rng.uniform(0.05, 1.0, (n, 6))
    density[::5, 3] = density[::5, 0] * (1 + rng.uniform(-0.02, 0.02, len(density[::5])))
    F = _cells(rng, density, rng.uniform(0.0, 0.97, (n, 6)))
    F[1::7, 2], F[1::7, 5] = F[1::7, 1], F[1::7, 4]
    W = 10 ** rng.uniform(0, 2, n)
    u = np.c_[W, np.sqrt(W * W - 1)[:, None] * _unit(rng, (n,))]
    F = dodo.boost_from_rest(F, u[:, None, :])
    reference = dodo.Closure(model, threads=1).apply(F, u)
    assert len(set(reference.status.tolist()) - {256}) >= 2
    for threads in (1, 2, 8):
        for chunk in (1, 7, 1024):
            got = dodo.Closure(model, threads=threads, chunk_size=chunk).apply(F, u)
            assert _bytes(got) == _bytes(reference), (threads, chunk)
    closure = dodo.Closure(model, threads=2)
    order = rng.permutation(n)
    assert _bytes(closure.apply(F[order], u[order])) == _bytes(reference, order)
    for i in rng.choice(n, 40, replace=False):
        assert _bytes(closure.apply(F[i:i + 1], u[i:i + 1])) == _bytes(reference, slice(i, i + 1)), i
