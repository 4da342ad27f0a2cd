"""Outside probe, data loss, round five (the section "Data-loss probe, round five" of
docs/reliability_python.md).

Each test failed on the code before its fix (its docstring says what that code did). Everything is
written under pytest's tmp_path, on a few hundred `dodo synth` rows and 8-wide networks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import digest, run, synthetic_preprocessed, tiny_train_config

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint_digests(directory: Path) -> dict:
    return {path.name: digest(path) for path in sorted(directory.glob("*.pt"))}


def test_a_replaced_run_directory_that_links_to_another_run_is_refused(tmp_path, capsys):
    """`ck/replaced_run -> ../other/ck` (where `dodo train --overwrite` keeps the run it replaces; a link
    made to keep replaced runs on another disk, or left from a copy): `dodo train --overwrite` took the
    other run's checkpoints for a kept replaced run, deleted them through the link when it set its own
    earlier run aside, then deleted that run's files from the other directory when it finished (shown:
    other/ck left with its lock file alone). A plain resume of ck's own run deleted them at its end too.
    Now refused before any work, in one line naming the link and its target; the other run byte for byte."""
    pytest.importorskip("torch")
    table = synthetic_preprocessed(tmp_path, 200)
    config = tiny_train_config(tmp_path, table, epochs=1)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    assert code == 0, err
    other = tmp_path / "other"
    other.mkdir()
    code, _, err = run(capsys, ["train", "--config", str(config), "--set", f"output.checkpoint_dir={other}"])
    assert code == 0, err
    kept = _checkpoint_digests(other)
    assert set(kept) >= {"best.pt", "final.pt", "last.pt"}
    own = _checkpoint_digests(tmp_path / "ck")
    (tmp_path / "ck" / "replaced_run").symlink_to(other)
    for extra in (["--overwrite"], ["--resume", str(tmp_path / "ck" / "last.pt"), "--set", "training.epochs=2"]):
        code, _, err = run(capsys, ["train", "--config", str(config), *extra])
        assert code == 2, err
        assert "replaced_run is a symbolic link" in err and str(other) in err and "Traceback" not in err
        assert _checkpoint_digests(other) == kept
        assert _checkpoint_digests(tmp_path / "ck") == own


def _targeted_study(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "targeted_sampling_study.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target", ["config", "table", "notes"])
def test_the_targeted_sampling_studys_json_is_checked_before_any_fit(ensemble_run, tmp_path, target):
    """`python tools/targeted_sampling_study.py --json OUT` wrote OUT at the end, after every arm (about
    ten minutes each), with Path.write_text: `--json` naming the config (or its table) destroyed it after
    the study, a text file there was replaced without a word, and a kill or a full disk during the write
    left a torn file under the name. Now OUT is checked before the table is read (never an input; a file
    that is not an earlier table of the study only with --overwrite) and written atomically."""
    pytest.importorskip("torch")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    path = {"config": ensemble_run["config"], "table": ensemble_run["table"], "notes": notes}[target]
    before = digest(path)
    result = _targeted_study("--config", ensemble_run["config"], "--eval", 60, "--base", 40, "--add", 40,
                             "--members", 2, "--threads", 1, "--arms", "random", "--json", path, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(path) in result.stderr
    assert "pool" not in result.stdout  # refused before the table was read, not after the fits
    assert digest(path) == before
    if target == "notes":
        assert "--overwrite" in result.stderr


def _label_noise_config(ensemble_run, tmp_path) -> tuple[Path, Path]:
    """A train-ensemble config with a label-noise member on ensemble_run's table, and its noise.oof
    file (a gate study's out-of-fold residuals, as tools/gate_study.py --save writes them)."""
    import numpy as np

    from dodo.training.ensemble_train import EnsembleConfig, load_table, pool_folds

    oof = tmp_path / "oof.npz"
    config = tmp_path / "noise.json"
    config.write_text(json.dumps({
        "data": {"path": str(ensemble_run["table"]), "holdout": [], "features": "invariants27+box7+eln18-v1"},
        "ensemble": {"members": 2, "width": 8, "depth": 1, "steps": 20, "threads": 1, "error_per_spread": 2.5},
        "noise": {"oof": str(oof), "weight": 1.0, "width": 8, "epochs": 2, "batch_size": 32},
        "distill": {"width": 0}, "output": {"checkpoint": str(tmp_path / "ens.pt")}}))
    loaded = EnsembleConfig.load(str(config))
    table = load_table(loaded.data_path)
    order, fold_of = pool_folds(table, loaded, 3)
    rows = np.concatenate([order[fold_of == k] for k in range(3)])
    np.savez(oof, delta_box=table["delta_box"][rows], delta_true=table["delta_true"][rows], r=np.zeros(len(rows)),
             sigma=np.full(len(rows), 1e-3), d2=np.zeros(len(rows)), emu=np.ones(len(rows), bool))
    return config, oof


@pytest.mark.parametrize("command", ["train-ensemble", "learning-curve"])
def test_the_label_noise_members_out_of_fold_file_is_an_input_no_output_may_replace(ensemble_run, tmp_path, capsys,
                                                                                      command):
    """noise.oof (the out-of-fold residuals the label-noise member is fitted on, minutes to hours of a gate
    study's fits) was not among the inputs the outputs are checked against. `dodo train-ensemble` with
    output.checkpoint naming it was refused without --overwrite only as "a zip archive that is not a
    checkpoint ... or --overwrite to replace it", and that --overwrite trained and replaced the input with
    the checkpoint (shown: the .npz's md5 changed, `wrote .../oof.npz`); `dodo learning-curve --json` of it
    the same. Now refused before any work in both, with or without --overwrite, naming the input."""
    pytest.importorskip("torch")
    config, oof = _label_noise_config(ensemble_run, tmp_path)
    before = digest(oof)
    argv = {"train-ensemble": ["train-ensemble", "--config", str(config), "--set", f"output.checkpoint={oof}"],
            "learning-curve": ["learning-curve", "--config", str(config), "--json", str(oof), "--sizes", "10",
                               "--folds", "2"]}[command]
    for extra in ([], ["--overwrite"]):
        code, out, err = run(capsys, [*argv, *extra])
        assert code == 2, out + err
        assert "is the same file as the input" in err and str(oof) in err
        assert digest(oof) == before


def test_a_run_copied_with_hard_links_does_not_write_into_the_log_of_the_run_it_was_copied_from(tmp_path, capsys):
    """A run's directories copied with hard links (`cp -al a b`, `rsync --link-dest`: a cheap branch or a
    backup), then `dodo train --resume b/ck/last.pt` with b's directories: every checkpoint is replaced by
    a rename, which leaves a's files as they were, but train.log is appended to in place, so a's log got
    b's lines (shown: a/res/train.log ending with `wrote .../b/res/metrics_...json`). Now a log that is a
    hard link is first made b's own copy: a's log byte for byte, b's log starts with it and goes on."""
    pytest.importorskip("torch")
    a = tmp_path / "a"
    a.mkdir()
    table = synthetic_preprocessed(tmp_path, 200)
    config = tiny_train_config(a, table, epochs=1)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    assert code == 0, err
    b = tmp_path / "b"
    for directory in ("ck", "res"):
        (b / directory).mkdir(parents=True)
        for path in (a / directory).iterdir():
            os.link(path, b / directory / path.name)
    log = a / "res" / "train.log"
    before, text = digest(log), log.read_text()
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", str(b / "ck" / "last.pt"),
                                "--set", "training.epochs=2", "--set", f"output.checkpoint_dir={b / 'ck'}",
                                "--set", f"output.results_dir={b / 'res'}"])
    assert code == 0, err
    assert digest(log) == before
    continued = (b / "res" / "train.log").read_text()
    assert continued.startswith(text) and len(continued) > len(text) and "resumed from" in continued[len(text):]


