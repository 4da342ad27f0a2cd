"""Outside probe, Python round forty-seven (docs/reliability_python.md section 74): refusals of inputs
in another precision or layout than Dodo's, which named no cause. Each test failed on the code before
its fix, except those marked as guards."""
from __future__ import annotations

import numpy as np
import pytest

import dodo
from dodo.conventions import from_emu_layout, to_emu_layout
from test_probe_round46 import _cells  # three crossing cells, round forty-six's


def _four_velocity(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    W = 1.0 / np.sqrt(1.0 - v @ v)
    return np.concatenate([[W], W * v])


def _functions():
    """Every public call that takes F_init (..., 6, 4) and u (..., 4), as arrays of the results."""
    functions = {"box3d": lambda F, u: dodo.box3d(F, u).F_box,
                 "crossing_features": dodo.crossing_features,
                 "invariants": dodo.invariants,
                 "comoving_density": dodo.comoving_density,
                 "boost_to_rest": dodo.boost_to_rest}
    if dodo.runtime_available():
        functions["closure"] = dodo.closure
        functions["Closure.apply"] = lambda F, u: dodo.Closure("box3d").apply(F, u).F_pred
    return functions


@pytest.mark.parametrize("v", [(0.3, 0.0, 0.0), (0.01, 0.0, 0.0), (0.0, -0.2, 0.5)])
@pytest.mark.parametrize("function", sorted(_functions()))
def test_a_float16_u_is_refused_naming_its_precision(function, v):
    """A float16 u (eps 9.8e-4) holds no unit four-velocity within the 1e-6 tolerance except at rest,
    however it is computed: u = (W, W v) at v = 0.3, cast to float16, was refused as "|u.u + 1| =
    0.000888 exceeds the tolerance ...; pass u = (W, W v) with W = 1/sqrt(1 - v^2)", which it was.
    The refusal now names float16's rounding and the precision that works (float32 passes)."""
    f = _functions()[function]
    F, u = _cells(), _four_velocity(v)
    with pytest.raises(ValueError) as caught:
        f(F, u.astype(np.float16))
    message = str(caught.value)
    assert "u is float16" in message and "rounding" in message, message
    assert "give u as float32 or float64" in message, message
    assert "\n" not in message
    np.asarray(f(F, u.astype(np.float32)))  # the remedy it names is taken


@pytest.mark.parametrize("function", sorted(_functions()))
def test_a_float16_u_that_is_wrong_in_any_precision_keeps_the_plain_refusal(function):
    """Guard: a float16 u whose error its rounding does not explain ((1, 0.5, 0, 0): |u.u + 1| = 0.25)
    is told to pass (W, W v), not blamed on float16; a float16 u at rest is taken."""
    f = _functions()[function]
    with pytest.raises(ValueError) as caught:
        f(_cells(), np.array([1.0, 0.5, 0.0, 0.0], dtype=np.float16))
    assert "pass u = (W, W v)" in str(caught.value) and "float16" not in str(caught.value)
    np.asarray(f(_cells(), np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float16)))


@pytest.mark.parametrize("v", [(0.3, 0.0, 0.0), (0.0, 0.0, 0.3), (0.1, -0.2, 0.5), (0.0, 0.0, 0.0)])
@pytest.mark.parametrize("function", sorted(_functions()))
def test_a_u_in_emu_component_order_is_named(function, v):
    """u given as (W v, W), the (x, y, z, t) order in which Emu's files store four-vectors, was refused
    as "|u.u + 1| = 2 exceeds the tolerance" (or "u^t = 0 is not positive" for a flow along z, and at
    rest), then "pass u = (W, W v)", of a unit four-velocity in another order. The refusal now names
    the order and the reordering, which gives the plain call's bits."""
    f = _functions()[function]
    F, u = _cells(), _four_velocity(v)
    emu_order = u[[1, 2, 3, 0]]
    with pytest.raises(ValueError) as caught:
        f(F, emu_order)
    message = str(caught.value)
    assert "in the order (x, y, z, t)" in message and "u[..., [3, 0, 1, 2]]" in message, message
    assert np.array_equal(np.asarray(f(F, emu_order[..., [3, 0, 1, 2]])), np.asarray(f(F, u)))


