"""Outside probe, round forty-six (docs/reliability_python.md section 71): the Python API's inputs as
array-likes. Each test failed on the code before its fix, except those marked as guards."""
from __future__ import annotations

import decimal
import fractions
import warnings

import numpy as np
import pytest

import dodo

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


def _cells(n: int = 3) -> np.ndarray:
    F = np.zeros((n, 6, 4))
    F[:, 0] = [1.0, 0.0, 0.1, 0.5]
    F[:, 3] = [1.0, 0.0, 0.0, -0.5]
    F[:, [1, 2, 4, 5], 0] = 0.3
    F[1:, 1, 1] = 0.05
    return F


def _moving() -> np.ndarray:
    v = 0.3
    W = 1.0 / np.sqrt(1.0 - v * v)
    return np.array([W, W * v, 0.0, 0.0])


def _functions():
    functions = {"box3d": lambda F, u: dodo.box3d(F, u).F_box,
                 "crossing_features": dodo.crossing_features,
                 "invariants": dodo.invariants,
                 "comoving_density": dodo.comoving_density}
    if dodo.runtime_available():
        functions["closure"] = dodo.closure
        functions["Closure.apply"] = lambda F, u: dodo.Closure("box3d").apply(F, u).F_pred
    return functions


@pytest.mark.parametrize("which", ["F_init", "u"])
@pytest.mark.parametrize("function", sorted(_functions()))
def test_an_object_array_of_real_numbers_is_refused_with_the_conversion_that_works(function, which):
    """An object array holding only real numbers (floats, NumPy scalars, Fractions, Decimals: a list
    mixing them becomes one) was refused as "must hold real numbers (any float or integer dtype); got
    dtype object", of an array that held them; the refusal now says so and names the conversion,
    which gives the plain call's bits."""
    f = _functions()[function]
    F, u = _cells(), _moving()
    plain = np.asarray(f(F, u))
    mixed_F = F.astype(object)
    mixed_F[0, 0, 0] = fractions.Fraction(1)
    mixed_F[1, 1, 0] = decimal.Decimal("0.3")
    mixed_F[2, 0, 3] = np.float32(0.5)
    mixed_u = np.array([u[0], decimal.Decimal(float(u[1])), 0, np.int8(0)], dtype=object)
    arguments = {"F_init": (mixed_F, u), "u": (F, mixed_u)}[which]
    with pytest.raises(ValueError) as caught:
        f(*arguments)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{which} has dtype object") and "each a real number" in message, message
    assert f"np.asarray({which}, dtype=np.float64)" in message, message
    converted = [np.asarray(a, dtype=np.float64) for a in arguments]
    assert np.array_equal(np.asarray(f(*converted)), plain)  # the advice gives the plain call's result


@pytest.mark.parametrize("element, words", [
    (None, "NoneType None, not a real number"),
    ("1.0", "str '1.0', not a real number"),
    (1j, "complex 1j, not a real number"),
    (True, "bool True, not a real number"),
    ([1.0], "list [1.0], not a real number"),
    (decimal.Decimal("1e400"), "1E+400, beyond the range of float64"),
    (10 ** 400, "beyond the range of float64"),
    (fractions.Fraction(10 ** 400, 3), "beyond the range of float64"),
    (decimal.Decimal("sNaN"), "which float() does not convert"),
])
def test_an_object_array_names_its_first_element_that_is_not_a_real_number(element, words):
    """The same refusal said nothing of which element was wrong (a None from a missing value, text
    read from a file, a number float64 cannot hold); it names the first, with its cell."""
    F = _cells().astype(object)
    F[2, 4, 1] = element
    with pytest.raises(ValueError) as caught:
        dodo.box3d(F)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    assert "F_init has dtype object" in message and "at cell (2,) (index (2, 4, 1))" in message, message
    assert words in message, message


