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
Everything is vectorised over a batch of independent simulations. The state is stored packed:
the six independent entries of each Hermitian 3x3 matrix (ee, mumu, tautau, emu, etau, mutau),
component-major ``[6, nsim, 2 (nu, nubar), ncell, ndir]``, so that every arithmetic operation
runs over long contiguous arrays and only 6 of 9 entries are advected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..conventions import N_FLAVOURS
from .constants import SELF_INTERACTION_PER_DENSITY, SPEED_OF_LIGHT
from .directions import uniform_sphere
from .initial import initial_density_matrices
from .linear import emu_coupling_transfer

#: Resolution limits of SolverConfig.validate, far above any run of Dodo or Emu (at most 128 cells
#: and nphi 16, 92 directions: docs/qke.md) but below sizes that only exhaust memory: a simulation
#: holds ncell x directions density matrices (directions ~ 0.37 nphi^2; nphi 128 gives 6,022) and the
#: linear analysis of each state builds directions x directions dispersion matrices.
MAX_NCELL = 1 << 16
MAX_NPHI_EQUATOR = 128
#: The fewest directions at the equator whose set spans three dimensions (4: an octahedron).
MIN_NPHI_EQUATOR = 4
HAMILTONIAN_FILTERS = ("none", "emu")
STATE_FILTERS = ("houli", "two_thirds", "none")
BACKENDS = ("auto", "cpp", "numpy")


#: Smallest flavour_cfl: a thousand times the default's steps (0.5 already changes NSM1's asymptotic
#: densities by only 2e-4 N_tot; docs/qke.md).
MIN_FLAVOUR_CFL = 1e-3


