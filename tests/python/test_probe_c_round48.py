"""Outside probe of the C, C++ and Fortran interfaces, round forty-eight (docs/reliability_cpp.md,
"Round forty-eight"), as the developer of a transport code: a host compiled with gcc's
-fpack-struct (or a #pragma pack in force where it includes dodo.h) packed dodo_options, and
libdodo, reading it at its natural offsets, took its z_method pointer from the wrong bytes and
crashed in dodo_closure_create; the Fortran module compiled with gfortran's -fpack-derived did the
same through its BIND(C) copy of dodo_options; dodo.h now promises that dodo_counters never grows."""
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


# The Fortran module compiled with gfortran's -fpack-derived (a flag of legacy codes, which reach
# the module through the host's CMAKE_Fortran_FLAGS): it packs BIND(C) types too, and the module's
# copy of dodo_options had z_method at byte 20, where libdodo reads byte 24: a crash in strlen.
PACKED_FORTRAN_HOST = r"""
program packed
  use dodo
  implicit none
  type(dodo_closure) :: closure
  integer :: stat
  character(len=300) :: message
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, threads=2, z_method="jedynak", max_flux_factor=0.9d0, &
                   stat=stat, errmsg=message)
  print '(i0, "|", a)', stat, trim(message)
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, z_method="wrong-z-method", stat=stat, errmsg=message)
  print '(i0, "|", a)', stat, trim(message)
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, max_flux_factor=7.5d0, stat=stat, errmsg=message)
  print '(i0, "|", a)', stat, trim(message)
  message = ""
  call dodo_create(closure, DODO_BOX3D_ONLY, onnxruntime_library="/nonexistent/libonnxruntime.so", &
                   stat=stat, errmsg=message)
  print '(i0, "|", a)', stat, trim(message)
  call dodo_destroy(closure)
end program packed
"""


@pytest.mark.parametrize("flags", [["-fpack-derived"], []], ids=["fpack-derived", "plain"])
def test_the_fortran_module_compiled_with_fpack_derived_passes_its_options_whole(tmp_path, flags):
    from test_native_programs import pkg_config
    from capi_host import FORTRAN_MODULE

    if not shutil.which("gfortran"):
        pytest.skip("gfortran is not installed")
    source = tmp_path / "packed.f90"
    source.write_text(PACKED_FORTRAN_HOST)
    program = tmp_path / "packed"
    subprocess.run(["gfortran", "-std=f2018", *flags, "-J", str(tmp_path), str(FORTRAN_MODULE), str(source),
                    *pkg_config("--libs"), "-o", str(program)], check=True)
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = result.stdout.splitlines()
    assert lines[0] == "0|", lines
    assert lines[1].startswith("1|") and "wrong-z-method" in lines[1], lines
    assert lines[2].startswith("1|") and "7.5" in lines[2], lines
    # A Box3D-only closure needs no ONNX Runtime: the path is accepted and unused (as in C).
    assert lines[3] == "0|", lines
