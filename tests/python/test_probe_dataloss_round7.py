"""Outside probe, data-loss, hang and signal round seven (docs/reliability_python.md section 82).

A checkpoint whose read failed for a reason of the system (an I/O error, no memory, too many open files)
was taken for a damaged file: `dodo train --resume` fell back to last.prev.pt and replaced the good
last.pt, and a best.pt read so was replaced by the best of the resumed epochs (the run's best model lost).
"""
from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

pytest.importorskip("torch")

from dodo.cli import main as dodo_main  # noqa: E402
from dodo.training import train as train_module  # noqa: E402
from training_helpers import synth_and_preprocess, write_training_config  # noqa: E402


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataloss7")
    return root, synth_and_preprocess(root, 300, seed=7)


def stopped_run(root: Path, data_path: Path, name: str) -> Path:
    """A 4-epoch run stopped after epoch 2 (best.pt, last.pt, last.prev.pt there); its config."""
    config = write_training_config(root / f"{name}.yaml", data_path, root / name, training={"epochs": 4})
    assert dodo_main(["train", "--config", str(config), "--set", "training.stop_after_epoch=2"]) == 0
    return config


def failing_read_of(name: str, error: BaseException, monkeypatch):
    """load_torch_file fails once with ``error`` for a file called ``name`` (a read the system failed
    for a moment); later reads of it succeed."""
    real = train_module.load_torch_file
    failed = []

    def load(path, *args, **kwargs):
        if Path(path).name == name and not failed:
            failed.append(path)
            raise error
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "load_torch_file", load)


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), MemoryError()], ids=["EIO", "nomemory"])
def test_a_best_pt_the_system_failed_to_read_is_not_replaced_on_resume(data, monkeypatch, capsys, error):
    # Before: "WARNING: no usable best model of the resumed run (... truncated or corrupted ...)", the
    # resumed epochs trained from a best validation loss of inf, and epoch 3 replaced best.pt.
    root, data_path = data
    name = f"best_{type(error).__name__}"
    config = stopped_run(root, data_path, name)
    checkpoints = root / name / "checkpoints"
    before = {path.name: md5(path) for path in checkpoints.glob("*.pt")}
    failing_read_of("best.pt", error, monkeypatch)
    capsys.readouterr()
    assert dodo_main(["train", "--config", str(config), "--resume", str(checkpoints / "last.pt")]) == 2
    err = capsys.readouterr().err
    assert {path.name: md5(path) for path in checkpoints.glob("*.pt")} == before
    assert "best.pt: could not be read" in err and "left as it is" in err, err
    assert not (checkpoints / "final.pt").exists()


def test_a_last_pt_the_system_failed_to_read_is_not_taken_for_damaged(data, monkeypatch, capsys):
    # Before: "WARNING: cannot resume from .../last.pt: ... truncated or corrupted ([Errno 24] Too many
    # open files)", the resume went on from last.prev.pt, and its first checkpoint replaced last.pt.
    root, data_path = data
    config = stopped_run(root, data_path, "last")
    checkpoints = root / "last" / "checkpoints"
    before = {path.name: md5(path) for path in checkpoints.glob("*.pt")}
    failing_read_of("last.pt", OSError(errno.EMFILE, "Too many open files"), monkeypatch)
    capsys.readouterr()
    assert dodo_main(["train", "--config", str(config), "--resume", str(checkpoints / "last.pt")]) == 2
    captured = capsys.readouterr()
    assert {path.name: md5(path) for path in checkpoints.glob("*.pt")} == before
    assert "WARNING: cannot resume" not in captured.out + captured.err
    assert "last.pt: could not be read" in captured.err and "ulimit -n" in captured.err, captured.err


