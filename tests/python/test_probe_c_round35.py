"""Outside probe of the C interface, round thirty-five (docs/reliability_cpp.md, "Round
thirty-five"), as the developer of a transport code on a cluster (MPI ranks, OpenMP threads):
a call of libdodo made by a thread already inside one (a signal handler that interrupted a call,
a host's pthread_atfork handler run inside libdodo's own) is refused at once instead of waiting
for ever for a lock its own thread holds; a CUDA device number beyond the runtime's range is named
as the host wrote it. Held without a change: OpenMP threads sharing a handle with workers of its
own, and making their own, from C and from the Fortran module (-fopenmp), every example built with
-fopenmp, ranks loading one package by path at once, a package whose directory vanished after load."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from capi_host import FORTRAN_MODULE, compile_fortran, compile_host, default_model, run_host
from native_build import PATHS, REQUIRES_C_API, run

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "cpp/include"
LIBDODO = Path(PATHS["lib_dir"]) / "libdodo.so"

pytestmark = REQUIRES_C_API

REFUSAL = "already inside a libdodo call"


def _pkg_config(*arguments: str) -> list[str]:
    from test_native_programs import pkg_config

    return pkg_config(*arguments)


# A SIGSEGV handler that runs inside dodo_apply on the caller's thread (threads 0): a page in the
# middle of F_init is PROT_NONE, so the library's own read of it raises the fault. The handler calls
# libdodo (every kind of call), then opens the page, and the interrupted call goes on.
NESTED_HOST = r"""
#define _GNU_SOURCE
#include <dodo/dodo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { N = 200, M = 8 };
static dodo_closure* closure;
static char* page;
static long page_size;
static double G[M][6][4], G_out[M][6][4];
static int faults, nested_apply = -1, nested_counters = -1, nested_self_test = -1, nested_create = -1;
static int nested_has_model = -1;
static long nested_metadata = 0;
static dodo_closure* nested_made = (dodo_closure*)1;
static char nested_text[1024], nested_create_text[1024];
static size_t nested_length;

static void on_fault(int sig, siginfo_t* info, void* context) {
  (void)sig; (void)info; (void)context;
  if (faults++ == 0) {
    dodo_counters counters;
    char value[64];
    dodo_options options;
    dodo_options_init(&options);
    nested_apply = dodo_apply(closure, M, &G[0][0][0], NULL, NULL, NULL, &G_out[0][0][0], NULL, NULL);
    nested_length = dodo_last_error(closure, nested_text, sizeof nested_text);
    nested_counters = dodo_get_counters(closure, &counters);
    nested_self_test = dodo_self_test(closure, NULL);
    nested_has_model = dodo_has_model(closure);
    nested_metadata = dodo_get_metadata(closure, "dodo.head", value, sizeof value);
    nested_create = dodo_closure_create(DODO_BOX3D_ONLY, &options, &nested_made, nested_create_text,
                                        sizeof nested_create_text);
    dodo_closure_destroy(closure);  /* refused: the handle stays live for the interrupted call */
  }
  mprotect(page, (size_t)page_size, PROT_READ | PROT_WRITE);
}

static void fill(double* F, int n, double step) {
  for (int c = 0; c < n; ++c)
    for (int a = 0; a < 6; ++a) {
      double* f = F + 24 * c + 4 * a;
      f[0] = 1 + 0.1 * a + step * c;
      f[1] = 0.02 * ((c + a) % 5);
      f[2] = 0;
      f[3] = a == 3 ? -0.4 : 0.3;
    }
}

