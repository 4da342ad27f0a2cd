#!/usr/bin/env python3
"""Box3D throughput: the C++ core (1 thread and all cores) against the NumPy oracle, same run.

    python benchmarks/bench_box3d.py [--cells 200000] [--oracle-cells 20000] [--repeats 5] [--order 17]

Prints median cells/s over the repeats (min and max beside it) and the ratio to the anchor,
the vectorised NumPy oracle of the test suite (tests/python/box3d_oracle.py) measured in the
same run on the same kind of random crossing states. Needs scipy (the oracle's quadrature).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np

import dodo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
import box3d_oracle  # noqa: E402
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _options import positive_int, run_main  # noqa: E402
from conftest import random_states  # noqa: E402


def cells_per_second(function, cells: int, repeats: int) -> tuple[float, float, float]:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        rates.append(cells / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=positive_int, default=200_000)
    parser.add_argument("--oracle-cells", type=positive_int, default=20_000)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--order", type=positive_int, default=17)
    parser.add_argument("--z-method", default="exact", choices=("exact", "jedynak"))
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    # As many states as the larger count: the oracle's rate divides by --oracle-cells, so it must run
    # that many (it ran min(--cells, --oracle-cells) and so overstated the anchor when --cells was smaller).
    states = random_states(rng, max(args.cells, args.oracle_cells))
    oracle_states = states[: args.oracle_cells]
    states = states[: args.cells]
    cores = os.cpu_count() or 1
    dodo.box3d(states[:1000], lebedev_order=args.order)  # warm-up: tables, per-thread scratch

    rows = []
    anchor = cells_per_second(lambda: box3d_oracle.box3d(oracle_states, order=args.order, z_method=args.z_method),
                              args.oracle_cells, args.repeats)
    rows.append(("NumPy oracle (anchor)", 1, args.oracle_cells, anchor))
    for threads in sorted({1, cores}):
        rate = cells_per_second(
            lambda: dodo.box3d(states, lebedev_order=args.order, z_method=args.z_method, threads=threads),
            args.cells, args.repeats)
        rows.append((f"C++ core, {threads} thread{'s' if threads > 1 else ''}", threads, args.cells, rate))

    print(f"Box3D, Lebedev order {args.order}, z_method {args.z_method}, {cores} cores, "
          f"median of {args.repeats} runs (min-max)")
    header = f"{'implementation':<24}{'cells':>9}{'cells/s':>12}{'min-max':>22}{'per core':>12}{'vs anchor':>11}"
    print(header)
    print("-" * len(header))
    for name, threads, cells, (median, low, high) in rows:
        print(f"{name:<24}{cells:>9}{median:>12.0f}{f'{low:.0f}-{high:.0f}':>22}{median / threads:>12.0f}"
              f"{median / anchor[0]:>10.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
