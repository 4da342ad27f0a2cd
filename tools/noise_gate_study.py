"""Choose the gate's label-noise weight k (and its factor c) by nested cross-validation on a gate
study's out-of-fold file (docs/training.md, "Label-noise gate").

    python tools/noise_gate_study.py --oof training/out_of_fold/gate_oof_36101.npz [--config C]
        [--factors 2 2.5 3 3.5] [--weights 0 0.5 0.75 1 1.25 1.5] [--reference 3.5]

The file (tools/gate_study.py --save) holds each pool state's out-of-fold mean correction r and
spread. Here the pool's files are split into --inner-folds groups; for each, the label-noise
member (ensemble.fit_noise_member, the config's noise settings) is fitted on the other groups'
absolute residuals and predicts a(x) for this one, so no state's scale is learned from its own
label. Every (c, k) of the grid then gates r as the shipped model does (spread_gate on
sqrt(spread^2 + (k a / c)^2), times the distance factor) and is scored: mean |dn|/N_tot and states
worse than Box3D by > 0.0025 N_tot, on the Emu-recipe states and on all.

The rule (fixed before the first run, 2026-12-02 12:41 UTC): keep the (c, k) whose means, Emu
recipe and all, are at most the reference gate's (c = --reference, k = 0: the one shipped); among
them take the fewest Emu-recipe states worse than Box3D; adopt it if that is at least 10% fewer
than the reference's. Needs the training extra; a few minutes on one core.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from dodo._atomic import numpy_save_atomic
from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_noise_member, spread_gate, state_error
from dodo.training.label_noise import out_of_fold_match, read_out_of_fold
from study_common import check_count, check_numbers, check_save_path, run_study


def nested_noise_scale(table: dict, rows: np.ndarray, residual: np.ndarray, config, r_scale: float,
                       groups: int, log=print) -> np.ndarray:
    """a(x) of each state from a label-noise member fitted on the other file groups' residuals."""
    files = np.array([str(s) for s in table["sources"][rows]])
    names = np.unique(files)
    # The groups are of files: with --inner-folds 1, or all states from one file, a group trained on no
    # state, a ZeroDivisionError traceback after the table's read (outside probe, round 28).
    if groups < 2:
        raise ValueError(f"--inner-folds must be an integer >= 2; got {groups}")
    if len(names) < 2:
        raise ValueError(f"the matched states come from {len(names)} solver file; the nested split of --inner-folds "
                         "is by file and needs at least 2 (a table of several campaign files)")
    group_of_file = dict(zip(names[np.random.default_rng(config.seed).permutation(len(names))],
                             np.arange(len(names)) % groups))
    group = np.array([group_of_file[name] for name in files])
    scale = np.empty(len(rows))
    for k in range(groups):
        train, test = np.flatnonzero(group != k), np.flatnonzero(group == k)
        X = et.training_arrays(table, rows[train], config)[0]  # mirrored as the members see them
        target = np.tile(np.abs(residual[train]), len(X) // len(train))
        member = fit_noise_member(X, target, r_scale, seed=config.seed + 3000 + k, width=config.noise_width,
                                  depth=config.noise_depth, lr=config.lr, weight_decay=config.weight_decay,
                                  batch_size=config.noise_batch_size, epochs=config.noise_epochs)
        with torch.no_grad():
            x = torch.as_tensor(et.features_of(table, rows[test], config.features), dtype=torch.float32)
            scale[test] = torch.exp(member(x)[:, 0]).double().numpy() * r_scale
        log(f"group {k + 1}/{groups}: label-noise member fitted on {len(train)} states")
    return scale


def _is_numpy_array_file(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(6) == b"\x93NUMPY"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--oof", required=True, help="tools/gate_study.py --save's file for this table and pool")
    parser.add_argument("--inner-folds", type=int, default=5)
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 2.5, 3.0, 3.5])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0, 1.25, 1.5])
    parser.add_argument("--reference", type=float, default=3.5, help="the reference gate's c (with k = --reference-weight)")
    parser.add_argument("--reference-weight", type=float, default=0.0, help="the reference gate's k (default 0)")
    parser.add_argument("--mean-tolerance", type=float, default=1.0,
                        help="admit grid points whose means are at most this times the reference's")
    parser.add_argument("--min-cut", type=float, default=0.10,
                        help="adopt the choice only with at least this share fewer worse Emu-recipe states")
    parser.add_argument("--save", help="write the nested scales a(x) to this .npy")
    parser.add_argument("--overwrite", action="store_true", help="let --save replace a file that is not a NumPy .npy")
    args = parser.parse_args()
    check_count("--inner-folds", args.inner_folds, 2)
    check_numbers("--factors", args.factors, strict=True)  # the gate's c: ensemble.error_per_spread > 0
    check_numbers("--weights", args.weights)  # k: noise.weight >= 0
    check_numbers("--reference", args.reference, strict=True)
    check_numbers("--reference-weight", args.reference_weight)
    check_numbers("--mean-tolerance", args.mean_tolerance, strict=True)
    check_numbers("--min-cut", args.min_cut, highest=1.0)  # a share of the worse states
    config = et.EnsembleConfig.load(args.config)
    if args.save:  # before the fits: never over --oof, the config or its table, nor an unrelated file
        check_save_path(args.save, [args.oof, args.config, config.data_path], _is_numpy_array_file,
                        "a NumPy .npy array (an earlier --save)", args.overwrite)
    saved = read_out_of_fold(args.oof, "--oof")  # read once: the states matched are the states studied; before the table
    torch.set_num_threads(config.threads)
    table = et.load_table(config.data_path)
    found, residual = out_of_fold_match(args.oof, table, config, saved)
    delta_box, delta_true, r, sigma, d2, emu = (saved[k] for k in ("delta_box", "delta_true", "r", "sigma", "d2", "emu"))
    matched = found >= 0  # on a table grown since, the few states whose deltas are not unique drop out
    if not matched.all():
        print(f"{args.oof}: {int((~matched).sum())} of its {len(found)} states not found by their deltas in "
              f"{config.data_path}; studied without them")
    rows, residual = found[matched], residual[matched]
    delta_box, delta_true, r, sigma, d2, emu = (a[matched] for a in (delta_box, delta_true, r, sigma, d2, emu))
    r_scale = float(np.std(table["r"][rows]))
    scale = nested_noise_scale(table, rows, residual, config, r_scale, args.inner_folds)
    if args.save:
        numpy_save_atomic(args.save, scale)  # a killed run leaves an earlier file whole
    box = state_error(delta_box, delta_true)
    distance = np.exp(-np.maximum(0.0, d2 - 1.0))

    def scores(c: float, k: float) -> dict:
        total = np.sqrt(sigma ** 2 + (k * scale / c) ** 2)
        gate = spread_gate(torch.from_numpy(r), torch.from_numpy(total), torch.tensor(1.0, dtype=torch.float64),
                           torch.tensor(c, dtype=torch.float64)).numpy()
        model = state_error(delta_box + r * gate * distance, delta_true)
        worse = model - box > 0.0025
        return {"emu": model[emu].mean(), "all": model.mean(), "worse_emu": int(worse[emu].sum()),
                "worse_all": int(worse.sum())}

    print(f"{len(rows)} pool states ({int(emu.sum())} of the Emu recipe); Box3D: Emu recipe {box[emu].mean():.5f}, "
          f"all {box.mean():.5f}")
    reference = scores(args.reference, args.reference_weight)
    print(f"{'c':>5} {'k':>5}  {'Emu recipe':>10} {'worse':>6}  {'all':>8} {'worse':>6}")
    grid = {}
    for c in args.factors:
        for k in args.weights:
            grid[c, k] = s = scores(c, k)
            print(f"{c:5g} {k:5g}  {s['emu']:10.5f} {s['worse_emu']:6d}  {s['all']:8.5f} {s['worse_all']:6d}")
    bound = args.mean_tolerance
    allowed = {key: s for key, s in grid.items()
               if s["emu"] <= bound * reference["emu"] and s["all"] <= bound * reference["all"]}
    best = min(allowed, key=lambda key: (allowed[key]["worse_emu"], allowed[key]["emu"]))
    cut = 1 - allowed[best]["worse_emu"] / max(reference["worse_emu"], 1)
    verdict = "adopt" if cut >= args.min_cut else "keep the reference"
    print(f"reference c = {args.reference:g}, k = {args.reference_weight:g}: Emu recipe {reference['emu']:.5f}, {reference['worse_emu']} worse; "
          f"rule's choice c = {best[0]:g}, k = {best[1]:g}: {allowed[best]['worse_emu']} worse ({100 * cut:.0f}% fewer) "
          f"-> {verdict}")


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
