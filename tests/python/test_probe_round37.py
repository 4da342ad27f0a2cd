"""Outside probe, round 37 (docs/reliability_python.md section 40).

Each test failed on the code before its fix (its docstring says what that code did), except those
marked as guards. The round's findings: HDF5 files with a user block (signature at byte 512, 1024,
...) were not known as HDF5 by the output guards, so a report's --overwrite replaced such a database;
a pickled closure came back with a package whose metadata was edited and re-signed; `dodo simulate`
wrote over its --select-by model, over an unfinished database without its checkpoint, and (with
--overwrite) over a complete one after its first batch; odd attributes and virtual or external HDF5
storage (a missing source read as zeros, a self-mapping dataset that crashed HDF5) in the Emu
readers; a masked array as out=; Ctrl-C while `python -m dodo.test` or `dodo.qke.validate` start.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_helpers import digest, refused, run

REPO = Path(__file__).resolve().parents[2]
EMU = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"


def _with_user_block(path: Path, size: int = 512) -> Path:
    """A copy of the validation database at ``path`` with a user block of ``size`` bytes."""
    with h5py.File(EMU, "r") as source, h5py.File(path, "w", userblock_size=size) as target:
        for name in source:
            source.copy(source[name], target, name)
        for key, value in source.attrs.items():
            target.attrs[key] = value
    assert not path.read_bytes().startswith(b"\x89HDF") and h5py.is_hdf5(path)
    return path


@pytest.mark.parametrize("size", [512, 4096])
def test_a_report_never_replaces_an_hdf5_database_with_a_user_block(tmp_path, capsys, size):
    """Before: `dodo score default E.h5 --json DB.h5 --overwrite` replaced DB.h5 (an Emu database
    with a user block) with its JSON report, exit 0; without --overwrite it was "not a JSON document"."""
    database = _with_user_block(tmp_path / "db.h5", size)
    before = digest(database)
    line = refused(capsys, ["score", "default", str(EMU), "--json", str(database), "--overwrite"], database)
    assert "is an Emu database" in line and "does not write a report over it" in line
    assert digest(database) == before


def test_plot_never_replaces_an_hdf5_database_with_a_user_block(tmp_path, capsys):
    """Before: `dodo plot metrics M.json -o DB.h5 --overwrite` got past the data guard of DB.h5."""
    database = _with_user_block(tmp_path / "db.h5")
    metrics = tmp_path / "m.json"
    metrics.write_text("{}")
    before = digest(database)
    code, _, err = run(capsys, ["plot", "metrics", str(metrics), "-o", str(database), "--overwrite"])
    assert code == 2 and "is an Emu database" in err and "Traceback" not in err, err
    assert digest(database) == before


@pytest.mark.parametrize("argv", [["synth", "-n", "5", "-q", "-o"], ["apply", str(EMU), "--grid", "2x2x2", "-o"]])
def test_outputs_name_an_hdf5_database_with_a_user_block_as_one(tmp_path, capsys, argv):
    """Before: `... is a file of another kind (neither HDF5, a checkpoint nor a model package)`."""
    database = _with_user_block(tmp_path / "db.h5")
    before = digest(database)
    line = refused(capsys, argv + [str(database)], database)
    assert "is an Emu database" in line and "neither HDF5" not in line
    assert digest(database) == before


def test_an_hdf5_file_with_a_user_block_given_as_the_model_is_named(tmp_path, capsys):
    """Before: `DODO_ERROR_MODEL_FORMAT: ... not an ONNX model (truncated or damaged file?): field
    number 0 at byte 0`, where the same file without a user block is named an HDF5 file."""
    database = _with_user_block(tmp_path / "db.h5")
    line = refused(capsys, ["score", str(database), str(EMU)], database)
    assert "is an HDF5 file (a data file?)" in line


def test_a_user_block_database_is_still_read_as_data(tmp_path, capsys):
    """Guard: score and apply read such a database as before."""
    database = _with_user_block(tmp_path / "db.h5")
    code, out, err = run(capsys, ["score", "box3d", str(database)])
    assert code == 0, err
    code, out, err = run(capsys, ["apply", str(database), "--grid", "2x2x2", "--model", "box3d", "-q"])
    assert code == 0, err


def _resigned_with_edited_metadata(source: Path, target: Path, key: str, edit) -> None:
    """``target``: the package at ``source`` with its metadata entry ``key`` replaced by
    ``edit(value)``, re-signed (both digests recomputed, as dodo._core.with_content_digest does for an
    edit on purpose)."""
    import onnx

    from dodo import _core

    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = edit(entry.value)
    target.write_bytes(_core.with_content_digest(model.SerializeToString()))


def _with_max_flux_factor(value: float):
    def edit(text: str) -> str:
        settings = json.loads(text)
        settings["max_flux_factor"] = value
        return json.dumps(settings)
    return edit


def test_unpickling_refuses_a_package_whose_metadata_was_edited_and_resigned(tmp_path):
    """Before: the pickle carried the content digest alone, which leaves the metadata out: a closure
    pickled, its package's Box3D settings then edited and re-signed, came back in the worker with
    max_flux_factor 0.9 instead of 0.98, without a word. Since 2026-12-06 such an edit fails the
    package's own self-test (its probe test vectors, docs/model_package.md); the pickle's metadata
    digest still refuses a re-signed package whose edit changes no output (its export time here)."""
    import pickle

    import dodo
    from dodo.models import default_model_path

    package = tmp_path / "m.onnx"
    shutil.copyfile(default_model_path(), package)
    closure = dodo.Closure(str(package), threads=1)
    blob = pickle.dumps(closure)
    assert pickle.loads(blob).box3d_settings == closure.box3d_settings  # unchanged: loads
    _resigned_with_edited_metadata(default_model_path(), package, "dodo.box3d", _with_max_flux_factor(0.9))
    with pytest.raises(RuntimeError, match="DODO_ERROR_SELF_TEST"):
        dodo.Closure(str(package), threads=1)
    _resigned_with_edited_metadata(default_model_path(), package, "dodo.export_time", lambda text: text + " (edited)")
    assert dodo.Closure(str(package), threads=1).metadata["dodo.export_time"].endswith("(edited)")  # a valid package
    restored = pickle.loads(blob)  # unusable, not raising here: a Pool worker died of it (Python round fifty)
    with pytest.raises(ValueError, match=r"not the package the closure was made with \(metadata digest"):
        restored.apply(np.zeros((1, 6, 4)))


def test_pickles_without_a_metadata_digest_still_load():
    """Guard: a pickle written before the metadata digest was carried (four arguments, or five with a
    subclass) loads as before; Box3D alone has no digests at all."""
    import pickle

    import dodo
    from dodo._closure import _unpickle_closure

    closure = dodo.Closure(threads=1)
    restored = _unpickle_closure(None, dict(closure._options), closure.model_path,
                                 closure.metadata["dodo.content_sha256"])
    assert restored.metadata == closure.metadata
    box = pickle.loads(pickle.dumps(dodo.Closure("box3d", threads=1)))
    assert not box.has_model


@pytest.mark.parametrize("through_link", [False, True])
def test_simulate_never_writes_over_its_select_by_model(tmp_path, capsys, through_link):
    """Before: `dodo simulate M.onnx --random 1 --family emu --select-by M.onnx --overwrite` ranked the
    candidates with M.onnx, then replaced it with its HDF5 database, exit 0 (the model was no input of
    the output check); without --overwrite the refusal said M.onnx "cannot be read as HDF5"."""
    from dodo.models import default_model_path

    package = tmp_path / "m.onnx"
    shutil.copyfile(default_model_path(), package)
    output = package
    if through_link:
        output = tmp_path / "link.onnx"
        output.symlink_to(package)
    before = digest(package)
    for overwrite in ([], ["--overwrite"]):
        line = refused(capsys, ["simulate", str(output), "--random", "1", "--family", "emu", "--select-by",
                                str(package), "--oversample", "2", "--ncell", "16", "--nphi", "8", "-q", *overwrite],
                       "is the same file as the input", package)
        assert "writing it would destroy the input" in line
    assert digest(package) == before


def test_simulate_never_writes_over_the_shipped_model_it_selects_by(tmp_path, capsys, monkeypatch):
    """The same for --select-by default with OUT the shipped model's path. The shipped model is stood
    in for by a copy (dodo.models.default_model_path patched), so that code without the check writes
    over the copy, never over the package's own file."""
    import dodo.models
    from dodo.models import default_model_path

    stand_in = tmp_path / "qke_default.onnx"
    shutil.copyfile(default_model_path(), stand_in)
    monkeypatch.setattr(dodo.models, "default_model_path", lambda: stand_in)
    before = digest(stand_in)
    refused(capsys, ["simulate", str(stand_in), "--random", "1", "--family", "emu", "--select-by", "default",
                     "--oversample", "2", "--ncell", "16", "--nphi", "8", "--overwrite", "-q"],
            "is the same file as the input")
    assert digest(stand_in) == before


