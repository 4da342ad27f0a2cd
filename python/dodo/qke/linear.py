"""Linear stability (dispersion relation) of the discrete-direction fast-flavour equations.

Linearising the equations of solver.py around a flavour-diagonal, homogeneous state, each
off-diagonal pair (i, j) evolves alone (Izaguirre, Raffelt, Tamborra, PRL 118, 021101 (2017),
eq. 5, here for discrete directions). With S_v = rho_v^ij and Sbar_v = conj(rhobar_v^ij), the
combination Q_v = S_v - Sbar_v, for a mode exp(i (k z - omega t)), obeys the eigenproblem

    omega Q_v = (c k v_z + Delta H_v) Q_v - mu G_v sum_u (1 - v . u) Q_u,

    Delta H_v = mu sum_u (1 - v . u) G_u,  G_v = (n_v^i - n_v^j) - (nbar_v^i - nbar_v^j)

(the lepton-number difference carried by direction v). Its largest Im(omega) is the growth rate
the solver must reproduce in its linear phase. Same direction set and weights as the solver.
"""
from __future__ import annotations

import numpy as np

from ..conventions import FLAVOUR_PAIRS, N_FLAVOURS
from .initial import species_direction_densities
from .constants import SELF_INTERACTION_PER_DENSITY, SPEED_OF_LIGHT


