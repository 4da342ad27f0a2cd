"""Outside probe, Python round forty-nine (docs/reliability_python.md section 81): the Python API and
the run-time commands as a user calls them from the README. Each test failed on the code before its
fix, except those marked as guards."""
from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest

import dodo
from cli_helpers import emu_file, run
from dodo.conventions import to_emu_layout


def _states(n: int = 4) -> np.ndarray:
    """``n`` distinct crossing cells (no two alike: `dodo score` scores a repeated state once)."""
    F = np.zeros((n, 6, 4))
    F[:, 0] = [1.0, 0.0, 0.1, 0.5]
    F[:, 3] = [1.0, 0.0, 0.0, -0.5]
    F[:, [1, 2, 4, 5], 0] = 0.3
    F[:, 0, 0] += 0.01 * np.arange(n)
    return F


def _needs_runtime():
    if not dodo.runtime_available():
        pytest.skip("no closure runtime in this build")


# --- a directory given as the model -----------------------------------------------------------

@pytest.mark.parametrize("held", [0, 1, 2])
def test_a_directory_given_as_the_model_is_an_is_a_directory_error_naming_its_package(tmp_path, held):
    """`dodo.Closure("run")` (a run's directory, not its model.onnx) was the binding's FileNotFoundError,
    errno None, of a path that is there, and said nothing of the package inside. Now an
    IsADirectoryError (errno EISDIR; still a FileNotFoundError for code that caught that) in the same
    words, naming the package the directory holds."""
    _needs_runtime()
    from dodo.models import default_model_path

    run_directory = tmp_path / "run"
    run_directory.mkdir()
    names = ["model.onnx", "other.onnx"][:held]
    for name in names:
        shutil.copy(default_model_path(), run_directory / name)
    (run_directory / "notes.txt").write_text("not a package\n")
    for model in (str(run_directory), str(run_directory) + "/", run_directory):
        with pytest.raises(IsADirectoryError) as refusal:
            dodo.Closure(model)
        assert isinstance(refusal.value, FileNotFoundError) and refusal.value.errno == errno.EISDIR
        import pickle

        copied = pickle.loads(pickle.dumps(refusal.value))  # a worker's error, sent back: the same
        assert isinstance(copied, IsADirectoryError) and copied.errno == errno.EISDIR and str(copied) == str(refusal.value)
        text = str(refusal.value)
        assert text.startswith(f'DODO_ERROR_FILE: model path "{model}" is a directory, not a model file'), text
        assert "\n" not in text
        if held == 1:
            assert text.endswith(f"; it holds one model package: give {str(run_directory / 'model.onnx')!r}"), text
            assert dodo.Closure(str(run_directory / "model.onnx")).has_model  # the remedy, as written
        elif held == 2:
            assert "it holds 2 .onnx files ('model.onnx', 'other.onnx'): give the path of one of them" in text
        else:
            assert text.endswith("is a directory, not a model file"), text


