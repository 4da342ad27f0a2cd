"""dodo.Closure.apply(..., out=) and dodo.box3d(..., out=): a time loop's calls write into arrays it
keeps, with the same bits as the allocating call, and refuse arrays they cannot write into."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import random_states, random_velocities

import dodo
from dodo._status import REJECTED_MASK


def mixed_cells(n: int = 3000, seed: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Crossing, stable (M1-like: heavy species equal, fewer nubar_e) and rejected cells, boosted."""
    rng = np.random.default_rng(seed)
    F = random_states(rng, n)
    stable = slice(0, n // 3)
    F[stable, 2] = F[stable, 4] = F[stable, 5] = F[stable, 1]
    F[stable, 3] *= 0.4
    u = random_velocities(rng, n)
    F = dodo.boost_from_rest(F, u[:, None, :])
    F[n // 3, 0, 0] = np.nan  # rejected: non-finite
    F[n // 3 + 1, 2, 0] = -1e33  # rejected: negative density
    return F, u


@pytest.fixture(scope="module")
def closure():
    return dodo.Closure(threads=2, chunk_size=256)


@pytest.fixture(scope="module")
def cells():
    return mixed_cells()


def garbage_like(result):
    """A result whose arrays hold values no call writes (NaN, all bits set), so every value
    the call leaves unwritten shows up."""
    for array in result:
        array.reshape(-1).view(np.uint8)[...] = 0xFF
    return result


def assert_same_bits(expected, got):
    assert type(expected) is type(got)
    for name, a, b in zip(expected._fields, expected, got):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert a.tobytes() == b.tobytes(), f"{name} differs from the allocating call"


@pytest.mark.parametrize("batch", [(3000,), (50, 60), ()])
def test_closure_out_gives_the_allocating_calls_bits_and_returns_out(closure, cells, batch):
    F, u = cells
    n = int(np.prod(batch))
    F, u = F[:n].reshape(batch + (6, 4)), u[:n].reshape(batch + (4,))
    status = closure.apply(F, u).status
    if n > 1:  # every path: crossing, stable and rejected cells
        stable = status == int(dodo.CellStatus.NO_CROSSING)
        rejected = (status & REJECTED_MASK) != 0
        assert stable.sum() > 100 and rejected.sum() == 2 and (~stable & ~rejected).sum() > n // 2
    expected = closure.apply(F, u)
    out = garbage_like(dodo.ClosureResult.empty(batch))
    arrays = [id(array) for array in out]
    got = closure.apply(F, u, out=out)
    assert got is out and [id(array) for array in got] == arrays
    assert_same_bits(expected, got)


def test_closure_out_reused_across_steps_matches_fresh_calls(closure, cells):
    """A time loop: the same out, new inputs every step (rest-frame input, u=None, included)."""
    F, u = cells
    out = dodo.ClosureResult.empty(len(F))
    for F_step, u_step in [(F, u), (F[::-1].copy(), u[::-1].copy()), (F, None)]:
        closure.apply(F_step, u_step, out=out)
        assert_same_bits(closure.apply(F_step, u_step), out)


def test_closure_out_without_a_model_and_with_one_thread(cells):
    F, u = cells
    for closure in (dodo.Closure(dodo.BOX3D_ONLY, threads=1), dodo.Closure(threads=1)):
        out = garbage_like(dodo.ClosureResult.empty(len(F)))
        assert_same_bits(closure.apply(F, u), closure.apply(F, u, out=out))


@pytest.mark.parametrize("threads", [1, 2])
def test_box3d_out_gives_the_allocating_calls_bits(cells, threads):
    F, u = cells
    F, u = np.tile(F, (2, 1, 1)), np.tile(u, (2, 1))  # above the size at which threads start
    expected = dodo.box3d(F, u, threads=threads)
    out = garbage_like(dodo.Box3DResult.empty(len(F)))
    got = dodo.box3d(F, u, threads=threads, out=out)
    assert got is out
    assert_same_bits(expected, got)
    # The growth rate in s^-1: (proxy * Box3D's N_tot) * the unit, the formula dodo.box3d had in
    # NumPy before the core wrote it into out, to the bit.
    F_box, growth, ntot, status = dodo._core.Box3D(17, "exact", 0.98).apply(F, u, threads)
    assert (growth * ntot * dodo.conventions.GROWTH_RATE_PER_NTOT).tobytes() == got.growth_rate.tobytes()
    assert F_box.tobytes() == got.F_box.tobytes() and status.tobytes() == got.status.tobytes()


def test_box3d_out_with_a_batch_shape_and_in_the_rest_frame(cells):
    F, _ = cells
    F = F[:600].reshape(20, 30, 6, 4)
    out = garbage_like(dodo.Box3DResult.empty((20, 30)))
    assert_same_bits(dodo.box3d(F), dodo.box3d(F, out=out))


def replaced(result, name, array):
    return result._replace(**{name: array})


def bad_outputs(result_type, n):
    """(description, out, error type, words of the message) for every way an out can be wrong."""
    good = result_type.empty(n)
    first = good._fields[0]
    float_name = "growth_over_ntot"
    cases = [
        ("a tuple", tuple(good), TypeError, "must be a dodo." + result_type.__name__),
        ("a list instead of an array", replaced(good, float_name, list(good.growth_over_ntot)), TypeError, "NumPy array"),
        ("float32 values", replaced(good, first, getattr(good, first).astype(np.float32)), ValueError, "dtype float64"),
        ("int64 status", replaced(good, "status", good.status.astype(np.int64)), ValueError, "dtype uint32"),
        ("big-endian values", replaced(good, float_name, good.growth_over_ntot.astype(">f8")), ValueError, "dtype float64"),
        ("one cell short", replaced(good, float_name, np.empty(n - 1)), ValueError, f"this call writes ({n},)"),
        ("cells flattened", replaced(good, first, np.empty((n, 24))), ValueError, "has shape"),
        ("a strided view", replaced(good, float_name, np.empty(2 * n)[::2]), ValueError, "C-contiguous"),
        ("Fortran order", replaced(good, first, np.asfortranarray(np.empty((n, 6, 4)))), ValueError, "C-contiguous"),
    ]
    read_only = np.empty(n)
    read_only.flags.writeable = False
    cases.append(("read-only", replaced(good, float_name, read_only), ValueError, "read-only"))
    shared = getattr(good, float_name)
    cases.append(("two outputs in one array", replaced(good, "growth_rate", shared), ValueError, "shares memory with out."))
    return cases


@pytest.mark.parametrize("case", range(11))
def test_closure_refuses_outputs_it_cannot_write_into(closure, cells, case):
    F, u = cells
    description, out, error, words = bad_outputs(dodo.ClosureResult, len(F))[case]
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        closure.apply(F, u, out=out)
    assert description


@pytest.mark.parametrize("case", range(11))
def test_box3d_refuses_outputs_it_cannot_write_into(cells, case):
    F, u = cells
    description, out, error, words = bad_outputs(dodo.Box3DResult, len(F))[case]
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        dodo.box3d(F, u, out=out)
    assert description


def test_outputs_that_share_memory_with_the_input_are_refused(closure, cells):
    F, u = cells
    F = F.copy()
    out = dodo.ClosureResult.empty(len(F))
    with pytest.raises(ValueError, match="out.F_pred shares memory with the input F_init"):
        closure.apply(F, u, out=out._replace(F_pred=F))
    u_flat = np.ascontiguousarray(u)  # its first n values, as an output array: shared memory
    with pytest.raises(ValueError, match="shares memory with the input u"):
        closure.apply(F, u_flat, out=out._replace(uncertainty=u_flat.reshape(-1)[:len(F)]))
    with pytest.raises(ValueError, match="out.F_box shares memory with the input F_init"):
        dodo.box3d(F, u, out=dodo.Box3DResult.empty(len(F))._replace(F_box=F))
    with pytest.raises(ValueError, match="out.growth_rate shares memory with the input u"):
        dodo.box3d(F, u_flat, out=dodo.Box3DResult.empty(len(F))._replace(growth_rate=u_flat.reshape(-1)[len(F):2 * len(F)]))


def test_the_core_checks_outputs_itself(closure, cells):
    """dodo._core never converts an output (a copy would leave the caller's array unwritten)."""
    F, u = cells
    n = len(F)
    arrays = [np.empty((n, 6, 4)), np.empty(n, np.uint32)] + [np.empty(n) for _ in range(4)]
    with pytest.raises(ValueError, match="C-contiguous"):
        closure._runtime.apply_into(F, u, arrays[0], arrays[1], np.empty(2 * n)[::2], *arrays[3:])
    with pytest.raises(TypeError, match="wrong dtype"):
        closure._runtime.apply_into(F, u, arrays[0], np.empty(n, np.int32), *arrays[2:])
    with pytest.raises(ValueError, match="this call writes"):
        closure._runtime.apply_into(F, u, np.empty((n - 1, 6, 4)), *arrays[1:])
