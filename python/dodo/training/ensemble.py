"""The density-residual ensemble: Dodo's default learned correction (issue 10; docs/training.md).

What the metric needs is one number per cell. For the conserved quantities of fast flavour
conversion (flavour-summed number per nu/nubar, lepton number per flavour), the mu/tau-averaged
density change of a cell is fixed by a single scalar, the nu_e density change
``delta = dn_{nu_e} / N_tot``: dn_{nubar_e} = delta, dn_{x} = dn_{xbar} = -delta / 2. So the
mean |dn|/N_tot over the six species is exactly (2/3) |delta_pred - delta_true|. Box3D gets
delta right to 0.98 correlation; each member here learns the residual
``r = delta_true - delta_box`` (and the log ratio of the measured growth rate to Box3D's proxy)
from rotation- and boost-invariant features.

The ensemble's correction enters the model package's equivariant head through the
density-only term e_a u with e = r (1, -1/2, -1/2, 1, -1/2, -1/2): conserving by construction,
then limited like any head (docs/model_package.md). Where the members disagree (spread sigma) or
a cell lies outside the training distribution (Mahalanobis distance of its features), the
correction is moved toward Box3D: r_used = r_mean * g * exp(-max(0, d^2 - d2_max) / d2_max),
with the spread gate g = r_mean^2 / (r_mean^2 + (c sigma)^2) (a Wiener filter: the correction is
kept where it is large against its expected error c sigma; c = ``error_per_spread``, the measured
ratio of the cross-validated error to the spread) or, with c = 0 (earlier models),
g = 1 / (1 + (sigma / sigma0)^2). Optionally (a label-noise member, ``noise`` in the config) sigma
is the spread combined with a learned scale a of the error the members cannot see in each other,
sigma^2 = spread^2 + (k a / c)^2, so that the gate reads r^2 / (r^2 + (c spread)^2 + (k a)^2): a is
fitted to the absolute out-of-fold residuals of members trained without the state (tools/gate_study.py),
the members' spread alone misses the label noise and the bias that all members share. The graph also
returns sigma (``uncertainty``) and the learned growth-rate ratio (``log_growth_ratio``), the latter
times the same distance factor exp(-max(0, d^2 - d2_max) / d2_max): the growth rate, a correction of
Box3D's proxy, falls back to the proxy where the density correction falls back to Box3D (physics.md,
"never worse than the prior where the model does not know"; physics-law probe, round thirteen, found
the rate 0.15 times the proxy on a cell whose correction the gate had cut to 2e-7 N_tot).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dodo.conventions import N_SPECIES

from .physics_torch import HEAD_OUTPUT_SIZES

#: Density pattern of a conserving, mu/tau-symmetric change with dn_{nu_e} = 1 (species order).
DENSITY_PATTERN = (1.0, -0.5, -0.5, 1.0, -0.5, -0.5)
#: Mean |dn|/N_tot over the six species per unit |delta| error.
METRIC_PER_DELTA = 2.0 / 3.0


def nu_e_change(F_after_rest: np.ndarray, F_init_rest: np.ndarray) -> np.ndarray:
    """delta = nu_e density change (rest frame, units of N_tot) [n, 6, 4] -> [n]; averaging mu and
    tau leaves the nu_e column as it is, so no averaging is needed."""
    return np.asarray(F_after_rest, float)[:, 0, 0] - np.asarray(F_init_rest, float)[:, 0, 0]


def state_error(delta_pred: np.ndarray, delta_true: np.ndarray) -> np.ndarray:
    """The shared README's per-state metric (mean |dn|/N_tot, mu/tau averaged) from delta."""
    return METRIC_PER_DELTA * np.abs(np.asarray(delta_pred) - np.asarray(delta_true))


class Member(nn.Module):
    """features -> (r / r_scale, log growth ratio): a small SiLU MLP with the feature normalisation folded in."""

    def __init__(self, n_inputs: int, width: int, depth: int, n_outputs: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("std", torch.ones(n_inputs))
        layers, size = [], n_inputs
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, n_outputs))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


