"""Issue 11, items 18-21: the command line answers bad input with one line on stderr and exit
code 2 (never a traceback), refuses bad values instead of running with them, and its commands
agree with each other and with the Python API."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dodo.cli import main


def one_line_error(capsys, argv, code=2) -> str:
    """Run `dodo ARGV` in-process; assert the exit code and a single stderr line, return it."""
    try:
        result = main(argv)
    except SystemExit as exit_:  # argparse refusals
        result = exit_.code
    err = capsys.readouterr().err.strip()
    assert result == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err
    return lines[-1]


def test_simulate_refuses_a_yaml_state_given_as_a_mapping(tmp_path, capsys):
    pytest.importorskip("yaml")
    states = tmp_path / "states.yaml"
    states.write_text("states:\n  - nu_e: [1, 0, 0, 0.5]\n    nubar_e: [1, 0, 0, -0.5]\n")
    line = one_line_error(capsys, ["simulate", str(tmp_path / "out.h5"), "--input", str(states), "--quiet"])
    assert "'states' must be a list of states" in line and not (tmp_path / "out.h5").exists()


@pytest.fixture
def disk_full_after(monkeypatch):
    """Make every HDF5 output's disk fill up after a number of bytes (ENOSPC)."""
    import errno

    import dodo._atomic as atomic

    budget = {"bytes": 0}
    original = atomic.WriteErrorLatch._pwrite

    def pwrite(self, view, offset):  # the disk fills up after budget["bytes"] bytes
        if budget["bytes"] < len(view):
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["bytes"] -= len(view)
        return original(self, view, offset)

    monkeypatch.setattr(atomic.WriteErrorLatch, "_pwrite", pwrite)
    return budget


