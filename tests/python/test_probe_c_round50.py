"""Outside probe of the C, C++ and Fortran interfaces, round fifty (docs/reliability_cpp.md, "Round
fifty"), as the developer of a transport code: host threads of small stacks (an OpenMP code's
OMP_STACKSIZE, a thread pool's pthread_attr_setstacksize) died of SIGSEGV inside libdodo (Box3D's
blocks take some 51 KiB below dodo_apply, ONNX Runtime some 92 KiB); such a call now runs on a stack
of libdodo's own. Also: dodo.boost_to_rest of a finite vector of 2e306 at W = 1e6 gave NaN where its
rest-frame value is 1e300, and a libdodo outside a Python environment advised "pip install
onnxruntime", which cannot reach it."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import dodo
import dodo._closure
from capi_host import compile_host, default_model, run_host
from native_build import PATHS, REQUIRES_C_API, run

pytestmark = REQUIRES_C_API

# argv: stack KiB (0: the default), model ("box3d": Box3D alone), threads, mode.
#   plain: a thread of that stack creates the closure, applies it to 4096 moving cells, self-tests,
#          destroys it; the bits are compared with the main thread's closure.
#   fenv:  the same with the host's floating-point traps (invalid, divide-by-zero, overflow), upward
#          rounding and flush-to-zero / denormals-are-zero (MXCSR) set in the thread; they must be
#          as the host set them after the calls.
#   fiber: the thread runs the calls on a makecontext stack of 256 KiB of the host's own (a
#          coroutine's): libdodo leaves such a call where it is.
SMALL_STACK_HOST = r"""
#define _GNU_SOURCE
#include <fenv.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <xmmintrin.h>
#include <dodo/dodo.h>

enum { N = 4096 };  /* four chunks of the default 1024 cells: the workers take some */
static double F[N][24], P[N][24], Q[N][24], u[N][4];
static const char* model;
static const char* mode;
static int threads;
static int create_status = -1, apply_status = -1, self_status = -1, environment_kept = 1;
static char message[1024] = "";

static void calls(void) {
  dodo_options options;
  dodo_options_init(&options);
  options.threads = threads;
  dodo_closure* closure = NULL;
  create_status = dodo_closure_create(model, &options, &closure, message, sizeof message);
  if (create_status) return;
  apply_status = dodo_apply(closure, N, &F[0][0], NULL, &u[0][0], NULL, &Q[0][0], NULL, NULL);
  double worst = 0;
  self_status = strcmp(model, DODO_BOX3D_ONLY) ? dodo_self_test(closure, &worst) : 0;
  dodo_closure_destroy(closure);
}

static ucontext_t thread_context, fiber_context;
static void fiber(void) { calls(); }

