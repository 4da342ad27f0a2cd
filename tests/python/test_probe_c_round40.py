"""Outside probe of the C, C++ and Fortran interfaces, round forty (docs/reliability_cpp.md,
"Round forty"), as the developer of a transport code. Round thirty-nine's open items: the C
loader said "does not exist" of a model path that is a symbolic link to nothing (Python names the
link); the Fortran module's `dodo_create_from_memory` copied a POINTER package on every create
(a `contiguous` dummy); non-contiguous Fortran sections that share elements with another argument
reached C as separate copies, so C's overlap checks never saw them and the later copy back won;
clang's -Wbitwise-instead-of-logical warned in libdodo's four-velocity check."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from capi_host import ROOT, compile_fortran, compile_host, default_model, run_host
from native_build import REQUIRES_C_API, run

pytestmark = REQUIRES_C_API

# The module the Fortran hosts compile (a copy of an older one can be named to see the tests fail).
MODULE = Path(os.environ.get("DODO_PROBE_FORTRAN_MODULE", ROOT / "cpp/include/dodo/dodo.f90"))

DANGLING_HOST = r"""
#include <dodo/dodo.h>
#include <stdio.h>

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char message[2048];
    dodo_closure* closure = NULL;
    const dodo_status status = dodo_closure_create(argv[i], NULL, &closure, message, sizeof message);
    printf("%s|%s\n", dodo_status_name(status), message);
    dodo_closure_destroy(closure);
  }
  return 0;
}
"""


def test_a_dangling_link_as_the_model_path_is_named(tmp_path):
    """A model path that is a symbolic link to a moved or deleted package (a run directory's
    `model.onnx -> /scratch/.../old.onnx`), or lies under a directory link to nothing. Before: C
    said 'model file "model.onnx" does not exist' of a file `ls` shows, where Python's dodo.Closure
    names the link and its target. Now the link, its target (a chain of links followed to the name
    that is missing) and "a dangling link"; a path with no link still "does not exist", and a loop
    of links keeps the system's words."""
    program = compile_host(tmp_path, "dangling", DANGLING_HOST)
    (tmp_path / "model.onnx").symlink_to(tmp_path / "moved.onnx")
    (tmp_path / "run").symlink_to(tmp_path / "gone_dir")
    (tmp_path / "relative.onnx").symlink_to("nowhere.onnx")
    (tmp_path / "loop_a").symlink_to("loop_b")
    (tmp_path / "loop_b").symlink_to("loop_a")
    (tmp_path / "chain.onnx").symlink_to("current.onnx")  # a link to a link to nothing
    (tmp_path / "current.onnx").symlink_to(tmp_path / "v2.onnx")
    lines = run_host(program, str(tmp_path / "model.onnx"), str(tmp_path / "run/model.onnx"),
                     str(tmp_path / "relative.onnx"), str(tmp_path / "missing.onnx"), str(tmp_path / "loop_a"),
                     str(tmp_path / "chain.onnx"), timeout=120)
    names = [line.split("|", 1)[0] for line in lines]
    messages = [line.split("|", 1)[1] for line in lines]
    assert names == ["DODO_ERROR_FILE"] * 6, lines
    assert f'is a symbolic link to "{tmp_path / "moved.onnx"}", which does not exist (a dangling link' in messages[0]
    assert not messages[0].endswith('" does not exist'), messages[0]
    assert f'is under "{tmp_path / "run"}", a symbolic link to "{tmp_path / "gone_dir"}", which does not' in messages[1]
    assert "dangling link" in messages[1], messages[1]
    assert 'is a symbolic link to "nowhere.onnx", which does not exist' in messages[2], messages[2]
    assert messages[3] == f'model file "{tmp_path / "missing.onnx"}" does not exist', messages[3]
    assert "Too many levels of symbolic links" in messages[4], messages[4]
    assert f'is a symbolic link to "current.onnx" -> "{tmp_path / "v2.onnx"}", which does not exist' in messages[5]


