"""Outside probe of the C interface, round thirty-two (docs/reliability_cpp.md, "Round
thirty-two"): the Fortran module given a transport code's assumed-size arrays (F(4, 6, *)), and
the CMake package of a Dodo installed under a directory whose name holds a comma; held without a
change, stable cells returned bit for bit through the C API under every layout."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from capi_host import compile_fortran, needs_runtime, run_host
from libdodo_ctypes import as_double, cells_at_rest, create_closure, last_error, load_libdodo
from native_build import PATHS, REQUIRES_C_API, run, tool

ROOT = Path(__file__).resolve().parents[2]

pytestmark = REQUIRES_C_API


# A host in the F77 style many transport codes keep: its step routine declares the grid's arrays
# assumed-size (the count passed apart) and hands them to the module as they are. `which` picks
# the array passed whole (assumed-size); the others are passed as sections with the count.
ASSUMED_SIZE_HOST = textwrap.dedent("""\
    program assumed_size_host
      use dodo
      use iso_c_binding, only: c_double, c_int32_t
      implicit none
      type(dodo_closure) :: closure
      real(c_double) :: F(4, 6, 3), G(4, 6, 3), u(4, 3), growth(3), spread(3)
      integer(c_int32_t) :: status(3)
      integer :: stat, which
      character(len=400) :: message
      F = 0
      F(1, :, :) = 1
      F(4, 1, :) = 0.3d0
      F(4, 4, :) = -0.4d0
      u = 0
      u(1, :) = 1
      call dodo_create(closure, stat=stat, errmsg=message)
      if (stat /= 0) error stop "create"
      do which = 0, 7
        call step(F, G, u, status, growth, spread, 3, which)
      end do
      call dodo_destroy(closure)
    contains
      subroutine step(F, G, u, status, growth, spread, n, which)
        integer, intent(in) :: n, which
        real(c_double), intent(in) :: F(4, 6, *), u(4, *)
        real(c_double), intent(inout) :: G(4, 6, *), growth(*), spread(*)
        integer(c_int32_t), intent(inout) :: status(*)
        G(:, :, 1:n) = -1
        status(1:n) = 99
        message = "(not set)"
        stat = -5
        select case (which)
        case (0)
          call dodo_apply(closure, F(:, :, 1:n), G(:, :, 1:n), u(:, 1:n), status(1:n), stat, message, &
                          growth(1:n), spread(1:n))
        case (1)
          call dodo_apply(closure, F, G(:, :, 1:n), stat=stat, errmsg=message)
        case (2)
          call dodo_apply(closure, F(:, :, 1:n), G, stat=stat, errmsg=message)
        case (3)
          call dodo_apply(closure, F(:, :, 1:n), G(:, :, 1:n), u, stat=stat, errmsg=message)
        case (4)
          call dodo_apply(closure, F(:, :, 1:n), G(:, :, 1:n), cell_status=status, stat=stat, errmsg=message)
        case (5)
          call dodo_apply(closure, F(:, :, 1:n), G(:, :, 1:n), growth_rate=growth, stat=stat, errmsg=message)
        case (6)
          call dodo_apply(closure, F(:, :, 1:n), G(:, :, 1:n), uncertainty=spread, stat=stat, errmsg=message)
        case (7)
          call dodo_apply(closure, F, G, stat=stat, errmsg=message)
        end select
        print '(i0, 1x, i0, 1x, l1, 1x, a)', which, stat, all(G(:, :, 1:n) == -1), trim(message)
      end subroutine step
    end program assumed_size_host
    """)

ARRAY_OF_CASE = {1: ("F_init", "F_init(:, :, 1:n)"), 2: ("F_pred", "F_pred(:, :, 1:n)"), 3: ("u", "u(:, 1:n)"),
                 4: ("cell_status", "cell_status(1:n)"), 5: ("growth_rate", "growth_rate(1:n)"),
                 6: ("uncertainty", "uncertainty(1:n)"), 7: ("F_init", "F_init(:, :, 1:n)")}


@needs_runtime
def test_fortran_assumed_size_arrays_are_refused_naming_the_array_and_the_section_to_pass(tmp_path):
    """Before: F(4, 6, *) reached the module's assumed-rank dummies with its last extent -1, the
    cell count came out as -1, and C refused "F_init with 18446744073709551615 cells and these
    strides would reach beyond the address space" (F and F_pred both assumed-size: the call a
    F77-style host writes first); u(4, *) "u has (4, -1) for 3 cell(s)",
    cell_status(*) "it has -1 for 3 cell(s)". Now each is named as an assumed-size array, with the
    section that gives its count; nothing is written, and the sections themselves are applied."""
    program = compile_fortran(tmp_path, "assumed_size_host", ASSUMED_SIZE_HOST)
    lines = run_host(program, timeout=120)
    assert len(lines) == 8, lines
    which, stat, untouched, message = lines[0].split(" ", 3)
    assert (which, stat, untouched) == ("0", "0", "F"), lines[0]  # the sections: applied
    for line in lines[1:]:
        which, stat, untouched, message = line.split(" ", 3)
        name, section = ARRAY_OF_CASE[int(which)]
        assert stat == "1", line  # DODO_ERROR_INVALID_ARGUMENT
        assert untouched == "T", line  # nothing written
        assert message.startswith(f"{name} is an assumed-size array"), line
        assert f"e.g. {section}" in message, line
        assert "18446744073709551615" not in message and "-1" not in message, line


@needs_runtime
def test_fortran_assumed_size_refusal_without_stat_stops_naming_the_array(tmp_path):
    """Without stat the refusal is the module's ERROR STOP, with the same words."""
    source = ASSUMED_SIZE_HOST.replace("call dodo_apply(closure, F, G(:, :, 1:n), stat=stat, errmsg=message)",
                                       "call dodo_apply(closure, F, G(:, :, 1:n))")
    source = source.replace("do which = 0, 7", "do which = 1, 1")
    program = compile_fortran(tmp_path, "assumed_size_stop", source)
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "dodo: F_init is an assumed-size array" in result.stderr, result.stderr[-2000:]


