"""Outside probe of the C, C++ and Fortran interfaces, round forty-two (docs/reliability_cpp.md,
"Round forty-two"), as the developer of a transport code: the gaps earlier rounds left (the size
`dodo_options_init_sized` writes), and hosts not probed before."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from capi_host import ROOT, compile_host, default_model, run_host
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API

# The module the Fortran hosts compile (a copy of an older one can be named to see the tests fail).
MODULE = Path(os.environ.get("DODO_PROBE_FORTRAN_MODULE", ROOT / "cpp/include/dodo/dodo.f90"))


# --- dodo_options_init_sized with a size past the struct it knows ---------------------------------

OPTIONS_PAST_THE_STRUCT = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <string.h>

/* A struct of a later dodo.h (fields added at the end), or a host's own record that holds the
 * options and whose size it passed by mistake. */
struct record {
  dodo_options options;
  unsigned char after[4096];
};

int main(int argc, char** argv) {
  (void)argv;
  static struct record record;
  memset(&record, 0xab, sizeof record);
  dodo_options_init_sized(&record.options, sizeof record);
  size_t written = 0;
  for (size_t i = 0; i < sizeof record.after; ++i) written += record.after[i] != 0xab;
  printf("written past %zu\n", written);
  printf("fields %zu %d %d %d %d\n", record.options.struct_size, record.options.threads, record.options.chunk_size,
         record.options.run_self_test, record.options.device);
  dodo_closure* closure = NULL;
  char message[1024] = "";
  const dodo_status status = dodo_closure_create(DODO_BOX3D_ONLY, &record.options, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name(status), message);
  if (argc > 1) {  /* 1 MiB given for a dodo_options on the stack */
    dodo_options options;
    dodo_options_init_sized(&options, (size_t)1 << 20);
    printf("stack alive %d\n", options.chunk_size);
  }
  return 0;
}
"""


def test_options_init_sized_writes_no_byte_past_the_struct_it_knows(tmp_path):
    """`dodo_options_init_sized(&o, size)` with a size past this library's dodo_options (a later
    dodo.h's struct, or a host's wrong size: the record holding the options, 1 MiB for a
    dodo_options on its stack). Before: every one of the `size` bytes was zeroed, 4,096 bytes of
    the host's record past the options, and the 1 MiB one smashed the host's stack (SIGSEGV).
    Now nothing past the struct this library knows is written; the size is recorded, and
    dodo_closure_create refuses it as before (a later dodo.h's struct)."""
    program = compile_host(tmp_path, "options_past", OPTIONS_PAST_THE_STRUCT)
    lines = run_host(program, timeout=120) + run_host(program, "stack", timeout=120)[3:]
    assert lines[0] == "written past 0", lines
    assert lines[1].split()[1:] == [str(int(lines[1].split()[1])), "0", "1024", "1", "0"], lines
    name, message = lines[2].split("|", 1)
    assert name == "DODO_ERROR_INVALID_ARGUMENT", lines
    assert "is larger than this library's" in message and "newer dodo.h" in message, message
    assert lines[3] == "stack alive 1024", lines


# --- the Fortran module in a host built with AddressSanitizer -------------------------------------

