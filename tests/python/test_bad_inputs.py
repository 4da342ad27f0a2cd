"""Issue 5, bad inputs: every case of the generated corpus (tests/python/bad_inputs.py) gives either
a clear error or a flagged cell with a finite, realizable output, through dodo.box3d, dodo.Closure,
the C API (ctypes) and the Fortran module (a gfortran driver). The outcomes are written to
build/bad_inputs_table.md (summarised in docs/reliability_python.md)."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dodo
from bad_inputs import (REJECTED, ErrorCase, is_finite_realizable, layouts, python_error_cases, status_names,
                        value_cases, write_table)
from dodo._closure import runtime_available, runtime_paths
from libdodo_ctypes import load_libdodo

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "build" / "bad_inputs_table.md"
CASES = value_cases()
REJECTED_MASK = sum(REJECTED.values())

# Outcomes collected by the tests of this module, written once at the end: {case: {api: text}}.
OUTCOMES: dict[str, dict[str, str]] = {}
needs_runtime = pytest.mark.skipif(not runtime_available(), reason="dodo built without the closure runtime")


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    apis = ("dodo.box3d", "dodo.Closure", "C API", "Fortran")
    groups: dict[str, list] = {}
    for case in CASES:
        groups.setdefault(case.group, []).append(case)
    rows = []
    for group, members in groups.items():
        cells = []
        for api in apis:
            seen = sorted({OUTCOMES.get(case.name, {}).get(api, "-") for case in members})
            cells.append("; ".join(seen))
        rows.append((group, str(len(members)), *cells))
    for name, outcome in OUTCOMES.items():
        if name.startswith("call: "):
            rows.append((name[6:], "1", *(outcome.get(api, "-") for api in apis)))
    write_table(TABLE, rows, ("case", "cells", *apis),
                "Bad-input corpus (tests/python/test_bad_inputs.py). Every value case: output finite and realizable "
                "(n >= 0, |F| <= n per species); rejected cells carry the flag shown.")


def record(case: str, api: str, text: str) -> None:
    OUTCOMES.setdefault(case, {})[api] = text


def check_cell(case, F_out, status, api: str) -> None:
    text = status_names(status)
    assert is_finite_realizable(F_out), f"{api}, {case.name}: output not finite/realizable: {F_out.tolist()}"
    if case.expect:
        assert status & REJECTED[case.expect], f"{api}, {case.name}: expected {case.expect}, got {text}"
    if status & REJECTED_MASK:
        # The documented fallback: the input itself whenever it is finite and realizable.
        if is_finite_realizable(case.F, rtol=0.0):
            np.testing.assert_array_equal(F_out, case.F, err_msg=f"{api}, {case.name}")
        elif not np.all(np.isfinite(case.F)):
            np.testing.assert_array_equal(F_out, 0.0, err_msg=f"{api}, {case.name}")
    if case.unchanged:
        np.testing.assert_array_equal(F_out, case.F, err_msg=f"{api}, {case.name}")
    record(case.name, api, text + ", finite+realizable")


def python_api(name: str):
    if name == "dodo.box3d":
        return lambda F, u: dodo.box3d(F, u, threads=1)
    closure = dodo.Closure(None, threads=1)
    return closure.apply


@pytest.fixture(scope="module")
def closure_apply():
    if not runtime_available():
        pytest.skip("dodo built without the closure runtime")
    return python_api("dodo.Closure")


def apis(closure_apply):
    return {"dodo.box3d": python_api("dodo.box3d"), "dodo.Closure": closure_apply}


@pytest.mark.parametrize("api_name", ["dodo.box3d", "dodo.Closure"])
def test_python_value_cases_flagged_finite_realizable(api_name, closure_apply):
    apply = apis(closure_apply)[api_name]
    status_of = (lambda r: r.status)
    output_of = (lambda r: r.F_box) if api_name == "dodo.box3d" else (lambda r: r.F_pred)
    for case in CASES:
        if case.python_raises:
            with pytest.raises(ValueError, match="u is not a future-directed unit timelike"):
                apply(case.F, case.u)
            record(case.name, api_name, "ValueError (u)")
            continue
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow or 0/0 in Python
            result = apply(case.F, case.u)
        check_cell(case, output_of(result), int(status_of(result)), api_name)
        assert np.all(np.isfinite(result.growth_over_ntot)) and np.all(np.isfinite(result.growth_rate)), case.name


@pytest.mark.parametrize("api_name", ["dodo.box3d", "dodo.Closure"])
def test_python_batch_equals_single_cells(api_name, closure_apply):
    """The whole corpus as one batch gives what each cell gives alone (no cross-talk between cells)."""
    apply = apis(closure_apply)[api_name]
    cases = [case for case in CASES if not case.python_raises]
    F = np.stack([case.F for case in cases])
    u = np.stack([case.u if case.u is not None else np.array([1.0, 0, 0, 0]) for case in cases])
    batch = apply(F, u)
    for i, case in enumerate(cases):
        single = apply(case.F, case.u if case.u is not None else np.array([1.0, 0, 0, 0]))
        np.testing.assert_array_equal(batch[0][i], single[0], err_msg=case.name)


@pytest.mark.parametrize("case", python_error_cases(), ids=lambda c: c.name)
def test_python_calls_refused_with_a_message_naming_the_problem(case: ErrorCase, closure_apply):
    for api_name, apply in apis(closure_apply).items():
        with pytest.raises(case.error) as raised:
            case.call(apply)
        message = str(raised.value)
        for word in case.words:
            assert word.lower() in message.lower(), f"{api_name}: {message!r} does not name {word!r}"
        record(f"call: {case.name}", api_name, f"{case.error.__name__}: {message[:110]}")


def test_python_zero_length_batches(closure_apply):
    for api_name, apply in apis(closure_apply).items():
        for F, u in ((np.zeros((0, 6, 4)), None), (np.zeros((0, 6, 4)), np.zeros((0, 4))),
                     (np.zeros((2, 0, 6, 4)), None)):
            result = apply(F, u)
            assert result[0].shape == F.shape and result.status.shape == F.shape[:-2]
        record("call: zero-length batch (0, 6, 4) and (2, 0, 6, 4)", api_name, "empty result of the same batch shape")


def test_python_layouts_give_identical_results(rng, closure_apply):
    from conftest import random_states, random_velocities
    F = random_states(rng, 40)
    u = random_velocities(rng, 40)
    F[3, 1, 0] = -1.0  # a rejected cell among them
    F[7, 2, 2] = np.nan
    for api_name, apply in apis(closure_apply).items():
        reference = apply(F, u)
        for layout, (F_view, u_view) in layouts(F, u).items():
            if layout == "float32":
                result = apply(F_view, u_view)
                assert result[0].dtype == np.float64 and np.all(np.isfinite(result[0]))
                continue
            result = apply(F_view, u_view)
            np.testing.assert_array_equal(result[0], reference[0], err_msg=f"{api_name}, {layout}")
            np.testing.assert_array_equal(result.status, reference.status, err_msg=f"{api_name}, {layout}")
            record(f"call: layout {layout}", api_name, "same result as C-contiguous")
        record("call: layout float32", api_name, "accepted, converted to float64")
        np.testing.assert_array_equal(F[7, 2, 2], np.nan)  # the input is never written


# -- C API through ctypes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lib():
    return load_libdodo()


@pytest.fixture(scope="module")
def handle(lib):
    from dodo.models import default_model_path
    handle = ctypes.c_void_p()
    message = ctypes.create_string_buffer(512)
    status = lib.dodo_closure_create(str(default_model_path()).encode(), None, ctypes.byref(handle), message, 512)
    assert status == 0, message.value
    yield handle
    lib.dodo_closure_destroy(handle)


def pointer(array: np.ndarray, offset_elements: int = 0):
    address = array.ctypes.data + offset_elements * array.itemsize
    return ctypes.cast(ctypes.c_void_p(address), ctypes.POINTER(ctypes.c_double))


def strides(array: np.ndarray):
    return (ctypes.c_ssize_t * array.ndim)(*(s // array.itemsize for s in array.strides))


def corpus_arrays(cases):
    F = np.stack([case.F for case in cases])
    u = np.stack([case.u if case.u is not None else np.array([1.0, 0, 0, 0]) for case in cases])
    return F, u


def c_apply(lib, handle, n, F, u, F_strides=None, u_strides=None, F_pred=None, pred_strides=None):
    F_pred = np.full((n, 6, 4), -7.0) if F_pred is None else F_pred
    status = np.zeros(n, np.uint32)
    code = lib.dodo_apply(handle, n, pointer(F) if F is not None else None, F_strides,
                          pointer(u) if u is not None else None, u_strides, pointer(F_pred), pred_strides,
                          status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)))
    return code, F_pred, status


def test_c_api_value_cases(lib, handle, closure_apply):
    F, u = corpus_arrays(CASES)
    code, F_pred, status = c_apply(lib, handle, F.shape[0], F, u)
    assert code == 0
    for i, case in enumerate(CASES):
        check_cell(case, F_pred[i], int(status[i]), "C API")
        if case.python_raises:
            assert status[i] & REJECTED["BAD_VELOCITY"]
        else:  # the same core: bit-identical to dodo.Closure
            reference = closure_apply(case.F, u[i])
            np.testing.assert_array_equal(F_pred[i], reference.F_pred, err_msg=case.name)
            assert status[i] == reference.status, case.name


def test_c_api_strided_and_in_place_layouts(lib, handle):
    F, u = corpus_arrays(CASES)
    code, reference, reference_status = c_apply(lib, handle, F.shape[0], F, u)
    assert code == 0
    # Negative strides: the pointer is the last cell's (reversed species and components).
    n = F.shape[0]
    reversed_F = np.ascontiguousarray(F[::-1, ::-1, ::-1])
    negative = (ctypes.c_ssize_t * 3)(-24, -4, -1)
    out = np.zeros_like(F)
    status = np.zeros(n, np.uint32)
    code = lib.dodo_apply(handle, n, pointer(reversed_F, reversed_F.size - 1), negative, pointer(u), None,
                          pointer(out), None, status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)))
    assert code == 0
    np.testing.assert_array_equal(out, reference)
    np.testing.assert_array_equal(status, reference_status)
    # Structure of arrays: (component, species, cell) storage.
    soa_F = np.ascontiguousarray(F.transpose(2, 1, 0))
    soa_u = np.ascontiguousarray(u.T)
    soa_out = np.zeros_like(soa_F)
    code, _, status = c_apply(lib, handle, n, soa_F, soa_u, (ctypes.c_ssize_t * 3)(1, n, 6 * n),
                              (ctypes.c_ssize_t * 2)(1, n), soa_out, (ctypes.c_ssize_t * 3)(1, n, 6 * n))
    assert code == 0
    np.testing.assert_array_equal(soa_out.transpose(2, 1, 0), reference)
    # In place.
    in_place = F.copy()
    code, _, status = c_apply(lib, handle, n, in_place, u, F_pred=in_place)
    assert code == 0
    np.testing.assert_array_equal(in_place, reference)
    record("call: layout negative strides / structure of arrays / in place", "C API", "same result as contiguous")


def test_c_api_errors_have_status_and_message(lib, handle):
    F, u = corpus_arrays(CASES[:2])
    code, _, _ = c_apply(lib, handle, 2, None, u)
    assert code == 1  # DODO_ERROR_INVALID_ARGUMENT
    message = ctypes.create_string_buffer(512)
    lib.dodo_last_error(handle, message, 512)
    assert b"F_init" in message.value and b"null" in message.value.lower(), message.value
    record("call: F_init = NULL", "C API", f"{lib.dodo_status_name(code).decode()}: {message.value.decode()[:60]}")
    code = lib.dodo_apply(None, 1, pointer(F), None, None, None, pointer(F.copy()), None, None)
    assert code == 1
    record("call: handle = NULL", "C API", lib.dodo_status_name(code).decode())
    code = lib.dodo_apply(handle, 0, None, None, None, None, None, None, None)
    assert code == 0
    record("call: zero-length batch (0, 6, 4) and (2, 0, 6, 4)", "C API", "DODO_OK, nothing written")


# -- Fortran module --------------------------------------------------------------------------------

def test_fortran_value_cases(tmp_path, closure_apply):
    compiler = shutil.which("gfortran")
    if not compiler:
        pytest.skip("gfortran is not installed")
    paths = runtime_paths()
    include = Path(paths["include_dir"]) / "dodo" / "dodo.f90"
    if not include.is_file():
        pytest.skip("the Fortran module source is not installed with this dodo")
    program = tmp_path / "bad_inputs_driver"
    build = subprocess.run([compiler, "-std=f2018", "-J", str(tmp_path), str(include),
                            str(ROOT / "tests/fortran/bad_inputs_driver.f90"), f"-L{paths['lib_dir']}",
                            f"-Wl,-rpath,{paths['lib_dir']}", "-ldodo", "-o", str(program)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    F, u = corpus_arrays(CASES)
    n = F.shape[0]
    source, target = tmp_path / "cells.bin", tmp_path / "out.bin"
    with open(source, "wb") as handle:
        handle.write(np.int64(n).tobytes() + F.tobytes() + u.tobytes())  # C order (n,6,4) = Fortran (4,6,n)
    from dodo.models import default_model_path
    run = subprocess.run([str(program), str(default_model_path()), str(source), str(target)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    data = np.fromfile(target, dtype=np.uint8)
    F_pred = data[:n * 24 * 8].view(np.float64).reshape(n, 6, 4)
    status = data[n * 24 * 8:n * 24 * 8 + 4 * n].view(np.int32)
    stats = data[n * 24 * 8 + 4 * n:].view(np.int32)
    assert stats.tolist() == [0, 1, 1, 0], stats  # OK, wrong F_pred shape, wrong u shape, zero cells
    assert "shape (4, 6, ...)" in run.stdout and "u must have shape (4, ...)" in run.stdout, run.stdout
    for i, case in enumerate(CASES):
        check_cell(case, F_pred[i], int(status[i]), "Fortran")
        if not case.python_raises:
            np.testing.assert_array_equal(F_pred[i], closure_apply(case.F, u[i]).F_pred, err_msg=case.name)
    record("call: F_pred shape (4, 5, n)", "Fortran", "stat = DODO_ERROR_INVALID_ARGUMENT, errmsg names the shape")
    record("call: u shape (4, 1) for n cells", "Fortran", "stat = DODO_ERROR_INVALID_ARGUMENT, errmsg names u")
    record("call: zero-length batch (0, 6, 4) and (2, 0, 6, 4)", "Fortran", "stat = DODO_OK")


def test_results_scale_with_the_densities_from_1e_minus_300_to_1e307(closure_apply):
    """Box3D and the closure are homogeneous of degree 1 in F: no overflow of N_tot, F.F/N_tot^2 or
    the boosts anywhere in the double range (1e308 overflows N_tot itself and is flagged above)."""
    from bad_inputs import boosted, physical_cell
    u = boosted(0.9)
    for api_name, apply in apis(closure_apply).items():
        reference = apply(physical_cell(), u)
        for scale in (1e-300, 1e-200, 1e-100, 1e100, 1e200, 1e300, 1e307):
            result = apply(physical_cell(scale), u)
            assert result.status == reference.status, (api_name, scale)
            np.testing.assert_allclose(result[0] / scale, reference[0], rtol=0, atol=1e-13, err_msg=f"{api_name} {scale}")
            np.testing.assert_allclose(result.growth_over_ntot, reference.growth_over_ntot, rtol=1e-13)
