"""Outside probe, Python round fifty-seven: the open items of round fifty-six (section 93): counts of one
with a fixed plural ("none of the 1 states", "metric table on 1 cells"), `dodo.score.score(...,
resamples=10**12)` from a program, and `dodo score A.h5 B.h5` where B alone has no growth rates."""
from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import run


def _synth(capsys, path, n=4, seed=0):
    pytest.importorskip("h5py")
    code, out, err = run(capsys, ["synth", "-o", str(path), "-n", str(n), "-q", "--seed", str(seed)])
    assert code == 0, err
    return out


def _preprocessed(capsys, tmp_path, n, seed=0):
    """`dodo synth` of n rows, then `dodo preprocess` of it: the preprocessed file's path (tmp_path / "p.h5")."""
    import yaml

    _synth(capsys, tmp_path / "demo.h5", n=n, seed=seed)
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump({"inputs": [str(tmp_path / "demo.h5")],
                                                       "output": str(tmp_path / "p.h5")}))
    code, out, err = run(capsys, ["preprocess", "--config", str(tmp_path / "pre.yaml"), "-q"])
    assert code == 0, err
    return tmp_path / "p.h5"


# --- item 1: a count of one is singular -------------------------------------------------------------


def test_training_tables_of_one_cell_or_state_are_singular():
    """`metric table on 1 cells`, `dodo inspect`'s `1 cells, split ...`, the ensemble's `(1 states; ...`."""
    from dodo.conventions import SPECIES
    from dodo.training.ensemble_train import format_scores
    from dodo.training.inspect import format_inspection
    from dodo.training.metrics import format_metric_table

    row = {"mean_abs_dn_over_ntot": [0.0] * 6, "mean_abs_dF_over_ntot": [0.0] * 6, "mean_abs_dn_over_ntot_all": 0.0,
           "mean_abs_dF_over_ntot_all": 0.0, "max_conservation_violation_over_ntot": 0.0, "unrealizable_fraction": 0.0}
    table = {"n_cells": 1, "species": list(SPECIES), "box3d": row, "model": row}
    assert format_metric_table(table).startswith("metric table on 1 cell (rest frame"), format_metric_table(table)
    assert format_metric_table({**table, "n_cells": 2}).startswith("metric table on 2 cells (")  # the plural kept

    stats = {name: {"mean": 0.5, "max": 0.5} for name in SPECIES}
    report = {"cells": 1, "split": "test", "slice": "0:1", "loss_terms_model": {"n": 1.0},
              "loss_terms_box3d": {"n": 1.0}, "loss_terms_weighted": {"n": 1.0}, "loss_total": 1.0,
              "limiter_active_fraction": 0.0, "theta_min": 1.0, "flux_factor": {"initial": stats}}
    assert format_inspection(report).startswith("1 cell, split 'test'"), format_inspection(report)
    assert format_inspection({**report, "cells": 3}).startswith("3 cells, split")

    one = np.array([0.01])
    scores = {"model": one, "ungated": one, "box3d": one, "growth_measured_over_model": np.array([1.0]),
              "growth_measured_over_proxy": np.array([1.0]), "growth_measured": np.array([True])}
    assert format_scores("test", scores).startswith("test (1 state; mean"), format_scores("test", scores)


def test_solver_messages_of_one_state_are_singular(tmp_path):
    """`none of the 1 states gave a valid run`, `a dodo simulate database (complete, 1 states)`, `is a complete
    solver database (1 states, ...)`, `(...; 1 states processed)`."""
    h5py = pytest.importorskip("h5py")
    from dodo._output_guard import SOLVER_ATTRIBUTE_PREFIX, file_kind
    from dodo.qke.campaign import no_valid_state
    from dodo.qke.cli import refuse_complete_database

    assert str(no_valid_state("a.h5", 1, {})) == "none of the 1 state gave a valid run, so a.h5 is not written"
    assert str(no_valid_state("a.h5", 2, {})).startswith("none of the 2 states gave")  # the plural kept

    path = tmp_path / "db.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"solver": SOLVER_ATTRIBUTE_PREFIX + " test", "complete": True, "nstates_valid": 1})
    assert file_kind(str(path)).startswith("a dodo simulate database (complete, 1 state)"), file_kind(str(path))
    with pytest.raises(ValueError, match=r"is a complete solver database \(1 state\): it is not replaced"):
        refuse_complete_database(str(path))
    with h5py.File(path, "r+") as handle:
        handle.attrs.update({"complete": False})
    with h5py.File(path, "r+") as handle:
        handle.attrs.update({"kind": "linear_growth_labels", "nstates_processed": 1})
    with pytest.raises(ValueError, match=r"--linear-only; 1 state processed\)"):
        refuse_complete_database(str(path))


