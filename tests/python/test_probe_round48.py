"""Outside probe, Python round forty-eight (docs/reliability_python.md section 78): the run-time
commands and the Python API as a user calls them from the README. Each test failed on the code
before its fix, except those marked as guards."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dodo
from cli_helpers import emu_file, run
from dodo.conventions import to_emu_layout
from test_probe_round46 import _cells  # three crossing cells, round forty-six's


def _data(tmp_path, name="cells.h5"):
    return str(emu_file(tmp_path / name, to_emu_layout(_cells(8))))


# --- --json, whose PATH is optional, took the word after it ----------------------------------

@pytest.mark.parametrize("argv, missing", [(["score", "--json", "box3d", "{data}"], "data"),
                                           (["evaluate", "--json", "run/best.pt"], "checkpoint")])
def test_a_json_option_that_took_the_next_word_says_so_in_the_usage_error(tmp_path, capsys, monkeypatch, argv,
                                                                           missing):
    """`dodo score --json box3d data.h5` (the report meant for standard output) said only "the following
    arguments are required: data", of a command line that gave data.h5: --json took 'box3d' as its
    PATH and data.h5 became the model. The error now says what --json took and what to write."""
    monkeypatch.chdir(tmp_path)
    if missing == "checkpoint":
        pytest.importorskip("torch")
    argv = [word.format(data=_data(tmp_path)) for word in argv]
    code, out, err = run(capsys, argv)
    line = err.strip().splitlines()[-1]
    assert code == 2 and out == ""
    assert f"the following arguments are required: {missing}" in line, err
    assert f"--json took {argv[2]!r} as the file for its report" in line and "--json -" in line, err
    assert not (tmp_path / argv[2]).exists()


@pytest.mark.parametrize("taken", ["box3d", "default", "model.onnx"])
def test_dodo_score_whose_json_took_the_model_says_so(tmp_path, capsys, monkeypatch, taken):
    """With two data files nothing is missing: `dodo score --json box3d a.h5 b.h5` refused a.h5 as "an
    HDF5 file (a data file?), not an ONNX model package", and `--json model.onnx a.h5 b.h5` said "does not
    write a report over it", without a word of --json having taken the model."""
    monkeypatch.chdir(tmp_path)
    if taken.endswith(".onnx"):
        import shutil

        from dodo.models import default_model_path

        shutil.copy(default_model_path(), tmp_path / taken)
    a, b = _data(tmp_path, "a.h5"), _data(tmp_path, "b.h5")
    code, out, err = run(capsys, ["score", "--json", taken, a, b, "--bootstrap", "100"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--json took {taken!r}, a model, as the file for its report" in err and "--json -" in err, err
    if not taken.endswith(".onnx"):
        assert not (tmp_path / taken).exists()


def test_json_before_the_arguments_with_a_dash_and_json_last_still_print_the_report(tmp_path, capsys):
    """Guard: the two spellings the hint names print the report; --json=PATH and a bad model keep their
    plain refusals."""
    data = _data(tmp_path)
    for argv in (["score", "--json", "-", "box3d", data, "--bootstrap", "100"],
                 ["score", "box3d", data, "--bootstrap", "100", "--json"]):
        code, out, err = run(capsys, argv)
        assert code == 0 and json.loads(out)["dodo_report"] == "dodo score", err
    code, _, err = run(capsys, ["score", "--json=box3d", data])
    assert code == 2 and "--json took" not in err and "required: data" in err
    code, _, err = run(capsys, ["score", data, data, "--json", str(tmp_path / "r.json")])
    assert code == 2 and "--json took" not in err and "is an HDF5 file" in err


# --- A model or data path that is there, but not a file: a dangling link, a loop of links --------

def _links(tmp_path, suffix):
    dangling = tmp_path / f"dangling{suffix}"
    dangling.symlink_to(f"moved{suffix}")
    loop_a, loop_b = tmp_path / f"loop_a{suffix}", tmp_path / f"loop_b{suffix}"
    loop_a.symlink_to(loop_b.name)
    loop_b.symlink_to(loop_a.name)
    return dangling, loop_a


@pytest.mark.skipif(not dodo.runtime_available(), reason="no closure runtime in this build")
def test_a_model_path_that_is_a_dangling_link_or_a_loop_is_not_called_missing(tmp_path, monkeypatch):
    """dodo.Closure (and dodo.closure, dodo score) said "model package 'm.onnx' does not exist" of a
    symbolic link whose package was moved, and of a loop of links, which `dodo apply --model` called
    "Too many levels of symbolic links": now the link's target, or the loop, is named."""
    monkeypatch.chdir(tmp_path)
    dangling, loop = _links(tmp_path, ".onnx")
    for call in (dodo.Closure, lambda path: dodo.closure(_cells(), model=path)):
        with pytest.raises(FileNotFoundError) as caught:
            call(dangling.name)
        assert str(caught.value) == ("model package 'dangling.onnx' is a symbolic link to 'moved.onnx', which does "
                                     "not exist (a dangling link: the package was moved or deleted)")
        with pytest.raises(OSError) as caught:
            call(loop.name)
        assert not isinstance(caught.value, FileNotFoundError) and caught.value.errno is not None
        assert str(caught.value).startswith("model package 'loop_a.onnx' cannot be read: Too many levels")
    with pytest.raises(FileNotFoundError, match=r"^model package 'moved.onnx' does not exist$"):
        dodo.Closure("moved.onnx")  # guard: a path that is not there keeps its words


def test_a_model_path_this_user_may_not_search_is_not_called_missing(tmp_path, monkeypatch):
    """A package in a directory the user may not search (os.stat: EACCES) was "does not exist" (as
    root, which searches every directory, the refusal is simulated: os.stat raises PermissionError)."""
    import errno
    import os

    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if os.fspath(path).startswith("locked/"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(PermissionError) as caught:
        dodo.Closure("locked/m.onnx")
    assert str(caught.value) == "model package 'locked/m.onnx' cannot be read: Permission denied"


@pytest.mark.parametrize("command", ["score", "apply"])
def test_a_data_file_that_is_a_dangling_link_names_its_target(tmp_path, capsys, monkeypatch, command):
    """`dodo score`/`dodo apply` of a data file that is a link to a file moved away said "cannot read
    dangling.h5: no such file (relative to the current directory ...)", of a link that is there."""
    monkeypatch.chdir(tmp_path)
    dangling, loop = _links(tmp_path, ".h5")
    argv = ["score", "box3d", dangling.name] if command == "score" else ["apply", dangling.name]
    code, _, err = run(capsys, argv)
    assert code == 2 and err.strip() == (f"dodo {command}: error: cannot read dangling.h5: a symbolic link to "
                                         "'moved.h5', which does not exist (a dangling link: the file was moved or "
                                         "deleted)"), err
    code, _, err = run(capsys, argv[:-1] + ["moved.h5"])  # guard: a file that is not there keeps its words
    assert code == 2 and "cannot read moved.h5: no such file (relative to the current directory" in err


# --- A path with a newline or spaces around it, read from a text file --------------------------

@pytest.mark.skipif(not dodo.runtime_available(), reason="no closure runtime in this build")
@pytest.mark.parametrize("given", ["m.onnx\n", " m.onnx", "m.onnx "])
def test_a_model_path_with_white_space_around_it_names_the_file_that_exists(tmp_path, monkeypatch, given):
    """`dodo.Closure(open("model_path.txt").read())` keeps the line's newline: "model package 'm.onnx\\n'
    does not exist", of a package that does, without a word of the white space."""
    import shutil

    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    shutil.copy(default_model_path(), tmp_path / "m.onnx")
    for call in (dodo.Closure, lambda path: dodo.closure(_cells(), model=path)):
        with pytest.raises(FileNotFoundError) as caught:
            call(given)
        assert str(caught.value) == (f"model package {given!r} does not exist (its name has leading or trailing "
                                     "white space; 'm.onnx' exists: give path.strip())")
    with pytest.raises(FileNotFoundError, match=r"does not exist$"):
        dodo.Closure("other.onnx\n")  # guard: no hint where the stripped name is not there either
    assert dodo.Closure("m.onnx").has_model  # guard


@pytest.mark.parametrize("command", ["score", "apply", "apply --model"])
def test_a_data_or_model_file_argument_with_white_space_around_it_names_the_file(tmp_path, capsys, monkeypatch,
                                                                                  command):
    """`dodo score box3d 'cells.h5 '` (a name pasted with its space, a line of a list with its newline)
    said "cannot read cells.h5 : no such file", the white space invisible."""
    monkeypatch.chdir(tmp_path)
    _data(tmp_path)
    argv = {"score": ["score", "box3d", "cells.h5\n"], "apply": ["apply", " cells.h5"],
            "apply --model": ["apply", "cells.h5", "--model", "cells.h5 "]}[command]
    given = argv[-1]
    code, _, err = run(capsys, argv)
    assert code == 2 and f"cannot read {given!r}: no such file; its name has leading or trailing white space, " \
                         "and 'cells.h5' exists: give that name" in err, err
    assert len(err.strip().splitlines()) == 1


# --- The Emu-layout hint names a conversion that works for the shape given ----------------------

@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("batch", [(3,), (), (2, 3), (1, 1, 2)])
def test_the_emu_layout_refusal_names_a_conversion_that_takes_the_shape_given(batch, as_list):
    """Round forty-seven's refusal of F_init in Emu's layout named dodo.conventions.from_emu_layout(F_init),
    which takes [states, 4, 2, 3] only: for one state (4, 2, 3) and for a grid [nx, ny, 4, 2, 3] the
    conversion it named was refused in turn ("Emu four-flux array must have shape [nsims, 4 (x,y,z,t),
    2, NF]; got (4, 2, 3)"). The conversion the message names, run as written, now gives the cells."""
    import re

    cells = _cells(int(np.prod(batch, dtype=int)))
    F = cells.reshape(batch + (6, 4))
    given = to_emu_layout(cells).reshape(batch + (4, 2, 3))
    given = given.tolist() if as_list else given  # nested lists, as JSON or a script writes cells
    with pytest.raises(ValueError) as caught:
        dodo.box3d(given)
    message = str(caught.value)
    assert "dodo.conventions.from_emu_layout(F_init)" in message, message
    named = re.search(r"; here [^:]*: (.*), which also puts t first$", message)
    assert (named is None) == (len(batch) == 1), message
    expression = named.group(1) if named else "dodo.conventions.from_emu_layout(F_init)"
    converted = eval(expression, {"dodo": dodo, "np": np, "F_init": given})
    assert converted.shape == F.shape and np.array_equal(converted, F)
    assert np.array_equal(dodo.box3d(converted).F_box, dodo.box3d(F).F_box)


def _remedy(message: str, marker: str) -> str:
    return message[message.index(marker) + len(marker):]


@pytest.mark.parametrize("as_list", [True, False])
def test_the_velocity_remedies_run_as_written_on_a_list_u(as_list):
    """The README gives u as a list ([1.0, 0.0, 0.0, 0.0]). For a list in Emu's (x, y, z, t) order the
    refusal's remedy `u[..., [3, 0, 1, 2]]` was a TypeError ("list indices must be integers or slices,
    not tuple"), and for a three-velocity given as a list, `W[..., None] * v` with W = 1/sqrt(1 - v^2)
    as a Python float failed too. Each remedy, run as the message writes it, now gives the plain call's
    result."""
    F = _cells(1)[0]
    W = 1.0 / np.sqrt(1.0 - 0.3 ** 2)
    u = np.array([W, 0.0, 0.3 * W, 0.0])
    emu_order = [0.0, 0.3 * W, 0.0, W] if as_list else np.array([0.0, 0.3 * W, 0.0, W])
    with pytest.raises(ValueError) as caught:
        dodo.box3d(F, emu_order)
    remedy = _remedy(str(caught.value), "pass u in the order (t, x, y, z), ")
    array_remedy, list_remedy = remedy.split(" (of a list: ")
    reordered = eval(list_remedy[:-1] if as_list else array_remedy, {"np": np, "u": emu_order})
    assert np.array_equal(dodo.box3d(F, reordered).F_box, dodo.box3d(F, u).F_box)

    v = [0.0, 0.3, 0.0] if as_list else np.array([0.0, 0.3, 0.0])
    with pytest.raises(ValueError) as caught:
        dodo.box3d(F, v)
    remedy = _remedy(str(caught.value), "with W = 1/sqrt(1 - v^2): ")
    names = {"np": np, "v": v}
    exec(remedy.replace("; ", "\n"), names)
    assert np.allclose(dodo.box3d(F, names["u"]).F_box, dodo.box3d(F, u).F_box, rtol=1e-13, atol=1e-13)


# --- Another call's out, read through a memoryview or a torch view -------------------------------

def _views():
    views = {"memoryview": memoryview, "__array_interface__": lambda a: type("I", (), {"__array_interface__":
                                                                                      a.__array_interface__})()}
    try:
        import torch

        views["torch.from_numpy"] = torch.from_numpy
    except ImportError:
        pass
    return views


@pytest.mark.parametrize("view", sorted(_views()))
def test_a_view_that_is_no_ndarray_of_a_running_calls_out_is_refused(view):
    """Round forty-five refused a call that reads the out= another thread's call is writing, and one that
    writes what another call reads, but only for NumPy arrays: the same memory as a memoryview, an
    object exposing __array_interface__ or a torch tensor (torch.from_numpy(out.F_box)) was read half
    written without a word, and an out= over the memory a running call read through such a view was
    written under it."""
    from test_probe_round45 import _Held, _cells as _cells45, _finish, _run_held

    make = _views()[view]
    F = _cells45(64, 1)
    out = dodo.Box3DResult.empty((64,))
    held = _Held(F)
    thread, outcome = _run_held(lambda: dodo.box3d(held, threads=1, out=out), held)
    try:
        with pytest.raises(ValueError, match=r"^F_init shares memory with out\.F_box, which another call running now "
                                             r"\(in another thread\) is writing"):
            dodo.invariants(make(out.F_box))
    finally:
        _finish(thread, held, outcome)
    # The other way round: a running call reads F through the view; an out= over F is refused.
    source = _cells45(64, 2)
    writer_out = dodo.Box3DResult(source, *dodo.Box3DResult.empty((64,))[1:])
    reader = _Held(None)  # its events only: the running call's u waits on them, its F_init is the view
    thread, outcome = _run_held(lambda: dodo.box3d(make(source), threads=1, u=_WaitForU(reader)), reader)
    try:
        with pytest.raises(ValueError, match=r"^out\.F_box shares memory with F_init, which another call running now "
                                             r"\(in another thread\) reads"):
            dodo.box3d(_cells45(64, 3), threads=1, out=writer_out)
    finally:
        _finish(thread, reader, outcome)


class _WaitForU:
    """A u (at rest) read only when the test lets it: holds the call whose F_init is a view."""

    def __init__(self, held) -> None:
        self.held = held

    def __array__(self, dtype=None, copy=None):
        self.held.entered.set()
        assert self.held.release.wait(120)
        u = np.zeros(4)
        u[0] = 1.0
        return u


def test_inputs_that_are_no_views_are_read_once_and_not_claimed():
    """Guard: an array-like whose __array__ may compute (a dask array) is converted once per call, as
    before; lists are taken as before."""
    calls = []

    class Lazy:
        def __array__(self, dtype=None, copy=None):
            calls.append(1)
            return _cells(2)

    assert np.array_equal(dodo.invariants(Lazy()), dodo.invariants(_cells(2)))
    assert len(calls) == 1
    assert np.array_equal(dodo.invariants(_cells(2).tolist()), dodo.invariants(_cells(2)))


# --- Masked cells: the remedy named runs ----------------------------------------------------------

@pytest.mark.parametrize("masked", ["F_init", "u"])
@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_the_masked_array_refusal_names_a_way_to_drop_the_cells_that_runs(masked, batch):
    """A masked array with masked entries was refused with "fill or drop those cells first (np.ma.filled,
    np.ma.compress_rows)": compress_rows refuses every batch of cells ("compress_rows works for 2D arrays
    only"), and for a u of one velocity per cell it dropped u's rows alone, which no longer matched
    F_init's cells. The cells to keep are now given as code that runs, for both arrays."""
    n = int(np.prod(batch))
    F = _cells(n).reshape(batch + (6, 4))
    W = 1.0 / np.sqrt(1.0 - 0.2 ** 2)
    u = np.broadcast_to([W, 0.2 * W, 0.0, 0.0], batch + (4,)).copy()
    arrays = {"F_init": np.ma.masked_array(F), "u": np.ma.masked_array(u)}
    hole = (1,) * len(batch)
    arrays[masked][hole + ((2, 1) if masked == "F_init" else (3,))] = np.ma.masked
    with pytest.raises(ValueError) as caught:
        dodo.box3d(arrays["F_init"], arrays["u"])
    message = str(caught.value)
    remedy = message[message.index("or drop those cells: ") + len("or drop those cells: "):]
    keep_code, rest = remedy.split(", then ")
    names = {"np": np, **arrays}
    exec(keep_code, names)
    keep = names["keep"]
    assert keep.shape == batch and keep.sum() == n - 1
    result = dodo.box3d(arrays["F_init"][keep], arrays["u"][keep])
    expected = dodo.box3d(F[keep], u[keep])
    assert np.array_equal(result.F_box, expected.F_box)
    assert "F_init[keep]" in rest and "u[keep]" in rest


def test_the_boosts_per_cell_remedy_runs_on_a_nested_list_u():
    """dodo.boost_to_rest(F, u) with cells F (6, 6, 4) and u (6, 4), one velocity per cell, is refused
    (it would broadcast against the species axis) saying "pass u[..., None, :]": of a nested list u
    (the README writes u as a list) that is a TypeError. The remedy for a list is now named too."""
    F = _cells(6)
    W = 1.0 / np.sqrt(1.0 - 0.3 ** 2)
    u = [[W, 0.3 * W, 0.0, 0.0]] * 6
    with pytest.raises(ValueError) as caught:
        dodo.boost_to_rest(F, u)
    message = str(caught.value)
    remedy = message[message.index("(of a list: ") + len("(of a list: "):message.index(") for one velocity per cell")]
    per_cell = eval(remedy, {"np": np, "u": u})
    assert np.array_equal(dodo.boost_to_rest(F, per_cell), dodo.boost_to_rest(F, np.asarray(u)[:, None, :]))


@pytest.mark.skipif(not dodo.runtime_available(), reason="no closure runtime in this build")
@pytest.mark.parametrize("spelling", ["$DODO_PROBE48_DIR/m.onnx", "${DODO_PROBE48_DIR}/m.onnx"])
def test_a_model_path_with_an_unexpanded_variable_names_the_file_that_exists(tmp_path, monkeypatch, spelling):
    """A path from a config file (or a single-quoted shell argument), "$SCRATCH/models/m.onnx", was "model
    package ... does not exist" of a package that does: the shell expands variables, Python does not
    (as for a leading ~, section 59)."""
    import os
    import shutil

    from dodo.models import default_model_path

    shutil.copy(default_model_path(), tmp_path / "m.onnx")
    monkeypatch.setenv("DODO_PROBE48_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as caught:
        dodo.Closure(spelling)
    assert str(caught.value) == (f"model package {spelling!r} does not exist (a $VARIABLE is the shell's: Python does "
                                 f"not expand it; {str(tmp_path / 'm.onnx')!r} exists: give os.path.expandvars(path))")
    assert dodo.Closure(os.path.expandvars(spelling)).has_model
    with pytest.raises(FileNotFoundError, match=r"does not exist$"):
        dodo.Closure("$DODO_PROBE48_UNSET/m.onnx")  # guard: no hint where nothing is there


@pytest.mark.skipif(not dodo.runtime_available(), reason="no closure runtime in this build")
def test_a_relative_model_path_from_a_removed_directory_says_the_directory_was_removed(tmp_path, monkeypatch):
    """A job whose directory was removed and made again under it (rm -rf run && mkdir run && cp ...):
    dodo.Closure("m.onnx") said "model package 'm.onnx' does not exist", while `ls run/m.onnx` shows it;
    relative paths from a removed working directory name nothing. The refusal now says so."""
    import shutil

    from dodo.models import default_model_path

    run_directory = tmp_path / "run"
    run_directory.mkdir()
    monkeypatch.chdir(run_directory)
    shutil.rmtree(run_directory)
    run_directory.mkdir()
    shutil.copy(default_model_path(), run_directory / "m.onnx")
    for call in (dodo.Closure, lambda path: dodo.closure(_cells(), model=path)):
        with pytest.raises(FileNotFoundError) as caught:
            call("m.onnx")
        assert str(caught.value) == ("model package 'm.onnx' does not exist (the current directory was removed, so "
                                     "relative paths name nothing: give an absolute path, or os.chdir into the "
                                     "directory again)")
    assert dodo.Closure(str(run_directory / "m.onnx")).has_model


def test_dodo_info_names_the_target_of_a_dangling_onnxruntime_library_link(tmp_path, capsys, monkeypatch):
    """`DODO_ONNXRUNTIME_LIBRARY=/opt/ort/libonnxruntime.so dodo info`, the path a symbolic link to a
    library removed by an upgrade: "NOT FOUND: no such file", of a link that is there. The link's target
    is now named."""
    link = tmp_path / "libonnxruntime.so"
    link.symlink_to("/opt/removed/libonnxruntime.so.1.17.0")
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", str(link))
    code, out, _ = run(capsys, ["info"])
    line = next(line for line in out.splitlines() if line.startswith("onnxruntime_library:"))
    assert code == 0 and (f"{link} (DODO_ONNXRUNTIME_LIBRARY; NOT FOUND: a symbolic link to "
                          "/opt/removed/libonnxruntime.so.1.17.0, which does not exist, so a closure with a model "
                          "fails to load it") in line, out


@pytest.mark.skipif(not dodo.runtime_available(), reason="no closure runtime in this build")
def test_a_file_url_as_the_model_names_its_path(tmp_path):
    """dodo.Closure(Path(p).as_uri()) (a file:// URL, as pathlib or a browser writes it; %20 for a space)
    said only "does not exist"; section 59's URL hint covered http, s3, gs and ftp, where the file is
    remote. The path the URL names is now given (decoded)."""
    import shutil

    from dodo.models import default_model_path

    package = tmp_path / "my model.onnx"
    shutil.copy(default_model_path(), package)
    with pytest.raises(FileNotFoundError) as caught:
        dodo.Closure(package.as_uri())
    assert str(caught.value) == (f"model package {package.as_uri()!r} does not exist (a file:// URL: give the file's "
                                 f"path, {str(package)!r}, which exists)")
    assert "%20" in package.as_uri() and dodo.Closure(str(package)).has_model
    with pytest.raises(FileNotFoundError, match=r"\(a file:// URL: give the file's path\)$"):
        dodo.Closure((tmp_path / "none.onnx").as_uri())


@pytest.mark.parametrize("argument", ["F_init", "u"])
def test_an_h5py_dataset_read_after_its_file_was_closed_says_the_file_is_closed(tmp_path, argument):
    """`with h5py.File(p) as f: F = f["F_init"]` then dodo.box3d(F, u) after the block (h5py datasets are
    read on demand): "F_init is not a rectangular array of real numbers: Invalid dataset identifier
    (identifier is not of specified type)" (or h5py's RuntimeError), nothing of the closed file."""
    h5py = pytest.importorskip("h5py")
    F = _cells(2)
    u = np.array([[1.0, 0.0, 0.0, 0.0]] * 2)
    with h5py.File(tmp_path / "cells.h5", "w") as handle:
        handle["F_init"], handle["u"] = F, u
    with h5py.File(tmp_path / "cells.h5", "r") as handle:
        datasets = {"F_init": handle["F_init"], "u": handle["u"]}
        assert np.array_equal(dodo.box3d(datasets["F_init"], datasets["u"]).F_box, dodo.box3d(F, u).F_box)  # open: read
    arguments = {"F_init": F, "u": u, argument: datasets[argument]}
    with pytest.raises(ValueError) as caught:
        dodo.box3d(arguments["F_init"], arguments["u"])
    message = str(caught.value)
    assert message.startswith(f"{argument} (h5py.") and "cannot be read as a NumPy array" in message, message
    assert message.endswith("; its HDF5 file is closed: read the dataset while the file is open (f[name][()] inside "
                            "the with block)"), message
    with pytest.raises(ValueError, match=r"^F_init is not a rectangular array of real numbers"):
        dodo.box3d([[1.0, 2.0], [3.0]])  # guard: a ragged list keeps its words
