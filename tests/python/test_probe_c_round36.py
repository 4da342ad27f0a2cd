"""Outside probe of the C interface, round thirty-six (docs/reliability_cpp.md, "Round
thirty-six"), as the developer of a transport code: dodo.h included by a C89 or C++98/03 host
under -pedantic (the status enum's generated list ended with a comma, which those languages
refuse). Held without a change: the diagnostics outputs of stable, rejected and non-finite cells
in every layout, libdodo closed and opened again in one process (handles with workers alive
across dlclose), and two packages used alternately from threads, one made from a buffer freed
right after its create."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from capi_host import compile_host, default_model, run_host
from native_build import PATHS, REQUIRES_C_API, run

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "cpp/include"
LIBDODO = Path(PATHS["lib_dir"]) / "libdodo.so"
TINY_PACKAGE = ROOT / "tests/data/training/tiny_direct.onnx"

pytestmark = REQUIRES_C_API


def _pkg_config(*arguments: str) -> list[str]:
    from test_native_programs import pkg_config

    return pkg_config(*arguments)


# Every status by name and value, and the options through the header's macro: what a host of any
# language level that includes dodo.h uses first.
STATUS_HOST = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  static const dodo_status all[] = {DODO_OK, DODO_ERROR_INVALID_ARGUMENT, DODO_ERROR_FILE,
                                    DODO_ERROR_MODEL_FORMAT, DODO_ERROR_MODEL_METADATA,
                                    DODO_ERROR_ONNXRUNTIME_UNAVAILABLE, DODO_ERROR_ONNXRUNTIME,
                                    DODO_ERROR_SELF_TEST, DODO_ERROR_OUT_OF_MEMORY, DODO_ERROR_NO_MODEL,
                                    DODO_ERROR_INTERNAL};
  dodo_options options;
  size_t i;
  dodo_options_init(&options);
  for (i = 0; i < sizeof all / sizeof all[0]; ++i)
    printf("%d %s\n", (int)all[i], dodo_status_name(all[i]));
  printf("chunk %d self-test %d\n", options.chunk_size, options.run_self_test);
  return 0;
}
"""

STATUS_NAMES = ["DODO_OK", "DODO_ERROR_INVALID_ARGUMENT", "DODO_ERROR_FILE", "DODO_ERROR_MODEL_FORMAT",
                "DODO_ERROR_MODEL_METADATA", "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE", "DODO_ERROR_ONNXRUNTIME",
                "DODO_ERROR_SELF_TEST", "DODO_ERROR_OUT_OF_MEMORY", "DODO_ERROR_NO_MODEL", "DODO_ERROR_INTERNAL"]


@pytest.mark.parametrize("language,standard", [("c", "c89"), ("c", "gnu89"), ("c", "c99"), ("c", "c11"),
                                               ("c++", "c++98"), ("c++", "c++03"), ("c++", "c++11")])
def test_dodo_h_compiles_pedantic_clean_for_c89_and_cpp98_hosts(tmp_path, language, standard):
    # Before: "dodo.h:92: comma at end of enumerator list [-Werror=pedantic]" for c89, gnu89,
    # c++98 and c++03 (the enum was generated from DODO_STATUS_LIST, each entry with its comma).
    # dodo.hpp's #error sends a C++11 host to dodo.h; older hosts reach it too.
    compiler = {"c": "gcc", "c++": "g++"}[language]
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    source = tmp_path / ("status.c" if language == "c" else "status.cpp")
    source.write_text(STATUS_HOST)
    program = tmp_path / "status"
    run([compiler, f"-std={standard}", "-pedantic", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(source),
         *_pkg_config("--cflags", "--libs"), "-o", str(program)])
    lines = run_host(program, timeout=120)
    assert lines[:-1] == [f"{value} {name}" for value, name in enumerate(STATUS_NAMES)]
    assert lines[-1] == "chunk 1024 self-test 1"