def test_an_object_u_names_its_element():
    u = np.array([1.0, None, 0.0, 0.0], dtype=object)
    with pytest.raises(ValueError, match=r"u has dtype object .* at cell \(\) \(index \(1,\)\) NoneType None"):
        dodo.box3d(_cells(), u)


@pytest.mark.parametrize("value, kind", [((x for x in [1.0, 0.0, 0.0, 0.0]), "generator"),
                                         ({0: 1.0}, "dict"), ({1.0, 0.0}, "set")])
def test_a_u_that_is_no_array_is_named(value, kind):
    """`u=(x for x in u)` (a generator), a dict or a set: NumPy makes a 0-d object array of it, refused
    as "u must hold real numbers ...; got dtype object"; now named as what it is."""
    with pytest.raises(ValueError) as caught:
        dodo.box3d(_cells(), value)
    message = str(caught.value)
    assert message.startswith(f"u must be an array of real numbers with shape (..., 4): fluid four-velocity (t, x, y, z); "
                              f"got a {kind}"), message  # a generator's way to an array follows (round sixty)


@pytest.mark.parametrize("function", sorted(_functions()))
def test_guard_array_likes_give_the_plain_calls_bits(function):
    """Guard: lists, tuples, memoryviews, big-endian, read-only, strided, masked arrays without masked
    entries, subclasses and a 2-D np.matrix u: bit for bit the plain call (held before this round)."""
    f = _functions()[function]
    F, u = _cells(), _moving()
    plain = np.asarray(f(F, u))
    wide = np.zeros((6, 6, 4))
    wide[::2] = F
    read_only = F.copy()
    read_only.flags.writeable = False

    class Sub(np.ndarray):
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix_u = np.matrix(u)
    inputs = [(F.tolist(), u.tolist()), (tuple(map(tuple, map(tuple, F))), tuple(u)),
              (memoryview(F), memoryview(u)), (F.astype(">f8"), u.astype(">f8")), (read_only, u),
              (wide[::2], u), (np.ma.masked_array(F), np.ma.masked_array(u)), (F.view(Sub), u.view(Sub)),
              (F, matrix_u), (F, np.tile(u, (3, 1)))]
    for a, b in inputs:
        assert np.array_equal(np.asarray(f(a, b)), plain)


# --- python -m dodo.test when the runtime is out of memory -------------------------------------------

def test_the_smoke_test_reports_an_out_of_memory_runtime_in_one_line(monkeypatch, capsys):
    """`python -m dodo.test` with a closure whose load fails with DODO_ERROR_OUT_OF_MEMORY (Python's
    MemoryError) ended in a traceback, the report unprinted; now it is its FAIL line and exit 1, as
    for the runtime's other failures. Held deterministically: dodo.Closure raises MemoryError."""
    import dodo.test as smoke

    def out_of_memory(*args, **kwargs):
        raise MemoryError("DODO_ERROR_OUT_OF_MEMORY: evaluating the network: (the cap on ONNX Runtime's memory)")

    monkeypatch.setattr(dodo, "runtime_available", lambda: True)
    monkeypatch.setattr(dodo, "Closure", out_of_memory)
    assert smoke._command([]) == 1
    out = capsys.readouterr().out
    assert "FAIL: the closure runtime is built but does not run: DODO_ERROR_OUT_OF_MEMORY" in out, out
    assert "closure runtime: built, NOT working" in out, out


