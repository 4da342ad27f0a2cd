"""Outside probe of the physics laws, round three (docs/reliability_python.md, section 42): the laws of
../shared/spec/physics.md section 3 on the cells earlier rounds did not draw: ELN crossings at and
just above the lobe-noise bound (tiny pair crossings, near-degenerate species, mu != tau by 1e-9),
species on the flux cone (flux factor 1, 1 +- 1 ulp, 1 - 1e-15, at and below the 0.98 limit), fluid
velocities at the edge of the four-velocity tolerance (W up to 3e4), batches that mix stable,
crossing and rejected cells across the 1024-cell chunks, signed zeros, float32 and strided inputs;
through dodo.Closure (the default model and "box3d"), dodo.closure, dodo apply, the C API and both
network evaluators.

Found: one law the closure does not keep, held by a strict xfail (its fix belongs to the spec):

- Box3D's pairwise scheme divides each crossing pair's mixing by k, the number of crossing pairs,
  and equilibrates the small side however small: a mu-tau pair with lobes of 2.4e-12 N_tot takes
  a third of the e-x mixing away (0.9% of N_tot). The lobe-noise bound grows with the boost
  (max(1e-12, 8 eps W^2), round 33's fix), so the same rest-frame cell moving at W = 100 drops that
  pair and its rest-frame answer differs from the answer at rest by 0.9% (Box3D) and 1.7% (closure).

Fixed: ONNX Runtime's evaluator was not the native one to float32 rounding on cells far from the
training states (1.3e-4 N_tot): the graph summed the gate's Mahalanobis distance as a float32
quadratic form of a precision matrix of condition 1.4e7. The exported graph now computes it in
float64 and the default package was edited so (dodo.training.gate_graph).

Reported and not taken as a law: a cell whose only crossing is a mu-tau crossing of 1e-12 N_tot
gets Box3D's change of 2.5e-12 N_tot and a network correction of 5.5e-5 N_tot (the comment above
the xfail says why the data do not support capping the correction by Box3D's change).

The other tests are regression tests of laws no earlier test asserts on these cells.
"""
from __future__ import annotations


import numpy as np
import pytest

import dodo
from cli_helpers import emu_file, run
from conftest import random_states, random_velocities
from dodo.conventions import GROWTH_RATE_PER_NTOT, VELOCITY_NORM_TOLERANCE, VELOCITY_NORM_TOLERANCE_CAP, to_emu_layout

if not dodo.runtime_available():
    pytest.skip("dodo was built without the closure runtime", allow_module_level=True)

NO_CROSSING = int(dodo.CellStatus.NO_CROSSING)
FLUX_FACTOR = int(dodo.CellStatus.FLUX_FACTOR)
REJECTED = 62  # FLUX_FACTOR | NEGATIVE_DENSITY | NONFINITE | ZERO_DENSITY | BAD_VELOCITY
EPS = np.finfo(float).eps
MODELS = [None, "box3d"]


@pytest.fixture(autouse=True)
def _native_unless_told(monkeypatch):
    """Closure() is the native evaluator here whatever the caller's environment (the tests that
    want ONNX Runtime say so, by option or by setting the variable themselves)."""
    monkeypatch.delenv("DODO_NETWORK_EVALUATOR", raising=False)


# ---------------------------------------------------------------------------------------------
# cells


def _weak_mu_tau_cell(eps: float, nubar_e: float) -> np.ndarray:
    """nu_e isotropic (n = 1), nubar_e of density `nubar_e` with flux factor 0.05 along z, the four
    heavy species of density 0.3 with fluxes 0.01 (nu along x, nubar along -y); nu_tau's flux is
    nu_mu's times 1 + eps, so the mu-tau pair crosses with lobes of ~2.4e-3 eps N_tot. With
    nubar_e = 0.5 the e pairs are stable (nu_e's excess is positive everywhere), with 0.9 they cross."""
    F = np.zeros((6, 4))
    F[0, 0], F[3, 0], F[3, 3] = 1.0, nubar_e, nubar_e * 0.05
    F[1:3, 0] = F[4:6, 0] = 0.3
    F[1, 1], F[2, 1] = 0.01, 0.01 * (1 + eps)
    F[4, 2] = F[5, 2] = -0.01
    return F