@pytest.fixture(scope="module")
def campaign_ensemble(tmp_path_factory) -> dict:
    """A two-member train-ensemble checkpoint with an 8-wide student, on a table preprocessed from a
    `dodo synth` file named as a campaign chunk (emu_seed5.h5: tools/student_width_study.py draws its
    fresh states in the campaign families' mix)."""
    pytest.importorskip("torch")
    from dodo.cli import main

    root = tmp_path_factory.mktemp("campaign_ensemble")
    assert main(["synth", str(root / "emu_seed5.h5"), "-n", "200", "--seed", "4", "-q"]) == 0
    (root / "pre.yaml").write_text(f"inputs: [{root / 'emu_seed5.h5'}]\noutput: {root / 'pre.h5'}\n")
    assert main(["preprocess", "--config", str(root / "pre.yaml"), "-q"]) == 0
    config = root / "ens.json"
    config.write_text(json.dumps({
        "data": {"path": str(root / "pre.h5"), "holdout": [], "features": "invariants27+box7+eln18-v1"},
        "ensemble": {"members": 2, "width": 8, "depth": 1, "steps": 20, "threads": 1},
        "distill": {"width": 8, "depth": 1, "steps": 20, "growth_weight": 0.5, "sampled_states": 0},
        "output": {"checkpoint": str(root / "ens.pt")}}))
    assert main(["train-ensemble", "--config", str(config)]) == 0
    return {"checkpoint": root / "ens.pt", "config": config, "table": root / "pre.h5"}


