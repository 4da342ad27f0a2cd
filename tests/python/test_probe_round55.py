"""Outside probe, Python round fifty-five: round fifty-four's open items. A read-only mmap of a model package
given to dodo.Closure, dodo.score.score() of 0 states or of a growth rate of shape (n, 1), "holds 1 cells",
and `dodo simulate --input` of an Emu file whose axes a column-major writer reversed."""
from __future__ import annotations

import mmap

import numpy as np
import pytest

import dodo
from cli_helpers import run
from dodo import score as score_module
from test_probe_round54 import _reversed_axes_file


def _states(capsys, tmp_path, n=4):
    pytest.importorskip("h5py")
    data = tmp_path / "s.h5"
    assert run(capsys, ["synth", "-o", str(data), "-n", str(n), "-q"])[0] == 0
    return score_module.read_emu_states(str(data))


# --- item 1: any object exposing the buffer protocol is a package's bytes -----------------------------


def test_a_read_only_mmap_of_a_package_is_taken_as_its_bytes(tmp_path, capsys):
    """`dodo.Closure(mmap.mmap(fd, 0, access=ACCESS_READ))` of the default package was `TypeError: model must be
    a path (str or os.PathLike), a package's bytes, None (the default model) or "box3d"; got mmap`, though a
    memoryview of the same mmap was taken. Now the mmap's bytes are the package: the file's results."""
    from dodo._closure import default_model_path, model_file

    F_init = _states(capsys, tmp_path).F_init
    expected = dodo.Closure(str(default_model_path()), threads=1).apply(F_init).F_pred
    with open(default_model_path(), "rb") as stream, \
            mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert model_file(mapped) is None  # no file to protect: the package is in memory
        closure = dodo.Closure(mapped, threads=1)
        assert closure.model_path is None
        np.testing.assert_array_equal(closure.apply(F_init).F_pred, expected)
        np.testing.assert_array_equal(dodo.closure(F_init, model=mapped), expected)  # the cached closure


def test_a_closed_mmap_or_released_memoryview_names_the_model_argument():
    """A closed mmap said `ValueError: mmap closed or invalid` (a released memoryview `operation forbidden on
    released memoryview object`), naming no argument."""
    from dodo._closure import default_model_path

    with open(default_model_path(), "rb") as stream:
        mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    mapped.close()
    with pytest.raises(ValueError, match=r"^model: cannot read the in-memory package \(mmap\): mmap closed or invalid$"):
        dodo.Closure(mapped)
    view = memoryview(b"abc")
    view.release()
    with pytest.raises(ValueError, match=r"^model: cannot read the in-memory package \(memoryview\): operation "
                                         "forbidden on released memoryview object$"):
        dodo.Closure(view)


def test_an_object_without_a_buffer_is_still_refused_by_its_type():
    with pytest.raises(TypeError, match=r"model must be a path .*; got object$"):
        dodo.Closure(object())
    with pytest.raises(TypeError, match=r"got int$"):
        dodo.Closure(3)
    with pytest.raises(TypeError, match=r"got float64$"):  # a numpy scalar exposes a buffer: not a package
        dodo.Closure(np.float64(1.0))


# --- item 2: dodo.score.score() of 0 states, of a growth rate of shape (n, 1) -----------------------------


def test_score_of_no_states_says_why():
    """`score(closure, EmuStates(zeros((0, 6, 4)), ...))` said `no state can be scored: ` and nothing after."""
    states = score_module.EmuStates(np.zeros((0, 6, 4)), np.zeros((0, 6, 4)), None)
    with pytest.raises(ValueError) as caught:
        score_module.score(dodo.Closure("box3d"), states)
    assert str(caught.value) == ("no state can be scored: states.F_init holds no states (shape (0, 6, 4)); give at "
                                 "least one")


