"""Outside probe, round seventeen, C side (docs/reliability_cpp.md, "Round nine (round
seventeen)"): the C API, dodo.f90 and the runtime. Each test failed on the code before its fix."""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import dodo

HERE = Path(__file__).resolve().parent
MODELS = Path(dodo.__file__).resolve().parent / "models"
needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
DODO_OK, DODO_ERROR_INVALID_ARGUMENT, DODO_ERROR_SELF_TEST = 0, 1, 7
double_p = ctypes.POINTER(ctypes.c_double)


# --- library threads and the host's signals -----------------------------------------------------

# A child interpreter (a fresh process: ONNX Runtime's own thread is started by its first load).
# It records its threads, makes a closure and applies it, then checks every thread that appeared
# blocks the asynchronous signals, and, where the process had one thread before, that a SIGUSR1
# sent to the process while the main thread blocks it waits for sigwait instead of killing it.
SIGNAL_CHILD = textwrap.dedent("""
    import ctypes, json, os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from libdodo_ctypes import Options, load_libdodo
    lib = load_libdodo()
    before = set(os.listdir("/proc/self/task"))
    options = Options()
    lib.dodo_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.threads = int(sys.argv[2])
    handle = ctypes.c_void_p()
    assert lib.dodo_closure_create(sys.argv[1].encode(), ctypes.byref(options), ctypes.byref(handle), None, 0) == 0
    n = 300
    F = (ctypes.c_double * (n * 24))()
    for c in range(n):
        for a in range(6):
            F[c * 24 + a * 4] = 1.0 + 0.1 * a
        F[c * 24 + 3] = 0.3
        F[c * 24 + 15] = -0.5
    out = (ctypes.c_double * (n * 24))()
    dp = ctypes.POINTER(ctypes.c_double)
    assert lib.dodo_apply(handle, n, ctypes.cast(F, dp), None, None, None, ctypes.cast(out, dp), None, None) == 0
    unblocked = []
    for task in set(os.listdir("/proc/self/task")) - before:
        try:
            status = open(f"/proc/self/task/{task}/status").read()
        except OSError:
            continue
        mask = int([line for line in status.splitlines() if line.startswith("SigBlk:")][0].split()[1], 16)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD):
            if not mask & (1 << (sig - 1)):
                unblocked.append([task, int(sig)])
    new_threads = len(set(os.listdir("/proc/self/task")) - before)
    received = None
    if len(before) == 1:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        os.kill(os.getpid(), signal.SIGUSR1)
        received = signal.sigtimedwait({signal.SIGUSR1}, 10).si_signo
    print(json.dumps({"new_threads": new_threads, "unblocked": unblocked, "received": received}))
""")


@needs_runtime
@pytest.mark.parametrize("model, threads", [("box3d", 3), ("default", 0), ("default", 2)])
def test_library_threads_never_take_a_signal_the_host_blocked(tmp_path, model, threads):
    """Dodo's pool workers (threads >= 2) and ONNX Runtime's own thread (started when a model is
    loaded, even with threads = 0) ran with every signal unblocked. A host that blocks SIGTERM or
    SIGUSR1 in its threads and waits for it with sigwait or a signalfd (the usual way for a C or
    MPI code) was killed instead: the kernel gave the process-directed signal to a library thread,
    where its default action ended the process (exit by SIGUSR1 in 3 of 3 configurations). Now
    those threads start with the asynchronous signals blocked, so the signal waits for the host."""
    from dodo.models import default_model_path

    path = "box3d" if model == "box3d" else str(default_model_path())
    script = tmp_path / "child.py"
    script.write_text(SIGNAL_CHILD)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script), path, str(threads), str(HERE)], capture_output=True,
                            text=True, timeout=240, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["new_threads"] >= 1  # the threads under test exist
    assert report["unblocked"] == []
    if report["received"] is not None:
        assert report["received"] == 10 or report["received"] > 0

