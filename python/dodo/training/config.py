"""Experiment configuration: typed sections with defaults, loaded from YAML.

Unknown keys and wrong types fail with a message naming the key, so a typo in a config never
silently trains the default model. Relative paths are taken relative to the current directory.
"""
from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .. import _yaml as unique_key_yaml
from ..conventions import MAX_THREADS


#: Activations the model knows (dodo.training.model.ACTIVATIONS has the same keys).
ACTIVATION_NAMES = ("relu", "silu", "gelu", "tanh", "elu")
HEAD_NAMES = ("direct", "equivariant")


#: Widest hidden layer and most residual blocks `dodo train` builds (the default model: 128 wide, 3 blocks).
MAX_HIDDEN_DIM = 1 << 20
MAX_BLOCKS = 1000
#: The largest float32, the type torch's optimizers hold their learning rate in.
FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
    """A configuration file or value is invalid (message names the offending key)."""


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict = 2, 4, 4
_SHORT_REPR.maxstring, _SHORT_REPR.maxother, _SHORT_REPR.maxlong = 60, 60, 40


def shown(value) -> str:
    """A value for an error message, cut short: the whole repr of a YAML alias bomb (9^8 strings
    behind one key) took 12 s and 4 GB to print (outside probe, round 25)."""
    return _SHORT_REPR.repr(value)


def check_thread_count(name: str, value, lowest: int = 0, nullable: bool = True, where: str = "") -> None:
    """The bound on a config's thread count, for every config (``training.threads``, `dodo
    preprocess`'s ``threads``, `dodo train-ensemble`'s ``threads``), in one message: an integer in
    [lowest, MAX_THREADS], or null where ``nullable``. torch.set_num_threads(100000) ends the process
    in a segmentation fault (exit 139) after its last line, whatever the run had written."""
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= MAX_THREADS:
        raise ConfigError(f"{where}{name} must be an integer in [{lowest}, {MAX_THREADS}]"
                          f"{' or null' if nullable else ''}; got {shown(value)}")


@dataclass
class Box3DConfig:
    """Box3D settings the residual is trained against (must match the preprocessed file)."""

    lebedev_order: int = 17
    z_method: str = "exact"


@dataclass
class DataConfig:
    path: str = "pdata/preprocessed_all.h5"
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    split_seed: int = 42
    #: None: loss in units of each cell's N_tot (default). A number, or "p99" (99th percentile
    #: of |F_true|, the seed's choice), puts the loss in units of one global scale instead.
    target_scale: Optional[Union[float, str]] = None
    batch_size: int = 256
    num_workers: int = 0
    #: True: load the split into memory; False: read rows from HDF5 (one handle per worker).
    in_memory: bool = True
    #: Train on each cell and its nu <-> nubar mirror (a symmetry of the fast-flavour equations):
    #: twice the samples for small datasets. Training split only; needs in_memory.
    augment_nu_nubar: bool = False
    max_samples: Optional[int] = None
    box3d: Box3DConfig = field(default_factory=Box3DConfig)


@dataclass
class ModelConfig:
    head: str = "equivariant"
    hidden_dim: int = 128
    n_blocks: int = 3
    activation: str = "silu"
    dropout: float = 0.0
    batch_norm: bool = False


@dataclass
class LossConfig:
    w_density: float = 1.0
    w_flux: float = 1.0
    w_direction: float = 0.1
    w_unphysical: float = 1.0
    w_residual_l1: float = 1.0


@dataclass
class TrainingConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.01
    grad_clip: Optional[float] = 1.0
    # Off by default: Dodo's networks are small, and with AMP's casts a GPU ran at 0.36x / 0.73x of 16
    # CPU threads at batch 256 / 4,096, float32 at 0.54x / 1.13x (docs/gpu.md); true adds autocast +
    # GradScaler on CUDA.
    amp: bool = False
    device: str = "auto"
    seed: int = 0
    log_interval: int = 50
    resume_from: Optional[str] = None
    #: Stop (as if interrupted) after this epoch; the run can be resumed from checkpoints/last.pt.
    stop_after_epoch: Optional[int] = None
    threads: Optional[int] = None


