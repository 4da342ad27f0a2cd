"""Outside probe, round twenty-nine (docs/reliability_python.md, section 31): the run-time side.
Each test failed on the code before its fix (the docstrings say what that code did)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import dodo
from cli_helpers import refused, run
from dodo.cli import main

REPO = Path(__file__).resolve().parents[2]
EMU_VALIDATION = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"


def _crossing_cells(n: int) -> np.ndarray:
    """n cells: nu_e along +z, nubar_e along -z (an ELN crossing), heavy species isotropic; the
    first cell isotropic in every species (stable), the second with |F| > n for nu_e (rejected)."""
    F = np.zeros((n, 6, 4))
    F[:, 0] = [1.0e33, 0, 0, 0.5e33]
    F[:, 3] = [1.2e33, 0, 0, -0.5e33]
    F[:, (1, 2, 4, 5), 0] = 0.3e33
    F[0, :, 1:] = 0.0
    F[1, 0, 3] = 2.0e33
    return F


# --- dodo.CellStatus of one cell's status as NumPy holds it ------------------------------------------

def test_cell_status_decodes_a_status_as_numpy_holds_it():
    """``result.status`` is a uint32 array; ``dodo.CellStatus(result.status[i])`` raised
    ``ValueError: np.uint32(3) is not a valid CellStatus`` for any status of two or more flags (e.g.
    BOX3D_LIMITED | CORRECTION_LIMITED) or a bit of another version (enum's lookup of a combination
    takes Python ints only; a single flag was found by its hash), a one-cell result's 0-d ``status``
    likewise, and a batch's status array said ``The truth value of an array with more than one
    element is ambiguous``."""
    flags = dodo.CellStatus
    assert flags(np.uint32(3)) == flags.NO_CROSSING | flags.FLUX_FACTOR
    assert flags(np.int64(3)) is flags(3)
    assert flags(np.array(3, dtype=np.uint32)) == flags.NO_CROSSING | flags.FLUX_FACTOR
    assert flags(np.uint32(0)) is flags.OK and flags(np.uint32(1)) is flags.NO_CROSSING
    assert flags(np.uint32(320)) == flags.BOX3D_LIMITED | flags.CORRECTION_LIMITED
    assert flags(np.uint32(1 << 20)).value == 1 << 20  # a bit of another version, kept as for an int
    result = dodo.box3d(_crossing_cells(3))
    decoded = [flags(status) for status in result.status]
    assert decoded[0] is flags.NO_CROSSING and flags.FLUX_FACTOR in decoded[1]
    assert decoded == [flags(int(status)) for status in result.status]
    one = dodo.box3d(_crossing_cells(2)[1])  # one cell: status is a 0-d array
    assert one.status.shape == () and flags.FLUX_FACTOR in flags(one.status)
    # Python ints behave as before; a batch's array and non-integers are refused by name.
    assert flags(2 ** 31).value == 2 ** 31 and flags(flags.NONFINITE) is flags.NONFINITE
    with pytest.raises(TypeError, match=r"dodo.CellStatus takes one cell's status; got an array of shape \(3,\)"):
        flags(result.status)
    with pytest.raises(TypeError, match="a cell status is an integer"):
        flags(np.float64(1.0))
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\); got -1"):
        flags(np.int64(-1))
    import pickle

    both = flags.NO_CROSSING | flags.CORRECTION_LIMITED
    assert pickle.loads(pickle.dumps(both)) is both


# --- dodo score / dodo apply on files that dodo simulate wrote ----------------------------------------

def test_score_and_apply_name_a_linear_only_label_file(tmp_path, capsys):
    """`dodo score` and `dodo apply` on a label file of `dodo simulate --linear-only` (Dodo's own
    output: initial states and linear growth rates) said ``no dataset 'F4_final(1|ccm)' (not an
    Emu-layout file)`` / ``missing dataset ... (not an Emu asymptotic database?)``; and a command
    refusing to write over one called it ``a dodo simulate database (complete, 2 states)``."""
    pytest.importorskip("h5py")
    labels = tmp_path / "labels.h5"
    assert main(["simulate", str(labels), "--random", "2", "--ncell", "16", "--nphi", "8", "--linear-only",
                 "-q"]) == 0
    for argv in (["score", "box3d", str(labels), "--bootstrap", "100"],
                 ["apply", str(labels), "--grid", "1x1x1", "--model", "box3d"]):
        line = refused(capsys, argv, labels, "a growth-label file of `dodo simulate --linear-only`",
                       "F4_final(1|ccm)", "without --linear-only")
        assert "not an Emu" not in line
    refused(capsys, ["apply", str(EMU_VALIDATION), "--grid", "1x1x1", "--model", "box3d", "-o", str(labels)],
            f"{labels} exists and is a growth-label file of dodo simulate --linear-only (complete, 2 states)")
    from dodo.emu_files import LINEAR_LABELS_KIND
    from dodo.qke.growth_labels import KIND

    assert LINEAR_LABELS_KIND == KIND  # the reader knows the writer's mark


def test_score_and_apply_name_another_commands_output(tmp_path, capsys):
    """A preprocessed training file and a cell file of `dodo apply -o` given to `dodo score`, `dodo
    apply` or `dodo simulate --input`: ``no dataset 'F4_initial(1|ccm)' (not an Emu-layout file)``,
    ``missing dataset ...`` and ``has no 'F4_initial(1|ccm)' dataset`` of Dodo's own files."""
    pytest.importorskip("h5py")
    from cli_helpers import synthetic_preprocessed

    preprocessed = synthetic_preprocessed(tmp_path, cells=50)
    cells = tmp_path / "cells.h5"
    assert main(["apply", str(EMU_VALIDATION), "--grid", "1x1x2", "--model", "box3d", "-q", "-o", str(cells)]) == 0
    capsys.readouterr()
    for path, kind in ((preprocessed, "a preprocessed training file (dodo preprocess)"),
                       (cells, "a cell file of dodo apply -o")):
        for argv in (["score", "box3d", str(path), "--bootstrap", "100"],
                     ["apply", str(path), "--grid", "1x1x1", "--model", "box3d"],
                     ["simulate", str(tmp_path / "run.h5"), "--input", str(path), "--ncell", "16", "--nphi", "8",
                      "-q"]):
            line = refused(capsys, argv, f"{path}: {kind}", "not an Emu-layout database",
                           "no dataset 'F4_initial(1|ccm)'", "give the Emu-layout file it was made from")
            assert "(not an Emu" not in line and "has no" not in line
    assert not (tmp_path / "run.h5").exists()


