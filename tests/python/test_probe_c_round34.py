"""Outside probe of the C interface, round thirty-four (docs/reliability_cpp.md, "Round
thirty-four"): the Fortran module's standard (Fortran 2018, assumed-rank arrays) stated where a
host with -std=f2008 looks, and such a host built against it by hand and through CMake; held
without a change: dodo.hpp and dodo.h under strict warnings (C++17, C++20, C17 -pedantic), and a
grid's cells (stable, rejected, crossing, moving) through C, C++ and Fortran, in place and out
of place, equal to dodo.Closure.apply bit for bit."""
from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

import dodo
from capi_host import FORTRAN_MODULE, default_model
from native_build import PATHS, REQUIRES_C_API, run, tool

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "cpp/include"
NX, NY, NZ = 3, 2, 2
N = NX * NY * NZ

pytestmark = REQUIRES_C_API


def _pkg_config(*arguments: str) -> list[str]:
    from test_native_programs import pkg_config

    return pkg_config(*arguments)


def _cells() -> tuple[np.ndarray, np.ndarray]:
    """N cells (C order (N, 6, 4), which is Fortran's F(4, 6, nx, ny, nz)): crossing cells at rest
    and moving along -z, stable cells (every species' flux along +x with one flux factor, signed
    zeros kept), and a cell rejected for its flux factor (0.995, finite and realizable)."""
    F = np.zeros((N, 6, 4))
    u = np.zeros((N, 4))
    u[:, 0] = 1.0
    for c in range(N):
        n = 1e32 * (1.0 + 0.1 * np.arange(6) + 0.03 * c)
        kind = c % 4
        F[c, :, 0] = n
        if kind in (0, 1):  # crossing: species 3 against the others
            F[c, :, 3] = 0.3 * n
            F[c, 3, 3] = -0.4 * n[3]
            F[c, :, 1] = 0.05 * n * np.cos(c + np.arange(6))
        elif kind == 2:  # stable: one flux factor, all along +x
            F[c, :, 1] = 0.3 * n
            F[c, :, 2] = -0.0
        else:  # rejected: flux factor 0.995
            F[c, :, 2] = 0.995 * n
        if kind == 1:
            v = 0.2 + 0.05 * c
            W = 1.0 / np.sqrt(1.0 - v * v)
            u[c] = (W, 0.0, 0.0, -W * v)
    return F, u


def _expected(model: str):
    F, u = _cells()
    result = dodo.Closure(model).apply(F, u)
    # The probe needs each kind of cell: a stable one returned as it came, a rejected one, a corrected one.
    stable = (result.status & int(dodo.CellStatus.NO_CROSSING)) != 0
    rejected = (result.status & 62) != 0
    assert stable.any() and rejected.any() and (~stable & ~rejected).any(), result.status
    return F, u, result, stable | rejected


def _check_output(out: bytes, model: str, copies: int) -> None:
    """out: `copies` times (F_pred N*24 doubles, status N uint32, growth N doubles, uncertainty N
    doubles), each equal to Python's bits; stable and rejected cells equal to their input's bits."""
    F, _, expected, unchanged = _expected(model)
    record = N * 24 * 8 + N * 4 + 2 * N * 8
    assert len(out) == copies * record, (len(out), copies * record)
    for k in range(copies):
        chunk = out[k * record:(k + 1) * record]
        offset = 0
        P = np.frombuffer(chunk[offset:offset + N * 192], dtype=np.float64).reshape(N, 6, 4)
        offset += N * 192
        status = np.frombuffer(chunk[offset:offset + 4 * N], dtype=np.uint32)
        offset += 4 * N
        growth = np.frombuffer(chunk[offset:offset + 8 * N], dtype=np.float64)
        offset += 8 * N
        spread = np.frombuffer(chunk[offset:offset + 8 * N], dtype=np.float64)
        assert P.tobytes() == expected.F_pred.tobytes(), f"copy {k}: F_pred differs from Python's"
        assert np.array_equal(status, expected.status), (k, status, expected.status)
        assert growth.tobytes() == expected.growth_rate.tobytes(), (k, growth, expected.growth_rate)
        assert spread.tobytes() == expected.uncertainty.tobytes(), (k, spread, expected.uncertainty)
        assert P[unchanged].tobytes() == F[unchanged].tobytes(), f"copy {k}: a stable or rejected cell changed"


