"""Outside probe, round forty-three (docs/reliability_python.md, section 53): concurrency, fork,
signals and process lifetime of dodo.closure / dodo.Closure / dodo.box3d. Forking programs run in
their own interpreter and process group with a timeout (run_child), so a hang is a failure, never a
stuck suite; no assertion depends on the machine's speed (the interrupt tests compare the work done
between two looks at pending signals, not times)."""
from __future__ import annotations

import signal
import sys
import threading

import numpy as np
import pytest

import dodo
from conftest import random_states, rows_written_when_interrupted
from dodo._closure import runtime_available
from test_runtime_reliability import run_child

needs_runtime = pytest.mark.skipif(not runtime_available(), reason="closure runtime not built")


# --- fork while other threads are inside ONNX Runtime ---------------------------------------------

FORK_WHILE_ONNXRUNTIME_RUNS = """
    import os, signal, sys, threading, time
    import numpy as np
    import dodo

    rng = np.random.default_rng(3)
    F = np.zeros((48, 6, 4))
    F[..., 0] = rng.uniform(0.2, 1.0, (48, 6))
    F[:, 0, 3] = 0.5 * F[:, 0, 0]   # nu_e along +z, nubar_e along -z: an ELN crossing in every cell
    F[:, 3, 3] = -0.5 * F[:, 3, 0]
    # chunk_size 1: one ONNX Runtime call per cell, so that the threads are inside one most of the time
    closure = dodo.Closure(None, threads=1, chunk_size=1, evaluator="onnxruntime")
    assert closure.evaluator == "onnxruntime"
    expected = closure.apply(F[:4]).F_pred.copy()
    stop = False
    inside = threading.Event()

    def evaluate():
        while not stop:
            closure.apply(F)
            inside.set()

    threads = [threading.Thread(target=evaluate) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert inside.wait(120)
    failures = []
    for attempt in range({forks}):
        pid = os.fork()
        if pid == 0:
            same = np.array_equal(closure.apply(F[:4]).F_pred, expected)
            fresh = dodo.Closure(None, threads=2, chunk_size=1, evaluator="onnxruntime") if attempt % 10 == 0 else None
            same = same and (fresh is None or np.array_equal(fresh.apply(F[:4]).F_pred, expected))
            os._exit(0 if same else 3)
        began = time.monotonic()
        while True:  # hang guard per child: generous, only a hang reaches it
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - began > 60:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "hung"
                break
            time.sleep(0.005)
        if status != 0:
            failures.append((attempt, status))
            break
    stop = True
    for thread in threads:
        thread.join()
    print("failures", failures, flush=True)
"""


