"""The fast-flavour QKE solver: conservation laws, Hermiticity, linear growth vs dispersion relation."""
import numpy as np
import pytest

from dodo.qke.directions import uniform_sphere
from dodo.qke.linear import box_growth_rate
from dodo.qke.backends import make_box
from dodo.qke.solver import FastFlavourBox, SolverConfig
from dodo.qke.states import NSM1_EMU_1D, box_setup, rotate_four_flux

NSM1 = NSM1_EMU_1D
FIDUCIAL = np.array([[1, 0, 0, 1 / 3], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, -1 / 3], [0, 0, 0, 0], [0, 0, 0, 0]]) * 1e32
THREE_FLAVOUR = np.array([[1.0, 0.1, 0.0, 0.3], [0.6, 0.0, 0.1, 0.1], [0.4, 0.0, -0.1, 0.05],
                          [0.9, 0.0, 0.1, -0.35], [0.5, 0.05, 0.0, 0.0], [0.3, 0.0, 0.0, -0.05]]) * 1e32


def box_averaged_invariants(box):
    """Box sums per direction of tr(rho), per-flavour lepton number, flavour-summed four-flux."""
    rho = box.rho
    trace_per_direction = np.trace(rho, axis1=-2, axis2=-1).sum(axis=2)  # [nsim, 2, ndir]
    moments = box.density_matrix_moments().mean(axis=2)  # [nsim, 2, 4, 3, 3]
    diagonal = np.real(np.diagonal(moments, axis1=-2, axis2=-1))  # [nsim, 2, 4, flavour]
    lepton_number = diagonal[:, 0, 0] - diagonal[:, 1, 0]
    flavour_summed = diagonal.sum(axis=-1)
    return trace_per_direction, lepton_number, flavour_summed


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_trace_lepton_number_and_flavour_summed_flux_are_conserved_to_rounding(backend):
    states = np.stack([NSM1, THREE_FLAVOUR * 30])
    # A large seed makes the run nonlinear within a few steps: conservation must hold there too.
    box = make_box(states, np.array([4.0, 3.0]),
                   SolverConfig(ncell=16, nphi_equator=8, perturbation_amplitude=1e-2, backend=backend))
    before = box_averaged_invariants(box)
    dt, _ = box.time_steps(np.array([3e-10, 3e-10]))
    for _ in range(60):
        box.step(dt)
    after = box_averaged_invariants(box)
    total = states[:, :, 0].sum(axis=1)
    offdiag = np.abs(box.density_matrix_moments()[:, 0, :, 0, 0, 1]).max(axis=1)
    assert np.all(offdiag > 1e-2 * total / 6)  # the run did mix flavours
    np.testing.assert_allclose(after[0], before[0], rtol=0, atol=1e-12 * total.max())
    np.testing.assert_allclose(after[1], before[1], rtol=0, atol=1e-12 * total.max())
    np.testing.assert_allclose(after[2], before[2], rtol=0, atol=1e-12 * total.max())
    np.testing.assert_allclose(box.rho, np.conj(np.swapaxes(box.rho, -1, -2)), atol=1e-12 * total.max())


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_advection_alone_moves_each_direction_at_its_velocity(backend):
    # Switch the coupling off (empty state but for a tiny nu_e bump) and check exact transport.
    box = make_box(np.stack([FIDUCIAL]), 1.0, SolverConfig(ncell=16, nphi_equator=8, state_filter="none", backend=backend))
    z = np.arange(16) / 16.0
    profile = 2 + np.cos(2 * np.pi * z) + 0.3 * np.sin(6 * np.pi * z)  # band-limited: exact
    rho = np.zeros_like(box.rho)
    rho[0, 0, :, :, 0, 0] = profile[:, None]
    box.rho = rho
    box.disable_coupling()
    dt = np.array([0.25 / 2.99792458e10])  # a quarter of the box length of light travel
    box.step(dt)
    shift = 0.25 * box.directions[:, 2]
    moved = z[:, None] - shift[None, :]
    expected = 2 + np.cos(2 * np.pi * moved) + 0.3 * np.sin(6 * np.pi * moved)
    np.testing.assert_allclose(box.rho[0, 0, :, :, 0, 0].real, expected, atol=1e-12)


