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
a fresh process sets up --callgrind-cells cells and calls the row once untimed, then callgrind counts
only its next 2 calls (CALLGRIND_RUNS), divided by 2 x cells; see callgrind_instructions), which do not
depend on the machine's load: the main thread's count, with OpenBLAS and OpenMP held to one thread.
Valgrind does not emulate AVX-512: these count the AVX2 code path; they need valgrind on x86-64.
Rows are printed as they are measured (the oracle's once Box3D's rate gives its "vs box3d"). A bad
option value (exit status 2), a missing valgrind (with --callgrind), onnxruntime or default model, and
a failed callgrind run (status 1; the rows measured before it stay printed) end the script with one
line on stderr, no traceback; Ctrl-C (or SIGTERM) stops it with one line (exit status 130) after the
valgrind worker has been stopped and the temporary folder it wrote into removed. The script writes
no files of its own outside that temporary folder (onnxruntime itself keeps a small ".ses" file in
the temporary-files folder, $TMPDIR or /tmp, made on import where it is absent).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))
sys.path.insert(0, str(HERE))

from _options import positive_int  # noqa: E402

PIPELINES = ("oracle", "box3d", "network", "native", "closure", "stable80", "naive")
# Measured in turns (one repeat of each, then the next round), so that each ratio between them is
# taken from runs seconds apart under the same load: the ratios are medians over the rounds.
INTERLEAVED = ("box3d", "closure", "stable80")
# Calls counted by callgrind per row (after one untimed call): the count is their instructions alone.
CALLGRIND_RUNS = 2
# Callgrind's client requests (valgrind/callgrind.h: VG_USERREQ_TOOL_BASE('C', 'T') + 2; and the core's
# RUNNING_ON_VALGRIND), issued from Python by a few bytes of x86-64 code (the "special instruction
# sequence" of valgrind.h: four rotations of rdi by 3, 13, 61 and 51 bits, 128 in all, then
# xchg rbx, rbx; rax points at the request's six words, rdx carries the default answer and the
# result). On a CPU this is a no-op that returns 0.
CALLGRIND_TOGGLE_COLLECT = 0x43540002
RUNNING_ON_VALGRIND = 0x1001
_CLIENT_REQUEST_CODE = bytes.fromhex(
    "4889f8"  # mov rax, rdi        (the request block)
    "31d2"  # xor edx, edx          (default answer 0)
    "48c1c703" "48c1c70d" "48c1c73d" "48c1c733"  # rol rdi, 3 / 13 / 61 / 51
    "4887db"  # xchg rbx, rbx       (the request)
    "4889d0"  # mov rax, rdx        (the answer)
    "c3")  # ret


class BenchError(Exception):
    """A failure the script reports in one line (no traceback)."""


def per_cell(instructions: int, calls: int, cells: int) -> float:
    """Instructions of one cell (one row for the network rows): the counted calls' total over calls x cells."""
    return instructions / (calls * cells)


def worker_environment(folder: str) -> dict:
    """Environment of a callgrind worker. OpenBLAS (NumPy's matrix products in the naive row and in
    the set-up) and OpenMP run on one thread: with two, the main thread spin-waits for its helper in
    OpenBLAS's exec_blas, and under valgrind's serialised scheduler the spin lasts as long as the OS
    takes to run the helper, so the main thread's count grew with the machine's load (65 million
    instructions between two runs of the same naive row at load 5; counts of 1.93e9 and 3.04e9, and
    negative differences). Fixed hash seed; valgrind's own files (TMPDIR) in the run's folder."""
    environment = dict(os.environ)
    environment.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
                       TMPDIR=folder)
    return environment


def _client_request_function():
    import ctypes
    import mmap

    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise BenchError(f"--callgrind needs x86-64 (callgrind's client requests), not {platform.machine()}")
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError as error:  # a system that refuses writable executable memory (SELinux's execmem)
        raise BenchError(f"--callgrind needs an executable page for valgrind's client requests: {error}") from None
    page.write(_CLIENT_REQUEST_CODE)
    function = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    function.page = page  # kept alive with the function
    return function


