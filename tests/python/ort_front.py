"""Libraries put in front of ONNX Runtime for the outside probes of the C side: a host names one as
`onnxruntime_library`, and it hands libdodo the real library's table (PROBE_REAL_ONNXRUNTIME) with
some functions replaced. The shim's C source was written out in full by each probe that needed one
(test_probe_cpp_round17_capi.py, test_probe_c_round41.py); it is here once (C round forty-two)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# Before the replacements: the real library's table (`real_api`), once GetApi has been asked.
_FRONT_HEAD = r"""
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <onnxruntime_c_api.h>
#include <stdlib.h>
#include <string.h>
static const OrtApiBase* real_base;
static const OrtApi* real_api;
static OrtApi patched;
static OrtApiBase base;
"""

# After them: the table given to libdodo is the real one with `replace(&patched)` applied.
_FRONT_TAIL = r"""
static const OrtApi* ORT_API_CALL get_api(uint32_t version) {
  real_api = real_base->GetApi(version);
  if (!real_api) return NULL;
  memcpy(&patched, real_api, sizeof patched);
  replace(&patched);
  return &patched;
}
static const char* ORT_API_CALL version_string(void) { return real_base->GetVersionString(); }
const OrtApiBase* OrtGetApiBase(void) {
  void* real = dlopen(getenv("PROBE_REAL_ONNXRUNTIME"), RTLD_NOW | RTLD_LOCAL);
  if (!real) return NULL;
  const OrtApiBase* (*get)(void) = (const OrtApiBase* (*)(void))dlsym(real, "OrtGetApiBase");
  real_base = get();
  base.GetApi = get_api;
  base.GetVersionString = version_string;
  return &base;
}
"""


def front_source(replacements: str) -> str:
    """The C source of a front of ONNX Runtime: `replacements` defines the replacing functions
    (calling the real ones through `real_api`) and `static void replace(OrtApi* api)`, which puts
    them in the table."""
    return _FRONT_HEAD + replacements + _FRONT_TAIL


def fake_onnxruntime(tmp_path: Path, name: str, source: str) -> Path:
    """lib{name}.so built from C ``source`` against ONNX Runtime's C header (a front from
    `front_source`, or any library exporting OrtGetApiBase); the test is skipped without the header
    or gcc. The host runs it with PROBE_REAL_ONNXRUNTIME set to the real library (runtime_paths())."""
    header = Path("/usr/include/onnxruntime")
    if not (header / "onnxruntime_c_api.h").is_file() or not shutil.which("gcc"):
        pytest.skip("ONNX Runtime's C header or gcc missing")
    library = tmp_path / f"lib{name}.so"
    (tmp_path / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", "-shared", "-fPIC", f"-I{header}",
                    str(tmp_path / f"{name}.c"), "-o", str(library)], check=True)
    return library
