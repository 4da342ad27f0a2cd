"""The training command line, round four (outside probe): a config with numbers at their bounds, a database
holding a state twice. Each test fails on the code before its fix (section "The training command line,
round four" of the record)."""
from __future__ import annotations


import h5py
import pytest
from cli_helpers import REPO, refused, run
from test_probe_round61 import _preprocessed

pytest.importorskip("torch")
pytest.importorskip("yaml")

EMU_32 = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"
MODEL = REPO / "training" / "configs" / "model.yaml"


def _emu_rows(path, rows):
    """The runs ``rows`` (a list, repeats allowed) of emu_1d_validation.h5, every per-run dataset cut alike."""
    with h5py.File(EMU_32, "r") as source, h5py.File(path, "w") as out:
        for key in source:
            item = source[key]
            if isinstance(item, h5py.Dataset) and item.shape and item.shape[0] == 32:
                out[key] = item[...][rows]
            else:
                source.copy(key, out)
        for name, value in source.attrs.items():
            out.attrs[name] = value
    return path


def _train(tmp_path, table, *extra) -> list[str]:
    """A 8-wide, 1-block, 1-epoch run; a setting of ``extra`` replaces the one here."""
    settings = {"data.path": table, "model.hidden_dim": 8, "model.n_blocks": 1, "training.threads": 1,
                "training.device": "cpu", "training.epochs": 1, "output.results_dir": tmp_path / "run" / "results",
                "output.checkpoint_dir": tmp_path / "run" / "checkpoints"}
    given = {item.split("=", 1)[0] for item in extra if "=" in item}
    argv = ["train", "--config", str(MODEL)]
    for key, value in settings.items():
        if key not in given:
            argv += ["--set", f"{key}={value}"]
    return argv + list(extra)


def test_preprocess_notes_rows_that_repeat_an_earlier_state(tmp_path, capsys):
    """A database of the 32 runs and its first 8 again (two databases merged) was preprocessed without a
    word, and dodo train's split, drawn by row, put 2 of the copies in the validation split beside their
    originals in the training split. Now preprocess says how many rows repeat an earlier row's state."""
    from dodo.training.preprocess import repeated_states

    dup = _emu_rows(tmp_path / "dup.h5", list(range(32)) + list(range(8)))
    out = tmp_path / "pre.h5"
    code, said, _ = run(capsys, ["preprocess", "--config", str(REPO / "training" / "configs" / "pre_process_qke.yaml"),
                                "--set", f"inputs=[\"{dup}\"]", "-o", str(out), "-q"])
    assert code == 0, said
    assert ("note: 8 rows of the 40 written repeat the initial state (F_init and u, bit for bit) of an earlier row "
            "(row 32 = row 0, row 33 = row 1, row 34 = row 2 and 5 more), all of them with its final state too") in said, said
    assert "keeps a state's rows in one of its train/validation/test splits" in said  # by row until round five
    with h5py.File(out, "r") as handle:
        found = repeated_states(handle)
    assert found == {"rows": list(range(32, 40)), "first": list(range(8)), "copies": 8}
    # The same state run again (another final state) is said as such; a file of distinct states says nothing.
    rerun = _emu_rows(tmp_path / "rerun.h5", [0, 1, 2, 0])
    with h5py.File(rerun, "r+") as handle:
        handle["F4_final(1|ccm)"][3] = handle["F4_final(1|ccm)"][0] * (1 - 1e-6) + handle["F4_initial(1|ccm)"][0] * 1e-6
    code, said, _ = run(capsys, ["preprocess", "--config", str(REPO / "training" / "configs" / "pre_process_qke.yaml"),
                                "--set", f"inputs=[\"{rerun}\"]", "-o", str(tmp_path / "rerun_pre.h5"), "-q"])
    assert code == 0 and "1 row of the 4 written repeat" in said and "none with its final state" in said, said
    _preprocessed(capsys, tmp_path, EMU_32, "all32.h5")  # asserts success
    code, said, _ = run(capsys, ["preprocess", "--config", str(REPO / "training" / "configs" / "pre_process_qke.yaml"),
                                "--set", f"inputs=[\"{EMU_32}\"]", "-o", str(tmp_path / "again.h5"), "-q"])
    assert code == 0 and "repeat" not in said, said


