"""Outside probe of the C, C++ and Fortran interfaces, round thirty-nine (docs/reliability_cpp.md,
"Round thirty-nine"), as the developer of a transport code. The Fortran module's `dodo_apply`
had `contiguous` assumed-rank dummies, for which gfortran (12) copies every POINTER or
assumed-shape actual into a temporary on every call, contiguous or not (a host's step routine
with F(:, :, :) dummies paid an allocation and a copy of each array a call, which
docs/runtime.md said never happens), and reads a disassociated pointer given for an optional
array (which Fortran makes absent) to copy it: SIGSEGV. The dummies are no longer `contiguous`:
contiguous arrays reach C where they lie, the module copies a non-contiguous section itself.
`dodo.hpp` in a host built with -fno-exceptions stops with one line naming the C API."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import dodo

from capi_host import ROOT, compile_fortran, run_host
from native_build import REQUIRES_C_API, run

pytestmark = REQUIRES_C_API

# Counts the host's own calls to malloc (the module and the compiler's temporaries; the link's
# --wrap does not reach into libdodo).
COUNT_MALLOC = r"""
#include <stddef.h>
void* __real_malloc(size_t size);
static long count;
void* __wrap_malloc(size_t size) { ++count; return __real_malloc(size); }
long host_malloc_count(void) { return count; }
"""

# The cells of the Fortran hosts: n cells, crossing ones (nu_ebar's flux against the others') and
# every fourth stable (no flux), moving along x.
FILL_CELLS = """\
  subroutine fill(F, u)
    real(c_double), intent(out) :: F(:, :, :), u(:, :)
    integer :: c, a
    F = 0
    u = 0
    do c = 1, size(F, 3)
      do a = 1, 6
        F(1, a, c) = 1 + 0.1d0 * (a - 1) + 0.01d0 * c
        F(4, a, c) = merge(-0.4d0, 0.3d0, a == 4)
        if (mod(c, 4) == 2) F(4, a, c) = 0
      end do
      u(1, c) = sqrt(1 + (0.003d0 * c)**2)
      u(2, c) = 0.003d0 * c
    end do
  end subroutine fill
"""

NO_COPIES_HOST = """\
module host_step
  use dodo
  use iso_c_binding, only: c_long
  implicit none
  interface
    integer(c_long) function host_malloc_count() bind(c)
      import :: c_long
    end function host_malloc_count
  end interface
contains
""" + FILL_CELLS + """\
  ! A transport code's step routine: assumed-shape dummies, passed on to the closure.
  subroutine step(closure, F, P, u, cell_status, rate, stat, message)
    type(dodo_closure), intent(in) :: closure
    real(c_double), intent(in) :: F(:, :, :), u(:, :)
    real(c_double), intent(inout) :: P(:, :, :)
    integer(c_int32_t), intent(out) :: cell_status(:)
    real(c_double), intent(out) :: rate(:)
    integer, intent(out) :: stat
    character(len=*), intent(inout) :: message
    call dodo_apply(closure, F, P, u=u, cell_status=cell_status, growth_rate=rate, stat=stat, errmsg=message)
  end subroutine step
end module host_step

