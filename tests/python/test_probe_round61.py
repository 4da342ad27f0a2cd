"""Python probe, round sixty-one (outside probe): the training user's surface, one's own Emu-layout
data through `dodo preprocess`, `train`, `train-ensemble`, `learning-curve`. Each test fails on the
code before its fix (docs/reliability_python.md, section 109)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from cli_helpers import REPO, refused, run

pytest.importorskip("torch")
pytest.importorskip("yaml")

EMU_32 = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"
ENSEMBLE_DEFAULT = REPO / "training" / "configs" / "ensemble_default.yaml"
#: docs/training.md, "Your own database with the default model's recipe", with its trial of seconds.
OWN_DATABASE = ["--set", "data.holdout=[]", "--set", "growth.data=[]", "--set", "growth.measured=true",
                "--set", "noise.weight=0", "--set", "noise.oof=", "--set", "distill.sampled_states=0",
                "--set", "ensemble.members=2", "--set", "ensemble.epochs=2", "--set", "growth.members=1",
                "--set", "growth.epochs=2", "--set", "distill.epochs=2"]


def _emu_subset(path: Path, rows: int) -> Path:
    """The first ``rows`` runs of emu_1d_validation.h5, every per-run dataset cut alike."""
    with h5py.File(EMU_32, "r") as source, h5py.File(path, "w") as out:
        for key in source:
            item = source[key]
            if item.shape and item.shape[0] == 32:
                out[key] = item[:rows]
            else:
                source.copy(key, out)
    return path


def _preprocessed(capsys, tmp_path: Path, emu: Path, name: str) -> Path:
    out = tmp_path / name
    code, _, err = run(capsys, ["preprocess", "--config", str(REPO / "training" / "configs" / "pre_process_qke.yaml"),
                                "--set", f"inputs=[{json.dumps(str(emu))}]", "-o", str(out), "-q"])
    assert code == 0 and out.is_file(), err
    return out


def test_learning_curve_refuses_an_emu_file_whose_states_are_all_in_the_pool(tmp_path, capsys):
    """`dodo learning-curve --emu F` on a database preprocessed from F itself scored every fold's ensemble
    on states it trained on and reported it as the score on an Emu file, exit 0, no word. Now refused
    before any fit, naming the file, the pool and the way on."""
    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    line = refused(capsys, ["learning-curve", "--config", str(ENSEMBLE_DEFAULT), "--set", f"data.path={table}",
                            *OWN_DATABASE, "--sizes", "all", "--folds", "3", "--emu", str(EMU_32),
                            "--json", str(tmp_path / "lc.json")],
                   str(EMU_32), "all 32 of its states are in the training pool",
                   "data.holdout=[\"emu_1d_validation.h5\"]")
    assert "an Emu file of other states" in line
    assert not (tmp_path / "lc.json").exists()


def test_learning_curve_scores_the_emu_file_on_states_outside_the_pool(tmp_path, capsys):
    """A pool of the file's first 20 runs and --emu the whole file: the Emu score was taken on all 32,
    20 of them trained on. Now on the other 12, said in a note and in the row's emu_states."""
    from dodo.training.ensemble_train import (box3d_settings, emu_rows_outside_pool, emu_table, load_table,
                                              state_error)

    table_path = _preprocessed(capsys, tmp_path, _emu_subset(tmp_path / "first20.h5", 20), "first20_pre.h5")
    code, out, err = run(capsys, ["learning-curve", "--config", str(ENSEMBLE_DEFAULT), "--set",
                                  f"data.path={table_path}", *OWN_DATABASE, "--sizes", "all", "--folds", "3",
                                  "--emu", str(EMU_32), "--json", "-"])
    assert code == 0, err
    assert f"note: --emu {EMU_32}: 20 of its 32 states are in the training pool" in err, err
    assert "the Emu score is taken on the other 12" in err, err
    row = json.loads(out)["rows"][0]
    assert row["emu_states"] == 12
    # The Box3D column is of those 12: the last 12 runs of the file.
    table = load_table(str(table_path))
    emu = emu_table(str(EMU_32), box3d_settings(table["box3d"]))
    scored = emu_rows_outside_pool(emu, table, __import__("numpy").arange(20), str(EMU_32), log=lambda _: None)
    assert scored.tolist() == list(range(20, 32))
    assert row["emu_box3d"] == pytest.approx(float(state_error(emu["delta_box"][20:], emu["delta_true"][20:]).mean()),
                                             rel=1e-12)


@pytest.mark.parametrize("setting, key", [
    ("growth.width=0", "growth.width must be a positive integer; got 0"),
    ("distill.depth=0", "distill.depth must be a positive integer; got 0"),
    ("distill.steps=0", "distill.steps must be a positive integer; got 0"),
    ("ensemble.lr=-1", "ensemble.lr must be a finite positive number; got -1"),
    ("distill.growth_weight=-1", "distill.growth_weight must be a finite number >= 0; got -1"),
    ("growth.batch_size=-1", "growth.batch_size must be an integer >= 0; got -1"),
    ("distill.batch_size=64", "distill.batch_size needs distill.epochs >= 1"),
    ("ensemble.flavour_images=2", "ensemble.flavour_images must be true or false; got 2"),
])
def test_train_ensemble_names_the_config_key_of_a_bad_value(tmp_path, capsys, setting, key):
    """`--set growth.width=0` was refused as "growth_width must be a positive integer", `ensemble.lr=-1` as
    "lr must be ...": field names, not keys (`--set growth_width=4` is an unknown key). Now the key."""
    config = tmp_path / "ensemble.yaml"
    config.write_text(f"data:\n  path: {tmp_path / 'missing.h5'}\ndistill:\n  epochs: 0\n")
    refused(capsys, ["train-ensemble", "--config", str(config), "--set", setting], key)


