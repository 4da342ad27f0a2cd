"""End to end through the CLI on a small synthetic file: synth -> preprocess -> train -> evaluate.

The synthetic final state is Box3D plus a known correction (dodo.training.synth), so a model
that learns must beat Box3D; its outputs must conserve and stay realizable.
"""
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from dodo.cli import main as dodo_main
from training_helpers import synth_and_preprocess, write_training_config


def write_config(path, data_path, out, **sections):
    """The pipeline tests' model: wider and longer than the helpers' default."""
    defaults = {"model": {"hidden_dim": 32, "n_blocks": 2}, "training": {"epochs": 6},
                "output": {"parity_samples": 50}}
    for section, values in sections.items():
        defaults[section] = {**defaults.get(section, {}), **values}
    return write_training_config(path, data_path, out, **defaults)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return root, synth_and_preprocess(root, 1500, seed=11)


@pytest.fixture(scope="module")
def trained(preprocessed):
    root, data = preprocessed
    config = write_config(root / "model.yaml", data, root / "run")
    assert dodo_main(["train", "--config", str(config)]) == 0
    return root / "run"


def test_model_beats_box3d_and_obeys_the_laws(trained, capsys):
    capsys.readouterr()
    assert dodo_main(["evaluate", str(trained / "checkpoints" / "best.pt"), "--json", str(trained / "eval.json")]) == 0
    assert "|dn| model" in capsys.readouterr().out
    table = json.loads((trained / "eval.json").read_text())
    box, model = table["box3d"], table["model"]
    assert model["mean_abs_dn_over_ntot_all"] < 0.2 * box["mean_abs_dn_over_ntot_all"]
    assert model["mean_abs_dF_over_ntot_all"] < 0.2 * box["mean_abs_dF_over_ntot_all"]
    assert all(m < b for m, b in zip(model["mean_abs_dn_over_ntot"], box["mean_abs_dn_over_ntot"]))
    assert model["max_conservation_violation_over_ntot"] < 1e-6
    assert model["unrealizable_fraction"] == 0.0


def test_run_outputs_are_complete(trained):
    assert (trained / "checkpoints" / "best.pt").is_file() and (trained / "checkpoints" / "final.pt").is_file()
    assert "epoch 6/6" in (trained / "results" / "train.log").read_text()
    [metrics_path] = (trained / "results").glob("metrics_*.json")
    metrics = json.loads(metrics_path.read_text())
    assert len(metrics["history"]["train"]) == 6 and metrics["config"]["model"]["hidden_dim"] == 32
    assert len(metrics["normalisation"]["mean"]) == 27 and metrics["data_kind"] == "synthetic"
    assert not list(trained.rglob("*.tmp"))


def test_resume_after_interruption_equals_an_uninterrupted_run(preprocessed):
    root, data = preprocessed
    small = {"training": {"epochs": 3, "lr": 3e-3, "threads": 1, "log_interval": 1000, "seed": 5},
             "model": {"hidden_dim": 16, "n_blocks": 1, "dropout": 0.1}, "data": {"max_samples": 600}}
    states = []
    for name in ("straight", "again"):
        config = write_config(root / f"{name}.yaml", data, root / name, **small)
        assert dodo_main(["train", "--config", str(config)]) == 0
        states.append(torch.load(root / name / "checkpoints" / "final.pt", weights_only=False))
    config = write_config(root / "cut.yaml", data, root / "cut", **small)
    assert dodo_main(["train", "--config", str(config), "--set", "training.stop_after_epoch=1"]) == 0
    assert not (root / "cut" / "checkpoints" / "final.pt").exists()
    assert dodo_main(["train", "--config", str(config), "--resume", str(root / "cut" / "checkpoints" / "last.pt")]) == 0
    states.append(torch.load(root / "cut" / "checkpoints" / "final.pt", weights_only=False))
    reference = states[0]
    for other in states[1:]:
        for key, value in reference["model_state"].items():
            assert torch.equal(value, other["model_state"][key]), key
        assert other["history"] == reference["history"]


