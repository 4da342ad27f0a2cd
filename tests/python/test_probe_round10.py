"""Outside probe, round ten: physics laws across the closure's call paths.

Each law held on every path probed (docs/reliability_python.md, section 12) but one, fixed
after the round: with ONNX Runtime evaluating the network, a cell inside the flavour-image blend
band (|n_nubar_e - n_nu_e| < 0.01 N_tot) lost exact nu <-> nubar equivariance (8e-10 N_tot; its
image rows swapped places in the batch, where ONNX Runtime rounds by position; the closure now
orders a cell's image rows by weight and content, which relabelling preserves).
"""

from __future__ import annotations

import numpy as np
import pytest

import dodo
from conftest import random_states, random_velocities
from dodo._closure import runtime_available

if not runtime_available():
    pytest.skip("dodo was built without the closure runtime", allow_module_level=True)

NU_NUBAR = [3, 4, 5, 0, 1, 2]
MU_TAU = [0, 2, 1, 3, 5, 4]


def blend_band_cell():
    """A mu = tau crossing cell with n_nubar_e - n_nu_e = -0.009 N_tot (two images blended)."""
    rng = np.random.default_rng(11)
    F = np.concatenate([random_states(rng, 500), random_states(rng, 500, mu_equals_tau=True)])
    u = random_velocities(rng, 1000)
    return F[920:921], u[920:921]


@pytest.mark.parametrize("evaluator, relabel", [
    ("auto", NU_NUBAR), ("auto", MU_TAU),
    ("onnxruntime", NU_NUBAR), ("onnxruntime", MU_TAU),
], ids=["native-nu_nubar", "native-mu_tau", "onnxruntime-nu_nubar", "onnxruntime-mu_tau"])
def test_relabelling_a_blend_band_cell_relabels_its_answer(evaluator, relabel, monkeypatch):
    monkeypatch.delenv("DODO_NETWORK_EVALUATOR", raising=False)
    F, u = blend_band_cell()
    closure = dodo.Closure(threads=1, evaluator=evaluator)
    assert closure.evaluator == ("native" if evaluator == "auto" else evaluator)
    direct, relabelled = closure.apply(F, u), closure.apply(F[:, relabel], u)
    ntot = dodo.comoving_density(F, u)
    # A crossing cell that the network corrected (the limiter may scale the correction down:
    # CORRECTION_LIMITED is a corrected cell, and relabelled with it).
    corrected_only = int(dodo.CellStatus.CORRECTION_LIMITED)
    assert int(direct.status[0]) & ~corrected_only == 0, dodo.describe_status(direct.status[0])
    assert relabelled.status[0] == direct.status[0]
    error = np.abs(relabelled.F_pred[:, relabel] - direct.F_pred).max() / ntot[0]
    assert error < 1e-13, error
    assert relabelled.growth_rate[0] == direct.growth_rate[0]
    assert relabelled.uncertainty[0] == direct.uncertainty[0]


@pytest.mark.parametrize("relabel", [NU_NUBAR, MU_TAU, [3, 5, 4, 0, 2, 1]], ids=["nu_nubar", "mu_tau", "both"])
def test_relabelling_a_batch_of_blend_band_cells_relabels_every_answer_under_onnxruntime(relabel, monkeypatch):
    """The same law on many blend-band cells in one batch (their rows at many positions of ONNX
    Runtime's blocks; the single-cell case above is the one that showed the defect)."""
    monkeypatch.delenv("DODO_NETWORK_EVALUATOR", raising=False)
    rng = np.random.default_rng(5)
    rest = np.concatenate([random_states(rng, 4000), random_states(rng, 4000, mu_equals_tau=True)])
    band = np.abs(rest[:, 3, 0] - rest[:, 0, 0]) < 0.009 * rest[:, :, 0].sum(axis=1)  # a_e in the blend band
    rest = rest[band]
    assert len(rest) > 50
    u = random_velocities(rng, len(rest), max_speed=0.6)
    F = dodo.boost_from_rest(rest, u[:, None, :])
    closure = dodo.Closure(threads=1, evaluator="onnxruntime")
    direct, relabelled = closure.apply(F, u), closure.apply(F[:, relabel], u)
    ntot = dodo.comoving_density(F, u)
    assert np.all(relabelled.status == direct.status)
    error = (np.abs(relabelled.F_pred[:, relabel] - direct.F_pred).max(axis=(-1, -2)) / ntot).max()
    assert error < 1e-13, error
    np.testing.assert_array_equal(relabelled.growth_rate, direct.growth_rate)
    np.testing.assert_array_equal(relabelled.uncertainty, direct.uncertainty)