# Six kinds of cell (crossing, stable, flux factor at the limit, a NaN, a negative density,
# vacuum) in the default layout, a structure of arrays and reversed cells; growth rate and
# uncertainty preset to -7 so that an unwritten entry shows.
DIAGNOSTICS_HOST = r"""
#include <dodo/dodo.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 6 };

static void fill(double cell[6][4], int kind) {
  int a;
  for (a = 0; a < 6; ++a) {
    double n = a == 1 ? 1.2 : 1.0, f = a == 0 ? 0.5 : a == 1 ? -0.5 : 0.1;
    if (kind == 1) { n = a < 3 ? 1.0 : 0.5; f = 0.3; }  /* every flux along +x: no ELN crossing */
    cell[a][0] = n; cell[a][1] = f * n; cell[a][2] = 0.0; cell[a][3] = 0.0;
  }
  if (kind == 2) cell[0][1] = 0.999;
  if (kind == 3) cell[2][2] = NAN;
  if (kind == 4) cell[1][0] = -1.0;
  if (kind == 5) memset(cell, 0, 24 * sizeof(double));
}

int main(int argc, char** argv) {
  static double F[N][6][4], soa[24 * N], P[24 * N];
  double growth[N], spread[N];
  uint32_t status[N];
  const ptrdiff_t soa_strides[3] = {1, 4 * N, N}, reversed[3] = {-24, 4, 1};
  dodo_closure* closure = NULL;
  char error[1024];
  int c, a, m, layout;
  (void)argc;
  if (dodo_closure_create(argv[1], NULL, &closure, error, sizeof error) != DODO_OK) {
    printf("create: %s\n", error);
    return 1;
  }
  for (c = 0; c < N; ++c) {
    fill(F[c], c);
    for (a = 0; a < 6; ++a)
      for (m = 0; m < 4; ++m) soa[c + a * 4 * N + m * N] = F[c][a][m];
  }
  for (layout = 0; layout < 3; ++layout) {
    const double* in = layout == 0 ? &F[0][0][0] : layout == 1 ? soa : &F[N - 1][0][0];
    const ptrdiff_t* strides = layout == 0 ? NULL : layout == 1 ? soa_strides : reversed;
    for (c = 0; c < N; ++c) growth[c] = spread[c] = -7.0;
    if (dodo_apply_diagnostics(closure, N, in, strides, NULL, NULL, P, NULL, status, growth, spread) != DODO_OK) {
      printf("apply: %s\n", dodo_last_error(closure, error, sizeof error) ? error : "");
      return 1;
    }
    for (c = 0; c < N; ++c) {
      int cell = layout == 2 ? N - 1 - c : c;  /* the reversed layout's entry c is cell N-1-c */
      printf("layout %d cell %d status %u growth %s uncertainty %s\n", layout, cell, (unsigned)status[c],
             growth[c] == 0.0 ? "0" : growth[c] > 0.0 && isfinite(growth[c]) ? "positive" : "other",
             spread[c] == 0.0 ? "0" : spread[c] > 0.0 && isfinite(spread[c]) ? "positive" : "other");
    }
  }
  dodo_closure_destroy(closure);
  return 0;
}
"""

KINDS = {1: "1", 2: "2", 3: "8", 4: "4", 5: "16"}  # cell kind -> its status (crossing: 0)


@pytest.mark.parametrize("model", ["default", "box3d"])
def test_diagnostics_of_stable_rejected_and_nonfinite_cells_are_zero_in_every_layout(tmp_path, model):
    path = default_model() if model == "default" else "box3d"
    program = compile_host(tmp_path, "diagnostics", DIAGNOSTICS_HOST)
    lines = run_host(program, path, timeout=300)
    assert len(lines) == 18, lines
    for line in lines:
        words = line.split()
        cell, status, growth, spread = int(words[3]), words[5], words[7], words[9]
        if cell == 0:  # the crossing cell: a positive rate; an uncertainty where a model corrects it
            assert (status, growth) == ("0", "positive"), line
            assert spread == ("positive" if model == "default" else "0"), line
        else:  # stable and rejected cells: 0 and 0 as dodo.h says, in every layout
            assert (status, growth, spread) == (KINDS[cell], "0", "0"), line


