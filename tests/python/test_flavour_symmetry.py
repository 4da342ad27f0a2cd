"""The closure's flavour symmetries (physics.md section 3): relabelling mu <-> tau, nu <-> nubar or
both in the input relabels the output, with the learned correction too (the runtime blends the
network over the cell's flavour images: cpp/src/runtime/flavour_symmetry.hpp). An outside probe
found the default model off by up to 3.6e-2 N_tot before (2026-12-01)."""
from __future__ import annotations

import numpy as np
import pytest

import dodo
from conftest import random_states, random_velocities

pytestmark = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")

RELABELLINGS = {"mu<->tau": [0, 2, 1, 3, 5, 4], "nu<->nubar": [3, 4, 5, 0, 1, 2], "both": [3, 5, 4, 0, 2, 1]}
SYNTHETIC_EQUIVARIANT = dodo.models.default_model_path().parent / "synthetic-test-equivariant.onnx"


def crossing_cells(n: int, seed: int):
    rng = np.random.default_rng(seed)
    F = random_states(rng, n, max_flux_factor=0.8)
    u = random_velocities(rng, n, max_speed=0.6)
    return F, u


@pytest.mark.parametrize("model", [None, str(SYNTHETIC_EQUIVARIANT)], ids=["default", "synthetic-equivariant"])
@pytest.mark.parametrize("name", sorted(RELABELLINGS))
def test_relabelled_cells_give_relabelled_answers(model, name):
    closure = dodo.Closure(model)
    F, u = crossing_cells(4000, seed=11)
    species = RELABELLINGS[name]
    plain = closure.apply(F, u)
    swapped = closure.apply(F[:, species], u)
    corrected = (plain.status & np.uint32(dodo.CellStatus.NO_CROSSING)) == 0
    assert corrected.mean() > 0.9  # the learned correction is exercised, not only Box3D
    ntot = np.asarray(dodo.comoving_density(F, u))
    back = swapped.F_pred[:, np.argsort(species)]
    assert np.max(np.abs(back - plain.F_pred).max(axis=(1, 2)) / ntot) < 1e-13
    np.testing.assert_allclose(swapped.growth_rate, plain.growth_rate, rtol=1e-12, atol=0)
    np.testing.assert_allclose(swapped.uncertainty, plain.uncertainty, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(swapped.status, plain.status)


@pytest.mark.parametrize("name", sorted(RELABELLINGS))
def test_weak_eln_cells_relabel_exactly_too(name):
    """Cells whose ELNs are all ~1e-6 N_tot: G = ELN_i - ELN_j turns an ulp of N_tot into 1e-10 of
    the crossing integrals, so N_tot must be summed in an order the relabelling keeps (an outside
    probe found 3e-10 N_tot in Box3D and 7e-9 in the closure when it was summed in species order)."""
    rng = np.random.default_rng(7)
    F = random_states(rng, 3000)
    F[:, 3:6] = F[:, 0:3]  # nubar = nu, then a relative 1e-6 apart
    F[:, 3, 0] *= 1 + 1e-6 * rng.uniform(-1, 1, len(F))
    F[:, 3, 1:] += 1e-6 * rng.normal(size=(len(F), 3)) * 0.3 * F[:, 3, :1]
    species = RELABELLINGS[name]
    ntot = np.asarray(dodo.comoving_density(F))
    closure = dodo.Closure()
    for run in (lambda X: dodo.box3d(X).F_box, lambda X: closure.apply(X).F_pred):
        plain, swapped = run(F), run(F[:, species])
        assert np.max(np.abs(swapped[:, np.argsort(species)] - plain).max(axis=(1, 2)) / ntot) < 1e-13


def test_a_cell_that_is_its_own_mu_tau_image_keeps_mu_and_tau_equal():
    """Equivariance for a cell equal to its image: the answer must be its own image, bit for bit."""
    F, u = crossing_cells(2000, seed=12)
    F[:, 2], F[:, 5] = F[:, 1], F[:, 4]
    result = dodo.Closure().apply(F, u)
    np.testing.assert_array_equal(result.F_pred[:, 1], result.F_pred[:, 2])
    np.testing.assert_array_equal(result.F_pred[:, 4], result.F_pred[:, 5])


def test_the_blend_is_continuous_across_the_swap_symmetric_states():
    """Across n_nu_e = n_nubar_e (where the nu <-> nubar image takes over) the answer moves smoothly:
    no step between neighbouring states, although the network alone differs on the two images."""
    rng = np.random.default_rng(13)
    F = random_states(rng, 1, max_flux_factor=0.6)[0]
    F[3, 0] = F[0, 0]  # n_nubar_e = n_nu_e, flux factors kept below 0.6 * n
    F[3, 1:] = -F[0, 1:] * 0.9
    steps = np.linspace(-0.05, 0.05, 2001) * F[:, 0].sum()
    cells = np.repeat(F[None], len(steps), axis=0)
    cells[:, 3, 0] += steps
    result = dodo.Closure().apply(cells)
    assert np.all((result.status & np.uint32(dodo.CellStatus.NO_CROSSING)) == 0)
    jumps = np.abs(np.diff(result.F_pred[..., 0], axis=0)).max(axis=1) / F[:, 0].sum()
    step = steps[1] - steps[0]
    # A neighbouring state moves the answer by about the step itself, never by a jump.
    assert jumps.max() < 20 * step / F[:, 0].sum()


def test_the_c_api_gives_relabelled_answers_too():
    """dodo_apply (C, and Fortran and Julia through it) runs the same blend: relabelled cells give
    relabelled answers, and the same numbers as dodo.Closure."""
    import ctypes

    from libdodo_ctypes import load_libdodo

    lib = load_libdodo()
    handle = ctypes.c_void_p()
    message = ctypes.create_string_buffer(512)
    status = lib.dodo_closure_create(str(dodo.models.default_model_path()).encode(), None, ctypes.byref(handle),
                                     message, 512)
    assert status == 0, message.value
    as_double = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))  # noqa: E731
    try:
        F, u = crossing_cells(500, seed=14)

        def apply(cells):
            cells = np.ascontiguousarray(cells)
            out = np.empty_like(cells)
            assert lib.dodo_apply(handle, len(cells), as_double(cells), None, as_double(np.ascontiguousarray(u)), None,
                                  as_double(out), None, None) == 0
            return out

        plain = apply(F)
        np.testing.assert_array_equal(plain, dodo.Closure().apply(F, u).F_pred)
        ntot = np.asarray(dodo.comoving_density(F, u))
        for species in RELABELLINGS.values():
            back = apply(F[:, species])[:, np.argsort(species)]
            assert np.max(np.abs(back - plain).max(axis=(1, 2)) / ntot) < 1e-13
    finally:
        lib.dodo_closure_destroy(handle)
