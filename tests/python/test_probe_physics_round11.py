"""Outside probe of the physics laws, round eleven (docs/reliability_python.md, "Physics-law probe, round
eleven"): the crossing-strength bound (docs/runtime.md, step 5: the learned change of a species at most 4
times Box3D's growth proxy, flag CORRECTION_LIMITED) under relabellings, reflections and scale, on every
path (the native evaluator, ONNX Runtime's graph, the C API, the NumPy reference of the pipeline, the
export's float64 reference), and continuous where it sets in; and weak crossings (growth proxy p far
below the training data's 0.0056 N_tot: nearly stable cells, nubar = nu but nubar_e's flux turned by a
small angle), where Box3D's answer is continuous but steep in its inputs: one ulp of an input moves it
by up to ~0.1 eps/p N_tot (flux factors up to 0.8; beamed species add the documented jumps of directions
that change side), and a boost's rounding (~W^2 eps) moves the growth rate by up to ~W^2 eps/p
relative (docs/runtime.md, "Growth rate and uncertainty", corrected this round: it said 3e-7 up to
W = 1e3 for every cell).
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
from test_probe_physics_round8 import NO_CROSSING, _capi, _realizable, closures  # noqa: E402,F401
from test_probe_physics_round9 import _random_cells  # noqa: E402

pytestmark = pytest.mark.usefixtures("native_evaluator")

EPS = np.finfo(float).eps
LIMITED = int(dodo.CellStatus.CORRECTION_LIMITED)
PER_PROXY = 4.0  # docs/runtime.md step 5 (kLearnedChangePerProxy)
MU_TAU = [0, 2, 1, 3, 5, 4]
NU_NUBAR = [3, 4, 5, 0, 1, 2]


def _weak(depth):
    """Round ten's cell: nu_e = nubar_e isotropic (N_tot ~ 2), mu and tau of `depth` with a mu-only
    crossing; self-similar in depth (no quadrature direction changes side along the family)."""
    depth = np.atleast_1d(np.asarray(depth, dtype=float))
    F = np.zeros((len(depth), 6, 4))
    F[:, 0, 0] = F[:, 3, 0] = 1.0
    F[:, 1] = depth[:, None] * np.array([1.0, 0, 0, 0.5])
    F[:, 4] = depth[:, None] * np.array([0.9, 0, 0, -0.5])
    F[:, 2] = F[:, 5] = depth[:, None] * np.array([0.5, 0, 0, 0])
    return F


def _nearly_stable(rng, n, angle):
    """Random cells (flux factors up to 0.8) with nubar = nu, then nubar_e's flux turned by `angle`
    about a random axis: an ELN crossing of depth ~angle, proxy ~1e-3 angle ... angle N_tot."""
    F = _random_cells(rng, n, 0.8)
    F[:, 3:] = F[:, :3]
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    v = F[:, 3, 1:].copy()
    a = np.broadcast_to(np.asarray(angle, dtype=float), (n,))[:, None]
    F[:, 3, 1:] = (v * np.cos(a) + np.cross(axis, v) * np.sin(a)
                   + axis * (axis * v).sum(1, keepdims=True) * (1 - np.cos(a)))
    return F


def _size(change):
    """Per cell, the largest over species of max(|dn|, |dF|) (the bound's measure)."""
    return np.maximum(np.abs(change[..., 0]), np.linalg.norm(change[..., 1:], axis=-1)).max(axis=-1)


def _bounded_cells(seed=11):
    """Cells on which the bound acts (most of them) or nearly acts: nearly stable cells with angles
    1e-8 ... 0.3, and the weak family at depths 0.1 ... 1e-200."""
    rng = np.random.default_rng(seed)
    F = np.concatenate([_nearly_stable(rng, 500, 10 ** rng.uniform(-8, -0.5, 500)),
                        _weak(np.geomspace(1e-1, 1e-200, 100))])
    return F


# -- the crossing-strength bound ----------------------------------------------------------------------


def test_the_crossing_strength_bound_commutes_with_relabellings_reflections_and_scale(closures):
    """The bound's factor is a function of the projected change's per-species sizes and of Box3D's
    proxy: both relabel with the cell, both are invariant under reflections and scale. Measured: the
    flavour images 9.5e-17 N_tot with the same bits of growth rate and uncertainty, a mirror and the
    reversal of every flux 1.1e-16, a scale of 2^60 or 2^-60 the same bits."""
    F = _bounded_cells()
    ntot = F[..., 0].sum(-1)
    for name in ("model", "onnxruntime"):
        if name not in closures:
            continue
        closure = closures[name]
        r = closure.apply(F)
        status = np.asarray(r.status)
        assert np.sum((status & LIMITED) != 0) > 300, name  # the bound acts on most of them
        box = dodo.box3d(F)
        proxy = np.asarray(box.growth_over_ntot)
        learned = _size(r.F_pred - box.F_box) / ntot
        assert np.all(learned <= PER_PROXY * proxy * (1 + 1e-12) + 4 * EPS), name
        change = r.F_pred - F  # flavour sums and each flavour's lepton number kept; every species realizable
        assert np.abs(change.reshape(-1, 2, 3, 4).sum(axis=2)).max() / ntot.min() < 1e-15, name
        assert np.abs(change[:, :3, 0] - change[:, 3:, 0]).max() / ntot.min() < 1e-15, name
        assert _realizable(r.F_pred).all(), name
        images = [(MU_TAU, lambda G: G[:, MU_TAU]), (NU_NUBAR, lambda G: G[:, NU_NUBAR]),
                  (None, lambda G: G * np.array([1.0, -1.0, 1.0, 1.0])),   # x mirror
                  (None, lambda G: G * np.array([1.0, -1.0, -1.0, -1.0]))]  # every flux reversed
        for _, transform in images:
            t = closure.apply(transform(F))
            np.testing.assert_array_equal(t.status, status)
            assert np.abs(t.F_pred - transform(r.F_pred)).max(axis=(1, 2)).max() / ntot.min() < 1e-14, name
            np.testing.assert_allclose(t.growth_rate, r.growth_rate, rtol=1e-14, atol=0)
            np.testing.assert_allclose(t.uncertainty, r.uncertainty, rtol=1e-14, atol=0)
        for scale in (2.0 ** 60, 2.0 ** -60):
            s = closure.apply(F * scale)
            assert s.status.tobytes() == r.status.tobytes(), name
            assert s.F_pred.tobytes() == (r.F_pred * scale).tobytes(), name
            assert s.uncertainty.tobytes() == r.uncertainty.tobytes(), name
            assert s.growth_over_ntot.tobytes() == r.growth_over_ntot.tobytes(), name


def test_the_crossing_strength_bound_is_the_same_on_every_path(closures):
    """The native evaluator, the C API (its bytes), ONNX Runtime's graph (float32 rounding; the same
    CORRECTION_LIMITED cells on these), the export's float64 reference with the default package's graph
    (closure_float64, flavour images; measured 1e-9 N_tot, the same flags) and, on synthetic packages
    whose corrections dwarf the proxy (density-only, equivariant and direct heads), the NumPy reference
    of the pipeline (reference_closure; measured 6e-8 N_tot, the same statuses)."""
    from libdodo_ctypes import create_closure, load_libdodo
    import dodo.models

    rng = np.random.default_rng(12)
    F = _bounded_cells(seed=12)
    n = len(F)
    v = rng.normal(size=(n, 3))
    v *= rng.uniform(0, 0.5, (n, 1)) / np.linalg.norm(v, axis=1, keepdims=True)
    W = 1 / np.sqrt(1 - (v ** 2).sum(1))
    u = np.concatenate([W[:, None], W[:, None] * v], axis=1)
    F = dodo.boost_from_rest(F, u[:, None, :])
    ntot = dodo.comoving_density(F, u)
    r = closures["model"].apply(F, u)
    limited = (np.asarray(r.status) & LIMITED) != 0
    assert limited.sum() > 300
    lib = load_libdodo()
    code, message, handle = create_closure(lib, str(dodo.models.default_model_path()).encode(), threads=2)
    assert code == 0, message
    try:
        out, status, growth, spread = _capi(lib, handle, np.ascontiguousarray(F), np.ascontiguousarray(u))
    finally:
        lib.dodo_closure_destroy(handle)
    assert out.tobytes() == r.F_pred.tobytes() and status.tobytes() == r.status.tobytes()
    assert growth.tobytes() == r.growth_rate.tobytes() and spread.tobytes() == r.uncertainty.tobytes()
    if "onnxruntime" not in closures:
        return
    g = closures["onnxruntime"].apply(F, u)
    np.testing.assert_array_equal(g.status, r.status)
    assert (np.abs(g.F_pred - r.F_pred).max(axis=(1, 2)) / ntot).max() < 1e-6
    try:
        import json

        import onnx
        import onnxruntime
        from dodo.training.export import _OnnxHead, closure_float64
    except ImportError:  # no training extras: the runtime's own paths above
        return
    path = str(dodo.models.default_model_path())
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    network = _OnnxHead(session, meta["dodo.head"], meta["dodo.features"])
    expected = closure_float64(network, F, u, json.loads(meta["dodo.box3d"]), flavour_images=True)
    assert (np.abs(g.F_pred - expected["F_pred"]).max(axis=(1, 2)) / ntot).max() < 1e-7
    crossing = (np.asarray(g.status) & NO_CROSSING) == 0
    flagged = ((expected["bound_factor"] < 1) | (expected["theta"] < 1)) & crossing
    np.testing.assert_array_equal((np.asarray(g.status) & LIMITED) != 0, flagged)
    _synthetic_packages_bound_alike(F, u, ntot)


def _synthetic_packages_bound_alike(F, u, ntot):
    import tempfile

    from dodo.training import synthetic_model as synthetic

    with tempfile.TemporaryDirectory() as directory:
        for kind in ("density_only", "equivariant", "direct"):
            head = "direct" if kind == "direct" else "equivariant"
            mlp = synthetic.SyntheticMLP.random(head, hidden=(32, 32), output_scale=3.0, seed=7)
            if kind == "density_only":  # every c_ab, d_ab 0: the runtime's density-only path
                W, b = (x.copy() for x in mlp.weights[-1])
                W[:, :72] = 0
                b[:72] = 0
                mlp.weights[-1] = (W, b)
            mlp.with_diagnostics()
            path = os.path.join(directory, f"{kind}.onnx")
            synthetic.write_model(path, mlp, n_test_vectors=4)
            expected = synthetic.reference_closure(F, u, mlp, head)
            assert np.sum(expected["bound_factor"] < 1) > 300, kind
            for evaluator in ("auto", "onnxruntime"):
                r = dodo.Closure(path, threads=1, evaluator=evaluator).apply(F, u)
                np.testing.assert_array_equal(r.status, expected["status"])
                assert (np.abs(r.F_pred - expected["F_pred"]).max(axis=(1, 2)) / ntot).max() < 1e-6, kind


def test_the_learned_change_is_continuous_where_the_bound_sets_in(closures):
    """Along round ten's weak family (no quadrature direction changes side) the bound sets in near depth
    0.014 (proxy 0.005 N_tot): across that point the learned change F_pred - F_box moves by the network's
    float32 steps only (measured 1.2e-6 of its size between depths 2e-8 apart, as elsewhere along the
    family), and CORRECTION_LIMITED marks the cells whose change sits on the bound (the unbounded change
    carries that float32 noise, so the flag flickers within ~1e-6 of the onset)."""
    closure = closures["model"]

    def ratio(depth):
        F = _weak(depth)
        r, box = closure.apply(F), dodo.box3d(F)
        return r, box, _size(r.F_pred - box.F_box) / F[:, :, 0].sum(-1) / np.asarray(box.growth_over_ntot)

    lo, hi = 0.005, 0.02  # limited at lo, not at hi
    assert ratio(lo)[0].status[0] & LIMITED and not ratio(hi)[0].status[0] & LIMITED
    for _ in range(40):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if ratio(mid)[0].status[0] & LIMITED else (lo, mid)
    depths = np.geomspace(lo * (1 - 1e-3), hi * (1 + 1e-3), 201)
    r, box, ratios = ratio(depths)
    learned = r.F_pred - box.F_box
    steps = np.abs(np.diff(learned, axis=0)).max(axis=(1, 2))
    assert steps.max() < 1e-5 * np.abs(learned).max(), steps.max()
    flagged = (np.asarray(r.status) & LIMITED) != 0
    assert flagged[0] and not flagged[-1]
    assert np.all(ratios[flagged] <= PER_PROXY * (1 + 1e-9)) and np.all(ratios[~flagged] < PER_PROXY)
    assert np.all(ratios[flagged] > PER_PROXY * (1 - 1e-9))  # a bounded cell sits on the bound


# -- weak crossings: continuous but steep -----------------------------------------------------------------


def test_one_ulp_moves_a_weak_crossing_by_at_most_eps_over_its_proxy(closures):
    """Nearly stable cells (flux factors up to 0.8), angles 1e-3 ... 1e-13 (proxy down to the lobe-noise
    bound, then stable), one of the 24 values one ulp up or down: no non-finite value; stable cells that
    stay stable are their input's bytes; crossing cells whose status stays move by at most eps/p N_tot
    (measured 0.09 eps/p: Box3D's P = 1 - 2/3 I_small/I_large is a ratio of two integrals of size p, and
    its mixing acts on the species' whole distributions, not on their small difference). Not a bound for
    beamed cells: made nearly stable from the Emu-layout cells (flux factors 0.93-0.94) one ulp moved
    the answer by up to 7e-7 N_tot at p = 2.6e-5 (2.6e4 eps/p), where the species are exponentially
    small in the directions away from their beams, an ulp of another species decides the sign of G
    there, and directions change side (runtime.md, "Continuity": Box3D's documented jump)."""
    rng = np.random.default_rng(13)
    closure = closures["model"]
    F = np.concatenate([_nearly_stable(rng, 60, 10.0 ** -k) for k in (3, 5, 7, 9, 10, 11, 12, 13)])
    n = len(F)
    copies = np.repeat(F[:, None], 4, axis=1).reshape(n, 4, 24)
    which = rng.integers(0, 24, (n, 4))
    rows, cols = np.meshgrid(np.arange(n), np.arange(4), indexing="ij")
    copies[rows, cols, which] = np.nextafter(copies[rows, cols, which], rng.choice([-np.inf, np.inf], (n, 4)))
    G = copies.reshape(-1, 6, 4)
    base, moved = closure.apply(F), closure.apply(G)
    assert np.isfinite(moved.F_pred).all() and np.isfinite(moved.growth_rate).all()
    status = np.repeat(np.asarray(base.status), 4)
    same = np.asarray(moved.status) == status
    stable = same & ((status & NO_CROSSING) != 0)
    assert stable.sum() > 100 and (same & ~stable).sum() > 1000
    for c in np.flatnonzero(stable):
        assert moved.F_pred[c].tobytes() == G[c].tobytes()
    crossing = same & ~stable
    ntot = G[:, :, 0].sum(-1)
    proxy = np.repeat(np.asarray(base.growth_rate_proxy), 4) / (np.repeat(F[:, :, 0].sum(-1), 4)
                                                                * dodo.conventions.GROWTH_RATE_PER_NTOT)
    change = np.abs(moved.F_pred - np.repeat(base.F_pred, 4, axis=0)).max(axis=(1, 2)) / ntot
    assert np.all(change[crossing] <= EPS / proxy[crossing] + 1e-14), (change[crossing] * proxy[crossing] / EPS).max()


def test_a_weak_crossing_keeps_its_rest_frame_rate_to_w2_eps_over_its_proxy(closures):
    """docs/runtime.md, "Growth rate and uncertainty", Units (corrected this round): a moving cell gets its
    rest-frame cell's rate to ~1e-6 + W^2 eps/p relative (p the proxy in units of N_tot): the network's
    float32 inputs, and the boost's rounding, ~W^2 eps of the densities, against ELN lobes of size ~p.
    Nearly stable cells with proxies 1e-9 ... 0.1 boosted to W = 2, 10, 100 (statuses equal wherever p
    is far above the lobe-noise bound 8 W^2 eps); measured at most 1.5e-6 + 0.8 W^2 eps/p, e.g. 5.9e-6 at
    W = 10 for p ~ 2e-9, where the text said 3e-7 up to W = 1e3."""
    rng = np.random.default_rng(14)
    closure = closures["model"]
    F = _nearly_stable(rng, 1500, 10 ** rng.uniform(-7, -0.5, 1500))
    rest = closure.apply(F)
    proxy = np.asarray(rest.growth_rate_proxy) / (F[:, :, 0].sum(-1) * dodo.conventions.GROWTH_RATE_PER_NTOT)
    worst = 0.0
    for W in (2.0, 10.0, 100.0):
        direction = rng.normal(size=(len(F), 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        u = np.concatenate([np.full((len(F), 1), W), np.sqrt(W * W - 1) * direction], axis=1)
        moving = closure.apply(dodo.boost_from_rest(F, u[:, None, :]), u)
        keep = (proxy > 1e4 * 8 * W * W * EPS) & ((np.asarray(rest.status) & NO_CROSSING) == 0)
        assert keep.sum() > 500
        unflagged = np.uint32(~LIMITED & 0xFFFFFFFF)
        np.testing.assert_array_equal(np.asarray(moving.status)[keep] & unflagged, np.asarray(rest.status)[keep] & unflagged)
        error = np.abs(moving.growth_rate[keep] / rest.growth_rate[keep] - 1)
        allowed = 1.5e-6 + W * W * EPS / proxy[keep]
        assert np.all(error <= allowed), (W, (error / allowed).max())
        worst = max(worst, float(error.max()))
    assert worst > 1e-6  # weak crossings drift well beyond the 3e-7 the text said (measured 3.9e-6 here)


def test_bounded_cells_alone_get_their_answers_in_a_grid(closures):
    """Cells on which the bound acts, mixed into a grid of random crossing, stable (nu = nubar) and
    rejected (NaN) cells: threads 1, 2, 8 and chunk sizes 1, 7, 4,096 give the same bytes in every field,
    and 200 of them applied one at a time their bytes in the grid (native evaluator and ONNX Runtime's)."""
    rng = np.random.default_rng(15)
    F = np.concatenate([_bounded_cells(seed=15), _random_cells(rng, 400)])
    F[600:700, 3:] = F[600:700, :3]
    F[700:720, 2, 1] = np.nan
    order = rng.permutation(len(F))
    F = F[order]
    fields = ("F_pred", "status", "growth_rate", "growth_over_ntot", "growth_rate_proxy", "uncertainty")
    for evaluator in ("auto", "onnxruntime"):
        if evaluator == "onnxruntime" and "onnxruntime" not in closures:
            continue
        base = dodo.Closure(threads=1, evaluator=evaluator).apply(F)
        assert np.sum((np.asarray(base.status) & LIMITED) != 0) > 300
        for threads, chunk in ((2, 7), (8, 1), (8, 4096)):
            r = dodo.Closure(threads=threads, chunk_size=chunk, evaluator=evaluator).apply(F)
            for k in fields:
                assert np.asarray(getattr(r, k)).tobytes() == np.asarray(getattr(base, k)).tobytes(), (evaluator, k)
        alone = dodo.Closure(threads=1, evaluator=evaluator)
        for c in rng.choice(len(F), 200, replace=False):
            r = alone.apply(F[c:c + 1])
            for k in fields:
                assert np.asarray(getattr(r, k))[0].tobytes() == np.asarray(getattr(base, k))[c].tobytes(), (evaluator, k, c)


def test_an_accepted_u_off_its_norm_gives_the_normalised_result_where_the_crossing_is_deep(closures):
    """docs/runtime.md (qualified this round): a u with |u.u + 1| at 0.9 of its tolerance gives the
    normalised u's result to ~1e-9 N_tot on random crossing cells (measured 1.2e-13 at W = 10); on weak
    crossings the two u's round the rest-frame values differently and the answers part (1e-2 N_tot at
    W = 10 for p ~ 1e-12), but every value stays finite and realizable."""
    rng = np.random.default_rng(16)
    closure = closures["model"]
    for F0, deep in ((_random_cells(rng, 1000), True), (_nearly_stable(rng, 1000, 10 ** rng.uniform(-11, -1, 1000)), False)):
        for W in (2.0, 10.0):
            direction = rng.normal(size=(len(F0), 3))
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            u = np.concatenate([np.full((len(F0), 1), W), np.sqrt(W * W - 1) * direction], axis=1)
            F = dodo.boost_from_rest(F0, u[:, None, :])
            off = u * np.sqrt(1 + 0.9e-6 * W * W)  # |u.u + 1| = 0.9e-6 u^t^2 (the tolerance is 1e-6 max(1, u^t^2))
            a, b = closure.apply(F, u), closure.apply(F, off)
            assert np.isfinite(b.F_pred).all() and _realizable(b.F_pred).all()
            if deep:
                np.testing.assert_array_equal(a.status, b.status)
                ntot = dodo.comoving_density(F, u)
                assert (np.abs(a.F_pred - b.F_pred).max(axis=(1, 2)) / ntot).max() < 1e-9, W