# libdodo opened, used and closed four times in one process; each load makes a handle with three
# workers that is left alive across dlclose (a plug-in host that forgets one) and used again
# through the next load's symbols.
DLCLOSE_HOST = r"""
#include <dodo/dodo.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef dodo_status (*create_f)(const char*, const dodo_options*, dodo_closure**, char*, size_t);
typedef dodo_status (*apply_f)(dodo_closure*, size_t, const double*, const ptrdiff_t*, const double*,
                               const ptrdiff_t*, double*, const ptrdiff_t*, uint32_t*);
typedef void (*destroy_f)(dodo_closure*);
typedef void (*init_f)(dodo_options*, size_t);

int main(int argc, char** argv) {
  double F[6][4], P[6][4], first[6][4];
  dodo_closure* kept[4];
  int round, a;
  (void)argc;
  for (a = 0; a < 6; ++a) {
    double n = a < 3 ? 1.0 : 1.3, f = a < 3 ? 0.4 : -0.4;
    F[a][0] = n; F[a][1] = f * n; F[a][2] = 0.1 * n; F[a][3] = 0.0;
  }
  for (round = 0; round < 4; ++round) {
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    create_f create;
    apply_f apply;
    destroy_f destroy;
    init_f init;
    dodo_options options;
    char error[1024];
    int same = 1, previous_ok = 1;
    if (!library) { printf("dlopen: %s\n", dlerror()); return 1; }
    *(void**)&create = dlsym(library, "dodo_closure_create");
    *(void**)&apply = dlsym(library, "dodo_apply");
    *(void**)&destroy = dlsym(library, "dodo_closure_destroy");
    *(void**)&init = dlsym(library, "dodo_options_init_sized");
    init(&options, sizeof options);
    options.threads = 3;
    options.chunk_size = 1;
    if (create(argv[2], &options, &kept[round], error, sizeof error) != DODO_OK) {
      printf("create: %s\n", error);
      return 1;
    }
    if (apply(kept[round], 1, &F[0][0], NULL, NULL, NULL, &P[0][0], NULL, NULL) != DODO_OK) return 2;
    if (round == 0) memcpy(first, P, sizeof P);
    same = memcmp(first, P, sizeof P) == 0;
    if (round > 0) {  /* the handle of the previous load, through this load's symbols */
      previous_ok = apply(kept[round - 1], 1, &F[0][0], NULL, NULL, NULL, &P[0][0], NULL, NULL) == DODO_OK &&
                    memcmp(first, P, sizeof P) == 0;
      destroy(kept[round - 1]);
    }
    printf("load %d same %d previous %d\n", round, same, previous_ok);
    if (round == 3) destroy(kept[round]);
    if (dlclose(library) != 0) { printf("dlclose: %s\n", dlerror()); return 3; }
  }
  return 0;
}
"""


@pytest.mark.parametrize("model", ["default", "box3d"])
def test_libdodo_closed_and_opened_again_keeps_handles_and_bits(tmp_path, model):
    path = default_model() if model == "default" else "box3d"
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    source = tmp_path / "reopen.c"
    source.write_text(DLCLOSE_HOST)
    program = tmp_path / "reopen"
    # Not linked to libdodo: dlopen's load is the only one. (Since C round forty-three libdodo
    # defines a GNU unique symbol, so glibc keeps it loaded after dlclose; each reload then reuses
    # the loaded copy, which these hosts accept.)
    run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(source), "-ldl", "-o", str(program)])
    lines = run_host(program, str(LIBDODO), path, timeout=300)
    assert lines == [f"load {i} same 1 previous 1" for i in range(4)]


# The same, each load made, used and closed by a thread that then exits, with no thread left that
# called it. (Written when glibc's dlclose unloaded libdodo there and the next dlopen loaded it
# afresh; since C round forty-three its GNU unique symbol keeps it loaded, and the reloads reuse it:
# docs/runtime.md.)
UNLOAD_HOST = r"""
#include <dodo/dodo.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static const char *library_path, *model;
static void* library;
static double first[6][4];
static int round_, same;

static void* load_and_use(void* unused) {
  dodo_status (*create)(const char*, const dodo_options*, dodo_closure**, char*, size_t);
  dodo_status (*apply)(dodo_closure*, size_t, const double*, const ptrdiff_t*, const double*, const ptrdiff_t*,
                       double*, const ptrdiff_t*, uint32_t*);
  void (*destroy)(dodo_closure*);
  dodo_closure* closure;
  double F[6][4], P[6][4];
  char error[1024];
  int a;
  (void)unused;
  for (a = 0; a < 6; ++a) {
    double n = a == 1 ? 1.2 : 1.0, f = a == 0 ? 0.5 : a == 1 ? -0.5 : 0.1;
    F[a][0] = n; F[a][1] = f * n; F[a][2] = 0.0; F[a][3] = 0.0;
  }
  library = dlopen(library_path, RTLD_NOW | RTLD_LOCAL);
  if (!library) return NULL;
  *(void**)&create = dlsym(library, "dodo_closure_create");
  *(void**)&apply = dlsym(library, "dodo_apply");
  *(void**)&destroy = dlsym(library, "dodo_closure_destroy");
  if (create(model, NULL, &closure, error, sizeof error) != DODO_OK) {
    printf("create: %s\n", error);
    return NULL;
  }
  if (apply(closure, 1, &F[0][0], NULL, NULL, NULL, &P[0][0], NULL, NULL) == DODO_OK) {
    if (round_ == 0) memcpy(first, P, sizeof P);
    same = memcmp(first, P, sizeof P) == 0;
  }
  destroy(closure);
  return NULL;
}

int main(int argc, char** argv) {
  (void)argc;
  library_path = argv[1];
  model = argv[2];
  for (round_ = 0; round_ < 3; ++round_) {
    pthread_t thread;
    same = 0;
    library = NULL;
    pthread_create(&thread, NULL, load_and_use, NULL);
    pthread_join(thread, NULL);
    if (!library || dlclose(library) != 0) return 1;
    printf("load %d same %d\n", round_, same);
  }
  return 0;
}
"""