def _host_comment(path: Path, stop: str) -> str:
    text = path.read_text()
    return text[:text.index(stop)]


# A transport code's Fortran 2008 step: its grid F(4, 6, nx, ny, nz), u(4, nx, ny, nz), read from
# cells.bin; out of place with every output, then in place (F_pred = F), each written to out.bin.
F2008_HOST = textwrap.dedent(f"""\
    program f2008_host
      use dodo
      use iso_c_binding, only: c_double, c_int32_t
      implicit none
      integer, parameter :: nx = {NX}, ny = {NY}, nz = {NZ}
      type(dodo_closure) :: closure
      real(c_double) :: F(4, 6, nx, ny, nz), G(4, 6, nx, ny, nz), u(4, nx, ny, nz)
      real(c_double) :: rate(nx, ny, nz), spread(nx, ny, nz)
      integer(c_int32_t) :: st(nx, ny, nz)
      integer :: stat, io
      character(len=300) :: message
      character(len=4096) :: model
      call get_command_argument(1, model)
      open(newunit=io, file="cells.bin", access="stream", form="unformatted", status="old", action="read")
      read(io) F, u
      close(io)
      call dodo_create(closure, model, stat=stat, errmsg=message)
      if (stat /= DODO_OK) then
        print '(a)', trim(message)
        stop 1
      end if
      open(newunit=io, file="out.bin", access="stream", form="unformatted", status="replace", action="write")
      call dodo_apply(closure, F, G, u, st, stat, message, rate, spread)
      if (stat /= DODO_OK) stop 2
      write(io) G, st, rate, spread
      call dodo_apply(closure, F, F, u, st, stat, message, rate, spread)
      if (stat /= DODO_OK) stop 3
      write(io) F, st, rate, spread
      close(io)
      call dodo_destroy(closure)
    end program f2008_host
    """)


