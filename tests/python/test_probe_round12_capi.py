"""Outside probe of the C, C++ and Fortran interfaces, round twelve (docs/reliability_cpp.md,
"Round twelve"). Each test failed on the headers as they were before its fix: the programs are
compiled against the source tree's dodo.hpp and dodo.f90 and linked to the installed libdodo."""
from __future__ import annotations

import shutil
import subprocess

import pytest

import dodo

from capi_host import compile_fortran as _fortran
from capi_host import compile_host as _compile
from capi_host import default_model as _default_model
from capi_host import needs_runtime
from capi_host import run_host as _run


# --- Fortran: a model path holding a NUL -------------------------------------------------------------

FORTRAN_NUL_PATH = """
program nul_path
  use dodo
  use, intrinsic :: iso_c_binding, only: c_null_char
  implicit none
  type(dodo_closure) :: closure
  integer :: stat
  character(len=512) :: message
  message = ""
  call dodo_create(closure, "box3d" // c_null_char // "/nonexistent/model.onnx", stat=stat, errmsg=message)
  print '(a, i0, 1x, l1, 1x, a)', "inner ", stat, dodo_has_model(closure), trim(message)
  call dodo_destroy(closure)
  message = ""
  call dodo_create(closure, "box3d" // c_null_char, stat=stat, errmsg=message)
  print '(a, i0, 1x, l1, 1x, a)', "terminator ", stat, dodo_has_model(closure), trim(message)
  call dodo_destroy(closure)
  message = ""
  call dodo_create(closure, c_null_char // "   ", stat=stat, errmsg=message)
  print '(a, i0, 1x, a)', "empty ", stat, trim(message)
  call dodo_destroy(closure)
end program nul_path
"""


@needs_runtime
def test_fortran_model_path_holding_a_nul_is_refused(tmp_path):
    """dodo_create(closure, "box3d" // c_null_char // "/nonexistent/model.onnx") gave stat 0 and a
    Box3D-only closure: C reads the path up to its first NUL, so the learned correction was dropped
    without a word (round seventeen fixed the same in dodo.hpp only). Now refused, naming the NUL;
    a C-style terminator (a NUL followed by nothing but NULs and blanks) still ends the path."""
    program = _fortran(tmp_path, "nul_path", FORTRAN_NUL_PATH)
    lines = _run(program)
    assert lines[0] == ("inner 1 F model_path contains a NUL character before its end (C would read only the part "
                        "before it)"), lines
    assert lines[1] == "terminator 0 F", lines
    assert lines[2].startswith("empty 1 empty model path"), lines


# --- Fortran: no allocation per call -----------------------------------------------------------------

MALLOC_COUNTER = r"""
#define _GNU_SOURCE
#include <stddef.h>
extern void* __libc_malloc(size_t size);
extern void* __libc_calloc(size_t n, size_t size);
extern void* __libc_realloc(void* p, size_t size);
static long allocations = 0;
void* malloc(size_t size) { __atomic_fetch_add(&allocations, 1, __ATOMIC_RELAXED); return __libc_malloc(size); }
void* calloc(size_t n, size_t size) { __atomic_fetch_add(&allocations, 1, __ATOMIC_RELAXED); return __libc_calloc(n, size); }
void* realloc(void* p, size_t size) { __atomic_fetch_add(&allocations, 1, __ATOMIC_RELAXED); return __libc_realloc(p, size); }
long probe_allocations(void) { return __atomic_load_n(&allocations, __ATOMIC_RELAXED); }
"""

