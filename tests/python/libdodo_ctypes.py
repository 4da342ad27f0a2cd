"""libdodo's C API through ctypes, for the tests (the boundary Julia and Fortran use too)."""
from __future__ import annotations

import ctypes

import numpy as np


class Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("threads", ctypes.c_int), ("chunk_size", ctypes.c_int),
                ("lebedev_order", ctypes.c_int), ("z_method", ctypes.c_char_p), ("max_flux_factor", ctypes.c_double),
                ("onnxruntime_library", ctypes.c_char_p), ("run_self_test", ctypes.c_int),
                ("device", ctypes.c_int), ("device_id", ctypes.c_int)]


class Counters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("cells", "rejected", "no_crossing", "box3d_limited", "network_nonfinite", "correction_limited")]


def load_libdodo():
    """libdodo of the installed package through ctypes, with the C API's signatures (skips without it)."""
    import glob
    import os

    import pytest

    from dodo._closure import runtime_available, runtime_paths

    if not runtime_available():
        pytest.skip("dodo built without the closure runtime")
    found = sorted(glob.glob(os.path.join(runtime_paths()["lib_dir"], "libdodo.so*")))
    if not found:
        pytest.skip(f"libdodo not installed in {runtime_paths()['lib_dir']}")
    library = ctypes.CDLL(found[0])
    p = ctypes.POINTER
    double_p, size_p = p(ctypes.c_double), p(ctypes.c_ssize_t)
    library.dodo_version.restype = ctypes.c_char_p
    library.dodo_status_name.restype = ctypes.c_char_p
    library.dodo_status_message.restype = ctypes.c_char_p
    library.dodo_cell_status_name.restype = ctypes.c_char_p
    library.dodo_cell_status_name.argtypes = [ctypes.c_uint32]
    library.dodo_options_init.argtypes = [ctypes.c_char_p]  # the first release's: writes its fields only
    library.dodo_options_init_sized.argtypes = [p(Options), ctypes.c_size_t]
    library.dodo_closure_create.argtypes = [ctypes.c_char_p, p(Options), p(ctypes.c_void_p), ctypes.c_char_p,
                                            ctypes.c_size_t]
    library.dodo_closure_destroy.argtypes = [ctypes.c_void_p]
    library.dodo_apply.argtypes = [ctypes.c_void_p, ctypes.c_size_t, double_p, size_p, double_p, size_p, double_p,
                                   size_p, p(ctypes.c_uint32)]
    library.dodo_apply_diagnostics.argtypes = library.dodo_apply.argtypes + [double_p, double_p]
    library.dodo_self_test.argtypes = [ctypes.c_void_p, double_p]
    library.dodo_get_counters.argtypes = [ctypes.c_void_p, p(Counters)]
    library.dodo_get_metadata.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    library.dodo_get_metadata.restype = ctypes.c_long
    library.dodo_last_error.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    library.dodo_last_error.restype = ctypes.c_size_t
    library.dodo_default_model_path.restype = ctypes.c_char_p
    library.dodo_closure_create_from_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                                        p(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
    return library


def cells_at_rest(n: int, seed: int = 0) -> np.ndarray:
    """Realizable cells at rest [n, 6, 4] (flux factors below 0.5 per species), most of them crossing:
    what the C API probes feed the closure."""
    rng = np.random.default_rng(seed)
    F = np.zeros((n, 6, 4))
    F[..., 0] = rng.uniform(0.1, 1.0, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 1:] = direction * (rng.uniform(0, 0.5, (n, 6)) * F[..., 0])[..., None]
    return F


def default_model_diagnostics(lib, F: np.ndarray, u: np.ndarray):
    """dodo_apply_diagnostics of the default model on cells F [n, 6, 4] with four-velocities u
    [n, 4], through a handle made and destroyed here: (F_pred, status, growth rate, uncertainty)."""
    import dodo.models

    doubles = ctypes.POINTER(ctypes.c_double)
    handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(1024)
    path = str(dodo.models.default_model_path()).encode()
    assert lib.dodo_closure_create(path, None, ctypes.byref(handle), message, len(message)) == 0, message.value
    try:
        n = len(F)
        F_pred, status = np.full_like(F, np.nan), np.zeros(n, np.uint32)
        growth, uncertainty = np.full(n, np.nan), np.full(n, np.nan)
        assert lib.dodo_apply_diagnostics(
            handle, n, np.ascontiguousarray(F).ctypes.data_as(doubles), None,
            np.ascontiguousarray(u).ctypes.data_as(doubles), None, F_pred.ctypes.data_as(doubles), None,
            status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), growth.ctypes.data_as(doubles),
            uncertainty.ctypes.data_as(doubles)) == 0
    finally:
        lib.dodo_closure_destroy(handle)
    return F_pred, status, growth, uncertainty


def sized_options(lib, **fields) -> Options:
    """dodo_options as dodo_options_init_sized fills them (this struct's size), then ``fields`` set."""
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    for name, value in fields.items():
        setattr(options, name, value)
    return options



def create_with_message(lib, path, message_size: int, **fields):
    """(status, handle, message) of dodo_closure_create on ``path`` (bytes, or None for Box3D alone)
    with the options of sized_options(lib, **fields), its message read through a buffer of
    ``message_size`` bytes."""
    handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(message_size)
    status = lib.dodo_closure_create(path, ctypes.byref(sized_options(lib, **fields)), ctypes.byref(handle), message,
                                     len(message))
    return status, handle, message.value.decode()


def create_closure(lib, path, **fields):
    """(status, message, handle) of dodo_closure_create on ``path`` (bytes, or None for Box3D alone)
    with the options of sized_options(lib, **fields)."""
    status, handle, message = create_with_message(lib, path, 8192, **fields)
    return status, message, handle


def as_double(array):
    """A NumPy float64 array's data as a double* argument."""
    return array.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def last_error(lib, handle, size: int = 1024) -> str:
    """dodo_last_error of ``handle`` (None: the thread's) through a buffer of ``size`` bytes."""
    buffer = ctypes.create_string_buffer(size)
    lib.dodo_last_error(handle, buffer, len(buffer))
    return buffer.value.decode()


def default_model_or_skip(lib) -> bytes:
    """The shipped default model's path (bytes) as libdodo finds it; the test is skipped without one."""
    import pytest

    path = lib.dodo_default_model_path()
    if path is None:
        pytest.skip("no default model")
    return path

def libdodo_beside_junk_onnxruntime(root, name: str = "libdodo.so"):
    """A copy of the installed libdodo, as dodo/lib/NAME, in a deep tree (two 150-character folders
    under ``root``) whose onnxruntime/capi holds four libonnxruntime.so* files that are not
    libraries: a closure with a model then fails listing every path tried, a message of well over
    1 KiB. Returns the tree's root; skips where libdodo is not installed."""
    import shutil
    from pathlib import Path

    import pytest

    from dodo._closure import runtime_paths

    installed = sorted(Path(runtime_paths()["lib_dir"]).glob("libdodo.so.*.*"))
    if not installed:
        pytest.skip("libdodo not installed")
    prefix = Path(root) / ("p" * 150) / ("q" * 150)
    (prefix / "dodo/lib").mkdir(parents=True)
    (prefix / "onnxruntime/capi").mkdir(parents=True)
    shutil.copy(installed[-1], prefix / "dodo/lib" / name)
    for version in ("1", "1.30.0", "1.31.0", "1.32.0"):
        (prefix / f"onnxruntime/capi/libonnxruntime.so.{version}").write_text("not a library\n")
    return prefix