def test_the_fortran_module_says_it_is_fortran_2018_and_an_f2008_host_uses_it(tmp_path):
    """dodo.f90 uses assumed-rank dummies (Fortran 2018 / TS 29113), which gfortran -std=f2008
    refuses ("Fortran 2018: Assumed-rank array", four times), and nothing a host reads said so:
    not the module's comment, the CMake package's, the example's build line or examples/README.
    They now say it, with the way out (the module compiled apart with -std=f2018), which works:
    a -std=f2008 -Wall -Wextra -Werror -fcheck=all host gives Python's bits, in place too."""
    header = _host_comment(FORTRAN_MODULE, "\nmodule dodo")
    assert "Fortran 2018" in header and "-std=f2018" in header and "-std=f2008" in header, header
    config = _host_comment(ROOT / "cmake/DodoConfig.cmake.in", "@PACKAGE_INIT@")
    assert "Fortran 2018" in config and "-std=f2018" in config, config
    assert "-std=f2018" in _host_comment(ROOT / "examples/fortran/grid_closure.f90", "program grid_closure")
    readme = " ".join((ROOT / "examples/README.md").read_text().split())
    assert "Fortran 2018" in readme and "-std=f2018" in readme

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    model = default_model()
    # What the comment says of -std=f2008 (if a later module compiles there, the words can go).
    strict = subprocess.run(["gfortran", "-std=f2008", "-Wall", "-fsyntax-only", "-J", str(tmp_path),
                             str(FORTRAN_MODULE)], capture_output=True, text=True, timeout=300)
    if strict.returncode != 0:
        assert "Fortran 2018" in strict.stderr, strict.stderr[-2000:]
    module_object = tmp_path / "dodo.o"
    run(["gfortran", "-std=f2018", "-Wall", "-Wextra", "-Werror", "-fcheck=all", "-J", str(tmp_path), "-c",
         str(FORTRAN_MODULE), "-o", str(module_object)])
    source = tmp_path / "host.f90"
    source.write_text(F2008_HOST)
    program = tmp_path / "host"
    run(["gfortran", "-std=f2008", "-Wall", "-Wextra", "-Werror", "-fcheck=all", "-I", str(tmp_path), str(source),
         str(module_object), *_pkg_config("--libs"), "-o", str(program)])
    F, u = _cells()
    (tmp_path / "cells.bin").write_bytes(F.tobytes() + u.tobytes())
    result = subprocess.run([str(program), model], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    _check_output((tmp_path / "out.bin").read_bytes(), model, copies=2)


CMAKE_F2008_HOST = textwrap.dedent("""\
    cmake_minimum_required(VERSION 3.18)
    project(F2008Host LANGUAGES C Fortran)
    find_package(Dodo CONFIG REQUIRED)
    # The recipe of dodo.f90's comment and DodoConfig.cmake's.
    set_source_files_properties(${Dodo_FORTRAN_MODULE_SOURCE} PROPERTIES COMPILE_OPTIONS
                                "$<$<Fortran_COMPILER_ID:GNU>:-std=f2018>")
    add_library(dodo_fortran STATIC ${Dodo_FORTRAN_MODULE_SOURCE})
    target_link_libraries(dodo_fortran PUBLIC Dodo::dodo)
    add_executable(host host.f90)
    target_link_libraries(host PRIVATE dodo_fortran)
    """)


def test_the_documented_cmake_recipe_builds_an_f2008_host(tmp_path):
    """A CMake host whose CMAKE_Fortran_FLAGS hold -std=f2008 -Wall -Werror builds the installed
    module with the documented source property, and runs (without it: "Fortran 2018:
    Assumed-rank array" in dodo.f90)."""
    cmake = tool("cmake")
    if not cmake or not shutil.which("gfortran"):
        pytest.skip("cmake or gfortran is not installed")
    model = default_model()
    (tmp_path / "CMakeLists.txt").write_text(CMAKE_F2008_HOST)
    (tmp_path / "host.f90").write_text(F2008_HOST)
    ninja = tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    run([cmake, "-S", str(tmp_path), "-B", str(tmp_path / "build"), *generator,
         "-DCMAKE_Fortran_FLAGS=-std=f2008 -Wall -Wextra -Werror", f"-DDodo_DIR={PATHS['cmake_dir']}"])
    run([cmake, "--build", str(tmp_path / "build")])
    F, u = _cells()
    (tmp_path / "cells.bin").write_bytes(F.tobytes() + u.tobytes())
    result = subprocess.run([str(tmp_path / "build/host"), model], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    _check_output((tmp_path / "out.bin").read_bytes(), model, copies=2)


# C++: std::vector storage, a const closure, apply_diagnostics out of place and in place, and the
# refusal of aliased diagnostics as dodo::Error with C's status and words.
CPP_HOST = textwrap.dedent(f"""\
    #include <dodo/dodo.hpp>

    #include <cstdio>
    #include <cstring>
    #include <fstream>
    #include <iterator>
    #include <string>
    #include <vector>

    int main(int argc, char** argv) {{
      if (argc < 2) return 2;
      const std::size_t n = {N};
      std::ifstream in("cells.bin", std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (bytes.size() != n * 28 * sizeof(double)) return 3;
      std::vector<double> F(n * 24), u(n * 4), G(n * 24), rate(n), spread(n);
      std::vector<std::uint32_t> status(n);
      std::memcpy(F.data(), bytes.data(), F.size() * sizeof(double));
      std::memcpy(u.data(), bytes.data() + F.size() * sizeof(double), u.size() * sizeof(double));
      std::ofstream out("out.bin", std::ios::binary);
      auto write = [&](const std::vector<double>& P) {{
        out.write(reinterpret_cast<const char*>(P.data()), static_cast<std::streamsize>(P.size() * sizeof(double)));
        out.write(reinterpret_cast<const char*>(status.data()), static_cast<std::streamsize>(n * 4));
        out.write(reinterpret_cast<const char*>(rate.data()), static_cast<std::streamsize>(n * sizeof(double)));
        out.write(reinterpret_cast<const char*>(spread.data()), static_cast<std::streamsize>(n * sizeof(double)));
      }};
      try {{
        const dodo::Closure closure(std::string(argv[1]), dodo::Options().threads(2).chunk_size(5));
        closure.apply_diagnostics(n, F.data(), u.data(), G.data(), status.data(), rate.data(), spread.data());
        write(G);
        closure.apply_diagnostics(n, F.data(), u.data(), F.data(), status.data(), rate.data(), spread.data());
        write(F);
        try {{
          closure.apply_diagnostics(n, F.data(), u.data(), G.data(), status.data(), rate.data(), rate.data());
          std::puts("aliased: accepted");
        }} catch (const dodo::Error& error) {{
          std::printf("aliased: %d %s\\n", static_cast<int>(error.status()), error.what());
        }}
      }} catch (const dodo::Error& error) {{
        std::printf("error %d %s\\n", static_cast<int>(error.status()), error.what());
        return 1;
      }}
      return 0;
    }}
    """)

STRICT_CXX = ["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wshadow", "-Wconversion", "-Wsign-conversion",
              "-Wold-style-cast", "-Wzero-as-null-pointer-constant", "-Wnon-virtual-dtor", "-Wcast-qual",
              "-Wundef", "-Wuseless-cast", "-Wextra-semi"]


@pytest.mark.parametrize("standard", ["c++17", "c++20"])
def test_the_cpp_wrapper_under_strict_warnings_gives_pythons_bits(tmp_path, standard):
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    model = default_model()
    source = tmp_path / "host.cpp"
    source.write_text(CPP_HOST)
    program = tmp_path / "host"
    # The host's own casts are static_cast/reinterpret_cast: every warning would be the header's.
    run(["g++", f"-std={standard}", *STRICT_CXX, f"-I{INCLUDE}", str(source), *_pkg_config("--cflags", "--libs"),
         "-pthread", "-o", str(program)])
    F, u = _cells()
    (tmp_path / "cells.bin").write_bytes(F.tobytes() + u.tobytes())
    result = subprocess.run([str(program), model], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    assert result.stdout.strip() == "aliased: 1 uncertainty overlaps growth_rate", result.stdout
    _check_output((tmp_path / "out.bin").read_bytes(), model, copies=2)


# C17 -pedantic: the host's structure of arrays, moments[component][species][cell], in place
# through strides {1, n, 6n}; the output written back in the default layout.
C_HOST = textwrap.dedent(f"""\
    #include <dodo/dodo.h>

    #include <stdio.h>
    #include <string.h>

    enum {{ N = {N} }};

    int main(int argc, char** argv) {{
      static double cells[N][6][4], u[N][4], S[4][6][N], P[N][6][4], rate[N], spread[N];
      static uint32_t status[N];
      FILE* in = fopen("cells.bin", "rb");
      if (argc < 2 || !in || fread(cells, sizeof cells, 1, in) != 1 || fread(u, sizeof u, 1, in) != 1) return 2;
      fclose(in);
      for (int c = 0; c < N; ++c)
        for (int a = 0; a < 6; ++a)
          for (int m = 0; m < 4; ++m) S[m][a][c] = cells[c][a][m];
      dodo_options options;
      dodo_options_init(&options);
      options.threads = 3;
      options.chunk_size = 4;
      dodo_closure* closure = NULL;
      char message[512];
      if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {{
        puts(message);
        return 1;
      }}
      const ptrdiff_t soa[3] = {{1, N, 6 * N}};
      if (dodo_apply_diagnostics(closure, N, &S[0][0][0], soa, &u[0][0], NULL, &S[0][0][0], soa, status, rate,
                                 spread) != DODO_OK)
        return 3;
      for (int c = 0; c < N; ++c)
        for (int a = 0; a < 6; ++a)
          for (int m = 0; m < 4; ++m) P[c][a][m] = S[m][a][c];
      FILE* out = fopen("out.bin", "wb");
      if (!out) return 4;
      fwrite(P, sizeof P, 1, out);
      fwrite(status, sizeof status, 1, out);
      fwrite(rate, sizeof rate, 1, out);
      fwrite(spread, sizeof spread, 1, out);
      fclose(out);
      dodo_closure_destroy(closure);
      return 0;
    }}
    """)


def test_the_c_header_under_c17_pedantic_gives_pythons_bits_in_place_through_strides(tmp_path):
    compiler = shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        pytest.skip("no C compiler")
    model = default_model()
    source = tmp_path / "host.c"
    source.write_text(C_HOST)
    program = tmp_path / "host"
    run([compiler, "-std=c17", "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wstrict-prototypes",
         "-Wmissing-prototypes", "-Wundef", "-Wconversion", f"-I{INCLUDE}", str(source),
         *_pkg_config("--cflags", "--libs"), "-lm", "-o", str(program)])
    F, u = _cells()
    (tmp_path / "cells.bin").write_bytes(F.tobytes() + u.tobytes())
    result = subprocess.run([str(program), model], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    _check_output((tmp_path / "out.bin").read_bytes(), model, copies=1)


@pytest.mark.parametrize("host_threads", [4, 5, 7])
def test_the_cpp_example_applies_every_cell_whatever_the_host_threads(tmp_path, host_threads):
    """examples/cpp/grid_closure.cpp, the template of a threaded host, gave each of its threads
    ncell / host_threads cells: with a thread count that does not divide the grid (5 for its 4,608
    cells) the last ncell % host_threads cells were never applied (F_pred left zero; the example's
    own check then failed: "4605 cells from 5 host threads, ... violation 1.00e+00", exit 1). Every
    cell is now applied once, for any count."""
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    text = (ROOT / "examples/cpp/grid_closure.cpp").read_text()
    assert text.count("host_threads = 4;") == 1
    source = tmp_path / "grid_closure.cpp"
    source.write_text(text.replace("host_threads = 4;", f"host_threads = {host_threads};"))
    program = tmp_path / "grid_closure"
    run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wshadow", f"-I{INCLUDE}", str(source),
         *_pkg_config("--cflags", "--libs"), "-pthread", "-o", str(program)])
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    assert f"4608 cells from {host_threads} host threads, Box3D only" in result.stdout, result.stdout


# The unprefixed macros of macOS's AssertMacros.h (Apple's frameworks include it; its
# __ASSERT_MACROS_DEFINE_VERSIONS_WITHOUT_UNDERSCORES is 1 unless a host sets it to 0), as a host
# that included it before dodo.hpp has them. Boost, OpenCV and libsigc++ renamed their `check`.
APPLE_MACROS_HOST = textwrap.dedent("""\
    #define __Check(assertion) ((void)0)
    #define __Verify(assertion) ((void)(assertion))
    #define __Require(assertion, label) do { if (!(assertion)) goto label; } while (0)
    #define check(assertion) __Check(assertion)
    #define verify(assertion) __Verify(assertion)
    #define require(assertion, exceptionLabel) __Require(assertion, exceptionLabel)
    #define check_noerr(errorCode) __Check((errorCode) == 0)
    #define debug_string(message) ((void)0)
    #include <dodo/dodo.hpp>

    #include <cstdio>

    int main() {
      try {
        const unsigned char nothing[1] = {0};
        dodo::Closure::from_memory(nothing, 0);
        std::puts("accepted");
      } catch (const dodo::Error& error) {
        std::printf("%d %s\\n", static_cast<int>(error.status()), error.what());
      }
      dodo::Closure box;
      double F[24] = {0}, G[24];
      for (int a = 0; a < 6; ++a) F[4 * a] = 1.0 + 0.1 * a;
      box.apply(1, F, nullptr, G);
      check(G[0] > 0);
      std::printf("%d\\n", static_cast<int>(box.counters().cells));
      return 0;
    }
    """)


def test_the_cpp_header_compiles_after_apples_assert_macros(tmp_path):
    """dodo.hpp named its private status check `check`, which macOS's AssertMacros.h defines as a
    function-like macro: a host that had included an Apple framework header could not include
    dodo.hpp (g++ here, with the macros defined as the SDK does: "expected unqualified-id before
    'void'", "in expansion of macro 'check'" at dodo.hpp's lines 101 and 185). Renamed
    (throw_on_failure); the host compiles and runs, its errors dodo::Error as before."""
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    source = tmp_path / "host.cpp"
    source.write_text(APPLE_MACROS_HOST)
    program = tmp_path / "host"
    run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(source),
         *_pkg_config("--cflags", "--libs"), "-o", str(program)])
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    assert result.stdout.splitlines() == ["3 model in memory is empty (size 0)", "1"], result.stdout


