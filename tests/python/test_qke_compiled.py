"""The compiled QKE kernel (C++ core) against the NumPy solver, its oracle: same numerics, so
one step agrees to rounding, a few hundred linear-phase steps to ~1e-10, whole runs row by row."""
import numpy as np
import pytest

from dodo.qke.compiled import CompiledFlavourBox, compiled_unavailable_reason
from dodo.qke.directions import uniform_sphere
from dodo.qke.backends import make_box, resolve_backend
from dodo.qke.solver import FastFlavourBox, SolverConfig
from dodo.qke.states import NSM1_EMU_1D, box_setup, rotate_four_flux

NSM1 = NSM1_EMU_1D
THREE_FLAVOUR = np.array([[1.0, 0.1, 0.0, 0.3], [0.6, 0.0, 0.1, 0.1], [0.4, 0.0, -0.1, 0.05],
                          [0.9, 0.0, 0.1, -0.35], [0.5, 0.05, 0.0, 0.0], [0.3, 0.0, 0.0, -0.05]]) * 1e33


def twin_boxes(states, lengths, **settings):
    numpy_box = FastFlavourBox(states, lengths, SolverConfig(backend="numpy", **settings))
    compiled_box = make_box(states, lengths, SolverConfig(backend="cpp", **settings))
    assert isinstance(compiled_box, CompiledFlavourBox)
    np.testing.assert_array_equal(compiled_box.state, numpy_box.state)  # same seeds, same initial state
    return numpy_box, compiled_box


def relative_difference(a, b):
    return np.abs(a - b).max() / np.abs(a).max()


@pytest.mark.parametrize("ncell, nphi, hamiltonian_filter, state_filter", [
    (16, 8, "emu", "houli"), (32, 12, "none", "houli"), (8, 8, "emu", "two_thirds"), (2, 8, "none", "none"),
    (64, 16, "emu", "houli")], ids=["16x24", "32x54-continuum", "8x24-two-thirds", "2x24-unfiltered", "64x92"])
def test_one_step_equals_the_numpy_step_to_rounding(ncell, nphi, hamiltonian_filter, state_filter):
    # Two simulations with their own box length and step; a large seed so the commutator's
    # off-diagonal terms matter; 54 directions exercise the kernel's row padding.
    states = np.stack([NSM1, THREE_FLAVOUR])
    numpy_box, compiled_box = twin_boxes(states, np.array([4.0, 2.5]), ncell=ncell, nphi_equator=nphi,
                                         hamiltonian_filter=hamiltonian_filter, state_filter=state_filter,
                                         perturbation_amplitude=1e-2)
    dt, _ = numpy_box.time_steps(np.array([1e-9, 3e-10]))
    moments_numpy, moments_compiled = numpy_box.step(dt), compiled_box.step(dt)
    assert relative_difference(moments_numpy, moments_compiled) < 1e-13
    after_numpy, after_compiled = numpy_box.state, compiled_box.state
    assert relative_difference(after_numpy, after_compiled) < 1e-13
    assert relative_difference(after_numpy[3:], after_compiled[3:]) < 1e-12  # off-diagonals on their own scale
    np.testing.assert_array_equal(compiled_box.time, numpy_box.time)


def test_a_few_hundred_steps_through_the_linear_phase_agree_to_1e10():
    """NSM1 in its box, seeds 1e-6, 300 of the 527 steps of a full run: the off-diagonals grow
    by 4 decades in the first 100 steps (linear phase) and saturate ~50 steps later. The compiled
    and NumPy states stay together to 1e-10 of the off-diagonal scale (measured 2e-14 at step
    100, 3e-13 at 300): the kernels are the same scheme, not just both convergent."""
    directions = uniform_sphere(8)
    rotation, length, _, _ = box_setup(NSM1, directions, 32, axis="fastest")
    rotated = rotate_four_flux(NSM1, rotation)[None]
    numpy_box, compiled_box = twin_boxes(rotated, length, ncell=32, nphi_equator=8)
    dt, _ = numpy_box.time_steps(np.array([1.2e-9]))
    seed = np.abs(numpy_box.state[3:]).max()
    for step in range(1, 301):
        numpy_box.step(dt)
        compiled_box.step(dt)
        if step in (100, 300):
            grown = np.abs(numpy_box.state[3:]).max() / seed
            assert (1e3 < grown < 1e5) if step == 100 else grown > 1e5  # linear, then saturated
            assert relative_difference(numpy_box.state[3:], compiled_box.state[3:]) < 1e-10
            assert relative_difference(numpy_box.state[:3], compiled_box.state[:3]) < 1e-12


