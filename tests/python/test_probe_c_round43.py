"""Outside probe of the C, C++ and Fortran interfaces, round forty-three (docs/reliability_cpp.md,
"Round forty-three"), as the developer of a transport code: ONNX Runtime's library under an
address-space limit (`ulimit -v`), and two copies of the runtime in one process (a host linking
libdodo that also loads a second copy: a plugin's, Python's dodo._core)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from capi_host import CAP_ADDRESS_SPACE, compile_host, default_model, run_host
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API

OUT_OF_MEMORY = "DODO_ERROR_OUT_OF_MEMORY"


# --- ONNX Runtime's library that cannot be mapped for want of memory ------------------------------

# Caps its address space (soft and hard, as `ulimit -v`) at what it has mapped plus argv[2] bytes,
# then makes a closure of argv[1] (the evaluator from DODO_NETWORK_EVALUATOR), with argv[3] as the
# onnxruntime_library option when given: "STATUS_NAME LIMIT_KB|message".
CAPPED_CREATE = r"""
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
  if (argc > 3) options.onnxruntime_library = argv[3];
  rlim_t bytes = 0;
  const int capped = cap_address_space(atol(argv[2]), atol(argv[2]) >= 0, &bytes);
  if (capped != 0) return capped;
  dodo_closure* closure = NULL;
  char message[8192] = "";
  const dodo_status status = dodo_closure_create(argv[1], &options, &closure, message, sizeof message);
  printf("%s %lu|%s\n", dodo_status_name(status), (unsigned long)(bytes / 1024), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


def _capped_create(tmp_path, extra_bytes: int, *library: str) -> tuple[str, int, str]:
    program = compile_host(tmp_path, "capped_create", CAPPED_CREATE)
    output = "\n".join(run_host(program, default_model(), str(extra_bytes), *library, timeout=120,
                                env={"DODO_NETWORK_EVALUATOR": "onnxruntime", "DODO_ONNXRUNTIME_LIBRARY": ""}))
    head, _, message = output.partition("|")
    name, limit_kb = head.split()
    return name, int(limit_kb), message


def _onnxruntime_library() -> str:
    from dodo._closure import runtime_paths

    path = runtime_paths()["onnxruntime_library"]
    if not path or not os.path.isfile(path):
        pytest.skip("no ONNX Runtime library found")
    return path


@pytest.mark.parametrize("how", ["searched", "option"])
def test_an_onnxruntime_library_that_cannot_be_mapped_for_want_of_memory_says_so(tmp_path, how):
    """A closure with the onnxruntime evaluator under an address-space limit that leaves 4 MiB free
    (`ulimit -v` on a rank, a batch system's memory limit): the library is there, but the loader
    cannot map it. Before: DODO_ERROR_ONNXRUNTIME_UNAVAILABLE, "cannot load the ONNX Runtime library
    (pip install onnxruntime, or set DODO_ONNXRUNTIME_LIBRARY to the path of libonnxruntime.so)",
    or with the option (Python passes it) "(the onnxruntime_library option names it: give the path
    of a libonnxruntime.so, ...)": advice on a path that was right. Now: out of memory, naming the
    limit, with dlopen's words for each path tried."""
    library = (_onnxruntime_library(),) if how == "option" else ()
    name, limit_kb, message = _capped_create(tmp_path, 4 << 20, *library)
    assert name == OUT_OF_MEMORY, (name, message)
    assert message.startswith("cannot load the ONNX Runtime library: not enough memory to map it into the process "
                              f"(the address-space limit RLIMIT_AS (ulimit -v) is {limit_kb} kB: raise it, e.g. "
                              "ulimit -v unlimited); tried:\n"), message
    assert "failed to map segment from shared object" in message, message
    assert "pip install" not in message and "option names it" not in message, message


def test_out_of_memory_at_the_start_of_a_create_names_the_address_space_limit(tmp_path):
    """No room left at all (the limit at what the host has mapped): whichever allocation fails first,
    the message names the limit. Before: the model file's read failed first here, "out of memory"
    alone; now 'not enough memory to read model file "..." (60518 bytes): the address-space limit ...'."""
    name, limit_kb, message = _capped_create(tmp_path, 0)
    assert name == OUT_OF_MEMORY, (name, message)
    assert f"the address-space limit RLIMIT_AS (ulimit -v) is {limit_kb} kB: raise it" in message, message
    assert not message.startswith("out of memory ("), message  # what needed the memory is said where known


def test_a_missing_onnxruntime_library_keeps_its_path_advice(tmp_path):
    """Guard: a library that is not there (no limit) is still ONNXRUNTIME_UNAVAILABLE with the
    advice on the option (passes before and after)."""
    name, _, message = _capped_create(tmp_path, -1, str(tmp_path / "no" / "libonnxruntime.so.1"))
    assert name == "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE", (name, message)
    assert "the onnxruntime_library option names it" in message and "not enough memory" not in message, message


def test_an_onnxruntime_library_on_a_noexec_file_system_is_not_called_out_of_memory(tmp_path):
    """dlopen says "failed to map segment from shared object" for a library on a file system mounted
    noexec too (a cluster's /tmp or home, often): that is no want of memory, and is said so. Before:
    dlopen's words alone. Needs a private mount namespace (unshare -m, as root): skipped without."""
    import shutil

    program = compile_host(tmp_path, "capped_create", CAPPED_CREATE)
    mount = tmp_path / "noexec"
    mount.mkdir()
    copied = mount / os.path.basename(_onnxruntime_library())
    script = (f"mount -t tmpfs -o noexec tmpfs {mount} || exit 77; cp {_onnxruntime_library()} {copied} && "
              f"exec {program} {default_model()} -1 {copied}")
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DODO_NETWORK_EVALUATOR": "onnxruntime", "DODO_ONNXRUNTIME_LIBRARY": ""})
    if done.returncode != 0 and ("Operation not permitted" in done.stderr or done.returncode == 77):
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-2000:]
    head, _, message = done.stdout.partition("|")
    assert head.split()[0] == "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE", done.stdout
    assert message.rstrip().endswith(": failed to map segment from shared object (its file system is mounted noexec, "
                                      "where no library can be mapped: put it on another)"), message
    assert "not enough memory" not in message, message