def test_a_truncated_checkpoint_is_still_called_damaged(data, tmp_path):
    # Guard: torch reports some truncations as OSError (EINVAL); those stay "truncated or corrupted",
    # so the fallback to last.prev.pt still serves a damaged last.pt.
    root, data_path = data
    config = stopped_run(root, data_path, "trunc")
    last = root / "trunc" / "checkpoints" / "last.pt"
    whole = last.read_bytes()
    for cut in (len(whole) // 3, len(whole) - 100, 200):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(whole[:cut])
        with pytest.raises(train_module.CorruptCheckpointError):
            train_module.load_checkpoint(bad)


CHILD_SIGNAL_DURING_TORCH_IMPORT = r"""
import os, signal, sys
from dodo.cli import main

class SignalInsideTorchsImport:
    # Sends the signal while torch's own submodules are being imported (its C++ initialisation
    # calls back into Python there); once only.
    sent = False
    def find_spec(self, name, path=None, target=None):
        if name == "torch.nn" and not self.sent:
            SignalInsideTorchsImport.sent = True
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return None

sys.meta_path.insert(0, SignalInsideTorchsImport())
code = main(["train", "--config", sys.argv[2]])
torch = sys.modules.get("torch")
print("sent", SignalInsideTorchsImport.sent, "code", code, "torch whole", hasattr(torch, "nn") and hasattr(torch, "save"))
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_import_of_torch_is_given_once_torch_is_whole(data, signame):
    # Before: the signal's exception was raised inside torch's import; a Ctrl-C in the first seconds
    # of `dodo study` once aborted it (SIGABRT, "terminate called after throwing an instance of
    # 'pybind11::error_already_set' what(): KeyboardInterrupt"), where torch's C++ start-up met it.
    import subprocess
    import sys

    root, data_path = data
    config = write_training_config(root / f"imp_{signame}.yaml", data_path, root / f"imp_{signame}")
    result = subprocess.run([sys.executable, "-c", CHILD_SIGNAL_DURING_TORCH_IMPORT, signame, str(config)],
                            capture_output=True, text=True, timeout=600)
    word = {"SIGINT": "interrupted", "SIGTERM": "terminated"}[signame]
    code = {"SIGINT": 130, "SIGTERM": 143}[signame]
    assert f"sent True code {code} torch whole True" in result.stdout, result.stdout + result.stderr
    assert f"dodo train: {word}" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (root / f"imp_{signame}" / "checkpoints").exists()


def test_a_study_rerun_lists_the_run_a_sigkill_left_without_a_summary_row(data, tmp_path):
    # Before: a study SIGKILLed during its run_001 (after that run's first checkpoint) wrote no row for
    # it; the rerun numbered its runs past run_001 and its summary listed run_000 and the new runs only,
    # the resumable run_001 left out without a word.
    import json
    import shutil

    root, data_path = data
    base = write_training_config(tmp_path / "base.yaml", data_path, tmp_path / "unused")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: {base}\ntag: k\noutput_root: {tmp_path / 'studies'}\n"
                    "grid:\n  training.lr: [3.0e-3]\n")
    assert dodo_main(["study", str(grid)]) == 0
    study = tmp_path / "studies" / "k"
    # What the SIGKILL leaves: run_001 with its checkpoints so far, summary.json naming run_000 alone.
    (study / "run_001" / "checkpoints").mkdir(parents=True)
    shutil.copy(study / "run_000" / "checkpoints" / "last.pt", study / "run_001" / "checkpoints" / "last.pt")
    assert dodo_main(["study", str(grid)]) == 0
    rows = {row["run"]: row for row in json.loads((study / "summary.json").read_text())}
    assert set(rows) == {"run_000", "run_001", "run_002"}, rows
    assert rows["run_001"]["status"] == "unfinished"
    assert "resume from" in rows["run_001"]["error"] and "run_001" in rows["run_001"]["error"]
    assert "run_001" in (study / "summary.txt").read_text()


@pytest.mark.parametrize("script", ["qke_campaign.sh", "relabel_growth.sh"])
def test_a_campaign_under_ulimit_n_10_is_not_told_another_one_runs(tmp_path, script):
    # Before: under `ulimit -n 10` bash keeps the script itself open on descriptor 9, the highest the
    # limit allows; the directory lock's `exec 9< DIR` took its place and flock failed ("flock: 9: Bad
    # file descriptor"): "qke_campaign: another qke_campaign.sh (or its chunks) is running in DIR",
    # exit 2, no campaign running anywhere.
    import os
    import resource
    import subprocess
    import sys

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("qke_campaign.sh", "relabel_growth.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((Path(__file__).resolve().parents[2] / "scripts" / name).read_text())
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "dodo").write_text("#!/bin/bash\nexit 0\n")  # every chunk "finishes"
    (venv / "python").write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")
    for stub in ("dodo", "python"):
        (venv / stub).chmod(0o755)
    plan = tmp_path / "plan.txt"
    plan.write_text("emu 1 2\n")
    env = dict(os.environ, DODO_VENV=str(venv.parent), DODO_CAMPAIGN_DIR=str(tmp_path / "chunks"))
    args = ["bash", str(repo / "scripts" / script)]
    if script == "qke_campaign.sh":
        args += ["1", str(plan)]
    else:
        (tmp_path / "chunks").mkdir()
        args += ["1"]

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (10, 10))

    result = subprocess.run(args, preexec_fn=limit, capture_output=True, text=True, env=env, timeout=300,
                            cwd=tmp_path)
    assert "is running" not in result.stderr and "Bad file descriptor" not in result.stderr, result.stderr


def test_a_solver_checkpoint_the_system_failed_to_read_is_not_called_lost(tmp_path, monkeypatch):
    # Before (`ulimit -n 5`, resuming `dodo simulate R.h5` over a good R.h5.partial.npz): "R.h5.partial.npz
    # cannot be read as a checkpoint ([Errno 24] Too many open files: '.../encodings/cp437.py'): no run
    # can resume from it. It is left untouched: remove R.h5.partial.npz (its states are lost) ...".
    import numpy as np
    from dodo.qke import campaign

    output = tmp_path / "R.h5"
    checkpoint = tmp_path / "R.h5.partial.npz"
    checkpoint.write_bytes(b"the states done")

    def failing_read(path):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(campaign, "_read_checkpoint", failing_read)
    with pytest.raises(OSError) as caught:
        campaign._load_checkpoints(str(output), "f", np.zeros((2, 6, 4)), {}, print)
    message = str(caught.value)
    assert not isinstance(caught.value, campaign.CheckpointMismatchError)
    assert "could not be read" in message and "left as it is" in message and "lost" not in message, message
    assert checkpoint.read_bytes() == b"the states done"


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # np.load leaves a bad archive's file to the collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_solver_checkpoint_is_still_called_unreadable(tmp_path):
    # Guard: a file that is no .npz stays "cannot be read as a checkpoint" (CheckpointMismatchError).
    import numpy as np
    from dodo.qke import campaign

    (tmp_path / "R.h5.partial.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(campaign.CheckpointMismatchError, match="cannot be read as a checkpoint"):
        campaign._load_checkpoints(str(tmp_path / "R.h5"), "f", np.zeros((2, 6, 4)), {}, print)


CHILD_SIGNAL_AT_A_WORKERS_FORK = r"""
import os, signal, sys
from dodo.cli import main

sent = []

def signal_during_the_fork():
    # The job's SIGTERM arriving while a data-loader worker is forked (Python runs the at-fork handlers,
    # dodo's among them, as Python code); once only.
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)

