"""Add the expected Box3D outputs for one (Lebedev order, Z method) to the shipped reference cases.

    python tools/add_reference_setting.py 17 exact      (needs SciPy >= 1.15, for the oracle's grid)

The outputs come from the independent NumPy oracle of the tests (tests/python/box3d_oracle.py),
never from the C++ core they check. Before writing, the oracle must reproduce every setting the
file already holds to 1e-12 N_tot, so the new entries are made the way the old ones were.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import box3d_oracle  # noqa: E402
from dodo._atomic import atomic_path  # noqa: E402

CASES = ROOT / "python" / "dodo" / "data" / "box3d_cases.json"


def oracle_entry(case: dict, order: int, z_method: str) -> dict:
    F_init, u = np.array(case["F_init"], float), np.array(case["u"], float)
    F_box, growth = box3d_oracle.box3d(F_init[None], u[None], order=order, z_method=z_method)
    rest = box3d_oracle.boost_to_rest(F_init[None], u[None, None, :])[0]
    return {"scheme": "pairwise", "lebedev_order": order, "z_method": z_method, "form": "delta",
            "F_box": F_box[0].tolist(), "growth_over_ntot": float(growth[0]),
            "ntot_comoving": float(rest[:, 0].sum())}


@contextlib.contextmanager
def _cases_locked():
    """An exclusive flock on the cases' directory (the file itself is replaced by rename), waited for."""
    descriptor = os.open(CASES.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def main(order: int, z_method: str) -> int:
    document = json.loads(CASES.read_text())
    worst = 0.0
    for case in document["cases"]:
        for stored in case["expected"]:
            again = oracle_entry(case, stored["lebedev_order"], stored["z_method"])
            scale = stored["ntot_comoving"] or 1.0
            worst = max(worst, np.abs(np.array(again["F_box"]) - np.array(stored["F_box"])).max() / scale)
    if worst > 1e-12:
        print(f"the oracle misses the stored outputs by {worst:.2e} N_tot: not writing")
        return 1
    has_setting = lambda case: any(  # noqa: E731
        e["lebedev_order"] == order and e["z_method"] == z_method for e in case["expected"])
    new_entries = [None if has_setting(case) else oracle_entry(case, order, z_method) for case in document["cases"]]
    # The file read again and written under an exclusive lock: two runs at once (two settings) each wrote the
    # document as read at its start, so the first one's additions were lost (outside probe, data-loss round 16).
    added = 0
    with _cases_locked():
        current = json.loads(CASES.read_text())
        if len(current["cases"]) != len(document["cases"]):
            print(f"{CASES} changed its cases while this ran: not writing; rerun")
            return 1
        for case, entry in zip(current["cases"], new_entries):
            if entry is not None and not has_setting(case):
                case["expected"].append(entry)
                added += 1
        with atomic_path(CASES) as temporary:  # a failed run leaves the shipped reference cases whole
            temporary.write_text(json.dumps(current, indent=1) + "\n")
    print(f"oracle reproduces the stored settings to {worst:.1e} N_tot; added order {order} {z_method} to {added} cases")
    return 0


def parse_arguments(argv=None):
    """ORDER Z_METHOD; --help prints the usage (a word for ORDER was a ValueError traceback)."""
    import dodo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("order", type=int, choices=dodo._core.available_lebedev_orders(), help="Lebedev order")
    parser.add_argument("z_method", choices=["exact", "jedynak"], help="Z method")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_arguments()
    sys.exit(main(arguments.order, arguments.z_method))