ORT_LIBRARY_HOST = r"""
#include <dodo/dodo.h>
#include <stdio.h>

int main(int argc, char** argv) {
  char message[4096];
  dodo_options options;
  dodo_options_init(&options);
  if (argc < 3) return 2;
  options.onnxruntime_library = argv[2];
  dodo_closure* closure = NULL;
  const dodo_status status = dodo_closure_create(argv[1], &options, &closure, message, sizeof message);
  printf("%s\n%s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_dangling_link_as_the_onnxruntime_library_is_named(tmp_path, how):
    """onnxruntime_library (or DODO_ONNXRUNTIME_LIBRARY) naming a link to a library an upgrade
    removed: the list of libraries tried said 'cannot open shared object file: No such file or
    directory' of a link that is there (`dodo info` names its target since Python round
    forty-eight). Now the line names the link's target and "a dangling link"."""
    model = default_model()
    program = compile_host(tmp_path, "ort_library", ORT_LIBRARY_HOST)
    link = tmp_path / "libonnxruntime.so"
    link.symlink_to("/opt/removed/libonnxruntime.so.1.17.0")
    if how == "option":
        lines = run_host(program, model, str(link), timeout=120)
    else:
        lines = run_host(program, model, "", timeout=120, env={"DODO_ONNXRUNTIME_LIBRARY": str(link)})
    assert lines[0] == "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE", lines
    assert (f'  {link}: a symbolic link to "/opt/removed/libonnxruntime.so.1.17.0", which does not exist (a dangling '
            "link: its target was moved or deleted)") in lines, lines
    assert not any("No such file or directory" in line for line in lines), lines


