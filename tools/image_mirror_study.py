"""Should the members also learn the mu <-> tau images? Outside the blend band the runtime evaluates
the network on a cell's canonical flavour image (n_nubar_e >= n_nu_e, the tau densities the
larger; docs/runtime.md, step 2), while training mirrors only nu <-> nubar (`ensemble.mirror`), so
a cell with mu denser than tau is answered through an image of a labelling the members never saw
paired with its own. Fits the config's density members on folds 1-4 of the training pool
(tools/gate_study.py's split) with the config's mirror and with the mu <-> tau images added (four
images a state; nu_e's change and the growth rate are the same in every image), and prints, on fold
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

from dodo.conventions import N_SPECIES, invariant_pairs
from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_ensemble, spread_gate, state_error
from dodo.training.features import OOD_COLUMNS

WORSE = 0.0025
NU_NUBAR = np.array([(a + N_SPECIES // 2) % N_SPECIES for a in range(N_SPECIES)])
MU_TAU = np.array([0, 2, 1, 3, 5, 4])  # (nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, nubar_tau)


def species_swapped(rest: dict, species: np.ndarray) -> dict:
    """The same cells with their species relabelled by ``species`` (rest-frame training arrays)."""
    column_of = {pair: N_SPECIES + k for k, pair in enumerate(invariant_pairs())}
    columns = list(species) + [column_of[tuple(sorted((int(species[a]), int(species[b]))))] for a, b in invariant_pairs()]
    out = dict(rest)
    out["invariants"] = np.asarray(rest["invariants"])[:, columns]
    for name in ("F_init_rest", "F_box_rest", "dF_true_rest"):
        out[name] = np.asarray(rest[name])[:, species]
    return out


def features(table: dict, rows: np.ndarray, config, species: np.ndarray | None) -> np.ndarray:
    """Inputs of ``rows``, relabelled by ``species`` (None: as given), as features_of computes them."""
    from dodo.training.features import feature_matrix

    rest = {key: np.asarray(value)[rows] for key, value in table["rest"].items()}
    if species is not None:
        rest = species_swapped(rest, species)
    return feature_matrix(config.features, rest["invariants"], rest["F_init_rest"], rest["F_box_rest"],
                          rest["growth_over_ntot"], box3d=et._box3d_dict(table.get("box3d")))


def canonical_features(table: dict, rows: np.ndarray, config) -> np.ndarray:
    """Each state's inputs in its canonical image (the one the runtime evaluates outside the band)."""
    F = np.asarray(table["rest"]["F_init_rest"])[rows]
    swap_e = F[:, 3, 0] < F[:, 0, 0]  # n_nubar_e < n_nu_e
    swap_mt = F[:, 2, 0] + F[:, 5, 0] < F[:, 1, 0] + F[:, 4, 0]  # tau densities the smaller
    X = features(table, rows, config, None)
    for e, mt in ((True, False), (False, True), (True, True)):
        pick = (swap_e == e) & (swap_mt == mt)
        if pick.any():
            species = np.arange(N_SPECIES)
            if e:
                species = species[NU_NUBAR]
            if mt:
                species = species[MU_TAU]
            X[pick] = features(table, rows[pick], config, species)
    return X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    config = dataclasses.replace(et.EnsembleConfig.load(args.config), threads=args.threads)
    torch.set_num_threads(args.threads)
    table = et.load_table(config.data_path)
    order, fold_of = et.pool_folds(table, config, 5)
    test, train = order[fold_of == 0], order[fold_of != 0]
    emu = et.is_emu_recipe(table["sources"][test])
    X, r, g = et._training_arrays(table, train, config)  # the config's mirror
    X_mt = np.concatenate([features(table, train, config, MU_TAU), features(table, train, config, NU_NUBAR[MU_TAU])])
    variants = {"config's mirror (2 images)": (X, r, g),
                "+ mu<->tau images (4)": (np.concatenate([X, X_mt]), np.concatenate([r, r]), np.concatenate([g, g]))}
    inputs = {"canonical image": canonical_features(table, test, config),
              "as given": features(table, test, config, None)}
    box = state_error(table["delta_box"][test], table["delta_true"][test])
    measured = table["log_growth"][test]
    finite = np.isfinite(measured)
    c = torch.tensor(config.error_per_spread, dtype=torch.float64)
    print(f"fold 0: {len(test)} states ({int(emu.sum())} Emu recipe; Box3D {box.mean():.5f} / {box[emu].mean():.5f}); "
          f"members on {len(train)} training states", flush=True)
    print(f"{'members, evaluated on':<46} {'ungated':>8} {'Emu':>8} | {'gated':>8} {'worse':>5} {'Emu':>8} "
          f"{'worse':>5} | growth 10% (Emu)", flush=True)
    for name, (Xv, rv, gv) in variants.items():
        started = time.monotonic()
        ensemble = fit_ensemble(Xv, rv, gv, members=args.members, sigma0=config.sigma0, seed=config.seed,
                                ood_columns=OOD_COLUMNS[config.features], error_per_spread=config.error_per_spread,
                                width=config.width, depth=config.depth, steps=config.steps, lr=config.lr,
                                weight_decay=config.weight_decay, growth_weight=config.growth_weight,
                                batch_size=config.batch_size, epochs=config.epochs)
        for where, X_test in inputs.items():
            x = torch.as_tensor(X_test, dtype=torch.float32)
            with torch.no_grad():
                r_mean, sigma, growth = (v.double() for v in ensemble.teacher_outputs(x))
                gate = spread_gate(r_mean, sigma, torch.tensor(1.0, dtype=torch.float64), c)
                d2 = ensemble.squared_distance(x).double()
                gate = gate * torch.exp(-torch.relu(d2 - ensemble.d2_max) / ensemble.d2_max)
            ungated = state_error(table["delta_box"][test] + r_mean.numpy(), table["delta_true"][test])
            gated = state_error(table["delta_box"][test] + (r_mean * gate).numpy(), table["delta_true"][test])
            worse = gated - box > WORSE
            hit = np.abs(np.exp(growth.numpy()[finite] - measured[finite]) - 1) <= 0.1
            print(f"{name + ', ' + where:<46} {ungated.mean():8.5f} {ungated[emu].mean():8.5f} | {gated.mean():8.5f} "
                  f"{int(worse.sum()):5d} {gated[emu].mean():8.5f} {int(worse[emu].sum()):5d} | "
                  f"{100 * hit.mean():.1f}% ({100 * hit[emu[finite]].mean():.1f}%)", flush=True)
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
