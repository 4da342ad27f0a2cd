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
from .solver import SELF_INTERACTION_PER_DENSITY, SPEED_OF_LIGHT


def pair_lepton_numbers(four_flux: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """G_v per flavour pair ``[3 pairs, ndir]`` (cm^-3 per direction) for one state ``[6, 4]``."""
    per_direction = species_direction_densities(np.asarray(four_flux, float), directions).reshape(2, N_FLAVOURS, -1)
    lepton = per_direction[0] - per_direction[1]  # [flavour, ndir]
    return np.array([lepton[i] - lepton[j] for i, j in FLAVOUR_PAIRS])


def dispersion_eigenvalues(lepton_difference: np.ndarray, directions: np.ndarray, wavevector: np.ndarray) -> np.ndarray:
    """Eigenfrequencies omega (s^-1) for one pair's G_v ``[ndir]`` and a wavevector ``[3]`` in cm^-1."""
    kernel = 1.0 - directions @ directions.T  # (1 - v . u)
    diagonal = SPEED_OF_LIGHT * directions @ np.asarray(wavevector, float) + SELF_INTERACTION_PER_DENSITY * kernel @ lepton_difference
    matrix = np.diag(diagonal) - SELF_INTERACTION_PER_DENSITY * lepton_difference[:, None] * kernel
    return np.linalg.eigvals(matrix)


def growth_rate(four_flux: np.ndarray, directions: np.ndarray, wavevector: np.ndarray) -> float:
    """Largest Im(omega) over flavour pairs (s^-1) for one wavevector."""
    return max(float(np.max(dispersion_eigenvalues(g, directions, wavevector).imag))
               for g in pair_lepton_numbers(four_flux, directions))


def box_growth_rate(four_flux: np.ndarray, directions: np.ndarray, box_length_cm: float, ncell: int,
                    axis: np.ndarray = (0.0, 0.0, 1.0)) -> tuple[float, float]:
    """Fastest growth (s^-1) among the box modes k = 2 pi m / L along ``axis``, |m| <= ncell/2; and its k (cm^-1)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    lepton = pair_lepton_numbers(four_flux, directions)
    best_rate, best_k = 0.0, 0.0
    for mode in range(-(ncell // 2), ncell // 2 + 1):
        k = 2 * np.pi * mode / box_length_cm
        rate = max(float(np.max(dispersion_eigenvalues(g, directions, k * axis).imag)) for g in lepton)
        if rate > best_rate:
            best_rate, best_k = rate, k
    return best_rate, best_k


def fastest_wavevector(four_flux: np.ndarray, directions: np.ndarray, k_over_mu_grid: np.ndarray | None = None,
                       axes: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Fastest growth rate (s^-1) and its wavevector (cm^-1) over a grid of directions and magnitudes.

    Magnitudes are searched in units of mu N_tot / c (the natural scale of the problem), then
    refined by golden-section search along the best direction.
    """
    four_flux = np.asarray(four_flux, float)
    total_density = four_flux[:, 0].sum()
    k_scale = SELF_INTERACTION_PER_DENSITY * total_density / SPEED_OF_LIGHT
    if k_over_mu_grid is None:
        k_over_mu_grid = np.linspace(0.0, 1.0, 41)
    if axes is None:
        axes = directions
    lepton = pair_lepton_numbers(four_flux, directions)

    def rate_at(wavevector):
        return max(float(np.max(dispersion_eigenvalues(g, directions, wavevector).imag)) for g in lepton)

    best = (0.0, np.zeros(3))
    for axis in axes:
        for k in k_over_mu_grid * k_scale:
            rate = rate_at(k * axis)
            if rate > best[0]:
                best = (rate, k * axis)
    if best[0] <= 0:
        return 0.0, np.zeros(3)
    axis = best[1] / np.linalg.norm(best[1])
    step = (k_over_mu_grid[1] - k_over_mu_grid[0]) * k_scale
    lo, hi = max(np.linalg.norm(best[1]) - step, 0.0), np.linalg.norm(best[1]) + step
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if rate_at(a * axis) > rate_at(b * axis):
            hi = b
        else:
            lo = a
    k = 0.5 * (lo + hi)
    rate = rate_at(k * axis)
    return (rate, k * axis) if rate > best[0] else best
