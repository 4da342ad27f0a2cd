"""Outside probe of the C and Fortran interfaces, round thirty-eight (docs/reliability_cpp.md,
"Round thirty-eight"), as the developer of a transport code: the Fortran module compiled with a
host's own flags (a CMake host's CMAKE_Fortran_FLAGS reach the module's library too).
`-fno-automatic` (gfortran; legacy codes build every Fortran file with it) gives every local of a
procedure not marked RECURSIVE static storage: the module's allocatable locals stayed allocated
after a call, so a program's second failed call stopped it ("Attempting to allocate already
allocated variable 'buffer'"), and OpenMP threads shared every local. `-fcheck=all` on a module
compiled without -fopenmp stopped an OpenMP host whose threads called one procedure at once
("Recursive call to nonrecursive procedure"). The module's procedures are now RECURSIVE, which
gfortran exempts from -fno-automatic and its recursion check, and hold no deferred-length local.
Held without a change: OpenMP threads calling every module procedure at once."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import dodo
from capi_host import FORTRAN_MODULE, compile_host, default_model, run_host
from native_build import REQUIRES_C_API, run

pytestmark = REQUIRES_C_API


def _pkg_config(*arguments: str) -> list[str]:
    from test_native_programs import pkg_config

    return pkg_config(*arguments)


def _build_fortran(tmp_path: Path, name: str, source: str, flags: list[str],
                   host_flags: list[str] | None = None) -> Path:
    """The module compiled with `flags` (as a host's own Fortran flags reach it) and a host with
    `host_flags` (the same by default), linked to the installed libdodo."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed (apt-get install gfortran)")
    build = tmp_path / name
    build.mkdir()
    path = build / (name + ".f90")
    path.write_text(source)
    program = build / name
    run(["gfortran", "-std=f2018", *flags, "-J", str(build), "-c", str(FORTRAN_MODULE), "-o", str(build / "dodo.o")])
    run(["gfortran", "-std=f2018", *(flags if host_flags is None else host_flags), "-I", str(build), str(path),
         str(build / "dodo.o"), *_pkg_config("--libs"), "-o", str(program)])
    return program


@pytest.mark.parametrize("flags", [["-fopenmp"], ["-fno-automatic"], ["-fopenmp", "-fno-automatic"],
                                   ["-fmax-stack-var-size=100"]],
                         ids=["openmp", "no-automatic", "openmp-no-automatic", "small-stack-vars"])
def test_the_module_keeps_no_local_in_static_storage_under_a_hosts_flags(tmp_path, flags):
    """Read off gfortran's translation of the module: under flags that give a procedure's locals
    static storage, no procedure of it has one (only the compiler's own read-only constants,
    `static ... C.nnnn = value`). Before the fix: 57 static locals under -fno-automatic, and under
    -fmax-stack-var-size=100 the 1,024-byte error buffer of both creates (two threads failing
    their creates at once wrote one buffer)."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed (apt-get install gfortran)")
    subprocess.run(["gfortran", "-std=f2018", *flags, "-c", "-fdump-tree-original", "-J", str(tmp_path),
                    str(FORTRAN_MODULE), "-o", str(tmp_path / "dodo.o")], check=True, cwd=tmp_path,
                   capture_output=True)
    dumps = list(tmp_path.glob("*.original"))
    assert len(dumps) == 1, dumps
    procedure, shared = "", []
    for line in dumps[0].read_text().splitlines():
        if line and not line.startswith((" ", "{", "}", "_")) and "(" in line:
            procedure = line.split("(")[0].split()[-1]
        if "static" in line and not re.search(r"static [^;]* C\.\d+ = ", line):
            shared.append(f"{procedure}: {line.strip()}")
    assert not shared, f"locals in static storage (one per process, not per thread): {shared}"


# A time loop's failures and successes, one after another on one thread: two failed creates, a
# call on the closure they left unmade, then a Box3D closure's apply and the three text functions.
REPEATED_FAILURES_HOST = """\
program repeated_failures
  use dodo
  implicit none
  type(dodo_closure) :: closure
  character(len=300) :: message
  integer :: stat, k
  real(c_double) :: F(4, 6, 2), G(4, 6, 2), u(4, 7)
  F = 0
  F(1, :, :) = 1
  u = 0
  do k = 1, 3
    message = "unset"
    call dodo_create(closure, "/nonexistent/model.onnx", stat=stat, errmsg=message)
    print '(i0,1x,a)', stat, trim(message)
    message = "unset"
    call dodo_apply(closure, F, G, stat=stat, errmsg=message)
    print '(i0,1x,a)', stat, trim(message)
  end do
  call dodo_create(closure, "box3d", stat=stat, errmsg=message)
  print '(a,i0)', "create ", stat
  do k = 1, 3
    call dodo_apply(closure, F, G, u=u, stat=stat, errmsg=message)
    print '(i0,1x,a)', stat, trim(message)
    call dodo_apply(closure, F, G, stat=stat, errmsg=message)
    print '(a,i0,a,es24.16)', "apply ", stat, " ", G(1, 1, 2)
  end do
  print '(a,l1)', "model ", dodo_has_model(closure)
  print '(3a)', "[", dodo_get_metadata(closure, "dodo.head"), "]"
  print '(3a)', "[", dodo_version_string(), "]"
  print '(3a)', "[", dodo_default_model_path(), "]"
  call dodo_destroy(closure)
