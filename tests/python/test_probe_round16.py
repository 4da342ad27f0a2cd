"""Outside probe, round sixteen (docs/reliability_python.md section 18): each test failed on the
code before its fix."""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import pytest

import dodo  # noqa: E402

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
MODELS = Path(dodo.__file__).resolve().parent / "models"
DODO_ERROR_MODEL_METADATA = 4
BAD_VELOCITY = int(dodo.CellStatus.BAD_VELOCITY)


def crossing_cell() -> np.ndarray:
    """One cell with an ELN crossing (Box3D corrects it at rest)."""
    F = np.zeros((6, 4))
    F[:, 0] = [1.0, 0.5, 0.5, 1.2, 0.4, 0.4]
    F[:, 3] = [0.3, -0.1, -0.1, -0.5, 0.1, 0.1]
    return F


# --- a four-velocity whose u^t^2 overflows -----------------------------------------------------

# u^t beyond ~1.34e154 overflows u^t^2 to inf: the tolerance 1e-6 max(1, u^t^2) became inf and the
# error |u.u + 1| (inf) passed it, so these were taken for unit four-velocities (u.u is -1e320 for
# the first), the boost degenerated (W = 0) and the cell came back ZERO_DENSITY, while u = (2, 0, 0, 0)
# was refused as not normalised.
OVERFLOWING_VELOCITIES = [[1e160, 0.0, 0.0, 0.0], [2e154, 0.0, 0.0, 0.0], [1e300, 1.0, 0.0, 0.0],
                          [1e200, 1e150, 0.0, 0.0]]


@pytest.mark.parametrize("u", OVERFLOWING_VELOCITIES)
def test_a_four_velocity_whose_square_overflows_is_not_taken_for_a_unit_vector(u):
    u = np.array(u)
    valid, _ = dodo._core.check_four_velocities(u.reshape(1, 4))
    assert not valid[0]
    assert not dodo._core.all_four_velocities_valid(u.reshape(1, 4))
    F = crossing_cell()
    calls = [lambda: dodo.box3d(F, u), lambda: dodo.comoving_density(F, u), lambda: dodo.invariants(F, u),
             lambda: dodo.boost_to_rest(F, u)]
    if dodo.runtime_available():
        calls.append(lambda: dodo.Closure(dodo.BOX3D_ONLY, threads=1).apply(F, u))
    for call in calls:
        with pytest.raises(ValueError, match="not a future-directed unit timelike four-velocity") as error:
            call()
        # a finite tolerance: since round 29 the cap, 0.5, from u^t ~ 707 on
        assert "exceeds the largest tolerance 0.5 (" in str(error.value)
    # u = (1e150, 0, 0, 0), whose u^t^2 is finite, was refused already: the two now agree.
    with pytest.raises(ValueError, match="unit timelike"):
        dodo.box3d(F, np.array([1e150, 0.0, 0.0, 0.0]))


@needs_runtime
def test_the_c_api_flags_a_four_velocity_whose_square_overflows_as_bad_velocity():
    from libdodo_ctypes import load_libdodo

    lib = load_libdodo()
    handle = ctypes.c_void_p()
    assert lib.dodo_closure_create(dodo.BOX3D_ONLY.encode(), None, ctypes.byref(handle), None, 0) == 0
    try:
        n = len(OVERFLOWING_VELOCITIES) + 1
        F = np.ascontiguousarray(np.broadcast_to(crossing_cell(), (n, 6, 4)))
        u = np.array(OVERFLOWING_VELOCITIES + [[1.0, 0.0, 0.0, 0.0]])
        F_pred = np.zeros_like(F)
        status = np.zeros(n, np.uint32)
        double_p = ctypes.POINTER(ctypes.c_double)
        assert lib.dodo_apply(handle, n, F.ctypes.data_as(double_p), None, u.ctypes.data_as(double_p), None,
                              F_pred.ctypes.data_as(double_p), None,
                              status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))) == 0
        assert list(status[:-1]) == [BAD_VELOCITY] * (n - 1), status
        assert status[-1] == 0
        np.testing.assert_array_equal(F_pred[:-1], F[:-1])  # a rejected cell keeps its input
    finally:
        lib.dodo_closure_destroy(handle)


# --- a package whose own Box3D settings are out of range ---------------------------------------

def resigned_with_box3d(tmp_path: Path, name: str, **changes) -> Path:
    """The synthetic test package with its "dodo.box3d" entry changed and the digests written
    again (dodo._core.with_content_digest, as someone editing on purpose would)."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(MODELS / "synthetic-test-equivariant.onnx"))
    for entry in model.metadata_props:
        if entry.key == "dodo.box3d":
            entry.value = json.dumps({**json.loads(entry.value), **changes})
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(bytes(dodo._core.with_content_digest(model.SerializeToString())))
    return path


BAD_BOX3D = {"max_flux_factor_0": {"max_flux_factor": 0}, "max_flux_factor_1.5": {"max_flux_factor": 1.5},
             "max_flux_factor_nan": {"max_flux_factor": float("nan")},
             "max_flux_factor_-0.5": {"max_flux_factor": -0.5}, "lebedev_order_5": {"lebedev_order": 5}}


@needs_runtime
@pytest.mark.parametrize("name", sorted(BAD_BOX3D))
def test_a_package_whose_own_box3d_settings_are_out_of_range_is_refused_as_metadata(tmp_path, name):
    """An edited package with max_flux_factor 0 / 1.5 / NaN or a Lebedev order Box3D lacks in its
    "dodo.box3d" was refused as the caller's argument: ValueError "DODO_ERROR_INVALID_ARGUMENT:
    Box3D settings: max_flux_factor must lie in (0, 1); got 1.500000", naming neither the file nor
    the key, for a call that gave no such argument. Now DODO_ERROR_MODEL_METADATA naming both."""
    path = resigned_with_box3d(tmp_path, name, **BAD_BOX3D[name])
    key = next(iter(BAD_BOX3D[name]))
    with pytest.raises(RuntimeError) as error:
        dodo.Closure(path, threads=1)
    message = str(error.value)
    assert message.startswith("DODO_ERROR_MODEL_METADATA"), message
    assert str(path) in message and '"dodo.box3d"' in message and key in message, message
    assert "\n" not in message

    from libdodo_ctypes import load_libdodo

    lib = load_libdodo()
    handle = ctypes.c_void_p()
    buffer = ctypes.create_string_buffer(1024)
    assert lib.dodo_closure_create(str(path).encode(), None, ctypes.byref(handle), buffer, 1024) == \
        DODO_ERROR_MODEL_METADATA, buffer.value
    assert not handle.value
    assert b'"dodo.box3d"' in buffer.value


@needs_runtime
def test_a_package_with_valid_box3d_settings_still_loads(tmp_path):
    """The check's other side: a re-signed package with another valid order loads at that order."""
    path = resigned_with_box3d(tmp_path, "order41", lebedev_order=41.0)
    closure = dodo.Closure(path, threads=1, self_test=False)
    assert closure.box3d_settings["lebedev_order"] == 41
