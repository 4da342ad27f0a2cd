"""Is the growth network short of labels or of inputs? Fits the config's growth member on k-1 folds
of the training pool (plus all linear-theory labels) and prints the share of states whose measured
growth rate it places within 10%, on its own training states and out of fold, beside the share the
calibrated linear theory itself reaches (the ceiling the labels allow). docs/training.md.

    python tools/growth_fit_study.py [--config training/configs/ensemble_default.yaml] [--steps 2000 8000]

Held-out files are excluded as in training. One fold, one member per --steps value: minutes on one core.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import torch

from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_growth_member
from study_common import check_count, growth_labels_of, run_study


def within_10_percent(table, rows, predict) -> tuple[float, float]:
    """(all, emu family) shares of rows whose measured rate the prediction meets within 10%."""
    error = table["log_growth"][rows] - predict(rows)
    finite = np.isfinite(error)
    hit = np.abs(np.exp(-error[finite]) - 1) <= 0.1
    emu = np.array([Path(str(s)).name.startswith("emu_seed") for s in table["sources"][rows]])[finite]
    return 100 * hit.mean(), 100 * hit[emu].mean()


def linear_theory_ceiling(sources) -> float:
    """Share of the pool's solver states whose calibrated linear rate is within 10% of the measured one."""
    measured, linear = [], []
    for path in sorted(set(str(s) for s in sources)):
        with h5py.File(path, "r") as f:
            measured.append(f["growthRate(1|s)"][:])
            linear.append(f["linear_growthRate_box(1|s)"][:])
    measured, linear = np.concatenate(measured), np.concatenate(linear)
    ok = (measured > 0) & (linear > 0)
    ratio = measured[ok] / linear[ok]
    return 100 * np.mean(np.abs(ratio / np.median(ratio) - 1) <= 0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[2000, 8000])
    args = parser.parse_args()
    check_count("--folds", args.folds, 2)
    for steps in args.steps:
        check_count("--steps", steps)
    config = et.EnsembleConfig.load(args.config)
    table = et.load_table(config.data_path)
    order, fold_of = et.pool_folds(table, config, args.folds)
    # The pool in row order, as before pool_folds took the split over (6206585 left `pool` undefined:
    # every run ended in a NameError; outside probe, round 28).
    pool = np.sort(order)
    test, train = order[fold_of == 0], order[fold_of != 0]
    torch.set_num_threads(config.threads)
    labels = growth_labels_of(config, table, pool, args.config)
    X_labels, _, g_labels = et.training_arrays(labels, np.arange(len(labels["r"])), config)
    X, _, g = et.training_arrays(table, train, config)
    X, g = np.concatenate([X, X_labels]), np.concatenate([g, g_labels])
    print(f"{len(pool)} pool states, {len(g_labels) // 2 if config.mirror else len(g_labels)} label states; calibrated linear theory within 10% of the "
          f"measured rate on {linear_theory_ceiling(table['sources'][pool]):.1f}% of the pool")
    for steps in args.steps:
        member = fit_growth_member(X, g, seed=config.seed + 1000, width=config.growth_width, depth=config.growth_depth,
                                   steps=steps, lr=config.lr, weight_decay=config.weight_decay)

        def predict(rows):
            with torch.no_grad():
                x = torch.as_tensor(et.features_of(table, rows, config.features), dtype=torch.float32)
                return member(x)[:, 0].double().numpy()

        fitted, held = within_10_percent(table, train, predict), within_10_percent(table, test, predict)
        print(f"{steps} steps: within 10% on its training states {fitted[0]:.1f}% (emu {fitted[1]:.1f}%), "
              f"out of fold {held[0]:.1f}% (emu {held[1]:.1f}%)", flush=True)
    return 0


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
