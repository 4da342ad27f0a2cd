"""Outside probe, round eighteen, C side (docs/reliability_cpp.md, "Round ten (round
eighteen)"): the C API, dodo.hpp, the QKE solver's compiled kernel. Each test failed on the code
before its fix."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dodo

HERE = Path(__file__).resolve().parent
needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


def _compile(tmp_path: Path, name: str, source: str, language: str = "c++") -> Path:
    from test_native_programs import ROOT, pkg_config, run

    compiler = "g++" if language == "c++" else "gcc"
    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed")
    suffix = ".cpp" if language == "c++" else ".c"
    standard = "-std=c++17" if language == "c++" else "-std=c11"
    path = tmp_path / (name + suffix)
    path.write_text(source)
    program = tmp_path / name
    run([compiler, standard, "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}", str(path),
         *pkg_config("--cflags", "--libs"), "-lpthread", "-ldl", "-o", str(program)])
    return program


def _run(program: Path, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *arguments], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# --- the QKE solver's threads and the host's signals -----------------------------------------------

# A child interpreter that blocks SIGUSR1 first (as a host that waits for it), then steps a batch
# of boxes on 4 threads while a watcher thread records each new thread's blocked signals and, once
# it has seen solver threads, sends SIGUSR1 to the process.
QKE_SIGNAL_CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import numpy as np
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    from dodo._core import QkeKernel
    from dodo.qke.directions import uniform_sphere
    nsim, ncell = 4, 64
    directions = uniform_sphere(16)
    kernel = QkeKernel(directions, ncell, np.full(nsim, 4.0), np.ones(ncell), None, 1.9e-22, 3e10)
    state = np.zeros((6, nsim, 2, ncell, len(directions)), complex)
    state[0] = 1.0
    state[1] = 0.5
    kernel.set_state(state)
    dt = np.full(nsim, 1e-12)
    before = set(os.listdir("/proc/self/task"))
    seen, unblocked, sent = set(), [], [False]
    done = threading.Event()
    def watch():
        own = str(threading.get_native_id())
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            for task in set(os.listdir("/proc/self/task")) - before - {own} - seen:
                try:
                    status = open(f"/proc/self/task/{task}/status").read()
                except OSError:
                    continue
                seen.add(task)
                mask = int([l for l in status.splitlines() if l.startswith("SigBlk:")][0].split()[1], 16)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD):
                    if not mask & (1 << (sig - 1)):
                        unblocked.append([task, int(sig)])
            if len(seen) >= 3 and not sent[0]:
                sent[0] = True
                os.kill(os.getpid(), signal.SIGUSR1)
            if len(seen) >= 12:
                done.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.monotonic()
    while not done.is_set() and time.monotonic() - start < 60:
        kernel.step(dt, 4)
    done.set()
    watcher.join()
    received = signal.sigtimedwait({signal.SIGUSR1}, 10)
    print(json.dumps({"seen": len(seen), "unblocked": unblocked, "sent": sent[0],
                      "received": received.si_signo if received else None}))
""")


def test_qke_solver_threads_block_the_asynchronous_signals_as_the_closures_do(tmp_path):
    """The compiled QKE kernel (dodo simulate, dodo.qke with backend 'cpp') started its per-step
    threads with the calling thread's mask, so SIGINT, SIGTERM, SIGHUP, SIGCHLD open in every
    solver thread (3 of 3 runs: 3 to 7 threads each), unlike the closure's workers (round
    seventeen): a signal the host handles could run its handler on a solver thread (a handler that
    siglongjmps or asks which thread it is on then misbehaves). Now they start with the
    asynchronous signals blocked, as the closure's; a signal the host blocks still waits for its
    sigtimedwait (it did before too: the threads inherited that block)."""
    pytest.importorskip("dodo._core")
    script = tmp_path / "child.py"
    script.write_text(QKE_SIGNAL_CHILD)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seen"] >= 3 and report["sent"], report
    assert report["unblocked"] == [], report
    assert report["received"] == 10, report  # SIGUSR1, waiting for the host


# --- a host's static owner of a closure, destroyed after libdodo's statics ---------------------------

