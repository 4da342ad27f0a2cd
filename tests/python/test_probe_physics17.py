"""Physics-law probe, round seventeen (outside probe): the scale law F -> 2^k F on moving cells with
one species of subnormal lab values (in cells of 1, 1e-200, 1e-290), and the flux-factor limit of a
species below DBL_MIN N_tot.

Box3D boosted a species of subnormal lab values (a few ulp of 5e-324) to the rest frame on the
subnormal grid: its rest-frame flux factor and the sign of its density came out of the rounding,
and decided the whole cell's status (FLUX_FACTOR, NEGATIVE_DENSITY or a corrected crossing) where
the same cell times 2^600, whose boost rounds nothing, got another (0.07 N_tot apart). And a species
below DBL_MIN N_tot that the division by N_tot rounded to zero (or to an isotropic ulp) escaped the
flux-factor limit that the same species at another N_tot met. Now both are decided by the species'
values as given, scaled exactly and boosted, and divided by N_tot from those values
(cpp/src/box3d/box3d.cpp, prepare_block)."""
from __future__ import annotations

import numpy as np
import pytest

import dodo

TINY = 5e-324
FLUX_FACTOR = int(dodo.CellStatus.FLUX_FACTOR)
REJECTED = 0x3E  # FLUX_FACTOR | NEGATIVE_DENSITY | NONFINITE | ZERO_DENSITY | BAD_VELOCITY


def crossing_cells(n: int, seed: int) -> np.ndarray:
    """Random realizable cells of densities 0.05 ... 1 and flux factors below 0.5: most of them cross."""
    rng = np.random.default_rng(seed)
    F = np.zeros((n, 6, 4))
    F[..., 0] = rng.uniform(0.05, 1.0, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 1:] = direction * (rng.uniform(0.0, 0.5, (n, 6)) * F[..., 0])[..., None]
    return F


