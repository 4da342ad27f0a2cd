"""Outside probe, Python round fifty-four: the start-up of `dodo` under a tight address-space limit (numpy's
import: OpenBLAS's own SIGINT called an interrupt, a MemoryError traceback), the training commands' handler
blaming the configuration for an import (section 89's not-fixed items), and `dodo plot metrics` of hundreds of
runs (an image tens of thousands of pixels wide)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run
from test_probe_round51 import _metrics

HANG_GUARD_S = 300
OUT_OF_MEMORY = "error: out of memory while importing the libraries it needs (not enough memory to load the library"


def _console_script() -> str:
    script = Path(sys.executable).parent / "dodo"
    if not script.is_file():
        pytest.skip("no `dodo` console script beside this Python")
    return str(script)


def _dodo(launcher, argv, cwd, pythonpath=(), address_space_kb=None, env=None, timeout=HANG_GUARD_S):
    """`dodo ARGV` (the console script or `python -m dodo`) in a child, optionally under `ulimit -v`."""
    def limit():
        import resource
        import signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a terminal, whatever ran the tests
        if address_space_kb:
            resource.setrlimit(resource.RLIMIT_AS, (address_space_kb * 1024, resource.RLIM_INFINITY))

    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [_console_script()] if launcher == "console script" else [sys.executable, "-m", "dodo"]
    return subprocess.run(command + list(argv), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=environ, preexec_fn=limit)


# What OpenBLAS's blas_thread_init does when pthread_create fails (an address-space limit its threads'
# stacks do not fit in): raise(SIGINT), then the import goes on. Here no thread can start (the start of
# one fails, as under the limit); the SIGINT is sent as numpy's import begins.
_THREADS_FAIL_THEN_SIGINT = textwrap.dedent("""
    import _thread, os, signal, sys

    class _ThreadsFailAt:
        def find_spec(self, name, path=None, target=None):
            if name == os.environ["PROBE_THREADS_FAIL_AT"]:
                sys.meta_path.remove(self)
                # No thread can start (as under the limit): the start-up's trial asks for its own stack
                # size (64 MiB, test_startup_thread_trial), so a huge default stack no longer stands in.
                def _cannot_start(*args, **kwargs):
                    raise RuntimeError("can't start new thread")
                _thread.start_new_thread = _cannot_start
                os.kill(os.getpid(), signal.SIGINT)
            return None

    if os.environ.get("PROBE_THREADS_FAIL_AT"):
        sys.meta_path.insert(0, _ThreadsFailAt())
