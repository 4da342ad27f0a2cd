"""Outside probe, data loss, hangs and resumability, round four (docs/reliability_python.md, the section
"Data-loss and hang probe, round four").

Each test failed on the code before its fix (its docstring says what that code did). Everything is
written under pytest's tmp_path, on a few hundred `dodo synth` rows and 8-wide networks.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli_helpers import run, synthetic_preprocessed, tiny_train_config

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> dict:
    """A `dodo train` run of 2 epochs stopped after its first (training.stop_after_epoch): ROOT/ck
    holds its best.pt, last.pt; ROOT/train.yaml is its config."""
    from dodo.cli import main

    root = tmp_path_factory.mktemp("stopped")
    table = synthetic_preprocessed(root, 200)
    config = tiny_train_config(root, table, epochs=2)
    assert main(["train", "--config", str(config), "--set", "training.stop_after_epoch=1"]) == 0
    assert sorted(path.name for path in (root / "ck").glob("*.pt")) == ["best.pt", "last.pt"]
    return {"root": root, "config": config}


def _copy_of_the_run(stopped_run, tmp_path) -> tuple[Path, Path]:
    """A private copy of the stopped run: (its config, its checkpoint directory)."""
    root = tmp_path / "run"
    shutil.copytree(stopped_run["root"], root)
    config = root / "train.yaml"
    config.write_text(config.read_text().replace(str(stopped_run["root"]), str(root)))
    return config, root / "ck"


def _model_state(path: Path) -> dict:
    from dodo.training.train import load_checkpoint

    return load_checkpoint(path)["model_state"]


def test_a_resume_into_another_directory_takes_the_runs_best_model_with_it(stopped_run, tmp_path, capsys):
    """`dodo train --resume A/last.pt` with output.checkpoint_dir B (the run continued elsewhere: a
    copy of last.pt on another machine, a new directory): the end of the run reads B/best.pt, which the
    resumed run wrote only when one of its epochs beat the best validation loss restored from last.pt.
    With no epoch left to train (or none better), every epoch ran and then `dodo train: error:
    checkpoint not found: B/best.pt`: no final.pt, no metrics, and every later resume ended the same way.
    Now A's best.pt is written into B with the run's first checkpoint, and the run finishes."""
    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", str(checkpoints / "last.pt"),
                                "--set", "training.epochs=1", "--set", f"output.checkpoint_dir={elsewhere}"])
    assert code == 0, err
    assert (elsewhere / "final.pt").is_file()
    best, carried = _model_state(checkpoints / "best.pt"), _model_state(elsewhere / "best.pt")
    assert all(torch.equal(best[name], carried[name]) for name in best)


@pytest.mark.parametrize("damage", ["removed", "truncated"])
def test_a_resumed_run_whose_best_model_is_gone_still_finishes(stopped_run, tmp_path, capsys, damage):
    """The run's own directory, its best.pt removed (to save space: "resume needs last.pt") or
    truncated, then `--resume ck/last.pt`, no later epoch beating the best validation loss the
    checkpoint records (here made so: recorded as 0): the last epoch trained, then `checkpoint not
    found: ck/best.pt` (or "not a readable Dodo checkpoint, truncated or corrupted"), exit 2, no final.pt
    or metrics; a rerun of the resume trained nothing and ended the same way. Now one WARNING line says
    that the best is chosen among the resumed epochs, and the run finishes."""
    from dodo.training.train import load_checkpoint, save_checkpoint

    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    last = load_checkpoint(checkpoints / "last.pt")
    last["best_val_loss"] = 0.0
    save_checkpoint(last, checkpoints / "last.pt")
    best = checkpoints / "best.pt"
    if damage == "removed":
        best.unlink()
    else:
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    code, out, err = run(capsys, ["train", "--config", str(config), "--resume", str(checkpoints / "last.pt")])
    assert code == 0, err
    assert (checkpoints / "final.pt").is_file()
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "best model" in warnings[0] and "resumed epochs" not in err, out
    assert load_checkpoint(best)["epoch"] == 2


def test_a_checkpoint_that_is_a_link_to_another_runs_file_is_not_written_through(stopped_run, tmp_path, capsys):
    """`ln -s ../a/last.pt ck/last.pt`, then `dodo train --resume ck/last.pt` with output.checkpoint_dir
    ck (continuing run A in a new directory without copying it): the resume was taken as ck's own run,
    and the next checkpoint was written through the link: A's last.pt replaced by this run's, in A's
    directory and outside its lock, while the rotation renamed the link to ck/last.prev.pt, leaving ck
    without a last.pt. Now refused in one line before any work, naming the link and --resume TARGET,
    A's files byte for byte; resuming from the target itself continues the run into ck."""
    from cli_helpers import digest

    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    before = {path.name: digest(path) for path in checkpoints.glob("*.pt")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "last.pt").symlink_to(checkpoints / "last.pt")
    settings = ["--set", f"output.checkpoint_dir={elsewhere}"]
    code, out, err = run(capsys, ["train", "--config", str(config), "--resume", str(elsewhere / "last.pt"), *settings])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "symbolic link" in lines[0], err
    assert f"--resume {checkpoints / 'last.pt'}" in lines[0] and "epoch" not in out
    assert {path.name: digest(path) for path in checkpoints.glob("*.pt")} == before
    assert (elsewhere / "last.pt").is_symlink() and [path.name for path in elsewhere.glob("*.pt")] == ["last.pt"]
    (elsewhere / "last.pt").unlink()
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", str(checkpoints / "last.pt"), *settings])
    assert code == 0, err
    assert {path.name: digest(path) for path in checkpoints.glob("*.pt")} == before
    assert (elsewhere / "final.pt").is_file() and not (elsewhere / "last.pt").is_symlink()


