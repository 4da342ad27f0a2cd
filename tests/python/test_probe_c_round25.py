"""Outside probe round twenty-five (C/C++ side): defects found and fixed.

See docs/reliability_cpp.md, "Round twenty-five".
"""

import pytest

from dodo import _core


@pytest.mark.parametrize("device", ["tpu", "", "CPU", "cuda:", "cuda:x"])
def test_closure_without_model_refuses_unknown_device(device):
    with pytest.raises(Exception, match="unknown device"):
        _core.Closure(None, device=device)


def test_closure_without_model_still_takes_cpu():
    _core.Closure(None, device="cpu")


def _kernel(directions):
    import numpy as np

    return _core.QkeKernel(np.asarray(directions, float), 8, np.array([1.0]), np.ones(8), None, 1.9e-22, 3e10)


@pytest.mark.parametrize("directions", [
    [[0.0, 0.0, 2.0], [0.0, 0.6, -0.8]],
    [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
    [[0.0, 0.0, 1.0 + 1e-9], [0.0, 0.6, -0.8]],
])
def test_qke_kernel_refuses_directions_that_are_not_unit(directions):
    with pytest.raises(ValueError, match="directions must be unit vectors"):
        _kernel(directions)


def test_qke_kernel_takes_normalised_directions():
    from dodo.qke.directions import uniform_sphere

    _kernel(uniform_sphere(8))
    _kernel([[0.0, 0.0, 1.0], [0.0, 0.6, -0.8]])


def test_long_model_path_is_shortened_in_messages(tmp_path):
    name = "a" * 200
    path = tmp_path / "/".join([name] * 5000) / "model.onnx"  # about 1 MB, never created
    with pytest.raises(Exception) as caught:
        _core.Closure(str(path))
    message = str(caught.value)
    assert len(message) < 2000, len(message)
    assert "shortened" in message and "model.onnx" in message and str(tmp_path)[:100] in message
