#!/usr/bin/env python3
"""Two builds of Dodo's compiled extension (dodo._core) side by side, in alternating rounds: Box3D
and the full closure with the shipped default model (issue 13's A/B method, docs/speed.md).

    python benchmarks/bench_extensions.py OLD_CORE.so NEW_CORE.so [--cells 200000] [--rounds 6]
                                          [--seconds 2.5] [--pipelines box3d closure [stable80]]

A change to the C++ core is measured by keeping a copy of the extension before it (e.g.
`cp .venv/lib/python3.11/site-packages/dodo/_core*.so /tmp/old_core.so`, then rebuild) and running
both here. One process cannot load two builds of one module, so each measurement is a fresh
process that loads the given file as dodo._core before importing dodo; the rounds alternate which
build goes first, so that the load of a moment on a shared machine falls on both alike. Each
measurement: bench_speed.py's pipeline on its random moving cells, one thread, one untimed call,
then calls for --seconds of CPU time; the rate is cells per second of CPU time (per core).
The table gives, per pipeline, each build's median rate and the median over rounds of new / old,
and for each build the median over rounds of closure / Box3D (the ratio issue 13 asks about).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _options import positive_int, run_main  # noqa: E402

PIPELINES = ("box3d", "closure")
#: Also measurable (--pipelines): the 80%-stable grid, whose rate over the closure's is issue 13's third
#: target (a change that speeds the crossing cells alone lowers that ratio).
OPTIONAL_PIPELINES = ("stable80",)


def measure(core: str, pipeline: str, cells: int, seconds: float) -> float:
    """In this process: load `core` as dodo._core, then time one pipeline (cells/s of CPU time)."""
    spec = importlib.util.spec_from_file_location("dodo._core", core)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dodo._core"] = module  # dodo's own `from . import _core` finds this build
    spec.loader.exec_module(module)
    sys.path.insert(0, str(HERE.parent / "tests" / "python"))
    import bench_speed

    function, n = bench_speed.make_pipeline(pipeline, cells, 1, 1000)
    function()  # per-thread scratch, pages of the outputs
    calls, start = 0, time.process_time()
    while True:
        function()
        calls += 1
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return calls * n / elapsed


def seconds_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the extension before the change (a copy of dodo/_core*.so)")
    parser.add_argument("new", help="the extension after it")
    parser.add_argument("--cells", type=positive_int, default=200_000)
    parser.add_argument("--rounds", type=positive_int, default=6)
    parser.add_argument("--seconds", type=seconds_type, default=2.5, help="CPU seconds a measurement")
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES + OPTIONAL_PIPELINES,
                        default=list(PIPELINES))
    parser.add_argument("--child", nargs=2, metavar=("CORE", "PIPELINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.cells, args.seconds)))
        return 0
    builds = {"old": args.old, "new": args.new}
    for name, path in builds.items():
        if not pathlib.Path(path).is_file():
            parser.error(f"{name}: no extension file at {path}")
    rates = {(build, pipeline): [] for build in builds for pipeline in args.pipelines}
    for round_index in range(args.rounds):
        order = list(builds) if round_index % 2 == 0 else list(reversed(builds))
        for pipeline in args.pipelines:
            for build in order:
                command = [sys.executable, __file__, args.old, args.new, "--child", builds[build], pipeline,
                           "--cells", str(args.cells), "--seconds", str(args.seconds)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"bench_extensions.py: the {build} build's {pipeline} run failed:\n{done.stderr.strip()}",
                          file=sys.stderr)
                    return 1
                rates[build, pipeline].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"# {args.cells:,} moving cells, one thread, {args.rounds} alternating rounds of {args.seconds:g} CPU s")
    print(f"# old: {args.old}\n# new: {args.new}")
    print("| pipeline | old cells/s per core (median, min-max) | new | new / old (median of rounds) |")
    print("|---|---:|---:|---:|")
    for pipeline in args.pipelines:
        old, new = rates["old", pipeline], rates["new", pipeline]
        ratio = statistics.median(b / a for a, b in zip(old, new))
        print(f"| {pipeline} | {statistics.median(old):,.0f} ({min(old):,.0f}-{max(old):,.0f}) | "
              f"{statistics.median(new):,.0f} ({min(new):,.0f}-{max(new):,.0f}) | {ratio:.3f} |")
    if set(PIPELINES) <= set(args.pipelines):
        for build in builds:
            per_round = [c / b for b, c in zip(rates[build, "box3d"], rates[build, "closure"])]
            print(f"closure / box3d, {build}: {statistics.median(per_round):.3f} "
                  f"({min(per_round):.3f}-{max(per_round):.3f} over rounds)")
    if {"closure", "stable80"} <= set(args.pipelines):
        for build in builds:
            per_round = [s / c for c, s in zip(rates[build, "closure"], rates[build, "stable80"])]
            print(f"stable80 / closure, {build}: {statistics.median(per_round):.2f}x "
                  f"({min(per_round):.2f}-{max(per_round):.2f} over rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
