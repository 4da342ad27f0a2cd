"""Public Box3D, invariants and N_tot: input checks here, the physics in the C++ core."""
from __future__ import annotations

import decimal
import functools
import io
import math
import numbers
import operator
import os
import sys
import threading
import types
from collections.abc import Iterator, ValuesView
from typing import Any, Literal, NamedTuple, Optional, Union

import numpy as np
# Imported now, not by the first call: NumPy 2 imports numpy.ma on first use of np.ma (every call checks
# for masked arrays), and a fork while another thread's first call was importing it copied the
# import's module lock held: the child's first call waited for ever (outside probe "fork, threads and
# signals", round one; Python does not reset module locks in a fork child).
import numpy.ma  # noqa: F401

from . import _core
from ._units import _plain_numbers
from ._shown import _shown_number
from ._hints import Float64Array, Integer, Real, RealArrayLike, explain_type_names
from .conventions import (
    _extension_real_dtype,
    MAX_THREADS,
    N_COMPONENTS,
    N_CROSSING_FEATURES,
    N_SPECIES,
    VELOCITY_NORM_TOLERANCE,
    VELOCITY_NORM_TOLERANCE_CAP,
)

# The compiled core's first array argument makes pybind11 import numpy to find NumPy's C API. Made
# then by a __del__ run at interpreter exit (a driver object flushing its last step), that import
# failed: "ImportError: sys.meta_path is None, Python is likely shutting down" (outside probe, Python
# round sixty-five). Found now, with an empty batch.
_core.comoving_total_density(np.zeros((0, N_SPECIES, N_COMPONENTS)), None)

DEFAULT_LEBEDEV_ORDER = 17
DEFAULT_Z_METHOD = "exact"
DEFAULT_MAX_FLUX_FACTOR = 0.98


def _compared_as_results(cls: type) -> type:
    """Gives a result class (Box3DResult, ClosureResult) its ==, != and the refusal of <, <=, >, >=
    (_result_equality, _result_order), set on the class as typing.NamedTuple sets a body's methods."""
    setattr(cls, "__eq__", lambda self, other: _result_equality(self, other))

    def not_equal(self, other):
        equal = _result_equality(self, other)
        return equal if equal is NotImplemented else not equal

    setattr(cls, "__ne__", not_equal)
    for name, symbol in (("__lt__", "<"), ("__le__", "<="), ("__gt__", ">"), ("__ge__", ">=")):
        setattr(cls, name, lambda self, other, symbol=symbol: _result_order(self, other, symbol))
    return cls


@_compared_as_results
class Box3DResult(NamedTuple):
    """Box3D of a batch of cells; every array has the batch shape of the input."""

    # status (uint32) hinted as an array of any dtype: Box3DResult(*(array[a:b] for array in result)) passes.
    F_box: Float64Array
    growth_over_ntot: Float64Array
    growth_rate: Float64Array
    status: np.ndarray

    @classmethod
    def empty(cls, batch_shape: Union[Integer, tuple[Integer, ...]] = ()) -> Box3DResult:
        """Unfilled arrays for ``dodo.box3d(..., out=)`` on cells of batch shape ``batch_shape``
        (F_init's shape without its trailing (6, 4))."""
        return _empty_result(cls, _BOX3D_OUTPUTS, batch_shape)

    def __reduce_ex__(self, protocol):
        # A result made before an importlib.reload of this module (IPython's autoreload) is of the
        # earlier class, which pickle cannot name: it is pickled as the class defined now.
        return _reduce_result(self, Box3DResult, protocol)


def _document_fields(result_type: type, meanings: dict) -> None:
    """Each field's meaning and units as its own docstring: help(dodo.ClosureResult) and IPython's
    ``ClosureResult.growth_rate?`` said "Alias for field number 3" of every field, their units being
    source comments alone (outside probe, Python round sixty-five)."""
    for name, meaning in meanings.items():
        getattr(result_type, name).__doc__ = meaning


_document_fields(Box3DResult, {
    "F_box": "(..., 6, 4) float64 four-fluxes after the instability, lab frame",
    "growth_over_ntot": "(...) growth-rate proxy: max over crossing pairs of sqrt(I+ I-), units of N_tot",
    "growth_rate": "(...) the proxy in s^-1, comoving frame, for densities in cm^-3",
    "status": "(...) uint32 bits of dodo.CellStatus (dodo.describe_status(status[i]) names them)"})


# Per output of a result: (trailing shape after the batch shape, dtype).
_BOX3D_OUTPUTS = {"F_box": ((N_SPECIES, N_COMPONENTS), np.float64), "growth_over_ntot": ((), np.float64),
                  "growth_rate": ((), np.float64), "status": ((), np.uint32)}


def _result_equality(result, other):
    """``result == other`` for a result (a NamedTuple of arrays). Tuple equality asks each pair of
    arrays for one truth value, and NumPy said `The truth value of an array with more than one element
    is ambiguous. Use a.any() or a.all()` (`... of an empty array ...` for 0 cells) of a comparison the
    user wrote between two results (outside probe, round forty-five): now a TypeError saying how to
    compare them. A result equals itself; anything but a tuple is not equal (None, numbers)."""
    if other is result:
        return True
    if not isinstance(other, tuple):
        return NotImplemented
    raise TypeError(f"dodo.{type(result).__name__} holds NumPy arrays, which == compares element by element, "
                    "giving no single answer: compare the fields, e.g. all(np.array_equal(a, b) for a, b in "
                    "zip(r1, r2)) (equal_nan=True where NaN may appear), or a.tobytes() == b.tobytes() for the same "
                    "bits")


def _result_order(result, other, operator: str):
    """``result < other`` (also <=, >, >=) for a result. Tuple ordering compares the first pair of arrays
    element by element and asks for one truth value: NumPy's `The truth value of an array with more than
    one element is ambiguous` with no way on (outside probe, Python rounds sixty and sixty-two), or, for
    a result compared with itself or one of one cell, an answer from the first differing field that
    means nothing. Results have no order: a TypeError saying what to compare. Anything but a tuple:
    NotImplemented, so Python's own `'<' not supported` stays."""
    if not isinstance(other, tuple):
        return NotImplemented
    raise TypeError(f"dodo.{type(result).__name__} objects have no order ({operator} between two results): "
                    "compare a field element by element, e.g. r1.growth_rate < r2.growth_rate (a boolean array "
                    "per cell), or np.all(...) of it for one answer")


def _reduce_result(result, current: type, protocol):
    """How a result pickles (and copies). One made before an ``importlib.reload`` of its module
    (IPython's autoreload, a notebook re-running its imports) is of the earlier class, which pickle
    cannot name: ``Can't pickle <class 'dodo._box3d.Box3DResult'>: it's not the same object as
    dodo._box3d.Box3DResult`` (outside probe, round forty-five). Such a result pickles as the class
    its module defines now (``current``, looked up when called); the current class pickles as before.
    Pickle names a class by the module that ``sys.modules`` holds now: after that entry was deleted
    and dodo imported again (a notebook's ``del sys.modules[name]`` loop to reimport a package), the
    module that made ``current`` is no longer it, and results made before failed the same way (outside
    probe, Python round sixty-five): the class of the module imported now is taken."""
    current = _class_named_now(current)
    if type(result) is current or not _is_result_class(type(result), current):
        return tuple.__reduce_ex__(result, protocol)
    return (current, tuple(result))


def _class_named_now(cls: type) -> type:
    """The class that pickle finds under ``cls``'s module and name now (the module in ``sys.modules``,
    which another import of dodo may have replaced), or ``cls`` where there is none of that name."""
    found = getattr(sys.modules.get(cls.__module__), cls.__qualname__, None)
    return found if isinstance(found, type) else cls


def _is_result_class(cls: type, result_type: Any) -> bool:
    """Whether ``cls`` is ``result_type`` itself, or the same result class as its module defined it
    before an ``importlib.reload``: same module, name and fields."""
    return cls is result_type or (cls.__module__ == result_type.__module__ and cls.__qualname__ ==
                                  result_type.__qualname__ and getattr(cls, "_fields", None) == result_type._fields)


