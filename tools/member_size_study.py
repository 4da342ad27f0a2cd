"""Do larger density members help at today's pool size? Fits the config's density members (no
growth members, no label-noise member, no student) at several sizes on folds 1-4 of the training
pool (tools/gate_study.py's split; held-out files excluded as in training) and prints, on fold 0,
the members' mean |dn|/N_tot ungated and under the spread gate alone (c = the config's
error_per_spread), and the states worse than Box3D by more than 0.0025 N_tot, for all states and
the Emu-recipe ones (docs/training.md, "Fitting"). The members are the teacher only, so their size
costs training time, not the closure's speed.

    python tools/member_size_study.py [--config C] [--variants 128:3,256:3] [--members 8] [--threads 1]

A variant is WIDTH:DEPTH[:EPOCHS] (epochs default: the config's). Tens of minutes on one core.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_ensemble, spread_gate, state_error
from dodo.training.features import OOD_COLUMNS

WORSE = 0.0025


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--variants", default="128:3,256:3", help="WIDTH:DEPTH[:EPOCHS],...")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    variants = []
    for item in args.variants.split(","):
        fields = [int(v) for v in item.split(":")]
        if len(fields) not in (2, 3) or min(fields) < 1:
            raise SystemExit(f"--variants: {item!r} is not WIDTH:DEPTH[:EPOCHS] of positive integers")
        variants.append(tuple(fields))
    config = dataclasses.replace(et.EnsembleConfig.load(args.config), threads=args.threads)
    torch.set_num_threads(args.threads)
    table = et.load_table(config.data_path)
    order, fold_of = et.pool_folds(table, config, 5)
    test, train = order[fold_of == 0], order[fold_of != 0]
    emu = et.is_emu_recipe(table["sources"][test])
    X, r, g = et._training_arrays(table, train, config)
    X_test = torch.as_tensor(et.features_of(table, test, config.features), dtype=torch.float32)
    box = state_error(table["delta_box"][test], table["delta_true"][test])
    c = torch.tensor(config.error_per_spread, dtype=torch.float64)
    print(f"fold 0: {len(test)} states ({int(emu.sum())} Emu recipe; Box3D {box.mean():.5f} / "
          f"{box[emu].mean():.5f}); members on {len(train)} training states ({len(X)} rows, mirrored)", flush=True)
    print(f"{'members':<22} {'ungated':>8} {'Emu':>8} | {'gated c=' + format(float(c), 'g'):>10} {'worse':>5} "
          f"{'Emu':>8} {'worse':>5}", flush=True)
    for variant in variants:
        width, depth = variant[:2]
        epochs = variant[2] if len(variant) == 3 else config.epochs
        started = time.monotonic()
        ensemble = fit_ensemble(X, r, g, members=args.members, sigma0=config.sigma0, seed=config.seed,
                                ood_columns=OOD_COLUMNS[config.features], error_per_spread=config.error_per_spread,
                                width=width, depth=depth, steps=config.steps, lr=config.lr,
                                weight_decay=config.weight_decay, growth_weight=config.growth_weight,
                                batch_size=config.batch_size, epochs=epochs)
        with torch.no_grad():
            r_mean, sigma, _ = ensemble.teacher_outputs(X_test)
            r_mean, sigma = r_mean.double(), sigma.double()
            gate = spread_gate(r_mean, sigma, torch.tensor(1.0, dtype=torch.float64), c)
            d2 = ensemble.squared_distance(X_test).double()
            gate = gate * torch.exp(-torch.relu(d2 - ensemble.d2_max) / ensemble.d2_max)
        ungated = state_error(table["delta_box"][test] + r_mean.numpy(), table["delta_true"][test])
        gated = state_error(table["delta_box"][test] + (r_mean * gate).numpy(), table["delta_true"][test])
        worse = gated - box > WORSE
        name = f"{args.members} x {width}x{depth}, {epochs} ep"
        print(f"{name:<22} {ungated.mean():8.5f} {ungated[emu].mean():8.5f} | {gated.mean():10.5f} "
              f"{int(worse.sum()):5d} {gated[emu].mean():8.5f} {int(worse[emu].sum()):5d}   "
              f"({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
