"""Training on a GPU (skipped without CUDA; run on a lent GPU machine with scripts/gpu_check.sh).

`dodo train` on CUDA must follow the CPU run of the same config within float rounding (float32,
AMP off); train with AMP to a model that exports (torch and onnxruntime agreeing) and, evaluated
on the CPU, beats Box3D and obeys the laws; follow the one-process run under torchrun; and the
NCCL branch of dodo.training.distributed must start, wrap, sum and stop on the GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from training_helpers import synth_and_preprocess, write_training_config  # noqa: E402

from dodo.cli import main as dodo_main  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    return root, synth_and_preprocess(root, 1500, seed=11)


def config_for(data, name, **training):
    root, path = data
    sections = {"model": {"hidden_dim": 32, "n_blocks": 2},
                "training": {"epochs": 4, "lr": 3e-3, "threads": 1, "log_interval": 1000, "seed": 7, **training},
                "output": {"parity_samples": 50}}
    return write_training_config(root / f"{name}.yaml", path, root / name, **sections)


def final_state(data, name):
    return torch.load(data[0] / name / "checkpoints" / "final.pt", weights_only=False, map_location="cpu")


def trained(data, name, **training):
    assert dodo_main(["train", "--config", str(config_for(data, name, **training))]) == 0
    return final_state(data, name)


def test_cuda_training_follows_the_cpu_run_within_float_rounding(data):
    on_cpu = trained(data, "cpu", device="cpu", amp=False)
    on_gpu = trained(data, "gpu", device="cuda", amp=False)
    assert "cuda" in (data[0] / "gpu" / "results" / "train.log").read_text()
    for key, value in on_cpu["model_state"].items():
        torch.testing.assert_close(on_gpu["model_state"][key], value, rtol=2e-3, atol=2e-5)
    for one, two in zip(on_cpu["history"]["val"], on_gpu["history"]["val"]):
        assert two["total"] == pytest.approx(one["total"], rel=2e-3)


def test_amp_training_on_cuda_exports_a_model_that_beats_box3d_and_obeys_the_laws(data, capsys):
    trained(data, "amp", device="cuda", amp=True)
    run = data[0] / "amp"
    history = json.loads(next((run / "results").glob("metrics_*.json")).read_text())["history"]["val"]
    assert all(np.isfinite(epoch["total"]) for epoch in history) and history[-1]["total"] < history[0]["total"]
    package = run / "amp.onnx"
    # export's own check: 512 cells through torch and onnxruntime agree (docs/training.md, "Export")
    assert dodo_main(["export", str(run / "checkpoints" / "best.pt"), "-o", str(package)]) == 0
    capsys.readouterr()
    # the GPU-trained checkpoint, evaluated on the CPU, on the test split
    assert dodo_main(["evaluate", str(run / "checkpoints" / "best.pt"), "--json", str(run / "eval.json")]) == 0
    table = json.loads((run / "eval.json").read_text())
    model, box = table["model"], table["box3d"]
    assert model["mean_abs_dn_over_ntot_all"] < 0.3 * box["mean_abs_dn_over_ntot_all"]
    assert model["max_conservation_violation_over_ntot"] < 1e-6
    assert model["unrealizable_fraction"] == 0.0


def test_torchrun_on_cuda_follows_the_one_process_run(data):
    single = trained(data, "gpu_single", device="cuda", amp=False)
    gpus = torch.cuda.device_count()
    config = config_for(data, "torchrun", device="cuda", amp=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(min(gpus, 2)),
               "-m", "dodo", "train", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = final_state(data, "torchrun")
    for key, value in single["model_state"].items():
        torch.testing.assert_close(run["model_state"][key], value, rtol=2e-3, atol=2e-5)


def test_the_nccl_group_starts_averages_and_stops(monkeypatch):
    """The NCCL branch of dodo.training.distributed in this process, as a group of one (a node with
    one GPU cannot start two NCCL ranks): start, the DDP wrapper on the GPU, the float64 sum, stop."""
    import socket

    import torch.distributed as dist

    from dodo.training.distributed import Distribution

    class GroupOfOne(Distribution):
        enabled = True

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    group = GroupOfOne(0, 1, 0)
    device = group.device(torch.device("cuda"))
    assert device == torch.device("cuda", 0)
    group.start(device)
    try:
        assert dist.get_backend() == "nccl"
        network = group.wrap(torch.nn.Linear(3, 2).to(device), device)
        assert isinstance(network, torch.nn.parallel.DistributedDataParallel)
        network(torch.ones(4, 3, device=device)).sum().backward()
        assert group.sum([1.5, -2.0], device) == [1.5, -2.0]
    finally:
        group.stop()
    assert not dist.is_initialized()
