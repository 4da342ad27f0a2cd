"""Outside probe, round forty-five (docs/reliability_python.md section 64): the Python API's result
objects, out= arrays across threads, and importlib.reload. Each test failed on the code before its
fix, except those marked as guards."""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import dodo

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
#: Only a hang guard: every call here takes well under a second.
HANG_GUARD_S = 120


def _cells(n: int = 64, seed: int = 45) -> np.ndarray:
    """Cells of random densities and fluxes (|F| < n per species): crossing and stable ones."""
    rng = np.random.default_rng(seed)
    F = np.zeros((n, 6, 4))
    F[..., 0] = rng.uniform(0.5, 1.5, (n, 6))
    F[..., 1:] = rng.uniform(-0.5, 0.5, (n, 6, 3)) * F[..., :1]
    return F


def _moving(n: int) -> np.ndarray:
    u = np.zeros((n, 4))
    u[:, 0] = 1 / np.sqrt(1 - 0.25)
    u[:, 1] = 0.5 * u[:, 0]
    return u


class _Held:
    """An F_init that a call reads (np.asarray) only when the test lets it: the call is then running,
    its out= claimed, for as long as the test needs, with no dependence on the machine's speed."""

    def __init__(self, F: np.ndarray) -> None:
        self.F = F
        self.entered = threading.Event()
        self.release = threading.Event()

    def __array__(self, dtype=None, copy=None):
        self.entered.set()
        assert self.release.wait(HANG_GUARD_S)
        return self.F if dtype is None else self.F.astype(dtype)


def _run_held(call, held: _Held) -> tuple[threading.Thread, list]:
    outcome: list = []

    def body():
        try:
            outcome.append(call())
        except BaseException as error:  # noqa: BLE001 - reported to the test
            outcome.append(error)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert held.entered.wait(HANG_GUARD_S)
    return thread, outcome


def _finish(thread: threading.Thread, held: _Held, outcome: list):
    held.release.set()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _same_bits(a, b) -> bool:
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))


# --- One out= written by two calls at once ----------------------------------------------------------

def _closure_apply():
    closure = dodo.Closure("box3d", threads=1)
    return closure.apply, dodo.ClosureResult


def _box3d():
    return (lambda F, u=None, out=None: dodo.box3d(F, u, threads=1, out=out)), dodo.Box3DResult


@pytest.mark.parametrize("make", [pytest.param(_closure_apply, marks=needs_runtime), _box3d],
                         ids=["Closure.apply", "box3d"])
def test_two_calls_at_once_writing_one_out_are_refused_not_mixed(make):
    """Two threads calling Closure.apply (or dodo.box3d) with the same out= and different cells: both
    wrote the same arrays at once, and out held a mix of the two calls' results (5 of 20 tries here),
    without a word. The second call is now refused in one line before it computes anything, and the
    first call's results are its own, bit for bit."""
    apply, result_type = make()
    F, G = _cells(64, 1), _cells(64, 2)
    expected_F, expected_G = apply(F), apply(G)
    out = result_type.empty((64,))
    held = _Held(F)
    thread, outcome = _run_held(lambda: apply(held, out=out), held)
    try:
        with pytest.raises(ValueError, match=r"out\.\w+ shares memory with out\.\w+ of another call running now "
                                             r"\(in another thread\).*give each concurrent call its own out"):
            apply(G, out=out)
        # A view of one of its arrays is the same memory.
        part = result_type(*(array[:8] for array in out))
        with pytest.raises(ValueError, match="of another call running now"):
            apply(G[:8], out=part)
    finally:
        result = _finish(thread, held, outcome)
    assert result is out and _same_bits(out, expected_F)
    # The claim ends with the call: the same out is written again, also after a refused call.
    assert _same_bits(apply(G, out=out), expected_G)