def test_a_run_stopped_between_the_renames_of_last_pt_is_offered_its_resume(stopped_run, tmp_path, capsys):
    """Ctrl-C twice (or a kill) between the two renames of last.pt's rotation leaves best.pt and
    last.prev.pt, no last.pt (seen in 1 of 11 double Ctrl-Cs of a training run). The plain rerun was
    refused with `holds an unfinished run (best.pt); a new run would replace it: --overwrite replaces
    it, ...`: the one way on offered lost the run, though `--resume ck/last.pt` continues it from
    last.prev.pt. Now the refusal names that --resume (and lists last.prev.pt), and it works."""
    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    (checkpoints / "last.pt").rename(checkpoints / "last.prev.pt")  # the rotation's first rename, not its second
    code, _, err = run(capsys, ["train", "--config", str(config)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "last.prev.pt" in lines[0], err
    assert f"--resume {checkpoints / 'last.pt'} continues it" in lines[0]
    code, out, err = run(capsys, ["train", "--config", str(config), "--resume", str(checkpoints / "last.pt")])
    assert code == 0 and "using the previous checkpoint" in out, err
    assert (checkpoints / "final.pt").is_file()


def test_last_pt_is_never_missing_while_it_is_rotated(stopped_run, tmp_path, monkeypatch):
    """save_checkpoint(..., keep_previous=True) renamed last.pt to last.prev.pt, then the new checkpoint
    onto last.pt: a second Ctrl-C or a kill between the two renames (1 double Ctrl-C of a training run
    in 11) left no last.pt. Now last.prev.pt is a hard link made first, so last.pt is there (the
    earlier checkpoint) when the write is stopped just before its rename, and last.prev.pt too."""
    from dodo import _atomic
    from dodo.training.train import load_checkpoint, save_checkpoint

    _, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    last = checkpoints / "last.pt"
    earlier = last.read_bytes()
    newer = load_checkpoint(last)
    newer["epoch"] = 2

    def stopped_here(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic, "refuse_written_meanwhile", stopped_here)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(newer, last, keep_previous=True)
    assert last.read_bytes() == earlier
    assert (checkpoints / "last.prev.pt").read_bytes() == earlier
    assert not [path.name for path in checkpoints.iterdir() if path.name.endswith(".tmp")]
    monkeypatch.undo()
    save_checkpoint(newer, last, keep_previous=True)
    assert load_checkpoint(last)["epoch"] == 2 and (checkpoints / "last.prev.pt").read_bytes() == earlier


def test_a_run_killed_between_the_link_and_the_rename_of_last_pt_resumes(stopped_run, tmp_path, capsys):
    """A kill after last.prev.pt was linked to last.pt and before the new last.pt was renamed in
    leaves both names on one file. The resume refused it: 'outputs .../last.pt and .../last.prev.pt
    are the same file' (CI's kill-at-random-points test, test_crash_safety, hit it after the hard link
    came in), so that run could never be finished. Now it resumes and finishes."""
    import os

    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    last, previous = checkpoints / "last.pt", checkpoints / "last.prev.pt"
    os.link(last, previous)  # the rotation's state at the kill
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", str(last)])
    assert code == 0, err
    assert (checkpoints / "final.pt").is_file()
    assert not os.path.samefile(last, previous)  # rotated as usual: the epoch-1 checkpoint kept


def test_a_data_file_rewritten_while_the_run_trains_is_named_at_the_end(stopped_run, tmp_path, capsys, monkeypatch):
    """`dodo preprocess` onto the training file while `dodo train` runs (new campaign chunks, the same
    output path): the final metrics read the test split from the file again, so the run ended after
    its last epoch with an h5py `IndexError: Fancy indexing out of range` traceback (a smaller file), or
    with as many rows or more computed its recorded metrics on other rows than its test split. Now one
    line names the file and the resume that finishes the run once the file is back; best.pt and last.pt
    are kept, no final.pt is written."""
    import os

    import dodo.training.train as training

    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    shutil.rmtree(checkpoints)
    data = tmp_path / "run" / "pre.h5"
    (tmp_path / "other").mkdir()
    other = synthetic_preprocessed(tmp_path / "other", 60)
    kept = tmp_path / "kept.h5"
    shutil.copyfile(data, kept)
    real_save = training.save_checkpoint

    def save_then_rewrite(state, path, keep_previous=False):
        real_save(state, path, keep_previous)
        if Path(path).name == "last.pt" and state["epoch"] == 1:
            os.replace(other, data)  # the preprocess's atomic rename, during the run

    monkeypatch.setattr(training, "save_checkpoint", save_then_rewrite)
    capsys.readouterr()
    code, _, err = run(capsys, ["train", "--config", str(config)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "changed while this run trained" in lines[0], err
    assert str(data) in lines[0] and f"--resume {checkpoints / 'last.pt'}" in lines[0]
    assert sorted(path.name for path in checkpoints.glob("*.pt")) == ["best.pt", "last.prev.pt", "last.pt"]
    monkeypatch.undo()
    shutil.copyfile(kept, data)
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", str(checkpoints / "last.pt")])
    assert code == 0 and (checkpoints / "final.pt").is_file(), err


def test_a_preprocess_config_with_an_empty_output_says_so(tmp_path, capsys):
    """`output: ""` in a preprocess config (a template's placeholder left empty): `cannot write .: it
    exists and is a directory, not a regular file`, naming a directory nobody gave. Now the key is named
    (as `dodo train` names an empty output.checkpoint_dir)."""
    from dodo.cli import main

    assert main(["synth", str(tmp_path / "x.h5"), "-n", "5", "-q"]) == 0
    capsys.readouterr()
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{tmp_path / 'x.h5'}]\noutput: \"\"\n")
    code, _, err = run(capsys, ["preprocess", "--config", str(config), "-q"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "output is an empty string" in lines[0], err


def test_a_resume_with_no_epoch_left_over_another_run_does_not_mix_the_two(stopped_run, tmp_path, capsys):
    """`dodo train --overwrite --resume A/last.pt` into a directory B holding another run C, with no
    epoch left to train (`training.epochs` reached: "only writes the final files"): C's files are set
    aside at the end of the first epoch, so with none they stayed, and B was left with this run's
    final.pt beside C's last.pt and last.prev.pt, its best.pt C's model (before this round's best.pt
    fix, with this run's metrics written into it). Now C's files go aside before the final files, as
    after a first epoch, and B holds this run's files alone."""
    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("best.pt", "last.pt", "last.prev.pt"):
        (other / name).write_bytes(b"run C's " + name.encode())
    code, out, err = run(capsys, ["train", "--config", str(config), "--resume", str(checkpoints / "last.pt"), "--overwrite",
                                  "--set", "training.epochs=1", "--set", f"output.checkpoint_dir={other}"])
    assert code == 0, err
    assert sorted(path.name for path in other.glob("*.pt")) == ["best.pt", "final.pt"], out
    best, kept = _model_state(checkpoints / "best.pt"), _model_state(other / "best.pt")
    assert all(torch.equal(best[name], kept[name]) for name in best)


def test_a_resume_that_fell_back_to_last_prev_pt_keeps_it(stopped_run, tmp_path, capsys):
    """`--resume ck/last.pt` with last.pt damaged (a truncated copy, a bad disk block) resumes from
    last.prev.pt with a warning; its first checkpoint then rotated the damaged last.pt into
    last.prev.pt, the good previous checkpoint replaced by the damaged bytes, so for that epoch the run
    had nothing to fall back to. Now the first checkpoint after the fallback replaces the damaged
    last.pt and leaves last.prev.pt as it was."""
    from dodo.training.train import load_checkpoint

    config, checkpoints = _copy_of_the_run(stopped_run, tmp_path)
    last, previous = checkpoints / "last.pt", checkpoints / "last.prev.pt"
    good = last.read_bytes()
    previous.write_bytes(good)
    last.write_bytes(good[: len(good) // 3])
    code, out, err = run(capsys, ["train", "--config", str(config), "--resume", str(last)])
    assert code == 0 and "using the previous checkpoint" in out, err
    assert previous.read_bytes() == good
    assert load_checkpoint(last)["epoch"] == 2
