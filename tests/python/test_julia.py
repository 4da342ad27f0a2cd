"""Dodo.jl (julia/) tests: run where `julia` is on PATH, skipped with the reason otherwise."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dodo._closure import runtime_available, runtime_paths
from dodo.models import default_model_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("julia") is None,
                    reason="julia is not on PATH (no Julia on these machines); Dodo.jl's C API calls are covered "
                           "by the C, Fortran and ctypes tests")
@pytest.mark.skipif(not runtime_available(), reason="dodo built without the closure runtime")
def test_julia_package_tests_pass():
    libraries = sorted(glob.glob(os.path.join(runtime_paths()["lib_dir"], "libdodo.so*")))
    env = dict(os.environ, DODO_MODEL=str(default_model_path()), DODO_LIBRARY=libraries[0] if libraries else "")
    result = subprocess.run(["julia", f"--project={ROOT / 'julia'}", str(ROOT / "julia/test/runtests.jl")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
