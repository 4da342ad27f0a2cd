"""Open items of the 2026-12-07 outside probes (new user's journey round two, data-loss round twelve,
Python round sixty, docs truth round four) in the training and solver command line: each test
fails on the code before its fix (docs/reliability_python.md, the section of these items)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import REPO, refused, run

from dodo.cli import build_parser

EMU_32 = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"
ENSEMBLE_DEFAULT = REPO / "training" / "configs" / "ensemble_default.yaml"
SMALL_SOLVER = ["--ncell", "16", "--nphi", "8", "--quiet"]


def _preprocessed(tmp_path: Path, name: str = "mine.h5") -> Path:
    out = tmp_path / name
    code = run_quiet(["preprocess", "--config", str(REPO / "training" / "configs" / "pre_process_qke.yaml"),
                      "--set", f"inputs=[{json.dumps(str(EMU_32))}]", "-o", str(out), "-q"])
    assert code == 0 and out.is_file()
    return out


def run_quiet(argv) -> int:
    from dodo.cli import main

    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_growth_calibration_names_growth_data_and_the_way_on(tmp_path):
    """Item 1: "growth calibration: only 7 ... (need >= 20)" named neither the setting nor the way on."""
    from dodo.training.ensemble_train import growth_calibration

    path = tmp_path / "seven.h5"
    with h5py.File(path, "w") as f:
        f["growthRate(1|s)"] = np.full(7, 2.0)
        f["linear_growthRate_box(1|s)"] = np.full(7, 1.0)
    with pytest.raises(ValueError) as caught:
        growth_calibration([str(path)])
    message = str(caught.value)
    assert "\n" not in message
    for words in ("growth.data", "only 7", "need >= 20", "--set 'growth.data=[]' --set growth.measured=true"):
        assert words in message, message


def test_an_empty_noise_oof_means_none_and_a_missing_one_names_the_setting(tmp_path):
    """Item 2: `--set noise.oof=` (YAML null) was refused "... got None"; a missing file's "cannot read
    PATH: no such file" did not say that PATH was the config's noise.oof."""
    from dodo.training.cli import _overrides
    from dodo.training.ensemble_train import EnsembleConfig
    from dodo.training.label_noise import read_out_of_fold

    config = EnsembleConfig.load(str(ENSEMBLE_DEFAULT), _overrides(["noise.oof=", "noise.weight=0"]))
    assert config.noise_oof == ""
    with pytest.raises(ValueError) as caught:
        read_out_of_fold(str(tmp_path / "gate_oof.npz"))
    message = str(caught.value)
    assert message.startswith("noise.oof: cannot read") and "no such file" in message, message
    assert "--set noise.oof= --set noise.weight=0" in message, message
    with pytest.raises(ValueError) as caught:  # a script's option keeps its own name, without the config's way
        read_out_of_fold(str(tmp_path / "gate_oof.npz"), "--load")
    assert str(caught.value).startswith("--load: cannot read") and "--set" not in str(caught.value)


