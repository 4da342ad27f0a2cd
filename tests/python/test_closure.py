"""The closure runtime from Python: parity, conservation, realizability, symmetries, threads."""
from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest

from closure_helpers import (CONSERVED_TOLERANCE, FP32_TOLERANCE, conservation_residual, ntot,
                              realizability_margin_over_ntot, synthetic, write)

import dodo
from dodo._closure import BOX3D_ONLY, Closure, closure
from dodo.models import default_model_path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for head in ("equivariant", "direct"):
        path = folder / f"{head}.onnx"
        out[head] = (path, write(path, head, n_test_vectors=4))
    # Large corrections, so that the realizability limiter has work to do.
    path = folder / "wild.onnx"
    out["wild"] = (path, write(path, "direct", output_scale=3.0, seed=3, n_test_vectors=4))
    return out


@pytest.fixture(scope="module")
def cells():
    return synthetic.test_cells(300, seed=5)


def test_default_model_is_the_shipped_one_and_passes_its_self_test():
    shipped = Closure()
    assert shipped.model_path == str(default_model_path())
    assert shipped.self_test() < FP32_TOLERANCE  # what it learned from: test_default_model.py


@pytest.mark.parametrize("head", ["equivariant", "direct"])
def test_runtime_matches_numpy_reference_of_the_pipeline(models, cells, head):
    path, mlp = models[head]
    F, u = cells
    expected = synthetic.reference_closure(F, u, mlp, head)
    result = Closure(path, threads=1).apply(F, u)
    error = np.abs(result.F_pred - expected["F_pred"]).max(axis=(1, 2)) / ntot(F, u)
    assert error.max() < FP32_TOLERANCE
    np.testing.assert_array_equal(result.status, expected["status"])


def test_onnxruntime_python_and_numpy_forward_agree(models, cells):
    import onnxruntime

    path, mlp = models["equivariant"]
    features, _ = synthetic.reference_invariants(*cells)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(["head_output"], {"invariants": features.astype(np.float32)})
    np.testing.assert_allclose(onnx_output, mlp(features), atol=1e-5, rtol=1e-4)


def test_torch_forward_agrees_with_the_exported_graph(models, cells):
    torch = pytest.importorskip("torch")
    path, mlp = models["equivariant"]

    def torch_network(features):
        x = (torch.from_numpy(features.astype(np.float32)) - torch.from_numpy(mlp.input_mean)) / torch.from_numpy(mlp.input_std)
        for layer, (W, b) in enumerate(mlp.weights):
            x = x @ torch.from_numpy(W) + torch.from_numpy(b)
            if layer < len(mlp.weights) - 1:
                x = torch.tanh(x)
        return x.numpy()

    # Through the full runtime: the same head output must give the same closure.
    torch_closure = synthetic.reference_closure(*cells, torch_network, "equivariant")
    runtime = Closure(path, threads=1)(*cells)
    assert (np.abs(runtime - torch_closure["F_pred"]).max(axis=(1, 2)) / ntot(*cells)).max() < FP32_TOLERANCE


@pytest.mark.parametrize("model", ["equivariant", "direct", "wild", BOX3D_ONLY])
def test_every_output_conserves_flavour_sums_and_lepton_number(models, cells, model):
    F, u = cells
    path = model if model == BOX3D_ONLY else models[model][0]
    F_pred = Closure(path)(F, u)
    assert conservation_residual(F_pred, F, u).max() < CONSERVED_TOLERANCE


@pytest.mark.parametrize("model", ["equivariant", "wild"])
def test_every_output_is_realizable(models, cells, model):
    F, u = cells
    runtime = Closure(models[model][0])
    result = runtime.apply(F, u)
    assert realizability_margin_over_ntot(result.F_pred, u).min() > -1e-12
    if model == "wild":
        limited = (result.status & dodo.CellStatus.CORRECTION_LIMITED) != 0
        assert limited.sum() > 10  # the limiter really acted
        assert runtime.counters["correction_limited"] == limited.sum()


def test_box3d_only_closure_equals_dodo_box3d(cells):
    F, u = cells
    result = Closure(BOX3D_ONLY).apply(F, u)
    box = dodo.box3d(F, u)
    np.testing.assert_array_equal(result.F_pred, box.F_box)
    np.testing.assert_array_equal(result.status, box.status)
    np.testing.assert_allclose(result.growth_over_ntot, box.growth_over_ntot, rtol=1e-15)


@pytest.mark.parametrize("head", ["equivariant", "direct"])
def test_boosted_input_gives_boosted_output(models, head):
    F_rest, _ = synthetic.test_cells(64, seed=9, moving=False)
    _, u = synthetic.test_cells(64, seed=10)
    runtime = Closure(models[head][0])
    F_pred_rest = runtime(F_rest)
    F_lab = synthetic.boost_to_rest(u, F_rest, sign=-1.0)
    expected = synthetic.boost_to_rest(u, F_pred_rest, sign=-1.0)
    error = np.abs(runtime(F_lab, u) - expected).max(axis=(1, 2)) / ntot(F_rest, None)
    assert error.max() < 1e-6  # float32 invariants differ in the last bit between frames