class DensityResidualEnsemble(nn.Module):
    """K members + gate. forward(features [N, F]) -> head output [N, 78] (what the runtime assembles);
    ``outputs(features)`` -> (head output, uncertainty [N], log_growth_ratio [N])."""

    head = "equivariant"
    features = "invariants27+box7-v1"  # set from the config when trained or loaded

    def __init__(self, members: list[Member], r_scale: float, sigma0: float, feature_mean: np.ndarray,
                 feature_precision: np.ndarray, d2_max: float, error_per_spread: float = 0.0) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("r_scale", torch.tensor(float(r_scale)))
        self.register_buffer("sigma0", torch.tensor(float(sigma0)))
        # > 0: the Wiener spread gate (module docstring); 0: the sigma0 gate of earlier models.
        self.register_buffer("error_per_spread", torch.tensor(float(error_per_spread)))
        self.register_buffer("feature_mean", torch.as_tensor(np.asarray(feature_mean), dtype=torch.float32))
        self.register_buffer("feature_precision", torch.as_tensor(np.asarray(feature_precision), dtype=torch.float32))
        self.register_buffer("d2_max", torch.tensor(float(d2_max)))
        pattern = torch.zeros(HEAD_OUTPUT_SIZES["equivariant"])
        pattern[-N_SPECIES:] = torch.tensor(DENSITY_PATTERN)
        self.register_buffer("pattern", pattern)
        # Optional growth-rate members (one output: the log growth ratio), trained on many more
        # states than the density members (linear-theory labels, dodo.qke.growth_labels); when
        # present they give the growth output instead of the density members' second output.
        self.growth_members = nn.ModuleList()
        # Optional distilled student (a Member with 3 outputs: r / r_scale, log(sigma + SIGMA_FLOOR),
        # log growth ratio) trained to reproduce the members: when set, it alone runs at inference
        # (about a tenth of the members' multiply-adds, issue 13); the gate is the same.
        self.student = None
        # Optional label-noise member (a Member with 1 output: log(a / r_scale)) and its weight k in
        # the gate (module docstring); None / 0: the spread alone.
        self.noise_member = None
        self.register_buffer("label_noise_weight", torch.tensor(0.0))

    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.student is not None:
            return self.student(x)[None][..., [0, 2]]  # [1, N, 2]
        return torch.stack([member(x) for member in self.members])  # [K, N, 2]

    def teacher_outputs(self, x: torch.Tensor):
        """(mean r, uncertainty, log growth ratio) of the members themselves (never the student); the
        uncertainty is the members' spread, combined with the label-noise member's scale when set."""
        stacked = torch.stack([member(x) for member in self.members])
        r = stacked[..., 0] * self.r_scale  # [K, N]
        r_mean = r.mean(dim=0)
        sigma = torch.sqrt(((r - r_mean) ** 2).mean(dim=0))
        if self.noise_member is not None and float(self.error_per_spread) > 0:
            extra = self.label_noise_weight / self.error_per_spread * self.label_noise(x)
            sigma = torch.sqrt(sigma * sigma + extra * extra)
        if len(self.growth_members):
            growth = torch.stack([member(x)[..., 0] for member in self.growth_members]).mean(dim=0)
        else:
            growth = stacked[..., 1].mean(dim=0)
        return r_mean, sigma, growth

    def label_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The label-noise member's scale a(x) (delta units: the expected |out-of-fold residual|)."""
        return torch.exp(self.noise_member(x)[:, 0]) * self.r_scale

    def outputs(self, x: torch.Tensor):
        if self.student is not None:
            out = self.student(x)
            r_mean = out[:, 0] * self.r_scale
            sigma = torch.relu(torch.exp(out[:, 1]) - SIGMA_FLOOR)
            growth = out[:, 2]
        else:
            r_mean, sigma, growth = self.teacher_outputs(x)
        d2 = self.squared_distance(x)
        distance_gate = torch.exp(-torch.relu(d2 - self.d2_max) / self.d2_max)
        gate = spread_gate(r_mean, sigma, self.sigma0, self.error_per_spread)
        gate = gate * distance_gate.to(gate.dtype)
        used = r_mean * gate
        head = used[:, None] * self.pattern.to(used.dtype)
        return head, sigma, growth * distance_gate.to(growth.dtype)

    def squared_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of the features from the training rows' mean, on the first
        feature_mean.numel() columns (ood_columns: the crossing inputs are functions of the same
        moments, so the distance on the 34 before them tests the same thing at a third of the cost)."""
        return squared_mahalanobis(x, self.feature_mean, self.feature_precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[0]


def squared_mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(x - m)^T P (x - m) on the first mean.numel() columns of x, in float64: P's condition number
    is ~1e7, and in float32 the quadratic form cancels digits (308.95 for 308.23 on a far-out cell,
    physics-law probe round three). While torch.onnx traces it, in the buffers' dtype: the exporter
    then casts that part of the graph to double (dodo.training.gate_graph), keeping the float32
    initializers under the names the native evaluator's description uses (a traced .double() of a
    buffer is folded into a new, unnamed constant)."""
    columns = mean.numel()
    if torch.onnx.is_in_onnx_export():
        centred = x[:, :columns].to(mean.dtype) - mean
        return ((centred @ precision) * centred).sum(dim=-1)
    centred = x[:, :columns].double() - mean.double()
    return ((centred @ precision.double()) * centred).sum(dim=-1)


