"""Outside probe of the C interface, round twenty-two (docs/reliability_cpp.md, "Round
twenty-two"): the physics laws through libdodo's C API (ctypes, the boundary Fortran and Julia
use). The round found no violation; these tests cover the laws no earlier test held through C:
exact scale equivariance under powers of two for the whole closure (Box3D and the default model,
at rest and moving with W up to 1e3, with its growth rate and uncertainty), stable moving cells
returned bit for bit at the ends of the double range, the C API's diagnostics equal to the
Python API's for the same moving cells, and the Fortran module's equal to C's."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from capi_host import compile_fortran, default_model, needs_runtime, run_host
from libdodo_ctypes import load_libdodo

import dodo

NO_CROSSING, REJECTED_MASK = 1, 62
POINTER = ctypes.POINTER


@pytest.fixture(scope="module")
def lib():
    return load_libdodo()


def _create(lib, path: str):
    handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(1024)
    status = lib.dodo_closure_create(path.encode(), None, ctypes.byref(handle), message, len(message))
    assert status == 0, message.value
    return handle


def _apply(lib, handle, F, u=None):
    F = np.ascontiguousarray(F, dtype=np.float64)
    n = F.shape[0]
    F_pred, status = np.full_like(F, np.nan), np.zeros(n, np.uint32)
    growth, uncertainty = np.full(n, np.nan), np.full(n, np.nan)
    u = None if u is None else np.ascontiguousarray(u, dtype=np.float64)
    doubles = lambda a: None if a is None else a.ctypes.data_as(POINTER(ctypes.c_double))  # noqa: E731
    result = lib.dodo_apply_diagnostics(handle, n, doubles(F), None, doubles(u), None, doubles(F_pred), None,
                                        status.ctypes.data_as(POINTER(ctypes.c_uint32)), doubles(growth),
                                        doubles(uncertainty))
    assert result == 0
    return F_pred, status, growth, uncertainty


def _rest_cells(rng, n):
    """Random realizable cells at rest (flux factors below 0.9); a third nearly isotropic and a
    third with isotropic neutrinos, so that stable cells are among them."""
    density = rng.uniform(0.1, 1.0, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F = np.zeros((n, 6, 4))
    F[..., 0] = density
    F[..., 1:] = direction * (rng.uniform(0, 0.9, (n, 6)) * density)[..., None]
    F[::3, :, 1:] *= 0.01
    F[1::3, :3, 1:] = 0
    F[1::3, 3:, 1:] *= 0.05
    return F


def _to_lab(F, v):
    """The rest-frame cells F seen from a lab in which the fluid moves with 3-velocity v; u."""
    W = 1 / np.sqrt(1 - v @ v)
    vF = F[..., 1:] @ v
    lab = np.empty_like(F)
    lab[..., 0] = W * (F[..., 0] + vF)
    lab[..., 1:] = F[..., 1:] + ((W - 1) * vF / (v @ v) + W * F[..., 0])[..., None] * v
    return lab, np.tile([W, *(W * v)], (F.shape[0], 1))


def _moving(rng, F, W):
    direction = rng.normal(size=3)
    return _to_lab(F, direction / np.linalg.norm(direction) * np.sqrt(1 - 1 / W**2))


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_scaling_by_a_power_of_two_scales_every_output_exactly(lib, model):
    """F_init * 2^k through dodo_apply_diagnostics, k from -900 to 900 (cells of N_tot ~ 1e-271 to
    1e271), at rest and moving (W 1.5 and 1e3): F_pred is the unscaled call's times 2^k bit for
    bit, every cell status the same, growth rate times 2^k and uncertainty the same, bit for bit
    (the closure divides by N_tot, which scales exactly). Held, for Box3D alone and the default
    model; no earlier test held more than 1e-10 N_tot, and none through C or with the network."""
    handle = _create(lib, "box3d" if model == "box3d" else default_model())
    try:
        rng = np.random.default_rng(2212)
        rest = _rest_cells(rng, 900)
        for F, u in [(rest, None), _moving(rng, rest, 1.5), _moving(rng, rest, 1e3)]:
            F_pred, status, growth, uncertainty = _apply(lib, handle, F, u)
            assert ((status & REJECTED_MASK) == 0).all() and ((status & NO_CROSSING) != 0).sum() > 100
            assert (growth > 0).sum() > 100
            for k in (-900, -1, 1, 900):
                scale = 2.0**k
                scaled = _apply(lib, handle, F * scale, u)
                assert np.array_equal(scaled[0], F_pred * scale), (model, k)
                assert np.array_equal(scaled[1], status), (model, k)
                assert np.array_equal(scaled[2], growth * scale), (model, k)
                assert np.array_equal(scaled[3], uncertainty), (model, k)
    finally:
        lib.dodo_closure_destroy(handle)


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_stable_moving_cells_at_the_ends_of_the_range_are_returned_bit_for_bit(lib, model):
    """Cells moving with W 10 and 1e3 at scales 1e-300 ... 1e300 (the ends of the range a
    transport code may use): every NO_CROSSING cell's F_pred is its F_init bit for bit, growth
    rate and uncertainty 0; every crossing cell conserves the flavour-summed four-flux in the lab
    frame to rounding, is realizable (sqrt(Fx^2 + Fy^2 + Fz^2) <= n, in units where the squares
    do not overflow) and finite, with a finite growth rate and uncertainty."""
    handle = _create(lib, "box3d" if model == "box3d" else default_model())
    try:
        rng = np.random.default_rng(2213)
        rest = _rest_cells(rng, 600)
        for W in (10.0, 1e3):
            lab, u = _moving(rng, rest, W)
            for scale in (1e-300, 1e-150, 1.0, 1e150, 1e300):
                F = lab * scale
                F_pred, status, growth, uncertainty = _apply(lib, handle, F, u)
                assert ((status & REJECTED_MASK) == 0).all(), (W, scale)
                stable = (status & NO_CROSSING) != 0
                assert stable.sum() > 100 and (~stable).sum() > 100
                assert np.array_equal(F_pred[stable], F[stable]), (W, scale)
                assert (growth[stable] == 0).all() and (uncertainty[stable] == 0).all()
                assert np.isfinite(F_pred).all() and np.isfinite(growth).all() and np.isfinite(uncertainty).all()
                unit = F_pred / scale  # the same cell in units of order 1 (exact enough for the checks)
                change = (F_pred - F) / (np.abs(F).max(axis=(1, 2), keepdims=True))
                assert np.abs(change[:, :3].sum(axis=1)).max() <= 1e-15
                assert np.abs(change[:, 3:].sum(axis=1)).max() <= 1e-15
                flux = np.sqrt((unit[..., 1:] ** 2).sum(axis=-1))
                assert (flux <= unit[..., 0] * (1 + 1e-15)).all() and (unit[..., 0] >= 0).all()
    finally:
        lib.dodo_closure_destroy(handle)


@needs_runtime
def test_the_c_apis_diagnostics_equal_the_python_apis_for_moving_cells(lib):
    """The same moving cells (W 1e3, default model) through dodo_apply_diagnostics and through
    dodo.Closure(...).apply: F_pred, cell status, growth rate and uncertainty equal bit for bit,
    with one thread and with two."""
    handle = _create(lib, default_model())
    try:
        rng = np.random.default_rng(2214)
        F, u = _moving(rng, _rest_cells(rng, 700), 1e3)
        F_pred, status, growth, uncertainty = _apply(lib, handle, F, u)
        assert ((status & (REJECTED_MASK | NO_CROSSING)) == 0).sum() > 100 and (uncertainty > 0).sum() > 100
        for threads in (1, 2):
            result = dodo.Closure(default_model(), threads=threads).apply(F, u)
            assert np.array_equal(result.F_pred, F_pred), threads
            assert np.array_equal(result.status, status), threads
            assert np.array_equal(result.growth_rate, growth), threads
            assert np.array_equal(result.uncertainty, uncertainty), threads
    finally:
        lib.dodo_closure_destroy(handle)


# Reads n, F (4, 6, n) and u (4, n) from a stream file, applies the closure (threads 2, chunk 7)
# in place to a strided section of a larger array (every other cell: copy-in, copy-out), writes
# F_pred, cell_status, growth_rate and uncertainty.
FORTRAN_APPLY = r"""
program host
  use, intrinsic :: iso_c_binding
  use dodo
  implicit none
  type(dodo_closure) :: closure
  character(len=4096) :: model, input, output
  integer :: n, stat, unit
  real(c_double), allocatable :: F(:,:,:), u(:,:), F_pred(:,:,:), growth(:), spread(:), big(:,:,:)
  integer(c_int32_t), allocatable :: status(:)
  character(len=1024) :: errmsg
  call get_command_argument(1, model)
  call get_command_argument(2, input)
  call get_command_argument(3, output)
  open(newunit=unit, file=trim(input), access="stream", form="unformatted")
  read(unit) n
  allocate(F(4, 6, n), u(4, n), F_pred(4, 6, n), growth(n), spread(n), status(n), big(4, 6, 2 * n))
  read(unit) F, u
  close(unit)
  call dodo_create(closure, model_path=trim(model), threads=2, chunk_size=7, stat=stat, errmsg=errmsg)
  if (stat /= 0) then
    print *, "create", stat, trim(errmsg)
    stop 1
  end if
  ! through a strided section (copy-in/copy-out)
  big = -1
  big(:, :, 1:2*n:2) = F
  call dodo_apply(closure, big(:, :, 1:2*n:2), big(:, :, 1:2*n:2), u=u, cell_status=status, stat=stat, &
                  errmsg=errmsg, growth_rate=growth, uncertainty=spread)
  if (stat /= 0) then
    print *, "apply", stat, trim(errmsg)
    stop 1
  end if
  F_pred = big(:, :, 1:2*n:2)
  open(newunit=unit, file=trim(output), access="stream", form="unformatted", status="replace")
  write(unit) F_pred, status, growth, spread
  close(unit)
  call dodo_destroy(closure)
  print *, "ok"
