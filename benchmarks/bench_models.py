#!/usr/bin/env python3
"""Two or more model packages side by side: the network alone and the full closure, in
interleaved rounds of one process, beside Box3D as the anchor (issue 13).

    python benchmarks/bench_models.py OLD.onnx NEW.onnx [--cells 200000] [--rounds 11]

On a shared machine the load drifts during a run; bench_speed.py measures one model after the
other and so sees that drift as a difference. Here every round runs Box3D and each package once,
in turn, so the load of a moment falls on all of them alike; the table gives medians over rounds
of cells per second of CPU time (per core), one thread.
  network  onnxruntime Python session, 1 intra-op thread, chunks of 1024 rows of the package's
           own features (every graph output)
  closure  dodo.Closure(package, threads=1) on the same random moving cells as bench_speed.py
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

from _options import positive_int, run_main  # noqa: E402


def per_core(function, cells: int) -> float:
    start = time.process_time()
    function()
    return cells / (time.process_time() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model packages ('default': the shipped one)")
    parser.add_argument("--cells", type=positive_int, default=200_000)
    parser.add_argument("--rounds", type=positive_int, default=11)
    args = parser.parse_args()

    import onnxruntime

    import dodo
    from bench_speed import moving_cells
    from dodo.training.features import lab_features

    paths = [str(dodo.models.default_model_path()) if m == "default" else m for m in args.models]
    missing = [path for path in paths if not pathlib.Path(path).is_file()]
    if missing:
        parser.error(f"no model package at {', '.join(missing)}")
    F, u = moving_cells(args.cells)
    n = args.cells
    runs = {"box3d": lambda: dodo.box3d(F, u, threads=1)}
    for path in paths:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feature_set = session.get_modelmeta().custom_metadata_map.get("dodo.features", "invariants27-v1")
        features = np.asarray(lab_features(feature_set, F, u), dtype=np.float32)

        def network(session=session, features=features):
            for start in range(0, n, 1024):
                session.run(None, {"invariants": features[start:start + 1024]})

        closure = dodo.Closure(path, threads=1)
        closure.apply(F[:2048], u[:2048])
        network()
        runs[f"network {path}"] = network
        runs[f"closure {path}"] = lambda closure=closure: closure.apply(F, u)
    rates = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, function in runs.items():
            rates[name].append(per_core(function, n))
    box3d = statistics.median(rates["box3d"])
    print(f"# dodo {dodo.__version__}, onnxruntime {onnxruntime.__version__}; {n:,} moving cells, one thread; "
          f"median of {args.rounds} interleaved rounds")
    print("| run | cells/s per core (CPU time, min-max) | vs box3d |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} ({min(values):,.0f}-{max(values):,.0f}) | {median / box3d:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
