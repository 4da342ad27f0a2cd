"""Network inputs of a model package, by feature set (docs/model_package.md, `dodo.features`).

- ``invariants27-v1``: the 27 invariants of physics.md section 4.
- ``invariants27+box7-v1``: those, then Box3D's own answer as 7 more scalars, all rest-frame and
  in units of the cell's N_tot: the six comoving density changes dn_a^box = -(F_box_a - F_init_a).u
  and the growth proxy growth_over_ntot. Box3D already runs in the closure, so they cost nothing
  at run time, and they carry what the invariants only imply (Rhea also feeds F_box). The C++
  runtime builds the same vector (cpp/src/runtime/closure.cpp); the model's test vectors tie both.
- ``invariants27+box7+eln18-v1``: those 34, then the shape of the ELN crossing that Box3D's kernel
  integrates anyway, six per flavour pair (e,mu), (e,tau), (mu,tau): I+ and I- (the integrals of
  the positive and negative parts of G = ELN_i - ELN_j), the solid-angle fraction where G > 0, the
  lengths of the two lobes' weighted mean directions and the cosine between those directions
  (rotation- and boost-invariant, computed in the rest frame). The growth rate follows the
  crossing's shape, which the invariants give the network only implicitly (docs/training.md,
  growth). One implementation: the C++ kernel (``dodo._box3d.crossing_features``), run at the
  Box3D settings of the data (a preprocessed file's ``box3d`` attribute, which the exported
  package records and the runtime uses): a file preprocessed at Lebedev order 41 or with
  jedynak Z trains on the crossing inputs the runtime computes for it.
"""
from __future__ import annotations

import numpy as np

from dodo.conventions import N_CROSSING_FEATURES, N_INVARIANTS, N_SPECIES

INVARIANTS = "invariants27-v1"
INVARIANTS_AND_BOX = "invariants27+box7-v1"
INVARIANTS_BOX_AND_CROSSING = "invariants27+box7+eln18-v1"
FEATURE_SIZES = {INVARIANTS: N_INVARIANTS, INVARIANTS_AND_BOX: N_INVARIANTS + N_SPECIES + 1,
                 INVARIANTS_BOX_AND_CROSSING: N_INVARIANTS + N_SPECIES + 1 + N_CROSSING_FEATURES}
#: Features the out-of-distribution distance is measured on (the first ones): the crossing inputs
#: are functions of the same moments, and a 52 x 52 distance would cost the closure as much as the
#: network (issue 13).
OOD_COLUMNS = {INVARIANTS: N_INVARIANTS, INVARIANTS_AND_BOX: N_INVARIANTS + N_SPECIES + 1,
               INVARIANTS_BOX_AND_CROSSING: N_INVARIANTS + N_SPECIES + 1}


def box3d_keywords(box3d: dict | None = None) -> dict:
    """lebedev_order, z_method and max_flux_factor of Box3D settings ``box3d`` (a preprocessed
    file's or a model's ``box3d``, as dodo.box3d_settings returns them; missing keys and None: the
    package defaults), as keyword arguments of dodo.box3d and dodo.crossing_features."""
    from dodo._box3d import DEFAULT_LEBEDEV_ORDER, DEFAULT_MAX_FLUX_FACTOR, DEFAULT_Z_METHOD

    box3d = box3d or {}
    return {"lebedev_order": int(box3d.get("lebedev_order", DEFAULT_LEBEDEV_ORDER)),
            "z_method": str(box3d.get("z_method", DEFAULT_Z_METHOD)),
            "max_flux_factor": float(box3d.get("max_flux_factor", DEFAULT_MAX_FLUX_FACTOR))}


def feature_matrix(features: str, invariants, F_init_rest=None, F_box_rest=None, growth_over_ntot=None,
                   box3d: dict | None = None) -> np.ndarray:
    """[n, FEATURE_SIZES[features]] from invariants [n, 27] and, for the box sets, rest-frame
    F_init and F_box [n, 6, 4] in units of N_tot and the proxy growth_over_ntot [n] (the crossing
    inputs are computed from F_init_rest, at the Box3D settings ``box3d``: those of the data)."""
    invariants = np.asarray(invariants, dtype=np.float64)
    if features == INVARIANTS:
        return invariants
    if features in (INVARIANTS_AND_BOX, INVARIANTS_BOX_AND_CROSSING):
        change = np.asarray(F_box_rest, np.float64)[..., 0] - np.asarray(F_init_rest, np.float64)[..., 0]
        columns = [invariants, change, np.asarray(growth_over_ntot, np.float64).reshape(-1, 1)]
        if features == INVARIANTS_BOX_AND_CROSSING:
            columns.append(crossing_inputs(F_init_rest, box3d))
        return np.concatenate(columns, axis=1)
    raise ValueError(f"unknown feature set {features!r}; expected one of {sorted(FEATURE_SIZES)}")


def crossing_inputs(F_init_rest, box3d: dict | None = None) -> np.ndarray:
    """The 18 ELN-crossing inputs [n, 18] of rest-frame cells [n, 6, 4] (units of N_tot), as the
    closure's Box3D kernel computes them for a crossing cell at the Box3D settings ``box3d`` (the
    data's; None: the package defaults). Zeros for a stable cell (no network row at run time;
    training rows all cross)."""
    from dodo._box3d import crossing_features

    values = crossing_features(np.asarray(F_init_rest, np.float64), **box3d_keywords(box3d))
    return np.nan_to_num(values, nan=0.0)


def lab_features(features: str, F_init, u=None, box=None, box3d: dict | None = None) -> np.ndarray:
    """Features of lab-frame cells F_init [n, 6, 4], u [n, 4] (None: rest), with ``box`` the
    dodo.box3d result of the same cells (computed when None and needed) and ``box3d`` the Box3D
    settings of the model (None: the package defaults)."""
    import dodo

    from .frames import boost_to_rest

    F_init = np.asarray(F_init, np.float64)
    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F_init), 1)) if u is None else np.asarray(u, np.float64)
    invariants = np.asarray(dodo.invariants(F_init, u), np.float64)
    if features == INVARIANTS:
        return invariants
    if box is None:
        box = dodo.box3d(F_init, u, **box3d_keywords(box3d))
    ntot = np.asarray(dodo.comoving_density(F_init, u), np.float64)[:, None, None]
    F_init_rest = boost_to_rest(F_init, u[:, None, :]) / ntot
    F_box_rest = boost_to_rest(np.asarray(box.F_box, np.float64), u[:, None, :]) / ntot
    return feature_matrix(features, invariants, F_init_rest, F_box_rest, np.asarray(box.growth_over_ntot), box3d)
