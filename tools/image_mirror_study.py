"""Should the members also learn the mu <-> tau images? Outside the blend band the runtime evaluates
the network on a cell's canonical flavour image (n_nubar_e >= n_nu_e, the tau densities the
larger; docs/runtime.md, step 2), while training mirrors only nu <-> nubar (`ensemble.mirror`), so
a cell with mu denser than tau is answered through an image of a labelling the members never saw
paired with its own. Fits the config's density members on folds 1-4 of the training pool
(tools/gate_study.py's split) with the config's mirror and with the mu <-> tau images added
(ensemble.flavour_images: four images a state; nu_e's change and the growth rate are the same in every image), and prints, on fold
0 evaluated through each state's canonical image as the runtime does: the members' mean |dn|/N_tot
ungated and under the spread gate (c = the config's error_per_spread), states worse than Box3D by
more than 0.0025 N_tot, and the members' own growth output within 10% of the measured rates, for
all states and the Emu-recipe ones (docs/training.md, "Inputs"). Also the same members on the
states as given, for comparison. Tens of minutes on one core.

    python tools/image_mirror_study.py [--config C] [--members 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from dodo.conventions import MU_TAU_EXCHANGE, N_SPECIES, NU_NUBAR_EXCHANGE
from dodo.training import ensemble_train as et
from study_common import MAX_THREADS, check_count, fit_members, fold_zero, run_study, score_members


def canonical_features(table: dict, rows: np.ndarray, config) -> np.ndarray:
    """Each state's inputs in its canonical image (the one the runtime evaluates outside the band)."""
    F = np.asarray(table["rest"]["F_init_rest"])[rows]
    swap_e = F[:, 3, 0] < F[:, 0, 0]  # n_nubar_e < n_nu_e
    swap_mt = F[:, 2, 0] + F[:, 5, 0] < F[:, 1, 0] + F[:, 4, 0]  # tau densities the smaller
    X = et.features_of(table, rows, config.features)
    for e, mt in ((True, False), (False, True), (True, True)):
        pick = (swap_e == e) & (swap_mt == mt)
        if pick.any():
            species = np.arange(N_SPECIES)
            if e:
                species = species[np.array(NU_NUBAR_EXCHANGE)]
            if mt:
                species = species[np.array(MU_TAU_EXCHANGE)]
            X[pick] = et.features_of(table, rows[pick], config.features, species=species)
    return X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    check_count("--members", args.members)
    check_count("--threads", args.threads, 1, MAX_THREADS)
    config = dataclasses.replace(et.EnsembleConfig.load(args.config), threads=args.threads)
    torch.set_num_threads(args.threads)
    fold = fold_zero(config)
    table, test, emu = fold.table, fold.test, fold.emu
    variants = {"config's mirror (2 images)": dataclasses.replace(config, flavour_images=False),
                "+ mu<->tau images (4)": dataclasses.replace(config, flavour_images=True)}
    inputs = {"canonical image": canonical_features(table, test, config),
              "as given": et.features_of(table, test, config.features)}
    measured = table["log_growth"][test]
    finite = np.isfinite(measured)
    print(f"fold 0: {len(test)} states ({int(emu.sum())} Emu recipe; Box3D {fold.box.mean():.5f} / "
          f"{fold.box[emu].mean():.5f}); members on {len(fold.train)} training states", flush=True)
    print(f"{'members, evaluated on':<46} {'ungated':>8} {'Emu':>8} | {'gated':>8} {'worse':>5} {'Emu':>8} "
          f"{'worse':>5} | growth 10% (Emu)", flush=True)
    for name, variant in variants.items():
        started = time.monotonic()
        X, r, g = et.training_arrays(table, fold.train, variant)
        ensemble = fit_members(X, r, g, variant, args.members)
        for where, X_test in inputs.items():
            s = score_members(ensemble, X_test, fold, variant)
            hit = np.abs(np.exp(s.log_growth[finite] - measured[finite]) - 1) <= 0.1
            print(f"{name + ', ' + where:<46} {s.ungated.mean():8.5f} {s.ungated[emu].mean():8.5f} | "
                  f"{s.gated.mean():8.5f} {int(s.worse.sum()):5d} {s.gated[emu].mean():8.5f} "
                  f"{int(s.worse[emu].sum()):5d} | {100 * hit.mean():.1f}% ({100 * hit[emu[finite]].mean():.1f}%)",
                  flush=True)
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
