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
    original = atomic.WriteErrorLatch.__init__

    class DiskThatFillsUp:
        def __init__(self, real):
            self._real = real

        def write(self, data):
            if budget["bytes"] < len(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            budget["bytes"] -= len(data)
            return self._real.write(data)

        def __getattr__(self, name):
            return getattr(self._real, name)

    def init(self, path):
        original(self, path)
        self._file = DiskThatFillsUp(self._file)

    monkeypatch.setattr(atomic.WriteErrorLatch, "__init__", init)
    return budget


@pytest.mark.parametrize("budget", [0, 3000])
def test_synth_and_simulate_outputs_on_a_full_disk(tmp_path, capsys, disk_full_after, budget):
    """Item 18: a full disk while writing `dodo synth`'s or `dodo simulate`'s HDF5 output gives one
    line and exit 2, leaves an earlier file untouched and no temporary."""
    pytest.importorskip("h5py")
    from dodo.qke.io import write_emu_database

    disk_full_after["bytes"] = budget
    (tmp_path / "old.h5").write_bytes(b"earlier")
    line = one_line_error(capsys, ["synth", "-o", str(tmp_path / "old.h5"), "-n", "50", "-q"])
    assert "No space left on device" in line
    states = np.zeros((2, 6, 4))
    states[:, :, 0] = 1.0
    disk_full_after["bytes"] = budget
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
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--threads", str(2**31)], "--threads must be >= 0"),
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
