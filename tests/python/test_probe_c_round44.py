"""Outside probe of the C, C++ and Fortran interfaces, round forty-four (docs/reliability_cpp.md,
"Round forty-four"), as the developer of a transport code: a text file given as the model package,
what an out-of-memory message blames when an address-space limit (`ulimit -v`) is set, and a closure of
16 threads under such a limit."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import dodo
from capi_host import CAP_ADDRESS_SPACE, CROSSING_CELLS, ROOT, compile_host, default_model, run_host
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API


# --- a text file given as the model package ------------------------------------------------------

# Makes a closure of the package at argv[1]: "STATUS_NAME|message".
CREATE = r"""
#include <dodo/dodo.h>
#include <stdio.h>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  dodo_closure* closure = NULL;
  char message[8192] = "";
  const dodo_status status = dodo_closure_create(argv[1], NULL, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("text", ['{"dodo.format_version": "1", "n_species": 6}\n',  # a JSON file (M.json)
                                  "model: qke_default.onnx\nthreads: 4\n",  # a YAML configuration
                                  "hello world"])
def test_a_text_file_given_as_the_model_is_called_text_not_damaged(tmp_path, text):
    """`dodo score M.json s.h5`, `dodo_closure_create("M.json", ...)`: a JSON file given as the package was
    `DODO_ERROR_MODEL_FORMAT: model file "M.json": not an ONNX model (truncated or damaged file?): wire type 3
    (not used by ONNX) at byte 0`, sending the user to fetch the file again. It now says what the file is."""
    program = compile_host(tmp_path, "create", CREATE)
    path = tmp_path / "M.json"
    path.write_text(text)
    name, _, message = "\n".join(run_host(program, str(path), timeout=120)).partition("|")
    assert name == "DODO_ERROR_MODEL_FORMAT", (name, message)
    assert "a text file, not an ONNX model package (it begins \"" + text[:20] in message, message
    assert "truncated or damaged" not in message, message


def test_a_binary_file_that_is_no_package_is_still_called_damaged(tmp_path):
    """Guard: the text check is asked only of a file the reader refused, and a binary one keeps the
    reader's own words."""
    program = compile_host(tmp_path, "create", CREATE)
    path = tmp_path / "M.onnx"
    path.write_bytes(b"\x08\x07\x12\x00\x1f\xff")
    name, _, message = "\n".join(run_host(program, str(path), timeout=120)).partition("|")
    assert name == "DODO_ERROR_MODEL_FORMAT" and "truncated or damaged" in message, (name, message)
    assert "text file" not in message, message


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@pytest.mark.parametrize("name, head, words", [
    ("data.h5", HDF5_SIGNATURE + b"\0" * 100, "an HDF5 file (a data file?), not an ONNX model package"),
    ("user_block.h5", b"\0" * 512 + HDF5_SIGNATURE + b"\0" * 100, "an HDF5 file (a data file?), not an ONNX"),
    ("best.pt", b"PK\x03\x04" + b"\0" * 100, "a zip archive (a PyTorch checkpoint, dodo train's best.pt?), not an"),
    ("model.onnx.gz", b"\x1f\x8b\x08\0" + b"\0" * 100, "compressed with gzip, not an ONNX model package: unpack"),
    ("model.onnx.xz", b"\xfd7zXZ\0" + b"\0" * 100, "compressed with xz, not an ONNX model package"),
    ("model.onnx.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 100, "compressed with zstd, not an ONNX model package"),
    ("model.onnx.bz2", b"BZh91AY&SY" + b"\0" * 100, "compressed with bzip2, not an ONNX model package"),
    ("model.tar", b"\x08" + b"\0" * 256 + b"ustar\x0000" + b"\0" * 300, "a tar archive, not an ONNX model package"),
])
def test_a_data_file_archive_or_compressed_file_given_as_the_model_is_named(tmp_path, name, head, words):
    """A C, C++ or Fortran host given an Emu database, dodo train's best.pt or a compressed package as the
    model was told `not an ONNX model (truncated or damaged file?): field number 0 at byte 10` (HDF5),
    `... wire type 7 (not used by ONNX) at byte 0` (gzip), where Python names each; now libdodo names
    them too, in the words Python uses."""
    program = compile_host(tmp_path, "create", CREATE)
    path = tmp_path / name
    path.write_bytes(head)
    status, _, message = "\n".join(run_host(program, str(path), timeout=120)).partition("|")
    assert status == "DODO_ERROR_MODEL_FORMAT" and words in message, (status, message)
    assert "truncated or damaged" not in message, message


# --- which limit an out-of-memory message names -----------------------------------------------------

# memory_shortage_cause (cpp/src/runtime/memory_limit.cpp) under an RLIMIT_AS of the process's mapped
# size plus argv[1] bytes, for a failed request of argv[2] bytes: "LIMIT_KB|cause".
CAUSE = r"""
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "runtime/memory_limit.hpp"

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  unsigned long pages = 0;
  FILE* statm = std::fopen("/proc/self/statm", "r");
  if (!statm || std::fscanf(statm, "%lu", &pages) != 1) return 5;
  std::fclose(statm);
  const rlim_t bytes = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) +
                       static_cast<rlim_t>(std::atoll(argv[1]));
  struct rlimit limit = {bytes, bytes};
  if (setrlimit(RLIMIT_AS, &limit) != 0) return 3;
  const double request = std::atof(argv[2]);
  const std::string cause = request > 0 ? dodo::runtime::memory_shortage_cause(request)
                                        : dodo::runtime::memory_shortage_cause();
  std::printf("%lu|%s\n", static_cast<unsigned long>(bytes / 1024), cause.c_str());
  return 0;
}
"""

MiB = 1024 * 1024


def _cause(tmp_path, extra_bytes: int, request_bytes: int = 0) -> tuple[int, str]:
    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    from test_native_programs import run

    source = tmp_path / "cause.cpp"
    source.write_text(CAUSE)
    program = tmp_path / "cause"
    if not program.exists():
        run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/src'}", str(source),
             str(ROOT / "cpp/src/runtime/memory_limit.cpp"), "-o", str(program)])
    limit_kb, _, cause = "\n".join(run_host(program, str(extra_bytes), str(request_bytes), timeout=60)).partition("|")
    return int(limit_kb), cause