# Strided sections of every argument (out of place, u, cell_status, growth_rate, uncertainty), a
# rank-4 grid's interior into a reversed section with ghost cells around it, and the same refused:
# each against the contiguous call; module and host built with -fsanitize=address,undefined.
SECTIONS_UNDER_ASAN = r"""
program ncsan
  use dodo
  implicit none
  integer, parameter :: n = 12
  real(c_double), allocatable, target :: W(:, :, :), R(:, :, :), U(:, :)
  real(c_double), allocatable :: Gs(:), Gref(:), Uc(:), Us(:)
  integer(c_int32_t), allocatable :: S(:), Sref(:), S3(:, :, :)
  real(c_double), allocatable :: F4(:, :, :, :), P4(:, :, :, :)
  type(dodo_closure) :: h
  integer :: stat, c, a, wrong
  character(len=256) :: path
  call get_command_argument(1, path)
  allocate(W(4, 6, 3 * n), R(4, 6, n), U(4, 3 * n), S(3 * n), Sref(n), Gref(n), Gs(3 * n), Us(3 * n))
  do c = 1, 3 * n
    do a = 1, 6
      W(:, a, c) = [1d0 + 0.1d0 * a + 1d-2 * c, 0.1d0, 0.05d0 * mod(c, 3), merge(-0.4d0, 0.3d0, a == 4)]
    end do
    U(:, c) = [1d0, 0d0, 0d0, 0d0]
    if (mod(c, 4) == 0) U(:, c) = [sqrt(1d0 + 0.04d0), 0.2d0, 0d0, 0d0]
  end do
  wrong = 0
  call dodo_create(h, trim(path), stat=stat)
  if (stat /= 0) stop 3
  ! reference: contiguous copies
  R = W(:, :, 1:3*n:3)
  Uc = reshape(U(:, 1:3*n:3), [4 * n])
  call dodo_apply(h, R, R, u=reshape(Uc, [4, n]), cell_status=Sref, growth_rate=Gref, stat=stat)
  if (stat /= 0) wrong = wrong + 1
  ! strided everything, out of place into another strided section, reversed u
  S = -7
  Gs = -1
  call dodo_apply(h, W(:, :, 1:3*n:3), W(:, :, 2:3*n:3), u=U(:, 1:3*n:3), cell_status=S(1:3*n:3), &
                  growth_rate=Gs(1:3*n:3), uncertainty=Us(1:3*n:3), stat=stat)
  if (stat /= 0) wrong = wrong + 1
  if (any(W(:, :, 2:3*n:3) /= R)) wrong = wrong + 10
  if (any(S(1:3*n:3) /= Sref)) wrong = wrong + 100
  if (any(S(2:3*n:3) /= -7)) wrong = wrong + 1000
  if (any(Gs(1:3*n:3) /= Gref)) wrong = wrong + 10000
  ! rank 4 grid with ghost cells: F4(4, 6, 0:5, 0:3) interior 1:4, 1:2 (8 cells)
  allocate(F4(4, 6, 0:5, 0:3), P4(4, 6, 0:5, 0:3), S3(2, 0:5, 0:3))
  F4 = 0
  P4 = -5
  do c = 1, 4
    F4(:, :, c, 1) = W(:, :, c)
    F4(:, :, c, 2) = W(:, :, c + 4)
  end do
  S3 = -9
  call dodo_apply(h, F4(:, :, 1:4, 1:2), P4(:, :, 4:1:-1, 2:1:-1), cell_status=S3(2, 1:4, 1:2), stat=stat)
  if (stat /= 0) wrong = wrong + 100000
  if (any(P4(:, :, 0, :) /= -5) .or. any(P4(:, :, 5, :) /= -5) .or. any(P4(:, :, :, 0) /= -5) .or. &
      any(P4(:, :, :, 3) /= -5)) wrong = wrong + 1000000
  if (any(S3(1, :, :) /= -9)) wrong = wrong + 2000000
  ! the same through a refused call (wrong-sized growth rate): nothing written
  P4 = -5
  S3 = -9
  call dodo_apply(h, F4(:, :, 1:4, 1:2), P4(:, :, 4:1:-1, 2:1:-1), cell_status=S3(2, 1:4, 1:2), &
                  growth_rate=Gs(1:5:2), stat=stat)
  if (stat == 0 .or. any(P4 /= -5) .or. any(S3 /= -9)) wrong = wrong + 4000000
  print '(a, i0)', 'wrong ', wrong
  call dodo_destroy(h)
  deallocate(W, R, U, S, Sref, Gref, Gs, Us, F4, P4, S3, Uc)
end program
"""


def test_fortran_sections_in_a_host_built_with_address_sanitizer(tmp_path):
    """A Fortran transport code's debug build (`-fsanitize=address,undefined -fcheck=all`, the
    module compiled with it, as a CMake host's flags reach the module's library) passing
    non-contiguous sections to `dodo_apply`. Before: AddressSanitizer stopped the host at its
    first such call, "unknown-crash ... READ of size 400" of the host's 64-byte array descriptor
    "in find_overlap dodo.f90:538": gfortran 12 passes an assumed-rank array to an unlimited
    polymorphic assumed-rank dummy (round forty-one's one address-list maker, class(*) x(..)) by
    copying a descriptor of the largest rank, 400 bytes. Now one address-list maker a type (the
    arrays reach the class(*) helper with a known rank): no report, every result the contiguous
    call's, nothing outside the sections written, the refused call writing nothing."""
    from test_native_programs import pkg_config

    program = tmp_path / "sections_asan"
    source = tmp_path / "sections_asan.f90"
    source.write_text(SECTIONS_UNDER_ASAN)
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    built = subprocess.run(["gfortran", "-g", "-O1", "-fsanitize=address,undefined", "-fcheck=all", "-J",
                            str(tmp_path), str(MODULE), str(source), *pkg_config("--libs"), "-o", str(program)],
                           capture_output=True, text=True)
    if built.returncode != 0 and ("asan" in built.stderr or "ubsan" in built.stderr):
        pytest.skip("no AddressSanitizer runtime for gfortran: " + built.stderr[-300:])
    assert built.returncode == 0, built.stderr[-3000:]
    lines = run_host(program, default_model(), timeout=300,
                     env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "halt_on_error=1"})
    assert lines == ["wrong 0"], lines


# --- many small calls from many threads on one handle ----------------------------------------------

