#!/usr/bin/env python3
"""Precision of the network evaluators: the closure with the native evaluator and with ONNX Runtime's
graph (both float32) against the float64 definition (the package's graph with every float widened
to float64, onnx's reference evaluator), on moving cells of which a fifth have mu = tau.

    python benchmarks/native_precision.py 20000      # cells; needs torch and onnx (training extras)
"""
import json, sys
import numpy as np
import pathlib
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _options import positive_int  # noqa: E402
import argparse  # noqa: E402

_parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
_parser.add_argument("cells", nargs="?", type=positive_int, default=20000, help="moving cells (default 20000)")
n = _parser.parse_args().cells
import dodo
from dodo._closure import Closure, default_model_path
from dodo.training.export import closure_float64
from conftest import random_states, random_velocities
from float64_graph import float64_network

rng = np.random.default_rng(99)
u = random_velocities(rng, n, max_speed=0.6)
F_rest = np.concatenate([random_states(rng, n - n // 5), random_states(rng, n // 5, mu_equals_tau=True)])
F = dodo.boost_from_rest(F_rest, u[:, None, :])
native, graph = Closure(threads=1), Closure(threads=1, evaluator="onnxruntime")
a, b = native.apply(F, u), graph.apply(F, u)
network = float64_network(default_model_path(), native.metadata["dodo.features"])
reference = closure_float64(network, F, u, json.loads(native.metadata["dodo.box3d"]), flavour_images=True)
ntot = np.asarray(dodo.comoving_density(F, u))
for name, r in (("native", a), ("onnxruntime", b)):
    d = np.abs(r.F_pred - reference["F_pred"]).max(axis=(1, 2)) / ntot
    print(f"{name}: |F_pred - float64| / N_tot  median {np.median(d):.2e}  99.9% {np.quantile(d, 0.999):.2e}  max {d.max():.2e}  ({n} cells)")
d = np.abs(a.F_pred - b.F_pred).max(axis=(1, 2)) / ntot
print(f"native vs onnxruntime: max {d.max():.2e}")
