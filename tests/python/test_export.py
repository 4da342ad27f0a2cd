"""`dodo export`: the ONNX model package of docs/model_package.md, checked against torch and ORT."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

import dodo
from dodo.cli import main as dodo_main
from dodo.training.export import closure_float64, read_package_metadata
from dodo.training.train import closure_from_checkpoint, load_checkpoint
from training_helpers import synth_and_preprocess, train

KEYS = {"dodo.format_version", "dodo.head", "dodo.output_size", "dodo.features", "dodo.box3d",
        "dodo.training_data_sha256", "dodo.training_data_kind", "dodo.metrics", "dodo.export_time",
        "dodo.version", "dodo.test_vectors", "dodo.content_sha256", "dodo.metadata_sha256", "dodo.training_states"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = synth_and_preprocess(root, 400, seed=4)
    result = {head: train(root, data, head, model={"head": head, "batch_norm": True}, training={"epochs": 2}) / "best.pt"
              for head in ("equivariant", "direct")}
    return root, result


@pytest.mark.parametrize("head, size", [("equivariant", 78), ("direct", 24)])
def test_package_graph_and_metadata_follow_the_contract(checkpoints, head, size):
    root, paths = checkpoints
    output = root / f"{head}.onnx"
    assert dodo_main(["export", str(paths[head]), "-o", str(output)]) == 0
    model = onnx.load(str(output))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert 8 <= model.ir_version <= 9
    [graph_input] = model.graph.input
    [graph_output] = model.graph.output
    assert graph_input.name == "invariants" and graph_output.name == "head_output"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 27
    metadata = read_package_metadata(output)
    assert set(metadata) == KEYS
    assert metadata["dodo.format_version"] == "1" and metadata["dodo.head"] == head
    assert metadata["dodo.output_size"] == str(size) and metadata["dodo.features"] == "invariants27-v1"
    assert json.loads(metadata["dodo.box3d"]) == dodo.box3d_settings()
    assert metadata["dodo.training_data_kind"] == "synthetic" and len(metadata["dodo.training_data_sha256"]) == 64
    assert "model" in json.loads(metadata["dodo.metrics"])
    assert metadata["dodo.export_time"].endswith("Z")


@pytest.mark.parametrize("head", ["equivariant", "direct"])
def test_onnx_graph_takes_raw_invariants_with_any_batch_size(checkpoints, head):
    root, paths = checkpoints
    output = root / f"{head}_b.onnx"
    assert dodo_main(["export", str(paths[head]), "-o", str(output), "--no-check"]) == 0
    network = closure_from_checkpoint(load_checkpoint(paths[head])).network
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    from dodo.training.synth import random_initial_states

    for n in (1, 7, 300):
        invariants = dodo.invariants(random_initial_states(rng, n)).astype(np.float32)
        got = session.run(None, {"invariants": invariants})[0]
        with torch.no_grad():
            expected = network(torch.from_numpy(invariants)).numpy()
        assert got.shape == (n, network.output_size)
        assert np.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_test_vectors_are_the_full_closure_and_obey_the_laws(checkpoints):
    root, paths = checkpoints
    output = root / "tv.onnx"
    assert dodo_main(["export", str(paths["equivariant"]), "-o", str(output)]) == 0
    vectors = json.loads(read_package_metadata(output)["dodo.test_vectors"])
    F_init, u, F_pred = (np.array(vectors[k]) for k in ("F_init", "u", "F_pred"))
    assert F_init.shape == F_pred.shape == (6, 6, 4) and u.shape == (6, 4) and vectors["atol_over_ntot"] == 1e-5
    assert np.any(u[:, 0] > 1.0)  # some cells are boosted
    network = closure_from_checkpoint(load_checkpoint(paths["equivariant"])).network
    again = closure_float64(network, F_init, u, dodo.box3d_settings())
    ntot = dodo.comoving_density(F_init, u)
    assert np.max(np.abs(again["F_pred"] - F_pred)) < 1e-12 * ntot.max()
    from dodo.training.conservation import conservation_violation
    from dodo.training.frames import boost_to_rest

    change_rest = boost_to_rest(F_pred - F_init, u[:, None, :]) / ntot[:, None, None]
    assert conservation_violation(change_rest).max() < 1e-12
    F_rest = boost_to_rest(F_pred, u[:, None, :])
    assert np.all(F_rest[..., 0] >= np.linalg.norm(F_rest[..., 1:], axis=-1))


def test_export_fails_clearly_on_a_bad_checkpoint(tmp_path, capsys):
    assert dodo_main(["export", str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    torch.save({"weights": 1}, tmp_path / "other.pt")
    assert dodo_main(["export", str(tmp_path / "other.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "not a Dodo checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_boosted_input_gives_boosted_output(checkpoints):
    """The closure works in the fluid rest frame, so boosting a rest-frame cell boosts its output."""
    from dodo.training.frames import boost_from_rest, random_velocity
    from dodo.training.synth import random_initial_states

    root, paths = checkpoints
    network = closure_from_checkpoint(load_checkpoint(paths["equivariant"])).network
    rng = np.random.default_rng(21)
    F_rest = random_initial_states(rng, 40)
    u = random_velocity(rng, 40, max_speed=0.8)
    at_rest = closure_float64(network, F_rest, np.tile([1.0, 0, 0, 0], (40, 1)), dodo.box3d_settings())
    moving = closure_float64(network, boost_from_rest(F_rest, u[:, None, :]), u, dodo.box3d_settings())
    ntot = F_rest[..., 0].sum(axis=1)[:, None, None]
    assert np.max(np.abs(moving["F_pred"] - boost_from_rest(at_rest["F_pred"], u[:, None, :])) / ntot) < 1e-10
    assert np.any(np.abs(at_rest["F_pred"] - at_rest["F_box"]) > 1e-6 * ntot)  # the correction is not trivial


@pytest.mark.parametrize("name", ["tiny_equivariant.onnx", "tiny_direct.onnx"])
def test_shipped_fixture_packages_reproduce_their_test_vectors(name):
    """The fixtures the runtime tests use: ORT head + float64 closure == embedded test vectors."""
    from pathlib import Path

    from dodo.training.export import _OnnxHead

    path = Path(__file__).resolve().parents[1] / "data" / "training" / name
    metadata = read_package_metadata(path)
    vectors = json.loads(metadata["dodo.test_vectors"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    F_init, u = np.array(vectors["F_init"]), np.array(vectors["u"])
    result = closure_float64(_OnnxHead(session, metadata["dodo.head"]), F_init, u, json.loads(metadata["dodo.box3d"]))
    error = np.max(np.abs(result["F_pred"] - np.array(vectors["F_pred"])), axis=(1, 2)) / result["ntot"]
    assert error.max() <= vectors["atol_over_ntot"]


def test_package_metadata_is_read_without_following_external_data(tmp_path):
    """A package whose tensor names an external file (here a FIFO no one writes: onnx.load waited on
    it for ever) gives its metadata without that file being opened."""
    import os
    import threading

    from onnx import TensorProto, helper

    os.mkfifo(tmp_path / "weights.bin")
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[tensor])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"dodo.format_version": "1"})
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    result = {}
    reader = threading.Thread(target=lambda: result.update(read_package_metadata(path)), daemon=True)
    reader.start()
    reader.join(60)
    if reader.is_alive():  # unblock the reader stuck in open(): a writer end opened and closed
        os.close(os.open(tmp_path / "weights.bin", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_package_metadata opened the package's external data (a FIFO: it waited)")
    assert result == {"dodo.format_version": "1"}
