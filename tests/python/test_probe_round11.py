"""Outside probe, round eleven (docs/reliability_python.md section 13): defects left open by
earlier rounds and those the round found; each test failed on the code before its fix."""
from __future__ import annotations

import ctypes
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import digest, emu_file, refused, run, tiny_study_base

h5py = pytest.importorskip("h5py")

import dodo  # noqa: E402
from dodo.conventions import to_emu_layout  # noqa: E402

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


def _cells(n: int) -> np.ndarray:
    """n crossing cells at rest, Dodo's layout [n, 6, 4], a little different each."""
    F = np.zeros((n, 6, 4))
    F[:, 0] = [1.0, 0, 0, 0.5]
    F[:, 3] = [1.0, 0, 0, -0.5]
    F[:, [1, 2, 4, 5], 0] = 0.3
    F[:, 0, 0] += 0.01 * np.arange(n)
    return F


def _emu_file(path, initial=None, final=None, **extra):
    return emu_file(path, to_emu_layout(_cells(8)) if initial is None else initial, final, **extra)


def _dodo(*argv, **kwargs) -> subprocess.CompletedProcess:
    """`python -m dodo ARGV` in a child (for what needs a real standard output)."""
    return subprocess.run([sys.executable, "-m", "dodo", *argv], capture_output="stdout" not in kwargs, text=True,
                          timeout=300, **kwargs)


# --- Part A: defects known before the round ---------------------------------------------------

@pytest.fixture(scope="module")
def small_preprocessed(tmp_path_factory):
    from cli_helpers import synthetic_preprocessed

    root = tmp_path_factory.mktemp("round11")
    synthetic_preprocessed(root)
    return root


def test_a_study_rerun_keeps_the_earlier_runs(small_preprocessed, capsys):
    """A rerun of `dodo study` (same tag) trained into run_000 again: the earlier run's
    checkpoints and results were replaced, and the summary listed only the new run."""
    pytest.importorskip("torch")
    root = small_preprocessed
    tiny_study_base(root)
    grid = root / "again.yaml"
    grid.write_text(f"base_config: base.yaml\ntag: again\noutput_root: {root / 'studies'}\n"
                    "grid: {training.lr: [1.0e-3]}\n")
    study = root / "studies" / "again"
    assert run(capsys, ["study", str(grid)])[0] == 0
    first = study / "run_000" / "checkpoints" / "final.pt"
    before = digest(first)
    grid.write_text(grid.read_text().replace("[1.0e-3]", "[2.0e-3]"))
    code, out, _ = run(capsys, ["study", str(grid), "--dry-run"])
    assert code == 0 and "run_001" in out and "run_000" not in out.split("\n", 1)[1]
    code, out, err = run(capsys, ["study", str(grid)])
    assert code == 0, err
    assert digest(first) == before  # the earlier run is untouched
    assert (study / "run_001" / "checkpoints" / "final.pt").is_file()
    summary = json.loads((study / "summary.json").read_text())
    assert [(row["run"], row["training.lr"]) for row in summary] == [("run_000", 1.0e-3), ("run_001", 2.0e-3)]
    assert "run_000" in (study / "summary.txt").read_text()
    # A summary.json there that is not a study's summary is refused, not replaced.
    (study / "summary.json").write_text("{not json")
    line = refused(capsys, ["study", str(grid)], "summary.json", "not a summary written by dodo study")
    assert "another tag" in line and not (study / "run_002").exists()


def test_study_help_says_a_rerun_keeps_earlier_runs(capsys):
    code, out, _ = run(capsys, ["study", "--help"])
    assert code == 0 and "never overwrites earlier runs" in " ".join(out.split())