def test_dodo_score_of_a_directory_as_the_model_names_its_package(tmp_path, capsys, monkeypatch):
    """The same through `dodo score run data.h5`: one line that names run/model.onnx."""
    _needs_runtime()
    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    shutil.copy(default_model_path(), tmp_path / "run" / "model.onnx")
    data = str(emu_file(tmp_path / "cells.h5", to_emu_layout(_states())))
    code, out, err = run(capsys, ["score", "run", data, "--bootstrap", "100"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "is a directory, not a model file; it holds one model package: give 'run/model.onnx'" in err, err


def test_a_training_runs_directory_as_the_model_says_to_export_its_checkpoint(tmp_path):
    """A `dodo train` run's directory (best.pt, last.pt, no package) as the model: the refusal names the
    checkpoint and the export command, as for the checkpoint itself given as the model."""
    _needs_runtime()
    (tmp_path / "run").mkdir()
    for name in ("last.pt", "best.pt"):
        (tmp_path / "run" / name).write_bytes(b"PK\x03\x04")
    with pytest.raises(IsADirectoryError) as refusal:
        dodo.Closure(str(tmp_path / "run"))
    best = str(tmp_path / "run" / "best.pt")
    assert str(refusal.value).endswith(f"is a directory, not a model file; it holds no model package but a PyTorch "
                                       f"checkpoint ({best!r}): export it first, dodo export {best} -o model.onnx, "
                                       "and give model.onnx"), refusal.value


# --- dodo score's growth ratios over measured rates near the bottom of float64 ----------------------

@pytest.mark.parametrize("tiny", [1e-300, 5e-310])
def test_a_ratio_that_overflows_over_a_tiny_measured_rate_is_not_called_a_non_finite_rate(tmp_path, capsys, tiny):
    """A measured growthRate(1|s) of 1e-300 (or a subnormal) on one state: the model's finite rate over it
    overflows, and the table said "a non-finite rate on 1 of 4 states", of a rate that is finite. Now
    the ratio is what is named, with the measured rate, counted apart from non-finite rates in the JSON;
    the state is still counted as not within 10%."""
    _needs_runtime()
    # Densities of a merger (1e33 cm^-3): rates of ~1e11 s^-1, as in Emu's files.
    data = str(emu_file(tmp_path / "cells.h5", to_emu_layout(1e33 * _states()),
                        **{"growthRate(1|s)": np.array([tiny, 1e10, 1e10, 1e10])}))
    code, out, err = run(capsys, ["score", "box3d", data, "--bootstrap", "100"])
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.lstrip().startswith(("model ", "box3d_proxy"))
            and "median" in line]
    assert len(rows) == 2, out
    for row in rows:
        assert "non-finite rate" not in row, row
        assert f"a ratio beyond float64's range on 1 of 4 states (a finite rate over a measured rate as small as " \
               f"{tiny:.3g} s^-1), counted as not within" in row, row
    code, out, err = run(capsys, ["score", "box3d", data, "--bootstrap", "100", "--json", "-"])
    growth = json.loads(out)["growth_rate"]
    for name in ("model", "box3d_proxy"):
        assert growth[name]["non_finite"] == 0 and growth[name]["ratio_overflow"] == 1, growth
        assert growth[name]["smallest_measured_overflowing"] == tiny
        assert growth[name]["within_10_percent"] < 1


# --- a file name that does not print -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["new\nline.h5", "tab\tbed.h5", "cr\rlf.h5"])
def test_dodo_scores_header_keeps_a_file_name_with_a_newline_on_one_line(tmp_path, capsys, monkeypatch, name):
    """`dodo score box3d $'new\\nline.h5'` split the table's first line in two ("... on new" and
    "line.h5 (4 states; ..."), and a \\r rewrote it on a terminal. The name is now shown quoted with
    its escapes, as Python's repr writes it; so is the model's, in the same line."""
    _needs_runtime()
    monkeypatch.chdir(tmp_path)
    emu_file(tmp_path / name, to_emu_layout(_states()))
    code, out, err = run(capsys, ["score", "box3d", name, "--bootstrap", "100"])
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith(f"dodo score: box3d on {name!r} (4 states;"), first
    assert "\r" not in out
    # The report's file, named on stderr after it is written ("wrote r\nep.json" was two lines too).
    report = name.replace(".h5", ".json")
    code, out, err = run(capsys, ["score", "box3d", name, "--bootstrap", "100", "--json", report])
    assert code == 0 and err.splitlines()[-1] == f"wrote {report!r}", err
    assert out.splitlines()[0].startswith(f"dodo score: box3d on {name!r}")


def test_dodo_apply_keeps_a_file_name_with_a_newline_on_one_line(tmp_path, capsys, monkeypatch):
    """`dodo apply $'new\\nline.h5' -o $'o\\nut.h5'`: its first line ("closure on a 2x2x1 grid (4 cells from
    new", "line.h5), ...") and its last ("cells written to o", "ut.h5") were split the same way."""
    _needs_runtime()
    monkeypatch.chdir(tmp_path)
    emu_file(tmp_path / "new\nline.h5", to_emu_layout(_states()))
    code, out, err = run(capsys, ["apply", "new\nline.h5", "--grid", "2x2x1", "--model", "box3d", "-o", "o\nut.h5",
                                  "-q"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("closure on a 2x2x1 grid (4 cells from 'new\\nline.h5'), fluid speeds"), lines[0]
    assert lines[-1] == "cells written to 'o\\nut.h5'", lines[-1]
    assert (tmp_path / "o\nut.h5").is_file()


# --- an array that is a DLPack producer and nothing more ------------------------------------------

class _DLPackOnly:
    """An array as the array API standard's interchange gives it (array-api-strict 2.1.1's arrays: no
    __array__, no __array_interface__): DLPack alone."""

    def __init__(self, array, fail=None):
        self._array, self._fail = array, fail

    def __dlpack__(self, **kwargs):
        if self._fail is not None:
            raise BufferError(self._fail)
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def _crossing(n=3):
    F = _states(n)
    u = np.array([1.0, 0.0, 0.0, 0.0])
    return F, u


def _array_functions():
    functions = {"box3d": lambda F, u: dodo.box3d(F, u).F_box, "invariants": dodo.invariants}
    if dodo.runtime_available():
        functions["Closure.apply"] = lambda F, u: dodo.Closure("box3d").apply(F, u).F_pred
        functions["closure"] = dodo.closure
    return functions


@pytest.mark.parametrize("function", ["box3d", "invariants", "Closure.apply", "closure"])
def test_an_array_that_is_only_a_dlpack_producer_is_read_as_numpy_reads_it(function):
    """F_init (or u) given as an object that NumPy reads through DLPack only (np.from_dlpack) was refused:
    "F_init must be an array of real numbers with shape (..., 6, 4) ...; got a _DLPackOnly". Now read
    without a copy, bit for bit the plain call, float32 included."""
    functions = _array_functions()
    if function not in functions:
        pytest.skip("no closure runtime in this build")
    call = functions[function]
    F, u = _crossing()
    expected = call(F, u)
    assert np.array_equal(call(_DLPackOnly(F), u), expected)
    assert np.array_equal(call(F, _DLPackOnly(u)), expected)
    assert np.array_equal(call(_DLPackOnly(F.astype(np.float32)), u), call(F.astype(np.float32), u))


def test_a_dlpack_producer_numpy_cannot_read_is_one_clear_line():
    """One whose DLPack export fails (an array on a GPU: "Unsupported device in DLTensor") is a ValueError
    naming the argument, its type and the library's words, not "got a _DLPackOnly"."""
    F, u = _crossing()
    with pytest.raises(ValueError) as refusal:
        dodo.box3d(_DLPackOnly(F, fail="Unsupported device in DLTensor."), u)
    text = str(refusal.value)
    assert text.startswith("F_init (test_probe_round49._DLPackOnly) cannot be read as a NumPy array through DLPack: "
                           "Unsupported device in DLTensor; give a NumPy array"), text
    assert "\n" not in text


# --- Closure's lebedev_order past a C int, and below zero ------------------------------------------

@pytest.mark.parametrize("order", [2**31, 2**63, 10**30, -2**63 - 1, -17])
def test_a_lebedev_order_past_the_c_int_or_negative_is_one_line_in_box3ds_words(order):
    """`dodo.Closure("box3d", lebedev_order=2**31)` (or 10**30) was pybind11's four-line TypeError
    "__init__(): incompatible constructor arguments. The following argument types are supported: ...",
    where dodo.box3d and an order of 18 say it is not available; a negative order was the runtime's
    "must be positive, or 0 for the model's", of a 0 that Python refuses. Each is now one ValueError
    line: the orders there are, or the rule Python's 0 is refused with."""
    _needs_runtime()
    with pytest.raises(ValueError) as refusal:
        dodo.Closure("box3d", lebedev_order=order)
    text = str(refusal.value)
    assert "\n" not in text and "incompatible" not in text and "0 for the model's" not in text, text
    if order > 0:
        assert text == (f"DODO_ERROR_INVALID_ARGUMENT: Box3D settings: lebedev_order {order} is not available; "
                        "available orders: 17 41 131"), text
    else:
        assert text == f"lebedev_order must be a Lebedev order (17, 41, 131), or None for the model's; got {order}"
    assert dodo.Closure("box3d", lebedev_order=41).apply(*_crossing()).F_pred.shape == (3, 6, 4)


# --- dodo info: DODO_ONNXRUNTIME_LIBRARY with white space -----------------------------------------

@pytest.mark.parametrize("value", [" ", "{library} ", " libonnxruntime.so.1"])
def test_dodo_info_says_a_library_variable_with_white_space_names_no_file(capsys, monkeypatch, value):
    """DODO_ONNXRUNTIME_LIBRARY=" " (or a path with a trailing space, from a quoted line of a job script)
    makes every closure with a model fail to load ONNX Runtime ("  : cannot open shared object file"), and
    `dodo info`, the installation's check, showed the value without a word ("no such file" at most, the
    space unseen). It now says NOT FOUND, that the value has white space, and which file exists."""
    _needs_runtime()
    from dodo._closure import onnxruntime_library_path

    library = onnxruntime_library_path()
    if not library:
        pytest.skip("no onnxruntime package in this Python")
    value = value.format(library=library)
    monkeypatch.setenv("DODO_ONNXRUNTIME_LIBRARY", value)
    code, out, err = run(capsys, ["info"])
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("onnxruntime_library:"))
    assert "NOT FOUND" in line and "so a closure with a model fails to load it" in line, line
    if value.strip():
        assert "its value has leading or trailing white space" in line, line
        if "/" in value:
            assert f"{library} exists: remove the white space" in line, line
    else:
        assert "a value of white space alone, no file name" in line, line


# --- a path through a file: "m.onnx/", "data.h5/x" -------------------------------------------------

@pytest.mark.parametrize("suffix, words", [("/", "a trailing '/' asks for a directory; {file!r} is a file: give it "
                                                 "without the '/'"),
                                           ("/x.onnx", "{file!r}, a part of the path, is a file, not a directory")])
def test_a_model_path_through_a_file_names_the_file(tmp_path, suffix, words):
    """`dodo.Closure("m.onnx/")` ("$RUN/model.onnx/") was "model package 'm.onnx/' does not exist", of a
    package that does; the words now say which part of the path is a file."""
    _needs_runtime()
    from dodo.models import default_model_path

    package = str(tmp_path / "m.onnx")
    shutil.copy(default_model_path(), package)
    with pytest.raises(FileNotFoundError) as refusal:
        dodo.Closure(package + suffix)
    text = str(refusal.value)
    assert text.startswith(f"model package {package + suffix!r} does not exist (") and words.format(file=package) in text, text
    assert dodo.Closure(package).has_model


@pytest.mark.parametrize("argv", [["score", "box3d", "cells.h5/"], ["apply", "cells.h5/", "--grid", "2x2x1"],
                                  ["apply", "cells.h5", "--grid", "2x2x1", "--model", "m.onnx/"]])
def test_a_data_or_model_file_argument_through_a_file_names_the_file(tmp_path, capsys, monkeypatch, argv):
    """The commands' inputs said "cannot read cells.h5/: no such file (relative to the current directory
    ...)" of a file that is there."""
    _needs_runtime()
    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    emu_file(tmp_path / "cells.h5", to_emu_layout(_states()))
    shutil.copy(default_model_path(), tmp_path / "m.onnx")
    code, out, err = run(capsys, argv)
    name = next(word for word in argv if word.endswith("/")).rstrip("/")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"a trailing '/' asks for a directory; {name!r} is a file: give it without the '/'" in err, err


def test_dodo_score_of_a_directory_of_data_files_names_them_and_the_glob(tmp_path, capsys, monkeypatch):
    """`dodo score default runs` (the campaign's directory) said "runs is a directory, not a regular file;
    give an Emu-layout HDF5 file", where dodo score takes the directory's files together: the refusal now
    says how many there are and the command line that scores them; it runs as written."""
    _needs_runtime()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "empty").mkdir()
    emu_file(tmp_path / "runs" / "a.h5", to_emu_layout(_states()))
    emu_file(tmp_path / "runs" / "b.h5", to_emu_layout(2 * _states()))
    code, out, err = run(capsys, ["score", "box3d", "runs", "--bootstrap", "100"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.strip() == ("dodo score: error: runs is a directory, not a regular file; give an Emu-layout HDF5 file (it "
                           "holds 2 HDF5 file(s), e.g. 'a.h5': dodo score scores several files together, e.g. dodo "
                           "score MODEL runs/*.h5)"), err
    import glob

    code, out, err = run(capsys, ["score", "box3d", *sorted(glob.glob("runs/*.h5")), "--bootstrap", "100"])
    assert code == 0 and "(8 states;" in out.splitlines()[0], (out, err)
    code, out, err = run(capsys, ["score", "box3d", "empty", "--bootstrap", "100"])
    assert code == 2 and err.strip().endswith("is a directory, not a regular file; give an Emu-layout HDF5 file"), err


# --- a name that differs in letter case only -------------------------------------------------------

def test_a_model_or_data_name_in_another_letter_case_names_the_file_there(tmp_path, capsys, monkeypatch):
    """`dodo.Closure("Model.onnx")` for model.onnx (a script from a case-insensitive file system) and
    `dodo score box3d Cells.h5` for cells.h5: "does not exist" / "no such file (relative to the current
    directory ...)" of files that are there; now the file of the other case is named. Two candidates
    (m.onnx and M.onnx for m.ONNX) name none."""
    _needs_runtime()
    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    shutil.copy(default_model_path(), tmp_path / "model.onnx")
    emu_file(tmp_path / "cells.h5", to_emu_layout(_states()))
    with pytest.raises(FileNotFoundError) as refusal:
        dodo.Closure("Model.onnx")
    assert str(refusal.value) == ("model package 'Model.onnx' does not exist ('model.onnx' exists: file names differ "
                                  "in letter case here)"), refusal.value
    absolute = str(tmp_path / "MODEL.ONNX")
    with pytest.raises(FileNotFoundError, match="'" + str(tmp_path / "model.onnx") + "' exists: file names differ"):
        dodo.Closure(absolute)
    code, out, err = run(capsys, ["score", "box3d", "Cells.h5", "--bootstrap", "100"])
    assert code == 2 and err.strip() == ("dodo score: error: cannot read Cells.h5: no such file ('cells.h5' exists: "
                                         "file names differ in letter case here)"), err
    shutil.copy(default_model_path(), tmp_path / "MODEL.onnx")
    with pytest.raises(FileNotFoundError) as refusal:
        dodo.Closure("Model.onnx")
    assert str(refusal.value) == "model package 'Model.onnx' does not exist", refusal.value


def test_the_layout_conversions_read_a_dlpack_only_array():
    """dodo.conventions.from_emu_layout (the conversion the refusals of Emu's layout name), to_emu_layout,
    total_density and minkowski_dot refused a DLPack-only array as shape "()"."""
    from dodo.conventions import from_emu_layout, minkowski_dot, to_emu_layout, total_density

    F, u = _crossing()
    emu = to_emu_layout(F)
    assert np.array_equal(from_emu_layout(_DLPackOnly(emu)), F)
    assert np.array_equal(to_emu_layout(_DLPackOnly(F)), emu)
    assert np.array_equal(total_density(_DLPackOnly(F)), total_density(F))
    assert minkowski_dot(_DLPackOnly(u), _DLPackOnly(u)) == -1.0


@pytest.mark.parametrize("command", [["score", "box3d"], ["apply"]])
def test_a_data_file_given_as_a_dash_says_standard_input_is_not_read(tmp_path, capsys, monkeypatch, command):
    """`dodo score box3d - < cells.h5` (the shell's habit for standard input) said "cannot read -: no such
    file (relative to the current directory ...)", as if a file named '-' had been meant."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, [*command, "-"])
    assert code == 2 and err.strip().endswith("cannot read -: no such file ('-' does not mean standard input here: "
                                              "each file is opened by its name; give the file's path)"), err


def test_a_json_path_written_last_is_not_said_to_have_taken_the_model(tmp_path, capsys, monkeypatch):
    """`dodo score box3d cells.h5 --json m.onnx` (the report's file written last, onto a package): the
    refusal was right, but section 78's hint followed it, "--json took 'm.onnx', a model, as the file for
    its report (PATH is optional, so --json takes the word after it)", of a command line where --json
    took nothing it was not given. The hint now comes only where MODEL is then no model (guard: the
    case it was made for keeps it)."""
    _needs_runtime()
    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    shutil.copy(default_model_path(), tmp_path / "m.onnx")
    emu_file(tmp_path / "a.h5", to_emu_layout(_states()))
    emu_file(tmp_path / "b.h5", to_emu_layout(2 * _states()))
    code, out, err = run(capsys, ["score", "box3d", "a.h5", "--json", "m.onnx", "--bootstrap", "100"])
    assert code == 2 and "m.onnx exists and is an ONNX model package" in err, err
    assert "--json took" not in err, err
    code, out, err = run(capsys, ["score", "--json", "m.onnx", "a.h5", "b.h5", "--bootstrap", "100"])
    assert code == 2 and "--json took 'm.onnx', a model, as the file for its report" in err, err


def test_a_virtual_dataset_with_a_nan_fill_value_is_not_said_to_read_zeros(tmp_path, capsys):
    """A virtual dataset made with fillvalue=np.nan whose source file is gone was refused (rightly) with
    "HDF5 would read its fill value (zeros) for those rows", of a fill value that is NaN; now its value
    (guard: HDF5's default fill keeps "zeros")."""
    import h5py

    emu = to_emu_layout(_states())
    for fill, words in ((np.nan, "its fill value (NaN) for those rows"), (None, "its fill value (zeros) for those rows")):
        path = tmp_path / f"vds_{fill}.h5"
        layout = h5py.VirtualLayout(shape=emu.shape, dtype="f8")
        layout[:] = h5py.VirtualSource(str(tmp_path / "gone.h5"), "d", shape=emu.shape)
        with h5py.File(path, "w") as handle:
            handle.create_virtual_dataset("F4_initial(1|ccm)", layout,
                                          **({} if fill is None else {"fillvalue": fill}))
            handle["F4_final(1|ccm)"] = emu
        code, out, err = run(capsys, ["score", "box3d", str(path), "--bootstrap", "100"])
        assert code == 2 and "source file" in err and words in err, err


def test_dodo_apply_with_a_directory_as_the_model_names_its_package(tmp_path, capsys, monkeypatch):
    """`dodo apply cells.h5 --model run` said "run is a directory, not a regular file; give a model package
    (one .onnx file)", of a directory that holds one; it now names it (an empty directory keeps the words)."""
    _needs_runtime()
    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "empty").mkdir()
    shutil.copy(default_model_path(), tmp_path / "run" / "model.onnx")
    emu_file(tmp_path / "cells.h5", to_emu_layout(_states()))
    code, out, err = run(capsys, ["apply", "cells.h5", "--grid", "2x2x1", "--model", "run"])
    assert code == 2 and err.strip() == ("dodo apply: error: --model run is a directory, not a regular file; it holds "
                                         "one model package: give 'run/model.onnx'"), err
    code, out, err = run(capsys, ["apply", "cells.h5", "--grid", "2x2x1", "--model", "empty"])
    assert code == 2 and err.strip().endswith("empty is a directory, not a regular file; give a model package (one "
                                              ".onnx file)"), err


@pytest.mark.parametrize("argv", [["score", "box3d", "-data.h5"], ["apply", "-data.h5"],
                                  ["score", "box3d", "cells.h5", "-data.h5"],
                                  ["apply", "cells.h5", "--model", "-m.onnx"]])
def test_a_file_whose_name_begins_with_a_dash_is_named_in_the_usage_error(tmp_path, capsys, monkeypatch, argv):
    """`dodo score box3d -data.h5` said "the following arguments are required: data", `dodo apply cells.h5
    --model -m.onnx` "argument --model: expected one argument": argparse reads the word as an option. The
    usage error now says so when a file of that name is there, and the remedy (./-data.h5) works."""
    _needs_runtime()
    from dodo.models import default_model_path

    monkeypatch.chdir(tmp_path)
    emu_file(tmp_path / "cells.h5", to_emu_layout(_states()))
    shutil.copy(tmp_path / "cells.h5", tmp_path / "-data.h5")
    shutil.copy(default_model_path(), tmp_path / "-m.onnx")
    code, out, err = run(capsys, argv)
    word = next(token for token in argv if token.startswith("-") and not token.startswith("--"))
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.endswith(f"; {word!r} begins with '-', so it was read as an option, though a file of "
                                       f"that name is here: write ./{word}"), err
    fixed = [f"./{token}" if token == word else token for token in argv]
    fixed += ["--bootstrap", "100"] if argv[0] == "score" else ["--grid", "2x2x1", "-q"]
    code, out, err = run(capsys, fixed)
    assert code == 0, err
