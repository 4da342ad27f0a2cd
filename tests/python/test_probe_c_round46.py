"""Outside probe of the C, C++ and Fortran interfaces, round forty-six (docs/reliability_cpp.md,
"Round forty-six"), as the developer of a transport code: a damaged package given as bytes in memory,
a byte-order mark alone given as the model, a package in memory whose copy does not fit, one cell and
one workspace counted in the singular, the MPI example given an empty package, and the C examples'
messages longer than their 512-byte buffers."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from capi_host import CAP_ADDRESS_SPACE, compile_host, default_model, run_host
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API


# Makes a closure of the file at argv[1], or with a second argument of its bytes in memory:
# "STATUS_NAME|message".
CREATE = r"""
#include <dodo/dodo.h>
#include <stdio.h>

static char bytes[1 << 20];

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  dodo_closure* closure = NULL;
  char message[8192] = "";
  dodo_status status;
  if (argc > 2) {
    FILE* file = fopen(argv[1], "rb");
    if (!file) return 3;
    size_t size = fread(bytes, 1, sizeof bytes, file);
    fclose(file);
    status = dodo_closure_create_from_memory(bytes, size, NULL, &closure, message, sizeof message);
  } else {
    status = dodo_closure_create(argv[1], NULL, &closure, message, sizeof message);
  }
  printf("%s|%s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.fixture(scope="module")
def create(tmp_path_factory):
    program = compile_host(tmp_path_factory.mktemp("create"), "create", CREATE)

    def made(path: Path, memory: bool) -> tuple[str, str]:
        line = "\n".join(run_host(program, str(path), *(["memory"] if memory else []), timeout=120))
        name, _, message = line.partition("|")
        return name, message

    return made


def test_a_damaged_package_in_memory_is_called_damaged_bytes_not_a_file(tmp_path, create):
    """The first 3000 bytes of the default package (a host's size short of the package's) given as bytes:
    `model in memory (3000 bytes): not an ONNX model (truncated or damaged file?): a field's length runs
    past the end at byte 147`, a file where the host gave bytes. A file keeps its words."""
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(Path(default_model()).read_bytes()[:3000])
    name, message = create(cut, True)
    assert name == "DODO_ERROR_MODEL_FORMAT", (name, message)
    assert message.startswith("model in memory (3000 bytes): not an ONNX model (truncated or damaged bytes? give the "
                              "whole .onnx file's bytes and its size): a field's length runs past the end at byte "), message
    name, message = create(cut, False)
    assert message.endswith('cut.onnx": not an ONNX model (truncated or damaged file?): a field\'s length runs past the '
                            'end at byte 147'), message
    # ir_version alone: a package without its graph
    graphless = tmp_path / "graphless.onnx"
    graphless.write_bytes(b"\x08\x07")
    assert create(graphless, True) == ("DODO_ERROR_MODEL_FORMAT",
                                       "model in memory (2 bytes): not an ONNX model: the bytes hold no graph")
    assert create(graphless, False)[1].endswith('graphless.onnx": not an ONNX model: the file has no graph')


@pytest.mark.parametrize("data, encoding", [(b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"),
                                            (b"\xff\xfe\x00\x00", "UTF-16"), (b"\xef\xbb\xbf", "UTF-8")])
def test_a_byte_order_mark_alone_is_called_an_empty_text(tmp_path, create, data, encoding):
    """An empty text file saved as UTF-16 (Notepad's "Unicode": its mark alone) was `a text file, not an
    ONNX model package (it begins "\\xff\\xfe")`, read as bytes; saved as UTF-8 with a mark, `(it begins
    "...")` quoted an invisible U+FEFF, as if it began with nothing."""
    path = tmp_path / "M.json"
    path.write_bytes(data)
    assert create(path, False) == ("DODO_ERROR_MODEL_FORMAT",
                                   f'model file "{path}": an empty text file ({encoding}, its byte-order mark alone), '
                                   "not an ONNX model package: a package is the binary .onnx file dodo export writes")
    assert create(path, True) == ("DODO_ERROR_MODEL_FORMAT",
                                  f"model in memory ({len(data)} bytes): empty text ({encoding}, its byte-order mark "
                                  "alone), not an ONNX model package: give the bytes of the binary .onnx file dodo "
                                  "export writes")


def test_a_utf8_mark_before_text_is_not_quoted(tmp_path, create):
    """The mark before UTF-8 text is left out of the quoted start (it showed as nothing)."""
    path = tmp_path / "M.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    name, message = create(path, False)
    assert message.endswith('a text file, not an ONNX model package (it begins "{"a": 1}\\x0a"): a package is the '
                            "binary .onnx file dodo export writes"), message


# The bytes of a model in memory, 1 MiB (the package, then zero bytes), under an address-space limit
# at what the host has mapped (argv[1]: the package).
CAPPED_FROM_MEMORY = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
""" + CAP_ADDRESS_SPACE + r"""
static char package[1 << 20];

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  FILE* file = fopen(argv[1], "rb");
  if (!file) return 3;
  fread(package, 1, sizeof package, file);
  fclose(file);
  rlim_t bytes = 0;
  const int capped = cap_address_space(0, 1, &bytes);
  if (capped != 0) return capped;
  dodo_closure* closure = NULL;
  char message[8192] = "";
  const dodo_status status = dodo_closure_create_from_memory(package, sizeof package, NULL, &closure, message,
                                                             sizeof message);
  printf("%s %lu|%s\n", dodo_status_name(status), (unsigned long)(bytes / 1024), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


def test_a_package_in_memory_whose_copy_does_not_fit_says_so(tmp_path):
    """libdodo copies a package in memory before reading it (so that every check reads the bytes that load).
    Under an address-space limit at the host's size, that copy failed first: `out of memory (the
    address-space limit RLIMIT_AS (ulimit -v) is 7704 kB: raise it, e.g. ulimit -v unlimited)`, naming
    nothing that needed the memory, where a file's read says "not enough memory to read model file"."""
    program = compile_host(tmp_path, "capped_from_memory", CAPPED_FROM_MEMORY)
    head, _, message = "\n".join(run_host(program, default_model(), timeout=120,
                                          env={"DODO_ONNXRUNTIME_LIBRARY": ""})).partition("|")
    name, limit_kb = head.split()
    assert name == "DODO_ERROR_OUT_OF_MEMORY", (name, message)
    assert message == ("model in memory (1048576 bytes): not enough memory for libdodo's copy of them (made at the "
                       "start, so that every check reads the bytes that load): the address-space limit RLIMIT_AS "
                       f"(ulimit -v) is {limit_kb} kB: raise it, e.g. ulimit -v unlimited"), message


# A Box3D-only closure of chunk_size argv[1] and threads argv[2] under an address-space limit of what the
# host has mapped + 16 MB.
CAPPED_WORKSPACE = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
""" + CAP_ADDRESS_SPACE + r"""
int main(int argc, char** argv) {
  if (argc < 3) return 2;
  dodo_options options;
  dodo_options_init(&options);
  options.chunk_size = atoi(argv[1]);
  options.threads = atoi(argv[2]);
  rlim_t bytes = 0;
  const int capped = cap_address_space(16L << 20, 1, &bytes);
  if (capped != 0) return capped;
  dodo_closure* closure = NULL;
  char message[4096] = "";
  const dodo_status status = dodo_closure_create(DODO_BOX3D_ONLY, &options, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("threads", [0, 1])
def test_one_workspace_that_does_not_fit_is_singular_and_not_told_to_lower_threads(tmp_path, threads):
    """A workspace of 2^20 cells under a limit 16 MB above the host: `out of memory making the closure's 1
    workspaces of 1048576 cells (...): lower chunk_size or threads`, though no thread but the caller's was
    asked for."""
    program = compile_host(tmp_path, "capped_workspace", CAPPED_WORKSPACE)
    name, _, message = "\n".join(run_host(program, str(1 << 20), str(threads), timeout=120)).partition("|")
    assert name == "DODO_ERROR_OUT_OF_MEMORY", (name, message)
    assert message.startswith("out of memory making the closure's 1 workspace of 1048576 cells (the address-space "
                              "limit RLIMIT_AS (ulimit -v) is "), message
    assert message.endswith("kB: raise it, e.g. ulimit -v unlimited): lower chunk_size"), message


# A C++ host whose operator new refuses its argv[2]-th allocation (0: the first) from the start of
# dodo_closure_create_from_memory of the package at argv[1], once: "STATUS_NAME|message".
REFUSED_ALLOCATION = r"""
#include <dodo/dodo.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>

static std::atomic<long> countdown{-1};
static bool refuse() {
  const long left = countdown.load();
  if (left < 0) return false;
  countdown = left - 1;
  return left == 0;
}
void* operator new(std::size_t n) {
  void* p = refuse() ? nullptr : std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return refuse() ? nullptr : std::malloc(n ? n : 1); }
void* operator new[](std::size_t n, const std::nothrow_t& tag) noexcept { return operator new(n, tag); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

static char package[1 << 20];

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  std::FILE* file = std::fopen(argv[1], "rb");
  if (!file) return 3;
  const std::size_t size = std::fread(package, 1, sizeof package, file);
  std::fclose(file);
  dodo_closure* closure = nullptr;
  char message[8192] = "";
  countdown = std::atol(argv[2]);
  const dodo_status status = dodo_closure_create_from_memory(package, size, nullptr, &closure, message, sizeof message);
  countdown = -1;
  std::printf("%s|%s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


def test_a_failed_allocation_looking_for_onnx_runtime_says_what_needed_it(tmp_path):
    """The first closure with a model loads ONNX Runtime; the list of the paths it tries is made first.
    An allocation failing there (an address-space limit at the host's size, once the package's read fits
    the heap's slack: test_probe_c_round43's host with a package of 58,337 bytes) was `out of memory (the
    address-space limit RLIMIT_AS (ulimit -v) is 6680 kB: ...)`, naming nothing. Each refusal of the
    first allocations, up to the first inside ONNX Runtime's own start-up (its static initialisers, which
    end the host: ONNX Runtime's), gives a status; those of the library's load say so."""
    program = compile_host(tmp_path, "refused_allocation", REFUSED_ALLOCATION, "c++")
    messages = []
    for n in range(200):
        result = subprocess.run([str(program), default_model(), str(n)], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "DODO_ONNXRUNTIME_LIBRARY": ""})
        if result.returncode != 0:  # inside ONNX Runtime's start-up: not libdodo's to catch
            break
        name, _, message = result.stdout.strip().partition("|")
        if name != "DODO_ERROR_OUT_OF_MEMORY":
            break
        messages.append(message)
    loading = [m for m in messages if m.startswith("not enough memory to look for and load the ONNX Runtime library (")]
    assert loading, messages
    assert all(m.endswith("is used up)") or "address-space limit" in m for m in loading), loading


# One cell whose strides reach beyond the address space.
SINGULAR = r"""
#include <dodo/dodo.h>
#include <stdint.h>
#include <stdio.h>

int main(void) {
  dodo_closure* closure = NULL;
  char message[1024] = "";
  if (dodo_closure_create(DODO_BOX3D_ONLY, NULL, &closure, message, sizeof message) != DODO_OK) return 1;
  static double F[24], out[24];
  const ptrdiff_t strides[3] = {24, PTRDIFF_MIN, 1};
  dodo_apply(closure, 1, F, NULL, NULL, NULL, out, strides, NULL);
  dodo_last_error(closure, message, sizeof message);
  printf("%s\n", message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


def test_one_cell_is_singular(tmp_path):
    """`F_pred with 1 cells and these strides would reach beyond the address space ...`."""
    program = compile_host(tmp_path, "singular", SINGULAR)
    assert run_host(program, timeout=120) == [
        "F_pred with 1 cell and these strides would reach beyond the address space (n_cells too large or a stride too "
        "large)"]


def test_the_mpi_example_names_an_empty_package(tmp_path):
    """examples/c/mpi_closure.c given an empty file: `cannot read the model package "empty.onnx" (missing,
    unreadable or not a regular file)`, none of which it was (the Fortran example said "empty")."""
    from test_mpi_examples import build, launch

    program = build(tmp_path, "c")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    try:
        result = launch(program, empty)
    except subprocess.TimeoutExpired:
        pytest.fail("the MPI example hung on an empty package")
    assert result.returncode != 0
    assert (f'cannot read the model package "{empty}" (missing, empty, unreadable or not a regular file)'
            in result.stderr), result.stdout + result.stderr


@pytest.mark.parametrize("example", ["grid", "mpi", "fortran"])
def test_the_c_examples_print_a_long_message_whole(tmp_path, example):
    """examples/c/grid_closure.c and mpi_closure.c read the error into `char message[512]` (the Fortran
    grid example into an errmsg of 512 characters): a message
    longer (the list of ONNX Runtime libraries tried, here one path of 700 characters) lost its end,
    the reason ("cannot open shared object file: No such file or directory"). They now read the
    thread's last error whole, sized from its returned length."""
    library = "/nonexistent/" + "d" * 700 + "/libonnxruntime.so"
    if example == "fortran":
        from capi_host import FORTRAN_MODULE
        from test_native_programs import ROOT, pkg_config, run

        program = tmp_path / "grid_closure_f"
        run(["gfortran", "-std=f2018", "-Wall", "-J", str(tmp_path), str(FORTRAN_MODULE),
             str(ROOT / "examples/fortran/grid_closure.f90"), *pkg_config("--libs"), "-o", str(program)])
        result = subprocess.run([str(program), default_model()], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "DODO_ONNXRUNTIME_LIBRARY": library})
    elif example == "grid":
        from test_native_programs import ROOT, pkg_config, run

        program = tmp_path / "grid_closure"
        run(["gcc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", str(ROOT / "examples/c/grid_closure.c"),
             *pkg_config("--cflags", "--libs"), "-lm", "-o", str(program)])
        result = subprocess.run([str(program), default_model()], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "DODO_ONNXRUNTIME_LIBRARY": library})
    else:
        from mpi_helpers import mpi_environment, mpirun
        from test_mpi_examples import build

        program = build(tmp_path, "c")
        command = mpirun(1)
        command[command.index("-n") + 2:command.index("-n") + 2] = ["-x", "DODO_ONNXRUNTIME_LIBRARY=" + library]
        result = subprocess.run(command + [str(program), default_model()], capture_output=True, text=True,
                                timeout=120, env=mpi_environment())
    assert result.returncode != 0
    # the path itself is shortened in the message; the reason after it is what was lost
    assert (f"libonnxruntime.so (path of {len(library)} bytes, shortened): cannot open shared object file: No such file "
            "or directory\n") in result.stderr, result.stderr


@pytest.mark.parametrize("content, words", [
    (None, "(truncated or damaged file?)"),  # a cut copy of the default package
    (b"\x08\x07", "the file has no graph"),
])
def test_a_damaged_file_with_a_name_that_is_not_utf8_keeps_the_files_words(tmp_path, content, words):
    """Python reads a model file whose name is not UTF-8 itself and hands the runtime its bytes; since
    this round the runtime's words for refused bytes are a buffer's ("truncated or damaged bytes? give
    the whole .onnx file's bytes and its size"), which that file then got (the round's report, the
    lead's fix): they are a file's again."""
    import os

    import dodo

    directory = os.fsencode(str(tmp_path))
    path = os.path.join(directory, b"caf\xe9.onnx")
    data = Path(dodo.models.default_model_path()).read_bytes()[:3000] if content is None else content
    with open(path, "wb") as handle:
        handle.write(data)
    with pytest.raises((RuntimeError, ValueError)) as refused:
        dodo.Closure(os.fsdecode(path), threads=1)
    text = str(refused.value)
    assert "model file" in text and words in text and "damaged bytes" not in text and "the bytes" not in text, text
