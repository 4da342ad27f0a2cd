"""Issue 12: the C and Fortran examples of the pattern a code with many ranks needs (rank 0 reads
the model package, MPI_Bcast, every rank creates its closure from memory), built with the MPI
compiler wrappers against the installed Dodo and run on 2 ranks; failures stop every rank with
the message, never a hang."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from mpi_helpers import mpi_environment, mpirun, skip_without
from test_native_programs import PATHS, ROOT, pkg_config, run

from dodo.models import default_model_path


def build(tmp_path, language):
    compiler = shutil.which({"c": "mpicc", "fortran": "mpif90"}[language])
    if not compiler:
        skip_without(f"no MPI {language} compiler wrapper (apt-get install libopenmpi-dev)")
    program = tmp_path / f"mpi_closure_{language}"
    if language == "c":
        run([compiler, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", str(ROOT / "examples/c/mpi_closure.c"),
             *pkg_config("--cflags", "--libs"), "-lm", "-o", str(program)])
    else:
        include_dir = pkg_config("--variable=includedir")[0]
        run([compiler, "-std=f2018", "-Wall", "-J", str(tmp_path), f"{include_dir}/dodo/dodo.f90",
             str(ROOT / "examples/fortran/mpi_closure.f90"), *pkg_config("--libs"), "-o", str(program)])
    return program


def launch(program, *arguments):
    command = mpirun(2) + [str(program), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=mpi_environment())


@pytest.fixture(params=["c", "fortran"])
def program(request, tmp_path):
    assert PATHS["pkgconfig_dir"]
    return build(tmp_path, request.param)


def test_every_rank_creates_its_closure_from_the_broadcast_package(program):
    result = launch(program, default_model_path())
    assert result.returncode == 0, result.stdout + result.stderr
    size = os.path.getsize(default_model_path())
    match = re.search(rf"2 ranks .*model of {size} bytes broadcast from rank 0\): (\d+) cells, .* ([0-9.Ee+-]+)\s*$",
                      result.stdout.strip())
    assert match, result.stdout
    assert int(match.group(1)) > 0 and float(match.group(2)) < 1e-12


def test_unreadable_package_stops_every_rank_with_a_message(program, tmp_path):
    result = launch(program, tmp_path / "missing.onnx")
    assert result.returncode != 0
    assert "cannot read the model package" in result.stdout + result.stderr


def test_cuda_without_a_cuda_provider_fails_on_every_rank_with_a_clear_error(program):
    result = launch(program, default_model_path(), "cuda")
    if result.returncode == 0:
        pytest.skip("this ONNX Runtime has a usable CUDA provider and a GPU")
    text = result.stdout + result.stderr
    assert text.count("no CUDA execution provider") == 1, text  # once for the job (scale-out round five)
    assert "all 2 ranks: dodo_" in text, text