program no_copies
  use host_step
  implicit none
  integer, parameter :: n = 64
  type(dodo_closure) :: closure
  real(c_double), target :: F(4, 6, n), P(4, 6, n), R(4, 6, n), u(4, n), rate(n), rate0(n)
  real(c_double), pointer :: pF(:, :, :), pP(:, :, :), pu(:, :), prate(:)
  integer(c_int32_t), target :: cell_status(n), status0(n)
  integer(c_int32_t), pointer :: pstatus(:)
  integer(c_long) :: before
  integer :: stat, k
  character(len=300) :: message
  call fill(F, u)
  call dodo_create(closure, "box3d", stat=stat, errmsg=message)
  call dodo_apply(closure, F, R, u=u, cell_status=status0, growth_rate=rate0, stat=stat, errmsg=message)
  call step(closure, F, P, u, cell_status, rate, stat, message)  ! first call: workspaces
  before = host_malloc_count()
  do k = 1, 10
    call step(closure, F, P, u, cell_status, rate, stat, message)
  end do
  print '(a,i0,a,i0,a,l1)', "assumed-shape ", stat, " mallocs ", host_malloc_count() - before, " same ", &
    all(P == R) .and. all(cell_status == status0) .and. all(rate == rate0)
  pF => F
  pP => P
  pu => u
  pstatus => cell_status
  prate => rate
  P = 0
  before = host_malloc_count()
  do k = 1, 10
    call dodo_apply(closure, pF, pP, u=pu, cell_status=pstatus, growth_rate=prate, stat=stat, errmsg=message)
  end do
  print '(a,i0,a,i0,a,l1)', "pointer ", stat, " mallocs ", host_malloc_count() - before, " same ", &
    all(P == R) .and. all(cell_status == status0) .and. all(rate == rate0)
  print '(a,i0)', "counted ", host_malloc_count()
  call dodo_destroy(closure)
