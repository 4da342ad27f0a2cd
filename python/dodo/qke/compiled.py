"""The compiled QKE kernel (C++ core, ``dodo._core.QkeKernel``) behind the FastFlavourBox interface.

Same equations and numerics as the NumPy :class:`~dodo.qke.solver.FastFlavourBox` (which stays
as the test oracle and the fallback): the kernel only replaces ``step``; initial states, the
step choice (``hamiltonian_bound``), recording and reduction are the NumPy class's own code.
The state lives in the kernel; ``state`` / ``rho`` copy it out and in. Needs ``ncell`` a power
of two (the kernel's FFT); :func:`compiled_unavailable_reason` says why it cannot be used.
"""
from __future__ import annotations

import atexit
import os
import threading

import numpy as np

from .constants import SELF_INTERACTION_PER_DENSITY, SPEED_OF_LIGHT
from .solver import FastFlavourBox, SolverConfig


def _kernel_class():
    try:
        from .._core import QkeKernel
    except ImportError:
        return None
    return QkeKernel


def compiled_unavailable_reason(ncell: int) -> str | None:
    """Why the compiled kernel cannot run this resolution (None when it can)."""
    if _kernel_class() is None:
        return "the compiled core dodo._core (with QkeKernel) is not installed"
    if ncell < 2 or ncell & (ncell - 1):
        return f"ncell = {ncell} is not a power of two (the compiled kernel's FFT needs one)"
    return None


class _ExitGuard:
    """Keeps kernel calls out of the interpreter's finalization (outside probe, round twenty-one).

    A daemon thread inside a kernel call when the interpreter finalizes was ended through the
    bindings' noexcept GIL re-acquisition: ``std::terminate``, SIGABRT, after the program did all
    its work (the bindings now park such a thread themselves, gil.hpp; this guard came first and
    stays as a second line). An ``atexit`` handler (atexit runs before finalization, after the
    non-daemon threads ended) waits for the calls in flight (each one step, bounded) and holds
    back every later one: a daemon thread then waits in Python, where finalization ends it
    cleanly. The counter's lock is made anew in a fork child (a fork while another thread held it
    would leave the child's copy held for ever); the child has no calls in flight.

    Fork: the guard no longer checks for a box that another thread was inside at the fork. The
    kernel itself does (cpp/src/qke/flavour_box.cpp, pthread_atfork; reliability_cpp.md round
    thirteen) and refuses every call on such a box in the child, exactly, also when
    ``dodo._core.QkeKernel`` is called directly; the guard's count refused, besides, a box whose
    call had ended in C++ but not yet been counted back here.
    """

    def __init__(self) -> None:
        self._reset()
        atexit.register(self.drain)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._in_flight: dict[int, int] = {}  # calls inside the kernel, by thread
        self._exiting = False

    @staticmethod
    def _others(counts: dict) -> int:
        # The calling thread is never inside a kernel call while it runs this: a count of its own
        # can only be one that a KeyboardInterrupt (signals run in the main thread, which also
        # runs atexit and usually forks) cut off between the count and the call. Ignoring it,
        # the exit cannot wait for ever on a call that never happened.
        me = threading.get_ident()
        return sum(count for thread, count in counts.items() if thread != me)

    def drain(self) -> None:
        with self._condition:
            self._exiting = True
            while self._others(self._in_flight):
                self._condition.wait()

    def call(self, method, *args):
        condition = self._condition
        me = threading.get_ident()
        with condition:
            while self._exiting:  # the interpreter is exiting: never enter the kernel again
                condition.wait()
            self._in_flight[me] = self._in_flight.get(me, 0) + 1
        try:
            return method(*args)
        finally:
            with condition:
                self._in_flight[me] -= 1
                if not self._in_flight[me]:
                    del self._in_flight[me]
                condition.notify_all()  # drain (if waiting) counts again


_EXIT_GUARD = _ExitGuard()


class _GuardedKernel:
    """A ``dodo._core.QkeKernel`` whose GIL-releasing calls go through :data:`_EXIT_GUARD`."""

    def __init__(self, kernel) -> None:
        self._kernel = kernel

    def __getattr__(self, name):  # nsim, ncell, ndir: no GIL released
        return getattr(self._kernel, name)

    def set_state(self, packed):
        return _EXIT_GUARD.call(self._kernel.set_state, packed)

    def get_state(self):
        return _EXIT_GUARD.call(self._kernel.get_state)

    def moments(self):
        return _EXIT_GUARD.call(self._kernel.moments)

    def step(self, dt, threads=1):
        return _EXIT_GUARD.call(self._kernel.step, dt, threads)


class CompiledFlavourBox(FastFlavourBox):
    """A batch of periodic 1D boxes stepped by the C++ kernel; interface of :class:`FastFlavourBox`."""

    def __init__(self, four_flux: np.ndarray, box_length_cm: np.ndarray, config: SolverConfig,
                 directions: np.ndarray | None = None, threads: int = 1):
        """threads: step the simulations of the batch on up to this many threads (same results)."""
        reason = compiled_unavailable_reason(config.ncell)
        if reason is not None:
            raise ValueError(f"the compiled QKE kernel cannot run: {reason}; use backend='numpy'")
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
        self.threads = int(min(threads, 1024))
        self._kernel = None
        super().__init__(four_flux, box_length_cm, config, directions)  # leaves the initial state in _pending
        self._kernel = self._make_kernel(coupling=True)
        self._kernel.set_state(self._pending)
        del self._pending

    def _make_kernel(self, coupling: bool):
        moment_filter = None if self._moment_filter is None else np.ascontiguousarray(self._moment_filter, float)
        return _GuardedKernel(_kernel_class()(np.ascontiguousarray(self.directions, float), self.config.ncell,
                                              np.ascontiguousarray(self.cell_size_cm, float),
                                              np.ascontiguousarray(self._state_filter, float), moment_filter,
                                              SELF_INTERACTION_PER_DENSITY, SPEED_OF_LIGHT, coupling))

    @property
    def state(self) -> np.ndarray:
        """Packed state ``[6, nsim, 2, ncell, ndir]`` (a copy; diagonal entries real)."""
        return self._pending if self._kernel is None else self._kernel.get_state()

    @state.setter
    def state(self, packed: np.ndarray) -> None:
        packed = np.ascontiguousarray(packed, dtype=complex)
        if self._kernel is None:
            self._pending = packed
        else:
            self._kernel.set_state(packed)

    def disable_coupling(self) -> None:
        state = self.state
        super().disable_coupling()
        self._kernel = self._make_kernel(coupling=False)
        self._kernel.set_state(state)

    def step(self, dt: np.ndarray) -> np.ndarray:
        """One Lawson-RK4 step of size dt ``[nsim]`` s (C++); returns the packed species moments at the start."""
        dt = np.ascontiguousarray(np.broadcast_to(np.asarray(dt, dtype=float), self.time.shape))
        moments = self._kernel.step(dt, self.threads)
        self.time = self.time + dt
        return moments
