"""Asymptotic state and growth rate from a box-averaged history, as Emu's databases define them.

Follows Rhea's reduction (srichers/Rhea, model_training/data/create_database.py,
``growth_properties`` and ``final_properties``), which made the Emu databases Dodo trains on:
- saturation index: of sample 0 and the local maxima of the off-diagonal magnitude, the later one of
  the last consecutive pair >= 3 orders of magnitude apart, up or down (else the global maximum);
  t_sat is its time;
- growth rate: log slope of the off-diagonal magnitude between the first and last samples with
  1e-3 max < |N_offdiag| < 1e-1 max before t_sat;
- asymptotic state: time average (and standard deviation) of the box-averaged moments over
  samples from the one nearest 2 t_sat up to, excluding, the last one; requires t_end > 3 t_sat.
Quality checks (each failure drops the run, with the reason): saturation reached, positive
growth, relative standard deviation < 0.05 N_tot, flavour-summed four-flux and per-flavour
lepton-number conservation to 1e-5 N_tot (Rhea's ``bad_data``; Dodo's solver conserves them to
rounding, so a failure means a broken run).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROWTH_WINDOW = (1e-3, 1e-1)
AVERAGE_START_TSAT = 2.0
MINIMUM_END_TSAT = 3.0
MAX_RELATIVE_STDDEV = 0.05
MAX_CONSERVATION_VIOLATION = 1e-5


@dataclass
class AsymptoticState:
    """Per-simulation results. Four-fluxes ``[nsim, 2 (nu, nubar), 3, 4 (t,x,y,z)]`` cm^-3."""

    initial: np.ndarray
    final: np.ndarray
    final_stddev: np.ndarray
    growth_rate: np.ndarray  # s^-1
    saturation_time: np.ndarray  # s
    end_time: np.ndarray  # s
    valid: np.ndarray  # bool
    reason: list  # "" for valid runs, else why the run was dropped


def saturation_index(offdiag_magnitude: np.ndarray) -> int:
    """Rhea's t_sat index: of sample 0 and the local maxima in time order, the later member of the *last*
    consecutive pair whose magnitudes differ by >= 3 decades (rounded; a fall counts as a rise), else the
    global max. (This docstring and docs/qke.md said "first jump": solver probe, round five.)"""
    magnitude = np.asarray(offdiag_magnitude)
    interior = np.flatnonzero((magnitude[1:-1] > magnitude[:-2]) & (magnitude[1:-1] > magnitude[2:])) + 1
    candidates = np.concatenate([[0], interior])
    chosen = None
    for previous, current in zip(candidates[:-1], candidates[1:]):
        with np.errstate(divide="ignore"):
            decades = np.log10(magnitude[previous] / magnitude[current])
        if abs(np.round(decades)) >= 3:
            chosen = current  # Rhea keeps the last qualifying pair
    return int(np.argmax(magnitude)) if chosen is None else int(chosen)


def growth_rate(time: np.ndarray, offdiag_magnitude: np.ndarray, saturation: int) -> float:
    """Log slope of the off-diagonal magnitude inside Rhea's window before saturation (s^-1)."""
    peak = np.max(offdiag_magnitude)
    inside = np.flatnonzero((offdiag_magnitude > GROWTH_WINDOW[0] * peak) & (offdiag_magnitude < GROWTH_WINDOW[1] * peak)
                            & (time < time[saturation]))
    if len(inside) < 2:
        return 0.0
    first, last = inside[0], inside[-1]
    return float(np.log(offdiag_magnitude[last] / offdiag_magnitude[first]) / (time[last] - time[first]))


def still_growing(time: np.ndarray, offdiag_magnitude: np.ndarray, saturation: int) -> str:
    """The end of the reason "no exponential growth found" for a history whose off-diagonal magnitude
    was still at its largest at the last sample, having grown: the run ended before saturation (an end
    time too short, e.g. a ``tend(s)`` with ``--use-input-end-time``), not a state without growth; ""
    otherwise. Such a run was dropped as "no exponential growth found" alone, as a stable state is
    (solver probe, round two)."""
    first, last = offdiag_magnitude[0], offdiag_magnitude[-1]
    if len(offdiag_magnitude) < 2 or saturation != len(offdiag_magnitude) - 1 or not last > first > 0:
        return ""
    return (f": the flavour off-diagonal was still growing at the end time t_end = {time[-1]:.3g} s (x{last / first:.3g} "
            f"over the run, never saturated; Rhea's window needs it to pass {GROWTH_WINDOW[0]:g}-{GROWTH_WINDOW[1]:g} "
            f"of its maximum before saturation): the end time is too short for this state")