@dataclass
class OutputConfig:
    results_dir: str = "results"
    checkpoint_dir: str = "checkpoints"
    #: Test-split cells whose predictions are kept in the metrics JSON for parity plots.
    parity_samples: int = 2000


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def load(cls, path: str | Path, overrides: Optional[dict] = None, create_dirs: bool = True) -> "ExperimentConfig":
        """Read a YAML config, fill defaults, validate, create the output directories."""
        raw = read_yaml_mapping(path)
        if overrides:
            check_override_keys(cls, overrides)
            raw = merge_dotted(raw, overrides)
        config = _from_dict_naming_its_command(cls, raw, path, "dodo train")
        config.validate()
        if create_dirs:
            config.make_dirs()
        return config

    @classmethod
    def from_mapping(cls, raw: dict, where: str = "config") -> "ExperimentConfig":
        config = from_dict(cls, raw, where=where)
        config.validate()
        return config

    def validate(self) -> None:
        heads = HEAD_NAMES
        if self.model.head not in heads:
            raise ConfigError(f"model.head must be one of {heads}; got {self.model.head!r}")
        if self.model.activation not in ACTIVATION_NAMES:
            raise ConfigError(f"model.activation must be one of {ACTIVATION_NAMES}; got {self.model.activation!r}")
        for name in ("hidden_dim", "n_blocks"):
            if getattr(self.model, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1")
        # model.hidden_dim 10^29 ended in a torch traceback with C++ frames ("Overflow when unpacking long long"),
        # model.n_blocks 10^29 built blocks one at a time for ever (outside probe, training round four).
        for name, highest in (("hidden_dim", MAX_HIDDEN_DIM), ("n_blocks", MAX_BLOCKS)):
            if getattr(self.model, name) > highest:
                raise ConfigError(f"model.{name} must be at most {highest:,}; got {shown(getattr(self.model, name))}")
        if not 0.0 <= self.model.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        d = self.data
        if d.augment_nu_nubar and not d.in_memory:
            raise ConfigError("data.augment_nu_nubar needs data.in_memory: true")
        if not (0 < d.train_fraction < 1 and 0 <= d.val_fraction < 1):
            raise ConfigError(f"data.train_fraction must be in (0, 1) and data.val_fraction in [0, 1); "
                              f"got {d.train_fraction!r} and {d.val_fraction!r}")
        if d.train_fraction + d.val_fraction > 1 - 1e-9:  # the rest is the test split the final metrics are on
            raise ConfigError(f"data.train_fraction + data.val_fraction must be < 1 (the rest is the test split, on "
                              f"which the run's final metrics are computed); got {d.train_fraction} + {d.val_fraction}")
        if d.max_samples is not None and (isinstance(d.max_samples, bool) or not isinstance(d.max_samples, int)
                                          or d.max_samples < 1):
            raise ConfigError(f"data.max_samples must be a positive integer (use the first N rows of the shuffle) or "
                              f"null (all rows); got {d.max_samples!r}")
        if d.batch_size < 1:
            raise ConfigError("data.batch_size must be >= 1")
        if d.batch_size > 2**62:  # beyond sys.maxsize: "Stop argument for islice() must be ...", naming no key
            raise ConfigError(f"data.batch_size must be at most 2^62 (a batch larger than the split is the whole "
                              f"split); got {shown(d.batch_size)}")
        if isinstance(d.target_scale, str) and d.target_scale != "p99":
            raise ConfigError(f"data.target_scale must be null, a positive number or 'p99'; got {d.target_scale!r}")
        if isinstance(d.target_scale, (int, float)) and not (math.isfinite(d.target_scale) and d.target_scale > 0):
            raise ConfigError(f"data.target_scale must be a finite positive number (or null, or 'p99'); "
                              f"got {d.target_scale!r}")
        if d.box3d.z_method not in ("exact", "jedynak"):
            raise ConfigError(f"data.box3d.z_method must be 'exact' or 'jedynak'; got {d.box3d.z_method!r}")
        if d.box3d.lebedev_order not in _available_lebedev_orders():
            raise ConfigError(f"data.box3d.lebedev_order must be one of {_available_lebedev_orders()}; "
                              f"got {d.box3d.lebedev_order!r}")
        for name in ("checkpoint_dir", "results_dir"):  # '' is '.': the run's files went into the working directory
            if not str(getattr(self.output, name)).strip():
                raise ConfigError(f"output.{name} must name a directory; got an empty string (the run's files would go "
                                  "into the working directory: write '.' to mean it)")
        t = self.training
        if t.epochs < 1:
            raise ConfigError("training.epochs must be >= 1")
        if not (math.isfinite(t.lr) and t.lr > 0):
            raise ConfigError(f"training.lr must be a finite positive number; got {t.lr!r}")
        if t.lr > FLOAT32_MAX:  # "value cannot be converted to type float without overflow", naming no key
            raise ConfigError(f"training.lr must be below {FLOAT32_MAX:.4g} (torch's optimizer holds it as a float32); "
                              f"got {t.lr!r}")
        if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
            raise ConfigError(f"training.weight_decay must be a finite number >= 0; got {t.weight_decay!r}")
        if not 0 <= t.min_lr_fraction <= 1:  # also refuses NaN
            raise ConfigError(f"training.min_lr_fraction must be in [0, 1]; got {t.min_lr_fraction!r}")
        if t.grad_clip is not None and not (math.isfinite(t.grad_clip) and t.grad_clip > 0):
            raise ConfigError(f"training.grad_clip must be a finite positive norm, or null to disable clipping; "
                              f"got {t.grad_clip!r}")
        if not 0 <= t.warmup_fraction < 1:
            raise ConfigError("training.warmup_fraction must be in [0, 1)")
        if t.device not in ("auto", "cpu", "cuda") and not t.device.startswith("cuda:"):
            raise ConfigError(f"training.device must be auto, cpu, cuda or cuda:N; got {t.device!r}")
        if t.log_interval < 1:
            raise ConfigError("training.log_interval must be >= 1")
        # Integers the libraries would refuse with messages that do not name the key, or take
        # silently as something else (stop_after_epoch 0 ran one epoch; parity_samples -5 kept all
        # but the last five cells).
        for name, value, low, high in (("data.split_seed", d.split_seed, 0, 2**63 - 1),
                                       ("training.seed", t.seed, 0, 2**32 - 1),
                                       ("data.num_workers", d.num_workers, 0, 1024),
                                       ("output.parity_samples", self.output.parity_samples, 0, 2**62)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}]; got {shown(value)}")
        if t.stop_after_epoch is not None and (isinstance(t.stop_after_epoch, bool)
                                               or not isinstance(t.stop_after_epoch, int) or t.stop_after_epoch < 1):
            raise ConfigError(f"training.stop_after_epoch must be a positive integer or null; got {t.stop_after_epoch!r}")
        check_thread_count("training.threads", t.threads)  # 0 or null: torch's default
        for name, value in dataclasses.asdict(self.loss).items():
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"loss.{name} must be a finite number >= 0; got {shown(value)}")

    def make_dirs(self) -> None:
        Path(self.output.results_dir).mkdir(parents=True, exist_ok=True)
        Path(self.output.checkpoint_dir).mkdir(parents=True, exist_ok=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FiltersConfig:
    """Read-time hygiene of data.md; each switch on by default, each counted."""

    clamp_negative_density: bool = True
    drop_nonfinite: bool = True
    drop_conservation_violation: bool = True
    conservation_tolerance: float = 1e-3
    drop_high_flux_factor: bool = True
    max_flux_factor: float = 0.9
    drop_box3d_rejected: bool = True


@dataclass
class PreprocessConfig:
    inputs: list = field(default_factory=lambda: ["data/*.h5"])
    output: str = "pdata/preprocessed_all.h5"
    average_mu_tau: bool = True
    chunk_size: int = 65536
    threads: Optional[int] = None
    box3d: Box3DConfig = field(default_factory=Box3DConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)

    @classmethod
    def load(cls, path: str | Path, overrides: Optional[dict] = None) -> "PreprocessConfig":
        raw = read_yaml_mapping(path)
        if overrides:
            check_override_keys(cls, overrides)
            raw = merge_dotted(raw, overrides)
        config = _from_dict_naming_its_command(cls, raw, path, "dodo preprocess")

        def where(key: str) -> str:
            """Where a value checked here came from: the --set that gave it, or the file. A --set value
            was blamed on the file ("pre.yaml: filters.conservation_tolerance must be ...; got -1.0",
            where pre.yaml holds 0.001; outside probe, Python round sixty-one)."""
            given = [name for name in (overrides or {}) if key == name or key.startswith(f"{name}.")]
            return f"override {given[0]} (--set)" if given else str(path)

        if isinstance(config.inputs, str):
            config.inputs = [config.inputs]
        if not config.inputs:
            raise ConfigError(f"{where('inputs')}: 'inputs' lists no files")
        if config.output == "":
            # Was `cannot write .: it exists and is a directory, not a regular file` (data-loss probe, round four).
            raise ConfigError(f"{where('output')}: output is an empty string; give the preprocessed file's path, e.g. "
                              "pdata/preprocessed_all.h5")
        if config.chunk_size < 1:
            raise ConfigError(f"{where('chunk_size')}: chunk_size must be >= 1")
        if config.box3d.z_method not in ("exact", "jedynak"):
            raise ConfigError(f"{where('box3d.z_method')}: box3d.z_method must be 'exact' or 'jedynak'")
        if config.box3d.lebedev_order not in _available_lebedev_orders():
            raise ConfigError(f"{where('box3d.lebedev_order')}: box3d.lebedev_order must be one of {_available_lebedev_orders()}; "
                              f"got {config.box3d.lebedev_order!r}")
        check_thread_count("threads", config.threads, where=f"{where('threads')}: ")
        filters = config.filters
        for name in ("conservation_tolerance", "max_flux_factor"):
            value = getattr(filters, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{where('filters.' + name)}: filters.{name} must be a finite positive number; got {shown(value)}")
        if filters.max_flux_factor > 1:  # |F|/N <= 1 for any distribution: a larger limit drops nothing physical
            raise ConfigError(f"{where('filters.max_flux_factor')}: filters.max_flux_factor is a flux factor |F|/N, which lies in [0, 1]: give a "
                              f"limit in (0, 1] (default 0.9); got {filters.max_flux_factor!r}")
        return config


def _available_lebedev_orders() -> list:
    from dodo import _core

    return list(_core.available_lebedev_orders())


def yaml_problem(error: Exception) -> str:
    """A YAML parser error on one line: what is wrong and where (line and column, from 1)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if not problem:
        return " ".join(str(error).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(error, "context", None)
    return " ".join(f"{problem}{where}{f' ({context})' if context else ''}".split())


def _binary_kind(path) -> str:
    """"it is a synthetic database (dodo synth)" (one of Dodo's files, `_output_guard.file_kind`'s words) or ''.
    `dodo train --config s.h5` said `not a text file (byte 0 is not UTF-8)` of the data file given for the
    config (outside probe, Python round fifty-four)."""
    from .._output_guard import file_kind

    try:
        kind = file_kind(path)
    except (OSError, ValueError):
        return ""
    return "" if kind.startswith(("a file of another kind", "a file that cannot be read")) else f"it is {kind}"


def read_yaml_mapping(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        from .._atomic import InputPathError, check_input_file

        try:  # a directory, FIFO or device: say what it is ("not found" of a file that is there misled)
            check_input_file(path, "a YAML config file")
        except InputPathError as error:
            raise ConfigError(str(error)) from None
    try:
        # Bytes, decoded here: a binary file gave "'utf-8' codec can't decode byte 0xff in position 0",
        # naming neither the file nor that it is not text.
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({_binary_kind(path) or f'byte {exc.start} is not UTF-8'}): give "
                          "a YAML config file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = unique_key_yaml.safe_load(text)  # a key given twice is an error, not the last one kept
    except yaml.YAMLError as exc:  # PyYAML's text spans five lines, with the source line and a caret
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


#: Top-level keys that only one command's config has: a config given to another command is named as its.
_CONFIG_SECTIONS_OF = {"dodo preprocess": ("inputs", "filters", "average_mu_tau"),
                       "dodo train": ("model", "training", "loss"),
                       "dodo train-ensemble": ("ensemble", "distill", "growth", "noise")}


def _from_dict_naming_its_command(cls, raw, path, command: str):
    """from_dict, whose unknown top-level keys, where they are another command's sections, name that
    command: `dodo preprocess --config demo_synthetic.yaml` (a training config) said `unknown key(s)
    ['data', 'model', 'training']; allowed: [...]` alone (outside probe, Python round fifty-four)."""
    try:
        return from_dict(cls, raw, where=str(path))
    except ConfigError as error:
        keys = set(raw) - {f.name for f in dataclasses.fields(cls)} if isinstance(raw, dict) else set()
        for other, sections in _CONFIG_SECTIONS_OF.items():
            found = sorted(keys & set(sections))
            if other != command and found:
                raise ConfigError(f"{error} ({', '.join(found)}: {'a section' if len(found) == 1 else 'sections'} of "
                                  f"a {other} config: give this file to {other} --config; {command} takes a config "
                                  "of its own)") from None
        raise


def check_override_keys(cls, overrides: dict) -> None:
    """Refuse an override whose dotted key names no key of ``cls`` (a config dataclass) or of its sections,
    or whose value is not of its key's type, naming the override. The check after merging named the config file: `dodo train --config c.yaml --set
    model.hidden_dm=3` said `c.yaml:model: unknown key(s) ['hidden_dm']`, of a file that has no such key
    (outside probe, Python round fifty-four). A section whose type is no dataclass (a mapping) is not looked
    into."""
    for dotted, value in overrides.items():
        node, keys = cls, dotted.split(".")
        for depth, key in enumerate(keys):
            if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
                break
            names = sorted(f.name for f in dataclasses.fields(node))
            if key not in names:
                section = ".".join(keys[:depth])
                raise ConfigError(f"override {dotted} (--set): unknown key {key!r}"
                                  + (f" in section {section}" if section else "") + f"; allowed: {names}")
            hint = typing.get_type_hints(node)[key]
            if depth == len(keys) - 1:  # its value's type too: `--set training.epochs=abc` named the file as well
                if dataclasses.is_dataclass(hint) and (value is None or value == {}):  # {} too, the same defaults
                    # `--set model=null` (or `--set output=`) replaced the config's whole section by its defaults
                    # without a word: the run trained another model, or wrote to ./results and ./checkpoints
                    # (outside probe, training round three).
                    first = sorted(f.name for f in dataclasses.fields(hint))[0]
                    raise ConfigError(f"override {dotted} (--set): null (or an empty value, or {{}}) would replace "
                                      f"the whole {dotted} section of the config by its defaults: set its keys one by "
                                      f"one, e.g. --set {dotted}.{first}=VALUE")
                if dataclasses.is_dataclass(hint) and isinstance(value, dict):
                    # A mapping is merged into the section key by key (merge_dotted): each of its keys is checked
                    # as its own override, a section null inside it too (`--set 'data={box3d: null}'` gave
                    # data.box3d its defaults without a word; outside probe, open items of training round three).
                    check_override_keys(cls, {f"{dotted}.{name}": inner for name, inner in value.items()})
                    break
                _coerce(hint, value, f"override {dotted} (--set)")
            # Optional[Section] is Union[Section, None]: its section's keys are checked too.
            members = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
            node = members[0] if len(members) == 1 else None
            if depth < len(keys) - 1 and not any(dataclasses.is_dataclass(m) or m is dict or typing.get_origin(m) is dict
                                                 or m is Any for m in members):
                # `--set training.lr.x=1` on a config without training.lr blamed the file ("c.yaml:training.lr:
                # expected a number, got {'x': 1}"), with it "lr is not a section" (outside probe, training round three).
                setting = ".".join(keys[:depth + 1])
                raise ConfigError(f"override {dotted} (--set): {setting} is a setting, not a section: "
                                  f"--set {setting}=VALUE")


def merge_dotted(raw: dict, overrides: dict) -> dict:
    """Apply {"training.lr": 1e-3, ...} on a nested dict (copy). A mapping given for a section is merged
    into it key by key: `--set 'training={epochs: 2}'` (or a study's ``overrides: {training: {epochs: 2}}``)
    replaced the config's whole training section, every other key of it (lr, threads, log_interval) falling
    back to its default without a word (outside probe, open items of training round three)."""
    import copy

    merged = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = merged
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {key} is not a section")
        _merge_value(node, keys[-1], copy.deepcopy(value))
    return merged


def _merge_value(node: dict, key: str, value) -> None:
    """``node[key] = value``, but a non-empty mapping into a mapping already there is merged key by key."""
    if isinstance(value, dict) and value and isinstance(node.get(key), dict):
        for name, inner in value.items():
            _merge_value(node[key], name, inner)
    else:
        node[key] = value


def from_dict(cls, raw: Any, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    values = {}
    for name, value in raw.items():
        key = f"{where}:{name}" if ":" not in where else f"{where}.{name}"
        values[name] = _coerce(hints[name], value, key)
    return cls(**values)


_YAML_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
               type(None): "null"}


def _coerce(hint, value, key):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        # In YAML's words ("an integer or null"), not Python's type names ("int or NoneType").
        allowed = " or ".join(_YAML_KINDS.get(option, getattr(option, "__name__", str(option))) for option in options)
        raise ConfigError(f"{key}: expected {allowed}, got {shown(value)}")
    if hint is list or origin is list:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {shown(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-3" as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {shown(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond float64 (10^400): one line naming the key
            raise ConfigError(f"{key}: {shown(value)} is beyond the range of a float") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {shown(value)}")
        return value
    return value
