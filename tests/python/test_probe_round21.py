"""Outside probe, round twenty-one (docs/reliability_python.md, section 23): concurrency and process
life. Every child runs in its own interpreter and process group with a timeout, so a hang is a
failure, never a stuck suite; nothing depends on the machine's speed (a thread signals that it is
inside its loop before the main thread acts)."""
from __future__ import annotations

import pytest

from dodo.qke.compiled import compiled_unavailable_reason
from test_runtime_reliability import run_child

needs_kernel = pytest.mark.skipif(compiled_unavailable_reason(16) is not None, reason="no compiled QKE kernel")

BOX = """
    import os, sys, threading, time
    import numpy as np
    from dodo.qke.compiled import CompiledFlavourBox
    from dodo.qke.solver import SolverConfig
    from dodo.qke.states import NSM1_EMU_1D

    box = CompiledFlavourBox(NSM1_EMU_1D[None].repeat(2, 0), np.array([4.0, 4.0]),
                             SolverConfig(backend="cpp", ncell=32, nphi_equator=8), threads={threads})
    dt, _ = box.time_steps(np.array([1e-9, 1e-9]))
"""

# The daemon thread runs loop() (which sets `inside` once in), the main thread exits past it.
START_LOOP_THEN_EXIT = """
    threading.Thread(target=loop, daemon=True).start()
    assert inside.wait(60)
    print("exiting", flush=True)
"""

# --- interpreter exit while a daemon thread steps the compiled QKE kernel --------------------------

EXIT_WHILE_STEPPING = BOX + """
    inside = threading.Event()

    def loop():
        while True:
            if "{op}" == "step":
                box.step(dt)
            elif "{op}" == "state":
                box.state
            else:
                box.state = box.state
            inside.set()

""" + START_LOOP_THEN_EXIT


@needs_kernel
@pytest.mark.parametrize("op", ["step", "state", "set_state"])
@pytest.mark.parametrize("threads", [1, 2])
def test_interpreter_exit_while_a_daemon_thread_steps_the_qke_kernel_is_clean(op, threads):
    """The QKE kernel's bindings release the GIL with pybind11's gil_scoped_release, whose
    destructor takes it back and is noexcept: a daemon thread inside a kernel call when the
    interpreter finalizes was ended by a forced unwind through that destructor, i.e.
    std::terminate: 'terminate called without an active exception', SIGABRT (exit 134), every
    time, after the program had done all its work (round seven's fix for dodo.box3d and
    Closure.apply, cpp/bindings/python/gil.hpp, was not applied to qke.cpp)."""
    for attempt in range(3):
        result = run_child(EXIT_WHILE_STEPPING.format(threads=threads, op=op), timeout=120)
        assert result.returncode == 0, (attempt, result.returncode, result.stderr[-2000:])
        assert result.stdout.strip() == "exiting"
        assert "terminate called" not in result.stderr


# --- a fork while another thread steps a QKE box -------------------------------------------------

FORK_WHILE_STEPPING = BOX + """
    reference = CompiledFlavourBox(NSM1_EMU_1D[None].repeat(2, 0), np.array([4.0, 4.0]),
                                   SolverConfig(backend="cpp", ncell=32, nphi_equator=8), threads=1)
    start = reference.state
    expected = reference.step(dt)
    inside = threading.Event()

    def loop():
        while True:
            box.step(dt)
            inside.set()

    threading.Thread(target=loop, daemon=True).start()
    assert inside.wait(60)
    for fork in range(20):
        time.sleep(0.001 * (fork % 5))
        pid = os.fork()
        if pid == 0:  # the child steps a box of its own and the one the thread was stepping
            child = CompiledFlavourBox(NSM1_EMU_1D[None].repeat(2, 0), np.array([4.0, 4.0]),
                                       SolverConfig(backend="cpp", ncell=32, nphi_equator=8), threads=1)
            child.state = start
            same = np.array_equal(child.step(dt), expected)
            try:
                box.step(dt)  # complete at the fork, or refused: never a wait for ever
            except RuntimeError as error:
                if "being stepped by another thread when the process forked" not in str(error):
                    os._exit(4)
            os._exit(0 if same else 3)
        _, status = os.waitpid(pid, 0)
        assert status == 0, (fork, status)
    print("forks done", flush=True)
"""


@needs_kernel
def test_a_fork_while_a_thread_steps_the_qke_kernel_leaves_the_child_usable():
    """The kernel holds a mutex of its own through each call (cpp/src/qke/flavour_box.cpp): a fork
    while another thread was inside a call on a box left the child's copy of that mutex locked,
    and the child's first call on that box waited for ever (1 fork in ~5 with one busy thread,
    the first with two kernel threads). Now the child's call on such a box is refused in one line
    (its state was mid-step); a box made in the child steps bit-equal to a fresh one; the exit
    guard's own lock is made anew in the child. Twenty forks; a hang fails after the timeout."""
    result = run_child(FORK_WHILE_STEPPING.format(threads=2), timeout=180)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "forks done"


# --- a count the main thread left behind does not make the exit wait for ever ---------------------

EXIT_AFTER_A_CUT_OFF_CALL = BOX + """
    import threading
    from dodo.qke import compiled

    # A KeyboardInterrupt can arrive between the guard's count and the kernel call; simulated by
    # counting a call of the main thread that never happened, then stepping on a daemon thread.
    guard = compiled._EXIT_GUARD
    with guard._condition:
        guard._in_flight[threading.get_ident()] = 1
    inside = threading.Event()

    def loop():
        while True:
            box.step(dt)
            inside.set()

""" + START_LOOP_THEN_EXIT


@needs_kernel
def test_a_call_count_left_by_an_interrupt_in_the_main_thread_does_not_hang_the_exit():
    """The exit guard waits for other threads' kernel calls only: the main thread runs atexit, so
    a count of its own is one a KeyboardInterrupt cut off (signals run in the main thread), and
    waiting for it would hang every exit after such a Ctrl-C."""
    result = run_child(EXIT_AFTER_A_CUT_OFF_CALL.format(threads=1), timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "exiting"


RAW_KERNEL_AT_EXIT = BOX + """
    raw = box._kernel._kernel  # dodo._core.QkeKernel itself, past the Python exit guard
    assert type(raw).__name__ == "QkeKernel"
    inside = threading.Event()

    def loop():
        while True:
            raw.step(dt, {threads})
            raw.get_state()
            inside.set()

""" + START_LOOP_THEN_EXIT


@needs_kernel
def test_interpreter_exit_while_a_daemon_thread_is_in_the_raw_qke_kernel_is_clean():
    """The bindings themselves (cpp/bindings/python/qke.cpp) release the GIL through gil.hpp's
    without_gil, as box3d's and the closure's do: a daemon thread inside dodo._core.QkeKernel when
    the interpreter finalizes is parked, not ended through a noexcept destructor (SIGABRT before)."""
    for attempt in range(3):
        result = run_child(RAW_KERNEL_AT_EXIT.format(threads=2), timeout=120)
        assert result.returncode == 0, (attempt, result.returncode, result.stderr[-2000:])
        assert result.stdout.strip() == "exiting"
        assert "terminate called" not in result.stderr