# 3,000 moving cells with crossings, applied once in one call, then by 8 threads on one handle, each
# over its slab in calls of 1 to 7 cells (a host whose cells arrive a few at a time: a patch's
# boundary, an adaptive mesh's leaves): the one call's bits, statuses and diagnostics.
SMALL_CALLS = r"""
#include <dodo/dodo.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 3000, THREADS = 8 };
static double F[N][6][4], U[N][4], A[N][6][4], B[N][6][4], GA[N], GB[N], SA[N], SB[N];
static uint32_t stA[N], stB[N];
static dodo_closure* closure;
static int failures[THREADS];

static void* slab(void* argument) {
  const long t = (long)argument;
  int c = (int)(N * t / THREADS), k = 1 + (int)t % 7;
  const int end = (int)(N * (t + 1) / THREADS);
  while (c < end) {
    const int n = c + k > end ? end - c : k;
    if (dodo_apply_diagnostics(closure, (size_t)n, &F[c][0][0], NULL, &U[c][0], NULL, &B[c][0][0], NULL, stB + c,
                               GB + c, SB + c))
      failures[t]++;
    c += n;
    k = k % 7 + 1;
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 4) return 8;
  unsigned seed = 12345;
  for (int c = 0; c < N; ++c) {
    for (int a = 0; a < 6; ++a) {
      double x[4];
      for (int i = 0; i < 4; ++i) {
        seed = seed * 1103515245u + 12345u;
        x[i] = ((seed >> 8) % 2001) / 1000.0 - 1.0;
      }
      const double n = 1.25 + 0.25 * x[0];
      F[c][a][0] = n;
      F[c][a][1] = 0.6 * x[1] * n;
      F[c][a][2] = 0.3 * x[2] * n;
      F[c][a][3] = (a == 1 || a == 4 ? -0.5 : 0.5) * x[3] * n;
    }
    const double v = 0.03 * (c % 11), W = 1 / sqrt(1 - v * v);
    U[c][0] = W;
    U[c][1] = 0.6 * W * v;
    U[c][3] = 0.8 * W * v;
  }
  dodo_options options;
  dodo_options_init(&options);
  options.threads = atoi(argv[2]);
  options.chunk_size = atoi(argv[3]);
  char message[1024] = "";
  if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message)) {
    printf("create: %s\n", message);
    return 0;
  }
  if (dodo_apply_diagnostics(closure, N, &F[0][0][0], NULL, &U[0][0], NULL, &A[0][0][0], NULL, stA, GA, SA)) return 9;
  pthread_t threads[THREADS];
  for (long t = 0; t < THREADS; ++t) pthread_create(&threads[t], NULL, slab, (void*)t);
  int failed = 0;
  for (int t = 0; t < THREADS; ++t) pthread_join(threads[t], NULL), failed += failures[t];
  int differ = 0, learned = 0;
  for (int c = 0; c < N; ++c) {
    differ += memcmp(A[c], B[c], sizeof A[c]) != 0 || stA[c] != stB[c] || memcmp(&GA[c], &GB[c], sizeof GA[c]) != 0 ||
              memcmp(&SA[c], &SB[c], sizeof SA[c]) != 0;
    learned += stA[c] == DODO_CELL_OK;
  }
  printf("failed %d differ %d learned %d\n", failed, differ, learned);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("evaluator, workers, chunk", [("", 0, 1024), ("", 3, 3), ("onnxruntime", 2, 1024)])
def test_small_calls_from_many_threads_give_one_calls_bits(tmp_path, evaluator, workers, chunk):
    """8 threads on one handle, each applying its slab in calls of 1 to 7 cells (the network's row
    groups, four rows a pass in the AVX-512 kernel, and ONNX Runtime's batches then hold 1 to 7
    rows), against one call of all 3,000 cells: the same bits, statuses, growth rates and
    uncertainties (a probe that held: it passes before and after this round's changes)."""
    program = compile_host(tmp_path, "small_calls", SMALL_CALLS)
    lines = run_host(program, default_model(), str(workers), str(chunk), timeout=600,
                     env={"DODO_NETWORK_EVALUATOR": evaluator} if evaluator else None)
    failed, differ, learned = map(int, lines[0].split()[1::2])
    assert (failed, differ) == (0, 0), lines
    assert learned > 2500, lines  # the network's cells, not stable ones


# --- a relative model path after the working directory was removed --------------------------------

REMOVED_DIRECTORY = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char** argv) {
  if (argc != 3 || chdir(argv[1]) != 0 || rmdir(argv[1]) != 0) return 8;
  dodo_closure* closure = NULL;
  char message[1024] = "";
  const dodo_status status = dodo_closure_create(argv[2], NULL, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name(status), message);
  return 0;
}
"""


def test_a_relative_model_path_after_the_working_directory_was_removed_says_so(tmp_path):
    """A host whose working directory was removed (a job's scratch directory cleaned under it)
    creating a closure from a relative path. Before: 'model file "m.onnx" does not exist', true
    but not naming the cause (round forty-one's open item). Now the cause and the remedy are
    added, in Python's words; an absolute path is unchanged."""
    program = compile_host(tmp_path, "removed_directory", REMOVED_DIRECTORY)
    for path in ["m.onnx", "models/m.onnx"]:
        work = tmp_path / "work"
        work.mkdir()
        name, message = run_host(program, str(work), path, timeout=120)[0].split("|", 1)
        assert name == "DODO_ERROR_FILE", message
        assert message.startswith(f'model file "{path}" does not exist (the current directory was removed'), message
        assert "give an absolute path, or chdir into the directory again" in message, message
    work = tmp_path / "work"
    work.mkdir()
    name, message = run_host(program, str(work), str(tmp_path / "absent.onnx"), timeout=120)[0].split("|", 1)
    assert message == f'model file "{tmp_path / "absent.onnx"}" does not exist', message