end program no_copies
"""


@pytest.fixture()
def malloc_counter(tmp_path) -> list[str]:
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    source = tmp_path / "count_malloc.c"
    source.write_text(COUNT_MALLOC)
    run(["gcc", "-c", str(source), "-o", str(tmp_path / "count_malloc.o")])
    return [str(tmp_path / "count_malloc.o"), "-Wl,--wrap=malloc"]


def test_fortran_pointer_and_assumed_shape_arrays_reach_c_without_copies(tmp_path, malloc_counter):
    """A host's step routine with assumed-shape dummies, and POINTER arrays, give dodo_apply
    contiguous arrays: they reach C where they lie, so a successful call makes no allocation in
    the host (docs/runtime.md: "a time loop's dodo_apply makes no heap allocation after warm-up,
    as in C"). Before: gfortran copied each of them into a temporary and back on every call
    (`contiguous` assumed-rank dummies), 5 mallocs a call here (F, P, u, cell_status, rate), and
    'assumed-shape 0 mallocs 50'. The results are the direct call's bits either way."""
    program = compile_fortran(tmp_path, "no_copies", NO_COPIES_HOST, *malloc_counter)
    lines = run_host(program, timeout=120)
    assert int(lines[2].split()[1]) > 0, lines  # the counter counts (the host's own allocations)
    assert lines[:2] == ["assumed-shape 0 mallocs 0 same T", "pointer 0 mallocs 0 same T"], lines


def fortran_text(text: str, width: int = 60) -> str:
    """A Fortran character literal of `text`, continued over lines of `width` characters: an installed
    model's path inline passed free form's 132 columns in a deeper checkout (CI's clone)."""
    pieces = [text[i:i + width] for i in range(0, len(text), width)] or [""]
    return '"' + "&\n    &".join(pieces) + '"'


NULL_POINTERS_HOST = """\
module cells
  use dodo
  implicit none
contains
""" + FILL_CELLS + """\
end module cells

program null_pointers
  use cells
  implicit none
  integer, parameter :: n = 12
  type(dodo_closure) :: closure
  real(c_double) :: F(4, 6, n), P(4, 6, n), R(4, 6, n), u(4, n)
  real(c_double), pointer :: no_u(:, :) => null(), no_rate(:) => null(), no_spread(:) => null()
  integer(c_int32_t), pointer :: no_status(:) => null()
  real(c_double), allocatable :: unallocated_u(:, :)
  integer :: stat
  character(len=300) :: message
  call fill(F, u)
  call dodo_create(closure, MODEL, stat=stat, errmsg=message)
  if (stat /= 0) print '(a)', trim(message)
  call dodo_apply(closure, F, R, stat=stat, errmsg=message)  ! every cell at rest: u absent
  P = 0
  call dodo_apply(closure, F, P, u=no_u, stat=stat, errmsg=message)
  print '(a,i0,a,l1)', "u ", stat, " ", all(P == R)
  P = 0
  call dodo_apply(closure, F, P, cell_status=no_status, stat=stat, errmsg=message)
  print '(a,i0,a,l1)', "cell_status ", stat, " ", all(P == R)
  P = 0
  call dodo_apply(closure, F, P, growth_rate=no_rate, stat=stat, errmsg=message)
  print '(a,i0,a,l1)', "growth_rate ", stat, " ", all(P == R)
  P = 0
  call dodo_apply(closure, F, P, uncertainty=no_spread, stat=stat, errmsg=message)
  print '(a,i0,a,l1)', "uncertainty ", stat, " ", all(P == R)
  P = 0
  call dodo_apply(closure, F, P, u=unallocated_u, stat=stat, errmsg=message)
  print '(a,i0,a,l1)', "unallocated u ", stat, " ", all(P == R)
  call dodo_destroy(closure)
end program null_pointers
"""


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_fortran_disassociated_pointers_for_optional_arrays_are_absent(tmp_path, model):
    """A disassociated pointer (`=> null()`) given for `u`, `cell_status`, `growth_rate` or
    `uncertainty` is an absent argument in Fortran (2008): a code whose four-velocity pointer is
    associated only when a fluid moves passes it as it is. Before: SIGSEGV at the call (gfortran
    read the null pointer to copy it for the `contiguous` dummy). Now each is absent: status 0 and
    the bits of the call without it (u: every cell at rest), as an unallocated allocatable was."""
    if model == "default":
        from capi_host import default_model

        model = default_model()
    source = NULL_POINTERS_HOST.replace("MODEL", fortran_text(model))
    program = compile_fortran(tmp_path, "null_pointers", source)
    lines = run_host(program, timeout=120)
    assert lines == ["u 0 T", "cell_status 0 T", "growth_rate 0 T", "uncertainty 0 T", "unallocated u 0 T"], lines


SECTIONS_HOST = """\
module cells
  use dodo
  implicit none
contains
""" + FILL_CELLS + """\
end module cells

program sections
  use cells
  implicit none
  integer, parameter :: nx = 5, ny = 4, n = nx * ny
  type(dodo_closure) :: closure
  real(c_double) :: F(4, 6, n), u(4, n), R(4, 6, n), rate0(n), spread0(n)
  integer(c_int32_t) :: status0(n)
  ! every array of the call a strided section of a larger one; a grid with ghost cells
  real(c_double) :: Fs(4, 6, 2 * n), Ps(4, 6, 2 * n), us(4, 2 * n), rates(2 * n), spreads(2 * n)
  integer(c_int32_t) :: statuses(2 * n)
  real(c_double) :: G(4, 6, 0:nx + 1, 0:ny + 1), Q(4, 6, 0:nx + 1, 0:ny + 1), ug(4, 0:nx + 1, 0:ny + 1)
  real(c_double) :: rate_grid(0:nx + 1, 0:ny + 1)
  integer(c_int32_t) :: status_grid(0:nx + 1, 0:ny + 1)
  integer :: stat
  character(len=300) :: message
  call fill(F, u)
  call dodo_create(closure, MODEL, threads=2, chunk_size=3, stat=stat, errmsg=message)
  if (stat /= 0) print '(a)', trim(message)
  call dodo_apply(closure, F, R, u=u, cell_status=status0, growth_rate=rate0, uncertainty=spread0, stat=stat)
  print '(a,i0,a,l1)', "reference ", stat, " crossing ", any(rate0 > 0)
  Fs = -7
  Ps = -8
  us = -9
  rates = -1
  spreads = -2
  statuses = -3
  Fs(:, :, 1:2 * n:2) = F
  us(:, 1:2 * n:2) = u
  call dodo_apply(closure, Fs(:, :, 1:2 * n:2), Ps(:, :, 2:2 * n:2), u=us(:, 1:2 * n:2), &
                  cell_status=statuses(2:2 * n:2), growth_rate=rates(1:2 * n:2), uncertainty=spreads(2:2 * n:2), &
                  stat=stat, errmsg=message)
  print '(a,i0,a,l1,a,l1)', "strided ", stat, " same ", all(Ps(:, :, 2:2 * n:2) == R) .and. &
    all(statuses(2:2 * n:2) == status0) .and. all(rates(1:2 * n:2) == rate0) .and. &
    all(spreads(2:2 * n:2) == spread0), " between untouched ", all(Ps(:, :, 1:2 * n:2) == -8) .and. &
    all(statuses(1:2 * n:2) == -3) .and. all(rates(2:2 * n:2) == -1) .and. all(spreads(1:2 * n:2) == -2) .and. &
    all(Fs(:, :, 2:2 * n:2) == -7) .and. all(us(:, 2:2 * n:2) == -9)
  ! in place on one strided section
  Ps = -8
  Ps(:, :, 1:2 * n:2) = F
  call dodo_apply(closure, Ps(:, :, 1:2 * n:2), Ps(:, :, 1:2 * n:2), u=us(:, 1:2 * n:2), stat=stat)
  print '(a,i0,a,l1)', "in place ", stat, " same ", all(Ps(:, :, 1:2 * n:2) == R) .and. all(Ps(:, :, 2:2 * n:2) == -8)
  ! the interior of a grid with ghost cells (rank 4), flat outputs and grid outputs
  G = -5
  Q = -6
  ug = -4
  rate_grid = -1
  status_grid = -3
  G(:, :, 1:nx, 1:ny) = reshape(F, [4, 6, nx, ny])
  ug(:, 1:nx, 1:ny) = reshape(u, [4, nx, ny])
  call dodo_apply(closure, G(:, :, 1:nx, 1:ny), Q(:, :, 1:nx, 1:ny), u=ug(:, 1:nx, 1:ny), &
                  cell_status=status_grid(1:nx, 1:ny), growth_rate=rate_grid(1:nx, 1:ny), stat=stat, errmsg=message)
  print '(a,i0,a,l1,a,l1)', "grid ", stat, " same ", all(reshape(Q(:, :, 1:nx, 1:ny), [4, 6, n]) == R) .and. &
    all(reshape(status_grid(1:nx, 1:ny), [n]) == status0) .and. all(reshape(rate_grid(1:nx, 1:ny), [n]) == rate0), &
    " ghosts untouched ", count(Q == -6) == 4 * 6 * ((nx + 2) * (ny + 2) - n) .and. &
    count(status_grid == -3) == (nx + 2) * (ny + 2) - n .and. count(rate_grid == -1) == (nx + 2) * (ny + 2) - n
  ! a refused call (uncertainty one entry short) writes none of the sections
  Ps = -8
  statuses = -3
  call dodo_apply(closure, Fs(:, :, 1:2 * n:2), Ps(:, :, 2:2 * n:2), cell_status=statuses(2:2 * n:2), &
                  uncertainty=spreads(2:2 * n - 2:2), stat=stat, errmsg=message)
  print '(a,i0,a,l1)', "refused ", stat, " untouched ", all(Ps == -8) .and. all(statuses == -3)
  print '(a)', trim(message)
  call dodo_destroy(closure)
end program sections
"""


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_fortran_non_contiguous_sections_of_every_argument_give_the_contiguous_bits(tmp_path, model):
    """Strided sections for all six arrays at once, in place on one section, and the interior of a
    grid with ghost cells (rank 4) with grid-shaped outputs: each section's values are the
    contiguous call's bits and nothing between or around them is written; a refused call writes
    none of them. The module copies such sections itself now (the compiler did before); this
    held before and after."""
    if model == "default":
        from capi_host import default_model

        model = default_model()
    source = SECTIONS_HOST.replace("MODEL", fortran_text(model))
    program = compile_fortran(tmp_path, "sections", source)
    lines = run_host(program, timeout=300)
    assert lines[0] == "reference 0 crossing T", lines
    assert lines[1:5] == ["strided 0 same T between untouched T", "in place 0 same T",
                          "grid 0 same T ghosts untouched T", "refused 1 untouched T"], lines
    assert lines[5] == "uncertainty must have one entry per cell: it has 19 for 20 cell(s)", lines


NO_EXCEPTIONS_HOST = """\
#include <dodo/dodo.hpp>
int main() {
  dodo::Closure closure;
  return closure.has_model() ? 1 : 0;
}
"""


@pytest.mark.parametrize("compiler", ["g++", "clang++"])
def test_dodo_hpp_in_a_host_without_exceptions_names_the_c_api(tmp_path, compiler):
    """dodo.hpp reports failures by throwing dodo::Error: a host built with -fno-exceptions got
    one error per `throw` inside the header (g++: "exception handling disabled, use '-fexceptions'
    to enable"; clang++: "cannot use 'throw' with exceptions disabled", three times), none naming
    the C API. Now the header's first error is one line that says both ways out, as for C++11;
    with exceptions the header compiles clean."""
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    source = tmp_path / "host.cpp"
    source.write_text(NO_EXCEPTIONS_HOST)
    include = str(ROOT / "cpp/include")
    refused = subprocess.run([compiler, "-std=c++17", "-fno-exceptions", f"-I{include}", "-c", str(source), "-o",
                              str(tmp_path / "host.o")], capture_output=True, text=True)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if "error" in line]
    assert "dodo/dodo.hpp" in errors[0] and "-fno-exceptions" in errors[0] and "dodo/dodo.h," in errors[0], errors
    assert "-fexceptions" in errors[0], errors
    assert "exception handling disabled" not in refused.stderr, refused.stderr  # g++'s, from inside the header
    assert "cannot use 'throw'" not in refused.stderr, refused.stderr  # clang++'s
    run([compiler, "-std=c++17", "-Wall", "-Wextra", "-pedantic", "-Werror", f"-I{include}", "-c", str(source), "-o",
         str(tmp_path / "host.o")])


