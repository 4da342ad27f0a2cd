"""Outside probe of the C, C++ and Fortran interfaces, round forty-one (docs/reliability_cpp.md,
"Round forty-one"), as the developer of a transport code. Earlier rounds' open items: two
threads' first closures with a model raced inside ONNX Runtime's session creation (a
ThreadSanitizer report in every run of 8 threads creating at once; round thirty-eight left it);
`dodo_version` said "0.1.0" of every build, with no way to ask which sources a libdodo was built
from."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from capi_host import ROOT, compile_fortran, compile_host, default_model, run_host
from native_build import REQUIRES_C_API
from ort_front import fake_onnxruntime, front_source

pytestmark = REQUIRES_C_API

# The module the Fortran hosts compile (a copy of an older one can be named to see the tests fail).
MODULE = Path(os.environ.get("DODO_PROBE_FORTRAN_MODULE", ROOT / "cpp/include/dodo/dodo.f90"))


# --- session creations at once ---------------------------------------------------------------------

# An ONNX Runtime in front of the real one whose session creations count how many run at once
# (each held open 30 ms, so that creations libdodo lets overlap do overlap).
COUNTING_ORT = front_source(r"""
#include <stdatomic.h>
#include <time.h>
static atomic_int inside, most, entered;
int probe_most_at_once(void) { return atomic_load(&most); }
int probe_entered(void) { return atomic_load(&entered); }
static void enter(void) {
  const int now = atomic_fetch_add(&inside, 1) + 1;
  atomic_fetch_add(&entered, 1);
  int seen = atomic_load(&most);
  while (now > seen && !atomic_compare_exchange_weak(&most, &seen, now)) {
  }
  struct timespec pause = {0, 30000000};
  nanosleep(&pause, NULL);
}
static OrtStatus* ORT_API_CALL create_from_array(const OrtEnv* env, const void* data, size_t size,
                                                 const OrtSessionOptions* options, OrtSession** out) {
  enter();
  OrtStatus* status = real_api->CreateSessionFromArray(env, data, size, options, out);
  atomic_fetch_sub(&inside, 1);
  return status;
}
static OrtStatus* ORT_API_CALL create(const OrtEnv* env, const ORTCHAR_T* path, const OrtSessionOptions* options,
                                      OrtSession** out) {
  enter();
  OrtStatus* status = real_api->CreateSession(env, path, options, out);
  atomic_fetch_sub(&inside, 1);
  return status;
}
static void replace(OrtApi* api) {
  api->CreateSessionFromArray = create_from_array;
  api->CreateSession = create;
}
""")

# Eight threads (a host's OpenMP threads, each with its own closure) create closures of the model
# at once, half from the file and half from memory, then apply them: the same bits as one closure.
CREATING_AT_ONCE = r"""
#define _POSIX_C_SOURCE 200809L
#include <dodo/dodo.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 8, N = 64 };
static const char *model, *front;
static unsigned char bytes[1 << 22];
static size_t size;
static pthread_barrier_t barrier;
static double F[N][6][4], out[THREADS][N][6][4];
static int failed;

