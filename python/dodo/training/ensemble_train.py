"""Training, held-out report, learning curve and export of the density-residual ensemble.

`dodo train-ensemble --config training/configs/ensemble_default.yaml` and
`dodo learning-curve --config ... [--sizes 500,1000,all] [--folds 5] [--emu FILE]`
(docs/training.md, "The default model"). Data: a preprocessed file (`dodo preprocess`); rows
whose source file matches a `holdout` pattern are never trained on nor used to choose settings.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_path, check_input_file
from .._shown import counted
from .._state_hashes import row_hashes
from ..score import bootstrap_interval
from .config import ConfigError, check_thread_count, read_yaml_mapping, shown
from .dataset import read_dataset, rest_frame_arrays
from .safe_load import load_torch_file, write_torch_file
from .label_noise import fit_label_noise, training_residuals
from .pool import box3d_settings, features_of, held_out_rows, holdout_mask, pool_folds, training_arrays
from .ensemble import (DensityResidualEnsemble, Member, fit_ensemble, fit_growth_member, fit_student, nu_e_change,
                       predict, state_error)

CHECKPOINT_KIND = "density_residual_ensemble"


#: The sections of a train-ensemble config (training/configs/ensemble_default.yaml).
_SECTIONS = ("data", "ensemble", "growth", "distill", "noise", "output")


#: The config keys (SECTION.KEY) of EnsembleConfig's fields outside the ensemble section.
CONFIG_KEY_FIELDS = {"data.path": "data_path", "data.holdout": "holdout", "data.features": "features",
                     "output.checkpoint": "checkpoint", "growth.data": "growth_data", "growth.members": "growth_members",
                     "growth.width": "growth_width", "growth.depth": "growth_depth", "growth.steps": "growth_steps",
                     "distill.width": "distill_width", "distill.depth": "distill_depth", "distill.steps": "distill_steps",
                     "distill.growth_weight": "distill_growth_weight", "growth.batch_size": "growth_batch_size",
                     "growth.epochs": "growth_epochs", "growth.lr": "growth_lr", "growth.relabelled": "growth_relabelled",
                     "growth.measured": "growth_measured", "distill.batch_size": "distill_batch_size",
                     "distill.epochs": "distill_epochs", "distill.sampled_states": "distill_sampled_states",
                     "noise.oof": "noise_oof", "noise.weight": "noise_weight",
                     "noise.width": "noise_width", "noise.depth": "noise_depth", "noise.batch_size": "noise_batch_size",
                     "noise.epochs": "noise_epochs"}


def config_key(field_name: str) -> str:
    """The config key of an EnsembleConfig field, as a user writes it (--set KEY=VALUE): a message that
    named the field ("growth_width must be a positive integer", "lr must be ...") named no key the
    config or --set takes (`--set growth_width=4` is an unknown key; outside probe, Python round 61)."""
    for key, name in CONFIG_KEY_FIELDS.items():
        if name == field_name:
            return key
    return f"ensemble.{field_name}"


@dataclass
class EnsembleConfig:
    """training/configs/ensemble_default.yaml; every key optional but data.path."""

    data_path: str = "pdata/qke.h5"
    features: str = "invariants27+box7-v1"
    holdout: list = field(default_factory=lambda: ["*_seed9[0-9][0-9].h5"])
    members: int = 8
    width: int = 32
    depth: int = 2
    steps: int = 2000
    # batch_size > 0: `epochs` passes of mini-batches of this many rows instead of `steps`
    # full-batch steps (here and in the growth and distill sections; ensemble._fit).
    batch_size: int = 0
    epochs: int = 0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    growth_weight: float = 0.5
    sigma0: float = 0.01
    # > 0: the Wiener spread gate r^2 / (r^2 + (c sigma)^2) with c this (the cross-validated
    # error per unit of spread; docs/training.md); 0: the sigma0 gate.
    error_per_spread: float = 0.0
    mirror: bool = True
    # Also the mu <-> tau image of every row (training_images; docs/training.md, "Flavour images").
    flavour_images: bool = False
    seed: int = 0
    threads: int = 1
    # > 1: the density and growth members fitted this many at once, each in its own process with one
    # torch thread (member_processes: the same members as one at a time in one thread); `threads`
    # then serves the stages in this process (the label-noise member, the student).
    processes: int = 1
    checkpoint: str = "checkpoints/ensemble/ensemble.pt"
    # Growth members (0: the growth output comes from the density members): trained on the
    # training states' measured rates plus linear-theory labels (`dodo simulate --linear-only`
    # files matching growth_data), those scaled by the training states' median measured/linear.
    growth_data: list = field(default_factory=list)
    growth_members: int = 0
    growth_width: int = 64
    growth_depth: int = 2
    growth_steps: int = 2000
    growth_batch_size: int = 0
    growth_epochs: int = 0
    growth_lr: float = 0.0  # 0: lr (growth_learning_rate)
    # True: where growth_data holds a label of a training state itself (scripts/relabel_growth.sh:
    # the rate along its refined fastest axis), that label replaces the state's measured rate (run
    # along the best of 24 coarse axes; docs/training.md, "Growth labels").
    growth_relabelled: bool = False
    # False: the training states' own measured rates do not train the growth members; only the
    # growth_data labels do (e.g. data/qke_emu_axis: the rate along the axis Emu's validation
    # search picks, which the measured rates of runs along other axes would blur).
    growth_measured: bool = True
    # Distillation (0: ship the members themselves): one network of this width reproduces the
    # members' mean, spread and growth and alone runs at inference (docs/training.md).
    distill_width: int = 0
    distill_depth: int = 2
    distill_steps: int = 3000
    distill_batch_size: int = 0
    distill_epochs: int = 0
    distill_sampled_states: int = 0  # unlabelled states drawn by the campaign's samplers, for the student
    distill_growth_weight: float = 0.5
    # Label-noise member (docs/training.md, "Label-noise gate"; "": none): fitted on the absolute
    # out-of-fold residuals of a gate study's file (tools/gate_study.py --save on this table, or on
    # an earlier one: the states it shares are used); the gate gains (noise_weight a)^2 beside
    # (c spread)^2. Needs error_per_spread > 0.
    noise_oof: str = ""
    noise_weight: float = 0.0
    noise_width: int = 64
    noise_depth: int = 2
    noise_batch_size: int = 512
    noise_epochs: int = 50

    @property
    def growth_learning_rate(self) -> float:
        """The growth members' learning rate: growth.lr, or the members' lr when it is 0."""
        return self.growth_lr or self.lr

    @classmethod
    def load(cls, path: str, overrides: dict | None = None) -> "EnsembleConfig":
        raw = read_yaml_mapping(path)
        flat = {}
        for section, values in raw.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    flat[f"{section}.{key}"] = value
            elif section in _SECTIONS:  # `ensemble: 3`, `data: null` were "unknown key 'ensemble'"
                raise ConfigError(f"{path}: {section!r} must be a mapping of its keys; got {values!r}")
            else:
                flat[section] = values
        for key, value in (overrides or {}).items():
            if key in _SECTIONS:
                raise ConfigError(f"--set {key}=...: {key!r} is a section; set one of its keys ({key}.KEY=VALUE)")
            flat[key] = value
        names = CONFIG_KEY_FIELDS
        # An override's error names the override, not the file, which has no such key (the train
        # command's were fixed in round fifty-four; outside probe, Python round fifty-four's list).
        origin = {key: f"override {key} (--set)" for key in (overrides or {})}
        config = cls()
        # A key is known in its own section only: any "SECTION.x" (and a bare "x") used to set the
        # field x, so a misplaced `data.seed` or `growth.seed` silently set the members' seed, and a
        # `noise.lr` the members' learning rate (outside probe, round eighteen).
        ensemble_keys = set(cls.__dataclass_fields__) - set(names.values())
        for key, value in flat.items():
            if key in names:
                name = names[key]
            elif key.startswith("ensemble.") and key[len("ensemble."):] in ensemble_keys:
                name = key[len("ensemble."):]
            else:
                parent = key.rsplit(".", 1)[0] if "." in key else None
                if parent in names or (parent or "").startswith("ensemble.") and parent[len("ensemble."):] in ensemble_keys:
                    # `--set ensemble.width.x=1` was "unknown key 'ensemble.width.x'", as if width were none
                    # (outside probe, training round five; dodo train says this)
                    raise ConfigError(f"{origin.get(key, path)}: {parent} is a setting, not a section: --set "
                                      f"{parent}=VALUE")
                section = key.split(".")[0] if "." in key else None
                known = {k.split(".", 1)[1] for k in names if k.startswith(f"{section}.")}
                if section == "ensemble":  # its keys were not listed (round five)
                    known |= ensemble_keys
                where = (f" (the {section} section has {sorted(known)})" if section in _SECTIONS else
                         f" (the sections are {list(_SECTIONS)})")
                raise ConfigError(f"{origin.get(key, path)}: unknown key {key!r}{where}")
            if isinstance(value, dict):  # a nested mapping (`growth: {data: {x: 1}}`) is never a value
                raise ConfigError(f"{origin.get(key, path)}: {key} must be a value, not a mapping; got {value!r}")
            if isinstance(value, str) and cls.__dataclass_fields__[name].type in ("float", float):
                # YAML 1.1 reads 1e-3 (no dot) as a string, and so a JSON config's "lr": 1e-3 and
                # `--set ensemble.lr=1e-3` were refused ("lr must be a finite positive number; got
                # '1e-3'"), where `dodo train` reads them as numbers (outside probe, round 32).
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, str) and name in ("holdout", "growth_data"):
                # One pattern as a string (`holdout: "*_seed9*.h5"`, `--set growth.data=labels/*.h5`)
                # is a one-item list, as `dodo preprocess`'s inputs and `dodo train`'s list keys
                # take it; it was refused ("must be a list of file-name patterns", round 32/34).
                value = [value]
            setattr(config, name, value)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("members", "width", "depth", "steps", "growth_width", "growth_depth", "growth_steps",
                     "distill_depth", "distill_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{config_key(name)} must be a positive integer; got {value!r}")
        check_thread_count("ensemble.threads", self.threads, lowest=1, nullable=False)
        check_thread_count("ensemble.processes", self.processes, lowest=1, nullable=False)
        # true/false are no numbers (`lr: yes` trained at a learning rate of 1).
        for name in ("lr", "sigma0"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and _finite_number(value) and value > 0):
                raise ConfigError(f"{config_key(name)} must be a finite positive number; got {shown(value)}")
        for name in ("weight_decay", "growth_weight", "distill_growth_weight", "error_per_spread"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and _finite_number(value) and value >= 0):
                raise ConfigError(f"{config_key(name)} must be a finite number >= 0; got {shown(value)}")
        # A number or a list as a path ended in os.fspath's TypeError traceback; a float seed in
        # torch's "manual_seed expected a long"; a negative one is refused by `dodo train` too.
        for name, key in (("data_path", "data.path"), ("checkpoint", "output.checkpoint")):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{key} must be a path (a non-empty string); got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"ensemble.seed must be an integer >= 0; got {self.seed!r}")
        for name in ("mirror", "flavour_images"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{config_key(name)} must be true or false; got {getattr(self, name)!r}")
        from .features import FEATURE_SIZES

        if self.features not in FEATURE_SIZES:
            raise ConfigError(f"data.features must be one of {sorted(FEATURE_SIZES)}; got {self.features!r}")
        # An empty pattern matches no file: `holdout: ""` (taken as a one-item list since round 34)
        # would hold nothing out without a word; `holdout: []` says so on purpose.
        if not isinstance(self.holdout, list) or not all(isinstance(p, str) and p.strip() for p in self.holdout):
            raise ConfigError(f"data.holdout must be a list of file-name patterns (non-empty strings); got {self.holdout!r}")
        if not isinstance(self.growth_data, list) or not all(isinstance(p, str) and p.strip() for p in self.growth_data):
            raise ConfigError(f"growth.data must be a list of file patterns (non-empty strings); got {self.growth_data!r}")
        if isinstance(self.growth_members, bool) or not isinstance(self.growth_members, int) or self.growth_members < 0:
            raise ConfigError(f"growth.members must be an integer >= 0; got {self.growth_members!r}")
        if isinstance(self.distill_width, bool) or not isinstance(self.distill_width, int) or self.distill_width < 0:
            raise ConfigError(f"distill.width must be an integer >= 0; got {self.distill_width!r}")
        value = self.distill_sampled_states
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"distill.sampled_states must be an integer >= 0; got {value!r}")
        for prefix in ("", "growth_", "distill_"):
            batch_size, epochs = getattr(self, prefix + "batch_size"), getattr(self, prefix + "epochs")
            for name, value in ((prefix + "batch_size", batch_size), (prefix + "epochs", epochs)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"{config_key(name)} must be an integer >= 0; got {value!r}")
            if batch_size and not epochs:
                raise ConfigError(f"{config_key(prefix + 'batch_size')} needs {config_key(prefix + 'epochs')} >= 1 (mini-batch training runs epochs, "
                                  "not steps)")
        if isinstance(self.growth_lr, bool) or not (isinstance(self.growth_lr, (int, float)) and _finite_number(self.growth_lr)
                                                    and self.growth_lr >= 0):
            raise ConfigError(f"growth.lr must be a finite number >= 0 (0: the members' lr); got {shown(self.growth_lr)}")
        # ensemble.lr 1e300 ended in "value cannot be converted to type float without overflow", naming no key;
        # weight_decay 1e30 (AdamW multiplying every weight by 1 - lr x weight_decay each step) trained members
        # that gave Box3D's answer and wrote the checkpoint, exit 0 (outside probe, training round four).
        from .config import FLOAT32_MAX

        for key, rate in (("ensemble.lr", self.lr), ("growth.lr", self.growth_learning_rate)):
            if rate > FLOAT32_MAX:
                raise ConfigError(f"{key} must be below {FLOAT32_MAX:.4g} (torch's optimizer holds it as a float32); "
                                  f"got {shown(rate)}")
            if rate * self.weight_decay >= 1:
                raise ConfigError(f"{key} x ensemble.weight_decay must be below 1 (AdamW multiplies every weight by "
                                  f"1 - lr x weight_decay each step); got {rate!r} x {self.weight_decay!r} = "
                                  f"{rate * self.weight_decay:.4g}: lower ensemble.weight_decay (or {key})")
        if not isinstance(self.growth_relabelled, bool):
            raise ConfigError(f"growth.relabelled must be true or false; got {self.growth_relabelled!r}")
        if not isinstance(self.growth_measured, bool):
            raise ConfigError(f"growth.measured must be true or false; got {self.growth_measured!r}")
        if not self.growth_measured and not self.growth_data:
            raise ConfigError("growth.measured: false needs growth.data (the labels the growth members learn instead)")
        if self.growth_relabelled and not self.growth_data:
            raise ConfigError("growth.relabelled: true needs growth.data (the files holding the new labels)")
        if self.growth_data and not self.growth_members:
            raise ConfigError("growth.data needs growth.members >= 1 (the members trained on it)")
        if self.noise_oof is None:
            # `--set noise.oof=` (empty: YAML's null) was refused as "must be a path (or empty ...); got
            # None" (outside probe, new user's journey round two): empty and null both mean none.
            self.noise_oof = ""
        if not isinstance(self.noise_oof, str):
            raise ConfigError(f"noise.oof must be a path (or empty: no label-noise member); got {self.noise_oof!r}")
        for name in ("noise_width", "noise_depth", "noise_batch_size", "noise_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"noise.{name[6:]} must be a positive integer; got {value!r}")
        value = self.noise_weight
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and _finite_number(value) and value >= 0):
            raise ConfigError(f"noise.weight must be a finite number >= 0; got {shown(value)}")
        if self.noise_weight and not self.noise_oof:
            raise ConfigError("noise.weight needs noise.oof (the out-of-fold file the label-noise member learns from)")
        if self.noise_oof and not self.error_per_spread:
            raise ConfigError("noise.oof needs ensemble.error_per_spread > 0 (the label-noise term joins the Wiener gate)")
        # Beyond int64 a width ended in torch's "Overflow when unpacking long long" (a traceback for
        # a width, one line naming no key for a seed or batch size; outside probe, round 32).
        for name, spec in self.__dataclass_fields__.items():
            value = getattr(self, name)
            if spec.type in ("int", int) and isinstance(value, int) and value > 2**62:
                raise ConfigError(f"{config_key(name)} must be at most 2^62; got {value}")


def load_table(path: str) -> dict:
    """Rows of a preprocessed file as the ensemble sees them: features, residual, growth, sources."""
    import h5py

    from .preprocess import read_preprocessed_attrs
    from .readers import DataFileError

    check_input_file(path, "a preprocessed HDF5 file (dodo preprocess)")  # a FIFO would block h5py for ever
    # The check `dodo train` makes: an Emu file (or any other) is "not a Dodo preprocessed file".
    attrs = read_preprocessed_attrs(path)
    names = ("F_init", "F_box", "F_true", "u", "invariants", "source_file", "growth_rate", "box3d_growth_rate")
    # The digest first, then the rows, with the file's identity before and after: the digest was taken
    # after the rows, so a table replaced in between (a dodo preprocess finishing into it) was recorded,
    # and exported as dodo.training_data_sha256, as the other file's (outside probe, data-loss round 13).
    before = _file_identity(path)
    sha256 = _file_sha256(path)
    with h5py.File(path, "r") as f:
        missing = [key for key in names if not isinstance(f.get(key), h5py.Dataset)]  # absent, or a group
        if missing:
            raise DataFileError(f"{path}: preprocessed file without datasets {missing}; re-make it with `dodo preprocess`")
        arrays = {key: read_dataset(f, key, ()) for key in names}  # a damaged one: named with the file (round 31)
    if _file_identity(path) != before:
        raise DataFileError(f"{path}: replaced or changed while it was read (its digest and its rows could be of two "
                            "files); run again once nothing writes it")
    try:
        sources = _sources(attrs)
    except DataFileError as error:
        raise DataFileError(f"{path}: {error}") from None
    # Each row's source file is an index into the 'sources' attribute: an edited one ended in an
    # IndexError traceback (round eighteen).
    index = np.asarray(arrays["source_file"])
    if index.shape != (len(arrays["F_init"]),) or index.dtype.kind not in "iu" or (
            len(index) and not (index.min() >= 0 and index.max() < len(sources))):
        raise DataFileError(f"{path}: dataset 'source_file' must hold one index per row into the {len(sources)} "
                            f"entries of the 'sources' attribute; got {index.dtype} values of shape {index.shape}"
                            + (f" in [{index.min()}, {index.max()}]" if index.size and index.dtype.kind in "iuf" else "")
                            + "; dodo preprocess writes it: re-run `dodo preprocess`")
    odd = {name: f"{arrays[name].dtype} {arrays[name].shape}" for name in ("growth_rate", "box3d_growth_rate")
           if arrays[name].shape != (len(arrays["F_init"]),) or arrays[name].dtype.kind not in "iuf"}
    if odd:  # a short or 2-D one gave NumPy's "operands could not be broadcast together", strings its ValueError
        raise DataFileError(f"{path}: datasets {odd} must hold one real number per row ({len(arrays['F_init'])}); "
                            "dodo preprocess writes them: re-run `dodo preprocess`")
    try:
        rest = rest_frame_arrays(arrays["F_init"], arrays["F_box"], arrays["F_true"], arrays["u"], arrays["invariants"])
    except DataFileError as error:  # name the file, as `dodo train` does
        raise DataFileError(f"{path}: {error}") from None
    import dodo

    rest["ntot"] = np.asarray(dodo.comoving_density(arrays["F_init"], arrays["u"]), float)
    table = table_from_rest(rest, arrays["growth_rate"], arrays["box3d_growth_rate"],
                            np.array([sources[int(i)] for i in index]),
                            box3d=attrs.get("box3d"), sha256=sha256, kind=str(attrs.get("data_kind", "qke")))
    # Each row's state as dodo score reads it from an Emu file (the rows at rest), for the package's
    # dodo.training_states.
    F = np.asarray(arrays["F_init"], dtype=np.float64)
    table["state_hash"] = row_hashes(F.reshape(len(F), -1))
    table["at_rest"] = np.all(np.asarray(arrays["u"], dtype=np.float64).reshape(len(F), 4) == (1.0, 0.0, 0.0, 0.0), axis=1)
    return table


def _sources(attrs) -> list[str]:
    import ast

    value = attrs.get("sources", [])
    if isinstance(value, str):
        value = json.loads(value) if value.startswith("[{\"") else ast.literal_eval(value)
    entries = value
    if not all(isinstance(entry, dict) and isinstance(entry.get("path"), str) for entry in entries):
        from .readers import DataFileError  # an edited list ended in a TypeError or KeyError traceback

        raise DataFileError("attribute 'sources' must list one {\"path\": ...} object per source file; dodo preprocess "
                            "writes it: re-run `dodo preprocess`")
    return [entry["path"] for entry in entries]


def _file_identity(path: str) -> tuple:
    """What changes when a file is replaced or written: device, inode, size and times."""
    status = os.stat(path)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_from_rest(rest: dict, growth_rate, box3d_growth_rate, sources, box3d=None, sha256="", kind="qke") -> dict:
    from dodo.conventions import GROWTH_RATE_PER_NTOT

    ntot_cgs = rest["ntot"]
    rest = dict(rest, growth_over_ntot=np.asarray(box3d_growth_rate, float) / (ntot_cgs * GROWTH_RATE_PER_NTOT))
    F_true_rest = rest["F_box_rest"] + rest["dF_true_rest"]
    delta_box = nu_e_change(rest["F_box_rest"], rest["F_init_rest"])
    delta_true = nu_e_change(F_true_rest, rest["F_init_rest"])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_growth = np.log(np.asarray(growth_rate, float) / np.asarray(box3d_growth_rate, float))
    log_growth = np.where(np.isfinite(log_growth), log_growth, np.nan)
    return {"rest": rest, "delta_box": delta_box,
            "delta_true": delta_true, "r": delta_true - delta_box, "log_growth": log_growth,
            "sources": np.asarray(sources), "box3d": box3d, "sha256": sha256, "kind": kind}


def _box3d_at_rest(F_init: np.ndarray, box3d_settings: dict):
    """Box3D of cells given in their rest frame (Emu files, growth labels), with the table's settings."""
    import dodo

    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F_init), 1))
    return dodo.box3d(F_init, u, lebedev_order=int(box3d_settings["lebedev_order"]),
                      z_method=str(box3d_settings["z_method"]))


