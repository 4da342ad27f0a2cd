"""Outside probe, round fifteen (docs/reliability_python.md section 16): each test failed on the
code before its fix."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import digest, refused, run

import dodo  # noqa: E402

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
EMU_FILE = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]


# --- dodo simulate onto a file that is not its own database ------------------------------------

def test_simulate_does_not_replace_a_file_that_is_not_a_solver_database(tmp_path, capsys):
    """`dodo simulate emu.h5 --random 2` with emu.h5 a real Emu database (32 runs) replaced it with
    the new run's database, exit 0; killed after its first batch it left that partial database in
    the Emu file's place (the run writes the batches finished so far over OUT). Only a *complete*
    solver database was protected. Now any existing non-empty file that is not a dodo simulate
    database is refused unless --overwrite; an empty file (mktemp) is written."""
    pytest.importorskip("h5py")
    emu = tmp_path / "emu.h5"
    shutil.copyfile(EMU_FILE, emu)
    before = digest(emu)
    refused(capsys, ["simulate", str(emu), "--random", "2", "--seed", "1", *SMALL], emu,
            "not a dodo simulate database", "--overwrite")
    assert digest(emu) == before
    garbage = tmp_path / "notes.h5"
    garbage.write_bytes(b"three days of notes")
    refused(capsys, ["simulate", str(garbage), "--random", "2", *SMALL], garbage, "cannot be read")
    assert garbage.read_bytes() == b"three days of notes"
    assert not list(tmp_path.glob("*.partial*.npz"))
    empty = tmp_path / "empty.h5"
    empty.touch()
    code, _, err = run(capsys, ["simulate", str(empty), "--random", "1", "--max-cost", "0.01", *SMALL])
    assert code == 0, err
    code, _, err = run(capsys, ["simulate", str(emu), "--random", "1", "--max-cost", "0.01", *SMALL, "--overwrite"])
    assert code == 0, err
    assert digest(emu) != before
