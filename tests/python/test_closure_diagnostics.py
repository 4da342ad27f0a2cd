"""Per-cell growth rate and uncertainty from a model's optional outputs (docs/model_package.md,
"dodo.outputs"): growth = Box3D proxy * exp(log_growth_ratio), zeros on stable and rejected
cells, the proxy and zero uncertainty without the outputs, and packages whose declaration does
not match their graph refused by name."""
from __future__ import annotations

import json

import numpy as np
import pytest

from closure_helpers import diagnostic_cells, ntot, onnx, save_resigned, synthetic, write, write_diagnostics_model

import dodo
from dodo import BOX3D_ONLY, CellStatus, Closure

REJECTED = np.uint32(CellStatus.FLUX_FACTOR | CellStatus.NEGATIVE_DENSITY | CellStatus.NONFINITE
                     | CellStatus.ZERO_DENSITY | CellStatus.BAD_VELOCITY)
NOT_CORRECTED = REJECTED | np.uint32(CellStatus.NO_CROSSING | CellStatus.NETWORK_NONFINITE)
LOG_THREE = float(np.float32(np.log(3.0)))  # the constant model's output, as the float32 graph holds it


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnostics")
    return {
        "learned": (root / "learned.onnx", write_diagnostics_model(root / "learned.onnx", n_test_vectors=4)),
        "plain": (root / "plain.onnx", write(root / "plain.onnx", n_test_vectors=4)),
        "constant": (root / "constant.onnx", write_diagnostics_model(root / "constant.onnx", scale=0.0,
                                                                     bias=LOG_THREE, n_test_vectors=4)),
        "overflow": (root / "overflow.onnx", write_diagnostics_model(root / "overflow.onnx", names=("log_growth_ratio",),
                                                                     scale=0.0, bias=1000.0, n_test_vectors=4)),
    }


def test_growth_rate_is_the_proxy_times_exp_of_the_model_output(models):
    F, u = diagnostic_cells()
    path, mlp = models["learned"]
    closure = Closure(path, threads=1)
    assert closure.optional_outputs == ["uncertainty", "log_growth_ratio"]
    result = closure.apply(F, u)
    corrected = (result.status & NOT_CORRECTED) == 0
    assert corrected.sum() >= 80
    assert result.status[90] == CellStatus.NO_CROSSING
    assert np.all(result.status[91:94] & REJECTED)

    # The network's outputs blended over each cell's flavour images, as the runtime does.
    expected = synthetic.flavour_image_blend(
        F, u, lambda F_image: mlp.diagnostic_outputs(dodo.invariants(F_image, u).astype(np.float32)))
    ratio = np.exp(expected["log_growth_ratio"])
    np.testing.assert_allclose(result.growth_rate[corrected], result.growth_rate_proxy[corrected] * ratio[corrected],
                               rtol=2e-6)  # the network in float32, NumPy against ONNX Runtime
    np.testing.assert_allclose(result.uncertainty[corrected], expected["uncertainty"][corrected], rtol=2e-6,
                               atol=1e-7)  # float32 rounding of terms ~0.2
    assert np.ptp(ratio[corrected]) > 0.05 and result.uncertainty[corrected].min() > 0.0  # a real per-cell mapping

    # Units: the proxy is Box3D's, and the same factor turns N_tot units into s^-1.
    box = dodo.box3d(F, u)
    np.testing.assert_allclose(result.growth_rate_proxy, box.growth_rate, rtol=1e-13, atol=0)
    rate_per_ntot = np.where(corrected, ntot(np.nan_to_num(F), u), 0.0) * dodo.conventions.GROWTH_RATE_PER_NTOT
    np.testing.assert_allclose(result.growth_rate[corrected], (result.growth_over_ntot * rate_per_ntot)[corrected],
                               rtol=1e-13)

    # Stable and rejected cells: no growth, no uncertainty.
    for field in (result.growth_rate, result.growth_over_ntot, result.growth_rate_proxy, result.uncertainty):
        assert np.all(field[90:94] == 0.0)


def test_optional_outputs_leave_the_closure_itself_unchanged(models):
    F, u = diagnostic_cells()
    with_outputs = Closure(models["learned"][0], threads=1).apply(F, u)
    without = Closure(models["plain"][0], threads=1).apply(F, u)  # same seed: the same head weights
    np.testing.assert_array_equal(with_outputs.F_pred, without.F_pred)
    np.testing.assert_array_equal(with_outputs.status, without.status)
    np.testing.assert_array_equal(without.growth_rate, without.growth_rate_proxy)
    assert np.all(without.uncertainty == 0.0)
    assert Closure(models["plain"][0]).optional_outputs == []