@pytest.mark.parametrize("function", sorted(set(_functions()) - {"boost_to_rest"}))
def test_an_emu_layout_F_is_refused_with_the_conversion_that_works(function):
    """F_init in Emu's layout [states, 4 (x, y, z, t), 2 (nu, nubar), 3 flavours] (the README's layout
    of Emu files, read with h5py) was refused as "must have shape (..., 6, 4) ...; got (3, 4, 2, 3)"
    only; so was one state (4, 2, 3). The refusal now names the layout and the converter
    (dodo.conventions.from_emu_layout), which gives the plain call's bits."""
    f = _functions()[function]
    F, u = _cells(), _four_velocity((0.3, 0.0, 0.0))
    emu = to_emu_layout(F)
    for given in (emu, emu[0]):
        with pytest.raises(ValueError) as caught:
            f(given, u)
        message = str(caught.value)
        assert "Emu's layout" in message and "dodo.conventions.from_emu_layout(F_init)" in message, message
    assert np.array_equal(np.asarray(f(from_emu_layout(emu), u)), np.asarray(f(F, u)))


@pytest.mark.parametrize("function", sorted(set(_functions()) - {"boost_to_rest"}))
def test_an_F_with_its_two_axes_swapped_is_refused_with_the_swap(function):
    """F_init (..., 4, 6) (components x species, a host's array transposed) was refused as "must have
    shape (..., 6, 4)" only; the refusal now names np.swapaxes, which gives the plain call's bits."""
    f = _functions()[function]
    F, u = _cells(), _four_velocity((0.3, 0.0, 0.0))
    with pytest.raises(ValueError) as caught:
        f(F.swapaxes(-1, -2), u)
    assert "np.swapaxes(F_init, -1, -2)" in str(caught.value), str(caught.value)
    assert np.array_equal(np.asarray(f(np.swapaxes(F.swapaxes(-1, -2), -1, -2), u)), np.asarray(f(F, u)))


def test_other_wrong_shapes_keep_the_plain_refusal():
    """Guard: a shape that is neither layout ((3, 5, 4), (3, 24)) gets no conversion named."""
    for shape in [(3, 5, 4), (3, 24), (2, 3), (4, 2, 2)]:
        with pytest.raises(ValueError) as caught:
            dodo.box3d(np.ones(shape))
        assert str(caught.value) == f"F_init must have shape (..., 6, 4): species x (t, x, y, z); got {shape}"


# --- A command ended after its output was in place -------------------------------------------

def _emu_input(tmp_path):
    from cli_helpers import emu_file

    return emu_file(tmp_path / "cells.h5", to_emu_layout(_cells(8)))


def _commands(tmp_path):
    """(argv, output) of the finished-product commands this round ran: apply -o, score --json."""
    data = str(_emu_input(tmp_path))
    return {"apply": (["apply", data, "--model", "box3d", "--grid", "2x2x2", "-q", "-o", str(tmp_path / "out.h5")],
                      tmp_path / "out.h5"),
            "score": (["score", "box3d", data, "--bootstrap", "100", "--json", str(tmp_path / "report.json")],
                      tmp_path / "report.json")}


def _complete(path) -> bool:
    if path.suffix == ".json":
        import json

        return json.loads(path.read_text()).get("dodo_report") == "dodo score"
    import h5py

    with h5py.File(path, "r") as handle:
        return handle["F_pred"].shape == (2, 2, 2, 6, 4)


@pytest.mark.parametrize("ending, status, word", [("KeyboardInterrupt", 130, "interrupted"),
                                                   ("SIGTERM", 143, "terminated")])
@pytest.mark.parametrize("command", ["apply", "score"])
def test_a_command_stopped_after_its_output_was_written_says_so(tmp_path, capsys, monkeypatch, command, ending,
                                                                status, word):
    """A Ctrl-C (or SIGTERM) that came after the command's output was renamed into place (while it
    printed its summary: 3 of 12 moments in section 66's sweep) ended with `dodo apply: interrupted`,
    exit 130, of a complete, correct OUT: a script taking 130 for "no output" reran it, one deleting OUT
    on 130 deleted a good file. The line now says that OUT was written, complete (exit status kept).
    The signal is raised deterministically at the step after the rename."""
    pytest.importorskip("h5py")
    from cli_helpers import run

    import dodo._atomic
    from dodo.cli import _Terminated

    argv, output = _commands(tmp_path)[command]

    def stopped(directory):
        raise KeyboardInterrupt() if ending == "KeyboardInterrupt" else _Terminated(15)

    monkeypatch.setattr(dodo._atomic, "_fsync_directory", stopped)
    code, _, err = run(capsys, argv)
    assert code == status, err
    assert err.strip().splitlines()[-1] == f"dodo {command}: {word} after {output} was written, complete", err
    assert _complete(output)


@pytest.mark.parametrize("command", ["apply", "score"])
def test_a_command_stopped_before_its_output_was_written_says_only_the_word(tmp_path, capsys, monkeypatch, command):
    """Guard: stopped before the rename, the line is `dodo X: interrupted` alone, and no file is left."""
    pytest.importorskip("h5py")
    from cli_helpers import run

    import dodo._atomic

    argv, output = _commands(tmp_path)[command]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(dodo._atomic, "refuse_written_meanwhile", stopped)  # the last check before the rename
    code, _, err = run(capsys, argv)
    assert code == 130 and err.strip().splitlines()[-1] == f"dodo {command}: interrupted", err
    assert not output.exists() and [p.name for p in tmp_path.iterdir()] == ["cells.h5"]