""")


@pytest.mark.parametrize("launcher", ["console script", "python -m dodo"])
def test_a_sigint_of_a_library_that_cannot_start_its_threads_is_not_an_interrupt(tmp_path, launcher):
    """`(ulimit -v 125000; dodo synth -o q.h5 -n 3)`: OpenBLAS could not start its threads while numpy
    was imported and raised SIGINT itself; the start-up handler printed `dodo: interrupted`, exit 130, as
    for a Ctrl-C that nobody pressed. Now one line about memory, exit 1 (a Ctrl-C where threads start
    still says `dodo: interrupted`, 130: test_probe_round17's tests)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_THREADS_FAIL_THEN_SIGINT)
    done = _dodo(launcher, ["synth", "-o", "q.h5", "-n", "3"], tmp_path, [hook],
                 env={"PROBE_THREADS_FAIL_AT": "numpy"})
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "interrupted" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("dodo: " + OUT_OF_MEMORY), line
    assert "could not start its threads" in line and "no Ctrl-C was pressed" in line, line
    assert not (tmp_path / "q.h5").exists()


_STANDIN_NUMPY = {
    "memoryerror": "raise MemoryError()\n",
    # an extension module's failed allocation that set no error (`dodo train` under `ulimit -v 700000`,
    # section 91); _memory counted it since round fifty-six, the start-up's hook only since its report
    "systemerror": 'raise SystemError("error return without exception set")\n',
    # numpy's own ImportError (advice about the installation) raised from the loader's
    "chained map": ('try:\n    raise ImportError("libquadmath.so.0: failed to map segment from shared object")\n'
                    'except ImportError as exc:\n    raise ImportError("\\nIMPORTANT: PLEASE READ THIS FOR ADVICE '
                    'ON HOW TO SOLVE THIS ISSUE!\\n\\nImporting the numpy C-extensions failed.") from exc\n'),
}


@pytest.mark.parametrize("kind", sorted(_STANDIN_NUMPY))
@pytest.mark.parametrize("launcher", ["console script", "python -m dodo"])
def test_numpy_import_out_of_memory_at_start_up_is_one_line(tmp_path, launcher, kind):
    """`(ulimit -v 135000; dodo synth ...)`: a 25-line MemoryError traceback out of numpy's import (before
    dodo.cli.main runs); `(ulimit -v 60000; ...)`: numpy's 40 lines of installation advice over the
    loader's `failed to map segment`. Now one line, exit 1. (A stand-in numpy that raises so.)"""
    fake = tmp_path / "fake" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(_STANDIN_NUMPY[kind])
    done = _dodo(launcher, ["synth", "-o", "q.h5", "-n", "3"], tmp_path, [fake.parent], address_space_kb=16 << 20)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.strip() == ("dodo: " + OUT_OF_MEMORY + ": the address-space limit (ulimit -v) is 16777216 kB; "
                                   "raise it, e.g. ulimit -v unlimited, and run again)"), done.stderr


def test_an_ordinary_broken_numpy_at_start_up_keeps_its_traceback(tmp_path):
    """Guard: a numpy that fails to import for another reason keeps Python's own report."""
    fake = tmp_path / "fake" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libstandin.so.9: cannot open shared object file")\n')
    done = _dodo("python -m dodo", ["synth", "-o", "q.h5", "-n", "3"], tmp_path, [fake.parent])
    assert done.returncode == 1 and "Traceback" in done.stderr and "out of memory" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "ImportError: libstandin.so.9: cannot open shared object file"


@pytest.mark.parametrize("launcher", ["console script", "python -m dodo"])
def test_a_real_tight_address_space_limit_is_never_called_an_interrupt(tmp_path, launcher):
    """The reproducers themselves: `dodo synth` under `ulimit -v` from 60000 to 150000 kB. Before, 125000
    and 130000 said `dodo: interrupted` (exit 130) and 135000-140000 printed a MemoryError traceback
    here. Where the limit falls in another library (OpenBLAS's own `Memory allocation still failed`,
    exit 1, from C), only the absence of both is asserted."""
    pytest.importorskip("h5py")
    spun = []
    for limit in [*range(60000, 150001, 5000), 127500, 132500]:
        try:
            done = _dodo(launcher, ["synth", "-o", "q.h5", "-n", "3"], tmp_path, address_space_kb=limit, timeout=60)
        except subprocess.TimeoutExpired:
            # Known, not fixed (docs/reliability_python.md section 90, the lead's note): at some limits
            # (132500 kB in CI's fresh venv, not in the dev venv) numpy's import spins in glibc's
            # malloc/brk and never returns; no Dodo code runs then. Recorded, not hidden: the test
            # xfails naming the limits, and every other limit is still checked.
            spun.append(limit)
            continue
        assert done.returncode not in (0, 130) and "interrupted" not in done.stderr, (limit, done.stderr)
        assert not ("Traceback" in done.stderr and "MemoryError" in done.stderr), (limit, done.stderr)
        if "blas_thread_init" in done.stderr:  # OpenBLAS's threads: its SIGINT came at numpy's import
            assert done.stderr.strip().splitlines()[-1].startswith("dodo: " + OUT_OF_MEMORY), (limit, done.stderr)
        assert not (tmp_path / "q.h5").exists()
    if spun:
        pytest.xfail(f"numpy's import spun in malloc (a hang) under ulimit -v {spun} kB: known, not fixed")


@pytest.mark.parametrize("library, argv", [
    ("h5py", ["synth", "-o", "q.h5", "-n", "3"]),
    ("torch", ["export", "none.pt", "-o", "m.onnx"]),
    ("matplotlib", ["plot", "curve", "M.json", "-o", "c.png"]),
])
def test_a_training_command_whose_import_ran_out_of_memory_does_not_blame_the_configuration(tmp_path, library, argv):
    """`(ulimit -v 600000; dodo export none.pt -o m.onnx)` (torch's import), `(ulimit -v 150000; dodo plot
    curve M.json -o x.png)` said `out of memory (MemoryError): the configuration needs more memory than the
    machine gives; lower model.hidden_dim, model.n_blocks or data.batch_size`, of commands with no model or
    batch size. Now dodo.cli.main's words (section 89). (A stand-in library whose import raises MemoryError.)
    The configuration's own MemoryError keeps its words: test_probe_round13's n_blocks test."""
    fake = tmp_path / "fake" / library
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise MemoryError()\n")
    (tmp_path / "none.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    _metrics(tmp_path / "M.json", [1.0, 0.5], [1.0, 0.6])
    done = _dodo("python -m dodo", argv, tmp_path, [fake.parent], address_space_kb=16 << 20)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.strip() == (f"dodo {argv[0]}: " + OUT_OF_MEMORY + ": the address-space limit (ulimit -v) is "
                                   "16777216 kB; raise it, e.g. ulimit -v unlimited, and run again)"), done.stderr


# --- dodo plot metrics of hundreds of runs ------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _many_runs(root: Path, count: int) -> list[str]:
    rng = np.random.default_rng(54)
    best = rng.uniform(0.01, 1.0, count)
    best[7] = float("nan")  # no finite best loss: drawn last, if at all
    paths = []
    for i in range(count):
        results = root / f"run_{i:03d}" / "results"
        results.mkdir(parents=True)
        paths.append(str(_metrics(results / "metrics_20261207.json", [1.0, 0.5], [1.0, 0.6], best=float(best[i]),
                                  test=float(best[i]) * 1.1)))
    return paths


def test_plot_metrics_of_300_runs_is_an_image_a_viewer_opens_and_says_what_it_left_out(tmp_path, capsys, monkeypatch):
    """`dodo plot metrics` of 300 run files wrote a PNG 43,920 x 540 pixels (1.2 inches a run; 600 runs:
    87,120), which viewers refuse or shrink to a line, every label unreadable. Now at most 30 runs, the
    30 of lowest best validation loss in the order given, and the title says 30 of 300 (270 left out)."""
    pytest.importorskip("matplotlib")
    from dodo.training import plots

    paths = _many_runs(tmp_path / "runs", 300)
    titles = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, output: (titles.append(fig.get_suptitle()),
                                                                    save(fig, output))[1])
    code, out, err = run(capsys, ["plot", "metrics", *paths, "-o", str(tmp_path / "m.png")])
    assert code == 0 and "wrote" in out, err
    width, height = _png_size(tmp_path / "m.png")
    assert width <= 6000 and height <= 1000, (width, height)
    assert titles == ["30 of 300 runs: the 30 of lowest best validation loss, in the order given (270 left out)"]


def test_plot_metrics_draws_the_runs_of_lowest_best_loss_in_the_order_given():
    """Which runs: the 30 of lowest best validation loss (a run without a finite one after every other),
    in the order the files were given; 30 runs or fewer are all drawn."""
    from dodo.training import plots

    def runs(best):
        return [{"best_val_loss": value} for value in best]

    assert plots.MAX_PLOTTED_RUNS == 30
    best = [float(40 - i) for i in range(40)]  # the last 30 files are the best
    assert plots._runs_drawn(runs(best)) == list(range(10, 40))
    best[12] = None  # a gap (null in the file): left out before any finite loss
    assert plots._runs_drawn(runs(best)) == [*range(9, 12), *range(13, 40)]
    assert plots._runs_drawn(runs([None] * 30)) == list(range(30))


def test_plot_metrics_help_says_how_many_runs_it_draws(capsys):
    from dodo.training import plots

    code, out, _ = run(capsys, ["plot", "--help"])
    assert code == 0
    text = " ".join(out.split())
    assert f"at most {plots.MAX_PLOTTED_RUNS}" in text and "lowest best validation loss" in text, text
    assert "left out" in text, text


def _labels_drawn(monkeypatch):
    from dodo.training import plots

    drawn = []
    save = plots.save_figure

    def keep_labels(fig, output):
        drawn.append([label.get_text() for label in fig.axes[0].get_xticklabels()])
        return save(fig, output)

    monkeypatch.setattr(plots, "save_figure", keep_labels)
    return drawn


def test_plot_metrics_of_runs_with_long_names_keeps_the_panels_and_tells_runs_apart(tmp_path, capsys, monkeypatch):
    """Run directories named by their settings, 130 characters each (alike but for their last one): the
    labels squeezed both panels to slivers and matplotlib printed `UserWarning: Tight layout not applied`
    (60 characters already squeezed them). Now each part of a label is at most 16 characters, its
    middle left out, its start and end kept; no warning."""
    pytest.importorskip("matplotlib")
    import warnings

    paths = []
    for i in range(2):
        results = tmp_path / ("lr1e-3_width128_" * 8 + f"seed{i}") / "results"
        results.mkdir(parents=True)
        paths.append(str(_metrics(results / "metrics_20261207T030000.json", [1.0, 0.5], [1.0, 0.6])))
    drawn = _labels_drawn(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, out, err = run(capsys, ["plot", "metrics", *paths, "-o", str(tmp_path / "m.png")])
    assert code == 0 and "Warning" not in err, err
    assert drawn == [["lr1e-3...8_seed0/20261207T030000", "lr1e-3...8_seed1/20261207T030000"]]


def test_plot_metrics_numbers_runs_whose_labels_are_the_same(tmp_path, capsys, monkeypatch):
    """run_000 of two studies: two labels `run_000/7`, which told the reader nothing of which was which.
    Now each such label gets its file's place on the command line."""
    pytest.importorskip("matplotlib")
    paths = []
    for study in ("a", "b"):
        results = tmp_path / study / "run_000" / "results"
        results.mkdir(parents=True)
        paths.append(str(_metrics(results / "metrics_7.json", [1.0, 0.5], [1.0, 0.6])))
    other = tmp_path / "b" / "run_001" / "results"
    other.mkdir(parents=True)
    paths.insert(1, str(_metrics(other / "metrics_7.json", [1.0, 0.5], [1.0, 0.6])))
    drawn = _labels_drawn(monkeypatch)
    code, out, err = run(capsys, ["plot", "metrics", *paths, "-o", str(tmp_path / "m.png")])
    assert code == 0, err
    assert drawn == [["run_000/7 [1]", "run_001/7", "run_000/7 [3]"]]


# --- a model's name where a data file belongs --------------------------------------------------


@pytest.mark.parametrize("argv, word", [(["score", "{data}", "box3d"], "box3d"),  # the arguments swapped
                                        (["score", "{data}", "default"], "default"),
                                        (["apply", "box3d"], "box3d")])  # --model left out
def test_a_model_name_given_as_a_data_file_is_named_as_a_model(tmp_path, capsys, monkeypatch, argv, word):
    """`dodo score d.h5 box3d` said `cannot read box3d: no such file (relative to the current directory
    ...)`, naming neither the swap nor d.h5; `dodo apply box3d` the same. Now the hint says the word names
    a model and where a model goes."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.h5"
    data.write_bytes(b"\x89HDF\r\n\x1a\n")
    code, out, err = run(capsys, [word_.format(data=data) for word_ in argv])
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == (f"dodo {argv[0]}: error: cannot read {word}: no such file ('{word}' names a model, not a "
                           "file: give the model where the command takes one, e.g. dodo score MODEL DATA [DATA ...], "
                           "dodo apply DATA --model MODEL)"), err


def test_a_data_file_named_box3d_is_still_read(tmp_path, capsys, monkeypatch):
    """Guard: a file that is there is read, whatever its name (the hint is for a name that is not there)."""
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "-o", "s.h5", "-n", "8", "-q"])[0] == 0
    os.replace("s.h5", "box3d")
    code, out, err = run(capsys, ["score", "box3d", "box3d", "--bootstrap", "100"])
    assert code == 0 and "no such file" not in err, err


# --- an Emu file written by a column-major program -------------------------------------------------


def _reversed_axes_file(path: Path, with_nf: bool) -> Path:
    """A synth database as Julia's HDF5.jl (or Fortran) writes the same arrays: every axis reversed."""
    import h5py

    with h5py.File(path, "r+") as handle:
        for key in ("F4_initial(1|ccm)", "F4_final(1|ccm)", "F4_final_stddev(1|ccm)"):
            if key in handle:
                values = handle[key][()]
                del handle[key]
                handle[key] = values.transpose()
        if not with_nf and "nf" in handle:
            del handle["nf"]
    return path


@pytest.mark.parametrize("with_nf", [True, False])
@pytest.mark.parametrize("command", ["score", "apply"])
def test_an_emu_file_with_its_axes_reversed_is_named_so(tmp_path, capsys, monkeypatch, command, with_nf):
    """An Emu file written from Julia (HDF5.jl) or Fortran holds F4_initial(1|ccm) as (3, 2, 4, nsims).
    `dodo score` said `dataset 'nf' is 3 but 'F4_initial(1|ccm)' has shape (3, 2, 4, 8), 8 flavours on its
    last axis; the file contradicts itself (damaged or edited?)`, and without nf (as `dodo apply` with it)
    named the shape alone. Now: the Emu layout with its axes in reverse order, and how to write it."""
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "-o", "s.h5", "-n", "8", "-q"])[0] == 0
    data = _reversed_axes_file(tmp_path / "s.h5", with_nf)
    argv = ["score", "box3d", str(data)] if command == "score" else ["apply", str(data), "--grid", "2x2x2", "-q"]
    code, out, err = run(capsys, argv)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == (f"dodo {command}: error: {data}: 'F4_initial(1|ccm)' has shape (3, 2, 4, 8): the Emu layout "
                           "[nsims, 4 (x,y,z,t), 2, 3] with its axes in reverse order, as a column-major writer (Julia's "
                           "HDF5.jl, Fortran, MATLAB) stores an array of [nsims, 4, 2, 3]; write the array with its axes "
                           "reversed (Julia: permutedims(F, (4, 3, 2, 1)); Fortran: dimension F(3, 2, 4, nsims))"), err
    assert "contradicts itself" not in err


