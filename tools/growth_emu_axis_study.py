"""Growth labels along the axis Emu's validation search picks, against the shipped labels (issue 10).

The growth target is Emu's measured rate, and every Emu run of the recipe lies along the fastest of
the 38 directions of uniform_sphere(10) (docs/dataset.md, "Emu's axis search"), not along the
state's fastest direction, nor along the best of Dodo's 24 coarse axes (most of data/qke's runs) or
its refined axis (the newer ones). `DODO_GROWTH_AXIS=emu bash scripts/relabel_growth.sh` writes
data/qke_emu_axis: each pool state's linear rate along Emu's pick. For pool folds of the 5-fold
split this fits the config's growth member(s) on the other folds with

  shipped            the training states' measured rates + data/qke_linear (the recipe now);
  emu-axis-only      the training states' Emu-axis labels alone (growth.measured: false);
  emu-axis-replacing the measured rates, each Emu-axis-labelled state's replaced by its label
                     (growth.relabelled: true, data/qke_emu_axis only);

and prints, out of fold, the share within 10% of the test states' Emu-axis rates (their labels,
times the measured/linear calibration), Emu recipe beside, and of their measured rates.

Decision rule, fixed before the first run (2026-12-02 07:40 UTC): the variant with the highest
share on the Emu-recipe test states' Emu-axis rates ships if it beats `shipped` there by at least
2 points (folds 0-1; on a tie the one with fewer label kinds). emu_1d_validation.h5 decides nothing.

    python tools/growth_emu_axis_study.py [--folds 0 1] [--members 1]

Pool data only (held-out files excluded as in training); one growth fit per variant, fold and member.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

from dodo._atomic import numpy_save_atomic
from dodo.training import ensemble_train as et
from study_common import (add_growth_fold_arguments, growth_fold_pool, growth_member_prediction, growth_variant,
                          run_study)

EMU_AXIS = "data/qke_emu_axis/*.h5"
LINEAR = "data/qke_linear/*.h5"
# (growth.data, growth.relabelled, growth.measured)
VARIANTS = {"shipped": ([LINEAR], False, True), "emu-axis-only": ([EMU_AXIS], False, False),
            "emu-axis-replacing": ([EMU_AXIS], True, True)}


def within_10_percent(log_truth: np.ndarray, log_predicted: np.ndarray) -> np.ndarray:
    """|predicted / true - 1| <= 0.1: the issue's target and `dodo score`'s growth count."""
    return np.abs(np.exp(log_predicted - log_truth) - 1) <= 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_growth_fold_arguments(parser, [0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cache", help="directory keeping the shipped variant's out-of-fold predictions (its "
                                         "fits use no Emu-axis label, so a later run with more labels reuses them)")
    args = parser.parse_args()
    base, table, order, fold_of = growth_fold_pool(args)
    emu_recipe = et.is_emu_recipe(table["sources"])
    X_all = et.features_of(table, np.arange(len(table["r"])), base.features)
    # The truth: each labelled pool state's Emu-axis rate (as log rate / Box3D's proxy, calibrated).
    emu_config = dataclasses.replace(base, growth_data=[EMU_AXIS], growth_relabelled=False)
    emu_table = et.load_growth_table(emu_config, table, order, log=print)
    of_state = et.growth_label_states(emu_table, table, emu_config)
    truth = np.full(len(table["r"]), np.nan)
    truth[of_state[of_state >= 0]] = emu_table["log_growth"][of_state >= 0]
    print(f"{int(np.isfinite(truth).sum())} pool states carry an Emu-axis label "
          f"({int((np.isfinite(truth) & emu_recipe).sum())} of the Emu recipe); Emu-axis / measured rate: median "
          f"{np.exp(np.nanmedian(truth - table['log_growth'])):.3f}", flush=True)
    def score(predicted, test, on_axis, on_measured, emu):
        has_truth = np.isfinite(truth[test])
        on_axis.append(within_10_percent(truth[test][has_truth], predicted[has_truth]))
        emu.append(emu_recipe[test][has_truth])
        finite = np.isfinite(table["log_growth"][test])
        on_measured.append(within_10_percent(table["log_growth"][test][finite], predicted[finite]))

    for name in args.variants:
        config, growth_table, label_of = growth_variant(base, table, order, *VARIANTS[name])
        on_axis, on_measured, emu = [], [], []
        for k in args.folds:
            test, train = order[fold_of == k], order[fold_of != k]
            cached = None if not (args.cache and name == "shipped") else os.path.join(
                args.cache, f"shipped_{table['sha256'][:16]}_fold{k}_members{args.members}.npy")
            if cached and os.path.exists(cached):
                predicted = np.load(cached)
                score(predicted, test, on_axis, on_measured, emu)
                continue
            predicted = growth_member_prediction(table, train, X_all[test], config, growth_table, args.members, label_of)
            if cached:
                os.makedirs(args.cache, exist_ok=True)
                numpy_save_atomic(cached, predicted)  # a killed run leaves no torn cache
            score(predicted, test, on_axis, on_measured, emu)
        on_axis, emu, on_measured = np.concatenate(on_axis), np.concatenate(emu), np.concatenate(on_measured)
        print(f"{name:<19} within 10% of the Emu-axis rate: Emu recipe {100 * on_axis[emu].mean():.1f}% "
              f"({int(emu.sum())} states), all {100 * on_axis.mean():.1f}% ({len(on_axis)}); of the measured rate: "
              f"all {100 * on_measured.mean():.1f}% ({len(on_measured)})", flush=True)


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
