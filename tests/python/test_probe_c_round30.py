"""Outside probe of the Fortran interface, round thirty (docs/reliability_cpp.md, "Round thirty"):
a grid's u, cell_status, growth_rate or uncertainty given in another order than F's (u(4, ny, nx)
for F(4, 6, nx, ny)) was taken by its count of values and each cell read another cell's
four-velocity, silently (refused since this round); and, held without a change, the array arguments
a transport code passes (a grid with ghost cells and lower bounds other than 1, a strided section
through an assumed-shape wrapper, allocatables, optional outputs left out, zero cells) against the
Python path (dodo.Closure) bit for bit, and real(4) arrays refused by the compiler."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import dodo
from capi_host import FORTRAN_MODULE, compile_fortran, needs_runtime, run_host
from test_native_programs import pkg_config

pytestmark = needs_runtime

NX, NY = 5, 4
N = NX * NY

PROGRAM = r"""
program probe30
  use dodo
  implicit none
  integer, parameter :: nx = 5, ny = 4, n = nx * ny
  type(dodo_closure) :: c
  real(c_double) :: F(4, 6, nx, ny), u(4, nx, ny), P(4, 6, nx, ny), rate(nx, ny), spread(nx, ny)
  real(c_double) :: G(4, 6, -1:nx + 2, 0:ny + 1), UG(4, -1:nx + 2, 0:ny + 1), PG(4, 6, -1:nx + 2, 0:ny + 1)
  real(c_double) :: Fbig(4, 6, 2 * n), Pbig(4, 6, 2 * n), ubig(4, 2 * n), ref(4, 6, nx, ny)
  real(c_double), allocatable :: A(:, :, :, :), AP(:, :, :, :), ut(:, :, :), uflat(:, :), Z(:, :, :), ZP(:, :, :)
  integer(c_int32_t) :: st(nx, ny), stt(ny, nx), sbig(2 * n)
  real(c_double) :: ratet(ny, nx)
  integer :: stat, unit, i, j
  character(len=400) :: msg
  character(len=4096) :: model

  call get_command_argument(1, model)
  if (trim(model) == "default") model = dodo_default_model_path()
  open (newunit=unit, file="cells.bin", access="stream", form="unformatted", status="old")
  read (unit) F, u
  close (unit)
  call dodo_create(c, trim(model), threads=2, chunk_size=7)
  open (newunit=unit, file="out.bin", access="stream", form="unformatted", status="replace")

  ! 1. contiguous arrays, every output: the reference
  call dodo_apply(c, F, P, u=u, cell_status=st, growth_rate=rate, uncertainty=spread)
  write (unit) P, st
  ref = P
  ! 2. a grid with ghost cells, lower bounds other than 1: the interior sections
  G = -7; UG = -7; PG = -9
  G(:, :, 1:nx, 1:ny) = F; UG(:, 1:nx, 1:ny) = u
  call dodo_apply(c, G(:, :, 1:nx, 1:ny), PG(:, :, 1:nx, 1:ny), u=UG(:, 1:nx, 1:ny), stat=stat)
  print '(a, i0, a, l1, a, l1)', "ghost ", stat, " same ", all(PG(:, :, 1:nx, 1:ny) == ref), &
        " ghosts_untouched ", count(PG /= -9) == 24 * n
  ! 3. a strided section through an assumed-shape wrapper (every other cell of a larger array)
  Fbig = -5; ubig = -5; Pbig = -3
  Fbig(:, :, 1:2 * n:2) = reshape(F, [4, 6, n]); ubig(:, 1:2 * n:2) = reshape(u, [4, n])
  call wrapper(c, Fbig(:, :, 1:2 * n:2), Pbig(:, :, 1:2 * n:2), ubig(:, 1:2 * n:2), sbig(1:2 * n:2), stat)
  print '(a, i0, a, l1, a, l1, a, l1)', "wrapper ", stat, " same ", all(reshape(Pbig(:, :, 1:2 * n:2), &
        [4, 6, nx, ny]) == ref), " status ", all(reshape(sbig(1:2 * n:2), [nx, ny]) == st), &
        " between_untouched ", all(Pbig(:, :, 2:2 * n:2) == -3)
  ! 4. optional outputs left out: no cell_status, no u (every cell at rest)
  P = -1
  call dodo_apply(c, F, P, u=u, stat=stat)
  print '(a, i0, a, l1)', "no_status ", stat, " same ", all(P == ref)
  P = -1
  call dodo_apply(c, F, P, stat=stat)
  write (unit) P
  ! 5. allocatables: the documented shape, a flat u, and the grid's arrays in another order
  allocate (A, source=F); allocate (AP, mold=F); allocate (ut(4, ny, nx), uflat(4, n))
  uflat = reshape(u, [4, n])
  do j = 1, ny
    do i = 1, nx
      ut(:, j, i) = u(:, i, j)
    end do
  end do
  AP = -1
  call dodo_apply(c, A, AP, u=uflat, stat=stat)
  print '(a, i0, a, l1)', "flat_u ", stat, " same ", all(AP == ref)
  AP = -1; msg = ""
  call dodo_apply(c, A, AP, u=ut, stat=stat, errmsg=msg)
  print '(a, i0, a, l1, 2a)', "u_other_order ", stat, " untouched ", all(AP == -1), " ", trim(msg)
  msg = ""
  call dodo_apply(c, A, AP, u=u, cell_status=stt, stat=stat, errmsg=msg)
  print '(a, i0, a, l1, 2a)', "status_other_order ", stat, " untouched ", all(AP == -1), " ", trim(msg)
  msg = ""
  call dodo_apply(c, A, AP, u=u, growth_rate=ratet, stat=stat, errmsg=msg)
  print '(a, i0, a, l1, 2a)', "rate_other_order ", stat, " untouched ", all(AP == -1), " ", trim(msg)
  msg = ""
  call dodo_apply(c, A, AP, u=u, uncertainty=ratet, stat=stat, errmsg=msg)
  print '(a, i0, a, l1, 2a)', "spread_other_order ", stat, " untouched ", all(AP == -1), " ", trim(msg)
  ! 6. zero cells: nothing to do, stat 0
  allocate (Z(4, 6, 0), ZP(4, 6, 0))
  call dodo_apply(c, Z, ZP, u=uflat(:, 1:0), stat=stat)
  print '(a, i0)', "zero ", stat
  call dodo_apply(c, F(:, :, :, 1:0), P(:, :, :, 1:0), u=u(:, :, 1:0), cell_status=st(:, 1:0), stat=stat)
  print '(a, i0)', "zero_grid ", stat
  close (unit)
  call dodo_destroy(c)
