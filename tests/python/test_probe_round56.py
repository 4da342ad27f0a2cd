"""Outside probe, Python round fifty-six: the open items of rounds fifty-five and data-loss ten (sections 92
and 91). "1 rows" in synth and preprocess (and other counts of one), an Emu file whose F4_final(1|ccm) alone or
whose growthRate(1|s) a column-major writer reversed, a file object or a buffer of wider items given as the
model, HDF5's "memory allocation failed" and a SystemError out of an import under an address-space limit."""
from __future__ import annotations

import array
import io
import sys

import numpy as np
import pytest

import dodo
from cli_helpers import REPO, run

REVERSED = ("with its axes in reverse order, as a column-major writer (Julia's HDF5.jl, Fortran, MATLAB) stores")


def _synth(capsys, path, n=4):
    pytest.importorskip("h5py")
    code, out, err = run(capsys, ["synth", "-o", str(path), "-n", str(n), "-q"])
    assert code == 0, err
    return out


def _rewrite(path, key, values):
    import h5py

    with h5py.File(path, "r+") as handle:
        del handle[key]
        handle[key] = values


# --- item 1: a count of one is singular -------------------------------------------------------------


def test_a_one_row_synth_and_preprocess_say_1_row(tmp_path, capsys):
    """`dodo synth -o one.h5 -n 1` printed `synth: 1 rows -> one.h5`, `dodo preprocess` of it `preprocess: 1 rows ->`."""
    out = _synth(capsys, tmp_path / "one.h5", n=1)
    assert out.startswith(f"synth: 1 row -> {tmp_path / 'one.h5'} ("), out
    from dodo.training.config import PreprocessConfig
    from dodo.training.preprocess import preprocess

    lines = []
    config = PreprocessConfig.load(str(REPO / "training" / "configs" / "pre_process.yaml"),
                                   {"inputs": [str(tmp_path / "one.h5")], "output": str(tmp_path / "pre.h5")})
    assert preprocess(config, progress=False, log=lines.append)["rows_written"] == 1
    assert any(line.startswith(f"preprocess: 1 row -> {tmp_path / 'pre.h5'} (") for line in lines), lines
    assert _synth(capsys, tmp_path / "two.h5", n=2).startswith("synth: 2 rows -> ")  # the plural kept


def test_score_of_one_initial_state_and_two_final_says_1_state(tmp_path, capsys):
    """`dodo score`: `F4_initial(1|ccm) holds 1 states and F4_final(1|ccm) 2`."""
    import h5py

    from dodo.score import read_emu_states

    data = tmp_path / "s.h5"
    _synth(capsys, data, n=2)
    with h5py.File(data, "r") as handle:
        initial = handle["F4_initial(1|ccm)"][()]
    _rewrite(data, "F4_initial(1|ccm)", initial[:1])
    with pytest.raises(ValueError, match=r"F4_initial\(1\|ccm\) holds 1 state and F4_final\(1\|ccm\) 2; they must"):
        read_emu_states(str(data))


def test_a_one_state_file_whose_truth_breaks_conservation_says_1_of_1_state_has(tmp_path, capsys):
    """`dodo score`'s warning said `1 of 1 states have a truth (F4_final) that does not conserve ...`."""
    from test_probe_scoring import synthetic_states, write_emu

    emu_initial, emu_final = synthetic_states(40, 1)
    emu_final[0, 3, 0, 0] *= 1.2  # its n(nu_e) made up: conservation broken
    write_emu(tmp_path / "one.h5", emu_initial, emu_final)
    code, out, err = run(capsys, ["score", "box3d", str(tmp_path / "one.h5"), "--bootstrap", "100"])
    assert code == 0 and ": 1 of 1 state has a truth (F4_final) that does not conserve" in err, err


