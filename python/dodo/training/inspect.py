"""`dodo inspect`: loss-term breakdown and flux-factor statistics on a slice of a split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dodo.conventions import SPECIES
from dodo._shown import counted

from .config import LossConfig, from_dict
from .dataset import CellDataset
from .evaluate import (_file_sha256, checkpoint_data, data_identity, refuse_data_changed_since, resolve_split,
                       rows_left_out, rows_left_out_note, split_indices_for, training_states_in, training_states_note)
from .losses import loss_terms
from .train import closure_from_checkpoint, load_checkpoint, refuse_weights_that_are_not_finite


def flux_factor_statistics(F: np.ndarray) -> dict:
    """Per species: min, mean, 99th percentile and max of |F|/n (rest frame)."""
    n = F[..., 0]
    ff = np.linalg.norm(F[..., 1:], axis=-1) / np.where(n > 0, n, np.nan)
    return {name: {"min": float(np.nanmin(ff[:, i])), "mean": float(np.nanmean(ff[:, i])),
                   "p99": float(np.nanpercentile(ff[:, i], 99)), "max": float(np.nanmax(ff[:, i]))}
            for i, name in enumerate(SPECIES)}


def inspect_checkpoint(checkpoint_path: str | Path, data_path=None, split: str | None = None, start: int = 0,
                       stop: int | None = 1000) -> dict:
    # Cell positions in the split, from 0: a negative --start took Python's slice from the end
    # (`--start -5`: the last five cells), which no one asking for cell -5 meant.
    for name, value in (("--start", start), ("--stop", stop)):
        if value is not None and value < 0:
            raise ValueError(f"{name} is a cell position in the split, counted from 0; got {value}")
    checkpoint = load_checkpoint(checkpoint_path)
    data_path = checkpoint_data(checkpoint, checkpoint_path, data_path, "inspect")
    identity = data_identity(data_path)
    split = resolve_split(checkpoint, data_path, split, "val")  # None: 'val' of the training file, else 'all'
    split_indices = split_indices_for(checkpoint, data_path, split)
    indices = split_indices[start:stop]
    if len(indices) == 0:
        raise ValueError(f"slice [{start}:{stop}] of split {split!r} ({counted(len(split_indices), 'cell')}) is empty")
    taken = range(len(split_indices))[start:stop]  # the slice as taken: --stop 1000 of 50 cells is [0:50]
    start, stop = taken.start, taken.stop
    closure = closure_from_checkpoint(checkpoint, checkpoint_path)
    refuse_weights_that_are_not_finite(closure, checkpoint_path, "inspect")  # not NaN metrics (round 35)
    dataset = CellDataset(data_path, indices, checkpoint.get("target_scale"))
    invariants, F_init, F_box, dF_true, weight = dataset.__getitems__(range(len(dataset)))
    refuse_data_changed_since(data_path, identity, "inspect")
    loss_config = from_dict(LossConfig, checkpoint["config"]["loss"], "checkpoint loss")
    with torch.no_grad():
        dF, dF_unlimited, theta = closure(invariants, F_init, F_box, return_unlimited=True)
        terms = {k: float(v) for k, v in loss_terms(dF, dF_unlimited, dF_true, F_box, weight).items()}
        box_terms = {k: float(v) for k, v in loss_terms(torch.zeros_like(dF), torch.zeros_like(dF), dF_true, F_box,
                                                        weight).items()}
    weighted = {k: getattr(loss_config, f"w_{k}") * v for k, v in terms.items()}
    F_box64, F_true64 = F_box.double().numpy(), (F_box + dF_true).double().numpy()
    # Another file: the cells that are states of the checkpoint's training file, as dodo evaluate counts them
    # (inspect said nothing of them; outside probe, training round three).
    shared = ({} if checkpoint["data"].get("sha256") == _file_sha256(data_path)
              else {"training_states": training_states_in(checkpoint, data_path, indices)})
    if not shared and rows_left_out(checkpoint, data_path, split, split_indices):  # as dodo evaluate says
        shared["rows_left_out"] = rows_left_out(checkpoint, data_path, split, split_indices)
    return {
        "data": str(data_path), "cells": len(indices), "split": split, "slice": [start, stop],
        "loss_terms_model": terms, "loss_terms_weighted": weighted, "loss_total": sum(weighted.values()),
        "loss_terms_box3d": box_terms,
        "limiter_active_fraction": float((theta < 1).double().mean()), "theta_min": float(theta.min()),
        "flux_factor": {"initial": flux_factor_statistics(F_init.double().numpy()),
                        "box3d": flux_factor_statistics(F_box64), "true": flux_factor_statistics(F_true64),
                        "model": flux_factor_statistics(F_box64 + dF.double().numpy())},
        **shared,
    }


def format_inspection(report: dict) -> str:
    # The slice as --start/--stop take it, [start:stop] as in the empty slice's error: the table said
    # "slice [0, 30]" (the JSON's list) and the error "slice [5:5]" (outside probe, Python round fifty-eight).
    taken = report["slice"]  # [start, stop] as inspect_checkpoint gives it
    taken = ":".join(str(end) for end in taken) if isinstance(taken, (list, tuple)) else taken
    lines = [f"{counted(report['cells'], 'cell')}, split '{report['split']}' slice [{taken}]",
             f"{'term':<12} {'box3d':>11} {'model':>11} {'weighted':>11}"]
    for name, value in report["loss_terms_model"].items():
        lines.append(f"{name:<12} {report['loss_terms_box3d'][name]:11.3e} {value:11.3e} "
                     f"{report['loss_terms_weighted'][name]:11.3e}")
    lines.append(f"{'total':<12} {'':>11} {'':>11} {report['loss_total']:11.3e}")
    lines.append(f"limiter active on {report['limiter_active_fraction']:.2%} of cells (min theta {report['theta_min']:.3f})")
    lines.append("flux factor |F|/n (mean / max) per species:")
    lines.append(f"{'species':<10} " + " ".join(f"{k:>15}" for k in report["flux_factor"]))
    for name in SPECIES:
        cells = [f"{report['flux_factor'][k][name]['mean']:.3f}/{report['flux_factor'][k][name]['max']:.3f}"
                 for k in report["flux_factor"]]
        lines.append(f"{name:<10} " + " ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines) + training_states_note(report) + rows_left_out_note(report)
