"""Batched solver of the fast-flavour quantum kinetic equations in a periodic 1D box.

Equations (Richers et al., PRD 103, 083013 (2021), eqs. 1-4, the equations Emu integrates;
vacuum and matter terms dropped, see docs/qke.md), for the number-density matrices
``rho_v(z, t)`` and ``rhobar_v(z, t)`` of each discrete direction ``v`` (cm^-3 per direction):

    d rho_v / dt    + c v_z d rho_v / dz    = -i [H_v, rho_v]
    d rhobar_v / dt + c v_z d rhobar_v / dz = -i [Hbar_v, rhobar_v],   Hbar_v = -conj(H_v)
    H_v = mu sum_u (1 - v . u) (rho_u - conj(rhobar_u)),              mu = sqrt(2) G_F / hbar

i.e. ``H_v = mu (A^t - v . A_vec)`` with the four-moments ``A^m = sum_u (1, u) (rho_u - conj(rhobar_u))``
(Emu's ``N - conj(Nbar)`` and ``F - conj(Fbar)``).

Numerics: the box axis is z (rotate states so the wanted axis is z). Advection is solved exactly
in Fourier space (a phase shift per direction and wavenumber), the flavour term by the
integrating-factor ("Lawson") fourth-order Runge-Kutta method (Lawson, SIAM J. Numer. Anal. 4,
372 (1967)); so the step is limited only by the flavour time scale. Optionally the moments that
build H are smoothed with Emu's particle-mesh transfer function (quadratic-spline deposit and
interpolation), which makes the coupling at the grid scale match Emu's.
Everything is vectorised over a batch of independent simulations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..conventions import GROWTH_RATE_PER_NTOT, N_FLAVOURS
from .directions import uniform_sphere
from .initial import initial_density_matrices

#: sqrt(2) G_F / hbar in cm^3 s^-1 (conventions.GROWTH_RATE_PER_NTOT; PDG G_F and hbar).
SELF_INTERACTION_PER_DENSITY = GROWTH_RATE_PER_NTOT
#: Speed of light, cm s^-1 (exact).
SPEED_OF_LIGHT = 2.99792458e10

HAMILTONIAN_FILTERS = ("none", "emu")


@dataclass
class SolverConfig:
    """Resolution and numerics of one batched run (all simulations share them)."""

    ncell: int = 64
    nphi_equator: int = 16
    #: Step = flavour_cfl / V, V = mu * (|traceless A^t| + |traceless A_vec|) at t = 0 (as Emu's flavor_cfl).
    flavour_cfl: float = 0.4
    #: Never step further than this many cells of light travel (keeps time sampling fine).
    advection_cfl: float = 2.0
    hamiltonian_filter: str = "none"
    perturbation_amplitude: float = 1e-6
    #: Record box averages every this many steps.
    record_every: int = 1
    seed: int = 0

    def validate(self) -> None:
        if self.ncell < 2 or self.ncell % 2:
            raise ValueError(f"ncell must be an even integer >= 2; got {self.ncell}")
        if self.nphi_equator < 2:
            raise ValueError(f"nphi_equator must be >= 2; got {self.nphi_equator}")
        if not (0 < self.flavour_cfl <= 2.0):
            raise ValueError(f"flavour_cfl must be in (0, 2]; got {self.flavour_cfl}")
        if self.advection_cfl <= 0:
            raise ValueError(f"advection_cfl must be positive; got {self.advection_cfl}")
        if self.hamiltonian_filter not in HAMILTONIAN_FILTERS:
            raise ValueError(f"hamiltonian_filter must be one of {HAMILTONIAN_FILTERS}; got {self.hamiltonian_filter!r}")
        if self.perturbation_amplitude <= 0:
            raise ValueError("perturbation_amplitude must be positive")
        if self.record_every < 1:
            raise ValueError("record_every must be >= 1")


@dataclass
class BoxHistory:
    """Box-averaged diagnostics of a batch, sampled every ``record_every`` steps.

    time ``[nsim, nt]`` s; four_flux ``[nsim, nt, 2 (nu, nubar), 3 flavours, 4 (t,x,y,z)]``
    cm^-3 (diagonal entries); offdiag_magnitude ``[nsim, nt]`` cm^-3: Emu's N_offdiag_mag,
    sqrt of the box average of sum_{i<j} |N_ij|^2 + |Nbar_ij|^2 (Emu Source/DataReducer.cpp).
    """

    time: np.ndarray
    four_flux: np.ndarray
    offdiag_magnitude: np.ndarray
    #: Largest flavour step V dt met during the run, per simulation (accuracy monitor).
    max_flavour_step: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _traceless_norm(matrices: np.ndarray) -> np.ndarray:
    """Frobenius norm of the traceless part of ``[..., 3, 3]`` matrices."""
    trace = np.trace(matrices, axis1=-2, axis2=-1) / matrices.shape[-1]
    traceless = matrices - trace[..., None, None] * np.eye(matrices.shape[-1])
    return np.sqrt(np.sum(np.abs(traceless) ** 2, axis=(-2, -1)))


class FastFlavourBox:
    """A batch of periodic 1D boxes (axis z), each with its own length and time step."""

    def __init__(self, four_flux: np.ndarray, box_length_cm: np.ndarray, config: SolverConfig,
                 directions: np.ndarray | None = None):
        """four_flux ``[nsim, 6, 4]`` (species, (t,x,y,z)) in cm^-3, in the box frame (axis z)."""
        config.validate()
        four_flux = np.asarray(four_flux, dtype=float)
        if four_flux.ndim != 3 or four_flux.shape[1:] != (6, 4):
            raise ValueError(f"four_flux must have shape [nsim, 6, 4]; got {four_flux.shape}")
        nsim = four_flux.shape[0]
        box_length_cm = np.broadcast_to(np.asarray(box_length_cm, dtype=float), (nsim,)).copy()
        if np.any(~np.isfinite(box_length_cm)) or np.any(box_length_cm <= 0):
            raise ValueError("box lengths must be positive and finite")
        self.config = config
        self.directions = uniform_sphere(config.nphi_equator) if directions is None else np.asarray(directions, float)
        self.box_length_cm = box_length_cm
        self.cell_size_cm = box_length_cm / config.ncell
        rng = np.random.default_rng(config.seed)
        self.rho = initial_density_matrices(four_flux, self.directions, config.ncell,
                                            config.perturbation_amplitude, rng)
        # Moment weights (1, v) [4, ndir] and Hamiltonian weights (1, -v) [ndir, 4].
        self._moment_weights = np.concatenate([np.ones((1, len(self.directions))), self.directions.T]).astype(complex)
        self._hamiltonian_weights = SELF_INTERACTION_PER_DENSITY * np.concatenate(
            [np.ones((len(self.directions), 1)), -self.directions], axis=1).astype(complex)
        wavenumber = 2 * np.pi * np.fft.fftfreq(config.ncell, d=1.0)[None, :] / self.cell_size_cm[:, None]  # [nsim, k]
        self._advection_rate = SPEED_OF_LIGHT * wavenumber[:, :, None] * self.directions[None, None, :, 2]  # [nsim, k, ndir]
        if config.hamiltonian_filter == "emu":
            # Quadratic B-spline deposit then interpolation: transfer sinc(k dz / 2)^6.
            half = 0.5 * wavenumber * self.cell_size_cm[:, None]
            self._moment_filter = np.sinc(half / np.pi) ** 6  # np.sinc(x) = sin(pi x)/(pi x)
        else:
            self._moment_filter = None
        self.time = np.zeros(nsim)

    # ------------------------------------------------------------------ physics
    def species_moments(self, rho: np.ndarray) -> np.ndarray:
        """Four-moments ``[nsim, 2, ncell, 4 (t,x,y,z), 3, 3]`` of the density matrices."""
        nsim, _, ncell, ndir = rho.shape[:4]
        flat = rho.reshape(nsim, 2, ncell, ndir, N_FLAVOURS * N_FLAVOURS)
        return (self._moment_weights @ flat).reshape(nsim, 2, ncell, 4, N_FLAVOURS, N_FLAVOURS)

    def hamiltonian(self, moments: np.ndarray) -> np.ndarray:
        """Neutrino Hamiltonian ``[nsim, ncell, ndir, 3, 3]`` in s^-1 from species moments."""
        lepton_moments = moments[:, 0] - np.conj(moments[:, 1])  # N - conj(Nbar), F - conj(Fbar)
        if self._moment_filter is not None:
            spectrum = np.fft.fft(lepton_moments, axis=1) * self._moment_filter[:, :, None, None, None]
            lepton_moments = np.fft.ifft(spectrum, axis=1)
        nsim, ncell = lepton_moments.shape[:2]
        flat = lepton_moments.reshape(nsim, ncell, 4, N_FLAVOURS * N_FLAVOURS)
        return (self._hamiltonian_weights @ flat).reshape(nsim, ncell, -1, N_FLAVOURS, N_FLAVOURS)

    def flavour_rate(self, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d rho/dt from the flavour term, species moments used): -i[H, rho], -i[-conj H, rhobar]."""
        moments = self.species_moments(rho)
        H = self.hamiltonian(moments)
        rate = np.empty_like(rho)
        rate[:, 0] = -1j * (H @ rho[:, 0] - rho[:, 0] @ H)
        Hbar = -np.conj(H)
        rate[:, 1] = -1j * (Hbar @ rho[:, 1] - rho[:, 1] @ Hbar)
        return rate, moments

    def flavour_frequency(self, moments: np.ndarray) -> np.ndarray:
        """V = mu max_z (|traceless A^t| + |traceless A_vec|), s^-1, per simulation (Emu's V_adaptive)."""
        lepton_moments = moments[:, 0] - np.conj(moments[:, 1])
        norms = _traceless_norm(lepton_moments)  # [nsim, ncell, 4]
        per_cell = norms[..., 0] + np.sqrt(np.sum(norms[..., 1:] ** 2, axis=-1))
        return SELF_INTERACTION_PER_DENSITY * per_cell.max(axis=1)

    # ------------------------------------------------------------------ numerics
    def _advect(self, rho: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Exact periodic advection along z: multiply each Fourier mode by its phase factor."""
        spectrum = np.fft.fft(rho, axis=2)
        spectrum *= phase[:, None, :, :, None, None]
        return np.fft.ifft(spectrum, axis=2)

    def step(self, dt: np.ndarray) -> np.ndarray:
        """One Lawson-RK4 step of size dt ``[nsim]`` s; returns the species moments at the start."""
        half_phase = np.exp(-1j * self._advection_rate * (0.5 * dt)[:, None, None])
        h = dt[:, None, None, None, None, None]
        k1, moments = self.flavour_rate(self.rho)
        advected = self._advect(self.rho, half_phase)
        advected_k1 = self._advect(k1, half_phase)
        k2, _ = self.flavour_rate(advected + 0.5 * h * advected_k1)
        k3, _ = self.flavour_rate(advected + 0.5 * h * k2)
        k4, _ = self.flavour_rate(self._advect(advected + h * k3, half_phase))
        self.rho = self._advect(advected + h / 6.0 * advected_k1 + h / 3.0 * (k2 + k3), half_phase) + h / 6.0 * k4
        self.time = self.time + dt
        return moments

    def box_averages(self, moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(four_flux [nsim, 2, 3, 4] diagonal, offdiag magnitude [nsim]) box averages."""
        averaged = moments.mean(axis=2)  # [nsim, 2, 4, 3, 3]
        diagonal = np.real(np.diagonal(averaged, axis1=-2, axis2=-1))  # [nsim, 2, 4, 3]
        upper = np.triu_indices(N_FLAVOURS, k=1)
        offdiag = moments[:, :, :, 0][..., upper[0], upper[1]]  # [nsim, 2, ncell, 3]
        magnitude = np.sqrt(np.mean(np.sum(np.abs(offdiag) ** 2, axis=(1, 3)), axis=1))
        return np.transpose(diagonal, (0, 1, 3, 2)), magnitude

    def time_steps(self, end_time_s: np.ndarray) -> tuple[np.ndarray, int]:
        """Per-simulation step and common step count to reach end_time_s ``[nsim]``."""
        end_time_s = np.broadcast_to(np.asarray(end_time_s, dtype=float), self.time.shape)
        if np.any(~np.isfinite(end_time_s)) or np.any(end_time_s <= 0):
            raise ValueError("end times must be positive and finite")
        frequency = self.flavour_frequency(self.species_moments(self.rho))
        largest = np.minimum(self.config.flavour_cfl / np.maximum(frequency, 1e-300),
                             self.config.advection_cfl * self.cell_size_cm / SPEED_OF_LIGHT)
        nsteps = int(np.max(np.ceil(end_time_s / largest)))
        return end_time_s / nsteps, nsteps

    def run(self, end_time_s: np.ndarray, progress: Callable[[int, int], None] | None = None) -> BoxHistory:
        """Integrate every simulation to its own end time; return the box-averaged history."""
        dt, nsteps = self.time_steps(end_time_s)
        record_every = self.config.record_every
        times, fluxes, magnitudes = [], [], []
        max_flavour_step = np.zeros_like(dt)
        for istep in range(nsteps + 1):
            if istep < nsteps:
                moments = self.step(dt)
                recorded_time = self.time - dt
            else:
                moments = self.species_moments(self.rho)
                recorded_time = self.time
            max_flavour_step = np.maximum(max_flavour_step, self.flavour_frequency(moments) * dt)
            if istep % record_every == 0 or istep == nsteps:
                four_flux, magnitude = self.box_averages(moments)
                times.append(recorded_time.copy())
                fluxes.append(four_flux)
                magnitudes.append(magnitude)
            if progress is not None:
                progress(istep, nsteps)
        return BoxHistory(time=np.stack(times, axis=1), four_flux=np.stack(fluxes, axis=1),
                          offdiag_magnitude=np.stack(magnitudes, axis=1), max_flavour_step=max_flavour_step)
