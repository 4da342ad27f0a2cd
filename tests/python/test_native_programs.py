"""The C API as hydro codes use it: a C99 program, a Fortran program, the C/C++/Fortran examples and
an out-of-tree CMake project, all built against the installed package (headers, libdodo, CMake
package, pkg-config file) and run on the shipped model."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dodo._closure import runtime_paths
from dodo.models import default_model_path
from native_build import REQUIRES_C_API, run, tool

ROOT = Path(__file__).resolve().parents[2]
PATHS = runtime_paths()

pytestmark = REQUIRES_C_API


def pkg_config(*arguments):
    if not shutil.which("pkg-config"):
        pytest.skip("pkg-config is not installed")
    env = dict(os.environ, PKG_CONFIG_PATH=PATHS["pkgconfig_dir"])
    return run(["pkg-config", *arguments, "dodo"], env=env).split()


def build_c_program(tmp_path, source: str, name: str) -> Path:
    """tests/c/`source` compiled as C99 (warnings as errors) and linked to the installed libdodo;
    skipped without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler")
    program = tmp_path / name
    run([compiler, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", str(ROOT / "tests/c" / source),
         *pkg_config("--cflags", "--libs"), "-lm", "-o", str(program)])
    return program


def build_fortran_api_program(tmp_path) -> Path:
    """tests/fortran/test_fortran_api.f90 built with the installed dodo.f90 and libdodo; skipped
    without gfortran."""
    compiler = shutil.which("gfortran")
    if not compiler:
        pytest.skip("gfortran is not installed (apt-get install gfortran)")
    include_dir = pkg_config("--variable=includedir")[0]
    program = tmp_path / "test_fortran_api"
    run([compiler, "-std=f2018", "-Wall", "-J", str(tmp_path), f"{include_dir}/dodo/dodo.f90",
         str(ROOT / "tests/fortran/test_fortran_api.f90"), *pkg_config("--libs"), "-o", str(program)])
    return program


def test_pkg_config_file_points_at_the_installed_headers_and_library():
    include_dir = Path(pkg_config("--variable=includedir")[0])
    lib_dir = Path(pkg_config("--variable=libdir")[0])
    assert (include_dir / "dodo" / "dodo.h").is_file()
    assert (include_dir / "dodo" / "dodo.f90").is_file()
    assert any(lib_dir.glob("libdodo.so*"))


def test_plain_c99_program_including_every_public_c_header(tmp_path):
    program = build_c_program(tmp_path, "test_c_api.c", "test_c_api")
    output = run([str(program), str(default_model_path())])
    assert output.strip().endswith("passed, 0 failed")


def test_fortran_module_and_program(tmp_path):
    program = build_fortran_api_program(tmp_path)
    output = run([str(program), str(default_model_path())])
    assert output.strip().endswith("passed, 0 failed")


@pytest.fixture(scope="module")
def diagnostics_models(tmp_path_factory):
    """A model with the optional outputs, and one declaring an output its graph lacks (needs onnx)."""
    pytest.importorskip("onnx", reason="writing test models needs the onnx package")
    from closure_helpers import write, write_diagnostics_model

    root = tmp_path_factory.mktemp("native_diagnostics")
    write(root / "plain.onnx", n_test_vectors=4)
    write_diagnostics_model(root / "learned.onnx", n_test_vectors=4)
    write(root / "misdeclared.onnx", n_test_vectors=0,
          metadata_overrides={"dodo.outputs": '["head_output", "uncertainty", "log_growth_ratio"]'})
    return root


def closure_results(model, F, u):
    from dodo import BOX3D_ONLY, Closure

    return Closure(model, threads=1).apply(F, u), Closure(BOX3D_ONLY).apply(F, u)


