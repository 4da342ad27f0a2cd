"""Outside probe, round thirty-one (docs/reliability_python.md, section 34): the run-time side and
the CLI, probed as an independent tester would. Each test failed on the code before its fix (the
docstrings say what that code did)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dodo

from cli_helpers import emu_file, refused, run, synthetic_preprocessed, tiny_train_config

h5py = pytest.importorskip("h5py")


def _emu_states(count: int = 8) -> np.ndarray:
    """``count`` rest-frame states in Emu's layout [n, (x,y,z,t), (nu,nubar), flavour]: nu_e along +z,
    nubar_e along -z (an ELN crossing), heavy flavours isotropic."""
    F = np.zeros((count, 6, 4))
    F[:, :, 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    F *= 1e32 * np.linspace(1.0, 2.0, count)[:, None, None]
    from dodo.conventions import to_emu_layout

    return to_emu_layout(F)


# --- an Emu file whose optional `directorynames` is a link that cannot be followed -----------------

@pytest.mark.parametrize("link", ["dangling", "external", "loop"])
def test_directorynames_that_cannot_be_opened_is_named_in_one_line(tmp_path, capsys, link):
    """`dodo apply` and `dodo preprocess` on an Emu file whose `directorynames` (the rows' names,
    optional) is a soft link to nothing, an external link into a missing file, or a soft-link loop:
    before, h5py's `KeyError: 'Unable to synchronously open object (component not found)'` traceback
    (the first two), or `dodo apply: error: Special link traversal failed (too many links)`, naming
    neither the file nor the dataset. Now the file's layout check refuses it, as it refuses such a
    `growthRate(1|s)`: `FILE: 'directorynames' cannot be opened (...; a broken or looping link?)`."""
    data = emu_file(tmp_path / "emu.h5", _emu_states())
    with h5py.File(data, "a") as handle:
        handle["directorynames"] = {"dangling": h5py.SoftLink("/nowhere"),
                                    "external": h5py.ExternalLink("missing.h5", "/names"),
                                    "loop": h5py.SoftLink("/directorynames")}[link]
    line = refused(capsys, ["apply", str(data), "--grid", "2x2x2", "-q"], data, "'directorynames' cannot be opened")
    assert "Traceback" not in line
    pytest.importorskip("yaml")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{data}]\noutput: {tmp_path / 'pre.h5'}\n")
    refused(capsys, ["preprocess", "--config", str(config), "-q"], data, "'directorynames' cannot be opened")
    assert not (tmp_path / "pre.h5").exists()


def test_directorynames_beside_any_growth_rates_still_read(tmp_path, capsys):
    """The other side of the check above: `directorynames` that open, with no `growthRate(1|s)` (read:
    `dodo apply` runs) or with one of strings (refused by its own check, as before). The first version
    of the check (cc7e96f) put it between the growth rates' two checks: a file with names and no
    growth rates ended in `UnboundLocalError`, and string growth rates passed when names were absent."""
    names = np.array([f"run_{i}".encode() for i in range(8)])
    data = emu_file(tmp_path / "names.h5", _emu_states(), directorynames=names)
    code, out, err = run(capsys, ["apply", str(data), "--grid", "2x2x2", "--model", "box3d", "-q"])
    assert code == 0 and "status counts" in out, err
    for extra in ({}, {"directorynames": names}):
        text = emu_file(tmp_path / f"text{len(extra)}.h5", _emu_states(), **{"growthRate(1|s)": np.array([b"x"] * 8)},
                        **extra)
        refused(capsys, ["apply", str(text), "--grid", "2x2x2", "--model", "box3d", "-q"], "growth rates must be real")


# --- an Emu file whose data HDF5 cannot read (a damaged chunk) ---------------------------------------

def _damaged_emu_file(path: Path, damaged: str) -> Path:
    """An Emu file whose datasets are chunked with HDF5's Fletcher-32 checksum, and 16 bytes of
    dataset ``damaged``'s first chunk flipped: the file opens, its layout is right, and reading that
    dataset fails (`Can't synchronously read data (... checksum ...)`), as with a corrupted copy."""
    with h5py.File(path, "w") as handle:
        for name in ("F4_initial(1|ccm)", "F4_final(1|ccm)"):
            handle.create_dataset(name, data=_emu_states(), chunks=True, fletcher32=True)
    with h5py.File(path, "r") as handle:  # where the chunk lies once written
        chunk = handle[damaged].id.get_chunk_info(0)
    content = bytearray(path.read_bytes())
    middle = chunk.byte_offset + chunk.size // 2
    # XOR 0x5A: flipping every bit of zero words (0x0000 <-> 0xFFFF) is the one change Fletcher-32 misses.
    content[middle:middle + 16] = bytes(byte ^ 0x5A for byte in content[middle:middle + 16])
    path.write_bytes(bytes(content))
    with h5py.File(path, "r") as handle, pytest.raises(OSError):
        handle[damaged][()]
    return path


@pytest.mark.parametrize("damaged", ["F4_initial(1|ccm)", "F4_final(1|ccm)"])
def test_a_damaged_dataset_is_named_with_its_file(tmp_path, capsys, damaged):
    """`dodo apply`, `dodo preprocess`, `dodo score` and `dodo simulate --input` on an Emu file whose
    data cannot be read (a damaged chunk): before, `dodo apply: error: Can't synchronously read data
    (...)` and `dodo simulate: error: ...` named neither the file nor the dataset, and `dodo
    preprocess` blamed its own output: `pre.h5 not written: Can't synchronously read data ...`,
    whichever of its inputs was damaged; `python -m dodo.qke.validate emu32 --reference` and `dodo
    learning-curve --emu`'s reader the same as apply. Now each names the input file and the dataset (`FILE: cannot
    read ... of 'F4_final(1|ccm)' (...): the file is damaged`), and no output is written."""
    data = _damaged_emu_file(tmp_path / "emu.h5", damaged)
    refused(capsys, ["apply", str(data), "--grid", "2x2x2", "-q", "-o", str(tmp_path / "cells.h5")],
            data, f"'{damaged}'", "damaged")
    refused(capsys, ["score", "box3d", str(data), "--bootstrap", "100"], data, f"'{damaged}'", "damaged")
    if damaged == "F4_initial(1|ccm)":  # the only dataset a simulation reads
        refused(capsys, ["simulate", str(tmp_path / "sim.h5"), "--input", str(data), "--ncell", "16", "--nphi", "8"],
                data, f"'{damaged}'", "damaged")
    # python -m dodo.qke.validate emu32 --reference: `error: Can't synchronously read data (...)` before
    from dodo.qke.validate import main as validate_main

    assert validate_main(["emu32", "--reference", str(data), "--output", str(tmp_path / "val.h5")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(data) in lines[0] and "damaged" in lines[0], lines
    if importlib.util.find_spec("torch") is not None:  # `dodo learning-curve --emu`'s reader, the same words
        from dodo.training.ensemble_train import emu_table

        with pytest.raises(ValueError, match="damaged") as refusal:
            emu_table(str(data), dodo.box3d_settings())
        assert str(data) in str(refusal.value) and damaged in str(refusal.value)
    pytest.importorskip("yaml")
    good = emu_file(tmp_path / "good.h5", _emu_states())
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{good}, {data}]\noutput: {tmp_path / 'pre.h5'}\n")
    line = refused(capsys, ["preprocess", "--config", str(config), "-q"], data, f"'{damaged}'", "damaged")
    assert "not written" not in line
    assert not any(path.name.startswith(("cells", "sim", "val", "pre.h5", ".pre")) for path in tmp_path.iterdir())


def _damage_dataset(path: Path, name: str) -> None:
    """Rewrites dataset ``name`` of the HDF5 file at ``path`` chunked with HDF5's Fletcher-32 checksum,
    then flips 16 bytes of its first chunk (as _damaged_emu_file)."""
    with h5py.File(path, "a") as handle:
        values = handle[name][()]
        del handle[name]
        handle.create_dataset(name, data=values, chunks=True, fletcher32=True)
    with h5py.File(path, "r") as handle:
        chunk = handle[name].id.get_chunk_info(0)
    content = bytearray(path.read_bytes())
    middle = chunk.byte_offset + chunk.size // 2
    content[middle:middle + 16] = bytes(byte ^ 0x5A for byte in content[middle:middle + 16])
    path.write_bytes(bytes(content))


def test_a_damaged_preprocessed_file_is_named(tmp_path, capsys):
    """`dodo train`, `dodo train-ensemble`, `dodo evaluate --data` and `dodo inspect --data` on a
    preprocessed file whose `F_true` HDF5 cannot read (a damaged chunk): before, `dodo train: error:
    Can't synchronously read data (filter returned failure during read)`, naming neither the file nor
    the dataset (a study's table or a config may name several). Now `FILE: cannot read 'F_true'
    (...): the file is damaged ...; re-run dodo preprocess`, and no checkpoint is written."""
    pytest.importorskip("torch")
    pytest.importorskip("yaml")
    table = synthetic_preprocessed(tmp_path, 64)
    config = tiny_train_config(tmp_path, table)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    assert code == 0, err
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(table.read_bytes())
    _damage_dataset(damaged, "F_true")
    checkpoint = tmp_path / "ck" / "best.pt"
    for command in ("evaluate", "inspect"):
        refused(capsys, [command, str(checkpoint), "--data", str(damaged)], damaged, "'F_true'", "damaged")
    config.write_text(config.read_text().replace(str(table), str(damaged)).replace(str(tmp_path / "ck"),
                                                                                  str(tmp_path / "ck2")))
    refused(capsys, ["train", "--config", str(config)], damaged, "'F_true'", "damaged")
    ensemble = tmp_path / "ens.json"
    ensemble.write_text(json.dumps({
        "data": {"path": str(damaged), "holdout": [], "features": "invariants27+box7+eln18-v1"},
        "ensemble": {"members": 2, "width": 8, "depth": 1, "steps": 20, "threads": 1},
        "distill": {"width": 8, "depth": 1, "steps": 20}, "output": {"checkpoint": str(tmp_path / "ens.pt")}}))
    refused(capsys, ["train-ensemble", "--config", str(ensemble)], damaged, "'F_true'", "damaged")
    assert not (tmp_path / "ens.pt").exists()


# --- a file name that is not UTF-8, and a standard output that cannot hold it --------------------------

@pytest.mark.parametrize("encoding", ["utf-8:strict", "ascii"])
def test_a_report_naming_a_file_the_output_cannot_encode_is_printed_not_lost(tmp_path, encoding):
    """`dodo synth` and `dodo apply` on a file whose name is not UTF-8 (`r\\xe9s.h5`, a Latin-1 name:
    Python holds the byte as a surrogate), with standard output strict UTF-8 as in any UTF-8 locale
    (en_US.UTF-8; the C locale and UTF-8 mode escape it), or ASCII (`PYTHONIOENCODING=ascii`): before,
    each did its work, then failed as it printed the report: `dodo apply: error: 'utf-8' codec can't
    encode character '\\udce9' in position 39: surrogates not allowed`, exit 2, the report lost
    (`dodo synth` said so of the file it had just written). Now the report is printed, the name as
    its bytes (or, in ASCII, `\\xe9`), exit 0."""
    name = b"r\xe9s.h5" if encoding.startswith("utf-8") else "r\u00e9s.h5".encode()
    data = tmp_path / os.fsdecode(name)
    env = dict(os.environ, PYTHONIOENCODING=encoding, LC_ALL="C.UTF-8")
    shown = b"r\xe9s.h5" if encoding.startswith("utf-8") else b"r\\xe9s.h5"
    for argv in (["synth", "-n", "20", "-q", "-o", str(data)], ["apply", str(data), "--grid", "2x2x2", "-q"]):
        child = subprocess.run([sys.executable, "-m", "dodo", *argv], env=env, capture_output=True, timeout=300,
                               stdin=subprocess.DEVNULL)
        assert child.returncode == 0, child.stderr
        assert shown in child.stdout + child.stderr, (child.stdout, child.stderr)
        assert b"error" not in child.stderr, child.stderr


# --- an existing output written by another program -----------------------------------------------------

def test_simulate_never_replaces_another_programs_database_with_a_solver_attribute(tmp_path, capsys):
    """`dodo simulate OUT` where OUT is another program's database of 8 states whose attributes record
    its solver (`solver: "my FFI code v2"`) and `complete` false: any `solver` attribute was taken for
    an unfinished `dodo simulate` database, so the run replaced it with its own single state, exit 0,
    without --overwrite (`--linear-only` likewise); `dodo apply -o` and `dodo synth -o` called it "a
    dodo simulate database (unfinished)". Now Dodo's databases are known by a `solver` attribute naming
    dodo.qke (or a `command` attribute of the `dodo simulate` run that wrote them): the file is
    refused, kept bit for bit, and named for what it is (an Emu database)."""
    from cli_helpers import digest

    out = emu_file(tmp_path / "theirs.h5", _emu_states())
    with h5py.File(out, "a") as handle:
        handle.attrs["solver"] = "my FFI code v2"
        handle.attrs["complete"] = False
    before = digest(out)
    for extra in ([], ["--linear-only"]):
        refused(capsys, ["simulate", str(out), "--random", "1", "--seed", "3", "--ncell", "16", "--nphi", "8", *extra],
                out, "not a dodo simulate database", "--overwrite")
        assert digest(out) == before
    data = emu_file(tmp_path / "emu.h5", _emu_states())
    for argv in (["apply", str(data), "--grid", "2x2x2", "-q", "-o", str(out)],
                 ["synth", "-n", "5", "-q", "-o", str(out)]):
        line = refused(capsys, argv, out, "--overwrite")
        assert "an Emu database" in line and "dodo simulate database" not in line, line
    assert digest(out) == before


@pytest.mark.parametrize("attributes", [{"nstates_valid": np.array([3, 4])}, {"nstates_valid": "n/a"},
                                        {"complete": np.array([True, False])}],
                         ids=["count-of-two-values", "count-as-text", "complete-of-two-values"])
def test_an_output_in_the_way_with_odd_attributes_is_named_not_a_traceback(tmp_path, capsys, attributes):
    """`dodo apply -o F` and `dodo synth -o F` over an existing `dodo simulate` database whose
    `nstates_valid` or `complete` attribute is not one number or flag (edited by hand, or written
    by another tool): the guard that names what F is failed itself: a `TypeError: only 0-dimensional
    arrays can be converted to Python scalars` traceback, or `dodo apply: error: invalid literal for
    int() with base 10: 'n/a'` / `The truth value of an array ... is ambiguous`, without saying that
    F exists or that --overwrite replaces it. Now F is named as a dodo simulate database and the
    refusal offers --overwrite."""
    out = emu_file(tmp_path / "db.h5", _emu_states())
    with h5py.File(out, "a") as handle:
        handle.attrs["solver"] = "dodo.qke fast-flavour QKE solver (docs/qke.md)"
        for name, value in attributes.items():
            handle.attrs[name] = value
    data = emu_file(tmp_path / "emu.h5", _emu_states())
    for argv in (["apply", str(data), "--grid", "2x2x2", "-q", "-o", str(out)],
                 ["synth", "-n", "5", "-q", "-o", str(out)]):
        line = refused(capsys, argv, out, "a dodo simulate database", "--overwrite")
        assert "Traceback" not in line


# --- a subclass of dodo.Closure through pickle -------------------------------------------------------

class LabelledClosure(dodo.Closure):
    """A user's subclass: a constructor of its own, an attribute and a method."""

    def __init__(self, model=None, *, label: str, **options):
        super().__init__(model, **options)
        self.label = label

    def described(self, F_init) -> tuple[str, np.ndarray]:
        return self.label, self.apply(F_init).F_pred


def _described_in_worker(closure, F_init):
    return type(closure).__name__, closure.described(F_init)


def test_a_subclass_of_closure_comes_back_from_pickle_as_itself():
    """A subclass of `dodo.Closure` (its own constructor, attribute and method) pickled, deep-copied or
    sent to a process pool: it came back as a plain `dodo.Closure` without its attribute (`__reduce__`
    rebuilt the base class), so the worker's `closure.described(...)` failed with `AttributeError:
    'Closure' object has no attribute 'described'`. Now it comes back as its class, with its
    attributes, loaded again as any closure (the same bits)."""
    import concurrent.futures
    import copy
    import multiprocessing
    import pickle

    closure = LabelledClosure("box3d", label="grid A", threads=1)
    F_init = np.zeros((3, 6, 4))
    F_init[:, :, 0] = 1.0
    F_init[:, 0, 3], F_init[:, 3, 3] = 0.5, -0.5
    expected = closure.apply(F_init).F_pred
    for again in (pickle.loads(pickle.dumps(closure)), copy.deepcopy(closure), copy.copy(closure)):
        assert type(again) is LabelledClosure and again.label == "grid A"
        label, F_pred = again.described(F_init)
        assert label == "grid A" and np.array_equal(F_pred, expected)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        name, (label, F_pred) = pool.submit(_described_in_worker, closure, F_init).result(timeout=300)
    assert name == "LabelledClosure" and label == "grid A" and np.array_equal(F_pred, expected)
    plain = pickle.loads(pickle.dumps(dodo.Closure("box3d")))  # the base class, as before
    assert type(plain).__name__ == "Closure" and not hasattr(plain, "label")


def test_a_model_package_given_as_data_is_named_as_one(tmp_path, capsys):
    """`dodo score data.h5 model.onnx` (the two arguments swapped) and `dodo apply model.onnx`: before,
    `model.onnx: not a readable HDF5 file (Unable to synchronously open file (file signature not
    found))`, which did not say what the file is. Now the line adds `it is an ONNX model package (dodo
    export), not data (`dodo score MODEL DATA ...` takes the model first ...)`."""
    model = Path(dodo.__file__).parent / "models" / "synthetic-test-equivariant.onnx"
    data = emu_file(tmp_path / "emu.h5", _emu_states())
    for argv in (["score", str(data), str(model)], ["apply", str(model), "--grid", "2x2x2"]):
        refused(capsys, argv, model, "an ONNX model package", "takes the model first")


def test_an_output_another_process_is_writing_is_named_so(tmp_path, capsys):
    """`dodo simulate OUT`, `dodo apply -o OUT`, `dodo synth -o OUT`, `dodo score --json OUT` while
    another process holds OUT (a `dodo simulate` database) open for writing (HDF5's file lock: an h5py
    session, a writer still running): before, simulate said `OUT exists and is not a dodo simulate
    database (it cannot be read as HDF5: ... unable to lock file ...): ... or --overwrite to replace
    it`, the others `exists and is an HDF5 file that cannot be read, ... or --overwrite to replace it`:
    a database called something it is not, and an offer to replace a file still being written. Now
    each says that another process has it open for writing: wait until it closes it, or give another
    output."""
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() in ("FALSE", "0"):
        pytest.skip("HDF5 file locking is switched off in this environment")
    from cli_helpers import digest

    out = emu_file(tmp_path / "db.h5", _emu_states())
    with h5py.File(out, "a") as handle:
        handle.attrs.update({"solver": "dodo.qke fast-flavour QKE solver (docs/qke.md)", "complete": True,
                             "nstates_valid": 8, "command": "dodo simulate db.h5 --random 8"})
    before = digest(out)
    writer = subprocess.Popen([sys.executable, "-c", "import sys, h5py\nf = h5py.File(sys.argv[1], 'a')\n"
                               "print('open', flush=True)\nsys.stdin.read()\n", str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        data = emu_file(tmp_path / "emu.h5", _emu_states())
        for argv in (["simulate", str(out), "--random", "1", "--seed", "3", "--ncell", "16", "--nphi", "8"],
                     ["apply", str(data), "--grid", "2x2x2", "-q", "-o", str(out)],
                     ["synth", "-n", "5", "-q", "-o", str(out)],
                     ["score", "box3d", str(data), "--bootstrap", "100", "--json", str(out)]):
            line = refused(capsys, argv, out, "another process has", "open for writing")
            assert "--overwrite" not in line, line
    finally:
        writer.communicate("", timeout=300)
    assert digest(out) == before


@pytest.mark.parametrize("name", ["runs.H5", "runs.hdf", "runs.he5", "runs"])
def test_simulate_reads_an_hdf5_input_whatever_its_suffix(tmp_path, capsys, name):
    """`dodo simulate OUT --input F` with an Emu-layout HDF5 file named `runs.H5`, `runs.hdf`, `runs.he5`
    or `runs` (no suffix): before, `input must be .h5/.hdf5 or .yaml/.yml; got runs.H5`, although `dodo
    score` and `dodo apply` read the same file. Now an HDF5 input is known by its content (HDF5's
    signature), YAML by its suffix; a file that is neither is refused naming both."""
    data = emu_file(tmp_path / name, _emu_states(2))
    out = tmp_path / "labels.h5"
    code, _, err = run(capsys, ["simulate", str(out), "--input", str(data), "--ncell", "16", "--nphi", "8",
                                "--linear-only", "-q"])
    assert code == 0, err
    with h5py.File(out, "r") as handle:
        assert handle["F4_initial(1|ccm)"].shape == (2, 4, 2, 3)
    text = tmp_path / "notes.txt"
    text.write_text("states: []\n")
    refused(capsys, ["simulate", str(tmp_path / "o.h5"), "--input", str(text), "--linear-only"], text,
            "neither an HDF5 file")


# --- a package whose metadata is not UTF-8 ---------------------------------------------------------------

def test_a_package_whose_metadata_is_not_utf8_is_refused_at_load(tmp_path, capsys):
    """The default model with two bytes of its `dodo.export_time` value replaced by 0xff 0xfe (not
    UTF-8, which ONNX's strings must be) and its digest recomputed: the runtime loaded it, `dodo score`
    and `dodo apply` ran, and then `closure.metadata` and pickling the closure failed with
    `UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 18`, naming no package. Now
    the closure is refused as it is made: `DODO_ERROR_MODEL_METADATA: model file "...": a metadata
    entry is not UTF-8 text ...`, in memory and from a file, and by `dodo score` in one line."""
    content = Path(dodo.__file__).parent.joinpath("models", "qke_default.onnx").read_bytes()
    stamp = content.index(dodo.Closure().metadata["dodo.export_time"].encode())
    edited = content[:stamp + 18] + b"\xff\xfe" + content[stamp + 20:]
    package = dodo._core.with_content_digest(edited)
    model = tmp_path / "edited.onnx"
    model.write_bytes(package)
    for source in (package, model):
        # RuntimeError since C round twenty-one: the runtime refuses it as it loads, as it does
        # every other DODO_ERROR_MODEL_METADATA (Python's own check, a ValueError, was then removed as its twin).
        with pytest.raises((RuntimeError, ValueError), match="DODO_ERROR_MODEL_METADATA.*not UTF-8"):
            dodo.Closure(source, threads=1)
    refused(capsys, ["score", str(model), str(emu_file(tmp_path / "emu.h5", _emu_states())), "--bootstrap", "100"],
            model, "not UTF-8")
