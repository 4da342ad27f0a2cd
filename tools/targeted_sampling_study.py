"""Does labelling the states where the ensemble disagrees beat labelling random ones? (issue 10,
"targeted sampling where the ensemble disagrees"). Pool-based and retrospective: every candidate is
a state the campaign has already solved, so the arms differ only in which labels they are given.

The training pool (held-out files excluded, as in training) is shuffled once: --eval rows are the
evaluation set, the rest candidates. Density members of the config's recipe are fitted on --base
random candidates; their spread (sigma, the uncertainty the gate uses) scores the other candidates.
Each arm adds --add candidates to the base and is fitted afresh:

  random      --add random candidates (seed 2)
  random-2    another random draw (seed 3): how far two random arms scatter
  top-sigma   the --add candidates of largest sigma
  prop-sigma  drawn without replacement with probability proportional to sigma (seed 4)
  family-top-sigma, family-prop-sigma
              the random arm's count of each family, chosen inside the family as above

and scored on the evaluation rows: gated and ungated mean |dn|/N_tot, states worse than Box3D by
more than 0.0025 N_tot, for all rows and the Emu-recipe ones, with the paired 95% bootstrap interval
of (arm - random) per state, and the families the arm drew. Nothing here reads the held-out files
or emu_1d_validation.h5.

    python tools/targeted_sampling_study.py [--config C] [--eval 16000] [--base 4000] [--add 4000]
        [--members 4] [--threads 2] [--arms random,random-2,top-sigma,prop-sigma,family-top-sigma,family-prop-sigma] [--json OUT]
        [--overwrite]

--json is checked before any fit (never the config or its table, nor a file that is not an earlier
--json of this study unless --overwrite) and written atomically.

About ten minutes an arm on two busy cores at the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from dodo.training import ensemble_train as et
from dodo.training.ensemble import state_error
from dodo._atomic import write_json_atomic
from study_common import MAX_THREADS, FoldZero, check_count, check_save_path, fit_members, run_study, score_members

#: The keys every --json table of this study holds (an earlier one may be replaced without --overwrite).
TABLE_KEYS = ("eval", "eval_emu", "base", "add", "members", "box3d", "box3d_emu", "base_fit", "arms")


def _holds_own_table(path) -> bool:
    """Whether ``path`` holds an earlier --json table of this study (a JSON object with its keys)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and all(key in document for key in TABLE_KEYS)

ARMS = ("random", "random-2", "top-sigma", "prop-sigma", "family-top-sigma", "family-prop-sigma")


def family_of(sources) -> np.ndarray:
    return np.array([Path(str(source)).name.split("_seed")[0] for source in sources])


def members_spread(ensemble, X: np.ndarray) -> np.ndarray:
    """The members' own spread of the density residual (no label-noise term: none is fitted here)."""
    with torch.no_grad():
        _, sigma, _ = ensemble.teacher_outputs(torch.as_tensor(X, dtype=torch.float32))
    return sigma.double().numpy()


def pick(arm: str, candidates: np.ndarray, sigma: np.ndarray, count: int, families: np.ndarray) -> np.ndarray:
    """``count`` of ``candidates`` (sigma: their spreads; families: their families; both in the same
    order) for ``arm``."""
    if arm.startswith("family-"):
        # The random arm's count of each family, chosen inside the family by the arm's rule: sigma
        # is in units of N_tot, so across families it picks the families with large residuals.
        randomly = np.isin(candidates, pick("random", candidates, sigma, count, families))
        inner = arm[len("family-"):]
        chosen = [pick(inner, candidates[families == f], sigma[families == f], int((randomly & (families == f)).sum()),
                       families[families == f]) for f in np.unique(families)]
        return np.concatenate(chosen)
    if arm == "random":
        return np.random.default_rng(2).choice(candidates, count, replace=False)
    if arm == "random-2":
        return np.random.default_rng(3).choice(candidates, count, replace=False)
    if arm == "top-sigma":
        return candidates[np.argsort(-sigma, kind="stable")[:count]]
    if arm == "prop-sigma":
        return np.random.default_rng(4).choice(candidates, count, replace=False, p=sigma / sigma.sum())
    raise ValueError(f"--arms: unknown arm {arm!r}; known: {', '.join(ARMS)}")