int main(int argc, char** argv) {
  (void)argc;
  alarm(100);
  dodo_options options;
  dodo_options_init(&options);
  options.chunk_size = 16;
  char message[1024];
  if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {
    printf("create: %s\n", message);
    return 1;
  }
  page_size = sysconf(_SC_PAGESIZE);
  const size_t bytes = (size_t)N * 24 * sizeof(double);
  const size_t total = (bytes / (size_t)page_size + 3) * (size_t)page_size;
  char* base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return 2;
  double* F = (double*)base;
  fill(F, N, 0.01);
  fill(&G[0][0][0], M, 0.02);
  double* expected = malloc(bytes);
  double* out = malloc(bytes);
  double G_expected[M][6][4];
  if (dodo_apply(closure, N, F, NULL, NULL, NULL, expected, NULL, NULL) != DODO_OK) return 3;
  if (dodo_apply(closure, M, &G[0][0][0], NULL, NULL, NULL, &G_expected[0][0][0], NULL, NULL) != DODO_OK) return 3;

  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &action, NULL);
  page = base + 2 * page_size;
  mprotect(page, (size_t)page_size, PROT_NONE);
  dodo_status outer = dodo_apply(closure, N, F, NULL, NULL, NULL, out, NULL, NULL);

  printf("faults %d\n", faults);
  printf("outer %d equal %d\n", outer, memcmp(out, expected, bytes) == 0);
  printf("nested apply %d counters %d self_test %d has_model %d metadata %ld\n", nested_apply, nested_counters,
         nested_self_test, nested_has_model, nested_metadata);
  printf("nested create %d handle_null %d\n", nested_create, nested_made == NULL);
  printf("nested text %zu %s\n", nested_length, nested_text);
  printf("nested create text %s\n", nested_create_text);
  /* After the handler: the same thread's calls work again, the handle was not destroyed. */
  memset(G_out, 0, sizeof G_out);
  dodo_status after = dodo_apply(closure, M, &G[0][0][0], NULL, NULL, NULL, &G_out[0][0][0], NULL, NULL);
  printf("after %d equal %d\n", after, memcmp(G_out, G_expected, sizeof G_out) == 0);
  char thread_text[64] = "x";
  printf("after text [%zu]\n", dodo_last_error(NULL, thread_text, sizeof thread_text));
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_a_call_from_a_signal_handler_inside_a_call_is_refused_and_the_call_goes_on(tmp_path, model):
    """A host's signal handler that runs while its thread is inside dodo_apply (a fault handler
    here, made certain by a PROT_NONE page in F_init) calls libdodo. Each call is refused with
    DODO_ERROR_INVALID_ARGUMENT (has_model 0, get_metadata -1, create: status and error_buffer,
    destroy: nothing), dodo_last_error read in the handler says why; the interrupted call ends
    with the bits it gives without the handler, and the thread's calls work after it. Before: the
    handler's calls ran (status 0) or waited for ever for a lock the thread held (the next test)."""
    program = compile_host(tmp_path, "nested", NESTED_HOST)
    path = default_model() if model == "default" else "box3d"
    lines = run_host(program, path, timeout=120)
    text = "\n".join(lines)
    assert lines[0] == "faults 1", text
    assert lines[1] == "outer 0 equal 1", text
    has_model = 0
    assert lines[2] == f"nested apply 1 counters 1 self_test 1 has_model {has_model} metadata -1", text
    assert lines[3] == "nested create 1 handle_null 1", text
    assert REFUSAL in lines[4] and "async-signal-safe" in lines[4], text
    length = int(lines[4].split()[2])
    assert length == len(lines[4].split(" ", 3)[3].encode()), text
    assert REFUSAL in lines[5] and "signal handler" in lines[5], text
    assert lines[6] == "after 0 equal 1", text
    assert lines[7] == "after text [0]", text


