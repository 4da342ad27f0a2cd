"""`dodo evaluate`: the model-vs-Box3D metric table of a checkpoint on a data split."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from .config import DataConfig, from_dict
from .dataset import SPLIT_BY_STATE, CellDataset, check_preprocessed, count_rows, first_row_of_each_state, make_splits
from .metrics import format_metric_table
from .train import (check_training_data, closure_from_checkpoint, load_checkpoint, metrics_for, predict,
                    refuse_weights_that_are_not_finite)


def checkpoint_data(checkpoint: dict, checkpoint_path, data_path, action: str) -> Path:
    """The file ``action`` (evaluate, inspect) reads: ``data_path``, or when None the checkpoint's
    training file, which must still be the file it was trained on (the resume check: same
    SHA-256), else its splits would be other rows. Box3D settings checked either way."""
    given = data_path is not None
    data_path = Path(data_path if given else checkpoint["data"]["path"])
    if not given and not data_path.exists():
        # "run dodo preprocess first" was wrong advice when the file exists elsewhere: a recorded
        # relative path is the training's working directory's, looked up here in this one.
        where = "" if data_path.is_absolute() else f" (a path relative to where it trained; looked up in {Path.cwd()})"
        raise ValueError(f"{checkpoint_path}: its training file {data_path} is not found{where}; "
                         f"pass --data FILE to {action} on that file or another preprocessed one")
    check_preprocessed(data_path, checkpoint["data"]["box3d"])
    if not given:
        check_training_data(checkpoint, checkpoint_path, data_path, action,
                            " (its splits would be other rows; pass --data FILE to score another file)",
                            data_sha256=_file_sha256(data_path))
    return data_path


def _file_sha256(path) -> str:
    """SHA-256 of the file at ``path``, read once per command (the data check and the split both
    ask; a preprocessed table may be gigabytes)."""
    import os

    status = os.stat(path)  # a file rewritten or replaced has another inode, size or change time: read again
    return _sha256_of(os.path.realpath(path), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns,
                      status.st_ctime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, *identity) -> str:
    from .._atomic import sha256_file

    return sha256_file(path)


def data_identity(path):
    """(device, inode, size, modification and change times) of the data file, taken before its split is
    chosen (by its SHA-256) and compared once its rows are read (:func:`refuse_data_changed_since`)."""
    import os

    status = os.stat(path)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def refuse_data_changed_since(data_path, identity, command: str) -> None:
    """Refuse a report whose data file was replaced or changed between the choice of its split and the
    reading of its rows: `dodo evaluate` (or inspect) of a run's training file that a `dodo preprocess`
    rewrote meanwhile reported the rows at the checkpoint's test positions of the new file, possibly
    states the model trained on, as its test split (outside probe, data-loss round twelve)."""
    try:
        now = data_identity(data_path)
    except OSError:
        now = None
    if now != identity:
        raise ValueError(f"{data_path} was replaced or changed while dodo {command} read it (another command, e.g. dodo "
                         "preprocess, rewrote it): its split was chosen on the earlier file, so nothing is reported; "
                         "run again once that writer has finished")


def resolve_split(checkpoint: dict, data_path: Path, split: str | None, default: str) -> str:
    """The split to read of ``data_path``: ``split``, or when None ``default`` on the checkpoint's
    training file (same SHA-256) and 'all' on any other file. The checkpoint's train/val/test
    split describes its training file only: on another file the same seed and fractions drew other
    rows, and on a file that shares states with the training file (the table re-preprocessed after
    the campaign grew) a "test" split that holds states the model trained on, reported as its test
    split without a word (outside probe, round 23). So train/val/test of another file is refused."""
    if split == "all":
        return split
    own = checkpoint["data"].get("sha256") == _file_sha256(data_path)
    if own:
        return default if split is None else split
    if split is None:
        return "all"
    raise ValueError(f"--split {split} selects the checkpoint's {split} rows of the file it was trained on; {data_path} "
                     "is another file (its SHA-256 differs), whose rows that split does not describe (drawn again, "
                     "they may hold states the model trained on): use --split all, or --data with the training file")


def split_indices_for(checkpoint: dict, data_path: Path, split: str):
    """The checkpoint's own split when evaluating its training file, else all rows for 'all'."""
    if split == "all" and checkpoint["data"].get("sha256") != _file_sha256(data_path):
        # Every row of another file: its rows were drawn like the training file's split, data.max_samples of them
        # (a model trained with max_samples 15 was evaluated on 15 random rows of a 32-row file as "split 'all'";
        # outside probe, training round three).
        import numpy as np

        return np.arange(count_rows(data_path))
    data_config = from_dict(DataConfig, checkpoint["config"]["data"], "checkpoint data")
    # The run's own split: by state where it was drawn so, by row where a dodo before that trained it.
    by_state = checkpoint["data"].get("split") == SPLIT_BY_STATE
    splits = make_splits(count_rows(data_path), data_config.train_fraction, data_config.val_fraction,
                         data_config.split_seed, data_config.max_samples,
                         state_of=first_row_of_each_state(data_path) if by_state else None)
    return splits.get(split)


