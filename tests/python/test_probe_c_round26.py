"""Outside probe of the C interface, round twenty-six (docs/reliability_cpp.md, "Round
twenty-six"): aliased and overlapping arrays, n_cells 0 and past the address space, NULL
arguments, NaN / inf / subnormal / -0.0 inputs, create-destroy loops, one handle shared by threads
and used after fork(), packages with flipped bytes, and long messages (host-given values shortened;
the C++ and Fortran wrappers keep a legitimately long message whole)."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from libdodo_ctypes import Options, cells_at_rest as _cells, libdodo_beside_junk_onnxruntime, load_libdodo

POINTER = ctypes.POINTER
U32 = POINTER(ctypes.c_uint32)
Strides = lambda *values: (ctypes.c_ssize_t * len(values))(*values)  # noqa: E731
ROOT = Path(__file__).resolve().parents[2]
MODELS = ["box3d", "default"]


@pytest.fixture(scope="module")
def lib():
    return load_libdodo()


def _path(lib, model):
    if model == "box3d":
        return b"box3d"
    path = lib.dodo_default_model_path()
    if path is None:
        pytest.skip("no default model")
    return path


def _doubles(array, offset=0):
    return None if array is None else ctypes.cast(array.ctypes.data + offset, POINTER(ctypes.c_double))


def _status(array):
    return None if array is None else array.ctypes.data_as(U32)


def _create(lib, path, threads=0):
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.threads = threads
    handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(4096)
    assert lib.dodo_closure_create(path, ctypes.byref(options), ctypes.byref(handle), message, 4096) == 0, message.value
    return handle


def _error(lib, handle=None):
    length = lib.dodo_last_error(handle, None, 0)
    buffer = ctypes.create_string_buffer(length + 1)
    lib.dodo_last_error(handle, buffer, length + 1)
    return buffer.value.decode()


def _apply(lib, handle, n, F, out, u=None, status=None):
    return lib.dodo_apply(handle, n, _doubles(F), None, _doubles(u), None, _doubles(out), None, _status(status))


def _same_bits(a, b):
    return np.array_equal(np.asarray(a).view(np.uint64), np.asarray(b).view(np.uint64))


def _wait(pid, limit=120.0):
    """The child's wait status; a child still running after `limit` seconds (a hang) is killed and
    the test fails. The limit only detects hangs: a healthy child exits in well under a second."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} still running after {limit} s (hang)")


