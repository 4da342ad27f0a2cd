"""Open items of the outside probes of 2026-12-07 (C round forty-nine, Python round sixty-three) that
lay in the lead's files: the C API's "model in memory (1 bytes)", and box3d.cpp / native_network.cpp
under clang, which ignored GCC's optimize attribute (a warning each, and a * b + c contracted into one
rounding where GCC's build keeps two; docs/reliability_cpp.md, "Round forty-nine")."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from capi_host import compile_host, run_host
from native_build import REQUIRES_C_API
from test_probe_c_round46 import CREATE

ROOT = Path(__file__).resolve().parents[2]


@REQUIRES_C_API[0]
@REQUIRES_C_API[1]
def test_a_package_of_one_byte_is_one_byte_in_the_c_api(tmp_path):
    program = compile_host(tmp_path, "create", CREATE)
    for content, words in ((b"x", "model in memory (1 byte): "), (b"xy", "model in memory (2 bytes): ")):
        package = tmp_path / "package"
        package.write_bytes(content)
        name, _, message = "\n".join(run_host(program, str(package), "memory", timeout=120)).partition("|")
        # Before: "model in memory (1 bytes): text, not an ONNX model package ..."
        assert name == "DODO_ERROR_MODEL_FORMAT" and message.startswith(words), (name, message)


@pytest.mark.skipif(not shutil.which("clang++"), reason="clang++ is not installed")
@pytest.mark.parametrize("source", ["cpp/src/box3d/box3d.cpp", "cpp/src/runtime/native_network.cpp"])
def test_the_kernels_compile_under_clang_without_a_warning(source):
    """clang warned `unknown attribute 'optimize' ignored` five times in box3d.cpp (and so contracted
    prepare_block's and block_moments' a * b + c, which GCC's build keeps as two roundings: the
    flux-factor limit's decision), and of GCC's -Wmaybe-uninitialized pragma in native_network.cpp."""
    result = subprocess.run(["clang++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                             f"-I{ROOT / 'cpp' / 'include'}", f"-I{ROOT / 'cpp' / 'src'}", str(ROOT / source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