METADATA_KEY_HOST = textwrap.dedent("""\
    program metadata_keys
      use dodo
      use iso_c_binding, only: c_null_char
      implicit none
      type(dodo_closure) :: closure
      character(len=32) :: padded
      character(len=4096) :: model
      integer :: stat
      call get_command_argument(1, model)
      call dodo_create(closure, trim(model) // c_null_char, stat=stat)
      if (stat /= DODO_OK) error stop "create"
      padded = "dodo.head"
      call show("plain", "dodo.head")
      call show("padded", padded)
      call show("terminated", "dodo.head" // c_null_char)
      call show("terminated padded", "dodo.head" // c_null_char // "   ")
      call show("padded terminated", trim(padded) // c_null_char // c_null_char)
      call show("inner NUL", "dodo.he" // c_null_char // "ad")
      call show("cut at NUL", "dodo" // c_null_char // ".head")
      call dodo_destroy(closure)
    contains
      subroutine show(what, key)
        character(len=*), intent(in) :: what, key
        character(len=:), allocatable :: value
        logical :: found
        value = dodo_get_metadata(closure, key, found)
        print '(a, ": ", l1, 1x, a)', what, found, value
      end subroutine show
    end program metadata_keys
    """)


def test_a_fortran_metadata_key_with_a_c_terminator_is_found(tmp_path):
    """A Fortran host that ends its C strings with c_null_char (model_path, z_method and
    onnxruntime_library accept that terminator) got dodo_get_metadata's
    "absent" for "dodo.head" // c_null_char: found = .false. and "", silently, for a key the model
    has. The key now follows model_path's rule: a trailing terminator (NULs and blanks only) ends
    it; a NUL before its end still makes it absent (C would read another key)."""
    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    from capi_host import compile_fortran, run_host

    model = default_model()
    program = compile_fortran(tmp_path, "metadata_keys", METADATA_KEY_HOST)
    lines = run_host(program, model)
    head = lines[0].removeprefix("plain: T ")
    assert head and head != lines[0], lines  # the plain key is found, with a value
    assert lines == [f"plain: T {head}", f"padded: T {head}", f"terminated: T {head}", f"terminated padded: T {head}",
                     f"padded terminated: T {head}", "inner NUL: F", "cut at NUL: F"], lines


