"""Per-cell status flags, built from the C++ core's single list (cpp/src/cell_status.hpp)."""
from __future__ import annotations

import enum

import numpy as np

from . import _core

CellStatus = enum.IntFlag("CellStatus", {"OK": 0, **{name: bit for name, bit, _, _ in _core.cell_status_bits}})
CellStatus.__doc__ = "Bits of the per-cell status: " + "; ".join(
    f"{name}: {text}" for name, _, _, text in _core.cell_status_bits
)

#: Bits meaning the cell was rejected: the output is the input when finite and realizable, zeros when
#: not finite, else negative densities set to 0 and fluxes scaled to |F| <= n (docs/runtime.md).
REJECTED_MASK = sum(bit for _, bit, rejects, _ in _core.cell_status_bits if rejects)
_DESCRIPTIONS = {name: text for name, _, _, text in _core.cell_status_bits}


def describe_status(status: int | np.integer) -> list[str]:
    """Names and meanings of the bits set in one cell's status."""
    value = int(status)
    known = [f"{flag.name}: {_DESCRIPTIONS[flag.name]}" for flag in CellStatus if flag.value and value & flag.value]
    unknown = value & ~sum(flag.value for flag in CellStatus)
    # Bits no flag names (a status from another version, or not a status at all) are said, not dropped.
    return known + ([f"UNKNOWN: bits {unknown:#x} are not status flags of this version"] if unknown else [])