@pytest.mark.parametrize("budget", [0, 3000, 20_000])
def test_synth_and_simulate_outputs_on_a_full_disk(tmp_path, capsys, disk_full_after, budget):
    """Item 18: a full disk while writing `dodo synth`'s or `dodo simulate`'s HDF5 output gives one
    line and exit 2, leaves an earlier file untouched and no temporary."""
    pytest.importorskip("h5py")
    from dodo.qke.io import write_emu_database

    disk_full_after["bytes"] = budget
    (tmp_path / "old.h5").write_bytes(b"earlier")
    # --overwrite: "earlier" is not a synthetic database, which dodo synth keeps without it (test_output_guard.py)
    line = one_line_error(capsys, ["synth", "-o", str(tmp_path / "old.h5"), "-n", "50", "-q", "--overwrite"])
    assert "No space left on device" in line
    states = np.zeros((2, 6, 4))
    states[:, :, 0] = 1.0
    disk_full_after["bytes"] = min(budget, 2000)  # this small database takes about 10 kB
    with pytest.raises(OSError, match="No space left on device"):
        write_emu_database(str(tmp_path / "old.h5"), {"initial": states, "final": states, "final_stddev": states,
                                                      "growth_rate": np.ones(2)}, {"solver": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["old.h5"] and (tmp_path / "old.h5").read_bytes() == b"earlier"


# --- dodo apply ---------------------------------------------------------------------------------

needs_runtime_and_h5py = pytest.mark.skipif(
    not __import__("dodo").runtime_available() or __import__("importlib").util.find_spec("h5py") is None,
    reason="needs the closure runtime and h5py")


@pytest.fixture(scope="module")
def emu_file(tmp_path_factory):
    """A small Emu-format file (40 rows of the synthetic recipe) with one NaN row in the initial
    states and one in the final states."""
    h5py = pytest.importorskip("h5py")
    from dodo.conventions import to_emu_layout

    rng = np.random.default_rng(4)
    F = np.zeros((40, 6, 4))
    F[:, :, 0] = rng.uniform(0.5, 1.5, (40, 6))
    F[:, :, 3] = F[:, :, 0] * rng.uniform(-0.4, 0.4, (40, 6))
    final = F.copy()
    F[3, 0, 0] = np.nan
    final[5, 1, 0] = np.nan
    path = tmp_path_factory.mktemp("emu") / "emu.h5"
    with h5py.File(path, "w") as out:
        out["F4_initial(1|ccm)"] = to_emu_layout(F)
        out["F4_final(1|ccm)"] = to_emu_layout(final)
    return path


@needs_runtime_and_h5py
@pytest.mark.parametrize("argv, expected", [
    (["--model", "/nonexistent.onnx"], "no such file"),
    (["--model", "/"], "not a regular file"),
    (["--threads", "-1"], "--threads must be an integer from 0 to 1024"),
    (["--threads", str(2**31)], "--threads must be an integer from 0 to 1024"),
    (["--max-speed", "1"], "--max-speed must be a finite speed in [0, 1)"),
    (["--max-speed", "2"], "--max-speed must be a finite speed in [0, 1)"),
    (["--max-speed", "nan"], "--max-speed must be a finite speed in [0, 1)"),
    (["--max-speed", "-0.1"], "--max-speed must be a finite speed in [0, 1)"),
    (["--grid", "3x3"], "--grid must look like"),
    (["--grid", "10x10x10"], "holds 40 cells; the grid needs 1000"),
])
def test_apply_refuses_bad_arguments_in_one_line(emu_file, capsys, argv, expected):
    line = one_line_error(capsys, ["apply", str(emu_file), "--grid", "2x2x2", *argv])
    assert expected in line, line


@needs_runtime_and_h5py
def test_apply_without_h5py_says_so_in_one_line(emu_file):
    code = ("import sys; sys.modules['h5py'] = None; from dodo.cli import main; "
            f"sys.exit(main(['apply', {str(emu_file)!r}, '--grid', '2x2x2']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
    assert "h5py is not installed" in run.stderr


@needs_runtime_and_h5py
def test_apply_scores_around_nan_rows_and_writes_the_cells(emu_file, tmp_path, capsys, monkeypatch):
    """Item 19: one NaN row no longer turns the report into NaN: such cells are left out of the
    scores and counted. Item 21: -o writes the cells; long inputs print progress (blocks)."""
    import re

    import h5py

    import dodo.runtime_cli as runtime_cli

    monkeypatch.setattr(runtime_cli, "BLOCK_CELLS", 16)
    output = tmp_path / "cells.h5"
    assert main(["apply", str(emu_file), "--grid", "2x4x4", "--threads", "1", "-o", str(output)]) == 0
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower().replace("nan_", ""), captured.out
    assert "cells scored: 30 of 32 (2 with a non-finite" in captured.out
    assert re.search(r"^all(\s+\d\.\d+e[-+]\d+){4}$", captured.out, re.M), captured.out
    assert "NONFINITE 1" in captured.out
    assert captured.err.splitlines() == ["dodo apply: 16 of 32 cells", "dodo apply: 32 of 32 cells"]
    with h5py.File(output) as cells:
        assert cells["F_pred"].shape == (2, 4, 4, 6, 4) and cells["status"].shape == (2, 4, 4)
        assert np.isfinite(cells["F_pred"][()]).all()
    assert main(["apply", str(emu_file), "--grid", "2x4x4", "--threads", "1", "-q"]) == 0
    assert capsys.readouterr().err == ""


# --- values that used to be accepted silently (item 19) -----------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("setting, expected", [
    ("training.min_lr_fraction=-3", "training.min_lr_fraction must be in [0, 1]"),
    ("training.min_lr_fraction=1.5", "training.min_lr_fraction must be in [0, 1]"),
    ("training.min_lr_fraction=.nan", "training.min_lr_fraction must be in [0, 1]"),
    ("training.grad_clip=-1", "training.grad_clip must be a finite positive norm, or null"),
    ("training.grad_clip=0", "training.grad_clip must be a finite positive norm, or null"),
    ("training.grad_clip=.inf", "training.grad_clip must be a finite positive norm, or null"),
    ("data.target_scale=.inf", "data.target_scale must be a finite positive number"),
    ("data.target_scale=-2", "data.target_scale must be a finite positive number"),
    ("training.lr=.inf", "training.lr must be a finite positive number"),
    ("training.weight_decay=-1", "training.weight_decay must be a finite number >= 0"),
    ("loss.w_flux=.nan", "loss.w_flux must be a finite number >= 0"),
    ("data.box3d.lebedev_order=5", "data.box3d.lebedev_order must be one of"),
    ("data.box3d.lebedev_order=17.9", "expected an integer"),
])
def test_train_refuses_bad_values_before_training(tmp_path, monkeypatch, capsys, setting, expected):
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["train", "--config", str(ROOT / "training/configs/demo_synthetic.yaml"),
                                   "--set", setting])
    assert expected in line, line


def test_train_accepts_grad_clip_null_as_no_clipping():
    pytest.importorskip("yaml")
    from dodo.training.config import ExperimentConfig

    config = ExperimentConfig.load(ROOT / "training/configs/demo_synthetic.yaml", {"training.grad_clip": None},
                                   create_dirs=False)
    assert config.training.grad_clip is None


@pytest.mark.parametrize("setting, expected", [
    ("box3d.lebedev_order=5", "box3d.lebedev_order must be one of"),
    ("threads=-2", "threads must be an integer in [0, 1024] or null"),
    ("filters.max_flux_factor=.nan", "filters.max_flux_factor must be a finite positive number"),
])
def test_preprocess_refuses_bad_values(tmp_path, monkeypatch, capsys, setting, expected):
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["preprocess", "--config", str(ROOT / "training/configs/pre_process_demo.yaml"),
                                   "--set", setting, "-q"])
    assert expected in line, line


def isotropic_cell() -> np.ndarray:
    """Six species of density 1, no flux: a cell any Box3D setting can be tried on."""
    F = np.zeros((6, 4))
    F[:, 0] = 1.0
    return F


def assert_box3d_refuses(match: str, **setting) -> None:
    """dodo.box3d (on isotropic_cell()) and dodo.box3d_settings both refuse ``setting`` with a
    ValueError matching ``match``."""
    import dodo

    with pytest.raises(ValueError, match=match):
        dodo.box3d(isotropic_cell(), **setting)
    with pytest.raises(ValueError, match=match):
        dodo.box3d_settings(**setting)


