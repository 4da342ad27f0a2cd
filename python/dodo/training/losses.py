"""Loss terms on the rest-frame correction, in units of N_tot (or of a global target scale).

Components are (t, x, y, z): index 0 is the density (the seed used index 0 of (x, y, z, t)
data as the density; that bug is gone because data are converted at the boundary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TERMS = ("density", "flux", "direction", "unphysical", "residual_l1")


@dataclass
class LossBreakdown:
    total: torch.Tensor
    terms: dict

    def as_floats(self) -> dict:
        out = {name: float(value.detach()) for name, value in self.terms.items()}
        out["total"] = float(self.total.detach())
        return out


def loss_terms(dF_pred, dF_unlimited, dF_true, F_box_rest, cell_weight=None) -> dict:
    """All terms, each a scalar. ``cell_weight`` [B] rescales a cell's units (N_tot/target_scale)."""
    if cell_weight is None:
        cell_weight = torch.ones(dF_pred.shape[0], dtype=dF_pred.dtype, device=dF_pred.device)
    w = cell_weight[:, None]
    density = ((dF_pred[..., 0] - dF_true[..., 0]) * w).pow(2).mean()

    flux_pred = F_box_rest[..., 1:] + dF_pred[..., 1:]
    flux_true = F_box_rest[..., 1:] + dF_true[..., 1:]
    mag_pred = torch.linalg.vector_norm(flux_pred, dim=-1)
    mag_true = torch.linalg.vector_norm(flux_true, dim=-1)
    flux = ((mag_pred - mag_true) * w).pow(2).mean()

    # 1 - cos, weighted by |F_true| so that nearly isotropic species (no direction) do not count.
    tiny = torch.finfo(dF_pred.dtype).tiny ** 0.5
    cosine = (flux_pred * flux_true).sum(-1) / (mag_pred * mag_true).clamp_min(tiny)
    direction = ((1.0 - cosine) * mag_true * w).mean()

    # Penalise what the limiter had to remove: flux factor > 1 before the limiter.
    F_unlimited = F_box_rest + dF_unlimited
    excess = torch.relu(torch.linalg.vector_norm(F_unlimited[..., 1:], dim=-1) - F_unlimited[..., 0])
    unphysical = (excess * w).pow(2).mean()

    residual_l1 = ((dF_pred - dF_true) * w[..., None]).abs().mean()
    return {"density": density, "flux": flux, "direction": direction, "unphysical": unphysical,
            "residual_l1": residual_l1}


def weighted_loss(terms: dict, loss_config) -> LossBreakdown:
    total = sum(getattr(loss_config, f"w_{name}") * value for name, value in terms.items())
    return LossBreakdown(total=total, terms=terms)
