"""The label-noise member of the density-residual ensemble (docs/training.md, "Label-noise gate").

The members' spread measures how much they disagree, not how far their common answer is from the
truth: where the solver's label is noisy, or all members share a bias, they agree and are wrong
together. Out-of-fold residuals e = delta_true - delta_box - r_mean (each state predicted by
members trained without it: ``tools/gate_study.py --save``) show that error directly. A small
network learns its scale a(x) = E[|e| | x], and the gate becomes
r^2 / (r^2 + (c spread)^2 + (k a)^2) (ensemble.py's module docstring): k = 0 is the spread gate.
"""
from __future__ import annotations

import numpy as np

from .ensemble import fit_noise_member

#: Arrays a gate study's out-of-fold file holds (tools/gate_study.py --save).
OUT_OF_FOLD_KEYS = ("delta_box", "delta_true", "r", "sigma", "d2", "emu")


def out_of_fold_rows(path: str, table: dict, config, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``table``, out-of-fold residual e) of a gate study's file, which lists the pool's
    rows fold by fold in pool_folds' order. Checked against the table's own deltas, so a file made
    on another table, pool or fold count is refused rather than paired with the wrong states."""
    from .ensemble_train import pool_folds

    with np.load(path) as saved:
        missing = [key for key in OUT_OF_FOLD_KEYS if key not in saved.files]
        if missing:
            raise ValueError(f"{path} is not a gate study's out-of-fold file (tools/gate_study.py --save): "
                             f"no {', '.join(missing)}")
        delta_box, delta_true, r_mean = (np.asarray(saved[key], dtype=np.float64) for key in ("delta_box", "delta_true", "r"))
    order, fold_of = pool_folds(table, config, folds)
    rows = np.concatenate([order[fold_of == k] for k in range(folds)])
    if len(rows) != len(delta_true) or not (np.array_equal(table["delta_box"][rows], delta_box)
                                            and np.array_equal(table["delta_true"][rows], delta_true)):
        raise ValueError(f"{path} does not hold this table's training pool in {folds} folds (its states differ): "
                         "rerun tools/gate_study.py --save on this table and config, or leave noise.oof empty "
                         "(no label-noise member)")
    return rows, delta_true - delta_box - r_mean


def fit_label_noise(ensemble, table: dict, rows: np.ndarray, config, log=None) -> None:
    """Fit ``ensemble``'s label-noise member on the out-of-fold residuals (config.noise_oof) of the
    states among ``rows`` and set its gate weight config.noise_weight. In place."""
    oof_rows, residual = out_of_fold_rows(config.noise_oof, table, config, config.noise_folds)
    keep = np.isin(oof_rows, rows)
    if keep.sum() < 2:
        raise ValueError(f"{config.noise_oof} holds no out-of-fold residual of the training states")
    X = mirrored_features(table, oof_rows[keep], config)
    target = np.tile(np.abs(residual[keep]), len(X) // int(keep.sum()))
    ensemble.noise_member = fit_noise_member(X, target, float(ensemble.r_scale), seed=config.seed + 3000,
                                             width=config.noise_width, depth=config.noise_depth, lr=config.lr,
                                             weight_decay=config.weight_decay, batch_size=config.noise_batch_size,
                                             epochs=config.noise_epochs)
    ensemble.label_noise_weight.fill_(float(config.noise_weight))
    if log:
        log(f"label-noise member fitted on {int(keep.sum())} out-of-fold residuals (gate weight k = {config.noise_weight})")


def mirrored_features(table: dict, rows: np.ndarray, config) -> np.ndarray:
    """The rows' features, followed by their nu <-> nubar mirrors' when config.mirror (as the members see them)."""
    from .ensemble_train import features_of

    X = features_of(table, rows, config.features)
    if config.mirror:
        X = np.concatenate([X, features_of(table, rows, config.features, swapped=True)])
    return X
