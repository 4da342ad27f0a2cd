"""Smoke test of the C API (libdodo) from Python through ctypes: the boundary Julia and Fortran use."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from closure_helpers import (CONSERVED_TOLERANCE, FP32_TOLERANCE, conservation_residual, diagnostic_cells, ntot, synthetic,
                             write, write_diagnostics_model)
from libdodo_ctypes import Counters, as_double, create_with_message, load_libdodo
from libdodo_ctypes import last_error as thread_or_handle_error

from dodo._closure import Closure

DODO_OK, DODO_ERROR_INVALID_ARGUMENT, DODO_ERROR_FILE, DODO_ERROR_MODEL_METADATA = 0, 1, 2, 4


@pytest.fixture(scope="module")
def lib():
    return load_libdodo()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("capi") / "model.onnx"
    return path, write(path, "equivariant", n_test_vectors=4)


def create(lib, path, **fields):
    return create_with_message(lib, str(path).encode() if path else None, 512, **fields)


def strides_of(array):
    return (ctypes.c_ssize_t * array.ndim)(*(s // array.itemsize for s in array.strides))


def last_error(lib, handle):
    return thread_or_handle_error(lib, handle, 512)


def test_version_and_status_tables(lib):
    assert lib.dodo_version().decode().count(".") == 2
    assert lib.dodo_api_version() == 1
    assert lib.dodo_status_name(DODO_ERROR_FILE) == b"DODO_ERROR_FILE"
    assert b"missing" in lib.dodo_status_message(DODO_ERROR_FILE)
    assert lib.dodo_status_name(9999) == b"DODO_UNKNOWN_STATUS"
    assert lib.dodo_cell_status_name(128) == b"NETWORK_NONFINITE"
    assert lib.dodo_cell_status_name(3) is None


def test_create_reports_errors_through_status_and_buffer(lib, tmp_path):
    status, handle, message = create(lib, tmp_path / "absent.onnx")
    assert status == DODO_ERROR_FILE and handle.value is None and "absent.onnx" in message
    status, handle, message = create(lib, None, chunk_size=0)
    assert status == DODO_ERROR_INVALID_ARGUMENT and "chunk_size" in message


def test_apply_matches_python_and_conserves(lib, model):
    path, _ = model
    F, u = synthetic.test_cells(200, seed=21)
    status, handle, message = create(lib, path, threads=2)
    assert status == DODO_OK, message
    try:
        F_pred = np.empty_like(F)
        cell_status = np.zeros(len(F), dtype=np.uint32)
        assert lib.dodo_apply(handle, len(F), as_double(F), None, as_double(u), None, as_double(F_pred), None,
                              cell_status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))) == DODO_OK
        expected = Closure(path).apply(F, u)
        np.testing.assert_array_equal(F_pred, expected.F_pred)
        np.testing.assert_array_equal(cell_status, expected.status)
        assert conservation_residual(F_pred, F, u).max() < CONSERVED_TOLERANCE
        counters = Counters()
        assert lib.dodo_get_counters(handle, ctypes.byref(counters)) == DODO_OK and counters.cells == 200
        worst = ctypes.c_double(-1)
        assert lib.dodo_self_test(handle, ctypes.byref(worst)) == DODO_OK and 0 <= worst.value < FP32_TOLERANCE
        value = ctypes.create_string_buffer(64)
        assert lib.dodo_get_metadata(handle, b"dodo.head", value, len(value)) == len("equivariant")
        assert value.value == b"equivariant"
        assert lib.dodo_get_metadata(handle, b"no.such.key", value, len(value)) == -1
    finally:
        lib.dodo_closure_destroy(handle)


def test_strided_and_in_place_layouts_give_the_same_answer(lib, model):
    F, u = synthetic.test_cells(50, seed=22)
    status, handle, _ = create(lib, model[0])
    try:
        reference = np.empty_like(F)
        lib.dodo_apply(handle, len(F), as_double(F), None, as_double(u), None, as_double(reference), None, None)
        # Structure of arrays [component][species][cell] in, [species][cell][component] out.
        soa = np.ascontiguousarray(F.transpose(2, 1, 0))
        u_soa = np.ascontiguousarray(u.T)
        out = np.zeros((6, len(F), 4))
        F_strides = (ctypes.c_ssize_t * 3)(1, len(F), 6 * len(F))
        u_strides = (ctypes.c_ssize_t * 2)(1, len(F))
        out_strides = (ctypes.c_ssize_t * 3)(4, 4 * len(F), 1)
        assert lib.dodo_apply(handle, len(F), as_double(soa), F_strides, as_double(u_soa), u_strides,
                              as_double(out), out_strides, None) == DODO_OK
        np.testing.assert_array_equal(out.transpose(1, 0, 2), reference)
        in_place = F.copy()
        lib.dodo_apply(handle, len(F), as_double(in_place), None, as_double(u), None, as_double(in_place), None, None)
        np.testing.assert_array_equal(in_place, reference)
    finally:
        lib.dodo_closure_destroy(handle)


def test_bad_calls_give_status_and_last_error(lib, model):
    status, handle, _ = create(lib, model[0])
    F = np.ones((2, 6, 4))
    assert lib.dodo_apply(handle, 2, None, None, None, None, as_double(F), None, None) == DODO_ERROR_INVALID_ARGUMENT
    assert "F_init is NULL" in last_error(lib, handle)
    assert lib.dodo_apply(handle, 0, None, None, None, None, None, None, None) == DODO_OK  # nothing to do
    assert last_error(lib, handle) == ""
    lib.dodo_closure_destroy(handle)
    # Use after destroy and double destroy are refused, not dereferenced.
    assert lib.dodo_apply(handle, 2, as_double(F), None, None, None, as_double(F), None, None) == DODO_ERROR_INVALID_ARGUMENT
    lib.dodo_closure_destroy(handle)
    lib.dodo_closure_destroy(None)
    assert lib.dodo_apply(None, 2, as_double(F), None, None, None, as_double(F), None, None) == DODO_ERROR_INVALID_ARGUMENT
    assert lib.dodo_has_model(None) == 0


def test_box3d_only_handle_has_no_model_and_no_self_test(lib):
    status, handle, _ = create(lib, None)
    assert status == DODO_OK
    try:
        assert lib.dodo_has_model(handle) == 0
        assert lib.dodo_self_test(handle, None) == 9  # DODO_ERROR_NO_MODEL
        assert "Box3D-only" in last_error(lib, handle)
    finally:
        lib.dodo_closure_destroy(handle)


def test_apply_diagnostics_matches_python_and_accepts_null_outputs(lib, tmp_path):
    """dodo_apply_diagnostics: the growth rate and uncertainty of dodo.Closure.apply, bit for bit;
    NULL outputs are skipped; a Box3D-only handle gives the proxy and zero uncertainty."""
    path = tmp_path / "learned.onnx"
    write_diagnostics_model(path, n_test_vectors=4)
    F, u = diagnostic_cells()
    expected = Closure(path).apply(F, u)
    for model in (path, None):
        status, handle, message = create(lib, model, threads=2)
        assert status == DODO_OK, message
        try:
            F_pred, growth, uncertainty = np.empty_like(F), np.full(len(F), -1.0), np.full(len(F), -1.0)
            cell_status = np.zeros(len(F), dtype=np.uint32)
            assert lib.dodo_apply_diagnostics(handle, len(F), as_double(F), None, as_double(u), None,
                                              as_double(F_pred), None,
                                              cell_status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                                              as_double(growth), as_double(uncertainty)) == DODO_OK
            if model is None:  # Box3D alone
                np.testing.assert_array_equal(growth, expected.growth_rate_proxy)
                assert np.all(uncertainty == 0.0)
                continue
            np.testing.assert_array_equal(F_pred, expected.F_pred)
            np.testing.assert_array_equal(cell_status, expected.status)
            np.testing.assert_array_equal(growth, expected.growth_rate)
            np.testing.assert_array_equal(uncertainty, expected.uncertainty)
            assert np.any(growth != expected.growth_rate_proxy) and np.any(uncertainty > 0)
            growth_only = np.full(len(F), -1.0)
            assert lib.dodo_apply_diagnostics(handle, len(F), as_double(F), None, as_double(u), None,
                                              as_double(F_pred), None, None, as_double(growth_only), None) == DODO_OK
            np.testing.assert_array_equal(growth_only, growth)
        finally:
            lib.dodo_closure_destroy(handle)


def test_a_misdeclared_package_is_refused_through_the_c_api(lib, tmp_path):
    path = tmp_path / "misdeclared.onnx"
    write(path, n_test_vectors=0, metadata_overrides={"dodo.outputs": '["head_output", "log_growth_ratio"]'})
    status, handle, message = create(lib, path)
    assert status == 3 and handle.value is None  # DODO_ERROR_MODEL_FORMAT
    assert str(path) in message and '"log_growth_ratio", which the graph does not have' in message
