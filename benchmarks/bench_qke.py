"""Cost of Dodo's fast-flavour QKE solver: the compiled kernel beside the NumPy solver, same run.

    python benchmarks/bench_qke.py                         # 64x92 and 32x24, 1 and 2 processes
    python benchmarks/bench_qke.py --resolutions 64x16 --steps 40 --repeats 7 --full

For each resolution (cells x Emu uniform_sphere(nphi) directions) and backend it times blocks
of ``--steps`` Lawson-RK4 steps of one NSM1 simulation (``--repeats`` blocks, median) and
converts with the number of steps an NSM1 run needs at the default time step (end time
1.2e-9 s, as Emu's NSM1 run): s per state = steps x s per step, sims/hour = 3600 / that.
"2 procs" runs the same measurement in two processes at once (both cores busy, as a campaign
runs) and reports the machine's sims/hour (sum over the two); "2thr" is one process stepping a
batch of two simulations on two threads (``dodo simulate --threads 2 --batch-size 2``), its
columns per simulation. The ratio column is the NumPy
solver's cost over the compiled kernel's, measured in the same run. Wall and CPU time per step
are both printed: on a shared machine the CPU time is the steadier measure of cost.
Anchor: the real Emu code needs 70-300 s of one core per 1D state at 64 x 92 (walltime(s) in
tests/data/qke/emu_nsm1_1d.h5: 308 s for NSM1 at 64 cells x 92 directions).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import signal
import statistics
import time

import numpy as np

import sys as _sys
import pathlib as _pathlib
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))
from _options import positive_int, resolution as resolution_type, run_main  # noqa: E402

from dodo.qke.backends import make_box
from dodo.qke.solver import SolverConfig
from dodo.qke.states import NSM1_EMU_1D

NSM1_END_TIME_S = 1.2e-9
NSM1_BOX_CM = 4.0
BACKENDS = ("numpy", "cpp")


def time_per_step(backend: str, ncell: int, nphi: int, steps: int, repeats: int, start_together=None,
                  batch: int = 1, threads: int = 1) -> dict:
    """Median wall and CPU seconds per step of a batch of NSM1 simulations, and the steps of a full run."""
    box = make_box(np.repeat(NSM1_EMU_1D[None], batch, axis=0), NSM1_BOX_CM,
                   SolverConfig(ncell=ncell, nphi_equator=nphi, backend=backend), threads=threads)
    dt, nsteps = box.time_steps(np.full(batch, NSM1_END_TIME_S))
    box.step(dt)  # warm-up (the kernel builds its phases on the first step)
    if start_together is not None:
        start_together.wait()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            box.step(dt)
        walls.append((time.perf_counter() - wall) / steps)
        cpus.append((time.process_time() - cpu) / steps)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "nsteps": nsteps,
            "ndir": len(box.directions)}


def _worker(arguments, barrier, results):
    results.put(time_per_step(*arguments, start_together=barrier))


def concurrently(processes: int, arguments: tuple) -> list[dict]:
    """The same measurement in several processes started together (spawned: no shared state)."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_worker, args=(arguments, barrier, results)) for _ in range(processes)]
    # The workers start with SIGINT ignored (a terminal's Ctrl-C reaches the whole process group: each
    # printed a KeyboardInterrupt traceback); this process stops them on an interrupt instead.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        measured = [results.get() for _ in workers]
    except BaseException:
        for worker in workers:
            worker.terminate()
        raise
    finally:
        for worker in workers:
            worker.join()
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", nargs="+", type=resolution_type, default=["64x16", "32x8"], help="CELLSxNPHI (nphi 16 = 92 directions)")
    parser.add_argument("--steps", type=positive_int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed blocks (the median is reported)")
    parser.add_argument("--processes", nargs="+", type=positive_int, default=[1, 2], help="concurrent processes to measure")
    parser.add_argument("--full", action="store_true", help="also time one complete NSM1 run per resolution and backend")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="also time one process stepping a batch of this many simulations on as many threads "
                             "(compiled kernel; per-simulation columns; 1: skip)")
    parser.add_argument("--count-steps", nargs=3, metavar=("BACKEND", "CELLSxNPHI", "N"),
                        help="no timing: make one NSM1 box and take 1 + N steps (for instruction counts under "
                             "callgrind, see qke_instructions.sh)")
    args = parser.parse_args()
    if args.count_steps:
        backend, resolution, count = args.count_steps
        ncell, nphi = (int(x) for x in resolution.split("x"))
        box = make_box(NSM1_EMU_1D[None], NSM1_BOX_CM, SolverConfig(ncell=ncell, nphi_equator=nphi, backend=backend))
        dt, _ = box.time_steps(np.array([NSM1_END_TIME_S]))
        for _ in range(1 + int(count)):
            box.step(dt)
        return 0
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at start; NSM1 state, one simulation per process")
    print(f"{'cells':>5} {'dirs':>4} {'backend':>7} {'procs':>5} {'steps/run':>9} {'wall ms/step':>12} "
          f"{'cpu ms/step':>11} {'s/state':>7} {'sims/hour':>9} {'numpy/cpp':>9}")
    for resolution in args.resolutions:
        ncell, nphi = (int(x) for x in resolution.split("x"))
        for processes in args.processes:
            rows = {}
            for backend in BACKENDS:
                arguments = (backend, ncell, nphi, args.steps, args.repeats)
                measured = [time_per_step(*arguments)] if processes == 1 else concurrently(processes, arguments)
                wall = statistics.median(m["wall"] for m in measured)
                rows[backend] = {"wall": wall, "cpu": statistics.median(m["cpu"] for m in measured),
                                 "nsteps": measured[0]["nsteps"], "ndir": measured[0]["ndir"],
                                 "per_hour": sum(3600.0 / (m["wall"] * m["nsteps"]) for m in measured)}
            for backend in BACKENDS:
                row = rows[backend]
                ratio = "" if backend == "numpy" else f"{rows['numpy']['wall'] / row['wall']:.2f}"
                print(f"{ncell:>5} {row['ndir']:>4} {backend:>7} {processes:>5} {row['nsteps']:>9} "
                      f"{1e3 * row['wall']:>12.2f} {1e3 * row['cpu']:>11.2f} {row['wall'] * row['nsteps']:>7.2f} "
                      f"{row['per_hour']:>9.0f} {ratio:>9}", flush=True)
        if args.threads > 1:  # one process, a batch of `threads` simulations on as many threads
            measured = time_per_step("cpp", ncell, nphi, args.steps, args.repeats, batch=args.threads,
                                     threads=args.threads)
            per_state = measured["wall"] * measured["nsteps"] / args.threads
            print(f"{ncell:>5} {measured['ndir']:>4} {'cpp':>7} {str(args.threads) + 'thr':>5} {measured['nsteps']:>9} "
                  f"{1e3 * measured['wall'] / args.threads:>12.2f} {1e3 * measured['cpu'] / args.threads:>11.2f} "
                  f"{per_state:>7.2f} {3600 / per_state:>9.0f}", flush=True)
        if args.full:
            for backend in BACKENDS:
                box = make_box(NSM1_EMU_1D[None], NSM1_BOX_CM, SolverConfig(ncell=ncell, nphi_equator=nphi, backend=backend))
                start = time.perf_counter()
                box.run(np.array([NSM1_END_TIME_S]))
                print(f"# full NSM1 run at {ncell} x {len(box.directions)}, {backend}: "
                      f"{time.perf_counter() - start:.2f} s wall (incl. recording)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