def _solver_like(path: Path, **attrs) -> Path:
    """A two-state HDF5 file whose `solver` attribute names Dodo's solver, with ``attrs`` beside it."""
    import numpy as np

    with h5py.File(path, "w") as handle:
        handle["F4_initial(1|ccm)"] = np.zeros((2, 4, 2, 3))
        handle["F4_final(1|ccm)"] = np.zeros((2, 4, 2, 3))
        handle.attrs["solver"] = "dodo.qke fast-flavour QKE solver (docs/qke.md)"
        for key, value in attrs.items():
            handle.attrs[key] = value
    return path


@pytest.mark.parametrize("attrs, said", [
    ({"nstates_valid": [1, 2], "complete": True}, "is a complete solver database:"),
    ({"nstates_valid": "n/a", "complete": True}, "is a complete solver database:"),
    ({"nstates_valid": 3, "complete": [True, False]}, "is a complete solver database (3 states)"),
    ({"kind": "linear_growth_labels", "complete": False, "nstates_processed": [1, 2]},
     "unfinished growth-label file (dodo simulate --linear-only; some states processed)"),
])
def test_simulate_names_an_output_in_the_way_whose_attributes_are_odd(tmp_path, capsys, attrs, said):
    """Before, `dodo simulate OUT` with OUT a solver-like database whose attributes were edited: a
    TypeError traceback (`nstates_valid` or `nstates_processed` of two values, exit 1), "it cannot be
    read as HDF5: invalid literal for int() with base 10: 'n/a'", or "The truth value of an array with
    more than one element is ambiguous" (`complete` of two values). Round 31 fixed the same in the
    other commands' guard (_output_guard), not in simulate's own."""
    output = _solver_like(tmp_path / "out.h5", **attrs)
    before = digest(output)
    line = refused(capsys, ["simulate", str(output), "--random", "1", "--ncell", "16", "--nphi", "8", "-q"], output)
    assert said in line and "--overwrite" in line and "cannot be read as HDF5" not in line
    assert digest(output) == before