def test_a_constant_log_growth_ratio_scales_the_proxy_exactly(models):
    F, u = diagnostic_cells()
    result = Closure(models["constant"][0], threads=1).apply(F, u)
    corrected = (result.status & NOT_CORRECTED) == 0
    np.testing.assert_allclose(result.growth_rate[corrected] / result.growth_rate_proxy[corrected], np.exp(LOG_THREE),
                               rtol=1e-15, atol=0)  # a few roundings of double products
    assert np.all(result.uncertainty[corrected] == np.float32(abs(LOG_THREE)))
    assert np.all(result.growth_rate[~corrected] == 0.0) and np.all(result.uncertainty[~corrected] == 0.0)


def test_box3d_only_returns_the_proxy_and_no_uncertainty():
    F, u = diagnostic_cells()
    result = Closure(BOX3D_ONLY).apply(F, u)
    box = dodo.box3d(F, u)
    np.testing.assert_array_equal(result.growth_rate, result.growth_rate_proxy)
    np.testing.assert_array_equal(result.growth_over_ntot, box.growth_over_ntot)
    np.testing.assert_allclose(result.growth_rate, box.growth_rate, rtol=1e-13, atol=0)
    assert np.all(result.uncertainty == 0.0)
    assert Closure(BOX3D_ONLY).optional_outputs == []


def test_an_overflowing_growth_ratio_voids_the_network_output(models):
    F, u = diagnostic_cells()
    # Without its self-test: every test vector's network output is non-finite, which the self-test
    # refuses (a package that never corrects a cell; probe round seventeen).
    result = Closure(models["overflow"][0], threads=1, self_test=False).apply(F, u)
    box = dodo.box3d(F, u)
    crossing = (box.status & np.uint32(REJECTED | CellStatus.NO_CROSSING)) == 0
    assert np.all(result.status[crossing] & CellStatus.NETWORK_NONFINITE)
    np.testing.assert_array_equal(result.F_pred[crossing], box.F_box[crossing])  # Box3D's result, as documented
    np.testing.assert_array_equal(result.growth_rate, result.growth_rate_proxy)
    assert np.all(np.isfinite(result.growth_rate)) and np.all(result.uncertainty == 0.0)


def test_results_do_not_depend_on_threads_or_chunks(models):
    F, u = diagnostic_cells()
    one = Closure(models["learned"][0], threads=1).apply(F, u)
    many = Closure(models["learned"][0], threads=2, chunk_size=16).apply(F, u)
    for field in ("growth_rate", "uncertainty", "growth_rate_proxy", "F_pred"):
        np.testing.assert_array_equal(getattr(one, field), getattr(many, field))


# ---------------------------------------------------------------- packages that break the contract

def declared(names):
    return {"dodo.outputs": json.dumps(names) if isinstance(names, list) else names}


def with_uncertainty_shape(source, target, dims):
    """The package at `source` with its uncertainty output reshaped to `dims` (graph and value info)."""
    model = onnx.load(str(source))
    shape = next(t for t in model.graph.initializer if t.name == "uncertainty_shape")
    shape.CopyFrom(onnx.numpy_helper.from_array(np.asarray([-1] + [1] * (len(dims) - 1), dtype=np.int64),
                                                "uncertainty_shape"))
    output = next(o for o in model.graph.output if o.name == "uncertainty")
    output.CopyFrom(onnx.helper.make_tensor_value_info("uncertainty", onnx.TensorProto.FLOAT, dims))
    save_resigned(model, target)
    return target


@pytest.mark.parametrize("case, status, words", [
    ("declares_missing", "DODO_ERROR_MODEL_FORMAT", ['declares output "uncertainty"', "does not have"]),
    ("undeclared_graph_output", "DODO_ERROR_MODEL_FORMAT", ['graph has output "log_growth_ratio"', "does not declare"]),
    ("wrong_shape", "DODO_ERROR_MODEL_FORMAT", ['"uncertainty"', "shape [N]", "rank 2"]),
    ("unknown_name", "DODO_ERROR_MODEL_METADATA", ['unknown output "variance"']),
    ("not_a_list", "DODO_ERROR_MODEL_METADATA", ["JSON list of output names"]),
    ("twice", "DODO_ERROR_MODEL_METADATA", ['"uncertainty" twice']),
    ("no_head_output", "DODO_ERROR_MODEL_METADATA", ['must include "head_output"']),
    # No key declares head_output alone: a graph with more outputs (a package re-signed without the
    # key) is refused, not loaded with its growth rate and uncertainty silently dropped.
    ("no_key", "DODO_ERROR_MODEL_FORMAT", ['graph has output "', "head_output alone"]),
])
def test_a_package_whose_declared_outputs_do_not_match_is_refused(tmp_path, case, status, words):
    path = tmp_path / f"{case}.onnx"
    both = ["head_output", "uncertainty", "log_growth_ratio"]
    if case == "declares_missing":
        write(path, n_test_vectors=0, metadata_overrides=declared(["head_output", "uncertainty"]))
    elif case == "undeclared_graph_output":
        write_diagnostics_model(path, n_test_vectors=0, metadata_overrides=declared(["head_output", "uncertainty"]))
    elif case == "no_key":
        write_diagnostics_model(path, n_test_vectors=0, metadata_overrides={"dodo.outputs": None})
    elif case == "wrong_shape":
        write_diagnostics_model(tmp_path / "source.onnx", n_test_vectors=0)
        with_uncertainty_shape(tmp_path / "source.onnx", path, ["N", 1])
    else:
        names = {"unknown_name": both + ["variance"], "not_a_list": '"head_output"',
                 "twice": both + ["uncertainty"], "no_head_output": ["uncertainty", "log_growth_ratio"]}[case]
        write_diagnostics_model(path, n_test_vectors=0, metadata_overrides=declared(names))
    with pytest.raises(RuntimeError) as error:
        Closure(path)
    text = str(error.value)
    assert text.startswith(status) and str(path) in text and "dodo.outputs" in text
    for word in words:
        assert word in text


