"""ResidualFFIModel: invariants -> head output (residual MLP), plus the full training closure."""
from __future__ import annotations

import torch
from torch import nn

from dodo.conventions import N_INVARIANTS

from .physics_torch import HEAD_OUTPUT_SIZES, ResidualClosureHead

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU}


class ResidualBlock(nn.Module):
    """x + Linear(act(norm(Linear(act(norm(x))))))  (pre-activation residual block)."""

    def __init__(self, width: int, activation: str, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(width)) if batch_norm else nn.Identity
        self.body = nn.Sequential(
            norm(), ACTIVATIONS[activation](), nn.Linear(width, width),
            norm(), ACTIVATIONS[activation](), nn.Dropout(dropout), nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualFFIModel(nn.Module):
    """Raw invariants [B, 27] -> raw head output [B, K].

    The training-split normalisation (mean/std) is a buffer applied first, so an exported graph
    takes raw invariants. The last layer starts at zero: an untrained model returns Box3D.
    """

    def __init__(self, head: str = "equivariant", hidden_dim: int = 128, n_blocks: int = 3,
                 activation: str = "silu", dropout: float = 0.0, batch_norm: bool = False,
                 n_inputs: int = N_INVARIANTS) -> None:
        super().__init__()
        if head not in HEAD_OUTPUT_SIZES:
            raise ValueError(f"unknown head {head!r}; expected one of {sorted(HEAD_OUTPUT_SIZES)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.head = head
        self.output_size = HEAD_OUTPUT_SIZES[head]
        self.register_buffer("input_mean", torch.zeros(n_inputs))
        self.register_buffer("input_std", torch.ones(n_inputs))
        self.stem = nn.Linear(n_inputs, hidden_dim)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden_dim, activation, dropout, batch_norm) for _ in range(n_blocks)])
        self.final = nn.Sequential(ACTIVATIONS[activation](), nn.Linear(hidden_dim, self.output_size))
        self._init_weights(activation)

    def _init_weights(self, activation: str) -> None:
        nonlinearity = "relu" if activation in ("relu", "silu", "gelu", "elu") else "tanh"
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity=nonlinearity)
                nn.init.zeros_(module.bias)
        for block in self.blocks:  # residual branches start small so the stack starts near identity
            nn.init.zeros_(block.body[-1].weight)
        nn.init.zeros_(self.final[-1].weight)

    def set_normalisation(self, mean, std) -> None:
        mean = torch.as_tensor(mean, dtype=self.input_mean.dtype)
        std = torch.as_tensor(std, dtype=self.input_std.dtype)
        self.input_mean.copy_(mean)
        self.input_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, invariants: torch.Tensor) -> torch.Tensor:
        x = (invariants - self.input_mean) / self.input_std
        return self.final(self.blocks(self.stem(x)))

    @classmethod
    def from_config(cls, model_config) -> "ResidualFFIModel":
        return cls(head=model_config.head, hidden_dim=model_config.hidden_dim, n_blocks=model_config.n_blocks,
                   activation=model_config.activation, dropout=model_config.dropout,
                   batch_norm=model_config.batch_norm)


class ResidualClosure(nn.Module):
    """Network + flavour-image blend + head assembly + conservation projection + realizability
    limiter: the runtime's closure (docs/runtime.md, steps 1-5) in torch.

    forward(invariants, F_init_rest, F_box_rest) -> dF_ml (rest frame, units of N_tot).
    """

    def __init__(self, network: ResidualFFIModel) -> None:
        super().__init__()
        self.network = network
        self.closure_head = ResidualClosureHead(network.head)

    def forward(self, invariants, F_init_rest, F_box_rest, return_unlimited: bool = False, network=None):
        """``network``: the module to call instead of self.network (its DDP wrapper in a distributed run).
        The network runs in its own precision (fp32, as in the ONNX package); the head, projection
        and limiter in the precision of the four-fluxes (float64 like the runtime when evaluating,
        fp32 in training)."""
        network = network or self.network
        output = flavour_image_output(network, self.network.head, invariants.to(self.network.input_mean.dtype),
                                      F_init_rest)
        limited, projected, theta = self.closure_head(output.to(F_init_rest.dtype), F_init_rest, F_box_rest,
                                                      return_unlimited=True)
        unchanged = box3d_left_unchanged(F_init_rest, F_box_rest)
        if bool(unchanged.any()):
            # The runtime returns a cell that Box3D leaves as it is (NO_CROSSING: stable; or rejected
            # and realizable) without the learned correction (export.closure_float64, the C++
            # closure's step 1). The training closure corrected them: `dodo evaluate` on a file with
            # stable rows printed a model error of 2.4e-3 N_tot where the exported model's is 0, and
            # the loss trained on corrections the runtime never applies (outside probe, round 41).
            keep = (~unchanged).to(limited.dtype)[..., None, None]
            limited, projected = limited * keep, projected * keep
            theta = torch.where(unchanged, torch.ones_like(theta), theta)
        if return_unlimited:
            return limited, projected, theta
        return limited