def test_counts_of_one_state_in_the_emu_readers_are_singular(tmp_path, capsys):
    """`growthRate(1|s) has 2 values for 1 states`, `(0 of its 1 states done so far`."""
    import h5py

    from dodo import emu_files

    data = tmp_path / "s.h5"
    _synth(capsys, data, n=1)
    assert emu_files.growth_rate_note((2,), 1) == "growthRate(1|s) has 2 values for 1 state"
    assert emu_files.growth_rate_note(None, 1) == "growthRate(1|s) has a null dataspace (no values) for 1 state"
    assert emu_files.growth_rate_note((3,), 2) == "growthRate(1|s) has 3 values for 2 states"  # the plural kept
    with h5py.File(data, "r+") as handle:
        handle.attrs.update({"complete": False, "nstates_done": 0, "nstates_requested": 1})
    with h5py.File(data, "r") as handle:
        assert "(0 of its 1 state done so far:" in emu_files.unfinished_run_note(handle, data)


# --- item 2: F4_final(1|ccm) alone reversed, in dodo apply --------------------------------------------


def test_apply_of_a_file_whose_final_states_alone_are_reversed_names_the_reversed_axes(tmp_path, capsys):
    """`dodo apply f.h5` said `'F4_final(1|ccm)' shape (3, 2, 4, 8) differs from 'F4_initial(1|ccm)' (8, 4, 2, 3)`,
    where `dodo score` names the reversed axes."""
    import h5py

    data = tmp_path / "f.h5"
    _synth(capsys, data, n=8)
    with h5py.File(data, "r") as handle:
        final = handle["F4_final(1|ccm)"][()]
    _rewrite(data, "F4_final(1|ccm)", final.transpose())
    code, out, err = run(capsys, ["apply", str(data), "--grid", "2x2x2", "-q"])
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == (f"dodo apply: error: {data}: 'F4_final(1|ccm)' has shape (3, 2, 4, 8): the Emu layout "
                           f"[nsims, 4 (x,y,z,t), 2, 3] {REVERSED} an array of [nsims, 4, 2, 3]; write the array "
                           "with its axes reversed (Julia: permutedims(F, (4, 3, 2, 1)); Fortran: dimension "
                           "F(3, 2, 4, nsims))"), err
    _rewrite(data, "F4_final(1|ccm)", final[:5])  # another shape keeps its words
    code, out, err = run(capsys, ["apply", str(data), "--grid", "2x2x2", "-q"])
    assert code == 2 and "'F4_final(1|ccm)' shape (5, 4, 2, 3) differs from 'F4_initial(1|ccm)' (8, 4, 2, 3)" in err


# --- item 3: growthRate(1|s) of shape (1, n) ----------------------------------------------------------


def test_a_growth_rate_of_shape_1_by_n_is_said_to_have_its_axes_reversed(tmp_path, capsys):
    """`note: g.h5: growthRate(1|s) has shape (1, 4) for 4 states (one rate per state: [4] or [4, 1]); not used`:
    said, but not that a column-major writer's [4, 1] is stored so."""
    data = tmp_path / "g.h5"
    _synth(capsys, data, n=4)
    _rewrite(data, "growthRate(1|s)", np.full((1, 4), 1e9))
    code, out, err = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100"])
    assert code == 0, err
    assert (f"{data}: growthRate(1|s) has shape (1, 4) for 4 states: a column of one rate per state [4, 1] "
            f"{REVERSED} it; write the rates as a vector [4] (Julia: vec(rates)) or with the axes reversed; not used "
            "(no growth-rate comparison)") in out + err, out + err
    from dodo.emu_files import growth_rate_note

    assert growth_rate_note((2, 2), 4) == ("growthRate(1|s) has shape (2, 2) for 4 states (one rate per state: [4] "
                                           "or [4, 1])")  # another shape keeps its words
    assert growth_rate_note((1, 1), 1) == ""  # one state: [1, 1] is its column


# --- item 4: a file object, or a buffer of wider items, as the model ----------------------------------


