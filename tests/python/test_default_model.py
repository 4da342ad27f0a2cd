"""The shipped default model: trained on Dodo's own QKE-solver data (issue 6), it must say so,
pass its self-test, and beat Box3D on real Emu runs it never saw (emu_1d_validation.h5) and on
the held-out split recorded at export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dodo
from dodo._closure import Closure, runtime_available
from dodo.conventions import from_emu_layout

h5py = pytest.importorskip("h5py")
if not runtime_available():
    pytest.skip("dodo was built without the closure runtime", allow_module_level=True)

EMU_VALIDATION = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"


def mean_abs_dn_over_ntot(F_pred: np.ndarray, F_true: np.ndarray, F_init: np.ndarray) -> float:
    """The shared README's metric: |dn|/N_tot per species with mu and tau averaged, mean over
    species and cells."""
    def mu_tau_averaged(F):
        F = F.copy()
        for heavy in ((1, 2), (4, 5)):
            F[:, heavy, 0] = F[:, heavy, 0].mean(axis=1, keepdims=True)
        return F
    ntot = F_init[:, :, 0].sum(axis=1)[:, None]
    return float(np.mean(np.abs(mu_tau_averaged(F_pred)[:, :, 0] - mu_tau_averaged(F_true)[:, :, 0]) / ntot))


def test_default_model_is_trained_on_qke_data_and_passes_its_self_test():
    shipped = Closure()
    assert shipped.metadata["dodo.training_data_kind"] == "qke"
    assert shipped.self_test() < 1e-5


def test_default_model_beats_box3d_on_real_emu_runs_it_never_saw():
    with h5py.File(EMU_VALIDATION, "r") as f:
        F_init = from_emu_layout(f["F4_initial(1|ccm)"][()])
        F_true = from_emu_layout(f["F4_final(1|ccm)"][()])
    box3d = mean_abs_dn_over_ntot(dodo.box3d(F_init).F_box, F_true, F_init)
    model = mean_abs_dn_over_ntot(dodo.closure(F_init), F_true, F_init)
    print(f"emu_1d_validation.h5, mean |dn|/N_tot: Box3D {box3d:.5f}, default model {model:.5f}")
    assert abs(box3d - 0.0065) < 0.0002  # the reference value of the shared README
    assert model < box3d


def test_default_model_beat_box3d_on_its_held_out_split():
    metrics = json.loads(Closure().metadata["dodo.metrics"])
    assert metrics["model"]["mean_abs_dn_over_ntot_all"] < metrics["box3d"]["mean_abs_dn_over_ntot_all"]
