"""`dodo study`: a grid of training runs, each isolated under results/studies/<tag>/run_XXX/.

Grid file (YAML):
    base_config: training/configs/model.yaml   # relative to the grid file's directory
    tag: lr_width                               # default: the grid file's stem
    output_root: results/studies                # default
    overrides: {training.epochs: 5}             # applied to every run
    grid:                                       # cartesian product over dotted keys
      training.lr: [1.0e-3, 3.0e-3]
      model.hidden_dim: [64, 128]
      loss.w_density: [1.0]
      loss.w_residual_l1: [1.0]

A rerun (the same tag and output_root) never overwrites earlier runs: its runs are numbered after
the highest run_XXX already in the study directory, and summary.{json,txt} list the earlier
runs (from the summary there) and the new ones. Before, a rerun trained into run_000... again,
replacing those runs' checkpoints and results.

The summary is rewritten (atomically) after every finished run, not only at the end: a study killed
in its fourth run keeps its first three in summary.{json,txt}, and a rerun lists them as earlier
runs. Before, a killed study left no summary (or the previous one), and its finished runs were
missing from every later summary.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
from pathlib import Path

from .._atomic import (atomic_path, check_outputs, exclusive_directory, missing_directories, remove_empty_directories,
                       write_json_atomic)
from .._shown import counted
from .config import ConfigError, ExperimentConfig, merge_dotted, read_yaml_mapping

ALLOWED_KEYS = {"base_config", "tag", "output_root", "overrides", "grid"}
#: Keys dodo study sets itself for every run (its directories; never a resume).
_SET_PER_RUN = {"output.results_dir", "output.checkpoint_dir", "training.resume_from"}
#: Most runs one grid may make: every run's config is built before the first trains, so four lists of
#: 300 values (8.1e9 runs) took all the memory there was (a MemoryError, or the machine's OOM killer).
MAX_STUDY_RUNS = 10_000


def load_grid(path: str | Path) -> dict:
    path = Path(path)
    spec = read_yaml_mapping(path)
    unknown = sorted(set(spec) - ALLOWED_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(ALLOWED_KEYS)}")
    if "base_config" not in spec or not isinstance(spec.get("grid"), dict) or not spec["grid"]:
        raise ConfigError(f"{path}: needs 'base_config' and a non-empty 'grid' mapping of dotted keys to lists")
    # A list of overrides, a number as the tag or a list as the base config ended in TypeError
    # tracebacks (outside probe, round eighteen).
    for key in ("base_config", "tag", "output_root"):
        if key in spec and (not isinstance(spec[key], str) or not spec[key].strip()):
            raise ConfigError(f"{path}: {key} must be a non-empty string (a {'name' if key == 'tag' else 'path'}); "
                              f"got {spec[key]!r}")
    if not isinstance(spec.get("overrides", {}), dict):
        raise ConfigError(f"{path}: overrides must be a mapping of dotted keys to values; got {spec['overrides']!r}")
    for section in ("overrides", "grid"):
        odd = [key for key in spec.get(section, {}) if not isinstance(key, str)]
        if odd:  # `3: [...]` ended in "AttributeError: 'int' object has no attribute 'split'"
            raise ConfigError(f"{path}: {section} keys must be dotted config keys (section.key); got {odd!r}")
        # The study sets these per run: a value given here was shown by --dry-run and then ignored.
        taken = sorted(set(spec.get(section, {})) & _SET_PER_RUN)
        if taken:
            raise ConfigError(f"{path}: {section} sets {taken}, which dodo study sets for each run "
                              "(OUTPUT_ROOT/TAG/run_XXX/...); choose where runs go with output_root and tag")
    for key, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
    _refuse_keys_set_twice(path, spec.get("overrides", {}), spec["grid"])
    _refuse_sections_set_to_null(path, spec.get("overrides", {}), spec["grid"])
    runs = math.prod(len(values) for values in spec["grid"].values())
    if runs > MAX_STUDY_RUNS:  # the runs' configs are made before the first one trains
        raise ConfigError(f"{path}: the grid makes {runs:,} runs (the product of its list lengths); at most "
                          f"{MAX_STUDY_RUNS:,} in one study: split it into several grid files")
    base = Path(spec["base_config"])
    spec["base_config"] = base if base.is_absolute() else (path.parent / base)
    spec.setdefault("tag", path.stem)
    tag = spec["tag"]  # given, or the grid file's stem (a file "..yaml" has the stem ".")
    if tag.strip() in (".", "..") or "/" in tag or os.sep in tag or "\0" in tag:
        # The study goes to OUTPUT_ROOT/TAG: `tag: ../../x` (or an absolute path) put it outside output_root.
        raise ConfigError(f"{path}: tag must be a plain name (no '/', not '.' or '..'), the study's folder under "
                          f"output_root; got {tag!r} (choose the folder with output_root)")
    spec.setdefault("output_root", "results/studies")
    spec.setdefault("overrides", {})
    return spec


def _leaves(key: str, value) -> list[str]:
    """The dotted keys a value sets: ``training`` = {lr: 1, epochs: 2} sets training.lr, training.epochs."""
    if isinstance(value, dict) and value:
        return [leaf for name, inner in value.items() for leaf in _leaves(f"{key}.{name}", inner)]
    return [key]


def _section_of(dotted: str):
    """The config dataclass a dotted key of a train config names (``model``, ``data.box3d``), else None."""
    import dataclasses
    import typing

    node = ExperimentConfig
    for key in dotted.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        if key not in {f.name for f in dataclasses.fields(node)}:
            return None
        hint = typing.get_type_hints(node)[key]
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
        node = members[0] if len(members) == 1 else None
    return node if isinstance(node, type) and dataclasses.is_dataclass(node) else None


def _null_leaves(key: str, value):
    """The dotted keys under ``key`` whose value is null (or an empty mapping): ``data: {box3d: null}`` gives
    data.box3d."""
    if isinstance(value, dict) and value:
        return [leaf for name, inner in value.items() for leaf in _null_leaves(f"{key}.{name}", inner)]
    return [(key, "null" if value is None else "{}")] if value is None or value == {} else []


def _refuse_sections_set_to_null(path, overrides: dict, grid: dict) -> None:
    """``overrides: {model: null}`` (or ``{}``, or a grid value null for a section) replaced the base config's
    whole section by its defaults without a word: every run trained a 128-wide model, whatever the base
    config said (outside probe, open items of training round three; `--set model=null` is refused so
    since that round). Refused, naming the key and how to set it."""
    import dataclasses

    for where, items in (("overrides", [(key, value) for key, value in overrides.items()]),
                         ("grid", [(key, value) for key, values in grid.items() for value in values])):
        for key, value in items:
            for leaf, shown in _null_leaves(str(key), value):
                section = _section_of(leaf)
                if section is None:
                    continue
                first = sorted(f.name for f in dataclasses.fields(section))[0]
                raise ConfigError(f"{path}: {where} {leaf}: {shown} would replace the whole {leaf} section of the base "
                                  f"config by its defaults in every run that takes it: set its keys one by one "
                                  f"(e.g. {leaf}.{first}: VALUE), or leave {leaf} out to keep the base config's")


def _refuse_keys_set_twice(path, overrides: dict, grid: dict) -> None:
    """A setting given by both ``overrides:`` and ``grid:``: each run took the grid's value and the
    override was dropped without a word (--dry-run lists the grid points only; outside probe,
    round 23). Refused, naming the key; an override of another key of a section the grid gives a mapping for
    (``grid: {training: [{lr: ...}]}``) is kept, the mapping merged into the section."""
    given = {leaf for key, value in overrides.items() for leaf in _leaves(str(key), value)}
    for key, values in grid.items():
        for leaf in {leaf for value in values for leaf in _leaves(str(key), value)}:
            # Not every key of the section the grid gives a mapping for: a mapping is merged into its section
            # key by key (merge_dotted), so `overrides: {training.epochs: 2}` beside `grid: {training: [{lr: ..}]}`
            # is kept (it was refused as dropped, which the merge no longer does).
            clash = sorted(other for other in given if other == leaf or other.startswith(f"{leaf}.")
                           or leaf.startswith(f"{other}."))
            if clash:
                raise ConfigError(f"{path}: {clash[0]} is set by both overrides and grid ({key}); each run would "
                                  "take the grid's value and drop the override: set it in one of them")


def grid_points(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_study(grid_path: str | Path, dry_run: bool = False, echo=print) -> list[dict]:
    spec = load_grid(grid_path)
    root = Path(spec["output_root"]) / spec["tag"]
    check_outputs([root / "summary.json", root / "summary.txt"], [grid_path, spec["base_config"]])
    if dry_run:
        return _run_study(grid_path, spec, root, dry_run, echo)
    # Two studies of one tag at once would number their runs alike and write the same directories.
    made = missing_directories([root])
    with exclusive_directory(root, "dodo study of this tag"):
        try:
            return _run_study(grid_path, spec, root, dry_run, echo)
        except BaseException:
            remove_empty_directories(made, root)  # the study's own directory, when nothing is left in it
            raise


def _run_study(grid_path, spec: dict, root: Path, dry_run: bool, echo) -> list[dict]:
    from .train import train

    earlier = _earlier_rows(root)  # before any work: an unreadable summary is refused, not replaced
    earlier += _rows_no_summary_names(root, earlier)
    first = next_run_number(root)
    base_raw = read_yaml_mapping(spec["base_config"])
    points = grid_points(spec["grid"])
    rows = []
    configs = []
    overrides_of = {}
    for index, point in enumerate(points, start=first):
        run_dir = root / f"run_{index:03d}"
        overrides = {**spec["overrides"], **point, "output.results_dir": str(run_dir / "results"),
                     "output.checkpoint_dir": str(run_dir / "checkpoints"), "training.resume_from": None}
        raw = merge_dotted(base_raw, overrides)
        where = f"{grid_path} {run_dir.name}"
        try:
            config = ExperimentConfig.from_mapping(raw, where=where)
        except ConfigError as error:
            if str(error).startswith(where):
                raise
            # A value the checks after reading refuse (training.lr: [-1, 1e-3]) named neither the grid file
            # nor the run, where a value of the wrong type did ("g.yaml run_000:training.lr: expected a
            # number"; outside probe, Python round fifty-seven).
            raise ConfigError(f"{where}: {error}") from None
        configs.append((run_dir, point, config))
        overrides_of[run_dir] = overrides
    echo(f"study '{spec['tag']}': {counted(len(points), 'run')} under {root}"
         + (f" (after {first} earlier run director{'y' if first == 1 else 'ies'}, kept: the new runs start at "
            f"run_{first:03d})" if first else ""))
    if dry_run:
        return [{"run": str(d), **p} for d, p, _ in configs]
    for run_dir, point, config in configs:
        made = missing_directories([config.output.checkpoint_dir, config.output.results_dir])
        config.make_dirs()
        echo(f"--- {run_dir.name}: {point}")
        try:
            # A moved run directory's advice resumes the run as dodo train would: the base config and the
            # run's overrides (it said "dodo train --config ...": a study run has no config file of its own).
            summary = train(config, echo=echo, config_path=str(spec["base_config"]),
                            sets=[f"{key}={_as_set_value(value)}" for key, value in overrides_of[run_dir].items()])
        except FloatingPointError as error:
            # A diverging point is an outcome of a grid (a learning rate too high), not the end of
            # the study: it used to abort the remaining runs and leave no summary of the finished ones.
            echo(f"--- {run_dir.name} diverged: {error}")
            rows.append(_unfinished_row(run_dir, point, "diverged", str(error)))
        except BaseException as error:
            # A run that could not start (its data file missing) left an empty run_XXX, which moved
            # the next study's numbering on (outside probe, round 23): removed when nothing is in it.
            remove_empty_directories(made)
            last = Path(config.output.checkpoint_dir) / "last.pt"
            if not isinstance(error, Exception) and last.exists():
                # Ctrl-C, SIGTERM, SIGHUP inside a run: it stays resumable, and the summary says so. Before,
                # no summary named it, and a rerun's summary left out the run_XXX it numbered past
                # (outside probe, round 30).
                rows.append(_unfinished_row(run_dir, point, "interrupted", f"resume from {last}"))
                _write_summary(root, earlier + rows)
            raise
        else:
            if "metric_table" not in summary:  # stopped early (training.stop_after_epoch): no final metrics
                rows.append(_unfinished_row(run_dir, point, summary["status"],
                                            f"resume from {summary.get('last_checkpoint')}"))
            else:
                table = summary["metric_table"]
                rows.append({"run": run_dir.name, **point, "status": summary["status"],
                             "best_val_loss": summary["best_val_loss"],
                             "test_loss": summary["test_loss"]["total"],
                             "box3d_dn": table["box3d"]["mean_abs_dn_over_ntot_all"],
                             "model_dn": table["model"]["mean_abs_dn_over_ntot_all"],
                             "box3d_dF": table["box3d"]["mean_abs_dF_over_ntot_all"],
                             "model_dF": table["model"]["mean_abs_dF_over_ntot_all"],
                             "metrics": summary["paths"]["metrics"]})
        # After every run, not only at the end: a study killed later keeps the runs it finished.
        text = _write_summary(root, earlier + rows)
    if not configs:
        text = _write_summary(root, earlier)
    echo(text)
    return rows


def _as_set_value(value) -> str:
    """A grid or override value as `--set KEY=VALUE` takes it (YAML): a string as it is, else JSON (YAML's flow)."""
    return value if isinstance(value, str) else json.dumps(value)


def _write_summary(root: Path, rows: list[dict]) -> str:
    """summary.json and summary.txt of ``rows``, each written atomically; returns the text."""
    write_json_atomic(root / "summary.json", rows)
    text = format_summary(rows)
    with atomic_path(root / "summary.txt") as tmp:
        tmp.write_text(text + "\n")
    return text


#: A run directory of a study: run_000, run_001, ... (more digits past 999).
_RUN_DIRECTORY = re.compile(r"run_([0-9]{3,})")


def next_run_number(root: Path) -> int:
    """The number of the first new run in the study directory ``root``: one past the highest
    run_XXX there (a directory or anything else of that name: nothing is reused), 0 for none."""
    try:
        names = [entry.name for entry in Path(root).iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    numbers = [int(match.group(1)) for match in map(_RUN_DIRECTORY.fullmatch, names) if match]
    return max(numbers) + 1 if numbers else 0


def _earlier_rows(root: Path) -> list[dict]:
    """The rows of the summary.json an earlier run of the study wrote ([] when there is none); a
    file there that is not such a summary is refused (it would be replaced by the new summary)."""
    path = Path(root) / "summary.json"
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        rows = error
    if not (isinstance(rows, list) and all(isinstance(row, dict) and "run" in row for row in rows)):
        why = f" ({' '.join(str(rows).split())})" if isinstance(rows, Exception) else ""
        raise ConfigError(f"{path} exists but is not a summary written by dodo study{why}; a rerun adds its runs "
                          "to that summary: move the file away or choose another tag")
    return rows


def _rows_no_summary_names(root: Path, earlier: list[dict]) -> list[dict]:
    """Rows for the run_XXX directories of ``root`` that no summary row names: runs of a study killed
    with SIGKILL (the OOM killer, a batch system's kill after its grace period), which could write no
    row. A rerun numbered past them and its summary left them out without a word, a resumable run's
    checkpoints among them (outside probe, data-loss round seven)."""
    named = {str(row.get("run")) for row in earlier}
    try:
        entries = sorted(entry for entry in Path(root).iterdir()
                         if _RUN_DIRECTORY.fullmatch(entry.name) and entry.name not in named and entry.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows = []
    for run_dir in entries:
        checkpoints = run_dir / "checkpoints"
        if (checkpoints / "final.pt").exists():
            what = f"finished ({checkpoints / 'final.pt'}) but the study ended before its summary row"
        elif (checkpoints / "last.pt").exists():
            what = f"resume from {checkpoints / 'last.pt'}"
        else:
            what = "no checkpoint: the study ended before the run's first epoch"
        rows.append(_unfinished_row(run_dir, {}, "unfinished", f"no summary row (the study was killed?): {what}"))
    return rows


def _unfinished_row(run_dir: Path, point: dict, status: str, error: str) -> dict:
    """A summary row for a run without final metrics (diverged, or stopped early)."""
    return {"run": run_dir.name, **point, "status": status, "best_val_loss": None, "test_loss": None,
            "box3d_dn": None, "model_dn": None, "box3d_dF": None, "model_dF": None, "metrics": None, "error": error}


def format_summary(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    # Every row's keys, in order of first appearance: a rerun over other grid keys adds columns.
    columns = [k for k in dict.fromkeys(key for row in rows for key in row) if k not in ("metrics", "error")]
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.rjust(width[c]) for c in columns)]
    # Best first; runs without a loss (diverged) last, and so rows of an earlier summary.json whose
    # loss is missing or not a number: r["best_val_loss"] was a KeyError (TypeError for a string)
    # after the first new run had trained, its row already in summary.json, the rest of the grid
    # not run (outside probe, round 38).
    for row in sorted(rows, key=_loss_order):
        lines.append("  ".join(_fmt(row.get(c)).rjust(width[c]) for c in columns))
    return "\n".join(lines)


def _loss_order(row: dict) -> tuple:
    """Sort key of a summary row: its best validation loss, rows without a number last."""
    loss = row.get("best_val_loss")
    number = isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss)
    return (not number, loss if number else 0.0)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
