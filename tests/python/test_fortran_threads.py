"""The Fortran module's failure paths called from many OpenMP threads at once.

gfortran (12 at least) keeps the length of a deferred-length character function result
(`character(len=:), allocatable`) in a static variable of the calling procedure. dodo.f90 built
its messages with such functions, so two threads failing at once wrote each other's lengths: a
message cut or run on into the heap, and now and then a heap overflow that aborted the host in
malloc (C round 35's `private(closure)` test failed about 1 run in 75, 13% under ASan). The
module now returns no deferred-length result (docs/reliability_cpp.md, round thirty-seven). The cause
itself, read off gfortran's translation (no static storage under -fopenmp), is held by
test_probe_c_round38.py's test_the_module_keeps_no_local_in_static_storage_under_a_hosts_flags[openmp]."""
from __future__ import annotations

import shutil

import pytest

from capi_host import FORTRAN_MODULE, default_model, run_host
from test_native_programs import pkg_config, run


THREADED_FAILURES_HOST = """\
program threaded_failures
  use dodo
  use omp_lib
  use iso_c_binding, only: c_double
  implicit none
  type(dodo_closure) :: closure, nothing
  real(c_double) :: F(4, 6, 3), G(4, 6, 3)
  real(c_double), allocatable :: u(:, :)
  character(len=300) :: expected(0:3), message
  character(len=4096) :: model
  integer :: stat, k, call_count, wrong
  call get_command_argument(1, model)
  F = 0
  F(1, :, :) = 1
  call dodo_create(closure, model)
  ! each thread's refusal has its own length: u with 1, 22, 333 or 4444 columns for 3 cells,
  ! or a closure never created
  do k = 0, 3
    if (k == 3) then
      call dodo_apply(nothing, F, G, stat=stat, errmsg=expected(k))
    else
      allocate(u(4, 10**(k + 1) / 9 * (k + 1)))
      call dodo_apply(closure, F, G, u=u, stat=stat, errmsg=expected(k))
      deallocate(u)
    end if
  end do
  wrong = 0
  !$omp parallel num_threads(4) private(k, u, message, stat, call_count, G) reduction(+:wrong)
  k = omp_get_thread_num()
  if (k < 3) allocate(u(4, 10**(k + 1) / 9 * (k + 1)))
  do call_count = 1, 400
    message = "unset"
    if (k == 3) then
      call dodo_apply(nothing, F, G, stat=stat, errmsg=message)
    else
      call dodo_apply(closure, F, G, u=u, stat=stat, errmsg=message)
    end if
    if (stat /= DODO_ERROR_INVALID_ARGUMENT .or. message /= expected(k)) wrong = wrong + 1
  end do
  !$omp end parallel
  print '(a,i0)', "wrong ", wrong
  do k = 0, 3
    print '(a)', trim(expected(k))
  end do
  call dodo_destroy(closure)
end program threaded_failures
"""


def test_four_threads_failing_at_once_each_get_their_own_message(tmp_path):
    """Four OpenMP threads, each refused 400 times with a message of its own length (a wrong u
    of 1, 22 or 333 columns; a closure never created): every refusal has its own status and its
    own message, word for word, blank-padded, as the same call made alone."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed (apt-get install gfortran)")
    source = tmp_path / "threaded_failures.f90"
    source.write_text(THREADED_FAILURES_HOST)
    program = tmp_path / "threaded_failures"
    run(["gfortran", "-std=f2018", "-fopenmp", "-J", str(tmp_path), str(FORTRAN_MODULE), str(source),
         *pkg_config("--libs"), "-o", str(program)])
    for model in (str(default_model()), "box3d"):
        lines = run_host(program, model, timeout=300)
        assert lines[0] == "wrong 0", lines
        assert lines[1].startswith("u must have shape (4, ...) with one column per cell: u has (4, 1) for 3 "), lines
        assert "u has (4, 22) for 3 cell(s)" in lines[2] and "u has (4, 333) for 3 cell(s)" in lines[3], lines
        assert "holds no closure" in lines[4], lines
