"""Outside probe "fork, threads and signals", round one (docs/reliability_python.md, section 66):
dodo.Closure / dodo.closure / dodo.box3d under fork, threads and signal handlers. Each program runs
in its own interpreter and process group with a generous timeout (run_child) that only a hang
reaches; no assertion depends on the machine's speed."""
from __future__ import annotations

import pytest

from dodo._closure import runtime_available
from test_runtime_reliability import run_child

needs_runtime = pytest.mark.skipif(not runtime_available(), reason="closure runtime not built")


# --- a signal handler whose call comes while its own thread holds the claims' lock ----------------

HANDLER_CALLS_INSIDE_A_CLAIM = """
    import signal, threading
    import numpy as np
    import dodo
    from dodo import _box3d

    F = np.zeros((3, 6, 4))
    F[..., 3] = 1.0
    F[:, 0, 2], F[:, 1, 2] = 0.3, -0.3  # an ELN crossing: Box3D mixes
    {setup}
    expected = call(F).copy()
    handled, raised = [], []

    def on_alarm(signum, frame):  # a simulation's checkpoint: it evaluates the same cells
        handled.append(np.array_equal(call(F), expected))

    signal.signal(signal.SIGALRM, on_alarm)
    checked = _box3d._overlap

    def overlap_with_a_signal(first, second):
        # Runs under the claims' lock (another call's out= is being compared): the signal comes
        # here, and its handler runs in this thread before the lock is let go.
        if not raised:
            raised.append(True)
            signal.raise_signal(signal.SIGALRM)
        return checked(first, second)

    _box3d._overlap = overlap_with_a_signal
    # Another thread's call is running, writing its own out= (so that this call's claim compares
    # its arrays with that one's, under the lock).
    started, finish = threading.Event(), threading.Event()

    def other_call():
        with _box3d._claim({}, {result_type}.empty(5)):
            started.set()
            finish.wait(100)

    other = threading.Thread(target=other_call, daemon=True)
    other.start()
    started.wait(100)
    same = np.array_equal(call(F), expected)
    finish.set()
    other.join()
    print("handled", handled, "same", same, flush=True)
"""