@pytest.mark.parametrize("reader", ["invariants", "crossing_features", "comoving_density", "boost_to_rest", "box3d"])
def test_reading_an_out_another_call_is_writing_is_refused(reader):
    """dodo.invariants (or another function) of a result's array that another thread's call was
    writing into at that moment read values half written, without a word."""
    out = dodo.Box3DResult.empty((16,))
    out.F_box[...] = _cells(16)
    held = _Held(_cells(16, 3))
    thread, outcome = _run_held(lambda: dodo.box3d(held, out=out), held)
    try:
        u = np.broadcast_to([1.0, 0, 0, 0], (16, 6, 4)) if reader == "boost_to_rest" else None
        with pytest.raises(ValueError, match=r"F(_init)? shares memory with out\.F_box, which another call running "
                                             r"now \(in another thread\) is writing: .*half written"):
            getattr(dodo, reader)(out.F_box, u)
    finally:
        _finish(thread, held, outcome)
    dodo.invariants(out.F_box)  # done: read freely


def test_writing_into_an_input_another_call_is_reading_is_refused():
    """An out= whose arrays are the cells another running call reads (its F_init): that call would
    read values half overwritten."""
    F = _cells(16)
    held = _Held(_cells(16, 4))
    u = np.broadcast_to([1.0, 0, 0, 0], (16, 4)).copy()
    thread, outcome = _run_held(lambda: dodo.box3d(held, u, out=dodo.Box3DResult.empty((16,))), held)
    try:
        victim = dodo.Box3DResult(F_box=np.empty((16, 6, 4)), growth_over_ntot=np.empty(16),
                                  growth_rate=u.reshape(-1)[16:32], status=np.empty(16, np.uint32))
        with pytest.raises(ValueError, match=r"out\.growth_rate shares memory with u, which another call running now"):
            dodo.box3d(F, out=victim)
    finally:
        _finish(thread, held, outcome)


def test_calls_that_only_read_the_same_arrays_run_at_once():
    """Guard: many calls at once reading the same F and u (no out=, or each its own out=) are not
    refused, and each result equals the one-thread result bit for bit."""
    F, u = _cells(500), _moving(500)
    reference = dodo.box3d(F, u, threads=1)
    results: list = [None] * 8
    errors: list = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = dodo.box3d(F, u, threads=1, out=None if i % 2 else dodo.Box3DResult.empty((500,)))
                dodo.invariants(F, u)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert not errors and all(_same_bits(result, reference) for result in results)


@needs_runtime
def test_many_threads_on_one_closure_each_with_its_own_out_equal_one_thread():
    """Guard: one Closure shared by 8 Python threads, each with its own out (and some without), a
    batch of stable and crossing moving cells: every result bit-equal to the single-thread one; the
    counters count every cell once."""
    closure = dodo.Closure("box3d", threads=1)
    F, u = _cells(300), _moving(300)
    reference = closure.apply(F, u)
    closure.reset_counters()
    results: list = [None] * 8

    def work(i):
        out = dodo.ClosureResult.empty((300,)) if i % 2 else None
        for _ in range(3):
            results[i] = closure.apply(F, u, out=out)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert all(_same_bits(result, reference) for result in results)
    assert closure.counters["cells"] == 8 * 3 * 300


def test_a_call_refused_for_another_reason_leaves_no_claim():
    """Guard: a call refused by its own checks (a wrong out shape, a bad F) releases what it claimed."""
    out = dodo.Box3DResult.empty((4,))
    with pytest.raises(ValueError):
        dodo.box3d(_cells(5), out=out)
    with pytest.raises(ValueError):
        dodo.box3d(np.full((4, 6, 4), "x"), out=out)
    dodo.box3d(_cells(4), out=out)
    from dodo import _box3d
    assert _box3d._running_calls == []


