"""A model's growth rates against the rates along Emu's search axis, on label files (report only).

    python tools/growth_emu_axis_report.py MODEL data/qke_emu_axis_heldout/*.h5 [--calibration C]

MODEL: an ONNX package or `default`. The files are `dodo simulate --linear-only --axis
emu` outputs (docs/dataset.md, "Emu's axis search"); their linear box-mode rates times the
calibration (the solver's measured / linear median on the training chunks, computed from
data/qke when not given) are what an Emu run of the validation recipe would measure. Prints,
per file family and for all, the share of states whose growth rate is within 10% of that
(|predicted / true - 1| <= 0.1, as `dodo score` counts) and the median ratio, the Box3D proxy
beside. The held-out states' labels (data/qke_emu_axis_heldout) choose nothing.
"""
from __future__ import annotations

import argparse
import glob
import os

import h5py
import numpy as np

import dodo
from dodo.conventions import from_emu_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--calibration", type=float, default=None)
    args = parser.parse_args()
    if args.calibration is None:
        from dodo.training.ensemble_train import growth_calibration, holdout_mask

        chunks = [p for p in sorted(glob.glob("data/qke/*_seed*.h5")) if not holdout_mask([p], ["*_seed9[0-9][0-9].h5"])[0]]
        args.calibration = growth_calibration(np.array(chunks))
    closure = dodo.Closure(None if args.model == "default" else args.model)
    families: dict[str, list] = {}
    for path in args.files:
        with h5py.File(path, "r") as f:
            F = from_emu_layout(f["F4_initial(1|ccm)"][()])
            truth = args.calibration * f["linear_growthRate_box(1|s)"][()]
        result = closure.apply(F)
        proxy = np.asarray(getattr(result, "growth_rate_proxy", dodo.box3d(F).growth_rate), float)
        rows = families.setdefault(os.path.basename(path).split("_seed")[0], [])
        rows.append((np.asarray(result.growth_rate, float) / truth, proxy / truth))
    print(f"growth rate / (calibration {args.calibration:.4f} x linear rate along Emu's search axis); "
          "within 10%: |ratio - 1| <= 0.1")
    for family, rows in sorted(families.items()) + [("all", None)]:
        model, proxy = (np.concatenate([r[i] for r in rows]) for i in (0, 1)) if rows else (
            np.concatenate([r[0] for rs in families.values() for r in rs]),
            np.concatenate([r[1] for rs in families.values() for r in rs]))
        print(f"{family:<15} {len(model):5d} states: model within 10% {100 * np.mean(np.abs(model - 1) <= 0.1):5.1f}% "
              f"(median ratio {np.median(model):.3f}); Box3D proxy {100 * np.mean(np.abs(proxy - 1) <= 0.1):5.1f}% "
              f"({np.median(proxy):.3f})")


if __name__ == "__main__":
    main()
