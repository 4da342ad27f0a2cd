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
"""
from __future__ import annotations

import itertools
from pathlib import Path

from .._atomic import atomic_path, check_outputs, write_json_atomic
from .config import ConfigError, ExperimentConfig, merge_dotted, read_yaml_mapping

ALLOWED_KEYS = {"base_config", "tag", "output_root", "overrides", "grid"}


def load_grid(path: str | Path) -> dict:
    path = Path(path)
    spec = read_yaml_mapping(path)
    unknown = sorted(set(spec) - ALLOWED_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(ALLOWED_KEYS)}")
    if "base_config" not in spec or not isinstance(spec.get("grid"), dict) or not spec["grid"]:
        raise ConfigError(f"{path}: needs 'base_config' and a non-empty 'grid' mapping of dotted keys to lists")
    for key, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
    base = Path(spec["base_config"])
    spec["base_config"] = base if base.is_absolute() else (path.parent / base)
    spec.setdefault("tag", path.stem)
    spec.setdefault("output_root", "results/studies")
    spec.setdefault("overrides", {})
    return spec


def grid_points(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_study(grid_path: str | Path, dry_run: bool = False, echo=print) -> list[dict]:
    from .train import train

    spec = load_grid(grid_path)
    root = Path(spec["output_root"]) / spec["tag"]
    check_outputs([root / "summary.json", root / "summary.txt"], [grid_path, spec["base_config"]])
    base_raw = read_yaml_mapping(spec["base_config"])
    points = grid_points(spec["grid"])
    rows = []
    configs = []
    for index, point in enumerate(points):
        run_dir = root / f"run_{index:03d}"
        overrides = {**spec["overrides"], **point, "output.results_dir": str(run_dir / "results"),
                     "output.checkpoint_dir": str(run_dir / "checkpoints"), "training.resume_from": None}
        raw = merge_dotted(base_raw, overrides)
        configs.append((run_dir, point, ExperimentConfig.from_mapping(raw, where=f"{grid_path} run_{index:03d}")))
    echo(f"study '{spec['tag']}': {len(points)} runs under {root}")
    if dry_run:
        return [{"run": str(d), **p} for d, p, _ in configs]
    for run_dir, point, config in configs:
        config.make_dirs()
        echo(f"--- {run_dir.name}: {point}")
        try:
            summary = train(config, echo=echo)
        except FloatingPointError as error:
            # A diverging point is an outcome of a grid (a learning rate too high), not the end of
            # the study: it used to abort the remaining runs and leave no summary of the finished ones.
            echo(f"--- {run_dir.name} diverged: {error}")
            rows.append(_unfinished_row(run_dir, point, "diverged", str(error)))
            continue
        if "metric_table" not in summary:  # stopped early (training.stop_after_epoch): no final metrics
            rows.append(_unfinished_row(run_dir, point, summary["status"], f"resume from {summary.get('last_checkpoint')}"))
            continue
        table = summary["metric_table"]
        rows.append({"run": run_dir.name, **point, "status": summary["status"],
                     "best_val_loss": summary["best_val_loss"],
                     "test_loss": summary["test_loss"]["total"],
                     "box3d_dn": table["box3d"]["mean_abs_dn_over_ntot_all"],
                     "model_dn": table["model"]["mean_abs_dn_over_ntot_all"],
                     "box3d_dF": table["box3d"]["mean_abs_dF_over_ntot_all"],
                     "model_dF": table["model"]["mean_abs_dF_over_ntot_all"],
                     "metrics": summary["paths"]["metrics"]})
    write_json_atomic(root / "summary.json", rows)
    text = format_summary(rows)
    with atomic_path(root / "summary.txt") as tmp:
        tmp.write_text(text + "\n")
    echo(text)
    return rows


def _unfinished_row(run_dir: Path, point: dict, status: str, error: str) -> dict:
    """A summary row for a run without final metrics (diverged, or stopped early)."""
    return {"run": run_dir.name, **point, "status": status, "best_val_loss": None, "test_loss": None,
            "box3d_dn": None, "model_dn": None, "box3d_dF": None, "model_dF": None, "metrics": None, "error": error}


def format_summary(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    columns = [k for k in rows[0] if k not in ("metrics", "error")]
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.rjust(width[c]) for c in columns)]
    # Best first; runs without a loss (diverged) last.
    for row in sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0.0)):
        lines.append("  ".join(_fmt(row.get(c)).rjust(width[c]) for c in columns))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