#: The arrays that the calls running now read and write: per call, ([(name, array, written)], its thread,
#: the caller's frame, its _claim).
_running_calls: list[tuple[list[tuple[str, np.ndarray, bool]], threading.Thread, Any, _claim]] = []
#: Re-entrant: a signal handler (SIGALRM, a simulation's checkpoint on SIGUSR1) that calls dodo.box3d or
#: Closure.apply runs in the main thread between two bytecodes, possibly while that thread holds this
#: lock in its own call's claim; with a plain Lock the handler's call waited for ever for its own thread
#: (outside probe "fork, threads and signals", round one). The list is then changed by the handler's
#: call in the middle of the interrupted one: every change below is made from a snapshot (one C call)
#: in one assignment, so that neither loses the other's entries.
_running_lock = threading.RLock()


def _new_running_lock() -> None:
    """A fork child: the parent's other threads, whose calls were running, do not exist in it (their
    claims would refuse its calls for ever), and one of them may have held the lock."""
    global _running_lock
    _fork_hold.forget()
    _running_lock = threading.RLock()
    _running_calls.clear()


def _held_count(lock) -> Optional[int]:
    """How many times the calling thread holds ``lock`` (an RLock), or None where Python does not say:
    RLock._recursion_count is Python 3.11's; on 3.9 and 3.10 (requires-python >= 3.9) every fork printed
    "Exception ignored in ... AttributeError: '_thread.RLock' object has no attribute '_recursion_count'"
    from the at-fork handlers below, the lock not held across the fork (found in the lead's review of
    Python round fifty)."""
    counter = getattr(lock, "_recursion_count", None)
    return counter() if counter is not None else None


class _ForkHold:
    """A lock held by the forking thread across a fork (os.register_at_fork's ``before`` takes a count,
    ``after_in_parent`` gives it back), robust to a signal handler that raises inside those handlers:
    Python prints "Exception ignored in ..." and goes on with the fork, the rest of the handler not
    run. The handlers noted the count in a list after taking it and gave back the list's last entry:
    a raise between the two (or at the after-handler's first line, where a signal that came during the
    fork is run) left one count of the lock held by the forking thread for good, and every other
    thread's call then waited on it (outside probe, Python round fifty; found by data-loss round
    seven). Now each fork notes the lock's count in its thread *before* it takes one and gives back
    whatever is above the note, so no step loses a count; a count that an interrupted after-handler
    left is given back by the thread's next fork. A note is taken as finished where the frame that
    forked is no longer on the thread's stack or forks again (a fork inside an at-fork handler, whose
    outer fork is under way, leaves the outer note alone)."""

    def __init__(self, lock_now, timeout_s) -> None:
        self._lock_now = lock_now  # the lock as it is now: a fork child makes a new one
        self._timeout_s = timeout_s  # the bound on the wait, read at each fork
        # [lock, its count in the forking thread before (None: not known), that thread, frame that forked,
        #  whether this fork took a count]
        self._notes: list = []

    def before(self) -> None:
        try:
            forking = sys._getframe(2)  # the caller of os.fork (the handler's caller is the at-fork wrapper)
        except ValueError:  # a fork from C with no Python frame above
            forking = None
        self.give_back(finished_only=True, forking=forking)
        lock = self._lock_now()
        note = [lock, _held_count(lock), threading.get_ident(), forking, False]
        self._notes.append(note)
        note[4] = lock.acquire(timeout=self._timeout_s())  # bounded: past it the fork goes on, the lock not held

    def after_in_parent(self) -> None:
        self.give_back(finished_only=False)

    def give_back(self, finished_only: bool, forking=None) -> None:
        me = threading.get_ident()
        for note in reversed(list(self._notes)):
            lock, count, thread, frame, taken = note
            if thread != me:
                continue
            if finished_only and frame is not forking and _on_this_stack(frame):
                continue  # the fork of an at-fork handler's caller, under way
            if count is not None:
                while lock._recursion_count() > count:
                    lock.release()
            elif taken:  # Python 3.9 and 3.10: the count this note took, where its handler got to note it
                lock.release()
            self._notes[:] = [kept for kept in list(self._notes) if kept is not note]
            if not finished_only:
                return  # an after-handler gives back its own fork's note, the last one

    def forget(self) -> None:
        self._notes.clear()


#: The lock held by a fork under way: a fork waits for another thread's claim (a few microseconds)
#: and holds the lock meanwhile, so that an os.register_at_fork(after_in_child=...) handler
#: registered before dodo was imported, which runs in the child before _new_running_lock, finds it
#: free (as dodo._closure's cache lock; outside probe "fork, threads and signals", round one).
#: Bounded (as dodo._closure's wait for a load): a signal handler that runs while its thread holds
#: the lock and waits for a fork of another thread (a pool replacing a worker) must not deadlock.
_fork_hold = _ForkHold(lambda: _running_lock, lambda: 30.0)


def _hold_running_lock_for_fork() -> None:
    _fork_hold.before()


def _release_running_lock_after_fork() -> None:
    _fork_hold.after_in_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_hold_running_lock_for_fork, after_in_parent=_release_running_lock_after_fork,
                        after_in_child=_new_running_lock)


def _shared_view(value) -> Optional[np.ndarray]:
    """An ndarray over the memory of ``value``, where one is had without copying and without calling
    the object's code: a memoryview, an object exposing ``__array_interface__``/``__array_struct__``,
    or a DLPack producer (a torch tensor, a JAX array on the CPU); None otherwise (lists, an
    ``__array__`` that may compute, a dask array). A memoryview or a torch view of another call's out
    was read half written without a word, where the same memory as an ndarray was refused (outside
    probe, Python round forty-eight)."""
    try:
        if isinstance(value, memoryview) or hasattr(value, "__array_interface__") or hasattr(value, "__array_struct__"):
            view = np.asarray(value)
        elif hasattr(value, "__dlpack__"):
            view = np.from_dlpack(value)
        else:
            return None
    except Exception:  # noqa: BLE001 - not readable so (a GPU tensor, one that requires grad): the call says why
        return None
    return view if view.dtype != object else None


def _named_arrays(prefix: str, value) -> list:
    if not isinstance(value, np.ndarray) and not (isinstance(value, tuple) and hasattr(value, "_fields")):
        value = _shared_view(value)
    if isinstance(value, np.ndarray):
        return [(prefix, value)] if value.size else []
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a result given as out=
        return [(f"{prefix}.{name}", array) for name, array in zip(value._fields, value)
                if isinstance(array, np.ndarray) and array.size]
    return []


class _claim:
    """Held (``with``) while a call reads the arrays ``reads`` (name -> value) and writes the arrays of
    ``out``. Two calls running at once (from two threads) that wrote the same out= arrays mixed their
    results without a word, and one that read another's out= read values half written (outside
    probe, round forty-five): such a call is refused, in one line, before it computes anything.
    Arrays that calls only read are shared freely. (A class, not contextlib's generator: a few
    microseconds less a call.)

    The same holds for a call made by a signal handler (SIGALRM, a checkpoint on SIGUSR1) in the
    middle of another call of its thread: the handler runs between two slices of the compiled call
    (gil.hpp), which then goes on writing its out. A handler's call that wrote into the interrupted
    call's out (a simulation's buffer reused by its checkpoint) left cells of the handler's inputs in
    the interrupted call's result without a word (outside probe "fork, threads and signals", round
    one). The caller sets ``computing`` once its compiled call is about to start: a nested call made
    before (an ``__array__`` of its inputs) runs, since nothing is written yet."""

    __slots__ = ("mine", "computing")

    def __init__(self, reads: dict, out=None, what: str = "out") -> None:
        # Tagged with the calling thread and the caller's frame: a claim of this thread is the call
        # that this one interrupted only while that frame is on this thread's stack; a claim left
        # behind by a Ctrl-C that came between two lines of __exit__ is dropped by the thread's next call.
        self.computing = False
        self.mine: Any = ([(name, array, False) for key, value in reads.items() for name, array in _named_arrays(key, value)]
                     + [(name, array, True) for name, array in _named_arrays(what, out)], threading.current_thread(),
                     sys._getframe(1), self)

    def __enter__(self) -> "_claim":
        try:
            self._register()
        except BaseException:  # refused, or a Ctrl-C here: nothing of it stays behind
            self.__exit__()
            raise
        return self

    def _register(self) -> None:
        mine = self.mine
        with _running_lock:
            for entry in list(_running_calls):
                running, thread, frame, claim = entry
                interrupted = thread is mine[1]
                if interrupted and not _on_this_stack(frame):
                    # Left by a call of this thread that has returned (a Ctrl-C at the first line of
                    # __exit__: 1 in ~300 Ctrl-Cs of a loop of calls): it refused other threads' calls
                    # on its arrays; this thread's next call drops it.
                    _running_calls[:] = [kept for kept in list(_running_calls) if kept is not entry]
                    continue
                if interrupted and not claim.computing:
                    continue  # made while that call prepares its inputs: it has written nothing yet
                for name, array, writes in mine[0]:
                    clash = next(((other_name, other_writes) for other_name, other, other_writes in running
                                  if (writes or other_writes) and _overlap(array, other)), None)
                    if clash is None:
                        continue
                    if not thread.is_alive():
                        # Left by a thread that has ended: nothing runs. (By identity: == of arrays.)
                        _running_calls[:] = [kept for kept in list(_running_calls) if kept is not entry]
                        break
                    raise ValueError(_clash_text(name, writes, *clash, interrupted=interrupted))
            _running_calls.append(mine)

    def __exit__(self, *exc_info) -> None:
        mine = self.mine
        with _running_lock:
            # From a snapshot: a signal handler's call may add and remove its own claim, or drop an
            # ended thread's, while this line runs (an index found before it would be stale).
            _running_calls[:] = [running for running in list(_running_calls) if running is not mine]
        # The entry holds the caller's frame and this claim, whose locals hold this claim: let the
        # arrays go now, not at the next collection of cycles.
        self.mine = None