def test_simulate_linear_only_names_a_label_file_whose_counts_are_odd(tmp_path, capsys):
    """Before: `dodo simulate OUT --random 1 --linear-only` over a label file whose `nstates_done` has
    two values ended in a TypeError traceback, exit 1 (growth_labels._resume)."""
    import numpy as np

    output = _solver_like(tmp_path / "labels.h5", kind="linear_growth_labels", complete=False,
                          nstates_done=np.array([1, 2]), nstates_requested=3, fingerprint="x")
    before = digest(output)
    line = refused(capsys, ["simulate", str(output), "--random", "1", "--linear-only", "-q"], output)
    assert "cannot be read as a growth-label file" in line and "left untouched" in line
    assert digest(output) == before


def test_preprocess_reads_a_solver_attribute_that_is_not_utf8(tmp_path, capsys):
    """Before: `dodo preprocess` of an Emu file whose `solver` attribute holds bytes that are not UTF-8
    stopped with `'utf-8' codec can't decode byte 0xff in position 9`, naming no file, where score and
    apply read the file (preprocess.source_kind decoded it strictly)."""
    import numpy as np

    data = tmp_path / "data.h5"
    shutil.copyfile(EMU, data)
    with h5py.File(data, "a") as handle:
        handle.attrs["solver"] = np.bytes_(b"dodo.qke \xff\xfe")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{data}]\noutput: {tmp_path / 'pre.h5'}\n")
    code, _, err = run(capsys, ["preprocess", "--config", str(config), "-q"])
    assert code == 0, err
    with h5py.File(tmp_path / "pre.h5", "r") as handle:
        assert '"kind": "qke"' in handle.attrs["sources"]