@needs_runtime
@pytest.mark.parametrize("setup, result_type", [
    ('closure = dodo.Closure("box3d", threads=2)\n    call = lambda F: closure.apply(F).F_pred', "dodo.ClosureResult"),
    ("call = lambda F: dodo.box3d(F).F_box", "dodo.Box3DResult"),
], ids=["Closure.apply", "dodo.box3d"])
def test_a_signal_handler_calling_dodo_while_its_thread_holds_the_claims_lock_does_not_hang(setup, result_type):
    """A SIGALRM (or SIGUSR1 checkpoint) handler calling Closure.apply or dodo.box3d runs in the main
    thread between two bytecodes: when those were inside the main thread's own call's claim of its
    arrays (_box3d._claim, under a plain threading.Lock), the handler's call waited for ever for its
    own thread to let the lock go (a timer of 3 ms on a loop of 1-cell calls: at once). The lock is
    re-entrant; the handler's result and the interrupted call's are the serial ones."""
    script = HANDLER_CALLS_INSIDE_A_CLAIM.replace("{setup}", setup).replace("{result_type}", result_type)
    result = run_child(script, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "handled [True] same True" in result.stdout, result.stdout[-2000:]


TIMER_STORM = """
    import signal, threading
    import numpy as np
    import dodo

    F = np.zeros((1, 6, 4))
    F[..., 3] = 1.0
    F[:, 0, 2], F[:, 1, 2] = 0.3, -0.3
    closure = dodo.Closure("box3d", threads=1)
    expected = closure.apply(F).F_pred.copy()
    box = dodo.box3d(F).F_box.copy()
    handled, wrong = [0], [0]

    def on_alarm(signum, frame):
        wrong[0] += not np.array_equal(closure.apply(F).F_pred, expected)
        wrong[0] += not np.array_equal(dodo.box3d(F).F_box, box)
        handled[0] += 1

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.003, 0.003)
    for _ in range(40000):
        wrong[0] += not np.array_equal(closure.apply(F).F_pred, expected)
        if handled[0] >= 200:
            break
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    print("wrong", wrong[0], "handled", handled[0] > 0, flush=True)
"""


@needs_runtime
def test_a_timer_whose_handler_calls_the_closure_during_a_loop_of_small_calls():
    """The same at random moments: a 3 ms interval timer whose handler calls Closure.apply and
    dodo.box3d while the main thread loops on 1-cell calls (before the fix: a hang, or a
    RecursionError as each new tick's handler waited inside the one before)."""
    result = run_child(TIMER_STORM, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrong 0 handled True" in result.stdout, result.stdout[-2000:]


# --- a signal handler's call that writes (or reads) what the interrupted call writes ---------------

HANDLER_SHARES_THE_INTERRUPTED_CALLS_ARRAYS = """
    import signal, sys, threading, time
    import numpy as np
    import dodo

    sys.path.insert(0, {tests!r})
    from conftest import random_states

    n = 6000
    F = random_states(np.random.default_rng(5), n)
    other_F = 1.7 * F
    # Lebedev order 131: slices of ~32 cells and a call of many slices, so that the handler comes
    # between two of them (an attempt where it came after the call decides nothing and is repeated).
    closure = dodo.Closure("box3d", threads=1, chunk_size=32, lebedev_order=131)
    {setup}
    expected = run(F, fresh()).copy()
    main = threading.main_thread().ident

    for attempt in range(5):
        out = fresh()
        for array in out:
            array[...] = 0
        seen = []

        def on_alarm(signum, frame):  # a checkpoint that reuses the simulation's buffer
            seen.append(bool(np.all(first(out)[-1] == 0)))  # the interrupted call had cells left to write
            handler_call(out)

        signal.signal(signal.SIGALRM, on_alarm)

        def poke():  # once the interrupted call has written its first cells
            while not np.any(first(out)[:32] != 0):
                time.sleep(0.0005)
            signal.pthread_kill(main, signal.SIGALRM)

        poker = threading.Thread(target=poke, daemon=True)
        poker.start()
        try:
            got = run(F, out)
            verdict = "finished " + str(np.array_equal(got, expected))
        except ValueError as error:
            verdict = "refused " + str("of the call that this one interrupts" in str(error))
        poker.join(100)
        if seen and seen[0]:
            break
    print("inside", bool(seen and seen[0]), verdict, flush=True)
    # the next calls work, and give the serial bits
    print("after", np.array_equal(run(F, fresh()), expected), flush=True)
"""

_SETUPS = {
    "Closure.apply writes its out": (
        "fresh = lambda: dodo.ClosureResult.empty((n,))\n"
        "    run = lambda F, out: closure.apply(F, out=out).F_pred\n"
        "    handler_call = lambda out: closure.apply(other_F[:8], out=dodo.ClosureResult(*(a[:8] for a in out)))",
        "first = lambda result: result.F_pred"),
    "dodo.box3d writes its out": (
        "fresh = lambda: dodo.Box3DResult.empty((n,))\n"
        "    run = lambda F, out: dodo.box3d(F, out=out, threads=1, lebedev_order=131).F_box\n"
        "    handler_call = lambda out: dodo.box3d(other_F[:8], out=dodo.Box3DResult(*(a[:8] for a in out)))",
        "first = lambda result: result.F_box"),
    "a handler's call reads the half-written out": (
        "fresh = lambda: dodo.ClosureResult.empty((n,))\n"
        "    run = lambda F, out: closure.apply(F, out=out).F_pred\n"
        "    handler_call = lambda out: closure.apply(out.F_pred)",
        "first = lambda result: result.F_pred"),
}


@needs_runtime
@pytest.mark.parametrize("case", list(_SETUPS))
def test_a_signal_handlers_call_never_mixes_into_the_call_it_interrupted(case):
    """A signal handler runs between two slices of a long call of its thread, which goes on writing
    its out when the handler returns. A handler's call that wrote the interrupted call's out (or read
    it half written) was let through (claims of the same thread were never compared): the
    interrupted call's result held 8 cells of the handler's inputs, without a word. Now the
    handler's call is refused in one line naming the interrupted call; the next calls give the
    serial bits."""
    import os

    setup, first = _SETUPS[case]
    script = HANDLER_SHARES_THE_INTERRUPTED_CALLS_ARRAYS.replace("{setup}", setup + "\n    " + first).replace(
        "{tests!r}", repr(os.path.dirname(os.path.abspath(__file__))))
    result = run_child(script, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    if "inside False" in result.stdout:  # five times the handler came after the call: nothing decided
        pytest.skip("the signal never came inside the call (an extremely loaded machine)")
    assert "inside True refused True" in result.stdout, result.stdout[-2000:]  # before: "finished False" (mixed)
    assert "after True" in result.stdout, result.stdout[-2000:]


NESTED_CALL_WITH_ITS_OWN_ARRAYS = """
    import signal, sys, threading, time
    import numpy as np
    import dodo

    sys.path.insert(0, {tests!r})
    from conftest import random_states

    dodo._core._set_interrupt_slice_cells(1024)
    n = 60000
    F = random_states(np.random.default_rng(6), n)
    closure = dodo.Closure("box3d", threads=1, chunk_size=64)
    expected = closure.apply(F).F_pred.copy()
    small = closure.apply(F[:8]).F_pred.copy()
    out, own = dodo.ClosureResult.empty((n,)), dodo.ClosureResult.empty((8,))
    out.F_pred[...] = 0
    handled = []

    def on_alarm(signum, frame):
        handled.append(np.array_equal(closure.apply(F[:8], out=own).F_pred, small) and
                       np.array_equal(closure.apply(F[:8]).F_pred, small))

    signal.signal(signal.SIGALRM, on_alarm)
    main = threading.main_thread().ident

    def poke():
        while not np.any(out.F_pred[:1024] != 0):
            time.sleep(0.0005)
        signal.pthread_kill(main, signal.SIGALRM)

    threading.Thread(target=poke, daemon=True).start()
    same = np.array_equal(closure.apply(F, out=out).F_pred, expected)
    print("handled", handled, "same", same, flush=True)
"""


@needs_runtime
def test_a_signal_handlers_call_with_its_own_arrays_runs_inside_a_long_call():
    """Guard of the fix above: a handler's call on arrays of its own (reading the interrupted call's
    inputs, which no one writes) runs, and both results are the serial bits."""
    import os

    script = NESTED_CALL_WITH_ITS_OWN_ARRAYS.replace("{tests!r}", repr(os.path.dirname(os.path.abspath(__file__))))
    result = run_child(script, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "handled [True] same True" in result.stdout, result.stdout[-2000:]


@needs_runtime
def test_a_call_keeps_no_reference_to_its_arrays_once_it_returns_or_is_refused():
    """Guard of the fix above (whose claim holds the caller's frame): a finished or refused call leaves
    no reference to its arrays behind, so a time loop's arrays are freed when dropped, not at the
    next collection of reference cycles (collection is off here)."""
    import gc
    import sys
    import threading

    import numpy as np

    import dodo
    from dodo import _box3d

    F = np.zeros((4, 6, 4))
    F[:, :, 0] = 1.0
    closure = dodo.Closure("box3d", threads=1)
    out = dodo.ClosureResult.empty((4,))
    before = [sys.getrefcount(array) for array in (F, *out)]
    collecting = gc.isenabled()
    gc.disable()
    try:
        closure.apply(F, out=out)
        dodo.box3d(F)
        held, release = threading.Event(), threading.Event()

        def other_call():  # another thread's call writing `out`: this thread's call is refused
            with _box3d._claim({}, out):
                held.set()
                release.wait(100)

        other = threading.Thread(target=other_call)
        other.start()
        held.wait(100)
        with pytest.raises(ValueError, match="another call running now"):
            closure.apply(F, out=out)
        release.set()
        other.join(100)
        assert [sys.getrefcount(array) for array in (F, *out)] == before
        assert _box3d._running_calls == []
    finally:
        if collecting:
            gc.enable()


# --- fork while another thread holds a lock of dodo's, or imports for dodo -------------------------

def _wait_for_child_script(child_code: str) -> str:
    """The parent's part of a forking program: fork, run child_code in the child (which exits with
    its status), wait for it with a hang guard, print the outcome."""
    return child_code + """
    began = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child", os.waitstatus_to_exitcode(status), flush=True)
            break
        if time.monotonic() - began > 60:  # only a hang reaches it
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            print("child hung", flush=True)
            break
        time.sleep(0.01)
"""


AT_FORK_HANDLER_REGISTERED_BEFORE_DODO = _wait_for_child_script("""
    import os, signal, threading, time
    made_in_child = []

    def warm_up_in_child():  # a framework's at-fork handler, registered before dodo was imported
        import dodo
        made_in_child.append(dodo.closure(F, model="box3d"))

    os.register_at_fork(after_in_child=warm_up_in_child)
    import numpy as np
    import dodo
    from dodo import _closure

    F = np.zeros((3, 6, 4))
    F[:, :, 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    expected = dodo.Closure("box3d").apply(F).F_pred
    loading, loaded = threading.Event(), threading.Event()

    class SlowToLoad(_closure.Closure):  # a large package on a slow file system
        def __init__(self, *args, **kwargs):
            loading.set()
            loaded.wait(100)
            super().__init__(*args, **kwargs)

    _closure.Closure = SlowToLoad
    first = threading.Thread(target=lambda: dodo.closure(F, model="box3d"))
    first.start()  # holds dodo.closure's cache lock while it loads
    loading.wait(100)
    threading.Timer(1.0, loaded.set).start()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if made_in_child and np.array_equal(made_in_child[0], expected) else 3)
""")


def test_an_at_fork_handler_registered_before_dodo_can_use_dodo_closure_in_the_child():
    """os.register_at_fork runs the after_in_child handlers in the order registered: a handler of a
    framework imported before dodo runs before dodo's own, which made the child's cache lock anew.
    A fork while another thread made the first dodo.closure (holding the lock) gave that handler the
    lock copied held: the child waited for ever (7 forks in 20 with a real first load). A fork now
    waits for the closure being made and holds the lock across itself."""
    result = run_child(AT_FORK_HANDLER_REGISTERED_BEFORE_DODO, timeout=120)
    assert "child 0" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]


FORK_WHILE_A_THREADS_FIRST_CALL_IMPORTS = _wait_for_child_script("""
    import importlib.abc, os, signal, sys, threading, time
    import numpy as np
    import dodo

    importing, imported = threading.Event(), threading.Event()

    class SlowImports(importlib.abc.MetaPathFinder):  # a module import that takes its time (a slow disk)
        def find_spec(self, name, path=None, target=None):
            if threading.current_thread() is not threading.main_thread():
                importing.set()
                imported.wait(100)
            return None

    sys.meta_path.insert(0, SlowImports())
    F = np.zeros((3, 6, 4))
    F[:, :, 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    first = threading.Thread(target=lambda: dodo.box3d(F))  # this thread's first dodo call
    first.start()
    importing.wait(5)  # set only if the call imports a module (it waits there, holding its lock)
    threading.Timer(1.0, imported.set).start()
    pid = os.fork()
    if pid == 0:
        sys.meta_path.pop(0)
        ok = np.array_equal(dodo.box3d(F).F_box, dodo.box3d(F.copy()).F_box)
        os._exit(0 if ok else 3)
""")


def test_a_fork_while_another_threads_first_call_runs_leaves_dodo_usable_in_the_child():
    """NumPy 2 imports numpy.ma on first use of np.ma, which every dodo call touches (masked inputs
    are refused): a fork while another thread's first call was importing it copied the import's
    module lock held (Python does not reset module locks in a child), and the child's first dodo
    call waited for ever. dodo imports numpy.ma when it is imported; its calls import nothing."""
    result = run_child(FORK_WHILE_A_THREADS_FIRST_CALL_IMPORTS, timeout=120)
    assert "child 0" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]


AT_FORK_HANDLER_WHILE_A_CLAIM_IS_CHECKED = _wait_for_child_script("""
    import os, signal, threading, time
    made_in_child = []

    def warm_up_in_child():  # registered before dodo was imported: runs before dodo's own handler
        import dodo
        made_in_child.append(dodo.box3d(F).F_box)

    os.register_at_fork(after_in_child=warm_up_in_child)
    import numpy as np
    import dodo
    from dodo import _box3d

    F = np.zeros((3, 6, 4))
    F[:, :, 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    expected = dodo.box3d(F).F_box
    checking, checked = threading.Event(), threading.Event()
    compare = _box3d._overlap

    def slow_overlap(first, second):  # another thread's claim, compared under the claims' lock
        if threading.current_thread() is not threading.main_thread():
            checking.set()
            checked.wait(100)
        return compare(first, second)

    _box3d._overlap = slow_overlap
    out = dodo.Box3DResult.empty((3,))
    held, release = threading.Event(), threading.Event()

    def writer():  # a call under way that writes out
        with _box3d._claim({}, out):
            held.set()
            release.wait(100)

    threading.Thread(target=writer, daemon=True).start()
    held.wait(100)
    threading.Thread(target=lambda: _box3d._claim({"F_init": out.F_box}).__enter__(), daemon=True).start()
    checking.wait(100)
    threading.Timer(1.0, checked.set).start()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if made_in_child and np.array_equal(made_in_child[0], expected) else 3)
    release.set()
""")


def test_an_at_fork_handler_registered_before_dodo_can_call_dodo_while_a_claim_was_being_checked():
    """The same for the lock of the calls' claims on their arrays (held while a call compares its
    arrays with those of the calls running): a fork waits for it and holds it across itself."""
    result = run_child(AT_FORK_HANDLER_WHILE_A_CLAIM_IS_CHECKED, timeout=120)
    assert "child 0" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]


def test_a_claim_left_by_a_ctrl_c_in_its_exit_is_dropped_by_its_threads_next_call():
    """A Ctrl-C that comes at the first line of a claim's __exit__ (1 in ~300 Ctrl-Cs of a loop of
    `apply(F, out=out)` calls) leaves the call's claim behind, tagged with a thread that lives on: every
    later call of another thread on that out (a worker handed the buffer) was refused as clashing
    with "another call running now". The thread's next call (any) drops it: its frame is gone."""
    import threading

    import numpy as np

    import dodo
    from dodo import _box3d

    F = np.zeros((4, 6, 4))
    F[:, :, 0] = 1.0
    out = dodo.Box3DResult.empty((4,))
    expected = dodo.box3d(F)

    def call_interrupted_in_its_exit():
        claim = _box3d._claim({"F_init": F}, out)
        claim.__enter__()
        claim.computing = True
        # KeyboardInterrupt here, before __exit__ removed the claim

    call_interrupted_in_its_exit()
    dodo.invariants(F[:1])  # this thread's next call, on other arrays
    done: list = []
    worker = threading.Thread(target=lambda: done.append(dodo.box3d(F, out=out)))
    worker.start()
    worker.join(100)
    assert done and all(np.array_equal(a, b) for a, b in zip(done[0], expected))
    assert _box3d._running_calls == []


FORK_WHILE_A_LOAD_NEVER_ENDS = _wait_for_child_script("""
    import os, signal, threading, time
    import numpy as np
    import dodo
    from dodo import _closure

    F = np.zeros((3, 6, 4))
    F[:, :, 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    expected = dodo.box3d(F).F_box
    loading, never = threading.Event(), threading.Event()

    class NeverLoads(_closure.Closure):  # a model on a hung network file system
        def __init__(self, *args, **kwargs):
            loading.set()
            never.wait()

    _closure.Closure = NeverLoads
    _closure._FORK_WAIT_FOR_A_LOAD_S = 0.5  # the bound, shortened for the test (30 s)
    threading.Thread(target=lambda: dodo.closure(F, model="box3d"), daemon=True).start()
    loading.wait(100)
    pid = os.fork()  # waits for the load at most the bound, then forks as before
    if pid == 0:
        os._exit(0 if np.array_equal(dodo.box3d(F).F_box, expected) else 3)
""")


def test_a_fork_does_not_wait_for_ever_for_a_closure_load_that_never_ends():
    """Guard of the fork's wait for a closure being made (above): it is bounded, so a load that never
    ends (a model on a hung file system) does not stop every fork of the process."""
    result = run_child(FORK_WHILE_A_LOAD_NEVER_ENDS, timeout=120)
    assert "child 0" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