@needs_runtime
def test_a_fork_while_other_threads_are_inside_onnxruntime_leaves_a_working_closure_in_the_child():
    """The "onnxruntime" evaluator shares one ONNX Runtime session between the closure's threads.
    ONNX Runtime's own locks are not fork-aware: a fork while another thread was inside OrtApi::Run
    copied one of them, held, into the child, whose first call (on the parent's closure, or on a
    Closure made in the child) then waited for ever: 1 fork in ~25 here, 1 in ~500 with the default
    chunks (gdb: the child's threads in pthread_mutex_lock under OrtApi::Run). A fork now waits
    for the calls into ONNX Runtime under way (cpp/src/runtime/ort_library.cpp)."""
    result = run_child(FORK_WHILE_ONNXRUNTIME_RUNS.format(forks=150), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "failures []" in result.stdout, result.stdout[-2000:]


# --- Ctrl-C at the finer quadratures --------------------------------------------------------------

@pytest.fixture
def slices_of_4096_cells():
    previous = dodo._core._set_interrupt_slice_cells(4096)
    yield 4096
    dodo._core._set_interrupt_slice_cells(previous)


def _cells_done_before_the_interrupt(call, make_out, rows_of, n):
    """Runs call(F, out) on n cells with a 5 ms timer that raises KeyboardInterrupt, and returns
    how many leading cells the call had written when it stopped (None: it ended first)."""
    F = random_states(np.random.default_rng(11), n)
    call(F[:2], make_out(2))  # the engine made (the quadrature of order 131) before any timer
    for _ in range(3):
        out = make_out(n)
        written = rows_written_when_interrupted(call, F, out, rows_of(out))
        if written is not None and written.any():
            stop = int(np.argmin(written)) if not written.all() else n
            assert written[:stop].all() and not written[stop:].any()
            return stop
    return None


@pytest.mark.parametrize("what", ["box3d", pytest.param("closure", marks=needs_runtime)])
def test_ctrl_c_at_lebedev_order_131_is_seen_after_as_much_work_as_at_order_17(what, slices_of_4096_cells):
    """Between two looks at pending signals a long call computed a fixed number of cells (2^18)
    whatever the quadrature; at Lebedev order 131 (5810 directions against 110 at 17) that took 50
    times longer: Ctrl-C during dodo.box3d(F, lebedev_order=131) of 300,000 cells was seen 20 s
    after the signal. The slice is now sized by the quadrature: at order 131 a call stops after a
    fiftieth of the cells it computes at order 17 (a whole number of Box3D's 32-cell blocks)."""
    base = slices_of_4096_cells
    if what == "box3d":
        call = lambda F, out: dodo.box3d(F, lebedev_order=131, threads=1, out=out)  # noqa: E731
        make_out, rows_of = dodo.Box3DResult.empty, (lambda out: out.F_box)
    else:
        closure = dodo.Closure("box3d", lebedev_order=131, threads=1, chunk_size=32)
        call = lambda F, out: closure.apply(F, out=out)  # noqa: E731
        make_out, rows_of = dodo.ClosureResult.empty, (lambda out: out.F_pred)
    done = _cells_done_before_the_interrupt(call, make_out, rows_of, 3 * base)
    assert done is not None, "the call always ended before its 5 ms timer"
    assert 0 < done < base // 8, done  # before: exactly `base` (one whole slice of 4096 cells)
    assert done % 32 == 0


def _interrupted_inside_the_compiled_call(call, compiled_name, sizes):
    """Calls call(F) on batches of `sizes` cells, each with a Ctrl-C (KeyboardInterrupt by SIGALRM)
    sent by a second thread once the profiler has seen the compiled function `compiled_name` start,
    until one call's interrupt arrives while that function runs; returns the profiler's events of
    the function for that call: ["c_call", "c_exception"] when the KeyboardInterrupt came from inside
    it (it looked at pending signals), ["c_call", "c_return"] when it came after. The thread waits
    on the start, not on a clock: it can run only once the function has let go of the GIL (its
    slices), so the signal arrives inside the call on a fast or a loaded machine alike; a batch that
    ended first (a single slice), or whose interrupt was raised in the profiler's hook before the
    function ran, goes on to the next size. (A 1 or 5 ms timer had fired before or
    after the call on a loaded machine, 1 time in 4 at load 6: fork/threads/signals probe, round one.)"""
    events = []
    started = threading.Event()
    main = threading.get_ident()

    def profile(frame, event, arg):
        if event.startswith("c_") and getattr(arg, "__name__", "") == compiled_name:
            events.append(event)
            if event == "c_call":
                started.set()

    def interrupt_once_started():
        if started.wait(timeout=600):  # a hang guard only
            signal.pthread_kill(main, signal.SIGALRM)

    def spin():  # the eval loop's checks, where a signal that came after the call is raised
        for _ in range(1000):
            pass

    call(random_states(np.random.default_rng(16), 2))  # anything made once, made before any signal
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for n in sizes:
            F = random_states(np.random.default_rng(17), n)
            events.clear()
            started.clear()
            sender = threading.Thread(target=interrupt_once_started, daemon=True)
            sender.start()
            try:
                sys.setprofile(profile)
                try:
                    call(F)
                finally:
                    sys.setprofile(None)
                    started.set()  # the sender goes on whether or not the call began
                    sender.join()
                spin()
            except KeyboardInterrupt:
                if events[1:] and "c_return" not in events:
                    return list(events)
                # ["c_call"] alone: the interrupt was raised in the profiler's hook, before the
                # function ran (the sender got the GIL there on a loaded machine); next size
        pytest.fail("every call ended before its interrupt arrived")
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_ctrl_c_ends_a_long_crossing_features_call_inside_it(slices_of_4096_cells):
    """dodo.crossing_features ran its whole batch without the GIL and without a look at pending
    signals: Ctrl-C was seen only when the call had ended (27 s for 300,000 cells at order 131).
    It now runs in slices as dodo.box3d does. Speed-free proof: the profiler sees the compiled call
    end with the KeyboardInterrupt ('c_exception'), not return first ('c_return')."""
    events = _interrupted_inside_the_compiled_call(lambda F: dodo.crossing_features(F, lebedev_order=131),
                                                   "crossing_features", (4_096, 16_384, 65_536) * 3)
    assert events == ["c_call", "c_exception"], events  # before: ["c_call"] (raised after it returned)
    # The slicing changes no bit.
    F = random_states(np.random.default_rng(13), 1000)
    dodo._core._set_interrupt_slice_cells(1024)  # slices of 160 cells at order 41
    sliced = dodo.crossing_features(F, lebedev_order=41)
    dodo._core._set_interrupt_slice_cells(1 << 20)
    whole = dodo.crossing_features(F, lebedev_order=41)
    assert np.array_equal(sliced, whole, equal_nan=True)


# --- pickling after importlib.reload, and the cache of dodo.closure --------------------------------

PICKLE_AFTER_RELOAD = """
    import copy, importlib, pickle
    import numpy as np
    import dodo, dodo._closure

    before = dodo.Closure("box3d", threads=1)
    importlib.reload(dodo._closure)  # what IPython's autoreload does to an edited module
    F = np.zeros((3, 6, 4))
    F[..., 0] = [1.0, 0.6, 0.8, 1.2, 0.5, 0.9]
    F[:, 0, 3], F[:, 3, 3] = 0.4, -0.3
    for closure in (before, dodo.Closure("box3d", threads=1), dodo._closure.Closure("box3d", threads=1)):
        again = pickle.loads(pickle.dumps(closure))
        assert isinstance(again, dodo._closure.Closure)
        assert np.array_equal(again.apply(F).F_pred, closure.apply(F).F_pred)
        assert np.array_equal(copy.deepcopy(closure).apply(F).F_pred, closure.apply(F).F_pred)
    print("pickled")
"""


def test_a_closure_made_before_importlib_reload_still_pickles():
    """After importlib.reload(dodo._closure) (IPython's autoreload), `dodo.Closure` as bound at
    import, and every closure made before, are of the earlier class object, which pickle cannot
    name: pickle.dumps (a multiprocessing pool's task) failed with "Can't pickle <class
    'dodo._closure.Closure'>: it's not the same object as dodo._closure.Closure". Also the cause
    that sent plain closures down that path: `_library_given` (added since) was missing from the
    attributes __reduce__ knows, so every plain Closure pickled as a subclass, its class by reference."""
    result = run_child(PICKLE_AFTER_RELOAD, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "pickled"


def test_a_plain_closure_pickles_without_state_of_the_parent_process():
    closure = dodo.Closure("box3d", threads=1)
    reduced = closure.__reduce__()
    assert len(reduced) == 2, reduced  # before: a third item, {'_library_given': ...} (the parent's search)
    assert reduced[1][4] is None  # no class by reference


@needs_runtime
def test_dodo_closure_follows_a_change_of_dodo_network_evaluator(monkeypatch):
    """dodo.closure's cache key left out $DODO_NETWORK_EVALUATOR, which a closure made with "auto"
    reads when it is made: set after the first call (to run ONNX Runtime's graph, or to a value
    dodo.Closure() refuses), the cached closure went on as before without a word."""
    F = random_states(np.random.default_rng(14), 20)
    monkeypatch.delenv("DODO_NETWORK_EVALUATOR", raising=False)
    first = dodo.closure(F)
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "bogus")
    with pytest.raises(ValueError, match="unknown network evaluator"):
        dodo.Closure()
    with pytest.raises(ValueError, match="unknown network evaluator"):  # before: the cached closure's answer
        dodo.closure(F)
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "onnxruntime")
    graph = dodo.closure(F)
    assert np.allclose(graph, first, rtol=0, atol=1e-6 * F[..., 0].sum(-1).max())
    monkeypatch.delenv("DODO_NETWORK_EVALUATOR")
    assert np.array_equal(dodo.closure(F), first)
    assert np.array_equal(dodo.closure(F, model="box3d"), dodo.Closure("box3d")(F))