def spread_gate(r_mean: torch.Tensor, sigma: torch.Tensor, sigma0: torch.Tensor,
                error_per_spread: torch.Tensor) -> torch.Tensor:
    """Factor in [0, 1] on the mean correction from the members' spread (module docstring).
    Wiener form r^2 / (r^2 + (c sigma)^2): 0 where the correction is small against its expected
    error, 1 where sigma -> 0; at r = sigma = 0 it is 0 (the correction is 0 anyway), never NaN."""
    sigma = sigma.to(r_mean.dtype)
    if float(error_per_spread) > 0:
        noise = (error_per_spread.to(r_mean.dtype) * sigma) ** 2
        signal = r_mean * r_mean
        return signal / (signal + noise + torch.finfo(r_mean.dtype).tiny)
    return 1.0 / (1.0 + (sigma / sigma0.to(r_mean.dtype)) ** 2)


#: "dodo.native_network" form that the runtime's own evaluator computes (cpp/src/runtime/native_network.hpp):
#: v2 multiplies the log growth ratio by the distance gate, as outputs() does; the runtime still reads
#: v1 (packages exported before 2026-12-07, whose graphs leave the ratio ungated).
NATIVE_NETWORK_FORM = "silu-mlp-density-residual-v2"


def native_network_description(ensemble: "DensityResidualEnsemble", initializer_names: set,
                               prefix: str = "ensemble.") -> dict | None:
    """The "dodo.native_network" entry of a distilled ensemble's package: the graph initializers
    that hold the student's layers, its input normalisation and the distance's mean and matrix
    (by name: the graph stays the one copy of the weights), and the gate's scalars. None when the
    ensemble has no student (the members are left to ONNX Runtime) or the graph lacks a name."""
    student = ensemble.student
    if student is None:
        return None
    linears = [(i, m) for i, m in enumerate(student.body) if isinstance(m, nn.Linear)]
    activations = [m for m in student.body if not isinstance(m, nn.Linear)]
    if len(activations) != len(linears) - 1 or not all(isinstance(m, nn.SiLU) for m in activations):
        return None
    # Vectors by name, or inline where the exporter folded them out of the graph (an all-zero
    # mean, say); the weights and the distance's matrix by name only.
    vectors = {"input_mean": ("student.mean", student.mean), "input_std": ("student.std", student.std),
               "feature_mean": ("feature_mean", ensemble.feature_mean)}
    names = {key: f"{prefix}{name}" if f"{prefix}{name}" in initializer_names else [float(v) for v in value.float()]
             for key, (name, value) in vectors.items()}
    names["feature_precision"] = f"{prefix}feature_precision"
    layers = [[f"{prefix}student.body.{i}.weight", f"{prefix}student.body.{i}.bias"] for i, _ in linears]
    wanted = {names["feature_precision"]} | {name for pair in layers for name in pair}
    if not wanted <= set(initializer_names):
        return None
    return {
        "form": NATIVE_NETWORK_FORM,
        **names,
        "layers": layers,
        # Scalars by value (float32, as the graph holds them): some have no initializer of their own.
        "r_scale": float(ensemble.r_scale.float()),
        "d2_max": float(ensemble.d2_max.float()),
        "sigma_floor": float(torch.tensor(SIGMA_FLOOR, dtype=torch.float32)),
        "error_per_spread": float(ensemble.error_per_spread.float()),
        "sigma0": float(ensemble.sigma0.float()),
        "tiny": float(torch.finfo(torch.float32).tiny),
        "pattern": [float(v) for v in ensemble.pattern.float()],
    }


class _ExportView(nn.Module):
    """The three graph outputs, for torch.onnx.export."""

    def __init__(self, ensemble: DensityResidualEnsemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x):
        return self.ensemble.outputs(x)


def _normalised_member(X: np.ndarray, width: int, depth: int, n_outputs: int) -> Member:
    """A fresh Member whose input normalisation is X's (a constant feature keeps std 1)."""
    member = Member(X.shape[1], width, depth, n_outputs=n_outputs)
    member.mean.copy_(torch.as_tensor(X.mean(axis=0), dtype=torch.float32))
    std = X.std(axis=0)
    member.std.copy_(torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))
    return member


