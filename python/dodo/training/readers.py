"""Readers for Emu asymptotic databases, with the read-time hygiene filters of data.md.

Emu/Rhea files store [sim, (x,y,z,t), (nu,nubar), flavour] in the fluid rest frame; rows are
converted to Dodo's [sim, 6, (t,x,y,z)] here, at the boundary, and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dodo.conventions import N_FLAVOURS, from_emu_layout

from .conservation import conservation_violation

INITIAL = "F4_initial(1|ccm)"
FINAL = "F4_final(1|ccm)"
GROWTH = "growthRate(1|s)"
DIRNAMES = "directorynames"


class DataFileError(ValueError):
    """An input or preprocessed file is missing, unreadable or not in the expected layout."""


@dataclass
class EmuChunk:
    """A block of rows from one Emu file, in Dodo's layout (rest frame, caller's units)."""

    F_init: np.ndarray      # [n, 6, 4]
    F_final: np.ndarray     # [n, 6, 4]
    growth_rate: np.ndarray  # [n], s^-1, NaN where unknown
    dirname: np.ndarray     # [n] str
    row: np.ndarray         # [n] row index in the source file

    def select(self, keep: np.ndarray) -> "EmuChunk":
        return EmuChunk(self.F_init[keep], self.F_final[keep], self.growth_rate[keep], self.dirname[keep], self.row[keep])

    def __len__(self) -> int:
        return len(self.row)


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


def open_emu_file(path: str | Path):
    """Open an Emu database with h5py, checking the layout; returns (h5py.File, nsims)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"Emu database not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    problem = _layout_problem(handle)
    if problem:  # the message is made while the file is open, then the file is closed (issue 11)
        handle.close()
        raise DataFileError(f"{path}: {problem}")
    return handle, handle[INITIAL].shape[0]


def _layout_problem(handle) -> str:
    """What is wrong with an open Emu database's layout, or '' when nothing is."""
    import h5py

    for name in (INITIAL, FINAL):
        if name not in handle:
            return f"missing dataset '{name}' (not an Emu asymptotic database?)"
        if not isinstance(handle[name], h5py.Dataset):
            return f"'{name}' is a {type(handle[name]).__name__.lower()}, not a dataset (not an Emu asymptotic database?)"
    shape = handle[INITIAL].shape
    if len(shape) != 4 or shape[1] != 4 or shape[2] != 2 or shape[3] != N_FLAVOURS:
        return f"'{INITIAL}' has shape {shape}; expected [nsims, 4 (x,y,z,t), 2, {N_FLAVOURS}]"
    if handle[FINAL].shape != shape:
        return f"'{FINAL}' shape {handle[FINAL].shape} differs from '{INITIAL}' {shape}"
    return ""


def _is_dataset(handle, name: str, shape: tuple) -> bool:
    import h5py

    return name in handle and isinstance(handle[name], h5py.Dataset) and handle[name].shape == shape


def iter_emu_chunks(path: str | Path, chunk_size: int = 65536) -> Iterator[EmuChunk]:
    """Rows of one Emu database in blocks of at most ``chunk_size``."""
    handle, nsims = open_emu_file(path)
    with handle:
        has_growth = _is_dataset(handle, GROWTH, (nsims,))
        has_dirs = _is_dataset(handle, DIRNAMES, (nsims,))
        for start in range(0, nsims, chunk_size):
            stop = min(start + chunk_size, nsims)
            growth = handle[GROWTH][start:stop].astype(np.float64) if has_growth else np.full(stop - start, np.nan)
            if has_dirs:
                names = handle[DIRNAMES][start:stop]
                dirs = np.array([d.decode() if isinstance(d, bytes) else str(d) for d in names], dtype=object)
            else:
                dirs = np.array([f"{Path(path).name}:{i}" for i in range(start, stop)], dtype=object)
            yield EmuChunk(
                F_init=from_emu_layout(handle[INITIAL][start:stop].astype(np.float64)),
                F_final=from_emu_layout(handle[FINAL][start:stop].astype(np.float64)),
                growth_rate=growth, dirname=dirs, row=np.arange(start, stop))


def flux_factor(F: np.ndarray) -> np.ndarray:
    """|F|/n per species ([..., 6, 4] -> [..., 6]); inf where n <= 0 < |F|, 0 where both vanish."""
    n = F[..., 0]
    flux = np.linalg.norm(F[..., 1:], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n > 0, flux / np.where(n > 0, n, 1.0), np.where(flux > 0, np.inf, 0.0))
    return ratio


def apply_hygiene(chunk: EmuChunk, filters) -> tuple[EmuChunk, FilterCounts]:
    """data.md's read-time hygiene, in this order: NaN/Inf rows dropped; negative initial
    densities set to 0; rows violating conservation by more than the tolerance (units of N_tot)
    dropped; rows with any flux factor >= the limit (initial or final) dropped."""
    counts = FilterCounts(rows_read=len(chunk))
    if filters.drop_nonfinite:
        finite = np.isfinite(chunk.F_init).all(axis=(1, 2)) & np.isfinite(chunk.F_final).all(axis=(1, 2))
        counts.nonfinite_dropped = int((~finite).sum())
        chunk = chunk.select(finite)
    if filters.clamp_negative_density:
        negative = chunk.F_init[..., 0] < 0
        counts.negative_density_clamped = int(negative.any(axis=1).sum())
        chunk.F_init[..., 0] = np.where(negative, 0.0, chunk.F_init[..., 0])
    if filters.drop_conservation_violation:
        ntot = chunk.F_init[..., 0].sum(axis=1)  # rest-frame files: N_tot = sum of densities
        with np.errstate(divide="ignore", invalid="ignore"):
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