def test_a_limit_far_above_the_process_is_not_blamed(tmp_path):
    """The out-of-memory messages of round forty-three named RLIMIT_AS whenever one was set: under
    `ulimit -v` of 64 GiB above a process of some megabytes, a failure for want of the machine's memory
    (or a control group's) said 'the address-space limit RLIMIT_AS (ulimit -v) is 67114240 kB: raise it',
    which raising would not cure. Now the machine's memory is named, and the limit as far above."""
    limit_kb, cause = _cause(tmp_path, 64 * 1024 * MiB)
    assert cause.startswith("the machine's memory, or its control group's limit, is used up"), cause
    assert f"RLIMIT_AS, {limit_kb} kB, is far above the process's" in cause, cause
    assert "raise it" not in cause, cause


def test_a_limit_near_the_process_is_named(tmp_path):
    """A limit some megabytes above what the process maps (a rank under `ulimit -v`) is still named, and
    so is a far limit that the failed request would pass (a model file of its size)."""
    limit_kb, cause = _cause(tmp_path, 60 * MiB)
    assert cause == f"the address-space limit RLIMIT_AS (ulimit -v) is {limit_kb} kB: raise it, e.g. ulimit -v unlimited"
    limit_kb, cause = _cause(tmp_path, 2048 * MiB, request_bytes=3072 * MiB)
    assert cause == f"the address-space limit RLIMIT_AS (ulimit -v) is {limit_kb} kB: raise it, e.g. ulimit -v unlimited"


# --- workers that started, and workspaces that do not fit ------------------------------------------

# Caps its address space at what it has mapped plus argv[2] bytes (unless argv[2] is negative), makes a
# closure of argv[1] with 16 threads and applies it to 3000 crossing cells (three chunks): "STATUS_NAME
# |message" of the create, then the apply's status and a weighted sum of its outputs.
SIXTEEN_THREADS = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
""" + CAP_ADDRESS_SPACE + CROSSING_CELLS + r"""
static double F[3000][6][4], G[3000][6][4];

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 16;
  fill_crossing_cells(F, 3000, 0.001);
  rlim_t bytes = 0;
  const int capped = cap_address_space(atol(argv[2]), atol(argv[2]) >= 0, &bytes);
  if (capped != 0) return capped;
  dodo_closure* closure = NULL;
  char message[8192] = "";
  dodo_status status = dodo_closure_create(argv[1], &options, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name(status), message);
  if (status != DODO_OK) return 0;
  status = dodo_apply(closure, 3000, &F[0][0][0], NULL, NULL, NULL, &G[0][0][0], NULL, NULL);
  double sum = 0;
  for (int c = 0; c < 3000; ++c)
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) sum += (1 + c % 7 + a + m) * G[c][a][m];
  printf("%s %.17g\n", dodo_status_name(status), sum);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("extra_kb", [100_000, 150_000, 200_000])
def test_threads_whose_workspaces_do_not_fit_are_stopped_not_an_error(tmp_path, extra_kb):
    """threads = 16 under an address-space limit of the host's size + 60,000 kB worked (one thread started:
    the pool keeps the workers it can start), but at + 100,000 kB, 150,000 kB, 200,000 kB some workers
    started, their stacks took the room, and the create failed: `DODO_ERROR_OUT_OF_MEMORY: out of memory
    making the closure's 6 workspaces of 1024 cells: lower chunk_size or threads` (6, 12, 16). The closure
    now keeps the threads it has workspaces for, and computes what a closure without a limit computes."""
    program = compile_host(tmp_path, "sixteen", SIXTEEN_THREADS)
    model = default_model()
    free = run_host(program, model, "-1", timeout=300)
    assert free[0] == "DODO_OK|" and free[1].startswith("DODO_OK "), free
    capped = run_host(program, model, str(extra_kb * 1024), timeout=300)
    assert capped == free, (capped, free)


PYTHON_SIXTEEN_THREADS = """
import resource, sys
import dodo
pages = int(open("/proc/self/statm").read().split()[0])
limit = pages * resource.getpagesize() + int(sys.argv[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print(dodo.Closure(None, threads=16).threads)
"""


def test_python_closure_under_a_limit_reports_the_threads_it_kept():
    """The same from Python: `dodo.Closure(threads=16)` under the process's size + 200,000 kB is made, and
    its threads property says how many threads it kept (1 to 16)."""
    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    done = subprocess.run([sys.executable, "-c", PYTHON_SIXTEEN_THREADS, "200000"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 1 <= int(done.stdout.strip()) <= 16, done.stdout