def test_direct_head_and_global_target_scale_train_and_obey_the_laws(preprocessed):
    root, data = preprocessed
    config = write_config(root / "direct.yaml", data, root / "direct", model={"head": "direct"},
                          data={"target_scale": "p99"}, training={"epochs": 2})
    assert dodo_main(["train", "--config", str(config)]) == 0
    [metrics_path] = (root / "direct" / "results").glob("metrics_*.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["target_scale"] > 0
    assert metrics["metric_table"]["model"]["max_conservation_violation_over_ntot"] < 1e-6
    assert metrics["metric_table"]["model"]["unrealizable_fraction"] == 0.0


def test_training_refuses_a_file_made_with_other_box3d_settings(preprocessed, capsys):
    root, data = preprocessed
    config = write_config(root / "other.yaml", data, root / "other", data={"box3d": {"z_method": "jedynak"}})
    assert dodo_main(["train", "--config", str(config)]) == 2
    assert "other Box3D settings" in capsys.readouterr().err


def test_bad_config_and_bad_files_give_clear_errors(preprocessed, tmp_path, capsys):
    root, data = preprocessed
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {width: 3}\n")
    assert dodo_main(["train", "--config", str(bad)]) == 2
    assert "unknown key(s) ['width']" in capsys.readouterr().err
    missing = write_config(tmp_path / "m.yaml", tmp_path / "none.h5", tmp_path / "o")
    assert dodo_main(["train", "--config", str(missing)]) == 2
    assert "preprocessed file not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert dodo_main(["evaluate", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt: not a checkpoint (it is a text file" in capsys.readouterr().err  # round eighteen


def test_inspect_plots_and_study(trained, preprocessed, tmp_path, capsys):
    root, data = preprocessed
    capsys.readouterr()
    assert dodo_main(["inspect", str(trained / "checkpoints" / "best.pt"), "--stop", "100"]) == 0
    out = capsys.readouterr().out
    assert "residual_l1" in out and "flux factor" in out
    # The slice as taken: a --stop beyond the split names the split's end, not the request.
    assert dodo_main(["inspect", str(trained / "checkpoints" / "best.pt"), "--stop", "100000"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    cells = int(first.split()[0])
    assert cells < 100000 and f"slice [0:{cells}]" in first, first
    [metrics_path] = (trained / "results").glob("metrics_*.json")
    assert dodo_main(["plot", "curve", str(metrics_path), "-o", str(tmp_path / "curve.png")]) == 0
    assert dodo_main(["plot", "metrics", str(metrics_path), str(metrics_path), "-o", str(tmp_path / "runs.png")]) == 0
    for name in ("curve.png", "curve_parity.png", "runs.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    base = write_config(tmp_path / "base.yaml", data, tmp_path / "unused", training={"epochs": 1},
                        model={"hidden_dim": 8, "n_blocks": 1}, data={"max_samples": 300})
    (tmp_path / "grid.yaml").write_text(
        f"base_config: {base.name}\ntag: tiny\noutput_root: {tmp_path / 'studies'}\n"
        "grid: {training.lr: [1.0e-3, 3.0e-3], model.hidden_dim: [8]}\n")
    assert dodo_main(["study", str(tmp_path / "grid.yaml")]) == 0
    summary = json.loads((tmp_path / "studies" / "tiny" / "summary.json").read_text())
    assert [row["run"] for row in summary] == ["run_000", "run_001"]
    assert (tmp_path / "studies" / "tiny" / "run_001" / "checkpoints" / "final.pt").is_file()


def test_evaluate_and_inspect_spell_json_output_the_same_way(trained, tmp_path, capsys):
    """Issue 11, item 21: `--json PATH` writes the JSON (and prints the table) for both commands;
    `--json` alone prints the JSON instead of the table, for both."""
    checkpoint = str(trained / "checkpoints" / "best.pt")
    for command, extra, table_word in (("evaluate", [], "box3d"), ("inspect", ["--stop", "100"], "residual_l1")):
        capsys.readouterr()
        path = tmp_path / f"{command}.json"
        assert dodo_main([command, checkpoint, *extra, "--json", str(path)]) == 0
        written = json.loads(path.read_text())
        assert table_word in capsys.readouterr().out
        assert dodo_main([command, checkpoint, *extra, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == written


def test_inspect_refuses_to_write_over_the_training_file_it_reads_implicitly(trained, preprocessed, capsys):
    """Without --data, inspect reads the checkpoint's training file: an input like a named one
    (outside probe, round four)."""
    import hashlib

    _, data = preprocessed
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    capsys.readouterr()
    code = dodo_main(["inspect", str(trained / "checkpoints" / "best.pt"), "--stop", "100", "--json", str(data)])
    err = capsys.readouterr().err
    # Refused before the work since report outputs never replace data (HDF5: "does not write a
    # report over it"); emit's implicit-input check ("same file as the input") stays behind it.
    assert code == 2 and ("same file as the input" in err or "does not write a report over it" in err), err
    assert str(data) in err, err
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before
