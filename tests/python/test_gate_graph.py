"""The ensemble graph's gate distance in float64 (dodo.training.gate_graph, tools/gate_distance_float64.py).

The float32 quadratic form of a precision matrix of condition ~1e7 put ONNX Runtime 1.3e-4 N_tot
from the native evaluator on far-out cells (physics-law probe, round three). Exports now compute
the distance in double; the native description's float32 initializers keep their names."""
from __future__ import annotations

import numpy as np
import pytest

import dodo
from cli_helpers import run, run_tool

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

DISTANCE = ("ensemble.feature_mean", "ensemble.feature_precision", "ensemble.d2_max")


def far_out_cells() -> np.ndarray:
    from dodo.training.gate_graph import far_out_probe_cells

    return far_out_probe_cells(600, seed=11)


def doubled_inputs(path) -> set:
    """Names of the graph's tensors cast to double."""
    model = onnx.load(str(path))
    double = onnx.TensorProto.DOUBLE
    return {node.input[0] for node in model.graph.node if node.op_type == "Cast"
            and any(a.name == "to" and a.i == double for a in node.attribute)}


def evaluator_gap(package) -> float:
    F = far_out_cells()
    native = dodo.Closure(package, threads=1).apply(F)
    graph = dodo.Closure(package, threads=1, evaluator="onnxruntime").apply(F)
    # The limiter's flag may differ where its step is 1 within rounding (a tiny model's cells).
    limited = int(dodo.CellStatus.CORRECTION_LIMITED)
    np.testing.assert_array_equal(native.status | limited, graph.status | limited)
    return float((np.abs(native.F_pred - graph.F_pred).max(axis=(-1, -2)) / F[..., 0].sum(-1)).max())


def test_an_exported_ensemble_computes_its_gate_distance_in_float64(ensemble_run, tmp_path, capsys):
    package = tmp_path / "m.onnx"
    code, _, err = run(capsys, ["export", str(ensemble_run["checkpoint"]), "-o", str(package)])
    assert code == 0, err
    assert set(DISTANCE) <= doubled_inputs(package)
    # The native description still finds its float32 initializers by name.
    assert dodo.Closure(package, threads=1).evaluator == "native"
    assert evaluator_gap(package) <= 1e-6
    from dodo.training.gate_graph import distance_in_float64

    assert distance_in_float64(onnx.load(str(package))) is False  # already in double: nothing to do


def test_the_default_package_computes_its_gate_distance_in_float64():
    from dodo.training.gate_graph import distance_in_float64

    from dodo.models import default_model_path

    path = default_model_path()
    assert set(DISTANCE) <= doubled_inputs(path)
    assert distance_in_float64(onnx.load(str(path))) is False
    assert evaluator_gap(str(path)) <= 1e-6


def test_the_tool_edits_a_float32_package_and_leaves_the_native_results(ensemble_run, tmp_path, capsys, monkeypatch):
    """A package exported as before (the distance in float32) is edited by the tool: the casts to
    double, the same native bits, the graph onto the native results; never over its input."""
    import dodo.training.gate_graph as gate_graph

    import dodo.training.ensemble_train as ensemble_train

    monkeypatch.setattr(gate_graph, "distance_in_float64", lambda model, prefix="ensemble.": False)
    # The float32 distance is the defect the tool mends: since the growth ratio is gated by the
    # distance too (2026-12-07), the export's own torch-vs-graph check sees it on far-out rows.
    monkeypatch.setattr(ensemble_train, "check_graph_outputs", lambda *args, **kwargs: 0.0)
    old = tmp_path / "old.onnx"
    code, _, err = run(capsys, ["export", str(ensemble_run["checkpoint"]), "-o", str(old)])
    assert code == 0, err
    monkeypatch.undo()
    assert not set(DISTANCE) & doubled_inputs(old)
    refused = run_tool("gate_distance_float64.py", old, "-o", old)
    assert refused.returncode == 2 and "gate_distance_float64.py" in refused.stderr
    new = tmp_path / "new.onnx"
    done = run_tool("gate_distance_float64.py", old, "-o", new)
    assert done.returncode == 0, done.stderr
    assert set(DISTANCE) <= doubled_inputs(new)
    F = far_out_cells()
    assert (dodo.Closure(str(old), threads=1).apply(F).F_pred.tobytes()
            == dodo.Closure(str(new), threads=1).apply(F).F_pred.tobytes())
    assert evaluator_gap(str(new)) <= 1e-6
    again = run_tool("gate_distance_float64.py", new, "-o", tmp_path / "again.onnx")
    assert again.returncode == 1 and "nothing written" in again.stderr