# --- aliasing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_an_output_aliasing_an_input_is_exact_in_place_or_refused_untouched(lib, model):
    """F_pred == F_init (in place) equals the separate call bit for bit; every other overlap of an
    output with an input (a cell or one double apart, in either direction; F_pred over u;
    cell_status inside F_init or F_pred) is refused with a message naming the two arrays, and no
    byte of the buffer changes."""
    handle = _create(lib, _path(lib, model))
    try:
        n = 40
        F = _cells(n, seed=2)
        u = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
        u[3] = [1.25, 0.75, 0.0, 0.0]
        reference, reference_status = np.zeros_like(F), np.zeros(n, np.uint32)
        assert _apply(lib, handle, n, F, reference, u, reference_status) == 0
        in_place, status = F.copy(), np.zeros(n, np.uint32)
        assert _apply(lib, handle, n, in_place, in_place, u, status) == 0
        assert _same_bits(in_place, reference) and np.array_equal(status, reference_status)

        buffer = np.concatenate([F.reshape(-1), np.zeros(48)])
        cell = 24 * 8
        for f_offset, out_offset in [(0, cell), (cell, 0), (0, 8), (8, 0), (0, 24 * 8 * (n - 1))]:
            before = buffer.copy()
            result = lib.dodo_apply(handle, n, _doubles(buffer, f_offset), None, None, None,
                                    _doubles(buffer, out_offset), None, None)
            assert result == 1 and "F_pred overlaps F_init" in _error(lib), (f_offset, out_offset, _error(lib))
            assert _same_bits(buffer, before)
        # F_pred beginning inside u (one cell: the cell strides may differ, so only overlap decides)
        velocity = np.concatenate([u[0], np.zeros(24)])
        before = velocity.copy()
        assert lib.dodo_apply(handle, 1, _doubles(F), None, _doubles(velocity), None, _doubles(velocity, 8), None,
                              None) == 1
        assert "F_pred overlaps u" in _error(lib) and _same_bits(velocity, before)
        # cell_status inside F_init, and inside F_pred
        out = np.zeros_like(F)
        for array, words in [(F, "cell_status overlaps F_init"), (out, "cell_status overlaps F_pred")]:
            before = array.copy()
            result = lib.dodo_apply(handle, n, _doubles(F), None, None, None, _doubles(out), None,
                                    ctypes.cast(array.ctypes.data + 40, U32))
            assert result == 1 and words in _error(lib), _error(lib)
            assert _same_bits(array, before)
        # the same memory under other strides: cells reversed, components transposed; in place with
        # u read from inside F; cell_status inside u
        for strides, offset in [(Strides(-24, 4, 1), 24 * 8 * (n - 1)), (Strides(24, 1, 6), 0)]:
            G = F.copy()
            assert lib.dodo_apply(handle, n, _doubles(G), None, None, None, _doubles(G, offset), strides, None) == 1
            assert "F_pred overlaps F_init" in _error(lib) and _same_bits(G, F)
        G = F.copy()
        assert lib.dodo_apply(handle, n, _doubles(G), None, _doubles(G), Strides(24, 1), _doubles(G), None, None) == 1
        assert "F_pred overlaps u" in _error(lib) and _same_bits(G, F)
        velocity = u.copy()
        assert lib.dodo_apply(handle, n, _doubles(F), None, _doubles(velocity), None, _doubles(out), None,
                              ctypes.cast(velocity.ctypes.data + 8, U32)) == 1
        assert "cell_status overlaps u" in _error(lib) and _same_bits(velocity, u)
        # one cell in place may give different cell strides (dodo.h): the separate call's bits
        G = F[:1].copy()
        assert lib.dodo_apply(handle, 1, _doubles(G), Strides(0, 4, 1), None, None, _doubles(G), Strides(999, 4, 1),
                              None) == 0
        one = np.zeros((1, 6, 4))
        assert lib.dodo_apply(handle, 1, _doubles(F), None, None, None, _doubles(one), None, None) == 0
        assert _same_bits(G, one)
        # inputs may share memory with each other: u read from inside F_init is only read
        assert lib.dodo_apply(handle, 1, _doubles(F), None, _doubles(F), None, _doubles(out), None, None) == 0
    finally:
        lib.dodo_closure_destroy(handle)


@pytest.mark.parametrize("model", MODELS)
def test_diagnostics_outputs_overlapping_any_other_array_are_refused_untouched(lib, model):
    """dodo_apply_diagnostics with each output (F_pred, cell_status, growth_rate, uncertainty)
    starting one double inside any other array of the call, input or output: refused, and no byte
    of the shared buffer changes."""
    handle = _create(lib, _path(lib, model))
    try:
        n = 8
        F = _cells(n)
        arena = np.zeros(1200)
        layout = {"F_init": 0, "u": 300, "F_pred": 400, "status": 700, "growth": 800, "uncertainty": 900}
        outputs = ["F_pred", "status", "growth", "uncertainty"]
        for inner in outputs:
            for outer in layout:
                if inner == outer:
                    continue
                at = dict(layout)
                at[inner] = at[outer] + 1
                arena[:] = 0
                arena[at["F_init"]:at["F_init"] + 24 * n] = F.reshape(-1)
                arena[at["u"]:at["u"] + 4 * n] = np.tile([1.0, 0.0, 0.0, 0.0], n)
                before = arena.copy()
                place = {name: ctypes.cast(arena.ctypes.data + 8 * offset, POINTER(ctypes.c_double))
                         for name, offset in at.items()}
                result = lib.dodo_apply_diagnostics(handle, n, place["F_init"], None, place["u"], None,
                                                    place["F_pred"], None, ctypes.cast(place["status"], U32),
                                                    place["growth"], place["uncertainty"])
                assert result == 1 and "overlap" in _error(lib), (inner, outer, result, _error(lib))
                assert _same_bits(arena, before), (inner, outer)
    finally:
        lib.dodo_closure_destroy(handle)


