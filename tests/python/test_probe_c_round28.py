"""Outside probe of the C interface, round twenty-eight (docs/reliability_cpp.md, "Round
twenty-eight"): libdodo adopted by a transport code through the installed CMake package and
pkg-config file. A host built with find_package(Dodo) and installed with `cmake --install` finds
libdodo without LD_LIBRARY_PATH (as a pkg-config host does: both carry an rpath); and, held without
a change, a Fortran host under OpenMP sharing one handle."""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from dodo._closure import runtime_paths
from native_build import REQUIRES_C_API, run, tool

ROOT = Path(__file__).resolve().parents[2]
PATHS = runtime_paths()

pytestmark = REQUIRES_C_API


def _env_without_library_path():
    """The environment of a user's shell that never set LD_LIBRARY_PATH for libdodo."""
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    return env


HOST_C = textwrap.dedent("""\
    #include <dodo/dodo.h>
    #include <stdio.h>
    int main(void) {
      dodo_options options; dodo_options_init(&options);
      dodo_closure* closure = NULL; char message[512];
      if (dodo_closure_create(NULL, &options, &closure, message, sizeof message) != DODO_OK) {
        fprintf(stderr, "%s\\n", message); return 1;
      }
      double F[6][4] = {{1.0, 0.0, 0.0, 0.5}, {0}, {0}, {1.0, 0.0, 0.0, -0.5}, {0}, {0}};
      double F_pred[6][4]; int32_t status = -1;
      dodo_status s = dodo_apply(closure, 1, &F[0][0], NULL, NULL, NULL, &F_pred[0][0], NULL, &status);
      dodo_closure_destroy(closure);
      printf("installed host: %s %d\\n", dodo_status_name(s), (int)status);
      return s == DODO_OK ? 0 : 2;
    }
    """)


def _cmake_project(tmp_path, languages, body):
    source = tmp_path / "src"
    source.mkdir()
    (source / "host.c").write_text(HOST_C)
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\n"
        f"project(TransportHost LANGUAGES {languages})\n"
        "find_package(Dodo CONFIG REQUIRED)\n" + body)
    return source


def _configure_build_install(tmp_path, source, *extra):
    cmake, ninja = tool("cmake"), tool("ninja")
    if not cmake:
        pytest.skip("cmake is not installed")
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    run([cmake, "-S", str(source), "-B", str(build), *generator, f"-DDodo_DIR={PATHS['cmake_dir']}",
          f"-DCMAKE_INSTALL_PREFIX={prefix}", *extra])
    run([cmake, "--build", str(build)])
    run([cmake, "--install", str(build)])
    return build, prefix