def _fluid(W: float, direction=(0.6, 0.0, 0.8)) -> np.ndarray:
    return np.array([W, *(np.sqrt(W * W - 1.0) * np.asarray(direction))])


def _comoving(F, u):
    """Comoving densities (-F_a . u) of every species; u None: the rest frame."""
    if u is None:
        return F[..., 0]
    u = np.broadcast_to(u, F.shape[:-2] + (4,))
    return u[..., None, 0] * F[..., 0] - np.einsum("...i,...ai->...a", u[..., 1:], F[..., 1:])


def _mixed_batch(n: int = 2049, seed: int = 31):
    """Moving cells that mix every kind the chunking must not confuse: stable (nearly isotropic),
    crossing, exactly at the threshold family above, in the flavour-image bands (nu ~ nubar,
    mu ~ tau), mu = tau exactly, a species on the 0.98 limit, NaN, a negative density."""
    rng = np.random.default_rng(seed)
    F = random_states(rng, n, scale=1.0, max_flux_factor=0.8)
    F[::3, :, 1:] *= 0.02
    F[1::7, 2], F[1::7, 5] = F[1::7, 1], F[1::7, 4]
    F[2::7, 3, 0] = F[2::7, 0, 0] * (1 + 1e-3)
    F[2::7, [2, 5], 0] = F[2::7, [1, 4], 0] * (1 + 1e-3)
    F[2::7, :, 1:] *= 0.5  # keep the changed densities above their fluxes
    for k, i in enumerate(range(4, n, 97)):
        F[i] = _weak_mu_tau_cell([0, 1e-13, 1e-9, 1e-5][k % 4], [0.5, 0.9][k % 2])
    limit = np.linalg.norm(F[5::101, 1, 1:], axis=-1)
    F[5::101, 1, 1:] *= (0.98 * F[5::101, 1, 0] / limit)[:, None]
    u = random_velocities(rng, n, 0.9)
    u[::5] = [1.0, 0.0, 0.0, 0.0]
    F = dodo.boost_from_rest(F, u[:, None, :])
    F[7] = np.nan
    F[n // 2 + 1, 3, 0] = -1.0
    return F, u


def _assert_same_bits(got, expected, what=""):
    for name, a, b in zip(expected._fields, got, expected):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), f"{what}: {name} differs"


def _assert_laws(F, u, result, *, lepton_tol: float = 1e-14):
    """Section 3 on every cell of a closure result: finite, non-negative diagnostics; accepted
    cells conserve the flavour-summed lab four-flux and (comoving) lepton number per flavour;
    every species n >= 0 and sqrt(Fx^2 + Fy^2 + Fz^2) <= n in the lab (that order: the runtime's
    documented test); stable cells unchanged with growth and uncertainty 0; rejected cells'
    growth and uncertainty 0."""
    F_pred, status = result.F_pred, result.status
    for name in result._fields:
        value = getattr(result, name)
        if value.dtype.kind == "f":
            assert np.isfinite(value).all(), name
            if name != "F_pred":
                assert (value >= 0).all(), name
    x, y, z = F_pred[..., 1], F_pred[..., 2], F_pred[..., 3]
    assert (F_pred[..., 0] >= 0).all()
    assert (np.sqrt(x * x + y * y + z * z) <= F_pred[..., 0]).all()
    accepted = (status & REJECTED) == 0
    dF = (F_pred - F)[accepted]
    scale = np.abs(F[accepted]).max(axis=(-1, -2))
    for kind in (slice(0, 3), slice(3, 6)):
        assert (np.abs(dF[:, kind].sum(axis=1)).max(axis=-1) <= 1e-14 * scale).all()
    uu = None if u is None else np.broadcast_to(u, F.shape[:-2] + (4,))[accepted]
    dn = _comoving(dF, uu)
    ntot = _comoving(F[accepted], uu).sum(axis=-1)
    assert (np.abs(dn[:, :3] - dn[:, 3:]).max(axis=-1) <= lepton_tol * ntot).all()
    stable = (status & NO_CROSSING) != 0
    assert F_pred[stable].tobytes() == F[stable].tobytes()
    for name in ("growth_over_ntot", "growth_rate", "growth_rate_proxy", "uncertainty"):
        assert (getattr(result, name)[stable | ~accepted] == 0).all(), name
    crossing = accepted & ~stable
    assert (result.growth_over_ntot[crossing] > 0).all() and (result.growth_rate_proxy[crossing] > 0).all()