def _table_at_rest(F_init, F_box, F_true, growth_rate, box3d_growth_rate, sources, box3d=None) -> dict:
    """The training table of cells given in their rest frame: rest-frame arrays, N_tot, labels."""
    import dodo

    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F_init), 1))
    rest = rest_frame_arrays(F_init, F_box, F_true, u, np.asarray(dodo.invariants(F_init, u)))
    rest["ntot"] = np.asarray(dodo.comoving_density(F_init, u), float)
    return table_from_rest(rest, growth_rate, box3d_growth_rate, sources, box3d=box3d)


def _finite_number(value) -> bool:
    """math.isfinite of a config number, False for an integer beyond the float range: np.isfinite of a YAML
    integer above 2^64 (`lr: 100000000000000000000000000000`) ended in a TypeError traceback, "ufunc 'isfinite'
    not supported for the input types" (outside probe, training round four)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def state_keys(F_init_rest: np.ndarray) -> list[bytes]:
    """One key per state: its rest-frame initial four-fluxes over N_tot (``table["rest"]["F_init_rest"]``),
    bit for bit. Two tables made from the same file rows give the same keys."""
    F = np.ascontiguousarray(F_init_rest, dtype=np.float64)
    return [row.tobytes() for row in F.reshape(len(F), -1)]


def _file_state_keys(F4_initial_emu_layout: np.ndarray) -> list[bytes]:
    """state_keys of a solver file's states (rest frame, Emu layout), computed as load_table computes them."""
    from dodo.conventions import from_emu_layout

    from .frames import boost_to_rest

    F = from_emu_layout(np.asarray(F4_initial_emu_layout, float))
    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F), 1))
    rest = boost_to_rest(F, u[:, None, :])
    return state_keys(rest / rest[..., 0].sum(axis=1)[:, None, None])