def client_request(code: int, function=None) -> int:
    """Valgrind client request `code` (no arguments); 0 when not running under valgrind."""
    import ctypes

    function = function or _client_request_function()
    block = (ctypes.c_size_t * 6)(code, 0, 0, 0, 0, 0)
    return int(function(ctypes.addressof(block)))


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


def callgrind_instructions(name: str, cells: int, runs: int = CALLGRIND_RUNS) -> float:
    """Instructions per cell of row `name`: the main thread of a fresh process under callgrind, which
    sets `name` up on `cells` cells and calls it once (untimed, uncounted), then counts its next `runs`
    calls alone (collection off at start, toggled on and off around them by client requests), so
    neither start-up nor set-up enters the count. Only the main thread counts (every row runs there
    with one thread): idle helper threads of other libraries (onnxruntime's) poll under valgrind's
    serialised scheduler, which adds instructions in proportion to the run's duration, not to its
    work; on hardware they sleep. The worker's environment: worker_environment."""
    with tempfile.TemporaryDirectory(prefix="bench_speed_callgrind_") as folder:
        out = os.path.join(folder, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", "--separate-threads=yes", "--collect-atstart=no", "--vgdb=no",
                   f"--callgrind-out-file={out}", sys.executable, os.path.abspath(__file__), "--worker", name,
                   "--runs", str(runs), "--cells", str(cells), "--oracle-cells", str(cells), "--threads", "1"]
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                errors="replace", env=worker_environment(folder))
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("==")]
        if result.returncode != 0:
            last = lines[-1].strip() if lines else "no message"
            raise BenchError(f"the callgrind run of the {name} row failed (exit status {result.returncode}): {last}")
        try:
            text = pathlib.Path(f"{out}-01").read_text()  # thread 1: the main thread
            instructions = int(re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M).group(1))
        except (OSError, AttributeError):
            raise BenchError(f"the callgrind run of the {name} row wrote no count for its main thread") from None
        if "counted" not in result.stderr or instructions <= 0:
            raise BenchError(f"the callgrind run of the {name} row counted nothing: valgrind's client requests "
                             "did not reach callgrind")
        return per_cell(instructions, runs, cells)


def run_worker(name: str, cells: int, runs: int, threads: int) -> int:
    """The --worker process: set up, one untimed call, then `runs` calls with callgrind collecting."""
    function, _ = make_pipeline(name, cells, threads, cells)
    function()  # first-call work (scratch, pages, lazy imports) outside the count
    request = _client_request_function()
    on_valgrind = client_request(RUNNING_ON_VALGRIND, request)
    client_request(CALLGRIND_TOGGLE_COLLECT, request)
    for _ in range(runs):
        function()
    client_request(CALLGRIND_TOGGLE_COLLECT, request)
    if on_valgrind:
        print(f"counted {runs} calls of {name} on {cells} cells", file=sys.stderr)
    return 0


def format_row(name: str, threads: int, cells: int, walls: list, cpus: list, instructions, anchor: float,
               reference, ratios=None) -> str:
    """One table row. anchor: the oracle's cells/s per core; reference: Box3D's at these threads (or
    None); ratios: the rounds' ratios of the closure (to Box3D) or of the stable grid (to the closure)."""
    per_core = cells / max(statistics.median(cpus), 1e-9)
    wall = (f"{cells / max(statistics.median(walls), 1e-9):,.0f} "
            f"({cells / max(max(walls), 1e-9):,.0f}-{cells / max(min(walls), 1e-9):,.0f})")
    versus_box3d = f"{per_core / reference:.2f}" if reference else ""
    if name == "closure" and ratios:  # the rounds' ratios: box3d and the closure measured seconds apart
        versus_box3d = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
    if name == "stable80" and ratios:
        versus_box3d += (f" ({statistics.median(ratios):.1f}x the all-crossing closure, "
                         f"{min(ratios):.1f}-{max(ratios):.1f})")
    counted = f"{instructions:,.0f}" if instructions is not None else ""
    return (f"| {name} | {threads} | {cells:,} | {wall} | {per_core:,.0f} | {per_core / anchor:,.0f}x | {versus_box3d} | "
            f"{counted} |")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=positive_int, default=1_000_000)
    parser.add_argument("--oracle-cells", type=positive_int, default=20_000)
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--callgrind", action="store_true", help="add instructions per cell (valgrind, a few minutes)")
    parser.add_argument("--callgrind-cells", type=positive_int, default=2000)
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=positive_int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_requirements(args: argparse.Namespace) -> None:
    """What the run needs, checked before anything is measured (each a one-line BenchError)."""
    if args.callgrind and shutil.which("valgrind") is None:
        raise BenchError("--callgrind needs valgrind on PATH (apt-get install valgrind), or run without --callgrind")
    if args.callgrind:
        _client_request_function()  # x86-64 and an executable page, or a BenchError
    try:
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise BenchError(f"needs onnxruntime (pip install onnxruntime): {error}") from None
    import dodo

    model = pathlib.Path(dodo.models.default_model_path())
    if not model.is_file():
        raise BenchError(f"no default model at {model} (the closure, network and naive rows run it)")