# ---------------------------------------------------------------------------------------------
# a law the closure does not keep (strict xfail)


# Not asserted: that the learned correction vanishes with a vanishing crossing. The probe found a
# cell whose only crossing is a mu-tau one of 2.4e-12 N_tot: Box3D changes it by 2.5e-12 N_tot, the
# default model by 5.5e-5 N_tot. But the solver's truth is not bounded by Box3D's change either: on
# the 82,953 training states of pdata/qke.h5 the truth's density change exceeds Box3D's by a median
# factor of 0.4 of Box3D's change, 4.6 at the 99th percentile and 44 at the 99.9th, and on a state
# where Box3D moves 2.8e-8 N_tot the solver moves 2.7e-3 (Box3D's maximum-entropy reconstruction
# understates a crossing the moments allow). A correction capped by Box3D's change would hurt those
# states; where the network does not know, the gate moves it toward Box3D (section 42).


@pytest.mark.xfail(strict=True, reason="Box3D's pairwise 1/k and P = 1/3 rules make a negligible pair crossing "
                   "change the answer by 0.9% N_tot, and the W-dependent lobe bound drops that pair only in a "
                   "moving frame (section 42)")
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("eps, W", [(1e-9, 100.0), (1e-8, 1000.0)])
def test_a_negligible_pair_crossing_gives_the_same_answer_in_every_frame(model, eps, W):
    """The e pairs cross (nubar_e = 0.9); the mu-tau pair crosses with lobes of 2.4e-12 (eps = 1e-9)
    or 2.4e-11 N_tot (1e-8). At rest Box3D counts three crossing pairs and divides the e-mu and e-tau
    mixing by 3; moving at W = 100 (1000) the lobe bound max(1e-12, 8 eps W^2) of the pair's scale
    (1.8e-11 and 1.8e-9) drops the mu-tau pair, the e pairs' mixing is divided by 2, and boosted back
    to the rest frame the answer differs from the one at rest by 9.2e-3 N_tot (Box3D) and 1.7e-2
    (closure). Boost equivariance (section 3) allows W^2 eps. The cause is the spec's pairwise
    scheme (section 2, steps 3-4: P = 1/3 on the small side however small, M = (1 - P)/k), whose
    answer jumps when a pair's crossing appears; below W ~ 24 the bound is 1e-12 and frames agree
    (measured 6e-16 at W = 3, 3e-14 at W = 24)."""
    F = _weak_mu_tau_cell(eps, 0.9)
    closure = dodo.Closure(model)
    at_rest = closure.apply(F)
    u = _fluid(W)
    moving = closure.apply(dodo.boost_from_rest(F, u), u)
    assert at_rest.status == 0 and moving.status == 0
    back = dodo.boost_to_rest(moving.F_pred, u)
    assert np.abs(back - at_rest.F_pred).max() / F[:, 0].sum() <= 1e-6


