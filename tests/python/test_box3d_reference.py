"""Box3D against the reference cases (inputs, expected outputs, three settings each: order 17 exact Z,
the API default, order 17 Jedynak Z and order 131 exact Z)."""
import numpy as np
import pytest

import dodo


def _expected(cases):
    for case in cases:
        for expected in case["expected"]:
            yield case, expected


def test_every_reference_case_matches_to_1e_minus_9_ntot(reference_cases):
    checked = 0
    for case, expected in _expected(reference_cases):
        F_init, u = np.array(case["F_init"]), np.array(case["u"])
        result = dodo.box3d(F_init, u, lebedev_order=expected["lebedev_order"], z_method=expected["z_method"])
        ntot = expected["ntot_comoving"]
        scale = ntot if ntot > 0 else 1.0
        assert np.abs(result.F_box - np.array(expected["F_box"])).max() <= 1e-9 * scale, case["name"]
        assert result.growth_over_ntot == pytest.approx(expected["growth_over_ntot"], abs=1e-9), case["name"]
        assert dodo.comoving_density(F_init, u) == pytest.approx(ntot, rel=1e-12)
        checked += 1
    assert checked == 45


def test_growth_rate_in_per_second_uses_ntot_and_the_coupling(reference_cases):
    nsm1 = next(c for c in reference_cases if c["name"] == "nsm1")
    result = dodo.box3d(np.array(nsm1["F_init"]), lebedev_order=131)
    ntot = nsm1["expected"][1]["ntot_comoving"]
    assert result.growth_rate == pytest.approx(result.growth_over_ntot * ntot * 1.9255e-22, rel=1e-12)


def test_stable_cases_are_flagged_and_unchanged(reference_cases):
    for name in ("no_crossing", "empty_species"):
        case = next(c for c in reference_cases if c["name"] == name)
        result = dodo.box3d(np.array(case["F_init"]), np.array(case["u"]))
        assert result.status == dodo.CellStatus.NO_CROSSING
        np.testing.assert_array_equal(result.F_box, np.array(case["F_init"]))
        assert result.growth_over_ntot == 0.0


def test_two_quadratures_agree_within_the_quadrature_tolerance(reference_cases):
    for case in reference_cases:
        F_init, u = np.array(case["F_init"]), np.array(case["u"])
        coarse = dodo.box3d(F_init, u, lebedev_order=17).F_box
        fine = dodo.box3d(F_init, u, lebedev_order=131).F_box
        scale = max(float(dodo.comoving_density(F_init, u)), 1e-300)
        assert np.abs(coarse - fine).max() <= 2e-3 * scale, case["name"]


def test_symmetric_cases_equilibrate_all_flavours(reference_cases):
    for name in ("fiducial", "maxent2"):
        case = next(c for c in reference_cases if c["name"] == name)
        F_box = dodo.box3d(np.array(case["F_init"]), lebedev_order=131).F_box
        for s in (0, 3):
            np.testing.assert_allclose(F_box[s:s + 3, 0], F_box[s, 0], rtol=1e-12)
