"""Outside probe, round fifteen (docs/reliability_python.md section 16): each test failed on the
code before its fix."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import digest, interrupted_linear_only_run, refused, run

import dodo  # noqa: E402

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
EMU_FILE = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]


# --- dodo simulate onto a file that is not its own database ------------------------------------

def test_simulate_does_not_replace_a_file_that_is_not_a_solver_database(tmp_path, capsys):
    """`dodo simulate emu.h5 --random 2` with emu.h5 a real Emu database (32 runs) replaced it with
    the new run's database, exit 0; killed after its first batch it left that partial database in
    the Emu file's place (the run writes the batches finished so far over OUT). Only a *complete*
    solver database was protected. Now any existing non-empty file that is not a dodo simulate
    database is refused unless --overwrite; an empty file (mktemp) is written."""
    pytest.importorskip("h5py")
    emu = tmp_path / "emu.h5"
    shutil.copyfile(EMU_FILE, emu)
    before = digest(emu)
    refused(capsys, ["simulate", str(emu), "--random", "2", "--seed", "1", *SMALL], emu,
            "not a dodo simulate database", "--overwrite")
    assert digest(emu) == before
    garbage = tmp_path / "notes.h5"
    garbage.write_bytes(b"three days of notes")
    refused(capsys, ["simulate", str(garbage), "--random", "2", *SMALL], garbage, "cannot be read")
    assert garbage.read_bytes() == b"three days of notes"
    assert not list(tmp_path.glob("*.partial*.npz"))
    empty = tmp_path / "empty.h5"
    empty.touch()
    # --max-cost 1 keeps the one state (seed 0): a run dropping every state writes nothing since
    # round eighteen (docs/reliability_python.md section 20).
    code, _, err = run(capsys, ["simulate", str(empty), "--random", "1", "--max-cost", "1", *SMALL])
    assert code == 0, err
    code, _, err = run(capsys, ["simulate", str(emu), "--random", "1", "--max-cost", "1", *SMALL, "--overwrite"])
    assert code == 0, err
    assert digest(emu) != before


# --- Rejected cells come back bit for bit ------------------------------------------------------

@pytest.mark.parametrize("model", [None, "box3d", "dodo.box3d"])
def test_a_rejected_cell_of_negative_zeros_comes_back_bit_for_bit(model):
    """A vacuum cell written as -0.0 (a host's `-x` of zeros, or `0.0 * -1`) is ZERO_DENSITY and
    realizable, so its output is documented as the input bit for bit; the densities came back
    +0.0 (the fallback's fmax(n, 0)). A stable cell with -0.0 entries was already bit for bit."""
    cells = np.full((3, 6, 4), -0.0)
    cells[1, :, 1:] = 0.0  # -0.0 densities, +0.0 fluxes
    cells[2, 0] = [-0.0, 0.0, -0.0, 0.0]
    cells[2, 1:] = 0.0
    if model == "dodo.box3d":
        result = dodo.box3d(cells)
        output = result.F_box
    else:
        if not dodo.runtime_available():
            pytest.skip("closure runtime not built")
        result = dodo.Closure(model).apply(cells)
        output = result.F_pred
    assert np.all(result.status == dodo.CellStatus.ZERO_DENSITY)
    assert np.array_equal(output.view(np.uint64), cells.view(np.uint64))


# --- fork() while another thread is inside a call -----------------------------------------------

FORK_WHILE_BUSY = r'''
import os, sys, threading, time
import numpy as np
import dodo

model = None if sys.argv[1] == "default" else sys.argv[1]
F = np.zeros((200000, 6, 4))
F[:, 0] = [1.0, 0, 0, 0.5]
F[:, 3] = [1.0, 0, 0, -0.5]
F[:, [1, 2, 4, 5], 0] = 0.3
small = F[:5].copy()
hangs = wrong = 0
for attempt in range(int(sys.argv[2])):
    # One worker and large chunks: a second concurrent caller finds no free workspace and makes one
    # (tens of milliseconds) while holding the pool's lock; the fork lands in that window.
    closure = dodo.Closure(model, threads=1, chunk_size=1 << 17, self_test=False)
    expected = closure.apply(small).F_pred.copy()
    first = threading.Thread(target=closure.apply, args=(F,))
    first.start()
    time.sleep(0.02)
    second = threading.Thread(target=closure.apply, args=(F,))
    second.start()
    time.sleep(0.002 * attempt)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if np.array_equal(closure.apply(small).F_pred, expected) else 3)
    deadline = time.monotonic() + 60.0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            wrong += status != 0
            break
        if time.monotonic() > deadline:
            hangs += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    first.join()
    second.join()
    if hangs:
        break
print(f"hangs={hangs} wrong={wrong}")
'''


@needs_runtime
@pytest.mark.parametrize("model", ["default", "box3d"])
def test_a_fork_while_another_thread_is_inside_apply_leaves_the_child_usable(tmp_path, model):
    """A closure shared by the threads of a Python program, one thread forking (multiprocessing's
    fork start method, os.fork) while others were inside Closure.apply: the child's first call hung
    for ever when a parent thread held the workspace pool's lock at the fork (the probe's busy
    threads: 1 fork in ~40; here, where the lock is held while a second caller's workspace is made:
    every fork). Round two made only the worker threads fork-safe; the pool is now tagged with the
    process id as they are, and the child makes its own."""
    import subprocess
    import sys

    script = tmp_path / "fork_while_busy.py"
    script.write_text(FORK_WHILE_BUSY)
    result = subprocess.run([sys.executable, str(script), model, "2"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hangs=0 wrong=0" in result.stdout, result.stdout + result.stderr[-2000:]


# The C API's own locks: two threads calling dodo_apply (one failing, so that its error text is
# written under the handle's lock) while the main thread forks; each child calls it once.
FORK_WHILE_CALLING = r"""
#define _POSIX_C_SOURCE 200809L
#include <dodo/dodo.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static dodo_closure* handle;
static volatile int stop;

static void* ok_calls(void* arg) {
  (void)arg;
  while (!stop) dodo_apply(handle, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
  return NULL;
}
static void* failing_calls(void* arg) {
  (void)arg;
  char text[256];
  while (!stop) {
    dodo_apply(handle, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    dodo_last_error(handle, text, sizeof text);
  }
  return NULL;
}

int main(int argc, char** argv) {
  int forks = argc > 1 ? atoi(argv[1]) : 500;
  dodo_options options;
  dodo_options_init(&options);
  char message[512];
  if (dodo_closure_create(DODO_BOX3D_ONLY, &options, &handle, message, sizeof message) != DODO_OK) {
    fprintf(stderr, "%s\n", message);
    return 1;
  }
  pthread_t a, b;
  pthread_create(&a, NULL, ok_calls, NULL);
  pthread_create(&b, NULL, failing_calls, NULL);
  int hangs = 0;
  for (int k = 0; k < forks && !hangs; ++k) {
    pid_t pid = fork();
    if (pid == 0) {
      char text[256];
      dodo_status s = dodo_apply(handle, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
      dodo_last_error(handle, text, sizeof text);
      _exit(s == DODO_ERROR_INVALID_ARGUMENT ? 0 : 3);
    }
    int status = 0;
    for (int waited = 0;; ++waited) {
      if (waitpid(pid, &status, WNOHANG) == pid) break;
      if (waited > 6000) {  /* 60 s: a hang, never a slow machine */
        hangs++;
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      struct timespec pause = {0, 10000000};
      nanosleep(&pause, NULL);
    }
  }
  stop = 1;
  pthread_join(a, NULL);
  pthread_join(b, NULL);
  dodo_closure_destroy(handle);
  printf("hangs=%d\n", hangs);
  return hangs ? 1 : 0;
}
"""


def test_a_fork_while_other_threads_call_the_c_api_leaves_the_child_usable(tmp_path):
    """A C host forking while two of its threads called dodo_apply on one handle: after ~100-300
    forks a child's first call hung for ever (libdodo's lock of live handles, taken by every call,
    or the handle's error-text lock, held at the fork by a thread that does not exist in the
    child). libdodo now takes both locks around fork() (pthread_atfork), so the child inherits them
    free."""
    import shutil

    from test_native_programs import pkg_config, run

    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler")
    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    (tmp_path / "fork.c").write_text(FORK_WHILE_CALLING)
    program = tmp_path / "fork"
    run([compiler, "-std=c99", str(tmp_path / "fork.c"), *pkg_config("--cflags", "--libs"), "-lpthread",
         "-o", str(program)])
    import subprocess

    result = subprocess.run([str(program), "600"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0 and result.stdout.strip() == "hangs=0", result.stdout + result.stderr


# --- Options ------------------------------------------------------------------------------------

@needs_runtime
@pytest.mark.parametrize("model", [None, "box3d"])
@pytest.mark.parametrize("value", [0, 0.0, -0.0, np.float64(0)])
def test_closure_refuses_a_zero_max_flux_factor_as_dodo_box3d_does(model, value):
    """dodo.Closure(max_flux_factor=0) (an unset variable, or a limit written as 0 for 'none') loaded
    silently with the model's 0.98 (Box3D alone: the default): 0 is the C API's "the model's", which
    round eleven refused in Python for z_method "" and lebedev_order 0 but not for this option;
    dodo.box3d(max_flux_factor=0) refused it. None is Python's "the model's"."""
    with pytest.raises(ValueError, match="max_flux_factor must lie in"):
        dodo.Closure(model, max_flux_factor=value)
    with pytest.raises(ValueError, match="max_flux_factor must lie in"):
        dodo.box3d(np.zeros((6, 4)), max_flux_factor=value)


# --- dodo apply's Box3D column ------------------------------------------------------------------

@needs_runtime
def test_apply_computes_box3d_at_the_models_flux_factor_limit(tmp_path, capsys):
    """`dodo apply --model M -o OUT` for a package exported at another Box3D flux-factor limit than
    0.98 computed its Box3D column (and OUT's F_box) at 0.98, while the closure used the model's:
    cells between the two limits were Box3D-corrected in the column and rejected by the closure,
    so the table compared the model with another Box3D than its own. Now Box3D runs at every one
    of the closure's settings (as `dodo score` already did)."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("onnx")
    from closure_helpers import write

    from dodo.conventions import to_emu_layout

    model = tmp_path / "limit05.onnx"
    write(model, box3d_settings={"max_flux_factor": 0.5})
    cells = np.zeros((8, 6, 4))
    cells[:, 0] = [1.0, 0, 0, 0.7]  # flux factor 0.7: computed at 0.98, rejected at 0.5
    cells[4:, 0] = [1.0, 0, 0, 0.3]  # within both limits: a file the closure rejects whole is refused (round 27)
    cells[:, 3] = [1.0, 0, 0, -0.3]
    cells[:, [1, 2, 4, 5], 0] = 0.3
    data = tmp_path / "cells.h5"
    with h5py.File(data, "w") as handle:
        handle["F4_initial(1|ccm)"] = to_emu_layout(cells)
        handle["F4_final(1|ccm)"] = to_emu_layout(cells)
    out = tmp_path / "out.h5"
    code, _, err = run(capsys, ["apply", str(data), "--model", str(model), "--grid", "2x2x2", "-q", "-o", str(out)])
    assert code == 0, err
    with h5py.File(out, "r") as handle:
        F_init, u, F_box = handle["F_init"][()], handle["u"][()], handle["F_box"][()]
    expected = dodo.box3d(F_init, u, max_flux_factor=0.5)
    past_limit = (expected.status & dodo.CellStatus.FLUX_FACTOR) != 0
    assert past_limit.any() and not past_limit.all()
    assert np.array_equal(F_box, expected.F_box)


@needs_runtime
@pytest.mark.parametrize("option", [{"evaluator": "native"}, {"evaluator": ""}, {"evaluator": "ONNXRUNTIME"},
                                    {"device": "gpu"}, {"device": "cuda:-1"}, {"device": ""}, {"device": "CPU"}])
def test_box3d_only_closure_refuses_the_options_a_model_closure_refuses(option):
    """Closure("box3d", evaluator="native") or device="gpu" loaded silently (the runtime checks
    evaluator and device only when it loads a network), while the same option with a model is
    refused: a typo went unnoticed until a model was given. Both now refuse it the same way."""
    name, value = next(iter(option.items()))
    for model in ("box3d", None):
        with pytest.raises(ValueError, match=f'unknown (network )?{name}'):
            dodo.Closure(model, **option)
    assert dodo.Closure("box3d", device="cuda:0", evaluator="onnxruntime").evaluator == ""


def test_a_full_simulate_run_does_not_replace_an_unfinished_growth_label_file(tmp_path, capsys, monkeypatch):
    """An interrupted `dodo simulate OUT --linear-only` leaves OUT as its own checkpoint (the labels
    so far, resumed by rerunning it). A full run onto that OUT (the same command without
    --linear-only, a slip in a campaign script) replaced it with its own database, exit 0: the
    labels were lost. It is now refused, naming the file and how to resume it; --overwrite
    replaces it."""
    pytest.importorskip("h5py")
    output = tmp_path / "labels.h5"
    interrupted_linear_only_run(capsys, monkeypatch, output, SMALL)
    before = digest(output)
    refused(capsys, ["simulate", str(output), "--random", "4", "--max-cost", "0.01", *SMALL], output,
            "unfinished growth-label file", "--linear-only", "--overwrite")
    assert digest(output) == before
    assert run(capsys, ["simulate", str(output), "--random", "4", "--linear-only", *SMALL])[0] == 0  # resumes
