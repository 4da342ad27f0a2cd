"""Outside probe, round 42: the public Python API beyond the closure (docs/reliability_python.md
section 52): dodo.conventions' helpers and constants, dodo.CellStatus of Python values, the boosts'
u=None, dodo.reference.conservation_error's shapes; and the laws the probe found holding (boost
round trips, invariance, N_tot, crossing features against the NumPy oracle, batches)."""
from __future__ import annotations

import numpy as np
import pytest

import dodo
from dodo import conventions
from dodo.reference import conservation_error

from box3d_oracle import crossing_features_oracle


def _cells(shape, seed=42):
    rng = np.random.default_rng(seed)
    F = np.zeros(tuple(shape) + (6, 4))
    F[..., 0] = rng.uniform(0.5, 2.0, tuple(shape) + (6,))
    F[..., 1:] = rng.normal(0.0, 0.12, tuple(shape) + (6, 3))
    return F


def _velocity(v):
    v = np.asarray(v, float)
    W = 1.0 / np.sqrt(1.0 - (v * v).sum(-1))
    return np.concatenate([np.asarray(W)[..., None], np.asarray(W)[..., None] * v], axis=-1)


# --- defects fixed in this round -------------------------------------------------------------

def test_convention_constants_are_read_only():
    for constant in (conventions.METRIC, conventions.REST_FRAME_VELOCITY):
        with pytest.raises(ValueError, match="read-only"):
            constant[0] = 5.0
    assert conventions.METRIC.tolist() == [-1.0, 1.0, 1.0, 1.0]
    assert conventions.REST_FRAME_VELOCITY.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_species_index_names_every_species_and_refuses_the_rest():
    for s in (0, 1):
        for f in range(3):
            index = conventions.species_index(s, f)
            assert conventions.SPECIES[index] == ("nubar_" if s else "nu_") + conventions.FLAVOURS[f]
    assert conventions.species_index(np.int64(1), np.uint8(2)) == 5
    for bad in ((2, 0), (0, 3), (-1, 0), (0, -1), (1.5, 0), (True, 0), ("1", 0), (0, 2.0)):
        with pytest.raises(ValueError, match="species_index"):
            conventions.species_index(*bad)


def test_minkowski_dot_takes_lists_and_refuses_vectors_that_are_not_four_long():
    assert conventions.minkowski_dot([1, 0, 0, 0], [1, 0, 0, 0]) == -1
    assert conventions.minkowski_dot([2.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]) == 4.0
    cells = _cells((3,))
    assert conventions.minkowski_dot(cells, conventions.REST_FRAME_VELOCITY).shape == (3, 6)
    for a, b in ((np.ones(3), np.ones(3)), (np.ones(5), np.ones(5)), (np.ones(4), np.ones(3)), (1.0, 1.0)):
        with pytest.raises(ValueError, match=r"minkowski_dot: . must have shape \(\.\.\., 4\)"):
            conventions.minkowski_dot(a, b)


def test_total_density_refuses_arrays_that_are_not_cells():
    assert conventions.total_density([[1, 0, 0, 0]] * 6) == 6
    assert conventions.total_density(_cells((2, 3))).shape == (2, 3)
    for shape in ((4,), (5, 4), (6, 3), (2, 7, 4)):
        with pytest.raises(ValueError, match=r"total_density: F must have shape \(\.\.\., 6, 4\)"):
            conventions.total_density(np.ones(shape))


def test_cell_status_of_python_values_is_decoded_as_of_numpy_values():
    S = dodo.CellStatus
    # Each was refused as a NumPy value and accepted as a Python one.
    for python_value, numpy_value in ((True, np.bool_(True)), (1.0, np.float64(1.0)), (2 ** 40, np.uint64(2 ** 40))):
        with pytest.raises((TypeError, ValueError)) as python_error:
            S(python_value)
        with pytest.raises((TypeError, ValueError)) as numpy_error:
            S(numpy_value)
        assert "cell status" in str(python_error.value) and "cell status" in str(numpy_error.value)
    assert S(3) is S(np.uint32(3)) or S(3) == S(np.uint32(3)) == S.NO_CROSSING | S.FLUX_FACTOR
    assert S(2 ** 32 - 1).value == 2 ** 32 - 1  # unknown bits of a uint32 are kept, as describe_status says
    # enum's own operations still work (~ goes through CellStatus(negative int)).
    every = sum(flag.value for flag in S)
    assert (~S.OK).value == every and (~S.NONFINITE).value == every & ~S.NONFINITE.value
    assert (S.NONFINITE | S.NO_CROSSING).value == 9 and S(S.NONFINITE) is S.NONFINITE


@pytest.mark.parametrize("boost", [dodo.boost_to_rest, dodo.boost_from_rest])
def test_boost_without_u_says_it_needs_one(boost):
    with pytest.raises(ValueError, match=f"{boost.__name__} needs the fluid four-velocity u"):
        boost(_cells(()), None)