@pytest.mark.parametrize("command, ensemble", [("evaluate", False), ("inspect", False), ("export", True)])
def test_a_file_that_is_no_checkpoint_is_answered_for_the_command(capsys, tmp_path, command, ensemble):
    """Item 3: `dodo inspect notes.txt` was told to give a train-ensemble checkpoint, which it refuses."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    argv = [command, str(notes)] + (["-o", str(tmp_path / "m.onnx")] if command == "export" else [])
    line = refused(capsys, argv, "not a checkpoint", "a checkpoint of `dodo train`")
    assert ("train-ensemble" in line) is ensemble, line


def test_a_small_preprocessed_file_is_chunked_to_its_rows_and_trains(capsys, tmp_path):
    """Item 4: 32 rows took 17 MB (chunks of 16,384 rows); `dodo train` still reads the file."""
    table = _preprocessed(tmp_path)
    with h5py.File(table, "r") as f:
        assert f["F_init"].shape[0] == 32
        assert all(f[name].chunks[0] <= 32 for name in f if isinstance(f[name], h5py.Dataset) and f[name].chunks)
    assert table.stat().st_size < 1_000_000, table.stat().st_size
    code, _, err = run(capsys, ["train", "--config", str(REPO / "training" / "configs" / "model.yaml"),
                                "--set", f"data.path={table}", "--set", "training.epochs=1",
                                "--set", f"output.checkpoint_dir={tmp_path / 'ck'}",
                                "--set", f"output.results_dir={tmp_path / 'results'}"])
    assert code == 0, err
    assert (tmp_path / "ck" / "final.pt").is_file() or (tmp_path / "ck" / "best.pt").is_file()


def _subparser(name):
    parser = build_parser()
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict) and name in action.choices:
            return action.choices[name]
    raise AssertionError(name)


@pytest.mark.parametrize("command, options", [
    ("synth", ["-n", "--seed", "--max-flux-factor", "--lebedev-order", "--z-method", "--threads",
               "--asymmetric-heavy"]),
    ("export", ["-o", "--test-vectors", "checkpoint"]),
    ("inspect", ["--data", "--start", "--stop", "checkpoint"]),
    ("learning-curve", ["--sizes"]),
    ("simulate", ["--nphi"]),
])
def test_options_have_help_and_their_defaults(command, options):
    """Item 5: these options had no help, or help without the default the code takes."""
    parser = _subparser(command)
    by_name = {name: action for action in parser._actions for name in (action.option_strings or [action.dest])}
    for option in options:
        action = by_name[option]
        assert action.help, f"dodo {command} {option} has no help"
        default = action.default
        if default not in (None, False) and option not in ("--threads",):
            assert f"default {default}" in action.help, (command, option, action.help)
    if command == "synth":
        assert "default: the cores" in by_name["--threads"].help


@pytest.mark.parametrize("command", ["train", "preprocess", "train-ensemble", "learning-curve"])
def test_commands_have_a_description(command):
    """Item 5: their --help had no description line."""
    assert _subparser(command).description


def test_an_ensemble_run_without_held_out_files_says_none(capsys, tmp_path):
    """Item 6: `data.holdout=[]` printed "0 held out ()". The own-database line of
    docs/training.md, as written there."""
    table = _preprocessed(tmp_path)
    code, out, err = run(capsys, [
        "train-ensemble", "--config", str(ENSEMBLE_DEFAULT), "--set", f"data.path={table}",
        "--set", "data.holdout=[]", "--set", "growth.data=[]", "--set", "growth.measured=true",
        "--set", "noise.weight=0", "--set", "noise.oof=\"\"", "--set", "distill.sampled_states=0",
        "--set", f"output.checkpoint={tmp_path / 'ck' / 'ensemble.pt'}",
        "--set", "ensemble.members=2", "--set", "ensemble.epochs=2", "--set", "growth.members=1",
        "--set", "growth.epochs=2", "--set", "distill.epochs=2"])
    assert code == 0, err
    assert "32 training states, none held out" in out, out
    assert "()" not in out


def test_ignore_rotation_with_a_yaml_input_is_refused(capsys, tmp_path):
    """Item 7: a YAML input holds no rotation_R, so --ignore-rotation had no effect, accepted silently
    (as it is refused with --random)."""
    from dodo.qke.states import family_states

    states = family_states("emu", 1, np.random.default_rng(0))
    source = tmp_path / "states.yaml"
    source.write_text(json.dumps({"states": states.tolist()}))
    out = tmp_path / "out.h5"
    refused(capsys, ["simulate", str(out), "--input", str(source), "--ignore-rotation", "--linear-only",
                     *SMALL_SOLVER], "--ignore-rotation", "YAML", "leave it out")
    assert not out.exists()
    assert run(capsys, ["simulate", str(out), "--input", str(source), "--linear-only", *SMALL_SOLVER])[0] == 0


@pytest.mark.parametrize("options, family, limit, heavy_equal", [
    ([], None, 0.8, True),
    (["--three-flavour"], None, 0.8, False),
    (["--max-flux-factor", "0.5"], None, 0.5, True),
    (["--family", "emu"], "emu", 0.9, True),
    (["--family", "merger"], "merger", 0.95, None),
])
def test_random_states_record_what_was_drawn(capsys, tmp_path, options, family, limit, heavy_equal):
    """Item 8: `--random N` without --family recorded "family": "emu" and "max_flux_factor": null,
    though its states were drawn to 0.8, not the emu family's 0.9; --three-flavour "three_flavour"."""
    out = tmp_path / "out.h5"
    code, _, err = run(capsys, ["simulate", str(out), "--random", "2", *options, "--linear-only", *SMALL_SOLVER])
    assert code == 0, err
    with h5py.File(out, "r") as f:
        source = json.loads(f.attrs["source"])
    assert source.get("family") == family and source["max_flux_factor"] == limit, source
    if heavy_equal is not None:
        assert source["heavy_equal"] is heavy_equal, source
