"""The training command line, round five (outside probe): a database holding states twice split by state,
a model scored on its own training states, a learning curve whose gate passes nothing. Each test fails on
the code before its fix (the round's record, "The training command line, round five")."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import refused, run, tiny_train_config

pytest.importorskip("torch")
pytest.importorskip("yaml")


def _synth(capsys, root, n=240, seed=5):
    code, _, err = run(capsys, ["synth", "-o", str(root / "synth.h5"), "-n", str(n), "--seed", str(seed), "-q"])
    assert code == 0, err
    return root / "synth.h5"


def _with_repeats(source, path, repeated):
    """``source`` (Emu layout) with its rows ``repeated`` appended again (a database merged with part of itself)."""
    with h5py.File(source, "r") as given, h5py.File(path, "w") as out:
        n = given["F4_initial(1|ccm)"].shape[0]
        rows = list(range(n)) + list(repeated)
        for key in given:
            item = given[key]
            if isinstance(item, h5py.Dataset) and item.shape and item.shape[0] == n:
                out[key] = item[...][rows]
            else:
                given.copy(key, out)
        for name, value in given.attrs.items():
            out.attrs[name] = value
    return path


def _preprocess(capsys, root, emu, name="pre.h5"):
    config = root / f"{name}.yaml"
    config.write_text(f"inputs: [{emu}]\noutput: {root / name}\n")
    code, _, err = run(capsys, ["preprocess", "--config", str(config), "-q"])
    assert code == 0, err
    return root / name


def _states_on_two_sides(path, splits: dict) -> int:
    """How many initial states (F_init and u, bit for bit) of ``path`` have rows in two of ``splits``."""
    with h5py.File(path, "r") as handle:
        F, u = handle["F_init"][...], handle["u"][...]
    keys = [row.tobytes() for row in np.concatenate([F.reshape(len(F), -1), u], axis=1)]
    sides: dict = {}
    for name, rows in splits.items():
        for row in rows:
            sides.setdefault(keys[int(row)], set()).add(name)
    return sum(len(names) > 1 for names in sides.values())


@pytest.fixture()
def repeated_table(tmp_path, capsys):
    """240 synthetic states and the first 80 of them again, preprocessed."""
    emu = _with_repeats(_synth(capsys, tmp_path), tmp_path / "dup.h5", range(80))
    return _preprocess(capsys, tmp_path, emu)


def test_dodo_train_keeps_a_states_repeats_in_one_split(tmp_path, capsys, repeated_table):
    """dodo train drew its train/val/test split by row: of 80 states given twice, copies landed in the validation
    and test splits beside their originals in the training split (the test metrics then include states trained
    on). Now each state's rows go to one split, and the checkpoint's split (evaluate's) is that one."""
    import torch
    from dodo.training.evaluate import split_indices_for

    code, out, err = run(capsys, ["train", "--config", str(tiny_train_config(tmp_path, repeated_table))])
    assert code == 0, err
    assert "80 rows of" in out + err and "kept in one of the train/validation/test splits" in out + err, out + err
    checkpoint = torch.load(tmp_path / "ck" / "final.pt", map_location="cpu", weights_only=False)
    splits = {name: split_indices_for(checkpoint, repeated_table, name) for name in ("train", "val", "test")}
    assert sum(len(rows) for rows in splits.values()) == 320 and all(len(rows) for rows in splits.values())
    assert _states_on_two_sides(repeated_table, splits) == 0
    trained = f"on {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} train/val/test cells"
    assert trained in out + err, out + err


def test_a_file_without_repeats_is_split_as_before():
    """The split of a file without repeated states is the row split every earlier run drew."""
    from dodo.training.dataset import make_splits

    rng_order = np.random.default_rng(42).permutation(500)
    splits = make_splits(500, 0.8, 0.1, 42, state_of=np.arange(500))
    assert np.array_equal(splits.train, np.sort(rng_order[:400])) and np.array_equal(splits.test, np.sort(rng_order[450:]))


def test_learning_curve_folds_keep_a_states_repeats_in_one_fold(tmp_path, capsys, repeated_table):
    """dodo learning-curve's CV folds were drawn by row: a state's copy was trained on by the fold that tested
    the state. Now each state's rows share one fold."""
    from dodo.training.ensemble_train import EnsembleConfig, load_table
    from dodo.training.pool import pool_folds

    (tmp_path / "e.yaml").write_text(f"data: {{path: {repeated_table}, holdout: []}}\n")
    config = EnsembleConfig.load(str(tmp_path / "e.yaml"))
    order, fold_of = pool_folds(load_table(str(repeated_table)), config, 5)
    assert sorted(order.tolist()) == list(range(320)) and set(fold_of.tolist()) == set(range(5))
    assert _states_on_two_sides(repeated_table, {k: order[fold_of == k] for k in range(5)}) == 0


def test_a_run_split_by_row_is_not_resumed_on_another_split(tmp_path, capsys, repeated_table):
    """A checkpoint of a dodo that split by row (no data.split) would resume on this dodo's split by state,
    training on rows of its own validation and test splits: refused, naming why; evaluate takes its row split."""
    import torch
    from dodo.training.dataset import make_splits
    from dodo.training.evaluate import split_indices_for
    from dodo.training.train import checkpoint_digest

    config = tiny_train_config(tmp_path, repeated_table, epochs=2)
    code, _, err = run(capsys, ["train", "--config", str(config), "--set", "training.stop_after_epoch=1"])
    assert code == 0, err
    last = tmp_path / "ck" / "last.pt"
    for path in (last, tmp_path / "ck" / "best.pt"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        del state["data"]["split"]
        state.pop("sha256")
        state["sha256"] = checkpoint_digest(state)
        torch.save(state, path)
    refused(capsys, ["train", "--config", str(config), "--resume", str(last)], "split", "by row",
            "rows of the run's validation and test splits", "start a new run")
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert np.array_equal(split_indices_for(state, repeated_table, "test"), make_splits(320, 0.8, 0.1, 42).test)


def test_dodo_score_warns_when_it_scores_states_the_package_trained_on(tmp_path, capsys):
    """`dodo score m.onnx own.h5` of a package trained on own.h5's states printed its table as any other
    score, no word (a package recorded only its training file's SHA-256). Now the package records the states
    it trained or validated on (dodo.training_states) and score names how many of those it scored."""
    import json

    emu = _synth(capsys, tmp_path)
    table = _preprocess(capsys, tmp_path, emu)
    code, _, err = run(capsys, ["train", "--config", str(tiny_train_config(tmp_path, table))])
    assert code == 0, err
    package = tmp_path / "m.onnx"
    code, _, err = run(capsys, ["export", str(tmp_path / "ck" / "final.pt"), "-o", str(package)])
    assert code == 0, err
    code, out, err = run(capsys, ["score", str(package), str(emu), "--bootstrap", "100", "--json", "-"])
    assert code == 0, err
    trained = 216  # 240 states, 0.8 + 0.1 of them in the training and validation splits
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and f"{trained} of the 240 states scored are states" in warning[0], err
    assert "trained or validated on" in warning[0] and "not held-out" in warning[0], warning
    assert json.loads(out)["training_states_scored"] == trained
    (tmp_path / "other").mkdir()
    other = _synth(capsys, tmp_path / "other", n=30, seed=99)
    code, out, err = run(capsys, ["score", str(package), str(other), "--bootstrap", "100", "--json", "-"])
    assert code == 0 and "warning" not in err and json.loads(out)["training_states_scored"] == 0, err
    with h5py.File(emu, "r+") as handle:  # 10 states left out of the score (a non-finite truth): not counted
        final = handle["F4_final(1|ccm)"][...]
        final[:10] = np.nan
        handle["F4_final(1|ccm)"][...] = final
    code, out, err = run(capsys, ["score", str(package), str(emu), "--bootstrap", "100", "--json", "-"])
    counted_now = json.loads(out)["training_states_scored"]
    assert code == 0 and trained - 10 <= counted_now < trained, (counted_now, err)
    assert f"warning: {counted_now} of the 230 states scored are states" in err, err


def test_a_train_ensemble_package_records_its_training_states(tmp_path, capsys):
    """The same for a `dodo train-ensemble` package: its training rows (every row not held out) are recorded,
    and score counts them."""
    emu = _synth(capsys, tmp_path, n=120)
    table = _preprocess(capsys, tmp_path, emu)
    config = tmp_path / "ens.yaml"
    config.write_text(f"data: {{path: {table}, holdout: [], features: invariants27+box7-v1}}\n"
                      "ensemble: {members: 2, width: 8, depth: 1, batch_size: 64, epochs: 1, threads: 1}\n"
                      "distill: {width: 8, depth: 1, batch_size: 64, epochs: 1, sampled_states: 0}\n"
                      "growth: {data: [], members: 1, width: 8, depth: 1, batch_size: 64, epochs: 1}\n"
                      f"noise: {{oof: ''}}\noutput: {{checkpoint: {tmp_path / 'e.pt'}}}\n")
    code, _, err = run(capsys, ["train-ensemble", "--config", str(config)])
    assert code == 0, err
    code, _, err = run(capsys, ["export", str(tmp_path / "e.pt"), "-o", str(tmp_path / "e.onnx")])
    assert code == 0, err
    code, _, err = run(capsys, ["score", str(tmp_path / "e.onnx"), str(emu), "--bootstrap", "100"])
    assert code == 0 and "warning: 120 of the 120 states scored are states" in err, err


def test_a_learning_curve_whose_gate_passes_nothing_says_so(tmp_path, capsys):
    """`dodo learning-curve` of 1-2 epoch members printed "CV model 0.00825 vs Box3D 0.00825" at every size, as if
    the recipe learned nothing: the spread gate passed almost none of the members' correction. Now each such
    row is followed by a note naming the share passed, the ungated CV and ensemble.epochs; the JSON rows hold
    cv_ungated and cv_gate_passed."""
    import json

    emu = _synth(capsys, tmp_path, n=120)
    table = _preprocess(capsys, tmp_path, emu)
    config = tmp_path / "ens.yaml"
    config.write_text(f"data: {{path: {table}, holdout: [], features: invariants27+box7-v1}}\n"
                      "ensemble: {members: 2, width: 8, depth: 1, batch_size: 64, epochs: 1, threads: 1}\n"
                      "distill: {width: 8, depth: 1, batch_size: 64, epochs: 1, sampled_states: 0}\n"
                      "growth: {data: [], members: 1, width: 8, depth: 1, batch_size: 64, epochs: 1}\n"
                      f"noise: {{oof: ''}}\noutput: {{checkpoint: {tmp_path / 'e.pt'}}}\n")
    code, out, err = run(capsys, ["learning-curve", "--config", str(config), "--sizes", "all", "--folds", "2",
                                  "--json", str(tmp_path / "lc.json")])
    assert code == 0, err
    [row] = json.loads((tmp_path / "lc.json").read_text())["rows"]
    assert abs(row["cv_model"] - row["cv_box3d"]) < 1e-3 * row["cv_box3d"] and row["cv_gate_passed"] < 0.01, row
    notes = [line for line in (out + err).splitlines() if line.startswith("note: train")]
    assert len(notes) == 1 and "Box3D's to within 0.1%" in notes[0] and "ensemble.epochs" in notes[0], out + err
    assert f"ungated CV {row['cv_ungated']:.5f}" in notes[0] and row["cv_ungated"] != row["cv_model"]


def test_the_resume_advice_of_a_moved_run_directory_with_a_space_resumes(tmp_path, capsys, monkeypatch):
    """A run directory named with a space ("t r/c k"), moved while training: the advice read `--resume
    /x/t r2/ck/last.pt --set output.checkpoint_dir=/x/t r2/ck`, words a shell splits at the space. Now each
    path is a shell word, and the command it gives (split as a shell splits it) resumes the run."""
    import shlex

    from test_probe_open_items_2026_12_07f import _move_after_first_epoch

    (tmp_path / "d a").mkdir()
    emu = _synth(capsys, tmp_path / "d a", n=200)
    table = _preprocess(capsys, tmp_path / "d a", emu, name="p p.h5")
    tree, moved = tmp_path / "t r", tmp_path / "t r2"
    config = tiny_train_config(tmp_path, table, epochs=3, outputs=tree)
    _move_after_first_epoch(monkeypatch, tree, moved)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    monkeypatch.undo()
    advice = shlex.split(line.split("resume it where it is now: dodo train ")[1])
    assert advice[advice.index("--resume") + 1] == str(moved / "ck" / "last.pt"), advice
    code, _, err = run(capsys, ["train", *advice])
    assert code == 0, err
    assert (moved / "ck" / "final.pt").is_file()


def test_a_full_disk_advice_names_a_directory_with_a_space_as_one_word():
    from dodo.training.train import _not_written

    text = _not_written(Path("/x/c k/last.pt"), OSError(28, "No space left on device"), 3, Path("/x/c k"), 2)
    assert "--resume '/x/c k/last.pt'" in text, text


@pytest.mark.parametrize("item, words", [
    ("ensemble.width.x=1", "ensemble.width is a setting, not a section: --set ensemble.width=VALUE"),
    ("growth.data.x=1", "growth.data is a setting, not a section: --set growth.data=VALUE"),
    ("ensemble.foo.bar=1", "the ensemble section has ['batch_size', 'depth', 'epochs'"),
    ("nope.x=1", "the sections are ['data', 'ensemble'"),
])
def test_train_ensemble_names_a_nested_override_that_does_not_exist(tmp_path, capsys, item, words):
    """`--set ensemble.width.x=1` was "unknown key 'ensemble.width.x'" (width is a key), `ensemble.foo.bar` listed
    no key of the ensemble section (the other sections' were listed), `nope.x` no section. dodo train's words now."""
    config = tmp_path / "ens.yaml"
    config.write_text("data: {path: pre.h5}\n")
    refused(capsys, ["train-ensemble", "--config", str(config), "--set", item], f"override {item.split('=')[0]} (--set)",
            words)


def test_the_refusal_of_an_unfinished_run_names_its_last_pt_as_one_shell_word(tmp_path, capsys):
    """A run killed in "c k/" (kill -9 after its first epochs): the next `dodo train` was refused with
    "--resume /x/c k/last.pt continues it", which a shell splits at the space. Now the path is quoted, and the
    command resumes."""
    import shlex

    emu = _synth(capsys, tmp_path, n=200)
    table = _preprocess(capsys, tmp_path, emu)
    config = tiny_train_config(tmp_path, table, epochs=2, outputs=tmp_path / "c k")
    code, _, err = run(capsys, ["train", "--config", str(config), "--set", "training.stop_after_epoch=1"])
    assert code == 0, err
    line = refused(capsys, ["train", "--config", str(config)], "holds an unfinished run")
    words = shlex.split(line.split("a new run would replace it: ")[1].split(" continues it")[0])
    assert words == ["--resume", str(tmp_path / "c k" / "ck" / "last.pt")], line
    code, _, err = run(capsys, ["train", "--config", str(config), *words])
    assert code == 0 and (tmp_path / "c k" / "ck" / "final.pt").is_file(), err


def test_train_ensemble_never_trains_on_a_copy_of_a_held_out_state(tmp_path, capsys):
    """data.holdout holds out files by name: the 40 states of b_seed901.h5, copied from a_seed1.h5, were held
    out and trained on (their copies in a_seed1.h5), the held-out table scoring states trained on. Now rows
    repeating a held-out state are left out of training (and of learning-curve's pool), with a note."""
    import torch
    from dodo.training.ensemble_train import EnsembleConfig, load_table
    from dodo.training.pool import pool_folds

    source = _synth(capsys, tmp_path, n=160)
    (tmp_path / "d").mkdir()
    a = _with_repeats(source, tmp_path / "d" / "a_seed1.h5", [])
    with h5py.File(source, "r") as given, h5py.File(tmp_path / "d" / "b_seed901.h5", "w") as out:
        for key in given:
            item = given[key]
            out[key] = item[...][:40] if isinstance(item, h5py.Dataset) and item.shape and item.shape[0] == 160 else item[()]
    config = tmp_path / "pp.yaml"
    config.write_text(f"inputs: [{a}, {tmp_path / 'd' / 'b_seed901.h5'}]\noutput: {tmp_path / 'pre.h5'}\n")
    code, _, err = run(capsys, ["preprocess", "--config", str(config), "-q"])
    assert code == 0, err
    config = tmp_path / "ens.yaml"
    config.write_text(f"data: {{path: {tmp_path / 'pre.h5'}, features: invariants27+box7-v1}}\n"
                      "ensemble: {members: 2, width: 8, depth: 1, batch_size: 64, epochs: 1, threads: 1}\n"
                      "distill: {width: 8, depth: 1, batch_size: 64, epochs: 1, sampled_states: 0}\n"
                      "growth: {data: [], members: 1, width: 8, depth: 1, batch_size: 64, epochs: 1}\n"
                      f"noise: {{oof: ''}}\noutput: {{checkpoint: {tmp_path / 'e.pt'}}}\n")
    code, out, err = run(capsys, ["train-ensemble", "--config", str(config)])
    assert code == 0, err
    assert "120 training states, 40 held out" in out + err, out + err
    assert "note: 40 rows of files not matching data.holdout repeat a held-out state" in out + err, out + err
    checkpoint = torch.load(tmp_path / "e.pt", map_location="cpu", weights_only=False)
    assert checkpoint["data"]["train_rows"] == 120 and len(checkpoint["data"]["states"]) == 120
    table = load_table(str(tmp_path / "pre.h5"))
    order, _ = pool_folds(table, EnsembleConfig.load(str(config)), 3)
    assert sorted(order.tolist()) == list(range(40, 160))  # a_seed1.h5's rows 0-39 are b_seed901.h5's states


def test_a_file_of_few_states_given_many_times_is_told_to_add_states(tmp_path, capsys):
    """91 rows holding 4 states (30 runs of each of three, one of a fourth): split by row, every state trained on
    was also validated and tested on; split by state no validation state is left, and "add rows or raise
    data.val_fraction" alone would send the user to add rows of the same states. The line now counts the states."""
    source = _synth(capsys, tmp_path, n=40)
    with h5py.File(source, "r") as given, h5py.File(tmp_path / "few4.h5", "w") as out:
        for key in given:
            item = given[key]
            out[key] = item[...][[0] * 30 + [1] * 30 + [2] * 30 + [3]] if item.shape and item.shape[0] == 40 else item[()]
    table = _preprocess(capsys, tmp_path, tmp_path / "few4.h5", name="few4.h5.pre")
    refused(capsys, ["train", "--config", str(tiny_train_config(tmp_path, table))], "split is empty",
            "the file's 91 rows hold 4 distinct initial states, and a state's rows stay in one split: add other states")


def test_a_training_set_too_large_to_record_is_not_written_into_the_package():
    """A package holds its training states at 11 bytes each: 20 million states would take it past the 256 MiB the
    runtime loads (DODO_MAX_MODEL_FILE_BYTES). Up to 1,000,000 are recorded; beyond that, none."""
    import torch
    from dodo._state_hashes import package_training_states
    from dodo.training.export import MAX_RECORDED_TRAINING_STATES, training_states_metadata

    small = torch.arange(5, dtype=torch.int64)
    assert np.array_equal(package_training_states(training_states_metadata({"data": {"states": small}})), np.arange(5))
    large = torch.zeros(MAX_RECORDED_TRAINING_STATES + 1, dtype=torch.int64)
    assert training_states_metadata({"data": {"states": large}}) == {}
