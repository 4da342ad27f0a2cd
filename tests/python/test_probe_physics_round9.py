"""Outside probe of the physics laws, round nine (docs/reliability_python.md, "Physics-law probe, round
nine"): densities spanning 1e-300 ... 1e300 in one cell (a species below the smallest normal double in
units of N_tot beside dense ones); fluids up to W = 1e7 with v along and against the fluxes, and the
float64 velocity check beyond; every path (dodo.box3d, crossing_features, the closure with Box3D alone
and with the default model, the C API).

One violation found and fixed (cpp/src/box3d/box3d.cpp, prepare_block): a crossing cell with one species
of ~1e-322 N_tot whose flux factor as given is 0.9 or less (e.g. nubar_tau = 8.9e-24 beside species of
1e300) was rejected as FLUX_FACTOR and returned unmixed: divided by N_tot, the species' values are a few
ulp of the subnormal grid (5e-324, 0, 0, -5e-324), whose rounded flux factor is 1. One misleading
refusal fixed (python/dodo/_box3d.py, _check_velocity): a float64 u at u^t = 1e8, computed as (W, W v),
was told to "pass u = (W, W v) with W = 1/sqrt(1 - v^2)"; float64's own rounding of u.u exceeds the cap.
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
# round eight's status bits and its `closures` fixture (Box3D, the model, ONNX Runtime where present)
from test_probe_physics_round8 import EPS, NO_CROSSING, REJECTED, closures  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("native_evaluator")


def _random_cells(rng, n, largest_flux_factor=0.9):
    F = np.zeros((n, 6, 4))
    density = rng.uniform(0.1, 1.0, (n, 6))
    flux_factor = rng.uniform(0.0, largest_flux_factor, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 0] = density
    F[..., 1:] = (density * flux_factor)[..., None] * direction
    return F


def _flux_factors(F):
    """|F|/n of every species, from its values scaled exactly by a power of two (no square leaves the
    normal range)."""
    largest = np.abs(F).max(axis=-1, keepdims=True)
    shift = -np.floor(np.log2(np.where(largest > 0, largest, 1.0))).astype(int)
    scaled = np.ldexp(F, shift)
    return np.sqrt((scaled[..., 1:] ** 2).sum(-1)) / np.where(scaled[..., 0] > 0, scaled[..., 0], 1.0)


def _capi(F, u=None):
    from libdodo_ctypes import create_closure, load_libdodo
    from test_probe_physics_round8 import _capi as apply_diagnostics

    lib = load_libdodo()
    code, message, handle = create_closure(lib, None, threads=1)
    assert code == 0, message
    try:
        out, status, _, _ = apply_diagnostics(lib, handle, np.ascontiguousarray(F),
                                              None if u is None else np.ascontiguousarray(u))
    finally:
        lib.dodo_closure_destroy(handle)
    return out, status


# -- the violation fixed this round ------------------------------------------------------------------

def test_a_species_below_the_smallest_normal_double_of_n_tot_does_not_reject_a_crossing_cell(closures):
    """physics.md section 2: a cell is flagged FLUX_FACTOR for a species at or above the limit (0.98). A
    species of 1e-322 ... 1e-323 N_tot with flux factor <= 0.9 as given (1e-22 beside densities of 1e300,
    or 1e-222 beside 1e100) rejected ~7% of crossing cells (194 of 3,000): divided by N_tot its values are
    a few ulp of the subnormal grid, whose rounded flux factor is 1 or more. Now it is reconstructed
    isotropic (it is 2e-308 N_tot at most) and the cell mixed as it is without that species: every path."""
    rng = np.random.default_rng(900)
    base = _random_cells(rng, 1000)
    assert np.all(dodo.box3d(base).status == 0)  # all crossing
    for big, relative, frame in [(1e300, 1e-322, "rest"), (1e100, 1e-323, "rest"), (1e200, 1e-322, "moving")]:
        F, u = base * big, None
        assert np.all(_flux_factors(F) < 0.9 + 1e-12)  # every species well inside the limit (in its rest frame)
        if frame == "moving":  # the same cells seen from a lab where the fluid moves at W = 2
            W = 2.0
            u = np.tile([W, 0.0, np.sqrt(W * W - 1.0), 0.0], (len(F), 1))
            F = dodo.boost_from_rest(F, u[:, None, :])
        species = rng.integers(0, 6, len(F))
        F[np.arange(len(F)), species] *= relative
        # The same cell without the tiny species: Box3D's answer to rounding, and the same status.
        without = F.copy()
        without[np.arange(len(F)), species] = 0.0
        reference = dodo.box3d(without, u)
        assert np.all((reference.status & REJECTED) == 0)
        results = {name: (r.F_pred, r.status) for name, c in closures.items() for r in [c.apply(F, u)]}
        result = dodo.box3d(F, u)
        results["dodo.box3d"] = (result.F_box, result.status)
        results["C API"] = _capi(F, u)
        features = dodo.crossing_features(F, u)
        assert np.isfinite(features).all(), frame
        for name, (F_pred, status) in results.items():
            flagged = np.sum((status & REJECTED) != 0)
            assert flagged == 0, f"{name} ({big:g}, {relative:g}, {frame}): {flagged} of {len(F)} crossing cells rejected"
            assert np.array_equal(status & NO_CROSSING, reference.status & NO_CROSSING), name
            for cell in np.flatnonzero(status & NO_CROSSING):
                assert F_pred[cell].tobytes() == F[cell].tobytes(), (name, cell)
            assert np.isfinite(F_pred).all(), name
            assert np.all(F_pred[..., 0] >= 0), name
            assert np.all(_flux_factors(F_pred) <= 1.0), name
        scale = dodo.comoving_density(F, u)[:, None, None]
        assert np.all(np.abs(result.F_box - reference.F_box) <= 4 * EPS * scale), frame


def _fast_u(W, direction, dtype=np.float64):
    """u = (W, W v) with |v| = sqrt(1 - 1/W^2), as README says to compute it."""
    direction = np.asarray(direction, float) / np.linalg.norm(direction)
    return np.array([W, *(W * np.sqrt(1.0 - 1.0 / (W * W)) * direction)], dtype=dtype)


def test_a_float64_u_too_fast_for_float64_is_refused_as_such_not_as_miscomputed():
    """Past u^t ~ 3e7 float64's own rounding of u.u (~eps u^t^2) exceeds the cap 0.5 on |u.u + 1|: a u
    computed as told, (W, W v) with W = 1/sqrt(1 - v^2), was refused with "...; pass u = (W, W v) with
    W = 1/sqrt(1 - v^2)" (and a float32 one with "give u as float64"), advice that cannot help. Now the
    refusal says that float64 holds no unit four-velocity that fast; u^t up to 2e7 is accepted."""
    F = np.zeros((6, 4))
    F[:, 0] = 1.0
    rng = np.random.default_rng(901)
    refused = 0
    for direction in rng.normal(size=(20, 3)):
        u = _fast_u(1e8, direction)
        try:
            dodo.box3d(F, u)
        except ValueError as error:
            refused += 1
            assert "not supported" in str(error) and "float64" in str(error), str(error)
            assert "pass u = (W, W v)" not in str(error), str(error)
    assert refused >= 10
    for call in (lambda u: dodo.Closure("box3d").apply(F, u), lambda u: dodo.boost_to_rest(F, u)):
        with pytest.raises(ValueError, match="not supported") as raised:
            call(_fast_u(1e8, [0.6, 0.0, 0.8]))
        assert "pass u = (W, W v)" not in str(raised.value)
    with pytest.raises(ValueError, match="not supported") as raised:
        dodo.box3d(F, _fast_u(1e8, [0.6, 0.0, 0.8], np.float32))
    assert "give u as float64" not in str(raised.value)
    # The message's bound: (W, W v) in float64 at u^t = 2e7 passes in every direction tried.
    for direction in rng.normal(size=(200, 3)):
        dodo.box3d(F, _fast_u(2e7, direction))
    # A u that is wrong in any precision keeps the plain refusal.
    with pytest.raises(ValueError, match=r"pass u = \(W, W v\)") as raised:
        dodo.box3d(F, np.array([1e8, 0.5e8, 0.0, 0.0]))
    assert "not supported" not in str(raised.value)