# --- item 2: score(resamples=10**12) from a program --------------------------------------------------


def test_score_from_a_program_bounds_resamples_as_the_cli_bounds_bootstrap(tmp_path, capsys):
    """`dodo.score.score(closure, states, resamples=10**12)`: numpy's `MemoryError: Unable to allocate 7.28 TiB`."""
    import dodo
    from dodo.score import MAX_BOOTSTRAP, read_emu_states, score

    _synth(capsys, tmp_path / "s.h5")
    states, closure = read_emu_states(str(tmp_path / "s.h5")), dodo.Closure("box3d")
    with pytest.raises(ValueError, match=r"^resamples must be at most 10,000,000 .*got 1,000,000,000,000$"):
        score(closure, states, resamples=10**12)
    assert score(closure, states, resamples=100)["n_scored"] == 4  # a small count still taken
    assert MAX_BOOTSTRAP == 10_000_000


# --- item 3: growth rates in one file of two ---------------------------------------------------------


def test_score_of_two_files_one_without_growth_rates_compares_the_others(tmp_path, capsys):
    """`dodo score box3d A.h5 B.h5`, B without growthRate(1|s): `growth rates not compared` and no growth line."""
    import h5py

    _synth(capsys, tmp_path / "A.h5", n=4, seed=1)
    _synth(capsys, tmp_path / "B.h5", n=3, seed=2)
    with h5py.File(tmp_path / "B.h5", "r+") as handle:
        del handle["growthRate(1|s)"]
    code, out, err = run(capsys, ["score", "box3d", str(tmp_path / "A.h5"), str(tmp_path / "B.h5")])
    assert code == 0, err
    assert "growth rate / measured growthRate(1|s) on 4 states:" in out, out
    assert f"note: no usable growthRate(1|s) in {tmp_path / 'B.h5'}: growth rates compared on the 4 states of the " \
           "other file only" in out + err, out + err
    code, out, err = run(capsys, ["score", "box3d", str(tmp_path / "A.h5"), str(tmp_path / "B.h5"), "--json", "-"])
    import json

    assert json.loads(out)["growth_rate"]["n_states"] == 4


# --- probe: dodo study ----------------------------------------------------------------------------


def test_study_of_one_run_says_1_run_and_a_refused_value_names_its_run(tmp_path):
    """`study 'g': 1 runs under ...`; `training.lr: [0.001, -1]`: `dodo study: error: training.lr must be a finite
    positive number; got -1.0`, naming neither the grid file nor the run (a value of the wrong type named both)."""
    yaml = pytest.importorskip("yaml")
    from dodo.training.config import ConfigError
    from dodo.training.study import run_study

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "p.h5")}}))
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base_config": "base.yaml", "output_root": str(tmp_path / "studies"),
                                    "grid": {"training.lr": [1e-3]}}))
    lines = []
    run_study(grid, dry_run=True, echo=lines.append)
    assert lines[0] == f"study 'g': 1 run under {tmp_path / 'studies' / 'g'}", lines
    grid.write_text(yaml.safe_dump({"base_config": "base.yaml", "output_root": str(tmp_path / "studies"),
                                    "grid": {"training.lr": [1e-3, -1.0]}}))
    lines = []
    with pytest.raises(ConfigError) as refused:
        run_study(grid, dry_run=True, echo=lines.append)
    assert str(refused.value) == f"{grid} run_001: training.lr must be a finite positive number; got -1.0"
    assert not (tmp_path / "studies").exists()


