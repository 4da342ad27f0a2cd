"""Outside probe, data-loss, hang and signal round eight (docs/reliability_python.md section 85).

An unfinished growth-label file (`dodo simulate OUT --linear-only`, whose output is its own checkpoint)
whose read the system failed (too many open files, an I/O error, no permission) was called "cannot be
read as a growth-label file ...: remove it": the way on offered deleted the labels done.
"""
from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

h5py = pytest.importorskip("h5py")

from cli_helpers import interrupted_linear_only_run, run  # noqa: E402

SMALL = ["--family", "emu", "--seed", "1", "--ncell", "16", "--nphi", "8"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def failing_open_of(path: Path, error: BaseException, monkeypatch):
    """h5py.File fails with ``error`` for ``path`` (a read the system failed); other files open."""
    real = h5py.File

    def open_(name, *args, **kwargs):
        if str(name) == str(path):
            raise error
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", open_)


SYSTEM_ERRORS = [OSError(errno.EMFILE, "Unable to synchronously open file (errno = 24, error message = 'Too many open "
                         "files')"),
                 OSError(errno.EACCES, "Unable to synchronously open file (errno = 13)"),
                 MemoryError()]


@pytest.mark.parametrize("complete", [False, True], ids=["unfinished", "complete"])
@pytest.mark.parametrize("error", SYSTEM_ERRORS, ids=["EMFILE", "EACCES", "nomemory"])
def test_a_database_the_system_failed_to_read_is_not_called_another_programs_file(tmp_path, capsys, monkeypatch,
                                                                               error, complete):
    # Before (shown for real with all but one descriptor in use): "dodo simulate: error: OUT exists and is
    # not a dodo simulate database (it cannot be read as HDF5: [Errno 24] ... Too many open files): it is not
    # replaced; give another OUT, or --overwrite to replace it" -- about a good database, whose labels (or
    # states) --overwrite would have destroyed.
    output = tmp_path / "labels.h5"
    interrupted_linear_only_run(capsys, monkeypatch, output, SMALL)
    if complete:
        assert run(capsys, ["simulate", str(output), "--random", "4", "--linear-only", *SMALL])[0] == 0
    before = md5(output)
    failing_open_of(output, error, monkeypatch)
    code, _, err = run(capsys, ["simulate", str(output), "--random", "4", "--linear-only", *SMALL])
    assert code == 2
    assert "could not be read" in err and "left as it is" in err and "rerun the same command" in err, err
    assert "--overwrite" not in err and "not a dodo simulate database" not in err and "Traceback" not in err, err
    assert md5(output) == before
    monkeypatch.undo()
    if not complete:  # once the cause is gone the same command resumes from it
        code, _, err = run(capsys, ["simulate", str(output), "--random", "4", "--linear-only", *SMALL])
        assert code == 0 and "resuming: 2 states" in err, err


@pytest.mark.parametrize("error", SYSTEM_ERRORS, ids=["EMFILE", "EACCES", "nomemory"])
def test_an_unfinished_label_file_the_system_failed_to_read_is_not_called_unreadable(tmp_path, capsys, monkeypatch,
                                                                                   error):
    # The label run's own read of its checkpoint (after the command's check of OUT had read it: a failure
    # of the moment, or an API caller). Before: "OUT exists but cannot be read as a growth-label file
    # ([Errno 24] ...); it is left untouched: remove it or choose another output file".
    import numpy as np

    from dodo.qke.growth_labels import linear_growth_labels
    from dodo.qke.solver import SolverConfig
    from dodo.qke.states import family_states

    output = tmp_path / "labels.h5"
    interrupted_linear_only_run(capsys, monkeypatch, output, SMALL)
    before = md5(output)
    failing_open_of(output, error, monkeypatch)
    states = family_states("emu", 4, np.random.default_rng(1))
    with pytest.raises(OSError) as raised:
        linear_growth_labels(states, str(output), SolverConfig(ncell=16, nphi_equator=8), report=lambda m: None)
    message = str(raised.value)
    assert "could not be read" in message and "left as it is" in message and "remove it" not in message, message
    assert md5(output) == before


def test_a_damaged_label_file_is_still_called_unreadable(tmp_path, capsys, monkeypatch):
    # Guard: a file whose bytes are not HDF5 keeps its message (not a database; give another OUT or --overwrite).
    output = tmp_path / "labels.h5"
    interrupted_linear_only_run(capsys, monkeypatch, output, SMALL)
    output.write_bytes(output.read_bytes()[:300])
    before = md5(output)
    code, _, err = run(capsys, ["simulate", str(output), "--random", "4", "--linear-only", *SMALL])
    assert code == 2 and md5(output) == before
    assert "not a dodo simulate database (it cannot be read as HDF5" in err and "--overwrite" in err, err


def run_child(code: str) -> subprocess.CompletedProcess:
    """``code`` in a child interpreter (hang guard of minutes)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_a_worker_says_nothing_of_a_batch_handover_the_main_process_abandoned():
    # `dodo train` with data.num_workers 2, SIGTERM to its process group: after `dodo train: terminated`
    # (143, files safe) a worker printed "Traceback ... multiprocessing/resource_sharer.py, in _serve ...
    # EOFError" (or ConnectionResetError: [Errno 104]), 2 runs in 30: the main process had dropped the
    # connection of the batch it was receiving. Here that connection is dropped by hand in a process set
    # up as a worker is (its worker_init_fn).
    pytest.importorskip("torch")
    result = run_child("""
        import os, sys, time
        from multiprocessing import connection, process, resource_sharer
        from dodo.training import train
        train._restore_signal_handlers_in_worker(0)
        shared = resource_sharer.DupFd(os.open(os.devnull, os.O_RDONLY))
        address, key = shared._id
        connection.Client(address, authkey=process.current_process().authkey).close()  # no request sent
        time.sleep(2)
        sys.stderr.write("served\\n")
        raise ValueError("any other error is still reported")
    """)
    assert "served" in result.stderr, result.stderr
    assert "resource_sharer" not in result.stderr and "EOFError" not in result.stderr, result.stderr
    assert result.returncode == 1 and "ValueError: any other error is still reported" in result.stderr


def test_a_worker_dead_too_when_a_signal_ends_the_loop_prints_no_traceback():
    # A group SIGTERM also reaching a worker in the moment before it ignores it (torch's own SIGTERM
    # handler in the worker re-raises it): torch's SIGCHLD handler raised "DataLoader worker (pid N) is
    # killed by signal" inside the iterator's __del__, 20 lines of "Exception ignored in: <function
    # _MultiProcessingDataLoaderIter.__del__>" after `dodo train: terminated` (1 run in 16). Here the
    # worker is killed by hand with the SIGCHLD handler held, then a Ctrl-C ends the loop.
    pytest.importorskip("torch")
    result = run_child("""
        import multiprocessing, os, signal, sys, time
        import torch
        from dodo.training import train
        data = torch.utils.data.TensorDataset(torch.arange(256.0))
        loader = train._SignalSafeLoader(data, batch_size=4, num_workers=2,
                                         worker_init_fn=train._restore_signal_handlers_in_worker)
        def running(pid):  # not ended (a zombie has ended)
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        try:
            for batch in loader:
                workers = [process.pid for process in multiprocessing.active_children()]
                victim = max(multiprocessing.active_children(), key=lambda process: process.name)
                held = signal.signal(signal.SIGCHLD, lambda number, frame: None)
                os.kill(victim.pid, signal.SIGKILL)
                time.sleep(1)
                signal.signal(signal.SIGCHLD, held)
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\\n")
        sys.stderr.write("running: %d\\n" % sum(map(running, workers)))
    """)
    assert result.returncode == 0 and "interrupted" in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "running: 0" in result.stderr, result.stderr


def test_a_data_file_replaced_during_a_run_read_from_disk_stops_it_before_its_rows_are_trained_on(tmp_path,
                                                                                                  monkeypatch):
    # data.in_memory false, data.num_workers 2: each epoch's workers open data.path anew. A `dodo
    # preprocess --overwrite` of it after epoch 2 (shown for real after epoch 4 of 12): epochs 3-4 trained on
    # the new file's rows, the end's SHA-256 check refused the final files and advised putting the first
    # file back and resuming from last.pt, whose weights had been trained on both: the resumed final.pt
    # differed from an uninterrupted run's. Now the next epoch stops before reading the new file.
    pytest.importorskip("torch")
    import os

    import torch

    from dodo.cli import main as dodo_main
    from dodo.training import train as train_module
    from training_helpers import synth_and_preprocess, write_training_config

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    data = synth_and_preprocess(tmp_path / "a", 300, seed=7)
    other = synth_and_preprocess(tmp_path / "b", 300, seed=8)
    kept = tmp_path / "kept.h5"
    kept.write_bytes(data.read_bytes())
    sections = {"data": {"num_workers": 2, "in_memory": False}, "training": {"epochs": 4}}
    straight = write_training_config(tmp_path / "straight.yaml", data, tmp_path / "straight", **sections)
    assert dodo_main(["train", "--config", str(straight)]) == 0
    config = write_training_config(tmp_path / "replaced.yaml", data, tmp_path / "replaced", **sections)
    checkpoints = tmp_path / "replaced" / "checkpoints"
    real_save, saves = train_module.save_checkpoint, []

    def save_then_replace(state, path, *args, **kwargs):
        real_save(state, path, *args, **kwargs)
        saves.append(Path(path).name)
        if saves.count("last.pt") == 2 and Path(path).name == "last.pt":  # after epoch 2
            os.replace(other, data)

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_replace)
    assert dodo_main(["train", "--config", str(config)]) == 2
    monkeypatch.undo()
    assert not (checkpoints / "final.pt").exists()
    assert torch.load(checkpoints / "last.pt", weights_only=False)["epoch"] == 2
    os.replace(kept, data)  # the run's file put back, as the message says
    assert dodo_main(["train", "--config", str(config), "--resume", str(checkpoints / "last.pt")]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoints" / "final.pt", weights_only=False)["model_state"]
    b = torch.load(checkpoints / "final.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_the_replaced_data_file_is_named_in_one_line(tmp_path):
    # The check of a handle just opened (a worker's, in the moment between the loader's check and its open).
    pytest.importorskip("torch")
    import os

    from dodo.training.dataset import CellDataset
    from training_helpers import synth_and_preprocess

    (tmp_path / "a").mkdir()
    data = synth_and_preprocess(tmp_path / "a", 50, seed=7)
    dataset = CellDataset(data, [0, 1, 2], in_memory=False)
    copy = tmp_path / "copy.h5"
    copy.write_bytes(data.read_bytes())
    os.replace(copy, data)
    with pytest.raises(Exception) as raised:
        dataset.__getitems__([0])
    message = str(raised.value)
    assert str(data) in message and "was replaced while this run trained" in message and "\n" not in message


@pytest.mark.parametrize("command", ["train", "preprocess", "train-ensemble"])
def test_a_set_value_with_a_byte_that_is_not_utf8_is_not_told_to_quote_it_as_yaml(tmp_path, capsys, command):
    # Before: "--set 'output.checkpoint_dir=ck\udce9': the value is not valid YAML (unacceptable character
    # #xdce9 ...); quote it as YAML, e.g. --set 'output.checkpoint_dir="text"'", which cannot hold the byte.
    import os

    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    value = os.fsdecode(str(tmp_path).encode() + b"/ck\xe9")
    code, _, err = run(capsys, [command, "--config", str(config), "--set", f"output.checkpoint_dir={value}"])
    assert code == 2
    assert "not UTF-8" in err and "\\xe9" in err and "quote it as YAML" not in err, err
    assert not (tmp_path / os.fsdecode(b"ck\xe9")).exists()


def test_a_worker_killed_while_it_handed_a_batch_over_is_named():
    # A data-loader worker SIGKILLed (the OOM killer) mid-run, 24 times: most ended with torch's "DataLoader
    # worker (pid N) is killed by signal" or "exited unexpectedly"; 2 with `dodo train: error: [Errno 104]
    # Connection reset by peer` (the main process receiving that worker's batch), no word of a worker, and 1
    # with an EOFError traceback of 60 lines, exit 1.
    # Here an iterator that fails so, one of its workers ended.
    pytest.importorskip("torch")
    from dodo.training import train as train_module

    import os

    class Worker:
        def __init__(self, pid, alive):
            self.pid, self.alive = pid, alive
            self.sentinel, write = os.pipe()  # ready (end of file) once the process has ended
            self._write = write if alive else os.close(write)

        def is_alive(self):
            return self.alive

    class Iterator:
        _workers = [Worker(101, True), Worker(102, False)]
        shut_down = False

        def __iter__(self):
            return self

        def __next__(self):
            raise ConnectionResetError(104, "Connection reset by peer")

        def _shutdown_workers(self):
            Iterator.shut_down = True

    with pytest.raises(RuntimeError) as raised:
        next(train_module._batches_then_shut_down(Iterator()))
    assert "DataLoader worker (pid(s) 102) ended while it handed a batch over" in str(raised.value)
    assert "Connection reset by peer" in str(raised.value) and Iterator.shut_down
    # No worker seen ended, and an EOFError (1 worker SIGKILLed in 16: a 60-line traceback, exit 1): one line.
    Iterator._workers = [Worker(101, True)]
    Iterator.__next__ = lambda self: (_ for _ in ()).throw(EOFError())
    with pytest.raises(RuntimeError) as raised:
        next(train_module._batches_then_shut_down(Iterator()))
    assert str(raised.value) == "a DataLoader worker failed while it handed a batch over (EOFError)"
