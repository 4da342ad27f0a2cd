"""Issue 12: ``torchrun --nproc-per-node 2 -m dodo train`` (DDP, gloo on CPU) follows the one-process
run of the same global batch within float rounding, writes its files from rank 0 only, and resumes
after an interruption exactly as one process does."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from training_helpers import synth_and_preprocess, write_training_config  # noqa: E402

from dodo.cli import main as dodo_main  # noqa: E402
from dodo.training.dataset import count_rows, make_splits  # noqa: E402
from dodo.training.distributed import Distribution, RankBatches, loss_weight  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch has no gloo backend")


def test_ranks_split_every_global_batch_and_their_weights_restore_its_mean():
    batches = [list(range(10)), list(range(10, 15)), [15]]
    shares = [list(RankBatches(batches, Distribution(rank, 3))) for rank in range(3)]
    assert shares[0] == [[0, 1, 2], [10], [15]]  # an empty share holds a stand-in row (weight 0)
    assert shares[1] == [[3, 4, 5], [11, 12], [15]]
    assert shares[2] == [[6, 7, 8, 9], [13, 14], [15]]
    for rows in (10, 5, 1):
        weights = [loss_weight(end - begin, rows, Distribution(rank, 3))
                   for rank in range(3) for begin, end in [Distribution(rank, 3).share(rows)]]
        # DDP averages over 3 processes: sum_r w_r mean_r / 3 = the global batch's mean
        assert sum(w * (end - begin) for w, (begin, end) in zip(weights, (Distribution(r, 3).share(rows)
                                                                           for r in range(3)))) / 3 == \
            pytest.approx(sum((e - b) ** 2 for b, e in (Distribution(r, 3).share(rows) for r in range(3))) / rows)
    assert Distribution.from_environment({}).world_size == 1
    assert Distribution.from_environment({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}).rank == 2


def test_more_processes_than_gpus_is_refused_with_the_way_out():
    """NCCL takes one GPU per process; LOCAL_RANK past the node's GPUs is refused before any group starts."""
    beyond = torch.cuda.device_count()
    with pytest.raises(ValueError, match=r"no GPU of its own.*--nproc-per-node.*training.device: cpu"):
        Distribution(beyond, beyond + 2, beyond).device(torch.device("cuda"))
    assert Distribution(1, 2, 1).device(torch.device("cpu")) == torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = synth_and_preprocess(root, 700, seed=21)
    splits = make_splits(count_rows(data), 0.8, 0.1, 42, None)  # the config defaults
    # A batch size that leaves a last global batch of one row: one process then holds none of it.
    batch_size = next(b for b in range(40, 120) if len(splits.train) % b == 1)
    sections = {"data": {"batch_size": batch_size},
                "training": {"epochs": 3, "lr": 3e-3, "threads": 1, "log_interval": 1000, "seed": 7,
                             "device": "cpu"}}  # gloo; on a GPU machine "auto" would take NCCL, one GPU per process
    return root, data, sections


def config_for(setup, name):
    root, data, sections = setup
    return write_training_config(root / f"{name}.yaml", data, root / name, **sections)


def torchrun(*arguments):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "dodo", "train", *map(str, arguments)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def final_state(setup, name):
    root = setup[0]
    return torch.load(root / name / "checkpoints" / "final.pt", weights_only=False)


@pytest.fixture(scope="module")
def single(setup):
    assert dodo_main(["train", "--config", str(config_for(setup, "single"))]) == 0
    return final_state(setup, "single")


@pytest.fixture(scope="module")
def two_processes(setup):
    torchrun("--config", config_for(setup, "ddp"))
    return final_state(setup, "ddp")


def test_two_processes_follow_one_process_within_float_rounding(single, two_processes):
    for key, value in single["model_state"].items():
        torch.testing.assert_close(two_processes["model_state"][key], value, rtol=2e-4, atol=2e-6)
    for split in ("train", "val"):
        for one, two in zip(single["history"][split], two_processes["history"][split]):
            assert two["total"] == pytest.approx(one["total"], rel=1e-4)
    assert two_processes["global_step"] == single["global_step"]


def test_only_rank_zero_writes(setup, two_processes):
    out = setup[0] / "ddp"
    log = (out / "results" / "train.log").read_text()
    assert log.count("epoch 1/3") == 1 and "x 2 processes" in log
    # (and the run's lock, .dodo.lock, which rank 0 alone takes: dodo._atomic.exclusive_directory)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [".dodo.lock", "best.pt", "final.pt",
                                                                       "last.prev.pt", "last.pt"]
    assert len(list((out / "results").glob("metrics_*.json"))) == 1
    assert not list(out.rglob("*.tmp"))


def test_interrupted_two_process_run_resumes_to_the_same_result(setup, two_processes):
    config = config_for(setup, "ddp_cut")
    torchrun("--config", config, "--set", "training.stop_after_epoch=1")
    last = setup[0] / "ddp_cut" / "checkpoints" / "last.pt"
    assert last.exists() and not (last.parent / "final.pt").exists()
    torchrun("--config", config, "--resume", last)
    resumed = final_state(setup, "ddp_cut")
    for key, value in two_processes["model_state"].items():
        torch.testing.assert_close(resumed["model_state"][key], value, rtol=1e-6, atol=1e-8)
    assert resumed["history"]["val"][-1]["total"] == pytest.approx(two_processes["history"]["val"][-1]["total"],
                                                                   rel=1e-6)
