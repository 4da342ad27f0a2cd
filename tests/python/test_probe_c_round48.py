"""Outside probe of the C, C++ and Fortran interfaces, round forty-eight (docs/reliability_cpp.md,
"Round forty-eight"), as the developer of a transport code: a host compiled with gcc's
-fpack-struct (or a #pragma pack in force where it includes dodo.h) packed dodo_options, and
libdodo, reading it at its natural offsets, took its z_method pointer from the wrong bytes and
crashed in dodo_closure_create."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from capi_host import ROOT
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API


# Prints the layout the host sees, then one line per create: the option that was set wrong on
# purpose must be the one refused (so libdodo read the field the host wrote), and a right set of
# options must give DODO_OK.
PACKED_HOST = r"""
#include <dodo/dodo.h>
#include <stddef.h>
#include <stdio.h>

static void create(const dodo_options* options) {
  dodo_closure* closure = NULL;
  char message[1024] = "";
  dodo_status status = dodo_closure_create(DODO_BOX3D_ONLY, options, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name(status), message);
  fflush(stdout);
  dodo_closure_destroy(closure);
}

int main(void) {
  dodo_options options;
  printf("%u %u %u %u %u\n", (unsigned)sizeof(dodo_options), (unsigned)offsetof(dodo_options, z_method),
         (unsigned)offsetof(dodo_options, max_flux_factor), (unsigned)offsetof(dodo_options, device_id),
         (unsigned)sizeof(dodo_counters));
  fflush(stdout);
  dodo_options_init(&options);
  options.threads = 2;
  options.z_method = "jedynak";
  options.max_flux_factor = 0.9;
  create(&options);
  options.z_method = "wrong-z-method";
  create(&options);
  options.z_method = NULL;
  options.max_flux_factor = 7.5;
  create(&options);
  return 0;
}
"""

VARIANTS = {
    "c -fpack-struct": ("gcc", ["-std=c11", "-fpack-struct"], ""),
    "c -fpack-struct=4": ("gcc", ["-std=c11", "-fpack-struct=4"], ""),
    "c -fpack-struct=2": ("gcc", ["-std=c11", "-fpack-struct=2"], ""),
    "c #pragma pack(1)": ("gcc", ["-std=c11"], "#pragma pack(1)\n"),
    "c++ -fpack-struct": ("g++", ["-std=c++17", "-fpack-struct"], ""),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_host_compiled_with_packed_structs_gets_the_natural_layout(tmp_path, variant):
    from test_native_programs import pkg_config

    compiler, flags, prefix = VARIANTS[variant]
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    source = tmp_path / ("host.c" if compiler == "gcc" else "host.cpp")
    source.write_text(prefix + PACKED_HOST)
    program = tmp_path / "host"
    # Warnings as errors: the header's own pragmas must not warn under -fpack-struct.
    subprocess.run([compiler, *flags, "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}", str(source),
                    *pkg_config("--cflags", "--libs"), "-o", str(program)], check=True)
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (variant, result.returncode, result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    # The layout of a host built without packing (x86-64, aarch64: LP64).
    assert lines[0] == "64 24 32 56 48", lines
    assert lines[1] == "DODO_OK|", lines
    assert lines[2].startswith("DODO_ERROR_INVALID_ARGUMENT|") and "wrong-z-method" in lines[2], lines
    assert lines[3].startswith("DODO_ERROR_INVALID_ARGUMENT|") and "7.5" in lines[3], lines


def test_dodo_h_promises_that_dodo_counters_never_grows():
    header = (ROOT / "cpp/include/dodo/dodo.h").read_text()
    assert "dodo_counters never grows" in header
