"""The Python API: batch shapes, dtypes, u handling and clear errors."""
import numpy as np
import pytest

import dodo
from conftest import random_states, random_velocities


def test_any_leading_batch_shape(rng):
    F = random_states(rng, 24).reshape(2, 3, 4, 6, 4)
    result = dodo.box3d(F)
    assert result.F_box.shape == F.shape and result.F_box.dtype == np.float64
    assert result.status.shape == result.growth_rate.shape == (2, 3, 4)
    single = dodo.box3d(F[1, 2, 3])
    assert single.F_box.shape == (6, 4) and single.status.shape == ()
    np.testing.assert_array_equal(single.F_box, result.F_box[1, 2, 3])
    assert dodo.invariants(F).shape == (2, 3, 4, 27)


def test_u_broadcasts_over_the_batch(rng):
    F = random_states(rng, 10)
    u = random_velocities(rng, 1)[0]
    np.testing.assert_array_equal(dodo.box3d(F, u).F_box, dodo.box3d(F, np.tile(u, (10, 1))).F_box)


def test_u_none_is_the_rest_frame(rng):
    F = random_states(rng, 10)
    np.testing.assert_array_equal(dodo.box3d(F).F_box, dodo.box3d(F, [1.0, 0.0, 0.0, 0.0]).F_box)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_real_dtypes_are_accepted_and_results_are_float64(dtype):
    F = np.zeros((6, 4), dtype=dtype)
    F[0, 0] = F[3, 0] = 2
    F[0, 3], F[3, 3] = 1, -1
    result = dodo.box3d(F)
    assert result.F_box.dtype == np.float64
    np.testing.assert_allclose(result.F_box, dodo.box3d(F.astype(np.float64)).F_box)


def test_non_contiguous_input_gives_the_same_result(rng):
    F = random_states(rng, 20)
    fortran = np.asfortranarray(F)
    reversed_view = F[::-1][::-1]
    np.testing.assert_array_equal(dodo.box3d(fortran).F_box, dodo.box3d(F).F_box)
    np.testing.assert_array_equal(dodo.box3d(reversed_view).F_box, dodo.box3d(F).F_box)
    np.testing.assert_array_equal(dodo.box3d(F[::2]).F_box, dodo.box3d(F).F_box[::2])


def test_threads_give_identical_results(rng):
    F = random_states(rng, 9000)
    reference = dodo.box3d(F, threads=1)
    for threads in (0, 2, 3):
        other = dodo.box3d(F, threads=threads)
        np.testing.assert_array_equal(other.F_box, reference.F_box)
        np.testing.assert_array_equal(other.status, reference.status)


@pytest.mark.parametrize(
    "shape, message",
    [((6,), r"\(\.\.\., 6, 4\)"), ((5, 4), r"\(\.\.\., 6, 4\)"), ((3, 6, 3), r"\(\.\.\., 6, 4\)")],
)
def test_wrong_shapes_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        dodo.box3d(np.ones(shape))


@pytest.mark.parametrize("value", [np.ones((6, 4), complex), np.full((6, 4), "a"), np.ones((6, 4), bool)])
def test_wrong_dtypes_are_refused(value):
    with pytest.raises(ValueError, match="real numbers"):
        dodo.box3d(value)


def test_u_with_wrong_shape_is_refused(rng):
    F = random_states(rng, 3)
    with pytest.raises(ValueError, match=r"u must have shape \(\.\.\., 4\)"):
        dodo.box3d(F, np.ones((3, 3)))
    with pytest.raises(ValueError, match="does not broadcast"):
        dodo.box3d(F, np.tile([1.0, 0, 0, 0], (4, 1)))


@pytest.mark.parametrize("u", [[1.0, 0.5, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.5, 1.0, 0, 0]])
def test_unnormalised_or_past_directed_u_is_refused(u):
    what = r"u\^t = .* is not positive" if u[0] <= 0 else r"\|u\.u \+ 1\| = .* exceeds the tolerance"
    with pytest.raises(ValueError, match=r"four-velocity at cell \(0,\).*" + what):
        dodo.box3d(np.ones((2, 6, 4)) * [1, 0, 0, 0], np.array([u, u]))


def test_u_within_tolerance_is_accepted():
    W = 1.0 / np.sqrt(1 - 0.25)
    u = np.array([W * (1 + 2e-7), W * 0.5, 0, 0])
    status = dodo.box3d(np.ones((6, 4)) * [1, 0, 0, 0.1], u).status
    assert status == dodo.CellStatus.NO_CROSSING  # accepted and computed (identical species do not cross)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"lebedev_order": 19}, "lebedev_order 19 is not available"), ({"z_method": "newton"}, "z_method"),
     ({"max_flux_factor": 1.5}, "max_flux_factor"), ({"threads": -1}, "threads")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dodo.box3d(np.ones((6, 4)) * [1, 0, 0, 0], **kwargs)


def test_zero_length_batch(rng):
    result = dodo.box3d(np.zeros((0, 6, 4)))
    assert result.F_box.shape == (0, 6, 4) and result.status.shape == (0,)


def test_box3d_settings_describe_the_closure():
    assert dodo.box3d_settings() == {"scheme": "pairwise", "form": "delta", "lebedev_order": 17,
                                     "z_method": "exact", "max_flux_factor": 0.98}
    with pytest.raises(ValueError):
        dodo.box3d_settings(lebedev_order=3)


def test_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, dodo; dodo.box3d; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