FORTRAN_ALIASING = r"""
program alias
  use dodo
  use, intrinsic :: iso_c_binding
  implicit none
  type(dodo_closure) :: closure
  integer, parameter :: n = 16
  real(c_double) :: F(4, 6, n + 1), ref(4, 6, n), G(4, 6, n + 1), before(4, 6, n + 1)
  integer(c_int32_t) :: st(n), st_ref(n)
  integer :: stat, c, a
  character(len=512) :: errmsg
  character(len=4096) :: model
  call get_command_argument(1, model)
  call dodo_create(closure, trim(model), stat=stat, errmsg=errmsg)
  if (stat /= 0) error stop 1
  F = 0
  do c = 1, n + 1
    do a = 1, 6
      F(1, a, c) = 1 + 0.1 * a + 0.01 * c
      F(4, a, c) = merge(-0.4d0, 0.3d0, a == 4)
    end do
  end do
  call dodo_apply(closure, F(:, :, 1:n), ref, cell_status=st_ref, stat=stat)
  if (stat /= 0) error stop 2
  G = F
  call dodo_apply(closure, G(:, :, 1:n), G(:, :, 1:n), cell_status=st, stat=stat)
  print '(a, 1x, i0, 1x, l1, 1x, l1)', 'inplace', stat, &
      all(transfer(G(:, :, 1:n), 1_c_int64_t, 24 * n) == transfer(ref, 1_c_int64_t, 24 * n)), all(st == st_ref)
  G = F
  before = G
  call dodo_apply(closure, G(:, :, 1:n), G(:, :, 2:n + 1), stat=stat, errmsg=errmsg)
  print '(a, 1x, i0, 1x, l1, 1x, a)', 'shifted', stat, &
      all(transfer(G, 1_c_int64_t, size(G)) == transfer(before, 1_c_int64_t, size(G))), trim(errmsg)
  call dodo_destroy(closure)
end program
"""


@pytest.mark.parametrize("model", MODELS)
def test_fortran_in_place_is_exact_and_an_overlapping_section_is_refused(lib, tmp_path, model):
    """Through dodo.f90: F_pred the same section as F_init gives the separate call's bits; F_pred a
    section one cell further along the same array gets stat 1 and the C message, F unchanged."""
    from capi_host import compile_fortran, run_host

    program = compile_fortran(tmp_path, "alias", FORTRAN_ALIASING)
    lines = run_host(program, _path(lib, model).decode(), timeout=120)
    assert lines == ["inplace 0 T T", "shifted 1 T F_pred overlaps F_init: pass the same pointer and strides "
                     "for in-place use, or separate arrays"], lines


def test_string_arguments_sharing_a_buffer_with_the_output_text(lib):
    """dodo_get_metadata with the key in the very buffer the value is written to, and
    dodo_closure_create writing its message over (or just past) the model path it reads: the
    key is matched and the path read before anything is written, so the results equal those of
    separate buffers; an absent key leaves the buffer as it was (as with separate buffers)."""
    get = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
        ("dodo_get_metadata", lib))
    create = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, POINTER(ctypes.c_void_p),
                              ctypes.c_void_p, ctypes.c_size_t)(("dodo_closure_create", lib))
    handle = _create(lib, _path(lib, "default"))
    try:
        for key in [b"dodo.head", b"dodo.output_size", b"dodo.content_sha256", b"dodo.box3d", b"dodo.absent"]:
            separate = ctypes.create_string_buffer(4096)
            length = lib.dodo_get_metadata(handle, key, separate, 4096)
            for size in (len(key) + 1, 4, 64, 4096):
                shared = ctypes.create_string_buffer(key, max(size, len(key) + 1))
                assert get(handle, ctypes.addressof(shared), ctypes.addressof(shared), size) == length
                assert shared.value == (separate.value[:size - 1] if length >= 0 else key), (key, size)
    finally:
        lib.dodo_closure_destroy(handle)
    for path in [b"/nonexistent/model.onnx", b"", b"/tmp"]:
        separate, fresh = ctypes.create_string_buffer(4096), ctypes.c_void_p()
        status = lib.dodo_closure_create(path, None, ctypes.byref(fresh), separate, 4096)
        for shift in (0, 5):
            shared = ctypes.create_string_buffer(path + bytes(10), 4096)
            assert create(ctypes.addressof(shared), None, ctypes.byref(fresh), ctypes.addressof(shared) + shift,
                          4096 - shift) == status
            assert ctypes.string_at(ctypes.addressof(shared) + shift) == separate.value and not fresh.value