@pytest.mark.parametrize("order", [17.9, "17", True, 16.0, 5, np.float64(41.5)])
def test_lebedev_order_must_be_an_available_integer(order):
    """17.9 was truncated to 17; now every non-integer or unavailable order is refused."""
    import dodo

    assert_box3d_refuses("lebedev_order", lebedev_order=order)
    if dodo.runtime_available():
        with pytest.raises(ValueError, match="lebedev_order"):
            dodo.Closure(dodo.BOX3D_ONLY, lebedev_order=order)


def test_integral_lebedev_order_of_any_type_is_taken():
    import dodo

    F = isotropic_cell()
    reference = dodo.box3d(F, lebedev_order=41).F_box
    for order in (41.0, np.int64(41), np.float32(41)):
        np.testing.assert_array_equal(dodo.box3d(F, lebedev_order=order).F_box, reference)


@pytest.mark.parametrize("threads", [2**31, -1, 2.5, "2", 10**30])
def test_threads_out_of_range_is_a_clear_value_error(threads):
    """threads=2**31 raised pybind11's TypeError; now a ValueError that names the range."""
    import dodo

    with pytest.raises(ValueError, match="threads must be an integer"):
        dodo.box3d(isotropic_cell(), threads=threads)
    if dodo.runtime_available():
        with pytest.raises(ValueError, match="threads must be an integer"):
            dodo.Closure(dodo.BOX3D_ONLY, threads=threads)


# --- dodo reference (item 20) -------------------------------------------------------------------

def test_reference_defaults_are_the_apis_and_are_compared(capsys):
    """Defaults as dodo.box3d's (order 17, exact Z), with stored outputs for that setting."""
    import inspect

    import dodo

    defaults = inspect.signature(dodo.box3d).parameters
    assert main(["reference"]) == 0
    out = capsys.readouterr().out
    assert (f"Lebedev order {defaults['lebedev_order'].default}, z_method {defaults['z_method'].default}"
            in out.splitlines()[0])
    assert "largest deviation from the reference outputs" in out and "over 15 cases" in out


def test_reference_without_stored_outputs_says_nothing_was_compared(capsys):
    assert main(["reference", "--lebedev-order", "41"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "largest deviation" not in out
    assert "no reference outputs for order 41 exact" in out and "nothing compared" in out


def test_reference_exits_nonzero_when_a_comparison_fails(monkeypatch, capsys):
    import dodo.reference as reference

    original = reference.load_reference_cases

    def tampered():
        cases = original()
        for expected in cases[0]["expected"]:
            expected["F_box"][0][0] *= 1.001
        return cases

    monkeypatch.setattr(reference, "load_reference_cases", tampered)
    assert main(["reference"]) == 1
    assert "FAILED: a comparison is outside its tolerance" in capsys.readouterr().out


def test_reference_refuses_an_unavailable_order_in_one_line(capsys):
    line = one_line_error(capsys, ["reference", "--lebedev-order", "5"])
    assert "lebedev_order 5 is not available" in line


# --- consistency between commands (item 21) -----------------------------------------------------

def test_synth_and_simulate_take_the_output_the_same_two_ways(tmp_path, capsys):
    pytest.importorskip("h5py")
    assert main(["synth", str(tmp_path / "a.h5"), "-n", "5", "-q"]) == 0
    assert main(["synth", "-o", str(tmp_path / "b.h5"), "-n", "5", "-q"]) == 0
    assert (tmp_path / "a.h5").is_file() and (tmp_path / "b.h5").is_file()
    assert "the output file OUT is required" in one_line_error(capsys, ["synth", "-n", "5"])
    assert "give the output file once" in one_line_error(capsys, ["synth", "x.h5", "-o", "y.h5"])
    small = ["--random", "1", "--ncell", "16", "--nphi", "6", "-q"]  # -q as everywhere else
    assert "the output file OUT is required" in one_line_error(capsys, ["simulate", *small])
    assert main(["simulate", "-o", str(tmp_path / "s.h5"), *small]) == 0
    assert (tmp_path / "s.h5").is_file() and capsys.readouterr().err == ""


def test_every_quiet_flag_has_the_short_form():
    import argparse

    from dodo.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if "--quiet" in action.option_strings:
                assert "-q" in action.option_strings, name


def test_plot_positional_does_not_share_a_name_with_a_choice(capsys):
    pytest.importorskip("yaml")
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    usage = capsys.readouterr().out
    assert "{metrics,curve} FILE [FILE ...]" in " ".join(usage.split())


def test_velocity_error_names_the_cell_with_plain_integers():
    import dodo

    F = np.zeros((2, 3, 6, 4))
    F[..., 0] = 1.0
    u = np.zeros((2, 3, 4))
    u[..., 0] = 1.0
    u[1, 2] = [2.0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"at cell \(1, 2\):") as error:
        dodo.box3d(F, u)
    assert "np." not in str(error.value)