CPP_STATIC_OWNER = r"""
#include <dodo/dodo.hpp>
#include <cstdio>
#include <memory>
#include <string>
static std::unique_ptr<dodo::Closure> closure;  // made (empty) before main, filled in main
int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "box3d";
  closure = std::make_unique<dodo::Closure>(model);
  double F[24] = {1.0, 0.0, 0.0, 0.3, 1.1, 0, 0, 0, 1.2, 0, 0, 0, 1.3, 0, 0, -0.5, 1.4, 0, 0, 0, 1.5, 0, 0, 0};
  double out[24];
  closure->apply(1, F, nullptr, out);
  std::printf("applied %d\n", static_cast<int>(closure->has_model()));
  std::fflush(stdout);
  return 0;  // exit(): destructors in reverse order of registration, libdodo's first
}
"""

C_ATEXIT_OWNER = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
static dodo_closure* closure = NULL;
static void release(void) { dodo_closure_destroy(closure); puts("released"); fflush(stdout); }
int main(void) {
  atexit(release);  /* registered before libdodo's first call */
  char message[512];
  if (dodo_closure_create(DODO_BOX3D_ONLY, NULL, &closure, message, sizeof message) != DODO_OK) {
    puts(message);
    return 1;
  }
  return 0;
}
"""


@needs_runtime
def test_a_closure_owned_by_a_static_is_destroyed_cleanly_at_exit(tmp_path):
    """libdodo's set of live handles was a function-local static, destroyed by exit(). A host whose
    own static owner of a closure is destroyed after it (a C++ `static std::unique_ptr<dodo::Closure>`
    filled in main, a C atexit handler registered before the first call) made dodo_closure_destroy
    erase from the freed set: "free(): double free detected in tcache 2", exit by SIGABRT (134),
    3 of 3 runs. Now the set is never destroyed: exit 0."""
    from dodo.models import default_model_path

    cpp = _compile(tmp_path, "static_owner", CPP_STATIC_OWNER)
    for model, has_model in (("box3d", 0), (str(default_model_path()), 1)):
        result = _run(cpp, model)
        assert result.returncode == 0, (model, result.returncode, result.stdout, result.stderr[-2000:])
        assert result.stdout.split("\n")[0] == f"applied {has_model}", result.stdout
        assert "free()" not in result.stderr, result.stderr
    program = _compile(tmp_path, "atexit_owner", C_ATEXIT_OWNER, language="c")
    result = _run(program)
    assert (result.returncode, result.stdout.strip()) == (0, "released"), (result.returncode, result.stderr[-2000:])


# --- fork while another thread looks up the default model for the first time ------------------------

# stat() is replaced by one that, for the default model's candidates, tells the main thread the
# lookup is under way and lingers there; the main thread forks meanwhile and the child looks the
# path up itself.
C_FORK_DURING_FIRST_LOOKUP = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
static int entered[2];
static int lingered = 0;
int stat(const char* path, struct stat* status) {
  int (*real)(const char*, struct stat*) = (int (*)(const char*, struct stat*))dlsym(RTLD_NEXT, "stat");
  if (strstr(path, "qke_default.onnx") && !lingered) {
    lingered = 1;
    if (write(entered[1], "s", 1) != 1) return -1;
    usleep(300000);
  }
  return real(path, status);
}
static void* first_lookup(void* unused) {
  (void)unused;
  dodo_default_model_path();
  return NULL;
}
int main(void) {
  if (pipe(entered) != 0) return 2;
  pthread_t thread;
  pthread_create(&thread, NULL, first_lookup, NULL);
  char c;
  if (read(entered[0], &c, 1) != 1) return 2;  /* the thread is inside the first lookup */
  pid_t child = fork();
  if (child == 0) {
    alarm(20);
    const char* path = dodo_default_model_path();
    printf("child %s\n", path ? "found" : "none");
    fflush(stdout);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  pthread_join(thread, NULL);
  const char* path = dodo_default_model_path();
  printf("parent %s\n", path ? "found" : "none");
  if (WIFEXITED(status)) printf("child exit %d\n", WEXITSTATUS(status));
  else printf("child signal %d\n", WTERMSIG(status));
  return 0;
}
"""