# A profiler's or checkpoint timer's SIGALRM every 37 us whose handler applies the closure to one
# cell, while the host's time loop applies it to four: the handler often lands inside a call.
TIMER_HOST = r"""
#define _GNU_SOURCE
#include <dodo/dodo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static dodo_closure* closure;
static double G[1][6][4], G_out[1][6][4];
static volatile long handled, refused, failed;

static void on_timer(int sig) {
  (void)sig;
  dodo_status status = dodo_apply(closure, 1, &G[0][0][0], NULL, NULL, NULL, &G_out[0][0][0], NULL, NULL);
  handled++;
  if (status == DODO_ERROR_INVALID_ARGUMENT) refused++;
  else if (status != DODO_OK) failed++;
}

int main(int argc, char** argv) {
  (void)argc;
  long calls = atol(argv[2]);
  dodo_options options;
  dodo_options_init(&options);
  char message[512];
  if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {
    printf("create: %s\n", message);
    return 1;
  }
  double F[4][6][4], out[4][6][4], first[4][6][4];
  for (int a = 0; a < 6; ++a) {
    G[0][a][0] = 1 + 0.1 * a;
    G[0][a][1] = G[0][a][2] = 0;
    G[0][a][3] = a == 3 ? -0.4 : 0.3;
  }
  for (int c = 0; c < 4; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.01 * c;
      F[c][a][1] = 0.01 * c;
      F[c][a][2] = 0;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  if (dodo_apply(closure, 4, &F[0][0][0], NULL, NULL, NULL, &first[0][0][0], NULL, NULL) != DODO_OK) return 2;
  signal(SIGALRM, on_timer);
  struct itimerval every = {{0, 37}, {0, 37}};
  setitimer(ITIMER_REAL, &every, NULL);
  long differ = 0, errors = 0;
  for (long k = 0; k < calls; ++k) {
    if (dodo_apply(closure, 4, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) != DODO_OK) errors++;
    else if (memcmp(out, first, sizeof out) != 0) differ++;
  }
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  printf("calls %ld errors %ld differ %ld handled %ld failed %ld\n", calls, errors, differ, handled, failed);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_a_timer_signal_whose_handler_calls_libdodo_never_hangs_the_host(tmp_path, model):
    """Before: within a second the host hung for ever, its only thread in futex_wait on libdodo's
    live-handle lock inside the handler, the interrupted dodo_apply (which held it) below it
    (gdb). Now the handler's calls that land inside a call are refused, the others run; every one
    of the time loop's calls succeeds with the same bits. The timeout is a hang guard only."""
    program = compile_host(tmp_path, "timer", TIMER_HOST)
    path = default_model() if model == "default" else "box3d"
    lines = run_host(program, path, "30000", timeout=240)
    words = lines[-1].split()
    values = dict(zip(words[0::2], map(int, words[1::2])))
    assert values["calls"] == 30000 and values["errors"] == 0 and values["differ"] == 0, lines
    assert values["failed"] == 0, lines  # each handler call ran (0) or was refused (1), nothing else


# A host whose pthread_atfork handlers call libdodo: in prepare (the counters), in the parent and
# in the child (an apply on the inherited handle). LINKED: libdodo is linked, so its handlers are
# registered before main and the host's run outside them; otherwise the host registers its
# handlers and then dlopen()s libdodo (as Python's ctypes, Julia or a plug-in loader does), and the
# host's prepare, parent and child handlers run while libdodo's fork handlers hold its locks.
ATFORK_HOST = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dodo/dodo.h>

#ifdef LINKED
#define D(name) name
#else
static dodo_status (*p_dodo_closure_create)(const char*, const dodo_options*, dodo_closure**, char*, size_t);
static dodo_status (*p_dodo_apply)(dodo_closure*, size_t, const double*, const ptrdiff_t*, const double*,
                                   const ptrdiff_t*, double*, const ptrdiff_t*, uint32_t*);
static dodo_status (*p_dodo_get_counters)(const dodo_closure*, dodo_counters*);
static size_t (*p_dodo_last_error)(const dodo_closure*, char*, size_t);
static void (*p_dodo_options_init_sized)(dodo_options*, size_t);
#define D(name) p_##name
#endif

static dodo_closure* closure;
static double F[2][6][4], out[2][6][4];
static int prepare_status = -1, parent_status = -1, child_status = -1;
static char prepare_text[1024];