def measure_rows(args: argparse.Namespace, emit) -> None:
    """Measure every row and hand each to emit(line) as soon as it is known."""
    anchor, reference = None, {}
    held = []  # the oracle's row, printed once Box3D's rate (its "vs box3d") is known
    # The network rows are single-threaded by construction: measured once, with one thread if asked
    # for, else with the first thread count (`--threads 2` alone had no network rows), labelled 1.
    single = 1 if 1 in args.threads else args.threads[0]
    for threads in args.threads:
        for name in PIPELINES:
            # The oracle, the anchor of every row, runs once with the first thread count asked for
            # (`--threads 2` alone still has its anchor).
            if name in ("network", "native") and threads != single:
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
            ratios = {}
            if len(names) > 1:  # closure / box3d and stable80 / closure, round by round (CPU time)
                box_cpu, closure_cpu, stable_cpu = (cpus for _, cpus in timings)
                ratios["closure"] = [b / max(c, 1e-9) for b, c in zip(box_cpu, closure_cpu)]
                ratios["stable80"] = [c / max(s, 1e-9) for c, s in zip(closure_cpu, stable_cpu)]
            del functions
            for each, (walls, cpus) in zip(names, timings):
                cells = args.oracle_cells if each == "oracle" else args.cells
                per_core = cells / max(statistics.median(cpus), 1e-9)
                if each == "oracle":
                    anchor = per_core
                if each == "box3d":
                    reference[threads] = per_core
            for each, (walls, cpus) in zip(names, timings):
                cells = args.oracle_cells if each == "oracle" else args.cells
                if reference.get(threads) is not None:  # the held oracle row first, as soon as it is complete
                    for earlier in held:
                        emit(format_row(*earlier, anchor, reference[threads]))
                    held = []
                instructions = None
                if args.callgrind and threads == 1:
                    instructions = callgrind_instructions(each, args.callgrind_cells)
                row = (each, 1 if each in ("network", "native") else threads, cells, walls, cpus, instructions)
                if reference.get(threads) is None:
                    held.append(row)
                else:
                    emit(format_row(*row, anchor, reference[threads], ratios.get(each)))
    for row in held:  # (no Box3D row: never, as PIPELINES stand)
        emit(format_row(*row, anchor, None))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_arguments(argv)
    if args.worker:  # one pipeline under callgrind: set up, an untimed call, `runs` counted calls
        return run_worker(args.worker, args.cells, args.runs, args.threads[0])
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: the worker stopped, the temporary folder removed
    try:
        check_requirements(args)
        import onnxruntime

        import dodo

        print(f"# dodo {dodo.__version__}, onnxruntime {onnxruntime.__version__}, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Box3D's code path "
              f"{dodo._core.box3d_instruction_set()} (callgrind runs x86-64-v3 at most), load average "
              f"{os.getloadavg()[0]:.1f}; {args.cells:,} moving cells, order 17, exact Z; median of {args.repeats}"
              + (f"; instructions per cell: callgrind, {args.callgrind_cells:,} cells, {CALLGRIND_RUNS} counted calls"
                 if args.callgrind else ""), flush=True)
        print("| pipeline | threads | cells | cells/s (wall, min-max) | cells/s per core (CPU time) | vs oracle | vs box3d | "
              "instructions/cell |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        measure_rows(args, lambda line: print(line, flush=True))
    except BenchError as error:
        print(f"bench_speed.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_speed.py: interrupted; the rows above were measured, no files were left behind", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
