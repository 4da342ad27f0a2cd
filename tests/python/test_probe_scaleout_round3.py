"""Outside probe, scale-out round three (docs/reliability_python.md, "Scale-out probe, round three").

Each test failed on the code before its fix (its docstring says what that code did).
"""
from __future__ import annotations

import json
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun with a POSIX shell wrapper")
@pytest.mark.parametrize("case", ["other epochs", "identical copies", "identical copies at other paths"])
def test_torchrun_processes_resuming_from_different_checkpoints_stop_with_one_line_each(tmp_path, case):
    """Before: `torchrun --nproc-per-node 2 --no-python sh -c 'cd node$RANK && dodo train --config c.yaml
    --resume ck/last.pt'`, each process reading its own ck/last.pt (node-local checkpoint directories,
    or a last.pt damaged on one node, where that process falls back to last.prev.pt), here one stopped
    after epoch 1 and one after epoch 2 of one config: both logged the resume, process 0 "resumed from
    ck/last.pt after epoch 1" and trained epochs 2 and 3 beside process 1's 3 and 4 (DDP had given
    both process 0's weights, not its optimizer or shuffling state); then process 1, out of epochs,
    waited in the 120 s barrier at the end and left, and process 0 sat in its epoch 4's all-reduce:
    no output, no end, until the probe's 200 s timeout (torchrun then needed its 30 s SIGKILL). Now
    the processes compare the checkpoints they resumed (epoch, step, content digest) before any work
    and each stops with one line naming both; identical copies resume as before, and a copy under
    another path too (before, `training.resume_from` was compared as a path and refused it)."""
    _needs_gloo()
    import hashlib

    from dodo.cli import main as dodo_main
    from training_helpers import synth_and_preprocess, write_training_config

    data = synth_and_preprocess(tmp_path, 200, seed=5)
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    training = {"epochs": 4, "lr": 3e-3, "threads": 1, "seed": 1, "log_interval": 100000, "device": "cpu"}
    for node, stop in zip(nodes, (1, 2)):
        node.mkdir()
        config = write_training_config(node / "c.yaml", data, node, training=training)
        text = config.read_text().replace(str(node / "results"), "res").replace(str(node / "checkpoints"), "ck")
        config.write_text(text)
        if case == "other epochs" or node is nodes[0]:
            cwd = os.getcwd()
            os.chdir(node)
            try:
                assert dodo_main(["train", "--config", "c.yaml", "--set", f"training.stop_after_epoch={stop}"]) == 0
            finally:
                os.chdir(cwd)
    if case.startswith("identical copies"):
        import shutil

        shutil.copytree(nodes[0] / "ck", nodes[1] / "ck")
        if case.endswith("other paths"):  # a copy under another name: the same checkpoint
            (nodes[1] / "ck" / "last.pt").rename(nodes[1] / "ck" / "copy.pt")

    def digests():
        return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for node in nodes
                for path in (node / "ck").glob("*.pt")}  # not .dodo.lock: it holds the pid of its holder

    before = digests()
    resume = "$([ $RANK = 1 ] && echo copy.pt || echo last.pt)" if case.endswith("other paths") else "last.pt"
    script = f'cd "{tmp_path}/node$RANK" && exec "{sys.executable}" -m dodo train --config c.yaml --resume ck/{resume}'
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--no-python", "sh", "-c", script]
    code, output = _run_guarded(command, 240, env=dict(os.environ, OMP_NUM_THREADS="1"))  # a guard: ~10 s now
    if case.startswith("identical copies"):
        assert code == 0, output[-3000:]
        assert (nodes[0] / "ck" / "final.pt").is_file()
        return
    assert code != 0, output[-3000:]
    assert output.count("do not resume from the same checkpoint") == 2, output[-3000:]
    line = output[output.index("do not resume from the same checkpoint"):].split("identical copies)")[0]
    assert "'epoch 1, step " in line and " in process 0" in line and "'epoch 2, step " in line, line
    assert " in process 1" in line and "--resume file (ck/last.pt" in line, line
    assert digests() == before  # nothing written: both runs' checkpoints as they were
    assert not (nodes[0] / "ck" / "final.pt").exists() and not (nodes[1] / "ck" / "final.pt").exists()