def growth_calibration(sources, leave_out: set | None = None, what: str = "", left_out: set | None = None) -> float:
    """Median measured / linear box-mode growth rate over the solver files ``sources`` (the
    training pool's): the factor that turns linear-theory labels into measured-rate labels.

    ``leave_out``: state_keys of states whose rates are not used (a learning-curve fold's test
    states: their measured rates set every fold's calibration before, outside probe training round
    three); ``what`` names the fit in the refusal; ``left_out`` (a set) receives the keys of leave_out found."""
    import h5py

    from dodo._atomic import check_input_file
    from dodo.emu_files import growth_rate_note, numeric_dataset

    ratios = []
    for path in sorted({str(s) for s in sources}):
        check_input_file(path, "a solver file of the training data")  # a FIFO would block the read for ever
        try:
            with h5py.File(path, "r") as f:
                if "growthRate(1|s)" not in f or "linear_growthRate_box(1|s)" not in f:
                    continue
                measured = numeric_dataset(f, path, "growthRate(1|s)")
                linear = numeric_dataset(f, path, "linear_growthRate_box(1|s)")
                initial = numeric_dataset(f, path, "F4_initial(1|ccm)") if leave_out else None
        except OSError as error:
            raise ValueError(f"growth calibration: cannot read training file {path}: {error}") from None
        # One rate of each per state, [n] or [n, 1]: other lengths ended in NumPy's "operands could not be
        # broadcast together with shapes (30,) (29,)" or a boolean-index IndexError, naming no file (round 35).
        if growth_rate_note(measured.shape, len(linear)) or growth_rate_note(linear.shape, len(linear)):
            raise ValueError(f"growth calibration: {path}: 'growthRate(1|s)' has shape {measured.shape} and "
                             f"'linear_growthRate_box(1|s)' {linear.shape}; a solver file holds one of each per "
                             "state (the file was edited or damaged)")
        measured, linear = measured.reshape(-1), linear.reshape(-1)
        good = (measured > 0) & (linear > 0)
        if leave_out:
            if len(initial) != len(linear):
                raise ValueError(f"growth calibration: {path}: 'F4_initial(1|ccm)' holds {len(initial)} states and "
                                 f"'linear_growthRate_box(1|s)' {len(linear)} rates (the file was edited or damaged)")
            with np.errstate(divide="ignore", invalid="ignore"):
                keys = _file_state_keys(initial)
            out = np.array([key in leave_out for key in keys], dtype=bool)
            good &= ~out
            if left_out is not None:
                left_out.update(key for key, taken in zip(keys, out) if taken)
        ratios.append(measured[good] / linear[good])
    ratios = np.concatenate(ratios) if ratios else np.zeros(0)
    if len(ratios) < 20:
        # The message named no setting nor the way on (outside probe, new user's journey round two): the
        # calibration is growth.data's, and a database without the campaign's labels trains its growth
        # members on its own measured rates (docs/training.md, "Your own database with the default model's
        # recipe").
        raise ValueError(f"growth.data's calibration{what}: only {len(ratios)} training states carry both a measured and a "
                         "linear growth rate (need >= 20): give more such states, or let the growth members learn the "
                         "measured rates instead: --set 'growth.data=[]' --set growth.measured=true")
    return float(np.median(ratios))


def growth_data_files(patterns) -> list[str]:
    """The files the growth.data patterns match (sorted, each once): inputs of the commands that
    train with them, so that no output of theirs may be one of these."""
    import glob

    return sorted({path for pattern in patterns for path in glob.glob(pattern)})


def growth_label_table(patterns, holdout, box3d_settings: dict, calibration: float,
                       max_flux_factor: float = 0.96) -> dict | None:
    """Growth-only rows from linear-label files (``dodo simulate --linear-only``) matching ``patterns``:
    features as the density rows', growth label ``calibration * linear rate``; r is NaN (no density label).
    Files matching a holdout pattern are skipped; None when no file matches."""
    import h5py

    from dodo.conventions import from_emu_layout

    from dodo._atomic import check_input_file
    from dodo.emu_files import growth_rate_note, numeric_dataset
    from dodo.qke.growth_labels import KIND

    paths = [p for p in growth_data_files(patterns) if not holdout_mask([p], holdout)[0]]
    F_parts, rate_parts, sources = [], [], []
    for path in paths:
        check_input_file(path, "a growth-label file (dodo simulate --linear-only)")  # FIFO, directory
        try:
            with h5py.File(path, "r") as f:
                # Only label files: a solver file also holds linear_growthRate_box(1|s), but along its
                # coarse run axis, and as growth.data it would pass for labels (growth.relabelled).
                if f.attrs.get("kind") != KIND or "linear_growthRate_box(1|s)" not in f or "F4_initial(1|ccm)" not in f:
                    raise ValueError(f"{path}: not a growth-label file (made by dodo simulate --linear-only: "
                                     f"kind = {KIND!r}); growth.data takes only those")
                F_parts.append(from_emu_layout(numeric_dataset(f, path, "F4_initial(1|ccm)")))
                rates = numeric_dataset(f, path, "linear_growthRate_box(1|s)")
                # One rate per state: files of 20 states with 19 and 21 rates were joined into 40 rows,
                # the second file's labels one state off; [n, 1] ended in NumPy's words (round 35).
                if growth_rate_note(rates.shape, len(F_parts[-1])):  # [n] or [n, 1], as score reads it
                    raise ValueError(f"{path}: 'linear_growthRate_box(1|s)' has shape {rates.shape} for "
                                     f"{counted(len(F_parts[-1]), 'state')} in 'F4_initial(1|ccm)'; a growth-label file "
                                     "holds one rate per state (the file was edited or damaged)")
                rate_parts.append(rates.reshape(-1))
        except OSError as error:
            raise ValueError(f"growth.data: cannot read {path} as HDF5 ({' '.join(str(error).split())})") from None
        sources += [path] * len(rate_parts[-1])
    if not paths or not sum(len(r) for r in rate_parts):
        return None
    F_init, linear = np.concatenate(F_parts), np.concatenate(rate_parts)
    table = _unlabelled_density_table(F_init, calibration * linear, sources, box3d_settings, max_flux_factor)
    table["calibration"] = calibration
    return table


def _unlabelled_density_table(F_init, growth_rate, sources, box3d_settings: dict, max_flux_factor: float) -> dict:
    """A table of rest-frame states without density labels (r NaN) and growth labels ``growth_rate``
    (None: no growth labels either, growth NaN); rows that Box3D rejects, that reach
    ``max_flux_factor``, or whose Box3D proxy or (given) growth label is not positive are left out."""
    from .preprocess import box3d_rejected_mask
    from .readers import flux_factor

    box = _box3d_at_rest(F_init, box3d_settings)
    proxy = np.asarray(box.growth_rate, float)
    labelled = growth_rate is not None
    growth_rate = np.asarray(growth_rate, float) if labelled else np.full(len(F_init), np.nan)
    keep = (~box3d_rejected_mask(np.asarray(box.status).astype(np.uint32))
            & (flux_factor(F_init) < max_flux_factor).all(axis=1) & (proxy > 0) & ((growth_rate > 0) | (not labelled)))
    F_box = np.asarray(box.F_box, float)[keep]
    table = _table_at_rest(F_init[keep], F_box, F_box, growth_rate[keep], proxy[keep], np.asarray(sources)[keep],
                           box3d=box3d_settings)
    table["r"] = np.full(int(keep.sum()), np.nan)
    table["growth_rate"], table["box3d_growth_rate"] = growth_rate[keep], proxy[keep]  # for recalibrated
    return table


def sampled_state_table(count: int, family_shares: dict, seed: int, box3d_settings: dict,
                        max_flux_factor: float = 0.96) -> dict:
    """``count`` unlabelled crossing states drawn by the campaign's samplers (dodo.qke.states),
    split between families by ``family_shares`` (family -> share), as a table without labels
    (r and growth NaN): inputs on which the student learns to agree with its teacher. Rows that
    Box3D rejects or that exceed ``max_flux_factor`` are left out, as for the growth labels."""
    from dodo.qke.states import family_states

    rng = np.random.default_rng(seed)
    total = sum(family_shares.values())
    parts, sources = [], []
    for family, share in sorted(family_shares.items()):
        n = int(round(count * share / total))
        # In chunks: each call of the sampler has its own budget of draws (a few crossing states per
        # hundred draws at worst), so any count is reachable.
        for start in range(0, n, 5000):
            parts.append(family_states(family, min(5000, n - start), rng))
        sources += [f"sampled/{family}_sampled.h5"] * n
    F_init = np.concatenate(parts)
    return _unlabelled_density_table(F_init, None, sources, box3d_settings, max_flux_factor)