static void* thread(void* argument) {
  (void)argument;
  if (!strcmp(mode, "fenv")) {
    feclearexcept(FE_ALL_EXCEPT);  /* the inexact flag the thread inherited from main's arithmetic */
    feenableexcept(FE_INVALID | FE_DIVBYZERO | FE_OVERFLOW);
    fesetround(FE_UPWARD);
    _mm_setcsr(_mm_getcsr() | 0x8040);
    const unsigned csr = _mm_getcsr();
    calls();
    environment_kept = fegetexcept() == (FE_INVALID | FE_DIVBYZERO | FE_OVERFLOW) && fegetround() == FE_UPWARD &&
                       _mm_getcsr() == csr && !fetestexcept(FE_ALL_EXCEPT);
    fedisableexcept(FE_ALL_EXCEPT);
    fesetround(FE_TONEAREST);
  } else if (!strcmp(mode, "fiber")) {
    static char stack[256 * 1024];
    getcontext(&fiber_context);
    fiber_context.uc_stack.ss_sp = stack;
    fiber_context.uc_stack.ss_size = sizeof stack;
    fiber_context.uc_link = &thread_context;
    makecontext(&fiber_context, fiber, 0);
    swapcontext(&thread_context, &fiber_context);
  } else {
    calls();
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 5) return 9;
  const size_t kib = strtoul(argv[1], NULL, 10);
  model = strcmp(argv[2], "box3d") ? argv[2] : DODO_BOX3D_ONLY;
  threads = atoi(argv[3]);
  mode = argv[4];
  for (int c = 0; c < N; ++c) {
    for (int a = 0; a < 6; ++a) {  /* crossing cells (species 3 against the others), moving at v = 0.3 */
      F[c][4 * a] = 1 + 0.1 * a + 0.001 * c;
      F[c][4 * a + 1] = a == 3 ? -0.4 : 0.3;
      F[c][4 * a + 2] = 0.05 * (c % 7);
    }
    const double v = 0.3, W = 1 / sqrt(1 - v * v);
    u[c][0] = W;
    u[c][1] = W * v;
  }
  dodo_options options;
  dodo_options_init(&options);
  options.threads = threads;
  dodo_closure* closure = NULL;
  if (dodo_closure_create(model, &options, &closure, message, sizeof message)) {
    printf("main thread's create failed: %s\n", message);
    return 2;
  }
  if (dodo_apply(closure, N, &F[0][0], NULL, &u[0][0], NULL, &P[0][0], NULL, NULL)) return 3;
  dodo_closure_destroy(closure);
  pthread_attr_t attributes;
  pthread_attr_init(&attributes);
  if (kib && pthread_attr_setstacksize(&attributes, kib * 1024)) return 4;
  pthread_t t;
  if (pthread_create(&t, &attributes, thread, NULL)) return 5;
  pthread_join(t, NULL);
  printf("create %d apply %d self_test %d same_bits %d environment_kept %d %s\n", create_status, apply_status,
         self_status, create_status == 0 && memcmp(P, Q, sizeof P) == 0, environment_kept, message);
  return 0;
}
"""

PASSED = "create 0 apply 0 self_test 0 same_bits 1 environment_kept 1"


@pytest.fixture(scope="module")
def small_stack_host(tmp_path_factory):
    return compile_host(tmp_path_factory.mktemp("small_stack"), "small_stack", SMALL_STACK_HOST)


def _model(which: str) -> tuple[str, dict]:
    if which == "box3d":
        return "box3d", {}
    return default_model(), {"DODO_NETWORK_EVALUATOR": "onnxruntime" if which == "onnxruntime" else "auto"}


@pytest.mark.parametrize("which, kib, threads", [
    ("box3d", 16, 0), ("box3d", 32, 2), ("box3d", 56, 0),
    ("native", 32, 0), ("native", 64, 2), ("onnxruntime", 32, 0), ("onnxruntime", 96, 0)])
def test_a_host_thread_of_a_small_stack_creates_applies_and_self_tests(small_stack_host, which, kib, threads):
    """A host thread of 16 to 56 KiB of stack (Box3D alone) or 32 to 96 KiB (a model) calling libdodo
    died of SIGSEGV (Box3D's blocks 51 KiB below dodo_apply; ONNX Runtime's session creation and
    evaluation some 92 KiB; dodo.h asked for 64 and 128 KiB). Now the call runs on a stack of 512 KiB
    that libdodo maps for the thread: every status 0, the main thread's bits."""
    model, env = _model(which)
    lines = run_host(small_stack_host, str(kib), model, str(threads), "plain", env=env, timeout=600)
    assert lines[-1].startswith(PASSED), lines


def test_a_small_stack_call_keeps_the_hosts_floating_point_environment(small_stack_host):
    """The calls on libdodo's own stack hold and give back the host's floating-point environment as on
    the thread's (round nineteen): traps on, upward rounding, FTZ/DAZ, all as the host set them after
    the calls, no flag raised, the default environment's bits. Before: SIGSEGV."""
    lines = run_host(small_stack_host, "32", "box3d", "0", "fenv", timeout=600)
    assert lines[-1].startswith(PASSED), lines


def test_calls_on_a_hosts_own_fiber_stack_are_left_there(small_stack_host):
    """Guard: a call made on a stack that is not the thread's (a coroutine's makecontext stack of 256
    KiB inside a thread of 32 KiB) has room libdodo cannot know, and is run where it is (passes before
    and after)."""
    lines = run_host(small_stack_host, "32", "box3d", "0", "fiber", timeout=600)
    assert lines[-1].startswith(PASSED), lines


