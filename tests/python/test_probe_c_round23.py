"""Outside probe of the C interface, round twenty-three (docs/reliability_cpp.md, "Round
twenty-three"). The round found no defect in the C API; these tests hold what it probed that no
earlier test held through C: error buffers of every size from 0 (never written past, always
valid UTF-8, the handle NULL), layouts given only by strides (component-major arrays, in place
too; one input cell and one four-velocity broadcast to many cells by a zero cell stride), and a
handle used in a forked child while a parent thread was inside calls on it."""
from __future__ import annotations

import ctypes
import os
import signal
import threading

import numpy as np
import pytest

from libdodo_ctypes import Options, cells_at_rest as _cells, load_libdodo

POINTER = ctypes.POINTER
Strides = lambda *values: (ctypes.c_ssize_t * len(values))(*values)  # noqa: E731


@pytest.fixture(scope="module")
def lib():
    library = load_libdodo()
    library.dodo_default_model_path.restype = ctypes.c_char_p
    return library


def _doubles(array, offset=0):
    return ctypes.cast(array.ctypes.data + offset, POINTER(ctypes.c_double))


def _create(lib, path, threads=0, chunk_size=1024):
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.threads, options.chunk_size = threads, chunk_size
    handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(1024)
    assert lib.dodo_closure_create(path, ctypes.byref(options), ctypes.byref(handle), message, 1024) == 0, message.value
    return handle


def test_error_buffers_of_every_size_are_never_overrun_and_hold_whole_characters(lib):
    path = ("/nonexistent/\u00e9\u00e9\u20ac\u20ac" + "\u00e9" * 40).encode()
    for size in range(0, 48):
        buffer = ctypes.create_string_buffer(b"\xaa" * 64, 64)
        handle = ctypes.c_void_p(1234)
        assert lib.dodo_closure_create(path, None, ctypes.byref(handle), buffer, size) != 0
        assert handle.value is None
        assert set(buffer.raw[size:]) == {0xAA}, size
        if size:
            end = buffer.raw.index(0)
            assert end < size
            buffer.raw[:end].decode("utf-8")
        length = lib.dodo_last_error(None, buffer, size)
        assert length > size
        assert set(buffer.raw[size:]) == {0xAA}, size
        if size:
            buffer.raw[: buffer.raw.index(0)].decode("utf-8")


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_layouts_given_only_by_strides(lib, model):
    path = b"box3d" if model == "box3d" else lib.dodo_default_model_path()
    if path is None:
        pytest.skip("no default model")
    handle = _create(lib, path)
    try:
        n = 9
        F = _cells(n)
        reference = np.zeros_like(F)
        assert lib.dodo_apply(handle, n, _doubles(F), None, None, None, _doubles(reference), None, None) == 0
        # component-major (m, a, c): strides (1, n, 6n), out of place and in place
        T = np.ascontiguousarray(F.transpose(2, 1, 0))
        T_out = np.zeros_like(T)
        strides = Strides(1, n, 6 * n)
        assert lib.dodo_apply(handle, n, _doubles(T), strides, None, None, _doubles(T_out), strides, None) == 0
        assert np.array_equal(T_out.transpose(2, 1, 0), reference)
        assert lib.dodo_apply(handle, n, _doubles(T), strides, None, None, _doubles(T), strides, None) == 0
        assert np.array_equal(T.transpose(2, 1, 0), reference)
        # one cell and one four-velocity broadcast to 5 cells by a zero cell stride
        u = np.array([1.5, 0.3, 0.4, np.sqrt(1.5**2 - 1 - 0.09 - 0.16)])
        one = np.zeros((6, 4))
        assert lib.dodo_apply(handle, 1, _doubles(F), None, _doubles(u), None, _doubles(one), None, None) == 0
        many, status = np.zeros((5, 6, 4)), np.full(5, 99, np.uint32)
        assert lib.dodo_apply(handle, 5, _doubles(F), Strides(0, 4, 1), _doubles(u), Strides(0, 1), _doubles(many),
                              None, status.ctypes.data_as(POINTER(ctypes.c_uint32))) == 0
        assert (many == one).all() and (status == status[0]).all() and status[0] != 99
    finally:
        lib.dodo_closure_destroy(handle)


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_a_forked_child_uses_and_destroys_a_handle_a_parent_thread_was_using(lib, model):
    path = b"box3d" if model == "box3d" else lib.dodo_default_model_path()
    if path is None:
        pytest.skip("no default model")
    handle = _create(lib, path, threads=4, chunk_size=16)
    F = _cells(300, seed=1)
    reference = np.zeros_like(F)
    assert lib.dodo_apply(handle, 300, _doubles(F), None, None, None, _doubles(reference), None, None) == 0
    stop = threading.Event()

    def busy():
        out = np.zeros_like(F)
        while not stop.is_set():
            lib.dodo_apply(handle, 300, _doubles(F), None, None, None, _doubles(out), None, None)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        for _ in range(3):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: no pytest, only the C API, then _exit
                code = 1
                try:
                    signal.alarm(60)  # a hang ends the child with SIGALRM, seen below
                    out = np.zeros_like(F)
                    ok = lib.dodo_apply(handle, 300, _doubles(F), None, None, None, _doubles(out), None, None) == 0
                    ok = ok and np.array_equal(out, reference)
                    lib.dodo_closure_destroy(handle)
                    code = 0 if ok else 2
                finally:
                    os.write(write, bytes([code]))
                    os._exit(code)
            os.close(write)
            _, wait_status = os.waitpid(pid, 0)
            reported = os.read(read, 1)
            os.close(read)
            assert wait_status == 0 and reported == b"\x00", (wait_status, reported)
    finally:
        stop.set()
        worker.join()
        lib.dodo_closure_destroy(handle)


def test_a_moment_filter_numpy_cannot_read_as_floats_is_a_type_error_not_a_crash():
    """dodo._core.QkeKernel with moment_filter "x" (or a dict) read a null array's data: the
    interpreter died of SIGSEGV. Run in a child so that the crash, before the fix, fails the test
    instead of ending pytest."""
    import subprocess
    import sys

    code = (
        "import numpy as np, dodo._core as c\n"
        "for bad in ('x', {'a': 1}, object()):\n"
        "    try:\n"
        "        c.QkeKernel(np.array([[0, 0, 1.0], [0, 0, -1.0]]), 8, np.array([1e-3]), np.ones(8), bad, 1.0, 3e10)\n"
        "    except TypeError as error:\n"
        "        assert 'moment_filter' in str(error), error\n"
        "    else:\n"
        "        raise SystemExit('accepted ' + repr(bad))\n"
        "k = c.QkeKernel(np.array([[0, 0, 1.0], [0, 0, -1.0]]), 8, np.array([1e-3]), np.ones(8), None, 1.0, 3e10)\n"
        "assert k.ncell == 8\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-2000:])