def sampled_inputs(table: dict, rows: np.ndarray, config: "EnsembleConfig", count: int) -> np.ndarray:
    """The student's extra inputs: features of ``count`` sampled states (sampled_state_table) in the
    family mix of ``rows`` of ``table``, mirrored as the training rows are."""
    sampled = sampled_state_table(count, family_shares(table["sources"][rows]), config.seed + 3000,
                                  box3d_settings(table["box3d"]))
    return training_arrays(sampled, np.arange(len(sampled["r"])), config)[0]


def family_shares(sources) -> dict:
    """Share of each campaign family (dodo.qke.states.STATE_FAMILIES) among solver files ``sources``;
    the Emu-recipe families of the first campaigns count as "emu"."""
    from dodo.qke.states import STATE_FAMILIES

    families = [Path(str(source)).name.split("_seed")[0] for source in sources]
    families = ["emu" if family in EMU_RECIPE_FAMILIES else family for family in families]
    return {family: families.count(family) / len(families) for family in STATE_FAMILIES if family in families}


#: The fewest training states an ensemble is fitted on. One state fails: its nu <-> nubar mirror is
#: the only other row, the members' input normalisation then divides by the standard deviation of
#: rounding noise (~1e-17) in columns that are equal in theory, and every bootstrap resample is the
#: same state, so all members see the same data; the model gives outputs of ~1e14 and an infinite
#: uncertainty elsewhere. Two distinct states give a finite normalisation (columns equal in both
#: keep std 1) and members that differ.
MIN_TRAINING_STATES = 2


def check_training_rows(rows) -> None:
    """Refuse a fit on fewer than MIN_TRAINING_STATES states (none: every row held out)."""
    if len(rows) == 0:
        raise ValueError("no training rows: every row matches a holdout pattern")
    if len(rows) < MIN_TRAINING_STATES:
        raise ValueError(f"{len(rows)} training state(s); the ensemble needs at least {MIN_TRAINING_STATES} "
                         "(one state and its mirror give no spread and a degenerate input normalisation)")


def train_on(table: dict, rows: np.ndarray, config: EnsembleConfig, members: int | None = None, log=None,
             growth_table: dict | None = None):
    """The ensemble on ``rows`` of ``table``; with config.growth_members, growth members on those rows'
    measured rates plus the rows of ``growth_table`` (linear-theory labels) that are not labels of
    states outside ``rows``; with config.growth_relabelled, a state's own label replaces its rate."""
    check_training_rows(rows)
    check_crossing_rows(table, rows)
    if config.distill_width and config.distill_sampled_states and not family_shares(table["sources"][rows]):
        # Checked before any member is fitted: the samplers draw in the training files' family mix.
        raise ValueError("distill.sampled_states draws states in the campaign families' mix (files named "
                         "emu_seedN.h5, merger_seedN.h5, three_flavour_seedN.h5), and no training file is one; "
                         "set distill.sampled_states: 0 for other data (docs/training.md)")
    if config.growth_members:
        # Checked before any member is fitted: on a database of stable states (no crossing, no growth
        # rate) every density member was trained first and the run then ended on this (round 41).
        check_growth_labels(growth_member_rows(table, rows, config, growth_table)[1], len(rows), config)
    residuals = training_residuals(table, rows, config) if config.noise_oof else None
    X, r, g = training_arrays(table, rows, config)
    torch.set_num_threads(config.threads)
    from .features import OOD_COLUMNS

    ensemble = fit_ensemble(X, r, g, members=members or config.members, sigma0=config.sigma0, seed=config.seed,
                            ood_columns=OOD_COLUMNS[config.features],
                            error_per_spread=config.error_per_spread,
                            processes=config.processes,
                            log=log, width=config.width, depth=config.depth, steps=config.steps, lr=config.lr,
                            weight_decay=config.weight_decay, growth_weight=config.growth_weight,
                            batch_size=config.batch_size, epochs=config.epochs)
    ensemble.features = config.features
    if residuals is not None:
        fit_label_noise(ensemble, table, config, residuals, len(rows), log=log)
    fit_growth_and_student(ensemble, table, rows, config, log=log, growth_table=growth_table)
    return ensemble


def check_growth_labels(g_growth: np.ndarray, n_states: int, config: EnsembleConfig) -> None:
    """Refuse growth members without a finite label: say where labels come from and the way on."""
    if np.isfinite(g_growth).any():
        return
    source = ("growth.data's files hold none for them" if config.growth_data
              else "growth.data gives no other labels")
    own = ("growth.measured is false (their measured rates are not used)" if not config.growth_measured else
           f"none of the {counted(n_states, 'training state')} has both a measured growthRate(1|s) > 0 and a Box3D growth "
           "proxy > 0 (an ELN crossing)")
    raise ValueError(f"the growth members have no finite growth label to learn from: {own}, and {source}; set "
                     "growth.members: 0 (the density members then give the growth output), or add states with "
                     "measured rates")


def check_crossing_rows(table: dict, rows: np.ndarray) -> None:
    """Refuse a fit where fewer than MIN_TRAINING_STATES training states have an ELN crossing: the
    runtime applies the network to crossing cells only (a stable one is returned as given), and an
    ensemble fitted on stable states alone had NaN outputs that `dodo export` found after the run."""
    rest = table["rest"]
    crossing = int(np.count_nonzero(~np.all(rest["F_box_rest"][rows] == rest["F_init_rest"][rows], axis=(1, 2))))
    if crossing < MIN_TRAINING_STATES:
        # "1 of the 2 training states have" (outside probe, Python round fifty-seven)
        raise ValueError(f"{crossing} of the {counted(len(rows), 'training state')} {'has' if crossing == 1 else 'have'} "
                         "an ELN crossing (Box3D changes them); the "
                         f"ensemble needs at least {MIN_TRAINING_STATES}: the closure corrects crossing cells only and "
                         "returns stable ones as given, so stable states teach it nothing")


def fit_growth_and_student(ensemble, table: dict, rows: np.ndarray, config: EnsembleConfig, log=None,
                           growth_table: dict | None = None) -> None:
    """train_on's stages after the density members: the growth members (config.growth_members) and
    the distilled student (config.distill_width), fitted in place on ``rows`` of ``table``. Also
    tools/refit_growth.py's: new growth labels for members already trained."""
    if len(ensemble.growth_members) or ensemble.student is not None:
        raise ValueError("fit_growth_and_student fits growth members and a student where there are none yet")
    X, _, _ = training_arrays(table, rows, config)
    torch.set_num_threads(config.threads)
    if config.growth_members:
        X_growth, g_growth, X_labels = growth_member_rows(table, rows, config, growth_table, log=log)
        X = np.concatenate([X, X_labels])
        check_growth_labels(g_growth, len(rows), config)
        from .member_processes import fit_members

        labelled = int(np.isfinite(g_growth).sum())
        ensemble.growth_members.extend(fit_members(
            fit_growth_member,
            dict(X=X_growth, log_growth=g_growth, width=config.growth_width, depth=config.growth_depth,
                 steps=config.growth_steps, lr=config.growth_learning_rate, weight_decay=config.weight_decay,
                 batch_size=config.growth_batch_size, epochs=config.growth_epochs),
            [{"seed": config.seed + 1000 + k} for k in range(config.growth_members)], config.processes, log=log,
            done_message=lambda k: f"growth member {k + 1}/{config.growth_members} trained on {labelled} rows"))
    if config.distill_width:
        fit_distilled_student(ensemble, table, rows, config, X, log=log)


def fit_distilled_student(ensemble, table: dict, rows: np.ndarray, config: EnsembleConfig, X: np.ndarray,
                          log=None) -> None:
    """The student stage of fit_growth_and_student (config.distill_*), in place; X: the training
    rows' features followed by the growth-label states' (growth_member_rows). Also
    tools/student_width_study.py's, which re-distils a trained teacher."""
    # The student sees the training rows and the (unlabelled for density) growth-label states:
    # in-distribution inputs where it must agree with the members; plus distill.sampled_states
    # states drawn by the campaign's samplers in the training rows' family mix.
    if config.distill_sampled_states:
        X = np.concatenate([X, sampled_inputs(table, rows, config, config.distill_sampled_states)])
    ensemble.student = fit_student(ensemble, X, width=config.distill_width, depth=config.distill_depth,
                                   steps=config.distill_steps, lr=config.lr, seed=config.seed + 2000,
                                   growth_weight=config.distill_growth_weight,
                                   batch_size=config.distill_batch_size, epochs=config.distill_epochs)
    if log:
        log(f"student ({config.distill_width} wide) distilled on {len(X)} rows")