@pytest.mark.parametrize("setting, first", [
    ("filters.conservation_tolerance=-1", "override filters.conservation_tolerance (--set): "),
    ("filters.max_flux_factor=1.5", "override filters.max_flux_factor (--set): "),
    ('filters={"max_flux_factor": 2}', "override filters (--set): "),
    ("chunk_size=0", "override chunk_size (--set): "),
    ("threads=-3", "override threads (--set): "),
    ("inputs=[]", "override inputs (--set): "),
])
def test_preprocess_blames_a_bad_set_value_on_the_set_not_the_file(tmp_path, capsys, setting, first):
    """`dodo preprocess --config pre.yaml --set filters.conservation_tolerance=-1` said "pre.yaml:
    filters.conservation_tolerance must be ...; got -1.0", where pre.yaml holds 0.001. Now the --set;
    a bad value in the file still names the file."""
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{EMU_32}]\noutput: {tmp_path / 'o.h5'}\nfilters:\n  conservation_tolerance: 1.0e-3\n")
    line = refused(capsys, ["preprocess", "--config", str(config), "--set", setting, "-q"])
    assert line.startswith(f"dodo preprocess: error: {first}"), line
    assert str(config) not in line, line
    config.write_text(f"inputs: [{EMU_32}]\noutput: {tmp_path / 'o.h5'}\nfilters:\n  conservation_tolerance: -1\n")
    refused(capsys, ["preprocess", "--config", str(config), "-q"],
            f"{config}: filters.conservation_tolerance must be a finite positive number")


def test_train_says_that_amp_has_no_effect_on_cpu(tmp_path, capsys, monkeypatch):
    """`--set training.amp=true` on a CPU run was dropped without a word (AMP is CUDA only). Now the
    run's first line says so."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    common = ["train", "--config", str(REPO / "training" / "configs" / "model.yaml"), "--set", f"data.path={table}",
              "--set", "training.epochs=1", "--set", "model.hidden_dim=8", "--set", "model.n_blocks=1",
              "--set", "training.threads=1", "--set", "training.device=cpu"]
    code, out, err = run(capsys, [*common, "--set", f"output.results_dir={tmp_path / 'r1'}",
                                  "--set", f"output.checkpoint_dir={tmp_path / 'c1'}", "--set", "training.amp=true"])
    assert code == 0, err
    first = (out + err).splitlines()[0]
    assert "training.amp: true has no effect on cpu (AMP is CUDA only): the run is fp32" in first, first
    code, out, err = run(capsys, [*common, "--set", f"output.results_dir={tmp_path / 'r2'}",
                                  "--set", f"output.checkpoint_dir={tmp_path / 'c2'}"])
    assert code == 0, err
    assert "training.amp" not in out + err


def test_train_ensemble_says_when_a_holdout_pattern_matches_no_file(tmp_path, capsys):
    """`--set 'data.holdout=["emu_1d_valdation.h5"]'` (misspelt), or the default recipe's
    "*_seed9[0-9][0-9].h5" on one's own files, held nothing out, said only as "32 training states, 0 held
    out (PATTERN)". Now the line names the pattern that matches none of the source files and the way on;
    a pattern that matches says nothing more."""
    table = _preprocessed(capsys, tmp_path, EMU_32, "mine.h5")
    base = [arg for pair in zip(OWN_DATABASE[::2], OWN_DATABASE[1::2]) if pair[1] != "data.holdout=[]" for arg in pair]
    common = ["train-ensemble", "--config", str(ENSEMBLE_DEFAULT), "--set", f"data.path={table}", *base]
    code, out, err = run(capsys, [*common, "--set", 'data.holdout=["emu_1d_valdation.h5"]',
                                  "--set", f"output.checkpoint={tmp_path / 'a.pt'}"])
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("32 training states, 0 held out (emu_1d_valdation.h5); data.holdout's "
                            "'emu_1d_valdation.h5' matches none of the 1 source file of data.path"), first
    assert "'emu_1d_validation.h5'" in first and "--set 'data.holdout=[]'" in first, first
    code, out, err = run(capsys, [*common, "--set", 'data.holdout=["emu_1d_*.h5", "nothing*"]',
                                  "--set", f"output.checkpoint={tmp_path / 'b.pt'}"])
    assert code == 2 and "every row matches a holdout pattern" in err, err  # the matching one holds all out
    from dodo.training.ensemble_train import load_table, unmatched_holdout_note

    loaded = load_table(str(table))
    assert unmatched_holdout_note(loaded, ["emu_1d_*.h5"]) == ""
    assert "'nothing*' matches none" in unmatched_holdout_note(loaded, ["emu_1d_*.h5", "nothing*"])


def test_learning_curve_says_when_a_holdout_pattern_matches_no_file(tmp_path, capsys):
    """The same for `dodo learning-curve`, whose pool is every state then: said before the rows (on
    standard error with --json -, so the JSON alone is on standard output)."""
    table = _preprocessed(capsys, tmp_path, _emu_subset(tmp_path / "first20.h5", 20), "first20_pre.h5")
    base = [arg for pair in zip(OWN_DATABASE[::2], OWN_DATABASE[1::2]) if pair[1] != "data.holdout=[]" for arg in pair]
    code, out, err = run(capsys, ["learning-curve", "--config", str(ENSEMBLE_DEFAULT), "--set", f"data.path={table}",
                                  *base, "--sizes", "all", "--folds", "3", "--json", "-"])
    assert code == 0, err
    assert err.startswith("note: data.holdout's '*_seed9[0-9][0-9].h5' matches none of the 1 source file of "
                          "data.path (patterns match file names, e.g. 'first20.h5')"), err
    assert json.loads(out)["rows"][0]["cv_states"] == 20