def _row_keys(path, indices=None) -> list[bytes]:
    """One key per row of a preprocessed file: its lab-frame F_init and u, bit for bit (two files
    preprocessed from the same solver or Emu rows hold the same bytes)."""
    import h5py
    import numpy as np

    from .dataset import read_dataset

    with h5py.File(path, "r") as handle:
        F = np.asarray(read_dataset(handle, "F_init", ()), dtype=np.float64)
        u = np.asarray(read_dataset(handle, "u", ()), dtype=np.float64)
    rows = np.ascontiguousarray(np.concatenate([F.reshape(len(F), -1), u.reshape(len(u), -1)], axis=1))
    if indices is not None:
        rows = rows[np.asarray(indices, dtype=np.int64)]
    return [row.tobytes() for row in rows]


def training_states_in(checkpoint: dict, data_path: Path, indices) -> dict:
    """How many of the rows ``indices`` of ``data_path`` (a file other than the checkpoint's training
    file) are states of that training file, and how many of those are in its train and validation
    splits: `dodo evaluate --data other.h5` scored a file that shares states with the training file
    (a superset, a re-preprocessed table) without counting them (outside probe, training round three).
    Rows are matched by content (F_init and u, bit for bit), as learning-curve --emu matches states."""
    training = Path(checkpoint["data"]["path"])
    result = {"training_file": str(training), "checked": False}
    try:
        same = training.is_file() and checkpoint["data"].get("sha256") == _file_sha256(training)
    except OSError:
        same = False
    if not same:
        result["why_not"] = ("not found" if not training.exists() else
                             "not the file it trained on (its SHA-256 differs)")
        return result
    splits = {name: split_indices_for(checkpoint, training, name) for name in ("train", "val", "test")}
    keys = _row_keys(training)
    split_of = dict.fromkeys(keys, "unused")  # rows beyond data.max_samples: in no split, never trained on
    for name in ("test", "val", "train"):  # a state in two splits (a duplicated row) counts as trained on
        split_of.update({keys[int(i)]: name for i in splits[name]})
    found = [split_of.get(key) for key in _row_keys(data_path, indices)]
    result.update(checked=True, rows=len(found), shared=sum(name is not None for name in found),
                  in_train_split=found.count("train"), in_val_split=found.count("val"),
                  in_test_split=found.count("test"), in_no_split=found.count("unused"))
    return result


