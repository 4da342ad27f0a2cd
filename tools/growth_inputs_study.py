"""Which crossing inputs carry the growth rate? For two folds of a 5-fold split of the training pool,
fits the config's growth member on the other four folds plus all linear-theory labels, with the 34 inputs of
invariants27+box7 and with subsets of the 18 ELN-crossing inputs (dodo.crossing_features) added,
and prints the share of out-of-fold measured growth rates within 10% (docs/training.md, "Inputs").

    python tools/growth_inputs_study.py [--config training/configs/ensemble_default.yaml] [--members 1]
    python tools/growth_inputs_study.py --subsets all18 --members 3   # three members averaged
    python tools/growth_inputs_study.py --subsets all18 --members 3 --steps 6000 --width 64

Held-out files are excluded as in training. One growth fit per subset, fold and member: about a
minute each on one core at 2,000 steps (the config trains 6,000: --steps 2000 for the older runs).
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_growth_member
from dodo.training.features import INVARIANTS_BOX_AND_CROSSING
from study_common import check_count, growth_labels_of, run_study

BASE = list(range(34))


def crossing(*per_pair: int) -> list[int]:
    """Columns of the crossing inputs: per pair (I+, I-, fraction G > 0, |<n>+|, |<n>-|, cosine)."""
    return [34 + 6 * pair + k for pair in range(3) for k in per_pair]


# 34: invariants27+box7; then per pair I+ and I-; those and the fraction; those and the lengths; all 18.
SUBSETS = {"34": BASE, "integrals": BASE + crossing(0, 1), "integrals-fraction": BASE + crossing(0, 1, 2),
           "integrals-lengths": BASE + crossing(0, 1, 3, 4), "all18": BASE + crossing(*range(6))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--members", type=int, default=1, help="growth members averaged per fit (seeds 1000+)")
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS), choices=list(SUBSETS))
    parser.add_argument("--steps", type=int, default=None,
                        help="full-batch steps per member (default: the config's growth schedule, mini-batches if it "
                             "has growth.batch_size)")
    parser.add_argument("--width", type=int, default=None, help="hidden width (default: the config's)")
    args = parser.parse_args()
    for option, value in (("--members", args.members), ("--steps", args.steps), ("--width", args.width)):
        check_count(option, value)  # --width 0 and --steps 0 silently meant the config's
    config = dataclasses.replace(et.EnsembleConfig.load(args.config), features=INVARIANTS_BOX_AND_CROSSING)
    width, steps = args.width or config.growth_width, args.steps or config.growth_steps
    # --steps asks for full-batch fits; otherwise the config's own schedule (batch_size 0: full batch).
    batch_size, epochs = (0, 0) if args.steps else (config.growth_batch_size, config.growth_epochs)
    schedule = f"{epochs} epochs of {batch_size}" if batch_size else f"{steps} steps"
    torch.set_num_threads(1)
    table = et.load_table(config.data_path)
    order, fold_of = et.pool_folds(table, config, 5)
    growth_table = growth_labels_of(config, table, order, args.config)
    X_labels, _, g_labels = et.training_arrays(growth_table, np.arange(len(growth_table["r"])), config)
    X_all = et.features_of(table, np.arange(len(table["r"])), config.features)
    emu_recipe = et.is_emu_recipe(table["sources"])
    for name in args.subsets:
        columns = SUBSETS[name]
        hits, emu = [], []
        for k in (0, 1):
            test, train = order[fold_of == k], order[fold_of != k]
            X, _, g = et.training_arrays(table, train, config)
            predictions = []
            for seed in range(1000, 1000 + args.members):
                member = fit_growth_member(np.concatenate([X, X_labels])[:, columns], np.concatenate([g, g_labels]),
                                           seed=seed, width=width, depth=config.growth_depth, steps=steps,
                                           lr=config.growth_learning_rate, weight_decay=config.weight_decay,
                                           batch_size=batch_size, epochs=epochs)
                with torch.no_grad():
                    x = torch.as_tensor(X_all[test][:, columns], dtype=torch.float32)
                    predictions.append(member(x)[:, 0].double().numpy())
            predicted = np.mean(predictions, axis=0)
            miss = table["log_growth"][test] - predicted
            finite = np.isfinite(miss)
            hits.append(np.abs(np.exp(-miss[finite]) - 1) <= 0.1)
            emu.append(emu_recipe[test][finite])
        hits, emu = np.concatenate(hits), np.concatenate(emu)
        print(f"{name:<22} ({len(columns)} inputs, {args.members} member(s), width {width}, {schedule}) "
              f"growth within 10%: all {100 * hits.mean():.1f}%, "
              f"Emu recipe {100 * hits[emu].mean():.1f}% ({len(hits)} states)", flush=True)


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
