"""Outside probe of the C, C++ and Fortran interfaces, round forty-nine (docs/reliability_cpp.md,
"Round forty-nine"), as the developer of a transport code: libdodo dlopen'ed and dlclose'd many
times, with threads that called it ending after the dlclose and a thread inside dodo_apply during
it. dodo.h promised that libdodo stays loaded after dlclose; that held only for a GCC build (its
GNU unique symbol makes glibc keep the library): a clang build (and so Intel's icx) was unloaded, a
handle made through the first load was refused through the second's symbols, and a thread inside
dodo_apply during the dlclose died of SIGSEGV. libdodo is now linked -z nodelete. Also: the
Fortran examples left their main program's arrays allocated (LeakSanitizer: exit 1 for a host
built with -fsanitize=address), and the MPI examples printed "1 ranks (1 threads each"."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from capi_host import ROOT, default_model, run_host
from native_build import PATHS, REQUIRES_C_API, run, tool

pytestmark = REQUIRES_C_API

LIBDODO = Path(PATHS["lib_dir"]) / "libdodo.so.0"
DT_FLAGS_1, DF_1_NODELETE = 0x6FFFFFFB, 0x8


def _dynamic_flags_1(library: Path) -> int:
    """DT_FLAGS_1 of a 64-bit little-endian ELF shared object (0 when absent), read from its
    PT_DYNAMIC segment."""
    data = library.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{library}: not a 64-bit LE ELF file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
        if p_type == 2:  # PT_DYNAMIC
            for entry in range(p_offset, p_offset + p_filesz, 16):
                tag, value = struct.unpack_from("<qQ", data, entry)
                if tag == 0:
                    break
                if tag == DT_FLAGS_1:
                    return value
    return 0


def test_libdodo_is_marked_never_to_be_unloaded():
    """dodo.h and docs/runtime.md promise that libdodo stays loaded after dlclose. That rested on the
    GNU unique symbol GCC makes of the session lock (ort_library.cpp), which nothing in the file says:
    glibc decides it at load time. The installed library now carries the loader's own mark
    (DF_1_NODELETE, from -Wl,-z,nodelete), which holds whatever compiler built it."""
    assert LIBDODO.is_file(), LIBDODO
    assert _dynamic_flags_1(LIBDODO) & DF_1_NODELETE, f"{LIBDODO} is not linked -z nodelete"


# argv: library, model ("" = Box3D alone), mode.
#   rounds: 40 times dlopen, a closure of 2 workers, a thread that applies it (its Box3D scratch) and
#           fails a call (its error text: both freed by pthread key destructors in libdodo), destroy,
#           dlclose, and only then the thread ends. Prints how many dlcloses unloaded the library.
#   handle: a closure of 3 workers made through one load, dlclose, dlopen again, applied and
#           destroyed through the second load's symbols (docs/runtime.md says this works).
#   inside: a thread applies 20,000 cells 20 times; the main thread dlcloses meanwhile.
DLCLOSE_HOST = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dodo/dodo.h>

typedef void (*init_f)(dodo_options*, size_t);
typedef dodo_status (*create_f)(const char*, const dodo_options*, dodo_closure**, char*, size_t);
typedef void (*destroy_f)(dodo_closure*);
typedef dodo_status (*apply_f)(dodo_closure*, size_t, const double*, const ptrdiff_t*, const double*,
                               const ptrdiff_t*, double*, const ptrdiff_t*, uint32_t*);
enum { N = 20000 };
static double F[N][24], G[N][24];
static uint32_t S[N];
static const char* library;
static const char* model;
static void* handle;
static apply_f apply;
static destroy_f destroy;
static dodo_closure* closure;
static pthread_barrier_t called, closed;
static volatile int started;
static int failures;

static void load(int threads) {
  handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (!handle) { printf("dlopen: %s\n", dlerror()); exit(2); }
  init_f init = (init_f)dlsym(handle, "dodo_options_init_sized");
  create_f create = (create_f)dlsym(handle, "dodo_closure_create");
  apply = (apply_f)dlsym(handle, "dodo_apply");
  destroy = (destroy_f)dlsym(handle, "dodo_closure_destroy");
  dodo_options options;
  init(&options, sizeof options);
  options.threads = threads;
  options.chunk_size = 64;
  char message[1024];
  if (create(model, &options, &closure, message, sizeof message)) { printf("create: %s\n", message); exit(2); }
}

static void* call_then_wait(void* unused) {
  (void)unused;
  if (apply(closure, 64, &F[0][0], NULL, NULL, NULL, &G[0][0], NULL, S) != DODO_OK) failures++;
  if (apply(closure, 64, NULL, NULL, NULL, NULL, &G[0][0], NULL, S) == DODO_OK) failures++;
  pthread_barrier_wait(&called);
  pthread_barrier_wait(&closed);
  return NULL;
}

static void* apply_many(void* unused) {
  (void)unused;
  started = 1;
  for (int i = 0; i < 20; ++i)
    if (apply(closure, N, &F[0][0], NULL, NULL, NULL, &G[0][0], NULL, S) != DODO_OK) failures++;
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  library = argv[1];
  model = *argv[2] ? argv[2] : NULL;
  for (int c = 0; c < N; ++c)
    for (int a = 0; a < 6; ++a) {
      double x = (c % 64) / 64.0, density = 1e32 * (0.4 + 0.1 * a + 0.3 * x), flux = (0.1 + 0.3 * x) * density;
      F[c][a] = density;
      F[c][6 + a] = (a == 3 ? -1 : 1) * flux * cos(0.3 * a);
      F[c][12 + a] = flux * sin(0.3 * a);
    }
  if (!strcmp(argv[3], "rounds")) {
    int unloaded = 0;
    for (int round = 0; round < 40; ++round) {
      load(2);
      pthread_t thread;
      pthread_barrier_init(&called, NULL, 2);
      pthread_barrier_init(&closed, NULL, 2);
      pthread_create(&thread, NULL, call_then_wait, NULL);
      pthread_barrier_wait(&called);
      destroy(closure);
      dlclose(handle);
      void* still = dlopen(library, RTLD_NOW | RTLD_NOLOAD);
      if (still) dlclose(still); else unloaded++;
      pthread_barrier_wait(&closed);
      pthread_join(thread, NULL);
      pthread_barrier_destroy(&called);
      pthread_barrier_destroy(&closed);
    }
    printf("rounds 40 unloaded %d failures %d\n", unloaded, failures);
  } else if (!strcmp(argv[3], "handle")) {
    load(3);
    dodo_closure* first = closure;
    dlclose(handle);
    load(0);
    destroy(closure);
    dodo_status status = apply(first, 100, &F[0][0], NULL, NULL, NULL, &G[0][0], NULL, S);
    destroy(first);
    printf("handle of the first load: %s\n", status == DODO_OK ? "DODO_OK" : "refused");
  } else {
    load(3);
    pthread_t thread;
    pthread_create(&thread, NULL, apply_many, NULL);
    while (!started) {
    }
    dlclose(handle);
    pthread_join(thread, NULL);
    printf("inside: failures %d\n", failures);
  }
  return 0;
}
"""

