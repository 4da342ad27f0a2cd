"""Outside probe, Python round sixty-two: ordering of results, comoving_density of non-finite cells
(docs/reliability_python.md, section 111)."""
from __future__ import annotations

import operator

import numpy as np
import pytest

import dodo
from test_probe_round60 import _cells as round60_cells


def _cells(n: int) -> np.ndarray:
    return round60_cells(n, seed=62)


@pytest.mark.parametrize("route", ["closure", "box3d"])
@pytest.mark.parametrize("compare", [operator.lt, operator.le, operator.gt, operator.ge])
def test_ordering_two_results_is_a_type_error_that_says_what_to_compare(route, compare):
    # Before: tuple ordering asked NumPy for one truth value of the first fields' comparison,
    # "The truth value of an array with more than one element is ambiguous", with no way on.
    F = _cells(3)
    make = (lambda F_init: dodo.Closure("box3d").apply(F_init)) if route == "closure" else dodo.box3d
    r1, r2 = make(F), make(F * 2)
    with pytest.raises(TypeError, match=r"objects have no order .*compare a field element by element, e\.g\. "
                                        r"r1\.growth_rate < r2\.growth_rate"):
        compare(r1, r2)
    # One cell: tuple ordering gave an answer from the first differing field; now the same TypeError.
    one = make(F[:1])
    with pytest.raises(TypeError, match="have no order"):
        sorted([one, make(F[:1] * 2)])
    # Guards: a number keeps Python's own words; equality keeps its round-45 TypeError; fields compare.
    with pytest.raises(TypeError, match="not supported between instances"):
        compare(r1, 1)
    with pytest.raises(TypeError, match="compare the fields"):
        r1 == r2  # noqa: B015
    assert compare(r1.growth_over_ntot, r2.growth_over_ntot).shape == (3,)


def test_comoving_density_docstring_says_what_non_finite_cells_give():
    doc = dodo.comoving_density.__doc__
    assert "NaN anywhere in a cell's F_init or u gives" in doc and "also at rest" in doc
    assert "invariants` gives zeros" in doc
    # ... and that is what it does: NaN at rest from a spatial NaN or Inf, +-Inf from F^t, NaN from u.
    F = _cells(1)
    for index, value, expected in [((0, 0, 1), np.nan, "nan"), ((0, 2, 3), np.inf, "nan"),
                                   ((0, 1, 0), np.inf, "inf"), ((0, 1, 0), -np.inf, "-inf")]:
        G = F.copy()
        G[index] = value
        assert str(dodo.comoving_density(G)[0]) == expected
        assert str(dodo.comoving_density(G, [1.0, 0.0, 0.0, 0.0])[0]) == expected
        assert np.all(dodo.invariants(G)[0] == 0.0)
    assert np.isnan(dodo.comoving_density(F, [1.0, 0.0, 0.0, np.nan])[0])


def test_the_docstrings_say_where_lorentz_factors_cost_the_crossings():
    # Before: u^t up to ~2e7 accepted, every cell NO_CROSSING at 1.9e7, and no word of it anywhere.
    for doc in (dodo.box3d.__doc__, dodo.Closure.apply.__doc__):
        text = " ".join(doc.split())
        assert "from W ~ 2e6 on cells lose their ELN crossings to rounding and come back NO_CROSSING" in text
        assert "u^t up to ~2e7 is accepted, so check the status there" in text
    # ... and that is what happens: cells with crossings at rest keep them at W = 1e6, not at 1.9e7.
    F = _cells(40)
    no_crossing = int(dodo.CellStatus.NO_CROSSING)
    at_rest = dodo.box3d(F).status
    assert np.count_nonzero(at_rest & no_crossing) < 40
    crossing = (at_rest & no_crossing) == 0
    for W, lost in ((1e6, False), (1.9e7, True)):
        u = np.array([W, np.sqrt(W * W - 1.0), 0.0, 0.0])
        status = dodo.box3d(dodo.boost_from_rest(F, u), u).status[crossing]
        assert np.all((status & no_crossing) != 0) if lost else np.all((status & no_crossing) == 0)