def _on_this_stack(frame) -> bool:
    """Whether ``frame`` is running in the calling thread (is the caller's frame or one below it)."""
    current: Optional[types.FrameType] = sys._getframe(1)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False


def _overlap(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two arrays share memory: their bounds first (cheap), then exactly (interleaved strided
    views whose bounds overlap need not share an element), as shared when that is too much work."""
    if not np.may_share_memory(first, second):
        return False
    try:
        return bool(np.shares_memory(first, second, max_work=100_000))  # type: ignore[arg-type]  # NumPy's stub: -1, 0 only
    except _TOO_HARD:
        return True


_TOO_HARD = getattr(getattr(np, "exceptions", np), "TooHardError", Exception)  # np.TooHardError before NumPy 1.25


def _clash_text(name: str, writes: bool, other_name: str, other_writes: bool, interrupted: bool = False) -> str:
    if interrupted:
        what = ("both write it" if writes and other_writes else "this call would overwrite what that call reads"
                if writes else "this call would read values half written")
        return (f"{name} shares memory with {other_name} of the call that this one interrupts (a call made by a "
                f"signal handler while another call of its thread is under way): {what}, and that call goes on "
                "when the handler returns, so the results would mix; give the handler's call its own arrays (the "
                "result type's empty(batch_shape), copies of its inputs)")
    if writes and other_writes:
        return (f"{name} shares memory with {other_name} of another call running now (in another thread): both "
                "would write it at once and their results would mix; give each concurrent call its own out "
                "(the result type's empty(batch_shape))")
    if writes:
        return (f"{name} shares memory with {other_name}, which another call running now (in another thread) "
                "reads: it would read values half overwritten; give this call another out, or wait for that call")
    return (f"{name} shares memory with {other_name}, which another call running now (in another thread) is "
            "writing: this call would read values half written; wait for that call, or pass a copy")


def _empty_result(result_type, outputs: dict, batch_shape):
    sizes = tuple(batch_shape) if np.iterable(batch_shape) else (batch_shape,)
    batch = tuple(_shape_size(size, batch_shape) for size in sizes)  # 1.5 and 2.0 are refused, never truncated
    try:
        shown = repr(batch_shape)
    except ValueError:  # a size past the 4,300-digit limit of int-to-text conversion (round fifty-two)
        shown = f"({', '.join(_shown_number(size, short=False) for size in batch)}{',' if len(batch) == 1 else ''})"
    if any(size < 0 for size in batch):
        raise ValueError(f"batch_shape must hold sizes >= 0; got {shown}")
    try:
        return result_type(*(np.empty(batch + trailing, dtype) for trailing, dtype in outputs.values()))
    except ValueError as error:  # NumPy's "Maximum allowed dimension exceeded", naming nothing (round fifty-two)
        raise ValueError(f"batch_shape {shown} is too large for an array ({error})") from None


def _shape_size(size, batch_shape) -> int:
    """One size of a batch shape: an integer as NumPy's shapes take it (int, NumPy integers);
    a float, even an integral one (2.0, which np.empty refuses too), or a bool is refused."""
    if not isinstance(size, (bool, np.bool_)):
        try:
            return operator.index(size)
        except TypeError:
            pass
    raise ValueError(f"batch_shape must be an integer or a tuple of integers, as a NumPy shape (a float such as 2.0 "
                     f"is refused, as np.empty refuses it); got {batch_shape!r}")


def _flat_outputs(out, result_type, outputs: dict, batch: tuple[int, ...]) -> list[np.ndarray]:
    """Flat (n, ...) views of the arrays of ``out`` (a ``result_type``) that a call on cells of
    batch shape ``batch`` writes in place; a clear error for anything it cannot write into. The
    core refuses arrays that share memory with the inputs or with each other."""
    if not isinstance(out, result_type) and not _is_result_class(type(out), result_type):
        # A previous call's result made before an importlib.reload of the module (IPython's
        # autoreload) was refused as "must be a dodo.Box3DResult ...; got Box3DResult" (round 45).
        raise TypeError(f"out must be a dodo.{result_type.__name__} (a previous call's result, or "
                        f"dodo.{result_type.__name__}.empty(batch_shape)); got {type(out).__name__}")
    flat = []
    for name, (trailing, dtype) in outputs.items():
        array = getattr(out, name)
        if not isinstance(array, np.ndarray):
            # A CPU torch tensor (a memoryview, an array.array) that a code keeps its state in was refused
            # naming no way on (outside probe, Python round sixty-five): NumPy's view of it is written in place.
            kind = type(array).__name__
            reader = "np.from_dlpack" if hasattr(array, "__dlpack__") and not hasattr(array, "__array__") else "np.asarray"
            hint = (f", of whose memory {reader}(x) is a NumPy view (no copy): give the views, e.g. "
                    f"dodo.{result_type.__name__}(*({reader}(x) for x in arrays)); the call fills them in place, so "
                    f"the {kind} objects hold the results" if _shared_view(array) is not None else "")
            raise TypeError(f"out.{name} must be a NumPy array; got {kind}{hint}")
        if isinstance(array, np.ma.MaskedArray):  # its mask would hide values written (outside probe, round 37)
            raise TypeError(f"out.{name} is a masked array: its mask would hide the values written under it; give "
                            "plain arrays (a previous result, or the result type's empty(batch_shape))")
        if array.dtype != dtype:
            raise ValueError(f"out.{name} must have dtype {np.dtype(dtype)} (native byte order); got {array.dtype}")
        if array.shape != batch + trailing:
            # ClosureResult.empty(F_init.shape), the whole shape for the batch shape, made every array
            # (6, 4) too long and was told only the shapes (outside probe, Python round sixty).
            made = (f": made by {result_type.__name__}.empty(F_init.shape)? its batch_shape is F_init.shape[:-2], "
                    f"{batch}" if array.shape == batch + (N_SPECIES, N_COMPONENTS) + trailing else "")
            raise ValueError(f"out.{name} has shape {array.shape}; this call writes {batch + trailing} "
                             f"(the batch shape {batch} of F_init){made}")
        if not array.flags.c_contiguous:
            raise ValueError(f"out.{name} must be C-contiguous (it is written in place, never copied)")
        if not array.flags.writeable:
            # "out.F_pred is read-only" named nothing to do (outside probe, Python round sixty).
            raise ValueError(f"out.{name} is read-only, and the call writes its results into it: give writable "
                             f"arrays (a previous result, or dodo.{result_type.__name__}.empty(batch_shape); a file's "
                             "np.memmap or np.load(..., mmap_mode=) opened with mode 'r+')")
        flat.append(array.reshape((-1,) + trailing))  # a view: C-contiguous
    return flat


def box3d_settings(lebedev_order: Integer = DEFAULT_LEBEDEV_ORDER, z_method: str = DEFAULT_Z_METHOD,
                   max_flux_factor: Real = DEFAULT_MAX_FLUX_FACTOR) -> dict[str, Any]:
    """The settings that define a Box3D result (recorded in preprocessed files and models)."""
    lebedev_order, max_flux_factor = _lebedev_order(lebedev_order), _real("max_flux_factor", max_flux_factor)
    _engine(lebedev_order, z_method, max_flux_factor)  # validates
    return {"scheme": "pairwise", "form": "delta", "lebedev_order": lebedev_order,
            "z_method": z_method, "max_flux_factor": max_flux_factor}


def _engine(lebedev_order: int, z_method: str, max_flux_factor: float, screen_stable_cells: bool = True):
    # Checked before the cache: an unhashable z_method (a list) gave "unhashable type: 'list'".
    if not isinstance(z_method, str) or z_method not in ("exact", "jedynak"):
        raise ValueError(f"z_method must be 'exact' or 'jedynak'; got {z_method!r}")
    return _cached_engine(lebedev_order, z_method, max_flux_factor, screen_stable_cells)


@functools.lru_cache(maxsize=16)
def _cached_engine(lebedev_order: int, z_method: str, max_flux_factor: float, screen_stable_cells: bool):
    if lebedev_order not in _core.available_lebedev_orders():
        raise ValueError(
            f"lebedev_order {lebedev_order} is not available; available: {_core.available_lebedev_orders()}")
    return _core.Box3D(lebedev_order, z_method, max_flux_factor, screen_stable_cells)


def crossing_features(F_init: RealArrayLike, u: Optional[RealArrayLike] = None,
                      lebedev_order: Integer = DEFAULT_LEBEDEV_ORDER, z_method: str = DEFAULT_Z_METHOD,
                      max_flux_factor: Real = DEFAULT_MAX_FLUX_FACTOR) -> Float64Array:
    """Box3D's ELN-crossing shape of each cell, (..., 18) float64 (the network inputs of the
    feature set ``invariants27+box7+eln18-v1``; dodo.training.features): per flavour pair (e,mu),
    (e,tau), (mu,tau) the integrals I+ and I- of G's positive and negative parts (units of N_tot),
    the solid-angle fraction where G > 0, the lengths of the two lobes' weighted mean directions
    and the cosine between them, in the fluid rest frame. Every valid cell is computed (stable ones
    too: zero I+ or I-); NaN for a rejected cell (see dodo.box3d's status). A lobe whose integral is
    at most max(1e-12, 8 W^2 eps) of the pair's n_i + nbar_i + n_j + nbar_j (W = u^t; the boost's rounding
    of a moving cell: above 1e-12 from W ~ 24 on, 1.8e-7 at W = 1e4) is rounding noise and empty: its I,
    its solid-angle fraction, its length and the cosine are 0 (cpp/src/box3d/box3d.hpp, lobe_noise)."""
    with _claim({"F_init": F_init, "u": u}) as claim:
        flat_F, flat_u, batch = _prepare(F_init, u)
        engine = _engine(_lebedev_order(lebedev_order), z_method, _real("max_flux_factor", max_flux_factor), False)
        claim.computing = True
        return np.asarray(engine.crossing_features(flat_F, flat_u)).reshape(batch + (N_CROSSING_FEATURES,))


def _as_real_array(name: str, value, trailing: tuple[int, ...], shape_text: str, density: Optional[bool] = None) -> np.ndarray:
    if density is not None:
        value = _plain_numbers(name, value, density)
    # np.asarray drops a masked array's mask: the masked entries' underlying data (a netCDF fill
    # value, anything) were computed with as if they were values (outside probe, round 22).
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        first = tuple(int(i) for i in np.argwhere(np.ma.getmaskarray(value))[0])
        cell = first[:max(len(first) - len(trailing), 0)]
        # np.ma.compress_rows, named here before, refuses arrays of more than two axes (every batch of
        # cells), drops a single cell's species, and for u alone leaves F_init's cells unmatched (outside
        # probe, Python round forty-eight): the cells to keep, for both arrays.
        axes = tuple(range(-len(trailing), 0))
        axes_text = str(axes[0]) if len(axes) == 1 else str(axes)
        raise ValueError(f"{name} is a masked array with masked entries (missing values), the first at cell {cell} "
                         f"(index {first}): a masked entry has no value to compute with; fill them "
                         f"(np.ma.filled({name}, value)) or drop those cells: keep = "
                         f"~np.ma.getmaskarray({name}).any(axis={axes_text}), then F_init[keep] "
                         "(and u[keep] for a u per cell)")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as error:
        if isinstance(error, ValueError) and (not hasattr(value, "__array__") or "inhomogeneous" in str(error)):
            raise ValueError(f"{name} is not a rectangular array of real numbers: {error}") from None  # ragged lists
        # A torch tensor in bfloat16 ("TypeError: Got unsupported ScalarType BFloat16"), one that requires
        # grad or lives on a GPU: the library's words, naming neither the argument nor the conversion,
        # and not the ValueError the README promises for a wrong dtype (outside probe, Python round forty-seven).
        # An h5py dataset whose file was closed (read after its `with` block) was "not a rectangular array
        # of real numbers: Invalid dataset identifier" (or h5py's RuntimeError), without a word of the
        # closed file (outside probe, Python round forty-eight).
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        fix = ": t.detach().cpu().double().numpy()" if kind.startswith("torch.") else ""
        if kind.startswith("h5py.") and not getattr(getattr(value, "id", None), "valid", True):
            fix = ("; its HDF5 file is closed: read the dataset while the file is open (f[name][()] inside the "
                   "with block)")
        raise ValueError(f"{name} ({kind}) cannot be read as a NumPy array: {' '.join(str(error).split()).rstrip('.')}; give a "
                         f"NumPy array of a float or integer dtype{fix}") from None
    if array.dtype == object and array.ndim == 0 and hasattr(value, "__dlpack__"):
        # An array that is a DLPack producer and nothing more (the array API standard's interchange:
        # array-api-strict's arrays from 2.1.1 on define no __array__): np.asarray made a 0-d object
        # array of it, refused as "must be an array of real numbers ...; got a Array" (outside probe,
        # Python round forty-nine). Read as NumPy reads it, without a copy; a device array says why not.
        try:
            array = np.from_dlpack(value)
        except (BufferError, TypeError, ValueError, RuntimeError, NotImplementedError) as error:
            kind = f"{type(value).__module__}.{type(value).__qualname__}"
            raise ValueError(f"{name} ({kind}) cannot be read as a NumPy array through DLPack: "
                             f"{' '.join(str(error).split()).rstrip('.')}; give a NumPy array of a float or integer "
                             "dtype in host memory (np.from_dlpack of the array copied to the CPU)") from None
    if array.dtype == object and array.ndim == 0:  # a generator, a dict, one number: nothing to index
        raise ValueError(f"{name} must be an array of real numbers with shape {shape_text}; got "
                         f"{_lazy_input_text(name, array[()])}")
    if array.dtype.kind not in "fiuO" and not _extension_real_dtype(array.dtype):
        raise ValueError(f"{name} must hold real numbers (any float or integer dtype); got dtype {array.dtype}")
    if array.ndim < len(trailing) or array.shape[array.ndim - len(trailing):] != trailing:
        raise ValueError(f"{name} must have shape {shape_text}; got {array.shape}{_layout_hint(name, array.shape, trailing)}")
    if array.dtype == object:
        _refuse_object_array(name, array, len(trailing))
    return _refuse_beyond_float64(name, array, len(trailing))


def _lazy_input_text(name: str, value) -> str:
    """What a value NumPy reads as one object is, with the way to an array for lazy ones. A generator,
    ``map``, ``iter(F)`` or ``d.values()`` (cells made on the fly) was told "got a generator", "got a
    iterator", naming no way to pass them (outside probe, Python round sixty)."""
    kind = type(value).__name__
    text = f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
    if isinstance(value, (Iterator, ValuesView)):
        text += (f", whose items NumPy does not read as an array{'' if isinstance(value, ValuesView) else ' (an iterator yields them once)'}: "
                 f"make one first, {name} = np.stack(list({name}))")
    return text


