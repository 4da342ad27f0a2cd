"""Targeted sampling for the campaign: of a family's random candidates, keep those where a closure
model expects its own correction to be least certain (``dodo simulate --select-by MODEL``).

Measured before it was adopted (docs/training.md, "Targeted sampling"): within each family, labels
chosen by the members' spread lowered the error on held-back pool states more than as many random
labels did; across families the spread (in units of N_tot) picks the families with large
residuals and made the Emu recipe worse, so a chunk selects only among its own family's draws.
"""
from __future__ import annotations

import numpy as np

#: Candidates drawn per state kept unless --oversample says: the pool study that adopted targeted
#: sampling kept the top 16% of its candidates within each family (docs/training.md).
DEFAULT_OVERSAMPLE = 6
#: The fewest candidates drawn per state kept (--oversample): 1 would keep every draw.
MIN_OVERSAMPLE = 2
#: The most: the candidates are drawn and scored at once (a few hundred bytes each).
MAX_OVERSAMPLE = 1000


def model_identity(model: str) -> tuple[str, str, bytes]:
    """(the model as recorded, its SHA-256, its bytes): "default" is the package's shipped model file.
    One read serves both the digest and the ranking (model_uncertainty's ``package``), so a file
    replaced between them cannot be recorded under the other's digest (outside probe, round 37)."""
    import hashlib
    import os

    from .._closure import _MAX_MODEL_FILE_BYTES
    from ..models import default_model_path

    if model == "box3d":  # the closure's name for no model
        raise ValueError("--select-by box3d: Box3D alone has no uncertainty to rank states by; give a model package "
                         "or 'default'")
    path = default_model_path() if model == "default" else model
    if not os.path.isfile(path):
        raise ValueError(f"--select-by {model}: no such model file")
    with open(path, "rb") as handle:
        package = handle.read(_MAX_MODEL_FILE_BYTES + 1)  # a larger file is refused by the runtime, not read whole
    return model, hashlib.sha256(package).hexdigest(), package


def model_uncertainty(four_flux: np.ndarray, model: str, package: bytes | None = None) -> np.ndarray:
    """Per state, the model's uncertainty of its correction (N_tot) for rest-frame states [n, 6, 4];
    ``package``: the model's bytes as model_identity read them (``model`` then names it in messages)."""
    from .._closure import Closure

    try:
        closure = Closure(package if package is not None else None if model == "default" else model, threads=1)
    except RuntimeError as error:  # the runtime's refusal of a file that is no model package
        raise ValueError(f"--select-by {model}: {error}") from None
    if "uncertainty" not in closure.optional_outputs:
        raise ValueError(f"--select-by {model}: the model has no uncertainty output (a model of "
                         "`dodo train-ensemble` has one), so it cannot rank states")
    return np.asarray(closure.apply(np.ascontiguousarray(four_flux, dtype=np.float64)).uncertainty, float)


def most_uncertain(uncertainty: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest uncertainties, in draw order (ties: the earlier draw)."""
    uncertainty = np.asarray(uncertainty, float)
    if not np.all(np.isfinite(uncertainty)):
        raise ValueError("the model gave a non-finite uncertainty; it cannot rank the candidates")
    chosen = np.argsort(-uncertainty, kind="stable")[:count]
    return np.sort(chosen)