def test_a_call_of_the_same_thread_and_a_claim_of_an_ended_thread_do_not_refuse():
    """Guard (of this round's fix): a call made while another call of the same thread is under way (a
    signal handler's, here an __array__'s) runs: the two cannot overlap in time. A claim left by a
    thread that ended without releasing it (as a Ctrl-C between two lines could leave) refuses
    nothing."""
    from dodo import _box3d

    out = dodo.Box3DResult.empty((4,))
    F = _cells(4)
    expected = dodo.box3d(F)

    class Nested:
        def __array__(self, dtype=None, copy=None):
            dodo.box3d(_cells(4, 9), out=out)  # the same out, in the same thread
            return F

    assert _same_bits(dodo.box3d(Nested(), out=out), expected)
    thread = threading.Thread(target=lambda: _box3d._claim({}, out).__enter__())  # never released
    thread.start()
    thread.join(HANG_GUARD_S)
    done: list = []
    other = threading.Thread(target=lambda: done.append(dodo.box3d(F, out=out)))
    other.start()
    other.join(HANG_GUARD_S)
    assert done and _same_bits(done[0], expected)
    assert _box3d._running_calls == []


# --- Results made before an importlib.reload --------------------------------------------------------

def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"})


RELOAD_CHILD = """
    import importlib, pickle, copy
    import numpy as np
    import dodo
    F = np.zeros((3, 6, 4)); F[:, 0] = [1.0, 0, 0, 0.5]; F[:, 3] = [1.0, 0, 0, -0.5]; F[:, [1, 2, 4, 5], 0] = 0.3
    old_box = dodo.box3d(F)
    old_closure = dodo.Closure("box3d").apply(F) if dodo.runtime_available() else None
    old_status = dodo.CellStatus(int(old_box.status[0]) | 2)
    for module in (dodo._status, dodo._box3d, dodo._closure, dodo):
        importlib.reload(module)
    assert type(old_box) is not dodo._box3d.Box3DResult
    again = dodo.box3d(F, out=old_box)           # a previous call's result, as a time loop passes it
    assert again is old_box
    back = pickle.loads(pickle.dumps(old_box))
    assert type(back) is dodo._box3d.Box3DResult and all(np.array_equal(a, b) for a, b in zip(back, old_box))
    copy.deepcopy(old_box)
    if old_closure is not None:
        assert dodo.Closure("box3d").apply(F, out=old_closure) is old_closure
        back = pickle.loads(pickle.dumps(old_closure))
        assert type(back) is dodo._closure.ClosureResult
    back = pickle.loads(pickle.dumps(old_status))
    assert type(back) is dodo._status.CellStatus and back == old_status
    print("reload ok")
"""


def test_results_made_before_a_reload_are_taken_as_out_and_pickled():
    """After importlib.reload of dodo's modules (IPython's autoreload, a notebook re-running its
    imports), a result made before was refused as out= with `out must be a dodo.Box3DResult (...);
    got Box3DResult`, and pickling it (for a worker) failed: `Can't pickle <class
    'dodo._box3d.Box3DResult'>: it's not the same object as dodo._box3d.Box3DResult` (a ClosureResult
    and a dodo.CellStatus likewise)."""
    child = _child(RELOAD_CHILD)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "reload ok" in child.stdout


def test_results_still_pickle_and_copy_as_before():
    """Guard: a result of the current class pickles by its class (as a NamedTuple does), copies, and
    a look-alike of another module is still refused as out=."""
    result = dodo.box3d(_cells(3))
    assert _same_bits(pickle.loads(pickle.dumps(result)), result)
    assert type(copy.deepcopy(result)) is dodo.Box3DResult
    assert b"_reduce_result" not in pickle.dumps(result)
    status = dodo.CellStatus(3)
    assert pickle.loads(pickle.dumps(status)) == status and pickle.loads(pickle.dumps(dodo.CellStatus.NO_CROSSING)) \
        is dodo.CellStatus.NO_CROSSING
    from collections import namedtuple

    fake = namedtuple("Box3DResult", dodo.Box3DResult._fields)(*dodo.Box3DResult.empty((3,)))
    with pytest.raises(TypeError, match="out must be a dodo.Box3DResult"):
        dodo.box3d(_cells(3), out=fake)


