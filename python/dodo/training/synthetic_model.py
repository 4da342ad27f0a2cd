"""Synthetic test model packages, and a NumPy reference of the closure pipeline.

A synthetic model is a small random MLP (27 raw invariants -> head output) written with the
``onnx`` package in the layout of docs/model_package.md, labelled ``synthetic`` in its
metadata. It is NOT a trained model: it exists so that the runtime, its tests and its benchmark
have a model before ``dodo export`` writes a trained one.

:func:`reference_closure` recomputes the closure in NumPy (float64) from ``dodo.box3d`` and the
network's raw output: invariants, head assembly, conservation projection (as a pseudo-inverse
projector, independent of the C++ closed form), realizability limiter, boost back. It writes
the test vectors of synthetic packages and is the tests' parity reference.

``python -m dodo.training.synthetic_model`` regenerates the runtime's test model
(``dodo/models/synthetic-test-equivariant.onnx``, used by the C/C++ tests and the fuzzers), never
the default model. Training-side code (needs ``onnx`` and the training package), kept out of the
run-time package, which imports nothing of training (issue 11).
"""
from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dodo.conventions import GROWTH_RATE_PER_NTOT, N_COMPONENTS, N_SPECIES, invariant_pairs, minkowski_dot

from .conservation import conservation_projector  # NumPy only, no torch

HEAD_OUTPUT_SIZES = {"direct": N_SPECIES * N_COMPONENTS, "equivariant": 2 * N_SPECIES * N_SPECIES + N_SPECIES}
#: Optional per-cell outputs of format version 1 (docs/model_package.md, "dodo.outputs").
DIAGNOSTIC_OUTPUTS = ("uncertainty", "log_growth_ratio")
FORMAT_VERSION = "1"
FEATURES = "invariants27-v1"


@dataclass
class SyntheticMLP:
    """Weights of a tanh MLP in float32; input normalisation (mean/std) folded into the graph."""

    head: str
    weights: list = field(default_factory=list)  # [(W [in, out], b [out]), ...]
    input_mean: np.ndarray = None
    input_std: np.ndarray = None
    #: optional outputs: name -> (w [hidden], b), read from the last hidden layer; "uncertainty"
    #: is |h.w + b| (a spread is not negative), "log_growth_ratio" is h.w + b
    diagnostics: dict = field(default_factory=dict)

    @classmethod
    def random(cls, head: str = "equivariant", hidden: tuple[int, ...] = (32, 32), output_scale: float = 0.02,
               seed: int = 1) -> "SyntheticMLP":
        """Random weights; the last layer is scaled by output_scale so corrections stay small."""
        rng = np.random.default_rng(seed)
        sizes = (27, *hidden, HEAD_OUTPUT_SIZES[head])
        weights = []
        for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            scale = 1.0 / np.sqrt(n_in) * (output_scale if layer == len(sizes) - 2 else 1.0)
            weights.append(((rng.standard_normal((n_in, n_out)) * scale).astype(np.float32),
                            (rng.standard_normal(n_out) * 0.1 * (output_scale if layer == len(sizes) - 2 else 1.0)
                             ).astype(np.float32)))
        # Typical scales of the raw invariants (x_a ~ 1/6, products ~ 1/36).
        mean = np.concatenate([np.full(6, 1.0 / 6.0), np.full(21, 1.0 / 36.0)]).astype(np.float32)
        std = np.concatenate([np.full(6, 0.1), np.full(21, 0.02)]).astype(np.float32)
        return cls(head=head, weights=weights, input_mean=mean, input_std=std)

    def with_diagnostics(self, names=DIAGNOSTIC_OUTPUTS, scale: float = 0.3, bias: float = 0.1,
                         seed: int = 2) -> "SyntheticMLP":
        """Adds the optional outputs `names` (random weights times `scale`; scale 0 makes each
        output the constant `bias`, |bias| for the uncertainty)."""
        if len(self.weights) < 2:
            raise ValueError("optional outputs read the last hidden layer: the MLP needs one")
        rng = np.random.default_rng(seed)
        hidden = self.weights[-1][0].shape[0]
        for name in names:
            if name not in DIAGNOSTIC_OUTPUTS:
                raise ValueError(f"unknown optional output {name!r} (known: {DIAGNOSTIC_OUTPUTS})")
            w = (rng.standard_normal(hidden) * scale / np.sqrt(hidden)).astype(np.float32)
            self.diagnostics[name] = (w, np.float32(bias))
        return self

    def _hidden(self, invariants: np.ndarray) -> np.ndarray:
        x = (np.asarray(invariants, dtype=np.float32) - self.input_mean) / self.input_std
        for W, b in self.weights[:-1]:
            x = np.tanh(x @ W + b)
        return x

    def __call__(self, invariants: np.ndarray) -> np.ndarray:
        """Forward pass in float32, as ONNX Runtime computes it: [N, 27] -> [N, K]."""
        W, b = self.weights[-1]
        return (self._hidden(invariants) @ W + b).astype(np.float32)

    def diagnostic_outputs(self, invariants: np.ndarray) -> dict:
        """The optional outputs in float32: name -> [N]."""
        h = self._hidden(invariants)
        out = {}
        for name, (w, b) in self.diagnostics.items():
            value = (h @ w[:, None])[:, 0] + b
            out[name] = (np.abs(value) if name == "uncertainty" else value).astype(np.float32)
        return out


