"""Throughput of Dodo's fast-flavour QKE solver: simulations per hour per resolution.

    python benchmarks/bench_qke.py                      # 4 resolutions, batch 1 and 8, NSM1 state
    python benchmarks/bench_qke.py --resolutions 64x16 --batch-sizes 1 4 8 --full

For each resolution (cells x Emu uniform_sphere(nphi) directions) and batch size it times
``--steps`` Lawson-RK4 steps on copies of the NSM1 state (different seeds) and converts with
the number of steps an NSM1 run needs at the default time step (end time 1.2e-9 s, as Emu's
NSM1 run): simulations per hour = 3600 / (steps x seconds per simulation-step), one process.
``--full`` also runs one complete NSM1 simulation at each resolution and reports its wall time.
Anchor: the real Emu code needs 70-300 s of one core per 1D state at 64 x 92 (walltime(s) in
tests/data/qke/emu_nsm1_1d.h5: 308 s for NSM1 at 64 cells x 92 directions).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from dodo.qke.solver import FastFlavourBox, SolverConfig
from dodo.qke.states import NSM1_EMU_1D

NSM1 = NSM1_EMU_1D
NSM1_END_TIME_S = 1.2e-9
NSM1_BOX_CM = 4.0


def seconds_per_simulation_step(ncell: int, nphi: int, batch: int, steps: int) -> tuple[float, int]:
    box = FastFlavourBox(np.repeat(NSM1[None], batch, axis=0), NSM1_BOX_CM, SolverConfig(ncell=ncell, nphi_equator=nphi))
    dt, nsteps = box.time_steps(np.full(batch, NSM1_END_TIME_S))
    box.step(dt)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        box.step(dt)
    return (time.perf_counter() - start) / (steps * batch), nsteps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", nargs="+", default=["32x8", "64x12", "64x16", "128x16"],
                        help="CELLSxNPHI (nphi 16 = 92 directions)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="also time one complete NSM1 run per resolution")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, numpy {np.__version__}, one process")
    print(f"{'cells':>6} {'dirs':>5} {'batch':>5} {'steps/run':>9} {'ms/sim-step':>11} {'s/sim':>7} {'sims/hour':>9}")
    for resolution in args.resolutions:
        ncell, nphi = (int(x) for x in resolution.split("x"))
        ndir = len(FastFlavourBox(NSM1[None], 4.0, SolverConfig(ncell=ncell, nphi_equator=nphi)).directions)
        for batch in args.batch_sizes:
            per_step, nsteps = seconds_per_simulation_step(ncell, nphi, batch, args.steps)
            per_sim = per_step * nsteps
            print(f"{ncell:>6} {ndir:>5} {batch:>5} {nsteps:>9} {1e3 * per_step:>11.2f} {per_sim:>7.1f} {3600 / per_sim:>9.0f}",
                  flush=True)
        if args.full:
            box = FastFlavourBox(NSM1[None], NSM1_BOX_CM, SolverConfig(ncell=ncell, nphi_equator=nphi))
            start = time.perf_counter()
            box.run(np.array([NSM1_END_TIME_S]))
            print(f"# full NSM1 run at {ncell} x {ndir}: {time.perf_counter() - start:.1f} s wall", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