def fastest_mode_amplitude(box, mode_index):
    """|Fourier amplitude| of the off-diagonal number densities at one box mode (all pairs, nu and nubar)."""
    density = box.density_matrix_moments()[:, :, :, 0]  # [nsim, 2, ncell, 3, 3]
    spectrum = np.fft.fft(density, axis=2)[:, :, mode_index]
    upper = np.triu_indices(3, k=1)
    return np.sqrt(np.sum(np.abs(spectrum[..., upper[0], upper[1]]) ** 2, axis=(1, 2)))


def dispersion_growth(state, hamiltonian_filter):
    """(measured, predicted, amplitude): the solver's growth rate of the box's fastest mode, fitted after
    6 e-folds, beside the linear theory's, and that mode's amplitude step by step."""
    ncell = 24
    directions = uniform_sphere(8)
    rotation, length, _, _ = box_setup(state, directions, ncell=ncell, axis="fastest")
    rotated = rotate_four_flux(state, rotation)
    predicted, k_fastest = box_growth_rate(rotated, directions, length, ncell, hamiltonian_filter=hamiltonian_filter)
    mode_index = int(round(k_fastest * length / (2 * np.pi))) % ncell
    config = SolverConfig(ncell=ncell, nphi_equator=8, perturbation_amplitude=1e-12, flavour_cfl=0.5,
                          hamiltonian_filter=hamiltonian_filter)
    box = FastFlavourBox(rotated[None], length, config, directions)
    dt, nsteps = box.time_steps(np.array([12.0 / predicted]))
    amplitude = [fastest_mode_amplitude(box, mode_index)[0]]
    for _ in range(nsteps):
        box.step(dt)
        amplitude.append(fastest_mode_amplitude(box, mode_index)[0])
    amplitude = np.array(amplitude)
    # After 6 e-folds the fastest eigenmode dominates its wavenumber; 6 more stay linear (seed 1e-12).
    time = dt[0] * np.arange(nsteps + 1)
    late = time > 6.0 / predicted
    measured = np.polyfit(time[late], np.log(amplitude[late]), 1)[0]
    return measured, predicted, amplitude


@pytest.mark.parametrize("state, hamiltonian_filter", [(NSM1, "none"), (FIDUCIAL, "none"), (THREE_FLAVOUR, "none"),
                                                       (NSM1, "emu")], ids=["nsm1", "fiducial", "three_flavour", "nsm1_emu"])
def test_linear_growth_rate_matches_the_dispersion_relation(state, hamiltonian_filter):
    measured, predicted, amplitude = dispersion_growth(state, hamiltonian_filter)
    assert measured == pytest.approx(predicted, rel=0.05)
    assert amplitude[-1] / amplitude[0] > np.exp(8)  # it did grow, exponentially


def test_bad_configurations_are_rejected():
    with pytest.raises(ValueError):
        SolverConfig(ncell=15).validate()
    with pytest.raises(ValueError):
        SolverConfig(state_filter="gaussian").validate()
    with pytest.raises(ValueError):
        FastFlavourBox(NSM1, 4.0, SolverConfig())  # missing batch axis
    with pytest.raises(ValueError):
        FastFlavourBox(NSM1[None], -1.0, SolverConfig())


def test_a_fastest_mode_beyond_the_grid_still_gets_the_box_modes_growth_rate():
    """Regression (issue 10): with a fixed box (--box-length 4) a dense state's fastest k lies
    beyond the grid's Nyquist wavenumber; the candidate box modes around it were then an empty
    list and the state was dropped with numpy's 'attempt to get argmax of an empty sequence'.
    The box still has unstable modes of its own: their fastest growth is the linear rate."""
    directions = uniform_sphere(8)
    dense = NSM1 * 15  # k_fastest ~ 67 cm^-1; the 16-cell grid of a 4 cm box holds k <= 12.6 cm^-1
    _, length, end, rate = box_setup(dense, directions, 16, axis="z", box_length_cm=4.0, end_time_s=1e-10)
    all_modes_rate, _ = box_growth_rate(dense, directions, 4.0, 16)
    assert (length, end) == (4.0, 1e-10)
    assert rate > 0 and rate == pytest.approx(all_modes_rate, rel=1e-12)