# --- running out of memory after the imports ---------------------------------------------------------


def _limit_address_space_as_seen(monkeypatch, limit_kb):
    """RLIMIT_AS as dodo reads it: ``limit_kb`` (None: no limit), without limiting this process."""
    import resource

    from dodo import _memory

    soft = resource.RLIM_INFINITY if limit_kb is None else limit_kb * 1024
    monkeypatch.setattr(_memory.resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))


def _raise_memory_error(*args, **kwargs):
    raise MemoryError("Unable to allocate 1.53 MiB for an array with shape (10000, 20) and data type int64")


@pytest.mark.parametrize("limit_kb", [None, 172500])
@pytest.mark.parametrize("command", ["synth", "plot"])
def test_a_memory_error_of_a_command_without_a_model_does_not_blame_the_model_configuration(
        tmp_path, capsys, monkeypatch, command, limit_kb):
    """`(ulimit -v 170000; dodo preprocess ...)` (a MemoryError hashing its input) said `the configuration
    needs more memory than the machine gives; lower model.hidden_dim, model.n_blocks or data.batch_size`,
    of a command with no model; so did synth and plot. Now dodo.cli.main's words for the input and the
    options, and, under an address-space limit, the limit (`dodo score` blamed the input alone for 1.53
    MiB under `ulimit -v 172500`). `dodo train`'s own words stay: test_probe_round13's n_blocks test."""
    from dodo.training import plots, synth

    _limit_address_space_as_seen(monkeypatch, limit_kb)
    monkeypatch.setattr(synth, "write_synthetic_database", _raise_memory_error)
    monkeypatch.setattr(plots, "plot_metrics", _raise_memory_error)
    metrics = _metrics(tmp_path / "M.json", [1.0, 0.5], [1.0, 0.6])
    argv = (["synth", "-o", str(tmp_path / "s.h5"), "-n", "3", "-q"] if command == "synth"
            else ["plot", "metrics", str(metrics), "-o", str(tmp_path / "m.png")])
    code, out, err = run(capsys, argv)
    assert code == 2, err
    expected = (f"dodo {command}: error: out of memory (Unable to allocate 1.53 MiB for an array with shape (10000, 20) "
                "and data type int64): the input or the options ask for more memory than the machine gives")
    if limit_kb:
        expected += " (or than the address-space limit, ulimit -v, of 172500 kB allows: raise it, e.g. ulimit -v unlimited)"
    assert err.strip() == expected, err


