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

import torch

from dodo.training import ensemble_train as et
from study_common import MAX_THREADS, check_count, fit_members, fold_zero, run_study, score_members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--variants", default="128:3,256:3", help="WIDTH:DEPTH[:EPOCHS],...")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    check_count("--members", args.members)
    check_count("--threads", args.threads, 1, MAX_THREADS)
    variants = []
    for item in args.variants.split(","):
        # int("abc") said "invalid literal for int() with base 10: 'abc'", naming no option, and a
        # SystemExit with the text exited 1 (outside probe, round 28): one ValueError for both.
        try:
            fields = [int(v) for v in item.split(":")]
        except ValueError:
            fields = []
        if len(fields) not in (2, 3) or min(fields) < 1:
            raise ValueError(f"--variants: {item!r} is not WIDTH:DEPTH[:EPOCHS] of positive integers")
        variants.append(tuple(fields))
    config = dataclasses.replace(et.EnsembleConfig.load(args.config), threads=args.threads)
    torch.set_num_threads(args.threads)
    fold = fold_zero(config)
    X, r, g = et.training_arrays(fold.table, fold.train, config)
    X_test = et.features_of(fold.table, fold.test, config.features)
    emu = fold.emu
    print(f"fold 0: {len(fold.test)} states ({int(emu.sum())} Emu recipe; Box3D {fold.box.mean():.5f} / "
          f"{fold.box[emu].mean():.5f}); members on {len(fold.train)} training states ({len(X)} rows, mirrored)",
          flush=True)
    print(f"{'members':<22} {'ungated':>8} {'Emu':>8} | {'gated c=' + format(config.error_per_spread, 'g'):>10} "
          f"{'worse':>5} {'Emu':>8} {'worse':>5}", flush=True)
    for variant in variants:
        width, depth = variant[:2]
        epochs = variant[2] if len(variant) == 3 else config.epochs
        started = time.monotonic()
        ensemble = fit_members(X, r, g, config, args.members, width=width, depth=depth, epochs=epochs)
        s = score_members(ensemble, X_test, fold, config)
        name = f"{args.members} x {width}x{depth}, {epochs} ep"
        print(f"{name:<22} {s.ungated.mean():8.5f} {s.ungated[emu].mean():8.5f} | {s.gated.mean():10.5f} "
              f"{int(s.worse.sum()):5d} {s.gated[emu].mean():8.5f} {int(s.worse[emu].sum()):5d}   "
              f"({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