@pytest.mark.parametrize("model", ["default", "box3d"])
def test_libdodo_unloaded_and_loaded_again_gives_the_same_bits(tmp_path, model):
    path = default_model() if model == "default" else "box3d"
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    source = tmp_path / "unload.c"
    source.write_text(UNLOAD_HOST)
    program = tmp_path / "unload"
    run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(source), "-ldl", "-pthread",
         "-o", str(program)])
    assert run_host(program, str(LIBDODO), path, timeout=300) == [f"load {i} same 1" for i in range(3)]


# Two packages at once: the default model by path and a second package from memory, its buffer
# overwritten and freed right after the create; four threads apply both alternately (plain and
# with diagnostics), each result compared with the single-threaded one of its handle.
TWO_PACKAGES_HOST = r"""
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 64 };
static double F[N][6][4], expected[2][N][6][4];
static dodo_closure* handles[2];
static int wrong;

static void* work(void* argument) {
  long t = (long)argument;
  double P[N][6][4], growth[N], spread[N];
  uint32_t status[N];
  int i;
  for (i = 0; i < 200; ++i) {
    int k = (int)((i + t) % 2);
    dodo_status s = i % 3 == 0
                        ? dodo_apply_diagnostics(handles[k], N, &F[0][0][0], NULL, NULL, NULL, &P[0][0][0], NULL,
                                                 status, growth, spread)
                        : dodo_apply(handles[k], N, &F[0][0][0], NULL, NULL, NULL, &P[0][0][0], NULL, status);
    if (s != DODO_OK || memcmp(P, expected[k], sizeof P) != 0) __atomic_add_fetch(&wrong, 1, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

int main(int argc, char** argv) {
  FILE* file = fopen(argv[2], "rb");
  long size;
  char* bytes;
  char error[1024], head[64];
  dodo_options options;
  pthread_t threads[4];
  long t;
  int c, a;
  (void)argc;
  srand(3);
  for (c = 0; c < N; ++c)
    for (a = 0; a < 6; ++a) {
      double n = 0.5 + rand() / (double)RAND_MAX, f = (rand() / (double)RAND_MAX - 0.5) * 1.2;
      F[c][a][0] = n; F[c][a][1] = f * n; F[c][a][2] = 0.2 * f * n; F[c][a][3] = -0.1 * f * n;
    }
  if (!file) return 1;
  fseek(file, 0, SEEK_END);
  size = ftell(file);
  rewind(file);
  bytes = malloc((size_t)size);
  if (!bytes || fread(bytes, 1, (size_t)size, file) != (size_t)size) return 1;
  fclose(file);
  dodo_options_init(&options);
  options.threads = 2;
  options.chunk_size = 7;
  if (dodo_closure_create(argv[1], &options, &handles[0], error, sizeof error) != DODO_OK ||
      dodo_closure_create_from_memory(bytes, (size_t)size, &options, &handles[1], error, sizeof error) != DODO_OK) {
    printf("create: %s\n", error);
    return 1;
  }
  memset(bytes, 0xab, (size_t)size);
  free(bytes);
  for (c = 0; c < 2; ++c)
    if (dodo_apply(handles[c], N, &F[0][0][0], NULL, NULL, NULL, &expected[c][0][0][0], NULL, NULL) != DODO_OK)
      return 2;
  printf("differ %d self-test %d\n", memcmp(expected[0], expected[1], sizeof expected[0]) != 0,
         (int)dodo_self_test(handles[1], NULL));
  for (t = 0; t < 4; ++t) pthread_create(&threads[t], NULL, work, (void*)t);
  for (t = 0; t < 4; ++t) pthread_join(threads[t], NULL);
  dodo_get_metadata(handles[1], "dodo.head", head, sizeof head);
  printf("wrong %d head %s\n", wrong, head);
  dodo_closure_destroy(handles[0]);
  dodo_closure_destroy(handles[1]);
  return 0;
}
"""


