"""Box3D's flux-factor limit (max_flux_factor, 0.98) is decided by the same bits on every CPU path.

The flux factor |F| / n of each species (block_moments) was computed with fused multiply-adds in the
AVX2 and AVX-512 clones and without them in the baseline one, so a species within an ulp or two of the
limit was FLUX_FACTOR (input returned) on one CPU and a deep crossing on another: 17 of 24,300 cells
at the limit, outputs 0.04-0.10 N_tot apart (physics-law probe, round twelve; a transport code that
clamps flux factors at 0.98 puts cells there). block_moments now computes without contraction, so the
decision is that of |F| / n in plain IEEE operations, which NumPy reproduces here: N_tot a power of two
and dyadic densities make the normalisation exact."""
from __future__ import annotations

import numpy as np

import dodo

LIMIT = 0.98


def cells_at_the_limit(count: int, seed: int = 12):
    rng = np.random.default_rng(seed)
    F = np.zeros((count, 6, 4))
    F[:, :, 0] = [0.25, 0.125, 0.125, 0.25, 0.125, 0.125]  # sum 1: the normalisation is exact
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    ulps = rng.integers(-4, 5, size=count)
    length = LIMIT * 0.25 * (1.0 + ulps * np.finfo(float).eps)
    F[:, 0, 1:] = direction * length[:, None]  # species 0 at the limit, to a few ulp
    F[:, 3, 1:] = -0.5 * F[:, 0, 1:]  # an antineutrino flux the other way: crossings where it is kept
    return F


def test_the_limit_is_decided_on_the_flux_factor_of_plain_ieee_operations():
    F = cells_at_the_limit(20_000)
    x, y, z, n = F[:, 0, 1], F[:, 0, 2], F[:, 0, 3], F[:, 0, 0]
    flux_factor = np.sqrt(x * x + y * y + z * z) / n  # no fused multiply-add (NumPy's ufuncs)
    expected = ~(flux_factor < LIMIT)
    status = dodo.box3d(F, max_flux_factor=LIMIT).status
    flagged = (status & int(dodo.CellStatus.FLUX_FACTOR)) != 0
    assert 0.2 < expected.mean() < 0.8  # both sides of the limit are drawn
    mismatched = np.flatnonzero(flagged != expected)
    assert mismatched.size == 0, (f"{mismatched.size} of {len(F)} cells decided otherwise than |F| / n "
                                  f"(code path {dodo._core.box3d_instruction_set()})")


def test_round_twelves_cell_at_the_limit_is_flux_factor_on_every_path():
    """Its reproducer (at rest, species 0 at |F|/n = 0.98 to the last bit): FLUX_FACTOR, the input
    returned, on the baseline build; status 0 and a change of 0.058 N_tot on AVX-512 before."""
    F = np.array([[0.6764051936385778, -0.44339621701240106, 0.031464009038361024, -0.49174774733669124],
                  [0.5893754453075652, 0.2049482121586181, -0.0006541997711811853, -0.2641818302176678],
                  [0.40275528371892827, -0.09698271482940071, 0.10716401322676396, 0.1697698098178203],
                  [0.6464752465798016, -0.26620870394045526, -0.015064504442549465, -0.1633731183346448],
                  [0.828305875280717, 0.49125275091462656, 0.1330149127234862, 0.04431511429988552],
                  [0.10325589230415345, -0.023130609247638698, 0.0006080894391116825, -0.00874904010772247]])
    result = dodo.box3d(F)
    assert int(result.status) == int(dodo.CellStatus.FLUX_FACTOR)
    assert np.array_equal(result.F_box, F)
