"""`dodo synth`, `dodo preprocess`, `dodo apply -o` and `dodo export` replace only their own kind of output.

Each wrote its result atomically over whatever its output path held: a solver database (hours of
`dodo simulate`), an Emu database, another command's output, a text file. Now such a file is kept
and the command exits 2 naming it, unless --overwrite; a rerun onto its own earlier output, an
empty file and a new path are written as before (dodo._output_guard).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_helpers import digest, emu_file, refused, run
from dodo._output_guard import APPLIED_CELLS, MODEL_PACKAGE, PREPROCESSED, SYNTHETIC, file_kind


def solver_database(path: Path) -> Path:
    """A stand-in for a finished `dodo simulate` database: its attributes are what identify it."""
    with h5py.File(path, "w") as handle:
        handle["F4_initial(1|ccm)"] = np.ones((2, 4, 2, 3))
        handle.attrs["solver"] = "dodo.qke"
        handle.attrs["complete"] = True
        handle.attrs["nstates_valid"] = 2
    return path


@pytest.fixture
def others(tmp_path) -> dict[str, Path]:
    """Files no command may replace without --overwrite, by kind."""
    emu = emu_file(tmp_path / "emu.h5", np.ones((2, 4, 2, 3)))
    text = tmp_path / "notes.txt"
    text.write_text("a week of runs\n")
    return {"simulate": solver_database(tmp_path / "db.h5"), "emu": emu, "text": text}


def test_kinds_are_recognised(tmp_path, others):
    assert file_kind(others["simulate"]).startswith("a dodo simulate database (complete, 2 states")
    assert file_kind(others["emu"]) == "an Emu database"
    assert file_kind(others["text"]).startswith("a file of another kind")
    pytest.importorskip("onnx")
    from dodo.models import default_model_path

    assert file_kind(default_model_path()) == MODEL_PACKAGE


def test_synth_keeps_other_files_and_replaces_its_own(tmp_path, capsys, others):
    for path in others.values():
        before = digest(path)
        refused(capsys, ["synth", str(path), "-n", "5", "-q"], path.name, "--overwrite")
        assert digest(path) == before
    own = tmp_path / "syn.h5"
    assert run(capsys, ["synth", str(own), "-n", "5", "-q"])[0] == 0
    assert file_kind(own) == SYNTHETIC
    assert run(capsys, ["synth", str(own), "-n", "6", "-q", "--seed", "1"])[0] == 0  # a rerun
    with h5py.File(own) as handle:
        assert handle.attrs["seed"] == 1
    empty = tmp_path / "empty.h5"
    empty.touch()
    assert run(capsys, ["synth", str(empty), "-n", "5", "-q"])[0] == 0
    assert run(capsys, ["synth", str(others["simulate"]), "-n", "5", "-q", "--overwrite"])[0] == 0
    assert file_kind(others["simulate"]) == SYNTHETIC


def test_apply_output_keeps_other_files_and_replaces_its_own(tmp_path, capsys, others):
    data = tmp_path / "syn.h5"
    assert run(capsys, ["synth", str(data), "-n", "8", "-q"])[0] == 0
    base = ["apply", str(data), "--model", "box3d", "--grid", "2x2x2", "-q"]
    for path in [*others.values(), data.with_name("other_syn.h5")]:
        if path.name == "other_syn.h5":  # another command's output
            assert run(capsys, ["synth", str(path), "-n", "5", "-q"])[0] == 0
        before = digest(path)
        refused(capsys, [*base, "-o", str(path)], path.name, "--overwrite")
        assert digest(path) == before
    cells = tmp_path / "cells.h5"
    assert run(capsys, [*base, "-o", str(cells)])[0] == 0
    assert file_kind(cells) == APPLIED_CELLS
    assert run(capsys, [*base, "-o", str(cells)])[0] == 0  # a rerun
    assert run(capsys, [*base, "-o", str(others["emu"]), "--overwrite"])[0] == 0
    assert file_kind(others["emu"]) == APPLIED_CELLS


def test_apply_replaces_a_cell_file_written_before_the_mark(tmp_path, capsys):
    data = tmp_path / "syn.h5"
    assert run(capsys, ["synth", str(data), "-n", "8", "-q"])[0] == 0
    cells = tmp_path / "cells.h5"
    with h5py.File(cells, "w") as handle:  # what `dodo apply -o` wrote until the kind mark
        handle["status"] = np.zeros((2, 2, 2), np.uint32)
        handle.attrs["layout"] = "[nx, ny, nz, species (nu_e..nubar_tau), (t, x, y, z)], lab frame; u = (W, W v)"
    assert run(capsys, ["apply", str(data), "--model", "box3d", "--grid", "2x2x2", "-q", "-o", str(cells)])[0] == 0


def test_preprocess_keeps_other_files_and_replaces_its_own(tmp_path, capsys, monkeypatch, others):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "syn.h5", "-n", "20", "-q"])[0] == 0
    Path("p.yaml").write_text("inputs: [syn.h5]\noutput: pre.h5\n")
    for path in others.values():
        before = digest(path)
        refused(capsys, ["preprocess", "--config", "p.yaml", "-q", "-o", str(path)], path.name, "--overwrite")
        assert digest(path) == before
    assert run(capsys, ["preprocess", "--config", "p.yaml", "-q"])[0] == 0
    assert file_kind("pre.h5") == PREPROCESSED
    assert run(capsys, ["preprocess", "--config", "p.yaml", "-q"])[0] == 0  # a rerun
    assert run(capsys, ["preprocess", "--config", "p.yaml", "-q", "-o", str(others["text"]), "--overwrite"])[0] == 0
    assert file_kind(others["text"]) == PREPROCESSED


def test_export_keeps_other_files_and_replaces_a_package(tmp_path, capsys, others):
    """Refused before the checkpoint is read: a solver database, an Emu database, a text file or a
    checkpoint given as `dodo export`'s output is kept; an earlier package is replaced as before."""
    import shutil

    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from dodo._output_guard import refuse_replacing
    from dodo.models import default_model_path

    checkpoint = tmp_path / "model.pt"
    import torch

    torch.save({"not": "read"}, checkpoint)
    other_checkpoint = tmp_path / "other.pt"
    shutil.copy(checkpoint, other_checkpoint)
    assert file_kind(other_checkpoint).startswith("a PyTorch checkpoint")
    for path in [*others.values(), other_checkpoint]:
        before = digest(path)
        refused(capsys, ["export", str(checkpoint), "-o", str(path)], path.name, "--overwrite")
        assert digest(path) == before
    package = tmp_path / "earlier.onnx"
    shutil.copy(default_model_path(), package)
    refuse_replacing(package, MODEL_PACKAGE, "dodo export", overwrite=False)  # a rerun: no refusal
    refuse_replacing(others["emu"], MODEL_PACKAGE, "dodo export", overwrite=True)


