"""Second outside probe (2026-12-01): implicit inputs are protected like named ones, data inputs
that are FIFOs or directories are refused at once, malformed YAML and absurd resolutions give one
line and exit 2, `dodo score` says what it could not use, and dodo.closure / dodo.Closure /
dodo.box3d take and refuse the same arguments with messages naming them.

The default-model tests point dodo.models at a private copy, so the shipped model is never at risk."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dodo
from cli_helpers import digest, refused, run
from dodo.cli import main

EMU = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
EMU_KEYS = ("F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)")
#: Generous: a refused FIFO answers in the time Python takes to start; a hang never does.
SUBPROCESS_TIMEOUT_S = 300

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


def emu_file(path: Path, rows=slice(None), **replace) -> Path:
    """An Emu-layout file holding ``rows`` of emu_1d_validation.h5, with datasets ``replace``d
    (a value of None leaves that dataset out)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(EMU, "r") as source, h5py.File(path, "w") as target:
        for key in EMU_KEYS:
            value = replace.get(key, source[key][rows])
            if value is not None:
                target[key] = value
    return path


def dodo_subprocess(*arguments, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dodo", *map(str, arguments)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, cwd=cwd)


@pytest.fixture
def private_default_model(tmp_path, monkeypatch) -> Path:
    """dodo's default model redirected to a copy in tmp_path (what the commands must not overwrite)."""
    import dodo.models

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(dodo.models.default_model_path(), models / dodo.models.DEFAULT_MODEL_NAME)
    monkeypatch.setattr(dodo.models, "MODELS_DIR", models)
    copy = dodo.models.default_model_path()
    assert copy.parent == models  # the redirection holds: the shipped file is not the one at stake
    return copy


# -- D1: the implicit default model is an input --------------------------------------------------

@needs_runtime
def test_apply_without_model_refuses_to_write_over_the_default_model(tmp_path, capsys, private_default_model):
    data = emu_file(tmp_path / "one.h5", slice(0, 1))
    before = digest(private_default_model)
    line = refused(capsys, ["apply", str(data), "--grid", "1x1x1", "-q", "-o", str(private_default_model)],
                   private_default_model)
    assert "same file as the input" in line
    assert digest(private_default_model) == before


@needs_runtime
def test_score_default_refuses_to_write_its_json_over_the_default_model(tmp_path, capsys, private_default_model):
    data = emu_file(tmp_path / "one.h5", slice(0, 4))
    before = digest(private_default_model)
    line = refused(capsys, ["score", "default", str(data), "--bootstrap", "100", "--json", str(private_default_model)],
                   private_default_model)
    assert "same file as the input" in line
    assert digest(private_default_model) == before


def test_model_file_names_what_closure_reads():
    from dodo._closure import model_file
    from dodo.models import default_model_path

    assert model_file(None) == str(default_model_path())
    assert model_file("box3d") is None and model_file(b"package bytes") is None
    assert model_file(Path("box3d")) == "./box3d"  # a path object is a file, as for Closure (never the literal)
    assert model_file("m.onnx") == "m.onnx"


def test_train_ensemble_and_learning_curve_refuse_to_write_over_growth_label_files(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    Path("labels_seed1.h5").write_bytes(b"growth labels: refused before reading")
    Path("e.yaml").write_text("data: {path: pool.h5}\ngrowth: {data: ['labels_*.h5'], members: 1}\n"
                              "output: {checkpoint: labels_seed1.h5}\n")
    refused(capsys, ["train-ensemble", "--config", "e.yaml"], "labels_seed1.h5")
    refused(capsys, ["learning-curve", "--config", "e.yaml", "--json", "labels_seed1.h5"], "labels_seed1.h5")
    assert Path("labels_seed1.h5").read_bytes() == b"growth labels: refused before reading"


# -- D4: data inputs that are FIFOs or directories -------------------------------------------------

@pytest.mark.parametrize("command", [["score", "box3d", "{fifo}.h5"],
                                     ["simulate", "out.h5", "--input", "{fifo}.h5", "-q"],
                                     ["simulate", "out.h5", "--input", "{fifo}.yaml", "-q"],
                                     ["apply", "{fifo}.h5", "--grid", "1x1x1"]])
def test_a_fifo_as_data_input_is_refused_at_once(tmp_path, command):
    pytest.importorskip("h5py")
    for suffix in (".h5", ".yaml"):
        os.mkfifo(tmp_path / f"fifo{suffix}")  # no writer: opening it for reading would block for ever
    result = dodo_subprocess(*[part.format(fifo="fifo") for part in command], cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "FIFO" in lines[0] and "not a regular file" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["fifo.h5", "fifo.yaml"]


def test_train_ensemble_refuses_a_fifo_as_its_data(tmp_path):
    pytest.importorskip("torch")
    os.mkfifo(tmp_path / "pool.h5")
    (tmp_path / "e.yaml").write_text("data: {path: pool.h5}\noutput: {checkpoint: out/ensemble.pt}\n")
    result = dodo_subprocess("train-ensemble", "--config", "e.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "pool.h5 is a FIFO" in result.stderr, result.stderr


def test_check_input_file_names_the_kind_of_file(tmp_path):
    from dodo._atomic import InputPathError, check_input_file

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputPathError, match="is a FIFO .*not a regular file; give an HDF5 file"):
        check_input_file(tmp_path / "fifo", "an HDF5 file")
    with pytest.raises(InputPathError, match="is a directory"):
        check_input_file(tmp_path)
    with pytest.raises(InputPathError, match="no such file"):
        check_input_file(tmp_path / "absent.h5")
    (tmp_path / "regular").write_text("")
    check_input_file(tmp_path / "regular")


def test_score_names_a_directory_input_in_one_line(tmp_path, capsys):
    pytest.importorskip("h5py")
    directory = tmp_path / "runs.h5"
    directory.mkdir()
    line = refused(capsys, ["score", "box3d", str(directory)], directory)
    assert "is a directory" in line


# -- D2: malformed YAML --------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{{{{", 'states: !!python/object/apply:os.system ["true"]\n'])
def test_simulate_refuses_malformed_yaml_in_one_line(tmp_path, capsys, text):
    pytest.importorskip("h5py")
    pytest.importorskip("yaml")
    states = tmp_path / "states.yaml"
    states.write_text(text)
    line = refused(capsys, ["simulate", str(tmp_path / "out.h5"), "--input", str(states), "-q"], states)
    assert "not valid YAML" in line
    assert sorted(os.listdir(tmp_path)) == ["states.yaml"]


# -- D3: resolution limits and memory ----------------------------------------------------------------------

@pytest.mark.parametrize("option, limit", [(["--nphi", "100000"], "at most 128"),
                                           (["--nphi", "2000"], "at most 128"),
                                           (["--ncell", "100000000"], "at most 65536")])
def test_simulate_refuses_resolutions_beyond_its_limits_before_any_work(tmp_path, capsys, monkeypatch, option,
                                                                         limit):
    pytest.importorskip("h5py")
    import dodo.qke.campaign as campaign

    def no_work(*args, **kwargs):
        raise AssertionError("started although the resolution is refused")

    monkeypatch.setattr(campaign, "simulate_states", no_work)
    line = refused(capsys, ["simulate", str(tmp_path / "o.h5"), "--random", "1", "-q", *option])
    assert limit in line
    assert os.listdir(tmp_path) == []


def test_solver_limits_leave_every_documented_resolution_valid():
    from dodo.qke.solver import MAX_NCELL, MAX_NPHI_EQUATOR, SolverConfig

    for ncell, nphi in ((64, 16), (128, 16), (64, 8), (64, 12), (MAX_NCELL, MAX_NPHI_EQUATOR)):
        SolverConfig(ncell=ncell, nphi_equator=nphi).validate()
    for ncell, nphi in ((2 * MAX_NCELL, 16), (64, MAX_NPHI_EQUATOR + 1)):
        with pytest.raises(ValueError, match="must be at most"):
            SolverConfig(ncell=ncell, nphi_equator=nphi).validate()


def test_cost_estimate_needs_no_directions_squared_matrix():
    """relative_cost equals its defining sum over direction pairs, computed without the ndir x ndir
    kernel (1 - v.u): at nphi 200 (14,740 directions) that kernel alone was 1.6 GiB."""
    import tracemalloc

    from dodo.qke import campaign
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.states import NSM1_EMU_1D, random_crossing_states

    states = np.concatenate([NSM1_EMU_1D[None], random_crossing_states(5, np.random.default_rng(2))])
    directions = uniform_sphere(12)
    per_direction = campaign.species_direction_densities(states, directions).reshape(len(states), 2, 3, -1)
    traceless = np.sqrt(np.sum((per_direction - per_direction.mean(axis=2, keepdims=True)) ** 2, axis=2))
    kernel = 1.0 - directions @ directions.T
    bound = ((traceless[:, 0] + traceless[:, 1]) @ kernel.T).max(axis=1)
    np.testing.assert_allclose(campaign.relative_cost(states, directions, np.ones(len(states))), bound, rtol=1e-12)

    many = uniform_sphere(64)  # 1,506 directions: an ndir x ndir float64 matrix is 18 MB
    tracemalloc.start()
    try:
        campaign.relative_cost(states, many, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(many) ** 2 * 8 / 4, f"peak {peak / 1e6:.1f} MB"


def test_simulate_turns_running_out_of_memory_into_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("h5py")
    import dodo.qke.campaign as campaign

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.6 PiB for an array")

    monkeypatch.setattr(campaign, "simulate_states", out_of_memory)
    line = refused(capsys, ["simulate", str(tmp_path / "o.h5"), "--random", "1", "--ncell", "16", "--nphi", "8",
                            "-q"])
    assert "out of memory" in line and "--nphi" in line


# -- D8: dodo score says what it could not use ----------------------------------------------------------------

def test_score_notes_a_growth_rate_of_the_wrong_length(tmp_path, capsys):
    import h5py

    with h5py.File(EMU, "r") as source:
        growth = source["growthRate(1|s)"][:5]
    data = emu_file(tmp_path / "g.h5", **{"growthRate(1|s)": growth})
    code, out, _ = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100", "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert "note:" in out and "growthRate(1|s) has 5 values for 32 states" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert any("5 values for 32 states" in note for note in report["notes"]) and "growth_rate" not in report


def test_score_reports_no_usable_measured_rates_as_such(tmp_path, capsys):
    import h5py

    with h5py.File(EMU, "r") as source:
        zeros = np.zeros_like(source["growthRate(1|s)"][()])
    data = emu_file(tmp_path / "z.h5", **{"growthRate(1|s)": zeros})
    code, out, _ = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100", "--json", str(tmp_path / "r.json")])
    assert code == 0 and "no usable measured rates" in out
    assert "nan" not in out.lower() and "inf" not in out.lower()
    growth = json.loads((tmp_path / "r.json").read_text())["growth_rate"]
    assert growth["n_states"] == 0
    for name in ("model", "box3d_proxy"):
        assert set(growth[name].values()) == {None}, growth[name]


def test_score_says_f4_lengths_differ(tmp_path, capsys):
    import h5py

    with h5py.File(EMU, "r") as source:
        final = source["F4_final(1|ccm)"][:10]
    data = emu_file(tmp_path / "l.h5", **{"F4_final(1|ccm)": final})
    line = refused(capsys, ["score", "box3d", str(data), "--bootstrap", "100"], data)
    assert "F4_initial(1|ccm) holds 32 states and F4_final(1|ccm) 10" in line and "must be [n" not in line


def test_score_names_the_file_and_dataset_of_text_growth_rates(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    text = np.array([b"fast"] * 32, dtype=h5py.string_dtype())
    data = emu_file(tmp_path / "s.h5", **{"growthRate(1|s)": text})
    line = refused(capsys, ["score", "box3d", str(data), "--bootstrap", "100"], data, "growthRate(1|s)")
    assert "must hold numbers" in line


# -- D5, D7: the Python API's model and option arguments ---------------------------------------------------------

@needs_runtime
def test_closure_takes_every_in_memory_package_that_closure_class_takes():
    from dodo.models import default_model_path

    data = default_model_path().read_bytes()
    F = np.zeros((2, 6, 4))
    F[:, :, 0] = 1e33
    F[:, 0, 3], F[:, 3, 3] = 0.5e33, -0.5e33
    expected = dodo.Closure(data, threads=1)(F)
    for package in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(dodo.closure(F, None, model=package), expected)
    with pytest.raises(RuntimeError, match="DODO_ERROR_MODEL_FORMAT"):  # bytes are contents, never a path
        dodo.closure(F, model=os.fsencode(default_model_path()))


@needs_runtime
@pytest.mark.parametrize("option", ["device", "evaluator", "z_method", "max_flux_factor"])
def test_closure_options_of_the_wrong_type_are_value_errors_naming_them(option):
    bad = {"device": None, "evaluator": None, "z_method": 3, "max_flux_factor": "high"}[option]
    with pytest.raises(ValueError, match=f"^{option} must be"):
        dodo.Closure("box3d", **{option: bad})


@pytest.mark.parametrize("bad", [None, "0.9", True])
def test_box3d_max_flux_factor_of_the_wrong_type_is_named(bad):
    from test_cli_errors import assert_box3d_refuses

    assert_box3d_refuses("^max_flux_factor must be a real number", max_flux_factor=bad)


# == Third outside probe (2026-12-01): training consistency and one-line refusals ================

#: A small ensemble recipe: seconds on one core (the probe's sizes).
SMALL_ENSEMBLE = {"data": {"holdout": [], "features": "invariants27+box7+eln18-v1"},
                  "ensemble": {"members": 2, "width": 8, "depth": 1, "steps": 20, "threads": 1},
                  "distill": {"width": 8, "depth": 1, "steps": 20}}


def _preprocessed(root: Path, n: int, seed: int, **box3d) -> Path:
    """dodo synth (n cells) -> dodo preprocess with Box3D settings ``box3d``; the preprocessed path."""
    root.mkdir(parents=True, exist_ok=True)
    assert main(["synth", "-o", str(root / "syn.h5"), "-n", str(n), "--seed", str(seed), "-q"]) == 0
    settings = "".join(f"\n  {key}: {value}" for key, value in box3d.items())
    (root / "pre.yaml").write_text(f"inputs: [{root / 'syn.h5'}]\noutput: {root / 'pre.h5'}\n"
                                   + (f"box3d:{settings}\n" if box3d else ""))
    assert main(["preprocess", "--config", str(root / "pre.yaml"), "-q"]) == 0
    return root / "pre.h5"


def _ensemble_config(path: Path, data: Path, checkpoint: Path, **sections) -> Path:
    config = json.loads(json.dumps(SMALL_ENSEMBLE))
    config["data"]["path"] = str(data)
    config["output"] = {"checkpoint": str(checkpoint)}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A preprocessed file of ~200 synthetic cells at the default Box3D settings."""
    return _preprocessed(tmp_path_factory.mktemp("small"), 200, 3)


# -- 1: the crossing inputs are computed at the data's Box3D settings -------------------------------

@needs_runtime
def test_ensemble_crossing_inputs_follow_the_files_box3d_settings_and_export_self_tests(tmp_path, capsys):
    from dodo.training import ensemble_train as et
    from dodo.training.features import INVARIANTS_BOX_AND_CROSSING

    data = _preprocessed(tmp_path / "d", 120, 1, lebedev_order=41)
    table = et.load_table(str(data))
    rows = np.arange(len(table["r"]))
    X = et.features_of(table, rows, INVARIANTS_BOX_AND_CROSSING)
    F_rest = table["rest"]["F_init_rest"]
    at_41 = np.nan_to_num(dodo.crossing_features(F_rest, lebedev_order=41), nan=0.0)
    np.testing.assert_array_equal(X[:, 34:], at_41)
    assert np.abs(at_41 - np.nan_to_num(dodo.crossing_features(F_rest), nan=0.0)).max() > 1e-6  # order matters

    checkpoint = tmp_path / "e41.pt"
    config = _ensemble_config(tmp_path / "e.yaml", data, checkpoint)
    assert run(capsys, ["train-ensemble", "--config", str(config)])[0] == 0
    package = tmp_path / "e41.onnx"
    code, _, err = run(capsys, ["export", str(checkpoint), "-o", str(package)])
    assert code == 0, err  # before: the self-test failed (order-17 training inputs, order-41 runtime)
    closure = dodo.Closure(str(package))  # loading runs the embedded self-test at the package's settings
    assert closure.box3d_settings["lebedev_order"] == 41

    # The commands of `dodo train` checkpoints say which one handles an ensemble checkpoint.
    refused(capsys, ["evaluate", str(checkpoint)], "train-ensemble", "dodo export")


# -- 2: evaluate / inspect check the training file's checksum, as --resume does ---------------------

def test_evaluate_and_inspect_refuse_a_changed_training_file(tmp_path, capsys, small_data):
    from training_helpers import train

    data = tmp_path / "data.h5"
    shutil.copy(small_data, data)
    checkpoints = train(tmp_path, data, "run")
    capsys.readouterr()
    assert run(capsys, ["evaluate", str(checkpoints / "best.pt")])[0] == 0  # unchanged: fine
    other = _preprocessed(tmp_path / "other", 150, 9)
    shutil.copy(other, data)  # the same path now holds other rows
    for command in ("evaluate", "inspect"):
        line = refused(capsys, [command, str(checkpoints / "best.pt")], "best.pt", "checksum differs", str(data))
        assert f"cannot {command}" in line and "--data" in line
    assert run(capsys, ["evaluate", str(checkpoints / "best.pt"), "--data", str(data), "--split", "all"])[0] == 0


# -- 3, 9: data.max_samples and an empty test split are refused at config validation ----------------

@pytest.mark.parametrize("setting, key", [("data.max_samples=-5", "data.max_samples"),
                                          ("data.max_samples=0", "data.max_samples"),
                                          ("data.max_samples=2.5", "data.max_samples"),
                                          ("data.val_fraction=0.2", "data.train_fraction + data.val_fraction")])
def test_train_refuses_bad_sample_counts_and_an_empty_test_split(tmp_path, capsys, setting, key):
    from training_helpers import write_training_config

    config = write_training_config(tmp_path / "c.yaml", tmp_path / "absent.h5", tmp_path / "out",
                                   data={"train_fraction": 0.8})
    refused(capsys, ["train", "--config", str(config), "--set", setting], key)


def test_train_refuses_a_test_split_left_empty_by_rounding(tmp_path, capsys, small_data):
    """Fractions that leave no test row of this file: refused, never the validation split reported as test."""
    from training_helpers import write_training_config

    config = write_training_config(tmp_path / "c.yaml", small_data, tmp_path / "out",
                                   data={"train_fraction": 0.9, "val_fraction": 0.0999})
    refused(capsys, ["train", "--config", str(config)], "the test split is empty")


# -- 4: dodo apply --grid counts cells with exact integers -------------------------------------------

@needs_runtime
@pytest.mark.parametrize("grid, count", [("4294967296x4294967296x1", "18446744073709551616"),
                                         ("99999999x99999999x99999999", "999999970000000299999999")])
def test_apply_refuses_a_grid_beyond_int64_with_its_exact_count(capsys, grid, count):
    refused(capsys, ["apply", str(EMU), "--model", "box3d", "--grid", grid], str(EMU), count)


# -- 5: --set values that are not YAML --------------------------------------------------------------

@pytest.mark.parametrize("command, item", [("train", "model.head=*x*"), ("train-ensemble", "data.holdout=*syn*"),
                                           ("preprocess", "output=[x")])
def test_set_with_a_value_that_is_not_yaml_is_one_line(tmp_path, capsys, command, item):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    line = refused(capsys, [command, "--config", str(config), "--set", item], item, "not valid YAML")
    assert "quote" in line


def test_set_values_quoted_as_yaml_are_strings():
    from dodo.training.cli import _overrides

    assert _overrides(['data.holdout=["*syn*"]', 'model.head="*x*"']) == {"data.holdout": ["*syn*"],
                                                                         "model.head": "*x*"}


# -- 6, 7: train-ensemble and learning-curve: wrong files and arguments -----------------------------

@pytest.mark.parametrize("command", ["train-ensemble", "learning-curve"])
def test_ensemble_commands_refuse_an_emu_file_as_preprocessed_data(tmp_path, capsys, command):
    config = _ensemble_config(tmp_path / "e.yaml", EMU, tmp_path / "x.pt")
    extra = ["--sizes", "10", "--folds", "2"] if command == "learning-curve" else []
    refused(capsys, [command, "--config", str(config), *extra], str(EMU), "not a Dodo preprocessed file",
            "dodo preprocess")


def test_learning_curve_refusals_are_one_line(tmp_path, capsys, small_data):
    config = _ensemble_config(tmp_path / "e.yaml", small_data, tmp_path / "x.pt")
    curve = ["learning-curve", "--config", str(config), "--sizes", "10", "--folds", "2"]
    refused(capsys, [*curve, "--emu", str(small_data)], str(small_data), "F4_initial")  # not an Emu file
    refused(capsys, [*curve, "--set", 'data.holdout=["*"]'], "no training rows: every row matches a holdout pattern")
    for members in ("0", "-1"):
        refused(capsys, [*curve, "--members", members], "--members must be a positive integer")
    h5py = pytest.importorskip("h5py")
    with h5py.File(EMU, "r") as source:
        F = source["F4_initial(1|ccm)"][:4].copy()
    F[1] = np.nan
    nan_file = emu_file(tmp_path / "nan_emu.h5", slice(0, 4), **{"F4_initial(1|ccm)": F})
    line = refused(capsys, [*curve, "--emu", str(nan_file)], str(nan_file), "rows [1]")
    assert "preprocessed" not in line


# -- 8: too few training states; non-finite graph outputs are named as such -------------------------

def test_train_ensemble_refuses_a_single_training_state(tmp_path, capsys):
    from dodo.training.ensemble_train import MIN_TRAINING_STATES

    data = _preprocessed(tmp_path / "d", 1, 1)
    config = _ensemble_config(tmp_path / "e.yaml", data, tmp_path / "one.pt")
    refused(capsys, ["train-ensemble", "--config", str(config)], "1 training state(s)",
            f"at least {MIN_TRAINING_STATES}")
    assert not (tmp_path / "one.pt").exists()


def test_export_check_reports_non_finite_graph_outputs(tmp_path):
    import torch

    from dodo.training.ensemble import fit_ensemble
    from dodo.training.ensemble_train import _ensemble_onnx_bytes, check_graph_outputs
    from dodo.training.export import ExportError
    from dodo.training.features import INVARIANTS_AND_BOX, OOD_COLUMNS, lab_features
    from dodo.training.synth import random_initial_states

    X = lab_features(INVARIANTS_AND_BOX, random_initial_states(np.random.default_rng(0), 40))
    rng = np.random.default_rng(1)
    ensemble = fit_ensemble(X, rng.normal(size=40) * 1e-3, rng.normal(size=40) * 0.1, members=2, width=8, depth=1,
                            steps=5, ood_columns=OOD_COLUMNS[INVARIANTS_AND_BOX])
    ensemble.features = INVARIANTS_AND_BOX
    with torch.no_grad():
        ensemble.members[0].std.fill_(float("nan"))  # a broken model: NaN everywhere
    with pytest.raises(ExportError, match="not finite"):
        check_graph_outputs(ensemble, _ensemble_onnx_bytes(ensemble), n_random=64)


# -- 10 and minor: file names in messages; validate outside the repository; duplicate inputs --------

def test_plot_names_a_file_that_is_not_json(tmp_path, capsys, small_data):
    bad = tmp_path / "bad.json"
    bad.write_text("[1\n")
    for what, path in (("metrics", bad), ("curve", small_data)):
        refused(capsys, ["plot", what, str(path), "-o", str(tmp_path / "x.png")], str(path), "not a Dodo metrics JSON")


def test_qke_validate_finds_its_reference_outside_the_repository(tmp_path, monkeypatch):
    """An editable install finds the repository's file from any working directory; an installed
    package (as CI installs it) has no tests/ beside it: it finds the file from the repository root
    and elsewhere says to pass --reference, in one error."""
    from dodo.qke import validate

    monkeypatch.chdir(tmp_path)
    if not validate.REPOSITORY_REFERENCE_DIR.is_dir():
        with pytest.raises(FileNotFoundError, match="installed package has no tests/.*--reference"):
            validate.reference_path(None, "emu_1d_validation.h5")
        monkeypatch.chdir(Path(EMU).resolve().parents[3])  # the repository root
    assert Path(validate.reference_path(None, "emu_1d_validation.h5")).samefile(EMU)
    with pytest.raises(FileNotFoundError, match="nope.h5.*--reference"):
        validate.reference_path("nope.h5", "emu_1d_validation.h5")


def test_qke_validate_without_h5py_or_reference_is_one_line(tmp_path, monkeypatch, capsys):
    from dodo.qke import validate

    assert validate.main(["emu32", "--reference", str(tmp_path / "nope.h5")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py fails as on a plain `pip install .`
    assert validate.main(["emu32", "--output", str(tmp_path / "v.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "h5py is not installed" in err
    assert not (tmp_path / "v.h5").exists()


def test_preprocess_reads_a_file_matched_twice_once(tmp_path, capsys):
    once = _preprocessed(tmp_path / "a", 30, 2)
    capsys.readouterr()
    syn = tmp_path / "a" / "syn.h5"
    (tmp_path / "twice.yaml").write_text(f"inputs: ['{tmp_path / 'a'}/syn*.h5', '{syn}']\n"
                                         f"output: {tmp_path / 'twice.h5'}\n")
    code, out, _ = run(capsys, ["preprocess", "--config", str(tmp_path / "twice.yaml"), "-q"])
    assert code == 0 and "matched more than once" in out
    h5py = pytest.importorskip("h5py")
    with h5py.File(once, "r") as a, h5py.File(tmp_path / "twice.h5", "r") as b:
        assert b["F_init"].shape == a["F_init"].shape


def test_simulate_names_a_two_flavour_input_file(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["F4_initial(1|ccm)"] = np.ones((3, 4, 2, 2))
    from dodo.qke.states import read_states

    with pytest.raises(ValueError, match="two.h5.*three flavours"):
        read_states(str(path))


# -- 3: the gate factor without retraining (tools/regate_checkpoint.py) ------------------------------

def test_regating_a_checkpoint_equals_training_with_that_factor(tmp_path, capsys, small_data):
    """The Wiener gate does not enter training, so a checkpoint regated to c is the checkpoint that
    train-ensemble makes with c in its config (training/models/README.md relies on it); the tool
    refuses another table and its own input as output."""
    torch = pytest.importorskip("torch")
    tool = Path(__file__).resolve().parents[2] / "tools" / "regate_checkpoint.py"
    trained = {}
    for factor in (1.5, 3.0):
        checkpoint = tmp_path / f"c{factor}.pt"
        config = _ensemble_config(tmp_path / f"e{factor}.yaml", small_data, checkpoint,
                                  ensemble={"error_per_spread": factor})
        assert run(capsys, ["train-ensemble", "--config", str(config)])[0] == 0
        trained[factor] = checkpoint
    regated = tmp_path / "regated.pt"
    result = subprocess.run([sys.executable, str(tool), str(trained[1.5]), "3", "--table", str(small_data),
                             "-o", str(regated)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    a = torch.load(regated, map_location="cpu", weights_only=False)
    b = torch.load(trained[3.0], map_location="cpu", weights_only=False)
    assert a["config"]["error_per_spread"] == 3.0 and float(a["state_dict"]["error_per_spread"]) == 3.0
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key

    other = _preprocessed(tmp_path / "other", 120, 7)
    for args, message in ((["3", "--table", str(other), "-o", str(tmp_path / "x.pt")], "not the table"),
                          (["3", "--table", str(small_data), "-o", str(trained[1.5])], "same file as the input"),
                          (["0", "--table", str(small_data), "-o", str(tmp_path / "x.pt")], "finite number > 0")):
        result = subprocess.run([sys.executable, str(tool), str(trained[1.5]), *args], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "x.pt").exists()
