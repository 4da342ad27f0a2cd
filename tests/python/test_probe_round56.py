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
from cli_helpers import run

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
