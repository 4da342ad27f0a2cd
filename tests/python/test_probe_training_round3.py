"""The training command line, round three (outside probe): one's own Emu-layout database through `dodo
preprocess`, `train`, `evaluate`, `learning-curve`, `synth` and `simulate`. Each test fails on the code
before its fix (section "The training command line, round three" of docs/reliability_python.md)."""
from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import REPO, run
from test_probe_round61 import _preprocessed

pytest.importorskip("torch")
pytest.importorskip("yaml")

EMU_32 = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"
ENSEMBLE_DEFAULT = REPO / "training" / "configs" / "ensemble_default.yaml"
MODEL = REPO / "training" / "configs" / "model.yaml"
#: docs/training.md's own-database recipe with a trial of seconds, growth.data given by each test.
OWN_DATABASE = ["--set", "data.holdout=[]", "--set", "noise.weight=0", "--set", "noise.oof=",
                "--set", "distill.sampled_states=0", "--set", "ensemble.members=2", "--set", "ensemble.epochs=2",
                "--set", "growth.members=1", "--set", "growth.epochs=2", "--set", "distill.epochs=2"]


def _emu_rows(path: Path, rows) -> Path:
    """The runs ``rows`` of emu_1d_validation.h5, every per-run dataset cut alike."""
    with h5py.File(EMU_32, "r") as source, h5py.File(path, "w") as out:
        for key in source:
            item = source[key]
            if isinstance(item, h5py.Dataset) and item.shape and item.shape[0] == 32:
                out[key] = item[rows]
            else:
                source.copy(key, out)
        for name, value in source.attrs.items():
            out.attrs[name] = value
    return path


def _train(tmp_path: Path, table: Path, name: str, *extra) -> list[str]:
    return ["train", "--config", str(MODEL), "--set", f"data.path={table}", "--set", "model.hidden_dim=8",
            "--set", "model.n_blocks=1", "--set", "training.threads=1", "--set", "training.device=cpu",
            "--set", f"output.results_dir={tmp_path / name / 'results'}",
            "--set", f"output.checkpoint_dir={tmp_path / name / 'checkpoints'}", *extra]


def _label_file(path: Path) -> Path:
    """A growth-label file (as `dodo simulate --linear-only` writes) of 32 states near the Emu file's."""
    from dodo.qke.growth_labels import KIND

    with h5py.File(EMU_32, "r") as source, h5py.File(path, "w") as out:
        out.attrs["kind"] = KIND
        out["F4_initial(1|ccm)"] = source["F4_initial(1|ccm)"][...] * 1.01
        out["linear_growthRate_box(1|s)"] = source["linear_growthRate_box(1|s)"][...]
    return path


def test_learning_curve_calibrates_each_fold_without_its_test_states_and_gives_every_fold_size(tmp_path, capsys):
    """Item 1: growth.data's calibration (median measured / linear rate) was taken over the whole pool's
    solver files, the test folds' states included, and trained every fold; a row's train_size was the last
    fold's training-set size (22 of 21, 21, 22). Now each fold is calibrated without its test states
    (row["growth_calibration_per_fold"], the line saying so), and the row gives every fold's size."""
    from dodo.training.ensemble_train import EnsembleConfig, load_table, pool_folds

    table_path = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    labels = _label_file(tmp_path / "labels.h5")
    overrides = ["--set", f"data.path={table_path}", *OWN_DATABASE, "--set", f"growth.data=[{json.dumps(str(labels))}]"]
    code, out, err = run(capsys, ["learning-curve", "--config", str(ENSEMBLE_DEFAULT), *overrides, "--sizes", "all",
                                  "--folds", "3", "--json", "-"])
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    # By hand: the pool's fixed shuffle and folds; the preprocessed rows are the file's 32 runs in order.
    config = EnsembleConfig.load(str(ENSEMBLE_DEFAULT), {"data.path": str(table_path), "data.holdout": []})
    order, fold_of = pool_folds(load_table(str(table_path)), config, 3)
    with h5py.File(EMU_32, "r") as f:
        ratio = f["growthRate(1|s)"][...] / f["linear_growthRate_box(1|s)"][...]
    expected = [float(np.median(np.delete(ratio, order[fold_of == k]))) for k in range(3)]
    assert row["growth_calibration_per_fold"] == pytest.approx(expected, rel=1e-12)
    assert all(abs(value - np.median(ratio)) > 1e-6 for value in expected)  # the whole pool's is none of them
    assert "calibration measured/linear per fold" in err, err
    assert row["fold_train_sizes"] == [21, 21, 22] and row["train_size"] == 22
    assert "train 21-22: CV model" in err, err
    # A test state that no solver file holds bit for bit (its F_init changed by preprocess) is said, not hidden.
    from dodo.training.ensemble_train import fold_growth_tables

    config = EnsembleConfig.load(str(ENSEMBLE_DEFAULT), {"data.path": str(table_path), "data.holdout": [],
                                                         "growth.data": [str(labels)]})
    table = load_table(str(table_path))
    table["rest"]["F_init_rest"][order[fold_of == 0][0], 0, 1] *= 1.0 + 1e-12
    said = []
    tables = fold_growth_tables(config, table, order, fold_of, 3, log=said.append)
    assert [t["calibration"] for t in tables[1:]] == pytest.approx(expected[1:], rel=1e-12)
    assert any("hold no state equal bit for bit to 1 test state of the folds" in line for line in said), said


