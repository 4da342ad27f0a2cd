"""Issue 5, threads: the binding releases the GIL, so two Python threads calling dodo.box3d or one
shared dodo.Closure overlap in time.

Timing-based speed-ups are unreliable on a loaded 2-core machine, so the proof is ordering: thread
A starts a long call (about a second); thread B waits until A is inside it, then makes a short call
(a few ms). If the GIL were held during A's call, B could not even start its call before A returns;
with the GIL released B finishes first, whatever the load. A ticker thread also counts how often
pure Python code ran while A was inside the C++ code.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import dodo
from conftest import random_states, random_velocities
from dodo._closure import runtime_available


def overlap(call, big, small) -> dict:
    F_big, u_big = big
    F_small, u_small = small
    times: dict[str, float] = {}
    ticks: list[float] = []
    started = threading.Event()
    stop = threading.Event()

    def long_call():
        times["a_start"] = time.perf_counter()
        started.set()
        call(F_big, u_big)
        times["a_end"] = time.perf_counter()

    def short_call():
        started.wait()
        time.sleep(0.05)  # let A get into the C++ code
        times["b_start"] = time.perf_counter()
        call(F_small, u_small)
        times["b_end"] = time.perf_counter()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.002)

    threads = [threading.Thread(target=f) for f in (long_call, short_call, ticker)]
    for thread in threads:
        thread.start()
    threads[0].join()
    threads[1].join()
    stop.set()
    threads[2].join()
    inside = [t for t in ticks if times["a_start"] + 0.1 < t < times["a_end"] - 0.01]
    return {**times, "ticks_inside": len(inside), "a_seconds": times["a_end"] - times["a_start"]}


def batches(n_big: int):
    rng = np.random.default_rng(5)
    big = (random_states(rng, n_big), random_velocities(rng, n_big))
    small = (big[0][:64].copy(), big[1][:64].copy())
    return big, small


def check(result: dict) -> None:
    assert result["a_seconds"] > 0.3, f"the long call was too short to tell: {result}"
    # B started after A was inside its call and finished before A returned: the calls overlapped.
    assert result["a_start"] < result["b_start"] and result["b_end"] < result["a_end"], result
    assert result["ticks_inside"] >= 5, result


def test_box3d_releases_the_gil():
    big, small = batches(150_000)
    check(overlap(lambda F, u: dodo.box3d(F, u, threads=1), big, small))


@pytest.mark.skipif(not runtime_available(), reason="dodo built without the closure runtime")
def test_shared_closure_apply_releases_the_gil():
    closure = dodo.Closure(None, threads=1)
    big, small = batches(120_000)
    reference = closure.apply(*small).F_pred
    check(overlap(closure.apply, big, small))
    np.testing.assert_array_equal(closure.apply(*small).F_pred, reference)  # shared handle unharmed


def test_the_detector_sees_a_call_that_holds_the_gil():
    """Control: a call that keeps the GIL (the re module's matcher never releases it) fails the
    check, so passing it above means the GIL was released."""
    import re
    pattern = re.compile(r"(a+)+$")

    def hold(F, u):
        subject = "a" * (22 if F is not None and len(F) > 64 else 8) + "b"  # ~0.5 s for the long call
        pattern.match(subject)

    big, small = (np.zeros((65, 6, 4)), None), (np.zeros((1, 6, 4)), None)
    result = overlap(hold, big, small)
    assert result["b_end"] > result["a_end"] and result["ticks_inside"] <= 2, result