def growth_member_rows(table: dict, rows: np.ndarray, config: EnsembleConfig, growth_table: dict | None,
                       log=None, of_state: np.ndarray | None = None):
    """What the growth members fitted on ``rows`` learn from: ``(X, g, X_labels)``, the rows' features
    and measured rates (NaN where a state's own label replaces its rate, all NaN with
    growth.measured false) followed by growth_table's label rows that may train them
    (growth_member_labels); X_labels, those label rows' features alone (the student sees them too)."""
    X, _, g = training_arrays(table, rows, config)
    if growth_table is None:
        return X, g, X[:0]
    labelled, replaced = growth_member_labels(growth_table, table, rows, config, log=log, of_state=of_state)
    if replaced is not None:  # mirrored rows: the same states again
        g = np.where(np.tile(replaced, len(g) // len(rows)), np.nan, g)
    if not config.growth_measured:
        g = np.full_like(g, np.nan)
    X_labels, _, g_labels = training_arrays(growth_table, labelled, config)
    return np.concatenate([X, X_labels]), np.concatenate([g, g_labels]), X_labels


def fit_growth_members_on(table: dict, rows: np.ndarray, config: EnsembleConfig, growth_table: dict | None,
                          members: int = 1, of_state: np.ndarray | None = None) -> list:
    """``members`` growth members fitted as fit_growth_and_student fits them (seeds 1000, 1001, ...
    without config.seed: the studies' convention), for the growth studies in tools/."""
    X, g, _ = growth_member_rows(table, rows, config, growth_table, of_state=of_state)
    return [fit_growth_member(X, g, seed=seed, width=config.growth_width, depth=config.growth_depth,
                              steps=config.growth_steps, lr=config.growth_learning_rate,
                              weight_decay=config.weight_decay, batch_size=config.growth_batch_size,
                              epochs=config.growth_epochs)
            for seed in range(1000, 1000 + members)]


def growth_label_states(growth_table: dict, table: dict, config: EnsembleConfig) -> np.ndarray:
    """For each row of ``growth_table``, the row of ``table`` holding the same state, or -1.

    Growth labels may be made for the solver states themselves (scripts/relabel_growth.sh). A
    label row is a table state's when its 27 invariants are the same numbers (both are computed
    from the same F4_initial values)."""
    invariants = slice(0, 27)
    index = {row.tobytes(): i for i, row in enumerate(
        np.ascontiguousarray(features_of(table, np.arange(len(table["r"])), config.features)[:, invariants]))}
    labels = np.ascontiguousarray(features_of(growth_table, np.arange(len(growth_table["r"])), config.features)[:, invariants])
    return np.array([index.get(row.tobytes(), -1) for row in labels], np.int64)


def growth_member_labels(growth_table: dict, table: dict, rows: np.ndarray, config: EnsembleConfig, log=None,
                         of_state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of ``growth_table`` that may train growth members fitted on ``rows`` of ``table``
    (never labels of states outside them: a fold's test states, held-out states), and, with
    config.growth_relabelled, the mask over ``rows`` of the states whose own label replaces their
    measured rate (None without). ``of_state``: growth_label_states' answer, when known."""
    if of_state is None:
        of_state = growth_label_states(growth_table, table, config)
    labelled = np.flatnonzero((of_state < 0) | np.isin(of_state, rows))
    if not config.growth_relabelled:
        return labelled, None
    replaced = np.isin(rows, of_state[labelled])
    if not replaced.any():
        raise ValueError("growth.relabelled: true, but no file of growth.data labels a training state "
                         "(scripts/relabel_growth.sh makes such labels): nothing would be replaced")
    if log:
        log(f"growth.relabelled: {int(replaced.sum())} of {len(rows)} training states' measured rates replaced by "
            "their own labels")
    return labelled, replaced


def load_growth_table(config: EnsembleConfig, table: dict, train_rows: np.ndarray, log=print) -> dict | None:
    """The linear-label rows for config.growth_data, calibrated on the training rows' solver files."""
    if not config.growth_data:
        return None
    calibration = growth_calibration(table["sources"][train_rows])
    growth_table = growth_label_table(config.growth_data, config.holdout, box3d_settings(table["box3d"]), calibration)
    if growth_table is None:
        raise ValueError(f"growth.data {config.growth_data} matches no growth-label file")
    log(f"growth labels: {len(growth_table['r'])} linear-theory states, calibration measured/linear = {calibration:.4f}")
    return growth_table


def recalibrated(growth_table: dict, calibration: float) -> dict:
    """``growth_table`` (growth_label_table's, made with calibration 1.0: its labels are the linear rates)
    with the labels ``calibration * linear rate``: the same numbers as growth_label_table(..., calibration)."""
    linear, proxy = growth_table["growth_rate"], growth_table["box3d_growth_rate"]
    labels = calibration * linear
    with np.errstate(divide="ignore", invalid="ignore"):
        log_growth = np.log(np.asarray(labels, float) / np.asarray(proxy, float))
    return dict(growth_table, growth_rate=labels, log_growth=np.where(np.isfinite(log_growth), log_growth, np.nan),
                calibration=calibration)


def fold_growth_tables(config: EnsembleConfig, table: dict, order: np.ndarray, fold_of: np.ndarray, folds: int,
                       log=print) -> list | None:
    """The growth-label table of each learning-curve fold: growth.data's labels calibrated on the pool's
    solver files without the fold's test states (their measured rates). One calibration of the whole
    pool, test folds included, trained every fold (outside probe, training round three)."""
    if not config.growth_data:
        return None
    base = growth_label_table(config.growth_data, config.holdout, box3d_settings(table["box3d"]), 1.0)
    if base is None:
        raise ValueError(f"growth.data {config.growth_data} matches no growth-label file")
    keys = state_keys(np.asarray(table["rest"]["F_init_rest"])[order])
    sources = table["sources"][order]
    calibrations, missed = [], 0
    for k in range(folds):
        leave_out, found = {key for key, fold in zip(keys, fold_of) if fold == k}, set()
        calibrations.append(growth_calibration(sources, leave_out=leave_out, left_out=found,
                                               what=f" for fold {k + 1} of {folds} (its test states left out)"))
        missed += len(leave_out - found)
    if missed:  # a state whose F_init preprocess changed (a clamped density), or a file without both rates
        log(f"note: growth.data's calibration per fold: the pool's solver files hold no state equal bit for bit to "
            f"{counted(missed, 'test state')} of the folds (F_init changed by dodo preprocess: a clamped negative "
            "density; or a file without both rates): such a state's rate, if any, stays in its fold's calibration")
    log(f"growth labels: {len(base['r'])} linear-theory states, calibration measured/linear per fold (the pool's "
        f"solver files less the fold's test states) = {', '.join(f'{c:.4f}' for c in calibrations)}")
    return [recalibrated(base, c) for c in calibrations]


def bootstrap_mean_interval(values, resamples=10000, seed=0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean: `dodo score`'s statistic (the same draws for a
    seed), computed in blocks, so a large held-out set does not take gigabytes of indices."""
    return bootstrap_interval(values, resamples, np.random.default_rng(seed))


def score_rows(ensemble, table: dict, rows: np.ndarray) -> dict:
    """Per-state errors of the gated ensemble, the ungated mean and Box3D on ``rows``."""
    out = predict(ensemble, features_of(table, rows, ensemble.features))
    delta_box, delta_true = table["delta_box"][rows], table["delta_true"][rows]
    # A state Box3D returns unchanged (no ELN crossing) is returned so by the runtime, uncorrected:
    # its score is Box3D's, as in `dodo score` of the exported package (outside probe, round 41).
    rest = table["rest"]
    corrected = ~np.all(rest["F_box_rest"][rows] == rest["F_init_rest"][rows], axis=(1, 2))
    model = state_error(delta_box + np.where(corrected, out["r_gated"], 0.0), delta_true)
    ungated = state_error(delta_box + np.where(corrected, out["r_mean"], 0.0), delta_true)
    box = state_error(delta_box, delta_true)
    growth = np.exp(table["log_growth"][rows] - out["log_growth_ratio"])  # measured / learned
    proxy = np.exp(table["log_growth"][rows])  # measured / proxy
    return {"model": model, "ungated": ungated, "box3d": box, "sigma": out["sigma"],
            "growth_measured_over_model": growth, "growth_measured_over_proxy": proxy,
            "growth_measured": np.isfinite(table["log_growth"][rows]),
            "correction_passed": float(np.abs(np.where(corrected, out["r_gated"], 0.0)).sum()),
            "correction_offered": float(np.abs(np.where(corrected, out["r_mean"], 0.0)).sum())}


def format_scores(title: str, scores: dict, threshold: float = 0.0025) -> str:
    lines = [f"{title} ({counted(len(scores['box3d']), 'state')}; mean |dn|/N_tot, mu and tau averaged)",
             f"{'':<16} {'mean':>9} {'95% CI':>20} {'max':>8} {'worse than Box3D by > %g' % threshold:>28}"]
    for name in ("model", "ungated", "box3d"):
        values = scores[name]
        low, high = bootstrap_mean_interval(values)
        worse = int(np.sum(values - scores["box3d"] > threshold)) if name != "box3d" else 0
        lines.append(f"{name:<16} {values.mean():9.5f} {'[%.5f, %.5f]' % (low, high):>20} {values.max():8.4f} {worse:>28}")
    low, high = bootstrap_mean_interval(scores["model"] - scores["box3d"])
    lines.append(f"{'model - Box3D':<16} {np.mean(scores['model'] - scores['box3d']):+9.5f} {'[%+.5f, %+.5f]' % (low, high):>20}")
    for name, key in (("learned growth", "growth_measured_over_model"), ("Box3D proxy", "growth_measured_over_proxy")):
        within = _growth_within(scores[key], scores.get("growth_measured"))
        ratio = scores[key][np.isfinite(scores[key])]
        if within.size:
            median = f"{np.median(ratio):.3f}" if ratio.size else "n/a"
            lines.append(f"{name:<16} measured/predicted growth: median {median}, within 10%: "
                         f"{100 * np.mean(within):.0f}%")
    return "\n".join(lines)


def save_checkpoint(ensemble: DensityResidualEnsemble, config: EnsembleConfig, table: dict, train_rows, report: dict,
                    path: str) -> None:
    first = ensemble.members[0]
    # The feature set the members were trained on, whatever the config object says.
    state = {"kind": CHECKPOINT_KIND, "config": {**asdict(config), "features": ensemble.features},
             "n_inputs": int(first.mean.numel()),
             "members": len(ensemble.members), "growth_members": len(ensemble.growth_members),
             "student": None if ensemble.student is None else {"width": config.distill_width,
                                                                "depth": config.distill_depth},
             "noise_member": None if ensemble.noise_member is None else {"width": config.noise_width,
                                                                          "depth": config.noise_depth},
             "state_dict": ensemble.state_dict(),
             "data": {"box3d": box3d_settings(table["box3d"]), "sha256": table["sha256"], "kind": table["kind"],
                      "train_rows": int(len(train_rows)), "path": config.data_path,
                      "states": _trained_states(table, train_rows)},
             "metrics": report,
             "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             # Which Dodo wrote it: a checkpoint another version cannot read is said to be that version's
             # (since 2026-12-07; outside probe, training round three).
             "dodo_version": _dodo_version()}
    # No mkdir here: atomic_path makes a missing directory, after its check that the directory of the run's
    # lock was not moved (made again here first, it was "moved ... and another directory made in its place").
    with atomic_path(path) as tmp:
        write_torch_file(state, tmp)


def _trained_states(table: dict, rows) -> "torch.Tensor | None":
    """The distinct hashes of the states at rest among ``rows`` (int64 bits), or None for a table without them."""
    if "state_hash" not in table:
        return None
    rows = np.asarray(rows, dtype=np.int64)
    hashes = np.unique(table["state_hash"][rows][table["at_rest"][rows]])
    return torch.from_numpy(hashes.view(np.int64).copy())


def _dodo_version() -> str:
    import dodo

    return str(getattr(dodo, "__version__", "unknown"))


def load_ensemble(checkpoint: dict) -> DensityResidualEnsemble:
    if checkpoint.get("kind") != CHECKPOINT_KIND:
        raise ValueError("not a density-residual-ensemble checkpoint")
    config = checkpoint["config"]
    members = [Member(checkpoint["n_inputs"], config["width"], config["depth"]) for _ in range(checkpoint["members"])]
    state = dict(checkpoint["state_dict"])
    state.setdefault("error_per_spread", torch.tensor(0.0))  # checkpoints from before the Wiener gate
    state.setdefault("label_noise_weight", torch.tensor(0.0))  # and from before the label-noise member
    n = checkpoint["n_inputs"]
    ood = state["feature_mean"].numel()  # the distance gate's columns (OOD_COLUMNS), n before them
    ensemble = DensityResidualEnsemble(members, 1.0, 1.0, np.zeros(ood), np.eye(ood), 1.0)
    for _ in range(checkpoint.get("growth_members", 0)):
        ensemble.growth_members.append(Member(n, config["growth_width"], config["growth_depth"], n_outputs=1))
    if checkpoint.get("student"):
        ensemble.student = Member(n, checkpoint["student"]["width"], checkpoint["student"]["depth"], n_outputs=3)
    if checkpoint.get("noise_member"):
        shape = checkpoint["noise_member"]
        ensemble.noise_member = Member(n, shape["width"], shape["depth"], n_outputs=1)
    ensemble.load_state_dict(state)
    ensemble.features = config.get("features", "invariants27-v1")
    return ensemble.eval()


class EnsembleCheckpointError(ValueError):
    """A `dodo train-ensemble` checkpoint whose content cannot make the ensemble it claims to hold."""


# The gate's scalars (state_dict buffers) and the values they may take: NaN, a negative or zero
# scale made a package that loads and silently changes the correction (a NaN error_per_spread
# falls back to the sigma0 gate, r_scale 0 removes the correction).
_GATE_SCALARS = {"r_scale": "finite and > 0", "sigma0": "finite and > 0", "d2_max": "finite and > 0",
                 "error_per_spread": "finite and >= 0", "label_noise_weight": "finite and >= 0"}


def checked_ensemble(checkpoint, path) -> DensityResidualEnsemble:
    """:func:`load_ensemble` of the content of ``path``, with every problem of that content one
    EnsembleCheckpointError naming the file: an edited or damaged checkpoint ended in KeyError,
    TypeError or IndexError tracebacks (exit 1), in torch's multi-line load_state_dict report, or
    was exported with a NaN or negative gate scale (outside probe, round eighteen)."""
    from .features import FEATURE_SIZES

    def refuse(problem: str):
        version = checkpoint.get("dodo_version") if isinstance(checkpoint, dict) else None
        if isinstance(version, str) and version != _dodo_version():  # "edited or damaged" alone blamed the file
            why = (f"written by dodo {version}, this is dodo {_dodo_version()}: export it with the version that wrote "
                   "it, or retrain; or the file was edited or damaged")
        else:
            why = "the file was edited or damaged; export the checkpoint train-ensemble wrote, or retrain"
        raise EnsembleCheckpointError(f"{path}: not a usable `dodo train-ensemble` checkpoint: {problem} ({why})")

    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != CHECKPOINT_KIND:
        refuse("its kind is not a density-residual ensemble")
    for key, kind in (("config", dict), ("state_dict", dict), ("data", dict)):
        if not isinstance(checkpoint.get(key), kind):
            refuse(f"its {key!r} is {type(checkpoint.get(key)).__name__}, not a mapping")
    for key, lowest in (("members", 1), ("n_inputs", 1), ("growth_members", 0)):
        value = checkpoint.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            refuse(f"{key} is {value!r}; it must be an integer >= {lowest}")
    features = checkpoint["config"].get("features", "invariants27-v1")
    if features not in FEATURE_SIZES:
        refuse(f"its feature set {features!r} is unknown (known: {', '.join(FEATURE_SIZES)})")
    box3d = checkpoint["data"].get("box3d")
    if not isinstance(box3d, dict):
        refuse("it records no Box3D settings (data.box3d)")
    try:
        import dodo

        dodo.box3d_settings(**{key: box3d[key] for key in ("lebedev_order", "z_method", "max_flux_factor") if key in box3d})
    except (TypeError, ValueError) as error:
        refuse(f"its Box3D settings (data.box3d) are not settings Box3D has ({error})")
    for key in ("student", "noise_member"):
        shape = checkpoint.get(key)
        if shape is not None and not (isinstance(shape, dict) and all(
                isinstance(shape.get(name), int) and not isinstance(shape.get(name), bool) and shape.get(name) >= 1
                for name in ("width", "depth"))):
            refuse(f"its {key!r} must be null or a mapping of a positive width and depth; got {shape!r}")
    try:
        ensemble = load_ensemble(checkpoint)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        text = " ".join(str(error).split())
        refuse(f"{type(error).__name__}: {text[:300]}{' ...' if len(text) > 300 else ''}")
    for name, allowed in _GATE_SCALARS.items():
        value = float(getattr(ensemble, name))
        if not (math.isfinite(value) and (value > 0 if allowed.endswith("> 0") else value >= 0)):
            refuse(f"its gate scalar {name} is {value!r}; it must be {allowed}")
    return ensemble


def ensemble_checkpoint_of(checkpoint, path) -> DensityResidualEnsemble:
    """:func:`checked_ensemble` for the tools that take a `dodo train-ensemble` checkpoint
    (tools/regate_checkpoint.py, refit_growth.py, student_width_study.py): a `dodo train` checkpoint
    is named as one. Given one, they ended in a ValueError traceback naming no file ("not a
    density-residual-ensemble checkpoint") or, refit_growth.py, in advice to retrain because the
    "density members' settings" differed (outside probe, round 28)."""
    if isinstance(checkpoint, dict) and checkpoint.get("kind") != CHECKPOINT_KIND and "model_state" in checkpoint:
        raise EnsembleCheckpointError(f"{path}: a `dodo train` checkpoint; this tool reads `dodo train-ensemble` "
                                      "checkpoints (its output.checkpoint)")
    return checked_ensemble(checkpoint, path)


def _finite_mean(values: np.ndarray) -> float | None:
    """The mean of the finite ``values``; None when there is none (held-out states without measured
    growth rates: NumPy's mean of nothing warned twice and gave NaN, which the package's metadata
    then held as a bare NaN; outside probe, round 38)."""
    finite = np.asarray(values)[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def heldout_report(ensemble: DensityResidualEnsemble, table: dict, held_rows: np.ndarray, log=print) -> dict:
    """The checkpoint's held-out record: the members (teacher, when a student ships) and the shipped
    network on ``held_rows``, means as ``{"heldout_teacher": ..., "heldout": ...}``; logs their tables
    and each family's. Empty when there are no held-out rows."""
    report = {}
    if not len(held_rows):
        return report
    if ensemble.student is not None:  # what distillation costs: the members themselves on the same rows
        student, ensemble.student = ensemble.student, None
        teacher_scores = score_rows(ensemble, table, held_rows)
        ensemble.student = student
        log(format_scores("held-out states, the members (teacher; not shipped)", teacher_scores))
        report["heldout_teacher"] = {k: _finite_mean(v) for k, v in teacher_scores.items() if k != "growth_measured"}
    scores = score_rows(ensemble, table, held_rows)
    log(format_scores("held-out states", scores))
    report["heldout"] = {k: _finite_mean(v) for k, v in scores.items() if k != "growth_measured"}
    families = sorted({Path(str(s)).name.split("_seed")[0] for s in table["sources"][held_rows]})
    for family in families:
        rows = held_rows[[Path(str(s)).name.startswith(family + "_seed") for s in table["sources"][held_rows]]]
        if len(rows):
            log(format_scores(f"held-out, family {family}", score_rows(ensemble, table, rows)))
    return report


def unmatched_holdout_note(table: dict, patterns: list) -> str:
    """"; data.holdout's PATTERN matches no source file ..." for the patterns that match no source file
    name of the table ('' when each matches one). A misspelt pattern, or the default recipe's
    "*_seed9[0-9][0-9].h5" on one's own files, held nothing out, said only as "0 held out (PATTERN)"
    (outside probe, Python round sixty-one)."""
    names = sorted({Path(str(source)).name for source in np.unique(np.asarray(table["sources"]).astype(str))})
    unmatched = [pattern for pattern in patterns if not holdout_mask(names, [pattern]).any()]
    if not unmatched:
        return ""
    return (f"; data.holdout's {', '.join(repr(p) for p in unmatched)} {'matches' if len(unmatched) == 1 else 'match'} "
            f"none of the {counted(len(names), 'source file')} of data.path (patterns match file names, e.g. "
            f"{names[0]!r}): correct {'it' if len(unmatched) == 1 else 'them'}, or --set 'data.holdout=[]' to hold "
            "nothing out")


def train_command(config: EnsembleConfig, log=print) -> dict:
    table = load_table(config.data_path)
    held, copies = held_out_rows(table, config.holdout)
    train_rows, held_rows = np.flatnonzero(~held & ~copies), np.flatnonzero(held)
    check_training_rows(train_rows)
    # `data.holdout: []` printed "0 held out ()" (outside probe, new user's journey round two).
    held_out = f"{len(held_rows)} held out ({', '.join(config.holdout)})" if config.holdout else "none held out"
    log(f"{len(train_rows)} training states, {held_out}{unmatched_holdout_note(table, config.holdout)}")
    if copies.any():
        log(f"note: {counted(int(copies.sum()), 'row')} of files not matching data.holdout repeat a held-out state (rest-frame "
            "initial state bit for bit: a copy of a held-out run under another name): not trained on either")
    growth_table = load_growth_table(config, table, train_rows, log=log)
    ensemble = train_on(table, train_rows, config, log=log, growth_table=growth_table)
    report = {"n_train": int(len(train_rows)), "n_heldout": int(len(held_rows))}
    if growth_table is not None:
        report["growth_labels"] = int(len(growth_table["r"]))
        report["growth_calibration"] = float(growth_table["calibration"])
    report.update(heldout_report(ensemble, table, held_rows, log))
    save_checkpoint(ensemble, config, table, train_rows, report, config.checkpoint)
    log(f"wrote {config.checkpoint}")
    return report


def emu_table(path: str, box3d_settings: dict) -> dict:
    """An Emu-layout file (initial and final states at rest) as a table, for reporting only."""
    from dodo.conventions import from_emu_layout
    from dodo.emu_files import growth_rate_note, numeric_dataset, open_emu_file

    from .readers import DataFileError

    handle, nsims = open_emu_file(path)  # refuses a FIFO, a non-HDF5 file and another layout, naming the file
    with handle as f:  # numeric_dataset: a damaged dataset is named with the file (round 31)
        F_init = from_emu_layout(numeric_dataset(f, path, "F4_initial(1|ccm)"))
        F_true = from_emu_layout(numeric_dataset(f, path, "F4_final(1|ccm)"))
        growth = numeric_dataset(f, path, "growthRate(1|s)") if "growthRate(1|s)" in f else np.full(len(F_init), np.nan)
    # [n] or [n, 1] as dodo score and preprocess read it (round 35); another shape is not used (reporting only)
    growth = np.full(len(F_init), np.nan) if growth_rate_note(growth.shape, nsims) else growth.reshape(-1)
    if nsims == 0:
        raise DataFileError(f"{path}: the Emu file holds no rows")
    bad = np.flatnonzero(~(np.isfinite(F_init).all(axis=(1, 2)) & np.isfinite(F_true).all(axis=(1, 2))
                           & (F_init[..., 0].sum(axis=1) > 0)))
    if len(bad):
        raise DataFileError(f"{path}: {len(bad)} row(s) with non-finite four-fluxes or non-positive N_tot "
                            f"(rows {bad[:5].tolist()}{' ...' if len(bad) > 5 else ''}); the --emu file is scored "
                            "whole, so it must hold good rows only")
    box = _box3d_at_rest(F_init, box3d_settings)
    return _table_at_rest(F_init, np.asarray(box.F_box), F_true, growth, np.asarray(box.growth_rate),
                          np.array([path] * len(F_init)), box3d=box3d_settings)


#: Families drawn with emu_1d_validation.h5's recipe (docs/dataset.md): what "Emu recipe" means in CV tables.
EMU_RECIPE_FAMILIES = ("emu", "random_crossing", "random_crossing_ff09")


def is_emu_recipe(sources) -> np.ndarray:
    """True for rows whose solver file (".../FAMILY_seedN.h5") is of an Emu-recipe family."""
    family = np.array([Path(str(source)).name.split("_seed")[0] for source in sources])
    return np.isin(family, EMU_RECIPE_FAMILIES)


def learning_curve(config: EnsembleConfig, sizes: list, folds: int = 5, members: int | None = None,
                   emu_path: str | None = None, log=print, sizes_named: str = "") -> list[dict]:
    """k-fold CV error against training-set size (training pool only), and the same models'
    score on an Emu file (reported, never used to choose anything). ``sizes_named``: how the sizes were
    given, when not by the caller (" (the default --sizes 500,1000,all)"), for the refusal of two alike."""
    if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 1):
        raise ValueError(f"--members must be a positive integer; got {members!r}")
    table = load_table(config.data_path)
    order, fold_of = pool_folds(table, config, folds)
    unmatched = unmatched_holdout_note(table, config.holdout)
    if unmatched:  # the pool is then every state (as train-ensemble says it)
        log(f"note: {unmatched[2:]}")
    check_training_rows(order)
    if len(order) < folds:
        raise ValueError(f"the training pool has {len(order)} states, fewer than the {folds} folds")
    check_training_rows(order[fold_of != 0])  # each fold trains on the pool less one fold
    # Two sizes that train the same states (500,500; or 1000 and all where a fold holds fewer) fitted
    # the same ensembles twice and wrote the same row twice: refused before any fit.
    fold_sizes = [int(np.sum(fold_of != k)) for k in range(folds)]
    trained = {}
    for size in sizes:
        n = len(order) if size == "all" else int(size)
        taken = tuple(min(available, n) for available in fold_sizes)
        if taken in trained:
            advice = (f"give --sizes of fewer states (e.g. --sizes {max(10, min(fold_sizes) // 2)},all)" if sizes_named
                      else "give each size once")
            raise ValueError(f"--sizes {trained[taken]} and {size}{sizes_named} train on the same states (each fold's "
                             f"training set holds at most {max(fold_sizes)}): {advice}")
        trained[taken] = size
    emu = emu_table(emu_path, box3d_settings(table["box3d"])) if emu_path else None
    emu_scored = None if emu is None else emu_rows_outside_pool(emu, table, order, emu_path, log=log)
    growth_tables = fold_growth_tables(config, table, order, fold_of, folds, log=log)
    rows = []
    for size in sizes:
        n = len(order) if size == "all" else int(size)
        if size != "all" and n > min(fold_sizes):  # the row's train_size alone hid the size asked for
            log(f"note: --sizes {n}: each fold's training set holds {min(fold_sizes)}-{max(fold_sizes)} states; "
                f"this row trains on all of them")
        per_state_model, per_state_box, emu_scores, growth_ok, emu_growth_ok = [], [], [], [], []
        per_state_ungated, passed, offered = [], 0.0, 0.0
        for k in range(folds):
            test = order[fold_of == k]
            train = order[fold_of != k]
            train = train[: min(len(train), n)]  # the first n of a fixed shuffle: nested sizes
            ensemble = train_on(table, train, config, members=members,
                                growth_table=None if growth_tables is None else growth_tables[k])
            scores = score_rows(ensemble, table, test)
            per_state_model.append(scores["model"])
            per_state_box.append(scores["box3d"])
            per_state_ungated.append(scores["ungated"])
            passed, offered = passed + scores["correction_passed"], offered + scores["correction_offered"]
            growth_ok.append(_growth_within(scores["growth_measured_over_model"], scores["growth_measured"]))
            if emu is not None:
                emu_rows = score_rows(ensemble, emu, emu_scored)
                emu_scores.append(emu_rows["model"].mean())
                emu_growth_ok.append(_growth_within(emu_rows["growth_measured_over_model"], emu_rows["growth_measured"]))
        model, box = np.concatenate(per_state_model), np.concatenate(per_state_box)
        # Each fold's training set: the last fold's alone was the row's train_size (outside probe, training round
        # three); train_size is now the largest (the last fold's, as before), fold_train_sizes every fold's.
        taken = [min(available, n) for available in fold_sizes]
        row = {"train_size": max(taken), "fold_train_sizes": taken,
               "cv_model": float(model.mean()), "cv_box3d": float(box.mean()),
               "cv_model_ci95": bootstrap_mean_interval(model), "cv_worse_than_box3d": int(np.sum(model - box > 0.0025)),
               "cv_states": int(len(model)), "cv_growth_within_10pct": _share(growth_ok)}
        if emu is not None:
            row["emu_model_mean_over_folds"] = float(np.mean(emu_scores))
            row["emu_growth_within_10pct"] = _share(emu_growth_ok)
            row["emu_box3d"] = float(state_error(emu["delta_box"][emu_scored], emu["delta_true"][emu_scored]).mean())
            row["emu_states"] = int(len(emu_scored))
        if growth_tables is not None:
            row["growth_calibration_per_fold"] = [float(t["calibration"]) for t in growth_tables]
        row["cv_ungated"] = float(np.concatenate(per_state_ungated).mean())
        row["cv_gate_passed"] = passed / offered if offered > 0 else None
        rows.append(row)
        log(format_curve_row(row))
        note = gate_closed_note(row)
        if note:
            log(note)
    return rows


def gate_closed_note(row: dict) -> str:
    """The note of a learning-curve row whose model is Box3D to within 0.1% because the spread gate passed
    almost none of the members' correction (members of a few epochs, whose spread is still their
    untrained one): 2-epoch fits reported "CV model 0.00825 vs Box3D 0.00825" at every size, as if
    nothing could be learned (outside probe, training rounds four and five). "" otherwise."""
    share = row.get("cv_gate_passed")
    if share is None or abs(row["cv_model"] - row["cv_box3d"]) > 1e-3 * row["cv_box3d"] or share >= 0.01:
        return ""
    return (f"note: train {row['train_size']}: the model's CV error is Box3D's to within 0.1%: the spread gate passed "
            f"{100 * share:.2g}% of the members' mean correction (ungated CV {row['cv_ungated']:.5f} vs Box3D "
            f"{row['cv_box3d']:.5f}): the members' spread (sigma) is far larger than their correction, as for members of few epochs; "
            "raise ensemble.epochs (or give more states) for a curve of what the recipe learns")


def emu_rows_outside_pool(emu: dict, table: dict, pool_rows: np.ndarray, emu_path: str, log=print) -> np.ndarray:
    """The rows of the --emu table whose state is no state of the training pool (its rest-frame
    initial four-fluxes, bit for bit, are no pool row's): the rows the Emu score is taken on.

    An Emu file that is one of the pool's own sources (one's own database preprocessed from Emu
    files, scored with --emu on one of them) was scored whole: each fold's ensemble on states it
    had trained on, reported beside the CV as the score on an Emu file, with no word (outside probe,
    Python round sixty-one). Those states are left out and counted; all of them is refused."""
    pool = set(state_keys(np.asarray(table["rest"]["F_init_rest"])[pool_rows]))
    inside = np.array([key in pool for key in state_keys(emu["rest"]["F_init_rest"])], dtype=bool)
    total, shared = len(inside), int(inside.sum())
    if shared == total:
        raise ValueError(f"--emu {emu_path}: all {total} of its states are in the training pool "
                         f"(data.path): its score would be of states the folds train on; give an Emu file of other "
                         f"states, or hold its states out of the pool: --set 'data.holdout=[\"{Path(emu_path).name}\"]' "
                         "(the pool's source files matching it)")
    if shared:
        log(f"note: --emu {emu_path}: {shared} of its {counted(total, 'state')} are in the training pool "
            f"(data.path), trained on by the folds: the Emu score is taken on the other {total - shared}")
    return np.flatnonzero(~inside)


def _share(flags: list) -> float | None:
    """The share of true values among the per-fold arrays ``flags``; None when they hold none (no state
    with a measured growth rate: NumPy's mean of nothing warned twice, and the row said "nan%";
    outside probe, round 38)."""
    values = np.concatenate(flags) if flags else np.zeros(0, bool)
    return float(values.mean()) if values.size else None


def _growth_within(measured_over_model: np.ndarray, measured=None, tolerance: float = 0.1) -> np.ndarray:
    """Per state with a measured rate (``measured``: a mask of them; None: the states whose ratio is
    finite): is the learned rate within ``tolerance`` of it? A non-finite learned rate on a state with
    a measured one counts as not within: dropping it raised the share, as `dodo score` did before
    (scoring probe, 2026-12-06)."""
    ratio = np.asarray(measured_over_model, float)
    ratio = ratio[np.isfinite(ratio) if measured is None else np.asarray(measured, bool)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.isfinite(ratio) & (np.abs(1.0 / ratio - 1.0) <= tolerance)


def _percent(share) -> str:
    """A share as a percentage; "no measured rates" for None (no state had one)."""
    return "no measured rates" if share is None or not np.isfinite(share) else f"{100 * share:.0f}%"


def format_curve_row(row: dict) -> str:
    sizes = row.get("fold_train_sizes") or [row["train_size"]]
    size = f"{min(sizes):5d}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
    text = (f"train {size}: CV model {row['cv_model']:.5f} [{row['cv_model_ci95'][0]:.5f}, "
            f"{row['cv_model_ci95'][1]:.5f}] vs Box3D {row['cv_box3d']:.5f}; worse than Box3D by > 0.0025: "
            f"{row['cv_worse_than_box3d']}/{row['cv_states']}; growth within 10%: "
            f"{_percent(row.get('cv_growth_within_10pct'))}")
    if "emu_model_mean_over_folds" in row:
        text += (f"; Emu file: model {row['emu_model_mean_over_folds']:.5f} vs Box3D {row['emu_box3d']:.5f}, "
                 f"growth within 10% {_percent(row.get('emu_growth_within_10pct'))}")
    return text


def plot_curve(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["train_size"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    low = [r["cv_model_ci95"][0] for r in rows]
    high = [r["cv_model_ci95"][1] for r in rows]
    from .plots import far_linear_limits

    # Before drawing: errors near the float range (a diverged model) made matplotlib's autoscale print
    # "RuntimeWarning: overflow encountered in multiply" (outside probe, Python round fifty-three).
    drawn = low + high + [r.get(key) for r in rows for key in
                          ("cv_model", "cv_box3d", "emu_model_mean_over_folds", "emu_box3d")]
    far_linear_limits(ax.yaxis, [value for value in drawn if isinstance(value, (int, float))])
    ax.fill_between(sizes, low, high, alpha=0.3, label="model, CV 95% CI")
    ax.plot(sizes, [r["cv_model"] for r in rows], "o-", label="model, k-fold CV")
    ax.plot(sizes, [r["cv_box3d"] for r in rows], "k--", label="Box3D, same states")
    if "emu_model_mean_over_folds" in rows[0]:
        ax.plot(sizes, [r["emu_model_mean_over_folds"] for r in rows], "s-", label="model on Emu file")
        ax.axhline(rows[0]["emu_box3d"], color="gray", ls=":", label="Box3D on Emu file")
    ax.set_xscale("log")
    _label_sizes(ax.xaxis, sizes)
    ax.set_xlabel("training states")
    ax.set_ylabel("mean |dn|/N_tot (mu, tau averaged)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .plots import save_figure

    save_figure(fig, path)  # in the format its name says: --plot curve.pdf received PNG bytes


def _label_sizes(axis, sizes: list) -> None:
    """Ticks of a learning curve's log x axis at its training-set sizes, each labelled as the integer it is,
    a size too near the one labelled before it (in a tenth of the axis's decades) left unlabelled. The
    log axis's own labels, minor ticks among them, overlapped ("3x10^3" on "4x10^3" for sizes 500 to 8,000)
    and named none of the sizes trained (outside probe, training round four)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

    ordered = sorted(set(int(size) for size in sizes))
    span = math.log10(ordered[-1] / ordered[0]) if ordered[0] > 0 else 0.0
    labelled = [ordered[-1]]  # the largest ('all') always; then downwards, each far enough from the last kept
    for size in reversed(ordered[:-1]):
        if span == 0 or math.log10(labelled[-1] / size) >= 0.1 * span:
            labelled.append(size)
    axis.set_major_locator(FixedLocator(ordered))
    axis.set_major_formatter(FixedFormatter([f"{size:,}" if size in labelled else "" for size in ordered]))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


#: Graph outputs of an ensemble package (docs/model_package.md, optional outputs).
ENSEMBLE_OUTPUTS = ("head_output", "uncertainty", "log_growth_ratio")


def _ensemble_onnx_bytes(ensemble: DensityResidualEnsemble, fused: bool = False) -> bytes:
    """The ensemble as an ONNX graph: member by member as the torch module is written, or with
    fused=True its members stacked into a few large nodes (dodo.training.fused; the same outputs,
    measured not faster in ONNX Runtime on CPU, so not the default)."""
    import copy
    import inspect
    import io
    import warnings

    from .ensemble import _ExportView
    from .export import OPSET
    from .features import FEATURE_SIZES
    from .fused import FusedEnsemble

    ensemble = copy.deepcopy(ensemble).float().eval()
    view = FusedEnsemble(ensemble).eval() if fused else _ExportView(ensemble)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {}
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            options["dynamo"] = False
        torch.onnx.export(view, (torch.zeros(2, FEATURE_SIZES[ensemble.features]),), buffer, input_names=["invariants"],
                          output_names=list(ENSEMBLE_OUTPUTS),
                          dynamic_axes={"invariants": {0: "N"}, **{name: {0: "N"} for name in ENSEMBLE_OUTPUTS}},
                          opset_version=OPSET, **options)
    if fused:  # the fused graph keeps its float32 distance (not the default; docs/training.md)
        return buffer.getvalue()
    import onnx

    from .gate_graph import distance_in_float64

    model = onnx.load_from_string(buffer.getvalue())
    distance_in_float64(model)  # as the torch module computes it (ensemble.squared_mahalanobis)
    return model.SerializeToString()


def check_graph_outputs(ensemble: DensityResidualEnsemble, onnx_bytes: bytes, n_random: int = 2048) -> float:
    """All three graph outputs against the unfused torch ensemble (fp32) on random initial
    states' features; raises ExportError beyond the export's fp32 round-trip tolerance. Returns the
    largest difference relative to that tolerance."""
    import copy

    from .export import ROUNDTRIP_ATOL, ROUNDTRIP_RTOL, ExportError, cpu_session
    from .features import lab_features
    from .synth import random_initial_states

    session = cpu_session(onnx_bytes)
    X = np.asarray(lab_features(ensemble.features, random_initial_states(np.random.default_rng(8), n_random)),
                   dtype=np.float32)
    got = session.run(list(ENSEMBLE_OUTPUTS), {"invariants": X})
    with torch.no_grad():
        expected = [t.numpy() for t in copy.deepcopy(ensemble).float().eval().outputs(torch.from_numpy(X))]
    worst = 0.0
    for name, g, e in zip(ENSEMBLE_OUTPUTS, got, expected):
        bad_graph, bad_torch = int(np.sum(~np.isfinite(g))), int(np.sum(~np.isfinite(e)))
        if bad_graph or bad_torch:  # a difference of NaNs is no difference: say what is wrong
            raise ExportError(f"graph output {name!r} is not finite on random initial states ({bad_graph} of "
                              f"{g.size} values in ONNX Runtime, {bad_torch} in the torch ensemble): the trained "
                              "model is broken (too few training states?); retrain it")
        ratio = np.abs(g - e) / (ROUNDTRIP_ATOL + ROUNDTRIP_RTOL * np.abs(e))
        if not np.all(ratio <= 1):  # NaN fails too
            raise ExportError(f"graph output {name!r} differs from the torch ensemble by up to "
                              f"{np.max(np.abs(g - e)):.3e} (fp32 tolerance {ROUNDTRIP_ATOL} + {ROUNDTRIP_RTOL} |x|)")
        worst = max(worst, float(ratio.max()))
    return worst


def _diagnostic_test_vectors(ensemble: DensityResidualEnsemble, test_vectors: dict, box3d_settings: dict) -> dict:
    """Expected growth rate (units of N_tot) and uncertainty of the test-vector cells (float64), so
    that the runtime's self-test also checks the optional outputs (docs/model_package.md)."""
    import copy

    import dodo

    from .features import lab_features

    F = np.asarray(test_vectors["F_init"], float)
    u = np.asarray(test_vectors["u"], float)
    box = dodo.box3d(F, u, lebedev_order=int(box3d_settings["lebedev_order"]), z_method=str(box3d_settings["z_method"]))
    X = lab_features(ensemble.features, F, u, box, box3d=box3d_settings)
    with torch.no_grad():
        _, sigma, log_ratio = copy.deepcopy(ensemble).double().outputs(torch.from_numpy(X))
    growth = np.asarray(box.growth_over_ntot, float) * np.exp(log_ratio.numpy())
    return {"growth_over_ntot": growth.tolist(), "uncertainty": sigma.numpy().tolist()}


def export_ensemble(checkpoint_path: str, output: str, n_test_vectors: int = 6, log=print, fused: bool = False,
                    check: bool = True, checkpoint: dict | None = None,
                    ensemble: DensityResidualEnsemble | None = None) -> dict:
    """Ensemble checkpoint -> model package (same format as `dodo export`, plus the optional outputs);
    fused=True writes the stacked graph of dodo.training.fused; check=False skips the torch vs
    onnxruntime round trip (`dodo export --no-check`; the runtime's self-test still runs at load).
    ``ensemble``: the network itself, with ``checkpoint`` holding only its record ("data", "metrics"),
    for tools/gate_growth_in_package.py, which rebuilds a distilled package's student from its graph."""
    import onnx

    from .. import _core
    from .ensemble import native_network_description
    from .export import (IR_VERSION, ExportError, make_test_vectors, metadata_for, roundtrip_check,
                         training_states_left_out_note)
    from .probe_vectors import add_probe_vectors

    if checkpoint is None:  # `dodo export` passes the file's content, read once
        checkpoint = load_torch_file(checkpoint_path)
    if ensemble is None:
        ensemble = checked_ensemble(checkpoint, checkpoint_path)
    if fused and ensemble.student is not None:
        raise ValueError("--fused: this checkpoint is distilled into one network; there are no members to fuse")
    if fused and (len(ensemble.growth_members) or ensemble.noise_member is not None):
        # FusedEnsemble stacks the density members alone: growth members and the label-noise
        # member would be left out of its outputs.
        raise ValueError("--fused stacks the density members only, and this checkpoint also has growth members or a "
                         "label-noise member: export it without --fused")
    box3d_settings = checkpoint["data"]["box3d"]
    model = onnx.load_from_string(_ensemble_onnx_bytes(ensemble, fused=fused))
    model.ir_version = min(model.ir_version, IR_VERSION)
    model.doc_string = ("Dodo density-residual ensemble: raw invariants -> gated head output, uncertainty, "
                        "log growth ratio (docs/model_package.md)")
    test_vectors = make_test_vectors(ensemble, box3d_settings, n_test_vectors)
    test_vectors.update(_diagnostic_test_vectors(ensemble, test_vectors, box3d_settings))
    del model.metadata_props[:]
    metadata = metadata_for(checkpoint, "equivariant", test_vectors)
    metadata["dodo.features"] = ensemble.features
    metadata["dodo.outputs"] = json.dumps(list(ENSEMBLE_OUTPUTS))
    metadata["dodo.model_kind"] = CHECKPOINT_KIND
    # The student's arithmetic for the runtime's own evaluator (it checks the graph agrees at load).
    native = None if fused else native_network_description(ensemble, {t.name for t in model.graph.initializer})
    if native is not None:
        metadata["dodo.native_network"] = json.dumps(native)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    final_bytes = _core.with_content_digest(model.SerializeToString())
    check_graph_outputs(ensemble, final_bytes)
    # Probe cells for the gate and Box3D settings (probe_vectors.py): a re-signed edit of them fails
    # the self-test (outside probes, Python rounds forty-eight and forty-nine).
    try:
        final_bytes, probes = add_probe_vectors(final_bytes)
    except ValueError as error:
        raise ExportError(f"probe test vectors: {error}") from None
    roundtrip = roundtrip_check(ensemble, final_bytes, test_vectors, box3d_settings) if check else None
    if native is not None:  # the runtime checks its evaluator against the graph while loading
        import dodo

        evaluator = dodo.Closure(final_bytes, threads=0).evaluator
        if evaluator != "native":
            raise ExportError(f"the runtime evaluates this package with {evaluator!r}, not its native description")
    with atomic_path(output) as tmp:
        tmp.write_bytes(final_bytes)
    if roundtrip is None:
        log("round trip torch vs onnxruntime skipped (--no-check)")
    else:
        log(f"round trip torch vs onnxruntime: max head difference {roundtrip['max_head_difference']:.2e}; "
            f"test vectors reproduced to {roundtrip['max_test_vector_error_over_ntot']:.2e} N_tot")
    log(f"test vectors: {len(test_vectors['F_init'])} drawn + {probes['probes']} probes of the gate and Box3D settings")
    # "distilled from 1 members" of ensemble.members: 1 (outside probe, Python round fifty-seven)
    form = (f"ensemble of {len(ensemble.members)}" if ensemble.student is None
            else "distilled into one network" if not len(ensemble.members)  # rebuilt from a package's graph
            else f"distilled from {counted(len(ensemble.members), 'member')} into one network")
    log(f"wrote {output} (density-residual {form}, {'fused, ' if fused else ''}"
        f"{len(model.graph.node)} ONNX nodes, {len(final_bytes)} bytes)")
    if training_states_left_out_note(checkpoint):
        log(training_states_left_out_note(checkpoint))
    return {"path": str(output), "roundtrip": roundtrip}