def test_evaluate_counts_the_states_another_file_shares_with_the_training_file(tmp_path, capsys):
    """Item 2: `dodo evaluate CKPT --data all32.h5` of a model trained on the first 20 runs scored all 32,
    20 of them states of its training file, without a word. Now the table says how many rows are the
    training file's states and of which of its splits (JSON: training_states); a file of other states
    says none; a training file no longer there is said to be unchecked."""
    from dodo.training.dataset import make_splits

    first20 = _preprocessed(capsys, tmp_path, _emu_rows(tmp_path / "first20.h5", slice(0, 20)), "first20_pre.h5")
    last12 = _preprocessed(capsys, tmp_path, _emu_rows(tmp_path / "last12.h5", slice(20, 32)), "last12_pre.h5")
    all32 = _preprocessed(capsys, tmp_path, EMU_32, "all32_pre.h5")
    code, _, err = run(capsys, _train(tmp_path, first20, "run", "--set", "training.epochs=1"))
    assert code == 0, err
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    code, out, err = run(capsys, ["evaluate", str(best), "--data", str(all32)])
    assert code == 0, err
    import torch

    data = torch.load(best, map_location="cpu", weights_only=False)["config"]["data"]
    splits = make_splits(20, data["train_fraction"], data["val_fraction"], data["split_seed"], data["max_samples"])
    assert (f"note: 20 of the 32 rows of {all32} are states of the checkpoint's training file {first20} "
            f"({len(splits.train)} of its train split, trained on; {len(splits.val)} of its validation split; "
            f"{len(splits.test)} of its test split)") in out, out
    code, out, err = run(capsys, ["evaluate", str(best), "--data", str(all32), "--json", "-"])
    assert code == 0, err
    seen = json.loads(out)["training_states"]
    assert (seen["checked"], seen["rows"], seen["shared"], seen["in_train_split"]) == (True, 32, 20, len(splits.train))
    assert "note: 20 of the 32 rows" in err, err
    code, out, err = run(capsys, ["evaluate", str(best), "--data", str(last12)])
    assert code == 0 and f"no row of {last12} is a state of the checkpoint's training file" in out, out + err
    # dodo inspect of another file counts them too, over the cells it inspects.
    code, out, err = run(capsys, ["inspect", str(best), "--data", str(all32)])
    assert code == 0 and "note: 20 of the 32 rows" in out, out + err
    code, out, err = run(capsys, ["inspect", str(best), "--data", str(all32), "--start", "20", "--json", "-"])
    assert code == 0 and json.loads(out)["training_states"]["shared"] == 0, out + err
    first20.rename(tmp_path / "moved.h5")
    code, out, err = run(capsys, ["evaluate", str(best), "--data", str(all32)])
    assert code == 0 and f"note: not checked whether {all32} shares states" in out and "not found" in out, out + err


def test_a_resumed_run_reports_its_own_and_the_whole_runs_training_time(tmp_path, capsys):
    """Item 3: a resumed `dodo train`'s metrics gave `seconds` and samples per second of the resumed epochs
    only, said nowhere. Now `timing` gives this session's epochs, seconds and samples and the whole run's
    (each checkpoint records the time so far), and the log says which is which."""
    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    common = _train(tmp_path, table, "run", "--set", "training.epochs=4")
    code, _, err = run(capsys, [*common, "--set", "training.stop_after_epoch=2"])
    assert code == 0, err
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    code, out, err = run(capsys, [*common, "--resume", str(last)])
    assert code == 0, err
    metrics = json.loads(next((tmp_path / "run" / "results").glob("metrics_*.json")).read_text())
    timing = metrics["timing"]
    assert timing["resumed"] and timing["this_session"]["epochs"] == [3, 4]
    assert timing["this_session"]["seconds"] == metrics["seconds"]
    whole = timing["whole_run"]
    assert whole["epochs"] == [1, 4] and whole["samples"] == 2 * timing["this_session"]["samples"]
    assert whole["seconds"] > timing["this_session"]["seconds"]
    assert "timing: this session (resumed) trained epochs 3-4" in out + err and "the whole run, epochs 1-4" in out + err