# A host's aggregate holding a closure, value-initialised with {}; a closure copy-initialised from
# {}; an array of closures. Each copy-initialises a dodo::Closure from an empty initialiser list.
EMPTY_BRACES_HOST = textwrap.dedent("""\
    #include <dodo/dodo.hpp>

    #include <array>
    #include <cstdio>

    struct Solver {
      dodo::Closure closure;
      int steps;
    };

    int main() {
      Solver solver{};
      dodo::Closure copy_initialised = {};
      std::array<dodo::Closure, 2> closures{};
      double F[24] = {0}, G[24];
      for (int a = 0; a < 6; ++a) F[4 * a] = 1.0 + 0.1 * a;
      solver.closure.apply(1, F, nullptr, G);
      copy_initialised.apply(1, F, nullptr, G);
      closures[1].apply(1, F, nullptr, G);
      std::printf("%d %d %d %d\\n", solver.steps, static_cast<int>(solver.closure.has_model()),
                  static_cast<int>(copy_initialised.counters().cells), static_cast<int>(closures[1].counters().cells));
      return 0;
    }
    """)


@pytest.mark.parametrize("compiler", ["clang++", "g++"])
def test_a_closure_copy_initialised_from_empty_braces_compiles(tmp_path, compiler):
    """dodo::Closure's default constructor was `explicit Closure(const Options& = Options())`:
    copy-initialisation from {} (a host's `Solver solver{};` with a dodo::Closure member,
    `dodo::Closure c = {};`, `std::array<dodo::Closure, 2> a{};`) is then ill-formed, and clang
    (the compiler of macOS, and of the LLVM-based HPC compilers) refused each: "chosen constructor
    is explicit in copy-initialization" (g++ 12 accepts them). The default constructor is now
    implicit; `Closure(const Options&)` stays explicit."""
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    source = tmp_path / "host.cpp"
    source.write_text(EMPTY_BRACES_HOST)
    program = tmp_path / "host"
    run([compiler, "-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", f"-I{INCLUDE}", str(source),
         *_pkg_config("--cflags", "--libs"), "-o", str(program)])
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    assert result.stdout.split() == ["0", "0", "1", "1"], result.stdout
