"""Readers for Emu asymptotic databases, with the read-time hygiene filters of data.md.

The files themselves are read by dodo.emu_files (run-time package; re-exported here).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dodo.emu_files import (DIRNAMES, FINAL, GROWTH, INITIAL, DataFileError, EmuChunk,  # noqa: F401  (re-exported)
                            iter_emu_chunks, open_emu_file)

from .conservation import conservation_violation
from dodo.conventions import total_density


@dataclass
class FilterCounts:
    """How many rows each hygiene filter touched (reported and stored in file attributes)."""

    rows_read: int = 0
    nonfinite_dropped: int = 0
    negative_density_clamped: int = 0
    conservation_dropped: int = 0
    flux_factor_dropped: int = 0
    box3d_rejected_dropped: int = 0
    rows_kept: int = 0

    def add(self, other: "FilterCounts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {name: int(getattr(self, name)) for name in self.__dataclass_fields__}


def flux_factor(F: np.ndarray) -> np.ndarray:
    """|F|/n per species ([..., 6, 4] -> [..., 6]); inf where n <= 0 < |F|, 0 where both vanish."""
    n = F[..., 0]
    flux = np.linalg.norm(F[..., 1:], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n > 0, flux / np.where(n > 0, n, 1.0), np.where(flux > 0, np.inf, 0.0))
    return ratio


def apply_hygiene(chunk: EmuChunk, filters, source: str = "the Emu file") -> tuple[EmuChunk, FilterCounts]:
    """data.md's read-time hygiene, in this order: NaN/Inf rows dropped; negative initial
    densities set to 0; rows violating conservation by more than the tolerance (units of N_tot)
    dropped; rows with any flux factor >= the limit (initial or final) dropped."""
    counts = FilterCounts(rows_read=len(chunk))
    finite = np.isfinite(chunk.F_init).all(axis=(1, 2)) & np.isfinite(chunk.F_final).all(axis=(1, 2))
    with np.errstate(over="ignore", invalid="ignore"):
        finite &= np.isfinite(total_density(chunk.F_init, absolute=True))  # N_tot overflowing: not finite either
    if filters.drop_nonfinite:
        counts.nonfinite_dropped = int((~finite).sum())
        chunk = chunk.select(finite)
    elif not finite.all():
        # Kept, they were counted as the conservation or flux-factor filter's drops (NaN fails every
        # comparison), or with those filters off written after a NumPy warning, and `dodo train` then called
        # the file damaged, "dodo preprocess never writes them" (outside probe, training round three).
        rows = chunk.row[~finite].tolist()
        raise DataFileError(f"{source}: {len(rows)} row(s) with NaN or Inf four-fluxes (rows {rows[:5]}"
                            f"{' ...' if len(rows) > 5 else ''}); filters.drop_nonfinite: false keeps them, but no "
                            "Dodo command trains on or scores such rows: set filters.drop_nonfinite: true (the "
                            "default) to drop and count them, or mend the file")
    if filters.clamp_negative_density:
        negative = chunk.F_init[..., 0] < 0
        counts.negative_density_clamped = int(negative.any(axis=1).sum())
        chunk.F_init[..., 0] = np.where(negative, 0.0, chunk.F_init[..., 0])
    if filters.drop_conservation_violation:
        ntot = total_density(chunk.F_init)  # rest-frame files: N_tot = sum of densities
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            relative = conservation_violation(chunk.F_final - chunk.F_init) / ntot
        good = np.isfinite(relative) & (relative <= filters.conservation_tolerance)
        counts.conservation_dropped = int((~good).sum())
        chunk = chunk.select(good)
    if filters.drop_high_flux_factor:
        limit = filters.max_flux_factor
        good = (flux_factor(chunk.F_init) < limit).all(axis=1) & (flux_factor(chunk.F_final) < limit).all(axis=1)
        counts.flux_factor_dropped = int((~good).sum())
        chunk = chunk.select(good)
    counts.rows_kept = len(chunk)
    return chunk, counts


def average_mu_tau_change(F_init: np.ndarray, F_final: np.ndarray) -> np.ndarray:
    """F_init + (change averaged over mu and tau), for nu and nubar separately.

    Emu breaks the mu/tau symmetry at random. Averaging the *change* (not F_final) keeps the
    flavour sums and each flavour's lepton number exactly conserved even when the initial
    mu and tau differ; for mu = tau initially it equals averaging F_final.
    """
    change = F_final - F_init
    for s in range(2):
        mu, tau = 3 * s + 1, 3 * s + 2
        mean = 0.5 * (change[:, mu] + change[:, tau])
        change[:, mu] = mean
        change[:, tau] = mean
    return F_init + change