end program
"""


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_the_fortran_modules_results_equal_cs_for_moving_extreme_and_rejected_cells(lib, model, tmp_path):
    """dodo_apply of the Fortran module (in place on a strided section, threads 2, chunk_size 7,
    growth_rate and uncertainty) against dodo_apply_diagnostics from C on the same cells: moving
    with W up to 1e3 at scales 1e-300 ... 1e300, among them a zero species, a NaN cell, a negative
    density and a flux above its density: F_pred, cell status, growth rate and uncertainty equal
    bit for bit."""
    path = "box3d" if model == "box3d" else default_model()
    host = compile_fortran(tmp_path, "fortran_apply", FORTRAN_APPLY)
    handle = _create(lib, path)
    try:
        rng = np.random.default_rng(2215)
        n = 400
        for W, scale in [(1.0001, 1.0), (1e3, 1e-300), (1e3, 1e300), (30.0, 1e-150)]:
            F, u = _moving(rng, _rest_cells(rng, n), W)
            F *= scale
            F[5, 2] = 0
            F[7] = np.nan
            F[9, 1, 0] = -scale
            F[11, 0, 3] = 2 * F[11, 0, 0]
            F_pred, status, growth, uncertainty = _apply(lib, handle, F, u)
            assert len(np.unique(status)) >= 4
            with open(tmp_path / "in.bin", "wb") as stream:
                np.int32(n).tofile(stream)
                F.tofile(stream)
                u.tofile(stream)
            assert run_host(host, path, str(tmp_path / "in.bin"), str(tmp_path / "out.bin"))[-1].strip() == "ok"
            raw = (tmp_path / "out.bin").read_bytes()
            values = n * 24 * 8
            assert len(raw) == values + 4 * n + 16 * n
            assert np.array_equal(np.frombuffer(raw[:values]).reshape(n, 6, 4), F_pred, equal_nan=False), (W, scale)
            assert np.array_equal(np.frombuffer(raw[values:values + 4 * n], np.uint32), status), (W, scale)
            assert np.array_equal(np.frombuffer(raw[values + 4 * n:values + 12 * n]), growth), (W, scale)
            assert np.array_equal(np.frombuffer(raw[values + 12 * n:]), uncertainty), (W, scale)
    finally:
        lib.dodo_closure_destroy(handle)
