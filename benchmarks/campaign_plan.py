"""On paper: how evenly a campaign of random states spreads over MPI ranks (issue 12).

    python benchmarks/campaign_plan.py --states 100000 --ranks 64 256 1024 4096

Draws random crossing states as `dodo simulate --random` does (--draw of them; the campaign's
--states are resampled from these, as drawing 10^5 takes many minutes), plans the batches and
assigns them to ranks exactly as `dodo simulate` under MPI does (dodo.qke.parallel), and reports the slowest rank's
load over the mean (1 = perfect). "estimate exact" takes the cost estimate as the true cost;
"estimate off by ~2x" multiplies every state's true cost by a random log-normal factor (sigma
ln 2 / 2, i.e. 95% within 2x), a guess at the estimate's error. Nothing is simulated.
"""
from __future__ import annotations

import argparse

import numpy as np

import sys as _sys
import pathlib as _pathlib
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))
from _options import positive_int, run_main  # noqa: E402

from dodo.qke.campaign import relative_cost
from dodo.qke.directions import uniform_sphere
from dodo.qke.parallel import assign_batches, plan_batches
from dodo.qke.states import NSM1_EMU_1D, random_crossing_states


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=positive_int, default=100000)
    parser.add_argument("--draw", type=positive_int, default=4000, help="distinct random states drawn")
    parser.add_argument("--ranks", type=positive_int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--batch-size", type=positive_int, default=2)
    parser.add_argument("--max-cost", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    directions = uniform_sphere(16)
    rng = np.random.default_rng(args.seed)
    states = random_crossing_states(args.draw, rng, max_flux_factor=0.8, max_tries=100 * args.draw)
    drawn = relative_cost(states, directions, None) / relative_cost(NSM1_EMU_1D[None], directions, None)[0]
    cost = drawn[rng.integers(0, len(drawn), args.states)]
    kept = cost <= args.max_cost
    batches = plan_batches(cost, kept, args.batch_size)
    estimated = np.array([len(b) * cost[b].max() for b in batches])
    noisy_cost = cost * np.exp(np.random.default_rng(0).normal(0.0, np.log(2) / 2, len(cost)))
    true_noisy = np.array([len(b) * noisy_cost[b].max() for b in batches])
    print(f"{args.states} random states (resampled from {args.draw}), {kept.sum()} below max_cost {args.max_cost}, {len(batches)} batches of "
          f"{args.batch_size}; estimated cost per state: median {np.median(cost[kept]):.2f}, mean "
          f"{cost[kept].mean():.2f} x NSM1")
    print("| ranks | batches per rank | slowest / mean, estimate exact | slowest / mean, estimate off by ~2x |")
    print("|---:|---:|---:|---:|")
    for nranks in args.ranks:
        owner = assign_batches(estimated, nranks)
        ratios = []
        for truth in (estimated, true_noisy):
            load = np.bincount(owner, weights=truth, minlength=nranks)
            ratios.append(load.max() / load.mean())
        print(f"| {nranks} | {len(batches) / nranks:.0f} | {ratios[0]:.3f} | {ratios[1]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