def test_train_on_a_full_disk_says_the_last_good_checkpoint_is_kept(tmp_path, capsys, monkeypatch):
    """Item 4: `dodo train` whose last.pt write fails (a full disk) said only "[Errno 28] No space left on
    device: .../last.pt", not that the epoch before's last.pt is whole nor how to go on. Now the line says
    so and names the resume; that last.pt resumes the run."""
    from dodo.training import train as train_module

    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    common = _train(tmp_path, table, "run", "--set", "training.epochs=3")
    real = train_module.save_checkpoint
    writes = []

    def full_disk_at_the_second_last_pt(state, path, keep_previous=False):
        if Path(path).name == "last.pt":
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(state, path, keep_previous=keep_previous)

    monkeypatch.setattr(train_module, "save_checkpoint", full_disk_at_the_second_last_pt)
    code, _, err = run(capsys, common)
    line = err.strip().splitlines()[-1]
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert code == 2 and "Traceback" not in err, err
    for words in ("No space left on device", "the run stopped after epoch 2", f"{last} (epoch 1) is kept whole",
                  f"--resume {last}"):
        assert words in line, line
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    assert train_module.load_checkpoint(last)["epoch"] == 1
    code, _, err = run(capsys, [*common, "--resume", str(last)])
    assert code == 0, err


def test_ignore_rotation_of_an_hdf5_input_without_rotation_r_says_it_has_no_effect(tmp_path, capsys):
    """Item 5: `dodo simulate --input F.h5 --ignore-rotation` of a file without rotation_R was accepted
    without a word (a YAML input is refused, section 107). Now a note says it has no effect; a file with
    rotation_R says nothing."""
    source = tmp_path / "one.h5"
    with h5py.File(EMU_32, "r") as f, h5py.File(source, "w") as out:
        out["F4_initial(1|ccm)"] = f["F4_initial(1|ccm)"][:1]
    solver = ["--linear-only", "--ncell", "16", "--nphi", "8"]
    code, _, err = run(capsys, ["simulate", str(tmp_path / "a.h5"), "--input", str(source), "--ignore-rotation", *solver])
    assert code == 0, err
    assert f"note: --ignore-rotation has no effect: {source} has no rotation_R dataset" in err, err
    with_rotation = _emu_rows(tmp_path / "rotated.h5", slice(0, 1))
    code, _, err = run(capsys, ["simulate", str(tmp_path / "b.h5"), "--input", str(with_rotation), "--ignore-rotation",
                                *solver])
    assert code == 0 and "--ignore-rotation has no effect" not in err, err


