"""Outside probe of the C interface and the compiled core, round twenty-four
(docs/reliability_cpp.md, "Round twenty-four"): dodo._core.QkeKernel took non-finite settings
(an infinite self_interaction or speed_of_light, a NaN direction, a NaN filter at k = 0, a cell
so small that its advection rate overflows) and stepped every box to NaN without a word; and
dodo._core.NativeNetwork read "dodo.output_size" with std::stoi, so it loaded packages the
closure refuses (" 78", "78.9", "078") and answered others with a bare "stoi"."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from dodo import _core
from dodo.models import default_model_path

NCELL = 8
DIRECTIONS = np.array([[0.0, 0.0, 1.0], [0.0, 0.6, -0.8]])


def _kernel(**changes):
    arguments = dict(directions=DIRECTIONS, ncell=NCELL, cell_size_cm=np.array([1.0]), state_filter=np.ones(NCELL),
                     moment_filter=None, self_interaction=1.0, speed_of_light=3e10)
    arguments.update(changes)
    return _core.QkeKernel(**arguments)


def _moments_after_a_step(kernel):
    state = np.zeros((6, kernel.nsim, 2, kernel.ncell, kernel.ndir), complex)
    state[0], state[1], state[2] = 1.0, 0.5, 0.25
    state[3] = 1e-3 * np.exp(2j * np.pi * np.arange(NCELL) / NCELL)[:, None]
    kernel.set_state(state)
    kernel.step(np.full(kernel.nsim, 1e-12))
    return kernel.moments()


def test_the_kernel_of_finite_settings_steps_to_finite_moments():
    """The control: the settings the refusals below change one at a time give finite moments."""
    assert np.isfinite(_moments_after_a_step(_kernel())).all()
    # A cell of 1e-288 cm: small, but its advection rate c pi / 1e-288 is still a double.
    assert np.isfinite(_moments_after_a_step(_kernel(moment_filter=np.ones(NCELL), cell_size_cm=np.array([1e-288])))).all()


@pytest.mark.parametrize("changes, named", [
    (dict(self_interaction=np.inf), "self_interaction and speed_of_light must be positive and finite"),
    (dict(speed_of_light=np.inf), "self_interaction and speed_of_light must be positive and finite"),
    (dict(directions=np.array([[0.0, 0.0, np.nan], [0.0, 0.6, -0.8]])), "directions must be finite"),
    (dict(directions=np.array([[0.0, 0.0, 1.0], [-np.inf, 0.6, -0.8]])), "directions must be finite"),
    (dict(state_filter=np.r_[np.nan, np.ones(NCELL - 1)]), "state_filter must be finite"),
    (dict(state_filter=np.r_[np.inf, np.ones(NCELL - 1)]), "state_filter must be finite"),
    (dict(moment_filter=np.r_[np.nan, np.ones(NCELL - 1)]), "moment_filter must be finite"),
    (dict(cell_size_cm=np.array([1.0, 5e-324])), "advection rate"),
], ids=["self_interaction_inf", "speed_of_light_inf", "direction_nan", "direction_inf", "state_filter_nan_k0",
        "state_filter_inf_k0", "moment_filter_nan_k0", "cell_size_subnormal"])
def test_non_finite_kernel_settings_are_refused_not_stepped_to_nan(changes, named):
    """Each was accepted, and the first step made NaN of the moments (the cell of 5e-324 cm: its
    Nyquist advection rate c pi / 5e-324 is inf). Refused with a ValueError naming the setting."""
    with pytest.raises(ValueError, match=named):
        _kernel(**changes)


def test_a_nan_filter_is_named_as_not_finite_rather_than_as_odd_in_k():
    """A NaN past k = 0 was refused, but as "state_filter must be even in k"."""
    with pytest.raises(ValueError, match="state_filter must be finite"):
        _kernel(state_filter=np.r_[np.ones(3), np.nan, np.ones(NCELL - 4)])


def _package_with(key, value):
    model = onnx.load(str(default_model_path()))
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            break
    else:
        raise AssertionError(f"the default model has no {key}")
    return bytes(_core.with_content_digest(model.SerializeToString()))


@pytest.mark.parametrize("declared", [" 78", "78.9", "078", "+78", "78 ", "abc", "", "0", "-1", "99999999999"])
def test_the_native_network_reads_the_output_size_as_strictly_as_the_closure(declared):
    """std::stoi read " 78", "78.9", "078" and "+78" as 78: NativeNetwork loaded packages that
    dodo.Closure refuses; "abc" gave ValueError("stoi"), 99999999999 IndexError("stoi").
    Each is now the closure's DODO_ERROR_MODEL_METADATA, naming the key and the value."""
    package = _package_with("dodo.output_size", declared)
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_METADATA: model "dodo.output_size" is "'):
        _core.NativeNetwork(package)
    with pytest.raises(RuntimeError, match="dodo.output_size"):
        _core.Closure(package)


def test_the_native_network_names_an_unknown_feature_set():
    """An unknown "dodo.features" was "dodo.native_network cannot take 0 inputs"."""
    with pytest.raises(RuntimeError, match=r'model "dodo.features" is "invariants27"; this runtime computes'):
        _core.NativeNetwork(_package_with("dodo.features", "invariants27"))


def test_the_native_network_of_the_default_package_still_loads():
    network = _core.NativeNetwork(default_model_path().read_bytes())
    features = np.zeros((2, 52), np.float32)
    head, uncertainty, growth = network.evaluate(features)
    assert head.shape == (2, 78) and np.isfinite(head).all() and uncertainty.shape == growth.shape == (2,)


def test_a_package_in_a_bytearray_loads_and_other_types_are_a_type_error():
    """_core.Closure took a bytearray for a path ('model file "\\x08\\x08\\x12..." does not exist',
    the package's bytes quoted as its name) and an int for a RuntimeError "Unable to cast"."""
    package = default_model_path().read_bytes()
    from_bytearray = _core.Closure(bytearray(package), run_self_test=True)
    from_bytes = _core.Closure(package)
    assert from_bytearray.has_model and from_bytearray.metadata == from_bytes.metadata
    rng = np.random.default_rng(24)
    F = np.zeros((16, 6, 4))
    F[:, :, 0] = rng.uniform(0.5, 1.5, (16, 6))
    F[:, :, 3] = rng.uniform(-0.4, 0.4, (16, 6))
    for a, b in zip(from_bytearray.apply(F), from_bytes.apply(F)):
        np.testing.assert_array_equal(a, b)
    for bad in (123, [1, 2], 1.5):
        with pytest.raises(TypeError, match="model must be None, a path"):
            _core.Closure(bad)
