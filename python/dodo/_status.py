"""Per-cell status flags, built from the C++ core's single list (cpp/src/cell_status.hpp)."""
from __future__ import annotations

import enum
import sys
from typing import TYPE_CHECKING

import numpy as np

from . import _core


class _StatusType(enum.EnumMeta):  # type(enum.IntFlag), named so that a type checker knows it
    """CellStatus's metaclass: ``CellStatus(value)`` also takes one cell's status as NumPy holds it.

    ``result.status`` is a uint32 array, so ``dodo.CellStatus(result.status[i])`` (a np.uint32), or
    ``dodo.CellStatus(result.status)`` of a single cell (a 0-d array), is how a user decodes a cell;
    enum's own lookup takes only Python ints for a combination of flags, and said
    ``ValueError: np.uint32(3) is not a valid CellStatus`` of a valid status, and of a batch's array
    ``The truth value of an array with more than one element is ambiguous`` (outside probe, round 29)."""

    def __call__(cls, value, *args, **kwargs):
        if not args and not kwargs and cls._member_map_ and (
                isinstance(value, (np.generic, np.ndarray, bool, float)) or (isinstance(value, int) and value >= 1 << 32)):
            # Python values as NumPy's (outside probe, round 42): CellStatus(True) and CellStatus(1.0) were
            # NO_CROSSING and CellStatus(2**40) a status, where np.bool_, np.float64 and np.uint64(2**40) are
            # refused. Negative ints stay enum's (~flag calls CellStatus(~value); -1 is every flag).
            value = _one_status(value, "dodo.CellStatus", "dodo.CellStatus(result.status[i])")
        return super().__call__(value, *args, **kwargs)


class _StatusFlags(enum.IntFlag, metaclass=_StatusType):
    """The base of CellStatus (no members: its members are the core's list)."""

    def __reduce_ex__(self, protocol):
        # A status made before an importlib.reload of this module (IPython's autoreload) is of the
        # earlier CellStatus, which pickle cannot name: "Can't pickle <flag 'CellStatus'>: it's not
        # the same object as dodo._status.CellStatus" (outside probe, round forty-five). It pickles as
        # the CellStatus this module defines now, by its value.
        # Looked up in the module sys.modules holds now: after that entry was deleted and dodo imported
        # again, pickle names the new module's class (outside probe, Python round sixty-five).
        current = getattr(sys.modules.get(__name__), "CellStatus", None) or globals().get("CellStatus")
        cls = type(self)
        if current is not None and cls is not current and cls.__module__ == __name__ and \
                cls.__qualname__ == current.__qualname__:
            return current, (int(self),)
        return super().__reduce_ex__(protocol)


if TYPE_CHECKING:
    # What type checkers (mypy, pyright) see of the class made below from the core's list, which
    # they cannot read: mypy called dodo.CellStatus "not callable" and said it had no NO_CROSSING
    # (outside probe, Python round sixty-five). Pinned to the core's list by
    # tests/python/test_probe_python65.py.
    class CellStatus(enum.IntFlag):
        def __new__(cls, value: int | np.integer | np.ndarray) -> CellStatus: ...  # as _StatusType takes it

        OK = 0
        NO_CROSSING = 1
        FLUX_FACTOR = 2
        NEGATIVE_DENSITY = 4
        NONFINITE = 8
        ZERO_DENSITY = 16
        BAD_VELOCITY = 32
        BOX3D_LIMITED = 64
        NETWORK_NONFINITE = 128
        CORRECTION_LIMITED = 256
else:
    CellStatus = _StatusFlags("CellStatus", {"OK": 0, **{name: bit for name, bit, _, _ in _core.cell_status_bits}},
                              module=__name__)
CellStatus.__doc__ = "Bits of the per-cell status: " + "; ".join(
    f"{name}: {text}" for name, _, _, text in _core.cell_status_bits
)
#: Bits meaning the cell was rejected: the output is the input when finite and realizable, zeros when
#: not finite, else negative densities set to 0 and fluxes scaled to |F| <= n (docs/runtime.md).
REJECTED_MASK = sum(bit for _, bit, rejects, _ in _core.cell_status_bits if rejects)
_DESCRIPTIONS = {name: text for name, _, _, text in _core.cell_status_bits}


def describe_status(status: int | np.integer | np.ndarray) -> list[str]:
    """Names and meanings of the bits set in one cell's status (an integer in [0, 2**32): a Python or
    NumPy integer such as ``result.status[i]``, or a 0-d integer array: the ``status`` of one cell's result)."""
    value = _one_status(status)
    known = [f"{flag.name}: {_DESCRIPTIONS[str(flag.name)]}" for flag in CellStatus if flag.value and value & flag.value]
    unknown = value & ~sum(flag.value for flag in CellStatus)
    # Bits no flag names (a status from another version, or not a status at all) are said, not dropped.
    return known + ([f"UNKNOWN: bits {unknown:#x} are not status flags of this version"] if unknown else [])


def _one_status(status, caller: str = "describe_status", example: str = "describe_status(result.status[i])") -> int:
    """``status`` as an int if it is one cell's status: an integer (Python, NumPy, or a 0-d integer
    array) in [0, 2**32). int() took 1.5 as 1, "3" as 3 and -1 as every flag, and a batch's status
    array failed with NumPy's "only 0-dimensional arrays can be converted to Python scalars"."""
    array = np.asarray(status) if isinstance(status, np.ndarray) else None
    if array is not None and array.ndim:
        raise TypeError(f"{caller} takes one cell's status; got an array of shape {array.shape}: "
                        f"call it per cell, e.g. {example}")
    value = status.item() if array is not None or isinstance(status, np.generic) else status
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a cell status is an integer (uint32 bits of dodo.CellStatus); got {status!r}")
    if not 0 <= value < 1 << 32:
        from ._box3d import _shown_number  # an int past the 4,300-digit limit of str() (round fifty-two)

        raise ValueError(f"a cell status is a uint32, in [0, 2**32); got {_shown_number(value, short=False)}")
    return value