LARGE_SECTION_HOST = """\
program large_section
  use dodo
  implicit none
  integer, parameter :: n = 100000
  type(dodo_closure) :: closure
  real(c_double), allocatable :: F(:, :, :), P(:, :, :)
  integer(c_int32_t), allocatable :: cell_status(:)
  integer :: stat
  allocate(F(4, 6, 2 * n), P(4, 6, 2 * n), cell_status(2 * n))
  F = 0
  F(1, :, :) = 1
  P = -1
  cell_status = -1
  call dodo_create(closure, "box3d", stat=stat)
  call dodo_apply(closure, F(:, :, 1:2 * n:2), P(:, :, 1:2 * n:2), cell_status=cell_status(1:2 * n:2), stat=stat)
  print '(a,i0,a,l1,a,l1)', "stat ", stat, " stable ", all(cell_status(1:2 * n:2) == DODO_CELL_NO_CROSSING) .and. &
    all(P(:, :, 1:2 * n:2) == F(:, :, 1:2 * n:2)), " between untouched ", all(P(:, :, 2:2 * n:2) == -1)
  call dodo_destroy(closure)
end program large_section
"""


def test_fortran_large_strided_section_in_an_ofast_host_keeps_off_the_stack(tmp_path):
    """A host built with -Ofast (or -O3 -fstack-arrays: many codes' release flags) passing a
    strided section of 100,000 cells (19 MB): gfortran made its copy for the `contiguous` dummy
    on the host's stack, and the host died at the call (SIGSEGV, 8 MiB stack, the usual limit).
    The module now makes the copy itself, on the heap, whatever the host's flags."""
    import resource

    program = compile_fortran(tmp_path, "large_section", LARGE_SECTION_HOST, "-Ofast")
    eight_mib = 8 * 1024 * 1024
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_STACK, (eight_mib, eight_mib)))
    assert result.returncode == 0, (result.returncode, result.stderr[-1000:])
    assert result.stdout.split("\n")[0] == "stat 0 stable T between untouched T", result.stdout