def test_validate_nsm1_names_a_reference_whose_names_are_not_utf8(tmp_path):
    """Before: `python -m dodo.qke.validate nsm1 --reference F` with directorynames that are not UTF-8
    said only `'utf-8' codec can't decode byte 0xff in position 22`, naming no file."""
    import subprocess
    import sys

    reference = tmp_path / "nsm1.h5"
    shutil.copyfile(REPO / "tests" / "data" / "qke" / "emu_nsm1_1d.h5", reference)
    with h5py.File(reference, "a") as handle:
        count = len(handle["directorynames"])
        del handle["directorynames"]
        handle["directorynames"] = [b"nsm1_1d_nz64_L4_nphi16\xff"] * count
    import signal

    result = subprocess.run([sys.executable, "-m", "dodo.qke.validate", "nsm1", "--reference", str(reference),
                             "--only", "nowhere"], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.returncode == 2, result.stderr
    assert str(reference) in result.stderr and "codec" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("call", ["closure", "box3d"])
def test_a_masked_array_as_an_output_is_refused(tmp_path, call):
    """Before: `Closure.apply(F, out=out)` (and `dodo.box3d`) with `out.growth_rate` a masked array wrote
    its data and kept the mask, so a computed value came back as `--` (inputs with masked entries are
    refused since round 22). Guard: a memory-mapped output array (another ndarray subclass) is written."""
    import numpy as np

    import dodo

    cells = np.zeros((4, 6, 4))
    cells[:, :, 0] = 1.0
    cells[:, 0, 3], cells[:, 3, 3] = 0.5, -0.5
    if call == "closure":
        closure = dodo.Closure(threads=1)
        apply = lambda out=None: closure.apply(cells, out=out)  # noqa: E731
        out = dodo.ClosureResult.empty((4,))
    else:
        apply = lambda out=None: dodo.box3d(cells, out=out, threads=1)  # noqa: E731
        out = dodo.Box3DResult.empty((4,))
    masked = out._replace(growth_rate=np.ma.masked_array(np.empty(4), mask=[True, False, False, False]))
    with pytest.raises(TypeError, match="out.growth_rate is a masked array"):
        apply(masked)
    mapped = np.memmap(tmp_path / "rates.bin", dtype=np.float64, mode="w+", shape=(4,))
    written = apply(out._replace(growth_rate=mapped))
    assert written.growth_rate is mapped
    assert np.array_equal(np.asarray(mapped), apply().growth_rate)


def _virtual_database(root: Path, source_name: str = "part.h5", dataset: str = "F4_final(1|ccm)") -> Path:
    """ROOT/vds.h5: the validation database with F4_final(1|ccm) a virtual dataset mapping ``dataset``
    of ROOT/part.h5 (which holds the real final states under F4_final(1|ccm))."""
    with h5py.File(EMU, "r") as source:
        initial, final = source["F4_initial(1|ccm)"][()], source["F4_final(1|ccm)"][()]
    with h5py.File(root / "part.h5", "w") as part:
        part["F4_final(1|ccm)"] = final
    layout = h5py.VirtualLayout(shape=final.shape, dtype=final.dtype)
    layout[:] = h5py.VirtualSource(source_name, dataset, shape=final.shape)
    with h5py.File(root / "vds.h5", "w") as handle:
        handle["F4_initial(1|ccm)"] = initial
        handle.create_virtual_dataset("F4_final(1|ccm)", layout, fillvalue=0)
    return root / "vds.h5"


def _vds_commands(database: Path, root: Path) -> list[list[str]]:
    config = root / "pre.yaml"
    config.write_text(f"inputs: [{database}]\noutput: {root / 'pre.h5'}\n")
    return [["score", "box3d", str(database)], ["apply", str(database), "--grid", "2x2x2", "--model", "box3d", "-q"],
            ["preprocess", "--config", str(config), "-q"]]


@pytest.mark.parametrize("command", [0, 1, 2])
@pytest.mark.parametrize("missing", ["file", "dataset"])
def test_a_virtual_dataset_whose_source_is_missing_is_refused(tmp_path, capsys, command, missing):
    """Before: an Emu database whose F4_final(1|ccm) is a virtual dataset (HDF5 VDS) mapping a file that
    is not there (or a dataset that file lacks) was read as zeros: `dodo score` scored them (0.1667 for
    Box3D, with a warning that the truth breaks conservation), `dodo apply` printed errors against them,
    `dodo preprocess` dropped every row as non-conserving; nothing said a file was missing."""
    database = _virtual_database(tmp_path, dataset="F4_final(1|ccm)" if missing == "file" else "elsewhere")
    if missing == "file":
        (tmp_path / "part.h5").unlink()
    line = refused(capsys, _vds_commands(database, tmp_path)[command], database)
    assert "is a virtual dataset whose source" in line and "fill value (zeros)" in line
    assert not (tmp_path / "pre.h5").exists()


@pytest.mark.parametrize("command", [0, 1, 2])
def test_a_virtual_dataset_whose_source_is_there_is_read(tmp_path, capsys, command, monkeypatch):
    """Guard: the same database with its source file beside it is read (also from another directory)."""
    database = _virtual_database(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run(capsys, _vds_commands(database, tmp_path)[command])
    assert code == 0, err
    if command == 0:
        assert "0.00649" in out  # Box3D's score of the real final states, not of zeros


@pytest.mark.parametrize("command", [0, 1, 2])
def test_an_external_raw_file_shorter_than_its_dataset_is_refused(tmp_path, capsys, command, monkeypatch):
    """Before: F4_final(1|ccm) kept in an external raw file (HDF5 external storage) that was truncated
    read as zeros past its end: `dodo score` scored them (with a conservation warning), `dodo apply`
    printed errors against them. Guard: the whole raw file is read as before."""
    monkeypatch.chdir(tmp_path)  # HDF5 finds a relative raw file from the working directory
    with h5py.File(EMU, "r") as source:
        initial, final = source["F4_initial(1|ccm)"][()], source["F4_final(1|ccm)"][()]
    database = tmp_path / "ext.h5"
    with h5py.File(database, "w") as handle:
        handle["F4_initial(1|ccm)"] = initial
        handle.create_dataset("F4_final(1|ccm)", shape=final.shape, dtype=final.dtype,
                              external=[("raw.bin", 0, final.nbytes)])[...] = final
    argv = _vds_commands(database, tmp_path)[command]
    code, _, err = run(capsys, argv)
    assert code == 0, err
    (tmp_path / "pre.h5").unlink(missing_ok=True)
    with open(tmp_path / "raw.bin", "r+b") as raw:
        raw.truncate(final.nbytes // 2)
    line = refused(capsys, argv, database, "external raw file 'raw.bin'")
    assert "HDF5 would read zeros" in line
    assert not (tmp_path / "pre.h5").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_simulate_names_a_select_by_model_that_is_no_regular_file(tmp_path, capsys, kind):
    """Before: `--select-by F` with F a FIFO or a directory said `--select-by F: no such model file` of a
    path that exists (selection.model_identity's isfile). Now the input check names what F is."""
    import os

    model = tmp_path / "m"
    os.mkfifo(model) if kind == "fifo" else model.mkdir()
    line = refused(capsys, ["simulate", str(tmp_path / "o.h5"), "--random", "1", "--family", "emu", "--select-by",
                            str(model)], "--select-by", model)
    assert ("a FIFO" if kind == "fifo" else "a directory") in line and "no such model file" not in line


def _interrupt_second_batch(monkeypatch):
    """Make the solver's second batch end in Ctrl-C (as a SIGINT between batches would)."""
    from dodo.qke import campaign

    real, calls = campaign._simulate_batch, []

    def batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(campaign, "_simulate_batch", batch)


SMALL_RUN = ["--ncell", "16", "--nphi", "8", "--batch-size", "1", "-q"]


def test_simulate_overwrite_stopped_midway_keeps_the_database_it_replaces(tmp_path, capsys, monkeypatch):
    """Before: `dodo simulate OUT --random 6 --overwrite` over a complete 3-state database, stopped after
    its first batch (SIGTERM, Ctrl-C), had already written that batch's 1-state unfinished database over
    OUT: the complete one was lost although the run never finished. Now a file being replaced is
    replaced when the run ends; the checkpoint holds the progress, and the rerun resumes from it."""
    output = tmp_path / "out.h5"
    assert run(capsys, ["simulate", str(output), "--random", "3", "--seed", "3", *SMALL_RUN])[0] == 0
    before = digest(output)
    with monkeypatch.context() as patch:
        _interrupt_second_batch(patch)
        code, _, err = run(capsys, ["simulate", str(output), "--random", "6", "--seed", "9", "--overwrite", *SMALL_RUN])
    assert code == 130, err
    assert digest(output) == before  # the complete database, not the first batch's
    assert (tmp_path / "out.h5.partial.npz").exists()
    code, _, err = run(capsys, ["simulate", str(output), "--random", "6", "--seed", "9", "--overwrite", *SMALL_RUN])
    assert code == 0, err
    with h5py.File(output, "r") as handle:
        assert handle.attrs["complete"] and int(handle.attrs["nstates_requested"]) == 6
    assert not (tmp_path / "out.h5.partial.npz").exists()


def test_simulate_still_writes_its_progress_over_no_file_or_its_own(tmp_path, capsys, monkeypatch):
    """Guard: into a new OUT (or its own unfinished database) the batches so far are still written after
    each batch, usable while the run goes on (docs/qke.md)."""
    output = tmp_path / "out.h5"
    with monkeypatch.context() as patch:
        _interrupt_second_batch(patch)
        assert run(capsys, ["simulate", str(output), "--random", "4", "--seed", "9", *SMALL_RUN])[0] == 130
    with h5py.File(output, "r") as handle:
        assert not handle.attrs["complete"] and len(handle["F4_initial(1|ccm)"]) == 1
    assert run(capsys, ["simulate", str(output), "--random", "4", "--seed", "9", *SMALL_RUN])[0] == 0
    with h5py.File(output, "r") as handle:
        assert handle.attrs["complete"]


def test_simulate_linear_only_overwrite_stopped_midway_keeps_the_file_it_replaces(tmp_path, capsys, monkeypatch):
    """Before: `dodo simulate OUT --linear-only --overwrite` over a finished label file of other states,
    stopped after its first labels were written (every CHUNK states; 1 here), had replaced it with the
    unfinished one. Now it is replaced at the end (a rerun starts over). Guard: a new OUT still gets the
    labels so far (the file is the run's checkpoint)."""
    from dodo.qke import growth_labels

    monkeypatch.setattr(growth_labels, "CHUNK", 1)
    output, fresh = tmp_path / "labels.h5", tmp_path / "fresh.h5"
    small = ["--ncell", "16", "--nphi", "8", "-q"]
    assert run(capsys, ["simulate", str(output), "--random", "2", "--seed", "3", "--linear-only", *small])[0] == 0
    before = digest(output)
    real, calls = growth_labels.box_setup, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(growth_labels, "box_setup", interrupted)
    code, _, err = run(capsys, ["simulate", str(output), "--random", "4", "--seed", "9", "--linear-only", "--overwrite",
                                *small])
    assert code == 130, err
    assert digest(output) == before
    calls.clear()
    assert run(capsys, ["simulate", str(fresh), "--random", "4", "--seed", "9", "--linear-only", *small])[0] == 130
    with h5py.File(fresh, "r") as handle:
        assert not handle.attrs["complete"] and int(handle.attrs["nstates_processed"]) >= 1


def test_simulate_keeps_an_unfinished_database_without_its_checkpoint(tmp_path, capsys, monkeypatch):
    """Before: an unfinished database (a run stopped after its first batch: 1 valid state) whose
    checkpoint OUT.partial.npz was gone (removed, or the database copied elsewhere) was replaced without
    --overwrite by any other run, exit 0. Now refused, named; with its checkpoint it resumes as before."""
    output = tmp_path / "out.h5"
    with monkeypatch.context() as patch:
        _interrupt_second_batch(patch)
        assert run(capsys, ["simulate", str(output), "--random", "4", "--seed", "9", *SMALL_RUN])[0] == 130
    checkpoint = tmp_path / "out.h5.partial.npz"
    saved = checkpoint.read_bytes()
    checkpoint.unlink()
    before = digest(output)
    line = refused(capsys, ["simulate", str(output), "--random", "2", "--seed", "11", *SMALL_RUN], output)
    # singular: round 57 (its "--overwrite" check had slid into this comment: restored, round 58)
    assert "unfinished dodo simulate database (1 valid state) with no checkpoint" in line and "--overwrite" in line
    assert digest(output) == before
    checkpoint.write_bytes(saved)  # guard: with its checkpoint, the same command resumes and finishes it
    assert run(capsys, ["simulate", str(output), "--random", "4", "--seed", "9", *SMALL_RUN])[0] == 0
    with h5py.File(output, "r") as handle:
        assert handle.attrs["complete"]


@pytest.mark.parametrize("program, module, line", [
    (["-m", "dodo.test"], "numpy", "dodo: interrupted"),
    (["-m", "dodo.test"], "dodo._core", "dodo: interrupted"),
    (["-m", "dodo.test"], "dodo.reference", "python -m dodo.test: interrupted"),
    (["-m", "dodo.qke.validate", "nsm1", "--only", "nowhere"], "numpy", "dodo: interrupted"),
    # The reference named: an installed (not editable) package has no tests/ to find it in, and the
    # program stopped there, before it imported h5py (seen in the fresh clone's CI).
    (["-m", "dodo.qke.validate", "nsm1", "--only", "nowhere", "--reference",
      str(Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_nsm1_1d.h5")], "h5py",
     "python -m dodo.qke.validate: interrupted"),
    (["-m", "dodo.qke.cli", "info"], "numpy", "dodo: interrupted"),
    (["-m", "dodo.training.cli", "info"], "numpy", "dodo: interrupted"),
])
def test_ctrl_c_while_the_package_programs_start_is_one_line(tmp_path, program, module, line):
    """Before: `python -m dodo.test` and `python -m dodo.qke.validate` interrupted while they imported
    numpy or the core printed a KeyboardInterrupt traceback (exit -2): the start-up handler of round 17
    covered `dodo` and `python -m dodo` only; `python -m dodo.test` had no Ctrl-C handling at all. The
    SIGINT is sent when the named module is imported (a sitecustomize hook: no timing involved); the
    validate/h5py case is a guard (handled before)."""
    import sys

    from test_probe_round17 import _run_interrupted

    finished = _run_interrupted(tmp_path, [sys.executable, *program], module)
    assert finished.returncode == 130, (finished.returncode, finished.stderr)
    assert "Traceback" not in finished.stderr, finished.stderr
    assert finished.stderr.strip().splitlines()[-1] == line, finished.stderr


def _self_mapping(path: Path, key: str, through: str | None = None) -> Path:
    """The validation database at ``path`` with dataset ``key`` a virtual dataset of the same file that
    maps itself, directly or (``through``) by way of a second virtual dataset that maps ``key``."""
    with h5py.File(EMU, "r") as source:
        data = {name: source[name][()] for name in source}
    shape = data[key].shape
    with h5py.File(path, "w") as handle:
        for name, value in data.items():
            if name != key:
                handle[name] = value
        for name, target in ([(key, key)] if through is None else [(key, through), (through, key)]):
            layout = h5py.VirtualLayout(shape=shape, dtype="f8")
            layout[:] = h5py.VirtualSource(".", target, shape=shape)
            handle.create_virtual_dataset(name, layout, fillvalue=0)
    return path


@pytest.mark.parametrize("key, through", [("F4_final(1|ccm)", None), ("F4_initial(1|ccm)", "copy"),
                                          ("growthRate(1|s)", None)])
@pytest.mark.parametrize("command", ["score", "apply"])
def test_a_virtual_dataset_that_maps_itself_is_refused_not_a_crash(tmp_path, key, through, command):
    """Before: an Emu database whose dataset is a virtual dataset mapping itself (or a cycle of two) ended
    `dodo score` and `dodo apply` in a segmentation fault inside HDF5's read (exit -11, no message). Run
    in a child process: the code before the fix crashes the interpreter."""
    import signal
    import subprocess
    import sys

    database = _self_mapping(tmp_path / "self.h5", key, through)
    argv = ["score", "box3d", str(database)] if command == "score" else \
        ["apply", str(database), "--grid", "2x2x2", "--model", "box3d", "-q"]
    finished = subprocess.run([sys.executable, "-m", "dodo", *argv], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert finished.returncode == 2, (finished.returncode, finished.stderr)
    assert "is a virtual dataset that maps itself" in finished.stderr and "Traceback" not in finished.stderr


@pytest.mark.parametrize("where", ["dataset", "attribute"])
def test_an_nf_with_a_null_dataspace_is_named(tmp_path, capsys, where):
    """Before: `nf` with a null dataspace (h5py.Empty) ended `dodo score` and `dodo apply` in
    `AttributeError: 'Empty' object has no attribute 'item'` (emu_files.nf_problem), a traceback."""
    database = tmp_path / "nf.h5"
    shutil.copyfile(EMU, database)
    with h5py.File(database, "a") as handle:
        if "nf" in handle:
            del handle["nf"]
        if where == "dataset":
            handle.create_dataset("nf", data=h5py.Empty("i8"))
        else:
            handle.attrs["nf"] = h5py.Empty("i8")
    for argv in (["score", "box3d", str(database)], ["apply", str(database), "--grid", "2x2x2", "--model", "box3d"]):
        line = refused(capsys, argv, database)
        assert f"{where} 'nf' has a null dataspace" in line


def test_simulate_overwrite_of_an_unfinished_database_without_checkpoint_replaces_it_at_the_end(tmp_path, capsys,
                                                                                               monkeypatch):
    """An unfinished database whose checkpoint is gone, replaced with --overwrite by a run stopped after
    its first batch, keeps its states (it is another run's, not this run's progress)."""
    output = tmp_path / "out.h5"
    with monkeypatch.context() as patch:
        _interrupt_second_batch(patch)
        assert run(capsys, ["simulate", str(output), "--random", "4", "--seed", "9", *SMALL_RUN])[0] == 130
    (tmp_path / "out.h5.partial.npz").unlink()
    before = digest(output)
    with monkeypatch.context() as patch:
        _interrupt_second_batch(patch)
        code, _, err = run(capsys, ["simulate", str(output), "--random", "4", "--seed", "11", "--overwrite", *SMALL_RUN])
    assert code == 130, err
    assert digest(output) == before


@pytest.mark.parametrize("command", ["score", "apply"])
def test_an_external_link_into_a_fifo_is_refused_not_waited_on(tmp_path, command):
    """Before: an Emu database whose F4_final(1|ccm) is an external link into a FIFO blocked `dodo score`
    and `dodo apply` in HDF5's open of the FIFO for ever, SIGTERM included (section 34 left it open). Run
    in a child with a generous timeout, which only detects the hang."""
    import os
    import signal
    import subprocess
    import sys

    os.mkfifo(tmp_path / "fifo.h5")
    database = tmp_path / "linked.h5"
    shutil.copyfile(EMU, database)
    with h5py.File(database, "a") as handle:
        del handle["F4_final(1|ccm)"]
        handle["F4_final(1|ccm)"] = h5py.ExternalLink("fifo.h5", "/F4_final(1|ccm)")
    argv = ["score", "box3d", str(database)] if command == "score" else \
        ["apply", str(database), "--grid", "2x2x2", "--model", "box3d", "-q"]
    try:
        finished = subprocess.run([sys.executable, "-m", "dodo", *argv], capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL, cwd=tmp_path,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    except subprocess.TimeoutExpired:
        pytest.fail(f"dodo {command} waited on the FIFO an external link names")
    assert finished.returncode == 2, finished.stderr
    assert "is an external link into 'fifo.h5', which is not a regular file" in finished.stderr