@pytest.mark.parametrize("boost", [dodo.boost_to_rest, dodo.boost_from_rest])
def test_boost_refuses_a_u_of_the_trailing_cell_axes_that_would_mix_species(boost):
    # cells (2, 6) and u (6, 4), one velocity per cell of the last axis as dodo.box3d broadcasts it:
    # each species of a cell was boosted with another cell's velocity, silently.
    F = _cells((2, 6))
    u = _velocity(np.random.default_rng(4).normal(0, 0.2, (6, 3)))
    with pytest.raises(ValueError, match=r"matches F's cell axes \(6,\)"):
        boost(F, u)
    per_cell = boost(F, u[:, None, :])
    assert np.array_equal(per_cell[1, 4], boost(F[1, 4], u[4]))
    assert np.array_equal(boost(F, np.broadcast_to(u[:, None, :], F.shape)), per_cell)
    # one velocity per four-vector of a single cell, and a u over the leading axes, as before
    assert boost(F[0, 0], u).shape == (6, 4)
    assert boost(F, np.broadcast_to(u[0], (2, 1, 1, 4))).shape == (2, 6, 6, 4)


def test_conservation_error_refuses_an_output_of_another_shape():
    F = _cells((3,))
    result = dodo.box3d(F)
    assert conservation_error(F, result.F_box).max() < 1e-12
    with pytest.raises(ValueError, match="F_out has shape"):
        conservation_error(F[0], result.F_box)  # measured every cell against cell 0's input before
    with pytest.raises(ValueError, match="F_out has shape"):
        conservation_error(F, result.F_box[:2])


# --- laws and contracts the probe found holding ---------------------------------------------

U = _velocity([0.3, 0.1, -0.2])


def test_boosts_invert_each_other_and_broadcast_per_cell():
    F = _cells((4, 5))
    u = _velocity(np.random.default_rng(1).normal(0, 0.2, (5, 3)))
    rest = dodo.boost_to_rest(F, u[:, None, :])
    assert np.abs(dodo.boost_from_rest(rest, u[:, None, :]) - F).max() < 1e-13
    for i in range(4):
        for j in range(5):
            assert np.array_equal(dodo.boost_to_rest(F[i, j], u[j]), rest[i, j])
    # the rest frame is where u = (1, 0, 0, 0)
    assert np.abs(dodo.boost_to_rest(u, u) - [1, 0, 0, 0]).max() < 1e-14


def test_comoving_density_and_invariants_are_frame_independent():
    F = _cells((6,))
    rest = dodo.boost_to_rest(F, U)
    ntot = dodo.comoving_density(F, U)
    assert np.abs(ntot - rest[..., 0].sum(-1)).max() < 1e-13 * ntot.max()
    assert np.abs(dodo.comoving_density(rest) - ntot).max() < 1e-13 * ntot.max()
    inv = dodo.invariants(rest)
    assert np.abs(dodo.invariants(F, U) - inv).max() < 1e-14
    theta = 0.7
    R = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    rotated = rest.copy()
    rotated[..., 1:] = rest[..., 1:] @ R.T
    assert np.abs(dodo.invariants(rotated) - inv).max() < 1e-14
    # the documented definition
    x = rest[..., 0] / ntot[:, None]
    products = np.stack([conventions.minkowski_dot(rest[:, a], rest[:, b]) for a, b in conventions.invariant_pairs()], -1)
    assert np.abs(inv[:, :6] - x).max() < 1e-14
    assert np.abs(inv[:, 6:] - products / ntot[:, None] ** 2).max() < 1e-14


def test_crossing_features_match_the_numpy_oracle_and_are_scale_free():
    F = _cells((5,))
    features = dodo.crossing_features(F, U)
    ok = ~np.isnan(features).any(-1)
    assert ok.sum() >= 3
    rest = dodo.boost_to_rest(F[ok], U)
    normalised = rest / rest[..., 0].sum(-1)[:, None, None]
    assert np.abs(crossing_features_oracle(normalised) - features[ok]).max() < 1e-12
    for scale in (1e-300, 1e300):
        assert np.nanmax(np.abs(dodo.crossing_features(F * scale, U) - features)) < 1e-13
        assert np.abs(dodo.invariants(F * scale, U) - dodo.invariants(F, U)).max() < 1e-14


def test_every_batch_function_takes_empty_and_nested_batches():
    F = _cells((2, 3))
    u = _velocity(np.random.default_rng(3).normal(0, 0.2, (3, 3)))
    for function, trailing in ((dodo.invariants, (27,)), (dodo.comoving_density, ()),
                               (dodo.crossing_features, (18,))):
        batch = function(F, u)
        assert batch.shape == (2, 3) + trailing
        for i in range(2):
            for j in range(3):
                assert np.array_equal(function(F[i, j], u[j]), batch[i, j], equal_nan=True)
        assert function(np.zeros((0, 6, 4)), U).shape == (0,) + trailing
        assert function(np.zeros((3, 0, 6, 4))).shape == (3, 0) + trailing
    assert dodo.boost_to_rest(np.zeros((0, 4)), U).shape == (0, 4)


def test_bad_cells_give_flags_zeros_or_nan_as_documented_never_an_error():
    bad = np.stack([np.full((6, 4), np.nan), np.zeros((6, 4)), -_cells(()), np.full((6, 4), np.inf)])
    result = dodo.box3d(bad)
    assert all(np.isfinite(array).all() for array in result)
    assert [dodo.CellStatus(s) for s in result.status] == [dodo.CellStatus.NONFINITE, dodo.CellStatus.ZERO_DENSITY,
                                                          dodo.CellStatus.NEGATIVE_DENSITY, dodo.CellStatus.NONFINITE]
    assert (dodo.invariants(bad) == 0).all()  # N_tot not a positive finite number: zeros
    assert np.isnan(dodo.crossing_features(bad)).all()  # rejected cells: NaN