PYTHON_UNDER_A_LIMIT = """
import resource, sys
import dodo
pages = int(open("/proc/self/statm").read().split()[0])
limit = pages * resource.getpagesize() + (4 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    dodo.Closure(None, evaluator="onnxruntime")
    print("made")
except Exception as error:
    print(type(error).__name__, limit // 1024, error)
"""


def test_python_under_an_address_space_limit_is_told_it_ran_out_of_memory():
    """The same from Python (dodo._core, which passes the library it found as the option): before,
    RuntimeError "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE: cannot load the ONNX Runtime library (the
    onnxruntime_library option names it: ...)"; now MemoryError naming the limit."""
    _onnxruntime_library()
    done = subprocess.run([sys.executable, "-c", PYTHON_UNDER_A_LIMIT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DODO_ONNXRUNTIME_LIBRARY": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    kind, limit_kb, message = done.stdout.strip().split(" ", 2)
    assert kind == "MemoryError", done.stdout
    assert "cannot load the ONNX Runtime library: not enough memory to map it" in message, message
    assert f"RLIMIT_AS (ulimit -v) is {limit_kb} kB" in message and "option names it" not in message, message


# --- two copies of the runtime in one process --------------------------------------------------------

# Links libdodo, copies the file it was loaded from to argv[2] and dlopens the copy RTLD_LOCAL (a
# plugin's own copy, or a second libdodo a framework loads), then: both copies' addresses of the
# shared session lock; one Box3D-only closure made and applied through each copy; 8 threads at once
# (barrier), alternating copies, each making a closure of argv[1] (its evaluator from the
# environment) and applying the same cells. Every result must be the first's bits.
TWO_COPIES = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dodo/dodo.h>

typedef dodo_status (*create_fn)(const char*, const dodo_options*, dodo_closure**, char*, size_t);
typedef dodo_status (*apply_fn)(dodo_closure*, size_t, const double*, const ptrdiff_t*, const double*,
                                const ptrdiff_t*, double*, const ptrdiff_t*, uint32_t*);
typedef void (*destroy_fn)(dodo_closure*);
typedef void (*init_fn)(dodo_options*, size_t);
typedef size_t (*last_error_fn)(const dodo_closure*, char*, size_t);
struct copy {
  create_fn create;
  apply_fn apply;
  destroy_fn destroy;
  init_fn init;
  last_error_fn last_error;
};
static struct copy copies[2];
enum { THREADS = 8, CELLS = 97 };
static const char* model;
static pthread_barrier_t barrier;
static double F[CELLS][6][4];
static double G[THREADS + 2][CELLS][6][4];
static int status_of[THREADS + 2];
static char message_of[THREADS + 2][1024];

/* One closure of `path` made and applied through copy `c` into G[slot]. */
static void make_and_apply(struct copy* c, const char* path, int threads, int slot) {
  dodo_options options;
  c->init(&options, sizeof options);
  options.threads = threads;
  dodo_closure* closure = NULL;
  status_of[slot] = c->create(path, &options, &closure, message_of[slot], sizeof message_of[slot]);
  if (status_of[slot] != DODO_OK) return;
  status_of[slot] = c->apply(closure, CELLS, &F[0][0][0], NULL, NULL, NULL, &G[slot][0][0][0], NULL, NULL);
  if (status_of[slot] != DODO_OK) c->last_error(closure, message_of[slot], sizeof message_of[slot]);
  c->destroy(closure);
}

static void* work(void* argument) {
  const int t = (int)(size_t)argument;
  pthread_barrier_wait(&barrier);
  make_and_apply(&copies[t % 2], model, t % 3, t);
  return NULL;
}

static int copy_file(const char* from, const char* to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  if (!in || !out) return 1;
  char buffer[1 << 16];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, in)) > 0)
    if (fwrite(buffer, 1, n, out) != n) return 1;
  fclose(in);
  return fclose(out) != 0;
}

