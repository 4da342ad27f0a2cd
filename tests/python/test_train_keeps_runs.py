"""`dodo train` never replaces another run's checkpoints without being asked (probe round thirteen,
docs/reliability_python.md section 15): a fresh run into a checkpoint directory that holds a
finished or an unfinished run is refused in one line before any work, `--resume` continues the
unfinished one, and `--overwrite` replaces it."""
from __future__ import annotations

import contextlib
import multiprocessing

import pytest

pytest.importorskip("torch")

from cli_helpers import digest, refused, run  # noqa: E402
from training_helpers import synth_and_preprocess, write_training_config  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    data = synth_and_preprocess(root, 300, seed=2)
    config = write_training_config(root / "run.yaml", data, root / "run")
    from dodo.cli import main

    assert main(["train", "--config", str(config)]) == 0
    return config, root / "run" / "checkpoints"


def test_a_second_run_into_a_finished_runs_directory_is_refused_and_keeps_it(finished_run, capsys):
    config, checkpoints = finished_run
    before = {name: digest(checkpoints / name) for name in ("final.pt", "best.pt", "last.pt")}
    line = refused(capsys, ["train", "--config", str(config)], checkpoints, "finished run", "--overwrite")
    assert "--resume" not in line  # nothing to continue
    assert {name: digest(checkpoints / name) for name in before} == before


def test_an_unfinished_run_is_refused_with_the_resume_command(finished_run, capsys, tmp_path):
    config, checkpoints = finished_run
    unfinished = tmp_path / "checkpoints"
    unfinished.mkdir()
    (unfinished / "last.pt").write_bytes((checkpoints / "last.pt").read_bytes())
    refused(capsys, ["train", "--config", str(config), "--set", f"output.checkpoint_dir={unfinished}"],
            "unfinished run", f"--resume {unfinished / 'last.pt'}")


def test_overwrite_replaces_the_run(finished_run, capsys):
    config, checkpoints = finished_run
    code, _, err = run(capsys, ["train", "--config", str(config), "--overwrite", "--set", "training.seed=9"])
    assert code == 0, err
    assert (checkpoints / "final.pt").exists()


def _hold_lock(directory, ready, release):
    """A child process standing for another `dodo train`: takes the directory's lock and waits."""
    from dodo._atomic import exclusive_directory

    with exclusive_directory(directory, "dodo train"):
        ready.set()
        release.wait(60)


@contextlib.contextmanager
def lock_held_by_another_process(directory):
    """Yields the pid of a child process holding ``directory``'s lock until the block ends."""
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(directory, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        yield holder.pid
    finally:
        release.set()
        holder.join(60)


def test_a_run_into_a_directory_another_run_is_using_is_refused_until_that_one_ends(finished_run, capsys, tmp_path):
    """Two runs started together would both pass the finished-run check and write the same
    checkpoints: the second is refused at once, naming the holder; after the holder ends (its lock
    goes with its process) the same command runs."""
    config, _ = finished_run
    busy = tmp_path / "busy"
    with lock_held_by_another_process(busy) as holder:
        line = refused(capsys, ["train", "--config", str(config), "--set", f"output.checkpoint_dir={busy}",
                                "--set", "training.epochs=1"], str(busy), "in use by another dodo train",
                       f"pid {holder}")
        assert not (busy / "last.pt").exists() and line
    from dodo.cli import main

    assert main(["train", "--config", str(config), "--set", f"output.checkpoint_dir={busy}",
                 "--set", "training.epochs=1"]) == 0
    assert (busy / "final.pt").exists()


def test_a_study_of_a_tag_another_study_is_running_is_refused(tmp_path, capsys):
    from dodo.training.study import load_grid

    data = synth_and_preprocess(tmp_path, 200, seed=3)
    base = write_training_config(tmp_path / "base.yaml", data, tmp_path / "unused")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: {base}\noutput_root: {tmp_path / 'studies'}\ntag: t\n"
                    "grid:\n  training.lr: [0.001]\noverrides:\n  training.epochs: 1\n")
    root = tmp_path / "studies" / "t"
    assert load_grid(grid)["tag"] == "t"
    with lock_held_by_another_process(root):
        refused(capsys, ["study", str(grid)], str(root), "in use by another")
        assert not any(root.glob("run_*"))


def test_train_ensemble_keeps_an_earlier_checkpoint_unless_asked(tmp_path, capsys):
    """`dodo train-ensemble` wrote its checkpoint at the end over an earlier run's (tens of minutes
    of training, perhaps the exported default): now refused before any work unless --overwrite,
    and refused at once while another run holds the checkpoint's directory."""
    import json

    data = synth_and_preprocess(tmp_path, 150, seed=4)
    checkpoint = tmp_path / "out" / "ensemble.pt"
    config = tmp_path / "e.yaml"
    config.write_text(json.dumps({
        "data": {"path": str(data), "holdout": [], "features": "invariants27+box7+eln18-v1"},
        "ensemble": {"members": 2, "width": 8, "depth": 1, "steps": 20, "threads": 1},
        "distill": {"width": 8, "depth": 1, "steps": 20}, "output": {"checkpoint": str(checkpoint)}}))
    assert run(capsys, ["train-ensemble", "--config", str(config)])[0] == 0
    before = digest(checkpoint)
    refused(capsys, ["train-ensemble", "--config", str(config)], checkpoint, "earlier run", "--overwrite",
            "output.checkpoint=")
    assert digest(checkpoint) == before
    with lock_held_by_another_process(checkpoint.parent) as holder:
        # The holder stands for a `dodo train`, and is named so (it was named by the refused command's
        # own name, "another dodo train-ensemble": data-loss probe, round four).
        refused(capsys, ["train-ensemble", "--config", str(config), "--overwrite"], checkpoint.parent,
                f"in use by another dodo train (pid {holder})")
    assert digest(checkpoint) == before
    assert run(capsys, ["train-ensemble", "--config", str(config), "--overwrite"])[0] == 0
    other = tmp_path / "other.pt"
    assert run(capsys, ["train-ensemble", "--config", str(config), "--set", f"output.checkpoint={other}"])[0] == 0
    assert other.exists()
