"""The physics contract of the core (issue 11, items 1-3), in every language.

1. A stable (NO_CROSSING) cell is returned unchanged, bit for bit: no learned correction.
2. A cell with N_tot below 1e-300 (vacuum: subnormal numbers cannot keep conservation to rounding)
   is flagged ZERO_DENSITY and returned unchanged.
3. Realizable means |F| <= n exactly in double precision, evaluated as a host code would:
   sqrt(Fx^2 + Fy^2 + Fz^2) <= n; flavour sums stay conserved.
Also: the moment-based shortcut for stable cells agrees with the NumPy oracle.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import dodo
from box3d_oracle import box3d as oracle_box3d
from conftest import random_states
from dodo._status import REJECTED_MASK
from libdodo_ctypes import Options, load_libdodo

NO_CROSSING = int(dodo.CellStatus.NO_CROSSING)
ZERO_DENSITY = int(dodo.CellStatus.ZERO_DENSITY)


def c_apply(F: np.ndarray, u: np.ndarray | None, model: str | None) -> tuple[np.ndarray, np.ndarray]:
    """F_pred and status through the C API (dodo_apply) with the given model (None: Box3D only)."""
    lib = load_libdodo()
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    handle = ctypes.c_void_p()
    message = ctypes.create_string_buffer(512)
    assert lib.dodo_closure_create(model.encode() if model else None, ctypes.byref(options), ctypes.byref(handle),
                                   message, len(message)) == 0, message.value
    F = np.ascontiguousarray(F, dtype=np.float64)
    F_pred = np.empty_like(F)
    status = np.empty(len(F), dtype=np.uint32)
    double_p = ctypes.POINTER(ctypes.c_double)
    u_pointer = None if u is None else np.ascontiguousarray(u, dtype=np.float64).ctypes.data_as(double_p)
    try:
        assert lib.dodo_apply(handle, len(F), F.ctypes.data_as(double_p), None, u_pointer, None,
                              F_pred.ctypes.data_as(double_p), None,
                              status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))) == 0
    finally:
        lib.dodo_closure_destroy(handle)
    return F_pred, status


def every_path(F: np.ndarray, u: np.ndarray | None):
    """(name, F_pred, status) through dodo.box3d, dodo.closure, Closure.apply and C dodo_apply."""
    model = str(dodo.models.default_model_path())
    box = dodo.box3d(F, u)
    yield "dodo.box3d", box.F_box, box.status
    yield "dodo.closure", dodo.closure(F, u), None
    result = dodo.Closure(model).apply(F, u)
    yield "Closure.apply", result.F_pred, result.status
    yield "C dodo_apply", *c_apply(F, u, model)


def isotropic_cell() -> np.ndarray:
    """The issue's cell: n_nu_e = n_nubar_e = 1, heavy species 0.5, no fluxes (status NO_CROSSING)."""
    F = np.zeros((1, 6, 4))
    F[0, :, 0] = [1.0, 0.5, 0.5, 1.0, 0.5, 0.5]
    return F


def host_cone_ok(F: np.ndarray) -> np.ndarray:
    """|F| <= n per species as a host code computes it (plain double precision)."""
    return np.sqrt(F[..., 1] ** 2 + F[..., 2] ** 2 + F[..., 3] ** 2) <= F[..., 0]


def flavour_sum_error_over_ntot(F_pred: np.ndarray, F: np.ndarray, ntot: np.ndarray) -> np.ndarray:
    """Largest change of a flavour sum (nu and nubar separately, every component) per N_tot."""
    change = F_pred.reshape(-1, 2, 3, 4).sum(axis=2) - F.reshape(-1, 2, 3, 4).sum(axis=2)
    return np.abs(change).max(axis=(1, 2)) / ntot


