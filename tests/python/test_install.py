"""First contact (issue 11, items 16 and 17): what a new user's install and test build do.

Configuring only (about a second each), never building: the C++ build itself is ctest's job.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dodo
import dodo.test
from dodo import cli

ROOT = Path(__file__).resolve().parents[2]


def cmake_tool(name):
    found = shutil.which(name)
    beside = Path(sys.executable).parent / name
    return found or (str(beside) if beside.exists() else None)


needs_cmake = pytest.mark.skipif(not (ROOT / "CMakeLists.txt").is_file() or not cmake_tool("cmake"),
                                 reason="needs the source tree and cmake")


def configure(build: Path, *definitions: str, env_update=None, path_first=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DODO_BUILD_RUNTIME", "DODO_ONNXRUNTIME_LIBRARY")}
    env.update(env_update or {})
    if path_first:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    command = [cmake_tool("cmake"), "-S", str(ROOT), "-B", str(build), *definitions]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def header_hidden() -> list[str]:
    """Definitions that make CMake miss ONNX Runtime's header wherever it is installed."""
    import glob
    hidden = {os.path.dirname(p) for p in glob.glob("/usr/include/**/onnxruntime_c_api.h", recursive=True)}
    hidden |= {os.path.dirname(p) for p in glob.glob("/usr/local/include/**/onnxruntime_c_api.h", recursive=True)}
    return [f"-DCMAKE_IGNORE_PATH={';'.join(sorted(hidden))}", "-DDODO_ONNXRUNTIME_ROOT="]


@needs_cmake
def test_a_build_without_onnxruntime_header_fails_with_the_reason(tmp_path):
    """Item 17: no header -> configuring fails and says how to get it, or how to ask for Box3D only."""
    result = configure(tmp_path / "b", *header_hidden())
    assert result.returncode != 0
    message = " ".join((result.stdout + result.stderr).split())
    assert "onnxruntime_c_api.h" in message and "DODO_BUILD_RUNTIME=OFF" in message


@needs_cmake
def test_a_box3d_only_build_is_an_explicit_opt_out(tmp_path):
    result = configure(tmp_path / "b", *header_hidden(), env_update={"DODO_BUILD_RUNTIME": "OFF"})
    assert result.returncode == 0, result.stdout + result.stderr
    cache = (tmp_path / "b" / "CMakeCache.txt").read_text()
    assert "DODO_BUILD_RUNTIME:BOOL=OFF" in cache


@needs_cmake
def test_the_test_build_never_takes_onnxruntime_from_a_python_without_it(tmp_path):
    """Item 16: a python3 without onnxruntime (a fresh machine's system Python), first on PATH and
    given as Python3_EXECUTABLE, is never the interpreter that locates the ONNX Runtime library
    for the C/C++ tests: another interpreter that has it is used, or configuring fails."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for name in ("python3", "python"):
        shim = bare / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')  # -S: no site-packages
        shim.chmod(0o755)
    assert subprocess.run([str(bare / "python3"), "-c", "import onnxruntime"], capture_output=True).returncode != 0
    result = configure(tmp_path / "b", "-DDODO_BUILD_TESTS=ON", f"-DPython3_EXECUTABLE={bare / 'python3'}",
                       path_first=bare)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        assert "Python3_EXECUTABLE" in " ".join(output.split()), output
        return
    cache = (tmp_path / "b" / "CMakeCache.txt").read_text()
    used = [line.split("=", 1)[1] for line in cache.splitlines() if line.startswith("DODO_ORT_BUILD_HINT_PYTHON:")]
    assert used and used[0] and not used[0].startswith(str(bare)), used


@needs_cmake
def test_the_test_build_takes_onnxruntime_from_the_python_it_is_given(tmp_path):
    result = configure(tmp_path / "b", "-DDODO_BUILD_TESTS=ON", f"-DPython3_EXECUTABLE={sys.executable}")
    assert result.returncode == 0, result.stdout + result.stderr
    cache = (tmp_path / "b" / "CMakeCache.txt").read_text()
    assert f"DODO_ORT_BUILD_HINT_PYTHON:INTERNAL={sys.executable}" in cache


def test_smoke_test_reports_the_closure_runtime(capsys):
    """Item 17: `python -m dodo.test` says whether the closure runtime is there and works."""
    assert dodo.test.main() == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("closure runtime:"))
    assert ("OK (default model" in line) == dodo.runtime_available(), line


def test_smoke_test_says_box3d_only_without_the_runtime(monkeypatch, capsys):
    monkeypatch.setattr(dodo, "runtime_available", lambda: False)
    assert dodo.test.main() == 0  # a Box3D-only build that was asked for is a working install
    assert "closure runtime: NOT built (Box3D only" in capsys.readouterr().out


def test_smoke_test_fails_when_the_runtime_cannot_run():
    if not dodo.runtime_available():
        pytest.skip("dodo built without the closure runtime")
    # A fresh process: ONNX Runtime's library is loaded once per process.
    env = dict(os.environ, DODO_ONNXRUNTIME_LIBRARY="/nonexistent/libonnxruntime.so")
    run = subprocess.run([sys.executable, "-m", "dodo.test"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and "closure runtime: built, NOT working" in run.stdout, run.stdout + run.stderr


def test_info_never_prints_a_directory_that_does_not_exist(monkeypatch, tmp_path, capsys):
    """Item 17: `dodo info --cmake-dir` on an install without the C API fails instead of printing a
    path a build system would then search in vain."""
    import dodo._closure

    missing = {key: str(tmp_path / "nowhere" / key) for key in ("include_dir", "lib_dir", "cmake_dir", "pkgconfig_dir")}
    monkeypatch.setattr(dodo._closure, "runtime_paths", lambda: {**missing, "default_model": "", "onnxruntime_library": ""})
    for flag in ("--cmake-dir", "--include-dir", "--lib-dir", "--pkgconfig-dir"):
        assert cli.main(["info", flag]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and "does not exist" in captured.err


def test_info_of_a_box3d_only_build_names_the_cause_and_marks_paths_not_installed(monkeypatch, tmp_path, capsys):
    """A DODO_BUILD_RUNTIME=OFF build: `dodo info` said "NOT built (no ONNX Runtime headers at build
    time)", a cause that does not exist (the headers ship with the source), and listed the C API's
    directories as if they were there (documentation probe). Now the build option is named and each
    missing path says "(not installed)"."""
    import dodo._closure

    missing = {key: str(tmp_path / "nowhere" / key) for key in ("include_dir", "lib_dir", "cmake_dir", "pkgconfig_dir")}
    monkeypatch.setattr(dodo._closure, "runtime_paths", lambda: {**missing, "default_model": "", "onnxruntime_library": ""})
    monkeypatch.setattr(dodo._closure, "runtime_available", lambda: False)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "closure runtime: NOT built (this dodo was built with DODO_BUILD_RUNTIME=OFF" in out
    assert "headers" not in out
    for key, path in missing.items():
        assert f"{key}: {path} (not installed)" in out


def test_info_prints_the_cmake_dir_when_it_exists(capsys):
    if not dodo.runtime_available():
        pytest.skip("dodo built without the closure runtime")
    code = cli.main(["info", "--cmake-dir"])
    out = capsys.readouterr().out.strip()
    assert code == 0 and Path(out).is_dir() and (Path(out) / "DodoConfig.cmake").is_file()