@pytest.mark.parametrize("grid", ["1_0x1x1", "+2x2x2", " 2x2x2", "2x2x2 ", "\u0662x2x2"])
def test_apply_refuses_a_malformed_grid(tmp_path, capsys, grid):
    """Python's int() took '1_0' for 10, '+2', ' 2' and Arabic-Indic digits for numbers: the
    grid ran (or was refused as "needs 10 cells") instead of being called malformed."""
    path = _emu_file(tmp_path / "cells.h5")
    line = refused(capsys, ["apply", str(path), "--grid", grid, "--model", "box3d", "-q"], "--grid", repr(grid))
    assert "16x16x16" in line


@pytest.mark.parametrize("argv", [["reference"], ["info"], ["--help"], ["apply", "--help"]])
def test_a_full_standard_output_is_one_line_and_a_failure(argv):
    """`dodo reference > /dev/full`: an OSError traceback (and `dodo --help > /dev/full` exit 0)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        result = _dodo(*argv, stdout=full, stderr=subprocess.PIPE)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "cannot write to standard output" in lines[0] and "No space left on device" in lines[0]


@pytest.mark.parametrize("redirect", ["2>/dev/full", "2>&-"])
def test_a_refusal_keeps_its_status_when_its_message_cannot_be_written(redirect, tmp_path):
    """`dodo score MISSING 2>/dev/full`: the refusal's line could not be written and the OSError it
    raised turned the exit status 2 into 1; a diagnostic that cannot be written is dropped instead."""
    if redirect == "2>/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    missing = tmp_path / "missing.h5"
    result = subprocess.run(["bash", "-c", f"'{sys.executable}' -m dodo score default '{missing}' {redirect}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, (result.returncode, result.stdout)


def test_a_closed_standard_output_is_an_error_not_silence():
    """`dodo info >&-`: Python sets sys.stdout to None and print() drops the text; exit 0."""
    result = subprocess.run(["bash", "-c", f"'{sys.executable}' -m dodo info >&-"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "standard output is closed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_reader_that_goes_away_still_ends_quietly():
    """The generalised handler keeps `dodo ... | head` quiet (exit 141, nothing on stderr)."""
    result = subprocess.run(["bash", "-c", f"'{sys.executable}' -m dodo reference | head -c 1 >/dev/null; "
                                           "echo ${PIPESTATUS[0]} >&2"], capture_output=True, text=True, timeout=300)
    assert result.stderr.strip().splitlines()[-1] in ("141", "0"), result.stderr  # 0: all fit in the pipe first
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_an_error_writing_stdout_in_process_is_one_line(capsys, monkeypatch):
    """The same through main() in-process, with a stream that fails as a full disk does."""
    from dodo.cli import main

    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Full())
    assert main(["info"]) == 2
    assert "dodo info: error: cannot write to standard output: No space left on device" in capsys.readouterr().err


def test_an_empty_model_argument_says_it_is_empty(tmp_path, capsys):
    """`dodo apply --model ''`: "cannot read : no such file"; `dodo score '' DATA` spoke of Python's None."""
    path = _emu_file(tmp_path / "cells.h5")
    line = refused(capsys, ["apply", str(path), "--grid", "2x2x2", "--model", ""], "--model is empty", "box3d")
    assert "cannot read" not in line
    line = refused(capsys, ["score", "", str(path)], "MODEL is empty", "'default'")
    assert "None" not in line


@pytest.mark.parametrize("command", ["evaluate", "inspect", "export"])
def test_a_directory_given_as_checkpoint_is_called_a_directory(tmp_path, capsys, command):
    """`dodo evaluate DIR`: "checkpoint not found: DIR" of a directory that is there."""
    pytest.importorskip("torch")
    argv = [command, str(tmp_path)] + (["-o", str(tmp_path / "m.onnx")] if command == "export" else [])
    line = refused(capsys, argv, str(tmp_path), "is a directory")
    assert "not found" not in line