static void report(const char* what, int first, int count) {
  int bad = 0;
  for (int t = first; t < first + count; ++t) {
    if (status_of[t] != DODO_OK) {
      printf("%s %d status %d: %s\n", what, t, status_of[t], message_of[t]);
      ++bad;
    } else if (memcmp(G[t], G[first], sizeof G[first]) != 0) {
      printf("%s %d differs\n", what, t);
      ++bad;
    }
  }
  printf("%s bad %d\n", what, bad);
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  model = argv[1];
  Dl_info linked;
  if (!dladdr((void*)dodo_apply, &linked) || copy_file(linked.dli_fname, argv[2])) return 3;
  copies[0] = (struct copy){dodo_closure_create, dodo_apply, dodo_closure_destroy, dodo_options_init_sized,
                            dodo_last_error};
  void* other = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  if (!other) {
    printf("dlopen %s\n", dlerror());
    return 4;
  }
  copies[1].create = (create_fn)dlsym(other, "dodo_closure_create");
  copies[1].apply = (apply_fn)dlsym(other, "dodo_apply");
  copies[1].destroy = (destroy_fn)dlsym(other, "dodo_closure_destroy");
  copies[1].init = (init_fn)dlsym(other, "dodo_options_init_sized");
  copies[1].last_error = (last_error_fn)dlsym(other, "dodo_last_error");
  if (!copies[1].create || (void*)copies[1].create == (void*)dodo_closure_create) return 5;
  void* mine = dlsym(RTLD_DEFAULT, "dodo_onnxruntime_session_creation_lock_v1");
  void* theirs = dlsym(other, "dodo_onnxruntime_session_creation_lock_v1");
  printf("lock %s\n", mine && mine == theirs ? "shared" : mine || theirs ? "two" : "absent");
  for (int c = 0; c < CELLS; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.01 * c;
      F[c][a][1] = 0.05 * ((c + a) % 5) - 0.1;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  make_and_apply(&copies[0], DODO_BOX3D_ONLY, 0, THREADS);
  make_and_apply(&copies[1], DODO_BOX3D_ONLY, 2, THREADS + 1);
  report("box3d", THREADS, 2);
  pthread_barrier_init(&barrier, NULL, THREADS);
  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; ++t) pthread_create(&threads[t], NULL, work, (void*)(size_t)t);
  for (int t = 0; t < THREADS; ++t) pthread_join(threads[t], NULL);
  report("threads", 0, THREADS);
  return 0;
}
"""


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_a_second_copy_of_the_runtime_applies_its_own_handles_and_shares_the_session_lock(tmp_path, evaluator):
    """A host linking libdodo with a second copy dlopen'd RTLD_LOCAL. Before: every dodo_apply through
    the second copy was refused, status 1 with no message (its dodo_apply called dodo_apply_diagnostics
    through the PLT, which bound to the first copy, which knew no handle of the second); and each copy
    had its own lock making ONNX Runtime sessions one at a time, so the two copies made sessions at
    once (ThreadSanitizer: the race of rounds thirty-eight and forty-one between the copies). Now each
    copy's calls stay in it and both copies find one lock (a GNU unique symbol): every thread's
    result the first's bits."""
    program = compile_host(tmp_path, "two_copies", TWO_COPIES)
    # The copy has no onnxruntime wheel beside it: both copies are told where the library is.
    lines = run_host(program, default_model(), str(tmp_path / "libdodo_copy.so"), timeout=300,
                     env={"DODO_NETWORK_EVALUATOR": evaluator, "DODO_ONNXRUNTIME_LIBRARY": _onnxruntime_library()})
    assert lines[0] == "lock shared", lines
    assert "box3d bad 0" in lines and "threads bad 0" in lines, lines


