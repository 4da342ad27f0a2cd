"""Append probe cells to a model package's test vectors, so that its self-test catches edits of its
gate and Box3D settings (no retraining).

    python tools/probe_test_vectors.py PACKAGE.onnx -o NEW.onnx

The exporter's test vectors are in-distribution crossing cells at moderate flux factors, where the
out-of-distribution gate is open and Box3D's flux-factor cap never acts, so a package re-signed
after its gate was switched off or moved, or its cap moved, loaded as tested (outside probes,
Python rounds forty-eight and forty-nine). This makes each such edit on a copy, picks for each a
cell whose output it moves by more than 100 times the vectors' tolerance, appends those cells with
the package's own outputs (dodo/training/probe_vectors.py says how), computes the two digests
again and checks that the new package refuses every edit. The network, its weights and every other
metadata entry stay as they were. Written atomically; never over its input. `dodo export` of an
ensemble adds the same probes. The default model of 2026-12-04 13:42 UTC was edited so
(training/models/README.md).

    python tools/probe_test_vectors.py PACKAGE.onnx -o NEW.onnx --remake 6

drops the vectors after the first 6 (the exporter's; the probes an earlier run appended) and appends
the probes again with this runtime's outputs: after a change of the runtime's rounding, where the
probes (its own outputs to the last bit) would otherwise differ from it in their last bits.
"""
from __future__ import annotations

import json
import sys

from package_tool import package_to_edit, package_tool_arguments, run_package_tool, write_package


def main() -> int:
    args = package_tool_arguments(__doc__.splitlines()[0], lambda parser: parser.add_argument(
        "--remake", type=int, metavar="N", help="keep the first N test vectors, drop the rest, append the probes again"))

    from dodo.training.probe_vectors import add_probe_vectors, without_vectors_after

    try:
        package = package_to_edit(args, "tools/probe_test_vectors.py")
        if args.remake is not None:
            package = without_vectors_after(package, args.remake)
        new_package, report = add_probe_vectors(package)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"tools/probe_test_vectors.py: {error}", file=sys.stderr)
        return 2
    missed = [name for name, row in report["mutants"].items() if not row["refused"]]
    write_package(args.output, new_package)
    print(json.dumps(report, indent=1))
    print(f"wrote {args.output}: {report['probes']} probe vectors appended; "
          f"{len(report['mutants']) - len(missed)} of {len(report['mutants'])} edits now fail its self-test"
          + (f" (not: {', '.join(missed)})" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_package_tool(main, "tools/probe_test_vectors.py"))