# --- dodo.closure's first call from many threads at once -------------------------------------------

@needs_runtime
def test_threads_whose_first_dodo_closure_call_comes_at_once_share_one_closure(tmp_path, monkeypatch):
    """Eight threads calling dodo.closure for the first time at once made eight closures (eight
    model loads, eight sets of worker threads and workspaces: on a 64-core node 4,096 threads and
    ~12 GiB at once) and kept one. The cache is now filled under a lock: one closure, and every
    thread's answer is the serial one."""
    import shutil
    import threading

    from dodo import _closure
    from dodo.models import default_model_path

    model = tmp_path / "model.onnx"  # a path of its own: never in the cache yet
    shutil.copyfile(default_model_path(), model)
    F = random_states(np.random.default_rng(15), 50)
    made = []
    init = _closure.Closure.__init__

    def counting(self, *args, **kwargs):
        made.append(args[0] if args else kwargs.get("model"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(_closure.Closure, "__init__", counting)
    start = threading.Barrier(8)
    answers = [None] * 8

    def first_call(i):
        start.wait(120)
        answers[i] = dodo.closure(F, model=model)

    threads = [threading.Thread(target=first_call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(made) == 1, len(made)  # before: 8
    expected = dodo.Closure(model)(F)
    assert all(np.array_equal(answer, expected) for answer in answers)


FORK_WHILE_THE_CACHE_IS_FILLED = """
    import os, shutil, signal, sys, tempfile, threading, time
    import numpy as np
    import dodo
    from dodo.models import default_model_path

    directory = tempfile.mkdtemp()
    F = np.zeros((3, 6, 4))
    F[..., 0] = [1.0, 0.6, 0.8, 1.2, 0.5, 0.9]
    F[:, 0, 3], F[:, 3, 3] = 0.4, -0.3
    expected = dodo.Closure("box3d")(F)
    inside = threading.Event()
    stop = threading.Event()

    def fill():  # a new file each time: the thread is making a cached closure, under the lock, nearly always
        for i in range(10**6):
            if stop.is_set():
                return
            path = os.path.join(directory, f"m{i % 8}_{i}.onnx")
            shutil.copyfile(default_model_path(), path)
            dodo.closure(F, model=path)
            os.unlink(path)
            inside.set()

    filler = threading.Thread(target=fill, daemon=True)
    filler.start()
    assert inside.wait(120)
    for attempt in range(15):
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a child waiting for the parent thread's lock would be ended by SIGALRM
            os._exit(0 if np.array_equal(dodo.closure(F, model="box3d"), expected) else 3)
        _, status = os.waitpid(pid, 0)
        assert status == 0, (attempt, status)
    stop.set()
    filler.join(120)
    shutil.rmtree(directory, ignore_errors=True)
    print("forked")
"""


@needs_runtime
def test_a_fork_while_another_thread_fills_the_dodo_closure_cache_leaves_it_usable_in_the_child():
    """The cache's lock (above) is made anew in a fork child: a parent thread that held it while
    making a closure would otherwise leave the child's first dodo.closure call waiting for ever."""
    result = run_child(FORK_WHILE_THE_CACHE_IS_FILLED, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "forked"


# --- the per-cell helpers: without the GIL and interruptible ---------------------------------------

@pytest.mark.parametrize("function, compiled_name", [(dodo.invariants, "invariants"),
                                                     (dodo.comoving_density, "comoving_total_density")])
def test_invariants_and_comoving_density_release_the_gil_in_interruptible_slices(function, compiled_name):
    """dodo.comoving_density's loop kept the GIL for the whole batch (other Python threads stood
    still; README: the numerics run in dodo._core with the GIL released) and dodo.invariants ran its
    batch in one piece: neither looked at pending signals (10^8 cells: ~17 s of invariants without
    Ctrl-C). Both now run in slices without the GIL, as dodo.box3d does; results unchanged."""
    previous = dodo._core._set_interrupt_slice_cells(64)
    try:
        events = _interrupted_inside_the_compiled_call(function, compiled_name, (1 << 16, 1 << 17, 1 << 18, 1 << 19) * 3)
        assert events == ["c_call", "c_exception"], events  # before: ["c_call"] (raised after it returned)
        F = random_states(np.random.default_rng(18), 1000)
        u = np.zeros((1000, 4))
        u[:, 0], u[:, 1] = 1 / np.sqrt(1 - 0.3**2), 0.3 / np.sqrt(1 - 0.3**2)
        sliced = function(F, u)
        dodo._core._set_interrupt_slice_cells(1 << 20)
        assert np.array_equal(function(F, u), sliced)
    finally:
        dodo._core._set_interrupt_slice_cells(previous)
