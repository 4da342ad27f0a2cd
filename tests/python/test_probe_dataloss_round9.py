"""Outside probe, data-loss, hang and signal round nine (docs/reliability_python.md section 88).

A SIGTERM that reached a data-loader worker after torch's own worker signal handlers and before dodo's
worker_init_fn (the known gap of round eight) killed that worker: a worker signalled alone there ended
`dodo train` with "DataLoader worker (pid N) is killed by signal: Terminated".
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run_child(code: str) -> subprocess.CompletedProcess:
    """``code`` in a child interpreter (hang guard of minutes)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_a_worker_signalled_before_its_worker_init_fn_ignores_the_signal():
    # torch's worker sets its C SIGTERM handler (which re-raises a SIGTERM not sent by the main process),
    # then seeds, then calls worker_init_fn, which ignores the signal: a SIGTERM in between (a group's,
    # or one sent to the worker alone) killed the worker. Here each worker sends itself SIGTERM right after
    # torch's handlers are set. Before: RuntimeError "DataLoader worker (pid N) is killed by signal:
    # Terminated." out of the loader's __iter__.
    pytest.importorskip("torch")
    result = run_child("""
        import os, signal, sys, time
        import torch
        from torch.utils.data._utils import signal_handling
        from dodo.training import train
        real = signal_handling._set_worker_signal_handlers
        def set_then_signalled(*args):
            real(*args)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        signal_handling._set_worker_signal_handlers = set_then_signalled
        signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(143))  # a command's own handler
        data = torch.utils.data.TensorDataset(torch.arange(64.0))
        loader = train._SignalSafeLoader(data, batch_size=4, num_workers=2,
                                         worker_init_fn=train._restore_signal_handlers_in_worker)
        for epoch in range(2):
            rows = sum(len(batch[0]) for batch in loader)
            sys.stderr.write("rows %d\\n" % rows)
        sys.stderr.write("blocked in the main process: %s\\n" % sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("rows 64") == 2, result.stderr
    assert "killed by signal" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "blocked in the main process: []" in result.stderr, result.stderr


def test_a_signal_to_the_main_process_while_it_forks_its_workers_still_ends_it():
    # Guard for the fix above (the signals are blocked in the main thread while it forks): a SIGTERM to
    # the main process in that moment is still given to its handler once the workers are started, and no
    # worker is left behind.
    pytest.importorskip("torch")
    result = run_child("""
        import multiprocessing, os, signal, sys, time
        import torch
        from multiprocessing import process
        from dodo.training import train
        real_start = process.BaseProcess.start
        def start_then_signalled(self):
            real_start(self)
            os.kill(os.getpid(), signal.SIGTERM)
        process.BaseProcess.start = start_then_signalled
        class Terminated(BaseException):
            pass
        def handler(number, frame):
            raise Terminated
        signal.signal(signal.SIGTERM, handler)
        data = torch.utils.data.TensorDataset(torch.arange(64.0))
        loader = train._SignalSafeLoader(data, batch_size=4, num_workers=2,
                                         worker_init_fn=train._restore_signal_handlers_in_worker)
        try:
            for batch in loader:
                sys.stderr.write("a batch\\n")
        except Terminated:
            sys.stderr.write("terminated\\n")
        time.sleep(1)
        sys.stderr.write("children: %d\\n" % len(multiprocessing.active_children()))
        sys.stderr.write("blocked: %s\\n" % sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    """)
    assert result.returncode == 0, result.stderr
    assert "terminated" in result.stderr and "a batch" not in result.stderr, result.stderr
    assert "children: 0" in result.stderr and "blocked: []" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_a_signal_inside_the_epoch_end_shutdown_leaves_no_worker_and_no_hang_at_exit():
    # `dodo train` with data.num_workers 2, SIGTERM to its process group (a batch system's cancel): 1 run in
    # 10 printed "dodo train: terminated" and never ended, the main process in Python's exit joining a
    # worker (multiprocessing's atexit join) and the worker waiting for work: torch's shutdown at an epoch's
    # end marks the iterator shut down, then sends each worker its end; the signal's exception in between
    # left a worker never sent it, which ignores SIGTERM (worker_init_fn), so torch's terminate() could
    # not end it. Here the exception is raised there by hand.
    pytest.importorskip("torch")
    result = run_child("""
        import multiprocessing, signal, sys, time
        import torch
        from torch.utils.data import dataloader
        from dodo.training import train
        real = dataloader._MultiProcessingDataLoaderIter._mark_worker_as_unavailable
        def interrupted(self, worker_id, shutdown=False):
            if shutdown and worker_id == 1:  # worker 0 was sent its end, worker 1 not
                raise KeyboardInterrupt
            real(self, worker_id, shutdown)
        dataloader._MultiProcessingDataLoaderIter._mark_worker_as_unavailable = interrupted
        signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(143))  # a command's own handler
        data = torch.utils.data.TensorDataset(torch.arange(64.0))
        loader = train._SignalSafeLoader(data, batch_size=4, num_workers=2,
                                         worker_init_fn=train._restore_signal_handlers_in_worker)
        try:
            for batch in loader:
                pass
        except KeyboardInterrupt:
            sys.stderr.write("interrupted; workers running: %d\\n" % len(multiprocessing.active_children()))
            sys.exit(130)
    """)
    assert result.returncode == 130, result.stderr
    assert "interrupted; workers running: 0" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_a_learning_curve_whose_table_reader_went_away_does_not_end_with_0(ensemble_run):
    # `dodo learning-curve ... --json - | jq ...` whose reader went away (jq failed, a pager quit): the
    # cross-validation went on (a long command outlives its reader), then the table, its only record,
    # was dropped as a progress line is, after "note: ... its files and logs are written as usual", and
    # the command ended with 0. A closed standard output or a full disk already ended with 2.
    pytest.importorskip("torch")
    process = subprocess.Popen([sys.executable, "-m", "dodo", "learning-curve", "--config", str(ensemble_run["config"]),
                                "--sizes", "10", "--folds", "2", "--json", "-"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader gone before the table is printed
    _, err = process.communicate(timeout=600)
    assert process.returncode == 2, err
    assert "the table (--json -) was not written" in err and "--json FILE" in err, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("script", ["qke_campaign.sh", "relabel_growth.sh"])
def test_a_stopped_campaign_returns_after_its_chunks_so_that_the_rerun_is_not_refused(stub_venv, script):
    # `timeout -s TERM 10 bash scripts/qke_campaign.sh 1 PLAN; bash scripts/qke_campaign.sh 1 PLAN` (the
    # header's "rerun the same command to continue"): the first returned (124) while its chunk was still
    # ending (`dodo simulate: terminated` printed after it), and the rerun was refused, exit 2: "another
    # qke_campaign.sh (or its chunks) is running in ...: wait for it to end". Here the chunk (a stub dodo)
    # takes a few seconds to end after SIGTERM, as dodo simulate saving its checkpoint does.
    import os
    import signal
    import time
    from pathlib import Path

    repo, env = stub_venv
    venv = Path(env["DODO_VENV"]) / "bin"
    marks = repo / "marks"
    marks.mkdir()
    (venv / "dodo").write_text(textwrap.dedent(f"""\
        #!/bin/bash
        [ -e {marks}/ended ] && exit 0  # the rerun: the chunk done
        trap 'sleep 4; touch {marks}/ended; exit 143' TERM
        touch {marks}/started
        while true; do sleep 0.1; done
        """))
    if script == "qke_campaign.sh":
        (repo / "plan.txt").write_text("emu 5 3\n")
        command = ["bash", str(repo / "scripts" / script), "1", str(repo / "plan.txt")]
    else:  # a complete chunk to label
        h5py = pytest.importorskip("h5py")
        with h5py.File(repo / "data" / "qke" / "emu_seed5.h5", "w") as handle:
            handle.attrs["complete"] = True
        command = ["bash", str(repo / "scripts" / script), "1"]
    log = repo / "campaign.err"
    with open(log, "w") as stderr:  # a file, not a pipe: the chunk would hold a pipe open until it ends
        campaign = subprocess.Popen(command, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120  # hang guard
    while not (marks / "started").exists():
        assert time.monotonic() < deadline and campaign.poll() is None, log.read_text()
        time.sleep(0.1)
    os.kill(campaign.pid, signal.SIGTERM)  # as timeout(1) and a batch system's cancel send it
    campaign.wait(timeout=120)
    ended = (marks / "ended").exists()
    assert campaign.returncode == 143, log.read_text()
    assert ended, "the script returned before its chunk ended: " + log.read_text()
    rerun = subprocess.run(command, env=env, cwd=repo, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "is running" not in rerun.stderr, rerun.stderr


def test_a_run_to_resume_in_a_directory_that_takes_no_file_is_not_told_to_choose_another_output(tmp_path, capsys,
                                                                                             monkeypatch):
    # `dodo simulate OUT ...` killed (OUT.partial.npz holds its batches), its directory then made read-only (or
    # mounted read-only), the same command again: "cannot write OUT: no permission to create files in DIR (or it
    # is on a read-only file system); choose another output", and another output starts the run over.
    import os

    from cli_helpers import run
    from dodo import _atomic

    output = tmp_path / "run.h5"
    partial = tmp_path / "run.h5.partial.npz"
    partial.write_bytes(b"the batches done")  # refused before it is read
    real_access = os.access
    monkeypatch.setattr(_atomic.os, "access", lambda path, mode, **kw: False if os.path.samefile(path, tmp_path)
                        else real_access(path, mode, **kw))  # a directory this user cannot write
    code, _, err = run(capsys, ["simulate", str(output), "--random", "4", "--family", "emu", "--seed", "1",
                                "--ncell", "16", "--nphi", "8"])
    assert code == 2
    assert "no permission to create files" in err and "rerun the same command to resume" in err, err
    assert "choose another output" not in err, err
    assert partial.read_bytes() == b"the batches done" and not output.exists()