FORTRAN_ALLOCATIONS = """
program allocations
  use dodo
  use, intrinsic :: iso_c_binding, only: c_long
  implicit none
  interface
    function probe_allocations() bind(c, name="probe_allocations")
      import :: c_long
      integer(c_long) :: probe_allocations
    end function
  end interface
  integer, parameter :: n = 256, calls = 50
  type(dodo_closure) :: closure
  real(c_double) :: F(4, 6, n), G(4, 6, n), u(4, n), rate(n), spread(n)
  integer(c_int32_t) :: flags(n)
  type(dodo_counters) :: counters
  integer :: c, a, k, stat, failures
  integer(c_long) :: before, diagnostics, plain, counting, resetting
  character(len=4096) :: model
  F = 0
  u = 0
  do c = 1, n
    u(1, c) = 1
    do a = 1, 6
      F(1, a, c) = 1 + 0.1d0 * a
      F(4, a, c) = merge(-0.4d0, 0.3d0, a == 4) * sin(real(c + a, c_double))
    end do
  end do
  call get_command_argument(1, model)
  call dodo_create(closure, trim(model), stat=stat)
  if (stat /= 0) error stop "create"
  failures = 0
  do k = 1, 3
    call dodo_apply(closure, F, G, u=u, cell_status=flags, stat=stat, growth_rate=rate, uncertainty=spread)
    call dodo_apply(closure, F, G)
    call dodo_get_counters(closure, counters, stat=stat)
    call dodo_reset_counters(closure, stat=stat)
  end do
  before = probe_allocations()
  do k = 1, calls
    call dodo_apply(closure, F, G, u=u, cell_status=flags, stat=stat, growth_rate=rate, uncertainty=spread)
    if (stat /= 0) failures = failures + 1
  end do
  diagnostics = probe_allocations() - before
  before = probe_allocations()
  do k = 1, calls
    call dodo_apply(closure, F, G)
  end do
  plain = probe_allocations() - before
  before = probe_allocations()
  do k = 1, calls
    call dodo_get_counters(closure, counters, stat=stat)
    if (stat /= 0) failures = failures + 1
  end do
  counting = probe_allocations() - before
  before = probe_allocations()
  do k = 1, calls
    call dodo_reset_counters(closure, stat=stat)
    if (stat /= 0) failures = failures + 1
  end do
  resetting = probe_allocations() - before
  print '(a, 5(1x, i0))', "allocations", diagnostics, plain, counting, resetting, failures
  call dodo_destroy(closure)
end program allocations
"""


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_fortran_calls_allocate_nothing_per_call_after_warm_up(tmp_path, model):
    """Every Fortran call read the thread's last error (two dodo_last_error calls, an allocated
    buffer and an allocated message) also when it had succeeded: 3 heap allocations per
    dodo_apply and per dodo_get_counters in a time loop, where the C call makes none after warm-up
    (docs/runtime.md; tests/c/count_allocations.c). The message is now read on failure only."""
    from test_native_programs import run

    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    counter_source = tmp_path / "counter.c"
    counter_source.write_text(MALLOC_COUNTER)
    counter = tmp_path / "counter.o"
    run(["gcc", "-c", str(counter_source), "-o", str(counter)])
    program = _fortran(tmp_path, "allocations", FORTRAN_ALLOCATIONS, str(counter))
    path = "box3d" if model == "box3d" else _default_model()
    lines = _run(program, path)
    assert lines == ["allocations 0 0 0 0 0"], lines


# --- Fortran: counters, model and metadata as in C ------------------------------------------------

# The start of the body of a Fortran host below: F (4, 6, cells) filled with cells at rest with an
# ELN crossing (species 4's flux against the others'), and a closure of the model named by the
# first argument, the program stopping if it is not made.
FORTRAN_CLOSURE_FROM_ARGUMENT = """  F = 0
  do a = 1, 6
    F(1, a, :) = 1 + 0.1d0 * a
    F(4, a, :) = merge(-0.4d0, 0.3d0, a == 4)
  end do
  call get_command_argument(1, model)
  call dodo_create(closure, trim(model), stat=stat)
  if (stat /= 0) error stop "create"
"""

