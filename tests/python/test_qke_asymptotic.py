"""Asymptotic state and growth rate extraction (Rhea's reduction of Emu runs)."""
import numpy as np

from dodo.qke.asymptotic import asymptotic_states, growth_rate, saturation_index


def synthetic_history(rate=2.0, saturation_time=10.0, end_time=40.0, nt=4001):
    time = np.linspace(0.0, end_time, nt)
    magnitude = np.where(time < saturation_time, 1e-7 * np.exp(rate * (time - saturation_time)), 1e-7)
    magnitude = magnitude * 1e7 * (1.0 + 0.1 * np.where(time >= saturation_time, np.sin(5 * time) ** 2, 0.0))
    magnitude[time >= saturation_time] *= 0.5  # settles below the first peak
    four_flux = np.zeros((nt, 2, 3, 4))
    four_flux[:, :, :, 0] = 1.0
    converted = 0.2 * np.clip((time - saturation_time) / 2.0, 0, 1)
    four_flux[:, :, 0, 0] -= converted[:, None]
    four_flux[:, :, 1, 0] += converted[:, None]
    return time, four_flux, magnitude


def test_growth_rate_and_saturation_time_of_a_clean_exponential():
    time, _, magnitude = synthetic_history()
    index = saturation_index(magnitude)
    assert abs(time[index] - 10.0) < 0.02
    assert growth_rate(time, magnitude, index) == np.float64(growth_rate(time, magnitude, index))
    np.testing.assert_allclose(growth_rate(time, magnitude, index), 2.0, rtol=1e-6)


def test_asymptotic_state_is_the_late_time_average_and_conserves():
    time, four_flux, magnitude = synthetic_history()
    state = asymptotic_states(time[None], four_flux[None], magnitude[None])
    assert state.valid[0], state.reason
    np.testing.assert_allclose(state.final[0, :, 0, 0], 0.8, rtol=1e-12)
    np.testing.assert_allclose(state.final[0, :, 1, 0], 1.2, rtol=1e-12)
    np.testing.assert_allclose(state.final_stddev[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(state.growth_rate, 2.0, rtol=1e-6)


def test_runs_that_end_before_three_saturation_times_are_dropped_with_a_reason():
    time, four_flux, magnitude = synthetic_history(end_time=25.0, nt=2501)
    state = asymptotic_states(time[None], four_flux[None], magnitude[None])
    assert not state.valid[0] and "t_sat" in state.reason[0]


def test_runs_that_violate_conservation_are_dropped():
    time, four_flux, magnitude = synthetic_history()
    four_flux[:, 0, 0, 0] *= 1.0 + 1e-3 * (time > 20)  # nu_e appears from nowhere late
    state = asymptotic_states(time[None], four_flux[None], magnitude[None])
    assert not state.valid[0] and "conservation" in state.reason[0]


def test_runs_without_growth_are_dropped():
    time, four_flux, _ = synthetic_history()
    state = asymptotic_states(time[None], four_flux[None], np.full((1, len(time)), 1e-6))
    assert not state.valid[0]


def test_a_history_without_any_flavour_mixing_is_dropped_with_a_reason_not_a_numpy_error():
    """Zero off-diagonal magnitude (no seed, or a state that never mixes): 0/0 in the decade
    test must not raise (warnings are errors here) nor give a NaN state; the run is dropped."""
    time, four_flux, _ = synthetic_history()
    state = asymptotic_states(time[None], four_flux[None], np.zeros((1, len(time))))
    assert not state.valid[0] and state.reason[0] == "no exponential growth found"


def test_growth_without_samples_inside_the_window_is_no_growth():
    """Rhea's window (1e-3, 1e-1) x max before t_sat holds fewer than two samples: rate 0, dropped."""
    time = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 20.0])
    magnitude = np.array([1e-9, 1e-9, 1.0, 0.5, 0.5, 0.5])
    four_flux = np.ones((len(time), 2, 3, 4))
    state = asymptotic_states(time[None], four_flux[None], magnitude[None])
    assert not state.valid[0] and state.growth_rate[0] == 0.0 and state.reason[0] == "no exponential growth found"
