"""`dodo train --overwrite` keeps the run it replaces until it finishes (docs/training.md).

Before, the replaced run's checkpoints were deleted when the new run's first epoch ended: a new run
stopped or killed after that (Ctrl-C, a job's time limit, training.stop_after_epoch) left neither
the replaced run's final.pt nor a final.pt of its own. A finished model was lost for an unfinished
one. Now they wait in CKPT/replaced_run/ and go only when the new run writes its final.pt."""
from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run, synthetic_preprocessed, tiny_train_config

pytest.importorskip("torch")


def _seed_of(path: Path) -> int:
    from dodo.training.train import load_checkpoint

    return load_checkpoint(path)["config"]["training"]["seed"]


def _train(capsys, config: Path, *extra: str) -> tuple[int, str]:
    code, out, err = run(capsys, ["train", "--config", str(config), *extra])
    return code, out + err


def _refusal(capsys, argv) -> str:
    code, _, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def finished_run(tmp_path, capsys):
    """A finished run (seed 1) in tmp_path/ck, and its config."""
    config = tiny_train_config(tmp_path, synthetic_preprocessed(tmp_path, 64), epochs=2)
    code, text = _train(capsys, config, "--set", "training.seed=1")
    assert code == 0, text
    return config, tmp_path / "ck"


STOP_AFTER_ONE = ("--overwrite", "--set", "training.epochs=3", "--set", "training.stop_after_epoch=1")


def test_a_replacing_run_stopped_midway_keeps_the_finished_run_it_replaced(finished_run, capsys):
    config, checkpoints = finished_run
    code, text = _train(capsys, config, *STOP_AFTER_ONE, "--set", "training.seed=2")
    assert code == 0, text
    kept = checkpoints / "replaced_run"
    assert "moved the replaced run's" in text and str(kept) in text
    # The directory holds the new run alone; the replaced one, whole, beside it.
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == ["best.pt", "last.pt"]
    assert {p.name for p in kept.iterdir()} >= {"final.pt", "best.pt", "last.pt"}
    assert all(_seed_of(p) == 1 for p in kept.iterdir())
    assert all(_seed_of(checkpoints / name) == 2 for name in ("best.pt", "last.pt"))
    # A plain run is refused and says where the replaced run is.
    line = _refusal(capsys, ["train", "--config", str(config)])
    assert "an unfinished run" in line and str(kept) in line and "--resume" in line
    # The new run, continued to its end, removes the run it replaced.
    code, text = _train(capsys, config, "--resume", str(checkpoints / "last.pt"), "--set", "training.epochs=3",
                        "--set", "training.seed=2")
    assert code == 0, text
    assert "removed the replaced run's" in text
    assert not kept.exists() and _seed_of(checkpoints / "final.pt") == 2


def test_a_second_replacing_run_keeps_the_finished_run_not_the_unfinished_one(finished_run, capsys):
    """Run A finished, --overwrite B stopped, --overwrite C stopped: A stays kept (B was unfinished);
    C, finished, then removes it."""
    config, checkpoints = finished_run
    assert _train(capsys, config, *STOP_AFTER_ONE, "--set", "training.seed=2")[0] == 0
    code, text = _train(capsys, config, *STOP_AFTER_ONE, "--set", "training.seed=3")
    assert code == 0, text
    assert "removed the replaced unfinished run's" in text
    kept = checkpoints / "replaced_run"
    assert "final.pt" in {p.name for p in kept.iterdir()} and all(_seed_of(p) == 1 for p in kept.iterdir())
    assert all(_seed_of(checkpoints / name) == 3 for name in ("best.pt", "last.pt"))
    code, text = _train(capsys, config, "--overwrite", "--set", "training.seed=4")
    assert code == 0, text
    assert not kept.exists() and _seed_of(checkpoints / "final.pt") == 4


def test_a_finished_run_replaced_again_takes_the_kept_place(finished_run, capsys):
    """A finished, --overwrite B stopped and resumed to its end (A removed), --overwrite C stopped:
    B, finished, is the run kept."""
    config, checkpoints = finished_run
    assert _train(capsys, config, *STOP_AFTER_ONE, "--set", "training.seed=2")[0] == 0
    assert _train(capsys, config, "--resume", str(checkpoints / "last.pt"), "--set", "training.epochs=3",
                  "--set", "training.seed=2")[0] == 0
    assert _train(capsys, config, *STOP_AFTER_ONE, "--set", "training.seed=3")[0] == 0
    kept = checkpoints / "replaced_run"
    assert "final.pt" in {p.name for p in kept.iterdir()} and all(_seed_of(p) == 2 for p in kept.iterdir())


def test_a_kept_run_alone_is_not_removed_by_a_plain_run(finished_run, capsys):
    """The new run's own files gone (removed by hand, or a kill between the move and its first
    checkpoint): a plain run would remove the kept run when it finished, so it is refused, naming
    replaced_run/; --overwrite is the way to replace it."""
    config, checkpoints = finished_run
    assert _train(capsys, config, *STOP_AFTER_ONE, "--set", "training.seed=2")[0] == 0
    for name in ("best.pt", "last.pt", "last.prev.pt"):
        (checkpoints / name).unlink(missing_ok=True)
    line = _refusal(capsys, ["train", "--config", str(config)])
    assert str(checkpoints / "replaced_run") in line and "move those files back" in line
    assert (checkpoints / "replaced_run" / "final.pt").exists()
    assert _train(capsys, config, "--overwrite", "--set", "training.seed=5")[0] == 0
    assert not (checkpoints / "replaced_run").exists() and _seed_of(checkpoints / "final.pt") == 5


def test_a_replacing_run_that_fails_at_its_start_moves_nothing(finished_run, capsys, tmp_path):
    config, checkpoints = finished_run
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not HDF5")
    before = sorted(p.name for p in checkpoints.iterdir())
    code, _ = _train(capsys, config, "--overwrite", "--set", f"data.path={broken}")
    assert code == 2 and sorted(p.name for p in checkpoints.iterdir()) == before