def test_a_file_object_as_the_model_is_refused_with_what_to_pass(tmp_path):
    """`dodo.Closure(open("m.onnx", "rb"))` said `... got BufferedReader`, an io.BytesIO `got BytesIO`, no more."""
    from dodo._closure import default_model_path

    path = str(default_model_path())
    head = 'model must be a path (str or os.PathLike), a package\'s bytes, None (the default model) or "box3d"; got '
    with open(path, "rb") as stream:
        with pytest.raises(TypeError) as caught:
            dodo.Closure(stream)
        assert str(caught.value) == f"{head}BufferedReader (a file object: pass its path ({path!r}), or its bytes, model.read())"
        assert stream.tell() == 0  # not consumed
    with open(path) as stream, pytest.raises(TypeError) as caught:
        dodo.Closure(stream)
    assert str(caught.value) == (f"{head}TextIOWrapper (a text stream: a package is binary; pass its path ({path!r}), "
                                 "or open the file with 'rb' and pass its .read())")
    with pytest.raises(TypeError) as caught:
        dodo.Closure(io.BytesIO(b"x"))
    assert str(caught.value) == f"{head}BytesIO (an in-memory stream: pass its bytes, model.getvalue() or model.getbuffer())"
    with pytest.raises(TypeError) as caught:
        dodo.closure(np.zeros((6, 4)), model=io.StringIO("x"))
    assert str(caught.value) == f"{head}StringIO (a text stream: a package is binary; pass the package file's path or its bytes)"
    with pytest.raises(TypeError) as caught:  # an object that is no stream keeps its words
        dodo.Closure(object())
    assert str(caught.value) == f"{head}object"
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.zip", "w") as archive:
        archive.write(path, "inner/m.onnx")
    with zipfile.ZipFile(tmp_path / "m.zip") as archive, archive.open("inner/m.onnx") as member, \
            pytest.raises(TypeError) as caught:
        dodo.Closure(member)  # a member's name is no path here: not offered as one
    assert str(caught.value) == f"{head}ZipExtFile (a file object: pass the file's path, or its bytes, model.read())"


def test_a_buffer_of_items_wider_than_a_byte_is_refused_as_a_float64_array_is():
    """`dodo.Closure(array.array('d', ...))` and a memoryview of a float64 array were read as their raw bytes
    (then "not an ONNX model"), where a float64 ndarray is refused by its dtype."""
    head = "an in-memory model package must be bytes or a uint8 array, not "
    cases = [(array.array("d", [1.0, 2.0]), "an array of float64 (8-byte items)"),
             (memoryview(np.zeros(4)), "a memoryview of float64 (8-byte items)"),
             (array.array("H", [1, 2]), "an array of uint16 (2-byte items)"),
             (memoryview(np.zeros(3, bool)), "a memoryview of bool (1-byte items)")]
    for package, words in cases:
        with pytest.raises(TypeError) as caught:
            dodo.Closure(package)
        assert str(caught.value) == head + words
    with pytest.raises(TypeError, match="^an in-memory model package must be bytes or a uint8 array, not an array of float64$"):
        dodo.Closure(np.zeros(4))  # the ndarray's own words, unchanged
    from dodo._closure import default_model_path

    data = default_model_path().read_bytes()
    expected = dodo.Closure(data, threads=1).apply(np.tile(np.eye(6, 4) + 1.0, (2, 1, 1))).F_pred
    for package in (array.array("B", data), array.array("b", data), memoryview(data).cast("c")):  # bytes, each
        closure = dodo.Closure(package, threads=1)
        np.testing.assert_array_equal(closure.apply(np.tile(np.eye(6, 4) + 1.0, (2, 1, 1))).F_pred, expected)


# --- item 6: HDF5's "memory allocation failed", a SystemError out of an import -------------------------

HDF5_WORDS = "Can't create property (memory allocation failed)"
ADVICE = "not enough memory: the address-space limit (ulimit -v) is 216000 kB; raise it, e.g. ulimit -v unlimited, and run again"