def test_an_optional_output_of_fixed_length_is_refused(tmp_path):
    """[N] with a dynamic N is the contract; a fixed length is refused, not read past its end."""
    write_diagnostics_model(tmp_path / "source.onnx", n_test_vectors=0)
    path = with_uncertainty_shape(tmp_path / "source.onnx", tmp_path / "fixed.onnx", [4])
    with pytest.raises(RuntimeError, match=r"DODO_ERROR_MODEL_FORMAT.*shape \[N\] with a dynamic N"):
        Closure(path)


@pytest.mark.parametrize("model", ["learned", "constant", "overflow", "plain"])
def test_runtime_matches_the_numpy_reference_closure(models, model):
    """The NumPy reference (dodo.training.synthetic_model.reference_closure) computes the growth rate and
    uncertainty on its own: same statuses, same numbers to float32 rounding of the network."""
    F, u = diagnostic_cells()
    path, mlp = models[model]
    result = Closure(path, threads=1, self_test=model != "overflow").apply(F, u)  # see the overflow test above
    reference = synthetic.reference_closure(F, u, mlp, mlp.head)
    np.testing.assert_array_equal(result.status, reference["status"])
    np.testing.assert_allclose(result.growth_over_ntot, reference["growth_over_ntot"], rtol=2e-6, atol=0)
    np.testing.assert_allclose(result.uncertainty, reference["uncertainty"], rtol=2e-6, atol=1e-7)


def test_self_test_checks_the_growth_rate_and_uncertainty(models, tmp_path):
    """Packages with the optional outputs carry their expected results in dodo.test_vectors; a
    package whose outputs disagree with them (a broken export) fails its self-test by name."""
    vectors = json.loads(Closure(models["learned"][0]).metadata["dodo.test_vectors"])
    assert len(vectors["growth_over_ntot"]) == len(vectors["uncertainty"]) == len(vectors["F_init"]) == 4
    assert Closure(models["learned"][0]).self_test() < 1e-5
    for key, words in (("growth_over_ntot", "growth rate"), ("uncertainty", "uncertainty")):
        model = onnx.load(str(models["learned"][0]))
        entry = next(e for e in model.metadata_props if e.key == "dodo.test_vectors")
        edited = json.loads(entry.value)
        edited[key][1] += 1e-3
        entry.value = json.dumps(edited)
        path = tmp_path / f"wrong_{key}.onnx"
        save_resigned(model, path)
        with pytest.raises(RuntimeError, match=rf"DODO_ERROR_SELF_TEST.*test vector 1's {words} differs"):
            Closure(path)
        edited[key] = edited[key][:3]
        entry.value = json.dumps(edited)
        save_resigned(model, path)
        with pytest.raises(RuntimeError, match=rf'DODO_ERROR_MODEL_METADATA.*"{key}" differs in length'):
            Closure(path)