def test_score_of_a_growth_rate_of_shape_n_by_1_names_the_argument(tmp_path, capsys):
    """A growth rate of shape (n, 1) (as growthRate(1|s) may be stored) ended in `IndexError: too many indices
    for array: array is 1-dimensional, but 2 were indexed`. Now a ValueError naming it and its shape; (n,) and
    None are scored as before."""
    states = _states(capsys, tmp_path)
    n = len(states.F_init)
    closure = dodo.Closure("box3d")
    for shape in [(n, 1), (n + 1,), (1, n)]:
        bad = score_module.EmuStates(states.F_init, states.F_final, np.ones(shape))
        with pytest.raises(ValueError) as caught:
            score_module.score(closure, bad, resamples=10)
        assert str(caught.value) == (f"states.growth_rate has shape {shape}; it must be ({n},), one measured rate "
                                     "per state of states.F_init (e.g. growth_rate.reshape(-1)), or None")
    good = score_module.EmuStates(states.F_init, states.F_final, np.ones(n))
    assert score_module.score(closure, good, resamples=10)["growth_rate"]["n_states"] == n
    none = score_module.EmuStates(states.F_init, states.F_final, None)
    assert "growth_rate" not in score_module.score(closure, none, resamples=10)


def test_score_of_final_states_of_another_shape_names_them(tmp_path, capsys):
    """F_final of fewer states than F_init ended in `operands could not be broadcast together with shapes (4,6)
    (3,6)`, of shape [n, 24] in an IndexError; a growth rate given as a list in `TypeError: '>' not supported
    between instances of 'list' and 'int'`."""
    states = _states(capsys, tmp_path)
    n = len(states.F_init)
    closure = dodo.Closure("box3d")
    for final in (states.F_final[:-1], states.F_final.reshape(n, 24)):
        with pytest.raises(ValueError) as caught:
            score_module.score(closure, score_module.EmuStates(states.F_init, final, None), resamples=10)
        assert str(caught.value) == (f"states.F_final has shape {final.shape}; states.F_init and states.F_final must "
                                     "both be [n, 6 species, 4 (t,x,y,z)], the same n")
    as_list = score_module.EmuStates(states.F_init, states.F_final, [1e5] * n)
    as_array = score_module.EmuStates(states.F_init, states.F_final, np.full(n, 1e5))
    assert score_module.score(closure, as_list, resamples=10)["growth_rate"] == \
        score_module.score(closure, as_array, resamples=10)["growth_rate"]


def test_score_options_from_a_program_name_themselves(tmp_path, capsys):
    """`score(..., resamples=0)` ended in `IndexError: index -1 is out of bounds for axis 0 with size 0`,
    `resamples=-1` in `negative dimensions are not allowed`, `seed=-1` in numpy's `expected non-negative integer`;
    `threshold=nan` (or -1) was taken: no state counted worse than Box3D, without a word. `dodo score` checks its
    options itself (--bootstrap >= 100, --threshold finite >= 0); numpy integers and floats are taken."""
    states = _states(capsys, tmp_path)
    closure = dodo.Closure("box3d")
    for kwargs, words in [({"resamples": 0}, "resamples must be an integer >= 1 (the bootstrap's resamples); got 0"),
                          ({"resamples": -1}, "resamples must be an integer >= 1 (the bootstrap's resamples); got -1"),
                          ({"resamples": True}, "resamples must be an integer >= 1 (the bootstrap's resamples); got True"),
                          ({"threshold": float("nan")}, "threshold must be a finite number >= 0 (N_tot); got nan"),
                          ({"threshold": -1.0}, "threshold must be a finite number >= 0 (N_tot); got -1.0"),
                          ({"seed": -1}, "seed must be a non-negative integer (numpy.random.default_rng); got -1 (")]:
        with pytest.raises(ValueError) as caught:
            score_module.score(closure, states, **kwargs)
        assert str(caught.value).startswith(words), (kwargs, str(caught.value))
    report = score_module.score(closure, states, resamples=np.int64(1), seed=np.int64(3), threshold=np.float32(0.01))
    assert report["n_scored"] == len(states.F_init)


# --- item 3: one cell is "1 cell" ------------------------------------------------------------------


