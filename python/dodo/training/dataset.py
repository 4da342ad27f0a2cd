"""Training data: splits, rest-frame targets, invariant normalisation, torch datasets.

Each row yields (rest frame, units of the cell's N_tot): invariants [27] (raw), F_init [6,4],
F_box [6,4], dF_true = F_true - F_box [6,4], and a loss weight (1, or N_tot/target_scale).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .frames import boost_to_rest
from .preprocess import read_preprocessed_attrs
from .readers import DataFileError

FIELDS = ("invariants", "F_init_rest", "F_box_rest", "dF_true_rest", "cell_weight")


def non_finite_rows(count: int) -> str:
    """The one message for rows of a preprocessed file holding NaN or Inf (without the file name)."""
    return (f"{count} row(s) with non-finite values (NaN or Inf in F_init, F_true, F_box, u or the invariants); dodo "
            "preprocess never writes them (the file is damaged or was edited): re-run dodo preprocess")


def _finite_rows(values) -> np.ndarray:
    values = np.asarray(values)
    return np.isfinite(values).all(axis=tuple(range(1, values.ndim)))


def rest_frame_arrays(F_init, F_box, F_true, u, invariants, target_scale=None) -> dict:
    """Float64 per-cell training arrays from lab-frame rows (see module docstring)."""
    finite = _finite_rows(F_init) & _finite_rows(F_box) & _finite_rows(F_true) & _finite_rows(u) & _finite_rows(invariants)
    if not finite.all():  # a NaN in F_init was "rows with non-positive total comoving density N_tot"
        raise DataFileError(non_finite_rows(int(np.count_nonzero(~finite))))
    u_species = np.asarray(u, dtype=np.float64)[:, None, :]
    F_init_rest = boost_to_rest(F_init, u_species)
    ntot = F_init_rest[..., 0].sum(axis=1)
    if np.any(~(ntot > 0)):
        raise DataFileError("rows with non-positive total comoving density N_tot in the preprocessed file")
    scale = ntot[:, None, None]
    F_box_rest = boost_to_rest(F_box, u_species) / scale
    F_true_rest = boost_to_rest(F_true, u_species) / scale
    with np.errstate(over="ignore"):  # a weight beyond range is said by read_rows, naming data.target_scale
        weight = np.ones_like(ntot) if target_scale is None else ntot / float(target_scale)
    return {"invariants": np.asarray(invariants, dtype=np.float64), "F_init_rest": F_init_rest / scale,
            "F_box_rest": F_box_rest, "dF_true_rest": F_true_rest - F_box_rest, "cell_weight": weight}


def species_relabelled(arrays: dict, species) -> dict:
    """The same cells with species a relabelled as species[a] (training arrays of
    rest_frame_arrays): the per-species rows and the pair invariants follow the relabelling."""
    from ..conventions import N_SPECIES, invariant_pairs

    species = np.asarray(species, dtype=np.int64)
    if sorted(species.tolist()) != list(range(N_SPECIES)):
        raise ValueError(f"species must be a permutation of 0..{N_SPECIES - 1}; got {species.tolist()}")
    column_of = {pair: N_SPECIES + k for k, pair in enumerate(invariant_pairs())}
    columns = list(species) + [column_of[tuple(sorted((int(species[a]), int(species[b]))))] for a, b in invariant_pairs()]
    out = dict(arrays)
    out["invariants"] = np.asarray(arrays["invariants"])[:, columns]
    for name in ("F_init_rest", "F_box_rest", "dF_true_rest"):
        if name in arrays:
            out[name] = np.asarray(arrays[name])[:, species]
    return out


def nu_nubar_swapped(arrays: dict) -> dict:
    """The same cells with neutrinos and antineutrinos exchanged (training arrays of
    rest_frame_arrays). The fast-flavour equations are symmetric under this exchange (H -> -H*,
    docs/qke.md), Box3D is equivariant under it (tests), so each swapped cell is as true a sample
    as the original; the network, which sees invariants, is not symmetric by construction."""
    from ..conventions import NU_NUBAR_EXCHANGE

    return species_relabelled(arrays, NU_NUBAR_EXCHANGE)


def mu_tau_swapped(arrays: dict) -> dict:
    """The same cells with the mu and tau flavours exchanged; nu_e's change and the growth rate are
    those of the cell, as for nu_nubar_swapped."""
    from ..conventions import MU_TAU_EXCHANGE

    return species_relabelled(arrays, MU_TAU_EXCHANGE)


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def get(self, name: str) -> np.ndarray:
        if name not in ("train", "val", "test", "all"):
            raise ValueError(f"unknown split {name!r}; expected train, val, test or all")
        if name == "all":
            return np.sort(np.concatenate([self.train, self.val, self.test]))
        return getattr(self, name)


#: The checkpoint's data.split of a run whose split keeps a state's rows together (make_splits' state_of).
SPLIT_BY_STATE = "by_state"


def make_splits(n_rows: int, train_fraction: float, val_fraction: float, seed: int, max_samples=None,
                state_of=None) -> Splits:
    """Random train/val/test split by seed (row indices sorted within each split). ``state_of``: each
    row's first row of the same initial state (first_row_of_each_state); every row of a state then goes
    to the split of the one drawn first. Drawn by row alone, a state and its repeat (merged databases)
    fell on both sides, so the test metrics included states trained on (outside probe, training round
    five). A file without repeats is split as before."""
    order = np.random.default_rng(seed).permutation(n_rows)
    if max_samples is not None:
        order = order[:max_samples]
    n = len(order)
    n_train = max(1, int(round(train_fraction * n)))
    n_val = int(round(val_fraction * n))
    side = np.full(n, 2, dtype=np.int8)
    side[:n_train], side[n_train:n_train + n_val] = 0, 1
    if state_of is not None:
        _, first, inverse = np.unique(np.asarray(state_of)[order], return_index=True, return_inverse=True)
        side = side[first][inverse.reshape(-1)]
    return Splits(*(np.sort(order[side == k]) for k in range(3)))


def first_row_of_each_state(path: str | Path) -> np.ndarray | None:
    """For each row of a preprocessed file, the first row holding its initial state (F_init and u, bit
    for bit; dodo.training.preprocess.repeated_states); None when no state is repeated."""
    import h5py

    from .preprocess import repeated_states

    with h5py.File(path, "r") as handle:
        repeats = repeated_states(handle)
        n = int(handle["F_init"].shape[0])
    if not repeats["rows"]:
        return None
    state_of = np.arange(n)
    state_of[np.asarray(repeats["rows"], dtype=np.int64)] = repeats["first"]
    return state_of


def rest_state_hashes_of(path: str | Path, rows) -> "torch.Tensor":
    """preprocess.rest_state_hashes of the rows ``rows`` of a preprocessed file, read a block at a time, as
    an int64 tensor (the uint64 bits; what a checkpoint records as data.states)."""
    import h5py

    from .._state_hashes import rest_state_hashes
    from .preprocess import _HASH_ROWS

    rows = np.sort(np.asarray(rows, dtype=np.int64))
    parts = [np.zeros(0, np.uint64)]
    with h5py.File(path, "r") as handle:
        n = int(handle["F_init"].shape[0])
        for start in range(0, n, _HASH_ROWS):
            stop = min(n, start + _HASH_ROWS)
            chosen = rows[(rows >= start) & (rows < stop)] - start
            if len(chosen):
                parts.append(rest_state_hashes(read_dataset(handle, "F_init", slice(start, stop))[chosen],
                                               read_dataset(handle, "u", slice(start, stop))[chosen]))
    return torch.from_numpy(np.unique(np.concatenate(parts)).view(np.int64).copy())


def count_rows(path: str | Path) -> int:
    import h5py

    with h5py.File(path, "r") as handle:
        return int(handle["F_init"].shape[0])


def read_dataset(handle, name: str, index) -> np.ndarray:
    """``handle[name][index]`` of an open preprocessed file, or a :class:`DataFileError` naming the file
    and the dataset when HDF5 cannot read it (a damaged chunk, a bad checksum): h5py's `Can't
    synchronously read data (filter returned failure during read)` named neither, and `dodo train`,
    `evaluate` and `inspect` printed it alone (outside probe, round 31)."""
    try:
        return handle[name][index]
    except OSError as error:
        from .._memory import hdf5_ran_out_of_memory, more_memory_advice

        # HDF5's "memory allocation failed for chunk" (an address-space limit) is no damaged file: re-running
        # dodo preprocess would not help (outside probe, data-loss round ten).
        cause = f"not enough memory to read it (the file is not damaged): {more_memory_advice()}" \
            if hdf5_ran_out_of_memory(str(error)) else \
            "the file is damaged (a corrupted or truncated copy?); re-run dodo preprocess"
        raise DataFileError(f"{handle.filename}: cannot read '{name}' ({' '.join(str(error).split())}): "
                            f"{cause}") from None


def read_rows(handle, indices: np.ndarray, target_scale=None) -> dict:
    """Rows ``indices`` (sorted, unique) of an open preprocessed file, as training arrays."""
    idx = np.asarray(indices)
    get = (lambda name: read_dataset(handle, name, idx)) if len(idx) else \
        (lambda name: np.zeros((0,) + handle[name].shape[1:]))
    rows = [get(name) for name in ("F_init", "F_box", "F_true", "u", "invariants")]  # read_dataset names the file
    try:
        arrays = rest_frame_arrays(*rows, target_scale)
    except DataFileError as error:  # name the file
        raise DataFileError(f"{handle.filename}: {error}") from None
    _check_cell_weights(arrays["cell_weight"], target_scale, handle.filename)
    finite = np.ones(len(idx), dtype=bool)
    for values in arrays.values():  # the boosts of finite rows may still overflow
        finite &= _finite_rows(values)
    if not finite.all():  # `dodo evaluate` printed a table of nan with exit 0; training failed at step 1
        raise DataFileError(f"{handle.filename}: {non_finite_rows(int(np.count_nonzero(~finite)))}")
    return arrays


def _check_cell_weights(weight: np.ndarray, target_scale, filename) -> None:
    """A ConfigError naming data.target_scale when the loss weights N_tot / target_scale of rows are beyond
    float32, the training tensors' type: `data.target_scale: 1e-300` ended in "... rows with non-finite values
    ...; dodo preprocess never writes them (the file is damaged or was edited)", the file blamed, and
    1e-10 in "non-finite loss at epoch 1, step 1 ...; lower training.lr" (outside probe, training round four)."""
    from .config import FLOAT32_MAX, ConfigError

    if target_scale is None or not len(weight):
        return
    beyond = ~(np.abs(weight) <= FLOAT32_MAX)
    if beyond.any():
        ntot = np.abs(weight[beyond]) * float(target_scale)
        largest = f" (N_tot up to {np.max(ntot[np.isfinite(ntot)]):.3g})" if np.isfinite(ntot).any() else ""
        raise ConfigError(f"data.target_scale = {target_scale!r} makes the loss weight N_tot / target_scale of "
                          f"{np.count_nonzero(beyond)} row(s) of {filename}{largest} larger "
                          f"than a float32 holds: give a scale near the data's |F_true| ('p99' takes its 99th "
                          "percentile), or null (each cell in units of its own N_tot)")


class CellDataset(torch.utils.data.Dataset):
    """Rows of a preprocessed file. ``__getitems__`` returns a whole batch at once.

    In memory (default) the split is read once; otherwise each DataLoader worker opens its own
    HDF5 handle on first use (h5py handles must not cross a fork). augment_nu_nubar (in memory
    only) appends every row's neutrino/antineutrino mirror.
    """

    def __init__(self, path: str | Path, indices: np.ndarray, target_scale=None, in_memory: bool = True,
                 dtype=torch.float32, augment_nu_nubar: bool = False) -> None:
        self.path = str(path)
        self.indices = np.asarray(indices)
        self.target_scale = target_scale
        self.dtype = dtype
        self._handle = None
        self._arrays = None
        # Read from disk per batch, by each epoch's new workers: the file the run started with
        # (check_unchanged), not whatever file its name points at later.
        self._identity = None if in_memory else _identity(os.stat(self.path))
        if in_memory:
            import h5py

            with h5py.File(self.path, "r") as handle:
                arrays = read_rows(handle, self.indices, target_scale)
            if augment_nu_nubar:  # each row, then its nu <-> nubar mirror
                mirror = nu_nubar_swapped(arrays)
                arrays = {k: np.concatenate([v, mirror[k]]) for k, v in arrays.items()}
                self.indices = np.concatenate([self.indices, self.indices])
            self._arrays = {k: torch.as_tensor(v, dtype=dtype) for k, v in arrays.items()}

    def __len__(self) -> int:
        return len(self.indices)

    def check_unchanged(self, stat: os.stat_result | None = None) -> None:
        """A DataFileError where the rows are read from disk (in_memory false) and the path now names
        another file than the one the dataset started with (``stat``: that of a handle just opened).
        Each epoch's data-loader workers open the path anew: a `dodo preprocess --overwrite` of data.path
        during a run had its later epochs train on the new file's rows, and the end's SHA-256 check then
        advised putting the first file back and resuming from last.pt, a model trained on both (outside
        probe, data-loss round eight)."""
        if self._identity is None:
            return
        try:
            now = _identity(stat if stat is not None else os.stat(self.path))
        except FileNotFoundError:
            now = None
        if now != self._identity:
            raise replaced_data_file(self.path)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, positions):
        positions = np.asarray(positions, dtype=np.int64)
        if self._arrays is not None:
            index = torch.as_tensor(positions)
            return tuple(self._arrays[name][index] for name in FIELDS)
        if self._handle is None:
            import h5py

            handle = h5py.File(self.path, "r")
            try:
                self.check_unchanged(os.fstat(handle.id.get_vfd_handle()))
            except BaseException:
                handle.close()
                raise
            self._handle = handle
        rows = self.indices[positions]
        order = np.argsort(rows)
        unique, inverse = np.unique(rows[order], return_inverse=True)
        arrays = read_rows(self._handle, unique, self.target_scale)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        take = inverse[back]
        return tuple(torch.as_tensor(arrays[name][take], dtype=self.dtype) for name in FIELDS)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """The file a name points at (device, inode), and whether it was rewritten in place (size, mtime)."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def replaced_data_file(path: str) -> DataFileError:
    return DataFileError(
        f"{path} was replaced while this run trained (another command, e.g. dodo preprocess, rewrote it), and "
        "data.in_memory is false: the next epoch would read the new file's rows as the run's. The checkpoints "
        "of the epochs before are kept: put the run's data file back and resume with --resume (the run's "
        "last.pt), or train again on the new file")


def collate_batch(batch):
    """The dataset already returns a stacked batch (``__getitems__``)."""
    return batch


def invariant_statistics(path: str | Path, indices: np.ndarray, block: int = 262144) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the invariants over ``indices`` (the training split only)."""
    import h5py

    total = np.zeros(27)
    total_sq = np.zeros(27)
    with h5py.File(path, "r") as handle:
        non_finite = 0
        for start in range(0, len(indices), block):
            rows = read_dataset(handle, "invariants", np.asarray(indices[start:start + block]))
            finite = _finite_rows(rows)
            non_finite += int(np.count_nonzero(~finite))
            rows = rows[finite]
            total += rows.sum(axis=0)
            total_sq += (rows ** 2).sum(axis=0)
    if non_finite:  # refused here, before NumPy's RuntimeWarning on inf - inf (three lines, not one)
        raise DataFileError(f"{path}: {non_finite_rows(non_finite)}")
    n = max(len(indices), 1)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return mean, np.where(std > 1e-12, std, 1.0)


def percentile_target_scale(path: str | Path, indices: np.ndarray, q: float = 99.0) -> float:
    """The seed's global target scale: percentile q of |F_true| over the training split."""
    import h5py

    with h5py.File(path, "r") as handle:
        values = np.abs(read_dataset(handle, "F_true", np.asarray(indices[:1_000_000])))
    return float(np.percentile(values, q))


def check_preprocessed(path: str | Path, expected_box3d: dict) -> dict:
    """Attributes of the file, refusing one made with other Box3D settings."""
    attrs = read_preprocessed_attrs(path)
    stored = attrs.get("box3d", {})
    differing = {k: (stored.get(k), v) for k, v in expected_box3d.items() if stored.get(k) != v}
    if differing:
        detail = ", ".join(f"{k}: file {a!r} vs config {b!r}" for k, (a, b) in differing.items())
        raise DataFileError(f"{path} was preprocessed with other Box3D settings ({detail}); "
                            "re-run `dodo preprocess` with the settings you will export, or change data.box3d")
    return attrs
