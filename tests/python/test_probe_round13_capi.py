"""Outside probe of the C, C++ and Fortran interfaces, round thirteen (docs/reliability_cpp.md,
"Round thirteen"), and the QKE kernel's fork safety left from round twenty-one (docs/reliability_python.md,
section 23). Each test failed on the code as it was before its fix."""
from __future__ import annotations

import pytest

from dodo.qke.compiled import compiled_unavailable_reason
from test_runtime_reliability import run_child

needs_kernel = pytest.mark.skipif(compiled_unavailable_reason(16) is not None, reason="no compiled QKE kernel")


# --- a fork while another thread is inside the raw QKE kernel ---------------------------------------

RAW_KERNEL_FORK = """
    import os, signal, threading
    import numpy as np
    from dodo.qke.compiled import CompiledFlavourBox
    from dodo.qke.solver import SolverConfig
    from dodo.qke.states import NSM1_EMU_1D

    def make():
        return CompiledFlavourBox(NSM1_EMU_1D[None].repeat(4, 0), np.full(4, 4.0),
                                  SolverConfig(backend="cpp", ncell=32, nphi_equator=8), threads=1)

    box = make()
    dt, _ = box.time_steps(np.full(4, 1e-9))
    start = box.state
    expected = make().step(dt)
    raw = box._kernel._kernel  # dodo._core.QkeKernel itself: no Python guard on the way
    assert type(raw).__name__ == "QkeKernel"
    inside = threading.Event()

    def loop():
        while True:
            raw.{op}
            inside.set()

    threading.Thread(target=loop, daemon=True).start()
    assert inside.wait(60)
    refused = complete = 0
    for fork in range(400):
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a child waiting for ever ends by SIGALRM, not the test's timeout
            child = make()  # a kernel made in the child works and gives the parent's numbers
            child.state = start
            if not np.array_equal(child.step(dt), expected):
                os._exit(3)
            try:
                raw.step(dt, 1)  # complete at the fork, or refused; never a wait for ever
                raw.get_state()
            except RuntimeError as error:
                message = str(error)
                if "another thread when the process forked" not in message or "make" not in message:
                    os._exit(4)
                try:  # refused for good, every call, and still not a wait
                    raw.get_state()
                except RuntimeError:
                    os._exit(10)
                os._exit(5)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), (fork, "child killed by signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else status)
        code = os.WEXITSTATUS(status)
        assert code in (0, 10), (fork, code)
        refused += code == 10
        complete += code == 0
        if refused >= 3:
            break
    assert refused >= 1, ("no fork caught the kernel busy", complete)
    print("forks done", refused, flush=True)
"""


@needs_kernel
@pytest.mark.parametrize("op", ["step(dt, 2)", "step(dt, 1)", "get_state()", "set_state(start)"])
def test_a_fork_while_a_thread_is_inside_the_raw_qke_kernel_never_leaves_the_child_waiting(op):
    """The kernel's own mutex (cpp/src/qke/flavour_box.cpp) was not fork-aware: a fork while another
    thread was inside a call copied it held, and the child's call on that kernel waited for ever on a
    lock whose holder does not exist there. Only the Python guard in dodo/qke/compiled.py refused such
    a call; dodo._core.QkeKernel called directly hung (the child killed by its alarm). Now the kernel
    itself, through pthread_atfork, marks a kernel busy at the fork and refuses every call on it in the
    child with a message that says why and what to do; a kernel made in the child works. The loop
    forks until three children caught the kernel busy (most forks do: the thread spends its time
    inside the kernel without the GIL)."""
    result = run_child(RAW_KERNEL_FORK.replace("{op}", op), timeout=300)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stdout.startswith("forks done"), result.stdout
