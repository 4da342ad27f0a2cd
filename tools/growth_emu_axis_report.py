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

import numpy as np

import dodo
from dodo.conventions import from_emu_layout


#: The linear box-mode rate along Emu's search axis that `dodo simulate --linear-only --axis emu` writes.
LINEAR_RATE = "linear_growthRate_box(1|s)"


def read_label_file(path: str):
    """(initial four-fluxes in Dodo's layout, linear rates) of a label file, or a ValueError naming
    the file and what it lacks."""
    from dodo._atomic import check_input_file
    from dodo.emu_files import INITIAL, numeric_dataset, open_hdf5

    check_input_file(path, "a label file of dodo simulate --linear-only --axis emu (HDF5)")
    with open_hdf5(path) as handle:
        for key in (INITIAL, LINEAR_RATE):
            if key not in handle:
                raise ValueError(f"{path}: no dataset '{key}'; give label files of dodo simulate --linear-only "
                                 "--axis emu (data/qke_emu_axis_heldout/*.h5)")
        initial = numeric_dataset(handle, path, INITIAL)
        rate = numeric_dataset(handle, path, LINEAR_RATE)
    if initial.ndim != 4 or initial.shape[1:3] != (4, 2) or rate.shape != initial.shape[:1]:
        raise ValueError(f"{path}: '{INITIAL}' {initial.shape} and '{LINEAR_RATE}' {rate.shape} are not "
                         "[n, 4, 2, flavours] and [n]")
    return from_emu_layout(initial), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--calibration", type=float, default=None)
    args = parser.parse_args()
    if args.calibration is not None and not (np.isfinite(args.calibration) and args.calibration > 0):
        parser.error(f"--calibration must be a finite number > 0; got {args.calibration}")
    # Each file and the model before any work: a FIFO blocked for ever, a directory, a text file or a
    # missing model ended in a traceback, after the calibration's read of data/qke (outside probe, round 26).
    try:
        label_files = [read_label_file(path) for path in args.files]
        closure = dodo.Closure(None if args.model == "default" else args.model)
    except (OSError, ValueError, RuntimeError) as error:
        parser.error(" ".join(str(error).split()))
    if args.calibration is None:
        from dodo.training.ensemble_train import growth_calibration, holdout_mask

        chunks = [p for p in sorted(glob.glob("data/qke/*_seed*.h5")) if not holdout_mask([p], ["*_seed9[0-9][0-9].h5"])[0]]
        try:  # data/qke is read from the working directory: elsewhere there is none (a traceback before)
            args.calibration = growth_calibration(np.array(chunks))
        except ValueError as error:
            parser.error(f"{error}: run from the repository root (data/qke) or give --calibration")
    families: dict[str, list] = {}
    for path, (F, linear_rate) in zip(args.files, label_files):
        truth = args.calibration * linear_rate
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