def test_equivariant_head_commutes_with_a_symmetry_rotation_of_the_quadrature(models):
    # A 90-degree rotation about z maps the Lebedev grid onto itself: Box3D commutes exactly.
    F, _ = synthetic.test_cells(64, seed=12, moving=False)
    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rotate = lambda G: np.concatenate([G[..., :1], G[..., 1:] @ R.T], axis=-1)  # noqa: E731
    runtime = Closure(models["equivariant"][0])
    error = np.abs(runtime(rotate(F)) - rotate(runtime(F))).max(axis=(1, 2)) / ntot(F, None)
    assert error.max() < 1e-6


def test_output_scales_with_the_input(models, cells):
    F, u = cells
    runtime = Closure(models["equivariant"][0])
    np.testing.assert_allclose(runtime(F * 1e-20, u) * 1e20, runtime(F, u), rtol=1e-9, atol=1e-9 * F.max())


def test_one_two_and_eight_threads_give_identical_results(models):
    F, u = synthetic.test_cells(5000, seed=13)
    results = [Closure(models["equivariant"][0], threads=t, chunk_size=256)(F, u) for t in (1, 2, 8)]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_one_handle_shared_by_python_threads_gives_the_same_results(models):
    F, u = synthetic.test_cells(2000, seed=14)
    shared = Closure(models["equivariant"][0], threads=2, chunk_size=128)
    expected = shared(F, u)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda _: shared(F, u), range(8)))
    for output in outputs:
        np.testing.assert_array_equal(output, expected)
    assert shared.counters["cells"] == 9 * 2000


def test_closure_function_accepts_any_batch_shape_and_dtype(cells):
    F, u = cells
    batch = F[:12].reshape(3, 4, 6, 4)
    out = closure(batch.astype(np.float32))
    assert out.shape == (3, 4, 6, 4) and out.dtype == np.float64
    np.testing.assert_allclose(out.reshape(12, 6, 4), closure(F[:12].astype(np.float32)), rtol=0, atol=0)
    # One four-velocity broadcast over the batch.
    single_u = u[0]
    np.testing.assert_array_equal(closure(F[:5], single_u), closure(F[:5], np.tile(single_u, (5, 1))))


def test_bad_cells_are_flagged_not_raised(models, cells):
    F, u = cells
    F = F[:6].copy()
    u = u[:6].copy()
    F[1, 2, 0] = np.nan              # NaN input
    F[2, 0, 0] = -F[2, 0, 0]         # negative density
    F[3] = 0.0                       # empty cell
    runtime = Closure(models["equivariant"][0])
    result = runtime.apply(F, u)
    assert result.status[1] & dodo.CellStatus.NONFINITE
    assert result.status[2] & dodo.CellStatus.NEGATIVE_DENSITY
    assert result.status[3] & dodo.CellStatus.ZERO_DENSITY
    assert np.all(np.isfinite(result.F_pred))
    # Rejected, input not realizable: the negative density is set to 0 and that species' flux
    # scaled onto the cone (here to 0); the other species come back unchanged (issue 5).
    expected = F[2].copy()
    expected[0] = 0.0
    np.testing.assert_array_equal(result.F_pred[2], expected)
    np.testing.assert_array_equal(result.F_pred[3], F[3])  # rejected, realizable: output = input
    np.testing.assert_array_equal(result.F_pred[1], 0.0)   # rejected, not finite: zeros
    assert runtime.counters["rejected"] == 3


def test_nonfinite_network_output_falls_back_to_box3d(tmp_path, cells, monkeypatch):
    F, u = cells
    path = tmp_path / "poisoned.onnx"
    write(path, "equivariant", nan_below=1.0 / 6.0, n_test_vectors=0)  # NaN where x_nu_e < 1/6
    monkeypatch.setenv("DODO_ALLOW_UNTESTED_MODEL", "1")  # no test vectors: the oracle has no NaN branch
    runtime = Closure(path, self_test=False)
    result = runtime.apply(F, u)
    poisoned = (result.status & dodo.CellStatus.NETWORK_NONFINITE) != 0
    assert 0 < poisoned.sum() < len(F)
    np.testing.assert_array_equal(result.F_pred[poisoned], dodo.box3d(F, u).F_box[poisoned])
    assert np.all(np.isfinite(result.F_pred))
    assert runtime.counters["network_nonfinite"] == poisoned.sum()


def test_closure_imports_neither_torch_nor_the_onnxruntime_python_package():
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from dodo._closure import Closure\n"
            "F = np.zeros((1, 6, 4)); F[0, :, 0] = 1.0\n"
            "Closure()(F)\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


TRAINING_FIXTURES = sorted((Path(__file__).resolve().parents[1] / "data" / "training").glob("tiny_*.onnx"))


@pytest.mark.parametrize("path", TRAINING_FIXTURES, ids=[p.stem for p in TRAINING_FIXTURES])
def test_packages_exported_by_training_reproduce_their_torch_test_vectors(path):
    # Test vectors written by the torch float64 closure at export time: torch == C++ runtime.
    runtime = Closure(path, self_test=True)
    assert runtime.self_test() < FP32_TOLERANCE
