"""Training-side throughput: preprocessing cells/s and training samples/s (issue 3, item 11).

    python benchmarks/bench_training.py                 # 1,000,000 cells preprocessed, 1 epoch on 200k
    python benchmarks/bench_training.py --cells 100000 --train-cells 20000   # quick
    python benchmarks/bench_training.py --device cuda [--amp]               # on a GPU (scripts/gpu_check.sh)

Writes a synthetic Emu-format database first (timed separately, not part of preprocessing).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import sys as _sys
import pathlib as _pathlib
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))
from _options import extra_install, positive_int, run_main  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=positive_int, default=1_000_000, help="rows to preprocess")
    parser.add_argument("--train-cells", type=positive_int, default=200_000, help="rows used for the training epoch")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--hidden-dim", type=positive_int, default=128)
    parser.add_argument("--n-blocks", type=positive_int, default=3)
    parser.add_argument("--head", default="equivariant", choices=("equivariant", "direct"))
    parser.add_argument("--torch-threads", type=positive_int, default=1)
    parser.add_argument("--device", default="cpu", help="training.device: cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (training.amp; CUDA only)")
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    args = parser.parse_args(argv)

    try:
        from dodo.training.config import ExperimentConfig, PreprocessConfig
        from dodo.training.preprocess import preprocess
        from dodo.training.synth import write_synthetic_database
        from dodo.training.train import select_device, train
    except ImportError as error:
        parser.error(f"needs the training extras ({extra_install('train')}): {error}")
    try:  # before the synthetic database and the preprocessing, not after them
        select_device(args.device)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error).splitlines()[0])

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {"cpu_count": os.cpu_count()}

        started = time.perf_counter()
        write_synthetic_database(work / "synth.h5", args.cells, seed=1)
        results["synth_seconds"] = time.perf_counter() - started

        config = PreprocessConfig(inputs=[str(work / "synth.h5")], output=str(work / "pre.h5"))
        summary = preprocess(config, progress=False, log=lambda *_: None)
        results["preprocess_cells"] = args.cells
        results["preprocess_seconds"] = summary["seconds"]
        results["preprocess_cells_per_second"] = summary["cells_per_second"]

        n_train = min(args.train_cells, args.cells)
        raw = {"data": {"path": str(work / "pre.h5"), "batch_size": args.batch_size, "max_samples": int(n_train / 0.8) + 1,
                        "train_fraction": 0.8, "val_fraction": 0.1},
               "model": {"head": args.head, "hidden_dim": args.hidden_dim, "n_blocks": args.n_blocks},
               "training": {"epochs": 1, "threads": args.torch_threads, "log_interval": 10**9,
                            "device": args.device, "amp": args.amp},
               "output": {"results_dir": str(work / "results"), "checkpoint_dir": str(work / "checkpoints"),
                          "parity_samples": 0}}
        experiment = ExperimentConfig.from_mapping(raw)
        summary = train(experiment, echo=None)
        results["train_cells"] = n_train
        results["train_seconds_one_epoch"] = summary["seconds"]
        results["train_samples_per_second"] = summary["train_samples_per_second"]
        results["model"] = f"{args.head} head, hidden {args.hidden_dim}, {args.n_blocks} blocks, batch {args.batch_size}, " \
                           f"torch threads {args.torch_threads}, device {args.device}{' (AMP)' if args.amp else ''}"

    print(f"preprocess: {results['preprocess_cells']} cells in {results['preprocess_seconds']:.2f} s "
          f"= {results['preprocess_cells_per_second']:.3g} cells/s  (synth took {results['synth_seconds']:.2f} s)")
    print(f"train: {results['train_samples_per_second']:.3g} samples/s ({results['model']}; one epoch incl. validation "
          f"= {results['train_seconds_one_epoch']:.2f} s)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