def test_synth_refuses_rows_beyond_the_file_size_limit_before_drawing_them(tmp_path):
    """Item 6: `dodo synth` checked the free space, not the process's file-size limit (ulimit -f): the rows
    were drawn and Box3D run up to the write that passed it. Now refused first, naming the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 100_000 if hard == resource.RLIM_INFINITY else min(100_000, hard)

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    out = tmp_path / "s.h5"
    done = subprocess.run([sys.executable, "-m", "dodo", "synth", str(out), "-n", "20000"], capture_output=True,
                          text=True, preexec_fn=limited, timeout=300, stdin=subprocess.DEVNULL)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "20,000 rows need at least" in lines[0] and "ulimit -f" in lines[0] and "chunk" not in done.stderr, lines
    assert not out.exists()


# --- fresh angles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, words", [
    ("model=null", ["override model (--set)", "replace the whole model section", "--set model."]),
    ("output=", ["override output (--set)", "replace the whole output section", "--set output."]),
    ("data.box3d=null", ["override data.box3d (--set)", "replace the whole data.box3d section"]),
    ("training.lr.x=1", ["override training.lr.x (--set)", "training.lr is a setting, not a section",
                         "--set training.lr=VALUE"]),
])
def test_set_of_a_whole_section_to_null_or_into_a_setting_is_refused(tmp_path, capsys, setting, words):
    """`--set model=null` (or `--set output=`, an unset shell variable) replaced the config's whole section by
    its defaults without a word: the run trained a 128-wide model, or wrote ./results and ./checkpoints in
    the working directory. `--set training.lr.x=1` on a config without training.lr blamed the config file
    ("c.yaml:training.lr: expected a number"). Now each is refused, naming the --set, before any work."""
    from cli_helpers import refused

    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{path: {tmp_path / 'none.h5'}, batch_size: 8}}\n"
                      "model: {head: equivariant, hidden_dim: 8, n_blocks: 1}\n"
                      "training: {epochs: 1, threads: 1, device: cpu}\n"
                      f"output: {{results_dir: {tmp_path / 'r'}, checkpoint_dir: {tmp_path / 'c'}}}\n")
    line = refused(capsys, ["train", "--config", str(config), "--set", setting], *words)
    assert "c.yaml" not in line, line
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_preprocess_refuses_non_finite_rows_it_was_told_to_keep(tmp_path, capsys):
    """An Emu file with NaN/Inf rows and `filters.drop_nonfinite: false`: the rows were counted as the
    conservation filter's drops (NaN fails every comparison), or with the filters off written after a NumPy
    warning, and `dodo train` then called the file damaged ("dodo preprocess never writes them"). Now refused,
    naming the file, the rows and the setting; with the default the rows are dropped and counted."""
    from cli_helpers import refused

    emu = tmp_path / "nan.h5"
    _emu_rows(emu, slice(0, 32))
    with h5py.File(emu, "r+") as f:
        F = f["F4_initial(1|ccm)"][...]
        F[3, 0, 0, 0], F[5, 1, 1, 2] = np.nan, np.inf
        f["F4_initial(1|ccm)"][...] = F
    common = ["preprocess", "--config", str(REPO / "training" / "configs" / "pre_process_qke.yaml"),
              "--set", f"inputs=[{json.dumps(str(emu))}]", "-q"]
    for extra in (["--set", "filters.drop_nonfinite=false"],
                  ["--set", "filters.drop_nonfinite=false", "--set", "filters.drop_conservation_violation=false",
                   "--set", "filters.drop_high_flux_factor=false"]):
        refused(capsys, [*common, "-o", str(tmp_path / "kept.h5"), *extra], str(emu), "2 row(s) with NaN or Inf",
                "rows [3, 5]", "filters.drop_nonfinite: true")
        assert not (tmp_path / "kept.h5").exists()
    code, out, err = run(capsys, [*common, "-o", str(tmp_path / "dropped.h5")])
    assert code == 0 and "nonfinite_dropped=2" in out + err and "rows_kept=30" in out + err, out + err


def test_a_checkpoint_of_another_dodo_version_is_said_to_be_one(tmp_path, capsys):
    """A checkpoint of another Dodo version: a newer format was "not a Dodo checkpoint", a newer config key
    "(the file was edited or damaged)", an unknown head "unknown head 'x'" naming no file. Now each names
    the file, the version that wrote it and the way on (that version's export, or retraining)."""
    import copy

    from cli_helpers import refused
    from dodo.training.train import load_checkpoint, save_checkpoint

    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    code, _, err = run(capsys, _train(tmp_path, table, "run", "--set", "training.epochs=1"))
    assert code == 0, err
    base = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    newer = copy.deepcopy(base)
    newer["format"], newer["dodo_version"] = "dodo-checkpoint-v2", "0.9.0"
    new_key = copy.deepcopy(base)
    new_key["config"]["model"]["attention_heads"], new_key["dodo_version"] = 4, "0.9.0"
    head = copy.deepcopy(base)
    head["config"]["model"]["head"] = "transformer"
    for name, state, words in (
            ("newer", newer, ["a Dodo checkpoint of format 'dodo-checkpoint-v2'", "written by dodo 0.9.0",
                              "read it with the dodo version that wrote it"]),
            ("new_key", new_key, ["attention_heads", "written by dodo 0.9.0", "read it with the dodo version"]),
            ("head", head, ["config.model.head is 'transformer'", "the file was edited or damaged"])):
        state.pop("sha256", None)
        path = tmp_path / f"{name}.pt"
        save_checkpoint(state, path)
        for command in (["export", str(path), "-o", str(tmp_path / f"{name}.onnx")],
                        ["evaluate", str(path), "--data", str(table)]):
            refused(capsys, command, str(path), *words)
        assert not (tmp_path / f"{name}.onnx").exists()


def test_a_train_ensemble_checkpoint_of_another_dodo_version_is_said_to_be_one(tmp_path, capsys):
    """A `dodo train-ensemble` checkpoint recorded no Dodo version, and one a newer version wrote (a feature
    set this one does not know) was refused as "(the file was edited or damaged; ...)". Now the checkpoint
    records `dodo_version`, and a checkpoint of another version is said to be one, with the way on."""
    import torch

    from cli_helpers import refused

    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    checkpoint = tmp_path / "ensemble.pt"
    own = [arg for pair in zip(OWN_DATABASE[::2], OWN_DATABASE[1::2]) for arg in pair]
    code, _, err = run(capsys, ["train-ensemble", "--config", str(ENSEMBLE_DEFAULT), "--set", f"data.path={table}",
                                *own, "--set", "growth.data=[]", "--set", "growth.measured=true",
                                "--set", f"output.checkpoint={checkpoint}"])
    assert code == 0, err
    import dodo

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["dodo_version"] == dodo.__version__
    state["dodo_version"], state["config"]["features"] = "0.9.0", "invariants27+box7+eln24-v2"
    newer = tmp_path / "newer.pt"
    torch.save(state, newer)
    refused(capsys, ["export", str(newer), "-o", str(tmp_path / "newer.onnx")], str(newer),
            "'invariants27+box7+eln24-v2' is unknown", "written by dodo 0.9.0", "export it with the version that wrote it")


def test_learning_curve_names_the_default_sizes_it_refuses(tmp_path, capsys):
    """`dodo learning-curve` without --sizes on a pool of 32 states: "--sizes 500 and 1000 train on the same
    states ...: give each size once", sizes the user never gave. Now the default is named, with sizes that fit."""
    from cli_helpers import refused

    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    common = ["learning-curve", "--config", str(ENSEMBLE_DEFAULT), "--set", f"data.path={table}", *OWN_DATABASE,
              "--set", "growth.data=[]", "--set", "growth.measured=true"]
    refused(capsys, common, "--sizes 500 and 1000 (the default --sizes 500,1000,all) train on the same states",
            "give --sizes of fewer states (e.g. --sizes 12,all)")
    line = refused(capsys, [*common, "--sizes", "100,200"], "--sizes 100 and 200 train on the same states")
    assert "default" not in line and line.endswith("give each size once"), line


def test_evaluate_counts_training_file_rows_beyond_max_samples_as_in_no_split(tmp_path, capsys):
    """A model trained with data.max_samples=15 on a 20-row file: `dodo evaluate --data all32.h5` (split 'all')
    scored 15 random rows of the 32 (the other file's rows drawn like the training file's split, max_samples
    of them), and the 5 training-file rows in no split would not have been counted. Now every row of the other
    file is scored, and those 5 are counted as in no split."""
    first20 = _preprocessed(capsys, tmp_path, _emu_rows(tmp_path / "first20.h5", slice(0, 20)), "first20_pre.h5")
    all32 = _preprocessed(capsys, tmp_path, EMU_32, "all32_pre.h5")
    code, _, err = run(capsys, _train(tmp_path, first20, "run", "--set", "training.epochs=1",
                                      "--set", "data.max_samples=15"))
    assert code == 0, err
    code, out, err = run(capsys, ["evaluate", str(tmp_path / "run" / "checkpoints" / "best.pt"), "--data", str(all32),
                                  "--json", "-"])
    assert code == 0, err
    report = json.loads(out)
    seen = report["training_states"]
    assert report["n_cells"] == 32 and seen["rows"] == 32, report
    assert seen["shared"] == 20 and seen["in_no_split"] == 5, seen
    assert seen["in_train_split"] + seen["in_val_split"] + seen["in_test_split"] == 15, seen
    assert "5 in no split, beyond data.max_samples" in err, err


def test_a_resume_past_stop_after_epoch_trains_to_the_end_and_says_so(tmp_path, capsys):
    """`dodo train` with training.stop_after_epoch: 2 of 4 epochs stops after epoch 2; resumed with the same
    settings it stopped again after epoch 3, "stopping after epoch 3 as asked (training.stop_after_epoch)",
    an epoch never asked for. Now the resume trains to the end and its first line says the stop is past;
    a stop at or beyond training.epochs is said to stop nothing."""
    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    common = _train(tmp_path, table, "run", "--set", "training.epochs=4", "--set", "training.stop_after_epoch=2")
    code, out, err = run(capsys, common)
    assert code == 0 and "stopping after epoch 2 as asked" in out + err, out + err
    code, out, err = run(capsys, [*common, "--resume", str(tmp_path / "run" / "checkpoints" / "last.pt")])
    assert code == 0, err
    assert "stopping after" not in out + err and "epoch 4/4" in out + err, out + err
    assert "training.stop_after_epoch: 2 is past (the run resumes after epoch 2): no stop" in out + err
    assert next((tmp_path / "run" / "results").glob("metrics_*.json")).is_file()
    code, out, err = run(capsys, _train(tmp_path, table, "other", "--set", "training.epochs=2",
                                        "--set", "training.stop_after_epoch=2"))
    assert code == 0 and "training.stop_after_epoch: 2 >= training.epochs (2): no stop" in out + err, out + err