def test_a_whole_run_records_the_same_history():
    states = np.stack([NSM1, THREE_FLAVOUR])
    numpy_box, compiled_box = twin_boxes(states, np.array([4.0, 2.0]), ncell=16, nphi_equator=8)
    end = np.array([2e-10, 1e-10])
    history_numpy, history_compiled = numpy_box.run(end), compiled_box.run(end)
    np.testing.assert_array_equal(history_compiled.time, history_numpy.time)
    total = states[:, :, 0].sum(axis=1)[:, None, None, None, None]
    np.testing.assert_allclose(history_compiled.four_flux / total, history_numpy.four_flux / total, rtol=0, atol=1e-13)
    np.testing.assert_allclose(history_compiled.offdiag_magnitude, history_numpy.offdiag_magnitude, rtol=1e-9)
    np.testing.assert_allclose(history_compiled.max_flavour_step, history_numpy.max_flavour_step, rtol=1e-9)


def test_state_round_trips_and_diagonals_stay_real():
    _, compiled_box = twin_boxes(NSM1[None], 4.0, ncell=8, nphi_equator=8, perturbation_amplitude=1e-2)
    state = compiled_box.state
    state[:, :, :, 3] *= 0.5
    compiled_box.state = state
    np.testing.assert_array_equal(compiled_box.state, state)
    compiled_box.step(np.array([1e-12]))
    assert np.all(compiled_box.state[:3].imag == 0)  # Hermitian: real diagonal by construction


def test_backend_choice_and_its_errors():
    assert compiled_unavailable_reason(64) is None
    assert "power of two" in compiled_unavailable_reason(48)
    assert resolve_backend(SolverConfig(ncell=64)) == ("cpp", None)
    backend, reason = resolve_backend(SolverConfig(ncell=48))
    assert backend == "numpy" and "ncell = 48 is not a power of two" in reason
    assert type(make_box(NSM1[None], 4.0, SolverConfig(ncell=48, nphi_equator=8))) is FastFlavourBox
    with pytest.raises(ValueError, match="backend 'cpp' cannot run: ncell = 48"):
        make_box(NSM1[None], 4.0, SolverConfig(ncell=48, nphi_equator=8, backend="cpp"))
    with pytest.raises(ValueError, match="backend must be one of"):
        SolverConfig(backend="gpu").validate()
    box = make_box(NSM1[None], 4.0, SolverConfig(ncell=8, nphi_equator=8, backend="cpp"))
    for bad in (0.0, -1e-12, np.nan, np.inf):
        with pytest.raises(ValueError, match="time steps must be positive and finite"):
            box.step(np.array([bad]))
    with pytest.raises(ValueError, match="wrong shape"):
        box.state = np.zeros((6, 1, 2, 8, 3), complex)


def test_threads_give_bitwise_the_same_results():
    states = np.stack([NSM1, THREE_FLAVOUR, NSM1 * 0.7])
    lengths = np.array([4.0, 2.5, 5.0])
    config = SolverConfig(ncell=16, nphi_equator=8, backend="cpp", perturbation_amplitude=1e-2)
    serial, threaded = make_box(states, lengths, config), make_box(states, lengths, config, threads=3)
    dt, _ = serial.time_steps(np.full(3, 3e-10))
    for _ in range(5):
        np.testing.assert_array_equal(serial.step(dt), threaded.step(dt))
    np.testing.assert_array_equal(serial.state, threaded.state)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            make_box(states, lengths, config, threads=bad)


def test_the_kernel_refuses_filters_that_are_not_even_in_k():
    """The diagonal nu/nubar pairs share one complex transform, valid for multipliers even in k."""
    from dodo._core import QkeKernel

    directions = uniform_sphere(8)
    lopsided = np.ones(8)
    lopsided[1] = 0.5  # bin +1 filtered, bin -1 not
    with pytest.raises(ValueError, match="state_filter must be even in k"):
        QkeKernel(directions, 8, np.array([0.5]), lopsided, None, 1.9e-22, 3e10)
    with pytest.raises(ValueError, match="moment_filter must be even in k"):
        QkeKernel(directions, 8, np.array([0.5]), np.ones(8), lopsided[None], 1.9e-22, 3e10)
    with pytest.raises(ValueError, match="power of two"):
        QkeKernel(directions, 12, np.array([0.5]), np.ones(12), None, 1.9e-22, 3e10)


def _step_in_child(box, dt, queue):
    queue.put(box.step(dt))


def test_a_threaded_box_used_before_a_fork_still_steps_in_the_child():
    """No thread outlives a step, so a forked child (multiprocessing's default on Linux) can go on
    stepping a box its parent used with threads; it gets the parent's next step exactly."""
    import multiprocessing

    states = np.stack([NSM1, THREE_FLAVOUR])
    box = make_box(states, np.array([4.0, 2.5]), SolverConfig(ncell=8, nphi_equator=8, backend="cpp"), threads=2)
    dt, _ = box.time_steps(np.full(2, 1e-10))
    box.step(dt)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_step_in_child, args=(box, dt, queue))
    child.start()
    from_child = queue.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0
    np.testing.assert_array_equal(from_child, box.step(dt))