PAREN_HOST = """\
program paren_host
  use dodo
  implicit none
  type(dodo_closure) :: closure
  real(c_double) :: F(4, 6, 2), P(4, 6, 2)
  integer :: stat
  F = 0
  F(1, :, :) = 1
  call dodo_create(closure, DODO_BOX3D_ONLY, stat=stat)
  call dodo_apply(closure, F, P, stat=stat)
  print '(a,i0)', "applied ", stat
  call dodo_destroy(closure)
end program paren_host
"""


@pytest.mark.parametrize("generator", ["Unix Makefiles", "Ninja"])
def test_the_documented_module_copy_builds_from_a_prefix_with_parentheses(tmp_path, generator):
    """docs/runtime.md ("Building against an installed Dodo"): with Dodo under a path holding a
    parenthesis (here a copy of the installed package under ".../dodo (copy)/"), CMake's Makefile
    generator stopped the module's library with '/bin/sh: 1: Syntax error: "(" unexpected' (its
    .provides.build rule; CMake's, not Dodo's). The documented remedy, the module copied into the
    build tree with configure_file(COPYONLY), builds with Make and Ninja and the host runs."""
    from native_build import PATHS, tool

    cmake, gfortran = tool("cmake"), shutil.which("gfortran")
    if not cmake or not gfortran:
        pytest.skip("cmake or gfortran is not installed")
    make_program = tool("make") if generator == "Unix Makefiles" else tool("ninja")
    if not make_program:
        pytest.skip(f"no build program for {generator}")
    installed = Path(PATHS["lib_dir"]).parent
    prefix = tmp_path / "dodo (copy)" / "dodo"
    for part in ("include", "lib"):
        shutil.copytree(installed / part, prefix / part, symlinks=True)
    source = tmp_path / "src"
    source.mkdir()
    (source / "host.f90").write_text(PAREN_HOST)
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(TransportHost LANGUAGES C Fortran)\n"
        "find_package(Dodo CONFIG REQUIRED)\n"
        "configure_file(${Dodo_FORTRAN_MODULE_SOURCE} ${CMAKE_CURRENT_BINARY_DIR}/dodo.f90 COPYONLY)\n"
        "add_library(dodo_fortran STATIC ${CMAKE_CURRENT_BINARY_DIR}/dodo.f90)\n"
        "target_link_libraries(dodo_fortran PUBLIC Dodo::dodo)\n"
        "add_executable(host host.f90)\ntarget_link_libraries(host PRIVATE dodo_fortran)\n")
    build = tmp_path / "build"
    run([cmake, "-S", str(source), "-B", str(build), "-G", generator, f"-DCMAKE_MAKE_PROGRAM={make_program}",
         f"-DDodo_DIR={prefix / 'lib/cmake/Dodo'}"])
    run([cmake, "--build", str(build), "--parallel", "2"])
    assert run_host(build / "host", timeout=120) == ["applied 0"]