@pytest.mark.parametrize("setting, words", [
    # a torch traceback with C++ frames ("Overflow when unpacking long long")
    ("model.hidden_dim=100000000000000000000000000000", ["model.hidden_dim must be at most 1,048,576"]),
    # built blocks one at a time for ever
    ("model.n_blocks=100000000000000000000000000000", ["model.n_blocks must be at most 1,000"]),
    # "value cannot be converted to type float without overflow", naming no key
    ("training.lr=1e300", ["training.lr must be below 3.403e+38"]),
])
def test_a_number_beyond_what_training_can_take_is_refused_naming_its_key(tmp_path, setting, words):
    """Each accepted by the config's checks before (the outcome of each in the comment above it)."""
    from dodo.training.config import ConfigError, ExperimentConfig

    key, value = setting.split("=")
    section, name = key.split(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as raised:
        ExperimentConfig.load(str(path), create_dirs=False)
    message = str(raised.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_a_target_scale_beyond_float32_names_the_setting_not_the_file(tmp_path, capsys):
    """`data.target_scale: 1e-300`: "26 row(s) with non-finite values ...; dodo preprocess never writes them
    (the file is damaged or was edited)", after a NumPy overflow warning; 1e-10: "non-finite loss at epoch 1,
    step 1 ...; lower training.lr". Now the setting is named, the file is not blamed."""
    table = _preprocessed(capsys, tmp_path, EMU_32, "all32.h5")
    for scale in ("1e-300", "1e-10"):
        line = refused(capsys, _train(tmp_path, table, "--set", f"data.target_scale={scale}"),
                       f"data.target_scale = {float(scale)!r} makes the loss weight N_tot / target_scale of 26 row(s)",
                       "larger than a float32 holds", "'p99'")
        assert "damaged" not in line and "RuntimeWarning" not in line


def test_a_non_finite_loss_names_what_made_it(tmp_path, capsys):
    """"non-finite loss ...; lower training.lr or check the data file" whatever the cause: of finite terms
    whose weighted sum overflowed (loss.w_flux 1e300), at the first step, before any update, and of
    training.weight_decay 1e30 (AdamW's weights multiplied by 1 - 1e27 at the first update)."""
    table = _preprocessed(capsys, tmp_path, EMU_32, "all32.h5")
    line = refused(capsys, _train(tmp_path, table, "--set", "loss.w_flux=1e300"),
                   "non-finite loss at epoch 1, step 1", "every term is finite, their weighted sum is not",
                   "lower the loss weights", "loss.w_flux = 1e+300")
    assert "training.lr" not in line
    line = refused(capsys, _train(tmp_path, table, "--set", "data.target_scale=1e-2", "--overwrite"),
                   "non-finite loss at epoch 1, step 1", "before any update (so not training.lr)",
                   "data.target_scale = 0.01")
    for batch in ("8", "256"):  # a second step's loss, or (one step an epoch) the validation loss, not finite
        refused(capsys, _train(tmp_path, table, "--set", "training.weight_decay=1e30", "--set", f"data.batch_size={batch}",
                               "--overwrite"),
                "training.lr x training.weight_decay = 0.001 x 1e+30", "is 1 or more",
                "lower training.weight_decay or training.lr")


def test_learning_curve_plot_labels_its_sizes_without_overlap(tmp_path, monkeypatch):
    """The curve's log x axis labelled itself with matplotlib's log ticks: for sizes 500 to 8,000 the minor
    labels "3x10^3" and "4x10^3" overlapped, and no label named a size trained. Now the ticks are the sizes,
    labelled as integers, none overlapping (a size too near the one labelled after it is left unlabelled)."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import dodo.training.plots as plots
    from dodo.training.ensemble_train import plot_curve

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
    for sizes in ([500, 1000, 2000, 4000, 8000], [500, 520, 1000, 38935], [300, 400, 500, 600, 700, 800, 900],
                  [10, 12, 14, 16, 18, 22], [22]):
        rows = [{"train_size": size, "cv_model_ci95": [0.004, 0.006], "cv_model": 0.005, "cv_box3d": 0.0065}
                for size in sizes]
        plot_curve(rows, str(tmp_path / "curve.png"))
        fig = drawn.pop()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axis = fig.axes[0].xaxis
        shown = [(tick.label1.get_text(), tick.label1.get_window_extent(renderer))
                 for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                 if tick.label1.get_visible() and tick.label1.get_text()]
        assert [text for text, _ in shown] and all(text.replace(",", "").isdigit() for text, _ in shown), shown
        assert f"{max(sizes):,}" in [text for text, _ in shown]
        boxes = sorted((box.x0, box.x1) for _, box in shown)
        assert all(left[1] < right[0] for left, right in zip(boxes, boxes[1:])), shown


def test_the_advice_of_a_moved_run_directory_keeps_the_runs_own_settings(tmp_path, capsys, monkeypatch):
    """`dodo train --config C --set model.hidden_dim=12` whose directory is moved: the line advised
    `dodo train --config C --resume ...` without the --set, a resume refused ("the network was trained with
    another model section"); a `dodo study` run was told `--config ...`. Now the run's --set items are in the
    advice (training.resume_from and the directories it gives anew left out), and the advice resumes."""
    from cli_helpers import synthetic_preprocessed, tiny_train_config
    from test_probe_open_items_2026_12_07f import _move_after_first_epoch

    table = synthetic_preprocessed(tmp_path, 200)
    tree, moved = tmp_path / "tr", tmp_path / "tr2"
    config = tiny_train_config(tmp_path, table, epochs=3, outputs=tree)
    _move_after_first_epoch(monkeypatch, tree, moved)
    code, _, err = run(capsys, ["train", "--config", str(config), "--set", "model.hidden_dim=12",
                                "--set", f"output.checkpoint_dir={tree / 'ck'}"])
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert (f"move the directory back and run dodo train --config {config} --set model.hidden_dim=12 --set "
            f"output.checkpoint_dir={tree / 'ck'} --resume {tree / 'ck' / 'last.pt'}") in line, line
    monkeypatch.undo()
    advice = line.split("resume it where it is now: dodo train ")[1].split()
    assert advice.count("--set") == 3 and f"output.checkpoint_dir={moved / 'ck'}" in advice, advice
    code, _, err = run(capsys, ["train", *advice])
    assert code == 0, err
    assert (moved / "ck" / "final.pt").is_file()


def test_the_advice_of_a_moved_study_run_names_the_base_config_and_the_runs_overrides(tmp_path, capsys, monkeypatch):
    """A `dodo study` run has no config file: its moved directory's line said `dodo train --config ...`. Now
    the study gives each run's train the base config and the run's overrides for that advice."""
    import dodo.training.train as training
    from cli_helpers import tiny_study_base
    from dodo.training.train import RunDirectories

    base = tiny_study_base(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text(f"base_config: base.yaml\ntag: t\noutput_root: {tmp_path / 'out'}\n"
                    "overrides: {model.activation: relu}\ngrid: {training.lr: [0.002]}\n")
    given = []

    def fake_train(config, echo=print, config_path=None, sets=None):
        given.append((config_path, sets))
        raise FloatingPointError("stands for the run")

    monkeypatch.setattr(training, "train", fake_train)
    code, _, err = run(capsys, ["study", str(grid)])
    run_dir = tmp_path / "out" / "t" / "run_000"
    assert given == [(str(base), ["model.activation=relu", "training.lr=0.002",
                                  f"output.results_dir={run_dir / 'results'}",
                                  f"output.checkpoint_dir={run_dir / 'checkpoints'}", "training.resume_from=null"])], given
    directories = RunDirectories(tmp_path / "out", tmp_path / "out", *given[0])
    assert directories._config("output.checkpoint_dir", "output.results_dir") == \
        f"--config {base} --set model.activation=relu --set training.lr=0.002"
    directories.close()


def test_train_ensemble_whose_directory_moved_says_the_ensemble_was_not_saved(tmp_path, capsys, monkeypatch):
    """Section 118's line for a train-ensemble whose checkpoint directory moved said where it went, not that
    the trained ensemble was saved nowhere (the checkpoint is written once, at the end). Now it says so and
    that the run must be repeated."""
    from test_probe_open_items_2026_12_07f import move_during_the_checkpoint
    from test_probe_training_round3 import ENSEMBLE_DEFAULT, OWN_DATABASE, _label_file

    table = _preprocessed(capsys, tmp_path, EMU_32, "emu.h5")
    labels = _label_file(tmp_path / "labels.h5")
    directory, moved = tmp_path / "ens", tmp_path / "ens2"
    move_during_the_checkpoint(monkeypatch, directory, moved)
    line = refused(capsys, ["train-ensemble", "--config", str(ENSEMBLE_DEFAULT), "--set", f"data.path={table}",
                            *OWN_DATABASE, "--set", f"growth.data=[{str(labels)!r}]",
                            "--set", f"output.checkpoint={directory / 'e.pt'}"],
                   f"its directory {directory} was moved or renamed (it is now {moved})",
                   "the trained ensemble was not saved anywhere", "run dodo train-ensemble again")
    assert not directory.exists() and not (moved / "e.pt").exists(), line


@pytest.mark.parametrize("key", ["ensemble.lr", "ensemble.sigma0", "ensemble.weight_decay", "growth.lr", "noise.weight"])
def test_train_ensemble_takes_an_integer_beyond_64_bits_for_a_number_setting(key):
    """`--set ensemble.lr=100000000000000000000000000000` (a YAML integer above 2^64): a TypeError traceback from
    np.isfinite, "ufunc 'isfinite' not supported for the input types". Now 10^29 is a number like any other
    (finite, as `dodo train` takes it) and 10^400 is refused in one line, its digits cut short."""
    from dodo.training.config import ConfigError
    from dodo.training.ensemble_train import EnsembleConfig
    from test_probe_training_round3 import ENSEMBLE_DEFAULT

    # what each takes beside it: noise.weight needs noise.oof; lr x weight_decay must stay below 1
    needs = {"noise.weight": {"noise.oof": "x.npz"}, "ensemble.lr": {"ensemble.weight_decay": 0},
             "growth.lr": {"ensemble.weight_decay": 0},
             "ensemble.weight_decay": {"ensemble.lr": 1e-35, "growth.lr": 1e-35}}.get(key, {})
    assert EnsembleConfig.load(str(ENSEMBLE_DEFAULT), {key: 10**29, **needs}) is not None
    with pytest.raises(ConfigError) as raised:
        EnsembleConfig.load(str(ENSEMBLE_DEFAULT), {key: 10**400})
    message = str(raised.value)
    assert message.startswith(key) and "must be a finite" in message and len(message) < 200, message


@pytest.mark.parametrize("overrides, words", [
    # "value cannot be converted to type float without overflow", naming no key
    ({"ensemble.lr": 1e300}, ["ensemble.lr must be below 3.403e+38"]),
    ({"growth.lr": 1e300}, ["growth.lr must be below 3.403e+38"]),
    # trained members whose weights AdamW scaled by 1 - 2e27 a step: the package gave Box3D's answer, exit 0
    ({"ensemble.weight_decay": 1e30}, ["ensemble.lr x ensemble.weight_decay must be below 1", "= 2e+27",
                                       "lower ensemble.weight_decay (or ensemble.lr)"]),
    ({"growth.lr": 1e5}, ["growth.lr x ensemble.weight_decay must be below 1"]),
])
def test_train_ensemble_refuses_a_learning_rate_or_weight_decay_training_cannot_take(overrides, words):
    from dodo.training.config import ConfigError
    from dodo.training.ensemble_train import EnsembleConfig
    from test_probe_training_round3 import ENSEMBLE_DEFAULT

    with pytest.raises(ConfigError) as raised:
        EnsembleConfig.load(str(ENSEMBLE_DEFAULT), overrides)
    assert all(word in str(raised.value) for word in words), raised.value


def test_a_checkpoint_of_a_dodo_before_a_model_key_resumes(tmp_path, capsys):
    """A last.pt whose model section lacks a key this version has (batch_norm, as a Dodo before that key wrote
    it) was exported and evaluated with the key's default, but its resume was refused: "model.batch_norm is None
    in the checkpoint and False in the config; cannot resume: give the checkpoint's values". Now resumed as the
    default; a config asking for another value is refused with the --set that matches."""
    import torch
    from dodo.training.train import checkpoint_digest

    table = _preprocessed(capsys, tmp_path, EMU_32, "all32.h5")
    code, _, err = run(capsys, _train(tmp_path, table, "--set", "training.epochs=2", "--set", "training.stop_after_epoch=1"))
    assert code == 0, err
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("last.pt", "best.pt"):
        state = torch.load(checkpoints / name, map_location="cpu", weights_only=False)
        del state["config"]["model"]["batch_norm"]
        state["dodo_version"] = "0.0.9"
        state.pop("sha256")
        state["sha256"] = checkpoint_digest(state)
        torch.save(state, checkpoints / name)
    last = str(checkpoints / "last.pt")
    refused(capsys, _train(tmp_path, table, "--set", "training.epochs=2", "--set", "model.batch_norm=true",
                           "--resume", last), "model.batch_norm is False in the checkpoint and True in the config",
            "--set model.batch_norm=false")
    code, out, err = run(capsys, _train(tmp_path, table, "--set", "training.epochs=2", "--resume", last))
    assert code == 0 and (checkpoints / "final.pt").is_file(), err
    assert "resumed from" in out + err and "another run" not in out + err, out + err
