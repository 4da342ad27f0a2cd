"""A new user's journey from a fresh clone, round three (outside probe): scale-out (the MPI examples,
`dodo simulate` under mpirun, `torchrun` training, the scaling benchmark), a transport code that vendors
Dodo (add_subdirectory, FetchContent) or finds an installed one, and GPUs asked for without a GPU.

- A host that vendors Dodo with FetchContent, with no Python that has `onnxruntime` at hand, configured
  without a word, and its libdodo refused every model at run time: "cannot load the ONNX Runtime library
  (pip install onnxruntime, or set DODO_ONNXRUNTIME_LIBRARY ...)", where a pip install does not reach a
  libdodo outside the wheel. Configuring now says so and how to build a path in; docs/runtime.md says what
  such a host needs.
- The benchmarks the README's "Beyond one machine" and docs/gpu.md run still sent users to
  `pip install 'dodo[train]'` / `'dodo[mpi]'` (another project on the package index; round one mended the
  package's own messages), and bench_scaling.py without mpirun, mpi4py or torch did its set-up and a
  one-process run before stopping with a traceback or a launcher's page: now one line, at once.
- README and docs/qke.md: "every other command started as one of N > 1 ranks is refused"; `dodo info`
  and `dodo reference` print on every rank (they only print): said.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_probe_c_round47 import DODO_AS_A_SUBPROJECT

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # a hang guard only


def _run_script(script: Path, *arguments, prelude: str = "", env=None) -> subprocess.CompletedProcess:
    """A benchmark script in a fresh interpreter; `prelude` runs first (to take a dependency away)."""
    code = (f"import runpy, sys\n{prelude}\nsys.argv = [{str(script)!r}] + {list(arguments)!r}\n"
            f"sys.exit(runpy.run_path({str(script)!r}, run_name='__main__'))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=env, cwd=ROOT, stdin=subprocess.DEVNULL)


def _last_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-1500:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_no_benchmark_sends_users_to_a_package_index():
    """`pip install 'dodo[train]'` asks the package index for a project named dodo, which is another one:
    the benchmarks' hints (bench_training.py's error, bench_scaling.py's docstring) name this checkout."""
    offenders = [f"{path.name}:{number}" for path in sorted((ROOT / "benchmarks").glob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"""['"]dodo\[""", line)]
    assert not offenders, offenders


def test_bench_training_without_the_training_extras_names_this_checkout():
    from dodo._shown import extra_install

    result = _run_script(ROOT / "benchmarks" / "bench_training.py", "--cells", "10", "--train-cells", "10",
                         prelude="sys.modules['torch'] = None")
    line = _last_line_error(result)
    assert "needs the training extras" in line and extra_install("train") in line, line
    assert "dodo[" not in line, line


@pytest.mark.parametrize("missing", ["mpirun", "mpi4py", "torch"])
def test_bench_scaling_names_what_is_missing_before_any_work(tmp_path, missing):
    """README, "Beyond one machine", measures with benchmarks/bench_scaling.py. Without mpirun it made the
    synthetic data, timed a one-process simulation, then ended in a FileNotFoundError traceback; without
    mpi4py or torch, in `failed: ...` and the launcher's or dodo's pages. Now one line, exit 2, at once."""
    from dodo._shown import extra_install

    env = dict(os.environ)
    if missing == "mpirun":
        env["PATH"] = str(tmp_path)  # an empty directory: no mpirun (the script runs dodo as sys.executable -m)
    else:  # a package that fails to import, in this interpreter and in every child the benchmark starts
        (tmp_path / missing).mkdir()
        (tmp_path / missing / "__init__.py").write_text(f"raise ImportError('no {missing} here (test)')\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH", "")]))
    result = _run_script(ROOT / "benchmarks" / "bench_scaling.py", "--states", "1", "--ncell", "16", "--nphi", "8",
                         "--train-rows", "300", "--cells", "100", "--repeats", "1", env=env)
    line = _last_line_error(result)
    assert line.startswith("bench_scaling.py: error: needs "), line
    expected = {"mpirun": "mpirun on PATH", "mpi4py": f"mpi4py ({extra_install('mpi')})",
                "torch": f"the training extras, for dodo synth and dodo train ({extra_install('train')})"}[missing]
    assert expected in line, line
    assert "dodo[" not in line, line
    assert result.stdout == "", result.stdout[-1500:]  # no table: nothing was measured