FORTRAN_METADATA = """
program metadata
  use dodo
  implicit none
  type(dodo_closure) :: closure, stale
  real(c_double) :: F(4, 6, 3), G(4, 6, 3)
  type(dodo_counters) :: counters
  integer :: stat, a
  logical :: found
  character(len=4096) :: model
  character(len=512) :: message
  character(len=:), allocatable :: value
""" + FORTRAN_CLOSURE_FROM_ARGUMENT + """  call dodo_apply(closure, F, G)
  call dodo_get_counters(closure, counters)
  print '(a, i0)', "cells before reset ", counters%cells
  call dodo_reset_counters(closure, stat=stat)
  call dodo_get_counters(closure, counters)
  print '(a, i0, 1x, i0)', "cells after reset ", stat, counters%cells
  print '(a, l1)', "has model ", dodo_has_model(closure)
  value = dodo_get_metadata(closure, "dodo.format_version", found)
  print '(a, l1, 1x, a)', "format ", found, value
  value = dodo_get_metadata(closure, "dodo.head   ", found)
  print '(a, l1, 1x, a)', "head ", found, value
  value = dodo_get_metadata(closure, "dodo.no_such_key", found)
  print '(a, l1, 1x, a, a)', "absent ", found, value, "|"
  value = dodo_get_metadata(closure, "dodo.format_version" // char(0) // "x", found)
  print '(a, l1, 1x, a, a)', "nul key ", found, value, "|"
  stale = closure
  call dodo_destroy(closure)
  message = ""
  call dodo_reset_counters(stale, stat=stat, errmsg=message)
  print '(a, i0, 1x, a)', "stale reset ", stat, trim(message)
  print '(a, l1)', "stale has model ", dodo_has_model(stale)
end program metadata
"""


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_fortran_reset_counters_has_model_and_metadata_as_in_c(tmp_path, model):
    """The Fortran module had no dodo_reset_counters, dodo_has_model or dodo_get_metadata: a
    Fortran transport code could not count a time step's events (dodo.h's reset), tell a
    Box3D-only closure from one with a model, or read which model it loaded, without writing its
    own interfaces to the C symbols. They now exist, with the C calls' meaning and messages."""
    path = "box3d" if model == "box3d" else _default_model()
    program = _fortran(tmp_path, "metadata", FORTRAN_METADATA)
    lines = _run(program, path)
    if model == "box3d":
        expected_model = ["has model F", "format F", "head F"]
    else:
        closure = dodo.Closure(path)
        expected_model = ["has model T", "format T " + closure.metadata["dodo.format_version"],
                          "head T " + closure.metadata["dodo.head"]]
    assert lines == ["cells before reset 3", "cells after reset 0 0", *expected_model, "absent F |", "nul key F |",
                     "stale reset 1 closure handle is not live (destroyed or never created)",
                     "stale has model F"], lines


# --- C++: a model path that is a null C string -------------------------------------------------------

CPP_NULL_PATH = r"""
#include <dodo/dodo.hpp>
#include <cstdio>
#include <cstdlib>
int main() {
  const char* path = std::getenv("DODO_PROBE_ROUND12_UNSET");  // unset: NULL
  try {
    dodo::Closure closure(path);
    std::printf("created has_model=%d\n", closure.has_model() ? 1 : 0);
  } catch (const dodo::Error& error) {
    std::printf("dodo::Error %d %s\n", static_cast<int>(error.status()), error.what());
  } catch (const std::exception& error) {
    std::printf("other %s\n", error.what());
  }
  const char* box3d = DODO_BOX3D_ONLY;
  dodo::Closure alone(box3d);
  std::printf("box3d has_model=%d\n", alone.has_model() ? 1 : 0);
}
"""


@needs_runtime
def test_cpp_null_c_string_model_path_is_a_dodo_error(tmp_path):
    """dodo::Closure(path) with a const char* that is NULL (a path from getenv of an unset variable)
    reached the std::string overload: construction of a std::string from NULL is undefined
    behaviour, and libstdc++ threw std::logic_error "basic_string: construction from null is not
    valid", not the dodo::Error the header promises. Now dodo::Error DODO_ERROR_INVALID_ARGUMENT
    naming the null pointer (not Box3D alone: an unset path must not drop the correction)."""
    lines = _run(_compile(tmp_path, "null_path", CPP_NULL_PATH, "c++"))
    assert lines == ["dodo::Error 1 model path is a null pointer (for Box3D alone use dodo::Closure(options) or "
                     "DODO_BOX3D_ONLY)", "box3d has_model=0"], lines


