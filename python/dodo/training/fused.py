"""Export-time fused form of the density-residual ensemble (issue 13, item 2).

`DensityResidualEnsemble` evaluates its K members one after the other; exported as it is, that
is K small subgraphs of ONNX nodes. Here the members of one ModuleList become one stacked
network, the same arithmetic in a few large nodes, with the cells along the last axis:

* first layer: one Gemm [K * (width + 1), F] x [N, F]^T -> [K * (width + 1), N] (the input is
  shared; each member's normalisation (x - mean) / std is folded into its weights and bias);
* hidden layers: one batched MatMul [K, width + 1, width + 1] x [K, width + 1, N] each;
* output layer: one batched MatMul [K, outputs, width + 1] x [K, width + 1, N], per-output
  scales (the ensemble's r_scale) folded in.

Why width + 1: ONNX Runtime adds a bias of shape [K, width, 1] to a [K, width, N] tensor slowly
(measured: as long as the hidden MatMul itself), while Gemm adds its bias for free. So each member
carries one extra row whose pre-activation is the constant BIAS_ROW_INPUT (zero weights, that
bias), so its activation is silu(BIAS_ROW_INPUT) = BIAS_ROW_INPUT to float32 rounding; the next
layer's bias b becomes that row's weight, b / BIAS_ROW_INPUT (exact: a power of two), and the row
passes itself on through a unit weight. The reshape [K * (width + 1), N] -> [K, width + 1, N] is
free. A block-diagonal Gemm instead of the batched MatMul costs K times the multiply-adds
(measured 2.7x slower for the first two layers, K = 8).

Measured (ONNX Runtime 1.32, one thread, 1024-row chunks, this project's AVX-512 CPU,
benchmarks/bench_models.py): the fused graph of the default model (37 nodes instead of 141) is
not faster: the network alone ran 7-19% slower; in the closure the difference was within the noise. The network is bound by its
multiply-adds (17,400 per cell) and its 512 SiLUs per cell (about 0.4 ns each), not by ONNX
Runtime's per-node cost (about 40 us per call of the 141-node graph, 4% at 1024 rows), and MLAS
multiplies fastest with the weights as its prepacked right-hand operand, which the member-by-member
Gemms have and the stacked layout (activations on the right, packed on every call) has not. So
`dodo export` writes the member-by-member graph; `dodo export --fused` writes this one.

`fuse_members` fuses any ModuleList of same-shape `Member`s (any K, width, depth), so a second
list can be fused the same way. `FusedEnsemble` reproduces `DensityResidualEnsemble.outputs(x)`
to float32 rounding; `dodo export --fused` writes it and checks it against the unfused module.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .ensemble import DensityResidualEnsemble, Member, spread_gate

#: Pre-activation of each member's constant bias row: silu(32) = 32 (1 - 1.3e-14), 32 in float32.
BIAS_ROW_INPUT = 32.0


def _layers(member: Member) -> list[nn.Linear]:
    """The Linear layers of a Member's body, checking the SiLU MLP layout the fusion assumes."""
    modules = list(member.body)
    linears, activations = modules[0::2], modules[1::2]
    if (len(linears) != len(activations) + 1 or not all(isinstance(m, nn.Linear) for m in linears)
            or not all(isinstance(m, nn.SiLU) for m in activations)):
        raise ValueError("fuse_members expects Members of Linear and SiLU layers ending in a Linear layer")
    return linears


class FusedMembers(nn.Module):
    """K same-shape Members as one stacked network: forward(x [N, F]) -> [K, outputs, N].

    Built by `fuse_members`; its weights are buffers (an export-time module, never trained)."""

    def __init__(self, first_weight: torch.Tensor, first_bias: torch.Tensor, hidden: Sequence[torch.Tensor],
                 last_weight: torch.Tensor) -> None:
        super().__init__()
        self.members = int(last_weight.shape[0])
        self.rows = int(last_weight.shape[2])  # width + 1 (the bias row)
        self.register_buffer("first_weight", first_weight)  # [K * (width + 1), F]
        self.register_buffer("first_bias", first_bias)  # [K * (width + 1), 1]
        self.hidden_layers = len(hidden)
        for i, weight in enumerate(hidden):
            self.register_buffer(f"hidden_weight_{i}", weight)  # [K, width + 1, width + 1]
        self.register_buffer("last_weight", last_weight)  # [K, outputs, width + 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x.t() becomes Gemm's transB; the reshape only relabels the rows of each member.
        h = nn.functional.silu(torch.addmm(self.first_bias, self.first_weight, x.t()))  # [K * (width + 1), N]
        h = h.reshape(self.members, self.rows, -1)  # [K, width + 1, N]
        for i in range(self.hidden_layers):
            h = nn.functional.silu(torch.matmul(getattr(self, f"hidden_weight_{i}"), h))
        return torch.matmul(self.last_weight, h)  # [K, outputs, N]