def _fit(module: nn.Module, loss_of, rows: int, steps: int, lr: float, weight_decay: float,
         batch_size: int = 0, epochs: int = 0, seed: int = 0) -> nn.Module:
    """Fits ``module`` with AdamW on ``loss_of(module, index)`` and returns it in eval mode.
    batch_size 0: ``steps`` full-batch steps (index None) with cosine decay. batch_size > 0:
    ``epochs`` passes over the ``rows`` rows in shuffled mini-batches (index: a tensor of row
    numbers), the rate warmed up over the first 5% of the steps and then annealed (one cycle).
    Mini-batches give far more updates for the same arithmetic: on the pool, 40 epochs of
    batches of 256 fit the density members better in a fifth of the time (docs/training.md)."""
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    if batch_size <= 0:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        batches = ([None] for _ in range(steps))
    else:
        per_epoch = (rows + batch_size - 1) // batch_size
        total_steps = epochs * per_epoch
        # torch's OneCycleLR divides by pct_start * total_steps - 1, which is 0 for a 5% warm-up of
        # exactly 20 steps (a short run ended with "float division by zero"): warm up over two
        # steps there. Every other step count keeps the 5% warm-up, and so its rates.
        pct_start = 0.05 if total_steps * 0.05 != 1.0 else 2.0 / total_steps
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total_steps,
                                                       pct_start=pct_start)
        generator = torch.Generator().manual_seed(seed)
        batches = (torch.randperm(rows, generator=generator).split(batch_size) for _ in range(epochs))
    for epoch in batches:
        for index in epoch:
            loss = loss_of(module, index)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return module.eval()


def _rows(tensor: torch.Tensor, index):
    return tensor if index is None else tensor[index]


def fit_member(X: np.ndarray, r: np.ndarray, log_growth: np.ndarray, seed: int, width: int = 64, depth: int = 2,
               steps: int = 2000, lr: float = 3e-3, weight_decay: float = 1e-4, growth_weight: float = 0.5,
               r_scale: float = 1.0, weights: np.ndarray | None = None, batch_size: int = 0,
               epochs: int = 0) -> Member:
    """One member, AdamW on L1 losses (the metric is an L1 of delta), full batch or mini-batches
    (_fit); ``weights`` [n] (None: all 1) weight each row's density loss (noise-aware training)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    member = _normalised_member(X, width, depth, n_outputs=2)
    # Bootstrap resample (bagging): members see different data, so their spread reflects it.
    pick = torch.randint(0, len(X), (len(X),), generator=generator)
    inputs = torch.as_tensor(X, dtype=torch.float32)[pick]
    target_r = torch.as_tensor(r / r_scale, dtype=torch.float32)[pick]
    target_g = torch.as_tensor(log_growth, dtype=torch.float32)[pick]
    has_growth = torch.isfinite(target_g)
    target_g = torch.where(has_growth, target_g, torch.zeros_like(target_g))
    row_weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)[pick]

    def loss_of(network, index):
        out = network(_rows(inputs, index))
        error = (out[:, 0] - _rows(target_r, index)).abs()
        loss = error.mean() if row_weight is None else (error * _rows(row_weight, index)).mean()
        if growth_weight > 0:
            loss = loss + growth_weight * ((out[:, 1] - _rows(target_g, index)).abs() * _rows(has_growth, index)).mean()
        return loss

    return _fit(member, loss_of, len(inputs), steps, lr, weight_decay, batch_size, epochs, seed)


def fit_growth_member(X: np.ndarray, log_growth: np.ndarray, seed: int, width: int = 64, depth: int = 2,
                      steps: int = 2000, lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 0,
                      epochs: int = 0) -> Member:
    """One growth member: log(growth / Box3D proxy) from features, L1 loss, bagged and fitted like fit_member."""
    finite = np.isfinite(log_growth)
    X, log_growth = X[finite], log_growth[finite]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    member = _normalised_member(X, width, depth, n_outputs=1)
    pick = torch.randint(0, len(X), (len(X),), generator=generator)
    inputs = torch.as_tensor(X, dtype=torch.float32)[pick]
    target = torch.as_tensor(log_growth, dtype=torch.float32)[pick]
    return _fit(member, lambda network, index: (network(_rows(inputs, index))[:, 0] - _rows(target, index)).abs().mean(),
                len(inputs), steps, lr, weight_decay, batch_size, epochs, seed)


def fit_noise_member(X: np.ndarray, abs_residual: np.ndarray, r_scale: float, seed: int, width: int = 64,
                     depth: int = 2, lr: float = 2e-3, weight_decay: float = 1e-4, batch_size: int = 512,
                     epochs: int = 50) -> Member:
    """The label-noise member: log(a / r_scale) from features, fitted to absolute out-of-fold
    residuals |e| by the Laplace likelihood (loss log a + |e| / a, least at a = E[|e| | x])."""
    torch.manual_seed(seed)
    member = _normalised_member(X, width, depth, n_outputs=1)
    target = torch.as_tensor(np.asarray(abs_residual) / r_scale, dtype=torch.float32)
    inputs = torch.as_tensor(X, dtype=torch.float32)
    with torch.no_grad():  # start at the typical scale: the likelihood's gradient is flat far from it
        member.body[-1].bias.fill_(float(torch.log(target.mean() + 1e-12)))

    def loss_of(network, index):
        log_a = network(_rows(inputs, index))[:, 0]
        return (log_a + _rows(target, index) * torch.exp(-log_a)).mean()

    return _fit(member, loss_of, len(inputs), 0, lr, weight_decay, batch_size, epochs, seed)


SIGMA_FLOOR = 1e-5  # N_tot: the student learns log(sigma + floor); sigma0 = 0.01 makes the floor irrelevant


def fit_student(ensemble: "DensityResidualEnsemble", X: np.ndarray, width: int = 48, depth: int = 2,
                steps: int = 3000, lr: float = 3e-3, seed: int = 0, growth_weight: float = 0.5,
                batch_size: int = 0, epochs: int = 0) -> Member:
    """One small network trained to reproduce the members' mean r, spread and growth on inputs X
    (training rows and unlabelled in-distribution states); L1 losses, AdamW, full batch or
    mini-batches (_fit)."""
    torch.manual_seed(seed)
    inputs = torch.as_tensor(X, dtype=torch.float32)
    with torch.no_grad():
        r_mean, sigma, growth = ensemble.teacher_outputs(inputs)
    targets = torch.stack([r_mean / ensemble.r_scale, torch.log(sigma + SIGMA_FLOOR), growth], dim=1)
    weights = torch.tensor([1.0, 0.3, float(growth_weight)])
    student = _normalised_member(X, width, depth, n_outputs=3)
    def loss_of(network, index):
        return ((network(_rows(inputs, index)) - _rows(targets, index)).abs() * weights).mean()

    return _fit(student, loss_of, len(inputs), steps, lr, 0.0, batch_size, epochs, seed)


def feature_statistics(X: np.ndarray, quantile: float = 0.995) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, (regularised) inverse covariance and the training quantile of the squared Mahalanobis distance."""
    mean = X.mean(axis=0)
    covariance = np.cov(X, rowvar=False) + 1e-6 * np.eye(X.shape[1]) * np.trace(np.cov(X, rowvar=False)) / X.shape[1]
    precision = np.linalg.inv(covariance)
    centred = X - mean
    d2 = np.einsum("ni,ij,nj->n", centred, precision, centred)
    return mean, precision, float(np.quantile(d2, quantile))


