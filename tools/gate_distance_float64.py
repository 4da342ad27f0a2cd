"""Rewrite an ensemble package's out-of-distribution distance to run in float64 (no retraining).

    python tools/gate_distance_float64.py PACKAGE.onnx -o NEW.onnx

Packages exported before 2026-12-05 sum the gate's Mahalanobis distance in float32 in their graph,
so ONNX Runtime (`evaluator="onnxruntime"`, the CUDA path) and the native evaluator differ by up to
1.3e-4 N_tot on far-out cells (dodo/training/gate_graph.py says why). `dodo export` now writes the
distance in float64; this applies the same edit to an existing package: the weights, the metadata
and the native evaluator's results stay as they were (checked bit for bit here on random cells),
the two digests are computed again, and ONNX Runtime's results move onto the native ones. The
default model of 2026-12-04 13:42 UTC was edited so (training/models/README.md). Written
atomically; never over its input.
"""
from __future__ import annotations

import sys

import numpy as np
from package_tool import package_to_edit, package_tool_arguments, run_package_tool, write_package


def main() -> int:
    args = package_tool_arguments(__doc__.splitlines()[0])

    import onnx

    import dodo
    from dodo import _core
    from dodo.training.gate_graph import distance_in_float64, far_out_probe_cells

    try:
        package = package_to_edit(args, "tools/gate_distance_float64.py")
        model = onnx.load_from_string(package)
        if not distance_in_float64(model):
            print(f"{args.package}: no float32 distance of an ensemble's gate in its graph; nothing written",
                  file=sys.stderr)
            return 1
        onnx.checker.check_model(model)
        new_bytes = _core.with_content_digest(model.SerializeToString())
        before, after = dodo.Closure(package, threads=1), dodo.Closure(new_bytes, threads=1)
        F = far_out_probe_cells()
        if before.evaluator == "native":
            if after.evaluator != "native" or before.apply(F).F_pred.tobytes() != after.apply(F).F_pred.tobytes():
                raise ValueError("the native evaluator's results changed: the edit is not the distance's alone")
        native = after.apply(F)
        graph = dodo.Closure(new_bytes, threads=1, evaluator="onnxruntime").apply(F)
        gap = float((np.abs(native.F_pred - graph.F_pred).max(axis=(-1, -2)) / F[..., 0].sum(-1)).max())
    except (OSError, ValueError, RuntimeError) as error:
        print(f"tools/gate_distance_float64.py: {error}", file=sys.stderr)
        return 2
    write_package(args.output, new_bytes)
    print(f"wrote {args.output}: the gate's distance in float64; ONNX Runtime against the native evaluator on "
          f"{len(F)} probe cells: {gap:.2e} N_tot at most")
    return 0


if __name__ == "__main__":
    sys.exit(run_package_tool(main, "tools/gate_distance_float64.py"))
