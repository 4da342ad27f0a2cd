"""Installation smoke test without pytest: `python -m dodo.test` (exit code 0 on success).

Runs Box3D on the shipped reference cases and checks outputs, conservation and the flags.
"""
from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    import dodo
    from dodo.reference import conservation_error, load_reference_cases

    failures = []
    for case in load_reference_cases():
        F_init, u = np.array(case["F_init"]), np.array(case["u"])
        for expected in case["expected"]:
            result = dodo.box3d(F_init, u, lebedev_order=expected["lebedev_order"], z_method=expected["z_method"])
            scale = expected["ntot_comoving"] or 1.0
            if np.abs(result.F_box - np.array(expected["F_box"])).max() > 1e-9 * scale:
                failures.append(f"{case['name']} (order {expected['lebedev_order']}): F_box differs from reference")
            if conservation_error(F_init, result.F_box, u) > 1e-12:
                failures.append(f"{case['name']}: conservation violated")
    nan_cell = np.full((6, 4), np.nan)
    if not np.isfinite(dodo.box3d(nan_cell).F_box).all():
        failures.append("a NaN cell produced a non-finite output")
    for line in failures:
        print("FAIL:", line)
    print(f"dodo {dodo.__version__}: {'OK' if not failures else f'{len(failures)} failure(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
