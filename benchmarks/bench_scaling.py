"""Scaling beyond one process (issue 12): 1 against 2 ranks/processes, every row from one run.

    python benchmarks/bench_scaling.py                       # the README's table
    python benchmarks/bench_scaling.py --states 4 --repeats 1   # quick

- simulations per hour: ``dodo simulate --random M`` alone and under ``mpirun -n 2`` (same states);
- training samples/s: ``dodo train`` (one epoch) alone and under ``torchrun --nproc-per-node 2``
  (same global batch); the figure is the run's own ``train_samples_per_second``;
- closure cells/s: every MPI rank creates a closure from the broadcast model and applies it to
  its own cells (threads=1 per rank); cells of all ranks over the slowest rank's time.
The 1- and 2-process runs alternate and each figure is the median over ``--repeats``. Needs
mpirun and mpi4py (``pip install ".[mpi]"`` in Dodo's repository) and the training extras
(``pip install ".[train]"``); without one of them it stops at once, naming what is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _options import extra_install, positive_int, run_main  # noqa: E402

CLOSURE_WORKER = r"""
import sys, time
import numpy as np
from mpi4py import MPI
import dodo
from dodo.models import default_model_path
comm = MPI.COMM_WORLD
data = default_model_path().read_bytes() if comm.rank == 0 else None
closure = dodo.Closure(comm.bcast(data, root=0), threads=1)
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(comm.rank)
F = np.zeros((n, 6, 4))
F[:, :, 0] = rng.uniform(0.5, 1.5, (n, 6))
F[:, :, 3] = rng.uniform(-0.5, 0.5, (n, 6)) * F[:, :, 0]
u = np.zeros((n, 4)); u[:, 0] = 1.0
closure(F[:1024], u[:1024])  # warm-up
rates = []
for _ in range(repeats):
    comm.Barrier()
    started = time.perf_counter()
    closure(F, u)
    slowest = comm.allreduce(time.perf_counter() - started, op=MPI.MAX)
    rates.append(comm.size * n / slowest)
if comm.rank == 0:
    print(sorted(rates)[len(rates) // 2])
"""


def missing_parts() -> list:
    """What this benchmark needs and this environment lacks, each with its cure. Without mpirun, mpi4py or
    torch it made the synthetic data, timed the one-process run, then stopped at the first 2-process
    run with `failed: ...` and a launcher's page or a traceback (FileNotFoundError without mpirun; the
    closure worker's `No module named 'mpi4py'`) (new user's journey, round three)."""
    import importlib

    def imports(*modules) -> bool:  # the children run this interpreter: what fails here fails there
        try:
            for module in modules:
                importlib.import_module(module)  # mpi4py alone: its MPI module would start MPI here
        except ImportError:
            return False
        return True

    missing = []
    if shutil.which("mpirun") is None:
        missing.append("mpirun on PATH (an MPI: Debian's openmpi-bin libopenmpi-dev)")
    if not imports("mpi4py"):
        missing.append(f"mpi4py ({extra_install('mpi')})")
    if not imports("h5py", "yaml", "torch"):
        missing.append(f"the training extras, for dodo synth and dodo train ({extra_install('train')})")
    return missing


def mpirun(n: int) -> list:
    command = [shutil.which("mpirun") or "mpirun", "-n", str(n), "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return command


def run(command, **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def dodo_command() -> list:
    return [sys.executable, "-m", "dodo"]


def simulations_per_hour(work: Path, nranks: int, args, repeat: int) -> float:
    output = work / f"sim_{nranks}_{repeat}.h5"
    command = dodo_command() + ["simulate", str(output), "--random", str(args.states), "--seed", "11",
                                "--ncell", str(args.ncell), "--nphi", str(args.nphi), "--batch-size", "1", "--quiet"]
    started = time.perf_counter()
    run((mpirun(nranks) if nranks > 1 else []) + command)
    elapsed = time.perf_counter() - started
    output.unlink()
    return args.states / elapsed * 3600


def training_samples_per_second(work: Path, data: Path, nranks: int, args, repeat: int) -> float:
    out = work / f"train_{nranks}_{repeat}"
    config = out.with_suffix(".json")
    config.write_text(json.dumps({
        "data": {"path": str(data), "batch_size": args.batch_size},
        "model": {"head": "equivariant", "hidden_dim": 64, "n_blocks": 2},
        "training": {"epochs": 1, "threads": 1, "log_interval": 100000},
        "output": {"results_dir": str(out / "results"), "checkpoint_dir": str(out / "checkpoints")}}))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nranks), "-m",
                 "dodo"] if nranks > 1 else dodo_command())
    run(launcher + ["train", "--config", str(config)], env=dict(os.environ, OMP_NUM_THREADS="1"))
    metrics = json.loads(next((out / "results").glob("metrics_*.json")).read_text())
    shutil.rmtree(out)
    return metrics["train_samples_per_second"]


def closure_cells_per_second(work: Path, nranks: int, args) -> float:
    script = work / "closure_worker.py"
    script.write_text(CLOSURE_WORKER)
    return float(run(mpirun(nranks) + [sys.executable, str(script), str(args.cells), "5"]).split()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=positive_int, default=8, help="random states per simulation run")
    parser.add_argument("--ncell", type=positive_int, default=32)
    parser.add_argument("--nphi", type=positive_int, default=12)
    parser.add_argument("--train-rows", type=positive_int, default=20000, help="rows of the synthetic training file")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="global training batch")
    parser.add_argument("--cells", type=positive_int, default=200000, help="closure cells per rank")
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    missing = missing_parts()
    if missing:
        parser.error("needs " + "; ".join(missing))

    figures = {"load_average_start": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(dodo_command() + ["synth", "-o", str(work / "synth.h5"), "-n", str(args.train_rows), "--seed", "3", "-q"])
        (work / "pp.yaml").write_text(f"inputs: [{work / 'synth.h5'}]\noutput: {work / 'pre.h5'}\n")
        run(dodo_command() + ["preprocess", "--config", str(work / "pp.yaml"), "-q"])
        rows = {"simulations per hour": {1: [], 2: []}, "training samples/s": {1: [], 2: []},
                "closure cells/s": {1: [], 2: []}}
        for repeat in range(args.repeats):
            for nranks in (1, 2):  # alternate, so that the machine's load hits both alike
                rows["simulations per hour"][nranks].append(simulations_per_hour(work, nranks, args, repeat))
                rows["training samples/s"][nranks].append(
                    training_samples_per_second(work, work / "pre.h5", nranks, args, repeat))
                rows["closure cells/s"][nranks].append(closure_cells_per_second(work, nranks, args))
    figures["load_average_end"] = os.getloadavg()[0]
    print(f"\n{args.states} random states per simulation run (ncell {args.ncell}, nphi {args.nphi}, batch size 1); "
          f"training: {args.train_rows} rows, global batch {args.batch_size}, one epoch; closure: {args.cells} cells "
          f"per rank, threads=1; medians of {args.repeats} alternating repeats; load average "
          f"{figures['load_average_start']:.1f} -> {figures['load_average_end']:.1f} on {os.cpu_count()} cores\n")
    print("| quantity | 1 process | 2 processes | ratio 2/1 |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        one, two = statistics.median(values[1]), statistics.median(values[2])
        figures[name] = {"1": one, "2": two, "ratio": two / one, "all": values}
        print(f"| {name} | {one:,.0f} | {two:,.0f} | {two / one:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