def test_two_packages_one_from_a_freed_buffer_used_alternately_from_threads(tmp_path):
    path = default_model()
    if not TINY_PACKAGE.is_file():
        pytest.skip("no second package")
    program = compile_host(tmp_path, "two_packages", TWO_PACKAGES_HOST)
    lines = run_host(program, path, str(TINY_PACKAGE), timeout=300)
    assert lines == ["differ 1 self-test 0", "wrong 0 head direct"]


FORTRAN_HOST = """\
program host
  use dodo
  implicit none
  type(dodo_closure) :: closure
  real(c_double) :: F(4, 6, 1), F_pred(4, 6, 1)
  integer :: stat
  F = 0; F(1, :, 1) = 1; F(2, 1, 1) = 0.5d0; F(1, 2, 1) = 1.2d0; F(2, 2, 1) = -0.6d0
  call dodo_create(closure, "box3d", stat=stat)
  if (stat /= 0) error stop 1
  call dodo_apply(closure, F, F_pred, stat=stat)
  if (stat /= 0) error stop 2
  print '(a)', 'applied'
  call dodo_destroy(closure)
end program host
"""


def _build_three_fortran_hosts(tmp_path, setup: str, library: str) -> None:
    """A CMake project of three Fortran executables (FORTRAN_HOST) that link `library` after `setup`,
    configured against the installed package, built in parallel and run."""
    from native_build import tool

    cmake, gfortran = tool("cmake"), shutil.which("gfortran")
    if not cmake or not gfortran:
        pytest.skip("cmake or gfortran is not installed")
    source = tmp_path / "src"
    source.mkdir()
    (source / "host.f90").write_text(FORTRAN_HOST)
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(TransportHost LANGUAGES C Fortran)\n" + setup +
        "foreach(name a b c)\n  add_executable(host_${name} host.f90)\n"
        f"  target_link_libraries(host_${{name}} PRIVATE {library})\nendforeach()\n")
    build = tmp_path / "build"
    ninja = tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    run([cmake, "-S", str(source), "-B", str(build), *generator,
         f"-DDodo_DIR={Path(PATHS['lib_dir']) / 'cmake/Dodo'}"])
    run([cmake, "--build", str(build), "--parallel", "4"])
    for name in "abc":
        assert run_host(build / f"host_{name}", timeout=120) == ["applied"]


def test_the_documented_fortran_module_library_serves_several_fortran_targets(tmp_path):
    """docs/runtime.md ("Building against an installed Dodo"): the module compiled once into a
    library that three Fortran executables link, built in parallel. (Listing
    ${Dodo_FORTRAN_MODULE_SOURCE} among each executable's sources instead made two rules for one
    dodo.mod: Ninja "multiple rules generate dodo.mod"; now said in the docs.)"""
    _build_three_fortran_hosts(tmp_path, "find_package(Dodo CONFIG REQUIRED)\n"
                               "add_library(dodo_fortran STATIC ${Dodo_FORTRAN_MODULE_SOURCE})\n"
                               "target_link_libraries(dodo_fortran PUBLIC Dodo::dodo)\n", "dodo_fortran")


def test_the_packages_fortran_target_serves_several_fortran_targets(tmp_path):
    """Dodo::fortran (cmake/DodoConfig.cmake.in, since 2026-12-06; C round forty's open item): a
    Fortran project links it instead of compiling the module itself; three executables in a parallel
    build, find_package called twice (the target made once), the host's flags at -std=f2008."""
    _build_three_fortran_hosts(tmp_path, "set(CMAKE_Fortran_FLAGS \"${CMAKE_Fortran_FLAGS} -std=f2008\")\n"
                               "find_package(Dodo CONFIG REQUIRED)\nfind_package(Dodo CONFIG REQUIRED)\n",
                               "Dodo::fortran")