def _contrast_cells(n: int, seed: int) -> np.ndarray:
    """Cells at rest whose species span many decades (each species' scale 1 or 1e-1 ... 1e-300),
    a quarter with nubar_e = 1.5 nu_e in the opposite direction (crossing): far from the training
    states, where the model's gate reads the features' Mahalanobis distance."""
    rng = np.random.default_rng(seed)
    F = random_states(rng, n, scale=1.0, max_flux_factor=0.9)
    exponent = rng.choice([0, -1, -3, -8, -20, -60, -150, -300], (n, 6), p=[.4, .1, .1, .1, .1, .1, .05, .05])
    F *= (10.0 ** exponent)[..., None]
    F[::4, 3] = F[::4, 0] * 1.5
    F[::4, 3, 1:] *= -1
    return F


def test_the_graph_evaluator_agrees_with_the_native_one_on_far_out_cells():
    """Closure(evaluator="onnxruntime") and the native evaluator "agree to float32 rounding" (the
    Closure docstring; docs/runtime.md). On these 2,000 cells they differed by up to 1.3e-4 N_tot
    (111 cells beyond 1e-6): the graph computed the distance d2 = ((x - m) P) . (x - m) on 34
    features in float32, P of condition number 1.4e7, so d2 came out 308.95 for 308.23 (float64), and
    the gate exp(-(d2 - d2_max)/d2_max), d2_max = 286.8, moved the head by up to 0.5%. The native
    evaluator sums the distance in double. Now the exported graph computes it in float64
    (dodo.training.gate_graph), and the default package was edited so
    (tools/gate_distance_float64.py): 8e-8 N_tot at most."""
    F = _contrast_cells(2000, 40)
    native = dodo.Closure().apply(F)
    graph = dodo.Closure(evaluator="onnxruntime").apply(F)
    np.testing.assert_array_equal(native.status, graph.status)
    accepted = (native.status & REJECTED) == 0
    assert accepted.all()
    difference = np.abs(native.F_pred - graph.F_pred).max(axis=(-1, -2)) / F[..., 0].sum(-1)
    assert difference.max() <= 1e-6


# ---------------------------------------------------------------------------------------------
# regression tests (no defect): laws no earlier test asserts on these cells


def test_box3d_follows_a_weak_crossing_continuously_and_the_closure_keeps_the_laws_there():
    """Only the mu-tau pair crosses, with lobes of 2.4e-3 eps N_tot (eps from 1e-14 to 1e-3): below
    the lobe bound the cell is NO_CROSSING with growth 0 and returned bit for bit; above it Box3D's
    change is at most its growth proxy (measured 0.89 of it) and the proxy grows with eps, so
    Box3D's answer is continuous in the crossing. Every law holds on the closure of these cells,
    with growth 0 exactly for the stable ones."""
    eps = np.geomspace(1e-14, 1e-3, 45)
    F = np.array([_weak_mu_tau_cell(e, 0.5) for e in eps])
    box = dodo.Closure("box3d").apply(F)
    stable = (box.status & NO_CROSSING) != 0
    assert stable[eps < 1e-12].all() and not stable[eps > 1e-10].any()
    assert ((box.growth_over_ntot == 0) == stable).all()
    change = np.abs(box.F_pred - F).max(axis=(-1, -2)) / F[:, :, 0].sum(-1)
    assert (change[~stable] <= box.growth_over_ntot[~stable]).all()
    assert (np.diff(box.growth_over_ntot[~stable]) > 0).all()
    for model in MODELS:
        result = dodo.Closure(model).apply(F)
        _assert_laws(F, None, result)
        np.testing.assert_array_equal(result.status & NO_CROSSING, box.status & NO_CROSSING)