EXPECTED = {
    "rounds": "rounds 40 unloaded 0 failures 0",
    "handle": "handle of the first load: DODO_OK",
    "inside": "inside: failures 0",
}


def _dlclose_host(tmp_path) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    source = tmp_path / "dlclose_host.c"
    source.write_text(DLCLOSE_HOST)
    program = tmp_path / "dlclose_host"
    # Not linked to libdodo: dlopen's loads are the only ones.
    run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}", str(source), "-ldl",
         "-lm", "-pthread", "-o", str(program)])
    return program


@pytest.mark.parametrize("mode", list(EXPECTED))
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_threads_and_handles_outlive_a_dlclose_of_the_installed_libdodo(tmp_path, mode, model):
    """The installed libdodo (GCC's build): threads that called it end after its dlclose (their
    pthread key destructors run in libdodo's code), a handle outlives the load that made it, and a
    thread is inside dodo_apply while the main thread dlcloses. Held before this round as well (the
    GNU unique symbol); the guard of what the clang build below now also does."""
    path = default_model() if model == "default" else ""
    assert run_host(_dlclose_host(tmp_path), str(LIBDODO), path, mode, timeout=300) == [EXPECTED[mode]]


@pytest.fixture(scope="module")
def clang_built_libdodo(tmp_path_factory) -> Path:
    """libdodo built from this source tree by clang (Release, target dodo alone: some 2 minutes on 2
    cores). Skipped without clang, cmake or ninja."""
    cmake, ninja = tool("cmake"), tool("ninja")
    if not (shutil.which("clang") and shutil.which("clang++") and cmake and ninja):
        pytest.skip("clang, cmake or ninja is not installed")
    build = tmp_path_factory.mktemp("clang_libdodo")
    run([cmake, "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
         "-DCMAKE_C_COMPILER=clang", "-DCMAKE_CXX_COMPILER=clang++", "-DCMAKE_BUILD_TYPE=Release"])
    result = subprocess.run([cmake, "--build", str(build), "--target", "dodo", "-j", "2"], capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    library = build / "cpp/src/runtime/libdodo.so.0"
    assert library.is_file(), library
    return library


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_a_clang_built_libdodo_stays_loaded_after_dlclose(tmp_path, clang_built_libdodo, mode):
    """clang makes no GNU unique symbols (the session lock is a weak symbol there), so glibc unloaded
    a clang-built libdodo at dlclose, against dodo.h's "libdodo stays loaded after dlclose": 'rounds'
    printed "unloaded 40"; 'handle' "refused" (status 1: the second load knew no handle of the first);
    'inside' ended in SIGSEGV (rc -11), its thread inside code that was unmapped. Linked -z nodelete,
    the clang build stays loaded as GCC's does."""
    lines = run_host(_dlclose_host(tmp_path), str(clang_built_libdodo), default_model(), mode, timeout=300)
    assert lines == [EXPECTED[mode]]
    assert _dynamic_flags_1(clang_built_libdodo) & DF_1_NODELETE


def test_the_fortran_grid_example_leaves_nothing_for_leaksanitizer(tmp_path):
    """examples/fortran/grid_closure.f90 built into a host with -fsanitize=address (a transport code's
    Debug or CI build): gfortran does not free a main program's allocatable arrays at its end, and
    LeakSanitizer reported F, F_pred, u, cell_status and the model path (362,885 bytes in 5 blocks,
    "grid_closure.f90:24") and made the run exit 1; valgrind called them "definitely lost". The example
    now deallocates them."""
    from test_native_programs import pkg_config

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    program = tmp_path / "grid_closure_f"
    include_dir = pkg_config("--variable=includedir")[0]
    run(["gfortran", "-std=f2018", "-g", "-fsanitize=address", "-J", str(tmp_path), f"{include_dir}/dodo/dodo.f90",
         str(ROOT / "examples/fortran/grid_closure.f90"), *pkg_config("--libs"), "-o", str(program)])
    environment = {"ASAN_OPTIONS": "detect_leaks=1", "LSAN_OPTIONS": "exitcode=23"}
    for model in ([], [default_model()]):
        result = subprocess.run([str(program), *model], capture_output=True, text=True, timeout=300,
                                env={**os.environ, **environment})
        assert "LeakSanitizer" not in result.stderr, result.stderr[-3000:]
        assert result.returncode == 0, (result.stdout, result.stderr[-3000:])
        assert "864 cells, rejected 0" in result.stdout, result.stdout


def test_the_fortran_mpi_example_frees_its_arrays(tmp_path):
    """The same for examples/fortran/mpi_closure.f90 on one rank: LeakSanitizer named three blocks
    allocated in its main program (MAIN__) beside Open MPI's own (which keep the run's exit status
    nonzero and are not the example's to free). Now no leak comes from the example."""
    from mpi_helpers import mpi_environment, mpirun
    from test_native_programs import pkg_config

    compiler = shutil.which("mpif90")
    if not compiler:
        pytest.skip("no MPI Fortran compiler wrapper (apt-get install libopenmpi-dev)")
    program = tmp_path / "mpi_closure_f"
    include_dir = pkg_config("--variable=includedir")[0]
    run([compiler, "-std=f2018", "-g", "-fsanitize=address", "-J", str(tmp_path), f"{include_dir}/dodo/dodo.f90",
         str(ROOT / "examples/fortran/mpi_closure.f90"), *pkg_config("--libs"), "-o", str(program)])
    environment = dict(mpi_environment(), ASAN_OPTIONS="detect_leaks=1")
    result = subprocess.run(mpirun(1) + [str(program), default_model()], capture_output=True, text=True,
                            timeout=300, env=environment)
    output = result.stdout + result.stderr
    assert "2048 cells, largest relative change" in result.stdout, output[-3000:]
    assert "MAIN__" not in output and "mpi_closure.f90" not in output, output[-3000:]


@pytest.mark.parametrize("language", ["c", "fortran"])
def test_the_mpi_examples_say_one_rank_in_the_singular(tmp_path, language):
    """`mpirun -n 1` (a first run, a laptop): the C example printed "1 ranks (1 threads each, ...",
    the Fortran example "1 ranks (model of ...". Now "1 rank (1 thread each, ..." and "1 rank (model
    of ..."; two ranks keep "2 ranks"."""
    from mpi_helpers import mpi_environment, mpirun
    from test_mpi_examples import build

    program = build(tmp_path, language)
    result = subprocess.run(mpirun(1) + [str(program), default_model()], capture_output=True, text=True,
                            timeout=300, env=mpi_environment())
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    assert result.stdout.startswith("1 rank (") and "1 ranks" not in result.stdout, result.stdout
    if language == "c":
        threads = result.stdout.split("(", 1)[1].split(" ", 1)[0]
        assert f"({threads} thread{'' if threads == '1' else 's'} each," in result.stdout, result.stdout


# A host that uses ONNX Runtime itself (its own model, its own logger at VERBOSE) beside libdodo.
# argv: model, order ("host" makes its environment and session first, "dodo" its closure first).
ORT_HOST = r"""
#include <dodo/dodo.h>
#include <onnxruntime_c_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const OrtApi* ort;
static int logged;
static OrtEnv* env;
static OrtSession* session;

static void host_logger(void* param, OrtLoggingLevel level, const char* category, const char* id,
                        const char* where, const char* message) {
  (void)param; (void)level; (void)category; (void)id; (void)where; (void)message;
  logged++;
}

static void check(OrtStatus* status, const char* what) {
  if (status) { printf("%s: %s\n", what, ort->GetErrorMessage(status)); exit(3); }
}

static void host_session(const char* model) {
  check(ort->CreateEnvWithCustomLogger(host_logger, NULL, ORT_LOGGING_LEVEL_VERBOSE, "host", &env), "env");
  OrtSessionOptions* options;
  check(ort->CreateSessionOptions(&options), "session options");
  check(ort->CreateSession(env, model, options, &session), "session");
  ort->ReleaseSessionOptions(options);
}

static void dodo_cycle(const char* model) {
  dodo_options options;
  dodo_options_init(&options);
  dodo_closure* closure = NULL;
  char message[2048];
  double F[24] = {1, 0, 0, 0.3, 1.1, 0, 0, 0.3, 1.2, 0, 0, 0.3, 1.3, 0, 0, -0.4, 1.4, 0, 0, 0.3, 1.5, 0, 0, 0.3}, G[24];
  if (dodo_closure_create(model, &options, &closure, message, sizeof message) != DODO_OK ||
      dodo_apply(closure, 1, F, NULL, NULL, NULL, G, NULL, NULL) != DODO_OK) {
    printf("dodo: %s\n", message);
    exit(4);
  }
  dodo_closure_destroy(closure);
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (!strcmp(argv[2], "host")) {
    host_session(argv[1]);
    int own = logged;
    dodo_cycle(argv[1]);
    printf("host logged %s, libdodo's session %s\n", own > 0 ? "yes" : "no", logged > own ? "logged through it" : "silent");
  } else {
    dodo_cycle(argv[1]);
    host_session(argv[1]);
    printf("host logged %s\n", logged > 0 ? "yes" : "no");
  }
  ort->ReleaseSession(session);
  ort->ReleaseEnv(env);
  dodo_cycle(argv[1]);
  return 0;
}
"""


def _ort_header_dir() -> Path | None:
    for directory in (Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")):
        if (directory / "onnxruntime_c_api.h").is_file():
            return directory
    return None


@pytest.mark.parametrize("order", ["host", "dodo"])
def test_a_host_using_onnx_runtime_itself_is_told_that_the_environment_is_shared(tmp_path, order):
    """ONNX Runtime has one environment a process. A host that uses the same ONNX Runtime for a model
    of its own and makes its environment (a VERBOSE logger) after libdodo's first closure with a model
    got libdodo's, whose output is discarded: its logger was never called, silently; made first, it
    keeps its logging, and libdodo's session logs through it. Both work. dodo.h said nothing of it (it
    says that ONNX Runtime's log output is discarded); it now says both. The behaviour is held here,
    the header's words below."""
    from dodo._closure import runtime_paths

    header_dir, library = _ort_header_dir(), runtime_paths().get("onnxruntime_library")
    if not header_dir or not library or not Path(library).is_file() or not shutil.which("gcc"):
        pytest.skip("needs onnxruntime_c_api.h, the ONNX Runtime library libdodo loads, and gcc")
    source = tmp_path / "ort_host.c"
    source.write_text(ORT_HOST)
    program = tmp_path / "ort_host"
    from test_native_programs import pkg_config

    # The host links the very library libdodo finds (its SONAME found through a link in tmp_path).
    (tmp_path / "libonnxruntime.so.1").symlink_to(library)
    run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}", f"-I{header_dir}",
         str(source), *pkg_config("--cflags", "--libs"), library, f"-Wl,-rpath,{tmp_path}", "-o", str(program)])
    lines = run_host(program, default_model(), order, timeout=300, env={"DODO_ONNXRUNTIME_LIBRARY": library})
    assert lines == (["host logged yes, libdodo's session logged through it"] if order == "host" else ["host logged no"])
    header = " ".join((ROOT / "cpp/include/dodo/dodo.h").read_text().replace("*", " ").split())
    assert "ONNX Runtime keeps one environment, with its logging, per process" in header
    assert "the host's logger and level are ignored, silently" in header