FORK_CHILD = """
    import os, threading
    import numpy as np
    import dodo
    F = np.zeros((3, 6, 4)); F[:, :, 0] = 1.0
    out = dodo.Box3DResult.empty((3,))
    entered, release = threading.Event(), threading.Event()
    class Held:
        def __array__(self, dtype=None, copy=None):
            entered.set(); release.wait(60); return F
    thread = threading.Thread(target=lambda: dodo.box3d(Held(), out=out)); thread.start()
    assert entered.wait(60)
    pid = os.fork()
    if pid == 0:  # the thread whose call claimed out does not exist here
        try:
            dodo.box3d(F, out=out)
            os._exit(0)
        except BaseException as error:
            print("child:", error, flush=True)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    release.set(); thread.join(60)
    print("child status", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_is_not_refused_for_its_parents_running_calls():
    """Guard (of this round's fix): a child forked while another thread's call held an out= uses that
    out freely (the claims of threads that do not exist in it are dropped)."""
    child = _child(FORK_CHILD)
    assert "child status 0" in child.stdout, child.stdout + child.stderr[-3000:]


@needs_runtime
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_float32_max_flux_factor_says_why_it_is_not_the_models(dtype):
    """dodo.Closure(max_flux_factor=np.float32(0.98)) (read from a float32 file) with the default
    model (0.98) was refused as `model "dodo.box3d" max_flux_factor is 0.98 but max_flux_factor
    0.9800000190734863 was requested`, without saying where the digits came from."""
    with pytest.raises(RuntimeError, match=rf"given as {np.dtype(dtype).name} 0\.98, which is 0\.9\d+ in float64, in "
                                           r"which Dodo computes: give 0\.98 as a Python float, or None"):
        dodo.Closure(max_flux_factor=dtype(0.98))
    assert dodo.Closure(max_flux_factor=np.float64(0.98)).box3d_settings["max_flux_factor"] == 0.98  # guard


@pytest.mark.parametrize("kind", ["box3d", pytest.param("closure", marks=needs_runtime), "empty"])
def test_comparing_two_results_with_eq_says_how_to_compare_them(kind):
    """`r1 == r2` of two results (a NamedTuple of arrays) gave NumPy's `The truth value of an array with
    more than one element is ambiguous. Use a.any() or a.all()` (for 0 cells: `... of an empty array
    ...`), of a comparison that calls no any() or all(). Now a TypeError saying how to compare them;
    a result still equals itself, and not None."""
    F = _cells(3)
    make = {"box3d": lambda: dodo.box3d(F), "closure": lambda: dodo.Closure("box3d").apply(F),
            "empty": lambda: dodo.Box3DResult.empty((0,))}[kind]
    first, second = make(), make()
    for compare in (lambda: first == second, lambda: first != second, lambda: tuple(first) == second):
        with pytest.raises(TypeError, match=r"holds NumPy arrays, which == compares element by element.*"
                                            r"np\.array_equal\(a, b\)"):
            compare()
    assert first == first and not first != first and first in [first]  # guard
    assert first != None and not first == None and first != 3  # noqa: E711 - guard
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # the way the message names


def test_an_input_interleaved_with_a_running_calls_out_without_sharing_an_element_runs():
    """Guard (of this round's fix): the cells read (the even rows of an array) and a running call's out
    (a view of the odd rows' memory, as a float64 buffer) have overlapping bounds but no element in
    common: not refused."""
    storage = np.zeros((32, 6, 4))
    storage[::2] = _cells(16)
    odd = storage[1::2]
    out = dodo.Box3DResult(F_box=np.empty((16, 6, 4)), growth_over_ntot=np.empty(16), growth_rate=np.empty(16),
                           status=np.empty(16, np.uint32))
    # An out.F_box must be C-contiguous: a single odd row's memory (inside the even rows' bounds).
    out_one = dodo.Box3DResult(F_box=odd[3:4], growth_over_ntot=np.empty(1), growth_rate=np.empty(1),
                               status=np.empty(1, np.uint32))
    held = _Held(_cells(1, 5))
    thread, outcome = _run_held(lambda: dodo.box3d(held, out=out_one), held)
    try:
        result = dodo.box3d(storage[::2], out=out)
    finally:
        _finish(thread, held, outcome)
    assert _same_bits(result, dodo.box3d(storage[::2].copy()))
