"""Outside probe, Python round fifty-three: an import that fails for want of memory (an address-space
limit) is not called a broken installation (section 88's "not fixed"); `dodo learning-curve --plot` of
errors near the float range (section 87's "found and left alone")."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 300
BIG = 1.7976931348623157e308  # DBL_MAX


def _dodo(argv, cwd, pythonpath=None, address_space_kb=None):
    """`python -m dodo ARGV` in a child, optionally under an address-space limit (`ulimit -v`)."""
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (address_space_kb * 1024, resource.RLIM_INFINITY))

    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "dodo", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL, env=env,
                          preexec_fn=limit if address_space_kb else None)


_STANDINS = {
    "map": 'raise ImportError("libstandin.so.9: failed to map segment from shared object")\n',
    "enomem": 'raise ImportError("libstandin.so.9: cannot map zero-fill pages: Cannot allocate memory")\n',
    "memoryerror": ('try:\n    raise MemoryError()\nexcept MemoryError as error:\n'
                    '    raise ImportError("initialization failed") from error\n'),
}


@pytest.mark.parametrize("limit_kb", [None, 16 * 1024 * 1024])
@pytest.mark.parametrize("kind", sorted(_STANDINS))
def test_an_import_that_ran_out_of_memory_is_not_called_a_broken_installation(tmp_path, kind, limit_kb):
    """`(ulimit -v 150000; dodo synth)` said `importing h5py failed: libhdf5...so: failed to map segment
    from shared object (its installation is broken or incomplete: reinstall it, e.g. pip install
    --force-reinstall h5py)`: reinstalling does not help. Now: not enough memory to load the library,
    naming the address-space limit where one is set. (A stand-in h5py that raises so is put first on
    PYTHONPATH; the limit of 16 GiB is far above what the child needs.)"""
    fake = tmp_path / "fake" / "h5py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(_STANDINS[kind])
    done = _dodo(["synth", "-o", "s.h5", "-n", "3"], tmp_path, fake.parent, limit_kb)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert line.startswith("dodo synth: error: importing h5py failed: "), line
    assert "reinstall" not in line and "broken" not in line, line
    assert "not enough memory to load the library" in line, line
    if limit_kb:
        assert f"the address-space limit (ulimit -v) is {limit_kb} kB; raise it" in line, line
    else:
        assert "ulimit" not in line, line
    assert not (tmp_path / "s.h5").exists()


def test_a_real_address_space_limit_on_synth_is_not_called_a_broken_installation(tmp_path):
    """The reproducer itself: `dodo synth` under `ulimit -v 150000` (h5py's libhdf5 cannot be mapped)."""
    pytest.importorskip("h5py")
    done = _dodo(["synth", "-o", "s.h5", "-n", "3"], tmp_path, address_space_kb=150000)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "reinstall" not in done.stderr, done.stderr


def test_an_ordinary_broken_import_keeps_the_reinstall_advice(tmp_path):
    """Guard: a library that is missing (not memory) is still a broken installation (round 30's words)."""
    fake = tmp_path / "fake" / "h5py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libstandin.so.9: cannot open shared object file")\n')
    done = _dodo(["synth", "-o", "s.h5", "-n", "3"], tmp_path, fake.parent)
    assert done.returncode == 2
    assert done.stderr.strip() == ("dodo synth: error: importing h5py failed: libstandin.so.9: cannot open shared "
                                   "object file (its installation is broken or incomplete: reinstall it, e.g. pip "
                                   "install --force-reinstall h5py)"), done.stderr


# --- dodo learning-curve --plot -------------------------------------------------------------------

def _rows(values, emu=False):
    rows = []
    for i, value in enumerate(values):
        row = {"train_size": 100 * (i + 1), "cv_model": value, "cv_model_ci95": [value, value], "cv_box3d": 0.01}
        if emu:
            row.update(emu_model_mean_over_folds=value, emu_box3d=0.02)
        rows.append(row)
    return rows


@pytest.mark.parametrize("values, emu", [([1e308, 1e-3], False), ([BIG, 0.01], False), ([BIG, 0.01], True),
                                         ([-BIG, 0.01], False), ([1e308, -1e308], False)])
def test_learning_curve_plot_of_errors_near_the_float_range_warns_nothing(tmp_path, values, emu):
    """A diverged model's CV errors near the float range: matplotlib printed "RuntimeWarning: overflow
    encountered in multiply" (or "in scalar add", "in scalar subtract") and the plot was still written.
    Now the y limits and ticks are set before drawing, as `dodo plot` does (section 87)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    from dodo.training.ensemble_train import plot_curve

    out = tmp_path / "curve.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curve(_rows(values, emu), str(out))
    assert out.stat().st_size > 0


def test_learning_curve_plot_of_ordinary_errors_keeps_matplotlib_autoscale(tmp_path, monkeypatch):
    """Guard: ordinary errors keep matplotlib's own limits (nothing set)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    from dodo.training import ensemble_train, plots

    seen = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: seen.append(fig.axes[0].get_autoscaley_on()))
    ensemble_train.plot_curve(_rows([0.05, 0.03, 0.02], emu=True), str(tmp_path / "curve.png"))
    assert seen == [True]


@pytest.mark.parametrize("limit_kb", [None, 16 * 1024 * 1024])
@pytest.mark.parametrize("command", ["apply", "score"])
def test_a_memory_error_inside_an_import_does_not_blame_the_input(tmp_path, limit_kb, command):
    """`(ulimit -v 145000; dodo synth -o q.h5 -n 3)` said `dodo: error: out of memory (MemoryError): the
    input or the options ask for more memory than the machine gives`: the MemoryError came from inside an
    import (of dodo's own modules), before any input was read; `dodo apply` and `dodo score` said the same
    of a MemoryError inside h5py's import. Now: out of memory importing the libraries, naming the
    address-space limit where one is set. (A stand-in h5py raises MemoryError.)"""
    fake = tmp_path / "fake" / "h5py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise MemoryError()\n")
    data = tmp_path / "data.h5"
    data.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    argv = ["apply", str(data)] if command == "apply" else ["score", "box3d", str(data)]
    done = _dodo(argv, tmp_path, fake.parent, limit_kb)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert "the input or the options" not in line, line
    assert "out of memory while importing the libraries it needs (not enough memory to load the library" in line
    assert (f"the address-space limit (ulimit -v) is {limit_kb} kB" in line) == bool(limit_kb), line


def test_an_ordinary_memory_error_still_names_the_input_or_the_options(tmp_path):
    """A MemoryError outside any import (an input asking for too much) keeps its words."""
    from dodo import cli

    error = None
    try:
        raise MemoryError()
    except MemoryError as caught:
        error = caught
    assert not cli._raised_inside_an_import(error)
