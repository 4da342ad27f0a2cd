"""The growth rate falls back to Box3D's proxy where the density correction falls back to Box3D.

physics.md: where the inputs lie outside the training distribution, the correction is moved toward
zero. The distance gate exp(-max(0, d^2 - d2_max) / d2_max) moved the four-flux correction only:
on a cell it had cut to 2e-7 N_tot the growth rate was 0.15 times the proxy (physics-law probe,
round thirteen). Since 2026-12-07 the exporter multiplies the log growth ratio by the same factor
(native form "silu-mlp-density-residual-v2"), and the default package was re-exported so
(tools/gate_growth_in_package.py; kept as tests/data/training/qke_default_2026-12-07_unscaled.onnx, the
default's correction being scaled by 1.1 since); packages of form v1 keep their ungated ratio."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dodo
from cli_helpers import run_tool
from gate_windows import distance_ratio

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "python" / "dodo" / "models" / "qke_default.onnx"
UNGATED = REPO / "tests" / "data" / "training" / "qke_default_2026-12-04_growth_ungated.onnx"
# The re-export of UNGATED with the gated ratio: the default until 2026-12-07 18:40 UTC, since then
# scaled by 1.1 in its density correction alone (tests/python/test_correction_scale.py).
REGATED = REPO / "tests" / "data" / "training" / "qke_default_2026-12-07_unscaled.onnx"

# The probe's cell (dodo.training.gate_graph.far_out_probe_cells(4000)[2605], d^2 = 6.86 d2_max).
PROBE_CELL = np.array([
    [6.7001583464223287e-21, 9.1328461340303769e-22, -3.8287615637444076e-22, 1.1498725498678729e-22],
    [3.1598959534424043e-01, 2.5907532518047525e-02, 2.2434368107075026e-01, -1.5920244626920979e-01],
    [7.4672575063528937e-09, -7.6887429533996902e-10, -2.3129825320175555e-09, -3.8203777809801400e-09],
    [4.7651695709424731e-21, -8.6639357307886198e-22, -3.6490778362903947e-22, 7.3513713078787450e-22],
    [5.0338164470625541e-04, 3.1053102858425309e-04, -1.1421179849686457e-04, -1.6764750420752048e-05],
    [2.6360577322401957e-04, -2.0883100901831025e-04, -2.9403665299439488e-05, 9.0942714366831596e-05]])


def far_out_cells() -> np.ndarray:
    from dodo.training.gate_graph import far_out_probe_cells

    return far_out_probe_cells(4000)


def log_ratio(result) -> np.ndarray:
    crossing = result.growth_rate_proxy > 0
    return np.where(crossing, np.log(np.where(crossing, result.growth_rate, 1.0) /
                                     np.where(crossing, result.growth_rate_proxy, 1.0)), 0.0)


def test_far_from_the_training_data_the_default_growth_rate_is_the_proxy():
    F = far_out_cells()
    result = dodo.Closure(threads=1).apply(F)
    ratio = log_ratio(result)
    gate = np.exp(-np.maximum(0.0, distance_ratio(DEFAULT)(F) - 1.0))
    shut = (gate <= np.exp(-5.0)) & (result.growth_rate_proxy > 0)
    assert shut.sum() > 200  # 271 of the 4,000
    # |ln ratio| of the ungated network stays below ~3 on these cells: gated, below 3 e^-5 = 0.02.
    assert np.abs(ratio[shut]).max() <= 0.021
    ungated = log_ratio(dodo.Closure(str(UNGATED), threads=1).apply(F))
    assert np.abs(ungated[shut]).max() > 0.5  # the package before: far from the proxy there
    probe = dodo.Closure(threads=1).apply(PROBE_CELL)
    assert 0.98 <= float(probe.growth_rate / probe.growth_rate_proxy) <= 1.02  # was 0.148


def test_inside_the_training_data_nothing_moved():
    """The re-export changed the growth rate out of distribution only: F_pred and the uncertainty
    keep their bits everywhere, the growth rate wherever the gate is open."""
    from dodo.training.synth import random_initial_states

    inside = random_initial_states(np.random.default_rng(3), 3000)
    for F in (inside, far_out_cells()):
        new, old = dodo.Closure(str(REGATED), threads=1).apply(F), dodo.Closure(str(UNGATED), threads=1).apply(F)
        assert new.F_pred.tobytes() == old.F_pred.tobytes()
        assert new.uncertainty.tobytes() == old.uncertainty.tobytes()
    open_gate = distance_ratio(REGATED)(inside) <= 1.0
    assert open_gate.mean() > 0.9
    new, old = dodo.Closure(str(REGATED), threads=1).apply(inside), dodo.Closure(str(UNGATED), threads=1).apply(inside)
    assert new.growth_rate[open_gate].tobytes() == old.growth_rate[open_gate].tobytes()


@pytest.mark.parametrize("package", [DEFAULT, UNGATED], ids=["v2", "v1"])
def test_the_native_evaluator_follows_the_graph_of_either_form(package):
    form = json.loads({e.key: e.value for e in onnx.load(str(package)).metadata_props}["dodo.native_network"])["form"]
    assert form == ("silu-mlp-density-residual-v2" if package == DEFAULT else "silu-mlp-density-residual-v1")
    F = far_out_cells()
    native = dodo.Closure(str(package), threads=1)
    assert native.evaluator == "native"
    a, b = native.apply(F), dodo.Closure(str(package), threads=1, evaluator="onnxruntime").apply(F)
    crossing = a.growth_rate_proxy > 0
    assert np.abs(log_ratio(a) - log_ratio(b))[crossing].max() < 1e-4


def test_the_ensembles_outputs_gate_the_growth_ratio():
    from dodo.training.ensemble import DensityResidualEnsemble, Member

    torch.manual_seed(0)
    ensemble = DensityResidualEnsemble([], 0.02, 0.01, np.zeros(4), np.eye(4), 2.0, 2.0)
    ensemble.student = Member(6, 8, 1, n_outputs=3)
    x = torch.tensor([[0.5, 0.5, 0.0, 0.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # d^2 = 0.5 and 9
    with torch.no_grad():
        raw = ensemble.student(x)[:, 2]
        _, _, growth = ensemble.eval().outputs(x)
    assert growth[0] == raw[0]
    assert torch.allclose(growth[1], raw[1] * np.exp(-(9.0 - 2.0) / 2.0))


def test_the_tool_rebuilds_the_shipped_package_from_the_one_before(tmp_path):
    out = tmp_path / "regated.onnx"
    done = run_tool("gate_growth_in_package.py", UNGATED, "-o", out)
    assert done.returncode == 0, done.stderr
    assert "growth_moved': 0" in done.stdout  # random initial states: the growth rate kept its bits
    F = np.concatenate([far_out_cells(), PROBE_CELL[None]])
    made, shipped = dodo.Closure(str(out), threads=1).apply(F), dodo.Closure(str(REGATED), threads=1).apply(F)
    for field in ("F_pred", "growth_rate", "uncertainty", "status"):
        assert getattr(made, field).tobytes() == getattr(shipped, field).tobytes(), field
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(UNGATED.read_bytes())
    refused = run_tool("gate_growth_in_package.py", copy, "-o", copy)  # never over its input
    assert refused.returncode == 2 and "gate_growth_in_package.py" in refused.stderr
    assert copy.read_bytes() == UNGATED.read_bytes()