def _student_width_study(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "student_width_study.py"), *map(str, args)],
                          cwd=ROOT / "tools", capture_output=True, text=True, timeout=600)


def test_the_student_width_study_never_saves_over_its_input_checkpoint(campaign_ensemble, tmp_path):
    """`tools/student_width_study.py DIR/student_w4_gw0.5_s0.pt ... --widths 4 --save-dir DIR` (the study
    run again on one of its own earlier students) wrote the re-distilled student over the checkpoint it
    read, after the fit, unchecked (shown: the input's md5 changed, `wrote DIR/student_w4_gw0.5_s0.pt`);
    a file of a student's name that is not a checkpoint was replaced without a word. Now every --save-dir
    path is checked before any fit: the input refused always, another kind of file without --overwrite."""
    pytest.importorskip("torch")
    import shutil

    save = tmp_path / "save"
    save.mkdir()
    earlier = save / "student_w4_gw0.5_s0.pt"
    shutil.copyfile(campaign_ensemble["checkpoint"], earlier)
    notes = save / "student_w6_gw0.5_s0.pt"
    notes.write_text("my notes\n")
    before = {path: digest(path) for path in (earlier, notes)}
    common = ["--config", campaign_ensemble["config"], "--table", campaign_ensemble["table"], "--fresh-states", 50,
              "--save-dir", save]
    for checkpoint, widths, words in ((earlier, "4", "is the same file as the input"),
                                      (campaign_ensemble["checkpoint"], "4,6", "--overwrite to replace it")):
        result = _student_width_study(checkpoint, *common, "--widths", widths)
        assert result.returncode == 2, result.stdout + result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr
        assert "wide" not in result.stdout  # refused before the first fit
        assert {path: digest(path) for path in before} == before
    result = _student_width_study(campaign_ensemble["checkpoint"], *common, "--widths", "6", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert f"wrote {notes}" in result.stdout and digest(earlier) == before[earlier]


def test_refit_growth_never_writes_over_the_files_its_config_names(ensemble_run, tmp_path, capsys):
    """`tools/refit_growth.py CKPT --config C --table T -o OOF --overwrite` with OOF the config's noise.oof
    (or a growth.data file): the output was compared with the checkpoint, the table and the config only,
    so the label-noise member was refitted from OOF and OOF then replaced by the checkpoint (shown: `wrote
    .../oof.npz`, its md5 changed). Now refused before any work, naming the input, --overwrite or not."""
    pytest.importorskip("torch")
    config, oof = _label_noise_config(ensemble_run, tmp_path)
    checkpoint = tmp_path / "ens.pt"
    code, _, err = run(capsys, ["train-ensemble", "--config", str(config)])
    assert code == 0, err
    before = digest(oof)
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "refit_growth.py"), str(checkpoint), "--config",
                             str(config), "--table", str(ensemble_run["table"]), "-o", str(oof), "--overwrite"],
                            cwd=ROOT / "tools", capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is the same file as the input" in result.stderr and "wrote" not in result.stdout
    assert digest(oof) == before