# --- sizes and NULL pointers ---------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_zero_huge_and_null_arguments_are_named_and_write_nothing(lib, model):
    handle = _create(lib, _path(lib, model))
    try:
        # n = 0: nothing is read, so NULL arrays are fine, on a live handle; a NULL handle is not
        assert lib.dodo_apply(handle, 0, None, None, None, None, None, None, None) == 0
        assert lib.dodo_apply(None, 0, None, None, None, None, None, None, None) == 1
        assert _error(lib) == "closure handle is NULL"
        n = 5
        F, out, status = _cells(n), np.zeros((n, 6, 4)), np.zeros(n, np.uint32)
        assert lib.dodo_apply(handle, n, None, None, None, None, _doubles(out), None, None) == 1
        assert _error(lib) == "F_init is NULL"
        assert lib.dodo_apply(handle, n, _doubles(F), None, None, None, None, None, None) == 1
        assert _error(lib) == "F_pred is NULL"
        assert lib.dodo_apply(None, n, _doubles(F), None, None, None, _doubles(out), None, None) == 1
        assert _error(lib) == "closure handle is NULL"
        assert not out.any()
        # u and cell_status may be NULL
        assert lib.dodo_apply(handle, n, _doubles(F), None, None, None, _doubles(out), None, None) == 0
        # counts whose n * 24 * 8 bytes leave the address space, some wrapping size_t to a small number
        wraps = 2**64 // 192 + 1  # n * 192 = 2**64 + 64
        for count in [2**64 - 1, 2**63, wraps, 2**64 // 192, 2**61, 2**58 + 1, 2**64 // 24 + 1]:
            out[:] = 7.0
            status[:] = 99
            result = lib.dodo_apply(handle, count, _doubles(F), None, None, None, _doubles(out), None, _status(status))
            assert result == 1, count
            assert f"F_init with {count} cells" in _error(lib) and "address space" in _error(lib), _error(lib)
            assert (out == 7.0).all() and (status == 99).all()
    finally:
        lib.dodo_closure_destroy(handle)


# --- special values ------------------------------------------------------------------------------

SPECIALS = [np.nan, -np.nan, np.inf, -np.inf, 5e-324, -5e-324, 2.2e-308, -0.0, 1e-310, 1e308, -1e308]


def _special_batch():
    """Cells with one special value in a density, a flux component, u^t or a spatial u component,
    and stable cells (no crossing: every species' flux along z with the same flux factor, so the
    ELN's sign is the same in every direction) holding -0.0 and subnormal components."""
    base = _cells(40, seed=3)
    rows, velocities = [], []
    for k, value in enumerate(SPECIALS):
        for species in (0, 3):
            for component in range(4):
                F = base[(8 * k + 4 * species + component) % 40].copy()
                F[species, component] = value
                rows.append(F)
                velocities.append([1.0, 0.0, 0.0, 0.0])
        for component in range(4):
            u = [1.0, 0.0, 0.0, 0.0] if component else [value, 0.0, 0.0, 0.0]
            if component:
                u = [np.sqrt(1.04), 0.0, 0.0, 0.0]
                u[component] = value if np.isnan(value) or np.isinf(value) else 0.2
            rows.append(base[k % 40].copy())
            velocities.append(u)
    stable_first = len(rows)
    for k in range(12):
        F = np.zeros((6, 4))
        F[:, 0] = [2.0, 1.0, 1.0, 1.0 + 0.05 * k, 1.0, 1.0]
        F[:, 3] = 0.3 * F[:, 0]
        F[:, 1] = -0.0
        F[:, 2] = 5e-324 if k % 2 else -0.0
        rows.append(F)
        velocities.append([1.0, -0.0, 0.0, -0.0])
    return np.array(rows), np.array(velocities), stable_first


@pytest.mark.parametrize("model", MODELS)
def test_nan_inf_subnormal_and_negative_zero_inputs_are_flagged_never_nan_out(lib, model):
    handle = _create(lib, _path(lib, model))
    try:
        F, u, stable_first = _special_batch()
        n = len(F)
        out, status = np.full_like(F, 7.0), np.zeros(n, np.uint32)
        assert _apply(lib, handle, n, F, out, u, status) == 0
        assert np.isfinite(out).all()
        bad_flux = ~np.isfinite(F).all(axis=(1, 2))
        bad_velocity = ~np.isfinite(u).all(axis=1) & ~bad_flux
        nonfinite = bad_flux | bad_velocity
        assert (status[nonfinite] == 8).all(), status[nonfinite]  # DODO_CELL_NONFINITE alone
        assert not out[bad_flux].any()  # zeros where the input is not finite
        assert _same_bits(out[bad_velocity], F[bad_velocity])  # the (realizable) input where only u is
        # the stable cells come back bit for bit, -0.0 and subnormal components included
        assert (status[stable_first:] == 1).all(), status[stable_first:]
        assert _same_bits(out[stable_first:], F[stable_first:])
        # every accepted cell is realizable; each cell is independent of the batch around it
        accepted = (status & 62) == 0
        assert (out[accepted][..., 0] >= 0).all()
        assert (np.linalg.norm(out[accepted][..., 1:], axis=-1) <= out[accepted][..., 0]).all()
        for i in range(n):
            one, one_status = np.zeros((1, 6, 4)), np.zeros(1, np.uint32)
            assert _apply(lib, handle, 1, F[i:i + 1].copy(), one, u[i:i + 1].copy(), one_status) == 0
            assert _same_bits(one[0], out[i]) and one_status[0] == status[i], i
        # subnormal or -0.0 spatial components of u: the cell at rest, its status, to 1e-12
        cells = _cells(10, seed=9)
        rest, rest_status = np.zeros_like(cells), np.zeros(10, np.uint32)
        assert _apply(lib, handle, 10, cells, rest, None, rest_status) == 0
        for value in (5e-324, -5e-324, 1e-310, -0.0, 2.2e-308, 1e-160):
            for component in (1, 2, 3):
                velocity = np.tile([1.0, 0.0, 0.0, 0.0], (10, 1))
                velocity[:, component] = value
                moved, moved_status = np.zeros_like(cells), np.zeros(10, np.uint32)
                assert _apply(lib, handle, 10, cells, moved, velocity, moved_status) == 0
                assert np.array_equal(moved_status, rest_status) and np.abs(moved - rest).max() <= 1e-12
    finally:
        lib.dodo_closure_destroy(handle)


# --- lifetimes: create/destroy loops, threads, fork ----------------------------------------------

def _open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def _threads():
    return len(os.listdir("/proc/self/task"))


def _resident_mib():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("model,threads,loops", [("box3d", 0, 300), ("box3d", 2, 300), ("default", 0, 100),
                                                 ("default", 2, 100), ("onnxruntime", 2, 100)])
def test_create_apply_destroy_loops_leave_no_descriptor_thread_or_memory(lib, model, threads, loops, monkeypatch):
    """Open descriptors and threads come back to their count; resident memory grows by less than
    32 MiB over the loop (measured: flat within 5 MiB; a handle's workspaces alone are megabytes,
    so a leaked one per loop would exceed it)."""
    if model == "onnxruntime":  # the graph in ONNX Runtime rather than the native evaluator
        monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "onnxruntime")
    path = _path(lib, "box3d" if model == "box3d" else "default")
    F = _cells(20)
    out = np.zeros_like(F)

    def cycle():
        handle = _create(lib, path, threads)
        assert _apply(lib, handle, 20, F, out) == 0
        lib.dodo_closure_destroy(handle)

    for _ in range(10):  # the first load's one-time state, the allocator's pools
        cycle()
    descriptors, running, resident = _open_descriptors(), _threads(), _resident_mib()
    for _ in range(loops):
        cycle()
    assert _open_descriptors() == descriptors
    assert _threads() == running
    assert _resident_mib() - resident < 32, (resident, _resident_mib())