def test_score_warns_about_truth_that_does_not_conserve(tmp_path, capsys):
    """A truth that breaks the conservation laws of its input (edited rows) was scored silently."""
    F = _cells(8)
    G = F.copy()
    G[:3, 0, 0] *= 1.5  # nu_e made out of nothing in three states
    broken = _emu_file(tmp_path / "broken.h5", to_emu_layout(F), to_emu_layout(G))
    good = _emu_file(tmp_path / "good.h5")
    code, out, err = run(capsys, ["score", "box3d", str(broken), str(good), "--bootstrap", "100"])
    assert code == 0 and "model - Box3D" in out  # still scored
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "broken.h5" in warnings[0] and "3 of 8 states" in warnings[0], err


@needs_runtime
@pytest.mark.parametrize("which", ["default", "file", "box3d", "bytes"])
def test_a_closure_pickles_and_computes_the_same(tmp_path, monkeypatch, which):
    """`pickle.dumps(dodo.Closure())`: TypeError "cannot pickle 'dodo._core.Closure' object"."""
    import shutil

    from dodo.models import default_model_path

    shutil.copy(default_model_path(), tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    model = {"default": None, "file": "m.onnx", "box3d": "box3d",
             "bytes": (tmp_path / "m.onnx").read_bytes()}[which]
    closure = dodo.Closure(model, threads=1, chunk_size=7)
    monkeypatch.chdir("/")  # a relative path must still name the same file
    copy = pickle.loads(pickle.dumps(closure))
    F = _cells(20)
    assert np.array_equal(copy.apply(F).F_pred, closure.apply(F).F_pred)
    # A relative model_path comes back absolute: unpickled elsewhere it names the file loaded (section 17).
    assert copy.model_path == (str(tmp_path / "m.onnx") if which == "file" else closure.model_path)
    assert copy.threads == 1 and copy.metadata == closure.metadata


@needs_runtime
def test_a_pickled_closure_refuses_a_model_file_changed_since(tmp_path):
    import shutil

    from dodo.models import MODELS_DIR, default_model_path

    shutil.copy(default_model_path(), tmp_path / "m.onnx")
    data = pickle.dumps(dodo.Closure(tmp_path / "m.onnx"))
    shutil.copy(MODELS_DIR / "synthetic-test-equivariant.onnx", tmp_path / "m.onnx")
    restored = pickle.loads(data)  # unusable, not raising here: a Pool worker died of it (Python round fifty)
    with pytest.raises(ValueError, match="not the package the closure was made with"):
        restored.apply(np.zeros((1, 6, 4)))


@needs_runtime
def test_a_closure_goes_to_spawned_workers():
    import concurrent.futures
    import multiprocessing

    closure = dodo.Closure("box3d", threads=1)
    F = _cells(5)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(closure.apply, F).result(timeout=240)
    assert np.array_equal(result.F_pred, closure.apply(F).F_pred)


# --- Part B: found by the round --------------------------------------------------------------

@pytest.mark.parametrize("command", ["apply", "score", "preprocess"])
def test_a_dataset_with_a_null_dataspace_is_refused_naming_it(tmp_path, capsys, command):
    """h5py.Empty four-fluxes: TypeError tracebacks ("object of type 'NoneType' has no len()",
    "float() argument must be ... not 'Empty'")."""
    path = tmp_path / "null.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("F4_initial(1|ccm)", data=h5py.Empty("f8"))
        handle.create_dataset("F4_final(1|ccm)", data=h5py.Empty("f8"))
    if command == "apply":
        argv = ["apply", str(path), "--grid", "2x2x2", "--model", "box3d", "-q"]
    elif command == "score":
        argv = ["score", "box3d", str(path)]
    else:
        (tmp_path / "pre.yaml").write_text(f"inputs: [{path}]\noutput: {tmp_path / 'out.h5'}\n")
        argv = ["preprocess", "--config", str(tmp_path / "pre.yaml"), "-q"]
    refused(capsys, argv, "null.h5", "F4_initial(1|ccm)", "null dataspace")


def test_directory_names_that_are_not_utf8_do_not_stop_apply(tmp_path, capsys):
    """`dodo apply` (and preprocess) on a file whose directorynames held bytes that are not UTF-8:
    "'utf-8' codec can't decode byte 0xff" (no file named), though apply never uses the names."""
    path = _emu_file(tmp_path / "names.h5", directorynames=np.array([b"run\xff"] * 8))
    code, out, err = run(capsys, ["apply", str(path), "--grid", "2x2x2", "--model", "box3d", "-q"])
    assert code == 0 and "status counts" in out, err
    from dodo.emu_files import iter_emu_chunks

    [chunk] = list(iter_emu_chunks(path))
    assert chunk.dirname[0] == "run\ufffd"


@pytest.mark.parametrize("argv", [["apply", "DATA", "--model", "box3d", "--grid", "2x2x2", "-o", ""],
                                  ["score", "box3d", "DATA", "--json", ""],
                                  ["synth", "", "-n", "3"],
                                  ["synth", "-o", "", "-n", "3"],
                                  ["preprocess", "--config", "CONFIG", "-o", ""]])
def test_an_empty_output_path_is_a_usage_error(tmp_path, capsys, argv):
    """`-o "$OUT"` with OUT unset: apply wrote no file and score no JSON, both exit 0; preprocess
    wrote the config's output instead; synth said "cannot write .: it exists and is a directory"."""
    data = _emu_file(tmp_path / "cells.h5")
    (tmp_path / "pre.yaml").write_text(f"inputs: [{data}]\noutput: {tmp_path / 'configured.h5'}\n")
    argv = [str(data) if a == "DATA" else str(tmp_path / "pre.yaml") if a == "CONFIG" else a for a in argv]
    code, out, err = run(capsys, argv)
    assert code == 2 and "empty path" in err and "Traceback" not in err, err
    assert not (tmp_path / "configured.h5").exists()


@pytest.mark.parametrize("command", ["apply", "score", "synth"])
def test_an_output_path_ending_in_a_slash_is_refused(tmp_path, capsys, command, monkeypatch):
    """`-o results/` (a directory meant) wrote a file named `results` and said "written to results/"."""
    data = _emu_file(tmp_path / "cells.h5")
    monkeypatch.chdir(tmp_path)
    argv = {"apply": ["apply", str(data), "--grid", "2x2x2", "--model", "box3d", "-q", "-o", "results/"],
            "score": ["score", "box3d", str(data), "--bootstrap", "100", "--json", "results/"],
            "synth": ["synth", "results/", "-n", "3", "-q"]}[command]
    refused(capsys, argv, "results/", "names a directory")
    assert not (tmp_path / "results").exists()


def test_score_bootstrap_memory_does_not_grow_with_resamples_times_states():
    """One (resamples, states) index array: 2.7 GB (and as much again gathered) for the default
    10,000 resamples of the 34,000 training states; a MemoryError traceback for a large --bootstrap."""
    import tracemalloc

    from dodo.score import bootstrap_interval

    values = np.random.default_rng(1).random(20000)
    tracemalloc.start()
    try:
        bootstrap_interval(values, 1000, np.random.default_rng(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"{peak / 1e6:.0f} MB"  # 320 MB before (1000 x 20000 x 8 bytes, twice)


def test_score_bootstrap_in_blocks_draws_the_same_interval(monkeypatch):
    """The blocks draw the indices one draw of the whole index array drew (same seed), so the
    interval is the same up to the rounding of the row means (NumPy sums a block's rows in another
    order: 1 ulp)."""
    from dodo import score

    values = np.random.default_rng(2).random(301)
    rng = np.random.default_rng(5)
    means = values[rng.integers(0, len(values), size=(999, len(values)))].mean(axis=1)
    expected = tuple(float(x) for x in np.percentile(means, [2.5, 97.5]))
    monkeypatch.setattr(score, "BOOTSTRAP_BLOCK_VALUES", 301 * 7 + 5)  # blocks of 7 resamples, a short last one
    np.testing.assert_allclose(score.bootstrap_interval(values, 999, np.random.default_rng(5)), expected, rtol=1e-14)


def test_score_says_why_no_state_could_be_scored(tmp_path, capsys):
    """Every state rejected by the closure (|F| > n): "every state has a non-finite or empty input or
    truth", which none had."""
    F = _cells(8)
    F[:, 0, 3] = 2.0  # |F| > n for nu_e
    path = _emu_file(tmp_path / "rejected.h5", to_emu_layout(F))
    line = refused(capsys, ["score", "box3d", str(path), "--bootstrap", "100"], "8 with a closure rejected input")
    assert "non-finite" not in line


@needs_runtime
@pytest.mark.parametrize("model", [None, "box3d"])
def test_a_nan_max_flux_factor_is_refused_with_or_without_a_model(model):
    """`dodo.Closure(max_flux_factor=nan)` with a model loaded and used the model's 0.98 (NaN passed
    the range check and the 'differs from the model's' check); without one it was refused."""
    with pytest.raises(ValueError, match="max_flux_factor must lie in"):
        dodo.Closure(model, max_flux_factor=float("nan"))


@needs_runtime
def test_the_c_api_refuses_a_nan_max_flux_factor():
    """The same hole in C (dodo_options.max_flux_factor = NAN with a model: DODO_OK)."""
    from libdodo_ctypes import Options, load_libdodo

    from dodo.models import default_model_path

    lib = load_libdodo()
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.max_flux_factor = float("nan")
    handle = ctypes.c_void_p()
    message = ctypes.create_string_buffer(512)
    status = lib.dodo_closure_create(str(default_model_path()).encode(), ctypes.byref(options), ctypes.byref(handle),
                                     message, len(message))
    if status == 0:
        lib.dodo_closure_destroy(handle)
    assert status != 0 and b"max_flux_factor" in message.value


def test_score_counts_a_hard_linked_file_once(tmp_path, capsys):
    """`dodo score M a.h5 b.h5`, b.h5 a hard link to a.h5: 16 states scored (the realpath check
    behind "a file named twice is scored once" missed links), narrowing the intervals."""
    path = _emu_file(tmp_path / "a.h5")
    os.link(path, tmp_path / "b.h5")
    code, out, err = run(capsys, ["score", "box3d", str(path), str(tmp_path / "b.h5"), "--bootstrap", "100"])
    assert code == 0 and "(8 states;" in out and "named more than once" in out, out + err


# Left open by the round, closed after it (docs/reliability_python.md section 13).
def test_self_test_must_be_a_bool_not_a_truthy_string():
    with pytest.raises(TypeError, match="self_test must be True or False"):
        dodo.Closure("box3d", self_test="no")


def test_describe_status_names_bits_that_are_no_flag():
    unknown = 1 << 30
    assert not any(unknown == flag.value for flag in dodo.CellStatus)
    text = dodo.describe_status(int(dodo.CellStatus.NO_CROSSING) | unknown)
    assert any(line.startswith("NO_CROSSING") for line in text)
    assert any("0x40000000" in line and "UNKNOWN" in line for line in text)
    assert dodo.describe_status(int(dodo.CellStatus.NO_CROSSING)) == text[:1]


@pytest.mark.parametrize("options", [{"z_method": ""}, {"lebedev_order": 0}, {"lebedev_order": 0.0}])
def test_closure_refuses_the_c_apis_model_defaults_in_python(options):
    """None is Python's "the model's"; "" and 0 (the C API's spelling) are refused, as dodo.box3d does."""
    with pytest.raises(ValueError, match="or None for the model's"):
        dodo.Closure("box3d", **options)
    with pytest.raises(ValueError):
        dodo.box3d(np.ones((1, 6, 4)), **options)
    dodo.Closure("box3d", z_method=None, lebedev_order=None)  # the model's (Box3D's defaults)