def test_a_report_never_replaces_data(tmp_path, capsys, others):
    """`--json` tables and plots: a mistyped path that names an HDF5 file, a checkpoint or a model
    package is kept (no option replaces it); a JSON file (an earlier report) is replaced as before, a
    text file only with `dodo score --overwrite` (outside probe, round 24)."""
    import shutil

    from dodo._output_guard import refuse_replacing_data
    from dodo.models import default_model_path

    emu = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    for path in (others["simulate"], others["emu"]):
        before = digest(path)
        refused(capsys, ["score", "box3d", str(emu), "--json", str(path)], path.name, "does not write a report")
        assert digest(path) == before
    report = tmp_path / "report.json"  # an earlier report (unmarked, known by its keys; round 25: was "{}")
    earlier = '{"n_states": 0, "model": {}, "box3d": {}, "difference": {}, "per_state": {}}'
    report.write_text(earlier)
    assert run(capsys, ["score", "box3d", str(emu), "--json", str(report)])[0] == 0
    assert report.read_text() != earlier
    refused(capsys, ["score", "box3d", str(emu), "--json", str(others["text"])], "not a JSON document")
    assert run(capsys, ["score", "box3d", str(emu), "--json", str(others["text"]), "--overwrite"])[0] == 0
    package = tmp_path / "model.onnx"
    shutil.copy(default_model_path(), package)
    if __import__("importlib").util.find_spec("onnx") is not None:
        with pytest.raises(ValueError, match="model package"):
            refuse_replacing_data([package], "dodo plot")
    refuse_replacing_data([None, "-", tmp_path / "new.png"], "dodo plot")  # nothing there: no refusal