def test_a_run_whose_validation_loss_is_never_finite_is_a_diverged_run_of_its_study(tmp_path, capsys):
    """`training.lr: [1.0e+6, 1.0e-3]`: epoch 1's training loss finite, its validation loss inf, so no best.pt: `dodo
    study: error: checkpoint not found: .../run_000/checkpoints/best.pt`, the study stopped, run_001 never trained
    and no summary written (docs/training.md: a diverged run is listed and the others still train)."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("torch")
    _preprocessed(capsys, tmp_path, n=300)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "p.h5"), "batch_size": 64},
        "model": {"head": "equivariant", "hidden_dim": 16, "n_blocks": 1},
        "training": {"epochs": 1, "lr": 3e-3, "log_interval": 100, "threads": 1}}))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"base_config": "base.yaml", "output_root": str(tmp_path / "s"),
                                                     "grid": {"training.lr": [1e6, 1e-3]}}))
    code, out, err = run(capsys, ["study", str(tmp_path / "g.yaml")])
    assert "checkpoint not found" not in out + err, out + err
    assert code == 1 and "1 of 2 runs did not finish (run_000 diverged)" in out + err, (code, out + err)
    summary = (tmp_path / "s" / "g" / "summary.txt").read_text()
    assert "completed" in summary and "diverged" in summary, summary
    assert (tmp_path / "s" / "g" / "run_001" / "checkpoints" / "final.pt").exists()
    # A study of one run stopped early (training.stop_after_epoch): `1 of 1 runs did not finish`.
    (tmp_path / "g1.yaml").write_text(yaml.safe_dump({"base_config": "base.yaml", "output_root": str(tmp_path / "s"),
                                                      "overrides": {"training.epochs": 2, "training.stop_after_epoch": 1},
                                                      "grid": {"training.lr": [1e-3]}}))
    code, out, err = run(capsys, ["study", str(tmp_path / "g1.yaml")])
    assert code == 1 and "dodo study: 1 of 1 run did not finish (run_000 interrupted)" in err, (code, out + err)


def test_plot_of_a_study_summary_names_it_and_the_files_to_give(tmp_path):
    """`dodo plot metrics results/studies/g/summary.json -o s.png`: `not a Dodo metrics JSON (no history /
    metric_table)`, where a learning-curve report is named as one."""
    import json

    from dodo.training.plots import load_metrics

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps([{"run": "run_000", "training.lr": 0.001, "status": "diverged", "metrics": None},
                                   {"run": "run_001", "training.lr": 0.002, "status": "completed",
                                    "metrics": "s/run_001/results/metrics_1.json"}]))
    with pytest.raises(ValueError) as refused:
        load_metrics(summary)
    assert str(refused.value) == (f"{summary}: not a Dodo metrics JSON (it is the summary of a dodo study; give its "
                                  "runs' metrics files, run_XXX/results/metrics_*.json, e.g. "
                                  "s/run_001/results/metrics_1.json)")
    (tmp_path / "list.json").write_text("[1, 2]")  # any other list keeps its words
    with pytest.raises(ValueError, match=r"not a Dodo metrics JSON \(no history / metric_table\)$"):
        load_metrics(tmp_path / "list.json")


def test_one_crossing_training_state_is_said_in_the_singular():
    """`dodo learning-curve` of a 5-state file, 2 training states per fold: `1 of the 2 training states have an ELN
    crossing`."""
    from dodo.training.ensemble_train import check_crossing_rows

    F = np.ones((2, 6, 4))
    box = F.copy()
    box[0, 0, 0] = 2.0  # state 0 crosses (Box3D changes it), state 1 does not
    table = {"rest": {"F_init_rest": F, "F_box_rest": box}}
    with pytest.raises(ValueError, match=r"^1 of the 2 training states has an ELN crossing \(Box3D changes them\)"):
        check_crossing_rows(table, np.arange(2))
    with pytest.raises(ValueError, match=r"^0 of the 1 training state have an ELN crossing"):
        check_crossing_rows(table, np.array([1]))


def test_export_of_a_one_member_ensemble_says_1_member(tmp_path, capsys):
    """`dodo train-ensemble --set ensemble.members=1`, then `dodo export`: `wrote e.onnx (density-residual distilled
    from 1 members into one network, ...)`."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("torch")
    _preprocessed(capsys, tmp_path, n=60)
    (tmp_path / "ens.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "p.h5")},
        "ensemble": {"members": 1, "width": 8, "depth": 1, "batch_size": 64, "epochs": 1, "threads": 1},
        "distill": {"width": 8, "depth": 1, "batch_size": 64, "epochs": 1, "sampled_states": 0},
        "output": {"checkpoint": str(tmp_path / "e.pt")}}))
    code, out, err = run(capsys, ["train-ensemble", "--config", str(tmp_path / "ens.yaml")])
    assert code == 0, err
    code, out, err = run(capsys, ["export", str(tmp_path / "e.pt"), "-o", str(tmp_path / "e.onnx"), "--no-check"])
    assert code == 0, err
    assert f"wrote {tmp_path / 'e.onnx'} (density-residual distilled from 1 member into one network, " in out + err, \
        out + err