def test_a_vendoring_host_without_onnxruntime_is_told_at_configure_time(tmp_path):
    """Dodo fetched by FetchContent (a checkout without Dodo's `.venv`) into a host with no Python that has
    `onnxruntime`: configuring said nothing, and the built libdodo then refused every model ("cannot load
    the ONNX Runtime library (pip install onnxruntime, ...)"). Configuring now says that no library was
    found, where this libdodo will look, and how to build a path in."""
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    if not Path(cmake).exists():
        pytest.skip("needs cmake")
    source = tmp_path / "dodo-src"  # what FetchContent checks out: the sources, no .venv
    source.mkdir()
    shutil.copy2(ROOT / "CMakeLists.txt", source)
    for part in ("cmake", "cpp"):
        shutil.copytree(ROOT / part, source / part)
    host = tmp_path / "host"
    host.mkdir()
    (host / "CMakeLists.txt").write_text(DODO_AS_A_SUBPROJECT.format(root=source.as_posix()))
    (host / "app.c").write_text("#include <dodo/dodo.h>\nint main(void) { return dodo_api_version() != 1; }\n")
    no_python = tmp_path / "no-python"  # an interpreter that runs nothing: no onnxruntime anywhere
    no_python.write_text("#!/bin/sh\nexit 1\n")
    no_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "DODO_ONNXRUNTIME_LIBRARY", "DODO_BUILD_RUNTIME", "CMAKE_BUILD_TYPE")}
    result = subprocess.run([cmake, "-S", str(host), "-B", str(tmp_path / "build"),
                             f"-DPython3_EXECUTABLE={no_python}"],
                            capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    if result.returncode != 0 and "onnxruntime_c_api.h" in result.stderr:
        pytest.skip("ONNX Runtime's header is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ONNX Runtime library for the build hint" not in result.stdout, result.stdout[-3000:]
    lines = [line for line in result.stdout.splitlines() if "Dodo: no ONNX Runtime library found" in line]
    assert len(lines) == 1, result.stdout[-3000:]
    assert "DODO_ONNXRUNTIME_LIBRARY" in lines[0] and "-DDODO_ONNXRUNTIME_LIBRARY=" in lines[0], lines[0]
    assert str(no_python) in lines[0], lines[0]  # names the interpreters it asked


def test_runtime_md_says_what_a_vendoring_host_needs_for_a_model():
    text = " ".join((ROOT / "docs" / "runtime.md").read_text().split())
    section = text[text.index("## Building against an installed Dodo"):text.index("## Many ranks: MPI")]
    assert "ONNX Runtime for a libdodo outside the wheel" in section
    assert "Dodo: no ONNX Runtime library found at configure time" in section
    assert "DODO_ONNXRUNTIME_LIBRARY=/path/to/libonnxruntime.so.1" in section


def test_the_docs_name_the_commands_that_run_on_every_mpi_rank():
    """The commands `_mpi_replica_problem` lets run as N ranks besides `dodo simulate` are the ones the
    README's and docs/qke.md's "every other command ... is refused" names as printing once per rank."""
    from dodo import cli

    exempt = sorted(command for command in ("info", "reference", "apply", "score", "synth", "preprocess", "train",
                                            "export", "evaluate", "inspect", "plot", "learning-curve",
                                            "train-ensemble", "study")
                    if cli._mpi_replica_problem(command, {"OMPI_COMM_WORLD_SIZE": "2"}) is None)
    assert exempt == ["info", "reference"], exempt
    for doc in ("README.md", "docs/qke.md"):
        text = " ".join((ROOT / doc).read_text().split())
        # Since scale-out round five `dodo test` runs in each rank too (it is not a command of the list above).
        assert "`dodo info`, `dodo reference` and `dodo test`, which write no file, run once per rank" in text, doc


def test_runtime_md_says_how_a_vendoring_host_installs_a_program_that_runs():
    """A host with `add_subdirectory(dodo)` and `install(TARGETS app)`: `cmake --install` put libdodo in
    PREFIX/lib and the program in PREFIX/bin without a path to it, and the installed program stopped with
    'libdodo.so.0: cannot open shared object file' (runtime.md promised an rpath "also after cmake --install"
    for the installed-Dodo routes only). The docs give the install rpath that made it run."""
    text = " ".join((ROOT / "docs" / "runtime.md").read_text().split())
    section = text[text.index("## Building against an installed Dodo"):text.index("## Many ranks: MPI")]
    assert "A vendoring host's own `cmake --install` installs libdodo" in section
    assert '`set_target_properties(app PROPERTIES INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")`' in section