# --- Fortran: z_method and onnxruntime_library, as C and C++ have them ------------------------------

FORTRAN_TEXT_OPTIONS = """
program text_options
  use dodo
  use, intrinsic :: iso_c_binding, only: c_null_char
  implicit none
  integer, parameter :: n = 40
  type(dodo_closure) :: closure
  real(c_double) :: F(4, 6, n), exact(4, 6, n), jedynak(4, 6, n)
  integer(c_int8_t), allocatable :: package(:)
  integer :: c, a, stat, unit, bytes
  character(len=4096) :: model
  character(len=1024) :: message
  F = 0
  do c = 1, n
    do a = 1, 6
      F(1, a, c) = 1 + 0.1d0 * a + 0.05d0 * sin(real(c, c_double))
      F(2, a, c) = merge(-0.3d0, 0.3d0, a == 4) * cos(0.1d0 * c)
      F(4, a, c) = 0.2d0 * sin(0.3d0 * c + a)
    end do
  end do
  call get_command_argument(1, model)
  ! First model load of the process: an explicit library is honoured or fails (no fallback).
  message = ""
  call dodo_create(closure, trim(model), onnxruntime_library="/nonexistent/libonnxruntime.so.1", stat=stat, &
                   errmsg=message)
  print '(a, i0, 1x, l1)', "library ", stat, index(message, "/nonexistent/libonnxruntime.so.1") > 0
  call dodo_create(closure, DODO_BOX3D_ONLY, z_method="exact")
  call dodo_apply(closure, F, exact)
  call dodo_create(closure, DODO_BOX3D_ONLY, z_method="jedynak  ")
  call dodo_apply(closure, F, jedynak)
  print '(a, l1)', "jedynak differs ", any(exact /= jedynak)
  call dodo_create(closure, DODO_BOX3D_ONLY, z_method="   ")
  call dodo_apply(closure, F, jedynak)
  print '(a, l1)', "blank is exact ", all(exact == jedynak)
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, z_method="EXACT", stat=stat, errmsg=message)
  print '(a, i0, 1x, a)', "unknown ", stat, trim(message)
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, z_method="exact" // c_null_char // "jedynak", stat=stat, errmsg=message)
  print '(a, i0, 1x, l1, 1x, a)', "nul z_method ", stat, dodo_has_model(closure), trim(message)
  message = ""
  call dodo_create(closure, trim(model), z_method="jedynak", stat=stat, errmsg=message)
  print '(a, i0)', "model refuses jedynak ", stat
  open(newunit=unit, file=trim(model), access="stream", form="unformatted", action="read")
  inquire(unit=unit, size=bytes)
  allocate(package(bytes))
  read(unit) package
  close(unit)
  message = ""
  call dodo_create_from_memory(closure, package, z_method="jedynak", stat=stat, errmsg=message)
  print '(a, i0)', "memory refuses jedynak ", stat
  message = ""
  call dodo_create_from_memory(closure, package, onnxruntime_library="x" // c_null_char // "y", stat=stat, &
                               errmsg=message)
  print '(a, i0, 1x, a)', "nul library ", stat, trim(message)
  call dodo_create_from_memory(closure, package, z_method="exact" // c_null_char, stat=stat)
  print '(a, i0, 1x, l1)', "memory exact ", stat, dodo_has_model(closure)
  call dodo_destroy(closure)
end program text_options
"""


@needs_runtime
def test_fortran_takes_z_method_and_onnxruntime_library_as_c_does(tmp_path):
    """The Fortran module had neither dodo_options string: a Fortran code could not choose
    Jedynak's closure for Box3D alone, nor name the ONNX Runtime library (C and C++ can). Both are
    now optional arguments of dodo_create and dodo_create_from_memory, with C's meaning (blank: the
    model's / the search), and a NUL before the end is refused as for the model path."""
    import os

    path = _default_model()
    program = _fortran(tmp_path, "text_options", FORTRAN_TEXT_OPTIONS)
    environment = {key: value for key, value in os.environ.items() if key != "DODO_ONNXRUNTIME_LIBRARY"}
    result = subprocess.run([str(program), path], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL, env=environment)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines[0] == "library 5 T", lines
    assert lines[1:3] == ["jedynak differs T", "blank is exact T"], lines
    assert lines[3].startswith("unknown 1 ") and "z_method" in lines[3], lines
    assert lines[4] == ("nul z_method 1 F z_method contains a NUL character before its end (C would read only the "
                        "part before it)"), lines
    assert lines[5:7] == ["model refuses jedynak 4", "memory refuses jedynak 4"], lines
    assert lines[7] == ("nul library 1 onnxruntime_library contains a NUL character before its end (C would read "
                        "only the part before it)"), lines
    assert lines[8] == "memory exact 0 T", lines


