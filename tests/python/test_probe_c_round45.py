"""Outside probe of the C, C++ and Fortran interfaces, round forty-five (docs/reliability_cpp.md,
"Round forty-five"), as the developer of a transport code: a UTF-16 text file given as the model
package, text given as the bytes of a model in memory, and a host's own threads sharing one handle
under an address-space limit."""
from __future__ import annotations

import pytest

from capi_host import CAP_ADDRESS_SPACE, CROSSING_CELLS, compile_host, default_model, run_host
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API


# --- text given as the model: UTF-16, and bytes in memory ----------------------------------------

# Makes a closure of the file at argv[1], or with a second argument of its bytes in memory (the file's
# bytes followed by argv[2] zero bytes): "STATUS_NAME|message".
CREATE = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>

static char bytes[1 << 20];

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  dodo_closure* closure = NULL;
  char message[8192] = "";
  dodo_status status;
  if (argc > 2) {
    FILE* file = fopen(argv[1], "rb");
    if (!file) return 3;
    size_t size = fread(bytes, 1, sizeof bytes / 2, file);
    fclose(file);
    size += (size_t)atol(argv[2]);
    status = dodo_closure_create_from_memory(bytes, size, NULL, &closure, message, sizeof message);
  } else {
    status = dodo_closure_create(argv[1], NULL, &closure, message, sizeof message);
  }
  printf("%s|%s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""

JSON_TEXT = '{"dodo.format_version": "1", "n_species": 6}\n'


def _create(tmp_path, path, *memory: str) -> tuple[str, str]:
    program = compile_host(tmp_path, "create", CREATE)
    name, _, message = "\n".join(run_host(program, str(path), *memory, timeout=120)).partition("|")
    return name, message


@pytest.mark.parametrize("encoding, head", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                            ("utf-16-le", b""), ("utf-16-be", b"")])
def test_a_utf16_text_file_given_as_the_model_is_called_text_not_damaged(tmp_path, encoding, head):
    """A JSON file saved as UTF-16 (Notepad's "Unicode", PowerShell 5's `>`: a byte-order mark and a zero
    byte beside each ASCII character) given as the model was still `not an ONNX model (truncated or damaged
    file?): wire type 7 (not used by ONNX) at byte 0` after round forty-four, which called UTF-8 text text."""
    path = tmp_path / "M.json"
    path.write_bytes(head + (JSON_TEXT + ("é ü \U0001f600" if head else "")).encode(encoding))  # without a mark, ASCII
    name, message = _create(tmp_path, path)
    assert name == "DODO_ERROR_MODEL_FORMAT", (name, message)
    assert message == (f'model file "{path}": a text file (UTF-16), not an ONNX model package (it begins '
                       '"{"dodo.format_version": "1", "n_species""...): a package is the binary .onnx file dodo '
                       'export writes'), message


def test_a_utf16_text_of_characters_past_latin1_is_read_as_utf16(tmp_path):
    """A UTF-16 text of CJK characters alone has no zero byte: "模型" (21 6A 8B 57) read as bytes of text,
    the file was "a text file ... (it begins "\xff\xfe!j\x8bW...")"."""
    path = tmp_path / "M.txt"
    path.write_bytes(b"\xff\xfe" + "模型文件".encode("utf-16-le"))
    name, message = _create(tmp_path, path)
    assert name == "DODO_ERROR_MODEL_FORMAT", (name, message)
    assert message.endswith('a text file (UTF-16), not an ONNX model package (it begins "模型文件"): a package is '
                            'the binary .onnx file dodo export writes'), message


@pytest.mark.parametrize("data", [b"\xff\xfe\x08\x00\x01\x00\x12\x00",  # a mark, then a control character
                                  b"\xff\xfe\x00\xd8a\x00b\x00",  # a high surrogate alone
                                  b"\x07\x00\x01\x00\x02\x00",  # a zero after each byte, not text
                                  b"a\x00b\x00\xe9\x01"])  # no mark, a character past ASCII
def test_bytes_that_are_not_utf16_text_are_still_called_damaged(tmp_path, data):
    """Guard: the UTF-16 reading takes text alone (without a mark, ASCII alone)."""
    path = tmp_path / "M.onnx"
    path.write_bytes(data)
    name, message = _create(tmp_path, path)
    assert name == "DODO_ERROR_MODEL_FORMAT" and "truncated or damaged" in message, (name, message)
    assert "text" not in message, message