def box3d_left_unchanged(F_init_rest: torch.Tensor, F_box_rest: torch.Tensor) -> torch.Tensor:
    """[...] True where Box3D returned the cell's input bit for bit: a cell without an ELN crossing
    (NO_CROSSING), or one Box3D rejects and returns as given. The runtime does not correct such a cell."""
    return (F_box_rest == F_init_rest).flatten(-2).all(dim=-1)


def _image_indices():
    """For each flavour image of synthetic_model.IMAGE_SPECIES (species a of the image is the cell's
    species[a]): the columns of the cell's 27 invariants that are the image's, and per head the
    columns of the image's head output that are the cell's (synthetic_model.head_to_cell as a gather)."""
    from dodo.conventions import invariant_pairs

    from .synthetic_model import IMAGE_SPECIES

    pairs = {pair: 6 + k for k, pair in enumerate(invariant_pairs())}
    invariant_columns, head_columns = [], {"direct": [], "equivariant": []}
    for species in IMAGE_SPECIES:
        p = list(species)
        q = [p.index(c) for c in range(6)]  # the image's species holding the cell's species c
        invariant_columns.append(p + [pairs[(min(p[a], p[b]), max(p[a], p[b]))] for (a, b) in invariant_pairs()])
        head_columns["direct"].append([4 * q[c] + k for c in range(6) for k in range(4)])
        head_columns["equivariant"].append([block + 6 * q[c] + q[d] for block in (0, 36) for c in range(6)
                                            for d in range(6)] + [72 + q[c] for c in range(6)])
    return invariant_columns, head_columns


_IMAGE_INDICES = None


def flavour_image_weights_torch(F_init_rest: torch.Tensor) -> torch.Tensor:
    """[N, 4] weights of the cells' flavour images, synthetic_model.flavour_image_weights (the
    runtime's formula) in float64 torch."""
    import math

    from .synthetic_model import IMAGE_BLEND_WIDTH, IMAGE_WEIGHT_FLOOR

    F = F_init_rest.detach().double()
    edge = math.log((1.0 - IMAGE_WEIGHT_FLOOR) / IMAGE_WEIGHT_FLOOR)

    def sides(a):
        t = edge / IMAGE_BLEND_WIDTH * a
        inside = t.abs() < edge
        keep = torch.where(inside, torch.sigmoid(t), (t > 0).double())
        swap = torch.where(inside, torch.sigmoid(-t), (t <= 0).double())
        return keep, swap

    e_side = sides(F[:, 3, 0] - F[:, 0, 0])
    mt_side = sides((F[:, 2, 0] + F[:, 5, 0]) - (F[:, 1, 0] + F[:, 4, 0]))
    return torch.stack([e_side[g // 2] * mt_side[g % 2] for g in range(4)], dim=1)


def flavour_image_output(network, head: str, invariants: torch.Tensor, F_init_rest: torch.Tensor) -> torch.Tensor:
    """The network's head output [N, K] for cells [N, ...] as the runtime makes it (docs/runtime.md,
    step 2): the network on each cell's mu <-> tau and nu <-> nubar images of non-zero weight, each
    output put back in the cell's labelling and blended with the images' weights. Outside the blend
    band a cell has one image of weight 1 (the one with n_nubar_e >= n_nu_e and the larger tau
    densities), and its output is the network's on that image exactly. One network call for all
    images' rows (one forward per step, as DDP needs).

    The training closure called the network on the cell as labelled: a model trained and scored
    that way (`dodo train`'s metric table: |dn| 1.1e-4 N_tot on the synthetic demo's test split)
    was asked by the runtime about the images of half its cells, which it had never seen (1.5e-3
    N_tot through `dodo.Closure` on the same cells; outside probe, round 41)."""
    global _IMAGE_INDICES
    if _IMAGE_INDICES is None:
        _IMAGE_INDICES = _image_indices()
    invariant_columns, head_columns = _IMAGE_INDICES
    weights = flavour_image_weights_torch(F_init_rest).to(invariants.device)
    rows, inputs = [], []
    for g, columns in enumerate(invariant_columns):
        taken = torch.nonzero(weights[:, g] > 0, as_tuple=True)[0]
        rows.append(taken)
        inputs.append(invariants[taken][:, columns] if g else invariants[taken])
    output = network(torch.cat(inputs))
    blended = None
    start = 0
    for g, taken in enumerate(rows):
        part = output[start:start + len(taken)].to(F_init_rest.dtype)  # blended as the head runs: fp32 or float64
        start += len(taken)
        if g:
            part = part[:, head_columns[head][g]]
        w = weights[taken, g].to(part.dtype)[:, None]
        if blended is None:
            blended = torch.zeros((len(invariants), part.shape[1]), dtype=part.dtype, device=part.device)
        blended = blended.index_add(0, taken, w * part)
    return blended