@needs_runtime
def test_the_smoke_test_under_a_one_mib_onnxruntime_cap_never_shows_a_traceback(tmp_path):
    """The same for real: DODO_ONNXRUNTIME_MEMORY_LIMIT=1048576 (the least accepted) on ONNX Runtime. The
    default model failed there (851,968 bytes asked of an arena with none left) with a traceback; the
    outcome is the report, whichever way the runtime goes."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, DODO_ONNXRUNTIME_MEMORY_LIMIT="1048576", DODO_NETWORK_EVALUATOR="onnxruntime")
    done = subprocess.run([sys.executable, "-m", "dodo.test"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode in (0, 1), (done.returncode, done.stderr)
    assert "closure runtime: " in done.stdout, done.stdout
    if done.returncode == 1:
        assert "FAIL: the closure runtime is built but does not run" in done.stdout, done.stdout


# --- dodo info and the runtime's environment variables ----------------------------------------------

@pytest.mark.parametrize("variable, value, key", [
    ("DODO_NETWORK_EVALUATOR", "nativ", "network_evaluator"),
    ("DODO_NETWORK_EVALUATOR", "native", "network_evaluator"),
    ("DODO_NETWORK_EVALUATOR", "onnxruntime\n", "network_evaluator"),
    ("DODO_ONNXRUNTIME_MEMORY_LIMIT", "abc", "onnxruntime_memory_limit"),
    ("DODO_ONNXRUNTIME_MEMORY_LIMIT", "1e9", "onnxruntime_memory_limit"),
    ("DODO_ONNXRUNTIME_MEMORY_LIMIT", " 1000000000", "onnxruntime_memory_limit"),
    ("DODO_ONNXRUNTIME_MEMORY_LIMIT", "1048575", "onnxruntime_memory_limit"),
    ("DODO_ONNXRUNTIME_MEMORY_LIMIT", "18446744073709551616", "onnxruntime_memory_limit"),
])
def test_dodo_info_says_when_a_runtime_variable_makes_every_closure_fail(monkeypatch, capsys, variable, value, key):
    """`dodo info`, the installation's check, printed nothing of DODO_NETWORK_EVALUATOR=nativ or
    DODO_ONNXRUNTIME_MEMORY_LIMIT=abc, with which every closure with a model fails to load
    (DODO_ERROR_INVALID_ARGUMENT); it now names the variable and says so, on one line."""
    from dodo.cli import main

    monkeypatch.setenv(variable, value)
    assert main(["info"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{key}:")]
    assert len(lines) == 1, lines
    assert f"({variable}" in lines[0] and "NOT VALID" in lines[0] and "fails to load" in lines[0], lines[0]
    if dodo.runtime_available():  # the line tells the truth: a fresh process's runtime refuses the value
        import os
        import subprocess
        import sys

        program = ("import dodo\ntry:\n    dodo.Closure(evaluator='auto' if 'EVALUATOR' in %r else 'onnxruntime')\n"
                   "except ValueError as error:\n    print('refused:', error)\n" % variable)
        done = subprocess.run([sys.executable, "-c", program], env=dict(os.environ, **{variable: value}),
                              capture_output=True, text=True, timeout=600)
        assert done.stdout.startswith("refused: DODO_ERROR_INVALID_ARGUMENT"), (done.stdout, done.stderr)


@pytest.mark.parametrize("variable, value", [("DODO_NETWORK_EVALUATOR", "onnxruntime"),
                                             ("DODO_NETWORK_EVALUATOR", "auto"),
                                             ("DODO_ONNXRUNTIME_MEMORY_LIMIT", "1048576"),
                                             ("DODO_ONNXRUNTIME_MEMORY_LIMIT", "18446744073709551615")])
def test_dodo_info_shows_a_valid_runtime_variable_without_a_warning(monkeypatch, capsys, variable, value):
    from dodo.cli import main

    monkeypatch.setenv(variable, value)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"{value} ({variable}" in out and "NOT VALID" not in out, out


def test_guard_dodo_info_without_the_variables_prints_no_line_of_them(monkeypatch, capsys):
    from dodo.cli import main

    monkeypatch.delenv("DODO_NETWORK_EVALUATOR", raising=False)
    monkeypatch.setenv("DODO_ONNXRUNTIME_MEMORY_LIMIT", "")  # empty: unset, for the runtime
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "network_evaluator" not in out and "onnxruntime_memory_limit" not in out, out