_WRITTEN_MEANWHILE = """
import runpy, shutil, sys
sys.path.insert(0, sys.argv[1])
import dodo.training.ensemble_train as et
measured, other, output = et.heldout_report, sys.argv[2], sys.argv[3]
def meanwhile(*args, **kwargs):  # another process finishes a checkpoint at the tool's -o during its work
    shutil.copyfile(other, output)
    return measured(*args, **kwargs)
et.heldout_report = meanwhile
sys.argv = [sys.argv[1] + "/regate_checkpoint.py", *sys.argv[4:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_tool_keeps_a_checkpoint_another_process_wrote_at_its_output_meanwhile(ensemble_run, tmp_path):
    """`tools/regate_checkpoint.py CKPT 2.5 --table T -o OUT` (also refit_growth.py, student_width_study.py
    --save-dir, and the studies' --save and --json) while another process wrote OUT (a `dodo
    train-ensemble` of that checkpoint finishing, a copy): the tools ran outside dodo's
    `outputs_as_found`, so their rename compared OUT with what was there when the write began, after the
    work, and replaced the other file without a word (shown: exit 0, OUT the regated checkpoint). Now the
    file found when the outputs were checked is the one compared: the other file is kept, one line, exit 2."""
    pytest.importorskip("torch")
    other, output = tmp_path / "other.pt", tmp_path / "out.pt"
    other.write_bytes(Path(ensemble_run["checkpoint"]).read_bytes())  # a train-ensemble checkpoint
    result = subprocess.run([sys.executable, "-c", _WRITTEN_MEANWHILE, str(ROOT / "tools"), str(other), str(output),
                             str(ensemble_run["checkpoint"]), "2.5", "--table", str(ensemble_run["table"]),
                             "-o", str(output)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "appeared there while this command ran" in result.stderr and "Traceback" not in result.stderr
    assert digest(output) == digest(other)
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_a_second_run_into_the_same_results_directory_is_refused_while_the_first_runs(tmp_path, capsys):
    """Two `dodo train` runs into two checkpoint directories with one results_dir (a config copied with
    only its checkpoint_dir changed): the checkpoint directories' locks let both run, and both appended to
    results/train.log at once, each run's epochs interleaved with the other's (shown: 91 epoch lines of
    two runs in one log). Now the run holds train.log's lock from its checks to its end and the second is
    refused at once, naming output.results_dir; the first run's log gets no line of it."""
    pytest.importorskip("torch")
    import signal
    import time

    table = synthetic_preprocessed(tmp_path, 200)
    config = tiny_train_config(tmp_path, table, epochs=100000)
    log = tmp_path / "res" / "train.log"
    errors = tmp_path / "first.err"
    with open(errors, "w") as stream:
        first = subprocess.Popen([sys.executable, "-m", "dodo", "train", "--config", str(config)],
                                 stdout=subprocess.DEVNULL, stderr=stream)
    try:
        deadline = time.monotonic() + 300  # a hang guard only: the first run writes its log at its start
        while not log.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, errors.read_text()
        code, _, err = run(capsys, ["train", "--config", str(config), "--set", f"output.checkpoint_dir={tmp_path / 'ck2'}",
                                    "--set", "training.epochs=1"])
        assert code == 2, err
        assert str(log) in err and "output.results_dir" in err and "Traceback" not in err
        assert not (tmp_path / "ck2").exists()
        assert str(tmp_path / "ck2") not in log.read_text()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)


def test_a_checkpoint_directory_removed_during_the_run_is_not_made_again(tmp_path, capsys, monkeypatch):
    """`rm -rf ck` (or `mv ck ck.old`) while `dodo train` ran: the next checkpoint's write made ck again
    (atomic_path makes missing directories) and the run went on in a new ck without its lock file (a second
    run into ck could start beside it) and without its best.pt (the end then failed when no later epoch
    beat the best). Now a file the command found or wrote whose directory is gone is not written: one
    line naming the directory, exit 2, and ck stays removed."""
    pytest.importorskip("torch")
    import shutil

    import dodo.training.train as training

    table = synthetic_preprocessed(tmp_path, 200)
    config = tiny_train_config(tmp_path, table, epochs=4)
    checkpoints = tmp_path / "ck"
    saved = training.save_checkpoint
    calls = []

    def save_then_remove_the_directory(state, path, *args, **kwargs):
        saved(state, path, *args, **kwargs)
        calls.append(path)
        if len(calls) == 2:  # epoch 1's best.pt and last.pt written: the user removes the run
            shutil.rmtree(checkpoints)

    monkeypatch.setattr(training, "save_checkpoint", save_then_remove_the_directory)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    assert code == 2, err
    assert f"its directory {checkpoints} was removed" in err and "Traceback" not in err
    assert not checkpoints.exists()


def test_a_directory_a_command_never_found_a_file_in_is_still_made(tmp_path):
    """The guard above is for a file the command found or wrote: an output in a directory still to be
    made (`dodo preprocess -o new/dir/out.h5`) is written as before (guard)."""
    from dodo._atomic import atomic_path, check_outputs, outputs_as_found

    output = tmp_path / "new" / "dir" / "out.txt"
    with outputs_as_found():
        check_outputs([output])
        with atomic_path(output) as temporary:
            temporary.write_text("x")
        (output.parent / "other").mkdir()  # and a second write of it after its own first one
        with atomic_path(output) as temporary:
            temporary.write_text("y")
    assert output.read_text() == "y"


@pytest.mark.parametrize("name", ["thesis.pdf", "figure.png", "drawing.svg", "figure"])
def test_a_plot_command_never_replaces_an_image_it_did_not_write(tmp_path, capsys, name):
    """`dodo plot metrics M.json -o thesis.pdf` replaced a user's PDF (any image of the format counted
    as an earlier plot), exit 0. Now an image passes only with the Creator Dodo writes into its plots:
    a user's matplotlib figure of the same format is refused, one line, untouched; --overwrite still
    replaces it, and a Dodo plot there is replaced as before."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"history": {"train": [{"total": 1.0}, {"total": 0.5}],
                                               "val": [{"total": 1.1}, {"total": 0.6}]}, "metric_table": {}}))
    target = tmp_path / name
    figure = plt.figure()
    figure.savefig(target, format=Path(name).suffix.lstrip(".") or "png")  # the user's own figure
    plt.close(figure)
    before = digest(target)
    code, _, err = run(capsys, ["plot", "curve", str(metrics), "-o", str(target)])
    assert code == 2 and "that a Dodo plot command wrote" in err and "--overwrite" in err, err
    assert digest(target) == before
    code, _, err = run(capsys, ["plot", "curve", str(metrics), "-o", str(target), "--overwrite"])
    assert code == 0, err
    assert digest(target) != before
    code, _, err = run(capsys, ["plot", "curve", str(metrics), "-o", str(target)])  # its own plot: replaced
    assert code == 0, err