end program repeated_failures
"""


@pytest.mark.parametrize("flags,text_functions", [
    ([], True),
    (["-fno-automatic"], False),
    (["-fno-automatic", "-finit-local-zero"], False),
    (["-fno-automatic", "-fautomatic"], True),  # docs/runtime.md's remedy for the text functions
], ids=["plain", "no-automatic", "no-automatic-init-zero", "no-automatic-then-automatic"])
def test_a_module_built_with_no_automatic_survives_repeated_failures(tmp_path, flags, text_functions):
    """`-fno-automatic` on the module (a legacy code's flags): the second failed call stopped the
    program before the fix ("Fortran runtime error: Attempting to allocate already allocated
    variable 'buffer'", line 710, read_last_error), although every call passed stat=. Now every
    failure is a status and its own message, as with the plain build. The text functions'
    deferred-length results come back empty under -fno-automatic (gfortran 12 drops the copy of
    their length to the caller: not the module's to mend); with -fautomatic after it, as
    docs/runtime.md says, they are whole."""
    program = _build_fortran(tmp_path, "repeated_failures", REPEATED_FAILURES_HOST, flags)
    lines = run_host(program, timeout=120)
    missing = 'model file "/nonexistent/model.onnx" does not exist'
    for k in range(3):
        assert lines[2 * k] == f"2 {missing}", lines
        assert lines[2 * k + 1].startswith("1 this dodo_closure holds no closure (never created"), lines
    assert lines[6] == "create 0", lines
    for k in range(3):
        assert lines[7 + 2 * k] == "1 u must have shape (4, ...) with one column per cell: u has (4, 7) for 2 cell(s)", lines
        assert lines[8 + 2 * k].startswith("apply 0 "), lines
    assert lines[8] == lines[10] == lines[12], lines
    assert lines[13:15] == ["model F", "[]"], lines
    if text_functions:
        assert lines[15:] == [f"[{dodo.__version__}]", f"[{default_model()}]"], lines


# Six OpenMP threads, each 12 times: a closure of its own from the package's bytes and one from
# its path (0 to 2 workers), applied with every optional output beside a shared closure, its
# self-test, counters (read, reset), has_model, a refused call of its own length (a u of
# 1 + thread columns) and destroy. Every result must be the single call's bits, every refusal the
# same call's message made alone.
THREADS_HOST = """\
program threads_every_procedure
  use dodo
  use omp_lib
  use iso_c_binding, only: c_double, c_int8_t, c_int32_t
  implicit none
  integer, parameter :: n = 40, nthreads = 6
  type(dodo_closure) :: shared_closure
  real(c_double) :: F(4, 6, n), G0(4, 6, n), u(4, n), rate0(n), spread0(n)
  integer(c_int32_t) :: status0(n)
  integer(c_int8_t), allocatable :: bytes(:)
  character(len=4096) :: model
  character(len=300) :: expected(0:nthreads - 1)
  real(c_double), allocatable :: wrong_u(:, :)
  integer :: i, unit, nbytes, wrong, k, stat
  call get_command_argument(1, model)
  open(newunit=unit, file=trim(model), access='stream', form='unformatted', status='old')
  inquire(unit=unit, size=nbytes)
  allocate(bytes(nbytes))
  read(unit) bytes
  close(unit)
  F = 0
  u = 0
  do i = 1, n
    F(1, :, i) = [1d0, 1.1d0, 1.2d0, 1.3d0, 1.4d0, 1.5d0] + 0.01d0 * i
    F(4, :, i) = 0.3d0
    if (mod(i, 3) /= 0) F(4, 4, i) = -0.4d0  ! a crossing in two cells of three, the third stable
    if (mod(i, 7) == 0) F(1, 2, i) = -1      ! rejected: a negative density
    u(2, i) = 0.01d0 * i
    u(1, i) = sqrt(1 + u(2, i)**2)
  end do
  call dodo_create(shared_closure, trim(model), threads=2, chunk_size=7)
  call dodo_apply(shared_closure, F, G0, u=u, cell_status=status0, growth_rate=rate0, uncertainty=spread0)
  do k = 0, nthreads - 1
    allocate(wrong_u(4, k + 1))
    call dodo_apply(shared_closure, F, G0, u=wrong_u, stat=stat, errmsg=expected(k))
    deallocate(wrong_u)
  end do
  wrong = 0
  !$omp parallel num_threads(nthreads) private(k, i) reduction(+:wrong)
  block
    type(dodo_closure) :: mine, from_path
    type(dodo_counters) :: counters
    real(c_double) :: G(4, 6, n), rate(n), spread(n), worst, v(4, 1 + nthreads)
    integer(c_int32_t) :: status(n)
    integer :: stat
    character(len=300) :: message
    k = omp_get_thread_num()
    v = 0
    do i = 1, 12
      call dodo_create_from_memory(mine, bytes, threads=mod(i, 3), chunk_size=5, stat=stat, errmsg=message)
      if (stat /= 0) wrong = wrong + 1
      call dodo_create(from_path, trim(model), threads=mod(i + k, 3), run_self_test=mod(i, 2) == 0, stat=stat)
      if (stat /= 0) wrong = wrong + 1
      call dodo_apply(mine, F, G, u=u, cell_status=status, growth_rate=rate, uncertainty=spread, stat=stat)
      if (stat /= 0 .or. any(G /= G0) .or. any(status /= status0) .or. any(rate /= rate0) .or. &
          any(spread /= spread0)) wrong = wrong + 1
      call dodo_apply(from_path, F, G, u=u, cell_status=status, growth_rate=rate, uncertainty=spread, stat=stat)
      if (stat /= 0 .or. any(G /= G0) .or. any(status /= status0) .or. any(rate /= rate0) .or. &
          any(spread /= spread0)) wrong = wrong + 1
      call dodo_apply(shared_closure, F, G, u=u, cell_status=status, growth_rate=rate, uncertainty=spread, stat=stat)
      if (stat /= 0 .or. any(G /= G0) .or. any(status /= status0)) wrong = wrong + 1
      message = "unset"
      call dodo_apply(mine, F, G, u=v(:, 1:k + 1), stat=stat, errmsg=message)
      if (stat /= DODO_ERROR_INVALID_ARGUMENT .or. message /= expected(k)) wrong = wrong + 1
      call dodo_self_test(mine, worst, stat=stat)
      if (stat /= 0) wrong = wrong + 1
      call dodo_get_counters(mine, counters, stat=stat)
      if (stat /= 0 .or. counters%cells /= n) wrong = wrong + 1
      call dodo_reset_counters(from_path, stat=stat)
      call dodo_get_counters(from_path, counters, stat=stat)
      if (stat /= 0 .or. counters%cells /= 0) wrong = wrong + 1
      if (dodo_has_model(mine) .neqv. dodo_has_model(shared_closure)) wrong = wrong + 1
      call dodo_destroy(mine)
      call dodo_destroy(from_path)
      message = "unset"
      call dodo_apply(mine, F, G, stat=stat, errmsg=message)
      if (stat /= DODO_ERROR_INVALID_ARGUMENT .or. index(message, "holds no closure") == 0) wrong = wrong + 1
    end do
  end block
  !$omp end parallel
  print '(a,i0)', "wrong ", wrong
  print '(a)', trim(expected(nthreads - 1))
  call dodo_destroy(shared_closure)
end program threads_every_procedure
"""


@pytest.mark.parametrize("flags", [["-fopenmp"], ["-fopenmp", "-fno-automatic"], ["-fno-automatic"], ["-fcheck=all"]],
                         ids=["openmp", "openmp-no-automatic", "no-automatic", "check-all-without-openmp"])
def test_openmp_threads_calling_every_procedure_get_one_calls_bits(tmp_path, flags):
    """Six threads calling every module procedure at once (creates from memory and by path,
    applies with every optional output, self-test, counters, refusals, destroy): the single
    call's bits and each refusal's own message. Before the fix, with `-fno-automatic` on the
    module the host stopped ("Attempting to allocate already allocated variable 'buffer'": every
    thread's failure path allocating the one shared buffer), and with `-fcheck=all` on a module
    compiled without -fopenmp (a CMake debug build where only the executable links
    OpenMP::OpenMP_Fortran) the first two threads inside one procedure stopped it: "Recursive call
    to nonrecursive procedure 'dodo_create_from_memory'". The host itself is built with -fopenmp
    alone: under -fno-automatic its own block's variables would be shared by the threads too."""
    program = _build_fortran(tmp_path, "threads_every_procedure", THREADS_HOST, flags, ["-fopenmp"])
    lines = run_host(program, str(default_model()), timeout=600, env={"OMP_WAIT_POLICY": "passive"})
    assert lines[0] == "wrong 0", lines
    assert lines[1] == "u must have shape (4, ...) with one column per cell: u has (4, 6) for 40 cell(s)", lines


# A host thread of a given stack size (KiB) that creates the closure and applies it, beside the
# same on the main thread: dodo.h's stack figure, for a model and with either evaluator.
SMALL_STACK_HOST = r"""
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char* model;
static double F[3][6][4], on_main[3][6][4], on_thread[3][6][4];
static int status = -1;

static int create_and_apply(double out[3][6][4]) {
  char message[512];
  dodo_options options;
  dodo_closure* closure = NULL;
  dodo_options_init(&options);
  if (dodo_closure_create(model, &options, &closure, message, sizeof message) != DODO_OK) {
    printf("create: %s\n", message);
    return 1;
  }
  int rc = dodo_apply(closure, 3, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
  dodo_closure_destroy(closure);
  return rc;
}

static void* thread_main(void* unused) {
  (void)unused;
  status = create_and_apply(on_thread);
  return NULL;
}

int main(int argc, char** argv) {
  pthread_attr_t attributes;
  pthread_t thread;
  if (argc != 3) return 5;
  model = argv[1];
  for (int c = 0; c < 3; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.05 * c;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  if (create_and_apply(on_main) != 0) return 2;
  pthread_attr_init(&attributes);
  if (pthread_attr_setstacksize(&attributes, (size_t)atoi(argv[2]) * 1024) != 0) return 3;
  if (pthread_create(&thread, &attributes, thread_main, NULL) != 0) return 4;
  pthread_join(thread, NULL);
  printf("status %d, same bits %d\n", status, memcmp(on_main, on_thread, sizeof on_main) == 0);
  return 0;
}
"""


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_a_thread_with_the_documented_stack_creates_and_applies(tmp_path, evaluator):
    """dodo.h said a thread calling dodo_apply needs about 64 KiB of stack; with onnxruntime 1.32 a
    thread of 64 to 88 KiB that creates the default model, or of 96 KiB with the network in ONNX
    Runtime, died of a segmentation fault inside ONNX Runtime (a doc defect: dodo.h and
    docs/runtime.md now say 128 KiB). A thread of 128 KiB creates and applies with the main
    thread's bits, with either evaluator."""
    program = compile_host(tmp_path, "small_stack", SMALL_STACK_HOST)
    lines = run_host(program, str(default_model()), "128", timeout=120,
                     env={"DODO_NETWORK_EVALUATOR": evaluator})
    assert lines == ["status 0, same bits 1"], lines