@torch.no_grad()
def fuse_members(members: Sequence[Member], output_scale: Sequence[float] | None = None) -> FusedMembers:
    """One FusedMembers from a list of same-shape Members (the folding done in float64).

    Member k's output j is multiplied by output_scale[j] (default 1), folded into the last layer.
    The normalisation (x - mean_k) / std_k goes into the first layer: W'_k = W_k / std_k,
    b'_k = b_k - W'_k mean_k."""
    members = list(members)
    if not members:
        raise ValueError("fuse_members needs at least one Member")
    layers = [_layers(m) for m in members]
    shapes = [[tuple(layer.weight.shape) for layer in member] for member in layers]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"fuse_members needs Members of one shape; got layer shapes {sorted(set(map(str, shapes)))}")
    dtype = members[0].mean.dtype
    K, (width, n_inputs), c = len(members), shapes[0][0], BIAS_ROW_INPUT

    def stacked(values):
        return torch.stack([v.double() for v in values])

    def with_bias_column(weight, bias):  # [K, out, width] and [K, out] -> [K, out, width + 1]
        return torch.cat([weight, bias[..., None] / c], dim=-1)

    # First layer: width rows per member plus its bias row (zero weights, pre-activation c).
    weight = stacked(member[0].weight for member in layers) / stacked(m.std for m in members)[:, None, :]
    bias = stacked(member[0].bias for member in layers) - torch.einsum("kwf,kf->kw", weight,
                                                                        stacked(m.mean for m in members))
    first_weight = torch.cat([weight, torch.zeros(K, 1, n_inputs, dtype=torch.float64)], dim=1)
    first_bias = torch.cat([bias, torch.full((K, 1), c, dtype=torch.float64)], dim=1)
    # Hidden layers: [W | b / c] and the bias row's own unit weight, so it stays c.
    carry = torch.zeros(K, 1, width + 1, dtype=torch.float64)
    carry[..., -1] = 1.0
    hidden = [torch.cat([with_bias_column(stacked(member[i].weight for member in layers),
                                          stacked(member[i].bias for member in layers)), carry], dim=1)
              for i in range(1, len(layers[0]) - 1)]
    last = with_bias_column(stacked(member[-1].weight for member in layers),
                            stacked(member[-1].bias for member in layers))  # [K, outputs, width + 1]
    if output_scale is not None:
        last = last * torch.as_tensor(output_scale, dtype=torch.float64)[:, None]
    return FusedMembers(first_weight.reshape(K * (width + 1), n_inputs).to(dtype),
                        first_bias.reshape(K * (width + 1), 1).to(dtype), [w.to(dtype) for w in hidden], last.to(dtype))


class FusedEnsemble(nn.Module):
    """`DensityResidualEnsemble.outputs` with its members fused: forward(x) -> (head output [N, 78],
    uncertainty [N], log growth ratio [N]). Export-time only (the ensemble is what trains)."""

    head = "equivariant"

    def __init__(self, ensemble: DensityResidualEnsemble) -> None:
        super().__init__()
        self.features = ensemble.features
        # Output 0 is r / r_scale: the scale goes into the last layer, so the stack returns r itself.
        self.members = fuse_members(ensemble.members, output_scale=(float(ensemble.r_scale), 1.0))
        # The distance keeps the ensemble's form (x - m)^T P (x - m): folding m into a Cholesky
        # factor's bias (|L^T x - L^T m|^2) cancels digits and moved the gate by 1e-4 (measured).
        dtype = ensemble.feature_precision.dtype
        self.register_buffer("feature_mean", ensemble.feature_mean.clone())
        self.register_buffer("feature_precision", ensemble.feature_precision.clone())
        self.register_buffer("d2_max", ensemble.d2_max.clone())
        self.register_buffer("inverse_d2_max", (1.0 / ensemble.d2_max.double()).to(dtype))
        self.register_buffer("inverse_sigma0_squared", (1.0 / ensemble.sigma0.double() ** 2).to(dtype))
        self.register_buffer("sigma0", ensemble.sigma0.clone())
        self.register_buffer("error_per_spread", ensemble.error_per_spread.clone())
        self.register_buffer("pattern", ensemble.pattern.clone())

    def forward(self, x: torch.Tensor):
        stacked = self.members(x)  # [K, 2, N]: r and the log growth ratio of each member
        mean = stacked.mean(dim=0)  # [2, N]
        deviation = stacked - mean
        variance = (deviation * deviation).mean(dim=0)  # [2, N]; only row 0 (r) is used
        r_mean, growth, r_variance = mean[0], mean[1], variance[0]
        centred = x[:, :self.feature_mean.numel()] - self.feature_mean
        d2 = ((centred @ self.feature_precision) * centred).sum(dim=-1)
        # The ensemble's gates: spread (Wiener or sigma0 form) times exp(-max(0, d2 - d2_max) / d2_max).
        distance_gate = torch.exp(-torch.relu(d2 - self.d2_max) * self.inverse_d2_max)
        if float(self.error_per_spread) > 0:
            used = r_mean * distance_gate * spread_gate(r_mean, torch.sqrt(r_variance), self.sigma0, self.error_per_spread)
        else:
            used = r_mean * distance_gate / (1.0 + r_variance * self.inverse_sigma0_squared)
        return used[:, None] * self.pattern, torch.sqrt(r_variance), growth * distance_gate  # as the ensemble's outputs()
