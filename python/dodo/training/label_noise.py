"""The label-noise member of the density-residual ensemble (docs/training.md, "Label-noise gate").

The members' spread measures how much they disagree, not how far their common answer is from the
truth: where the solver's label is noisy, or all members share a bias, they agree and are wrong
together. Out-of-fold residuals e = delta_true - delta_box - r_mean (each state predicted by
members trained without it: ``tools/gate_study.py --save``) show that error directly. A small
network learns its scale a(x) = E[|e| | x], and the gate becomes
r^2 / (r^2 + (c spread)^2 + (k a)^2) (ensemble.py's module docstring): k = 0 is the spread gate.
"""
from __future__ import annotations

import zipfile
from collections import Counter

import numpy as np

from .ensemble import fit_noise_member
from .pool import pool_folds, training_arrays

#: Arrays a gate study's out-of-fold file holds (tools/gate_study.py --save).
OUT_OF_FOLD_KEYS = ("delta_box", "delta_true", "r", "sigma", "d2", "emu")


def out_of_fold_rows(path: str, table: dict, config) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``table``, out-of-fold residual e) for the states of a gate study's file that the
    table holds (out_of_fold_match's rows, the unmatched left out)."""
    found, residual = out_of_fold_match(path, table, config)
    keep = found >= 0
    return found[keep], residual[keep]


def out_of_fold_match(path: str, table: dict, config, saved: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row of ``table`` or -1, out-of-fold residual e) for each state of a gate study's file. The
    file lists its pool's rows fold by fold in pool_folds' order: on the table it was made on, that
    order is found again (every state, exactly). On a table grown since, states
    are found by their Box3D and solver deltas (float64, the same numbers in both), leaving out the
    few whose pair is not unique (e.g. delta_box = 0); a file none of whose states are in the table
    (another table) is refused rather than paired with wrong states."""

    # saved: the file's arrays as read_out_of_fold gave them to a caller that studies them too
    # (tools/noise_gate_study.py), so that the states matched are those it studies: a second read
    # could see a file replaced meanwhile.
    saved = read_out_of_fold(path) if saved is None else saved
    delta_box, delta_true, r_mean = (np.asarray(saved[key], np.float64) for key in ("delta_box", "delta_true", "r"))
    residual = delta_true - delta_box - r_mean
    if len(pool_folds(table, config, 2)[0]) == len(delta_true):
        for folds in range(2, 11):  # the study's own table: its fold-by-fold order
            order, fold_of = pool_folds(table, config, folds)
            rows = np.concatenate([order[fold_of == k] for k in range(folds)])
            if np.array_equal(table["delta_box"][rows], delta_box) and np.array_equal(table["delta_true"][rows], delta_true):
                return rows, residual
    table_keys, file_keys = _state_keys(table["delta_box"], table["delta_true"]), _state_keys(delta_box, delta_true)
    row_of, seen = {}, set()
    for row, key in enumerate(table_keys):
        row_of[key] = -1 if key in seen else row  # a pair two states share names neither
        seen.add(key)
    repeated = {key for key, count in Counter(file_keys).items() if count > 1}
    found = np.array([-1 if key in repeated else row_of.get(key, -1) for key in file_keys], dtype=np.int64)
    if not (found >= 0).any():
        raise ValueError(f"{path} holds no state of this table (their deltas differ): rerun tools/gate_study.py --save "
                         "on this table and config, or leave noise.oof empty (no label-noise member)")
    return found, residual


def read_out_of_fold(path: str, given_as: str = "noise.oof") -> dict:
    """The arrays OUT_OF_FOLD_KEYS of a gate study's .npz, read once (delta_box, delta_true and r as
    float64, of one length); a ValueError naming the file for anything else. ``given_as`` is how
    the caller's user named the file (the config key, or a script's --load / --oof), which starts
    the message: "noise.oof:" of a file given as gate_study.py --load sent users to a config key
    they never set (outside probe, round 26, left; fixed in round 27)."""
    from .._atomic import check_input_file

    from .._atomic import InputPathError

    try:
        check_input_file(path, "a gate study's out-of-fold file (tools/gate_study.py --save)")  # a FIFO would block
    except InputPathError as error:
        # "cannot read training/out_of_fold/gate_oof_36101.npz: no such file" did not say the path came from
        # the config's noise.oof (outside probe, new user's journey round two).
        way = (": give a gate study's out-of-fold file (tools/gate_study.py --save), or no label-noise member: "
               "--set noise.oof= --set noise.weight=0") if given_as == "noise.oof" else ""
        raise InputPathError(f"{given_as}: {error}{way}") from None
    wrong = f"{given_as}: {path} is not a gate study's out-of-fold file (tools/gate_study.py --save)"
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: np.asarray(saved[key]) for key in OUT_OF_FOLD_KEYS if key in saved.files}
    except (AttributeError, TypeError):  # a .npy file: one array, no .files, no context manager
        raise ValueError(f"{wrong}: one array, not an .npz of {', '.join(OUT_OF_FOLD_KEYS)}") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:  # not NumPy's at all
        raise ValueError(f"{wrong} ({' '.join(str(error).split())[:200]})") from None
    missing = [key for key in OUT_OF_FOLD_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{wrong}: no {', '.join(missing)}")
    for key in ("delta_box", "delta_true", "r"):
        if arrays[key].dtype.kind not in "fiu":  # strings: astype's "could not convert string to float", no file named
            raise ValueError(f"{wrong}: its {key} holds {arrays[key].dtype} values, not numbers")
        arrays[key] = arrays[key].astype(np.float64)
    if len({arrays[key].shape for key in OUT_OF_FOLD_KEYS}) != 1 or arrays["r"].ndim != 1:
        raise ValueError(f"{wrong}: its arrays are not of one length")
    # A NaN residual made the label-noise member's fit NaN (its starting bias and loss), and with it
    # every gate: trained without a word (outside probe, round 38). A non-finite delta names no
    # state of a table (preprocessed tables hold finite numbers): such a state is left unmatched.
    bad = np.flatnonzero(~np.isfinite(arrays["r"]))
    if len(bad):
        raise ValueError(f"{given_as}: {path}: its r (the members' out-of-fold prediction) is not finite at {len(bad)} "
                         f"of {arrays['r'].size} states (the first at state {bad[0]}): the label-noise member would "
                         "learn NaN; rerun tools/gate_study.py --save, or leave noise.oof empty (no label-noise member)")
    return arrays


def _state_keys(delta_box: np.ndarray, delta_true: np.ndarray) -> list:
    pairs = np.stack([np.asarray(delta_box, dtype=np.float64), np.asarray(delta_true, dtype=np.float64)], axis=1)
    return [row.tobytes() for row in pairs]


def training_residuals(table: dict, rows: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
    """The out-of-fold residuals (config.noise_oof) of the states among ``rows``: (their rows, e).
    Called before any member is fitted, so that a file of another table fails in a second, not
    after the members' half hour."""
    oof_rows, residual = out_of_fold_rows(config.noise_oof, table, config)
    keep = np.isin(oof_rows, rows)
    if keep.sum() < 2:
        raise ValueError(f"noise.oof {config.noise_oof} holds no out-of-fold residual of the training states: "
                         "rerun tools/gate_study.py --save on this table and config, or leave noise.oof empty "
                         "(no label-noise member)")
    return oof_rows[keep], residual[keep]


def fit_label_noise(ensemble, table: dict, config, residuals: tuple[np.ndarray, np.ndarray], total_rows: int,
                    log=None) -> None:
    """Fit ``ensemble``'s label-noise member on ``residuals`` (training_residuals: rows, e) and set
    its gate weight config.noise_weight. In place."""

    rows, residual = residuals
    X = training_arrays(table, rows, config)[0]  # mirrored as the members see them
    target = np.tile(np.abs(residual), len(X) // len(rows))
    ensemble.noise_member = fit_noise_member(X, target, float(ensemble.r_scale), seed=config.seed + 3000,
                                             width=config.noise_width, depth=config.noise_depth, lr=config.lr,
                                             weight_decay=config.weight_decay, batch_size=config.noise_batch_size,
                                             epochs=config.noise_epochs)
    ensemble.label_noise_weight.fill_(float(config.noise_weight))
    if log:
        log(f"label-noise member fitted on the out-of-fold residuals of {len(rows)} of the {total_rows} "
            f"training states (gate weight k = {config.noise_weight})")