def _no_memory(*args, **kwargs):
    raise OSError(HDF5_WORDS)


@pytest.mark.parametrize("command", ["apply", "score"])
def test_hdf5_memory_allocation_failed_gets_the_memory_advice(tmp_path, capsys, monkeypatch, command):
    """Section 91: under `ulimit -v 216000` `dodo apply` printed `dodo apply: error: Can't create property (memory
    allocation failed)`, HDF5's words alone. The failure injected where h5py opens the file."""
    from dodo import _memory, emu_files, score

    data = tmp_path / "s.h5"
    _synth(capsys, data, n=8)
    monkeypatch.setattr(_memory, "address_space_limit_kb", lambda: 216000)
    monkeypatch.setattr(emu_files, "open_hdf5", _no_memory)
    monkeypatch.setattr(score, "open_hdf5", _no_memory)
    argv = ["apply", str(data), "--grid", "2x2x2", "-q"] if command == "apply" else ["score", "box3d", str(data)]
    code, out, err = run(capsys, argv)
    assert code == 2 and "Traceback" not in err, err
    said = HDF5_WORDS if command == "apply" else f"{data}: cannot read ({HDF5_WORDS})"
    assert err.strip() == f"dodo {command}: error: {said}; {ADVICE}", err
    assert err.count("not enough memory") == 1


def test_with_memory_advice_keeps_other_errors_and_advice_given_already(monkeypatch):
    from dodo import _memory

    monkeypatch.setattr(_memory, "address_space_limit_kb", lambda: None)
    assert _memory.with_memory_advice("x.h5: cannot read (truncated file)") == "x.h5: cannot read (truncated file)"
    said = "cannot read 'F' (memory allocation failed for raw data chunk)): not enough memory to read it (...)"
    assert _memory.with_memory_advice(said) == said
    assert _memory.with_memory_advice(HDF5_WORDS) == (f"{HDF5_WORDS}; not enough memory: free memory (end other "
                                                     "programs) or run it on a machine with more, and run again")


def _command_raising(monkeypatch, make_error):
    """dodo.cli.main with a parser whose one command raises ``make_error()``, as no command's own handler
    catches it (the error reaches main)."""
    import argparse

    from dodo import cli

    def build_parser():
        parser = argparse.ArgumentParser(prog="dodo")
        sub = parser.add_subparsers(dest="command")
        sub.add_parser("train").set_defaults(func=lambda args: make_error())
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)


def _import_raising_system_error(tmp_path, monkeypatch):
    (tmp_path / "dodo_r56_broken_extension.py").write_text(
        "raise SystemError('error return without exception set')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dodo_r56_broken_extension", raising=False)
    import dodo_r56_broken_extension  # noqa: F401


def test_a_system_error_inside_an_import_under_an_address_space_limit_is_lack_of_memory(tmp_path, monkeypatch,
                                                                                         capsys):
    """Section 91: `dodo train` under `ulimit -v 700000` ended with `SystemError: error return without exception set`
    raised inside an import, a traceback, exit 1. Injected: a module whose import raises it."""
    from dodo import _memory

    try:
        _import_raising_system_error(tmp_path, monkeypatch)
    except SystemError as error:
        raised = error
    monkeypatch.setattr(_memory, "address_space_limit_kb", lambda: 700000)
    assert _memory.import_ran_out_of_memory(raised)
    assert not _memory.import_ran_out_of_memory(SystemError("error return without exception set"))  # not an import
    _command_raising(monkeypatch, lambda: _import_raising_system_error(tmp_path, monkeypatch))
    code, out, err = run(capsys, ["train"])
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == ("dodo train: error: out of memory while importing the libraries it needs (not enough memory "
                           "to load the library: the address-space limit (ulimit -v) is 700000 kB; raise it, e.g. "
                           "ulimit -v unlimited, and run again)")
    monkeypatch.setattr(_memory, "address_space_limit_kb", lambda: None)  # no limit: a SystemError is a bug, raised
    assert not _memory.import_ran_out_of_memory(raised)
    with pytest.raises(SystemError):
        run(capsys, ["train"])