def conservation_violation(initial: np.ndarray, final: np.ndarray) -> float:
    """Largest change of flavour-summed four-flux or per-flavour lepton number, in units of N_tot."""
    total_density = initial[:, :, 0].sum()
    flavour_summed = np.abs((final - initial).sum(axis=1)).max()
    lepton_number = np.abs((final[0, :, 0] - final[1, :, 0]) - (initial[0, :, 0] - initial[1, :, 0])).max()
    return float(max(flavour_summed, lepton_number) / total_density)


def asymptotic_states(time: np.ndarray, four_flux: np.ndarray, offdiag_magnitude: np.ndarray) -> AsymptoticState:
    """Reduce histories (time ``[nsim, nt]``, four_flux ``[nsim, nt, 2, 3, 4]``, magnitude ``[nsim, nt]``)."""
    time, four_flux, offdiag_magnitude = np.asarray(time, float), np.asarray(four_flux, float), np.asarray(offdiag_magnitude, float)
    nsim = time.shape[0]
    if time.ndim != 2 or offdiag_magnitude.shape != time.shape or four_flux.shape[:2] != time.shape:
        raise ValueError(f"histories must share [nsim, nt]: time {time.shape}, four_flux {four_flux.shape}, "
                         f"offdiag_magnitude {offdiag_magnitude.shape}")
    if time.shape[1] == 0:  # was numpy's "attempt to get argmax of an empty sequence" (solver probe, round two)
        empty = np.full((nsim,) + four_flux.shape[2:], np.nan)
        return AsymptoticState(initial=empty.copy(), final=empty.copy(), final_stddev=empty.copy(),
                               growth_rate=np.zeros(nsim), saturation_time=np.full(nsim, np.nan),
                               end_time=np.full(nsim, np.nan), valid=np.zeros(nsim, bool),
                               reason=["empty history: no samples to reduce"] * nsim)
    final = np.full((nsim,) + four_flux.shape[2:], np.nan)
    final_stddev = np.full_like(final, np.nan)
    rates, tsat, valid, reasons = np.zeros(nsim), np.zeros(nsim), np.zeros(nsim, bool), []
    for isim in range(nsim):
        t, history, magnitude = time[isim], four_flux[isim], offdiag_magnitude[isim]
        saturation = saturation_index(magnitude)
        tsat[isim] = t[saturation]
        rates[isim] = growth_rate(t, magnitude, saturation)
        reason = ""
        if not np.all(np.isfinite(history)) or not np.all(np.isfinite(magnitude)):
            reason = "non-finite values"
        elif rates[isim] <= 0:
            reason = "no exponential growth found" + still_growing(t, magnitude, saturation)
        elif t[-1] <= MINIMUM_END_TSAT * tsat[isim]:
            reason = f"not saturated early enough: t_end = {t[-1] / tsat[isim]:.2f} t_sat < {MINIMUM_END_TSAT}"
            if saturation == len(magnitude) - 1:
                # "t_end = 1.00 t_sat" alone, of a run that never saturated: its t_sat is merely its
                # last sample, where the off-diagonal was still growing (solver probe, round three).
                reason += (": the flavour off-diagonal was still growing at the end time (t_sat is the last "
                           "sample, never saturated): the end time is too short for this state")
        if not reason:
            start = int(np.argmin(np.abs(t - AVERAGE_START_TSAT * tsat[isim])))
            window = history[start:-1]
            final[isim] = window.mean(axis=0)
            final_stddev[isim] = window.std(axis=0)
            total_density = history[0, :, :, 0].sum()
            relative_stddev = final_stddev[isim].max() / total_density
            violation = conservation_violation(history[0], final[isim])
            if relative_stddev > MAX_RELATIVE_STDDEV:
                reason = f"large late-time standard deviation {relative_stddev:.3g} N_tot"
            elif violation > MAX_CONSERVATION_VIOLATION:
                reason = f"conservation violated by {violation:.3g} N_tot"
        valid[isim] = not reason
        reasons.append(reason)
    return AsymptoticState(initial=four_flux[:, 0].copy(), final=final, final_stddev=final_stddev, growth_rate=rates,
                           saturation_time=tsat, end_time=time[:, -1].copy(), valid=valid, reason=reasons)
