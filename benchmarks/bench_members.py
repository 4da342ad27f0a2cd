"""Fitting an ensemble's members: one torch thread, T torch threads, or P worker processes.

    python benchmarks/bench_members.py                       # 4 members of the shipped shape
    python benchmarks/bench_members.py --rows 20000 --epochs 2   # quick

The members have the default model's shape (52 inputs, 128 x 3, mini-batches of 256;
training/configs/ensemble_default.yaml) and are fitted on synthetic rows, in one run per way:
sequentially with one torch thread (the anchor), sequentially with --threads torch threads
(`ensemble.threads`), and --processes at once in worker processes of one thread each
(`ensemble.processes`, dodo.training.member_processes). Wall seconds, members per minute and the
ratio against the anchor, the median of --repeats runs. On a machine whose cores other jobs share,
threads lose (OpenMP's barriers wait for a thread put aside) where processes do not.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _options import positive_int, run_main  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=positive_int, default=4)
    parser.add_argument("--rows", type=positive_int, default=100_000)
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads of the second way")
    parser.add_argument("--processes", type=positive_int, default=2, help="worker processes of the third way")
    parser.add_argument("--repeats", type=positive_int, default=1)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from dodo.training.ensemble import fit_ensemble

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, 52))
    r = np.tanh(X[:, 0]) * 0.01
    g = 0.1 * X[:, 1]
    options = dict(width=128, depth=3, batch_size=256, epochs=args.epochs, lr=2e-3, weight_decay=1e-4,
                   growth_weight=0.5)

    def run(threads: int, processes: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        fit_ensemble(X, r, g, members=args.members, processes=processes, **options)
        return time.perf_counter() - start

    ways = [("1 thread (anchor)", 1, 1), (f"{args.threads} threads", args.threads, 1),
            (f"{args.processes} processes x 1 thread", 1, args.processes)]
    walls = {name: [] for name, _, _ in ways}
    for _ in range(args.repeats):  # interleaved, so that a change of load hits every way
        for name, threads, processes in ways:
            walls[name].append(run(threads, processes))
    anchor = statistics.median(walls[ways[0][0]])
    print(f"{args.members} members, {args.rows} rows, {args.epochs} epochs of 256, 128 x 3, "
          f"{(args.rows + 255) // 256 * args.epochs} steps a member; median of {args.repeats}")
    print("| way | wall s | members / min | speed-up against 1 thread |")
    print("|---|---:|---:|---:|")
    for name, _, _ in ways:
        wall = statistics.median(walls[name])
        print(f"| {name} | {wall:.1f} | {60 * args.members / wall:.2f} | {anchor / wall:.2f}x |")
    return 0


if __name__ == "__main__":
    run_main(main)
