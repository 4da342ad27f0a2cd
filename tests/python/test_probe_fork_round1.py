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