def test_a_one_cell_file_is_said_to_hold_1_cell(tmp_path, capsys, monkeypatch):
    """`dodo apply one.h5 --grid 2x2x2` said `one.h5 holds 1 cells; the grid needs 8`, and a 1x1x1 grid
    `(1 cells from one.h5)`. Two cells keep the plural."""
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "-o", "one.h5", "-n", "1", "-q"])[0] == 0
    code, _, err = run(capsys, ["apply", "one.h5", "--grid", "2x2x2", "--model", "box3d", "-q"])
    assert code == 2 and "one.h5 holds 1 cell; the grid needs 8 (--grid 2x2x2)" in err, err
    code, out, err = run(capsys, ["apply", "one.h5", "--grid", "1x1x1", "--model", "box3d"])
    assert code == 0 and out.startswith("closure on a 1x1x1 grid (1 cell from one.h5), fluid speeds"), out + err
    assert run(capsys, ["synth", "-o", "two.h5", "-n", "2", "-q"])[0] == 0
    code, _, err = run(capsys, ["apply", "two.h5", "--grid", "2x2x2", "--model", "box3d", "-q"])
    assert code == 2 and "two.h5 holds 2 cells; the grid needs 8" in err, err


# --- item 4: dodo simulate --input of a column-major writer's Emu file --------------------------------------


REVERSED = ("'F4_initial(1|ccm)' has shape (3, 2, 4, 8): the Emu layout [nsims, 4 (x,y,z,t), 2, 3] with its axes in "
            "reverse order, as a column-major writer (Julia's HDF5.jl, Fortran, MATLAB) stores an array of [nsims, "
            "4, 2, 3]; write the array with its axes reversed (Julia: permutedims(F, (4, 3, 2, 1)); Fortran: "
            "dimension F(3, 2, 4, nsims))")


@pytest.mark.parametrize("with_nf", [True, False])
def test_simulate_input_with_its_axes_reversed_is_named_so(tmp_path, capsys, monkeypatch, with_nf):
    """`dodo simulate --input` of an Emu file written from Julia or Fortran (F4_initial(1|ccm) of shape (3, 2, 4,
    nsims)) said `'F4_initial(1|ccm)' has shape (3, 2, 4, 8); expected [nsims, 4 (x,y,z,t), 2, 3] (three
    flavours)`. Now the words dodo score and apply give (emu_files.reversed_axes_problem). Refused before any
    state is run."""
    pytest.importorskip("h5py")
    from dodo.qke.states import read_states

    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "-o", "s.h5", "-n", "8", "-q"])[0] == 0
    data = _reversed_axes_file(tmp_path / "s.h5", with_nf)
    with pytest.raises(ValueError) as caught:
        read_states(str(data))
    assert str(caught.value) == f"{data}: {REVERSED}"
    code, _, err = run(capsys, ["simulate", "--input", "s.h5", "-o", "out.h5"])
    assert code == 2 and err.strip() == f"dodo simulate: error: s.h5: {REVERSED}", err
    assert not (tmp_path / "out.h5").exists()


def test_simulate_input_of_another_wrong_shape_keeps_its_words(tmp_path, capsys):
    """A two-flavour Emu file ([n, 4, 2, 2]) is not a reversed one: the shape and the layout expected, as before."""
    h5py = pytest.importorskip("h5py")
    from dodo.qke.states import read_states

    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as handle:
        handle["F4_initial(1|ccm)"] = np.ones((5, 4, 2, 2))
    with pytest.raises(ValueError) as caught:
        read_states(str(path))
    assert str(caught.value) == (f"{path}: 'F4_initial(1|ccm)' has shape (5, 4, 2, 2); expected [nsims, 4 (x,y,z,t), "
                                 "2, 3] (three flavours)")


def test_a_one_state_score_report_says_1_state():
    """`dodo score box3d one.h5` printed "(1 states; closure at rest" and "on 1 states:" (round fifty-five's
    list; lead)."""
    from dodo._shown import counted  # score's counts go through it (its own copy, _states, is gone)

    assert (counted(1, "state"), counted(0, "state"), counted(2, "state")) == ("1 state", "0 states", "2 states")