os.register_at_fork(before=signal_during_the_fork)
code = main(["train", "--config", sys.argv[1]])
print("sent", bool(sent), "code", code)
"""


def test_a_sigterm_during_a_data_loader_workers_fork_ends_the_run(data):
    # Before: the handler's exception was raised inside an at-fork handler, where Python swallows it
    # ("Exception ignored in: <function _release_running_lock_after_fork>"): the SIGTERM was lost and the
    # run went on to its end (exit 0).
    import subprocess
    import sys

    root, data_path = data
    out = root / "forked"
    config = write_training_config(root / "forked.yaml", data_path, out, data={"num_workers": 2},
                                   training={"epochs": 3})
    result = subprocess.run([sys.executable, "-c", CHILD_SIGNAL_AT_A_WORKERS_FORK, str(config)],
                            capture_output=True, text=True, timeout=600)
    assert "sent True code 143" in result.stdout, result.stdout + result.stderr
    assert "dodo train: terminated" in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert not (out / "checkpoints" / "final.pt").exists()


CHILD_SIGTERM_TO_THE_WORKERS = r"""
import multiprocessing, os, signal, sys, time
from dodo.cli import main
from dodo.training import train

real, seen = train.batch_loss, []

def batch_loss(*args, **kwargs):
    # At the first training step, the job's SIGTERM reaches the data-loader workers (a group signal
    # whose share for the main process is left out here, so the workers' part alone is seen).
    if not seen:
        workers = multiprocessing.active_children()
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
        time.sleep(1.0)
        seen.append((len(workers), sum(worker.is_alive() for worker in workers)))
    return real(*args, **kwargs)

