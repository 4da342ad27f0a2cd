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


def test_a_refused_cuda_device_names_the_library_this_process_keeps(tmp_path):
    """A process keeps the first ONNX Runtime library it loads (docs/runtime.md): after a refused
    device="cuda", a second try naming another library got the same refusal and the same advice to
    point onnxruntime_library at onnxruntime-gpu (new user's journey, round three). The refusal now
    names the library loaded and says to do that in a new process. A fresh interpreter: no GPU here."""
    import sys

    import dodo

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    script = ("import dodo\n"
              "for library in (None, '/nonexistent/libonnxruntime.so'):\n"
              "    try:\n"
              "        dodo.Closure(device='cuda', onnxruntime_library=library)\n"
              "    except RuntimeError as error:\n"
              "        print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    lines = [line for line in result.stdout.splitlines() if "no CUDA execution provider" in line]
    if not lines:
        pytest.skip("this machine's ONNX Runtime offers CUDA: " + result.stdout[-400:] + result.stderr[-400:])
    assert len(lines) == 2, result.stdout + result.stderr
    for line in lines:
        assert "the ONNX Runtime library this process loaded (" in line and "libonnxruntime.so" in line, line
        assert "in a new process (a process keeps the first ONNX Runtime library it loads)" in line, line
