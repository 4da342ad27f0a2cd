"""`dodo train` never replaces another run's checkpoints without being asked (probe round thirteen,
docs/reliability_python.md section 15): a fresh run into a checkpoint directory that holds a
finished or an unfinished run is refused in one line before any work, `--resume` continues the
unfinished one, and `--overwrite` replaces it."""
from __future__ import annotations

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
