"""Reading torch files without running code planted in them.

torch.load(weights_only=False) unpickles anything, so a crafted .pt runs its code before any digest
check. Dodo's checkpoints hold only tensors, plain Python data and NumPy arrays (the RNG state), so
they load through torch's restricted unpickler with NumPy's array reconstruction allowed; anything
else is refused with a message that names what the file asked for.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch


class UntrustedCheckpointError(ValueError):
    """A torch file that needs more than tensors, plain data and NumPy arrays to load."""


def _numpy_globals() -> list:
    # What np.random.get_state() and NumPy scalars/arrays pickle to (NumPy 1.x and 2.x spellings).
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    allowed += [type(np.dtype(name)) for name in ("uint32", "int64", "float64", "float32", "bool", "int32")]
    # A checkpoint pickled under NumPy 1.x names numpy.core.multiarray: the same functions.
    allowed += [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    return allowed


def load_torch_file(path: str | Path, map_location="cpu"):
    """torch.load with weights_only=True and NumPy arrays allowed; UntrustedCheckpointError otherwise."""
    with torch.serialization.safe_globals(_numpy_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as exc:
            if "Weights only load failed" not in str(exc):
                raise
            raise UntrustedCheckpointError(
                f"{path}: refused: the file asks to run Python code or build objects other than tensors, "
                f"plain data and NumPy arrays, which Dodo's checkpoints never hold "
                f"({_first_line_naming_global(str(exc))}); it was not loaded") from None


def _first_line_naming_global(message: str) -> str:
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()[:200]
    return "restricted unpickler"