NO_REALLOC_HOST = """\
program no_realloc
  use dodo
  implicit none
  type(dodo_closure) :: closure, from_bytes
  type(dodo_counters) :: counters
  real(c_double) :: F(4, 6, 3), P(4, 6, 3), worst
  integer(c_int8_t), allocatable :: bytes(:)
  integer :: stat, unit, size_bytes, a
  logical :: found
  character(len=300) :: message
  character(len=4096) :: model
  call get_command_argument(1, model)
  F = 0
  do a = 1, 6
    F(1, a, :) = 1 + 0.1d0 * a
    F(4, a, :) = merge(-0.4d0, 0.3d0, a == 4)
  end do
  call dodo_create(closure, "/nonexistent/model.onnx", stat=stat, errmsg=message)
  print '(i0,1x,a)', stat, trim(message)
  call dodo_create(closure, model, threads=2, z_method="exact", stat=stat, errmsg=message)
  print '(a,i0)', "create ", stat
  call dodo_apply(closure, F, P, stat=stat, errmsg=message)
  call dodo_self_test(closure, worst, stat=stat)
  call dodo_get_counters(closure, counters)
  print '(a,i0,a,i0)', "apply ", stat, " cells ", counters%cells
  print '(4a,l1)', "[", dodo_get_metadata(closure, "dodo.head", found), "] ", "found ", found
  print '(3a)', "[", dodo_version_string(), "]"
  print '(a,l1)', "default model named ", len(dodo_default_model_path()) > 0
  open(newunit=unit, file=model, access="stream", form="unformatted", status="old")
  inquire(unit=unit, size=size_bytes)
  allocate(bytes(size_bytes))
  read(unit) bytes
  close(unit)
  call dodo_create_from_memory(from_bytes, bytes, onnxruntime_library="", stat=stat, errmsg=message)
  print '(a,i0)', "from memory ", stat
  call dodo_destroy(from_bytes)
  call dodo_destroy(closure)
end program no_realloc
"""