PYTHON_AND_LIBDODO = """
import ctypes, os, sys
import dodo._core
from dodo._closure import runtime_paths
core = ctypes.CDLL(dodo._core.__file__)
libdodo = ctypes.CDLL(os.path.join(runtime_paths()["lib_dir"], "libdodo.so"))
name = "dodo_onnxruntime_session_creation_lock_v1"
print(ctypes.addressof(ctypes.c_char.in_dll(core, name)) == ctypes.addressof(ctypes.c_char.in_dll(libdodo, name)))
"""


def test_python_and_libdodo_in_one_process_share_the_session_lock():
    """A Python process that also loads libdodo (ctypes, or a C extension linked to it; likewise a C++
    code embedding Python): dodo._core's copy and libdodo's find the same lock (before: the symbol was
    in neither, each copy's lock its own)."""
    done = subprocess.run([sys.executable, "-c", PYTHON_AND_LIBDODO], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", (done.stdout, done.stderr[-2000:])


RTLD_GLOBAL_PYTHON = """
import ctypes, os, sys
sys.setdlopenflags(os.RTLD_GLOBAL | os.RTLD_NOW)
import dodo._core
from dodo._closure import runtime_paths
lib = ctypes.CDLL(os.path.join(runtime_paths()["lib_dir"], "libdodo.so"))
handle = ctypes.c_void_p()
message = ctypes.create_string_buffer(1024)
created = lib.dodo_closure_create(b"box3d", None, ctypes.byref(handle), message, 1024)
F = (ctypes.c_double * 24)(*[(1 + 0.1 * (i // 4)) if i % 4 == 0 else (0.3 if i % 4 == 3 else 0.0) for i in range(24)])
G = (ctypes.c_double * 24)()
applied = lib.dodo_apply(handle, ctypes.c_size_t(1), F, None, None, None, G, None, None)
lib.dodo_last_error(handle, message, 1024)
print(created, applied, G[0] > 0, repr(message.value.decode()))
"""


def test_libdodo_loaded_after_dodo_core_imported_with_rtld_global_applies_its_handles():
    """A Python code that imports dodo with RTLD_GLOBAL (sys.setdlopenflags, as MPI codes do) and
    then loads libdodo (ctypes, a C extension): before, libdodo's dodo_apply called
    dodo_apply_diagnostics of dodo._core, which knew none of libdodo's handles: "0 1 False ''" (refused,
    no message). Now "0 0 True ''"."""
    done = subprocess.run([sys.executable, "-c", RTLD_GLOBAL_PYTHON], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0 0 True ''", done.stdout


STAYS_LOADED = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static int mappings(const char* name) {
  FILE* maps = fopen("/proc/self/maps", "r");
  char line[4096];
  int n = 0;
  while (maps && fgets(line, sizeof line, maps)) n += strstr(line, name) != NULL;
  if (maps) fclose(maps);
  return n;
}

int main(int argc, char** argv) {
  (void)argc;
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!library) return 2;
  const int loaded = mappings("libdodo");
  if (dlclose(library) != 0) return 3;
  printf("%d %d\n", loaded > 0, mappings("libdodo") == loaded);
  return 0;
}
"""


def test_libdodo_stays_loaded_after_dlclose(tmp_path):
    """The shared lock is a GNU unique symbol, and glibc never unloads an object that defines one:
    libdodo stays mapped after dlclose (docs/runtime.md, "dlclose and a second dlopen"; before this
    round it was unloaded once no thread that had called it lived). Holds the documented behaviour."""
    import shutil

    from dodo._closure import runtime_paths

    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    source = tmp_path / "stays.c"
    source.write_text(STAYS_LOADED)
    program = tmp_path / "stays"
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(source), "-ldl", "-o", str(program)],
                   check=True, capture_output=True)
    library = os.path.join(runtime_paths()["lib_dir"], "libdodo.so")
    assert run_host(program, library, timeout=120) == ["1 1"]