def test_the_four_velocity_check_is_clean_under_clangs_bitwise_warning(tmp_path):
    """cpp/src/frame.cpp's branch-free batch check of the four-velocities AND-ed four bools with
    `&`: clang (14) warned "use of bitwise '&' with boolean operands [-Wbitwise-instead-of-logical]"
    three times, so a build with -Werror (a host's or packager's flags) stopped. Now ints."""
    if not shutil.which("clang++"):
        pytest.skip("clang++ is not installed")
    result = subprocess.run(["clang++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra",
                             "-Werror=bitwise-instead-of-logical", f"-I{ROOT / 'cpp/include'}",
                             f"-I{ROOT / 'cpp/src'}", str(ROOT / "cpp/src/frame.cpp")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bitwise-instead-of-logical" not in result.stderr, result.stderr


COUNT_MALLOC = r"""
#include <stddef.h>
void* __real_malloc(size_t size);
static long count;
static size_t bytes;
void* __wrap_malloc(size_t size) { ++count; bytes += size; return __real_malloc(size); }
long host_malloc_count(void) { return count; }
long host_malloc_bytes(void) { return (long)bytes; }
"""

FROM_MEMORY_HOST = """\
program from_memory
  use dodo
  use iso_c_binding, only: c_long
  implicit none
  interface
    integer(c_long) function host_malloc_count() bind(c)
      import :: c_long
    end function host_malloc_count
    integer(c_long) function host_malloc_bytes() bind(c)
      import :: c_long
    end function host_malloc_bytes
  end interface
  type(dodo_closure) :: closure
  integer(c_int8_t), pointer :: package(:)
  integer(c_int8_t), allocatable, target :: spread(:)
  integer :: unit, n, stat, k
  integer(c_long) :: before, bytes_before
  character(len=300) :: message
  open (newunit=unit, file=MODEL, access="stream", form="unformatted", status="old")
  inquire (unit=unit, size=n)
  allocate (package(n), spread(2 * n))
  read (unit) package
  close (unit)
  spread = 0
  spread(1:2 * n:2) = package
  call dodo_create_from_memory(closure, package, stat=stat, errmsg=message)  ! warm-up: ONNX Runtime, pools
  call dodo_destroy(closure)
  before = host_malloc_count()
  bytes_before = host_malloc_bytes()
  do k = 1, 5
    call dodo_create_from_memory(closure, package, stat=stat, errmsg=message, run_self_test=.false.)
    call dodo_destroy(closure)
  end do
  print '(a,i0,a,i0,a,i0)', "pointer ", stat, " mallocs ", host_malloc_count() - before, " bytes ", &
    host_malloc_bytes() - bytes_before
  call dodo_create_from_memory(closure, spread(1:2 * n:2), stat=stat, errmsg=message)
  print '(a,i0,a,l1)', "section ", stat, " model ", dodo_has_model(closure)
  call dodo_destroy(closure)
  print '(a,i0)', "counted ", host_malloc_count()
end program from_memory
"""


def test_fortran_create_from_memory_takes_a_pointer_package_where_it_lies(tmp_path):
    """An MPI code reads the package into a POINTER array (or receives it with MPI_Bcast into one)
    and gives it to dodo_create_from_memory. Before: the dummy was a `contiguous` assumed-shape
    array, for which gfortran (12) copies a POINTER actual into a temporary on every call: 'pointer
    0 mallocs 5 bytes 260760' (one copy of the 52 KB default model a create, in the host). Now a
    contiguous array reaches C where it lies (0 mallocs in the host), and a non-contiguous section
    (every other byte of a larger array) is copied by the module and still creates the closure."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    model = default_model()
    counter = tmp_path / "count_malloc.c"
    counter.write_text(COUNT_MALLOC)
    run(["gcc", "-c", str(counter), "-o", str(tmp_path / "count_malloc.o")])
    program = compile_fortran(tmp_path, "from_memory", FROM_MEMORY_HOST.replace("MODEL", fortran_text(model)),
                              str(tmp_path / "count_malloc.o"), "-Wl,--wrap=malloc", module=MODULE)
    lines = run_host(program, timeout=300)
    assert int(lines[2].split()[1]) > 0, lines  # the counter counts the host's own allocations
    assert lines[:2] == ["pointer 0 mallocs 0 bytes 0", "section 0 model T"], lines


def fortran_text(text: str, width: int = 60) -> str:
    """A Fortran character literal of `text`, continued over lines (free form's 132 columns)."""
    pieces = [text[i:i + width] for i in range(0, len(text), width)] or [""]
    return '"' + "&\n    &".join(pieces) + '"'


OVERLAP_HOST = """\
module cells
  use dodo
  implicit none
contains
  subroutine fill(F)
    real(c_double), intent(out) :: F(:, :, :)
    integer :: c, a
    F = 0
    do c = 1, size(F, 3)
      do a = 1, 6
        F(1, a, c) = 1 + 0.1d0 * (a - 1) + 0.01d0 * c
        F(2, a, c) = 0.05d0 * (a - 3)
        F(4, a, c) = merge(-0.4d0, 0.3d0, a == 4)
      end do
    end do
  end subroutine fill

  subroutine refused(name, stat, message, unchanged)
    character(len=*), intent(in) :: name, message
    integer, intent(in) :: stat
    logical, intent(in) :: unchanged
    if (stat == 0) then
      print '(a,a,i0,a,l1)', name, " ", stat, " ", unchanged
    else
      print '(a,a,i0,a,l1,a,a)', name, " ", stat, " ", unchanged, " ", trim(message)
    end if
  end subroutine refused
end module cells

program overlaps
  use cells
  use iso_c_binding, only: c_f_pointer, c_loc
  implicit none
  integer, parameter :: n = 8
  type(dodo_closure) :: closure
  real(c_double), target :: F(4, 6, 2 * n + 2), F0(4, 6, 2 * n + 2), W(4, 6, 2 * n), G(4, 6, n), G0(4, 6, n)
  real(c_double), target :: rates(2 * n), rates0(2 * n), Fc(4, 6, n), Rc(4, 6, n), rc_rate(n)
  real(c_double), pointer :: same_rates(:)
  integer(c_int32_t), target :: st(2 * n), rc_status(n)
  integer(c_int32_t), pointer :: status_in_rates(:)
  integer :: stat
  character(len=300) :: message
  call fill(F)
  F0 = F
  G = -1
  G0 = G
  rates = -2
  rates0 = rates
  call dodo_create(closure, MODEL, stat=stat, errmsg=message)
  if (stat /= 0) print '(a)', trim(message)

  ! Refused: each pair that shares elements, the arrays as they were.
  call dodo_apply(closure, F(:, :, 1:2 * n:2), F(:, :, 3:2 * n + 2:2), stat=stat, errmsg=message)
  call refused("shifted", stat, message, all(F == F0))
  call dodo_apply(closure, F(:, :, n:1:-1), F(:, :, n + 3:4:-1), stat=stat, errmsg=message)
  call refused("reversed", stat, message, all(F == F0))
  call dodo_apply(closure, F(4:1:-1, :, 1:n), F(:, :, 2:n + 1), stat=stat, errmsg=message)
  call refused("unordered", stat, message, all(F == F0))
  call dodo_apply(closure, F(:, :, 1:n), F(:, :, n + 1:2 * n), u=F(1, 1:4, n + 1:2 * n), stat=stat, errmsg=message)
  call refused("u-in-F_pred", stat, message, all(F == F0))
  call dodo_apply(closure, F(:, :, 1:n), G, growth_rate=G(1, 1, :), stat=stat, errmsg=message)
  call refused("growth-in-F_pred", stat, message, all(G == G0))
  same_rates => rates(1:2 * n:2)
  call dodo_apply(closure, F(:, :, 1:n), G, growth_rate=rates(1:2 * n:2), uncertainty=same_rates, stat=stat, &
                  errmsg=message)
  call refused("growth-is-uncertainty", stat, message, all(G == G0) .and. all(rates == rates0))
  call c_f_pointer(c_loc(rates), status_in_rates, [4 * n])
  call dodo_apply(closure, F(:, :, 1:n), G, cell_status=status_in_rates(1:2 * n:2), growth_rate=rates(1:n), &
                  stat=stat, errmsg=message)
  call refused("status-in-growth", stat, message, all(G == G0) .and. all(rates == rates0))
  call dodo_apply(closure, F(:, :, 1:n), G, cell_status=st(1:2 * n:2), uncertainty=F(2, 2, 1:2 * n:2), stat=stat, &
                  errmsg=message)
  call refused("uncertainty-in-F_init", stat, message, all(G == G0) .and. all(F == F0))

  ! Accepted: in place on one section; interleaved sections that share no element (one of them
  ! in no address order): the contiguous call's bits, the cells between untouched.
  W = F(:, :, 1:2 * n)
  Fc = W(:, :, 1:2 * n:2)
  call dodo_apply(closure, Fc, Rc, cell_status=rc_status, growth_rate=rc_rate)
  st = -7
  rates = -2
  call dodo_apply(closure, W(:, :, 1:2 * n:2), W(:, :, 1:2 * n:2), cell_status=st(1:2 * n:2), &
                  growth_rate=rates(2:2 * n:2), stat=stat, errmsg=message)
  print '(a,i0,a,l1,a,l1)', "in-place ", stat, " same ", all(W(:, :, 1:2 * n:2) == Rc) .and. &
    all(st(1:2 * n:2) == rc_status) .and. all(rates(2:2 * n:2) == rc_rate), " between ", &
    all(W(:, :, 2:2 * n:2) == F(:, :, 2:2 * n:2)) .and. all(st(2:2 * n:2) == -7) .and. all(rates(1:2 * n:2) == -2)
  W = F(:, :, 1:2 * n)
  call dodo_apply(closure, W(:, :, 1:2 * n:2), W(:, :, 2:2 * n:2), stat=stat, errmsg=message)
  print '(a,i0,a,l1,a,l1)', "interleaved ", stat, " same ", all(W(:, :, 2:2 * n:2) == Rc), " between ", &
    all(W(:, :, 1:2 * n:2) == F(:, :, 1:2 * n:2))
  W = F(:, :, 1:2 * n)
  Fc = W(:, 6:1:-1, 1:2 * n:2)
  call dodo_apply(closure, Fc, Rc)
  call dodo_apply(closure, W(:, 6:1:-1, 1:2 * n:2), W(:, :, 2:2 * n:2), stat=stat, errmsg=message)
  print '(a,i0,a,l1,a,l1)', "interleaved-unordered ", stat, " same ", all(W(:, :, 2:2 * n:2) == Rc), " between ", &
    all(W(:, :, 1:2 * n:2) == F(:, :, 1:2 * n:2))
  call dodo_destroy(closure)
end program overlaps
"""

PAIR_REFUSED = "F_pred overlaps F_init: pass the same array or section for in-place use, or separate arrays"
U_REFUSED = "F_pred overlaps u: the output would change the four-velocities while they are read"


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_fortran_sections_sharing_elements_with_another_argument_are_refused(tmp_path, model):
    """Non-contiguous sections reach C as the module's copies, so C's overlap checks never saw them:
    F_pred = F(:, :, 3:2n+2:2) over F_init = F(:, :, 1:2n:2), growth_rate = G(1, 1, :) of the
    F_pred G, one rates(1:2n:2) as growth_rate and uncertainty, a cell_status inside growth_rate,
    u inside F_pred. Before: every one status 0 and computed on the copies, the later copy back
    winning (G's first components replaced by growth rates; u's copy kept while F_pred moved
    under it), where the same arrays contiguous were refused. Now each is refused with C's
    words, before anything is written; in-place use of one section and interleaved sections that
    share no element (also in no address order) still give the contiguous call's bits."""
    path = "box3d" if model == "box3d" else default_model()
    program = compile_fortran(tmp_path, "overlaps", OVERLAP_HOST.replace("MODEL", fortran_text(path)), module=MODULE)
    lines = run_host(program, timeout=300)
    assert lines[:8] == [
        f"shifted 1 T {PAIR_REFUSED}",
        f"reversed 1 T {PAIR_REFUSED}",
        f"unordered 1 T {PAIR_REFUSED}",
        f"u-in-F_pred 1 T {U_REFUSED}",
        "growth-in-F_pred 1 T growth_rate overlaps F_pred",
        "growth-is-uncertainty 1 T uncertainty overlaps growth_rate",
        "status-in-growth 1 T growth_rate overlaps cell_status",
        "uncertainty-in-F_init 1 T uncertainty overlaps F_init",
    ], lines
    assert lines[8:] == ["in-place 0 same T between T", "interleaved 0 same T between T",
                         "interleaved-unordered 0 same T between T"], lines


def test_a_build_tree_is_not_offered_as_a_cmake_package(tmp_path):
    """Before: a configured build of libdodo held build/cpp/src/runtime/DodoConfig.cmake, the config
    that only works installed, and a host given -DDodo_DIR=<that folder> stopped on "include could
    not find requested file: .../DodoTargets.cmake" and "Dodo_INCLUDE_DIR does not exist" (round
    forty's note). Now that config is staged in a folder of its own, so the build folder holds none
    and CMake's own "Could not find a package configuration file" says what is missing."""
    from native_build import tool

    cmake = tool("cmake")
    if not cmake:
        pytest.skip("cmake is not installed")
    build = tmp_path / "libdodo"
    run([cmake, "-S", str(ROOT), "-B", str(build)])
    runtime = build / "cpp" / "src" / "runtime"
    assert not (runtime / "DodoConfig.cmake").exists()
    assert (runtime / "cmake_package_for_install" / "DodoConfig.cmake").is_file()
    host = tmp_path / "host"
    host.mkdir()
    (host / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.18)\nproject(Host LANGUAGES C)\n"
                                         "find_package(Dodo CONFIG REQUIRED)\n")
    done = subprocess.run([cmake, "-S", str(host), "-B", str(tmp_path / "host_build"), f"-DDodo_DIR={runtime}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Could not find a package configuration file" in done.stderr, done.stderr
    assert "DodoTargets.cmake" not in done.stderr