def stable_copies(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random cells whose nubar is a scaled copy of nu, kept where Box3D finds no crossing."""
    F = random_states(rng, n, max_flux_factor=0.3, scale=1.0)
    F[:, 3:] = F[:, :3] * rng.uniform(0.3, 1.5, (n, 1, 1))
    return F[dodo.box3d(F).status == NO_CROSSING]


# -- item 1: stable cells unchanged

@pytest.mark.parametrize("moving", [False, True])
def test_isotropic_stable_cell_is_returned_bitwise_unchanged(moving):
    F = isotropic_cell()
    u = np.array([[1.5, 0.6, -0.8, 0.5]]) if moving else None  # u.u = -1
    if moving:
        F = dodo.boost_from_rest(F, u[:, None, :])
    for name, F_pred, status in every_path(F, u):
        if status is not None:
            assert status[0] == NO_CROSSING, name
        assert np.array_equal(F_pred, F), f"{name} changed a stable cell by {np.abs(F_pred - F).max():.3g}"


def test_random_stable_cells_are_returned_bitwise_unchanged():
    F = stable_copies(np.random.default_rng(11), 3000)
    assert len(F) >= 20
    for name, F_pred, status in every_path(F, None):
        if status is not None:
            assert np.all(status == NO_CROSSING), name
        assert np.array_equal(F_pred, F), name


# -- item 2: vacuum cells

def test_subnormal_cells_are_flagged_and_returned_unchanged():
    rng = np.random.default_rng(12)
    crossing = random_states(rng, 200, scale=1.0)
    crossing = crossing[dodo.box3d(crossing).status == 0][:50]
    stable = isotropic_cell()
    for scale in (1e-305, 1e-310, 1e-320):
        for cells in (stable * scale, crossing * scale):
            for name, F_pred, status in every_path(cells, None):
                if status is not None:
                    assert np.all(status == ZERO_DENSITY), (name, scale)
                assert np.array_equal(F_pred, cells), (name, scale)


def test_tiny_but_normal_cells_still_conserve():
    F = random_states(np.random.default_rng(13), 300, scale=1e-290)
    result = dodo.Closure().apply(F)
    computed = result.status == 0
    assert computed.sum() > 100
    ntot = F[:, :, 0].sum(axis=1)
    assert flavour_sum_error_over_ntot(result.F_pred, F, ntot)[computed].max() < 1e-13


# -- item 3: exactly inside the light cone

def wide_range_cells(rng: np.random.Generator, n: int) -> np.ndarray:
    """The issue's probe: densities spread over 1e121-1e135, two empty species, at rest."""
    F = random_states(rng, n, max_flux_factor=0.97, scale=1.0)
    F *= 10.0 ** rng.uniform(121, 135, (n, 6, 1))
    for cell, (a, b) in zip(F, rng.integers(0, 6, (n, 2))):
        cell[[a, b]] = 0.0
    return F


def test_box3d_at_rest_wide_densities_stay_exactly_inside_the_cone():
    F = wide_range_cells(np.random.default_rng(14), 100_000)
    box = dodo.box3d(F)
    ok = box.status & REJECTED_MASK == 0
    assert ok.sum() > 50_000
    assert host_cone_ok(box.F_box[ok]).all()
    ntot = F[:, :, 0].sum(axis=1)
    assert flavour_sum_error_over_ntot(box.F_box, F, ntot)[ok].max() < 1e-13


def test_closure_in_fast_flows_stays_exactly_inside_the_cone_in_the_lab_frame():
    rng = np.random.default_rng(15)
    n = 20_000
    rest = random_states(rng, n, scale=1.0)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    W = 10.0 ** rng.uniform(2, 4, n)
    u = np.concatenate([W[:, None], np.sqrt(W**2 - 1)[:, None] * direction], axis=1)
    F = dodo.boost_from_rest(rest, u[:, None, :])
    for name, F_pred, status in every_path(F, u):
        ok = np.ones(n, bool) if status is None else (status & REJECTED_MASK) == 0
        assert ok.sum() > n // 2, name
        assert host_cone_ok(F_pred[ok]).all(), f"{name}: {(~host_cone_ok(F_pred[ok])).sum()} species outside"


# -- the stable-cell shortcut agrees with the full computation (NumPy oracle)

def m1_like_cells(rng: np.random.Generator, n: int) -> np.ndarray:
    """Cells as a merger M1 code has them: the four heavy species equal, nu_e and nubar_e free."""
    F = random_states(rng, n, scale=1.0)
    F[:, 2] = F[:, 1]
    F[:, 4] = F[:, 1]
    F[:, 5] = F[:, 1]
    F[:, 3] *= rng.uniform(0.2, 1.5, (n, 1))  # from clearly one-signed ELN to crossing
    return F


def test_stable_shortcut_matches_the_oracle_status_and_growth():
    rng = np.random.default_rng(16)
    F = np.concatenate([m1_like_cells(rng, 1500), stable_copies(rng, 300), random_states(rng, 300, scale=1.0)])
    box = dodo.box3d(F)
    _, growth = oracle_box3d(F)
    assert not np.any(box.status & REJECTED_MASK)
    stable = box.status == NO_CROSSING
    assert 200 < stable.sum() < len(F) - 200  # both kinds present
    # The oracle's growth is zero exactly where a pair has no negative (or positive) part.
    assert np.all(growth[stable] == 0.0)
    assert np.all(growth[~stable] > 0.0)
    assert np.allclose(box.growth_over_ntot, growth, rtol=1e-9, atol=1e-15)
