"""Outside probe, Python round sixty-four: the core used from a __del__ while the interpreter exits,
dodo.conventions' arithmetic helpers given what is not real numbers, `dodo info --json` and `dodo test`
(docs/reliability_python.md, section 120)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dodo
import dodo.cli
from cli_helpers import run
from dodo import conventions

# An object that flushes a last step when it is collected: as a simulation's driver object might. Its
# Closure is Box3D alone (no model to load), so the subprocess needs nothing but the core.
_AT_EXIT = textwrap.dedent("""
    import atexit, sys
    import numpy as np
    import dodo

    F = np.zeros((3, 6, 4)); F[..., 0] = 1.0; F[:, 0, 3] = 0.5; F[:, 3, 3] = -0.5
    closure = dodo.Closure("box3d", threads={threads})

    @atexit.register
    def last_step():  # before finalization: computed
        print("atexit:", int(closure.apply(F).status.sum()), flush=True)

    class Driver:
        def __init__(self):
            self.closure, self.F = closure, F
        def __del__(self):
            try:
                {call}
            except RuntimeError as error:
                print("refused:", error, flush=True)
            else:
                print("computed in __del__", flush=True)

    driver = Driver()
""")


def _run_at_exit(threads: int, call: str) -> list[str]:
    program = _AT_EXIT.format(threads=threads, call=call)
    try:
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} in a __del__ at interpreter exit waited for ever (the subprocess ran past 60 s)")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "atexit: 0", done.stdout  # an atexit handler computes
    return lines


@pytest.mark.skipif(not dodo.runtime_available(), reason="this build has no closure runtime")
@pytest.mark.parametrize("threads, call", [(1, "self.closure.apply(self.F)"), (2, "self.closure(self.F)"),
                                           (1, "dodo.closure(self.F, model='box3d')"),
                                           (1, "dodo.box3d(self.F, threads=2)"), (1, "dodo.crossing_features(self.F)"),
                                           (1, "dodo.invariants(self.F)")])
def test_the_core_called_from_del_as_the_interpreter_exits_computes(threads, call):
    # Before: the compiled core parked a thread that would take the GIL back while Python finalizes, the
    # finalizing thread itself included, so the __del__ of module teardown waited for ever (here: past the
    # subprocess's timeout, 1 cell as much as 1,000). Round sixty-four first refused the closure's calls in
    # Python (dodo.box3d and its neighbours still waited); now the core keeps the GIL while Python
    # finalizes (cpp/bindings/python/gil.hpp), and every call computes.
    assert _run_at_exit(threads, call)[1:] == ["computed in __del__"]


@pytest.mark.skipif(not dodo.runtime_available(), reason="this build has no closure runtime")
def test_a_closure_cannot_load_a_model_as_the_interpreter_exits_and_says_so():
    # Finding ONNX Runtime imports, and the import system is gone then: it was importlib's traceback
    # "sys.meta_path is None, Python is likely shutting down", as an exception ignored in __del__.
    lines = _run_at_exit(1, "dodo.Closure(threads=1).apply(self.F)")
    assert len(lines) == 2 and lines[1].startswith("refused: dodo.Closure() cannot load a model while Python shuts "
                                                   "down") and "make the Closure before" in lines[1], lines


_NOT_REAL = [np.array([[1.0] * 4] * 6, dtype=object), np.ones((6, 4), complex),
             np.full((6, 4), "1"), np.full((6, 4), b"1"), np.zeros((6, 4), "datetime64[s]"),
             np.zeros((6, 4), "timedelta64[s]")]


@pytest.mark.parametrize("F", _NOT_REAL, ids=lambda F: str(F.dtype))
def test_the_arithmetic_conventions_refuse_what_is_not_real_numbers_by_name(F):
    # Before: objects came back as objects, complex as complex; strings, bytes and
    # datetimes ended in NumPy's "the resolved dtypes are not compatible with add.reduce" and the like.
    for absolute in (False, True):
        with pytest.raises(ValueError, match=r"^total_density: F must hold real numbers \(any float or integer "
                                             rf"dtype\); got dtype {re.escape(str(F.dtype))}"):
            conventions.total_density(F, absolute=absolute)
    with pytest.raises(ValueError, match=rf"^minkowski_dot: a must hold real numbers .*; got dtype {re.escape(str(F.dtype))}"):
        conventions.minkowski_dot(F, np.ones(4))
    with pytest.raises(ValueError, match=rf"^minkowski_dot: b must hold real numbers .*; got dtype {re.escape(str(F.dtype))}"):
        conventions.minkowski_dot(np.ones(4), F)
    # The layout functions relabel axes alone: the values and their dtype come back as given (documented).
    emu = conventions.to_emu_layout(F[None])
    assert emu.dtype == F.dtype and np.array_equal(conventions.from_emu_layout(emu), F[None])
    assert "dtype" in conventions.to_emu_layout.__doc__ and "dtype" in conventions.from_emu_layout.__doc__


def test_the_refusals_say_how_to_convert_and_name_a_value_that_is_no_array():
    with pytest.raises(ValueError, match=r"np.asarray\(F, dtype=float\)"):
        conventions.total_density(np.array([[1.0] * 4] * 6, dtype=object))
    with pytest.raises(ValueError, match=r"pass F.real$"):
        conventions.total_density(np.ones((6, 4), complex))
    with pytest.raises(ValueError, match=r"got a NoneType$"):
        conventions.total_density(None)
    with pytest.raises(ValueError, match=r"got an object$"):
        conventions.minkowski_dot(object(), np.ones(4))
    # A 0-d object array (np.array(None)) was read through DLPack, ending in its BufferError.
    with pytest.raises(ValueError, match=r"^total_density: F must hold real numbers .*got dtype object"):
        conventions.total_density(np.array(None))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, ">f8"])
def test_real_dtypes_are_still_summed_as_before(dtype):  # guard
    F = np.arange(48, dtype=np.float64).reshape(2, 6, 4).astype(dtype)
    assert np.allclose(conventions.total_density(F), F[..., 0].astype(np.float64).sum(axis=-1))
    assert conventions.total_density(F.tolist()).shape == (2,)
    assert np.allclose(conventions.minkowski_dot(F, F), -F[..., 0].astype(float) ** 2
                       + (F[..., 1:].astype(float) ** 2).sum(axis=-1))


def test_minkowski_dot_of_integer_vectors_is_computed_as_float64():
    # Before: in the integers' own dtype: (1, 0, 0, 0).(1, 0, 0, 0) of uint8 was 255 (the negation wrapped),
    # (2^62, 0, 0, 0).(4, 0, 0, 0) of int64 was 0.
    t = np.array([1, 0, 0, 0], np.uint8)
    assert conventions.minkowski_dot(t, t) == -1.0
    assert conventions.minkowski_dot(np.array([2**62, 0, 0, 0]), np.array([4, 0, 0, 0])) == -2.0**64
    assert conventions.minkowski_dot(np.array([0, 3, 4, 0], np.int16), np.array([0, 3, 4, 0], np.int16)) == 25.0
    # bool as 0 and 1, as total_density always summed it (test_total_density): was NumPy's TypeError "The
    # numpy boolean negative, the `-` operator, is not supported"
    assert conventions.minkowski_dot(np.ones(4, bool), np.ones(4, bool)) == 2.0
    assert conventions.total_density(np.ones((6, 4), bool)) == 6.0


def test_dodo_info_json_prints_the_listings_facts_under_the_keys_its_docstring_names(capsys, tmp_path, monkeypatch):
    # Before: "dodo info: error: unrecognized arguments: --json" (round sixty-three's open item).
    monkeypatch.delenv("DODO_NETWORK_EVALUATOR", raising=False)
    code, out, err = run(capsys, ["info", "--json"])
    assert code == 0 and err == "", err
    report = json.loads(out)
    assert list(report)[0] == "dodo_report" and report["dodo_report"] == "dodo info"
    doc = dodo.cli.info_report.__doc__
    for key in report:
        if key != "dodo_report":
            assert f"``{key}``" in doc, key
    code, listing, _ = run(capsys, ["info"])  # the same facts as the listing
    assert f"dodo {report['dodo_version']}" in listing.splitlines()
    assert f"Lebedev orders: {report['lebedev_orders']}" in listing
    for key in ("include_dir", "lib_dir", "cmake_dir", "pkgconfig_dir", "default_model"):
        flag = "--default-model" if key == "default_model" else f"--{key.replace('_', '-')}"
        code, alone, _ = run(capsys, ["info", flag])
        assert code in (0, 1) and (alone.strip() == report[key] or key in report["not_installed"]), key
    assert report["closure_runtime"] is dodo.runtime_available() and report["network_evaluator"] is None
    assert report["problems"] == [] or not dodo.runtime_available()
    # A value the runtime refuses is one of the problems, as the listing says NOT VALID.
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "fast")
    code, out, _ = run(capsys, ["info", "--json", "-"])
    report = json.loads(out)
    assert report["network_evaluator"] == "fast" and any("NOT VALID" in line for line in report["problems"])
    # To a file, with the listing printed; a file that is not an earlier report of dodo info is kept.
    target = tmp_path / "info.json"
    code, out, err = run(capsys, ["info", "--json", str(target)])
    assert code == 0 and "Lebedev orders" in out and json.loads(target.read_text())["dodo_report"] == "dodo info"
    notes = tmp_path / "notes.json"
    notes.write_text("my notes\n")
    code, out, err = run(capsys, ["info", "--json", str(notes)])
    assert code == 2 and "not an earlier report of dodo info" in err and notes.read_text() == "my notes\n", err
    code, out, err = run(capsys, ["info", "--json", "--cmake-dir"])  # one form at a time
    assert code == 2 and "not allowed with argument" in err


def test_the_listing_of_dodo_info_is_unchanged_by_its_json_form(capsys):  # guard
    code, out, err = run(capsys, ["info"])
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("dodo ") and lines[1].startswith("numpy ")
    assert [line.split(":")[0] for line in lines[2:6]] == ["core module", "Lebedev orders", "Box3D code path",
                                                           "closure runtime"]
    assert any(line.startswith("default_model: ") for line in lines) and not out.lstrip().startswith("{")


def test_dodo_test_runs_the_installation_check(capsys):
    # Before: "dodo: error: argument COMMAND: invalid choice: 'test'"; the check was python -m dodo.test alone.
    code, out, err = run(capsys, ["test"])
    assert code == 0, err
    assert out.splitlines()[-1] == f"dodo {dodo.__version__}: OK"
    code, out, err = run(capsys, ["test", "--help"])
    assert code == 0 and "python -m dodo.test" in out


def test_the_docstrings_say_openmp_variables_are_not_read_and_what_to_give():
    # Before: threads=None was described by what it reads alone; a hybrid MPI + OpenMP code that sets
    # OMP_NUM_THREADS per rank was not told that Dodo ignores it.
    assert "OMP_NUM_THREADS" in dodo.Closure.__doc__ and 'threads=int(os.environ.get("OMP_NUM_THREADS"' in \
        dodo.Closure.__doc__
    assert "never ``OMP_NUM_THREADS``" in dodo.__doc__


@pytest.mark.parametrize("value, words", [("1", "development only: a package without test vectors"),
                                          ("yes", "has no effect: the runtime takes the value 1 alone")])
def test_dodo_info_names_the_untested_model_opt_out_and_whether_it_acts(capsys, monkeypatch, value, words):
    # Before: `dodo info`, the installation's check, said nothing of DODO_ALLOW_UNTESTED_MODEL: left set in a
    # job's environment it let untested packages load; "yes" did nothing. Both silently.
    monkeypatch.setenv("DODO_ALLOW_UNTESTED_MODEL", value)
    code, out, _ = run(capsys, ["info"])
    line = [line for line in out.splitlines() if line.startswith("allow_untested_model: ")]
    assert code == 0 and len(line) == 1 and words in line[0] and "(DODO_ALLOW_UNTESTED_MODEL;" in line[0], out
    code, out, _ = run(capsys, ["info", "--json"])
    assert json.loads(out)["allow_untested_model"] == value


@pytest.mark.parametrize("argv", [["info"], ["info", "--json"]])
def test_dodo_info_to_a_reader_that_went_away_ends_quietly(argv, tmp_path):
    # The first form of --json (4384b5f4) caught standard output's BrokenPipeError with the file's errors:
    # `dodo info | head -c 10` could say "dodo info: error: [Errno 32] Broken pipe", exit 2, where every
    # command ends quietly with 141 (here: the pipe's reader is closed before the command starts).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "dodo", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120, cwd=tmp_path)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", done.stderr