# ---------------------------------------------------------------- NumPy reference of the closure

def boost_to_rest(u: Optional[np.ndarray], F: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """Pure boost of four-vectors F [..., 4] into the rest frame of u [N, 4] (physics.md section 1).

    sign = -1 boosts back. u None: identity.
    """
    F = np.asarray(F, dtype=np.float64)
    if u is None:
        return F.copy()
    shape = (F.shape[0],) + (1,) * (F.ndim - 2)
    W_ = u[:, 0].reshape(shape)
    v_ = (sign * u[:, 1:] / u[:, :1]).reshape(shape + (3,))
    vF = np.sum(v_ * F[..., 1:], axis=-1)
    coefficient = W_ * W_ / (W_ + 1.0) * vF - W_ * F[..., 0]
    out = np.empty_like(F, dtype=np.float64)
    out[..., 0] = W_ * (F[..., 0] - vF)
    out[..., 1:] = F[..., 1:] + coefficient[..., None] * v_
    return out


def reference_invariants(F: np.ndarray, u: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(invariants [N, 27], N_tot [N]) in float64: physics.md section 4."""
    velocity = np.broadcast_to(np.array([1.0, 0.0, 0.0, 0.0]), (F.shape[0], 4)) if u is None else u
    comoving = -minkowski_dot(F, velocity[:, None, :])  # [N, 6]
    ntot = comoving.sum(axis=-1)
    safe = np.where(ntot > 0, ntot, 1.0)
    normalised = F / safe[:, None, None]
    products = [minkowski_dot(normalised[:, a], normalised[:, b]) for a, b in invariant_pairs()]
    features = np.concatenate([comoving / safe[:, None], np.stack(products, axis=-1)], axis=-1)
    features[~(ntot > 0)] = 0.0
    return features, ntot


def assemble_head(head: str, output: np.ndarray, F_init_rest: np.ndarray, dF_box_rest: np.ndarray) -> np.ndarray:
    """Raw head output [N, K] -> dF_ml [N, 6, 4] (docs/model_package.md)."""
    output = np.asarray(output, dtype=np.float64)
    if head == "direct":
        return output.reshape(-1, N_SPECIES, N_COMPONENTS)
    c = output[:, :36].reshape(-1, 6, 6)
    d = output[:, 36:72].reshape(-1, 6, 6)
    e = output[:, 72:78]
    dF = np.einsum("nab,nbm->nam", c, F_init_rest) + np.einsum("nab,nbm->nam", d, dF_box_rest)
    dF[..., 0] += e
    return dF


def realizability_margin(F: np.ndarray) -> np.ndarray:
    return F[..., 0] - np.linalg.norm(F[..., 1:], axis=-1)


# The runtime's bound on a cell's learned change (closure.cpp, kLearnedChangePerProxy): per species the
# larger of |dn| and |flux change| is at most this many times Box3D's growth proxy (units of N_tot).
# The solver's own departure from Box3D reaches 3.5 times the proxy on the default model's 103,007
# states, so the bound acts only on crossings far weaker than any training state (physics round ten).
LEARNED_CHANGE_PER_PROXY = 4.0


def crossing_bound_factor(change: np.ndarray, growth_over_ntot: np.ndarray) -> np.ndarray:
    """The factor (<= 1) per cell that brings a projected learned change [N, 6, 4] (rest frame, units of
    N_tot) within LEARNED_CHANGE_PER_PROXY times the proxy [N], as the runtime applies it."""
    change = np.asarray(change, dtype=np.float64)
    size = np.maximum(np.abs(change[..., 0]), np.sqrt(np.sum(change[..., 1:] ** 2, axis=-1))).max(axis=-1)
    bound = LEARNED_CHANGE_PER_PROXY * np.asarray(growth_over_ntot, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size > bound, bound / np.where(size > 0, size, 1.0), 1.0)


def limiter_theta(F_base: np.ndarray, dF: np.ndarray, iterations: int = 60) -> np.ndarray:
    """Largest theta in [0, 1] keeping F_base + theta dF realizable (floor min(margin(0), 0)), by the
    runtime's rule (realizable_step, cpp/src/realizability.cpp; dodo.training.physics_torch): species
    by species, one admissible at the theta so far puts no bound on it, any other is bounded with the
    margin (1 - 1e-12) n - |F| >= floor on [0, theta], and one failing that at 0 (on or outside the
    cone) gives theta = 0. Without the margin and the order a cell with a Box3D species on the cone
    got theta up to 0.89 here and 0 at run time (parity and solver-laws probe, round one)."""
    F_base, dF = np.asarray(F_base, np.float64), np.asarray(dF, np.float64)
    floor = np.minimum(realizability_margin(F_base), 0.0)
    theta = np.ones(F_base.shape[0])
    with np.errstate(invalid="ignore"):
        if np.all(realizability_margin(F_base + dF) >= floor):
            return theta

        def slack(a, t, margin):
            F = F_base[:, a] + t[:, None] * dF[:, a]
            return (1.0 - margin) * F[:, 0] - np.linalg.norm(F[:, 1:], axis=-1) - floor[:, a]

        for a in range(F_base.shape[1]):
            bounded = ~(slack(a, theta, 0.0) >= 0)
            if not bounded.any():
                continue
            start_ok = slack(a, np.zeros_like(theta), 1e-12) >= 0
            lo, hi = np.zeros_like(theta), theta.copy()
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                good = slack(a, mid, 1e-12) >= 0
                lo, hi = np.where(good, mid, lo), np.where(good, hi, mid)
            theta = np.where(bounded, np.where(start_ok, lo, 0.0), theta)
    return theta


# The runtime's flavour images (cpp/src/runtime/flavour_symmetry.hpp): species a of image g is the
# cell's species IMAGE_SPECIES[g][a]; weights from a_e = n_nubar_e - n_nu_e and a_mt = (n_tau +
# n_taubar) - (n_mu + n_mubar) (rest frame, units of N_tot) through steep logistic functions.
IMAGE_SPECIES = ((0, 1, 2, 3, 4, 5), (0, 2, 1, 3, 5, 4), (3, 4, 5, 0, 1, 2), (3, 5, 4, 0, 2, 1))
IMAGE_BLEND_WIDTH = 0.01
IMAGE_WEIGHT_FLOOR = 1e-7


def flavour_image_weights(F_rest: np.ndarray) -> np.ndarray:
    """[N, 4] weights of the cells' flavour images (F_rest [N, 6, 4], rest frame, units of N_tot)."""
    edge = np.log((1.0 - IMAGE_WEIGHT_FLOOR) / IMAGE_WEIGHT_FLOOR)

    def sides(a):
        t = edge / IMAGE_BLEND_WIDTH * a
        with np.errstate(over="ignore"):
            keep, swap = 1.0 / (1.0 + np.exp(-t)), 1.0 / (1.0 + np.exp(t))
        inside = np.abs(t) < edge
        return np.where(inside, keep, (t > 0).astype(float)), np.where(inside, swap, (t <= 0).astype(float))

    e_side = sides(F_rest[:, 3, 0] - F_rest[:, 0, 0])
    mt_side = sides((F_rest[:, 2, 0] + F_rest[:, 5, 0]) - (F_rest[:, 1, 0] + F_rest[:, 4, 0]))
    return np.stack([e_side[g // 2] * mt_side[g % 2] for g in range(4)], axis=1)


def head_to_cell(head: str, output: np.ndarray, species) -> np.ndarray:
    """Head outputs [N, K] of a flavour image (species a of the image is the cell's species[a])
    in the cell's own labelling."""
    output = np.asarray(output, np.float64)
    mapped = np.empty_like(output)
    p = np.asarray(species)
    if head == "direct":
        mapped.reshape(-1, 6, 4)[:, p] = output.reshape(-1, 6, 4)
        return mapped
    for block in (0, 36):
        cell = np.empty((len(output), 6, 6))
        cell[:, p[:, None], p[None, :]] = output[:, block:block + 36].reshape(-1, 6, 6)
        mapped[:, block:block + 36] = cell.reshape(-1, 36)
    mapped[:, 72 + p] = output[:, 72:78]
    return mapped


def blend_over_flavour_images(weights: np.ndarray, evaluate: Callable[[tuple], dict]) -> dict:
    """The runtime's blend: for each image (species a of it is the cell's ``species[a]``),
    ``evaluate(species)`` gives a dict of per-cell arrays ([N] or [N, K]) in the cell's own
    labelling; each is summed with the image's weight ``weights[:, g]``. Images of weight 0 are
    not read (their values may be NaN)."""
    out: dict = {}
    for g, species in enumerate(IMAGE_SPECIES):
        w = weights[:, g]
        for name, values in evaluate(species).items():
            values = np.asarray(values, np.float64)
            wg = w.reshape((-1,) + (1,) * (values.ndim - 1))
            with np.errstate(invalid="ignore"):
                out[name] = out.get(name, 0.0) + np.where(wg > 0, wg * values, 0.0)
    return out


def flavour_image_blend(F: np.ndarray, u: Optional[np.ndarray], evaluate: Callable[[np.ndarray], dict]) -> dict:
    """Per-cell outputs blended over the cells' flavour images as the runtime does:
    ``evaluate(F_image)`` gives a dict of [N] arrays for the relabelled cells F_image [N, 6, 4]."""
    import dodo

    ntot = np.asarray(dodo.comoving_density(np.nan_to_num(F), u), np.float64)
    safe = np.where(ntot > 0, ntot, 1.0)[:, None, None]
    weights = flavour_image_weights(boost_to_rest(u, np.nan_to_num(F)) / safe)
    return blend_over_flavour_images(weights, lambda species: evaluate(F[:, list(species)]))


def reference_closure(F_init: np.ndarray, u: Optional[np.ndarray], network: Callable[[np.ndarray], np.ndarray],
                      head: str, box3d_settings: Optional[dict] = None, flavour_images: bool = True) -> dict:
    """The full closure in NumPy for cells F_init [N, 6, 4], u [N, 4] or None.

    Returns F_pred, F_box, theta, status (Box3D's status plus the runtime's bits), and the
    growth rate (units of N_tot) and uncertainty the runtime reports (docs/runtime.md): from the
    network's optional outputs (``network.diagnostic_outputs``, if it has them) where a
    correction is due, Box3D's proxy and 0 elsewhere; a non-finite one voids the cell's network
    output as a non-finite correction does. flavour_images: the network's outputs blended over the
    cell's mu <-> tau and nu <-> nubar images as the runtime does (False: the network on the cell
    alone, as the runtime's self-test and a package's test vectors).
    """
    import dodo

    settings = {k: v for k, v in (box3d_settings or {}).items() if k in ("lebedev_order", "z_method", "max_flux_factor")}
    F = np.asarray(F_init, dtype=np.float64)
    box = dodo.box3d(F, u, threads=1, **settings)
    status = np.asarray(box.status).astype(np.uint32)
    rejected = (status & np.uint32(dodo.CellStatus.FLUX_FACTOR | dodo.CellStatus.NEGATIVE_DENSITY | dodo.CellStatus.NONFINITE
                                   | dodo.CellStatus.ZERO_DENSITY | dodo.CellStatus.BAD_VELOCITY)) != 0
    features, ntot = reference_invariants(F, u)
    safe = np.where(ntot > 0, ntot, 1.0)[:, None, None]
    F_init_rest = boost_to_rest(u, F) / safe
    dF_box_rest = boost_to_rest(u, box.F_box - F) / safe
    has_optional = hasattr(network, "diagnostic_outputs")
    if flavour_images:  # each image's features from its own relabelled cell, outputs mapped back and blended
        def image_outputs(species):
            image_features = reference_invariants(F[:, list(species)], u)[0].astype(np.float32)
            values = network.diagnostic_outputs(image_features) if has_optional else {}
            return {**values, "head": head_to_cell(head, network(image_features), species)}

        optional = blend_over_flavour_images(flavour_image_weights(F_init_rest), image_outputs)
        output = optional.pop("head")
    else:
        output = network(features.astype(np.float32))
        optional = network.diagnostic_outputs(features.astype(np.float32)) if has_optional else {}
    dF = assemble_head(head, output, F_init_rest, dF_box_rest)
    finite = np.all(np.isfinite(dF), axis=(1, 2))
    proxy = np.asarray(box.growth_over_ntot, dtype=np.float64)
    growth, uncertainty = proxy.copy(), np.zeros_like(proxy)
    due = ~rejected & ((status & np.uint32(dodo.CellStatus.NO_CROSSING)) == 0)
    with np.errstate(over="ignore", invalid="ignore"):
        if "log_growth_ratio" in optional:
            log_ratio = optional["log_growth_ratio"].astype(np.float64)
            growth = proxy * np.exp(log_ratio)
            finite &= ~due | (np.isfinite(log_ratio) & np.isfinite(growth * (safe[:, 0, 0] * GROWTH_RATE_PER_NTOT)))
        if "uncertainty" in optional:
            uncertainty = optional["uncertainty"].astype(np.float64)
            finite &= ~due | np.isfinite(uncertainty)
    # A stable (NO_CROSSING) cell gets no network row at run time: it keeps Box3D's answer (its input),
    # as dodo.training.export.closure_float64 has it. The reference corrected it (0.05-0.59 N_tot off
    # the runtime on such cells of a large-output package, flagged CORRECTION_LIMITED; parity and
    # solver-laws probe, round one).
    crossing = (status & np.uint32(dodo.CellStatus.NO_CROSSING)) == 0
    use = ~rejected & crossing & finite
    dF = np.where(use[:, None, None], dF, 0.0)
    dF = (dF.reshape(-1, 24) @ conservation_projector()).reshape(-1, 6, 4)
    bound_factor = crossing_bound_factor(dF, proxy)
    dF = dF * bound_factor[:, None, None]
    theta = limiter_theta(F_init_rest + dF_box_rest, dF)
    theta = np.where(use, theta, 0.0)
    change = boost_to_rest(u, theta[:, None, None] * safe * dF, sign=-1.0)
    F_pred = box.F_box + np.where(use[:, None, None], change, 0.0)
    status = status | np.where(~rejected & crossing & ~finite, np.uint32(dodo.CellStatus.NETWORK_NONFINITE), np.uint32(0))
    status = status | np.where(use & ((theta < 1.0) | (bound_factor < 1.0)), np.uint32(dodo.CellStatus.CORRECTION_LIMITED), np.uint32(0))
    diagnosed = due & finite
    growth = np.where(diagnosed, growth, np.where(rejected, 0.0, proxy))
    uncertainty = np.where(diagnosed, uncertainty, 0.0)
    return {"F_pred": F_pred, "F_box": np.asarray(box.F_box), "theta": theta, "status": status,
            "growth_over_ntot": growth, "uncertainty": uncertainty, "bound_factor": np.where(use, bound_factor, 1.0)}


# ---------------------------------------------------------------- test cells and ONNX writing

def test_cells(n: int = 64, seed: int = 7, moving: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Random realizable cells with ELN crossings (nu_e/nubar_e fluxes opposed), lab frame.

    Densities ~ 1e32 (cm^-3 is conventional; nothing assumes a magnitude), flux factors < 0.5,
    velocities up to 0.3 c when moving.
    """
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.2, 1.0, (n, 6)) * 1e32
    direction = rng.standard_normal((n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    direction[:, 3] = -direction[:, 0]  # opposed e-flavour fluxes: crossings are likely
    flux_factor = rng.uniform(0.0, 0.5, (n, 6))
    F_rest = np.concatenate([density[..., None], (density * flux_factor)[..., None] * direction], axis=-1)
    if not moving:
        return F_rest, None
    speed = rng.uniform(0.0, 0.3, n)
    v_dir = rng.standard_normal((n, 3))
    v_dir /= np.linalg.norm(v_dir, axis=-1, keepdims=True)
    v = speed[:, None] * v_dir
    W = 1.0 / np.sqrt(1.0 - speed ** 2)
    u = np.concatenate([W[:, None], W[:, None] * v], axis=-1)
    return boost_to_rest(u, F_rest, sign=-1.0), u


def _onnx_graph(mlp: SyntheticMLP, nan_below: Optional[float]):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []

    def constant(name, value):
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    nodes.append(helper.make_node("Sub", ["invariants", constant("input_mean", mlp.input_mean)], ["centred"]))
    nodes.append(helper.make_node("Div", ["centred", constant("input_std", mlp.input_std)], ["h0"]))
    current = "h0"
    for layer, (W, b) in enumerate(mlp.weights):
        nodes.append(helper.make_node("MatMul", [current, constant(f"W{layer}", W)], [f"z{layer}"]))
        last = layer == len(mlp.weights) - 1
        out = "mlp_output" if (last and nan_below is not None) else ("head_output" if last else f"a{layer}")
        nodes.append(helper.make_node("Add", [f"z{layer}", constant(f"b{layer}", b)], [out if last else f"y{layer}"]))
        if not last:
            nodes.append(helper.make_node("Tanh", [f"y{layer}"], [out]))
        current = out
    if nan_below is not None:
        # Test models only: 0 * log(x_0 - threshold) is NaN where nu_e's share x_0 < threshold.
        nodes.append(helper.make_node("Slice", ["invariants", constant_int(initializers, "s0", [0]),
                                                constant_int(initializers, "s1", [1]), constant_int(initializers, "ax", [1])],
                                      ["x0"]))
        nodes.append(helper.make_node("Sub", ["x0", constant("threshold", [nan_below])], ["x0_shift"]))
        nodes.append(helper.make_node("Log", ["x0_shift"], ["x0_log"]))
        nodes.append(helper.make_node("Mul", ["x0_log", constant("zero", [0.0])], ["poison"]))
        nodes.append(helper.make_node("Add", ["mlp_output", "poison"], ["head_output"]))
    K = HEAD_OUTPUT_SIZES[mlp.head]
    outputs = [helper.make_tensor_value_info("head_output", TensorProto.FLOAT, ["N", K])]
    hidden = f"a{len(mlp.weights) - 2}"  # input of the last layer
    for name, (w, b) in mlp.diagnostics.items():
        nodes.append(helper.make_node("MatMul", [hidden, constant(f"{name}_w", w[:, None])], [f"{name}_z"]))
        nodes.append(helper.make_node("Add", [f"{name}_z", constant(f"{name}_b", [b])], [f"{name}_y"]))
        raw = f"{name}_y"
        if name == "uncertainty":
            nodes.append(helper.make_node("Abs", [raw], [f"{name}_abs"]))
            raw = f"{name}_abs"
        nodes.append(helper.make_node("Reshape", [raw, constant_int(initializers, f"{name}_shape", [-1])], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"]))
    graph = helper.make_graph(
        nodes, "dodo_synthetic",
        [helper.make_tensor_value_info("invariants", TensorProto.FLOAT, ["N", 27])],
        outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="dodo-synthetic")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def constant_int(initializers, name, value):
    from onnx import numpy_helper

    initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    return name


def write_model(path, mlp: SyntheticMLP, *, box3d_settings: Optional[dict] = None, n_test_vectors: int = 8,
                metadata_overrides: Optional[dict] = None, nan_below: Optional[float] = None,
                description: str = "SYNTHETIC TEST MODEL: random weights, not trained on any data; "
                                   "exercises the runtime only, carries no physics") -> Path:
    """Writes a model package; metadata_overrides replace (or, with value None, delete) keys."""
    import onnx

    import dodo

    settings = dodo.box3d_settings(**{k: v for k, v in (box3d_settings or {}).items()
                                      if k in ("lebedev_order", "z_method", "max_flux_factor")})
    model = _onnx_graph(mlp, nan_below)
    metadata = {
        "dodo.format_version": FORMAT_VERSION,
        "dodo.head": mlp.head,
        "dodo.output_size": str(HEAD_OUTPUT_SIZES[mlp.head]),
        "dodo.features": FEATURES,
        "dodo.box3d": json.dumps(settings),
        "dodo.training_data_sha256": "0" * 64,
        "dodo.training_data_kind": "synthetic",
        "dodo.metrics": json.dumps({}),
        "dodo.export_time": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "dodo.version": dodo.__version__,
        "dodo.description": description,
    }
    if mlp.diagnostics:
        metadata["dodo.outputs"] = json.dumps(["head_output", *mlp.diagnostics])
    if n_test_vectors:
        F, u = test_cells(n_test_vectors, seed=11)
        reference = reference_closure(F, u, mlp, mlp.head, settings, flavour_images=False)  # the self-test's form
        vectors = {"F_init": F.tolist(), "u": u.tolist(), "F_pred": reference["F_pred"].tolist(), "atol_over_ntot": 1e-5}
        if mlp.diagnostics:  # the optional outputs' results too (docs/model_package.md)
            vectors.update(growth_over_ntot=reference["growth_over_ntot"].tolist(),
                           uncertainty=reference["uncertainty"].tolist())
        metadata["dodo.test_vectors"] = json.dumps(vectors)
    overrides = metadata_overrides or {}
    sign = "dodo.content_sha256" not in overrides  # an override replaces or removes the digest
    for key, value in overrides.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model_bytes = model.SerializeToString()
    if sign:
        model_bytes = dodo._core.with_content_digest(model_bytes)
    path = Path(path)
    from .._atomic import atomic_path

    with atomic_path(path) as temporary:  # a failed or killed write leaves the earlier package whole
        temporary.write_bytes(model_bytes)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m dodo.training.synthetic_model``: regenerate the shipped test model (not the
    default model). ``--help`` prints the usage and writes nothing; an argument it does not know is
    refused (each used to rewrite the package's test model, in the installed package too)."""
    import argparse

    from dodo.models import MODELS_DIR, TEST_MODEL_NAME

    parser = argparse.ArgumentParser(
        prog="python -m dodo.training.synthetic_model",
        description=f"Write the random-weight test model package (equivariant head, seed 1) that the runtime's "
                    f"tests and fuzzers load; by default over the one shipped with dodo ({TEST_MODEL_NAME}).")
    parser.add_argument("-o", "--output", default=str(MODELS_DIR / TEST_MODEL_NAME),
                        help="package to write (atomically); default: the shipped %(default)s")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output when it exists and is not a model package (a data file, a "
                             "checkpoint: refused without it)")
    args = parser.parse_args(argv)
    mlp = SyntheticMLP.random("equivariant", hidden=(32, 32), output_scale=0.02, seed=1)
    try:
        # Only over a model package (its own earlier output), as `dodo export`: `-o data.h5` replaced a
        # database with the test package, exit 0 (outside probe, round 22).
        from dodo._output_guard import MODEL_PACKAGE, refuse_replacing

        refuse_replacing(args.output, MODEL_PACKAGE, f"{parser.prog} -o", args.overwrite)
        print(write_model(args.output, mlp, n_test_vectors=8))
    except BrokenPipeError:  # the reader went away: ended quietly below, not "error: [Errno 32] Broken pipe"
        raise
    except ModuleNotFoundError as error:  # a run-time install: was a traceback (outside probe, round 30)
        from .._shown import extra_install

        parser.exit(2, f"{parser.prog}: error: {error.name} is not installed; this tool needs the training extra: "
                       f"{extra_install('train')}\n")
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from dodo._stdout_guard import with_guarded_stdout

    # Standard output guarded as `dodo` guards it (outside probe, round 23).
    sys.exit(with_guarded_stdout("python -m dodo.training.synthetic_model", main))