def test_text_in_memory_is_not_called_a_file(tmp_path):
    """Bytes in memory that are text were `model in memory (N bytes): a text file, not an ONNX model
    package ...: a package is the binary .onnx file dodo export writes`: no file was given."""
    path = tmp_path / "M.json"
    path.write_text(JSON_TEXT)
    name, message = _create(tmp_path, path, "0")
    assert name == "DODO_ERROR_MODEL_FORMAT", (name, message)
    assert message == (f'model in memory ({len(JSON_TEXT)} bytes): text, not an ONNX model package (it begins '
                       '"{"dodo.format_version": "1", "n_species""...): give the bytes of the binary .onnx file '
                       'dodo export writes'), message
    path.write_bytes(JSON_TEXT.encode("utf-16"))
    name, message = _create(tmp_path, path, "0")
    assert message.startswith(f"model in memory ({2 + 2 * len(JSON_TEXT)} bytes): text (UTF-16), not an ONNX"), message


@pytest.mark.parametrize("zeros", [0, 1, 4096 - 10])
def test_a_path_given_as_the_bytes_of_a_model_is_told_where_a_path_goes(tmp_path, zeros):
    """`dodo_closure_create_from_memory(path, strlen(path), ...)`, with its terminator (strlen + 1) or its
    char[4096] array (sizeof): the path's bytes were called a text file, and with a zero byte after them
    `not an ONNX model (truncated or damaged file?)`."""
    path = tmp_path / "path.txt"
    path.write_text("/scratch/run/qke_default.onnx")
    name, message = _create(tmp_path, path, str(zeros))
    assert name == "DODO_ERROR_MODEL_FORMAT", (name, message)
    assert message == (f'model in memory ({29 + zeros} bytes): text, not an ONNX model package (it begins '
                       '"/scratch/run/qke_default.onnx"): give the bytes of the binary .onnx file dodo export '
                       'writes (a path is given to dodo_closure_create, dodo::Closure(path) or Fortran\'s '
                       'dodo_create, not as the bytes)'), message


@pytest.mark.parametrize("name, head, words", [
    ("model.onnx.gz", b"\x1f\x8b\x08\0" + b"\0" * 100,
     "compressed with gzip, not an ONNX model package: unpack it first (gunzip) and give the bytes of the "
     ".onnx file it holds"),
    ("model.tar", b"\x08" + b"\0" * 256 + b"ustar\x0000" + b"\0" * 300,
     "a tar archive, not an ONNX model package: unpack it first (tar -xf) and give the bytes of the .onnx file "
     "it holds"),
])
def test_an_archive_in_memory_is_told_to_give_bytes(tmp_path, name, head, words):
    """The bytes of a model.onnx.gz were told to "give the .onnx file it holds"; a buffer takes its bytes.
    The same file on disk keeps its words."""
    path = tmp_path / name
    path.write_bytes(head)
    status, message = _create(tmp_path, path, "0")
    assert status == "DODO_ERROR_MODEL_FORMAT" and message == f"model in memory ({len(head)} bytes): {words}", message
    status, message = _create(tmp_path, path)
    assert message.endswith(words.replace("the bytes of ", "")), message


# --- a host's own threads sharing one handle under an address-space limit ------------------------

