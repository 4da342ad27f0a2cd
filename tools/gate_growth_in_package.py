"""Re-export a distilled ensemble package so that its growth rate falls back to Box3D's proxy out of
distribution, as its density correction falls back to Box3D (no retraining).

    python tools/gate_growth_in_package.py PACKAGE.onnx -o NEW.onnx

Packages exported before 2026-12-07 multiply the density correction by the distance gate
exp(-max(0, d^2 - d2_max) / d2_max) but return the learned log growth ratio ungated, so on a cell
far from the training data the closure gave Box3D's four-fluxes and a growth rate 0.15 times the
proxy (physics-law probe, round thirteen). `dodo export` now gates the ratio too (native form
"silu-mlp-density-residual-v2"). This rebuilds the package's student network from its graph's
initializers (the weights, normalisation, distance statistics and gate constants, read back
exactly), exports it again with the exporter (its test vectors and probes drawn afresh, its record
kept: training data digest and kind, Box3D settings, metrics), and checks on random and far-out
cells that F_pred and the uncertainty keep their bits and that the growth rate keeps its bits
wherever the distance gate is open. Written atomically; never over its input.
"""
from __future__ import annotations

import json
import sys

import numpy as np
from package_tool import package_to_edit, package_tool_arguments, reexported, run_package_tool, write_package


def rebuilt_ensemble(package: bytes):
    """The package's student and gate as a DensityResidualEnsemble (no density members) and its record."""
    import onnx
    import torch
    from onnx import numpy_helper

    from dodo.training.ensemble import DensityResidualEnsemble, Member

    model = onnx.load_from_string(package)
    tensors = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    if "dodo.native_network" not in metadata:
        raise ValueError("the package has no dodo.native_network entry (not a distilled ensemble)")
    native = json.loads(metadata["dodo.native_network"])

    def vector(key):
        value = native[key]
        return np.array(tensors[value] if isinstance(value, str) else value, dtype=np.float32)  # writable

    weights = [(tensors[w], tensors[b]) for w, b in native["layers"]]
    n_inputs, width = weights[0][0].shape[1], weights[0][0].shape[0]
    if any(w.shape[0] != width for w, _ in weights[:-1]) or weights[-1][0].shape[0] != 3:
        raise ValueError("the student's hidden layers are not of one width with 3 outputs")
    student = Member(n_inputs, width, len(weights) - 1, n_outputs=3)
    with torch.no_grad():
        student.mean.copy_(torch.from_numpy(vector("input_mean")))
        student.std.copy_(torch.from_numpy(vector("input_std")))
        linears = [m for m in student.body if isinstance(m, torch.nn.Linear)]
        for linear, (w, b) in zip(linears, weights):
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(b))
    ensemble = DensityResidualEnsemble([], native["r_scale"], native["sigma0"], vector("feature_mean"),
                                       tensors[native["feature_precision"]], native["d2_max"], native["error_per_spread"])
    ensemble.student = student
    ensemble.features = metadata["dodo.features"]
    given, base = np.asarray(native["pattern"], dtype=np.float32), ensemble.pattern.numpy()
    if not np.array_equal(given, base):
        # A package whose correction was scaled (tools/scale_correction_in_package.py): the same direction.
        used = base != 0
        ratio = given[used] / base[used]
        if not (np.all(given[~used] == 0) and np.allclose(ratio, ratio[0], rtol=1e-6, atol=0) and ratio[0] > 0):
            raise ValueError("the package's head pattern is not a positive multiple of the ensemble's")
        with torch.no_grad():
            ensemble.pattern.copy_(torch.from_numpy(given))
    record = {"data": {"box3d": json.loads(metadata["dodo.box3d"]), "sha256": metadata["dodo.training_data_sha256"],
                       "kind": metadata["dodo.training_data_kind"]},
              "metrics": {**json.loads(metadata.get("dodo.metrics", "{}")),
                          "regated_growth_from": {"export_time": metadata.get("dodo.export_time"),
                                                  "content_sha256": metadata.get("dodo.content_sha256")}}}
    # The states it trained on, for the re-export's dodo.training_states: dropped before, so `dodo score` of a
    # scaled or regated package gave no training-state warning (outside probe, original findings round four).
    from dodo._state_hashes import package_training_states

    trained = package_training_states(metadata)
    if trained is not None:
        record["data"]["states"] = trained
    return ensemble.eval(), record


def compare(before, after, F) -> tuple[dict, object]:
    """Old and new package on cells F: F_pred and uncertainty must keep their bits; the growth rate
    keeps them where the new rate's log ratio is the old one's (the gate open). Returns the counts and
    the new package's result."""
    old, new = before.apply(F), after.apply(F)
    if old.F_pred.tobytes() != new.F_pred.tobytes() or old.uncertainty.tobytes() != new.uncertainty.tobytes():
        raise ValueError("F_pred or the uncertainty changed: the re-export is not the same network")
    proxy = new.growth_rate_proxy
    crossing = proxy > 0
    old_log = np.log(old.growth_rate[crossing] / proxy[crossing])
    new_log = np.log(new.growth_rate[crossing] / proxy[crossing])
    if np.any(np.abs(new_log) > np.abs(old_log) * (1 + 1e-5) + 1e-6):
        raise ValueError("the growth rate moved away from the proxy somewhere")
    moved = ~np.isclose(new_log, old_log, rtol=1e-6, atol=1e-9)
    return {"cells": int(len(F)), "crossing": int(crossing.sum()), "growth_moved": int(moved.sum()),
            "growth_same_bits": int(np.sum(old.growth_rate[crossing] == new.growth_rate[crossing]))}, new


def main() -> int:
    args = package_tool_arguments(__doc__.splitlines()[0])

    import dodo
    from dodo.training.gate_graph import far_out_probe_cells
    from dodo.training.synth import random_initial_states

    try:
        package = package_to_edit(args, "tools/gate_growth_in_package.py")
        ensemble, record = rebuilt_ensemble(package)
        new_bytes = reexported(args.package, args.output, ensemble, record)
        before, after = dodo.Closure(package, threads=1), dodo.Closure(new_bytes, threads=1)
        inside, _ = compare(before, after, random_initial_states(np.random.default_rng(7), 20000))
        far = far_out_probe_cells(4000)
        outside, native = compare(before, after, far)
        graph = dodo.Closure(new_bytes, threads=1, evaluator="onnxruntime").apply(far)
        crossing = native.growth_rate_proxy > 0
        gap = float(np.max(np.abs(np.log(graph.growth_rate[crossing] / native.growth_rate[crossing]))))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        print(f"tools/gate_growth_in_package.py: {error}", file=sys.stderr)
        return 2
    write_package(args.output, new_bytes)
    print(f"wrote {args.output}: growth ratio gated by the distance. Random initial states: {inside}; far-out "
          f"cells: {outside}; ONNX Runtime against the native evaluator's growth rate on the far-out cells: "
          f"{gap:.2e} (log ratio) at most")
    return 0


if __name__ == "__main__":
    sys.exit(run_package_tool(main, "tools/gate_growth_in_package.py"))
