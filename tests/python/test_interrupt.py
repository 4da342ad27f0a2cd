"""Ctrl-C ends a long dodo.box3d / dodo.Closure.apply call between slices of cells instead of at its
end (probe round thirteen: a 10^6-cell call answered 2.1 s after the signal, a 10^8-cell one minutes
after). The binding computes long calls in slices without the GIL and runs pending signal handlers
between them (cpp/bindings/python/gil.hpp). The proof is the outputs: a call interrupted inside has
written its first slices and not its last ones; on the code before, every interrupted call had
written all of them. No threshold depends on the machine's speed: the batch grows until the timer
fires inside a call."""
from __future__ import annotations

import numpy as np
import pytest

import dodo
from conftest import random_states, rows_written_when_interrupted
from dodo._closure import runtime_available


@pytest.fixture
def small_slices():
    previous = dodo._core._set_interrupt_slice_cells(64)
    yield
    dodo._core._set_interrupt_slice_cells(previous)


def interrupted_inside(call, make_out, out_rows) -> bool:
    """Arms a 5 ms timer before each call on more cells until one KeyboardInterrupt arrives while
    the call is inside its slices; True once the outputs show that."""
    rng = np.random.default_rng(5)
    for n in (2_000, 8_000, 32_000, 128_000, 512_000):
        F = random_states(rng, n)
        out = make_out(n)
        for _ in range(3):
            written = rows_written_when_interrupted(call, F, out, out_rows(out))
            if written is not None and written.any() and not written.all():
                assert written[: np.argmin(written)].all()  # the slices before were complete
                return True
    return False


def test_ctrl_c_ends_a_long_box3d_call_between_slices(small_slices):
    assert interrupted_inside(lambda F, out: dodo.box3d(F, out=out), dodo.Box3DResult.empty,
                              lambda out: out.F_box)


@pytest.mark.skipif(not runtime_available(), reason="closure runtime not built")
def test_ctrl_c_ends_a_long_closure_call_between_slices(small_slices):
    closure = dodo.Closure(threads=1)
    assert interrupted_inside(lambda F, out: closure.apply(F, out=out), dodo.ClosureResult.empty,
                              lambda out: out.F_pred)
    # The handle works after an interrupted call, and the slicing changes no bit.
    F = random_states(np.random.default_rng(9), 1_000)
    sliced = closure.apply(F).F_pred
    dodo._core._set_interrupt_slice_cells(1 << 18)
    assert np.array_equal(closure.apply(F).F_pred, sliced)