def test_an_hdf5_memory_error_no_handler_took_is_one_line_with_the_advice(monkeypatch, capsys):
    from dodo import _memory

    monkeypatch.setattr(_memory, "address_space_limit_kb", lambda: 216000)

    def fail():
        raise RuntimeError(f"Unable to open file ({HDF5_WORDS})")

    _command_raising(monkeypatch, fail)
    code, out, err = run(capsys, ["train"])
    assert code == 2 and err.strip() == f"dodo train: error: Unable to open file ({HDF5_WORDS}); {ADVICE}", err

    def other():
        raise RuntimeError("Unable to open file (truncated file)")

    _command_raising(monkeypatch, other)
    with pytest.raises(RuntimeError, match="truncated file"):  # any other error as before
        run(capsys, ["train"])


# --- further probe: dodo.score.score() from a program --------------------------------------------------


def test_score_from_a_program_names_a_wrong_closure_states_or_dtype(tmp_path, capsys):
    """`score("box3d", states)` (the model's name, as `dodo score` takes it) said `AttributeError: 'str' object has
    no attribute 'apply'`, states as a tuple `'tuple' object has no attribute 'F_init'`, an F_init of shape () `object
    of type 'numpy.float64' has no len()`; a complex F_final was scored on its real part and a bool one as 0/1, a
    complex growth rate lost its imaginary part with a ComplexWarning, text rates were parsed."""
    from dodo import score as score_module

    data = tmp_path / "s.h5"
    _synth(capsys, data, n=4)
    states = score_module.read_emu_states(str(data))
    closure = dodo.Closure("box3d")
    for wrong, name in (("box3d", "str"), (None, "NoneType")):
        with pytest.raises(TypeError) as caught:
            score_module.score(wrong, states, resamples=10)
        assert str(caught.value) == ('closure must be a dodo.Closure (e.g. dodo.Closure("box3d") or '
                                     f'dodo.Closure("model.onnx")); got {name}')
    with pytest.raises(TypeError, match=r"^states must be a dodo\.score\.EmuStates\(F_init, F_final, growth_rate\) "
                                        r"\(e\.g\. dodo\.score\.read_emu_states\(path\)\); got tuple$"):
        score_module.score(closure, (states.F_init, states.F_final, states.growth_rate), resamples=10)
    E = score_module.EmuStates
    with pytest.raises(ValueError, match=r"^states\.F_init has shape \(\); states\.F_init and states\.F_final must"):
        score_module.score(closure, E(np.float64(1.0), states.F_final, None), resamples=10)
    for dtype in (complex, bool, str):
        with pytest.raises(ValueError, match=r"^states\.F_final must hold real numbers \(any float or integer dtype\); "
                                             f"got dtype {np.dtype(dtype).name if dtype is not str else '<U'}"):
            score_module.score(closure, E(states.F_init, states.F_final.astype(dtype), None), resamples=10)
    for rates in (states.growth_rate.astype(complex), states.growth_rate.astype(str)):
        with pytest.raises(ValueError, match=r"^states\.growth_rate must hold real numbers \(s\^-1\); got dtype "):
            score_module.score(closure, E(states.F_init, states.F_final, rates), resamples=10)
    expected = score_module.score(closure, states, resamples=10)
    as_ints = score_module.score(closure, E(states.F_init, states.F_final, states.growth_rate.astype(np.int64)),
                                 resamples=10)  # integers stay numbers; a list holding None as before
    assert as_ints["model"] == expected["model"] and as_ints["growth_rate"]["n_states"] == 4
    with_none = [None] + states.growth_rate[1:].tolist()
    assert score_module.score(closure, E(states.F_init, states.F_final, with_none), resamples=10)["growth_rate"][
        "n_states"] == 3