class _Unreadable:
    def __init__(self, text):
        self.text = text

    def __getitem__(self, key):
        raise OSError(self.text)


def test_hdf5_out_of_memory_is_not_called_a_damaged_file(monkeypatch):
    """`(ulimit -v 175000; dodo preprocess ...)`: `s.h5: cannot read rows 0 to 19 of 'directorynames' (Can't
    synchronously read data (memory allocation failed for chunk)): the file is damaged (a corrupted or
    truncated copy?)` of a sound file. Now: not enough memory to read it, the file not damaged. A damaged
    chunk keeps its words (round 31)."""
    from dodo import emu_files

    _limit_address_space_as_seen(monkeypatch, 175000)
    handle = {"directorynames": _Unreadable("Can't synchronously read data (memory allocation failed for chunk)")}
    with pytest.raises(emu_files.DataFileError) as raised:
        emu_files._rows(handle, "s.h5", "directorynames", 0, 20)
    assert str(raised.value) == ("s.h5: cannot read rows 0 to 19 of 'directorynames' (Can't synchronously read data "
                                 "(memory allocation failed for chunk)): not enough memory to read it (the file is not "
                                 "damaged): the address-space limit (ulimit -v) is 175000 kB; raise it, e.g. ulimit -v "
                                 "unlimited, and run again")
    handle = {"F4_initial(1|ccm)": _Unreadable("Can't synchronously read data (filter returned failure during read)")}
    with pytest.raises(emu_files.DataFileError, match=r"the file is damaged \(a corrupted or truncated copy\?\)$"):
        emu_files._rows(handle, "s.h5", "F4_initial(1|ccm)", 0, 20)


