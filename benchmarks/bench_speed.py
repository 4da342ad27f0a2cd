#!/usr/bin/env python3
"""Closure speed in one run: Box3D, the network, the full closure, a stable-heavy grid and the naive
Python composition, beside the NumPy oracle of the test suite as the anchor (issue 13).

    python benchmarks/bench_speed.py                      # 1e6 moving cells, 1 and 2 threads
    python benchmarks/bench_speed.py --cells 200000 --callgrind

Every row is measured in this run on the same kind of cells: random realizable states (flux
factors up to 0.9, random directions), boosted with |v| < 0.6, Lebedev order 17, exact Z.
  oracle     tests/python/box3d_oracle.py (vectorised NumPy Box3D), --oracle-cells cells
  box3d      dodo.box3d (C++ core)
  network    the default model alone: onnxruntime Python session, 1 intra-op thread, chunks of
             1024 rows of precomputed float32 invariants
  native     the same network on the runtime's own evaluator (dodo._core.NativeNetwork, what the
             closure runs on the CPU for a package with "dodo.native_network"), same chunks
  closure    dodo.Closure with the default model (Box3D + invariants + network + head,
             projection, limiter + boosts)
  stable 80% the closure on a grid where 80% of the cells are stable as in a merger's M1 data
             (the four heavy species equal, nu_e/nubar_e without ELN crossing) and 20% are the
             crossing cells above
  naive      the same pipeline composed in Python (dodo.box3d, NumPy invariants and glue, one
             onnxruntime call): benchmarks/bench_closure.py's naive_closure
box3d, closure and stable 80% write into output arrays made once before the timing (``out=``, as a
simulation's time loop calls them), so no row pays for fresh pages (page faults and the kernel's
zeroing); the network and naive rows allocate their outputs per call, as onnxruntime's Python
session and the NumPy composition do. box3d, closure and stable 80% run in turns, one repeat of
each per round, and their ratios ("vs box3d", "x the all-crossing closure") are the medians of the
rounds' ratios (min-max beside them): a load change between rows measured minutes apart moved
those ratios by ~0.05 on a shared VM.
Rates: cells per second of wall time (median of --repeats, min-max) and per core: cells per
second of this process's CPU time (summed over its threads, so already per core; other programs
on a shared machine disturb it less than wall time). --callgrind adds instructions per cell (valgrind's callgrind on a small run:
--callgrind-cells cells set up once and run three times against once, so set-up and start-up
cancel), which do not depend on the machine's load; only the main thread's count (see
callgrind_instructions). Valgrind does not emulate AVX-512: these count the AVX2 code path.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))
sys.path.insert(0, str(HERE))

PIPELINES = ("oracle", "box3d", "network", "native", "closure", "stable80", "naive")
# Measured in turns (one repeat of each, then the next round), so that each ratio between them is
# taken from runs seconds apart under the same load: the ratios are medians over the rounds.
INTERLEAVED = ("box3d", "closure", "stable80")


def moving_cells(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    import dodo
    from conftest import random_states, random_velocities

    rng = np.random.default_rng(seed)
    u = random_velocities(rng, n, max_speed=0.6)
    return dodo.boost_from_rest(random_states(rng, n), u[:, None, :]), u


def stable_heavy_cells(n: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """80% stable M1-like cells (heavy species equal; nu_e, nubar_e without crossing), 20% random."""
    import dodo
    from conftest import random_states, random_velocities

    rng = np.random.default_rng(seed)
    n_stable = int(0.8 * n)
    pool, found = [], 0
    while found < n_stable:
        F = random_states(rng, n, scale=1e33)
        F[:, 2] = F[:, 4] = F[:, 5] = F[:, 1]  # nu_mu = nu_tau = nubar_mu = nubar_tau
        F[:, 3] *= rng.uniform(0.2, 0.7, (n, 1))  # fewer nubar_e than nu_e
        pool.append(F[dodo.box3d(F).status == int(dodo.CellStatus.NO_CROSSING)])
        found += len(pool[-1])
    rest = np.concatenate([np.concatenate(pool)[:n_stable], random_states(rng, n - n_stable)])[rng.permutation(n)]
    u = random_velocities(rng, n, max_speed=0.6)
    return dodo.boost_from_rest(rest, u[:, None, :]), u


def make_pipeline(name: str, n: int, threads: int, oracle_cells: int):
    """(function, cells) for one row; the cells are made here, outside the timing."""
    import onnxruntime

    import dodo

    model = str(dodo.models.default_model_path())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if name == "oracle":
        import box3d_oracle

        F, u = moving_cells(oracle_cells)
        return (lambda: box3d_oracle.box3d(F, u, order=17, z_method="exact")), oracle_cells
    if name == "box3d":
        F, u = moving_cells(n)
        dodo.box3d(F[:2048], u[:2048], threads=threads)  # per-thread scratch
        box_out = dodo.Box3DResult.empty(n)  # as a time loop: outputs kept between calls
        return (lambda: dodo.box3d(F, u, threads=threads, out=box_out)), n
    if name in ("network", "native"):
        F, u = moving_cells(n)
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feature_set = session.get_modelmeta().custom_metadata_map.get("dodo.features", "invariants27-v1")
        if feature_set == "invariants27-v1":
            features = dodo.invariants(F, u).astype(np.float32)
        else:  # the model's own feature set (the same columns the runtime builds)
            from dodo.training.features import lab_features

            features = lab_features(feature_set, F, u).astype(np.float32)

        def network():  # every graph output (head, and the optional uncertainty and growth)
            for start in range(0, n, 1024):
                session.run(None, {"invariants": features[start:start + 1024]})

        if name == "native":  # the closure's own evaluator of the same network (native_network.hpp)
            evaluator = dodo._core.NativeNetwork(pathlib.Path(model).read_bytes())

            def network():
                for start in range(0, n, 1024):
                    evaluator.evaluate(features[start:start + 1024])
        network()
        return network, n
    if name in ("closure", "stable80"):
        F, u = moving_cells(n) if name == "closure" else stable_heavy_cells(n)
        closure = dodo.Closure(model, threads=threads)
        closure.apply(F[:2048], u[:2048])
        closure_out = dodo.ClosureResult.empty(n)
        return (lambda: closure.apply(F, u, out=closure_out)), n
    if name == "naive":
        from bench_closure import naive_closure

        F, u = moving_cells(n)
        naive_options = onnxruntime.SessionOptions()
        naive_options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(model, naive_options, providers=["CPUExecutionProvider"])
        head = dodo.Closure(model).head
        naive_closure(F[:2048], u[:2048], session, head, threads)
        return (lambda: naive_closure(F, u, session, head, threads)), n
    raise ValueError(name)


def measure(function, repeats: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def callgrind_instructions(name: str, cells: int, runs: int) -> int:
    """Instructions of the main thread of a fresh process that sets up `name` on `cells` cells and
    runs it `runs` times. Only the main thread counts (every row runs there with one thread): idle
    helper threads of other libraries (OpenBLAS's, onnxruntime's) poll under valgrind's
    serialised scheduler, which adds instructions in proportion to the run's duration, not to
    its work; on hardware they sleep."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--worker", name, "--runs", str(runs), "--cells", str(cells),
                        "--oracle-cells", str(cells), "--threads", "1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = pathlib.Path(f"{out}-01").read_text()  # thread 1: the main thread
        return int(re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--oracle-cells", type=int, default=20_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--callgrind", action="store_true", help="add instructions per cell (valgrind, a few minutes)")
    parser.add_argument("--callgrind-cells", type=int, default=2000)
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one pipeline, set up and run once (under callgrind)
        function, _ = make_pipeline(args.worker, args.cells, args.threads[0], args.oracle_cells)
        for _ in range(args.runs):
            function()
        return 0

    import onnxruntime

    import dodo

    print(f"# dodo {dodo.__version__}, onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.cells:,} moving cells, order 17, exact Z; "
          f"median of {args.repeats}")
    rows = []
    round_ratios = {}  # (name, threads) -> per-round ratio to its reference row
    for threads in args.threads:
        for name in PIPELINES:
            # Single-threaded by construction; the oracle, the anchor of every row, runs once with
            # the first thread count asked for (`--threads 2` alone still has its anchor).
            if name in ("network", "native") and threads > 1:
                continue
            if name == "oracle" and threads != args.threads[0]:
                continue
            if name in INTERLEAVED[1:]:
                continue  # measured with box3d
            names = INTERLEAVED if name == INTERLEAVED[0] else (name,)
            functions = [make_pipeline(each, args.cells, threads, args.oracle_cells) for each in names]
            repeats = 1 if name == "naive" and args.cells > 200_000 else args.repeats
            timings = [([], []) for _ in names]
            if len(names) > 1:  # one untimed call each: the outputs' pages touched, as in a time loop's later steps
                for function, _cells in functions:
                    function()
            for _ in range(repeats):
                for (function, _cells), (walls, cpus) in zip(functions, timings):
                    wall, cpu = measure(function, 1)
                    walls += wall
                    cpus += cpu
            if len(names) > 1:  # closure / box3d and stable80 / closure, round by round (CPU time)
                box_cpu, closure_cpu, stable_cpu = (cpus for _, cpus in timings)
                round_ratios[("closure", threads)] = [b / c for b, c in zip(box_cpu, closure_cpu)]
                round_ratios[("stable80", threads)] = [c / s for c, s in zip(closure_cpu, stable_cpu)]
            for each, (_function, cells), (walls, cpus) in zip(names, functions, timings):
                instructions = None
                if args.callgrind and threads == 1:
                    small = args.callgrind_cells
                    instructions = (callgrind_instructions(each, small, 3) - callgrind_instructions(each, small, 1)) / (2 * small)
                rows.append((each, threads, cells, walls, cpus, instructions))
            del functions

    anchor = next(cells / statistics.median(c) for name, _, cells, _, c, _ in rows if name == "oracle")
    reference = {threads: cells / statistics.median(c) for name, threads, cells, _, c, _ in rows if name == "box3d"}
    print("| pipeline | threads | cells | cells/s (wall, min-max) | cells/s per core (CPU time) | vs oracle | vs box3d | "
          "instructions/cell |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, threads, cells, walls, cpus, instructions in rows:
        per_core = cells / statistics.median(cpus)
        wall = f"{cells / statistics.median(walls):,.0f} ({cells / max(walls):,.0f}-{cells / min(walls):,.0f})"
        versus_box3d = f"{per_core / reference[threads]:.2f}" if threads in reference else ""
        if name == "closure":  # the rounds' ratios: box3d and the closure measured seconds apart
            ratios = round_ratios[(name, threads)]
            versus_box3d = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        if name == "stable80":
            ratios = round_ratios[(name, threads)]
            versus_box3d += (f" ({statistics.median(ratios):.1f}x the all-crossing closure, "
                             f"{min(ratios):.1f}-{max(ratios):.1f})")
        counted = f"{instructions:,.0f}" if instructions is not None else ""
        print(f"| {name} | {threads} | {cells:,} | {wall} | {per_core:,.0f} | {per_core / anchor:,.0f}x | {versus_box3d} | "
              f"{counted} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