@pytest.mark.parametrize("model", MODELS)
def test_chunk_boundaries_threads_and_orders_give_each_cell_its_own_bits(model):
    """2,049 moving cells of every kind (stable, crossing, at the crossing threshold, in the
    flavour-image bands, mu = tau, at the flux-factor limit, NaN, a negative density) in batches of
    1,023, 1,024, 1,025 and 2,049 (the closure's chunks hold 1,024), with 1 and 2 threads, in
    order, reversed, and with the stable cells first or last: every output of every cell the same
    bits as in one call of the whole batch, and as the cell alone (every 41st)."""
    F, u = _mixed_batch()
    reference = dodo.Closure(model, threads=1).apply(F, u)
    _assert_laws(F, u, reference)
    stable = (reference.status & NO_CROSSING) != 0
    assert stable.sum() > 300 and ((reference.status == 0).sum() > 800)
    closure = dodo.Closure(model, threads=1)
    for i in range(0, len(F), 41):
        _assert_same_bits(closure.apply(F[i], u[i]), dodo.ClosureResult(*(x[i] for x in reference)), f"cell {i}")
    by_status = np.argsort(stable, kind="stable")
    for threads in (1, 2):
        closure = dodo.Closure(model, threads=threads)
        for n in (1023, 1024, 1025, 2049):
            for order in (np.arange(n), np.arange(n)[::-1], by_status[by_status < n], by_status[by_status < n][::-1]):
                got = closure.apply(F[order], u[order])
                _assert_same_bits(got, dodo.ClosureResult(*(x[order] for x in reference)), f"threads {threads}, {n}")


@pytest.mark.parametrize("model", MODELS)
def test_float32_fortran_strided_and_big_endian_inputs_and_reused_outputs_give_the_same_bits(model):
    """The mixed batch as float32 (F and u), in Fortran order, as strided and reversed views, as
    big-endian >f8, and into out= arrays left from a call on other cells: the float64 call's bits."""
    F, u = _mixed_batch(1025, seed=32)
    closure = dodo.Closure(model, threads=2)
    F32, u32 = F.astype(np.float32), u.astype(np.float32)
    expected32 = closure.apply(F32.astype(np.float64), u32.astype(np.float64))
    _assert_same_bits(closure.apply(F32, u32), expected32, "float32")
    expected = closure.apply(F, u)
    _assert_same_bits(closure.apply(np.asfortranarray(F), np.asfortranarray(u)), expected, "Fortran order")
    wide, wide_u = np.zeros(F.shape[:-1] + (8,)), np.zeros((len(u), 8))
    wide[..., ::2], wide_u[:, 1::2] = F, u
    _assert_same_bits(closure.apply(wide[..., ::2], wide_u[:, 1::2]), expected, "strided")
    _assert_same_bits(closure.apply(F.astype(">f8"), u.astype(">f8")), expected, "big-endian")
    reversed_ = closure.apply(F[::-1], u[::-1])
    _assert_same_bits(reversed_, dodo.ClosureResult(*(x[::-1] for x in expected)), "reversed view")
    out = closure.apply(*_mixed_batch(1025, seed=33))  # every field holds another batch's values
    assert closure.apply(F, u, out=out) is out
    _assert_same_bits(out, expected, "reused out")


@pytest.mark.parametrize("model", MODELS)
def test_stable_cells_come_back_with_the_sign_of_their_zeros(model):
    """Bit for bit includes -0.0: stable cells with fluxes of -0.0 (and a -0.0 density of an absent
    species), at rest, with u = (1, 0, 0, 0) and with u = (1, -0, -0, -0), are returned with the
    same bytes (np.array_equal, which the earlier tests use, takes -0.0 for 0.0)."""
    F = np.zeros((3, 6, 4))
    F[..., 0] = [1.0, 0.9, 0.9, 0.5, 0.4, 0.4]
    F[:, :, 1:] = -0.0
    F[1, :, 0] = [1.0, 0.0, 0.0, 0.5, 0.0, -0.0]
    F[2, [0, 3], 0] = 1.0
    for u in (None, np.array([1.0, 0.0, 0.0, 0.0]), np.array([1.0, -0.0, -0.0, -0.0])):
        result = dodo.Closure(model).apply(F, u)
        assert (result.status & NO_CROSSING).all()
        assert result.F_pred.tobytes() == F.tobytes()
        assert dodo.box3d(F, u).F_box.tobytes() == F.tobytes()


