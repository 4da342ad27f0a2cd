"""Outside probe, Python round sixty-three: a package of one byte, an Emu file whose final states are its
initial dataset, the keys of `dodo score --json`, threads under a thread pool, what `import dodo` does, and
model files whose names are not UTF-8 (docs/reliability_python.md, section 112)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dodo
import dodo.score
from cli_helpers import run
from test_probe_round60 import _cells as round60_cells

DATA = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
PACKAGE = Path(dodo.__file__).resolve().parent


def _cells(n: int) -> np.ndarray:
    return round60_cells(n, seed=63)


@pytest.mark.parametrize("package", [b"x", b"\x00", bytearray(b"P"), memoryview(b"z"), np.array([1], np.uint8)])
def test_a_package_of_one_byte_is_one_byte_not_1_bytes(package):
    # Before: "DODO_ERROR_MODEL_FORMAT: model in memory (1 bytes): text, not an ONNX model package ...".
    with pytest.raises(RuntimeError) as refused:
        dodo.Closure(package)
    message = str(refused.value)
    assert "model in memory (1 byte):" in message and "1 bytes" not in message, message
    with pytest.raises(RuntimeError, match=r"model in memory \(1 byte\):"):
        dodo.closure(_cells(1), model=package)
    # Guard: two bytes and more keep the plural.
    with pytest.raises(RuntimeError, match=r"model in memory \(2 bytes\)"):
        dodo.Closure(b"ab")


def test_one_byte_that_names_a_file_is_this_byte_and_a_file_so_named_is_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").write_bytes(b"not a package")
    # Before: "model in memory (1 bytes): ...; these 1 bytes name an existing file, ...".
    with pytest.raises(RuntimeError) as refused:
        dodo.Closure(b"x")
    message = str(refused.value)
    assert "model in memory (1 byte):" in message and "this 1 byte names an existing file" in message, message
    assert "1 bytes" not in message, message
    # Guard: a one-byte package file whose name is not UTF-8 (read by Python, loaded from memory) is named
    # as the file, not as bytes in memory.
    name = os.fsdecode(b"caf\xe9.onnx")
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(RuntimeError) as refused:
        dodo.Closure(name)
    assert 'model file "caf\\xe9.onnx"' in str(refused.value) and "in memory" not in str(refused.value)


def _linked_copy(tmp_path: Path, link: str) -> Path:
    import h5py

    path = tmp_path / f"{link}.h5"
    shutil.copyfile(DATA, path)
    with h5py.File(path, "r+") as handle:
        del handle["F4_final(1|ccm)"]
        if link == "hard":
            handle["F4_final(1|ccm)"] = handle["F4_initial(1|ccm)"]
        elif link == "soft":
            handle["F4_final(1|ccm)"] = h5py.SoftLink("/F4_initial(1|ccm)")
        else:
            handle["F4_final(1|ccm)"] = h5py.ExternalLink(str(path), "/F4_initial(1|ccm)")
    return path


@pytest.mark.parametrize("link", ["hard", "soft", "external"])
def test_an_emu_file_whose_final_states_are_its_initial_dataset_is_refused(tmp_path, capsys, link):
    pytest.importorskip("h5py")
    path = _linked_copy(tmp_path, link)
    # Before: both commands scored the closure against its own input (exit 0, Box3D's change as its error).
    expected = ("'F4_final(1|ccm)' is the same dataset as 'F4_initial(1|ccm)' (a hard link, or a link to it), so "
                "the asymptotic states would be the initial states themselves")
    for command in (["apply", str(path), "--grid", "2x2x2", "--model", "box3d", "-q"],
                    ["score", "box3d", str(path), "--bootstrap", "100"]):
        code, out, err = run(capsys, command)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (command, err)
        assert "Traceback" not in err and out == "", (command, out)
    with pytest.raises(ValueError, match="is the same dataset as"):
        dodo.score.read_emu_states(str(path))


def test_an_emu_file_whose_final_states_equal_its_initial_values_is_still_read(tmp_path, capsys):
    """Guard: a copy of equal values is another dataset (a stable state ends where it began): scored."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "copy.h5"
    shutil.copyfile(DATA, path)
    with h5py.File(path, "r+") as handle:
        handle["F4_final(1|ccm)"][...] = handle["F4_initial(1|ccm)"][...]
    code, out, err = run(capsys, ["score", "box3d", str(path), "--bootstrap", "100"])
    assert code == 0 and "32 states" in out, err
    code, out, err = run(capsys, ["apply", str(DATA), "--grid", "2x2x2", "--model", "box3d", "-q"])
    assert code == 0, err


