"""Growth-rate labels in bulk: the solver's linear theory without the time integration (issue 10).

A full run costs the linear set-up (box_setup: fastest wavevector, box length, the box modes'
growth rate) plus the time integration, about twenty times more. On the campaign's runs the
measured growth rate is 0.957 times the box modes' linear rate in the median, 96.5% of them
within 5% of that (docs/dataset.md), so the linear rate, calibrated by that ratio, is as good a
training label for the growth head as the measured one at a twentieth of the cost.

``dodo simulate OUT --random N --family F --seed S --linear-only`` writes an Emu-layout subset:
``F4_initial(1|ccm)``, ``linear_growthRate_box(1|s)``, ``rotation_R``, ``box_length_cm``,
``input_index``, ``nf`` (no final states), with attribute ``kind = "linear_growth_labels"``.
The same seed and family draw the same states as a full run. The file is rewritten atomically
every ``CHUNK`` states with ``complete = False``; a rerun of the same command continues after
the states already processed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable

import numpy as np

from .._atomic import atomic_hdf5
from .._shown import counted
from .campaign import (_SYSTEM_READ_ERRNOS, CheckpointMismatchError, density_scale_failure, no_valid_state,
                       reconstruction_failure, relative_cost, reproduction_provenance)
from .directions import uniform_sphere
from .io import attribute_value, species_to_emu
from .solver import SolverConfig
from .states import AXIS_SEARCH, EMU_AXIS_SEARCH, NSM1_EMU_1D, box_setup

KIND = "linear_growth_labels"
CHUNK = 100


def _fingerprint(four_flux: np.ndarray, settings: dict) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(four_flux, dtype=float).tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _unreadable_label_file(output: str, error: BaseException) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"{output} exists but cannot be read as a growth-label file ({' '.join(str(error).split())}); it is left "
        "untouched: remove it or choose another output file")


def _resume(output: str, fingerprint: str, report: Callable[[str], None]) -> dict | None:
    """The rows of an earlier run of the same states and settings, or None (no file, or a complete
    one of other states or settings, which is replaced as a full run replaces its output).

    The output is this command's checkpoint too: an unfinished label file of other states or
    settings, or a file that cannot be read as one, raises CheckpointMismatchError and is left
    untouched (as the full solver's checkpoints are; docs/qke.md)."""
    if not os.path.exists(output) or (os.path.isfile(output) and os.path.getsize(output) == 0):
        return None  # an empty file (mktemp) holds nothing, as for a full run (round eighteen)
    import h5py

    try:
        with h5py.File(output, "r") as f:
            same = f.attrs.get("fingerprint") == fingerprint
            complete = bool(f.attrs.get("complete", False))
            full_run = "solver" in f.attrs and f.attrs.get("kind") != "linear_growth_labels"
            done = f"{int(f.attrs.get('nstates_done', 0))} of {counted(int(f.attrs.get('nstates_requested', 0)), 'state')} done"
            if same:
                rows = {"processed": int(f.attrs["nstates_processed"]), "dropped": json.loads(f.attrs["dropped"]),
                        "input_index": f["input_index"][()], "linear_growth_rate": f["linear_growthRate_box(1|s)"][()],
                        "rotation": f["rotation_R"][()], "box_length_cm": f["box_length_cm"][()]}
    except (OSError, MemoryError) as error:
        if isinstance(error, MemoryError) or error.errno in _SYSTEM_READ_ERRNOS:
            # A read the system failed (too many open files, an I/O error, no permission, no memory) says
            # nothing about the file; it was called unreadable, with "remove it" as the way on, the labels
            # done lost (outside probe, data-loss round eight). h5py's open names the errno.
            raise OSError(f"{output} could not be read ({type(error).__name__}: {' '.join(str(error).split())}); "
                          "this says nothing about the file, which is left as it is: rerun the same command once the "
                          "cause is gone (too many open files: ulimit -n; an I/O error; no permission; no memory) to "
                          "resume from it") from None
        raise _unreadable_label_file(output, error) from None
    except (KeyError, TypeError, ValueError) as error:  # TypeError: int() of an attribute of two values
        raise _unreadable_label_file(output, error) from None
    if not same:
        if not complete and full_run:  # was called "an unfinished growth-label file" (outside probe, round 23)
            raise CheckpointMismatchError(
                f"{output} is an unfinished solver database (a full dodo simulate run, {done}; "
                f"its checkpoint is {output}.partial*.npz); it is left untouched: to resume it, rerun the command "
                "that wrote it, without --linear-only; for growth labels choose another output file")
        if not complete:
            raise CheckpointMismatchError(
                f"{output} is an unfinished growth-label file of other states or settings; it is left untouched: to "
                f"resume it, rerun the command that wrote it; to start this one, remove {output} (its labels are "
                "lost) or choose another output file")
        report(f"{output} is a finished label file of other states or settings: replacing it")
        return None
    report(f"resuming: {counted(rows['processed'], 'state')} already processed")
    return rows


def _write(output: str, four_flux: np.ndarray, rows: dict, attributes: dict) -> None:
    index = np.asarray(rows["input_index"], np.int64)
    with atomic_hdf5(output) as (f, _):
        f["F4_initial(1|ccm)"] = species_to_emu(four_flux[index]) if len(index) else np.zeros((0, 4, 2, 3))
        f["linear_growthRate_box(1|s)"] = np.asarray(rows["linear_growth_rate"], float)
        f["rotation_R"] = np.asarray(rows["rotation"], float).reshape(-1, 3, 3)
        f["box_length_cm"] = np.asarray(rows["box_length_cm"], float)
        f["input_index"] = index
        f["nf"] = np.int64(3)
        for key, value in {**attributes, **reproduction_provenance(four_flux)}.items():
            f.attrs[key] = attribute_value(value)
        f.attrs["nstates_processed"] = int(rows["processed"])
        f.attrs["nstates_valid"] = int(len(index))
        f.attrs["dropped"] = json.dumps(rows["dropped"])
        f.attrs["complete"] = bool(rows["processed"] == len(four_flux))
        f.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def linear_growth_labels(four_flux: np.ndarray, output: str, config: SolverConfig, max_cost: float | None = None,
                         attributes: dict | None = None, report: Callable[[str], None] = print,
                         start_axes: np.ndarray | None = None, axis: str = "fastest", write_progress: bool = True) -> dict:
    """Linear growth rates of the box modes (s^-1) for states ``[n, 6, 4]``, written to ``output``.

    Same set-up as a full run (box_setup on the solver's direction set and ncell; states estimated
    to cost more than ``max_cost`` times NSM1's are dropped, as by ``dodo simulate --max-cost``,
    so the labelled states follow the same distribution). Returns the rows written.
    ``start_axes`` ``[n, 3]``: each state's search starts from this axis (an earlier run's box
    axis) instead of the 24 coarse axes; about half the cost, the same refined result where that
    axis was the coarse search's best (a Dodo run's). ``write_progress``: write the labels so far to
    ``output`` every CHUNK states (the file is the run's checkpoint); False: only at the end, for an
    ``output`` that holds another file being replaced, which a run stopped midway must not destroy
    (a rerun then starts over).
    """
    four_flux = np.asarray(four_flux, float)
    if four_flux.ndim != 3 or four_flux.shape[1:] != (6, 4) or len(four_flux) == 0:
        raise ValueError(f"states must have shape [n >= 1, 6, 4]; got {four_flux.shape}")
    if max_cost is not None and not max_cost > 0:
        raise ValueError("max_cost must be positive")
    config.validate()
    if axis not in ("fastest", "emu"):
        raise ValueError(f"growth labels are made along the fastest axis ('fastest') or Emu's search's ('emu'); got {axis!r}")
    if axis == "emu" and start_axes is not None:
        raise ValueError("Emu's axis search starts from its own 38 axes, not from given ones")
    directions = uniform_sphere(config.nphi_equator)
    if start_axes is not None:
        start_axes = np.asarray(start_axes, float)
        if start_axes.shape != (len(four_flux), 3):
            raise ValueError(f"start axes must have shape [{len(four_flux)}, 3]; got {start_axes.shape}")
    settings = {"ncell": config.ncell, "nphi_equator": config.nphi_equator, "max_cost": max_cost,
                "axis_search": AXIS_SEARCH if axis == "fastest" else EMU_AXIS_SEARCH}
    if start_axes is not None:
        settings["axis_start"] = "the input's box axes (rotation_R)"
        settings["axis_start_digest"] = hashlib.sha256(np.ascontiguousarray(start_axes).tobytes()).hexdigest()
    fingerprint = _fingerprint(four_flux, settings)
    attributes = dict(attributes or {}, kind=KIND, settings=settings, fingerprint=fingerprint,
                      nstates_requested=len(four_flux),
                      solver="dodo.qke linear theory of the box modes (box_setup; docs/dataset.md)")
    rows = _resume(output, fingerprint, report) or {"processed": 0, "dropped": {}, "input_index": [],
                                                     "linear_growth_rate": [], "rotation": [], "box_length_cm": []}
    rows = {key: (list(value) if isinstance(value, np.ndarray) else value) for key, value in rows.items()}
    cost = relative_cost(four_flux, directions, None) / relative_cost(NSM1_EMU_1D[None], directions, None)[0]
    started = time.time()
    for index in range(rows["processed"], len(four_flux)):
        out_of_range = density_scale_failure(four_flux[index])
        if out_of_range is not None:
            rows["dropped"][str(index)] = out_of_range
        elif not np.isfinite(cost[index]):
            rows["dropped"][str(index)] = reconstruction_failure(four_flux[index], directions)
        elif max_cost is not None and cost[index] > max_cost:
            rows["dropped"][str(index)] = f"estimated cost {cost[index]:.2f}x NSM1's exceeds max_cost {max_cost:g}"
        else:
            try:
                rotation, length, _, rate = box_setup(four_flux[index], directions, config.ncell, axis=axis,
                                                      start_axis=None if start_axes is None else start_axes[index])
            except ValueError as error:
                rows["dropped"][str(index)] = str(error)
            else:
                rows["input_index"].append(index)
                rows["linear_growth_rate"].append(rate)
                rows["rotation"].append(rotation)
                rows["box_length_cm"].append(length)
        rows["processed"] = index + 1
        if not rows["input_index"]:
            # No label yet: nothing to write (an empty label file marked complete read as a finished
            # run and replaced whatever was there; outside probe, round eighteen). Drops are cheap to redo.
            if rows["processed"] == len(four_flux):
                raise no_valid_state(output, len(four_flux), rows["dropped"], what="could be labelled")
            continue
        if (write_progress and rows["processed"] % CHUNK == 0) or rows["processed"] == len(four_flux):
            try:
                _write(output, four_flux, rows, attributes)
            except OSError as error:  # a full disk named a temporary only, not what survives (round 27)
                kept = (f"an earlier {output} (the labels written before) is untouched: free space (or fix the cause) "
                        "and rerun the same command to resume from it" if os.path.exists(output) else
                        "no labels were written yet")
                raise OSError(error.errno, f"cannot write {output} ({error.strerror or error}); {kept}") from None
            report(f"{rows['processed']}/{len(four_flux)} states processed ({len(rows['input_index'])} labelled), "
                   f"{time.time() - started:.0f} s elapsed")
    # Named on stderr, as a full run names its drops: "wrote OUT: 1 of 5 states labelled" left the reasons
    # to the file's `dropped` attribute (solver probe, round three).
    for index, reason in sorted(rows["dropped"].items(), key=lambda item: int(item[0])):
        report(f"dropped state {int(index)}: {reason}")
    return rows
