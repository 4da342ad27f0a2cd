"""Small C, C++ and Fortran host programs for the outside probes of the C side
(test_probe_round12_capi.py, test_probe_round13_capi.py, test_probe_round15_capi.py,
test_probe_round16_capi.py): compiled
against the source tree's headers (dodo.h, dodo.hpp, dodo.f90) and linked to the installed
libdodo through its pkg-config file, then run with a limit that turns a hang into a failure."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import dodo

ROOT = Path(__file__).resolve().parents[2]
FORTRAN_MODULE = ROOT / "cpp/include/dodo/dodo.f90"

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


# The cells the hosts apply the closure to, shared so that each host does not repeat the loop: n
# cells of six species at rest, each with an ELN crossing (species 3's flux points against the
# others'), densities rising by `step` a cell so that the cells differ.
# Caps the host's address space (soft and hard, as `ulimit -v`) at what it has mapped now plus
# `extra` bytes, the limit in *bytes: 0 on success, 5 if /proc/self/statm cannot be read, 3 if
# setrlimit fails; apply 0 only computes the limit. Needs <stdio.h>, <sys/resource.h>, <unistd.h>.
CAP_ADDRESS_SPACE = r"""
static int cap_address_space(long extra, int apply, rlim_t* bytes) {
  unsigned long pages = 0;
  FILE* statm = fopen("/proc/self/statm", "r");
  if (!statm || fscanf(statm, "%lu", &pages) != 1) return 5;
  fclose(statm);
  *bytes = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (rlim_t)extra;
  struct rlimit limit = {*bytes, *bytes};
  return apply && setrlimit(RLIMIT_AS, &limit) != 0 ? 3 : 0;
}
"""

CROSSING_CELLS = r"""
static void fill_crossing_cells(double (*F)[6][4], int n, double step) {
  for (int c = 0; c < n; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + step * c;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
}
"""


def default_model() -> str:
    """The shipped default model's path (the test is skipped without it)."""
    from dodo._closure import runtime_paths

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    path = runtime_paths()["default_model"]
    if not path or not Path(path).is_file():
        pytest.skip("no default model")
    return path


def compile_host(tmp_path: Path, name: str, source: str, language: str = "c") -> Path:
    """A C (C11) or C++ (C++17) host, warnings as errors, linked to the installed libdodo."""
    from test_native_programs import pkg_config, run

    compiler = {"c": "gcc", "c++": "g++"}[language]
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    path = tmp_path / (name + (".c" if language == "c" else ".cpp"))
    path.write_text(source)
    program = tmp_path / name
    standard = "-std=c11" if language == "c" else "-std=c++17"
    run([compiler, standard, "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}", str(path),
         *pkg_config("--cflags", "--libs"), "-lm", "-pthread", "-o", str(program)])
    return program


def compile_fortran(tmp_path: Path, name: str, source: str, *objects: str, module: Path | None = None) -> Path:
    """A Fortran 2018 host built with the dodo module (the source tree's, or `module`) and any
    extra object files, linked to the installed libdodo."""
    from test_native_programs import pkg_config, run

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed (apt-get install gfortran)")
    path = tmp_path / (name + ".f90")
    path.write_text(source)
    program = tmp_path / name
    run(["gfortran", "-std=f2018", "-Wall", "-J", str(tmp_path), str(module or FORTRAN_MODULE), str(path),
         *objects, *pkg_config("--libs"), "-o", str(program)])
    return program


def run_host(program: Path, *arguments: str, timeout: float = 300, env: dict | None = None) -> list[str]:
    """Runs a host program that must exit 0; its output lines. A hang past `timeout` fails
    (subprocess kills it with SIGKILL, which no blocked signal mask stops)."""
    try:
        result = subprocess.run([str(program), *arguments], capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{program.name} {' '.join(arguments)} did not finish within {timeout} s (hang)")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    return [line.rstrip() for line in result.stdout.splitlines()]