static void prepare(void) {
  dodo_counters counters;
  prepare_status = D(dodo_get_counters)(closure, &counters);
  D(dodo_last_error)(closure, prepare_text, sizeof prepare_text);
}
static void parent(void) {
  parent_status = D(dodo_apply)(closure, 2, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
}
static void child(void) {
  child_status = D(dodo_apply)(closure, 2, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
}

int main(int argc, char** argv) {
  (void)argc;
  alarm(100);
  pthread_atfork(prepare, parent, child);
#ifndef LINKED
  void* library = dlopen(argv[2], RTLD_NOW);
  if (!library) {
    printf("dlopen: %s\n", dlerror());
    return 1;
  }
  *(void**)&p_dodo_closure_create = dlsym(library, "dodo_closure_create");
  *(void**)&p_dodo_apply = dlsym(library, "dodo_apply");
  *(void**)&p_dodo_get_counters = dlsym(library, "dodo_get_counters");
  *(void**)&p_dodo_last_error = dlsym(library, "dodo_last_error");
  *(void**)&p_dodo_options_init_sized = dlsym(library, "dodo_options_init_sized");
#endif
  dodo_options options;
  D(dodo_options_init_sized)(&options, sizeof options);
  char message[512];
  if (D(dodo_closure_create)(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {
    printf("create: %s\n", message);
    return 1;
  }
  for (int c = 0; c < 2; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.01 * c;
      F[c][a][1] = F[c][a][2] = 0;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  pid_t pid = fork();
  if (pid == 0) {
    dodo_status again = D(dodo_apply)(closure, 2, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
    printf("child handler %d after %d\n", child_status, again);
    fflush(stdout);
    _exit(again == DODO_OK ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  printf("child exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status));
  printf("prepare %d parent %d\n", prepare_status, parent_status);
  printf("prepare text %s\n", prepare_text);
  dodo_status after = D(dodo_apply)(closure, 2, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
  printf("parent after %d\n", after);
  return 0;
}
"""


def _atfork_host(tmp_path: Path, linked: bool) -> Path:
    source = tmp_path / "atfork.c"
    source.write_text(ATFORK_HOST)
    program = tmp_path / ("atfork_linked" if linked else "atfork_dlopen")
    libraries = _pkg_config("--cflags", "--libs") if linked else ["-ldl"]
    run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", *(["-DLINKED"] if linked else []), f"-I{INCLUDE}",
         str(source), *libraries, "-pthread", "-o", str(program)])
    return program


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_atfork_handlers_of_a_host_that_dlopens_libdodo_are_refused_not_left_waiting(tmp_path, model):
    """The host registers its fork handlers, then dlopen()s libdodo: its prepare handler runs after
    libdodo's (which holds the live-handle lock), its parent and child handlers before libdodo's
    release it. Before: the prepare handler's dodo_get_counters waited for ever for that lock, the
    fork never happened. Now each of the three is refused with the reason, the fork goes on, and
    the child's and parent's own calls after fork() work."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    program = _atfork_host(tmp_path, linked=False)
    path = default_model() if model == "default" else "box3d"
    lines = run_host(program, path, str(LIBDODO), timeout=120)
    text = "\n".join(lines)
    assert "child handler 1 after 0" in lines, text
    assert "child exit 0" in lines and "prepare 1 parent 1" in lines and "parent after 0" in lines, text
    prepare_text = next(line for line in lines if line.startswith("prepare text "))
    assert REFUSAL in prepare_text and "pthread_atfork" in prepare_text, text


def test_atfork_handlers_of_a_host_linked_to_libdodo_call_it(tmp_path):
    """Linked, libdodo's fork handlers are registered before main, so the host's run outside them
    (prepare first, child and parent last) and their calls succeed: the refusal above is only for
    a call that would have waited for ever."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    program = _atfork_host(tmp_path, linked=True)
    lines = run_host(program, default_model(), timeout=120)
    assert "child handler 0 after 0" in lines and "child exit 0" in lines, lines
    assert "prepare 0 parent 0" in lines and "prepare text" in lines and "parent after 0" in lines, lines


def test_a_cuda_device_number_beyond_the_runtimes_range_is_named_as_the_host_wrote_it(tmp_path):
    """C device_id 1000000 or INT_MAX (a Fortran cuda_device beyond the C int range arrives as
    INT_MAX) reached the runtime's parser of "cuda:N" (6 digits), which refused 'unknown device
    "cuda:2147483647" (known: "cpu", "cuda", "cuda:N")', a string no host wrote. Now the option is
    named, with its range; 999999 passes the check and meets the CPU library's missing CUDA
    provider (DODO_ERROR_ONNXRUNTIME_UNAVAILABLE), which is what this machine has."""
    from libdodo_ctypes import create_closure, load_libdodo

    lib = load_libdodo()
    model = default_model().encode()
    for device_id in (1000000, 2**31 - 1, -1):
        status, message, handle = create_closure(lib, model, device=1, device_id=device_id)
        assert status == 1 and not handle.value, (device_id, status, message)
        assert "device_id must be >= 0 and at most 999999" in message and f"got {device_id}" in message, message
        assert "unknown device" not in message, message
    status, message, handle = create_closure(lib, model, device=1, device_id=999999)
    assert status == 5 and "cuda:999999" in message and "no CUDA execution provider" in message, message

    source = textwrap.dedent("""\
        program cuda_device_range
          use dodo
          implicit none
          type(dodo_closure) :: closure
          integer :: stat
          character(len=400) :: message
          character(len=4096) :: model
          call get_command_argument(1, model)
          call dodo_create(closure, model, cuda_device=huge(0), stat=stat, errmsg=message)
          print '(i0,1x,a)', stat, trim(message)
          call dodo_create(closure, model, cuda_device=0, stat=stat, errmsg=message)
          print '(i0,1x,a)', stat, trim(message)
        end program cuda_device_range
        """)
    program = compile_fortran(tmp_path, "cuda_device_range", source)
    lines = run_host(program, default_model(), timeout=120)
    assert lines[0].startswith("1 ") and "cuda_device" in lines[0] and "at most 999999" in lines[0], lines
    assert lines[1].startswith("5 ") and "no CUDA execution provider" in lines[1], lines


# --- held without a change ----------------------------------------------------------------------

# OpenMP threads each applying the closure to the whole grid: on one handle with workers of its own
# (threads 3 > the cores here), and on a handle each made inside the region (threads 2); every
# result equal to one single-threaded call's bits. Under OMP_WAIT_POLICY=active (spinning OpenMP
# threads beside Dodo's workers) and OMP_PROC_BIND=close (workers bound with their creating thread).
OPENMP_HOST = r"""
#include <dodo/dodo.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
  (void)argc;
  const int n = 777;
  double* F = malloc(sizeof(double) * 24 * n);
  double* u = malloc(sizeof(double) * 4 * n);
  for (int c = 0; c < n; ++c) {
    double v = 0.3 * sin(c), W = 1 / sqrt(1 - v * v);
    u[4 * c] = W; u[4 * c + 1] = W * v; u[4 * c + 2] = 0; u[4 * c + 3] = 0;
    for (int a = 0; a < 6; ++a) {
      double* f = F + 24 * c + 4 * a;
      f[0] = 1 + 0.1 * a + 0.001 * c;
      f[1] = 0.05 * cos(c + a);
      f[2] = c % 3 == 0 ? 0.3 : 0;  /* every third cell stable (all along +y) */
      f[3] = c % 3 == 0 ? 0 : (a == 3 ? -0.4 : 0.3);
    }
  }
  dodo_options options;
  dodo_options_init(&options);
  char message[512];
  dodo_closure *single, *shared;
  if (dodo_closure_create(argv[1], &options, &single, message, sizeof message) != DODO_OK) {
    printf("create: %s\n", message);
    return 1;
  }
  double* expected = malloc(sizeof(double) * 24 * n);
  uint32_t* expected_status = malloc(4 * (size_t)n);
  if (dodo_apply(single, (size_t)n, F, NULL, u, NULL, expected, NULL, expected_status) != DODO_OK) return 2;
  options.threads = 3;
  options.chunk_size = 37;
  if (dodo_closure_create(argv[1], &options, &shared, message, sizeof message) != DODO_OK) return 3;
  int bad = 0, calls = 0;
#pragma omp parallel num_threads(4) reduction(+ : bad, calls)
  {
    double* out = malloc(sizeof(double) * 24 * n);
    uint32_t* status = malloc(4 * (size_t)n);
    dodo_options mine;
    dodo_options_init(&mine);
    mine.threads = 2;
    mine.chunk_size = 61;
    dodo_closure* own = NULL;
    char text[512];
    if (dodo_closure_create(argv[1], &mine, &own, text, sizeof text) != DODO_OK) bad++;
    for (int k = 0; k < 4 && own; ++k) {
      dodo_closure* handle = k % 2 ? own : shared;
      memset(out, 0, sizeof(double) * 24 * n);
      if (dodo_apply(handle, (size_t)n, F, NULL, u, NULL, out, NULL, status) != DODO_OK ||
          memcmp(out, expected, sizeof(double) * 24 * n) != 0 || memcmp(status, expected_status, 4 * (size_t)n) != 0)
        bad++;
      calls++;
    }
    dodo_closure_destroy(own);
    free(out);
    free(status);
  }
  dodo_counters counters;
  dodo_get_counters(shared, &counters);
  printf("calls %d bad %d shared cells %llu\n", calls, bad, (unsigned long long)counters.cells);
  dodo_closure_destroy(shared);
  dodo_closure_destroy(single);
  return 0;
}
"""


@pytest.mark.parametrize("environment", [{"OMP_WAIT_POLICY": "active"}, {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}],
                         ids=["spinning", "bound"])
def test_openmp_threads_on_a_handle_with_workers_and_on_their_own_give_one_calls_bits(tmp_path, environment):
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    source = tmp_path / "openmp.c"
    source.write_text(OPENMP_HOST)
    program = tmp_path / "openmp"
    run(["gcc", "-std=c11", "-O2", "-fopenmp", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(source),
         *_pkg_config("--cflags", "--libs"), "-lm", "-o", str(program)])
    lines = run_host(program, default_model(), timeout=280, env=environment)
    assert lines[-1] == f"calls 16 bad 0 shared cells {8 * 777}", lines


FORTRAN_OPENMP_HOST = textwrap.dedent("""\
    program fortran_openmp
      use dodo
      use iso_c_binding, only: c_double, c_int32_t
      use omp_lib
      implicit none
      integer, parameter :: n = 301
      type(dodo_closure) :: shared, single
      real(c_double) :: F(4, 6, n), expected(4, 6, n)
      integer(c_int32_t) :: expected_status(n)
      integer :: c, a, bad, stat
      character(len=4096) :: model
      character(len=300) :: message
      call get_command_argument(1, model)
      F = 0
      do c = 1, n
        do a = 1, 6
          F(1, a, c) = 1 + 0.1d0 * a + 0.002d0 * c
          F(2, a, c) = 0.03d0 * mod(c + a, 4)
          F(4, a, c) = merge(-0.4d0, 0.3d0, a == 4)
        end do
      end do
      call dodo_create(single, model)
      call dodo_apply(single, F, expected, cell_status=expected_status)
      call dodo_create(shared, model, threads=2, chunk_size=29)
      bad = 0
      !$omp parallel num_threads(4) reduction(+:bad) private(stat, message)
      block
        type(dodo_closure) :: own
        real(c_double) :: out(4, 6, n)
        integer(c_int32_t) :: status(n)
        integer :: k
        call dodo_create(own, model, threads=2, chunk_size=17, stat=stat, errmsg=message)
        if (stat /= DODO_OK) bad = bad + 1
        do k = 1, 4
          out = 0
          if (mod(k, 2) == 0) then
            call dodo_apply(own, F, out, cell_status=status, stat=stat, errmsg=message)
          else
            call dodo_apply(shared, F, out, cell_status=status, stat=stat, errmsg=message)
          end if
          if (stat /= DODO_OK .or. any(out /= expected) .or. any(status /= expected_status)) bad = bad + 1
        end do
        ! a refused call: this thread's own message
        call dodo_apply(own, F, out(:, :, 1:n - 1), stat=stat, errmsg=message)
        if (stat /= DODO_ERROR_INVALID_ARGUMENT .or. index(message, "F_pred") == 0) bad = bad + 1
        call dodo_destroy(own)
      end block
      !$omp end parallel
      print '(a,i0)', "bad ", bad
      call dodo_destroy(shared)
      call dodo_destroy(single)
    end program fortran_openmp
    """)


def test_the_fortran_module_from_openmp_threads_gives_one_calls_bits(tmp_path):
    """The module built with -fopenmp (its locals automatic, no SAVE'd state): 4 OpenMP threads,
    each with its own handle (2 workers) and sharing one (2 workers), every result equal to one
    single-threaded call's bits and statuses; each thread's refused call has its own errmsg."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    source = tmp_path / "fortran_openmp.f90"
    source.write_text(FORTRAN_OPENMP_HOST)
    program = tmp_path / "fortran_openmp"
    run(["gfortran", "-std=f2018", "-fopenmp", "-Wall", "-J", str(tmp_path), str(FORTRAN_MODULE), str(source),
         *_pkg_config("--libs"), "-o", str(program)])
    lines = run_host(program, default_model(), timeout=280)
    assert lines == ["bad 0"], lines


EXAMPLES = {
    "grid_closure_c": ("gcc", ["-std=c99", "-pedantic"], "examples/c/grid_closure.c"),
    "grid_closure_cpp": ("g++", ["-std=c++17", "-pedantic"], "examples/cpp/grid_closure.cpp"),
    "grid_closure_f90": ("gfortran", ["-std=f2018"], "examples/fortran/grid_closure.f90"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_grid_example_built_with_openmp_gives_the_plain_builds_output(tmp_path, name):
    """Each example compiled with and without -fopenmp (an OpenMP code's flags): the same output
    lines, with the default model and Box3D alone. The MPI examples are test_mpi_examples.py's
    (built with -fopenmp in this round by hand: the same lines)."""
    compiler, flags, example = EXAMPLES[name]
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    outputs = []
    for openmp in ([], ["-fopenmp"]):
        program = tmp_path / (name + ("_omp" if openmp else ""))
        if compiler == "gfortran":
            module_dir = tmp_path / ("mod_omp" if openmp else "mod")
            module_dir.mkdir()
            command = [compiler, *flags, *openmp, "-Wall", "-Werror", "-J", str(module_dir), str(FORTRAN_MODULE),
                       str(ROOT / example), *_pkg_config("--libs"), "-o", str(program)]
        else:
            command = [compiler, *flags, *openmp, "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(ROOT / example),
                       *_pkg_config("--cflags", "--libs"), "-lm", "-pthread", "-o", str(program)]
        run(command)
        outputs.append([run_host(program, default_model(), timeout=280), run_host(program, timeout=280)])
    assert outputs[0] == outputs[1], outputs


MPI_LOAD_HOST = r"""
#include <mpi.h>
#include <dodo/dodo.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { N = 257 };
static double F[N][6][4], out[N][6][4], gathered[2][N][6][4];

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int c = 0; c < N; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.003 * c;
      F[c][a][1] = 0.02 * (c % 7);
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  int failures = 0;
  for (int k = 0; k < 4; ++k) {
    MPI_Barrier(MPI_COMM_WORLD);  /* every rank opens, reads and checks the same file at once */
    dodo_options options;
    dodo_options_init(&options);
    options.threads = 2;
    char message[512];
    dodo_closure* closure;
    if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {
      printf("rank %d: %s\n", rank, message);
      failures++;
      continue;
    }
    if (dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) != DODO_OK) failures++;
    dodo_closure_destroy(closure);
  }
  MPI_Gather(out, N * 24, MPI_DOUBLE, gathered, N * 24, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  int total = 0;
  MPI_Reduce(&failures, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0) printf("ranks %d failures %d equal %d\n", size, total, memcmp(gathered[0], gathered[1], sizeof gathered[0]) == 0);
  MPI_Finalize();
  return 0;
}
"""


def test_ranks_loading_one_package_by_path_at_once_get_the_same_bits(tmp_path):
    """2 ranks (--oversubscribe), each creating a closure from the same file at the same moment
    (after a barrier), 4 times, 2 workers each: no failure, the ranks' results equal bit for bit."""
    from mpi_helpers import mpi_environment, mpirun, skip_without

    compiler = shutil.which("mpicc")
    if not compiler:
        skip_without("no MPI C compiler wrapper (apt-get install libopenmpi-dev)")
    source = tmp_path / "mpi_load.c"
    source.write_text(MPI_LOAD_HOST)
    program = tmp_path / "mpi_load"
    run([compiler, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(source),
         *_pkg_config("--cflags", "--libs"), "-o", str(program)])
    try:
        result = subprocess.run(mpirun(2) + [str(program), default_model()], capture_output=True, text=True,
                                timeout=240, env=mpi_environment(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("the two ranks did not finish within 240 s (hang)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ranks 2 failures 0 equal 1" in result.stdout, result.stdout + result.stderr


VANISHED_HOST = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  (void)argc;
  double F[3][6][4] = {{{0}}}, before[3][6][4], after[3][6][4];
  for (int c = 0; c < 3; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.01 * c;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  char message[512];
  dodo_closure* closure;
  if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) return 1;
  if (dodo_apply(closure, 3, &F[0][0][0], NULL, NULL, NULL, &before[0][0][0], NULL, NULL) != DODO_OK) return 2;
  if (unlink(argv[1]) != 0 || rmdir(argv[2]) != 0) return 3;  /* the package and its directory vanish */
  dodo_status applied = dodo_apply(closure, 3, &F[0][0][0], NULL, NULL, NULL, &after[0][0][0], NULL, NULL);
  double worst = -1;
  dodo_status tested = dodo_self_test(closure, &worst);
  char head[64] = "";
  long length = dodo_get_metadata(closure, "dodo.head", head, sizeof head);
  printf("apply %d equal %d self_test %d worst_ok %d head %ld %s\n", applied, memcmp(before, after, sizeof F) == 0,
         tested, worst >= 0 && worst < 1e-3, length, head);
  dodo_closure* again = NULL;
  dodo_status created = dodo_closure_create(argv[1], &options, &again, message, sizeof message);
  printf("again %d %s\n", created, message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


def test_a_handle_whose_package_and_directory_vanished_after_load_keeps_working(tmp_path):
    """A scratch directory's package removed with its directory after create (a job's cleanup, a
    purged scratch file system): the handle applies with the same bits, passes its self-test and
    answers its metadata (the runtime holds the package in memory and writes nothing beside it);
    a new create names the missing file (DODO_ERROR_FILE)."""
    program = compile_host(tmp_path, "vanished", VANISHED_HOST)
    scratch = tmp_path / "scratch dir"
    scratch.mkdir()
    package = scratch / "model.onnx"
    shutil.copyfile(default_model(), package)
    lines = run_host(program, str(package), str(scratch), timeout=120)
    assert lines[0].startswith("apply 0 equal 1 self_test 0 worst_ok 1 head "), lines
    assert lines[1] == f'again 2 model file "{package}" does not exist', lines


FORTRAN_PRIVATE_HOST = textwrap.dedent("""\
    program fortran_private
      use dodo
      use iso_c_binding, only: c_double
      implicit none
      type(dodo_closure) :: closure
      real(c_double) :: F(4, 6, 3), G(4, 6, 3), expected(4, 6, 3)
      integer :: stat
      character(len=300) :: message
      character(len=4096) :: model
      call get_command_argument(1, model)
      F = 0
      F(1, :, :) = 1
      F(4, :, :) = 0.3d0
      F(4, 4, :) = -0.4d0
      F(1, 2, 3) = 1.2d0
      call dodo_create(closure, model, threads=2)
      call dodo_apply(closure, F, expected)
      !$omp parallel num_threads(3) private(closure, stat, message, G)
      G = -1
      message = ""
      call dodo_apply(closure, F, G, stat=stat, errmsg=message)
      !$omp critical
      print '(a,i0,1x,l1,1x,a)', "private ", stat, all(G == -1), trim(message)
      !$omp end critical
      !$omp end parallel
      !$omp parallel num_threads(3) firstprivate(closure) private(stat, message, G)
      call dodo_apply(closure, F, G, stat=stat, errmsg=message)
      !$omp critical
      print '(a,i0,1x,l1)', "firstprivate ", stat, all(G == expected)
      !$omp end critical
      !$omp end parallel
      call dodo_destroy(closure)
    end program fortran_private
    """)


def test_a_fortran_closure_private_to_openmp_threads_is_refused_and_firstprivate_shares_it(tmp_path):
    """docs/runtime.md's Fortran section, "OpenMP": a `private(closure)` copy holds no closure
    (gfortran leaves some threads' copies undefined): each call is refused, stat 1 with one of the
    two messages, nothing written, never a crash; a `firstprivate` copy is the same handle and gives
    the single call's bits."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    source = tmp_path / "fortran_private.f90"
    source.write_text(FORTRAN_PRIVATE_HOST)
    program = tmp_path / "fortran_private"
    run(["gfortran", "-std=f2018", "-fopenmp", "-J", str(tmp_path), str(FORTRAN_MODULE), str(source),
         *_pkg_config("--libs"), "-o", str(program)])
    for model in (default_model(), "box3d"):
        lines = run_host(program, model, timeout=120)
        private = [line for line in lines if line.startswith("private ")]
        assert len(private) == 3 and lines.count("firstprivate 0 T") == 3, lines
        for line in private:
            assert line.startswith("private 1 T "), lines
            assert ("holds no closure" in line or "closure handle is not live" in line), lines
