"""Issue 5, crash safety: `dodo train` killed with SIGKILL at random points resumes from the last
checkpoint and ends with exactly the weights and history of an uninterrupted run; `dodo synth`,
`dodo preprocess` and `dodo simulate` never leave a half-written file under the final name; a
corrupted checkpoint is detected by its embedded SHA-256 and the previous good one is used."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from dodo.cli import main as dodo_main  # noqa: E402
from dodo.training.train import (CorruptCheckpointError, load_checkpoint, load_resume_checkpoint,  # noqa: E402
                                 previous_checkpoint_path)
from training_helpers import synth_and_preprocess, write_training_config  # noqa: E402

SMALL = {"training": {"epochs": 12, "lr": 3e-3, "threads": 1, "log_interval": 1000, "seed": 5},
         "model": {"head": "equivariant", "hidden_dim": 16, "n_blocks": 1, "dropout": 0.1},
         "data": {"max_samples": 400, "batch_size": 64}}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def write_config(path: Path, data: Path, out: Path) -> Path:
    return write_training_config(path, data, out, **{**SMALL, "output": {"parity_samples": 10}})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    synth_and_preprocess(root, 600, seed=3)
    reference = root / "reference"
    assert dodo_main(["train", "--config", str(write_config(root / "reference.yaml", root / "pre.h5", reference))]) == 0
    return root, root / "pre.h5", load_checkpoint(reference / "checkpoints" / "final.pt")


def same_result(final: dict, reference: dict) -> None:
    for key, value in reference["model_state"].items():
        assert torch.equal(value, final["model_state"][key]), key
    assert final["history"] == reference["history"]
    assert final["metrics"] == reference["metrics"]


def dodo_command(*arguments) -> list[str]:
    return [sys.executable, "-m", "dodo", *map(str, arguments)]


def every_final_file_is_whole(directory: Path) -> None:
    """Files under their final names load and verify (temporary names may be left by a kill)."""
    for path in directory.glob("*.pt"):
        load_checkpoint(path)


HELD_TRAINING = Path(__file__).with_name("held_training.py")
# (event, largest N): every choice is reached well before a 12-epoch run ends (5 optimizer steps,
# 1-2 checkpoint saves and 2-3 renames per epoch), so each attempt is killed, whatever the speed.
KILL_POINTS = [("step", 25), ("save-partial", 8), ("replace-before", 8), ("replace-after", 8)]


def test_training_killed_at_random_points_resumes_to_the_same_result(workspace):
    root, data, reference = workspace
    out = root / "killed"
    config = write_config(root / "killed.yaml", data, out)
    last = out / "checkpoints" / "last.pt"
    chooser = random.Random(int(os.environ.get("DODO_CRASH_SEED", "0")) or None)
    kills = []
    for attempt in range(3):
        # No last.pt yet: a fresh start, which must replace a best.pt of the killed attempt (--overwrite).
        resume = ["--resume", last] if (last.exists() or previous_checkpoint_path(last).exists()) else ["--overwrite"]
        event, largest = chooser.choice(KILL_POINTS)
        count = chooser.randint(1, largest)
        marker = root / f"held-{attempt}.txt"
        process = subprocess.Popen([sys.executable, str(HELD_TRAINING), str(marker), event, str(count), "--",
                                    "train", "--config", str(config), *map(str, resume)],
                                   env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # The run holds itself at the chosen point; the deadline only guards against a hang.
        deadline = time.monotonic() + 300
        while process.poll() is None and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not marker.exists():
            process.kill()
            _, stderr = process.communicate()
            assert attempt > 0, f"the first run never reached {event} {count} (exit {process.returncode}): {stderr}"
            assert process.returncode == 0, f"run {attempt} failed before {event} {count}: {stderr}"
            break  # a resumed run with fewer steps left than chosen finished before the point
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
        state = load_checkpoint(last)["epoch"] if last.exists() else None
        kills.append((marker.read_text(), state))
        every_final_file_is_whole(out / "checkpoints")
    resume = ["--resume", last] if (last.exists() or previous_checkpoint_path(last).exists()) else ["--overwrite"]
    finished = subprocess.run(dodo_command("train", "--config", config, *resume), env=ENV, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert kills, "no run was killed"
    same_result(load_checkpoint(out / "checkpoints" / "final.pt"), reference)
    print(f"killed {len(kills)} times (where, last epoch saved): {kills}")


def stopped_run(root: Path, data: Path, name: str, stop_after: int) -> Path:
    out = root / name
    config = write_config(root / f"{name}.yaml", data, out)
    assert dodo_main(["train", "--config", str(config), "--set", f"training.stop_after_epoch={stop_after}"]) == 0
    return config


def test_corrupted_checkpoint_is_detected_and_the_previous_one_used(workspace, capsys):
    root, data, reference = workspace
    config = stopped_run(root, data, "corrupt", stop_after=3)
    last = root / "corrupt" / "checkpoints" / "last.pt"
    previous = previous_checkpoint_path(last)
    assert load_checkpoint(last)["epoch"] == 3 and load_checkpoint(previous)["epoch"] == 2  # the last two kept
    # One weight altered after saving (torch.save without the digest update): checksum mismatch.
    state = torch.load(last, weights_only=False)
    name = next(iter(state["model_state"]))
    state["model_state"][name].view(-1)[0] += 1e-3
    torch.save(state, last)
    with pytest.raises(CorruptCheckpointError, match="SHA-256 .* stored at save time"):
        load_checkpoint(last)
    capsys.readouterr()
    assert dodo_main(["train", "--config", str(config), "--resume", str(last)]) == 0
    output = capsys.readouterr()
    assert "cannot resume from" in output.out + output.err and "last.prev.pt" in output.out + output.err
    assert "resumed from" in (root / "corrupt" / "results" / "train.log").read_text()
    same_result(load_checkpoint(root / "corrupt" / "checkpoints" / "final.pt"), reference)


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "missing"])
def test_damaged_last_checkpoint_falls_back_with_a_clear_message(workspace, damage):
    root, data, _ = workspace
    stopped_run(root, data, f"damage-{damage.replace(' ', '-')}", stop_after=2)
    last = root / f"damage-{damage.replace(' ', '-')}" / "checkpoints" / "last.pt"
    raw = last.read_bytes()
    if damage == "truncated":
        last.write_bytes(raw[:len(raw) // 2])
    elif damage == "bit flip":
        # Flip one bit inside the first weight tensor's stored bytes (found by its value).
        state = torch.load(last, weights_only=False)
        weights = next(iter(state["model_state"].values())).reshape(-1).numpy().tobytes()
        at = raw.find(weights[:16])
        assert at > 0
        flipped = bytearray(raw)
        flipped[at + 3] ^= 0x10
        last.write_bytes(bytes(flipped))
    else:
        last.unlink()
    if damage != "missing":
        with pytest.raises(CorruptCheckpointError) as raised:
            load_checkpoint(last)
        assert str(last) in str(raised.value)
    messages = []
    checkpoint, used = load_resume_checkpoint(last, messages.append)
    assert used == previous_checkpoint_path(last) and checkpoint["epoch"] == 1
    assert str(last) in messages[0] and "previous checkpoint" in messages[0]


def temporary_files(final: Path) -> list[Path]:
    return [p for p in final.parent.iterdir() if p.name != final.name and final.name in p.name]


def kill_while_writing(command: list[str], final: Path, check, seed: int, tries: int = 3) -> list:
    """Runs `command` once to time it (and check its output), then `tries` times SIGKILLed at a
    random moment while the output is being written. After every
    kill the final file is absent or complete (``check`` passes); temporary files may remain, and
    one more complete run removes them.
    Returns (killed, a temporary file was present at the kill, final file present) per try."""
    chooser = random.Random(seed)
    started = time.monotonic()
    subprocess.run(command, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    duration = time.monotonic() - started
    check(final)
    backup = final.with_name(f"complete-copy-of-{final.stem}")
    shutil.copyfile(final, backup)
    outcomes = []
    for _ in range(tries):
        final.unlink(missing_ok=True)
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random moment after the temporary output file appears (or after the run's
        # start-up, if it never shows).
        deadline = time.monotonic() + chooser.uniform(0.5, 0.95) * duration
        while process.poll() is None and time.monotonic() < deadline and not temporary_files(final):
            time.sleep(0.002)
        if temporary_files(final):
            time.sleep(chooser.uniform(0.0, 0.3) * duration)
        killed = process.poll() is None
        writing = bool(temporary_files(final))
        if killed:
            process.send_signal(signal.SIGKILL)
        process.wait()
        if final.exists():
            check(final)
        outcomes.append((killed, writing, final.exists()))
    # The next complete run removes what the killed ones left behind (their processes are gone).
    final.unlink(missing_ok=True)
    subprocess.run(command, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    check(final)
    assert temporary_files(final) == [], temporary_files(final)
    os.replace(backup, final)  # leave the complete output for later steps
    return outcomes


def test_synth_and_preprocess_outputs_are_never_half_written(workspace, tmp_path):
    root, _, _ = workspace
    synth = tmp_path / "synth.h5"

    def synth_complete(path):
        with h5py.File(path, "r") as handle:
            assert handle["F4_initial(1|ccm)"].shape[0] == 20000

    outcomes = kill_while_writing(dodo_command("synth", "-o", synth, "-n", 20000, "--seed", 1, "-q"), synth,
                                  synth_complete, seed=1, tries=2)
    pre = tmp_path / "pre.h5"
    (tmp_path / "pp.yaml").write_text(f"inputs: [{synth}]\noutput: {pre}\n")

    def preprocess_complete(path):
        with h5py.File(path, "r") as handle:
            assert all(handle[name].shape[0] == 20000 for name in handle if isinstance(handle[name], h5py.Dataset))

    outcomes += kill_while_writing(dodo_command("preprocess", "--config", tmp_path / "pp.yaml", "-q"), pre,
                                   preprocess_complete, seed=2, tries=2)
    print(f"(killed, temporary file present at the kill, final file present) per try: {outcomes}")


def test_simulate_output_is_never_half_written(tmp_path):
    try:
        from dodo.qke import cli  # noqa: F401
    except ImportError:
        pytest.skip("dodo simulate is not part of this build")
    out = tmp_path / "sim.h5"

    def complete(path):
        with h5py.File(path, "r") as handle:
            assert "F4_final(1|ccm)" in handle and "F4_initial(1|ccm)" in handle

    # --ncell 16: at 8 neither state saturates in time, and a run without a valid state writes
    # nothing (round eighteen, docs/reliability_python.md section 20).
    outcomes = kill_while_writing(dodo_command("simulate", out, "--random", 2, "--ncell", 16, "--batch-size", 1, "--quiet"),
                                  out, complete, seed=3, tries=2)
    print(f"(killed, temporary file present at the kill, final file present) per try: {outcomes}")


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from dodo._atomic import _host, atomic_path

    final = tmp_path / "out.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _host()
    stale = tmp_path / f".out.h5.{host}.{dead.pid}.abc123.tmp"
    alive = tmp_path / f".out.h5.{host}.{os.getppid()}.def456.tmp"       # a running process (pytest's parent)
    elsewhere = tmp_path / f".out.h5.other-host.{dead.pid}.ghi789.tmp"   # another machine's writer: not ours to judge
    other_file = tmp_path / f".other.h5.{host}.{dead.pid}.jkl012.tmp"
    for path in (stale, alive, elsewhere, other_file):
        path.write_bytes(b"partial")
    with atomic_path(final) as tmp:
        assert f".out.h5.{host}.{os.getpid()}." in tmp.name
        tmp.write_bytes(b"complete")
    assert final.read_bytes() == b"complete"
    assert not stale.exists()
    assert alive.exists() and elsewhere.exists() and other_file.exists()