def _model_handle(lib, model, monkeypatch, threads):
    """A handle of Box3D alone, the default model (native evaluator) or the default model's graph in
    ONNX Runtime (the variable is read at creation)."""
    if model == "onnxruntime":
        monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "onnxruntime")
    return _create(lib, _path(lib, "box3d" if model == "box3d" else "default"), threads=threads)


@pytest.mark.parametrize("model", MODELS + ["onnxruntime"])
def test_threads_sharing_one_handle_give_the_single_threaded_bits(lib, model, monkeypatch):
    handle = _model_handle(lib, model, monkeypatch, threads=2)
    try:
        n = 300
        F = _cells(n, seed=5)
        F[::17, 2, 1] = np.nan
        u = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
        u[5] = [1.25, 0.75, 0.0, 0.0]
        reference, reference_status = np.zeros_like(F), np.zeros(n, np.uint32)
        assert _apply(lib, handle, n, F, reference, u, reference_status) == 0
        mismatches, failures = [], []

        def work():
            out, status = np.zeros_like(F), np.zeros(n, np.uint32)
            for _ in range(20):
                if _apply(lib, handle, n, F, out, u, status) != 0:
                    failures.append(1)
                if not (_same_bits(out, reference) and np.array_equal(status, reference_status)):
                    mismatches.append(1)

        workers = [threading.Thread(target=work) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not failures and not mismatches, (len(failures), len(mismatches))
    finally:
        lib.dodo_closure_destroy(handle)


def _forked_apply(lib, handle, F, reference):
    """Forks a child that applies the handle, compares with `reference`, destroys it and _exits."""
    pid = os.fork()
    if pid == 0:  # the child: only the C API, then _exit
        code = 1
        try:
            signal.alarm(100)  # a hang ends the child (and _wait kills it past its own limit)
            out = np.zeros_like(F)
            ok = lib.dodo_apply(handle, len(F), _doubles(F), None, None, None, _doubles(out), None, None) == 0
            code = 0 if ok and _same_bits(out, reference) else 2
            lib.dodo_closure_destroy(handle)
        finally:
            os._exit(code)
    return _wait(pid)


@pytest.mark.parametrize("model", MODELS + ["onnxruntime"])
def test_fork_after_use_and_during_another_threads_apply_leaves_the_child_usable(lib, model, monkeypatch):
    handle = _model_handle(lib, model, monkeypatch, threads=2)
    F = _cells(300, seed=7)
    reference = np.zeros_like(F)
    assert _apply(lib, handle, 300, F, reference) == 0
    assert _forked_apply(lib, handle, F, reference) == 0
    stop = threading.Event()

    def busy():
        out = np.zeros_like(F)
        while not stop.is_set():
            _apply(lib, handle, 300, F, out)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        statuses = []
        for k in range(8):
            time.sleep(0.003 * k)  # different points of the other thread's call
            statuses.append(_forked_apply(lib, handle, F, reference))
        assert statuses == [0] * 8, statuses
    finally:
        stop.set()
        worker.join()
        lib.dodo_closure_destroy(handle)


@pytest.mark.parametrize("model,forks", [("box3d", 40), ("default", 15)])
def test_fork_while_other_threads_create_apply_and_destroy_handles_leaves_the_child_usable(lib, model, forks):
    """Two parent threads create, apply and destroy handles (2 workers each) in a loop while the
    main thread forks: each child creates its own handle and uses both it and one the parent made
    before, with the parent's bits, then destroys both. A lock copied held would hang the child
    (killed after 120 s, failing the test)."""
    path = _path(lib, model)
    F = _cells(50, seed=1)
    reference = np.zeros_like(F)
    kept = _create(lib, path, threads=2)
    assert _apply(lib, kept, 50, F, reference) == 0
    stop = threading.Event()

    def churn():
        out = np.zeros_like(F)
        while not stop.is_set():
            handle = _create(lib, path, threads=2)
            _apply(lib, handle, 50, F, out)
            lib.dodo_closure_destroy(handle)

    workers = [threading.Thread(target=churn) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        statuses = []
        for k in range(forks):
            time.sleep(0.001 * (k % 7))
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.alarm(100)
                    own, out = _create(lib, path, threads=2), np.zeros_like(F)
                    ok = _apply(lib, own, 50, F, out) == 0 and _same_bits(out, reference)
                    ok = ok and _apply(lib, kept, 50, F, out) == 0 and _same_bits(out, reference)
                    lib.dodo_closure_destroy(own)
                    lib.dodo_closure_destroy(kept)
                    code = 0 if ok else 2
                finally:
                    os._exit(code)
            statuses.append(_wait(pid))
        assert statuses == [0] * forks, statuses
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        lib.dodo_closure_destroy(kept)


# --- tampered packages ---------------------------------------------------------------------------

def test_every_flipped_byte_of_the_default_package_is_refused_at_create(lib):
    """A single-bit flip at each byte of the package (and a high-bit and whole-byte flip at every
    7th), from memory, is refused by the digests or the parser with a one-line message naming the
    damage; none loads. A flipped file on disk is refused the same way."""
    data = Path(_path(lib, "default").decode()).read_bytes()
    words = ("model file is damaged", "model metadata", "not an ONNX model")
    message = ctypes.create_string_buffer(4096)
    loaded, unclear = [], []
    flips = [(i, 0x01) for i in range(len(data))] + [(i, m) for i in range(0, len(data), 7) for m in (0x80, 0xFF)]
    for position, mask in flips:
        damaged = bytearray(data)
        damaged[position] ^= mask
        bytes_in = (ctypes.c_char * len(damaged)).from_buffer(damaged)
        handle = ctypes.c_void_p()
        status = lib.dodo_closure_create_from_memory(ctypes.addressof(bytes_in), len(damaged), None,
                                                     ctypes.byref(handle), message, 4096)
        if status == 0:
            loaded.append((position, mask))
            lib.dodo_closure_destroy(handle)
        elif status not in (3, 4) or not any(w in message.value.decode() for w in words) or b"\n" in message.value:
            unclear.append((position, mask, status, message.value[:200]))
    assert not loaded, loaded[:10]
    assert not unclear, unclear[:10]


def test_a_flipped_package_file_is_refused_naming_the_file(lib, tmp_path):
    data = bytearray(Path(_path(lib, "default").decode()).read_bytes())
    for position in (100, len(data) // 2, len(data) - 10):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        path = tmp_path / f"flipped_{position}.onnx"
        path.write_bytes(damaged)
        handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(4096)
        status = lib.dodo_closure_create(str(path).encode(), None, ctypes.byref(handle), message, 4096)
        assert status in (3, 4) and not handle.value, (position, status)
        assert str(path) in message.value.decode(), message.value


# --- long messages -------------------------------------------------------------------------------

def _fresh_process(code):
    """Runs `code` in a fresh interpreter (ONNX Runtime not yet loaded there); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "DODO_ONNXRUNTIME_LIBRARY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                            cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


LONG_OPTION = r"""
import ctypes, sys
from libdodo_ctypes import Options, load_libdodo
lib = load_libdodo()
lib.dodo_default_model_path.restype = ctypes.c_char_p
model = lib.dodo_default_model_path()
for field, value in [("z_method", b"x" * 1000000),
                     ("onnxruntime_library", b"/no/" + b"/".join([b"d" * 200] * 5000) + b"/libonnxruntime.so")]:
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    setattr(options, field, value)
    handle = ctypes.c_void_p()
    status = lib.dodo_closure_create(model, ctypes.byref(options), ctypes.byref(handle), None, 0)
    length = lib.dodo_last_error(None, None, 0)
    text = ctypes.create_string_buffer(length + 1)
    lib.dodo_last_error(None, text, length + 1)
    print(field, status, length, text.value.count(b"ddddd/dddd"), repr(text.value[-90:].decode()))
"""


def test_long_z_method_and_onnxruntime_library_options_are_shortened_in_messages():
    """A z_method of 1 MB came back as a 1 MB message, an onnxruntime_library of 1 MB as a 2 MB one
    (the path, then dlerror's echo of it); both are now shortened as model paths are (C round
    twenty-five), the library's reason kept."""
    lines = _fresh_process(LONG_OPTION).splitlines()
    fields = {line.split()[0]: line.split(maxsplit=4)[1:] for line in lines}
    status, length, _, tail = fields["z_method"]
    assert status == "1" and int(length) < 2000, (status, length)
    assert tail.endswith('(1000000 bytes) (known: "exact", "jedynak")\''), tail
    status, length, repeats, tail = fields["onnxruntime_library"]
    assert status == "5" and int(length) < 2000 and int(repeats) <= 4, (status, length, repeats)
    assert tail.endswith("bytes, shortened): cannot open shared object file: File name too long'"), tail


LONG_EVALUATOR = r"""
import ctypes
from libdodo_ctypes import load_libdodo
lib = load_libdodo()
lib.dodo_default_model_path.restype = ctypes.c_char_p
handle = ctypes.c_void_p()
status = lib.dodo_closure_create(lib.dodo_default_model_path(), None, ctypes.byref(handle), None, 0)
length = lib.dodo_last_error(None, None, 0)
text = ctypes.create_string_buffer(length + 1)
lib.dodo_last_error(None, text, length + 1)
print(status, length, repr(text.value[-80:].decode()))
"""


def test_a_long_evaluator_variable_and_device_are_shortened_in_messages():
    """DODO_NETWORK_EVALUATOR (read by C, C++ and Fortran hosts' creates) of 100,000 bytes came
    back whole in the message, and _core.Closure's device of 1 MB too; now quoted bounded."""
    env = {k: v for k, v in os.environ.items() if k != "DODO_ONNXRUNTIME_LIBRARY"}
    env["DODO_NETWORK_EVALUATOR"] = "y" * 100000
    result = subprocess.run([sys.executable, "-c", LONG_EVALUATOR], capture_output=True, text=True, timeout=300,
                            env=env, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-3000:]
    status, length, tail = result.stdout.split(maxsplit=2)
    assert status == "1" and int(length) < 2000, (status, length)
    assert "(100000 bytes) (known:" in tail, tail
    from dodo import _core

    with pytest.raises(Exception) as caught:
        _core.Closure(None, device="t" * 1000000)
    assert "unknown device" in str(caught.value) and len(str(caught.value)) < 2000, len(str(caught.value))


LONG_MESSAGE_CPP = r"""
#include <dodo/dodo.hpp>
#include <cstdio>
#include <cstring>
#include <vector>
int main(int argc, char** argv) {
  if (argc < 2) return 2;
  try {
    dodo::Closure closure(argv[1]);
    std::printf("created\n");
  } catch (const dodo::Error& error) {
    std::vector<char> c(dodo_last_error(nullptr, nullptr, 0) + 1);
    dodo_last_error(nullptr, c.data(), c.size());
    std::printf("%d %zu %zu %d\n%s\n", static_cast<int>(error.status()), std::strlen(error.what()),
                std::strlen(c.data()), std::strcmp(error.what(), c.data()) == 0, error.what());
  }
}
"""

LONG_MESSAGE_FORTRAN = r"""
program long_message
  use dodo
  implicit none
  type(dodo_closure) :: closure
  integer :: stat
  character(len=8000) :: errmsg
  character(len=4096) :: model
  call get_command_argument(1, model)
  call dodo_create(closure, trim(model), stat=stat, errmsg=errmsg)
  print '(i0, 1x, i0)', stat, len_trim(errmsg)
  print '(a)', trim(errmsg)
end program
"""


@pytest.mark.parametrize("language", ["c++", "fortran"])
def test_wrappers_keep_a_long_list_of_onnxruntime_libraries_tried_whole(lib, tmp_path, language):
    """Host-given names are shortened at 512 bytes in messages now, so the earlier long-message
    tests of the wrappers no longer reach 1,024 bytes. A legitimately longer message: libdodo
    installed beside an onnxruntime wheel whose libraries do not load (a broken or truncated
    install) lists every library tried, one line each. Here four junk libonnxruntime.so* files in
    a deep tree give a message of well over 1,024 bytes; dodo::Error and Fortran's errmsg hold
    it whole, equal to dodo_last_error's text."""
    compiler = {"c++": "g++", "fortran": "gfortran"}[language]
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    model = _path(lib, "default").decode()
    prefix = libdodo_beside_junk_onnxruntime(tmp_path, "libdodo.so.0")
    (prefix / "dodo/lib/libdodo.so").symlink_to("libdodo.so.0")
    lib_dir = prefix / "dodo/lib"
    link = [f"-L{lib_dir}", "-ldodo", f"-Wl,-rpath,{lib_dir}"]
    program = tmp_path / "host"
    if language == "c++":
        (tmp_path / "host.cpp").write_text(LONG_MESSAGE_CPP)
        command = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}",
                   str(tmp_path / "host.cpp"), *link, "-o", str(program)]
    else:
        (tmp_path / "host.f90").write_text(LONG_MESSAGE_FORTRAN)
        command = ["gfortran", "-std=f2018", "-Wall", "-J", str(tmp_path), str(ROOT / "cpp/include/dodo/dodo.f90"),
                   str(tmp_path / "host.f90"), *link, "-o", str(program)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("DODO_ONNXRUNTIME_LIBRARY", "LD_LIBRARY_PATH")}
    result = subprocess.run([str(program), model], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    head, _, text = result.stdout.partition("\n")
    if head == "created":
        pytest.skip("this libdodo found an ONNX Runtime past the wheel's (a build hint)")
    text = text.rstrip("\n")
    fields = head.split()
    assert fields[0] == "5", result.stdout[:500]
    assert int(fields[1]) > 1024 and int(fields[1]) == len(text.encode()), (fields, len(text))
    if language == "c++":
        assert fields[2] == fields[1] and fields[3] == "1", fields  # the wrapper's text is C's, whole
    assert text.startswith("cannot load the ONNX Runtime library (")
    for version in ("1", "1.30.0", "1.31.0", "1.32.0"):
        assert f"onnxruntime/capi/libonnxruntime.so.{version}: " in text
    assert text.endswith("libonnxruntime.so: cannot open shared object file: No such file or directory"), text[-200:]
