"""Outside probe, round 39: the scale-out features (docs/reliability_python.md section 44).

Each test failed on the code before its fix (its docstring says what that code did), except those
marked as guards. The round's finding: SIGTERM (or Ctrl-C, SIGHUP) to one process of `torchrun
--nproc-per-node 2 -m dodo train` hung the whole job: the signalled process, unwinding, waited in
the "leave together" barrier of `Distribution.stop` for a sibling that was itself waiting in the
next batch's collective for it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from training_helpers import synth_and_preprocess, write_training_config  # noqa: E402


def _needs_gloo():
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend (torch.distributed)")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(word) for word in listing.read().split()]
    except OSError:
        return []


def _rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            for entry in environ.read().split(b"\0"):
                if entry.startswith(b"RANK="):
                    return int(entry[5:])
    except (OSError, ValueError):
        pass
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers through /proc (Linux)")
@pytest.mark.parametrize("signalled_rank", [1, 0])
def test_sigterm_to_one_torchrun_process_ends_the_whole_job(tmp_path, signalled_rank):
    """Before: SIGTERM to rank 1 during training: rank 1 printed `dodo train: terminated` and then
    sat in `Distribution.stop`'s monitored barrier (torch's gloo did not honour its 120 s bound while
    sending), rank 0 in the next batch's broadcast waiting for rank 1: the job never ended (killed
    by the probe's `timeout 200`, exit 124). To rank 0: rank 0 waited in the barrier (bounded at
    120 s) for rank 1, itself in a collective; both cases ran past this test's 90 s guard. Now a process that ends on an exception or a signal leaves the group at once: the other's
    collective fails ("Connection closed by peer"), torchrun stops the job, within seconds."""
    _needs_gloo()
    data = synth_and_preprocess(tmp_path, 400, seed=3)
    config = write_training_config(tmp_path / "c.yaml", data, tmp_path / "run",
                                   training={"epochs": 100000, "lr": 3e-3, "threads": 1, "log_interval": 100000,
                                             "seed": 1, "device": "cpu"})
    log = tmp_path / "run" / "results" / "train.log"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "dodo", "train", "--config", str(config)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                           env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120  # a guard: training starts in a few seconds
        while not (log.exists() and "epoch 3/" in log.read_text()):
            assert job.poll() is None and time.monotonic() < deadline, "the job did not start training"
            time.sleep(0.2)
        workers = {_rank_of(pid): pid for pid in _children(job.pid)}
        assert set(workers) == {0, 1}, workers
        os.kill(workers[signalled_rank], signal.SIGTERM)
        try:
            _, err = job.communicate(timeout=90)  # a guard: it ends within seconds now
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM to rank {signalled_rank} of torchrun's two processes: the job still runs 90 s later")
        assert job.returncode != 0
        assert "dodo train: terminated" in err.decode(errors="replace")
        for pid in workers.values():  # both workers are gone
            assert not os.path.exists(f"/proc/{pid}/status") or "zombie" in open(f"/proc/{pid}/status").read()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
    # The checkpoint written before the signal is whole (atomic writes): it resumes.
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] >= 1