train.batch_loss = batch_loss
code = main(["train", "--config", sys.argv[1]])
print("workers, alive after SIGTERM", seen[0], "code", code)
"""


def test_data_loader_workers_leave_a_group_signal_to_the_main_process(data):
    # Before: a worker died of the group's SIGTERM before the main process had handled its own, and torch's
    # SIGCHLD handler raised in the main process: `dodo study: error: DataLoader worker (pid N) is killed by
    # signal: Terminated.` (exit 2, the run given no summary row) in place of `terminated` (1 group SIGTERM
    # in 8 of a study with workers), or a 22-line traceback after it. Now the workers ignore the signal and
    # the main process, which handles it, shuts them down.
    import subprocess
    import sys

    root, data_path = data
    out = root / "group"
    config = write_training_config(root / "group.yaml", data_path, out, data={"num_workers": 2}, training={"epochs": 2})
    result = subprocess.run([sys.executable, "-c", CHILD_SIGTERM_TO_THE_WORKERS, str(config)],
                            capture_output=True, text=True, timeout=600)
    assert "workers, alive after SIGTERM (2, 2) code 0" in result.stdout, result.stdout + result.stderr
    assert (out / "checkpoints" / "final.pt").is_file()


def test_a_campaign_directory_named_like_an_option_runs_its_chunks(tmp_path):
    # Before: DODO_CAMPAIGN_DIR=-chunks made every chunk run `dodo simulate -chunks/emu_seed1.h5 ...`,
    # which argparse took for an option: its usage text, "chunk emu 1 failed ...; rerun to retry", exit
    # 123, whatever the reruns. The stub `dodo` here fails, as argparse would, on an output path that
    # begins with '-', and records the path it was given.
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("qke_campaign.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((Path(__file__).resolve().parents[2] / "scripts" / name).read_text())
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    log = tmp_path / "outputs.txt"
    (venv / "dodo").write_text(f'#!/bin/bash\ncase "$2" in -*) echo "usage: dodo simulate OUTPUT" >&2; exit 2 ;; esac\n'
                               f'echo "$2" >> "{log}"\n')
    (venv / "python").write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")
    for stub in ("dodo", "python"):
        (venv / stub).chmod(0o755)
    plan = tmp_path / "plan.txt"
    plan.write_text("emu 1 2\nmerger 2 2\n")
    env = dict(os.environ, DODO_VENV=str(venv.parent), DODO_CAMPAIGN_DIR="-chunks")
    result = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", str(plan)], capture_output=True,
                            text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and "failed" not in result.stderr, result.stderr
    assert sorted(log.read_text().split()) == ["./-chunks/emu_seed1.h5", "./-chunks/merger_seed2.h5"]