@pytest.mark.parametrize("feature_set", ["invariants27+box7-v1", "invariants27+box7+eln18-v1"])
def test_an_exported_ensemble_runs_in_the_runtime_with_its_box_features(tmp_path, feature_set):
    """`dodo export` of a density-residual ensemble (features with Box3D's answer, and with its
    crossing shape too; three outputs) loads in dodo.Closure, passes its self-test, and gives ONNX
    Runtime's own outputs on the Python-side features: the C++ runtime builds the same 34 / 52
    inputs."""
    pytest.importorskip("torch", reason="the ensemble needs torch")
    import onnxruntime

    from conftest import random_states
    from dodo.training.ensemble import fit_ensemble
    from dodo.training.ensemble_train import EnsembleConfig, export_ensemble, save_checkpoint
    from dodo.training.features import lab_features

    rng = np.random.default_rng(5)
    F_train = random_states(rng, 64, max_flux_factor=0.6, mu_equals_tau=True)
    X = lab_features(feature_set, F_train)
    ensemble = fit_ensemble(X, 0.01 * np.tanh(X[:, 0] - X[:, 3]), 0.2 * np.tanh(X[:, 27] * 30), members=2,
                            sigma0=0.01, steps=30, width=16)
    ensemble.features = feature_set
    # The diagnostic cells lie far from these 64 training states, where the distance gate would set
    # the growth ratio to 0 too (since 2026-12-07): open it, so that the outputs vary for the parity.
    ensemble.d2_max.fill_(1e8)
    table = {"box3d": dodo.box3d_settings(), "sha256": "0" * 64, "kind": "qke"}
    save_checkpoint(ensemble, EnsembleConfig(width=16), table, np.arange(10), {}, str(tmp_path / "ensemble.pt"))
    path = tmp_path / "ensemble.onnx"
    export_ensemble(str(tmp_path / "ensemble.pt"), str(path), log=lambda *_: None)

    closure = Closure(path, threads=1)  # self_test on: F_pred of the test vectors within 1e-5 N_tot
    assert closure.optional_outputs == ["uncertainty", "log_growth_ratio"]
    F, u = diagnostic_cells()
    result = closure.apply(F, u)
    corrected = (result.status & NOT_CORRECTED) == 0
    assert corrected.sum() >= 80
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def outputs(F_image):  # each flavour image's features from its own relabelled cells (Python side)
        features = lab_features(feature_set, F_image, u[corrected]).astype(np.float32)
        _, spread, log_growth = session.run(None, {"invariants": features})
        return {"sigma": spread, "log_ratio": log_growth}

    blended = synthetic.flavour_image_blend(np.nan_to_num(F[corrected]), u[corrected], outputs)
    sigma, log_ratio = blended["sigma"], blended["log_ratio"]
    np.testing.assert_allclose(result.uncertainty[corrected], sigma, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.growth_rate[corrected],
                               result.growth_rate_proxy[corrected] * np.exp(log_ratio.astype(np.float64)), rtol=1e-5)
    assert np.ptp(log_ratio) > 1e-3 and sigma.max() > 0  # the outputs vary from cell to cell
    assert np.all(result.uncertainty[~corrected] == 0.0)


def test_a_graph_narrower_than_its_feature_set_is_refused(tmp_path):
    path = tmp_path / "narrow.onnx"
    write(path, n_test_vectors=0, metadata_overrides={"dodo.features": "invariants27+box7-v1"})
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_FORMAT.*shape \[N, 34\].*"invariants27\+box7-v1"'):
        Closure(path)
    write(path, n_test_vectors=0, metadata_overrides={"dodo.features": "invariants99-v7"})
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_METADATA.*"invariants99-v7".*invariants27\+box7-v1'):
        Closure(path)


def test_an_optional_output_computing_another_length_than_declared_is_refused(models, tmp_path):
    """The graph declares uncertainty [N] but computes [2N] (a [N, 2] tensor flattened): the load-time
    probe evaluation finds it, before any caller's cells could be written past the buffer."""
    model = onnx.load(str(models["learned"][0]))
    weights = next(t for t in model.graph.initializer if t.name == "uncertainty_w")
    doubled = np.concatenate([onnx.numpy_helper.to_array(weights)] * 2, axis=1)
    weights.CopyFrom(onnx.numpy_helper.from_array(doubled, "uncertainty_w"))
    path = tmp_path / "lying.onnx"
    save_resigned(model, path)
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_FORMAT.*"uncertainty" float32 \[N\] but computes \[2\] for N = 1'):
        Closure(path)


@pytest.mark.parametrize("features, status, words", [
    # A set this runtime does not compute is a metadata fault, named by its key, whatever the
    # graph's width (on a 52-wide graph it was reported as "must have shape [N, 27]").
    ("invariants27+box7+eln18-v2", "DODO_ERROR_MODEL_METADATA", ['"dodo.features" is "invariants27+box7+eln18-v2"']),
    # A known set of another width: the key, its value and the graph's shape.
    ("invariants27-v1", "DODO_ERROR_MODEL_FORMAT", ["[N, 27]", '"dodo.features" is "invariants27-v1"', "[N, 52]"]),
])
def test_a_feature_set_that_does_not_fit_the_graph_is_named(features, status, words):
    model = onnx.load(str(dodo.models.default_model_path()))  # a 52-wide graph
    for entry in model.metadata_props:
        if entry.key == "dodo.features":
            entry.value = features
    with pytest.raises(RuntimeError) as error:
        Closure(bytes(dodo._core.with_content_digest(model.SerializeToString())), threads=1)
    assert str(error.value).startswith(status)
    for word in words:
        assert word in str(error.value)
