"""The reported metric table: model beside Box3D, per species, plus the laws (float64 NumPy).

All errors are in units of each cell's N_tot in the fluid rest frame, against F_true.
"""
from __future__ import annotations

import numpy as np

from dodo.conventions import SPECIES
from dodo._shown import counted

from .conservation import conservation_violation

#: A species counts as unrealizable when n - |F| < -this (units of N_tot).
REALIZABILITY_TOLERANCE = 1e-6


def metric_table(F_init_rest, F_box_rest, F_true_rest, dF_model_rest) -> dict:
    """Arrays [N, 6, 4] (rest frame, units of N_tot); dF_model_rest is the model's correction."""
    F_init_rest, F_box_rest, F_true_rest, dF_model_rest = (
        np.asarray(a, dtype=np.float64) for a in (F_init_rest, F_box_rest, F_true_rest, dF_model_rest))
    F_model = F_box_rest + dF_model_rest
    table = {"n_cells": int(F_init_rest.shape[0]), "species": list(SPECIES)}
    for name, F_pred in (("box3d", F_box_rest), ("model", F_model)):
        error = F_pred - F_true_rest
        dn = np.abs(error[..., 0])
        dflux = np.linalg.norm(error[..., 1:], axis=-1)
        margin = F_pred[..., 0] - np.linalg.norm(F_pred[..., 1:], axis=-1)
        violation = conservation_violation(F_pred - F_init_rest)
        table[name] = {
            "mean_abs_dn_over_ntot": dn.mean(axis=0).tolist(),
            "mean_abs_dF_over_ntot": dflux.mean(axis=0).tolist(),
            "mean_abs_dn_over_ntot_all": float(dn.mean()),
            "mean_abs_dF_over_ntot_all": float(dflux.mean()),
            "max_conservation_violation_over_ntot": float(violation.max(initial=0.0)),
            "unrealizable_fraction": float(np.mean(margin < -REALIZABILITY_TOLERANCE)) if margin.size else 0.0,
            "min_realizability_margin_over_ntot": float(margin.min(initial=np.inf)),
        }
    return table


def format_metric_table(table: dict) -> str:
    """Human-readable model-vs-Box3D table."""
    lines = [f"metric table on {counted(table['n_cells'], 'cell')} (rest frame, units of N_tot; lower is better)",
             f"{'species':<10} {'|dn| box3d':>12} {'|dn| model':>12} {'|dF| box3d':>12} {'|dF| model':>12}"]
    box, model = table["box3d"], table["model"]
    for i, name in enumerate(table["species"]):
        lines.append(f"{name:<10} {box['mean_abs_dn_over_ntot'][i]:12.3e} {model['mean_abs_dn_over_ntot'][i]:12.3e} "
                     f"{box['mean_abs_dF_over_ntot'][i]:12.3e} {model['mean_abs_dF_over_ntot'][i]:12.3e}")
    lines.append(f"{'all':<10} {box['mean_abs_dn_over_ntot_all']:12.3e} {model['mean_abs_dn_over_ntot_all']:12.3e} "
                 f"{box['mean_abs_dF_over_ntot_all']:12.3e} {model['mean_abs_dF_over_ntot_all']:12.3e}")
    lines.append(f"max conservation violation / N_tot: box3d {box['max_conservation_violation_over_ntot']:.2e}, "
                 f"model {model['max_conservation_violation_over_ntot']:.2e}")
    lines.append(f"unrealizable species fraction: box3d {box['unrealizable_fraction']:.2e}, "
                 f"model {model['unrealizable_fraction']:.2e}")
    return "\n".join(lines)