def test_a_host_installed_with_cmake_install_finds_libdodo_without_ld_library_path(tmp_path):
    """find_package(Dodo) + Dodo::dodo, then `cmake --install`: CMake drops its build-tree rpath
    on install, so the installed host stopped with "libdodo.so.0: cannot open shared object
    file" unless LD_LIBRARY_PATH named the wheel's dodo/lib. The package now gives executables
    an rpath to libdodo's directory, as dodo.pc does."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    source = _cmake_project(tmp_path, "C", textwrap.dedent("""\
        add_executable(host host.c)
        set_property(TARGET host PROPERTY C_STANDARD 99)
        target_link_libraries(host PRIVATE Dodo::dodo)
        # find_package a second time (a subproject of a larger build): the rpath once
        find_package(Dodo CONFIG REQUIRED)
        get_property(options TARGET Dodo::dodo PROPERTY INTERFACE_LINK_OPTIONS)
        list(FILTER options INCLUDE REGEX "rpath")
        list(LENGTH options count)
        message(STATUS "Dodo rpath options: ${count}")
        install(TARGETS host)
        """))
    build, prefix = _configure_build_install(tmp_path, source)
    cache = (build / "CMakeCache.txt").read_text()
    assert "Dodo_DIR" in cache
    for program in (build / "host", prefix / "bin" / "host"):
        result = subprocess.run([str(program)], capture_output=True, text=True, timeout=60,
                                env=_env_without_library_path())
        assert result.returncode == 0, f"{program}: {result.stderr.strip()}"
        assert result.stdout.strip() == "installed host: DODO_OK 0"


def test_the_rpath_option_is_given_once_and_names_the_library_directory(tmp_path):
    source = _cmake_project(tmp_path, "C", textwrap.dedent("""\
        find_package(Dodo CONFIG REQUIRED)
        get_property(options TARGET Dodo::dodo PROPERTY INTERFACE_LINK_OPTIONS)
        file(WRITE ${CMAKE_BINARY_DIR}/options.txt "${options}")
        file(WRITE ${CMAKE_BINARY_DIR}/libdir.txt "${Dodo_LIBRARY_DIR}")
        """))
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    cmake = tool("cmake")
    if not cmake:
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    run([cmake, "-S", str(source), "-B", str(build), f"-DDodo_DIR={PATHS['cmake_dir']}"])
    libdir = Path((build / "libdir.txt").read_text())
    assert (libdir / "libdodo.so").exists() or any(libdir.glob("libdodo.so*")), libdir
    assert libdir.resolve() == Path(PATHS["lib_dir"]).resolve()
    options = (build / "options.txt").read_text().split(";")
    assert [o for o in options if "rpath" in o] == [f"LINKER:-rpath,{libdir}"]


def test_a_pure_fortran_cmake_host_builds_installs_and_runs(tmp_path):
    """`project(... LANGUAGES Fortran)` alone (no C enabled): find_package(Dodo), the module
    source, `cmake --install`, run from the prefix without LD_LIBRARY_PATH."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    source = _cmake_project(tmp_path, "Fortran", textwrap.dedent(f"""\
        add_library(dodo_fortran STATIC ${{Dodo_FORTRAN_MODULE_SOURCE}})
        target_link_libraries(dodo_fortran PUBLIC Dodo::dodo)
        add_executable(grid {ROOT / 'examples/fortran/grid_closure.f90'})
        target_link_libraries(grid PRIVATE dodo_fortran)
        install(TARGETS grid)
        """))
    _, prefix = _configure_build_install(tmp_path, source, "-DCMAKE_Fortran_COMPILER=gfortran")
    result = subprocess.run([str(prefix / "bin" / "grid")], capture_output=True, text=True, timeout=60,
                            env=_env_without_library_path())
    assert result.returncode == 0, result.stderr
    assert "rejected 0" in result.stdout


OMP_HOST = textwrap.dedent("""\
    program omp_host
      use dodo
      implicit none
      integer, parameter :: n = 300
      type(dodo_closure) :: c
      real(c_double), allocatable :: F(:,:,:), G(:,:,:), R(:,:,:), u(:,:)
      integer(c_int32_t), allocatable :: st(:), st1(:)
      integer :: i, k, stat, bad, refused
      character(len=512) :: msg
      character(len=4096) :: path
      call get_command_argument(1, path)
      allocate(F(4, 0:5, -3:n-4), G(4, 0:5, -3:n-4), R(4, 0:5, -3:n-4), u(4, n), st(n), st1(n))
      F = 0
      do i = 1, n
        F(1, 0, i-4) = 1d33; F(4, 0, i-4) = 0.5d33 * cos(real(i, c_double))
        F(2, 0, i-4) = 0.3d33 * sin(real(i, c_double))
        F(1, 3, i-4) = 1d33; F(4, 3, i-4) = -0.5d33
        u(:, i) = [1d0, 0d0, 0d0, 0d0]
      end do
      call dodo_create(c, trim(path), threads=2, stat=stat, errmsg=msg)
      if (stat /= 0) then
        print '(a)', trim(msg)
        stop 1
      end if
      call dodo_apply(c, F, R, u=u, cell_status=st1)
      bad = 0
      refused = 0
      !$omp parallel do private(G, st, stat, msg) reduction(+:bad, refused) num_threads(4)
      do k = 1, 24
        if (mod(k, 3) == 0) then
          call dodo_apply(c, F(:, :, -3:n-5), G, stat=stat, errmsg=msg)
          if (stat == DODO_ERROR_INVALID_ARGUMENT .and. index(msg, "F_pred") > 0) refused = refused + 1
        else
          call dodo_apply(c, F, G, u=u, cell_status=st, stat=stat, errmsg=msg)
          if (stat /= 0 .or. any(G /= R) .or. any(st /= st1)) bad = bad + 1
        end if
      end do
      !$omp end parallel do
      call dodo_destroy(c)
      print '(a, i0, a, i0)', "bad ", bad, " refused ", refused
    end program
    """)


@pytest.mark.parametrize("kinds", [[], ["-fdefault-integer-8", "-fdefault-real-8", "-fdefault-double-8"]],
                         ids=["default-kinds", "eight-byte-defaults"])
def test_fortran_openmp_threads_sharing_one_handle_give_one_threads_bits(tmp_path, kinds):
    """Held without a change: 4 OpenMP threads on one handle (2 workers), a grid with lower
    bounds other than 1, calls refused (a shape mismatch) between good ones: the single call's
    bits, each refusal's errmsg its own."""
    compiler = shutil.which("gfortran")
    if not compiler or not shutil.which("pkg-config"):
        pytest.skip("gfortran or pkg-config is not installed")
    model_source = Path(PATHS["include_dir"]) / "dodo" / "dodo.f90"
    (tmp_path / "omp.f90").write_text(OMP_HOST)
    env = dict(os.environ, PKG_CONFIG_PATH=PATHS["pkgconfig_dir"])
    libs = run(["pkg-config", "--libs", "dodo"], env=env).split()
    run([compiler, "-fopenmp", *kinds, "-J", str(tmp_path), str(model_source), str(tmp_path / "omp.f90"),
          *libs, "-o", str(tmp_path / "omp")])
    result = subprocess.run([str(tmp_path / "omp"), str(_default_model())], capture_output=True, text=True, timeout=120,
                            env=_env_without_library_path())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["bad", "0", "refused", "8"]


def _default_model():
    from dodo.models import default_model_path
    return default_model_path()
