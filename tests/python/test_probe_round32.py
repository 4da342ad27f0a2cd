"""Outside probe, round thirty-two (docs/reliability_python.md, section 35): the training and solver
side. Each test failed against the code before its fix; its docstring says what that code did."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli_helpers import REPO, run, run_tool, stand_in_venv  # noqa: E402


def _ensemble_config(root, table, checkpoint, **ensemble):
    config = root / f"{checkpoint.stem}.json"
    config.write_text(json.dumps({
        "data": {"path": str(table), "holdout": [], "features": "invariants27+box7+eln18-v1"},
        "ensemble": {"members": 1, "width": 8, "depth": 1, "steps": 2, "threads": 1, **ensemble},
        "output": {"checkpoint": str(checkpoint)}}).replace('"LR"', "1e-3"))
    return config


def test_train_ensemble_reads_an_exponent_without_a_dot_as_a_number(ensemble_run, tmp_path, capsys):
    """YAML 1.1 reads 1e-3 (no dot) as a string: a JSON config's `"lr": 1e-3` and `--set
    ensemble.lr=1e-3` were refused, `lr must be a finite positive number; got '1e-3'`, where `dodo
    train` reads the same spelling as a number (its `_coerce`)."""
    checkpoint = tmp_path / "a.pt"
    config = _ensemble_config(tmp_path, ensemble_run["table"], checkpoint, lr="LR")
    assert '"lr": 1e-3' in config.read_text()
    code, _, err = run(capsys, ["train-ensemble", "--config", str(config)])
    assert code == 0, err
    assert torch.load(checkpoint, weights_only=False)["config"]["lr"] == pytest.approx(1e-3)
    other = tmp_path / "b.pt"
    code, _, err = run(capsys, ["train-ensemble", "--config", str(config), "--set", "ensemble.sigma0=2E-2",
                                "--set", "growth.lr=5e-4", "--set", f"output.checkpoint={other}"])
    assert code == 0, err
    saved = torch.load(other, weights_only=False)["config"]
    assert saved["sigma0"] == pytest.approx(2e-2) and saved["growth_lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("setting", ["ensemble.lr=true", "ensemble.weight_decay=yes", "growth.lr=true",
                                     "ensemble.lr=abc"])
def test_train_ensemble_refuses_true_false_or_text_as_a_number(ensemble_run, tmp_path, capsys, setting):
    """`lr: true` (or YAML 1.1's `yes`) trained at a learning rate of 1, `weight_decay: yes` at 1:
    a bool passed the isinstance(int) check. Text that is no number is still refused."""
    checkpoint = tmp_path / "c.pt"
    config = _ensemble_config(tmp_path, ensemble_run["table"], checkpoint)
    code, _, err = run(capsys, ["train-ensemble", "--config", str(config), "--set", setting])
    assert code == 2 and "Traceback" not in err and setting.split(".")[1].split("=")[0] in err, err
    assert not checkpoint.exists()


def _growth_checkpoint(root, calibration=True):
    """A train-ensemble checkpoint with a growth member and a student (trained in-process on a tiny
    synthetic table, growth labels 2 x the Box3D proxy), and a growth-label file of two states."""
    import dodo
    from conftest import random_states
    from dodo.training.dataset import rest_frame_arrays
    from dodo.training.ensemble_train import EnsembleConfig, save_checkpoint, table_from_rest, train_on

    rng = np.random.default_rng(5)

    def table(F, with_density):
        u = np.tile([1.0, 0, 0, 0], (len(F), 1))
        box = dodo.box3d(F, u)
        rest = rest_frame_arrays(F, np.asarray(box.F_box), np.asarray(box.F_box), u, np.asarray(dodo.invariants(F, u)))
        rest["ntot"] = np.asarray(dodo.comoving_density(F, u), float)
        result = table_from_rest(rest, 2.0 * np.asarray(box.growth_rate), np.asarray(box.growth_rate),
                                 np.array(["x_seed1.h5"] * len(F)), box3d=dodo.box3d_settings())
        if not with_density:
            result["r"] = np.full(len(F), np.nan)
        return result

    density = table(random_states(rng, 30, max_flux_factor=0.6, mu_equals_tau=True), True)
    labels = table(random_states(rng, 60, max_flux_factor=0.6, mu_equals_tau=True), False)
    config = EnsembleConfig(members=1, width=8, depth=1, steps=2, growth_members=1, growth_width=8, growth_depth=1,
                            growth_steps=2, distill_width=8, distill_depth=1, distill_steps=2, mirror=False,
                            features="invariants27+box7-v1", checkpoint=str(root / "g.pt"))
    ensemble = train_on(density, np.arange(30), config, growth_table=labels)
    save_checkpoint(ensemble, config, density, np.arange(30), {"growth_calibration": 1.0} if calibration else {},
                    config.checkpoint)
    return root / "g.pt"


def _label_file(path):
    """A growth-label file of two emu states (`dodo simulate --linear-only`, a second)."""
    from dodo.cli import main

    assert main(["simulate", str(path), "--linear-only", "--random", "2", "--seed", "2", "--family", "emu",
                 "--ncell", "16", "--nphi", "8", "--quiet"]) == 0
    return path


def test_growth_window_study_names_a_file_that_is_not_a_label_file(tmp_path, ensemble_run):
    """A --dev (or --train-labels) file that is not a growth-label file (a preprocessed table, a
    solver database) ended in growth_label_table's `ValueError: ... not a growth-label file`
    traceback, exit 1; a checkpoint whose growth members learnt no growth.data labels (no
    metrics.growth_calibration) in `KeyError: 'growth_calibration'`; a mistyped --fastest-dir was
    said only at the end, after minutes of fine-tuning."""
    checkpoint = _growth_checkpoint(tmp_path)
    dev = _label_file(tmp_path / "emu_seed2.h5")
    table = ensemble_run["table"]
    for args, words in (([checkpoint, "--dev", table, "--train-labels", str(dev)], [str(table), "not a growth-label file"]),
                        ([checkpoint, "--dev", dev, "--train-labels", str(table)], [str(table), "not a growth-label file"]),
                        ([checkpoint, "--dev", dev, "--fastest-dir", tmp_path / "nowhere"], ["--fastest-dir", "not a directory"])):
        result = run_tool("growth_window_study.py", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        for word in words:
            assert word in result.stderr.splitlines()[-1], result.stderr
    (tmp_path / "u").mkdir()
    uncalibrated = _growth_checkpoint(tmp_path / "u", calibration=False)
    result = run_tool("growth_window_study.py", uncalibrated, "--dev", dev)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "growth calibration" in result.stderr


@pytest.mark.parametrize("axis", ["emu", "fastest"])
def test_relabel_growth_of_a_campaign_without_a_complete_chunk_says_so(tmp_path, axis):
    """`DODO_GROWTH_AXIS=emu DODO_CAMPAIGN_DIR=DIR bash scripts/relabel_growth.sh` on a campaign whose
    chunks are all still running (or none yet): `ValueError: max() arg is an empty sequence`, a Python
    traceback, then `not every chunk finished ...; rerun to retry`, exit 1 (the fastest axis: exit 0
    without a word). Now one line saying no chunk is complete yet, exit 0, nothing run. (A copy of the
    scripts and a `dodo` that records its calls: never the repository's data.)"""
    import os
    import subprocess

    import h5py

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("relabel_growth.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((REPO / "scripts" / name).read_text())
    log = tmp_path / "calls.txt"
    venv = stand_in_venv(tmp_path, f"echo \"$*\" >> '{log}'") / "bin"
    campaign = tmp_path / "campaign"
    campaign.mkdir()
    with h5py.File(campaign / "emu_seed1.h5", "w") as f:  # a chunk still being written
        f.attrs["complete"] = False
    env = dict(os.environ, DODO_VENV=str(venv.parent), DODO_CAMPAIGN_DIR=str(campaign), DODO_GROWTH_AXIS=axis,
               DODO_CAMPAIGN_NICE="0")
    result = subprocess.run(["bash", str(repo / "scripts" / "relabel_growth.sh"), "1"], env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "no complete chunk" in result.stderr, result.stderr
    assert not log.exists()


@pytest.mark.parametrize("setting", ["training.lr=0.5", "training.weight_decay=0.3", "training.seed=9",
                                     "data.split_seed=7", "data.val_fraction=0.15", "data.max_samples=150"])
def test_resume_refuses_a_setting_it_would_ignore_or_that_redraws_the_split(tmp_path, capsys, setting):
    """`dodo train --resume ck/last.pt --set training.lr=0.5` gave weights bit-identical to a resume
    without it (the optimizer and scheduler continue from the checkpoint, which hold the first lr),
    while the new checkpoints recorded lr 0.5; a new weight decay or seed the same; a new
    data.split_seed, fraction or max_samples drew another split, so the resumed epochs trained on rows
    of the first epochs' validation and test splits (the final metrics' rows). Now refused in one
    line naming the key and the run's value; the same values, and a new epoch count, still resume."""
    from cli_helpers import synthetic_preprocessed, tiny_study_base

    synthetic_preprocessed(tmp_path, 200)
    base = tiny_study_base(tmp_path)
    ck = tmp_path / "ck"
    common = ["train", "--config", str(base), "--set", f"output.checkpoint_dir={ck}",
              "--set", f"output.results_dir={tmp_path / 'res'}"]
    assert run(capsys, common)[0] == 0
    before = (ck / "last.pt").read_bytes()
    code, _, err = run(capsys, [*common, "--resume", str(ck / "last.pt"), "--set", "training.epochs=2", "--set", setting])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert setting.split("=")[0] in lines[0] and "cannot resume" in lines[0], lines[0]
    assert (ck / "last.pt").read_bytes() == before
    same = setting.split("=")[0] + "=" + json.dumps(torch.load(ck / "last.pt", weights_only=False)["config"][
        setting.split(".")[0]][setting.split(".")[1].split("=")[0]])
    code, _, err = run(capsys, [*common, "--resume", str(ck / "last.pt"), "--set", "training.epochs=2", "--set", same])
    assert code == 0, err


def test_train_ensemble_names_a_file_in_the_way_that_is_no_checkpoint(ensemble_run, tmp_path, capsys):
    """`dodo train-ensemble --set output.checkpoint=F` with F a model package, a preprocessed table, a
    growth-label file or a text file: `F holds the checkpoint of an earlier run (written ...); this run
    would replace it at its end: --overwrite replaces it`, calling any file a checkpoint and offering
    --overwrite as for a rerun. Now it says what F is, as the other commands' guard does
    (`_output_guard.file_kind`); F is kept, and an earlier checkpoint is still called one."""
    from cli_helpers import digest
    from dodo.cli import main

    package = tmp_path / "m.onnx"
    assert main(["export", str(ensemble_run["checkpoint"]), "-o", str(package)]) == 0
    other_table = tmp_path / "other.h5"
    other_table.write_bytes(ensemble_run["table"].read_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("results of the week\n")
    config = _ensemble_config(tmp_path, ensemble_run["table"], tmp_path / "unused.pt")
    for path, kind in ((package, "an ONNX model package"), (other_table, "a preprocessed training file"),
                       (notes, "a file of another kind")):
        before = digest(path)
        code, _, err = run(capsys, ["train-ensemble", "--config", str(config), "--set", f"output.checkpoint={path}"])
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err
        assert f"{path} exists and is {kind}" in lines[0] and "earlier run" not in lines[0], lines[0]
        assert digest(path) == before
    code, _, err = run(capsys, ["train-ensemble", "--config", str(config), "--set",
                                f"output.checkpoint={ensemble_run['checkpoint']}"])
    assert code == 2 and "holds the checkpoint of an earlier run" in err, err


@pytest.mark.parametrize("script", ["qke_campaign.sh", "relabel_growth.sh"])
@pytest.mark.parametrize("nice, jobs", [("abc", "1"), ("1 2", "1"), ("10", "99999999999999999999")])
def test_campaign_scripts_refuse_a_niceness_or_jobs_nothing_could_run_with(tmp_path, script, nice, jobs):
    """`DODO_CAMPAIGN_NICE=abc bash scripts/qke_campaign.sh`: every chunk failed with `nice: invalid
    adjustment 'abc'` and `chunk emu 1 failed (exit 125); rerun to retry` (a rerun fails the same),
    exit 123; JOBS beyond xargs's bound: `xargs: value ... for -P option should be <= 2147483647`
    and `not every chunk finished ...; rerun to retry`. Now one line naming the variable (or JOBS),
    exit 2, before any chunk. (Copies of the scripts and a `dodo` that records its calls.)"""
    import os
    import subprocess

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in (script, "own_session.sh"):
        (repo / "scripts" / name).write_text((REPO / "scripts" / name).read_text())
    log = tmp_path / "calls.txt"
    venv = stand_in_venv(tmp_path, f"echo \"$*\" >> '{log}'") / "bin"
    campaign = tmp_path / "campaign"
    campaign.mkdir()
    import h5py

    with h5py.File(campaign / "emu_seed1.h5", "w") as f:  # a complete chunk, for relabel_growth.sh
        f.attrs["complete"] = True
    plan = tmp_path / "plan.txt"
    plan.write_text("emu 3 2\n")
    env = dict(os.environ, DODO_VENV=str(venv.parent), DODO_CAMPAIGN_DIR=str(campaign), DODO_CAMPAIGN_NICE=nice)
    argv = ["bash", str(repo / "scripts" / script), jobs] + ([str(plan)] if script == "qke_campaign.sh" else [])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert ("DODO_CAMPAIGN_NICE" if nice != "10" else "JOBS") in lines[0], lines[0]
    assert not log.exists()
    env["DODO_CAMPAIGN_NICE"] = "0"  # and a good one runs
    result = subprocess.run(argv[:2] + ["1"] + argv[3:], env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and log.exists(), result.stderr


def test_batch_norm_with_a_last_batch_of_one_row_trains(tmp_path, capsys):
    """`model.batch_norm: true` with 160 training rows in batches of 53 (a last batch of one row):
    `dodo train: error: Expected more than 1 value per channel when training, got input size
    torch.Size([1, 8])` at the first epoch's end (torch's batch norm); data.batch_size 1 the same at
    the first step. Now the last partial batch of each epoch is left out (shuffled anew: no row for
    good; a run that worked before is unchanged) and a batch size that cannot hold 2 rows is refused
    in one line before training."""
    from cli_helpers import synthetic_preprocessed, tiny_study_base

    synthetic_preprocessed(tmp_path, 200)
    base = tiny_study_base(tmp_path)
    common = ["train", "--config", str(base), "--set", "model.batch_norm=true",
              "--set", f"output.results_dir={tmp_path / 'res'}"]
    code, out, err = run(capsys, [*common, "--set", "data.batch_size=53", "--set", f"output.checkpoint_dir={tmp_path / 'a'}"])
    assert code == 0, err
    assert "last batch (1 of 160" in out
    assert (tmp_path / "a" / "final.pt").exists()
    code, _, err = run(capsys, [*common, "--set", "data.batch_size=1", "--set", f"output.checkpoint_dir={tmp_path / 'b'}"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "model.batch_norm" in lines[0] and "data.batch_size" in lines[0], err
    assert not (tmp_path / "b" / "last.pt").exists()


@pytest.mark.parametrize("extra, missing", [({}, "MASTER_ADDR and MASTER_PORT are not set"),
                                            ({"MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is not set")])
def test_train_with_world_size_and_rank_but_no_master_names_the_variables(tmp_path, extra, missing):
    """`WORLD_SIZE=2 RANK=0 dodo train ...` (left from another job, no MASTER_ADDR): `dodo train: error:
    Error initializing torch.distributed using env:// rendezvous: environment variable MASTER_ADDR
    expected, but not set` (torch's words), naming neither WORLD_SIZE nor RANK, after the run's
    directories were made. Now one line naming them and what is missing, before any directory."""
    import os
    import subprocess
    import sys

    from cli_helpers import synthetic_preprocessed, tiny_study_base

    synthetic_preprocessed(tmp_path, 60)
    base = tiny_study_base(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(WORLD_SIZE="2", RANK="0", **extra)
    result = subprocess.run([sys.executable, "-m", "dodo", "train", "--config", str(base),
                             "--set", f"output.checkpoint_dir={tmp_path / 'ck'}",
                             "--set", f"output.results_dir={tmp_path / 'res'}"],
                            env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    for word in ("WORLD_SIZE=2", "RANK=0", missing, "unset them"):
        assert word in lines[0], lines[0]
    assert not (tmp_path / "ck").exists() and not (tmp_path / "res").exists()


@pytest.mark.parametrize("setting, key", [("ensemble.width=100000000000000000000", "width"),
                                          ("ensemble.seed=100000000000000000000", "seed"),
                                          ("ensemble.batch_size=100000000000000000000", "batch_size")])
def test_train_ensemble_names_an_integer_beyond_int64(ensemble_run, tmp_path, capsys, setting, key):
    """`--set ensemble.width=10^20`: a TypeError traceback from torch (`Overflow when unpacking long
    long`), exit 1; a seed or batch size of 10^20: that text as the one line, naming no key. Now
    `KEY must be at most 2^62` before any work."""
    checkpoint = tmp_path / "w.pt"
    config = _ensemble_config(tmp_path, ensemble_run["table"], checkpoint, epochs=1)
    code, _, err = run(capsys, ["train-ensemble", "--config", str(config), "--set", setting])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and f"{key} must be at most 2^62" in lines[0], err
    assert not checkpoint.exists()


def test_train_names_a_batch_size_beyond_sys_maxsize(tmp_path, capsys):
    """`dodo train --set data.batch_size=10^20`: `dodo train: error: Stop argument for islice() must
    be None or an integer: 0 <= x <= sys.maxsize.`, naming no key. Now the key, before any work."""
    from cli_helpers import tiny_study_base

    base = tiny_study_base(tmp_path)
    code, _, err = run(capsys, ["train", "--config", str(base), "--set", "data.batch_size=100000000000000000000"])
    assert code == 2 and "data.batch_size must be at most 2^62" in err, err


@pytest.mark.parametrize("tool", ["growth_window_study.py", "student_width_study.py"])
@pytest.mark.parametrize("threads", ["0", "100000"])
def test_study_tools_refuse_a_thread_count_torch_cannot_take(ensemble_run, tool, threads):
    """`tools/growth_window_study.py CK --dev F --threads 100000`: torch.set_num_threads(100000) ended
    the process in a segmentation fault (exit 139) after the tables' read; student_width_study.py the
    same, and its --threads 0 was torch's `set_num_threads expects a positive integer` traceback.
    Now `--threads must be an integer in [1, 1024]`, exit 2, before any file is read."""
    args = (["--dev", ensemble_run["table"]] if tool == "growth_window_study.py" else
            ["--config", ensemble_run["config"], "--table", ensemble_run["table"], "--widths", "8"])
    result = run_tool(tool, ensemble_run["checkpoint"], *args, "--threads", threads)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--threads must be an integer in [1, 1024]" in result.stderr.splitlines()[-1], result.stderr


def test_batch_norm_last_batch_rule_over_processes():
    """The rule behind the test above, for data-parallel runs too: each process's slice of a global
    batch needs 2 rows (RankBatches); only a last global batch of fewer than 2 x processes rows is
    left out, so a run that worked before keeps every batch."""
    from dodo.training.config import ExperimentConfig
    from dodo.training.train import batch_norm_drops_last_batch

    config = ExperimentConfig.from_mapping({"model": {"batch_norm": True}, "data": {"batch_size": 50}})
    assert batch_norm_drops_last_batch(config, 151, 1) and not batch_norm_drops_last_batch(config, 152, 1)
    assert not batch_norm_drops_last_batch(config, 150, 1)
    assert batch_norm_drops_last_batch(config, 153, 2) and not batch_norm_drops_last_batch(config, 154, 2)
    with pytest.raises(ValueError, match="data.batch_size 3 .* over 2 processes"):
        batch_norm_drops_last_batch(ExperimentConfig.from_mapping(
            {"model": {"batch_norm": True}, "data": {"batch_size": 3}}), 100, 2)
    plain = ExperimentConfig.from_mapping({"data": {"batch_size": 50}})
    assert not batch_norm_drops_last_batch(plain, 151, 1)