def _unfinished_database(path: Path, states: int = 2, requested: int = 12) -> Path:
    """An Emu-layout database as a stopped `dodo simulate` run leaves it: the states done so far,
    ``complete`` false (two states of the shipped Emu validation file)."""
    import h5py

    with h5py.File(EMU_VALIDATION, "r") as source, h5py.File(path, "w") as out:
        for name in ("F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)"):
            out[name] = source[name][:states]
        out.attrs.update({"complete": False, "nstates_done": states, "nstates_requested": requested,
                          "nstates_valid": states, "command": "dodo simulate part.h5 --random 12"})
    return path


def test_score_and_apply_say_that_a_database_is_an_unfinished_run(tmp_path, capsys):
    """A stopped (or still running) `dodo simulate` has written the states of its finished batches
    under the final name, marked ``complete`` false; `dodo score` and `dodo apply` scored those 2 of
    12 states without a word, as if they were the run's."""
    pytest.importorskip("h5py")
    part = _unfinished_database(tmp_path / "part.h5")
    code, out, err = run(capsys, ["score", "default", str(part), "--bootstrap", "100"])
    assert code == 0 and "Traceback" not in err, err
    assert f"note: {part} is the database of an unfinished `dodo simulate` run (2 of its 12 states done" in out
    code, out, err = run(capsys, ["apply", str(part), "--grid", "1x1x2", "--model", "box3d", "-q"])
    assert code == 0 and "Traceback" not in err, err
    assert f"note: {part} is the database of an unfinished `dodo simulate` run (2 of its 12 states done" in out
    # A short file says why it is short.
    refused(capsys, ["apply", str(part), "--grid", "1x1x3", "--model", "box3d"], "holds 2 cells",
            "unfinished `dodo simulate` run")
    # A finished database, and a file of another writer (no such attribute), get no note.
    import h5py

    with h5py.File(part, "a") as handle:
        handle.attrs["complete"] = True
    code, out, _ = run(capsys, ["score", "box3d", str(part), "--bootstrap", "100"])
    assert code == 0 and "unfinished" not in out
    code, out, _ = run(capsys, ["score", "box3d", str(EMU_VALIDATION), "--bootstrap", "100"])
    assert code == 0 and "unfinished" not in out


# --- launcher variables read by dodo simulate ---------------------------------------------------------

@pytest.mark.parametrize("environ, named", [
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_SIZE=2"),
    ({"PMI_SIZE": "3"}, "PMI_SIZE=3"),
    ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}, "SLURM_STEP_ID=0 and SLURM_STEP_NUM_TASKS=4"),
])
def test_a_launcher_variable_left_in_the_environment_is_named(monkeypatch, environ, named):
    """`dodo simulate` takes its rank count from the environment alone; a variable left from an MPI
    job (a shell, or a parent process inside one) made a command started by hand say ``started as 2
    MPI ranks, but mpi4py is not installed``, naming nothing that said so."""
    from dodo.qke import parallel

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as when it is not installed
    with pytest.raises(RuntimeError) as error:
        parallel.world(environ)
    text = str(error.value)
    assert text.startswith(f"started as {named.split('=')[-1]} MPI ranks, but mpi4py is not installed")
    assert f"is what {named} in the environment says" in text and "unset it" in text


def test_preprocess_notes_an_unfinished_run_it_reads(tmp_path, capsys):
    """`dodo preprocess` read a stopped `dodo simulate` database's states without a word (left alone
    by round 29, taken after it): it still reads them (a campaign's chunk being written is read as
    far as it goes), and says so as score and apply do; a finished one gets no note."""
    pytest.importorskip("h5py")
    import h5py

    part = _unfinished_database(tmp_path / "part.h5")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{part}]\noutput: {tmp_path / 'pre.h5'}\n")
    code, out, err = run(capsys, ["preprocess", "--config", str(config), "-q"])
    assert code == 0 and "Traceback" not in err, err
    assert f"note: {part} is the database of an unfinished `dodo simulate` run (2 of its 12 states done" in out + err
    with h5py.File(part, "a") as handle:
        handle.attrs["complete"] = True
    code, out, err = run(capsys, ["preprocess", "--config", str(config), "-q", "--overwrite"])
    assert code == 0 and "unfinished" not in out + err
