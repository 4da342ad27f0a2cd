"""What the density-member studies in tools/ share: pool fold 0 of tools/gate_study.py's split, the
config's member fit, and the members' scores on the left-out fold (ungated, under the config's
spread gate times the distance factor, states worse than Box3D). Imported by the study scripts
beside it (`python tools/X_study.py` puts this folder on the import path)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_ensemble, spread_gate, state_error
from dodo.training.features import OOD_COLUMNS

def run_study(main) -> None:
    """Run a study script's ``main``: an expected failure (a config or an input file that is not the
    study's, a missing file) ends it with one line and exit 2, as the dodo commands do, instead of a
    traceback (outside probe, round 26); Ctrl-C with one line and exit 130."""
    from dodo._atomic import outputs_as_found

    name = Path(sys.argv[0]).name
    try:
        # As dodo's commands: an output is compared at its rename with what the check before the work
        # found there, so a file another process wrote meanwhile (a train-ensemble that finished at the
        # tool's -o during its fits) is kept, not replaced by the tool's (data-loss probe, round five).
        with outputs_as_found():
            status = main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError) as error:  # ConfigError, InputPathError, DataFileError are ValueErrors
        print(f"{name}: error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(status or 0)


#: The most threads a study's --threads may ask for (the dodo commands' bound).
MAX_THREADS = 1024


def check_count(option: str, value, lowest: int = 1, highest: int | None = None) -> None:
    """An integer option of a study in [lowest, highest]; a ValueError naming the option otherwise
    (run_study's one line, exit 2). --members 0 ended in torch's "stack expects a non-empty
    TensorList", --threads 0 in "set_num_threads expects a positive integer", --folds 1 in
    "random_ expects 'from' to be less than 'to'", each a traceback after loading the table
    (outside probe, round 28)."""
    if value is None:
        return
    if highest is not None and not lowest <= value <= highest:
        raise ValueError(f"{option} must be an integer in [{lowest}, {highest}]; got {value}")
    if value < lowest:
        raise ValueError(f"{option} must be an integer >= {lowest}; got {value}")


def check_numbers(option: str, values, lowest: float = 0.0, strict: bool = False, highest: float | None = None) -> None:
    """Real options of a study: finite, >= lowest (> lowest when ``strict``), <= highest. A NaN gate
    factor ended in "min() arg is an empty sequence", a negative noise weight or reference factor was
    studied and its gate "adopted", though the config refuses such a gate (outside probe, round 28)."""
    import math

    for value in values if isinstance(values, (list, tuple)) else [values]:
        low = value > lowest if strict else value >= lowest
        if not (math.isfinite(value) and low and (highest is None or value <= highest)):
            bound = f"{'>' if strict else '>='} {lowest:g}" + ("" if highest is None else f" and <= {highest:g}")
            raise ValueError(f"{option} must be a finite number {bound}; got {value}")


def growth_labels_of(config, table, train_rows, config_path) -> dict:
    """The config's growth-label table (``et.load_growth_table``), refused in one line when the config
    has no growth.data: the growth studies fit growth members on those labels and ended in "'NoneType'
    object is not subscriptable" (outside probe, round 28)."""
    from dodo.training import ensemble_train as et

    labels = et.load_growth_table(config, table, train_rows, log=print)
    if labels is None:
        raise ValueError(f"{config_path}: growth.data is empty; this study fits growth members on its linear-theory "
                         "labels: give a config with growth.data (training/configs/ensemble_default.yaml)")
    return labels


def check_save_path(path, inputs, holds_own_kind, own_kind: str, overwrite: bool) -> None:
    """What a study's --save checks before any work: the path is none of ``inputs`` (the config, its
    table, an --oof file: writing over one destroyed it) and, unless ``overwrite``, not an existing
    file other than ``own_kind`` (``holds_own_kind(path)``: an earlier run's) or an empty one. The
    dodo commands check this of every output; the --save of gate_study.py and noise_gate_study.py
    did not (outside probe, round 26, left; fixed in round 27). Raises ValueError."""
    import os

    from dodo._atomic import check_outputs

    check_outputs([path], inputs)
    if overwrite or not os.path.isfile(path) or os.path.getsize(path) == 0 or holds_own_kind(path):
        return
    raise ValueError(f"{path} exists and is not {own_kind}: it is not replaced; give --save another path, "
                     "or --overwrite to replace it")


#: A state is worse than Box3D when its |dn|/N_tot exceeds Box3D's by more than this (issue 10).
WORSE = 0.0025


@dataclass
class FoldZero:
    table: dict
    train: np.ndarray
    test: np.ndarray
    emu: np.ndarray  # over test: the Emu-recipe states
    box: np.ndarray  # over test: Box3D's |dn|/N_tot


def fold_zero(config: et.EnsembleConfig, folds: int = 5) -> FoldZero:
    """Fold 0 of the pool's ``folds`` folds as the test states, the others as the training states."""
    table = et.load_table(config.data_path)
    order, fold_of = et.pool_folds(table, config, folds)
    test, train = order[fold_of == 0], order[fold_of != 0]
    return FoldZero(table, train, test, et.is_emu_recipe(table["sources"][test]),
                    state_error(table["delta_box"][test], table["delta_true"][test]))


def fit_members(X, r, g, config: et.EnsembleConfig, members: int, **changed):
    """The config's density members on rows (X, r, g); ``changed`` overrides width, depth or epochs."""
    options = dict(width=config.width, depth=config.depth, epochs=config.epochs)
    options.update(changed)
    return fit_ensemble(X, r, g, members=members, sigma0=config.sigma0, seed=config.seed,
                        ood_columns=OOD_COLUMNS[config.features], error_per_spread=config.error_per_spread,
                        steps=config.steps, lr=config.lr, weight_decay=config.weight_decay,
                        growth_weight=config.growth_weight, batch_size=config.batch_size, **options)


@dataclass
class MemberScores:
    ungated: np.ndarray  # |dn|/N_tot per test state, the members' mean residual
    gated: np.ndarray  # the same under the spread gate (c = config.error_per_spread) and the distance factor
    worse: np.ndarray  # gated worse than Box3D by more than WORSE
    log_growth: np.ndarray  # the members' growth output


def score_members(ensemble, X_test: np.ndarray, fold: FoldZero, config: et.EnsembleConfig) -> MemberScores:
    x = torch.as_tensor(X_test, dtype=torch.float32)
    c = torch.tensor(config.error_per_spread, dtype=torch.float64)
    with torch.no_grad():
        r_mean, sigma, growth = (v.double() for v in ensemble.teacher_outputs(x))
        gate = spread_gate(r_mean, sigma, torch.tensor(1.0, dtype=torch.float64), c)
        d2 = ensemble.squared_distance(x).double()
        gate = gate * torch.exp(-torch.relu(d2 - ensemble.d2_max) / ensemble.d2_max)
    delta_box, delta_true = fold.table["delta_box"][fold.test], fold.table["delta_true"][fold.test]
    ungated = state_error(delta_box + r_mean.numpy(), delta_true)
    gated = state_error(delta_box + (r_mean * gate).numpy(), delta_true)
    return MemberScores(ungated, gated, gated - fold.box > WORSE, growth.numpy())


def add_growth_fold_arguments(parser, folds: list) -> None:
    """--config, --folds (default ``folds``: folds of the pool's 5-fold split) and --members of the
    growth-label studies (growth_labels_study.py, growth_emu_axis_study.py)."""
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--folds", type=int, nargs="+", default=folds)
    parser.add_argument("--members", type=int, default=1)


def growth_fold_pool(args):
    """For add_growth_fold_arguments' options, checked (--folds 9 of the 5-fold split: numpy's "need at
    least one array to concatenate"): the config, its table and the pool's 5-fold split (order,
    fold_of), torch on one thread."""
    for k in args.folds:
        check_count("--folds (a fold of the 5-fold split)", k, 0, 4)
    check_count("--members", args.members)
    base = et.EnsembleConfig.load(args.config)
    torch.set_num_threads(1)
    table = et.load_table(base.data_path)
    order, fold_of = et.pool_folds(table, base, 5)
    return base, table, order, fold_of


def growth_variant(base: et.EnsembleConfig, table: dict, order: np.ndarray, patterns: list, relabelled: bool,
                   measured: bool):
    """A growth-label variant of ``base`` (growth.data, growth.relabelled, growth.measured): its
    config, its label table and, per label row, the pool state it labels (-1: none)."""
    import dataclasses

    config = dataclasses.replace(base, growth_data=patterns, growth_relabelled=relabelled, growth_measured=measured)
    growth_table = et.load_growth_table(config, table, order, log=lambda message: None)
    return config, growth_table, et.growth_label_states(growth_table, table, config)


def growth_member_prediction(table: dict, train: np.ndarray, X_test: np.ndarray, config: et.EnsembleConfig,
                             growth_table: dict, members: int, of_state: np.ndarray) -> np.ndarray:
    """The mean log growth ratio on X_test of ``members`` growth members fitted on ``train`` as
    training fits them (et.fit_growth_members_on)."""
    predictions = []
    for member in et.fit_growth_members_on(table, train, config, growth_table, members, of_state=of_state):
        with torch.no_grad():
            predictions.append(member(torch.as_tensor(X_test, dtype=torch.float32))[:, 0].double().numpy())
    return np.mean(predictions, axis=0)