@dataclass
class SolverConfig:
    """Resolution and numerics of one batched run (all simulations share them)."""

    ncell: int = 64
    nphi_equator: int = 16
    #: Step = flavour_cfl / V_max, V_max = the time-invariant bound on |H| (see ``hamiltonian_bound``).
    flavour_cfl: float = 1.0
    #: Never step further than this many cells of light travel (keeps time sampling fine).
    advection_cfl: float = 2.0
    #: "emu" (default): smooth the moments that build H with sinc(k dz/2)^6, the transfer function
    #: of Emu's particle-mesh coupling, so that growth rates match Emu's databases; "none": the
    #: continuum equations (growth 2-11% faster at the box modes, asymptotic states the same).
    hamiltonian_filter: str = "emu"
    #: Grid-scale filter of the state after every step: "houli" (exp(-36 (k/k_Nyquist)^36), Hou & Li,
    #: J. Comput. Phys. 226, 379 (2007)), "two_thirds" (Orszag's 2/3 dealiasing rule), or "none".
    #: The flavour cascade reaches the grid scale after saturation; without a filter, aliasing
    #: then grows without bound in some states. Filters leave k = 0 (box averages) untouched.
    state_filter: str = "houli"
    perturbation_amplitude: float = 1e-6
    #: Record box averages every this many steps.
    record_every: int = 1
    seed: int = 0
    #: Time stepping: "cpp" (the compiled kernel, dodo._core; ncell a power of two), "numpy"
    #: (this module's FastFlavourBox, the test oracle), or "auto" (cpp where it can run).
    backend: str = "auto"

    def validate(self) -> None:
        # Whole numbers: record_every=2.5 recorded every fifth step (istep % 2.5) without a word, True
        # ran as 1, ncell=16.0 failed in NumPy naming nothing (outside probe, round 23).
        for name in ("ncell", "nphi_equator", "record_every"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer; got {value!r}")
        if self.ncell < 2 or self.ncell % 2:
            raise ValueError(f"ncell must be an even integer >= 2; got {self.ncell}")
        if self.ncell > MAX_NCELL:
            raise ValueError(f"ncell must be at most {MAX_NCELL} (512x the cells of Emu's largest reference run; "
                             f"memory grows as ncell x directions per simulation); got {self.ncell}")
        if self.nphi_equator < MIN_NPHI_EQUATOR:
            # --nphi 2 and 3 gave 2 and 3 directions in the equatorial plane: no flux off that plane has
            # a distribution on them, and every state was dropped as "the fit did not converge", as if
            # the states were at fault (outside probe, round 27).
            if self.nphi_equator < 1:
                raise ValueError(f"nphi_equator (--nphi) must be >= {MIN_NPHI_EQUATOR}; got {self.nphi_equator}")
            directions = len(uniform_sphere(self.nphi_equator))
            raise ValueError(f"nphi_equator (--nphi) must be >= {MIN_NPHI_EQUATOR}: {self.nphi_equator} gives "
                             f"{directions} directions, all in one plane, which cannot hold a flux out of it "
                             f"(Emu's runs use 16); got {self.nphi_equator}")
        if self.nphi_equator > MAX_NPHI_EQUATOR:
            directions = len(uniform_sphere(MAX_NPHI_EQUATOR))
            raise ValueError(f"nphi_equator (--nphi) must be at most {MAX_NPHI_EQUATOR} ({directions:,} directions; "
                             "Emu's runs use 16, 92 directions; the linear analysis needs memory growing as "
                             f"directions^2); got {self.nphi_equator}")
        if not (MIN_FLAVOUR_CFL <= self.flavour_cfl <= 2.0):
            # (0, 2] took 1e-300 (or 1e-9): ~10^302 steps, a run that never ended, its history growing
            # without bound (outside probe, solver round 3).
            raise ValueError(f"flavour_cfl (--flavour-cfl) must be in [{MIN_FLAVOUR_CFL:g}, 2] (the step is flavour_cfl / "
                             f"V_max: {MIN_FLAVOUR_CFL:g} takes {1 / MIN_FLAVOUR_CFL:,.0f} times the default's steps); "
                             f"got {self.flavour_cfl}")
        if not self.advection_cfl > 0:  # NaN too
            raise ValueError(f"advection_cfl must be positive; got {self.advection_cfl}")
        if self.hamiltonian_filter not in HAMILTONIAN_FILTERS:
            raise ValueError(f"hamiltonian_filter must be one of {HAMILTONIAN_FILTERS}; got {self.hamiltonian_filter!r}")
        if self.state_filter not in STATE_FILTERS:
            raise ValueError(f"state_filter must be one of {STATE_FILTERS}; got {self.state_filter!r}")
        if not self.perturbation_amplitude > 0:  # NaN too: it seeded NaN into every off-diagonal
            raise ValueError(f"perturbation_amplitude must be positive; got {self.perturbation_amplitude}")
        # Each batch's perturbations are drawn with seed + its first state's number: a negative seed
        # failed in NumPy ("expected non-negative integer") only when state 0's batch came, after the
        # other batches had run (python -m dodo.qke.validate emu32 --seed -1; outside probe, round 22).
        if isinstance(self.seed, (bool, np.bool_)) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed (--seed) must be an integer >= 0; got {self.seed!r}")
        if self.record_every < 1:
            raise ValueError("record_every must be >= 1")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")


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
    #: Largest V dt met during the run (V: Emu's V_adaptive of the actual state), per simulation.
    max_flavour_step: np.ndarray = field(default_factory=lambda: np.zeros(0))


#: Packed Hermitian storage: the (i, j) entries kept, diagonal first.
PACKED_ENTRIES = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
_PACKED_INDEX = {entry: index for index, entry in enumerate(PACKED_ENTRIES)}


def pack_hermitian(matrices: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` Hermitian matrices -> packed ``[6, ...]`` (upper triangle)."""
    return np.stack([matrices[..., i, j] for i, j in PACKED_ENTRIES])


def unpack_hermitian(packed: np.ndarray) -> np.ndarray:
    """Packed ``[6, ...]`` -> full ``[..., 3, 3]`` Hermitian matrices."""
    full = np.empty(packed.shape[1:] + (N_FLAVOURS, N_FLAVOURS), dtype=complex)
    for index, (i, j) in enumerate(PACKED_ENTRIES):
        full[..., i, j] = packed[index]
        full[..., j, i] = np.conj(packed[index])
    return full


def _entries(packed: np.ndarray) -> dict:
    """All nine entries of packed Hermitian matrices, the lower triangle as conjugates."""
    entries = {}
    for i in range(N_FLAVOURS):
        for j in range(N_FLAVOURS):
            entries[i, j] = packed[_PACKED_INDEX[i, j]] if i <= j else np.conj(packed[_PACKED_INDEX[j, i]])
    return entries


def commutator_rate(hamiltonian: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """-i [H, rho] for packed Hermitian H and rho (broadcasting), packed."""
    H, R = _entries(hamiltonian), _entries(rho)
    rate = np.empty(np.broadcast_shapes(hamiltonian.shape, rho.shape), dtype=complex)
    for index, (i, j) in enumerate(PACKED_ENTRIES):
        if i == j:  # -i (X - X^dagger)_ii = 2 Im X_ii, X = H rho; the k = i term is real
            product = sum(H[i, k] * R[k, i] for k in range(N_FLAVOURS) if k != i)
            rate[index] = 2.0 * product.imag
        else:
            rate[index] = -1j * sum(H[i, k] * R[k, j] - R[i, k] * H[k, j] for k in range(N_FLAVOURS))
    return rate


def traceless_norm(packed: np.ndarray) -> np.ndarray:
    """Frobenius norm of the traceless part of packed Hermitian matrices ``[6, ...]``."""
    diagonal = packed[:3].real
    deviation = diagonal - diagonal.mean(axis=0)
    return np.sqrt(np.sum(deviation**2, axis=0) + 2.0 * np.sum(np.abs(packed[3:]) ** 2, axis=0))


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
        # Moment weights (1, v) [ndir, 4] and Hamiltonian weights mu (1, -v) [4, ndir].
        self._moment_weights = np.concatenate([np.ones((len(self.directions), 1)), self.directions], axis=1).astype(complex)
        self._hamiltonian_weights = SELF_INTERACTION_PER_DENSITY * np.concatenate(
            [np.ones((1, len(self.directions))), -self.directions.T]).astype(complex)
        wavenumber = 2 * np.pi * np.fft.fftfreq(config.ncell, d=1.0)[None, :] / self.cell_size_cm[:, None]  # [nsim, k]
        self._advection_rate = SPEED_OF_LIGHT * wavenumber[:, :, None] * self.directions[None, None, :, 2]  # [nsim, k, ndir]
        relative_k = np.abs(np.fft.fftfreq(config.ncell, d=1.0)) * 2.0  # |k| / k_Nyquist
        if config.state_filter == "houli":
            self._state_filter = np.exp(-36.0 * relative_k**36)
        elif config.state_filter == "two_thirds":
            self._state_filter = (relative_k < 2.0 / 3.0).astype(float)
        else:
            self._state_filter = np.ones(config.ncell)
        if config.hamiltonian_filter == "emu":
            self._moment_filter = emu_coupling_transfer(wavenumber, self.cell_size_cm[:, None])
        else:
            self._moment_filter = None
        self._coupling_enabled = True
        self.time = np.zeros(nsim)
        rng = np.random.default_rng(config.seed)
        self.rho = initial_density_matrices(four_flux, self.directions, config.ncell, config.perturbation_amplitude, rng)

    # ------------------------------------------------------------------ state access
    @property
    def rho(self) -> np.ndarray:
        """Density matrices ``[nsim, 2 (nu, nubar), ncell, ndir, 3, 3]`` (a copy; cm^-3 per direction)."""
        return unpack_hermitian(self.state)

    @rho.setter
    def rho(self, matrices: np.ndarray) -> None:
        self.state = np.ascontiguousarray(pack_hermitian(np.asarray(matrices, dtype=complex)))

    def disable_coupling(self) -> None:
        """Switch the self-interaction off (pure advection; for tests of the transport)."""
        self._coupling_enabled = False

    # ------------------------------------------------------------------ physics
    def species_moments(self, state: np.ndarray) -> np.ndarray:
        """Packed four-moments ``[6, nsim, 2, ncell, 4 (t,x,y,z)]`` of a packed state."""
        return state @ self._moment_weights

    def density_matrix_moments(self) -> np.ndarray:
        """Four-moments of the current state as matrices ``[nsim, 2, ncell, 4, 3, 3]``."""
        return unpack_hermitian(self.species_moments(self.state))

    def hamiltonian(self, moments: np.ndarray) -> np.ndarray:
        """Packed Hamiltonians ``[6, nsim, 2 (H, Hbar), ncell, ndir]`` in s^-1 from packed moments."""
        lepton_moments = moments[:, :, 0] - np.conj(moments[:, :, 1])  # N - conj(Nbar), F - conj(Fbar)
        if self._moment_filter is not None:
            spectrum = np.fft.fft(lepton_moments, axis=2) * self._moment_filter[None, :, :, None]
            lepton_moments = np.fft.ifft(spectrum, axis=2)
        neutrino = lepton_moments @ self._hamiltonian_weights  # [6, nsim, ncell, ndir]
        return np.stack([neutrino, -np.conj(neutrino)], axis=2)  # Hbar = -conj(H)

    def flavour_rate(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d state/dt of the flavour term, packed species moments used)."""
        moments = self.species_moments(state)
        if not self._coupling_enabled:
            return np.zeros_like(state), moments
        return commutator_rate(self.hamiltonian(moments), state), moments

    def hamiltonian_bound(self) -> np.ndarray:
        """V_max = mu max_v sum_u (1 - v.u) (|tl rho_u| + |tl rhobar_u|), s^-1, per simulation.

        |tl X| is the Frobenius norm of the traceless part. It bounds the traceless part of every
        H_v at all times: flavour evolution is unitary and advection only moves rho_v, so
        |tl rho_v(z, t)| keeps its initial (homogeneous) value. A fixed step from this bound stays
        stable through the nonlinear phase, where off-diagonal H grows from ~0 to this scale.
        """
        norms = traceless_norm(self.state).max(axis=2)  # [nsim, 2, ndir], max over cells
        kernel = 1.0 - self.directions @ self.directions.T
        per_direction = (norms[:, 0] + norms[:, 1]) @ kernel.T  # [nsim, ndir]
        return SELF_INTERACTION_PER_DENSITY * per_direction.max(axis=1)

    def flavour_frequency(self, moments: np.ndarray) -> np.ndarray:
        """V = mu max_z (|tl A^t| + |tl A_vec|), s^-1, per simulation (Emu's V_adaptive), packed moments."""
        norms = traceless_norm(moments[:, :, 0] - np.conj(moments[:, :, 1]))  # [nsim, ncell, 4]
        per_cell = norms[..., 0] + np.sqrt(np.sum(norms[..., 1:] ** 2, axis=-1))
        return SELF_INTERACTION_PER_DENSITY * per_cell.max(axis=1)

    # ------------------------------------------------------------------ numerics
    def _advect(self, state: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Exact periodic advection along z: multiply each Fourier mode by its phase factor."""
        spectrum = np.fft.fft(state, axis=3)
        spectrum *= phase[None, :, None, :, :]
        return np.fft.ifft(spectrum, axis=3)

    def step(self, dt: np.ndarray) -> np.ndarray:
        """One Lawson-RK4 step of size dt ``[nsim]`` s; returns the packed species moments at the start."""
        half_phase = np.exp(-1j * self._advection_rate * (0.5 * dt)[:, None, None])
        # The Nyquist bin has no +k/-k partner: a complex phase there would break the
        # Hermiticity of rho (and with it trace conservation); use the real average cos instead.
        nyquist = self.config.ncell // 2
        half_phase[:, nyquist] = np.cos(self._advection_rate[:, nyquist] * 0.5 * dt[:, None])
        h = dt[None, :, None, None, None]
        k1, moments = self.flavour_rate(self.state)
        advected = self._advect(self.state, half_phase)
        advected_k1 = self._advect(k1, half_phase)
        k2, _ = self.flavour_rate(advected + 0.5 * h * advected_k1)
        k3, _ = self.flavour_rate(advected + 0.5 * h * k2)
        k4, _ = self.flavour_rate(self._advect(advected + h * k3, half_phase))
        combination = advected + h / 6.0 * advected_k1 + h / 3.0 * (k2 + k3)
        # The grid-scale filter rides on the last advection (k4 enters unfiltered: it adds only
        # O(dt) new content, which the next step filters).
        self.state = self._advect(combination, half_phase * self._state_filter[None, :, None]) + h / 6.0 * k4
        self.time = self.time + dt
        return moments

    def box_averages(self, moments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(four_flux [nsim, 2, 3, 4] diagonal, offdiag magnitude [nsim]) box averages (packed moments)."""
        moments = self.species_moments(self.state) if moments is None else moments
        diagonal = moments[:3].mean(axis=3).real  # [3 flavours, nsim, 2, 4]
        offdiag = moments[3:, :, :, :, 0]  # [3 pairs, nsim, 2, ncell]
        magnitude = np.sqrt(np.mean(np.sum(np.abs(offdiag) ** 2, axis=(0, 2)), axis=1))
        return np.transpose(diagonal, (1, 2, 0, 3)), magnitude

    def time_steps(self, end_time_s: np.ndarray) -> tuple[np.ndarray, int]:
        """Per-simulation step and common step count to reach end_time_s ``[nsim]``."""
        end_time_s = np.broadcast_to(np.asarray(end_time_s, dtype=float), self.time.shape)
        if np.any(~np.isfinite(end_time_s)) or np.any(end_time_s <= 0):
            raise ValueError("end times must be positive and finite")
        frequency = self.hamiltonian_bound()
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
                moments = self.species_moments(self.state)
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