# argv: model, host threads, closure threads, chunk_size, cells, rounds, extra bytes. Each host
# thread makes one call (its first: its scratch, its libdodo state) in turn, with the closure's
# workspaces as they were made; then RLIMIT_AS is set at the mapped size + extra, and the threads,
# started at one barrier, apply the same cells `rounds` times at once. "ok N oom N other N wrong N|
# message", wrong counting calls whose bits differ from the closure's before the limit.
SHARED = r"""
#define _POSIX_C_SOURCE 200809L
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
""" + CAP_ADDRESS_SPACE + CROSSING_CELLS + r"""
static dodo_closure* closure;
static size_t n_cells;
static int rounds;
static double (*F)[6][4], (*expected)[6][4];
static pthread_barrier_t start;
static pthread_mutex_t turn = PTHREAD_MUTEX_INITIALIZER;
struct result { int ok, oom, other, wrong, warmed; char message[1024]; double (*out)[6][4]; };

static void count(struct result* r, dodo_status status) {
  if (status == DODO_OK)
    memcmp(r->out, expected, n_cells * sizeof *expected) == 0 ? r->ok++ : r->wrong++;
  else
    status == DODO_ERROR_OUT_OF_MEMORY ? r->oom++ : r->other++;
  if (status != DODO_OK) dodo_last_error(closure, r->message, sizeof r->message);
}

static void* work(void* arg) {
  struct result* r = arg;
  pthread_mutex_lock(&turn);  /* one at a time: no workspace beyond the closure's is made */
  const dodo_status first = dodo_apply(closure, 1, &F[0][0][0], NULL, NULL, NULL, &r->out[0][0][0], NULL, NULL);
  r->warmed = first == DODO_OK ? 1 : -1;
  pthread_mutex_unlock(&turn);
  pthread_barrier_wait(&start);
  for (int i = 0; i < rounds; ++i)
    count(r, dodo_apply(closure, n_cells, &F[0][0][0], NULL, NULL, NULL, &r->out[0][0][0], NULL, NULL));
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 8) return 2;
  const int host_threads = atoi(argv[2]);
  dodo_options options;
  dodo_options_init(&options);
  options.threads = atoi(argv[3]);
  options.chunk_size = atoi(argv[4]);
  n_cells = (size_t)atol(argv[5]);
  rounds = atoi(argv[6]);
  char message[4096] = "";
  dodo_status status = dodo_closure_create(argv[1], &options, &closure, message, sizeof message);
  if (status != DODO_OK) { printf("create %s\n", message); return 4; }
  F = calloc(n_cells, sizeof *F);
  expected = calloc(n_cells, sizeof *expected);
  fill_crossing_cells(F, (int)n_cells, 1e-4);
  if (dodo_apply(closure, n_cells, &F[0][0][0], NULL, NULL, NULL, &expected[0][0][0], NULL, NULL) != DODO_OK) return 5;
  struct result results[16];
  pthread_t ids[16];
  memset(results, 0, sizeof results);
  pthread_barrier_init(&start, NULL, (unsigned)host_threads + 1);
  for (int t = 0; t < host_threads; ++t) {
    results[t].out = calloc(n_cells, sizeof *expected);
    if (pthread_create(&ids[t], NULL, work, &results[t]) != 0) return 6;
  }
  rlim_t bytes;
  const struct timespec pause = {0, 1000000};
  pthread_mutex_lock(&turn);  /* every thread past its first call */
  for (int done = 0; !done;) {
    pthread_mutex_unlock(&turn);
    nanosleep(&pause, NULL);
    pthread_mutex_lock(&turn);
    done = 1;
    for (int t = 0; t < host_threads; ++t) done &= results[t].warmed != 0;
  }
  pthread_mutex_unlock(&turn);
  if (cap_address_space(atol(argv[7]), 1, &bytes) != 0) return 3;
  pthread_barrier_wait(&start);
  struct result all = {0, 0, 0, 0, 0, "", NULL};
  for (int t = 0; t < host_threads; ++t) {
    pthread_join(ids[t], NULL);
    if (results[t].warmed != 1) return 7;
    all.ok += results[t].ok, all.oom += results[t].oom, all.other += results[t].other, all.wrong += results[t].wrong;
    if (results[t].message[0]) strcpy(all.message, results[t].message);
  }
  printf("ok %d oom %d other %d wrong %d|%s\n", all.ok, all.oom, all.other, all.wrong, all.message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_host_threads_beyond_the_workspaces_wait_for_one_under_a_memory_limit(tmp_path, evaluator):
    """4 host threads sharing a closure of `threads` 1 (one workspace) under RLIMIT_AS at the process's
    size + 4 MB: each call beyond the one workspace tried to make another (12 MB at chunk_size 65536),
    and its failure was the call's DODO_ERROR_OUT_OF_MEMORY, "out of memory (the address-space limit
    RLIMIT_AS (ulimit -v) is N kB: raise it, ...)", naming nothing that needed memory: 15 of 20 calls
    refused here, though the closure had a workspace to compute them with. Such a call now waits for the
    workspace; every call gives the closure's bits."""
    program = compile_host(tmp_path, "shared", SHARED)
    lines = run_host(program, default_model(), "4", "1", "65536", "20000", "5", str(4 << 20), timeout=300,
                     env={"DODO_NETWORK_EVALUATOR": evaluator})
    assert lines == ["ok 20 oom 0 other 0 wrong 0|"], lines