def test_train_with_max_samples_below_three_names_max_samples(tmp_path, capsys):
    """`dodo train --set data.max_samples=2` on a file of 60 rows: `the validation split is empty: add rows or raise
    data.val_fraction`, which neither changes; `data.max_samples=3`: the same words, no word of max_samples."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("torch")
    _preprocessed(capsys, tmp_path, n=60)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "p.h5")}, "model": {"hidden_dim": 8, "n_blocks": 1},
        "training": {"epochs": 1, "threads": 1},
        "output": {"results_dir": str(tmp_path / "r"), "checkpoint_dir": str(tmp_path / "c")}}))
    code, out, err = run(capsys, ["train", "--config", str(tmp_path / "t.yaml"), "--set", "data.max_samples=2"])
    assert code == 2 and (f"dodo train: error: data.max_samples is 2: training needs at least 3 rows (one each for the "
                          f"training, validation and test splits; {tmp_path / 'p.h5'} holds 60): raise "
                          "data.max_samples, or set it to null for every row") in err, err
    code, out, err = run(capsys, ["train", "--config", str(tmp_path / "t.yaml"), "--set", "data.max_samples=3"])
    assert code == 2 and ("the validation split is empty: add rows or raise data.val_fraction (data.max_samples: 3 of "
                          "the file's 60 rows: raise it, or set it to null)") in err, err
    assert not (tmp_path / "c" / "final.pt").exists()


def test_inspect_of_an_empty_slice_of_a_one_cell_split_says_1_cell(tmp_path, capsys):
    """A run on 3 rows (one per split), `dodo inspect best.pt --start 1`: `slice [1:1000] of split 'val' (1 cells) is
    empty`."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("torch")
    _preprocessed(capsys, tmp_path, n=3, seed=4)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "p.h5"), "train_fraction": 0.34, "val_fraction": 0.34},
        "model": {"hidden_dim": 8, "n_blocks": 1}, "training": {"epochs": 1, "threads": 1},
        "output": {"results_dir": str(tmp_path / "r"), "checkpoint_dir": str(tmp_path / "c")}}))
    code, out, err = run(capsys, ["train", "--config", str(tmp_path / "t.yaml")])
    assert code == 0, err
    code, out, err = run(capsys, ["inspect", str(tmp_path / "c" / "best.pt"), "--start", "1"])
    assert code == 2 and "dodo inspect: error: slice [1:1000] of split 'val' (1 cell) is empty" in err, err


def test_a_growth_label_file_of_one_state_and_two_rates_says_1_state(tmp_path):
    """growth.data: a label file whose F4_initial(1|ccm) holds 1 state and linear_growthRate_box(1|s) 2 rates:
    `has shape (2,) for 1 states in 'F4_initial(1|ccm)'`."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("torch")
    from dodo.qke.growth_labels import KIND
    from dodo.training.ensemble_train import growth_label_table

    path = tmp_path / "labels.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["kind"] = KIND
        handle["F4_initial(1|ccm)"] = np.ones((1, 4, 2, 3))
        handle["linear_growthRate_box(1|s)"] = np.ones(2)
    with pytest.raises(ValueError, match=r"has shape \(2,\) for 1 state in 'F4_initial\(1\|ccm\)'; a growth-label"):
        growth_label_table([str(path)], [], {}, 1.0)
