"""Outside probe, Python round sixty-three: a package of one byte, threads under a thread pool
(docs/reliability_python.md, section 112)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import dodo
from test_probe_round60 import _cells as round60_cells


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