def test_fortran_module_built_without_reallocation_on_assignment(tmp_path):
    """gfortran's -fno-realloc-lhs (ifort's old default, kept by codes built with both compilers;
    a CMake host's CMAKE_Fortran_FLAGS reach the module's library) on the module and the host:
    the module gave its C strings their size by assignment (c_text = to_c_string(text)), which
    then wrote through the unallocated array's null pointer: every dodo_create with a model path
    died of SIGSEGV in checked_c_string. Now every procedure runs as in the plain build."""
    from capi_host import default_model

    program = compile_fortran(tmp_path, "no_realloc", NO_REALLOC_HOST, "-fno-realloc-lhs")
    lines = run_host(program, default_model(), timeout=120)
    assert lines == ['2 model file "/nonexistent/model.onnx" does not exist', "create 0", "apply 0 cells 3",
                     "[equivariant] found T", f"[{dodo.__version__}]", "default model named T",
                     "from memory 0"], lines


KINDS_HOST = """\
program kinds
  use dodo
  implicit none
  type(dodo_closure) :: closure
  integer(c_int8_t) :: bytes(4)
  integer :: stat
  character(len=300) :: message
  call dodo_create(closure, DODO_BOX3D_ONLY, stat=stat, errmsg=message)
  print '(i0,1x,a)', stat, trim(message)
  bytes = 0
  call dodo_create_from_memory(closure, bytes, stat=stat, errmsg=message)
  print '(i0,1x,a)', stat, trim(message)
end program kinds
"""


@pytest.mark.parametrize("flag", ["-finteger-4-integer-8", "-freal-8-real-16"])
def test_fortran_module_built_with_a_kind_promotion_flag_says_so(tmp_path, flag):
    """gfortran's kind promotion flags (-finteger-4-integer-8 makes c_int and c_int32_t 8 bytes,
    -freal-8-real-16 makes c_double 16) on the module change dodo_options and the arrays under C:
    the create was refused by C as 'dodo_options.struct_size 80 is larger than this library's (64
    bytes): the program was built against a newer dodo.h than this libdodo', blaming versions.
    Now both creates say what happened and what to do (default-kind flags such as
    -fdefault-integer-8 and -freal-4-real-8 change no C kind and still work)."""
    program = compile_fortran(tmp_path, "kinds", KINDS_HOST, flag)
    lines = run_host(program, timeout=60)
    assert len(lines) == 2, lines
    for line in lines:
        assert line.startswith("1 dodo.f90 was compiled with a flag that changes C's kinds"), lines
        assert "-finteger-4-integer-8 or -freal-8-real-16: compile dodo.f90 without it" in line, lines


def test_fortran_module_compiles_under_realloc_lhs_warnings_as_errors(tmp_path):
    """A host that forbids hidden reallocation (gfortran -Wrealloc-lhs -Werror, the compile-time
    side of -fno-realloc-lhs; a CMake host's flags reach the module's library): the module's two
    `c_text = to_c_string(...)` assignments stopped its compile ('Code for reallocating the
    allocatable array at (1) will be added [-Werror=realloc-lhs]'). Now it compiles clean."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed (apt-get install gfortran)")
    run(["gfortran", "-std=f2018", "-Wall", "-Wrealloc-lhs", "-Werror", "-J", str(tmp_path), "-c",
         str(ROOT / "cpp/include/dodo/dodo.f90"), "-o", str(tmp_path / "dodo.o")])
