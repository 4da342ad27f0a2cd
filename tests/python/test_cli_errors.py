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