static void* work(void* argument) {
  const long t = (long)argument;
  dodo_options options;
  dodo_options_init(&options);
  options.onnxruntime_library = front;
  dodo_closure* closure = NULL;
  char message[1024] = "";
  pthread_barrier_wait(&barrier);
  const dodo_status status = t % 2 ? dodo_closure_create(model, &options, &closure, message, sizeof message)
                                   : dodo_closure_create_from_memory(bytes, size, &options, &closure, message,
                                                                     sizeof message);
  if (status != DODO_OK || dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &out[t][0][0][0], NULL, NULL))
    failed = 1, printf("thread %ld: %d %s\n", t, (int)status, message);
  dodo_closure_destroy(closure);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 3) return 8;
  model = argv[1];
  front = argv[2];
  FILE* file = fopen(model, "rb");
  if (!file) return 9;
  size = fread(bytes, 1, sizeof bytes, file);
  fclose(file);
  for (int c = 0; c < N; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.01 * c;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  pthread_t threads[THREADS];
  pthread_barrier_init(&barrier, NULL, THREADS);
  for (long t = 0; t < THREADS; ++t) pthread_create(&threads[t], NULL, work, (void*)t);
  for (int t = 0; t < THREADS; ++t) pthread_join(threads[t], NULL);
  int differ = 0;
  for (int t = 1; t < THREADS; ++t) differ += memcmp(out[t], out[0], sizeof out[0]) != 0;
  void* counting = dlopen(front, RTLD_NOW | RTLD_NOLOAD);
  int (*most)(void) = counting ? (int (*)(void))dlsym(counting, "probe_most_at_once") : NULL;
  int (*entered)(void) = counting ? (int (*)(void))dlsym(counting, "probe_entered") : NULL;
  if (!most || !entered) return 10;
  printf("failed %d differ %d\n", failed, differ);
  printf("creations %d, at once at most %d\n", entered(), most());
  return 0;
}
"""


def test_sessions_are_created_one_at_a_time(tmp_path):
    """Eight threads creating closures of the default model at once (a host's OpenMP threads,
    each with its own closure: round thirty-eight's ThreadSanitizer host). Before: libdodo let
    ONNX Runtime create their sessions at once, which ONNX Runtime does not promise to be safe,
    and ThreadSanitizer reported a data race inside CreateSessionFromArray (a read by ONNX
    Runtime's memcpy of a heap block another thread's creation had just allocated) in every run;
    the counting ONNX Runtime in front saw 8 creations at once. Now libdodo makes one session at
    a time (inside its fork gate): at most 1 at once, every closure made, the same bits."""
    from dodo._closure import runtime_paths

    front = fake_onnxruntime(tmp_path, "counting", COUNTING_ORT)
    model = default_model()
    program = compile_host(tmp_path, "creating_at_once", CREATING_AT_ONCE)
    lines = run_host(program, model, str(front), timeout=300,
                     env={"PROBE_REAL_ONNXRUNTIME": runtime_paths()["onnxruntime_library"]})
    assert lines[0] == "failed 0 differ 0", lines
    created, at_once = map(int, re.fullmatch(r"creations (\d+), at once at most (\d+)", lines[1]).groups())
    assert created >= 8 and at_once == 1, lines


# --- which sources a libdodo was built from --------------------------------------------------------

BUILD_ID_C = r"""
#include <dodo/dodo.h>
#include <stdio.h>
int main(void) {
  printf("%s\n%s\n", dodo_version(), dodo_build_id());
  return 0;
}
"""

BUILD_ID_CPP = r"""
#include <dodo/dodo.hpp>
#include <iostream>
int main() {
  std::cout << dodo::build_id() << "\n";
  return 0;
}
"""

BUILD_ID_FORTRAN = r"""
program build_id
  use dodo
  implicit none
  print "(a)", dodo_build_id_string()
end program build_id
"""


def test_libdodo_names_the_commit_it_was_built_from(tmp_path):
    """A transport code logging what it linked (provenance of a run). Before: `dodo_version`
    gave "0.1.0" of every build, and there was no `dodo_build_id` (the host did not link:
    "undefined reference to `dodo_build_id'"). Now the commit of the sources (40 hex digits,
    "-dirty" when the library's sources had uncommitted changes; "unknown" outside a checkout),
    the same from C, C++ (`dodo::build_id()`) and Fortran (`dodo_build_id_string()`)."""
    c_lines = run_host(compile_host(tmp_path, "build_id_c", BUILD_ID_C), timeout=60)
    assert c_lines[0].count(".") == 2, c_lines
    build_id = c_lines[1]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", build_id), build_id
    if build_id != "unknown" and shutil.which("git") and (ROOT / ".git").exists():
        commit = build_id.removesuffix("-dirty")
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", commit + "^{commit}"], capture_output=True)
        assert known.returncode == 0, (build_id, known.stderr)
    assert run_host(compile_host(tmp_path, "build_id_cpp", BUILD_ID_CPP, "c++"), timeout=60) == [build_id]
    fortran = compile_fortran(tmp_path, "build_id_f", BUILD_ID_FORTRAN, module=MODULE)
    assert run_host(fortran, timeout=60) == [build_id]


@pytest.mark.parametrize("case", ["packager", "odd_characters", "no_checkout"])
def test_the_build_id_script(tmp_path, case):
    """cpp/src/runtime/build_id.cmake, which writes dodo_build_id() at every build: a packager's
    -DDODO_BUILD_ID wins (its characters outside a safe set become '_', so that the C string
    literal stays one); sources outside a git checkout (a source archive) give "unknown"; and
    an unchanged text leaves the file alone (nothing recompiled)."""
    cmake = shutil.which("cmake")
    if not cmake:
        pytest.skip("cmake is not installed")
    output = tmp_path / "build_id.cpp"
    source = tmp_path / "archive"
    source.mkdir()
    given = {"packager": "debian/0.1.0-1", "odd_characters": 'v1"; system("x"); //\n', "no_checkout": ""}[case]
    expected = {"packager": "debian/0.1.0-1", "odd_characters": "v1___system__x____//_",
                "no_checkout": "unknown"}[case]
    command = [cmake, f"-DSOURCE_DIR={source}", f"-DOUTPUT={output}", f"-DBUILD_ID={given}", "-P",
               str(ROOT / "cpp/src/runtime/build_id.cmake")]
    subprocess.run(command, check=True, env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    text = output.read_text()
    assert f'return "{expected}"; }}' in text, text
    before = output.stat().st_mtime_ns
    os.utime(output, ns=(before - 10**9, before - 10**9))
    subprocess.run(command, check=True, env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert output.stat().st_mtime_ns == before - 10**9  # not rewritten


# --- a library whose OrtGetApiBase gives no table ---------------------------------------------------

# Libraries in front of ONNX Runtime that export OrtGetApiBase but give no usable table: the wrapper
# that did not find the real library returns NULL; another gives a table without GetApi, or one
# whose version text is NULL and whose API is too new to be given.
BROKEN_ORT = r"""
#include <onnxruntime_c_api.h>
#include <stdlib.h>
static OrtApiBase partial;
static const OrtApi* ORT_API_CALL no_api(uint32_t version) { (void)version; return NULL; }
static const char* ORT_API_CALL no_version(void) { return NULL; }
const OrtApiBase* OrtGetApiBase(void) {
  const char* kind = getenv("PROBE_BROKEN_KIND");
  if (!kind || kind[0] == 'n') return NULL;  /* "null" */
  partial.GetVersionString = no_version;
  partial.GetApi = kind[0] == 'm' ? NULL : no_api;  /* "missing" GetApi, or "old" */
  return &partial;
}
"""

BROKEN_HOST = r"""
#include <dodo/dodo.h>
#include <stdio.h>
int main(int argc, char** argv) {
  if (argc != 3) return 8;
  dodo_options options;
  dodo_options_init(&options);
  options.onnxruntime_library = argv[2];
  dodo_closure* closure = NULL;
  char message[2048] = "";
  const dodo_status status = dodo_closure_create(argv[1], &options, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name(status), message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("kind", ["null", "missing", "old"])
def test_a_library_whose_ortgetapibase_gives_no_table_is_refused(tmp_path, kind):
    """`onnxruntime_library` naming a library that exports OrtGetApiBase but gives no table (a
    wrapper in front of ONNX Runtime that did not find the real one), or a table without GetApi,
    or whose version text is NULL. Before: the host died in dodo_closure_create, SIGSEGV (a NULL
    table read; the NULL version text made into a std::string). Now
    DODO_ERROR_ONNXRUNTIME_UNAVAILABLE, the library named with what was wrong."""
    broken = fake_onnxruntime(tmp_path, "broken", BROKEN_ORT)
    model = default_model()
    program = compile_host(tmp_path, "broken_ort", BROKEN_HOST)
    # the onnxruntime evaluator: the auto one would not need the library for the default model
    lines = run_host(program, model, str(broken), timeout=120,
                     env={"PROBE_BROKEN_KIND": kind, "DODO_NETWORK_EVALUATOR": "onnxruntime"})
    name, message = "\n".join(lines).split("|", 1)  # the libraries tried, one a line
    assert name == "DODO_ERROR_ONNXRUNTIME_UNAVAILABLE", lines
    assert str(broken) in message, message
    expected = {"null": "its OrtGetApiBase gave no table", "missing": "its OrtGetApiBase gave an incomplete table",
                "old": "ONNX Runtime (of no version) is older than API version"}[kind]
    assert expected in message, message


def test_the_build_id_is_the_sources_commit_under_another_repositorys_git_dir(tmp_path):
    """A build started from another repository's git hook (a super-project's pre-commit running
    `pip install`), which sets GIT_DIR for that repository. Before: the script's git asked that
    repository and wrote its commit as libdodo's. Now GIT_DIR, GIT_WORK_TREE and GIT_INDEX_FILE
    are dropped for the script's git: the sources' own commit."""
    cmake, git = shutil.which("cmake"), shutil.which("git")
    if not cmake or not git or not (ROOT / ".git").exists():
        pytest.skip("cmake, git or the repository's .git missing")
    other = tmp_path / "other"
    subprocess.run([git, "init", "-q", str(other)], check=True)
    subprocess.run([git, "-C", str(other), "-c", "user.name=probe", "-c", "user.email=probe@example.org", "commit",
                    "-q", "--allow-empty", "-m", "other"], check=True)
    foreign = subprocess.run([git, "-C", str(other), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
    output = tmp_path / "build_id.cpp"
    subprocess.run([cmake, f"-DSOURCE_DIR={ROOT}", f"-DOUTPUT={output}", "-DBUILD_ID=", "-P",
                    str(ROOT / "cpp/src/runtime/build_id.cmake")], check=True,
                   env={**os.environ, "GIT_DIR": str(other / ".git"), "GIT_WORK_TREE": str(other)})
    built = re.search(r'return "([^"]*)"', output.read_text()).group(1)
    assert foreign not in built and built != "unknown", built
    known = subprocess.run([git, "-C", str(ROOT), "cat-file", "-e", built.removesuffix("-dirty") + "^{commit}"],
                           capture_output=True)
    assert known.returncode == 0, built


def test_a_source_archive_inside_another_repository_is_unknown(tmp_path):
    """Dodo's sources unpacked from an archive inside another git repository (a home directory
    kept in git, ~/src/dodo-0.1.0). Before: the script's git found the enclosing repository and
    wrote its commit as libdodo's. Now a commit is taken only from a repository that tracks the
    sources (Dodo's own, or a project vendoring them): "unknown"."""
    cmake, git = shutil.which("cmake"), shutil.which("git")
    if not cmake or not git:
        pytest.skip("cmake or git missing")
    home = tmp_path / "home"
    subprocess.run([git, "init", "-q", str(home)], check=True)
    subprocess.run([git, "-C", str(home), "-c", "user.name=probe", "-c", "user.email=probe@example.org", "commit",
                    "-q", "--allow-empty", "-m", "dotfiles"], check=True)
    archive = home / "src" / "dodo-0.1.0"
    (archive / "cpp/src/runtime").mkdir(parents=True)
    shutil.copy(ROOT / "cpp/src/runtime/build_id.cmake", archive / "cpp/src/runtime/build_id.cmake")
    output = tmp_path / "build_id.cpp"
    subprocess.run([cmake, f"-DSOURCE_DIR={archive}", f"-DOUTPUT={output}", "-DBUILD_ID=", "-P",
                    str(archive / "cpp/src/runtime/build_id.cmake")], check=True)
    assert 'return "unknown"; }' in output.read_text(), output.read_text()
