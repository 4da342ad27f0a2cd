"""Would a gate fitted to the metric itself beat the shipped Wiener gate? Nested cross-validation on
a gate study's out-of-fold file (docs/training.md, "A gate fitted to the metric").

    python tools/learned_gate_study.py --oof training/out_of_fold/gate_oof_36101.npz [--config C]
        [--lambdas 0 1 3 10 30] [--inner-folds 5] [--epochs 30]

The shipped gate shrinks the mean correction r by r^2 / (r^2 + (c spread)^2 + (k a)^2) (times the
distance factor d), a form that is optimal for Gaussian errors of known scale. Here a small network
g(x, r, spread, a) in [0, 1] is fitted instead to what the closure is scored on: the mean
|dn|/N_tot of Box3D + g r d, plus lambda times a hinge on states that come within 0.0005 N_tot of
being worse than Box3D by 0.0025 (the count issue 10 asks to be zero). The pool's files are split
into --inner-folds groups (tools/noise_gate_study.py's split); each group is scored by a gate fitted
on the others, with the label-noise scale a(x) nested the same way. Printed beside: the shipped
(c, k), the ungated correction, and the per-state best g in [0, 1] (an oracle, not reachable).

The rule (written before the first run, 2026-12-04 06:50 UTC, /work/notes/notes_rule_2026-12-04c.txt):
among the lambdas whose Emu-recipe and all-state means and worse counts are all at most the shipped
gate's, take the lowest Emu-recipe mean; adopt it if that mean is <= 0.97 x the shipped gate's with
the all-state mean <= 0.97 x too, or if its Emu-recipe worse count is <= 0.85 x the shipped gate's.
Needs the training extra; minutes on one core.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dodo.training import ensemble_train as et
from dodo.training.ensemble import METRIC_PER_DELTA, _fit, _normalised_member, spread_gate, state_error
from dodo.training.label_noise import out_of_fold_match, read_out_of_fold
from study_common import check_count, check_numbers, run_study

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noise_gate_study import nested_noise_scale  # noqa: E402  (the shipped gate's nested a(x))

WORSE = 0.0025  # N_tot: the count issue 10 asks to be zero
MARGIN = 0.0005  # the hinge starts this far below WORSE


def gate_inputs(features: np.ndarray, r: np.ndarray, sigma: np.ndarray, scale: np.ndarray,
                r_scale: float) -> np.ndarray:
    """The gate network's inputs: the state's features, the correction and its two error scales."""
    tiny = 1e-6 * r_scale
    return np.column_stack([features, r / r_scale, np.log(sigma / r_scale + 1e-6), np.log(scale / r_scale + 1e-6),
                            np.log(np.abs(r) + tiny) - np.log(np.hypot(sigma, scale) + tiny)]).astype(np.float32)


def fit_gate(X: np.ndarray, r: np.ndarray, e: np.ndarray, distance: np.ndarray, lam: float, seed: int,
             epochs: int, r_scale: float) -> torch.nn.Module:
    """g = sigmoid(network): the mean of M |e - g r d| (M |dn| per delta) plus lam times the hinge."""
    torch.manual_seed(seed)
    network = _normalised_member(X, width=64, depth=2, n_outputs=1)
    inputs = torch.as_tensor(X)
    rd = torch.as_tensor(r * distance)
    target = torch.as_tensor(e)
    box = METRIC_PER_DELTA * target.abs()
    unit = METRIC_PER_DELTA * r_scale  # a loss of order one for AdamW

    def loss_of(net, index):
        g = torch.sigmoid(net(inputs[index])[:, 0]).double()
        error = METRIC_PER_DELTA * (target[index] - g * rd[index]).abs()
        hinge = torch.relu(error - box[index] - (WORSE - MARGIN))
        return ((error + lam * hinge).mean() / unit).float()

    return _fit(network, loss_of, len(X), 0, 2e-3, 1e-4, batch_size=512, epochs=epochs, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--oof", required=True, help="tools/gate_study.py --save's file for this table and pool")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0, 30.0])
    parser.add_argument("--inner-folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    check_numbers("--lambdas", args.lambdas)
    check_count("--inner-folds", args.inner_folds, 2)
    check_count("--epochs", args.epochs)
    config = et.EnsembleConfig.load(args.config)
    saved = read_out_of_fold(args.oof, "--oof")  # before the table's read: a wrong --oof is refused at once
    torch.set_num_threads(config.threads)
    table = et.load_table(config.data_path)
    found, residual = out_of_fold_match(args.oof, table, config, saved)
    matched = found >= 0
    rows, residual = found[matched], residual[matched]
    delta_box, delta_true, r, sigma, d2, emu = (saved[k][matched] for k in
                                                ("delta_box", "delta_true", "r", "sigma", "d2", "emu"))
    r_scale = float(np.std(table["r"][rows]))
    scale = nested_noise_scale(table, rows, residual, config, r_scale, args.inner_folds)
    distance = np.exp(-np.maximum(0.0, d2 - 1.0))
    e = delta_true - delta_box
    box = state_error(delta_box, delta_true)

    def summary(name: str, g: np.ndarray) -> dict:
        model = state_error(delta_box + r * g * distance, delta_true)
        worse = model - box > WORSE
        s = {"emu": model[emu].mean(), "all": model.mean(), "worse_emu": int(worse[emu].sum()),
             "worse_all": int(worse.sum())}
        print(f"{name:<34} {s['emu']:10.5f} {s['worse_emu']:6d}  {s['all']:8.5f} {s['worse_all']:6d}", flush=True)
        return s

    c, k = config.error_per_spread, config.noise_weight
    total = np.sqrt(sigma ** 2 + (k * scale / c) ** 2)
    wiener = spread_gate(torch.from_numpy(r), torch.from_numpy(total), torch.tensor(1.0, dtype=torch.float64),
                         torch.tensor(c, dtype=torch.float64)).numpy()
    features = et.features_of(table, rows, config.features)
    X = gate_inputs(features, r, sigma, scale, r_scale)
    files = np.array([str(s) for s in table["sources"][rows]])
    names = np.unique(files)  # the groups of nested_noise_scale: a state's gate never saw its file
    group_of_file = dict(zip(names[np.random.default_rng(config.seed).permutation(len(names))],
                             np.arange(len(names)) % args.inner_folds))
    group = np.array([group_of_file[name] for name in files])
    learned = {}
    for lam in args.lambdas:
        g = np.empty(len(rows))
        for fold in range(args.inner_folds):
            train, test = group != fold, group == fold
            network = fit_gate(X[train], r[train], e[train], distance[train], lam, config.seed + 4000 + fold,
                               args.epochs, r_scale)
            with torch.no_grad():
                g[test] = torch.sigmoid(network(torch.as_tensor(X[test]))[:, 0]).double().numpy()
        learned[lam] = g
        print(f"lambda {lam:g}: fitted ({args.inner_folds} groups)", flush=True)

    print(f"\n{len(rows)} pool states ({int(emu.sum())} of the Emu recipe); Box3D: Emu recipe {box[emu].mean():.5f}, "
          f"all {box.mean():.5f}")
    print(f"{'gate':<34} {'Emu recipe':>10} {'worse':>6}  {'all':>8} {'worse':>6}")
    summary("none (g = 1)", np.ones(len(rows)))
    oracle = np.clip(np.where(r * distance != 0, e / np.where(r * distance != 0, r * distance, 1.0), 0.0), 0.0, 1.0)
    summary("oracle (best g per state)", oracle)
    reference = summary(f"shipped Wiener c = {c:g}, k = {k:g}", wiener)
    results = {lam: summary(f"fitted to the metric, lambda {lam:g}", g) for lam, g in learned.items()}
    admissible = {lam: s for lam, s in results.items()
                  if all(s[key] <= reference[key] for key in ("emu", "all", "worse_emu", "worse_all"))}
    if not admissible:
        print("rule: no lambda is at least as good as the shipped gate on all four counts -> keep the shipped gate")
        return
    lam = min(admissible, key=lambda key: admissible[key]["emu"])
    s = admissible[lam]
    by_mean = s["emu"] <= 0.97 * reference["emu"] and s["all"] <= 0.97 * reference["all"]
    by_worse = s["worse_emu"] <= 0.85 * reference["worse_emu"]
    verdict = "adopt" if by_mean or by_worse else "keep the shipped gate"
    print(f"rule: lambda {lam:g}: Emu recipe {s['emu'] / reference['emu']:.3f} x, all {s['all'] / reference['all']:.3f} x "
          f"the shipped means, Emu-recipe worse {s['worse_emu']} against {reference['worse_emu']} -> {verdict}")


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