def _first_rows(source: Path, target: Path, rows: int) -> Path:
    import h5py

    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        for key in old:
            values = old[key][()]
            new[key] = values[:rows] if getattr(values, "ndim", 0) else values
        for key, value in old.attrs.items():
            new.attrs[key] = value
    return target


def test_score_of_one_state_says_its_interval_says_nothing(tmp_path, capsys, monkeypatch):
    """`dodo score box3d one.h5` (one state) printed `95% bootstrap CI [0.00081, 0.00081]` and JSON `ci95`
    of no width without a word, which reads as certainty. Now a note says so (table and JSON); two states
    have none."""
    import json

    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "-o", "s.h5", "-n", "8", "-q"])[0] == 0
    note = ("1 state scored: its 95% bootstrap intervals are that state's value, of no width; they say nothing of the "
            "uncertainty (score more states)")
    for rows in (1, 2):
        data = _first_rows(tmp_path / "s.h5", tmp_path / f"first{rows}.h5", rows)
        code, out, err = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100"])
        assert code == 0, err
        code, report, err = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100", "--json", "-"])
        assert code == 0, err
        notes = json.loads(report).get("notes", [])
        if rows == 1:
            assert f"note: {note}" in out.splitlines() and note in notes, out
        else:
            assert "1 state scored" not in out and note not in notes, out


