"""Training-time, differentiable physics of the learned correction (physics.md sections 3-4).

Head assembly, the conservation projection and the realizability limiter, in torch, acting on
rest-frame four-fluxes in units of N_tot. The C++ runtime implements the same three steps
(docs/model_package.md); Box3D itself is never reimplemented here.
"""
from __future__ import annotations

import torch

from dodo.conventions import N_COMPONENTS, N_SPECIES

from .conservation import conservation_projector

HEAD_OUTPUT_SIZES = {"direct": N_SPECIES * N_COMPONENTS, "equivariant": 2 * N_SPECIES * N_SPECIES + N_SPECIES}


class ConservationProjection(torch.nn.Module):
    """dF[..., 6, 4] -> its orthogonal projection onto the conserving subspace."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("projector", torch.from_numpy(conservation_projector()), persistent=False)

    def forward(self, dF: torch.Tensor) -> torch.Tensor:
        flat = dF.reshape(*dF.shape[:-2], N_SPECIES * N_COMPONENTS)
        projected = flat @ self.projector.to(dF.dtype)  # symmetric, so P^T = P
        return projected.reshape(dF.shape)


def realizability_margin(F: torch.Tensor) -> torch.Tensor:
    """n - |F| per species ([..., 6, 4] -> [..., 6]); >= 0 means realizable."""
    return F[..., 0] - torch.linalg.vector_norm(F[..., 1:], dim=-1)


#: The runtime's root-finding margin (cpp/src/realizability.cpp, realizable_step's kMargin): a limited
#: step keeps (1 - margin) n - |F| >= its floor.
LIMITER_MARGIN = 1e-12


@torch.no_grad()
def limiter_theta(F_base: torch.Tensor, dF: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """Largest theta in [0, 1] keeping every species of F_base + theta dF realizable.

    The realizable set (n >= |F|) is a convex cone and n - |F| is concave along the segment,
    so the admissible thetas form an interval [0, theta*]; bisection returns its feasible end.
    A species already outside the cone (Box3D quadrature error, rounding) may not move further
    out: its constraint is margin(theta) >= min(margin(0), 0). Returns [...] (batch shape).

    The same rule as the runtime's realizable_step (cpp/src/realizability.cpp), in float64
    whatever the inputs' dtype, species by species in order: a species admissible (margin >= its
    floor) at the theta reached so far puts no bound on it; any other is bounded with the
    runtime's margin, (1 - 1e-12) n - |F| >= its floor, on [0, theta], and one that fails that
    already at 0 (a species on the cone, as Box3D's clamp leaves beamed ones, or outside it)
    stops the correction: theta = 0. Without this a cell with a species on the cone got theta up
    to 0.89 here and 0 at run time, and one with a species outside it 0 here and 0.37 at run
    time (parity and solver-laws probe, round one). The result, cast back to the inputs' dtype,
    is never rounded up.
    """
    dtype = F_base.dtype
    base, change = F_base.to(torch.float64), dF.to(torch.float64)
    floor = torch.clamp(realizability_margin(base), max=0.0)  # [..., 6]
    batch = base.shape[:-2]
    theta = torch.ones(batch, dtype=torch.float64, device=base.device)
    if bool(torch.all(realizability_margin(base + change) >= floor)):
        return theta.to(dtype)

    def slack(a: int, t: torch.Tensor, margin: float) -> torch.Tensor:
        F = base[..., a, :] + t[..., None] * change[..., a, :]
        return (1.0 - margin) * F[..., 0] - torch.linalg.vector_norm(F[..., 1:], dim=-1) - floor[..., a]

    for a in range(base.shape[-2]):
        bounded = ~(slack(a, theta, 0.0) >= 0)
        if not bool(bounded.any()):
            continue
        start_ok = slack(a, torch.zeros_like(theta), LIMITER_MARGIN) >= 0
        lo, hi = torch.zeros_like(theta), theta.clone()
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            good = slack(a, mid, LIMITER_MARGIN) >= 0
            lo = torch.where(good, mid, lo)
            hi = torch.where(good, hi, mid)
        theta = torch.where(bounded, torch.where(start_ok, lo, torch.zeros_like(lo)), theta)
    cast = theta.to(dtype)
    rounded_up = cast.to(torch.float64) > theta
    return torch.where(rounded_up, torch.nextafter(cast, torch.zeros_like(cast)), cast)


def assemble_head(head: str, output: torch.Tensor, F_init_rest: torch.Tensor, dF_box_rest: torch.Tensor) -> torch.Tensor:
    """Raw head output [B, K] -> dF_ml [B, 6, 4] (rest frame, units of N_tot); model_package.md."""
    if head == "direct":
        return output.reshape(*output.shape[:-1], N_SPECIES, N_COMPONENTS)
    if head == "equivariant":
        n2 = N_SPECIES * N_SPECIES
        c = output[..., :n2].reshape(*output.shape[:-1], N_SPECIES, N_SPECIES)
        d = output[..., n2:2 * n2].reshape(*output.shape[:-1], N_SPECIES, N_SPECIES)
        e = output[..., 2 * n2:]
        dF = torch.einsum("...ab,...bm->...am", c, F_init_rest) + torch.einsum("...ab,...bm->...am", d, dF_box_rest)
        # e_a u with u = (1, 0, 0, 0) in the rest frame: only the density component.
        return torch.cat([dF[..., :1] + e[..., None], dF[..., 1:]], dim=-1)
    raise ValueError(f"unknown head {head!r}; expected one of {sorted(HEAD_OUTPUT_SIZES)}")


class ResidualClosureHead(torch.nn.Module):
    """Head output -> conserving, realizable correction (rest frame, units of N_tot)."""

    def __init__(self, head: str) -> None:
        super().__init__()
        if head not in HEAD_OUTPUT_SIZES:
            raise ValueError(f"unknown head {head!r}; expected one of {sorted(HEAD_OUTPUT_SIZES)}")
        self.head = head
        self.projection = ConservationProjection()

    def forward(self, output, F_init_rest, F_box_rest, return_unlimited: bool = False):
        dF_box_rest = F_box_rest - F_init_rest
        projected = self.projection(assemble_head(self.head, output, F_init_rest, dF_box_rest))
        theta = limiter_theta(F_box_rest.detach(), projected.detach())
        limited = theta[..., None, None] * projected
        if return_unlimited:
            return limited, projected, theta
        return limited
