"""Outside probe, scale-out round three (docs/reliability_python.md, "Scale-out probe, round three").

Each test failed on the code before its fix (its docstring says what that code did).
"""
from __future__ import annotations

import os
import sys

import pytest

from test_probe_scaleout_round2 import _run_guarded


def _torchrun_train(tmp_path, config, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "dodo", "train", "--config", str(config)]
    return _run_guarded(command, 240, env=dict(os.environ, OMP_NUM_THREADS="1"))  # a guard: ~10 s now


def _needs_gloo():
    torch = pytest.importorskip("torch")
    pytest.importorskip("h5py")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend (torch.distributed)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun on Linux")
@pytest.mark.parametrize("batch_norm", [True, False])
def test_torchrun_with_batch_norm_says_it_does_not_follow_the_one_process_run(tmp_path, batch_norm):
    """Before: `torchrun --nproc-per-node 2 -m dodo train` with `model.batch_norm: true` trained without a
    word, while docs/training.md and the README promised that a K-process run follows the one-process run
    of its config within float rounding (excepting dropout only): torch's BatchNorm normalises each
    process's slice of the batch by its own statistics (SyncBatchNorm is GPU-only), and after 2 epochs
    the weights were 1e-2 from one process's (6e-8 without batch norm), the running variances 0.2.
    Now the log says so at the start; a run without batch norm says nothing of it."""
    _needs_gloo()
    from training_helpers import synth_and_preprocess, write_training_config

    data = synth_and_preprocess(tmp_path, 200, seed=5)
    config = write_training_config(tmp_path / "c.yaml", data, tmp_path / "run",
                                   model={"head": "equivariant", "hidden_dim": 8, "n_blocks": 1,
                                          "batch_norm": batch_norm},
                                   training={"epochs": 1, "lr": 3e-3, "threads": 1, "seed": 1,
                                             "log_interval": 100000, "device": "cpu"})
    code, output = _torchrun_train(tmp_path, config)
    assert code == 0, output[-3000:]
    log = (tmp_path / "run" / "results" / "train.log").read_text()
    note = "model.batch_norm over 2 processes: each process normalises its own slice of every batch"
    if batch_norm:
        assert note in log and "does not follow a one-process run" in log, log
        assert log.count(note) == 1, log  # rank 0 writes the log, once
    else:
        assert "model.batch_norm over" not in log, log
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()