def test_plot_names_the_kind_of_a_file_that_is_no_metrics_json(tmp_path, capsys, monkeypatch):
    """`dodo plot curve cells.h5` (a dodo apply -o file) said `not a Dodo metrics JSON (not JSON: 'utf-8'
    codec can't decode byte 0x89 in position 0: invalid start byte)`, and of a dodo score report `(no
    history / metric_table)`. Now the kind is named; a text that is no JSON keeps the decoder's words."""
    pytest.importorskip("h5py")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "-o", "s.h5", "-n", "8", "-q"])[0] == 0
    assert run(capsys, ["score", "box3d", "s.h5", "--bootstrap", "100", "--json", "report.json"])[0] == 0
    np.save("a.npy", np.zeros(3))
    Path("config.yaml").write_text("model: {hidden_dim: 8}\n")
    for name, words in (("s.h5", "it is a synthetic database (dodo synth)"),
                        ("a.npy", "it is a NumPy array file (.npy)"),
                        ("report.json", "it is a report of dodo score; no history / metric_table"),
                        ("config.yaml", "not JSON: Expecting value: line 1 column 1 (char 0)")):
        code, out, err = run(capsys, ["plot", "curve", name, "-o", "c.png"])
        assert code == 2 and err.strip() == f"dodo plot: error: {name}: not a Dodo metrics JSON ({words})", err


# --- an override's unknown key ----------------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("argv, line", [
    (["train", "--config", str(CONFIGS / "demo_synthetic.yaml"), "--set", "model.hidden_dm=3"],
     "dodo train: error: override model.hidden_dm (--set): unknown key 'hidden_dm' in section model; allowed: "
     "['activation', 'batch_norm', 'dropout', 'head', 'hidden_dim', 'n_blocks']"),
    (["train", "--config", str(CONFIGS / "demo_synthetic.yaml"), "--set", "modl.hidden_dim=3"],
     "dodo train: error: override modl.hidden_dim (--set): unknown key 'modl'; allowed: ['data', 'loss', 'model', "
     "'output', 'training']"),
    (["train", "--config", str(CONFIGS / "demo_synthetic.yaml"), "--set", "data.box3d.lebedev=17"],
     "dodo train: error: override data.box3d.lebedev (--set): unknown key 'lebedev' in section data.box3d; allowed: "
     "['lebedev_order', 'z_method']"),
    (["train", "--config", str(CONFIGS / "demo_synthetic.yaml"), "--set", "training.epochs=abc"],
     "dodo train: error: override training.epochs (--set): expected an integer, got 'abc'"),
    (["preprocess", "--config", str(CONFIGS / "pre_process_demo.yaml"), "--set", "chunk_size=x"],
     "dodo preprocess: error: override chunk_size (--set): expected an integer, got 'x'"),
    (["preprocess", "--config", str(CONFIGS / "pre_process_demo.yaml"), "--set", "filters.max_flux=0.5"],
     "dodo preprocess: error: override filters.max_flux (--set): unknown key 'max_flux' in section filters; allowed: "
     "['clamp_negative_density', 'conservation_tolerance', 'drop_box3d_rejected', 'drop_conservation_violation', "
     "'drop_high_flux_factor', 'drop_nonfinite', 'max_flux_factor']"),
])
def test_an_unknown_key_of_an_override_names_the_override_not_the_config_file(tmp_path, capsys, monkeypatch, argv,
                                                                                 line):
    """`dodo train --config demo_synthetic.yaml --set model.hidden_dm=3` said `.../demo_synthetic.yaml:model:
    unknown key(s) ['hidden_dm']`, naming the config file, which holds no such key: a user looks for it there;
    `--set training.epochs=abc` said `.../demo_synthetic.yaml:training.epochs: expected an integer, got 'abc'`.
    Now the override (--set) is named. Known keys still reach the config's own checks (guard below)."""
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, argv)
    assert code == 2 and err.strip() == line, err