def pair_lepton_numbers(four_flux: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """G_v per flavour pair ``[3 pairs, ndir]`` (cm^-3 per direction) for one state ``[6, 4]``."""
    per_direction = species_direction_densities(np.asarray(four_flux, float), directions).reshape(2, N_FLAVOURS, -1)
    lepton = per_direction[0] - per_direction[1]  # [flavour, ndir]
    return np.array([lepton[i] - lepton[j] for i, j in FLAVOUR_PAIRS])


def unstable_candidates(lepton_differences: np.ndarray) -> list[np.ndarray]:
    """The pairs' G_v that can be unstable: those that cross (sign change in angle), without duplicates.

    A pair whose G_v does not change sign has no fast instability (Morinaga, PRD 105, L101301
    (2022)); with mu = tau the (e, mu) and (e, tau) pairs are identical.
    """
    kept = []
    for lepton in lepton_differences:
        scale = np.abs(lepton).sum()
        if scale == 0 or lepton.max() <= 1e-12 * scale or lepton.min() >= -1e-12 * scale:
            continue
        if not any(np.allclose(lepton, other, rtol=1e-12, atol=1e-14 * scale) for other in kept):
            kept.append(lepton)
    return kept


def emu_coupling_transfer(wavenumber: np.ndarray, cell_size_cm: float) -> np.ndarray:
    """sinc(k dz / 2)^6: Emu's quadratic-spline deposit and interpolation, seen by a mode k (cm^-1)."""
    return np.sinc(0.5 * np.asarray(wavenumber, float) * cell_size_cm / np.pi) ** 6


def dispersion_matrices(lepton_difference: np.ndarray, directions: np.ndarray, wavevectors: np.ndarray,
                        coupling_transfer: np.ndarray | float = 1.0) -> np.ndarray:
    """Matrices ``[nk, ndir, ndir]`` whose eigenvalues are omega (s^-1) for wavevectors ``[nk, 3]`` (cm^-1).

    ``coupling_transfer`` ``[nk]`` scales the perturbation's coupling (not the homogeneous
    refraction, a k = 0 quantity): the solver's ``hamiltonian_filter = "emu"`` seen by each mode.
    """
    kernel = 1.0 - directions @ directions.T  # (1 - v . u)
    refraction = SELF_INTERACTION_PER_DENSITY * kernel @ lepton_difference
    coupling = -SELF_INTERACTION_PER_DENSITY * lepton_difference[:, None] * kernel
    advection = SPEED_OF_LIGHT * np.atleast_2d(wavevectors) @ directions.T  # [nk, ndir]
    transfer = np.broadcast_to(np.asarray(coupling_transfer, float), (len(advection),))
    matrices = transfer[:, None, None] * coupling[None]
    index = np.arange(len(directions))
    matrices[:, index, index] += advection + refraction
    return matrices


def dispersion_eigenvalues(lepton_difference: np.ndarray, directions: np.ndarray, wavevector: np.ndarray) -> np.ndarray:
    """Eigenfrequencies omega (s^-1) for one pair's G_v ``[ndir]`` and one wavevector ``[3]`` in cm^-1."""
    return np.linalg.eigvals(dispersion_matrices(lepton_difference, directions, np.asarray(wavevector, float)[None])[0])


def growth_rates(four_flux: np.ndarray, directions: np.ndarray, wavevectors: np.ndarray,
                 coupling_transfer: np.ndarray | float = 1.0, candidates: list | None = None) -> np.ndarray:
    """Largest Im(omega) over flavour pairs (s^-1, 0 if stable) for each wavevector ``[nk, 3]``.

    ``candidates``: the state's unstable_candidates(pair_lepton_numbers(...)), when the caller
    already has them (searches call this many times for one state; the maximum-entropy
    reconstruction behind them is a quarter of a search's cost)."""
    wavevectors = np.atleast_2d(np.asarray(wavevectors, float))
    rates = np.zeros(len(wavevectors))
    if candidates is None:
        candidates = unstable_candidates(pair_lepton_numbers(four_flux, directions))
    for lepton in candidates:
        matrices = dispersion_matrices(lepton, directions, wavevectors, coupling_transfer)
        growth = np.linalg.eigvals(matrices).imag.max(axis=-1)
        # Below the eigenvalues' rounding (~eps |A|) a growth is noise: at |k| many orders beyond
        # the self-interaction scale (a box of 1e-13 cm) it read as a real mode of ~1e10 s^-1, and a
        # run of 1e18 steps followed.
        noise = 1e3 * np.finfo(float).eps * np.abs(matrices).sum(axis=-1).max(axis=-1)
        rates = np.maximum(rates, np.where(growth > noise, growth, 0.0))
    return rates


def _golden_magnitude(four_flux: np.ndarray, directions: np.ndarray, axis: np.ndarray, lo: float, hi: float,
                      candidates: list, iterations: int) -> tuple[float, float]:
    """(growth rate, |k|) at the middle of [lo, hi] after ``iterations`` golden-section steps toward
    the fastest |k| along ``axis`` (a unit vector)."""
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(iterations):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        rate_a, rate_b = growth_rates(four_flux, directions, np.array([a * axis, b * axis]), candidates=candidates)
        if rate_a > rate_b:
            hi = b
        else:
            lo = a
    k = 0.5 * (lo + hi)
    return float(growth_rates(four_flux, directions, (k * axis)[None], candidates=candidates)[0]), k


def refine_fastest_wavevector(four_flux: np.ndarray, directions: np.ndarray, wavevector: np.ndarray,
                              candidates: list | None = None, step_degrees: float = 16.0,
                              min_step_degrees: float = 0.5) -> tuple[float, np.ndarray]:
    """Fastest growth rate (s^-1) and wavevector (cm^-1) near ``wavevector``, by a pattern search.

    The rate is sharply peaked in direction on many states: a coarse grid of axes (the 24 of
    ``box_setup``'s first search, 12 distinct up to sign, ~45 degrees apart) misses the peak by a
    quarter or more of the rate on about one state in six. From the coarse best, eight axes at
    ``step_degrees`` around the current one, each at three |k| (the fastest |k| moves with the
    axis), are tried; the best replaces the current one, or the step is halved when none is
    faster, down to ``min_step_degrees``. Then |k| is refined by golden section along the axis.
    """
    four_flux = np.asarray(four_flux, float)
    if candidates is None:
        candidates = unstable_candidates(pair_lepton_numbers(four_flux, directions))
    k = float(np.linalg.norm(wavevector))
    if k == 0 or not candidates:
        return 0.0, np.zeros(3)
    axis = np.asarray(wavevector, float) / k
    rate = float(growth_rates(four_flux, directions, (k * axis)[None], candidates=candidates)[0])
    around = 2 * np.pi * np.arange(8) / 8
    step = np.radians(step_degrees)
    while step >= np.radians(min_step_degrees) - 1e-15:
        side = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        side /= np.linalg.norm(side)
        other = np.cross(axis, side)
        tried = np.cos(step) * axis + np.sin(step) * (np.cos(around)[:, None] * side + np.sin(around)[:, None] * other)
        tried = np.concatenate([tried, axis[None]])  # the current axis too, at the other |k|
        spread = min(0.15, step)
        magnitudes = k * np.array([1.0 - spread, 1.0, 1.0 + spread])
        wavevectors = (tried[:, None, :] * magnitudes[None, :, None]).reshape(-1, 3)
        rates = growth_rates(four_flux, directions, wavevectors, candidates=candidates)
        best = int(np.argmax(rates))
        if rates[best] > rate * (1 + 1e-9):
            rate, k = float(rates[best]), float(magnitudes[best % 3])
            axis = tried[best // 3] / np.linalg.norm(tried[best // 3])
        else:
            step /= 2
    refined, middle = _golden_magnitude(four_flux, directions, axis, 0.8 * k, 1.2 * k, candidates, 20)
    if refined > rate:
        rate, k = refined, middle
    return rate, k * axis


def growth_rate(four_flux: np.ndarray, directions: np.ndarray, wavevector: np.ndarray) -> float:
    """Largest Im(omega) over flavour pairs (s^-1) for one wavevector ``[3]``."""
    return float(growth_rates(four_flux, directions, np.asarray(wavevector, float)[None])[0])


def _checked_box_arguments(four_flux, box_length_cm, ncell, axis, hamiltonian_filter):
    """box_growth_rate's arguments, refused by name when they cannot be used: a negative box length
    gave the positive one's rate without a word, a NaN one or a zero axis numpy.linalg's "Array must
    not contain infs or NaNs", ncell 0 "argmax of an empty sequence", two states a matmul shape
    error, a filter other than "emu"/"none" the unfiltered rate (outside probe, round 23).
    Returns the state ``[6, 4]`` and the unit axis."""
    four_flux = np.asarray(four_flux, float)
    if four_flux.shape == (1, 6, 4):
        four_flux = four_flux[0]
    if four_flux.shape != (6, 4):
        raise ValueError(f"four_flux must be one state [6, 4] (species, t x y z); got shape {four_flux.shape}: "
                         "call box_growth_rate once per state")
    length = float(box_length_cm)
    if not (np.isfinite(length) and length > 0):
        raise ValueError(f"box_length_cm must be a positive finite length (cm); got {box_length_cm!r}")
    if isinstance(ncell, (bool, np.bool_)) or not isinstance(ncell, (int, np.integer)) or ncell < 2:
        raise ValueError(f"ncell must be an integer >= 2 (cells along the box); got {ncell!r}")
    axis = np.asarray(axis, float)
    norm = np.linalg.norm(axis) if axis.shape == (3,) else np.nan
    if not (np.isfinite(norm) and norm > 0):
        raise ValueError(f"axis must be a finite, non-zero 3-vector; got {axis.tolist()!r}")
    if hamiltonian_filter not in ("emu", "none"):
        raise ValueError(f"hamiltonian_filter must be 'emu' or 'none'; got {hamiltonian_filter!r}")
    return four_flux, axis / norm


def box_growth_rate(four_flux: np.ndarray, directions: np.ndarray, box_length_cm: float, ncell: int,
                    axis: np.ndarray = (0.0, 0.0, 1.0), modes: np.ndarray | None = None,
                    hamiltonian_filter: str = "none") -> tuple[float, float]:
    """Fastest growth (s^-1) among the box modes k = 2 pi m / L along ``axis`` and its k (cm^-1).

    ``modes``: the integers m to try (default all 0 < |m| <= ncell/2). Requested modes the grid
    cannot hold are ignored, and when none remains all box modes are tried: a fastest k beyond
    the Nyquist wavenumber (a dense state in a fixed box) leaves the box its own unstable modes,
    as in Emu's runs of such states. ``hamiltonian_filter`` "emu" predicts the solver run with
    that filter (Emu's particle-mesh coupling).
    """
    four_flux, axis = _checked_box_arguments(four_flux, box_length_cm, ncell, axis, hamiltonian_filter)
    if modes is not None:
        modes = np.asarray(modes)
        modes = modes[(modes != 0) & (np.abs(modes) <= ncell // 2)]
    if modes is None or len(modes) == 0:
        modes = np.concatenate([np.arange(-(ncell // 2), 0), np.arange(1, ncell // 2 + 1)])
    k = 2 * np.pi * np.asarray(modes, float) / box_length_cm
    transfer = emu_coupling_transfer(k, box_length_cm / ncell) if hamiltonian_filter == "emu" else 1.0
    rates = growth_rates(four_flux, directions, k[:, None] * axis, transfer)
    best = int(np.argmax(rates))
    return (float(rates[best]), float(k[best])) if rates[best] > 0 else (0.0, 0.0)


def fastest_wavevector(four_flux: np.ndarray, directions: np.ndarray, k_over_mu_grid: np.ndarray | None = None,
                       axes: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Fastest growth rate (s^-1) and its wavevector (cm^-1) over a grid of axes and magnitudes.

    Magnitudes are searched in units of mu N_tot / c (the natural scale of the problem), then
    refined by golden-section search along the best axis.
    """
    four_flux = np.asarray(four_flux, float)
    k_scale = SELF_INTERACTION_PER_DENSITY * four_flux[:, 0].sum() / SPEED_OF_LIGHT
    k_over_mu_grid = np.linspace(0.0, 1.0, 21) if k_over_mu_grid is None else np.asarray(k_over_mu_grid, float)
    axes = directions if axes is None else np.asarray(axes, float)
    wavevectors = (k_over_mu_grid[None, :, None] * k_scale * axes[:, None, :]).reshape(-1, 3)
    candidates = unstable_candidates(pair_lepton_numbers(four_flux, directions))
    rates = growth_rates(four_flux, directions, wavevectors, candidates=candidates)
    best = int(np.argmax(rates))
    if rates[best] <= 0:
        return 0.0, np.zeros(3)
    best_rate, best_vector = float(rates[best]), wavevectors[best]
    axis = axes[best // len(k_over_mu_grid)] / np.linalg.norm(axes[best // len(k_over_mu_grid)])  # defined even at k = 0
    step = (k_over_mu_grid[1] - k_over_mu_grid[0]) * k_scale if len(k_over_mu_grid) > 1 else 0.1 * k_scale
    rate, k = _golden_magnitude(four_flux, directions, axis, max(np.linalg.norm(best_vector) - step, 0.0),
                                np.linalg.norm(best_vector) + step, candidates, 25)
    return (rate, k * axis) if rate > best_rate else (best_rate, best_vector)
