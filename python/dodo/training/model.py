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
    """Network + head assembly + conservation projection + realizability limiter.

    forward(invariants, F_init_rest, F_box_rest) -> dF_ml (rest frame, units of N_tot).
    """

    def __init__(self, network: ResidualFFIModel) -> None:
        super().__init__()
        self.network = network
        self.closure_head = ResidualClosureHead(network.head)

    def forward(self, invariants, F_init_rest, F_box_rest, return_unlimited: bool = False):
        # The network runs in its own precision (fp32, as in the ONNX package); the head,
        # projection and limiter in the precision of the four-fluxes (float64 like the runtime
        # when evaluating, fp32 in training).
        output = self.network(invariants.to(self.network.input_mean.dtype))
        return self.closure_head(output.to(F_init_rest.dtype), F_init_rest, F_box_rest, return_unlimited)