def test_a_known_key_of_an_override_still_reaches_the_configs_checks(tmp_path, capsys, monkeypatch):
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, ["train", "--config", str(CONFIGS / "demo_synthetic.yaml"), "--set",
                                  "model.hidden_dim=0", "--set", "data.box3d.z_method=jedynak"])
    assert code == 2 and err.strip() == "dodo train: error: model.hidden_dim must be >= 1", err


@pytest.mark.parametrize("command, config, hint", [
    ("preprocess", "demo_synthetic.yaml", "(model, training: sections of a dodo train config: give this file to dodo "
                                          "train --config; dodo preprocess takes a config of its own)"),
    ("train", "pre_process_demo.yaml", "(inputs: a section of a dodo preprocess config: give this file to dodo "
                                       "preprocess --config; dodo train takes a config of its own)"),
    ("train", "ensemble_default.yaml", "(distill, ensemble, growth, noise: sections of a dodo train-ensemble config: "
                                       "give this file to dodo train-ensemble --config; dodo train takes a config of "
                                       "its own)"),
])
def test_a_config_of_another_command_is_named_so(tmp_path, capsys, monkeypatch, command, config, hint):
    """`dodo preprocess --config training/configs/demo_synthetic.yaml` (a training config) said `unknown
    key(s) ['data', 'model', 'training']; allowed: [...]` alone; `dodo train` of a preprocess or an
    ensemble config the same. Now the command whose config it is is named; a key of no command's keeps the
    words alone (guard)."""
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, [command, "--config", str(CONFIGS / config)])
    assert code == 2 and err.strip().startswith(f"dodo {command}: error: {CONFIGS / config}: unknown key(s) "), err
    assert err.strip().endswith(hint), err
    (tmp_path / "t.yaml").write_text("modl: {}\n")
    code, out, err = run(capsys, ["train", "--config", "t.yaml"])
    assert err.strip() == ("dodo train: error: t.yaml: unknown key(s) ['modl']; allowed: ['data', 'loss', 'model', "
                           "'output', 'training']"), err


def test_plot_metrics_title_says_when_runs_drawn_have_no_best_loss(tmp_path, capsys, monkeypatch):
    """Of 31 runs, 25 without a finite best validation loss (null in the file): the title said "the 30 of lowest
    best validation loss" of runs most of which have none. Now it counts them."""
    pytest.importorskip("matplotlib")
    from dodo.training import plots

    paths = []
    for i in range(31):
        results = tmp_path / f"run_{i:03d}" / "results"
        results.mkdir(parents=True)
        paths.append(str(_metrics(results / "metrics_7.json", [1.0], [1.0], best=0.1 * (i + 1) if i < 6 else None)))
    titles = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, output: (titles.append(fig.get_suptitle()),
                                                                    save(fig, output))[1])
    code, out, err = run(capsys, ["plot", "metrics", *paths, "-o", str(tmp_path / "m.png")])
    assert code == 0, err
    assert titles == ["30 of 31 runs: the 30 of lowest best validation loss (24 of them without one), in the order "
                      "given (1 left out)"]


# --- dodo.cli.main called by a program ----------------------------------------------------------------


def test_main_takes_paths_as_subprocess_does_and_names_a_word_of_another_type(tmp_path, capsys, monkeypatch):
    """`main(["score", "box3d", Path("d.h5")])` from a program ended in argparse's `TypeError: 'PosixPath'
    object is not subscriptable` (so did `-o Path(...)` of synth and plot), an int in argv the same with
    'int', and `main("info")` was parsed as the words i, n, f, o (`invalid choice: 'i'`). Now paths are
    taken (os.fspath, as subprocess.run does); any other type is a TypeError naming its place."""
    from dodo.cli import main

    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "-o", tmp_path / "s.h5", "-n", "8", "-q"]) == 0
    capsys.readouterr()
    assert main(["score", "box3d", Path("s.h5"), "--bootstrap", "100"]) == 0
    assert "dodo score: box3d on s.h5" in capsys.readouterr().out
    with pytest.raises(TypeError, match=r"argv\[4\] is int 100; each argument must be a str or an os.PathLike"):
        main(["score", "box3d", "s.h5", "--bootstrap", 100])
    with pytest.raises(TypeError, match=r"argv is one str \('info'\); give a list of words"):
        main("info")