# --- the workspace check and a control group's memory limit -----------------------------------------

def test_the_workspace_check_reads_a_control_groups_memory_limit(tmp_path):
    """refuse_workspaces_beyond_memory (closure.cpp) compared threads x chunk_size's workspaces with
    sysconf(_SC_PHYS_PAGES), the machine's physical memory, so a job confined by a control group (a
    batch system's cgroup, a container's --memory) passed it and met the kernel's out-of-memory
    killer instead of DODO_ERROR_OUT_OF_MEMORY. The bound is now the smallest of the physical memory
    and the cgroup v1 / v2 limits along the process's cgroup path. tests/cpp/test_memory_limit.cpp
    (also ctest `memory_limit`) checks the reader on made-up cgroup trees; this machine gives the
    session no cgroup of its own to limit, so the refusal itself is not run end to end."""
    from test_native_programs import ROOT, run

    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    program = tmp_path / "test_memory_limit"
    run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/src'}",
         str(ROOT / "tests/cpp/test_memory_limit.cpp"), str(ROOT / "cpp/src/runtime/memory_limit.cpp"),
         "-o", str(program)])
    lines = _run(program)
    assert lines[-1] == "memory_limit: 0 failed", lines
    assert not [line for line in lines if line.startswith("FAIL")], lines


# --- Fortran: a failed re-creation keeps the closure the variable held ------------------------------

FORTRAN_RECREATE = """
program recreate
  use dodo
  implicit none
  type(dodo_closure) :: closure
  integer :: stat, a
  integer(c_int8_t) :: empty(0)
  real(c_double) :: F(4, 6, 2), G(4, 6, 2)
  character(len=4096) :: model
  character(len=512) :: message
""" + FORTRAN_CLOSURE_FROM_ARGUMENT + """  message = ""
  call dodo_create(closure, "/nonexistent/model.onnx", stat=stat, errmsg=message)
  print '(a, l1, 1x, l1)', "after a failed path ", stat /= 0, dodo_has_model(closure)
  call dodo_create_from_memory(closure, empty, stat=stat, errmsg=message)
  print '(a, l1, 1x, l1)', "after failed bytes ", stat /= 0, dodo_has_model(closure)
  call dodo_create(closure, "box3d", z_method="no such method", stat=stat, errmsg=message)
  print '(a, l1, 1x, l1)', "after a refused option ", stat /= 0, dodo_has_model(closure)
  call dodo_apply(closure, F, G, stat=stat)
  print '(a, i0)', "apply ", stat
  call dodo_create(closure, "box3d", stat=stat)
  print '(a, i0, 1x, l1)', "replaced ", stat, dodo_has_model(closure)
  call dodo_destroy(closure)
end program recreate
"""


@needs_runtime
def test_fortran_failed_re_creation_keeps_the_closure_the_variable_held(tmp_path):
    """dodo_create / dodo_create_from_memory on a variable holding a live closure destroyed it
    before trying the new one, so a failed re-creation (a missing file, empty bytes, a refused
    option) left the host with no closure at all. Now the new closure replaces the old only when
    it is made (as C++'s move assignment does); a failure leaves the old one usable."""
    program = _fortran(tmp_path, "recreate", FORTRAN_RECREATE)
    lines = _run(program, _default_model())
    assert lines == ["after a failed path T T", "after failed bytes T T", "after a refused option T T",
                     "apply 0", "replaced 0 F"], lines