def fit_ensemble(X: np.ndarray, r: np.ndarray, log_growth: np.ndarray, members: int = 8, sigma0: float = 0.01,
                 seed: int = 0, log=None, error_per_spread: float = 0.0, ood_columns: int | None = None,
                 processes: int = 1, **member_options) -> DensityResidualEnsemble:
    # member_options: fit_member's (width, depth, steps, lr, weight_decay, growth_weight, weights,
    # batch_size, epochs)
    """Train ``members`` bagged members on features X [n, F], residuals r [n] and log growth ratios [n];
    the distance gate uses the first ``ood_columns`` features (None: all). processes > 1: that many
    members at once, each in its own process with one torch thread (member_processes)."""
    from .member_processes import fit_members

    r_scale = float(np.std(r)) or 1.0
    trained = fit_members(fit_member, dict(X=X, r=r, log_growth=log_growth, r_scale=r_scale, **member_options),
                          [{"seed": seed + k} for k in range(members)], processes, log=log,
                          done_message=lambda k: f"member {k + 1}/{members} trained")
    mean, precision, d2_max = feature_statistics(X[:, :ood_columns])
    return DensityResidualEnsemble(trained, r_scale, sigma0, mean, precision, d2_max, error_per_spread).eval()


@torch.no_grad()
def predict(ensemble: DensityResidualEnsemble, X: np.ndarray) -> dict:
    """Gated residual, raw mean residual, spread and log growth ratio per row (float64 NumPy)."""
    x = torch.as_tensor(X, dtype=torch.float32)
    head, sigma, growth = ensemble.outputs(x)
    stacked = ensemble.member_outputs(x)
    return {"r_gated": head[:, -N_SPECIES].double().numpy(),
            "r_mean": (stacked[..., 0].mean(0) * ensemble.r_scale).double().numpy(),
            "sigma": sigma.double().numpy(), "log_growth_ratio": growth.double().numpy()}