def _layout_hint(name: str, shape: tuple[int, ...], trailing: tuple[int, ...]) -> str:
    """What a refused shape most likely is: for F_init, Emu's layout [..., 4 (x, y, z, t), 2, 3] or the
    two axes swapped (..., 4, 6), Dodo's Fortran layout (4, 6, ...) or species and components first; for u,
    the three-velocity (..., 3) or the Fortran layout (4, ...). Such arrays were refused as "must have shape
    ..." only, without the conversion (outside probe, Python rounds forty-seven and fifty-nine)."""
    values = N_SPECIES * N_COMPONENTS if trailing == (N_SPECIES, N_COMPONENTS) else N_COMPONENTS
    if len(shape) == 1 and shape[0] > N_COMPONENTS and shape[0] % values == 0 and (values > N_COMPONENTS or name == "u"):
        # A buffer handed over from C or Fortran (ctypes, array.array, a memoryview) was refused by its shape
        # alone (outside probe, Python round sixty-five). A (n, 24) table keeps the plain refusal (round
        # forty-seven): a row of Emu's [4, 2, 3] has 24 values too.
        cells, order = (("(-1, 6, 4)", "C's F[n][6][4], Fortran's F(4, 6, n): components fastest, then species")
                        if values > N_COMPONENTS else ("(-1, 4)", "C's u[n][4], Fortran's u(4, n)"))
        return (f": a flat buffer, cells one after another? np.reshape({name}, {cells}) reads it in Dodo's memory "
                f"order ({order})")
    if name == "u" and trailing == (N_COMPONENTS,) and len(shape) >= 2 and shape[0] == N_COMPONENTS and shape[-1] != 3:
        # Dodo's Fortran layout u(4, nx, ny, nz) (docs/runtime.md, "Fortran"), as NumPy sees a Fortran array
        # (f2py, order="F"), was refused naming nothing of it (outside probe, Python round fifty-nine).
        return (": the components first, as Dodo's Fortran layout u(4, ...) reads in NumPy? move them last: "
                "np.moveaxis(u, 0, -1) (or u.T where F_init is the .T of a Fortran F(4, 6, ...), whose cell axes are "
                "reversed too)")
    if name == "u" and trailing == (N_COMPONENTS,) and shape and shape[-1] == 3:
        # As code that runs on a list v too (the README passes u as a list): W[..., None] of a Python float
        # and a list times W failed (outside probe, Python round forty-eight).
        return (": the three-velocity v? u is the four-velocity: u = (W, W v) with W = 1/sqrt(1 - v^2): "
                "v = np.asarray(v, dtype=np.float64); W = 1 / np.sqrt(1 - np.sum(v * v, axis=-1)); "
                "u = np.concatenate([W[..., None], W[..., None] * v], axis=-1)")
    if trailing != (N_SPECIES, N_COMPONENTS):
        return ""
    if shape[-3:] == (N_COMPONENTS, 2, N_SPECIES // 2):
        # from_emu_layout takes [states, 4, 2, 3] only: the hint gave it for one state (4, 2, 3) and for
        # a grid [nx, ny, 4, 2, 3] too, where it refuses them (outside probe, Python round forty-eight).
        convert = "" if len(shape) == 4 else (
            f"; here one state: dodo.conventions.from_emu_layout(np.asarray({name})[None])[0]" if len(shape) == 3 else
            f"; here a batch of shape {shape[:-3]}: dodo.conventions.from_emu_layout(np.reshape({name}, (-1, 4, 2, 3)))"
            f".reshape({shape[:-3] + (6, 4)})")
        return (f": Emu's layout [..., 4 (x, y, z, t), 2 (nu, nubar), 3 flavours]? convert with "
                f"dodo.conventions.from_emu_layout({name}) (for [states, 4, 2, 3]){convert}, which also puts t first")
    if shape[-2:] == (N_COMPONENTS, N_SPECIES):
        return f": the last two axes swapped? species x components is (6, 4): np.swapaxes({name}, -1, -2)"
    if len(shape) >= 3 and shape[:2] == (N_COMPONENTS, N_SPECIES):
        # Dodo's Fortran layout F(4, 6, nx, ny, nz), as NumPy sees a Fortran array (f2py, order="F"): refused
        # naming nothing of it (outside probe, Python round fifty-nine).
        return (": components and species first, as Dodo's Fortran layout F(4, 6, ...) reads in NumPy? pass "
                f"{name}.T (with u.T: C-contiguous views, no copy, cells in reversed axis order) or "
                f"np.moveaxis({name}, (0, 1), (-1, -2)) (with np.moveaxis(u, 0, -1): the grid's axis order kept)")
    if len(shape) >= 3 and shape[:2] == (N_SPECIES, N_COMPONENTS):
        return f": species and components first? move them last: np.moveaxis({name}, (0, 1), (-2, -1))"
    return ""


def _refuse_object_array(name: str, array: np.ndarray, trailing_axes: int) -> None:
    """A ValueError for an object array (a list mixing Fractions, Decimals, None and floats; a pandas
    column of dtype object) that says what is in it: its first element that is not a real number
    float64 holds, or, where every element is one, how to convert it. Such an array was refused as
    "must hold real numbers (any float or integer dtype); got dtype object", also when it held only
    real numbers, and without a word of which element was not one (outside probe, round forty-six).
    It is not converted here: tests/python/bad_inputs.py holds object arrays refused on every path."""
    for position, element in enumerate(array.reshape(-1)):
        problem = None
        if isinstance(element, (bool, np.bool_)) or not isinstance(element, (numbers.Real, decimal.Decimal)):
            problem = f"{type(element).__name__} {element!r:.40}, not a real number"
        else:
            try:
                value = float(element)
                lost = math.isinf(value) and not element == value  # Decimal('1e400') becomes inf
            except OverflowError:  # a Python int or Fraction beyond float64
                lost = True
            except (ValueError, TypeError, ArithmeticError) as error:  # Decimal('sNaN')
                problem = f"{element!r:.40}, which float() does not convert ({error})"
                lost = False
            if lost:
                text = _shown_number(element)
                problem = (f"{text}, beyond the range of float64 (largest {np.finfo(np.float64).max:.4g}), in which "
                           "Dodo computes")
        if problem is not None:
            first = tuple(int(i) for i in np.unravel_index(position, array.shape))
            cell = first[:max(len(first) - trailing_axes, 0)]
            raise ValueError(f"{name} has dtype object (Python objects) and holds at cell {cell} (index {first}) "
                             f"{problem}")
    raise ValueError(f"{name} has dtype object (Python objects, each a real number); give a float or integer dtype: "
                     f"np.asarray({name}, dtype=np.float64)")


def _refuse_beyond_float64(name: str, array: np.ndarray, trailing_axes: int) -> np.ndarray:
    """A ValueError for a wider float array (np.longdouble) holding finite values that float64, in which
    everything is computed, cannot hold. NumPy's conversion made them inf with a RuntimeWarning, and the
    cell came back as zeros flagged NONFINITE ("NaN or Inf in the cell's F"), which it did not hold
    (outside probe, round forty-four). Returns ``array``, a wider float one as float64: converted here,
    where values below float64's range become 0 (a vacuum, as Box3D takes N_tot below 1e-300) without
    NumPy's underflow error under np.seterr(all="raise"), a FloatingPointError traceback of this check or
    of the conversion after it (outside probe, Python round fifty-nine)."""
    if array.dtype.kind != "f" or array.dtype.itemsize <= 8:
        return array
    with np.errstate(all="ignore"):
        converted = array.astype(np.float64)
    lost = np.isinf(converted) & np.isfinite(array)
    if lost.any():
        first = tuple(int(i) for i in np.argwhere(lost)[0])
        cell = first[:max(len(first) - trailing_axes, 0)]
        value = np.format_float_scientific(array[first], precision=4)
        raise ValueError(f"{name} holds {value} at cell {cell} (index {first}), beyond the range of float64 "
                         f"(largest {np.finfo(np.float64).max:.4g}), in which Dodo computes: "
                         + ("no four-velocity has components that large" if name == "u" else
                            "give the values in other units (four-fluxes may be in any consistent unit)"))
    return converted


def _prepare(F_init, u) -> tuple[np.ndarray, Optional[np.ndarray], tuple[int, ...]]:
    """Flatten to (n, 6, 4) / (n, 4) float64 C-contiguous, checking shapes, dtypes and u."""
    F = _as_real_array("F_init", F_init, (N_SPECIES, N_COMPONENTS), "(..., 6, 4): species x (t, x, y, z)", density=True)
    batch = F.shape[:-2]
    flat_F = np.ascontiguousarray(F.reshape((-1, N_SPECIES, N_COMPONENTS)), dtype=np.float64)
    if u is None:
        return flat_F, None, batch
    velocity = _as_real_array("u", u, (N_COMPONENTS,), "(..., 4): fluid four-velocity (t, x, y, z)", density=False)
    try:
        velocity = np.broadcast_to(velocity, batch + (N_COMPONENTS,))
    except ValueError:
        hint = ""
        if velocity.ndim >= 2 and velocity.shape[-2] == 1:
            try:  # u[..., None, :], the form boost_to_rest takes for cells (outside probe, Python round fifty-nine)
                if np.broadcast_shapes(velocity.shape[:-2] + (N_COMPONENTS,), batch + (N_COMPONENTS,)) == \
                        batch + (N_COMPONENTS,):
                    hint = (": a u with an axis of length 1 before its components, as dodo.boost_to_rest takes it for "
                            "cells (u[..., None, :])? this takes one u per cell, (..., 4): pass u[..., 0, :]")
                    if isinstance(u, np.matrix):
                        # A matrix stays 2-D under indexing: np.matrix(u)[..., 0, :] has shape (4, 1), which was
                        # refused next as "the components first ... np.moveaxis(u, 0, -1)", and that as (1, 4)
                        # again (outside probe, Python round sixty-three).
                        hint = (": u is an np.matrix, always 2-D, so it holds no u of shape (4,) for one cell: pass "
                                "np.asarray(u)[0]")
            except ValueError:
                pass
        raise ValueError(f"u with shape {velocity.shape} does not broadcast to the batch shape {batch} of F_init{hint}") \
            from None
    flat_u = np.ascontiguousarray(velocity.reshape((-1, N_COMPONENTS)), dtype=np.float64)
    _check_velocity(flat_u, batch, velocity.dtype)
    return flat_F, flat_u, batch


def _is_four_velocity(u: np.ndarray) -> bool:
    """Whether ``u`` (one four-vector) passes the core's four-velocity check."""
    return bool(_core.check_four_velocities(np.ascontiguousarray(u, dtype=np.float64).reshape(1, 4))[0][0])


def _check_velocity(flat_u: np.ndarray, batch: tuple[int, ...], given_dtype=None) -> None:
    """Refuse a u that is not a future-directed unit timelike vector (non-finite u passes: flagged later).

    The test itself is the C++ core's (the one dodo_apply uses), so Python and C agree bit for bit.
    ``given_dtype``: u's dtype as the caller gave it, to say when its rounding alone breaks the test.
    """
    if _core.all_four_velocities_valid(flat_u):  # the common case: no arrays made
        return
    valid, norm_error = _core.check_four_velocities(flat_u)
    bad = ~valid & np.isfinite(flat_u).all(axis=1)
    if np.any(bad):  # non-finite u is not refused here: such cells are flagged NONFINITE
        first = int(np.flatnonzero(bad)[0])
        where = tuple(int(i) for i in np.unravel_index(first, batch)) if batch else ()
        remedy = "; pass u = (W, W v) with W = 1/sqrt(1 - v^2)"
        if _is_four_velocity(flat_u[first, [3, 0, 1, 2]]):
            # (W v, W) for u^mu = (W, W v): a four-vector in Emu's (x, y, z, t) order was refused without
            # a word of the order (outside probe, Python round forty-seven).
            # np.asarray: u[..., [3, 0, 1, 2]] of a list u (the README's) is a TypeError (round forty-eight).
            remedy = ("; its components are a unit four-velocity in the order (x, y, z, t), Emu's order of "
                      "four-vectors: pass u in the order (t, x, y, z), u[..., [3, 0, 1, 2]] (of a list: "
                      "np.asarray(u)[..., [3, 0, 1, 2]])")
        if flat_u[first, 0] <= 0:
            problem = f"u^t = {flat_u[first, 0]:.17g} is not positive (past-directed or zero)"
            if flat_u[first, 0] < 0 and _is_four_velocity(-flat_u[first]):
                # (-W, W v) is what a code storing the covariant u_mu passes for u^mu = (W, W v).
                problem += ("; it is a unit vector with u_t = -W: the covariant components u_mu? pass the "
                            "contravariant u^mu = (W, W v), i.e. u^t = -u_t and u^i = u_i")
        else:
            u0 = float(flat_u[first, 0])
            # u0 ** 2 raises on overflow; u0 * u0 is inf, capped as the core caps it (frame.hpp).
            tolerance = VELOCITY_NORM_TOLERANCE * max(1.0, min(u0 * u0, sys.float_info.max))
            if tolerance < VELOCITY_NORM_TOLERANCE_CAP:
                problem = (f"|u.u + 1| = {norm_error[first]:.12g} exceeds the tolerance {VELOCITY_NORM_TOLERANCE} "
                           f"max(1, u^t^2) = {tolerance:.12g}")
            else:  # the cap keeps null and spacelike u out (frame.hpp)
                problem = (f"|u.u + 1| = {norm_error[first]:.12g} exceeds the largest tolerance "
                           f"{VELOCITY_NORM_TOLERANCE_CAP} ({VELOCITY_NORM_TOLERANCE} max(1, u^t^2) is capped there "
                           f"from u^t ~ 707 on, so that every accepted u is timelike)")
            rounding, eps64 = _rounding_of(given_dtype), float(np.finfo(np.float64).eps)  # Python floats: inf, no warning
            # Past u^t ~ 1.3e154, u^t^2 is inf: every bound below is then inf, and the rounding branch took
            # u = (1e300, 0, 0, 0), far from any unit vector (|u.u + 1| = inf), for a u "computed exactly as
            # told" whose float64 rounding alone "gives |u.u + 1| up to ~inf" (outside probe, Python round
            # fifty-nine). No rounding explains a norm error that is not finite: the plain remedy stays.
            if not (math.isfinite(u0 * u0) and math.isfinite(float(norm_error[first]))):
                if u0 > 2e7:
                    remedy = (f"; u^t = {u0:.6g} is beyond every Lorentz factor Dodo supports (u^t up to ~2e7 is "
                              "accepted)" + remedy)
            elif (tolerance >= VELOCITY_NORM_TOLERANCE_CAP and 4 * eps64 * u0 * u0 > VELOCITY_NORM_TOLERANCE_CAP
                    and norm_error[first] <= 8 * max(rounding, eps64) * u0 * u0):
                # Past u^t ~ 3e7 float64's own rounding of u.u (~eps u^t^2: 0.2 at 3e7, 2.2 at 1e8) exceeds the
                # cap: a u computed exactly as told, (W, W v) with W = 1/sqrt(1 - v^2), was refused with "pass
                # u = (W, W v) ...", and a float32 one with "give u as float64" (physics-law probe, round nine).
                remedy = (f": at u^t = {u0:.6g} the rounding of float64 alone gives |u.u + 1| up to "
                          f"~{2 * eps64 * u0 * u0:.2g}, beyond the cap {VELOCITY_NORM_TOLERANCE_CAP}: no float64 u "
                          "holds a unit four-velocity this fast in every direction (u^t up to ~2e7 is accepted); "
                          "Lorentz factors beyond that are not supported")
            elif rounding > eps64 and norm_error[first] <= 4 * rounding * max(1.0, u0 * u0):
                # A float16 u (eps 9.8e-4) holds no unit four-velocity but at rest, a float32 u none from
                # u^t ~ 2000 on (the README's W up to 1e4): v = 0.3 in float16 was refused with "pass u =
                # (W, W v)", which it was, rounded (outside probe, Python round forty-seven).
                enough = "float32 or float64" if 2 * np.finfo(np.float32).eps * max(1.0, u0 * u0) < min(
                    tolerance, VELOCITY_NORM_TOLERANCE_CAP) else "float64"
                remedy = (f": u is {np.dtype(given_dtype).name}, whose rounding (eps {rounding:.2g}) alone gives "
                          f"|u.u + 1| up to ~{2 * rounding * max(1.0, u0 * u0):.2g} at u^t = {u0:.6g}, beyond the "
                          f"tolerance; give u as {enough} (np.asarray(u, dtype=np.float64)), computed as (W, W v) "
                          "with W = 1/sqrt(1 - v^2) in that precision")
        raise ValueError(
            f"u is not a future-directed unit timelike four-velocity at cell {where}: u = {flat_u[first].tolist()}, "
            f"{problem}{remedy}")


def _rounding_of(dtype) -> float:
    """The machine epsilon of a floating ``dtype`` (0 for None, integers and anything else)."""
    try:
        dtype = np.dtype(dtype)
        # bfloat16 (kind "V"; np.finfo knows it), taken since round 58: its u at v = 0.3 is told of its rounding.
        return float(np.finfo(dtype).eps) if dtype.kind == "f" or _extension_real_dtype(dtype) else 0.0
    except (TypeError, ValueError):
        return 0.0


def _integral(name: str, value) -> int:
    """``value`` as an int if it is an integer (17, 17.0, numpy integers); a ValueError otherwise,
    never a silent truncation (17.9 is refused, issue 11)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    try:
        as_int = int(value)
        exact = as_int == value
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact:
        raise ValueError(f"{name} must be an integer; got {_shown_number(value, repr, short=False)}")
    return as_int


def _real(name: str, value) -> float:
    """``value`` as a float if it is a real number (NumPy scalars and 0-d arrays too; not a bool,
    a string or None, as for :func:`_integral`); a ValueError naming ``name`` otherwise, rather
    than float()'s message that names no argument."""
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number; got {value!r}") from None
    except OverflowError:  # an int or Fraction past float64: "int too large to convert to float" (round fifty-two)
        raise ValueError(f"{name} must be a real number float64 holds; got {_shown_number(value)}") from None


def _text(name: str, value, known: str) -> str:
    """``value`` if it is a string; else a ValueError naming ``name`` and the ``known`` values,
    rather than pybind11's list of constructor signatures."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string ({known}); got {value!r}")
    return value


def _threads(threads: Optional[Integer]) -> int:
    """Worker-thread count: None gives the default (_default_threads: the cores this process may run
    on, under an MPI launcher at most its share of the node); [0, MAX_THREADS] (0 and 1: the calling
    thread)."""
    if threads is None:
        return min(_default_threads(), MAX_THREADS)
    count = _integral("threads", threads)
    if not 0 <= count <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in [0, {MAX_THREADS}] (0 and 1: the calling thread only); "
                         f"got {_shown_number(threads, short=False)}")
    return count


def _usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, `mpirun --bind-to core`, a
    SLURM job's --cpus-per-task), not the machine's count, and no more than its cgroup's CPU quota
    (_cgroup_cpu_limit). os.cpu_count() gave an MPI rank bound to one core of a 128-core node 128
    worker threads, all on that core."""
    try:
        usable = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity masks on this platform
        usable = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    return min(usable, quota) if quota else usable


@functools.lru_cache(maxsize=None)  # read once per process: ~70 us of file reads, and dodo.box3d asks per call
def _cgroup_cpu_limit(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> Optional[int]:
    """The CPU quota of this process's cgroup and of every cgroup above it, in whole CPUs (rounded up),
    or None where none is set or it cannot be read (as found at the first call: a quota changed later
    is not followed). A container limited to 2 CPUs (Kubernetes'
    `resources.limits.cpu`, `docker run --cpus 2`) on a 64-core node keeps the node's affinity mask, so
    its closure started 64 workers that the quota then throttled (outside probe, Python round
    forty-seven). cgroup v2: `cpu.max` ("QUOTA PERIOD" or "max ..."); v1: `cpu.cfs_quota_us` (-1:
    none) over `cpu.cfs_period_us`, in the cpu controller's hierarchy."""
    try:
        with io.open(membership, encoding="utf-8", errors="replace") as lines:
            entries = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return None
    limits = []
    for entry in entries:
        if len(entry) != 3:
            continue
        hierarchy, controllers, path = entry
        if hierarchy == "0" and controllers == "":  # v2: mounted at root, or at root/unified beside v1
            bases = [root] if os.path.exists(os.path.join(root, "cgroup.controllers")) else [os.path.join(root, "unified")]
            read = _cgroup_v2_quota
        elif "cpu" in controllers.split(","):
            bases = [os.path.join(root, controllers)] + [os.path.join(root, "cpu")] * ("," in controllers)
            read = _cgroup_v1_quota
        else:
            continue
        parts = [part for part in path.split("/") if part and part not in (".", "..")]
        for base in bases:
            # the process's cgroup and each above it; in a container the mount's root is its own cgroup
            for depth in range(len(parts), -1, -1):
                limit = read(os.path.join(base, *parts[:depth]))
                if limit:
                    limits.append(limit)
    return min(limits) if limits else None


def _read_words(path: str) -> list:
    # io.open, here and in _cgroup_cpu_limit: Python removes the builtin open while it finalizes, and
    # dodo.box3d(F) (threads=None) in a __del__ run at exit said "NameError: name 'open' is not defined"
    # (outside probe, Python round sixty-five).
    try:
        with io.open(path, encoding="utf-8", errors="replace") as file:
            return file.read().split()
    except OSError:
        return []


def _quota_cpus(quota: str, period: str) -> Optional[int]:
    """ceil(quota / period) for positive integers, else None ("max", -1, garbage)."""
    if not (quota.isdecimal() and period.isdecimal()) or int(quota) <= 0 or int(period) <= 0:
        return None
    return max(1, -(-int(quota) // int(period)))


def _cgroup_v2_quota(folder: str) -> Optional[int]:
    words = _read_words(os.path.join(folder, "cpu.max"))
    return _quota_cpus(words[0], words[1]) if len(words) == 2 else None


def _cgroup_v1_quota(folder: str) -> Optional[int]:
    quota = _read_words(os.path.join(folder, "cpu.cfs_quota_us"))
    period = _read_words(os.path.join(folder, "cpu.cfs_period_us"))
    return _quota_cpus(quota[0], period[0]) if len(quota) == 1 and len(period) == 1 else None


#: Variables in which MPI launchers give each process the number of ranks on its node: Open MPI's
#: mpirun, and MPICH's or Intel MPI's Hydra (mpiexec).
LOCAL_RANKS_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def _local_ranks() -> int:
    """Ranks on this node as an MPI launcher says (LOCAL_RANKS_VARIABLES); 1 outside one, or for a
    value that is not a positive integer."""
    for name in LOCAL_RANKS_VARIABLES:
        text = os.environ.get(name, "").strip()
        if text.isdecimal() and int(text) > 0:  # "²".isdigit() is True, and int("²") fails
            return int(text)
    return 1


def _default_threads() -> int:
    """Worker threads when none are asked for: the CPUs this process may run on (_usable_cpus) and,
    under an MPI launcher with several ranks on the node, no more than the node's CPUs divided by
    them. An unbound launch (`mpirun --bind-to none`), or Open MPI's default binding of more than
    two ranks to a socket, gives every rank a mask of many cores: each rank's closure started a
    worker on every one of them, and 4 ranks on a 64-core node ran 256 CPU-bound threads on 64
    cores (the C example divides likewise; docs/runtime.md, "Threads per rank")."""
    usable = _usable_cpus()
    ranks = _local_ranks()
    if ranks > 1:
        return max(1, min(usable, (os.cpu_count() or usable) // ranks))
    return usable


def _lebedev_order(lebedev_order) -> int:
    order = _integral("lebedev_order", lebedev_order)
    if order not in _core.available_lebedev_orders():
        raise ValueError(f"lebedev_order {_shown_number(lebedev_order, short=False)} is not available; available: "
                         f"{_core.available_lebedev_orders()}")
    return order


def box3d(F_init: RealArrayLike, u: Optional[RealArrayLike] = None, *, lebedev_order: Integer = DEFAULT_LEBEDEV_ORDER,
          z_method: str = DEFAULT_Z_METHOD, max_flux_factor: Real = DEFAULT_MAX_FLUX_FACTOR,
          threads: Optional[Integer] = None,
          out: Optional[Box3DResult] = None) -> Box3DResult:
    """Box3D closure (pairwise, delta form) of a batch of cells.

    F_init: (..., 6, 4) initial four-fluxes, species (nu_e, nu_mu, nu_tau, nubar_e, nubar_mu,
    nubar_tau) x components (t, x, y, z), lab-frame tetrad components, any consistent unit.
    u: (..., 4) fluid four-velocity (W, W v) in the same frame (broadcast over the batch);
    None means the input is already in the fluid rest frame.
    Lorentz factors: lab-frame float64 values hold the rest frame only to ~W^2 eps relative (the boost's
    rounding; 6 W^2 eps measured in a round trip), so from W ~ 2e6 on cells lose their ELN crossings to
    rounding and come back NO_CROSSING (boosted along x, of 1,000 crossing states of the QKE solver's
    Emu recipe, data/qke: 6% at W = 2e6, 18% at 3e6, 46% at 5e6, 89% at 1e7, 93% at 1.9e7; of 1,000
    random crossing cells: 3% at 5e6, 81% at 1e7, all at 1.9e7; none of either at 1e6); u^t up to
    ~2e7 is accepted, so check the status there.
    Cells with problems are flagged in ``status`` (see :class:`dodo.CellStatus`), never NaN.
    lebedev_order, z_method, max_flux_factor: Box3D's settings (the Lebedev orders built: ``dodo info``;
    "exact" or "jedynak"; a cell with a species' flux factor at or above max_flux_factor is flagged
    FLUX_FACTOR and returned as it came).
    threads: worker threads of this call (None: the cores this process may run on, under an MPI launcher
    at most its share of the node; 0 or 1: the calling thread only; at most 1024; results do not depend
    on it). Each call starts threads - 1 of its own beside the calling thread: n Python threads calling
    ``dodo.box3d`` at once (a ``concurrent.futures.ThreadPoolExecutor``) put up to n x threads threads to
    work (measured: 4 callers with ``threads=3``, 8 started beside them), and n x the cores with None, so
    give ``threads=1`` there.
    out: a :class:`Box3DResult` to write into instead of new arrays (a previous call's result
    for cells of the same batch shape, or ``Box3DResult.empty(batch_shape)``), as a time loop
    calls it; returned. Its arrays must be C-contiguous, writeable, of the result's dtypes and
    shapes, and share no memory with F_init, u or each other. The results are the same bits as
    without ``out``. No array is allocated when F_init and u are C-contiguous float64 already
    (u of the full batch shape, not broadcast). Calls from several threads at once each need their
    own ``out``: an out that another call running now writes or reads is refused (ValueError), as
    are inputs that another running call writes as its out. So is a call made by a signal handler on
    the arrays of the call it interrupted (that call goes on writing when the handler returns).
    """
    engine = _engine(_lebedev_order(lebedev_order), z_method, _real("max_flux_factor", max_flux_factor))
    with _claim({"F_init": F_init, "u": u}, out) as claim:
        flat_F, flat_u, batch = _prepare(F_init, u)
        result = Box3DResult.empty(batch) if out is None else out
        outputs, threads = _flat_outputs(result, Box3DResult, _BOX3D_OUTPUTS, batch), _threads(threads)
        claim.computing = True
        with _fed_back_hint("F_box", "dodo.box3d"):
            engine.apply_into(flat_F, flat_u, *outputs, threads)
    return result


class _fed_back_hint:
    """Adds the time loop's way out to the runtime's refusal of an out= whose F_pred (F_box) is F_init.
    ``c.apply(r.F_pred, u, out=r)``, a simulation's loop feeding each step's result back in, was told
    only "out.F_pred shares memory with the input F_init: give output arrays of their own", which names
    no way to keep stepping without allocating (outside probe, Python round sixty)."""

    __slots__ = ("field", "call")

    def __init__(self, field: str, call: str) -> None:
        self.field, self.call = field, call

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> Literal[False]:
        if kind is ValueError and str(error).startswith(f"out.{self.field} shares memory with the input F_init"):
            raise ValueError(
                f"{error}; the call reads F_init while it writes out.{self.field}, so a result cannot be fed back "
                f"into itself ({self.call}(r.{self.field}, u, out=r) in a time loop): keep two results and swap them "
                f"each step ({self.call}(r.{self.field}, u, out=r_next); r, r_next = r_next, r), or pass "
                f"r.{self.field}.copy() as F_init") from None
        return False


def invariants(F_init: RealArrayLike, u: Optional[RealArrayLike] = None) -> Float64Array:
    """The 27 invariant features (..., 27): x_a = -F_a.u/N_tot, then F_a.F_b/N_tot^2 (a <= b).

    Order of the products: :func:`dodo.conventions.invariant_pairs`. Cells with a NaN or Inf anywhere in
    F_init or u, and cells whose N_tot is not a positive finite number (zero, negative, or overflowing to
    inf: densities near 1e308), give zeros.
    """
    with _claim({"F_init": F_init, "u": u}) as claim:
        flat_F, flat_u, batch = _prepare(F_init, u)
        claim.computing = True
        return _core.invariants(flat_F, flat_u).reshape(batch + (27,))


def comoving_density(F_init: RealArrayLike, u: Optional[RealArrayLike] = None) -> Float64Array:
    """Total comoving number density N_tot = sum_a -F_a.u, shape (...).

    No cell is rejected here: the sum is IEEE arithmetic. A NaN anywhere in a cell's F_init or u gives
    NaN, and so does an Inf in a spatial component, also at rest (u=None is u = (1, 0, 0, 0), and
    0 x NaN and 0 x Inf are NaN); an Inf in F^t alone gives +-Inf. :func:`invariants` gives zeros for
    such cells, and :func:`box3d` and ``Closure.apply`` flag them NONFINITE.
    """
    with _claim({"F_init": F_init, "u": u}) as claim:
        flat_F, flat_u, batch = _prepare(F_init, u)
        claim.computing = True
        density = _core.comoving_total_density(flat_F, flat_u).reshape(batch)
        # + 0.0: a cell of zeros sums -(-0.0 + 0.0 ...) = -0.0, which printed as -0.0 (Python round
        # fifty-nine); the sum of +0.0 and -0.0 is +0.0, every other value keeps its bits. In place: of
        # one cell's 0-d array, `+ 0.0` made a NumPy scalar, where every other call gives a 0-d array
        # (`n[...] = 0` failed; outside probe, Python round sixty-five).
        density += 0.0
        return density


def _boost(F, u, inverse: bool) -> np.ndarray:
    with _claim({"F_rest" if inverse else "F": F, "u": u}) as claim:
        return _boost_claimed(F, u, inverse, claim)


def _boost_claimed(F, u, inverse: bool, claim: _claim) -> np.ndarray:
    if u is None:  # box3d's u=None (rest-frame input) read here "u must hold real numbers; got dtype object"
        raise ValueError(f"{'boost_from_rest' if inverse else 'boost_to_rest'} needs the fluid four-velocity u "
                         "(..., 4); u=None (dodo.box3d's 'input already in the fluid rest frame') means no boost: "
                         "the components are F itself")
    vectors = _as_real_array("F", F, (N_COMPONENTS,), "(..., 4): four-vectors (t, x, y, z)")
    velocity = _as_real_array("u", u, (N_COMPONENTS,), "(..., 4): fluid four-velocity (t, x, y, z)", density=False)
    # u in the per-cell form of box3d and invariants, (..., 4) beside cells F (..., 6, 4), would
    # broadcast against F's species axis when the last batch axis happens to be as long (six cells
    # of six species): each species boosted with another cell's velocity, silently.
    # So would a u of the cells' trailing axes only, broadcast over the leading ones as box3d takes it
    # (u (ny, 4) for cells (nx, ny, 6, 4) with ny = 6: outside probe, round 42).
    cells = velocity.ndim - 1
    if velocity.ndim >= 2 and vectors.ndim >= velocity.ndim + 1 and velocity.shape[:-1] == vectors.shape[-2 - cells:-2]:
        raise ValueError(
            f"u with shape {velocity.shape} matches F's cell axes {vectors.shape[-2 - cells:-2]} (one velocity per cell, as dodo.box3d takes it) but would broadcast against "
            f"F's axis -2 (length {vectors.shape[-2]}): pass u[..., None, :] (of a list: np.asarray(u)[..., None, :]) for one velocity per cell, or "
            "np.broadcast_to(u, F.shape) for one per four-vector")
    try:
        shape = np.broadcast_shapes(vectors.shape, velocity.shape)
    except ValueError:
        raise ValueError(f"u with shape {velocity.shape} does not broadcast against F with shape {vectors.shape}") from None
    flat_vectors = np.ascontiguousarray(np.broadcast_to(vectors, shape).reshape(-1, N_COMPONENTS), dtype=np.float64)
    flat_u = np.ascontiguousarray(np.broadcast_to(velocity, shape).reshape(-1, N_COMPONENTS), dtype=np.float64)
    _check_velocity(flat_u, shape[:-1], velocity.dtype)
    claim.computing = True
    return _core.boost_four_vectors(flat_vectors, flat_u, inverse).reshape(shape)


def boost_to_rest(F: RealArrayLike, u: RealArrayLike) -> Float64Array:
    """Components of four-vectors F (..., 4) in the fluid rest frame: the pure boost along v = u/W.

    u (..., 4) broadcasts against F; for cells (..., 6, 4) pass ``u[..., None, :]`` (a u of the
    cells' batch shape, or of its trailing axes, plus (4,), as :func:`box3d` takes it, would
    broadcast against the species axis and is refused). u is required: None is refused.
    """
    return _boost(F, u, inverse=False)


def boost_from_rest(F_rest: RealArrayLike, u: RealArrayLike) -> Float64Array:
    """Inverse of :func:`boost_to_rest`: rest-frame components back to the lab tetrad."""
    return _boost(F_rest, u, inverse=True)


explain_type_names(Box3DResult, box3d_settings, crossing_features, box3d, invariants, comoving_density,
                   boost_to_rest, boost_from_rest)