def dumped_diagnostics(program, models, dump) -> np.ndarray:
    """Runs a test program of the API (tests/c/test_c_api.c, tests/fortran/test_fortran_api.f90) on
    the plain, learned and misdeclared models, its numbers written to `dump`: its own checks must
    pass. The numbers it wrote."""
    output = run([str(program), str(models / "plain.onnx"), str(models / "learned.onnx"),
                  str(models / "misdeclared.onnx"), str(dump)])
    assert output.strip().endswith("passed, 0 failed")
    return np.fromfile(dump, dtype=np.float64)


def assert_diagnostics_are_pythons(models, F, u, growth, uncertainty, proxy):
    """The growth rate and uncertainty of the learned model, and Box3D's growth-rate proxy, on cells
    F with four-velocities u (None: at rest) are dodo.Closure.apply's bit for bit."""
    learned, box = closure_results(models / "learned.onnx", F, u)
    np.testing.assert_array_equal(growth, learned.growth_rate)
    np.testing.assert_array_equal(uncertainty, learned.uncertainty)
    np.testing.assert_array_equal(proxy, box.growth_rate)


def test_c_program_growth_rate_and_uncertainty_match_python(tmp_path, diagnostics_models):
    """tests/c/test_c_api.c with the diagnostics arguments: its own checks pass, and the numbers it
    wrote equal dodo.Closure.apply's bit for bit (one C++ implementation behind both)."""
    program = build_c_program(tmp_path, "test_c_api.c", "test_c_api")
    values = dumped_diagnostics(program, diagnostics_models, tmp_path / "c.bin")
    n = 200
    assert values.size == n * (24 + 4 + 3)
    F, u = values[:n * 24].reshape(n, 6, 4), values[n * 24:n * 28].reshape(n, 4)
    assert_diagnostics_are_pythons(diagnostics_models, F, u, *values[n * 28:].reshape(3, n))


def test_fortran_program_growth_rate_and_uncertainty_match_python(tmp_path, diagnostics_models):
    values = dumped_diagnostics(build_fortran_api_program(tmp_path), diagnostics_models, tmp_path / "fortran.bin")
    n = 50
    assert values.size == n * (24 + 3)
    F = values[:n * 24].reshape(n, 6, 4)  # Fortran (4, 6, n) is C's [n][6][4]
    assert_diagnostics_are_pythons(diagnostics_models, F, None, *values[n * 24:].reshape(3, n))


def test_diagnostics_add_no_allocation_per_call(tmp_path, diagnostics_models):
    """tests/c/count_allocations.c counts malloc calls per call after warm-up: none for Box3D alone,
    and asking for the growth rate and uncertainty adds none to what ONNX Runtime's Run makes."""
    program = build_c_program(tmp_path, "count_allocations.c", "count_allocations")

    def counts(model, threads):
        words = run([str(program), str(model), str(threads)]).split()
        return float(words[1]), float(words[3])

    assert counts("-", 2) == (0.0, 0.0)
    plain, diagnostics = counts(diagnostics_models / "learned.onnx", 1)
    assert abs(diagnostics - plain) < 0.5  # 4 chunks per call: one allocation each would add 4


@pytest.fixture(scope="module")
def consumer(tmp_path_factory):
    cmake, ninja = tool("cmake"), tool("ninja")
    if not cmake:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("consumer")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    run([cmake, "-S", str(ROOT / "tests/consumer"), "-B", str(build), *generator, f"-DDodo_DIR={PATHS['cmake_dir']}"])
    run([cmake, "--build", str(build)])
    return build


@pytest.mark.parametrize("language", ["c", "cpp", "fortran"])
@pytest.mark.parametrize("with_model", [True, False], ids=["model", "box3d-only"])
def test_examples_built_out_of_tree_with_find_package_run(consumer, language, with_model):
    program = consumer / f"grid_closure_{language}"
    if not program.exists():
        pytest.skip(f"{language} example not built (no compiler for it)")
    output = run([str(program)] + ([str(default_model_path())] if with_model else []))
    assert "cells" in output
