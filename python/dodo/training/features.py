"""Network inputs of a model package, by feature set (docs/model_package.md, `dodo.features`).

- ``invariants27-v1``: the 27 invariants of physics.md section 4.
- ``invariants27+box7-v1``: those, then Box3D's own answer as 7 more scalars, all rest-frame and
  in units of the cell's N_tot: the six comoving density changes dn_a^box = -(F_box_a - F_init_a).u
  and the growth proxy growth_over_ntot. Box3D already runs in the closure, so they cost nothing
  at run time, and they carry what the invariants only imply (Rhea also feeds F_box). The C++
  runtime builds the same vector (cpp/src/runtime/closure.cpp); the model's test vectors tie both.
"""
from __future__ import annotations

import numpy as np

from dodo.conventions import N_INVARIANTS, N_SPECIES

INVARIANTS = "invariants27-v1"
INVARIANTS_AND_BOX = "invariants27+box7-v1"
FEATURE_SIZES = {INVARIANTS: N_INVARIANTS, INVARIANTS_AND_BOX: N_INVARIANTS + N_SPECIES + 1}


def feature_matrix(features: str, invariants, F_init_rest=None, F_box_rest=None, growth_over_ntot=None) -> np.ndarray:
    """[n, FEATURE_SIZES[features]] from invariants [n, 27] and, for the box set, rest-frame
    F_init and F_box [n, 6, 4] in units of N_tot and the proxy growth_over_ntot [n]."""
    invariants = np.asarray(invariants, dtype=np.float64)
    if features == INVARIANTS:
        return invariants
    if features == INVARIANTS_AND_BOX:
        change = np.asarray(F_box_rest, np.float64)[..., 0] - np.asarray(F_init_rest, np.float64)[..., 0]
        return np.concatenate([invariants, change, np.asarray(growth_over_ntot, np.float64).reshape(-1, 1)], axis=1)
    raise ValueError(f"unknown feature set {features!r}; expected one of {sorted(FEATURE_SIZES)}")


def lab_features(features: str, F_init, u=None, box=None) -> np.ndarray:
    """Features of lab-frame cells F_init [n, 6, 4], u [n, 4] (None: rest), with ``box`` the
    dodo.box3d result of the same cells (computed when None and needed)."""
    import dodo

    from .frames import boost_to_rest

    F_init = np.asarray(F_init, np.float64)
    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F_init), 1)) if u is None else np.asarray(u, np.float64)
    invariants = np.asarray(dodo.invariants(F_init, u), np.float64)
    if features == INVARIANTS:
        return invariants
    if box is None:
        box = dodo.box3d(F_init, u)
    ntot = np.asarray(dodo.comoving_density(F_init, u), np.float64)[:, None, None]
    F_init_rest = boost_to_rest(F_init, u[:, None, :]) / ntot
    F_box_rest = boost_to_rest(np.asarray(box.F_box, np.float64), u[:, None, :]) / ntot
    return feature_matrix(features, invariants, F_init_rest, F_box_rest, np.asarray(box.growth_over_ntot))
