"""Box3D against its own stored outputs (tests/data/box3d_regression.npz, written by
tools/make_box3d_regression.py before the issue-13 kernel work): a faster kernel must give the
same statuses and the same outputs to 1e-12 N_tot, on random, mu = tau, stable and borderline
M1-like cells, at rest and boosted."""
import pathlib

import numpy as np
import pytest

import dodo

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "box3d_regression.npz"


@pytest.fixture(scope="module")
def stored():
    with np.load(DATA) as data:
        return {name: data[name] for name in data.files}


@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_match_the_stored_ones_to_1e_minus_12_ntot(stored, threads):
    F, u = stored["F_init"], stored["u"]
    result = dodo.box3d(F, u, lebedev_order=17, z_method="exact", threads=threads)
    ntot = dodo.comoving_density(F, u)
    np.testing.assert_array_equal(result.status, stored["status"])
    deviation = np.abs(result.F_box - stored["F_box"]).max(axis=(-1, -2)) / ntot
    assert deviation.max() <= 1e-12, f"cell {deviation.argmax()} differs by {deviation.max():.3g} N_tot"
    np.testing.assert_allclose(result.growth_over_ntot, stored["growth_over_ntot"], rtol=0, atol=1e-12)


def test_the_stored_cells_cover_stable_and_crossing_cells(stored):
    stable = stored["status"] == int(dodo.CellStatus.NO_CROSSING)
    assert 0.1 < stable.mean() < 0.5
    assert np.all((stored["status"] == 0) | stable)  # no cell rejected or limited
