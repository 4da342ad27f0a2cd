"""Outside probe of the C, C++ and Fortran interfaces, round thirteen (docs/reliability_cpp.md,
"Round thirteen"), and the QKE kernel's fork safety left from round twenty-one (docs/reliability_python.md,
section 23). Each test failed on the code as it was before its fix."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import dodo
from dodo.qke.compiled import compiled_unavailable_reason
from capi_host import compile_fortran as _fortran
from capi_host import compile_host as _compile
from capi_host import default_model as _default_model
from capi_host import needs_runtime
from capi_host import run_host as _run
from test_runtime_reliability import run_child

needs_kernel = pytest.mark.skipif(compiled_unavailable_reason(16) is not None, reason="no compiled QKE kernel")


# --- a fork while another thread is inside the raw QKE kernel ---------------------------------------

RAW_KERNEL_FORK = """
    import os, signal, threading
    import numpy as np
    from dodo.qke.compiled import CompiledFlavourBox
    from dodo.qke.solver import SolverConfig
    from dodo.qke.states import NSM1_EMU_1D

    def make():
        return CompiledFlavourBox(NSM1_EMU_1D[None].repeat(4, 0), np.full(4, 4.0),
                                  SolverConfig(backend="cpp", ncell=32, nphi_equator=8), threads=1)

    box = make()
    dt, _ = box.time_steps(np.full(4, 1e-9))
    start = box.state
    expected = make().step(dt)
    raw = box._kernel._kernel  # dodo._core.QkeKernel itself: no Python guard on the way
    assert type(raw).__name__ == "QkeKernel"
    inside = threading.Event()

    def loop():
        while True:
            raw.{op}
            inside.set()

    threading.Thread(target=loop, daemon=True).start()
    assert inside.wait(60)
    refused = complete = 0
    for fork in range(400):
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a child waiting for ever ends by SIGALRM, not the test's timeout
            child = make()  # a kernel made in the child works and gives the parent's numbers
            child.state = start
            if not np.array_equal(child.step(dt), expected):
                os._exit(3)
            try:
                raw.step(dt, 1)  # complete at the fork, or refused; never a wait for ever
                raw.get_state()
            except RuntimeError as error:
                message = str(error)
                if "another thread when the process forked" not in message or "make" not in message:
                    os._exit(4)
                try:  # refused for good, every call, and still not a wait
                    raw.get_state()
                except RuntimeError:
                    os._exit(10)
                os._exit(5)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), (fork, "child killed by signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else status)
        code = os.WEXITSTATUS(status)
        assert code in (0, 10), (fork, code)
        refused += code == 10
        complete += code == 0
        if refused >= 3:
            break
    assert refused >= 1, ("no fork caught the kernel busy", complete)
    print("forks done", refused, flush=True)
"""


@needs_kernel
@pytest.mark.parametrize("op", ["step(dt, 2)", "step(dt, 1)", "get_state()", "set_state(start)"])
def test_a_fork_while_a_thread_is_inside_the_raw_qke_kernel_never_leaves_the_child_waiting(op):
    """The kernel's own mutex (cpp/src/qke/flavour_box.cpp) was not fork-aware: a fork while another
    thread was inside a call copied it held, and the child's call on that kernel waited for ever on a
    lock whose holder does not exist there. Only the Python guard in dodo/qke/compiled.py refused such
    a call; dodo._core.QkeKernel called directly hung (the child killed by its alarm). Now the kernel
    itself, through pthread_atfork, marks a kernel busy at the fork and refuses every call on it in the
    child with a message that says why and what to do; a kernel made in the child works. The loop
    forks until three children caught the kernel busy (most forks do: the thread spends its time
    inside the kernel without the GIL)."""
    result = run_child(RAW_KERNEL_FORK.replace("{op}", op), timeout=300)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stdout.startswith("forks done"), result.stdout


# --- an ONNX Runtime library path that is a FIFO ----------------------------------------------------

ORT_LIBRARY_PATH = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char** argv) {
  dodo_options options;
  dodo_options_init(&options);
  options.onnxruntime_library = argc > 2 && strlen(argv[2]) ? argv[2] : NULL;
  dodo_closure* closure = NULL;
  char message[4096];
  dodo_status status = dodo_closure_create(argv[1], &options, &closure, message, sizeof message);
  printf("%s\n", dodo_status_name(status));
  printf("%s\n", message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@needs_runtime
@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_onnxruntime_library_path_that_is_a_fifo_is_refused_instead_of_hanging(tmp_path, how):
    """`onnxruntime_library` (or DODO_ONNXRUNTIME_LIBRARY) naming a FIFO: dlopen opened it and
    waited for ever for a writer (the kernel's wait_for_partner), inside dodo_closure_create, with
    the asynchronous signals blocked around ONNX Runtime's load (round nine), so that neither the
    host's Ctrl-C nor a batch system's SIGTERM ended the process; only SIGKILL did. A model file
    that is a FIFO was refused since round nine; the library path was not checked. Now a path that
    is not a regular file is refused without being opened, DODO_ERROR_ONNXRUNTIME_UNAVAILABLE
    naming it and what it is; a directory and a device likewise."""
    fifo = tmp_path / "libonnxruntime.so.1"
    os.mkfifo(fifo)
    program = _compile(tmp_path, "ort_library_path", ORT_LIBRARY_PATH)
    for path, what in ((fifo, "a FIFO"), (tmp_path, "a directory"), (Path("/dev/zero"), "a device")):
        if how == "option":
            lines = _run(program, _default_model(), str(path), timeout=60)
        else:
            lines = _run(program, _default_model(), "", timeout=60, env={"DODO_ONNXRUNTIME_LIBRARY": str(path)})
        assert lines[0] == "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE", lines
        text = "\n".join(lines[1:])
        assert f"{path}: not a regular file ({what}): not opened" in text, text
        # and the advice fits how the path was given (it said "set DODO_ONNXRUNTIME_LIBRARY" also
        # when the option named the library, which the variable cannot override)
        if how == "option":
            assert "the onnxruntime_library option names it" in text and "DODO_ONNXRUNTIME_LIBRARY" not in text, text
        else:
            assert "DODO_ONNXRUNTIME_LIBRARY names it: set it to the path of a libonnxruntime.so, or unset it" in text


# --- Fortran: refusals of misshapen arrays say what was given ------------------------------------

FORTRAN_SHAPES = """
program shapes
  use dodo
  implicit none
  type(dodo_closure) :: closure
  real(c_double) :: grid(4, 6, 5, 2), flat(4, 6, 10), swapped(6, 4, 10), u(4, 11), u3(3, 10)
  real(c_double) :: rate(9)
  integer(c_int32_t) :: flags(12)
  integer :: stat
  character(len=400) :: message
  grid = 0
  flat = 0
  swapped = 0
  u = 0
  u3 = 0
  call dodo_create(closure, DODO_BOX3D_ONLY, stat=stat)
  call probe("ranks")
  call dodo_apply(closure, grid, flat, stat=stat, errmsg=message)
  call show()
  call probe("swapped")
  call dodo_apply(closure, swapped, swapped, stat=stat, errmsg=message)
  call show()
  call probe("extents")
  call dodo_apply(closure, flat, flat(:, :, 1:9), stat=stat, errmsg=message)
  call show()
  call probe("u")
  call dodo_apply(closure, flat, flat, u=u, stat=stat, errmsg=message)
  call show()
  call probe("u3")
  call dodo_apply(closure, flat, flat, u=u3, stat=stat, errmsg=message)
  call show()
  call probe("status")
  call dodo_apply(closure, flat, flat, cell_status=flags, stat=stat, errmsg=message)
  call show()
  call probe("rate")
  call dodo_apply(closure, grid, grid, growth_rate=rate, stat=stat, errmsg=message)
  call show()
  call probe("spread")
  call dodo_apply(closure, grid, grid, uncertainty=rate, stat=stat, errmsg=message)
  call show()
  call dodo_destroy(closure)
contains
  subroutine probe(name)
    character(len=*), intent(in) :: name
    write (*, '(a, 1x)', advance='no') name
    message = ""
  end subroutine probe
  subroutine show()
    print '(i0, 1x, a)', stat, trim(message)
  end subroutine show
end program shapes
"""


@needs_runtime
def test_fortran_shape_refusals_say_what_was_given(tmp_path):
    """Fortran dodo_apply refused misshapen arrays with a fixed text: F_init (4, 6, 5, 2) and
    F_pred (4, 6, 10), which both have shape (4, 6, ...), were told "F_init and F_pred must both
    have shape (4, 6, ...)"; a C-ordered (6, 4, 10) array, a u with one column too many, a
    cell_status of 12 for 10 cells got the rule without the shape or count given, so the host
    was left to guess which array and dimension was wrong. Each refusal now ends with the shapes
    or counts it saw (read on failure only: a call that succeeds still allocates nothing)."""
    lines = _run(_fortran(tmp_path, "shapes", FORTRAN_SHAPES))
    rule = "1 F_init and F_pred must both have shape (4, 6, ...)"
    assert lines == [
        f"ranks {rule}, the same: F_init has (4, 6, 5, 2), F_pred (4, 6, 10)",
        f"swapped {rule} (component, species, cells): F_init has (6, 4, 10)",
        f"extents {rule}, the same: F_init has (4, 6, 10), F_pred (4, 6, 9)",
        "u 1 u must have shape (4, ...) with one column per cell: u has (4, 11) for 10 cell(s)",
        "u3 1 u must have shape (4, ...) with one column per cell: u has (3, 10) for 10 cell(s)",
        "status 1 cell_status must have one entry per cell: it has 12 for 10 cell(s)",
        "rate 1 growth_rate must have one entry per cell: it has 9 for 10 cell(s)",
        "spread 1 uncertainty must have one entry per cell: it has 9 for 10 cell(s)",
    ], lines


# --- the shipped headers under a strict host's warnings-as-errors ----------------------------------

STRICT_CPP = r"""
#include <dodo/dodo.hpp>
int main() {
  dodo::Closure closure(dodo::Options().threads(1).z_method("exact"));
  double F[24] = {0};
  double G[24];
  closure.apply(1, F, nullptr, G);
  return static_cast<int>(closure.metadata("dodo.head").size() + dodo::version().size()) == 0 ? 0 : 0;
}
"""

STRICT_CXX_FLAGS = ["-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Wsign-conversion",
                    "-Wold-style-cast", "-Wuseless-cast", "-Wzero-as-null-pointer-constant", "-Wnon-virtual-dtor",
                    "-Weffc++", "-Wdouble-promotion", "-Wcast-qual", "-Wundef", "-Werror"]
STRICT_FORTRAN_FLAGS = ["-Wall", "-Wextra", "-Wconversion-extra", "-Wimplicit-interface", "-Wimplicit-procedure",
                        "-pedantic", "-std=f2018", "-Werror"]


def test_the_shipped_headers_compile_under_a_strict_hosts_warnings_as_errors(tmp_path):
    """A host compiles dodo.hpp, and the Fortran module's source, with its own project-wide flags.
    With -Weffc++ -Werror, g++ refused dodo.hpp (dodo::Options' members not in its constructor's
    initialiser list); with -Wconversion-extra -Werror, gfortran refused dodo.f90 (an INTEGER(4)
    size compared with an INTEGER(8) length in dodo_get_metadata). Both now compile clean under
    the flags here, and C++ also as C++20."""
    from test_native_programs import ROOT, run

    include = ROOT / "cpp/include"
    if shutil.which("g++"):
        source = tmp_path / "strict.cpp"
        source.write_text(STRICT_CPP)
        for standard in ("-std=c++17", "-std=c++20"):
            run(["g++", standard, "-fsyntax-only", f"-I{include}", *STRICT_CXX_FLAGS, str(source)])
    if shutil.which("gfortran"):
        run(["gfortran", *STRICT_FORTRAN_FLAGS, "-c", "-J", str(tmp_path), str(include / "dodo/dodo.f90"),
             "-o", str(tmp_path / "dodo.o")])
    if not (shutil.which("g++") or shutil.which("gfortran")):
        pytest.skip("neither g++ nor gfortran is installed")


# --- docs/runtime.md's MPI pattern, as written, on a package rank 0 could not read -------------------

MPI_SNIPPET_STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <dodo/dodo.h>
typedef int MPI_Comm;
#define MPI_COMM_WORLD 0
#define MPI_LONG 8
#define MPI_BYTE 1
static int stub_rank;
/* As MPI with MPI_ERRORS_ARE_FATAL: a negative count ends the job. The size's broadcast gives the
 * other ranks rank 0's -1 (it could not read the file). */
static int MPI_Bcast(void* buffer, int count, int type, int root, MPI_Comm comm) {
  (void)root; (void)comm;
  if (count < 0) { printf("MPI_ERR_COUNT: invalid count argument\n"); exit(2); }
  if (stub_rank != 0 && type == MPI_LONG && count == 1) *(long*)buffer = -1;
  return 0;
}
static int MPI_Finalize(void) { return 0; }
static int MPI_Abort(MPI_Comm comm, int code) { (void)comm; printf("MPI_Abort %d\n", code); exit(code); }
static unsigned char* read_file(const char* path, long* size) {
  FILE* file = fopen(path, "rb");
  *size = -1;
  if (file) fclose(file);  /* (the stub never reads: the test's path does not exist) */
  return NULL;
}
int main(int argc, char** argv) {
  (void)argc;
  int rank = stub_rank = atoi(argv[1]);
  const char* path = argv[2];
  dodo_options options;
  dodo_options_init(&options);
  dodo_closure* closure = NULL;
  char message[512];
  (void)closure; (void)message; (void)options; (void)MPI_Abort; (void)MPI_Finalize;
#line 1 "docs/runtime.md (MPI snippet)"
SNIPPET
  printf("past the snippet\n");
  return 0;
}
"""


def test_the_documented_mpi_pattern_stops_every_rank_when_rank_0_cannot_read_the_package(tmp_path):
    """docs/runtime.md's "Load the model once, from memory" snippet broadcast the size ("negative:
    rank 0 could not read it") and went on: malloc of a negative size on the other ranks and an
    MPI_Bcast of count -1 on every rank, which MPI refuses by ending the job (MPI_ERR_COUNT), not a
    message saying the package could not be read. examples/c/mpi_closure.c checks; the snippet
    hosts copy did not. It now stops every rank on a negative size, before malloc."""
    from test_native_programs import ROOT

    text = (ROOT / "docs/runtime.md").read_text()
    start = text.index("```c\nlong size;")
    snippet = text[start + len("```c\n"):text.index("```", start + 4)]
    program = _compile(tmp_path, "mpi_snippet", MPI_SNIPPET_STUBS.replace("SNIPPET", snippet))
    for rank in ("0", "1"):
        result = subprocess.run([str(program), rank, str(tmp_path / "missing.onnx")], capture_output=True, text=True,
                                timeout=60)
        assert "MPI_ERR_COUNT" not in result.stdout, (rank, result.stdout)
        assert "past the snippet" not in result.stdout, (rank, result.stdout)
        assert result.returncode != 0, (rank, result.returncode, result.stdout, result.stderr)


# --- dodo_options from a newer dodo.h ---------------------------------------------------------------

NEWER_HEADER_OPTIONS = r"""
#include <dodo/dodo.h>
#include <stdio.h>

/* A program built against a later dodo.h, whose dodo_options has grown by a field (fields are only
 * ever added at the end), linked to this older libdodo. */
struct later_options {
  dodo_options known;
  int added_later;
};

int main(void) {
  struct later_options later;
  dodo_options_init_sized(&later.known, sizeof later);
  dodo_closure* closure = NULL;
  char message[1024];
  dodo_status status = dodo_closure_create(DODO_BOX3D_ONLY, &later.known, &closure, message, sizeof message);
  printf("%s\n%s\n", dodo_status_name(status), message);
  dodo_options odd;
  dodo_options_init(&odd);
  odd.struct_size = sizeof odd - 4;
  status = dodo_closure_create(DODO_BOX3D_ONLY, &odd, &closure, message, sizeof message);
  printf("%s\n%s\n", dodo_status_name(status), message);
  return 0;
}
"""


@needs_runtime
def test_options_from_a_newer_header_say_the_header_is_newer_than_the_library(tmp_path):
    """A program built against a later dodo.h (a larger dodo_options) and run with this libdodo was
    told "dodo_options.struct_size 88 is not a size this library knows (initialise with
    dodo_options_init)", though it had initialised the struct so: the message named the wrong cause
    and no fix. Now a size above this library's says the header is newer than the library (both
    sizes, the library's version, and what to do); another unknown size keeps the old advice."""
    lines = _run(_compile(tmp_path, "newer_header", NEWER_HEADER_OPTIONS))
    assert lines[0] == "DODO_ERROR_INVALID_ARGUMENT", lines
    assert "larger than this library's" in lines[1] and "newer dodo.h than this libdodo" in lines[1], lines
    assert f"libdodo {dodo.__version__}" in lines[1] or "libdodo 0." in lines[1], lines
    assert lines[2] == "DODO_ERROR_INVALID_ARGUMENT", lines
    assert "is not a size this library knows (initialise with dodo_options_init)" in lines[3], lines


# --- dodo_get_metadata under memory pressure ---------------------------------------------------------

METADATA_OUT_OF_MEMORY = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

int main(int argc, char** argv) {
  const size_t length = (size_t)256 << 20;  /* a key of 256 MiB, made before the limit */
  char* key = malloc(length + 1);
  if (!key) return 3;
  memset(key, 'k', length);
  key[length] = '\0';
  dodo_closure* closure = NULL;
  if (dodo_closure_create(argc > 1 ? argv[1] : DODO_BOX3D_ONLY, NULL, &closure, NULL, 0) != DODO_OK) return 4;
  /* The address space may grow by 64 MiB from here: no copy of the key fits. */
  long pages = 0;
  FILE* statm = fopen("/proc/self/statm", "r");
  if (!statm || fscanf(statm, "%ld", &pages) != 1) return 5;
  fclose(statm);
  struct rlimit limit = {(rlim_t)pages * 4096 + ((rlim_t)64 << 20), RLIM_INFINITY};
  if (setrlimit(RLIMIT_AS, &limit) != 0) return 6;
  long found = dodo_get_metadata(closure, key, NULL, 0);
  long known = dodo_get_metadata(closure, "dodo.format_version", NULL, 0);
  printf("%ld %d\n", found, known > 0 || !dodo_has_model(closure));
  dodo_closure_destroy(closure);
  return 0;
}
"""


@needs_runtime
@pytest.mark.parametrize("with_model", [False, True])
def test_metadata_lookup_under_memory_pressure_answers_instead_of_aborting(tmp_path, with_model):
    """dodo_get_metadata copied the key into a std::string to look it up (std::map::find), outside
    the C API's exception guard: when that copy could not be allocated, std::bad_alloc crossed the
    extern "C" boundary and the host ended in std::terminate (SIGABRT), where dodo.h promises that
    nothing aborts. Shown with a 256 MiB key and the address space capped 64 MiB above its use; a
    short key in a host out of memory takes the same road. The lookup now compares in place,
    allocating nothing: -1 (absent), and a real key is still found under the same cap."""
    program = _compile(tmp_path, "metadata_oom", METADATA_OUT_OF_MEMORY)
    arguments = [_default_model()] if with_model else []
    result = subprocess.run([str(program), *arguments], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.stdout.split() == ["-1", "1"], result.stdout


# --- option refusals name the value given ------------------------------------------------------------

OPTION_VALUES = r"""
#include <dodo/dodo.h>
#include <math.h>
#include <stdio.h>

static void try_options(const char* what, dodo_options* options) {
  dodo_closure* closure = NULL;
  char message[512];
  dodo_status status = dodo_closure_create(DODO_BOX3D_ONLY, options, &closure, message, sizeof message);
  printf("%s: %d %s\n", what, (int)status, message);
  dodo_closure_destroy(closure);
}

int main(void) {
  dodo_options options;
  const double values[] = {1.5, -0.25, NAN, 1.0};
  const char* names[] = {"max_flux_factor 1.5", "max_flux_factor -0.25", "max_flux_factor nan", "max_flux_factor 1"};
  for (int i = 0; i < 4; ++i) {
    dodo_options_init(&options);
    options.max_flux_factor = values[i];
    try_options(names[i], &options);
  }
  dodo_options_init(&options);
  options.lebedev_order = -3;
  try_options("lebedev_order -3", &options);
  return 0;
}
"""


@needs_runtime
def test_option_refusals_name_the_value_given(tmp_path):
    """dodo_options refusals of threads and chunk_size ended with "; got N", but max_flux_factor
    (1.5, -0.25, NaN, 1) and a negative lebedev_order were refused with the rule alone: a host
    reading the value from an input deck could not see what it had passed (a unit mix-up, a NaN
    from an uninitialised variable). Both now end with the value given."""
    lines = _run(_compile(tmp_path, "option_values", OPTION_VALUES))
    rule = "1 max_flux_factor must lie in (0, 1), or 0 for the model's; got "
    assert lines == [
        f"max_flux_factor 1.5: {rule}1.5",
        f"max_flux_factor -0.25: {rule}-0.25",
        f"max_flux_factor nan: {rule}nan",
        f"max_flux_factor 1: {rule}1",
        "lebedev_order -3: 1 lebedev_order must be positive, or 0 for the model's; got -3",
    ], lines


# --- overlap refusals name the array that is overlapped ----------------------------------------------

OVERLAP_NAMES = r"""
#include <dodo/dodo.h>
#include <stdint.h>
#include <stdio.h>

enum { N = 4 };
static double F[N][6][4], G[N][6][4], u[N][4], rate[N], spread[N];
static uint32_t flags[N];

static void show(const char* what, dodo_status status) {
  char message[512];
  dodo_last_error(NULL, message, sizeof message);
  printf("%s: %d %s\n", what, (int)status, message);
}

int main(void) {
  dodo_closure* h = NULL;
  if (dodo_closure_create(DODO_BOX3D_ONLY, NULL, &h, NULL, 0) != DODO_OK) return 1;
  for (int c = 0; c < N; ++c) u[c][0] = 1;
  show("status in F_init", dodo_apply(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, (uint32_t*)&F[1][0][0]));
  show("status in F_pred", dodo_apply(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, (uint32_t*)&G[1][0][0]));
  show("status in u", dodo_apply(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, (uint32_t*)u[1]));
  show("rate in u", dodo_apply_diagnostics(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, flags, u[1], spread));
  show("rate in F_init", dodo_apply_diagnostics(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, flags,
                                                &F[2][0][0], spread));
  show("spread in status", dodo_apply_diagnostics(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, flags, rate,
                                                  (double*)flags));
  show("spread in F_pred", dodo_apply_diagnostics(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, flags, rate,
                                                  &G[3][0][0]));
  show("spread in rate", dodo_apply_diagnostics(h, N, &F[0][0][0], NULL, u[0], NULL, &G[0][0][0], NULL, flags, rate,
                                                rate + 1));
  dodo_closure_destroy(h);
  return 0;
}
"""


@needs_runtime
def test_overlap_refusals_name_the_array_that_is_overlapped(tmp_path):
    """A cell_status sharing memory with an input or the output was refused as "cell_status
    overlaps F_pred, F_init or u", a growth_rate or uncertainty as "... overlaps F_pred, F_init, u
    or cell_status": three or four candidates, where the library knew which one it had found.
    Each refusal now names that array."""
    lines = _run(_compile(tmp_path, "overlap_names", OVERLAP_NAMES))
    assert lines == [
        "status in F_init: 1 cell_status overlaps F_init",
        "status in F_pred: 1 cell_status overlaps F_pred",
        "status in u: 1 cell_status overlaps u",
        "rate in u: 1 growth_rate overlaps u",
        "rate in F_init: 1 growth_rate overlaps F_init",
        "spread in status: 1 uncertainty overlaps cell_status",
        "spread in F_pred: 1 uncertainty overlaps F_pred",
        "spread in rate: 1 uncertainty overlaps growth_rate",
    ], lines


# --- C++: a moved-from dodo::Closure -----------------------------------------------------------------

MOVED_FROM = r"""
#include <dodo/dodo.hpp>
#include <cstdio>
#include <utility>
#include <vector>

int main() {
  dodo::Closure first;  // Box3D alone
  dodo::Closure second = std::move(first);
  std::vector<double> F(24, 0.0), G(24);
  for (int a = 0; a < 6; ++a) F[4 * a] = 1.0;
  second.apply(1, F.data(), nullptr, G.data());  // the moved-to closure works
  auto attempt = [&](const char* what, auto&& call) {
    try {
      call();
      std::printf("%s: no error\n", what);
    } catch (const dodo::Error& error) {
      std::printf("%s: %d %s\n", what, static_cast<int>(error.status()), error.what());
    }
  };
  attempt("apply", [&] { first.apply(1, F.data(), nullptr, G.data()); });
  attempt("counters", [&] { first.counters(); });
  attempt("self_test", [&] { first.self_test(); });
  return 0;
}
"""


@needs_runtime
def test_a_moved_from_cpp_closure_says_it_was_moved_from(tmp_path):
    """A dodo::Closure used after std::move threw dodo::Error "closure handle is NULL": C's words
    for a C argument the C++ host never saw (it holds an object, not a handle). Now the wrapper says
    the object holds no closure because it was moved from (DODO_ERROR_INVALID_ARGUMENT as before)."""
    lines = _run(_compile(tmp_path, "moved_from", MOVED_FROM, language="c++"))
    text = "1 this dodo::Closure holds no closure (it was moved from: use the object it was moved to)"
    assert lines == [f"apply: {text}", f"counters: {text}", f"self_test: {text}"], lines
