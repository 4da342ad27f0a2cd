"""Outside probe, round 38 (docs/reliability_python.md section 41).

Each test failed on the code before its fix (its docstring says what that code did), except those
marked as guards. The round's findings: `dodo plot curve` of a metrics JSON whose parity data hold
a null (strict JSON's non-finite number) or lists of unequal length wrote the curve and then failed
(a TypeError traceback; matplotlib's words); a gate study's out-of-fold file (`noise.oof`) holding a
NaN residual or strings was read into the label-noise fit (a NaN member, every gate NaN) or failed
without naming the file; `dodo study` rerun over a summary.json whose rows have no (or a
non-numeric) `best_val_loss` stopped with a traceback after its first new run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run

EMU = Path(__file__).resolve().parents[2] / "tests" / "data" / "qke" / "emu_1d_validation.h5"


def _metrics_json(path, parity: dict):
    """A metrics JSON of the shape `dodo train` writes (two epochs), with ``parity`` as given."""
    path.write_text(json.dumps({
        "history": {"train": [{"total": 1.0}, {"total": 0.5}], "val": [{"total": 1.0}, {"total": None}]},
        "metric_table": {"box3d": {"mean_abs_dn_over_ntot_all": 0.01}, "model": {"mean_abs_dn_over_ntot_all": 0.005}},
        "best_val_loss": 0.5, "test_loss": {"total": 0.6}, "parity": parity}, allow_nan=False))
    return path


_ROWS = [[0.1, 0.2, 0.3, 0.1, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2, 0.2], [0.3, 0.1, 0.1, 0.3, 0.1, 0.1]]


@pytest.mark.parametrize("nulls", ["one", "a_whole_species"])
def test_plot_curve_draws_parity_data_holding_null(tmp_path, capsys, nulls):
    """Before: `TypeError: '<=' not supported between instances of 'NoneType' and 'float'` (a
    traceback, exit 1) after curve.png was written: load_metrics reads null as NaN (a gap, as the
    loss curves draw it), plot_curve read the lists without a dtype (an object array)."""
    pytest.importorskip("matplotlib")
    n_true = [list(row) for row in _ROWS]
    for row in (n_true[:1] if nulls == "one" else n_true):
        row[5] = None
    metrics = _metrics_json(tmp_path / "m.json", {"n_true": n_true, "n_box3d": _ROWS, "n_model": _ROWS})
    code, out, err = run(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "curve.png")])
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "curve.png").stat().st_size and (tmp_path / "curve_parity.png").stat().st_size
    assert "curve_parity.png" in out


def test_plot_curve_refuses_parity_lists_of_other_lengths_before_drawing(tmp_path, capsys):
    """Before: `dodo plot: error: x and y must be the same size` (matplotlib's words, no file or
    key named), after curve.png had been written; load_metrics's docstring says the parity data are
    checked before anything is drawn."""
    metrics = _metrics_json(tmp_path / "m.json", {"n_true": _ROWS[:2], "n_box3d": _ROWS[:2], "n_model": _ROWS})
    code, _, err = run(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "curve.png")])
    assert code == 2 and "Traceback" not in err, err
    assert "m.json" in err and "must hold the same cells" in err and "2, 2, 3 rows" in err
    assert not (tmp_path / "curve.png").exists() and not (tmp_path / "curve_parity.png").exists()


def _pool_and_config(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("h5py")
    from test_label_noise import _pool_table

    from dodo.training.ensemble_train import EnsembleConfig

    config = EnsembleConfig(members=2, width=8, steps=20, error_per_spread=2.5, noise_oof=str(tmp_path / "oof.npz"),
                            noise_weight=1.0, noise_width=8, noise_epochs=2, noise_batch_size=32, mirror=False)
    return _pool_table(), config


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_an_out_of_fold_file_with_a_non_finite_residual_is_refused_before_any_fit(tmp_path, monkeypatch, value):
    """Before: `train_on` fitted the label-noise member on a NaN residual, which made its
    starting bias and loss NaN: the ensemble's label noise, and with it every gate, came out NaN
    without a word (NaN and inf alike). Now refused before the first member is fitted, naming the
    file, the array and the state."""
    from test_label_noise import _out_of_fold_file

    from dodo.training import ensemble_train
    from dodo.training.ensemble_train import train_on

    table, config = _pool_and_config(tmp_path)
    path = tmp_path / "oof.npz"
    rows = _out_of_fold_file(path, table, config, 3)
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["r"] = arrays["r"].copy()
    arrays["r"][7] = value
    np.savez(path, **arrays)
    assert len(rows) == 60

    def no_fit(*args, **kwargs):
        raise AssertionError("a member was fitted")

    monkeypatch.setattr(ensemble_train, "fit_ensemble", no_fit)
    with pytest.raises(ValueError, match=r"noise.oof: .*oof.npz: its r \(.*\) is not finite at 1 of 60 states "
                                         r"\(the first at state 7\)"):
        train_on(table, np.arange(60), config)


def test_an_out_of_fold_file_of_strings_is_named(tmp_path):
    """Before: `could not convert string to float: 'abc'` (NumPy's words, naming no file); numeric
    strings were even read as numbers."""
    from dodo.training.label_noise import read_out_of_fold

    path = tmp_path / "oof.npz"
    n = 4
    np.savez(path, delta_box=np.zeros(n), delta_true=np.zeros(n), r=np.array(["abc"] * n), sigma=np.ones(n),
             d2=np.zeros(n), emu=np.ones(n, bool))
    with pytest.raises(ValueError, match=r"noise.oof: .*oof.npz is not a gate study's out-of-fold file .*its r "
                                         r"holds <U3 values, not numbers"):
        read_out_of_fold(str(path))


def test_an_out_of_fold_file_of_finite_numbers_is_still_read(tmp_path):
    """Guard: the gate study's own file (float64 deltas, residuals of zero) is matched as before."""
    from test_label_noise import _out_of_fold_file

    from dodo.training.label_noise import out_of_fold_rows

    table, config = _pool_and_config(tmp_path)
    rows = _out_of_fold_file(tmp_path / "oof.npz", table, config, 3)
    found, residual = out_of_fold_rows(config.noise_oof, table, config)
    np.testing.assert_array_equal(found, rows)
    assert np.isfinite(residual).all()


@pytest.mark.parametrize("earlier_row", [{"run": "run_000"}, {"run": "run_000", "best_val_loss": "n/a"}])
def test_a_study_rerun_over_summary_rows_without_a_loss_runs_its_grid(tmp_path, capsys, earlier_row):
    """Before: the first new run trained, its row was written to summary.json, and then
    format_summary's sort raised `KeyError: 'best_val_loss'` (a `TypeError` for the string): a
    traceback, summary.txt not rewritten, the grid's other runs never started. The earlier summary
    passed the study's own check (a list of rows, each with its run)."""
    pytest.importorskip("torch")
    from cli_helpers import synthetic_preprocessed, tiny_study_base

    synthetic_preprocessed(tmp_path, cells=200)
    tiny_study_base(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: base.yaml\ntag: s\noutput_root: {tmp_path / 'studies'}\n"
                    "grid: {training.lr: [1.0e-3, 2.0e-3]}\n")
    study = tmp_path / "studies" / "s"
    (study / "run_000").mkdir(parents=True)  # the earlier study's run
    (study / "summary.json").write_text(json.dumps([earlier_row]))
    code, _, err = run(capsys, ["study", str(grid)])
    assert code == 0 and "Traceback" not in err, err
    rows = json.loads((study / "summary.json").read_text())
    assert [row["run"] for row in rows] == ["run_000", "run_001", "run_002"]
    assert [row.get("status") for row in rows[1:]] == ["completed", "completed"]
    text = (study / "summary.txt").read_text().splitlines()
    assert text[-1].split()[0] == "run_000"  # the row without a numeric loss last


@pytest.mark.parametrize("argv", [
    ["score", "box3d", str(EMU), "--bootstrap", "100", "--json"],
    ["plot", "metrics", "METRICS", "-o"],
])
def test_a_report_never_replaces_a_numpy_array_file(tmp_path, capsys, argv):
    """Before: `dodo score ... --json scale.npy --overwrite` (and `dodo plot -o F --overwrite`, F an
    .npy named without its suffix) replaced a NumPy array file (np.save: the study tools' --save and
    caches) with the report, exit 0, where an .npz (a zip), an HDF5 file, a checkpoint or a model
    package is refused whatever --overwrite says (a report never replaces data)."""
    from cli_helpers import digest

    target = tmp_path / ("scale.npy" if argv[0] == "score" else "scale")
    with open(target, "wb") as handle:
        np.save(handle, np.arange(12.0))
    before = digest(target)
    metrics = _metrics_json(tmp_path / "m.json", {"n_true": [], "n_box3d": [], "n_model": []})
    argv = [str(metrics) if arg == "METRICS" else arg for arg in argv]
    code, _, err = run(capsys, [*argv, str(target), "--overwrite"])
    assert code == 2 and "Traceback" not in err, err
    assert "is a NumPy array file (.npy)" in err and "does not write a report over it" in err
    assert digest(target) == before


def test_outputs_name_a_numpy_array_file_in_the_way(tmp_path, capsys):
    """Before: `dodo apply -o scale.npy` said `is a file of another kind (neither HDF5, a checkpoint
    nor a model package)`; now it says what the file is (still replaced with --overwrite, as any
    file that is not a report's)."""
    target = tmp_path / "scale.npy"
    np.save(target, np.arange(12.0))
    code, _, err = run(capsys, ["apply", str(EMU), "--grid", "2x2x2", "-q", "-o", str(target)])
    assert code == 2 and "is a NumPy array file (.npy), not a cell file of dodo apply -o" in err, err


def test_learning_curve_emu_given_as_an_empty_path_is_a_usage_error(capsys, ensemble_run):
    """Before: `dodo learning-curve --config C --emu "$EMU"` with EMU unset ran the whole
    cross-validation and wrote its table without the Emu scores, exit 0: `--emu ''` was taken for
    no --emu (round 23 made an empty input path a usage error for the other commands' options)."""
    argv = ["learning-curve", "--config", str(ensemble_run["config"]), "--sizes", "10", "--folds", "2",
            "--emu", "", "--json", "-"]
    code, out, err = run(capsys, argv)
    assert code == 2 and "argument --emu: empty path" in err and out == "", (code, err)


@pytest.mark.parametrize("argv", [
    ["train-ensemble", "--config", ""],
    ["learning-curve", "--config", ""],
    ["evaluate", ""],
    ["inspect", ""],
    ["export", "", "-o", "OUT"],
    ["study", ""],
    ["plot", "metrics", "", "-o", "OUT"],
    ["score", "default", str(EMU), ""],
    ["apply", ""],
    ["simulate", "OUT", "--random", "1", "--family", "emu", "--select-by", ""],
])
def test_an_empty_input_path_is_a_usage_error_for_every_command(tmp_path, capsys, argv):
    """Before: `. is a directory, not a regular file; give ...` (the empty path read as the current
    directory: evaluate, inspect, export, study, plot, train-ensemble, learning-curve) or `cannot read :
    no such file` (score, apply; simulate's `--select-by : no such model file`). Now argparse's usage
    error naming the argument, as for the
    options since round 23 (`test_probe_round23.test_an_empty_input_path_is_a_usage_error`)."""
    argv = [str(tmp_path / ("out.h5" if argv[0] == "simulate" else "out.onnx")) if arg == "OUT" else arg for arg in argv]
    code, _, err = run(capsys, argv)
    assert code == 2 and "empty path (an unset shell variable?)" in err and "is a directory" not in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("which", ["nsm1", "emu32"])
def test_validate_reference_given_as_an_empty_path_is_a_usage_error(tmp_path, capsys, which):
    """Before: `python -m dodo.qke.validate nsm1 --reference ''`: `. is a directory, not a regular
    file; give the Emu reference file emu_nsm1_1d.h5`."""
    from dodo.qke.validate import main

    extra = ["--output", str(tmp_path / "v.h5")] if which == "emu32" else []
    try:
        code = main([which, "--reference", "", *extra])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "argument --reference: empty path" in err and "is a directory" not in err, err


@pytest.mark.parametrize("count", [1, 2])
def test_export_embeds_as_many_test_vectors_as_asked(tmp_path, capsys, ensemble_run, count):
    """Before: `dodo export CKPT --test-vectors 1` embedded 13 test vectors (two cells at rest, then
    the moving ones sliced [:1 - 2], i.e. all but the last); 2 and more gave their count (guard)."""
    import dodo

    output = tmp_path / "m.onnx"
    code, out, err = run(capsys, ["export", str(ensemble_run["checkpoint"]), "-o", str(output),
                                  "--test-vectors", str(count)])
    assert code == 0, err
    vectors = json.loads(dodo.Closure(str(output)).metadata["dodo.test_vectors"])
    # The drawn vectors, then the probe cells of the gate and Box3D settings (probe_vectors.py).
    drawn, probes = map(int, re.search(r"test vectors: (\d+) drawn \+ (\d+) probes", out).groups())
    assert drawn == count
    assert len(vectors["F_init"]) == len(vectors["u"]) == len(vectors["F_pred"]) == count + probes
    assert sum(u[0] == 1.0 for u in vectors["u"][:count]) == min(count, 2)  # the cells at rest come first


def test_learning_curve_keeps_its_table_when_the_plot_cannot_be_written(tmp_path, capsys, monkeypatch, ensemble_run):
    """Before: the plot was written first; one that failed (here a full disk, as ENOSPC; a directory
    without write permission alike) ended the command before the JSON table of the finished
    cross-validation was written: the rows were lost but for the lines printed on the way."""
    import errno

    from dodo.training import ensemble_train

    def full_disk(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ensemble_train, "plot_curve", full_disk)
    table = tmp_path / "curve.json"
    code, _, err = run(capsys, ["learning-curve", "--config", str(ensemble_run["config"]), "--sizes", "10",
                                "--folds", "2", "--json", str(table), "--plot", str(tmp_path / "curve.png")])
    assert code == 2 and "No space left on device" in err and "Traceback" not in err, err
    report = json.loads(table.read_text())
    assert report["dodo_report"] == "dodo learning-curve" and [row["train_size"] for row in report["rows"]] == [10]


def _laughs(depth: int, indent: str = "  ") -> str:
    """YAML lines of anchors j0..jDEPTH, each a mapping that aliases the one before twice (2^DEPTH leaves)."""
    return f"{indent}j0: &j0 {{x: 1, y: 1}}\n" + "".join(
        f"{indent}j{i}: &j{i} {{x: *j{i - 1}, y: *j{i - 1}}}\n" for i in range(1, depth + 1))


def test_a_billion_laughs_yaml_document_is_refused_by_the_reader():
    """Before: dodo's YAML reader (every config, study grid, --set value and states file) loaded it
    without a word: PyYAML shares aliased objects, so the load is cheap, and what walks the values
    afterwards is not."""
    import yaml

    from dodo import _yaml

    with pytest.raises(yaml.YAMLError, match=r"the value of root\.j17 stands for more than 1,048,5\d\d values through "
                                             r"its aliases \(\*name\), the whole document holding"):
        _yaml.safe_load("root:\n" + _laughs(40))


def test_yaml_aliases_within_reason_still_load():
    """Guard: merge keys, a mapping aliased a few times, a recursive alias, a long document
    without aliases: read as before."""
    from dodo import _yaml

    loaded = _yaml.safe_load("base: &b {a: 1, b: 2}\nx: {<<: *b, c: 3}\nz: [*b, *b, *b]\nr: &r [1, *r]\n")
    assert loaded["x"] == {"a": 1, "b": 2, "c": 3} and loaded["z"] == [{"a": 1, "b": 2}] * 3
    assert loaded["r"][1] is loaded["r"]
    assert len(_yaml.safe_load("x: &x [" + ", ".join(["1"] * 100) + "]\nys: [" + ", ".join(["*x"] * 1000) + "]")["ys"]) == 1000
    assert len(_yaml.safe_load("[" + ", ".join(["[1, 2, 3, 4]"] * 20_000) + "]")) == 20_000


def test_a_study_grid_whose_overrides_alias_a_billion_values_is_refused_not_run_for_ever(tmp_path):
    """Before: `dodo study GRID --dry-run` with such `overrides` ran for ever (killed here after 30 s):
    `study._leaves` walked the overrides' 2^39 leaves to check that no key is set twice. In a child
    process; its timeout only detects the hang."""
    import subprocess
    import sys

    grid = tmp_path / "grid.yaml"
    grid.write_text("base_config: base.yaml\ntag: t\noverrides:\n" + _laughs(39) + "grid: {training.lr: [0.001]}\n")
    (tmp_path / "base.yaml").write_text("data: {path: pre.h5}\n")
    try:
        done = subprocess.run([sys.executable, "-m", "dodo", "study", str(grid), "--dry-run"], capture_output=True,
                              text=True, timeout=240, cwd=tmp_path, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("dodo study ran for ever on a billion-laughs grid")
    assert done.returncode == 2 and "grid.yaml: not valid YAML: the value of overrides.j17 stands for" in done.stderr, \
        done.stderr
    assert "Traceback" not in done.stderr


def _ensemble_without_growth_rates(root, holdout: list):
    """ROOT/ens.json: a two-member train-ensemble config on a table preprocessed from two synth files
    (a.h5: 200 states, b.h5: 40) whose growthRate(1|s) was removed (a user's Emu data without rates)."""
    pytest.importorskip("torch")
    h5py = pytest.importorskip("h5py")
    from dodo.cli import main

    for name, seed, count in (("a.h5", 1, 200), ("b.h5", 2, 40)):
        assert main(["synth", str(root / name), "-n", str(count), "--seed", str(seed), "-q"]) == 0
        with h5py.File(root / name, "a") as handle:
            del handle["growthRate(1|s)"]
    (root / "pre.yaml").write_text(f"inputs: [{root / 'a.h5'}, {root / 'b.h5'}]\noutput: {root / 'pre.h5'}\n")
    assert main(["preprocess", "--config", str(root / "pre.yaml"), "-q"]) == 0
    config = root / "ens.json"
    config.write_text(json.dumps({
        "data": {"path": str(root / "pre.h5"), "holdout": holdout, "features": "invariants27+box7+eln18-v1"},
        "ensemble": {"members": 2, "width": 8, "depth": 1, "steps": 20, "threads": 1},
        "distill": {"width": 8, "depth": 1, "steps": 20}, "output": {"checkpoint": str(root / "ens.pt")}}))
    return config


def test_learning_curve_says_no_measured_rates_where_no_state_has_one(tmp_path, capsys):
    """Before: each row's share of growth rates within 10% was NumPy's mean of nothing (two
    RuntimeWarnings on stderr, an error under `-W error` as the suite runs) and read `growth within
    10%: nan%`, for the cross-validation and for an --emu file without rates alike. b.h5 is held out of the
    pool: an --emu file whose states are all pool states is refused since Python round sixty-one."""
    config = _ensemble_without_growth_rates(tmp_path, ["b*"])
    table = tmp_path / "curve.json"
    code, out, err = run(capsys, ["learning-curve", "--config", str(config), "--sizes", "20", "--folds", "2",
                                  "--emu", str(tmp_path / "b.h5"), "--json", str(table)])
    assert code == 0 and "Warning" not in err, err
    assert "growth within 10%: no measured rates" in out and "growth within 10% no measured rates" in out
    assert "nan" not in out
    row = json.loads(table.read_text())["rows"][0]
    assert row["cv_growth_within_10pct"] is None and row["emu_growth_within_10pct"] is None


def test_an_exported_package_holds_strict_json_metrics_when_held_out_states_have_no_growth_rates(tmp_path, capsys):
    """Before: `dodo train-ensemble` with held-out states whose files have no growthRate(1|s) recorded
    their growth ratios' means over no finite value as NaN (NumPy warning "Mean of empty slice" and
    "invalid value encountered in scalar divide" on the way), and `dodo export` wrote the checkpoint's
    metrics with json.dumps' default: the package's `dodo.metrics` held a bare `NaN`, which is not JSON
    (a strict reader, Python's with parse_constant, jq, JavaScript, fails on it). Now null."""
    import dodo
    from dodo.cli import main

    config = _ensemble_without_growth_rates(tmp_path, ["b*"])
    assert main(["train-ensemble", "--config", str(config)]) == 0
    code, _, err = run(capsys, ["export", str(tmp_path / "ens.pt"), "-o", str(tmp_path / "m.onnx")])
    assert code == 0, err

    def not_json(constant):
        raise ValueError(f"{constant} is not JSON")

    metrics = json.loads(dodo.Closure(str(tmp_path / "m.onnx")).metadata["dodo.metrics"], parse_constant=not_json)
    assert metrics["n_heldout"] == 40 and metrics["heldout"]["growth_measured_over_model"] is None
    assert metrics["heldout"]["model"] > 0


def test_package_metadata_writes_a_checkpoints_non_finite_metrics_as_null():
    """Before: a checkpoint whose metrics hold NaN or inf (one written by train-ensemble before this
    round, above) was exported with `"dodo.metrics": "{... NaN ...}"`, not JSON."""
    pytest.importorskip("torch")
    from dodo.training.export import metadata_for

    checkpoint = {"data": {"box3d": {"lebedev_order": 17}, "sha256": "0" * 64, "kind": "test"},
                  "metrics": {"heldout": {"model": 0.01, "growth": float("nan")}, "worst": np.float32("inf")}}

    def not_json(constant):
        raise ValueError(f"{constant} is not JSON")

    metrics = json.loads(metadata_for(checkpoint, "equivariant", {})["dodo.metrics"], parse_constant=not_json)
    assert metrics == {"heldout": {"model": 0.01, "growth": None}, "worst": None}


def test_the_refusal_of_a_complete_database_quotes_its_command_escaped_and_short(tmp_path):
    """Noticed in this round, mended after it: the refusal of a complete `dodo simulate` database
    quoted the file's `command` attribute whole, a terminal's escape sequences and 10,000 characters
    included (an attribute is whatever wrote the file). Now control characters are escapes and the
    text stops at QUOTED_COMMAND_CHARS."""
    h5py = pytest.importorskip("h5py")
    from dodo.qke.cli import QUOTED_COMMAND_CHARS, refuse_complete_database

    path = tmp_path / "done.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["solver"] = "dodo.qke"
        handle.attrs["complete"] = True
        handle.attrs["nstates_valid"] = 3
        handle.attrs["command"] = "dodo simulate done.h5 \x1b[2J\x1b]0;owned\x07 --random 3\n" + "x" * 10_000
    with pytest.raises(ValueError) as refused:
        refuse_complete_database(str(path))
    message = str(refused.value)
    assert "is a complete solver database (3 states, written by `dodo simulate done.h5 \\x1b[2J" in message
    assert "\x1b" not in message and "\x07" not in message and "\n" not in message
    assert len(message) < QUOTED_COMMAND_CHARS + 300 and "..." in message


def test_validate_prints_strict_json_lines_when_a_run_gives_no_number(tiny_nsm1_reference, capsys):
    """Noticed in this round, mended after it: `python -m dodo.qke.validate nsm1` printed each run's
    line with json.dumps' default, so a run too short to give an asymptotic state printed bare
    `NaN`s (its error and densities), which a JSON reader refuses. Now they are null, as in its
    --json file."""
    pytest.importorskip("h5py")
    from dodo.qke import validate

    def refuse_constant(name):
        raise ValueError(f"not JSON: {name}")

    validate.validate_nsm1(reference=str(tiny_nsm1_reference), box3d_cases=None, seeds=[0], flavour_cfl=1.0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines
    run_line = json.loads(lines[0], parse_constant=refuse_constant)
    assert run_line["valid"] is False and run_line["densities_over_ntot"] == [None] * 6