@needs_runtime
def test_a_fork_during_the_first_default_model_lookup_leaves_the_child_usable(tmp_path):
    """dodo_default_model_path kept its answer in a function-local static. fork() while another
    thread was making it (dladdr, stat, realpath: microseconds, or longer on a slow file system)
    copied its guard variable, taken, into the child, whose own call then waited for ever (killed
    here by its alarm: SIGALRM, every run). Now the path is published without a guard or lock:
    the child looks it up itself."""
    program = _compile(tmp_path, "fork_lookup", C_FORK_DURING_FIRST_LOOKUP, language="c")
    result = _run(program, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = result.stdout.split("\n")
    assert lines[:3] == ["child found", "parent found", "child exit 0"], result.stdout


# --- misaligned arrays ------------------------------------------------------------------------------

@needs_runtime
def test_misaligned_arrays_are_refused_before_anything_is_written():
    """dodo_apply read doubles through a pointer at an odd address (a buffer of bytes, a packed
    record): undefined behaviour, reported by UBSan ("load of misaligned address ... for type
    'const double'" in Box3D's prepare_block), which a vectorising compiler may turn into a fault.
    Now every array not at its type's alignment (8 bytes for the doubles, 4 for cell_status) is
    refused with DODO_ERROR_INVALID_ARGUMENT naming it, before anything is written."""
    import ctypes

    from libdodo_ctypes import load_libdodo

    lib = load_libdodo()
    handle = ctypes.c_void_p()
    assert lib.dodo_closure_create(b"box3d", None, ctypes.byref(handle), None, 0) == 0
    n = 7
    values = [0.0] * (24 * n)
    for c in range(n):
        for a in range(6):
            values[24 * c + 4 * a] = 1.0 + 0.1 * a
        values[24 * c + 3], values[24 * c + 15] = 0.3, -0.4
    velocity = [1.0, 0.0, 0.0, 0.0] * n
    double_p, uint_p = ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_uint32)

    def buffer(count, element, offset, fill=None):  # `count` elements `offset` bytes past an aligned address
        raw = (ctypes.c_double * (count * element // 8 + 2))()
        address = ctypes.addressof(raw) + offset
        if fill is not None:
            ctypes.memmove(address, (ctypes.c_double * len(fill))(*fill), 8 * len(fill))
        else:
            ctypes.memset(address, 0x5A, count * element)
        return raw, address

    def call(offsets):
        F, F_at = buffer(24 * n, 8, offsets.get("F_init", 0), values)
        u, u_at = buffer(4 * n, 8, offsets.get("u", 0), velocity)
        out, out_at = buffer(24 * n, 8, offsets.get("F_pred", 0))
        flags, flags_at = buffer(n, 4, offsets.get("cell_status", 0))
        growth, growth_at = buffer(n, 8, offsets.get("growth_rate", 0))
        spread, spread_at = buffer(n, 8, offsets.get("uncertainty", 0))
        status = lib.dodo_apply_diagnostics(handle, n, ctypes.cast(F_at, double_p), None, ctypes.cast(u_at, double_p),
                                            None, ctypes.cast(out_at, double_p), None, ctypes.cast(flags_at, uint_p),
                                            ctypes.cast(growth_at, double_p), ctypes.cast(spread_at, double_p))
        message = ctypes.create_string_buffer(512)
        lib.dodo_last_error(handle, message, 512)
        written = ctypes.string_at(out_at, 24 * n * 8) != b"\x5a" * (24 * n * 8)
        written |= ctypes.string_at(flags_at, 4 * n) != b"\x5a" * (4 * n)
        return status, message.value.decode(), written

    try:
        assert call({}) == (0, "", True)
        assert call({"cell_status": 4}) == (0, "", True)  # 4-byte aligned is enough for uint32_t
        for name, offset in [("F_init", 1), ("F_init", 4), ("u", 3), ("F_pred", 5), ("cell_status", 2),
                             ("growth_rate", 4), ("uncertainty", 7)]:
            status, message, written = call({name: offset})
            assert status == 1 and not written, (name, offset, status, message)
            assert message.startswith(f"{name} is misaligned: its address lies {offset % (4 if name == 'cell_status' else 8)}"), message
    finally:
        lib.dodo_closure_destroy(handle)


# --- dodo.hpp: a metadata key holding a NUL ---------------------------------------------------------

CPP_METADATA_KEY = r"""
#include <dodo/dodo.hpp>
#include <cstdio>
#include <string>
int main(int argc, char** argv) {
  dodo::Closure closure(argv[1]);
  const std::string whole = closure.metadata("dodo.format_version");
  const std::string cut = closure.metadata(std::string("dodo.format_version\0.junk", 25));
  std::printf("[%s] [%s]\n", whole.c_str(), cut.c_str());
  (void)argc;
}
"""


@needs_runtime
def test_cpp_metadata_key_holding_a_nul_is_absent():
    """dodo::Closure::metadata(std::string("dodo.format_version\\0.junk", 25)) reached C cut at the
    NUL and returned dodo.format_version's value for a key the package does not have. No key holds
    a NUL, so such a key is now absent (empty), as the wrapper's other strings refuse a NUL."""
    import tempfile

    from dodo.models import default_model_path

    with tempfile.TemporaryDirectory() as directory:
        program = _compile(Path(directory), "metadata_key", CPP_METADATA_KEY)
        result = _run(program, str(default_model_path()))
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    whole, cut = result.stdout.strip().split(" ")
    assert whole not in ("[]", "") and cut == "[]", result.stdout


# --- dodo._core and misaligned numpy arrays ---------------------------------------------------------

def _misaligned(shape, dtype, offset):
    import numpy as np

    itemsize = np.dtype(dtype).itemsize
    count = int(np.prod(shape))
    raw = np.zeros(count * itemsize + 16, np.uint8)
    start = (-raw.ctypes.data) % 16 + offset  # `offset` bytes past a 16-byte boundary
    array = raw[start:start + count * itemsize].view(dtype).reshape(shape)
    assert array.flags.aligned == (offset % itemsize == 0)
    return array


def test_core_copies_misaligned_inputs_and_refuses_misaligned_outputs():
    """dodo._core took a misaligned float64 array (a buffer at an odd offset; numpy passes it on as
    it is unless asked for alignment) and read or wrote its doubles through a misaligned pointer:
    undefined behaviour, as in the C API. Inputs are now copied to aligned memory (same values),
    and an output array written in place (dodo.box3d(..., out=)) that is misaligned is refused
    with ValueError (it was written)."""
    import numpy as np

    core = pytest.importorskip("dodo._core")
    box3d = core.Box3D()
    n = 9
    F = np.zeros((n, 6, 4))
    F[:, :, 0] = 1.0 + 0.1 * np.arange(6)
    F[:, 0, 3], F[:, 3, 3] = 0.3, -0.5
    F[:, 1, 1] = np.linspace(-0.2, 0.2, n)
    u = np.tile([1.25, 0.75, 0.0, 0.0], (n, 1))
    reference = box3d.apply(F, u)
    odd_F, odd_u = _misaligned(F.shape, np.float64, 3), _misaligned(u.shape, np.float64, 5)
    odd_F[...], odd_u[...] = F, u
    for got, want in zip(box3d.apply(odd_F, odd_u), reference):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(core.invariants(odd_F, odd_u), core.invariants(F, u))

    def outputs(offset=0, which="F_box"):
        arrays = {"F_box": np.empty((n, 6, 4)), "growth_over_ntot": np.empty(n), "growth_rate": np.empty(n),
                  "status": np.empty(n, np.uint32)}
        if offset:
            arrays[which] = _misaligned(arrays[which].shape, arrays[which].dtype, offset)
        return arrays

    good = outputs()
    box3d.apply_into(F, u, good["F_box"], good["growth_over_ntot"], good["growth_rate"], good["status"])
    np.testing.assert_array_equal(good["F_box"], reference[0])
    for which, offset in [("F_box", 4), ("growth_over_ntot", 1), ("growth_rate", 2), ("status", 2)]:
        bad = outputs(offset, which)
        with pytest.raises(ValueError, match=f"out.{which}: an output array must be aligned"):
            box3d.apply_into(F, u, bad["F_box"], bad["growth_over_ntot"], bad["growth_rate"], bad["status"])


# --- a fork()ed child leaving with exit() after ONNX Runtime was loaded ------------------------------

C_FORK_CHILD_EXITS = r"""
#define _POSIX_C_SOURCE 200809L
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char** argv) {
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  dodo_closure* closure = NULL;
  char message[512] = "usage: fork_exit MODEL MODE [ALARM_SECONDS]";
  if (argc < 3 || dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {
    puts(message);
    return 1;
  }
  const int mode = atoi(argv[2]);  /* 1: the child applies the parent's handle; 2: and destroys it */
  static double F[64 * 24], out[64 * 24];
  for (int i = 0; i < 64 * 24; ++i) F[i] = i % 4 == 0 ? 1.0 + 0.01 * (i % 24) : (i % 24 == 3 ? 0.3 : (i % 24 == 15 ? -0.4 : 0.0));
  const pid_t child = fork();
  if (child == 0) {
    alarm(argc > 3 ? (unsigned)atoi(argv[3]) : 20u);
    int status = mode >= 1 ? dodo_apply(closure, 64, F, NULL, NULL, NULL, out, NULL, NULL) : 0;
    if (mode >= 2) dodo_closure_destroy(closure);
    exit(status == DODO_OK ? 0 : 3);  /* exit(), not _exit(): every exit handler runs */
  }
  int status = 0;
  waitpid(child, &status, 0);
  const char* telemetry = getenv("ORT_DISABLE_TELEMETRY");
  printf("%s %d %s\n", WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
         telemetry ? telemetry : "(unset)");
  dodo_closure_destroy(closure);
  return 0;
}
"""

PYTHON_FORK_CHILD_EXITS = textwrap.dedent('''
    import os, signal, sys
    import dodo
    closure = dodo.Closure()
    child = os.fork()
    if child == 0:
        signal.alarm(20)
        sys.exit(0)
    _, status = os.waitpid(child, 0)
    print("exit" if os.WIFEXITED(status) else "signal", os.WEXITSTATUS(status) if os.WIFEXITED(status)
          else os.WTERMSIG(status))
''')


@needs_runtime
def test_a_forked_child_that_calls_exit_after_a_model_was_loaded_exits(tmp_path):
    """After a closure with a model was made (ONNX Runtime loaded), a child made by fork() that left
    with exit() hung for ever (killed here by its alarm: SIGALRM), or aborted (std::system_error
    "No such process") when it had applied and destroyed the parent's handle; the same in Python
    (os.fork(), then sys.exit). ONNX Runtime 1.32's environment starts a telemetry uploader thread,
    and its static destructor waited in the child for that thread, which only the parent has.
    libdodo now sets ORT_DISABLE_TELEMETRY=1 before loading ONNX Runtime unless the host set it
    (no such thread, no uploads from compute nodes); a host's own value is kept."""
    from dodo.models import default_model_path

    program = _compile(tmp_path, "fork_exit", C_FORK_CHILD_EXITS, language="c")
    model = str(default_model_path())
    env = {key: value for key, value in os.environ.items() if key != "ORT_DISABLE_TELEMETRY"}
    for mode in ("0", "1", "2"):
        result = subprocess.run([str(program), model, mode], capture_output=True, text=True, timeout=120, env=env,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (mode, result.returncode, result.stdout, result.stderr[-2000:])
        assert result.stdout.strip() == "exit 0 1", (mode, result.stdout, result.stderr[-2000:])
    kept = subprocess.run([str(program), model, "0", "2"], capture_output=True, text=True, timeout=120,
                          env=dict(env, ORT_DISABLE_TELEMETRY="0"), stdin=subprocess.DEVNULL)
    assert kept.stdout.strip().endswith(" 0"), kept.stdout  # the host's own choice stands (and its child hangs)
    script = tmp_path / "fork_exit.py"
    script.write_text(PYTHON_FORK_CHILD_EXITS)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                            stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout.strip()) == (0, "exit 0"), (result.stdout, result.stderr[-2000:])