@pytest.mark.parametrize("which", ["box3d", "native", "onnxruntime"])
def test_libdodos_workers_under_a_small_ulimit_s_apply(small_stack_host, which):
    """`ulimit -s 48` (RLIMIT_STACK of 48 KiB: glibc's default stack for new threads, so for libdodo's
    workers, which std::thread starts with the default): a closure of 2 workers died of SIGSEGV in a
    worker's Box3D block (gdb: block_species_values < classify_block < process_chunk < worker_loop).
    The workers' bodies now run on a stack of their own where theirs is short; the host's own calls
    (its main thread has 48 KiB too) go through the C API's. Every status 0, the bits of a default
    process's closure."""
    import resource
    import subprocess

    model, env = _model(which)

    def small_stack_limit():
        resource.setrlimit(resource.RLIMIT_STACK, (48 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    result = subprocess.run([str(small_stack_host), "0", model, "2", "plain"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **env}, preexec_fn=small_stack_limit)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.stdout.splitlines()[-1].startswith(PASSED), result.stdout


OPENMP_HOST = r"""
program omp_small_stack
  use dodo
  use, intrinsic :: iso_fortran_env, only: real64
  implicit none
  type(dodo_closure) :: closure
  integer, parameter :: n = 64
  real(real64) :: F(4, 6, n), P(4, 6, n), Q(4, 6, n), u(4, n)
  integer :: stat, c, a, wrong
  character(len=300) :: message
  character(len=4096) :: model
  call get_command_argument(1, model)
  do c = 1, n
    do a = 1, 6
      F(:, a, c) = [1.0_real64 + 0.1_real64 * a, merge(-0.4_real64, 0.3_real64, a == 4), 0.01_real64 * mod(c, 5), &
                    0.0_real64]
    end do
    u(:, c) = [1.0_real64, 0.3_real64, 0.0_real64, 0.0_real64] / sqrt(1.0_real64 - 0.09_real64)
  end do
  call dodo_create(closure, trim(model), threads=0, stat=stat, errmsg=message)
  if (stat /= 0) stop 2
  call dodo_apply(closure, F, P, u=u, stat=stat, errmsg=message)
  if (stat /= 0) stop 3
  wrong = 0
  !$omp parallel do private(Q, stat, message) reduction(+:wrong)
  do c = 1, 8
    call dodo_apply(closure, F, Q, u=u, stat=stat, errmsg=message)
    if (stat /= 0 .or. any(Q /= P)) wrong = wrong + 1
  end do
  !$omp end parallel do
  print '(a, i0)', "wrong ", wrong
  call dodo_destroy(closure)
end program
"""


@pytest.mark.parametrize("which", ["box3d", "native"])
def test_an_openmp_host_with_omp_stacksize_32k_applies(tmp_path, which):
    """A Fortran OpenMP host (-ffpe-trap=invalid,zero,overflow -fdefault-real-8, a debug build) whose
    threads have OMP_STACKSIZE=32K, each applying the closure: killed by SIGSEGV in the first
    worker's dodo_apply. Now "wrong 0": every thread gets the serial call's bits."""
    from capi_host import FORTRAN_MODULE
    from test_native_programs import pkg_config

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    source = tmp_path / "omp_small_stack.f90"
    source.write_text(OPENMP_HOST)
    program = tmp_path / "omp_small_stack"
    run(["gfortran", "-std=f2018", "-fopenmp", "-ffpe-trap=invalid,zero,overflow", "-fdefault-real-8", "-J",
         str(tmp_path), str(FORTRAN_MODULE), str(source), *pkg_config("--libs"), "-o", str(program)])
    model, env = _model(which)
    lines = run_host(program, model, env={**env, "OMP_NUM_THREADS": "4", "OMP_STACKSIZE": "32K"}, timeout=600)
    assert lines[-1] == "wrong 0", lines


# --- dodo.boost_to_rest of huge finite vectors --------------------------------------------------------

def _huge_cell():
    W = 1e6
    u = np.array([W, W * math.sqrt(1 - 1 / W**2), 0.0, 0.0])
    rest = np.zeros((6, 4))
    for a in range(6):
        rest[a, 0] = 1e300 * (1 + 0.1 * a)
        rest[a, 1] = 0.3 * rest[a, 0] * (-1) ** a
    return rest, u


def test_boost_to_rest_of_a_huge_finite_vector_gives_its_representable_rest_frame_value():
    """F of 1.8e306 in the lab at W = 1e6, whose rest-frame components are near 1e300 (Python round
    fifty-eight's open item): the boost's intermediates (W^2/(W + 1) v.F, W F^t: some 4 W |F|)
    overflowed, inf - inf, and the spatial components came back NaN. Now the vector is boosted again
    scaled by a power of two: finite, and within the boost's rounding (W^2 eps) of the rest frame."""
    rest, u = _huge_cell()
    lab = dodo.boost_from_rest(rest, u)
    assert np.isfinite(lab).all() and np.abs(lab).max() > 1e306
    back = dodo.boost_to_rest(lab, u)
    assert np.isfinite(back).all(), back
    assert np.allclose(back, rest, rtol=0, atol=1e-3 * 1e300), back - rest
    # The same vectors scaled down by 2^-100 take the ordinary path: the huge ones give those bits x 2^100.
    small = dodo.boost_to_rest(np.ldexp(lab, -100), u)
    assert np.array_equal(np.ldexp(small, 100), back)


def test_boost_results_beyond_the_double_range_are_infinite_not_nan():
    """The rescaling's limits: a value truly beyond the double range after the boost is inf (of the
    right sign), never NaN (before: NaN beside the inf, inf - inf); non-finite input stays as it was."""
    W = 1e6
    u = np.array([W, W * math.sqrt(1 - 1 / W**2), 0.0, 0.0])
    lab = dodo.boost_from_rest(np.array([1e305, 0.9e305, 0.0, 0.0]), u)
    assert np.isposinf(lab[0]) and np.isposinf(lab[1]) and lab[2] == 0.0 and lab[3] == 0.0
    rest = dodo.boost_to_rest(np.array([2e306, -2e306, 1e-300, 0.0]), u)
    assert np.isposinf(rest[0]) and np.isneginf(rest[1]) and rest[2] == 1e-300
    assert np.isnan(dodo.boost_to_rest(np.array([np.nan, 0.0, 0.0, 0.0]), u)[0])


@pytest.mark.parametrize("which", ["box3d", "native"])
def test_a_cell_whose_boost_overflows_is_flagged_nonfinite_with_its_input_returned(which):
    """Guard (passes before and after): the closure boosts blocks itself and flags such a cell
    NONFINITE ("or a result beyond the double range"), returning its input, never inf or NaN."""
    rest, u = _huge_cell()
    lab = dodo.boost_from_rest(rest, u)[None]
    closure = dodo.Closure(dodo.BOX3D_ONLY) if which == "box3d" else dodo.Closure(default_model())
    result = closure.apply(lab, u[None])
    assert result.status[0] == dodo.CellStatus.NONFINITE
    assert np.array_equal(result.F_pred, lab)


# --- the advice when ONNX Runtime cannot be found --------------------------------------------------------

CREATE_HOST = r"""
#include <stdio.h>
#include <dodo/dodo.h>
int main(int argc, char** argv) {
  if (argc != 2) return 9;
  dodo_closure* closure = NULL;
  char message[4096] = "";
  const dodo_status status = dodo_closure_create(argv[1], NULL, &closure, message, sizeof message);
  printf("%s: %s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


def _host_linked_to_a_copy(tmp_path: Path, directory: Path) -> Path:
    """CREATE_HOST linked to a copy of the installed libdodo in `directory` (rpath to it)."""
    directory.mkdir(parents=True)
    shutil.copy2(Path(PATHS["lib_dir"]) / "libdodo.so.0", directory / "libdodo.so.0")
    source = tmp_path / "create.c"
    source.write_text(CREATE_HOST)
    program = tmp_path / "create"
    run(["gcc", "-std=c11", "-Wall", "-Werror", f"-I{PATHS['include_dir']}", str(source), str(directory / "libdodo.so.0"),
         f"-Wl,-rpath,{directory}", "-o", str(program)])
    return program


def _environment_without_onnxruntime() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DODO_ONNXRUNTIME_LIBRARY", "LD_LIBRARY_PATH")}
    return env


def test_a_libdodo_outside_a_python_environment_gets_advice_a_c_host_can_follow(tmp_path):
    """A libdodo vendored into a C, C++ or Fortran code (or installed by CMake under /opt) with no ONNX
    Runtime on the loader's path: every model was refused with "cannot load the ONNX Runtime library
    (pip install onnxruntime, or set DODO_ONNXRUNTIME_LIBRARY ...)", and a pip install never reaches a
    libdodo outside a Python environment. Now the advice says so and names what does; following it
    (DODO_ONNXRUNTIME_LIBRARY) loads the model."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    model = default_model()
    program = _host_linked_to_a_copy(tmp_path, tmp_path / "vendor" / "lib")
    env = _environment_without_onnxruntime()
    line = run_host(program, model, env=env)[0]
    if line.startswith("DODO_OK"):
        pytest.skip("this machine has an ONNX Runtime on the loader's path")
    assert line.startswith("DODO_ERROR_ONNXRUNTIME_UNAVAILABLE: cannot load the ONNX Runtime library (this libdodo is "
                           "outside a Python environment, where pip install onnxruntime does not reach it: set "
                           "DODO_ONNXRUNTIME_LIBRARY or the onnxruntime_library option to the path of a "
                           "libonnxruntime.so"), line
    library = dodo._closure.runtime_paths()["onnxruntime_library"]
    if not library or not os.path.isfile(library):
        pytest.skip("no ONNX Runtime library to follow the advice with")
    assert run_host(program, model, env={**env, "DODO_ONNXRUNTIME_LIBRARY": library})[0].startswith("DODO_OK"), library


def test_a_libdodo_in_a_python_environment_keeps_the_pip_advice(tmp_path):
    """Guard: a libdodo in a site-packages (a dodo wheel) without the onnxruntime wheel beside it is
    still told "pip install onnxruntime" (passes before and after)."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    model = default_model()
    program = _host_linked_to_a_copy(tmp_path, tmp_path / "venv/lib/python3.11/site-packages/dodo/lib")
    line = run_host(program, model, env=_environment_without_onnxruntime())[0]
    if line.startswith("DODO_OK"):
        pytest.skip("this machine has an ONNX Runtime on the loader's path")
    assert line.startswith("DODO_ERROR_ONNXRUNTIME_UNAVAILABLE: cannot load the ONNX Runtime library (pip install "
                           "onnxruntime, or set DODO_ONNXRUNTIME_LIBRARY"), line
