"""Error paths of the closure runtime: every failure is an exception with a message, never a crash."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from closure_helpers import onnx, save_resigned, synthetic, write

from dodo._closure import Closure


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "model.onnx"
    write(path, "equivariant", n_test_vectors=2)
    return path


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Closure(tmp_path / "absent.onnx")


@pytest.mark.parametrize("content", [b"", b"this is not a protobuf" * 10, bytes(range(256)) * 4])
def test_corrupt_file_is_refused_with_model_format_error(tmp_path, content):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match="DODO_ERROR_MODEL_FORMAT"):
        Closure(path)


def test_truncated_model_is_refused(tmp_path, good_model):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good_model.read_bytes()[:500])
    with pytest.raises(RuntimeError, match="DODO_ERROR_MODEL_FORMAT"):
        Closure(path)


BOX3D = json.dumps({"scheme": "pairwise", "form": "delta", "lebedev_order": 17, "z_method": "exact",
                    "max_flux_factor": 0.98})


@pytest.mark.parametrize("overrides, message", [
    ({"dodo.format_version": "2"}, r'"dodo.format_version" is "2"; this runtime reads version "1"'),
    ({"dodo.features": "invariants27-v0"}, r'"dodo.features" is "invariants27-v0"'),
    ({"dodo.head": "clairvoyant"}, r'unknown head "clairvoyant"'),
    ({"dodo.output_size": "24"}, r'"dodo.output_size" is "24" but head "equivariant" has 78'),
    ({"dodo.box3d": None}, r'no "dodo.box3d"'),
    ({"dodo.box3d": "{not json"}, r'"dodo.box3d" is not valid JSON'),
    ({"dodo.box3d": BOX3D.replace('"pairwise"', '"single"')}, r'scheme is "single"'),
    ({"dodo.test_vectors": '{"F_init": [[[1, 2]]], "F_pred": []}'}, r'test_vectors'),
])
def test_wrong_metadata_is_refused_naming_the_key(tmp_path, overrides, message):
    path = tmp_path / "model.onnx"
    write(path, "equivariant", n_test_vectors=0, metadata_overrides=overrides)
    with pytest.raises(RuntimeError, match="DODO_ERROR_MODEL_METADATA") as error:
        Closure(path)
    assert error.match(message)


def test_head_that_does_not_match_the_graph_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    write(path, "direct", n_test_vectors=0, metadata_overrides={"dodo.head": "equivariant", "dodo.output_size": "78"})
    with pytest.raises(RuntimeError, match='"head_output" has 24 columns; head "equivariant" needs 78'):
        Closure(path)


@pytest.mark.parametrize("requested, message", [
    ({"lebedev_order": 41}, r"lebedev_order is 17 but lebedev_order 41 was requested"),  # 11: no such order (refused as such)
    ({"z_method": "jedynak"}, r'z_method is "exact" but z_method "jedynak" was requested'),
    ({"max_flux_factor": 0.95}, r"max_flux_factor is 0.98 but max_flux_factor 0.95 was requested"),  # shortest digits (C round 27)
])
def test_box3d_settings_other_than_the_models_are_refused(good_model, requested, message):
    with pytest.raises(RuntimeError, match=message):
        Closure(good_model, **requested)


def test_wrong_graph_input_name_is_refused(tmp_path, good_model):
    model = onnx.load(str(good_model))
    old = model.graph.input[0].name
    model.graph.input[0].name = "features"
    for node in model.graph.node:
        node.input[:] = ["features" if name == old else name for name in node.input]
    path = tmp_path / "renamed.onnx"
    save_resigned(model, path)
    with pytest.raises(RuntimeError, match='model input is named "features"'):
        Closure(path)


def test_self_test_failure_is_reported(tmp_path):
    path = tmp_path / "model.onnx"
    mlp = synthetic.SyntheticMLP.random("equivariant", hidden=(8,), seed=2)
    synthetic.write_model(path, mlp, n_test_vectors=2)
    model = onnx.load(str(path))
    for entry in model.metadata_props:
        if entry.key == "dodo.test_vectors":
            vectors = json.loads(entry.value)
            vectors["F_pred"][0][0][0] *= 1.01
            entry.value = json.dumps(vectors)
    save_resigned(model, path)  # a consistent package with a wrong expectation (an edit unsigned: test_runtime_reliability)
    with pytest.raises(RuntimeError, match="DODO_ERROR_SELF_TEST: self-test failed: test vector 0"):
        Closure(path)
    assert Closure(path, self_test=False).has_model  # loading without the check still works


@pytest.mark.parametrize("shape", [(5, 6, 3), (5, 4, 6), (24,), (5, 24)])
def test_wrong_input_shapes_are_value_errors(good_model, shape):
    with pytest.raises(ValueError, match="shape"):
        Closure(good_model)(np.ones(shape))


def test_velocity_that_does_not_match_the_batch_is_a_value_error(good_model):
    F, u = synthetic.test_cells(4)
    with pytest.raises(ValueError):
        Closure(good_model)(F, u[:3])


def test_bad_options_are_value_errors(good_model):
    with pytest.raises(ValueError, match="chunk_size"):
        Closure(good_model, chunk_size=0)
    with pytest.raises(ValueError, match="threads"):
        Closure(good_model, threads=-1)
    with pytest.raises(ValueError, match="device"):
        Closure(good_model, device="abacus")


def test_missing_onnxruntime_library_is_reported(good_model):
    # ONNX Runtime is loaded once per process, so this runs in a fresh interpreter.
    code = (
        "from dodo._closure import Closure\n"
        "try:\n"
        f"    Closure({str(good_model)!r}, onnxruntime_library='/nonexistent/libonnxruntime.so')\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE" in result.stdout
    assert "/nonexistent/libonnxruntime.so" in result.stdout