def _key_paths(value, prefix=()):
    """Every key of a JSON report, with the keys above it: ("growth_rate", "model", "median_ratio")."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("reasons",):  # a reason's words are values, not keys
                yield prefix + (key,)
                continue
            yield prefix + (key,)
            yield from _key_paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for inner in value:
            yield from _key_paths(inner, prefix)


def test_every_key_of_the_score_report_is_in_the_docstring_its_help_names(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    # Reports of several shapes: one file with growth rates; two files (origins); a state left out (a
    # NaN row) and one state alone (notes); a file without growth rates.
    second = tmp_path / "second.h5"
    shutil.copyfile(DATA, second)
    with h5py.File(second, "r+") as handle:
        handle["F4_final(1|ccm)"][...] = handle["F4_final(1|ccm)"][...] * 1.0001
        row = handle["F4_initial(1|ccm)"][0]
        row[0, 0, 0] = np.nan
        handle["F4_initial(1|ccm)"][0] = row
    bare = tmp_path / "bare.h5"
    shutil.copyfile(DATA, bare)
    with h5py.File(bare, "r+") as handle:
        del handle["growthRate(1|s)"]
    keys = set()
    for data in ([str(DATA)], [str(DATA), str(second)], [str(bare)]):
        report = tmp_path / "report.json"
        code, out, err = run(capsys, ["score", "box3d", *data, "--bootstrap", "100", "--json", str(report),
                                      "--overwrite"])
        assert code == 0, err
        keys |= set(_key_paths(json.loads(report.read_text())))
    closure = dodo.Closure("box3d")
    states = dodo.score.read_emu_states(str(DATA))
    one = dodo.score.EmuStates(states.F_init[:1], states.F_final[:1], states.growth_rate[:1] * 1e-320, [])
    keys |= set(_key_paths(dodo.score.score(closure, one, resamples=100)))
    assert ("notes",) in keys and ("per_state", "origin") in keys and ("growth_rate", "n_states") in keys
    doc = dodo.score.score.__doc__
    # Before: the docstring named none of them, and `--json`'s help said "the full report" alone.
    missing = sorted({path[-1] for path in keys if path != ("dodo_report",)} - set(re.findall(r"``(\w+)``", doc)))
    assert not missing, missing
    assert '"dodo_report": "dodo score"' in doc
    code, out, err = run(capsys, ["score", "--help"])
    assert "help(dodo.score.score)" in " ".join(out.split())


def test_the_docstrings_say_what_threads_do_under_a_thread_pool():
    # Before: box3d's docstring did not describe `threads` at all, and neither it nor Closure's said that n
    # calling threads put n x threads (box3d) or n + threads - 1 (one Closure) threads to work.
    box = " ".join(dodo.box3d.__doc__.split())
    assert "threads: worker threads of this call" in box and "0 or 1: the calling thread only" in box
    assert "n Python threads calling ``dodo.box3d`` at once" in box and "n x threads threads" in box
    shared = " ".join(dodo.Closure.__doc__.split())
    assert "One call at a time has the workers" in shared and "n + threads - 1 threads busy" in shared
    # ... and what they say of the results holds: a pool's calls give the bits of one call.
    F = _cells(3000)
    closure = dodo.Closure("box3d", threads=2)
    alone, box_alone = closure.apply(F), dodo.box3d(F, threads=2)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: (closure.apply(F), dodo.box3d(F, threads=2)), range(8)))
    for result, box_result in results:
        assert all(np.array_equal(a, b) for a, b in zip(result, alone))
        assert all(np.array_equal(a, b) for a, b in zip(box_result, box_alone))


def _variables_read(text: str) -> set[str]:
    return set(re.findall(r'(?:environ\.get|getenv)\("([A-Z][A-Z0-9_]+)"', text)) | \
        set(re.findall(r'Variable = "([A-Z][A-Z0-9_]+)"', text))


def test_the_package_docstring_names_what_import_and_use_read_from_the_environment():
    sources = [PACKAGE / name for name in ("__init__.py", "_box3d.py", "_closure.py")]
    repository = PACKAGE.parents[1]
    sources += sorted((repository / "cpp" / "src" / "runtime").glob("*.[ch]pp")) if \
        (repository / "cpp" / "src" / "runtime").is_dir() else []
    variables = set()
    for path in sources:
        variables |= _variables_read(path.read_text(errors="replace"))
    from dodo._box3d import LOCAL_RANKS_VARIABLES

    variables |= set(LOCAL_RANKS_VARIABLES)
    assert {"DODO_ONNXRUNTIME_LIBRARY", "DODO_NETWORK_EVALUATOR", "OMPI_COMM_WORLD_LOCAL_SIZE"} <= variables
    doc = dodo.__doc__
    # Before: the package's docstring was two sentences; no page said what importing dodo does.
    missing = sorted(name for name in variables if f"``{name}" not in doc)
    assert not missing, missing
    assert "starts no thread, writes no file and keeps none open, installs no signal handler" in " ".join(doc.split())


def test_import_dodo_starts_no_thread_installs_no_handler_and_sets_the_telemetry_variable_for_children():
    """Guard of what the docstring says, in a fresh interpreter (OpenBLAS held to one thread: numpy's)."""
    program = (
        "import os, signal, subprocess\n"
        "import numpy\n"
        "signals = [s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP)]\n"
        "before = [signal.getsignal(s) for s in signals]\n"
        "tasks = len(os.listdir('/proc/self/task'))\n"
        "import dodo\n"
        "print(len(os.listdir('/proc/self/task')) - tasks, [signal.getsignal(s) for s in signals] == before,\n"
        "      'ORT_DISABLE_TELEMETRY' in os.environ,\n"
        "      subprocess.run(['/bin/sh', '-c', 'echo ${ORT_DISABLE_TELEMETRY-unset}'], capture_output=True,\n"
        "                     text=True).stdout.strip())\n")
    environment = {key: value for key, value in os.environ.items() if key != "ORT_DISABLE_TELEMETRY"}
    environment["OPENBLAS_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environment,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True", "False", "1"], done.stdout


@pytest.mark.parametrize("content", [b"/scratch/run/model.onnx\n", b"{\"a\": 1}\n", b"\xef\xbb\xbf", b"\xff\xfeh\x00i\x00"])
def test_a_text_file_of_a_latin1_name_is_refused_in_a_files_words(tmp_path, content):
    # A model file whose name is not UTF-8 is read by Python and loaded from memory. Before, a text file so
    # named got the words for bytes: "text, not an ONNX model package ...: give the bytes of the binary .onnx
    # file dodo export writes" and, holding a path, "(a path is given to dodo_closure_create, ... not as the
    # bytes)"; now those of a file of a UTF-8 name, but for the name.
    latin1, utf8 = tmp_path / os.fsdecode(b"m\xe9.onnx"), tmp_path / "m.onnx"
    latin1.write_bytes(content)
    utf8.write_bytes(content)
    messages = []
    for path in (latin1, utf8):
        with pytest.raises(RuntimeError) as refused:
            dodo.Closure(str(path))
        messages.append(str(refused.value))
    assert "a package is the binary .onnx file dodo export writes" in messages[1], messages[1]
    assert messages[0] == messages[1].replace(str(utf8), str(tmp_path) + "/m\\xe9.onnx"), messages


def test_a_command_in_a_refusal_names_a_latin1_file_as_a_shell_word(tmp_path):
    import gzip

    # Before: "unpack it first (gunzip '.../g\udce9.onnx')", a lone surrogate: no shell word for the file,
    # and str(error).encode() (a UTF-8 log) raised UnicodeEncodeError.
    directory = tmp_path / os.fsdecode(b"r\xe9")
    directory.mkdir()
    (directory / "best.pt").write_bytes(b"PK\x03\x04")
    (tmp_path / os.fsdecode(b"g\xe9.onnx")).write_bytes(gzip.compress(b"text"))
    (tmp_path / os.fsdecode(b"k\xe9.onnx")).write_bytes(b"PK\x03\x04")
    word = "$'" + str(tmp_path) + "/"
    for path, expected in ((tmp_path / os.fsdecode(b"g\xe9.onnx"), f"(gunzip {word}g\\xe9.onnx')"),
                           (tmp_path / os.fsdecode(b"k\xe9.onnx"), f"dodo export {word}k\\xe9.onnx' -o model.onnx"),
                           (directory, f"dodo export {word}r\\xe9/best.pt' -o model.onnx")):
        with pytest.raises((RuntimeError, OSError)) as refused:
            dodo.Closure(str(path))
        message = str(refused.value)
        message.encode("utf-8")
        assert expected in message, message
    if shutil.which("bash"):  # the word names the file
        assert subprocess.run(["bash", "-c", f"test -f {word}r\\xe9/best.pt'"]).returncode == 0
    # Guard: a UTF-8 name keeps shlex.quote's word.
    (tmp_path / "g.onnx").write_bytes(gzip.compress(b"text"))
    with pytest.raises(RuntimeError, match=re.escape(f"(gunzip {tmp_path}/g.onnx)")):
        dodo.Closure(str(tmp_path / "g.onnx"))


@pytest.mark.parametrize("call", [dodo.box3d, lambda F, u: dodo.Closure("box3d").apply(F, u), dodo.invariants,
                                  dodo.crossing_features, dodo.comoving_density])
def test_an_np_matrix_u_of_one_cell_is_told_a_remedy_that_works_on_a_matrix(call):
    # Before: "... pass u[..., 0, :]", which of an np.matrix is (4, 1), refused next as "the components first ...
    # np.moveaxis(u, 0, -1)", which gives (1, 4) again: the hints went round in a circle.
    F = _cells(1)[0]
    with warnings.catch_warnings():  # NumPy: "the matrix subclass is not the recommended way ..."
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        u = np.matrix([1.25, 0.75, 0.0, 0.0])
    with pytest.raises(ValueError) as refused:
        call(F, u)
    message = str(refused.value)
    assert "u is an np.matrix, always 2-D" in message and "pass np.asarray(u)[0]" in message, message
    given, plain = call(F, np.asarray(u)[0]), call(F, np.array([1.25, 0.75, 0.0, 0.0]))
    if isinstance(given, tuple):  # a result
        assert all(np.array_equal(a, b) for a, b in zip(given, plain))
    else:
        assert np.array_equal(given, plain)
    # Guard: an ndarray of shape (1, 4) keeps round fifty-nine's hint, which works on it.
    with pytest.raises(ValueError, match=r"pass u\[\.\.\., 0, :\]$"):
        call(F, np.asarray(u))


def test_import_dodo_in_a_subinterpreter_is_refused_not_waited_on():
    # Before: the compiled core's pybind11 took the main interpreter's GIL state in PyGILState_Ensure, and
    # `import dodo` in a sub-interpreter (mod_wsgi's application groups, Python 3.14's
    # InterpreterPoolExecutor) waited for ever; here, the subprocess ran past its timeout.
    program = (
        "import importlib\n"
        "for name in ('_interpreters', '_xxsubinterpreters'):\n"
        "    try:\n"
        "        interpreters = importlib.import_module(name)\n"
        "        break\n"
        "    except ImportError:\n"
        "        interpreters = None\n"
        "if interpreters is None or not hasattr(interpreters, 'run_string'):\n"
        "    print('no sub-interpreters')\n"
        "    raise SystemExit(0)\n"
        "interpreter = interpreters.create()\n"
        "try:\n"
        "    result = interpreters.run_string(interpreter, 'import dodo')\n"
        "except Exception as error:\n"
        "    result = error\n"
        "print('refused:', result)\n"
        "import dodo\n"
        "print('main:', dodo.box3d([[1.0, 0.1, 0.0, 0.0]] * 6).F_box.shape)\n")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    if "no sub-interpreters" in done.stdout:
        pytest.skip("this Python has no sub-interpreter module")
    assert "dodo cannot be imported in a Python sub-interpreter" in done.stdout, done.stdout
    assert "use threads" in done.stdout and "main: (6, 4)" in done.stdout, done.stdout