@pytest.mark.parametrize("command", ["apply", "score"])
def test_a_standard_output_that_fails_after_the_output_was_written_says_so(tmp_path, capsys, monkeypatch, command):
    """`dodo apply D -o OUT > log` with the log's disk full (or `>&-`): `dodo apply: error: cannot write
    to standard output: No space left on device`, exit 2, of a complete OUT written before the summary
    (the line said nothing of it). Now the line adds `; OUT was written, complete`; exit 2 kept."""
    pytest.importorskip("h5py")
    from cli_helpers import run

    argv, output = _commands(tmp_path)[command]

    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", Full())
    code, _, err = run(capsys, argv)
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (f"dodo {command}: error: cannot write to standard output: No space left "
                                            f"on device; {output} was written, complete"), err
    assert _complete(output)


# --- The model named in bytes ----------------------------------------------------------------

@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
@pytest.mark.parametrize("given, meant", [(b"box3d", 'the str "box3d"'), (np.bytes_(b"box3d"), 'the str "box3d"'),
                                          (bytearray(b"Box3D"), 'the str "box3d"'),
                                          (memoryview(b"box3d"), 'the str "box3d"'),
                                          (b"default", "model=None")])
@pytest.mark.parametrize("call", ["Closure", "closure"])
def test_a_model_keyword_given_as_bytes_is_named(call, given, meant):
    """`dodo.Closure(b"box3d")` (the keyword read from an HDF5 attribute as bytes, np.bytes_) was refused
    as `DODO_ERROR_MODEL_FORMAT: model in memory (5 bytes): not an ONNX model (truncated or damaged
    file?): a field's length runs past the end at byte 2`, sending the user to a damaged file. Bytes
    stay a package's content (docs/runtime.md); the refusal now says that they spell the keyword and
    what to give instead."""
    with pytest.raises(RuntimeError) as caught:
        if call == "Closure":
            dodo.Closure(given)
        else:
            dodo.closure(_cells(), model=given)
    message = str(caught.value)
    assert "DODO_ERROR_MODEL_FORMAT" in message and "bytes spell" in message and f"give {meant}" in message, message


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_other_short_bytes_keep_the_plain_refusal():
    """Guard: bytes that spell no keyword get the runtime's refusal alone."""
    with pytest.raises(RuntimeError) as caught:
        dodo.Closure(b"box3dx")
    assert "spell" not in str(caught.value) and "not an ONNX model" in str(caught.value)


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
@pytest.mark.parametrize("given, hint", [("Box3D", 'is the literal "box3d"'), ("BOX3D", 'is the literal "box3d"'),
                                         ("box3d ", 'is the literal "box3d"'), ("Default", "model=None"),
                                         ("None", "model=None")])
