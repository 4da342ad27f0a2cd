"""The training table's rows as the ensemble's fits see them: which are held out, the pool's CV
folds, and the rows' network inputs in every training image (docs/training.md). Shared by the
ensemble's training (ensemble_train.py) and the label-noise member (label_noise.py)."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import numpy as np

from .dataset import nu_nubar_swapped, species_relabelled


def box3d_settings(value) -> dict:
    """A table's or checkpoint's Box3D settings (a dict, or its text as stored in HDF5) with the
    defaults filled in."""
    if isinstance(value, dict):
        return value
    parsed = ast.literal_eval(str(value)) if value else {}
    return {"scheme": "pairwise", "form": "delta", "lebedev_order": 17, "z_method": "exact", "max_flux_factor": 0.98,
            **parsed}


def holdout_mask(sources, patterns) -> np.ndarray:
    names = [Path(str(s)).name for s in sources]
    return np.array([any(fnmatch.fnmatch(name, p) for p in patterns) for name in names], bool)


def _state_keys_of(table: dict):
    """One comparable key per row (its rest-frame initial four-fluxes over N_tot, bit for bit, as a void
    scalar), or None for a table without them (a table of deltas alone, a label-noise match)."""
    initial = table.get("rest", {}).get("F_init_rest")
    if initial is None:
        return None
    F = np.ascontiguousarray(np.asarray(initial, dtype=np.float64)).reshape(len(initial), -1)
    return F.view(np.dtype((np.void, F.shape[1] * F.itemsize))).reshape(-1)


def held_out_rows(table: dict, patterns) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the rows of source files matching ``patterns``, mask of the other rows that repeat one of
    their states): neither is trained on. A copy of a held-out run under another file name was trained on,
    and the held-out table scored states trained on (outside probe, training round five)."""
    held = holdout_mask(table["sources"], patterns)
    keys = _state_keys_of(table)
    if keys is None or not held.any() or held.all():
        return held, np.zeros_like(held)
    return held, ~held & np.isin(keys, keys[held])


def features_of(table: dict, rows: np.ndarray, features: str, swapped: bool = False, species=None) -> np.ndarray:
    """Network inputs of ``rows``; ``swapped``: of their nu <-> nubar mirror images; ``species``:
    of the images with species a relabelled as species[a] (dodo.training.dataset.species_relabelled)."""
    from .features import feature_matrix

    rest = {key: np.asarray(value)[rows] for key, value in table["rest"].items()}
    if swapped:
        rest = nu_nubar_swapped(rest)
    if species is not None:
        rest = species_relabelled(rest, species)
    # The crossing inputs at the table's own Box3D settings: those the exported package records
    # and the runtime computes them with (a file preprocessed at order 41 trains at order 41).
    return feature_matrix(features, rest["invariants"], rest["F_init_rest"], rest["F_box_rest"], rest["growth_over_ntot"],
                          box3d=box3d_settings(table.get("box3d")))


def training_images(config) -> list:
    """The species relabellings each training row is learned in (None: as given), in the order
    their blocks of rows follow each other: with ``mirror`` the nu <-> nubar image, with
    ``flavour_images`` the mu <-> tau image and (with mirror) both exchanges. Each is a symmetry of
    the fast-flavour equations under which nu_e's change and the growth rate are the cell's own;
    the runtime evaluates the network on a cell's canonical image (docs/runtime.md, step 2), so the
    networks see every image the runtime may evaluate."""
    from ..conventions import MU_TAU_EXCHANGE, NU_NUBAR_EXCHANGE

    images = [None]
    if config.mirror:
        images.append(np.array(NU_NUBAR_EXCHANGE))
    if config.flavour_images:
        images.append(np.array(MU_TAU_EXCHANGE))
        if config.mirror:
            images.append(np.array(NU_NUBAR_EXCHANGE)[np.array(MU_TAU_EXCHANGE)])
    return images


def training_arrays(table: dict, rows: np.ndarray, config):
    """``(X, r, g)`` of ``rows`` in every image of training_images, one block of len(rows) rows
    per image (callers tile per-state arrays by len(X) // len(rows))."""
    r, g = table["r"][rows], table["log_growth"][rows]
    images = training_images(config)
    X = np.concatenate([features_of(table, rows, config.features, species=species) for species in images])
    return X, np.tile(r, len(images)), np.tile(g, len(images))


def pool_folds(table: dict, config, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """The training pool (rows of files not matching config.holdout) in a fixed shuffle drawn with
    config.seed, and each shuffled row's fold (0 .. folds-1): the split of every CV here."""
    held, copies = held_out_rows(table, config.holdout)
    pool = np.flatnonzero(~held & ~copies)
    order = np.random.default_rng(config.seed).permutation(pool)
    fold_of = np.arange(len(order)) % folds
    # Every row of one state (a database merged with a copy of itself) goes to the fold of the row drawn
    # first: drawn by row, a state was trained on by the fold that tested its repeat (outside probe,
    # training round five).
    keys = _state_keys_of(table)
    if keys is not None and len(order):
        _, first, inverse = np.unique(keys[order], return_index=True, return_inverse=True)
        fold_of = fold_of[first][inverse.reshape(-1)]
    return order, fold_of