contains
  subroutine wrapper(c, Fs, Ps, us, ss, stat)
    type(dodo_closure), intent(in) :: c
    real(c_double), intent(in) :: Fs(:, :, :), us(:, :)
    real(c_double), intent(inout) :: Ps(:, :, :)
    integer(c_int32_t), intent(out) :: ss(:)
    integer, intent(out) :: stat
    call dodo_apply(c, Fs, Ps, u=us, cell_status=ss, stat=stat)
  end subroutine wrapper
end program probe30
"""


def _cells(seed: int):
    """N realizable cells (flux factors below 0.9), a third at rest, the others moving with v < 0.8."""
    rng = np.random.default_rng(seed)
    F = np.zeros((N, 6, 4))
    F[..., 0] = rng.uniform(0.1, 1.0, (N, 6))
    direction = rng.normal(size=(N, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 1:] = direction * (rng.uniform(0, 0.9, (N, 6)) * F[..., 0])[..., None]
    v = rng.normal(size=(N, 3))
    v *= rng.uniform(0.1, 0.8, (N, 1)) / np.linalg.norm(v, axis=-1, keepdims=True)
    W = 1 / np.sqrt(1 - (v ** 2).sum(-1))
    u = np.concatenate([W[:, None], W[:, None] * v], axis=1)
    u[::3] = [1.0, 0.0, 0.0, 0.0]
    return F, u


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return compile_fortran(tmp_path_factory.mktemp("probe30"), "probe30", PROGRAM)


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_fortran_array_arguments_as_transport_codes_pass_them(program, tmp_path, model):
    """Every way of passing gives the Python closure's bits; a grid's u, cell_status, growth_rate or
    uncertainty in another order than F's is refused naming both shapes, F_pred untouched (it was
    accepted and each cell read another's four-velocity)."""
    F, u = _cells(seed=30)
    (tmp_path / "cells.bin").write_bytes(F.tobytes() + u.tobytes())
    result = subprocess.run([str(program), model], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    out = np.frombuffer((tmp_path / "out.bin").read_bytes(), dtype=np.uint8)
    size_F = N * 24 * 8
    P = out[:size_F].view(np.float64).reshape(N, 6, 4)
    status = out[size_F:size_F + 4 * N].view(np.uint32)
    P_rest = out[size_F + 4 * N:].view(np.float64).reshape(N, 6, 4)

    python = dodo.Closure("box3d" if model == "box3d" else None)
    expected = python.apply(F, u)
    assert np.array_equal(P, expected.F_pred)
    assert np.array_equal(status, expected.status)
    assert np.array_equal(P_rest, python.apply(F).F_pred)
    assert not np.array_equal(P_rest, P)  # the moving cells' u mattered: a misread u shows

    assert lines["ghost"] == "ghost 0 same T ghosts_untouched T"
    assert lines["wrapper"] == "wrapper 0 same T status T between_untouched T"
    assert lines["no_status"] == "no_status 0 same T"
    assert lines["flat_u"] == "flat_u 0 same T"
    assert lines["u_other_order"] == (
        "u_other_order 1 untouched T u must have shape (4, ...) with one column per cell, its cell dimensions "
        "F_init's: u has (4, 4, 5), F_init (4, 6, 5, 4) (a flat u(4, ncell) is taken in F_init's cell order)")
    for name, short in [("cell_status", "status"), ("growth_rate", "rate"), ("uncertainty", "spread")]:
        assert lines[f"{short}_other_order"] == (
            f"{short}_other_order 1 untouched T {name} must have one entry per cell, its dimensions F_init's "
            f"cell dimensions: {name} has (4, 5), F_init (4, 6, 5, 4)")
    assert lines["zero"] == "zero 0"
    assert lines["zero_grid"] == "zero_grid 0"


def test_fortran_real_kind_4_arrays_are_a_compile_error(tmp_path):
    """real(4) arrays where real(c_double) is expected: the compiler refuses (no silent conversion)."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    source = tmp_path / "single.f90"
    source.write_text("program single\n  use dodo\n  type(dodo_closure) :: c\n  real(4) :: F(4, 6, 3), P(4, 6, 3)\n"
                      "  call dodo_create(c, DODO_BOX3D_ONLY)\n  call dodo_apply(c, F, P)\nend program single\n")
    result = subprocess.run(["gfortran", "-J", str(tmp_path), str(FORTRAN_MODULE), str(source),
                             *pkg_config("--libs"), "-o", str(tmp_path / "single")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "REAL(4)" in result.stderr and "REAL(8)" in result.stderr, result.stderr
