"""Outside probe, data-loss, hang and signal round six (docs/reliability_python.md section 79).

`dodo train` with data.num_workers 2 under `ulimit -n 24` waited for ever: the workers hand each batch
over through file descriptors and their sender thread failed with "Too many open files".
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import synth_and_preprocess, write_training_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX resource limits, Linux")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataloss6")
    return root, synth_and_preprocess(root, 400, seed=6)


def train_under_file_limit(root: Path, data_path: Path, name: str, soft: int, hard: int):
    config = write_training_config(root / f"{name}.yaml", data_path, root / name,
                                   data={"num_workers": 2}, model={"hidden_dim": 8})

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    # A hang guard of minutes (the defect waited for ever); the run itself takes seconds.
    return subprocess.run([sys.executable, "-m", "dodo", "train", "--config", str(config)], preexec_fn=limit,
                          capture_output=True, text=True, timeout=400, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_workers_under_a_hard_file_limit_too_low_are_refused_in_one_line(data):
    root, data_path = data
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 24:
        pytest.skip("this machine's hard limit is below the probe's")
    result = train_under_file_limit(root, data_path, "low", 24, 24)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dodo train: error: data.num_workers is 2") and "ulimit -n" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "low" / "checkpoints" / "final.pt").exists()


def test_workers_under_a_low_soft_file_limit_raise_it_and_train(data):
    root, data_path = data
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip("this machine's hard open-file limit is below 1024")
    result = train_under_file_limit(root, data_path, "soft", 24, hard)
    assert result.returncode == 0, result.stderr
    assert (root / "soft" / "checkpoints" / "final.pt").is_file()
