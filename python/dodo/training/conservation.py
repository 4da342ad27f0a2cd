"""The conservation laws of physics.md section 3 as a linear map (NumPy; no torch).

Fast flavour evolution conserves, per cell, the flavour-summed four-flux of neutrinos and of
antineutrinos, and each flavour's lepton number. The allowed changes form a 14-dim subspace.
"""
from __future__ import annotations

import numpy as np

from dodo.conventions import N_COMPONENTS, N_FLAVOURS, N_SPECIES


def conservation_constraints() -> np.ndarray:
    """Rows A (11 x 24) with A @ dF.flatten() = 0 for every allowed change (species-major).

    8 rows: flavour-summed four-flux per nu / nubar; 3 rows: dn_{nu,f} - dn_{nubar,f}
    (one of them redundant, so the allowed subspace has dimension 24 - 10 = 14).
    """
    rows = []
    for s in range(2):
        for m in range(N_COMPONENTS):
            row = np.zeros((N_SPECIES, N_COMPONENTS))
            row[3 * s:3 * s + N_FLAVOURS, m] = 1.0
            rows.append(row.ravel())
    for f in range(N_FLAVOURS):
        row = np.zeros((N_SPECIES, N_COMPONENTS))
        row[f, 0] = 1.0
        row[3 + f, 0] = -1.0
        rows.append(row.ravel())
    return np.array(rows)


def conservation_projector() -> np.ndarray:
    """Orthogonal projector (24 x 24, float64) onto the 14-dim conserving subspace."""
    A = conservation_constraints()
    return np.eye(A.shape[1]) - np.linalg.pinv(A) @ A


def conservation_violation(dF: np.ndarray) -> np.ndarray:
    """|A dF| per cell, max over the 11 laws ([..., 6, 4] -> [...]); same units as dF."""
    A = conservation_constraints()
    flat = np.asarray(dF).reshape(*np.shape(dF)[:-2], N_SPECIES * N_COMPONENTS)
    return np.max(np.abs(flat @ A.T), axis=-1)