def paired_interval(difference: np.ndarray, resamples: int = 2000) -> tuple[float, float]:
    return et.bootstrap_mean_interval(difference, resamples=resamples, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--eval", type=int, default=16000, help="evaluation rows drawn from the pool")
    parser.add_argument("--base", type=int, default=4000)
    parser.add_argument("--add", type=int, default=4000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--json", help="write the table here too")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --json replace a file that is not an earlier --json table of this study")
    args = parser.parse_args()
    for option in ("eval", "base", "add", "members"):
        check_count(f"--{option}", getattr(args, option), 2 if option == "base" else 1)
    check_count("--threads", args.threads, 1, MAX_THREADS)
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"--arms: unknown arm {arm!r}; known: {', '.join(ARMS)}")
    if "random" not in arms:
        arms.insert(0, "random")  # the anchor of every paired interval

    config = dataclasses.replace(et.EnsembleConfig.load(args.config), threads=args.threads)
    if args.json:
        # Before the fits (about ten minutes an arm), as the other studies' --save: the table was written
        # at the end with Path.write_text, unchecked and in place, so `--json C.yaml` (the config, or its
        # table) destroyed the input after the whole study, any file there was replaced without a word, a
        # path that cannot be written failed only after every arm, and a kill or a full disk during the
        # write left a torn file under the name (data-loss probe, round five).
        check_save_path(args.json, [args.config, config.data_path], _holds_own_table,
                        "an earlier --json table of this study", args.overwrite)
    torch.set_num_threads(args.threads)
    table = et.load_table(config.data_path)
    # By state, as train-ensemble: a copy of a held-out run under another file name is not in the pool.
    held, copies = et.held_out_rows(table, config.holdout)
    pool = np.flatnonzero(~held & ~copies)
    if args.eval + args.base + args.add > len(pool):
        raise ValueError(f"--eval + --base + --add = {args.eval + args.base + args.add} exceeds the "
                         f"{len(pool)}-state training pool")
    order = np.random.default_rng(0).permutation(pool)
    test, candidates = np.sort(order[:args.eval]), order[args.eval:]
    base = np.random.default_rng(1).choice(candidates, args.base, replace=False)
    rest = np.setdiff1d(candidates, base)
    fold = FoldZero(table, base, test, et.is_emu_recipe(table["sources"][test]),
                    state_error(table["delta_box"][test], table["delta_true"][test]))
    emu = fold.emu
    X_test = et.features_of(table, test, config.features)
    print(f"pool {len(pool)} states: {len(test)} evaluation ({int(emu.sum())} Emu recipe; Box3D "
          f"{fold.box.mean():.5f} / {fold.box[emu].mean():.5f}), base {len(base)}, {len(rest)} further "
          f"candidates; {args.members} members per fit, {args.threads} threads", flush=True)

    started = time.monotonic()
    acquisition = fit_members(*et.training_arrays(table, base, config), config, args.members)
    base_scores = score_members(acquisition, X_test, fold, config)
    sigma = members_spread(acquisition, et.features_of(table, rest, config.features))
    print(f"base fit ({time.monotonic() - started:.0f} s): gated {base_scores.gated.mean():.5f} "
          f"(Emu {base_scores.gated[emu].mean():.5f}), {int(base_scores.worse.sum())} worse; candidates' "
          f"sigma median {np.median(sigma):.5f}, 90th percentile {np.percentile(sigma, 90):.5f}", flush=True)

    rest_families = family_of(table["sources"][rest])
    families = sorted(set(rest_families))
    results, per_state = {}, {}
    for arm in arms:
        started = time.monotonic()
        added = pick(arm, rest, sigma, args.add, rest_families)
        rows = np.concatenate([base, added])
        ensemble = fit_members(*et.training_arrays(table, rows, config), config, args.members)
        scores = score_members(ensemble, X_test, fold, config)
        drawn = family_of(table["sources"][added])
        per_state[arm] = scores
        results[arm] = {
            "gated": float(scores.gated.mean()), "gated_emu": float(scores.gated[emu].mean()),
            "ungated": float(scores.ungated.mean()), "ungated_emu": float(scores.ungated[emu].mean()),
            "worse": int(scores.worse.sum()), "worse_emu": int(scores.worse[emu].sum()),
            "added_families": {f: int((drawn == f).sum()) for f in families},
            "added_sigma_median": float(np.median(sigma[np.searchsorted(rest, added)])),
            "seconds": round(time.monotonic() - started),
        }
        anchor = per_state["random"]
        if arm != "random":
            results[arm]["minus_random_ci"] = paired_interval(scores.gated - anchor.gated)
            results[arm]["minus_random_emu_ci"] = paired_interval(scores.gated[emu] - anchor.gated[emu])
        print(format_row(arm, results[arm]), flush=True)

    print(f"\n| arm | gated mean (all {len(test)}) | Emu recipe ({int(emu.sum())}) | ungated all / Emu | "
          "worse than Box3D by > 0.0025 (Emu) | arm - random, all [95% CI] | Emu [95% CI] | added per family |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    for arm in arms:
        print(format_row(arm, results[arm], markdown=True))
    if args.json:
        summary = {"eval": len(test), "eval_emu": int(emu.sum()), "base": len(base), "add": args.add,
                   "members": args.members, "box3d": float(fold.box.mean()), "box3d_emu": float(fold.box[emu].mean()),
                   "base_fit": {"gated": float(base_scores.gated.mean()), "gated_emu": float(base_scores.gated[emu].mean()),
                                "worse": int(base_scores.worse.sum())},
                   "arms": results}
        write_json_atomic(args.json, summary)


def format_row(arm: str, row: dict, markdown: bool = False) -> str:
    ci = row.get("minus_random_ci")
    ci_emu = row.get("minus_random_emu_ci")
    interval = "-" if ci is None else f"[{ci[0]:+.5f}, {ci[1]:+.5f}]"
    interval_emu = "-" if ci_emu is None else f"[{ci_emu[0]:+.5f}, {ci_emu[1]:+.5f}]"
    added = ", ".join(f"{f} {n}" for f, n in row["added_families"].items())
    if markdown:
        return (f"| {arm} | {row['gated']:.5f} | {row['gated_emu']:.5f} | {row['ungated']:.5f} / "
                f"{row['ungated_emu']:.5f} | {row['worse']} ({row['worse_emu']}) | {interval} | {interval_emu} | {added} |")
    return (f"{arm:<11} gated {row['gated']:.5f} (Emu {row['gated_emu']:.5f}) ungated {row['ungated']:.5f} "
            f"worse {row['worse']} ({row['worse_emu']}) vs random {interval} Emu {interval_emu}; added: {added}; "
            f"{row['seconds']} s")


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
