"""dodo's at-fork lock holds on Pythons whose RLock has no _recursion_count (3.9 and 3.10, which
pyproject.toml's requires-python >= 3.9 admits): Python round fifty's count-keeping read that 3.11
method, so every fork there printed "Exception ignored ... has no attribute '_recursion_count'" and the
lock was not held across the fork (found in the lead's review of that round). The lock below is an RLock
as those Pythons make it."""
import os
import sys
import threading

import pytest

import dodo._box3d as box3d_module
import dodo._closure as closure_module


class LockWithoutCount:
    """An RLock without _recursion_count, as on Python 3.9 and 3.10."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def acquire(self, blocking=True, timeout=-1):
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()


def free_for_another_thread(lock) -> bool:
    """Whether another thread can take ``lock`` at once (and gives it back)."""
    result = []

    def attempt():
        taken = lock.acquire(timeout=0.0)
        if taken:
            lock.release()
        result.append(taken)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(60)
    return result == [True]


def test_a_fork_hold_takes_and_gives_back_a_lock_without_recursion_count():
    lock = LockWithoutCount()
    hold = box3d_module._ForkHold(lambda: lock, lambda: 5.0)

    def as_the_at_fork_wrapper_calls_it():  # before() looks two frames up for the forking frame
        hold.before()

    def forking_frame():
        as_the_at_fork_wrapper_calls_it()

    forking_frame()
    assert not free_for_another_thread(lock), "held by the forking thread across the fork"
    hold.after_in_parent()
    assert free_for_another_thread(lock), "given back after the fork"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_fork_with_python310_style_locks_reports_nothing_and_leaves_them_free(monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: unraisable.append(report))
    running, cache = LockWithoutCount(), LockWithoutCount()
    monkeypatch.setattr(box3d_module, "_running_lock", running)
    monkeypatch.setattr(closure_module, "_cache_lock", cache)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [str(report.exc_value) for report in unraisable] == []
    assert free_for_another_thread(running) and free_for_another_thread(cache)
