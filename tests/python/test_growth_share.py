"""The growth share of `dodo train-ensemble`'s held-out table and `dodo learning-curve`
(ensemble_train._growth_within): over the states with a measured rate, a non-finite learned rate
counting as not within 10% (it was left out of the share, which rose; scoring probe, 2026-12-06)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from dodo.training.ensemble_train import _growth_within, format_scores  # noqa: E402


def test_a_non_finite_learned_rate_on_a_measured_state_is_not_within():
    ratio = np.array([1.0, 1.05, np.nan, np.inf, 0.0, np.nan])  # measured / learned
    measured = np.array([True, True, True, True, True, False])  # the last state has no measured rate
    within = _growth_within(ratio, measured)
    assert within.tolist() == [True, True, False, False, False]
    assert _growth_within(ratio).tolist() == [True, True, False]  # no mask: the finite ratios, as before


def test_the_held_out_table_prints_that_share():
    n = 4
    scores = {"model": np.full(n, 0.002), "ungated": np.full(n, 0.002), "box3d": np.full(n, 0.006),
              "growth_measured_over_model": np.array([1.0, 1.0, np.nan, np.nan]),
              "growth_measured_over_proxy": np.array([1.0, 1.5, 1.0, np.nan]),
              "growth_measured": np.array([True, True, True, False])}
    text = format_scores("t", scores)
    assert "learned growth   measured/predicted growth: median 1.000, within 10%: 67%" in text, text
    assert "Box3D proxy      measured/predicted growth: median 1.000, within 10%: 67%" in text, text
