"""What the tests that build programs against the installed C API share: where the build tools are,
running a build step, and the marks that skip without the runtime or its CMake package."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dodo._closure import runtime_available, runtime_paths

PATHS = runtime_paths()

#: Skips a module without the closure runtime or without the C API's CMake package.
REQUIRES_C_API = [
    pytest.mark.skipif(not runtime_available(), reason="dodo built without the closure runtime"),
    pytest.mark.skipif(not Path(PATHS["cmake_dir"]).is_dir(),
                       reason=f"the C API is not installed with this dodo ({PATHS['cmake_dir']} missing)"),
]


def tool(name):
    """A build tool on PATH, or installed beside this Python (pip's cmake/ninja in a venv)."""
    found = shutil.which(name)
    beside = Path(sys.executable).parent / name
    return found or (str(beside) if beside.exists() else None)


def run(command, **kwargs):
    """Runs a build step; its output on failure."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}"
    return result.stdout