@pytest.mark.parametrize("moving", [False, True])
def test_species_on_the_flux_cone_leave_every_output_realizable(moving):
    """One or two species per cell at flux factor 1 - 1e-15, 1 - 1 ulp, 1, 1 + 1 ulp, 0.98, just
    below 0.98, or 1 - 1e-8, at rest or moving at up to 0.99 c: every output species has n >= 0 and
    sqrt(Fx^2 + Fy^2 + Fz^2) <= n (the runtime's order), rejected cells (FLUX_FACTOR) have growth and
    uncertainty 0, accepted ones conserve. At rest, a species at flux factor 1 - 1e-8 or above flags its
    cell (one at 0.98 is flagged or not as its computed flux factor rounds)."""
    rng = np.random.default_rng(34)
    n = 1200
    F = random_states(rng, n, scale=1.0, max_flux_factor=0.6)
    factors = np.array([1 - 1e-15, np.nextafter(1.0, 0), 1.0, np.nextafter(1.0, 2), 0.98,
                        np.nextafter(0.98, 0), 1 - 1e-8])
    rows = np.arange(n)
    species, factor = rows % 6, factors[rows % len(factors)]
    direction = F[rows, species, 1:] / np.linalg.norm(F[rows, species, 1:], axis=-1, keepdims=True)
    F[rows, species, 1:] = direction * (F[rows, species, 0] * factor)[:, None]
    second = rows[rows % 3 == 0]
    other = (species[second] + 3) % 6
    F[second, other, 1:] = direction[second] * (F[second, other, 0] * factors[(second + 1) % len(factors)])[:, None]
    u = random_velocities(rng, n, 0.99) if moving else None
    if moving:
        F = dodo.boost_from_rest(F, u[:, None, :])
    for model in MODELS:
        result = dodo.Closure(model).apply(F, u)
        _assert_laws(F, u, result, lepton_tol=1e-13)
        if not moving:
            assert (result.status[factor > 0.99] & FLUX_FACTOR).all()  # 0.98 itself: either, by rounding
        assert ((result.status & REJECTED) == 0).sum() > 100


def test_velocities_at_the_edge_of_the_tolerance_keep_the_laws():
    """u = (W, s d) with |u.u + 1| at -1, -0.5, 0, 0.5 and 1 - 1e-6 times the tolerance
    (1e-6 max(1, W^2), at most 0.5) for W = 1 ... 3e4 (the runtime renormalises u): flavour sums
    conserved in the lab to 1e-14 of the largest component, lepton number per flavour along the
    normalised u to W^2 eps N_tot (measured 0.7 W^2 eps: the check's own cancellation), stable
    cells unchanged, every output finite and realizable; default model and Box3D alone."""
    rng = np.random.default_rng(35)
    velocities = []
    for W in (1.0, 1.5, 10.0, 1e3, 3e4):
        tolerance = min(VELOCITY_NORM_TOLERANCE * max(1.0, W * W), VELOCITY_NORM_TOLERANCE_CAP)
        for target in (-(1 - 1e-6), -0.5, 0.0, 0.5, 1 - 1e-6):
            spatial2 = W * W - 1 + target * tolerance
            if spatial2 < 0:
                continue
            for _ in range(24):
                d = rng.normal(size=3)
                velocities.append([W, *(np.sqrt(spatial2) * d / np.linalg.norm(d))])
    u = np.array(velocities)
    unit = u / np.sqrt(u[:, 0] ** 2 - (u[:, 1:] ** 2).sum(axis=1))[:, None]
    F_rest = random_states(rng, len(u), scale=1.0, max_flux_factor=0.7)
    F_rest[::4, :3, 1:] *= 0.01
    F_rest[1::4, :, 1:] *= 0.01
    F = dodo.boost_from_rest(F_rest, unit[:, None, :])
    for model in MODELS:
        result = dodo.Closure(model).apply(F, u)
        assert ((result.status & REJECTED) == 0).all()
        assert (result.status & NO_CROSSING).any()
        W = unit[:, 0]
        for w in np.unique(W):
            rows = W == w
            _assert_laws(F[rows], unit[rows], dodo.ClosureResult(*(x[rows] for x in result)),
                         lepton_tol=max(1e-14, w * w * EPS))


