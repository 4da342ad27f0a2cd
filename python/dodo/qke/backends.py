"""Which kernel steps a batch of boxes: the compiled one of the C++ core (compiled.py) where it can
run, else the NumPy solver (solver.py), as ``SolverConfig.backend`` says. Kept apart from both so
that neither imports the other's chooser (compiled.py builds on solver.py's classes)."""
from __future__ import annotations

import numpy as np

from .compiled import CompiledFlavourBox, compiled_unavailable_reason
from .solver import FastFlavourBox, SolverConfig


def resolve_backend(config: SolverConfig) -> tuple[str, str | None]:
    """(backend that will run, why "auto" fell back to NumPy or None); ValueError if "cpp" cannot run."""
    if config.backend == "numpy":
        return "numpy", None
    reason = compiled_unavailable_reason(config.ncell)
    if reason is None:
        return "cpp", None
    if config.backend == "cpp":
        raise ValueError(f"backend 'cpp' cannot run: {reason}")
    return "numpy", reason


def make_box(four_flux: np.ndarray, box_length_cm, config: SolverConfig, directions: np.ndarray | None = None,
             threads: int = 1):
    """A FastFlavourBox stepped by the backend ``config.backend`` selects (see :func:`resolve_backend`).

    threads: the compiled kernel steps the batch's simulations on up to this many threads
    (results do not depend on it; the NumPy solver ignores it).
    """
    backend, _ = resolve_backend(config)
    if backend == "cpp":
        return CompiledFlavourBox(four_flux, box_length_cm, config, directions, threads=threads)
    return FastFlavourBox(four_flux, box_length_cm, config, directions)