@pytest.mark.parametrize("rerun", ["same campaign under another name", "another seed", "unfinished copy first"])
def test_preprocess_reads_one_simulate_campaign_once_however_its_databases_are_named(tmp_path, rerun):
    """Before: the same `dodo simulate` command run twice into two names (`mpirun -n 2 dodo simulate a.h5
    ...` and the one-process `dodo simulate b.h5 ...`: the same rows bit for bit, docs/qke.md) and both
    listed under `inputs:` (a glob over a directory, a test run kept beside the cluster's) were both
    read: `preprocess: 46 rows -> q.h5` for 23 states, each state on both sides of `dodo train`'s
    train/test split. Only byte-identical copies were read once (round 22); the two databases differ
    in `created_utc`, `command` and timings. Now a database of the same states and settings as one read
    already is read once, saying so; another campaign (another seed) is read as before."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("yaml")
    from dodo.cli import main as dodo_main

    first = tmp_path / "a.h5"
    common = ["--ncell", "16", "--nphi", "8", "--batch-size", "1", "--hamiltonian-filter", "none", "-q"]
    assert dodo_main(["simulate", str(first), "--random", "3", "--seed", "4", *common]) == 0
    second = tmp_path / "b.h5"
    if rerun == "another seed":
        assert dodo_main(["simulate", str(second), "--random", "3", "--seed", "5", *common]) == 0
    else:  # the rerun's database: the same rows, other bytes (its own command and time)
        import shutil

        shutil.copyfile(first, second)
        with h5py.File(second, "r+") as handle:
            handle.attrs["created_utc"] = "2026-12-06T12:00:00Z"
            handle.attrs["command"] = f"dodo simulate {second} --random 3 --seed 4"
    if rerun == "unfinished copy first":  # the campaign's database as a killed run left it: one row, listed first
        full, first = first, tmp_path / "a_unfinished.h5"
        with h5py.File(full, "r") as source, h5py.File(first, "w") as handle:
            rows_of_full = int(source["F4_initial(1|ccm)"].shape[0])
            for name, value in source.attrs.items():
                handle.attrs[name] = value
            handle.attrs["complete"] = False
            for name, dataset in source.items():
                data = dataset[()]
                handle[name] = data[:1] if getattr(data, "ndim", 0) and data.shape[0] == rows_of_full else data
    with h5py.File(first, "r") as handle:
        rows = int(handle["F4_initial(1|ccm)"].shape[0])
    with h5py.File(second, "r") as handle:
        second_rows = int(handle["F4_initial(1|ccm)"].shape[0])
    assert rows > 0 and second_rows > 0
    (tmp_path / "pp.yaml").write_text(f"inputs: [{first}, {second}]\noutput: {tmp_path / 'pre.h5'}\n"
                                      "filters: {drop_conservation_violation: false, drop_high_flux_factor: false, "
                                      "drop_box3d_rejected: false}\n")
    import contextlib
    import io

    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        assert dodo_main(["preprocess", "--config", str(tmp_path / "pp.yaml"), "-q"]) == 0
    with h5py.File(tmp_path / "pre.h5", "r") as handle:
        written = int(handle["F_init"].shape[0])
        sources = json.loads(handle.attrs["sources"])
    if rerun == "another seed":
        assert written == rows + second_rows, said.getvalue()
        assert "read once" not in said.getvalue()
        assert [source["path"] for source in sources] == [str(first), str(second)]
    elif rerun == "unfinished copy first":  # the database with more rows is read, the unfinished one not
        assert rows == 1 and written == second_rows, said.getvalue()
        assert f"{second} is read in its place" in said.getvalue()
        assert [source["path"] for source in sources] == [str(second)]
    else:
        assert written == rows, said.getvalue()
        assert f"{second} holds the states of {first} simulated with the same settings" in said.getvalue()
        assert "read once" in said.getvalue()
        assert [source["path"] for source in sources] == [str(first)]


def test_a_package_or_data_file_given_for_a_checkpoint_is_named(tmp_path, capsys):
    """Before: `dodo evaluate model.onnx` (the exported package in place of the checkpoint it came from)
    said `model.onnx: not a checkpoint (it starts with the bytes 08 08 12 07 70 79 74 6f; ...)`, and a
    preprocessed file `(it starts with the bytes 89 48 44 46 0d 0a 1a 0a; ...)`, while `dodo score
    best.pt DATA` names the checkpoint it is given. Now the kind is named, and for a package the command
    that reads it; a file of no kind Dodo knows keeps the bytes."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from dodo.cli import main as dodo_main
    from training_helpers import synth_and_preprocess, train

    data = synth_and_preprocess(tmp_path, 200, seed=5)
    checkpoints = train(tmp_path, data, "run", training={"epochs": 1, "threads": 1, "log_interval": 100000})
    package = tmp_path / "model.onnx"
    assert dodo_main(["export", str(checkpoints / "best.pt"), "-o", str(package)]) == 0
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(range(7, 200)))
    capsys.readouterr()
    for given, said in ((package, "it is an ONNX model package (dodo export)"),
                        (data, "it is a preprocessed training file (dodo preprocess)"),
                        (other, "it starts with the bytes 07 08 09")):
        assert dodo_main(["evaluate", str(given)]) == 2
        error = capsys.readouterr().err
        assert f"{given}: not a checkpoint ({said}" in error, error
        assert len(error.strip().splitlines()) == 1, error
    assert dodo_main(["evaluate", str(package)]) == 2
    assert "`dodo score MODEL DATA` scores a package" in capsys.readouterr().err