STRICT_FORTRAN_FLAGS = ["-std=f2018", "-Wall", "-Wextra", "-Wconversion-extra", "-Wimplicit-interface",
                        "-Wimplicit-procedure", "-Wcharacter-truncation", "-pedantic", "-Werror"]


@pytest.mark.parametrize("kinds", [["-fdefault-integer-8"], ["-fdefault-integer-8", "-fdefault-real-8", "-fdefault-double-8"],
                                   ["-fdefault-real-8", "-fdefault-double-8"]], ids=["i8", "i8r8", "r8"])
def test_the_fortran_module_compiles_clean_under_strict_warnings_with_a_legacy_codes_default_kinds(tmp_path, kinds):
    """A legacy code builds every source with -fdefault-integer-8 and its warnings as errors. Before:
    gfortran refused dodo.f90 ("Conversion from INTEGER(4) to INTEGER(8)", dodo_has_model comparing
    C's int with a default-integer 0); round thirteen's strict test compiled default kinds only."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    run(["gfortran", *STRICT_FORTRAN_FLAGS, *kinds, "-c", "-J", str(tmp_path),
         str(ROOT / "cpp/include/dodo/dodo.f90"), "-o", str(tmp_path / "dodo.o")])


HOST_C = textwrap.dedent("""\
    #include <dodo/dodo.h>
    #include <stdio.h>
    int main(void) {
      dodo_closure* closure = NULL; char message[512];
      dodo_status s = dodo_closure_create(NULL, NULL, &closure, message, sizeof message);
      if (s != DODO_OK) { fprintf(stderr, "%s\\n", message); return 1; }
      dodo_closure_destroy(closure);
      printf("host ran: %s\\n", dodo_version());
      return 0;
    }
    """)


@pytest.mark.parametrize("directory", ["dodo,v2", "dodo, v2 (copy)"])
def test_a_dodo_under_a_directory_with_a_comma_links_cmake_hosts(tmp_path, directory):
    """Before: DodoConfig.cmake gave "LINKER:-rpath,<dir>", which becomes "-Wl,-rpath,<dir>", and the
    compiler driver splits -Wl at every comma: under "/.../dodo,v2/" every CMake host's link failed
    with "ld: cannot find v2/dodo/lib". Now such a directory goes through -Xlinker. CMake's own
    build-tree rpath splits in the same way (CMake's, not Dodo's), so the host builds with
    CMAKE_SKIP_BUILD_RPATH, as a host installed from its build does; it runs without
    LD_LIBRARY_PATH (the rpath is Dodo's)."""
    cmake = tool("cmake")
    if not cmake:
        pytest.skip("cmake is not installed")
    installed = Path(PATHS["lib_dir"]).parent  # site-packages/dodo of the wheel: lib/, include/
    copy = tmp_path / directory / "dodo"
    for part in ("lib", "include"):
        shutil.copytree(installed / part, copy / part, symlinks=True)
    source = tmp_path / "src"
    source.mkdir()
    (source / "host.c").write_text(HOST_C)
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(TransportHost LANGUAGES C)\n"
        "find_package(Dodo CONFIG REQUIRED)\nadd_executable(host host.c)\n"
        "target_link_libraries(host PRIVATE Dodo::dodo)\n")
    build = tmp_path / "build"
    ninja = tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    run([cmake, "-S", str(source), "-B", str(build), *generator, f"-DDodo_DIR={copy / 'lib/cmake/Dodo'}",
         "-DCMAKE_SKIP_BUILD_RPATH=ON"])
    run([cmake, "--build", str(build)])
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    result = subprocess.run([str(build / "host")], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("host ran:")
    dynamic = subprocess.run(["readelf", "-d", str(build / "host")], capture_output=True, text=True).stdout
    assert str(copy / "lib") in dynamic


DEFAULT_MODEL_HOST = textwrap.dedent("""\
    #define _POSIX_C_SOURCE 200809L
    #include <dodo/dodo.h>
    #include <stdio.h>
    #include <unistd.h>
    int main(int argc, char** argv) {
      if (argc > 1 && chdir(argv[1]) != 0) return 3;  /* into its run directory, as a code does */
      const char* path = dodo_default_model_path();
      printf("%s\\n", path ? path : "(null)");
      return 0;
    }
    """)


@pytest.mark.parametrize("found_by", ["rpath", "relative LD_LIBRARY_PATH, then chdir"])
def test_the_default_model_is_found_beside_the_real_library_when_libdodo_is_reached_through_a_link(tmp_path, found_by):
    """A libdodo reached through a symbolic link in another directory (a Spack view's or module
    system's link farm, `ln -s .../dodo/lib/libdodo.so.0 /usr/local/lib`): before, the model was
    looked for beside the link only, so dodo_default_model_path() gave NULL from a wheel, and the
    build tree's model (not the installed one) from a source build. Now beside the real file too.
    Found through a relative LD_LIBRARY_PATH entry ("view/lib") by a host that then changes its
    working directory, the loader's name was relative to a directory no longer current: the
    library's file is now resolved when it is loaded."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    installed = Path(PATHS["lib_dir"])
    real = sorted(installed.glob("libdodo.so.*.*.*")) or sorted(installed.glob("libdodo.so.*"))
    shipped = ROOT / "python/dodo/models/qke_default.onnx"
    if not real or not shipped.is_file():
        pytest.skip("no installed libdodo or no shipped default model")
    package = tmp_path / "site-packages/dodo"  # the wheel's layout: dodo/lib beside dodo/models
    (package / "lib").mkdir(parents=True)
    (package / "models").mkdir()
    library = package / "lib" / real[0].name
    shutil.copy2(real[0], library)
    shutil.copy2(shipped, package / "models/qke_default.onnx")
    farm = tmp_path / "view/lib"  # the link farm: links only
    farm.mkdir(parents=True)
    (farm / "libdodo.so.0").symlink_to(library)
    (farm / "libdodo.so").symlink_to("libdodo.so.0")
    source = tmp_path / "host.c"
    source.write_text(DEFAULT_MODEL_HOST)
    program = tmp_path / "host"
    rpath = [f"-Wl,-rpath,{farm}"] if found_by == "rpath" else []
    run(["gcc", "-std=c11", f"-I{PATHS['include_dir']}", str(source), f"-L{farm}", *rpath, "-ldodo",
         "-o", str(program)])
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    arguments = []
    if found_by != "rpath":
        env["LD_LIBRARY_PATH"] = "view/lib"  # relative to the working directory the host starts in
        arguments = ["/"]
    result = subprocess.run([str(program), *arguments], capture_output=True, text=True, timeout=60, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.realpath(package / "models/qke_default.onnx")


ONNXRUNTIME_HOST = textwrap.dedent("""\
    #define _POSIX_C_SOURCE 200809L
    #include <dodo/dodo.h>
    #include <stdio.h>
    #include <unistd.h>
    int main(int argc, char** argv) {
      if (argc > 2 && chdir(argv[2]) != 0) return 3;
      dodo_closure* closure = NULL; char message[4096];
      dodo_status status = dodo_closure_create(argv[1], NULL, &closure, message, sizeof message);
      printf("%s %s\\n", dodo_status_name(status), message);
      dodo_closure_destroy(closure);
      return 0;
    }
    """)


@pytest.mark.parametrize("found_by", ["rpath", "relative LD_LIBRARY_PATH, then chdir"])
def test_the_onnxruntime_wheel_is_found_beside_the_real_library_when_libdodo_is_reached_through_a_link(
        tmp_path, found_by):
    """The installed libdodo reached through a link farm (or through a relative LD_LIBRARY_PATH
    entry by a host that then changes directory): the `onnxruntime` wheel was looked for beside the
    link only, so a closure with a model failed with DODO_ERROR_ONNXRUNTIME_UNAVAILABLE ("pip
    install onnxruntime", tried only the loader's two names) beside an installed wheel. Now the
    wheel beside the real file is found and the closure is made."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    installed = Path(PATHS["lib_dir"])
    real = sorted(installed.glob("libdodo.so.*.*.*"))
    model = PATHS.get("default_model")
    wheel = installed.parent.parent / "onnxruntime" / "capi"
    if not real or not model or not sorted(wheel.glob("libonnxruntime.so*")):
        pytest.skip("no installed libdodo, default model or onnxruntime wheel beside the dodo package")
    farm = tmp_path / "view/lib"
    farm.mkdir(parents=True)
    (farm / "libdodo.so.0").symlink_to(real[0])
    (farm / "libdodo.so").symlink_to("libdodo.so.0")
    source = tmp_path / "host.c"
    source.write_text(ONNXRUNTIME_HOST)
    program = tmp_path / "host"
    rpath = [f"-Wl,-rpath,{farm}"] if found_by == "rpath" else []
    run(["gcc", "-std=c11", f"-I{PATHS['include_dir']}", str(source), f"-L{farm}", *rpath, "-ldodo",
         "-o", str(program)])
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "DODO_ONNXRUNTIME_LIBRARY")}
    arguments = [os.path.realpath(model)]
    if found_by != "rpath":
        env["LD_LIBRARY_PATH"] = "view/lib"
        arguments.append("/")
    result = subprocess.run([str(program), *arguments], capture_output=True, text=True, timeout=300, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DODO_OK"), result.stdout


# --- held without a change ---------------------------------------------------------------------

def _stable_and_rejected_cells(n):
    """Cells that are stable (no ELN crossing: every species' flux along +x, e-type in excess) with
    signed zeros, tiny and huge scales, and cells the closure rejects while realizable and finite
    (a flux factor above the limit): the C API returns every one of them bit for bit (dodo.h)."""
    rng = np.random.default_rng(32)
    F = np.zeros((n, 6, 4))
    F[:, :, 0] = rng.uniform(0.5, 1.0, (n, 6))
    F[:, 0, 0] += 1.0
    F[:, 3, 0] += 0.8
    F[:, :, 1] = 0.2 * F[:, :, 0]
    F[:, :, 2:] = -0.0
    F[1::5] *= 1e-200
    F[2::5] *= 1e200
    F[3::5, :, 1:] = -0.0
    F[4::5, 2, 1] = 0.995 * F[4::5, 2, 0]  # flux factor above the limit, realizable: rejected, returned
    F[6::7] = cells_at_rest(len(F[6::7]), seed=32)  # most with an ELN crossing: corrected
    return F


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_stable_and_rejected_cells_come_back_bit_for_bit_under_every_layout(evaluator, monkeypatch):
    lib = load_libdodo()
    path = lib.dodo_default_model_path()
    if path is None:
        pytest.skip("no default model")
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", evaluator)
    status, message, handle = create_closure(lib, path, threads=2, chunk_size=7)
    if evaluator == "onnxruntime" and status == 5:
        pytest.skip("ONNX Runtime is not available")
    assert status == 0, message
    try:
        n = 40
        F = _stable_and_rejected_cells(n)
        W = np.linspace(1.0, 3.0, n)
        u = np.zeros((n, 4))
        u[:, 0] = W
        u[:, 3] = -np.sqrt(W * W - 1.0)  # moving cells, along -z (the fluxes lie along +x)
        flags = ctypes.POINTER(ctypes.c_uint32)
        strides3 = ctypes.c_ssize_t * 3

        def call(F_in, F_in_strides, F_out, F_out_strides, velocity):
            cell_status = np.full(n, 12345, np.uint32)
            got = lib.dodo_apply(handle, n, F_in, F_in_strides, as_double(velocity) if velocity is not None else None,
                                 None, F_out, F_out_strides, cell_status.ctypes.data_as(flags))
            assert got == 0, last_error(lib, handle)
            return cell_status

        for velocity in (None, u):
            # default layout
            out = np.full_like(F, 7.0)
            status_bits = call(as_double(F), None, as_double(out), None, velocity)
            stable = (status_bits & 1) != 0
            rejected = (status_bits & 62) != 0
            assert stable.sum() >= n // 2 and rejected.sum() >= n // 10, status_bits
            kept = stable | rejected
            assert (~kept).sum() >= n // 10, status_bits  # the batch also holds cells that are corrected
            assert np.array_equal(out[kept].view(np.uint64), F[kept].view(np.uint64))
            # structure of arrays, component-major: F[m][a][c]
            soa = np.ascontiguousarray(F.transpose(2, 1, 0))
            out_soa = np.full_like(soa, 7.0)
            soa_strides = strides3(1, n, 6 * n)
            call(as_double(soa), soa_strides, as_double(out_soa), soa_strides, velocity)
            assert np.array_equal(out_soa.transpose(2, 1, 0)[kept].view(np.uint64), F[kept].view(np.uint64))
            # cells in reverse order (negative cell stride), written in place
            reverse = np.ascontiguousarray(F[::-1])
            last = as_double(reverse[n - 1:])
            reverse_strides = strides3(-24, 4, 1)
            call(last, reverse_strides, last, reverse_strides, velocity)  # cell c is F[c], u[c] its velocity
            assert np.array_equal(reverse[::-1][kept].view(np.uint64), F[kept].view(np.uint64))
    finally:
        lib.dodo_closure_destroy(handle)