def test_evaluators_and_interfaces_agree_on_threshold_band_and_cone_cells(monkeypatch):
    """On the mixed batch: the native evaluator and ONNX Runtime's graph give the same statuses,
    the stable cells' input bits, F_pred within 1e-6 N_tot (measured 7e-8), growth rates within
    1e-4 relative (2e-6) and uncertainties within 1e-6 N_tot (2e-8); dodo.closure is Closure.apply;
    the C API gives Python's bits with either evaluator (DODO_NETWORK_EVALUATOR=onnxruntime for C)."""
    from libdodo_ctypes import default_model_diagnostics, load_libdodo

    F, u = _mixed_batch(1025, seed=36)
    native = dodo.Closure().apply(F, u)
    graph = dodo.Closure(evaluator="onnxruntime").apply(F, u)
    assert dodo.Closure(evaluator="onnxruntime").evaluator == "onnxruntime"
    np.testing.assert_array_equal(native.status, graph.status)
    stable = (native.status & NO_CROSSING) != 0
    assert graph.F_pred[stable].tobytes() == F[stable].tobytes()
    accepted = (native.status & REJECTED) == 0
    assert accepted.sum() > 900 and graph.F_pred[~accepted].tobytes() == native.F_pred[~accepted].tobytes()
    ntot = dodo.comoving_density(F[accepted], u[accepted])
    assert (np.abs(native.F_pred - graph.F_pred)[accepted].max(axis=(-1, -2)) <= 1e-6 * ntot).all()
    assert (np.abs(native.growth_over_ntot - graph.growth_over_ntot) <= 1e-4 * native.growth_over_ntot).all()
    assert np.abs(native.uncertainty - graph.uncertainty).max() <= 1e-6
    np.testing.assert_array_equal(dodo.closure(F, u), native.F_pred)
    np.testing.assert_array_equal(dodo.closure(F, u, model="box3d"), dodo.Closure("box3d").apply(F, u).F_pred)

    lib = load_libdodo()

    def c_apply(evaluator: str):
        if evaluator:
            monkeypatch.setenv("DODO_NETWORK_EVALUATOR", evaluator)
        else:
            monkeypatch.delenv("DODO_NETWORK_EVALUATOR", raising=False)
        return default_model_diagnostics(lib, F, u)

    for evaluator, python in (("", native), ("onnxruntime", graph)):
        expected = (python.F_pred, python.status, python.growth_rate, python.uncertainty)
        for got, want in zip(c_apply(evaluator), expected):
            assert got.tobytes() == want.tobytes(), evaluator or "native"
    assert not np.array_equal(native.F_pred, graph.F_pred)  # the variable did switch C's evaluator


def test_dodo_apply_with_the_graph_evaluator_writes_the_closures_bits(tmp_path, capsys, monkeypatch):
    """`dodo apply -o` of an Emu file of threshold, band and cone cells on a 6x6x6 grid at
    --max-speed 0.99, with DODO_NETWORK_EVALUATOR=onnxruntime: the file's F_pred and status are the
    bits of Closure(evaluator="onnxruntime").apply of its F_init and u; the run reports no
    unrealizable species and no non-finite output."""
    import h5py

    rest = np.array([_weak_mu_tau_cell(e, a) for e in (0, 1e-9, 1e-5) for a in (0.5, 0.9)] * 36)
    emu = emu_file(tmp_path / "cells.h5", to_emu_layout(rest[:216]))
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "onnxruntime")
    output = tmp_path / "applied.h5"
    code, out, err = run(capsys, ["apply", str(emu), "--grid", "6x6x6", "--max-speed", "0.99", "-o", str(output),
                                  "-q", "--threads", "2"])
    assert code == 0, err
    assert "unrealizable species: 0.0%; non-finite outputs: 0" in out
    with h5py.File(output, "r") as handle:
        F_init, u = handle["F_init"][...].reshape(-1, 6, 4), handle["u"][...].reshape(-1, 4)
        F_pred, status = handle["F_pred"][...].reshape(-1, 6, 4), handle["status"][...].reshape(-1)
    expected = dodo.Closure(evaluator="onnxruntime").apply(F_init, u)
    assert F_pred.tobytes() == expected.F_pred.tobytes() and status.tobytes() == expected.status.tobytes()
    _assert_laws(F_init, u, expected, lepton_tol=1e-12)
    assert (status & NO_CROSSING).any() and (status == 0).any()


