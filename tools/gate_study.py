"""Measure the gate's error_per_spread and compare gates, by k-fold CV inside the training pool.

    python tools/gate_study.py [--config training/configs/ensemble_default.yaml] [--folds 5]
                               [--factors 1 2.5 4] [--save oof.npz | --load oof.npz]

Trains the config's members on k-1 folds of the pool (held-out files excluded, as in training),
predicts the left-out fold, and prints c = mean |out-of-fold error| / mean spread (the value for
`ensemble.error_per_spread`, docs/training.md) and, for several gates, the CV mean |dn|/N_tot and
the states worse than Box3D by more than 0.0025 N_tot, for all states and for the Emu-recipe ones.
Needs the training extra. About 8 members x folds fits: under a minute each on one core.
--save keeps the out-of-fold predictions (an .npz, written atomically), --load re-reads them to
compare other gates without fitting again.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from dodo._atomic import numpy_savez_atomic
from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_ensemble, spread_gate, state_error
from dodo.training.features import OOD_COLUMNS
from dodo.training.label_noise import OUT_OF_FOLD_KEYS, read_out_of_fold
from study_common import check_count, check_numbers, check_save_path, run_study


def out_of_fold(config: et.EnsembleConfig, folds: int):
    table = et.load_table(config.data_path)
    order, fold_of = et.pool_folds(table, config, folds)
    torch.set_num_threads(config.threads)
    rows, r_mean, sigma, d2 = [], [], [], []
    for k in range(folds):
        test, train = order[fold_of == k], order[fold_of != k]
        X, r, g = et.training_arrays(table, train, config)
        ensemble = fit_ensemble(X, r, g, members=config.members, sigma0=config.sigma0, seed=config.seed,
                                width=config.width, depth=config.depth, steps=config.steps, lr=config.lr,
                                weight_decay=config.weight_decay, growth_weight=config.growth_weight,
                                batch_size=config.batch_size, epochs=config.epochs,
                                ood_columns=OOD_COLUMNS[config.features])
        x = torch.as_tensor(et.features_of(table, test, config.features), dtype=torch.float32)
        with torch.no_grad():
            stacked = torch.stack([member(x)[:, 0] for member in ensemble.members]) * ensemble.r_scale
            d2.append((ensemble.squared_distance(x) / ensemble.d2_max).double().numpy())
        rows.append(test)
        r_mean.append(stacked.mean(0).double().numpy())
        sigma.append(stacked.std(0, unbiased=False).double().numpy())
        print(f"fold {k + 1}/{folds} done", flush=True)
    rows = np.concatenate(rows)
    return (table["delta_box"][rows], table["delta_true"][rows], np.concatenate(r_mean), np.concatenate(sigma),
            np.concatenate(d2), et.is_emu_recipe(table["sources"][rows]))


def _holds_out_of_fold(path: str) -> bool:
    try:
        read_out_of_fold(path, "--save")
    except ValueError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 2.5, 4.0],
                        help="Wiener gate factors c compared beside the measured one")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--save", help="write the out-of-fold predictions to this .npz")
    group.add_argument("--load", help="read out-of-fold predictions written by --save instead of fitting")
    parser.add_argument("--overwrite", action="store_true", help="let --save replace a file that is not an earlier --save's")
    args = parser.parse_args()
    check_count("--folds", args.folds, 2)
    check_numbers("--factors", args.factors)  # the Wiener gate's c, >= 0 as ensemble.error_per_spread (0: the sigma0 gate)
    config = et.EnsembleConfig.load(args.config)
    names = OUT_OF_FOLD_KEYS
    if args.save:  # before the fits (minutes): never over the config or its table, nor an unrelated file
        check_save_path(args.save, [args.config, config.data_path], _holds_out_of_fold,
                        "a gate study's out-of-fold file (an earlier --save)", args.overwrite)
    if args.load:  # checked as noise.oof is: a FIFO blocked np.load for ever, a text file was a traceback
        saved = read_out_of_fold(args.load, "--load")
        delta_box, delta_true, r, sigma, d2, emu = (saved[name] for name in names)
    else:
        delta_box, delta_true, r, sigma, d2, emu = out_of_fold(config, args.folds)
    if args.save:  # atomically: a killed run leaves an earlier file whole (and no temporary behind)
        numpy_savez_atomic(args.save, dict(zip(names, (delta_box, delta_true, r, sigma, d2, emu))))
    error = np.abs(r - (delta_true - delta_box))
    c = float(error.mean() / sigma.mean())
    print(f"{len(r)} pool states: mean |error of r| / mean spread = {c:.3f} (error_per_spread); "
          f"config has {config.error_per_spread}")
    box = state_error(delta_box, delta_true)
    distance = np.exp(-np.maximum(0.0, d2 - 1.0))

    def row(name, used):
        model = state_error(delta_box + used, delta_true)
        worse = model - box > 0.0025
        print(f"{name:<30} all {model.mean():.5f} worse {int(worse.sum()):4d} | Emu recipe {model[emu].mean():.5f} "
              f"worse {int(worse[emu].sum())}/{int(emu.sum())}")

    print(f"{'Box3D':<30} all {box.mean():.5f} | Emu recipe {box[emu].mean():.5f}")
    def gated(sigma0: float, error_per_spread: float) -> np.ndarray:  # the shipped gate's code, in float64
        gate = spread_gate(torch.from_numpy(r), torch.from_numpy(sigma), torch.tensor(sigma0, dtype=torch.float64),
                           torch.tensor(error_per_spread, dtype=torch.float64)).numpy()
        return r * gate * distance

    row("no gate", r)
    row(f"sigma0 = {config.sigma0:g}", gated(config.sigma0, 0.0))
    for factor in sorted({round(c, 2), config.error_per_spread, *args.factors}):
        row(f"Wiener, c = {factor:g}", gated(config.sigma0, factor))


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