def training_states_note(table: dict) -> str:
    """The line `dodo evaluate` prints about the rows a checkpoint's training file shares with --data."""
    seen = table.get("training_states")
    if not seen:
        return ""
    if not seen["checked"]:
        return (f"\nnote: not checked whether {table['data']} shares states with the checkpoint's training file "
                f"{seen['training_file']} ({seen['why_not']}): any shared state the model trained on is scored too")
    if not seen["shared"]:
        return f"\nno row of {table['data']} is a state of the checkpoint's training file {seen['training_file']}"
    return (f"\nnote: {seen['shared']} of the {seen['rows']} rows of {table['data']} are states of the checkpoint's "
            f"training file {seen['training_file']} ({seen['in_train_split']} of its train split, trained on; "
            f"{seen['in_val_split']} of its validation split; {seen['in_test_split']} of its test split"
            + (f"; {seen['in_no_split']} in no split, beyond data.max_samples" if seen.get("in_no_split") else "")
            + "): this table "
            "includes them; for unseen states evaluate a file without them (or --data the training file, whose "
            "test split is unseen)")


def evaluate_checkpoint(checkpoint_path: str | Path, data_path: str | Path | None = None, split: str | None = None,
                        batch_size: int = 4096) -> tuple[dict, dict]:
    """Returns (metric table, prediction arrays) for ``split`` of ``data_path`` (default: training
    file). ``split`` None: 'test' of the training file, 'all' of another file (:func:`resolve_split`)."""
    checkpoint = load_checkpoint(checkpoint_path)
    data_path = checkpoint_data(checkpoint, checkpoint_path, data_path, "evaluate")
    identity = data_identity(data_path)
    split = resolve_split(checkpoint, data_path, split, "test")
    indices = split_indices_for(checkpoint, data_path, split)
    if len(indices) == 0:
        raise ValueError(f"split {split!r} of {data_path} is empty")
    closure = closure_from_checkpoint(checkpoint, checkpoint_path)
    refuse_weights_that_are_not_finite(closure, checkpoint_path, "evaluate")  # not NaN metrics (round 35)
    dataset = CellDataset(data_path, indices, checkpoint.get("target_scale"), in_memory=True, dtype=torch.float64)
    refuse_data_changed_since(data_path, identity, "evaluate")  # its rows are in memory now
    prediction = predict(closure, dataset, torch.device("cpu"), batch_size,
                         box3d=(checkpoint.get("data") or {}).get("box3d"))
    table = metrics_for(prediction)
    table["split"] = split
    table["data"] = str(data_path)
    if checkpoint["data"].get("sha256") != _file_sha256(data_path):  # another file: count the states it shares
        table["training_states"] = training_states_in(checkpoint, data_path, indices)
    elif rows_left_out(checkpoint, data_path, split, indices):
        table["rows_left_out"] = rows_left_out(checkpoint, data_path, split, indices)
    return table, prediction


def rows_left_out(checkpoint: dict, data_path, split: str, indices) -> dict | None:
    """For split 'all' of the checkpoint's own training file: the run's rows, data.max_samples of them, and how
    many rows of the file that left out (None when none). `dodo evaluate --split all` (and inspect) of the
    training file did not say (outside probe, open items of training round three)."""
    if split != "all":
        return None
    file_rows = count_rows(data_path)
    if len(indices) >= file_rows:
        return None
    max_samples = ((checkpoint.get("config") or {}).get("data") or {}).get("max_samples")
    return {"rows": int(len(indices)), "file_rows": int(file_rows), "left_out": int(file_rows - len(indices)),
            "max_samples": max_samples}


def rows_left_out_note(table: dict) -> str:
    """The line `dodo evaluate --split all` of a checkpoint's own training file prints when data.max_samples left
    rows of it out of the run (and so out of the table)."""
    left = table.get("rows_left_out")
    if not left:
        return ""
    return (f"\nnote: split 'all' is the run's {left['rows']:,} rows (data.max_samples: {left['max_samples']}) of the "
            f"{left['file_rows']:,} in {table['data']}; the other {left['left_out']:,} are in no split (never trained "
            "on) and are not in this table")


def describe(table: dict) -> str:
    return f"split '{table['split']}' of {table['data']}\n" + format_metric_table(table) + \
        f"\nlimiter active on {table['limiter_active_fraction']:.2%} of cells" + training_states_note(table) + \
        rows_left_out_note(table)