def test_the_closures_growth_rates_are_its_proxy_and_rate_per_ntot_consistently():
    """On the mixed batch (default model): growth_rate = growth_over_ntot * N_tot * 1.9255e-22 to
    rounding; growth_rate_proxy is dodo.box3d's growth_rate to 1 ulp (the two multiply in another
    order: (g N_tot) K in dodo.box3d, g (N_tot K) in the closure); the model's rate lies within a
    factor 20 of the proxy on crossing cells (measured 0.10 ... 1.44) and is 0 exactly on stable and
    rejected cells."""
    F, u = _mixed_batch(1025, seed=38)
    result = dodo.Closure().apply(F, u)
    box = dodo.box3d(F, u)
    accepted = (result.status & REJECTED) == 0
    ntot = dodo.comoving_density(F[accepted], u[accepted])
    np.testing.assert_allclose(result.growth_rate[accepted],
                               result.growth_over_ntot[accepted] * ntot * GROWTH_RATE_PER_NTOT, rtol=8 * EPS, atol=0)
    np.testing.assert_allclose(result.growth_rate_proxy, box.growth_rate, rtol=2 * EPS, atol=0)
    crossing = accepted & ((result.status & NO_CROSSING) == 0)
    ratio = result.growth_over_ntot[crossing] / box.growth_over_ntot[crossing]
    assert (ratio > 0.05).all() and (ratio < 20).all()
    assert (result.growth_over_ntot[~crossing] == 0).all() and (result.growth_rate_proxy[~crossing] == 0).all()


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_the_default_models_closure_is_boost_equivariant_to_rounding(evaluator):
    """4,000 random cells at rest (a third nearly isotropic), the same cells moving at up to 0.3,
    0.9 and 0.995 c: boosted back, the default model's answer is the answer at rest to 1e-9 N_tot
    (measured 1.1e-14: at most 7 W^2 eps, both evaluators), with the same statuses, growth rates to
    1e-9 relative (6e-12) and uncertainties to 1e-5 relative. test_closure.py holds 1e-6 for the
    synthetic models; nothing held the shipped one."""
    rng = np.random.default_rng(39)
    F = random_states(rng, 4000, scale=1.0, max_flux_factor=0.85)
    F[::3, :, 1:] *= 0.05
    closure = dodo.Closure(evaluator=evaluator)
    at_rest = closure.apply(F)
    assert (at_rest.status == 0).sum() > 2000 and (at_rest.status & NO_CROSSING).sum() > 50
    ntot = F[..., 0].sum(-1)
    for speed in (0.3, 0.9, 0.995):
        u = random_velocities(rng, len(F), speed)
        moving = closure.apply(dodo.boost_from_rest(F, u[:, None, :]), u)
        np.testing.assert_array_equal(moving.status, at_rest.status)
        back = dodo.boost_to_rest(moving.F_pred, u[:, None, :])
        assert (np.abs(back - at_rest.F_pred).max(axis=(-1, -2)) <= 1e-9 * ntot).all(), speed
        np.testing.assert_allclose(moving.growth_over_ntot, at_rest.growth_over_ntot, rtol=1e-9, atol=0)
        np.testing.assert_allclose(moving.uncertainty, at_rest.uncertainty, rtol=1e-5, atol=0)