def moving(n: int, seed: int, vmax: float = 0.9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    v = direction * rng.uniform(0.0, vmax, (n, 1))
    W = 1.0 / np.sqrt(1.0 - (v**2).sum(axis=1))
    return np.concatenate([W[:, None], W[:, None] * v], axis=1)


# One species (nu_tau) of a few ulp of the subnormal grid: (density, Fx, Fy, Fz) in units of 5e-324,
# with its flux factor as given.
SUBNORMAL_SPECIES = {
    "1 ulp, flux factor 1": [1, 1, 0, 0],
    "1 ulp, isotropic": [1, 0, 0, 0],
    "3 ulp, flux factor 1": [3, 0, 3, 0],
    "40 ulp, flux factor 0.99": [40, 39.6, 0, 0],
    "40 ulp, flux factor 0.9": [40, 36, 0, 0],
    "2 ulp, flux factor 0.71": [2, 1, -1, 0],
}


class _Box3DAnswer:
    """dodo.box3d's result under the closure's names (F_pred, status)."""

    def __init__(self, result):
        self.F_pred, self.status = result.F_box, result.status


def closures():
    paths = [("dodo.box3d", lambda F, u: _Box3DAnswer(dodo.box3d(F, u)))]
    if dodo.runtime_available():
        box3d = dodo.Closure("box3d", threads=1)
        model = dodo.Closure(threads=1)
        paths += [("Closure('box3d')", box3d.apply), ("default model", model.apply)]
    return paths


@pytest.mark.parametrize("cell_scale", [1.0, 1e-200, 1e-290], ids=["cells of 1", "cells of 1e-200", "cells of 1e-290"])
@pytest.mark.parametrize("species", SUBNORMAL_SPECIES)
def test_a_subnormal_species_keeps_the_scale_law_on_moving_cells(species, cell_scale):
    """In cells of 1e-200 or 1e-290 the species is not below DBL_MIN N_tot: its flux factor was that
    of its rest-frame values rounded to the subnormal grid (a 1-ulp isotropic species boosted to
    (1, -1, -1, 0) ulp, FLUX_FACTOR; the same cell times 2^600 crossed)."""
    n = 200
    F = crossing_cells(n, seed=7) * cell_scale
    F[:, 2] = np.array(SUBNORMAL_SPECIES[species]) * TINY
    u = moving(n, seed=8)
    for name, apply in closures():
        for frame, velocity in (("at rest", None), ("moving", u)):
            one = apply(F, velocity)
            for k in (600, 900):
                scaled = apply(F * 2.0**k, velocity)
                changed = np.flatnonzero(one.status != scaled.status)
                assert changed.size == 0, (
                    f"{name}, {species}, {frame}: {changed.size} of {n} cells change status when scaled by 2^{k}, "
                    f"e.g. cell {changed[0]}: {int(one.status[changed[0]])} -> {int(scaled.status[changed[0]])}")
                N_tot = (F[..., 0].sum(axis=1) if velocity is None else
                         (velocity[:, None, 0] * F[..., 0] - (velocity[:, None, 1:] * F[..., 1:]).sum(-1)).sum(1))
                apart = np.abs(scaled.F_pred * 2.0**-k - one.F_pred).max(axis=(1, 2)) / N_tot
                assert apart.max() < 1e-14, (name, species, frame, k, apart.max())


@pytest.mark.parametrize("species", SUBNORMAL_SPECIES)
def test_the_flux_factor_limit_of_a_species_below_dbl_min_n_tot_does_not_depend_on_n_tot(species):
    """At rest: the species' flux factor as given decides, whether the division by N_tot rounds it
    to 0, to an ulp or to a few (cells scaled by 1, 1.5, 3 and 1e-3 relative to each other)."""
    values = np.array(SUBNORMAL_SPECIES[species], float)
    flux_factor = np.linalg.norm(values[1:]) / values[0]
    F = crossing_cells(100, seed=9)
    for name, apply in closures():
        statuses = []
        for scale in (1.0, 1.5, 3.0, 1e-3):
            G = F * scale
            G[:, 2] = values * TINY
            statuses.append(apply(G, None).status)
        for status in statuses:
            if flux_factor >= 0.98:
                assert np.all(status == FLUX_FACTOR), (name, species, np.unique(status))
            else:
                assert not np.any(status & FLUX_FACTOR), (name, species, np.unique(status))
                np.testing.assert_array_equal(status & REJECTED, 0)


def test_moving_cells_with_a_subnormal_species_keep_the_laws():
    """The cells of the scale test, moving: conservation to rounding of N_tot on every accepted cell,
    every output realizable and finite, stable cells their input's bits."""
    rows = []
    for species in SUBNORMAL_SPECIES.values():
        F = crossing_cells(100, seed=10)
        F[:, 4] = np.array(species) * TINY
        rows.append(F)
    F = np.concatenate(rows)
    u = moving(len(F), seed=11)
    for name, apply in closures():
        result = apply(F, u)
        F_pred = result.F_pred
        assert np.isfinite(F_pred).all(), name
        accepted = (result.status & REJECTED) == 0
        change = F_pred - F
        N_tot = (u[:, None, 0] * F[..., 0] - (u[:, None, 1:] * F[..., 1:]).sum(-1)).sum(1)
        for kind in (slice(0, 3), slice(3, 6)):
            summed = np.abs(change[:, kind].sum(axis=1)).max(axis=1) / N_tot
            assert summed[accepted].max() < 1e-14, name
        comoving = u[:, None, 0] * change[..., 0] - (u[:, None, 1:] * change[..., 1:]).sum(-1)
        lepton = np.abs(comoving[:, :3] - comoving[:, 3:]).max(axis=1) / N_tot
        assert lepton[accepted].max() < 1e-14, name
        largest = np.maximum(np.abs(F_pred).max(axis=-1, keepdims=True), np.finfo(float).tiny)
        flux = np.sqrt(((F_pred[..., 1:] / largest) ** 2).sum(-1)) * largest[..., 0]
        assert np.all(F_pred[..., 0] >= 0) and np.all(flux <= F_pred[..., 0]), name
        stable = (result.status & int(dodo.CellStatus.NO_CROSSING)) != 0
        assert np.array_equal(F_pred[stable].view(np.int64), F[stable].view(np.int64)), name