# A host thread's first libdodo call with no memory left: the thread is started before RLIMIT_AS is set
# at the process's mapped size, takes what the heap has left (malloc until it fails), then calls
# dodo_apply with F_init NULL: "first STATUS|message".
FIRST_CALL = r"""
#define _POSIX_C_SOURCE 200809L
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
""" + CAP_ADDRESS_SPACE + CROSSING_CELLS + r"""
static dodo_closure* closure;
static pthread_barrier_t start;
static double F[8][6][4], out[8][6][4];

static void* work(void* arg) {
  (void)arg;
  pthread_barrier_wait(&start);
  void* taken = NULL;  /* a list of every block the heap still gives */
  for (size_t size = 1 << 20; size >= sizeof(void*); size /= 2)
    for (void** block; (block = malloc(size)) != NULL;) {
      *block = taken;
      taken = block;
    }
  char message[512] = "";
  const dodo_status first = dodo_apply(closure, 8, NULL, NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
  dodo_last_error(NULL, message, sizeof message);
  while (taken) {
    void* next = *(void**)taken;
    free(taken);
    taken = next;
  }
  printf("first %s|%s\n", dodo_status_name(first), message);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  char message[4096] = "";
  if (dodo_closure_create(argv[1], NULL, &closure, message, sizeof message) != DODO_OK) return 4;
  fill_crossing_cells(F, 8, 1e-3);
  if (dodo_apply(closure, 8, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) != DODO_OK) return 5;
  pthread_t id;
  pthread_barrier_init(&start, NULL, 2);
  if (pthread_create(&id, NULL, work, NULL) != 0) return 6;
  rlim_t bytes;
  if (cap_address_space(0, 1, &bytes) != 0) return 3;
  pthread_barrier_wait(&start);
  pthread_join(id, NULL);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_a_host_threads_first_call_with_no_memory_left_returns_a_status(tmp_path, model):
    """Every call records its message (empty on success) in the calling thread's own text, a thread_local
    std::string: its first use in a thread registers its destructor with glibc, which aborts the process
    where that cannot allocate: "Fatal glibc error: failed to register TLS destructor: out of memory",
    SIGABRT, from a host thread's first dodo_apply under an address-space limit (4 host threads sharing a
    closure at the process's size + 1 MB: 3 runs of 3). Now the call returns its status and its message
    (the refusal's own, or "out of memory" where not even its text could be made)."""
    program = compile_host(tmp_path, "first_call", FIRST_CALL)
    lines = run_host(program, "box3d" if model == "box3d" else default_model(), timeout=300)
    assert lines in (["first DODO_ERROR_INVALID_ARGUMENT|F_init is NULL"],
                     ["first DODO_ERROR_OUT_OF_MEMORY|out of memory"]), lines


# A closure of threads 1 and chunk_size 65536 that applied 20,000 cells, then RLIMIT_AS at the mapped
# size + 4 MB and fork(): the child applies 2,000 cells. "child STATUS|message".
FORK_CHILD = r"""
#define _POSIX_C_SOURCE 200809L
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
""" + CAP_ADDRESS_SPACE + CROSSING_CELLS + r"""
int main(int argc, char** argv) {
  if (argc < 2) return 2;
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 1;
  options.chunk_size = 65536;
  dodo_closure* closure = NULL;
  char message[1024] = "";
  if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) return 4;
  double (*F)[6][4] = calloc(20000, sizeof *F), (*out)[6][4] = calloc(20000, sizeof *out);
  fill_crossing_cells(F, 20000, 1e-4);
  if (dodo_apply(closure, 20000, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) != DODO_OK) return 5;
  rlim_t bytes;
  if (cap_address_space(4 << 20, 1, &bytes) != 0) return 3;
  fflush(stdout);
  const pid_t child = fork();
  if (child == 0) {
    const dodo_status status = dodo_apply(closure, 2000, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
    dodo_last_error(closure, message, sizeof message);
    printf("child %s|%s\n", dodo_status_name(status), message);
    fflush(stdout);
    _exit(0);
  }
  int wait_status = 0;
  if (child < 0 || waitpid(child, &wait_status, 0) != child || !WIFEXITED(wait_status)) return 6;
  return 0;
}
"""


def test_a_fork_child_without_room_for_its_first_workspace_is_told_what_needed_memory(tmp_path):
    """A child of fork() makes its own workspaces (its parent's are not usable there); where the first one
    does not fit, the call said `DODO_ERROR_OUT_OF_MEMORY`, "out of memory (the address-space limit
    RLIMIT_AS (ulimit -v) is N kB: raise it, ...)", naming nothing that needed the memory."""
    program = compile_host(tmp_path, "fork_child", FORK_CHILD)
    lines = run_host(program, default_model(), timeout=300)
    assert len(lines) == 1 and lines[0].startswith(
        "child DODO_ERROR_OUT_OF_MEMORY|out of memory making this process's first workspace of 65536 cells (a child "
        "of fork() makes its own; its parent's are not usable there)"), lines
    assert lines[0].endswith(": lower chunk_size"), lines