def test_plot_metrics_names_the_run_of_a_path_given_from_inside_it(tmp_path, capsys, monkeypatch):
    """`dodo plot metrics results/metrics_7.json ../run_b/results/metrics_8.json` run from inside run_a: the
    first bar was labelled `/7` (the name of '.' is empty). Now `run_a/7`, from the absolute path."""
    pytest.importorskip("matplotlib")
    for run_name, stamp in (("run_a", 7), ("run_b", 8)):
        (tmp_path / run_name / "results").mkdir(parents=True)
        _metrics(tmp_path / run_name / "results" / f"metrics_{stamp}.json", [1.0], [1.0])
    monkeypatch.chdir(tmp_path / "run_a")
    drawn = _labels_drawn(monkeypatch)
    code, out, err = run(capsys, ["plot", "metrics", "results/metrics_7.json", "../run_b/results/metrics_8.json",
                                  "-o", str(tmp_path / "m.png")])
    assert code == 0, err
    assert drawn == [["run_a/7", "run_b/8"]]


@pytest.mark.parametrize("command", ["score", "apply"])
def test_a_text_file_given_as_data_is_named_a_text_file(tmp_path, capsys, monkeypatch, command):
    """`dodo score box3d metrics.json` (a metrics JSON, a report, a YAML config given as data) said only `not a
    readable HDF5 file (Unable to synchronously open file (file signature not found))`. Now what it starts
    with; a binary file keeps HDF5's words alone."""
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "M.json", [1.0], [1.0])
    (tmp_path / "bin.h5").write_bytes(b"\x00\x01binary")
    argv = (lambda data: ["score", "box3d", data]) if command == "score" else (lambda data: ["apply", data])
    code, out, err = run(capsys, argv("M.json"))
    assert code == 2 and err.strip() == (
        f"dodo {command}: error: M.json: not a readable HDF5 file (Unable to synchronously open file (file signature "
        "not found)): it is a text file, starting '{\"history\": {\"train\": [{\"total\": 1.0}], ', not HDF5 (an "
        "Emu-layout database is an HDF5 file)"), err
    code, out, err = run(capsys, argv("bin.h5"))
    assert code == 2 and err.strip() == (f"dodo {command}: error: bin.h5: not a readable HDF5 file (Unable to "
                                         "synchronously open file (file signature not found))"), err


@pytest.mark.parametrize("command", ["train", "preprocess"])
def test_a_data_file_given_as_the_config_is_named_by_its_kind(tmp_path, capsys, monkeypatch, command):
    """`dodo train --config s.h5` (the database given for the config) said `not a text file (byte 0 is not
    UTF-8): give a YAML config file`. Now what the file is; other binary files keep the byte (round 17)."""
    pytest.importorskip("h5py")
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "-o", "s.h5", "-n", "3", "-q"])[0] == 0
    code, out, err = run(capsys, [command, "--config", "s.h5"])
    assert code == 2 and err.strip() == (f"dodo {command}: error: s.h5: not a text file (it is a synthetic database "
                                         "(dodo synth)): give a YAML config file"), err


def test_an_ensemble_override_of_an_unknown_key_names_the_override_not_the_config_file(tmp_path):
    """`dodo train-ensemble --set data.pth=x` said '<config>: unknown key 'data.pth'', of a file
    without that key (round fifty-four's list, left for ensemble_train.py; lead)."""
    from dodo.training.ensemble_train import EnsembleConfig
    from dodo.training.config import ConfigError

    config = tmp_path / "e.yaml"
    config.write_text("data:\n  path: p.h5\n")
    with pytest.raises(ConfigError) as caught:
        EnsembleConfig.load(str(config), {"data.pth": "x"})
    message = str(caught.value)
    assert message.startswith("override data.pth (--set): unknown key 'data.pth'") and str(config) not in message
    config.write_text("data:\n  pth: p.h5\n")  # the file's own unknown key still names the file
    with pytest.raises(ConfigError, match=f"^{config}: unknown key 'data.pth'"):
        EnsembleConfig.load(str(config))