def test_a_model_keyword_in_another_spelling_is_named(tmp_path, monkeypatch, given, hint):
    """`dodo.Closure("Box3D")` (the docs' spelling of the method) said only `model package 'Box3D' does
    not exist`; `"default"` had a hint, `"Default"` and `"None"` none. Each now says what the keyword is."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as caught:
        dodo.Closure(given)
    assert f"model package {given!r} does not exist" in str(caught.value) and hint in str(caught.value), \
        str(caught.value)


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
@pytest.mark.parametrize("given, word", [("Box3D", "box3d"), ("BOX3D", "box3d"), (" default", "default"),
                                         ("Default", "default")])
def test_dodo_apply_names_the_keyword_for_another_spelling(tmp_path, capsys, monkeypatch, given, word):
    """`dodo apply D --model Box3D` said `cannot read Box3D: no such file (relative to the current
    directory ...)`; now it names the keyword (a file of that name is still read: guard below)."""
    pytest.importorskip("h5py")
    from cli_helpers import run

    data = str(_emu_input(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, ["apply", data, "--model", given, "--grid", "2x2x2", "-q"])
    assert code == 2 and err.strip() == (f"dodo apply: error: --model {given!r} is no file here; the keywords are "
                                         f"lower case, without spaces: --model {word}"), err
    (tmp_path / given).write_bytes(b"not a model")  # a file of that name is what --model names
    code, _, err = run(capsys, ["apply", data, "--model", given, "--grid", "2x2x2", "-q"])
    assert code == 2 and "is no file here" not in err and "not an ONNX model" in err, err


# --- Array-likes that NumPy cannot read ------------------------------------------------------

class _Unreadable:
    """An array-like whose conversion fails as a bfloat16 torch tensor's does (TypeError) or as one
    that requires grad (RuntimeError)."""

    def __init__(self, error):
        self.error = error

    def __array__(self, dtype=None, copy=None):
        raise self.error


@pytest.mark.parametrize("error", [TypeError("Got unsupported ScalarType BFloat16"),
                                   RuntimeError("Can't call numpy() on Tensor that requires grad.")])
@pytest.mark.parametrize("which", ["F_init", "u"])
@pytest.mark.parametrize("function", sorted(_functions()))
def test_an_array_like_numpy_cannot_read_is_a_value_error_naming_the_argument(function, which, error):
    """`dodo.closure(torch_tensor_in_bfloat16)` raised torch's `TypeError: Got unsupported ScalarType
    BFloat16` (a tensor that requires grad: torch's RuntimeError), naming neither F_init nor u, where
    the README promises a ValueError that names the problem for a wrong dtype. Now a ValueError names the
    argument, its type and the library's words."""
    f = _functions()[function]
    F, u = _cells(), _four_velocity((0.3, 0.0, 0.0))
    arguments = {"F_init": (_Unreadable(error), u), "u": (F, _Unreadable(error))}[which]
    with pytest.raises(ValueError) as caught:
        f(*arguments)
    message = str(caught.value)
    name = "F" if function == "boost_to_rest" and which == "F_init" else which
    assert message.startswith(f"{name} (") and "_Unreadable) cannot be read as a NumPy array" in message, message
    assert str(error).rstrip(".") in message and "give a NumPy array of a float or integer dtype" in message


def test_a_bfloat16_torch_tensor_is_named_with_its_conversion():
    """The same with torch itself (installed with the training extras): the conversion named works."""
    torch = pytest.importorskip("torch")
    F = _cells()
    tensor = torch.tensor(F, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"^F_init \(torch\.Tensor\) cannot be read as a NumPy array: .*BFloat16.*"
                                         r"t\.detach\(\)\.cpu\(\)\.double\(\)\.numpy\(\)$"):
        dodo.box3d(tensor)
    converted = tensor.detach().cpu().double().numpy()
    assert np.array_equal(dodo.box3d(converted).F_box, dodo.box3d(converted.copy()).F_box)
    with pytest.raises(ValueError, match=r"^u \(torch\.Tensor\) cannot be read as a NumPy array: .*requires grad"):
        dodo.box3d(F, torch.tensor(_four_velocity((0.3, 0.0, 0.0))).requires_grad_(True))


def test_a_float32_u_beyond_its_precision_is_refused_naming_float64():
    """A float32 u at u^t = 1e4 (the README's largest W) is refused in 15 of 20 random directions: its
    rounding gives |u.u + 1| up to ~24, beyond the largest tolerance 0.5, and the refusal said "pass u =
    (W, W v) with W = 1/sqrt(1 - v^2)", which it was. It now names float32's rounding and float64 alone."""
    W = 1e4
    v = np.sqrt(1.0 - 1.0 / W**2)
    messages = []
    for seed in range(20):
        n = np.random.default_rng(seed).normal(size=3)
        u = np.concatenate([[W], W * v * n / np.linalg.norm(n)])
        np.asarray(dodo.box3d(_cells(), u).F_box)  # float64: taken
        try:
            dodo.box3d(_cells(), u.astype(np.float32))
        except ValueError as error:
            messages.append(str(error))
    assert messages
    for message in messages:
        assert "u is float32" in message and "give u as float64 (" in message, message


@pytest.mark.parametrize("function", sorted(_functions()))
def test_a_three_velocity_as_u_is_refused_with_the_four_velocity_it_needs(function):
    """u given as the three-velocity v (..., 3) was refused as "u must have shape (..., 4): fluid
    four-velocity (t, x, y, z); got (3, 3)" only; the refusal now names the three-velocity and builds the
    four-velocity, which gives the call's result."""
    f = _functions()[function]
    F = _cells()
    v = np.array([[0.3, 0.0, 0.0], [0.0, -0.2, 0.1], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError) as caught:
        f(F, v)
    assert "got (3, 3): the three-velocity v?" in str(caught.value) and "u = (W, W v)" in str(caught.value)
    W = 1.0 / np.sqrt(1.0 - np.sum(v * v, axis=-1))
    u = np.concatenate([W[..., None], W[..., None] * v], axis=-1)  # as the message writes it
    expected = np.stack([np.asarray(f(F[i], _four_velocity(v[i]))) for i in range(3)])
    assert np.allclose(np.asarray(f(F, u[:, None, :] if function == "boost_to_rest" else u)), expected,
                       rtol=1e-12, atol=1e-12)
