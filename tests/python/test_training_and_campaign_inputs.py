"""Training inputs, export options and the campaign scripts on inputs an outside probe sent (round
seven): each a clear error or the documented result, never a hang, a silent no-op or a traceback."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")

from cli_helpers import refused, run  # noqa: E402
from dodo.qke import growth_labels  # noqa: E402
from dodo.qke.io import write_emu_database  # noqa: E402
from dodo.qke.solver import SolverConfig  # noqa: E402
from dodo.qke.states import family_states  # noqa: E402
from test_growth_labels import rest_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_growth_data_takes_label_files_only_and_names_what_it_cannot_read(tmp_path):
    """A FIFO blocked train-ensemble for ever; a solver file passed for labels (its coarse-axis linear
    rates); a non-HDF5 file gave HDF5's message without the file's name."""
    import dodo
    from dodo.training.ensemble_train import growth_calibration, growth_label_table

    settings = dodo.box3d_settings()
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        growth_label_table([str(fifo)], [], settings, calibration=0.9)
    with pytest.raises(ValueError, match="FIFO"):
        growth_calibration([str(fifo)])
    states = family_states("emu", 2, np.random.default_rng(1))
    solver_file = str(tmp_path / "emu_seed1.h5")
    write_emu_database(solver_file, {"initial": states, "final": states, "final_stddev": 0 * states,
                                     "growth_rate": np.ones(2), "linear_growth_rate": np.ones(2)}, {})
    with pytest.raises(ValueError, match="not a growth-label file"):
        growth_label_table([solver_file], [], settings, calibration=0.9)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not HDF5")
    with pytest.raises(ValueError, match="garbage.h5"):
        growth_label_table([str(garbage)], [], settings, calibration=0.9)
    labels = str(tmp_path / "labels.h5")
    growth_labels.linear_growth_labels(states, labels, SolverConfig(ncell=16, nphi_equator=8), report=lambda m: None)
    assert growth_label_table([labels], [], settings, calibration=0.9) is not None


def test_relabelled_growth_that_replaces_nothing_is_refused(tmp_path):
    """growth.relabelled with label files of other states was a silent no-op (same checkpoint as without)."""
    from conftest import random_states

    from dodo.training.ensemble_train import EnsembleConfig, train_on

    rng = np.random.default_rng(3)
    density = rest_table(random_states(rng, 20, max_flux_factor=0.6, mu_equals_tau=True), lambda p: p, True)
    others = rest_table(random_states(rng, 20, max_flux_factor=0.6, mu_equals_tau=True), lambda p: 2 * p, False)
    config = EnsembleConfig(members=2, width=8, steps=5, growth_members=1, growth_width=8, growth_steps=5,
                            growth_data=["unused"], growth_relabelled=True, checkpoint=str(tmp_path / "e.pt"))
    with pytest.raises(ValueError, match="no file of growth.data labels a training state"):
        train_on(density, np.arange(20), config, growth_table=others)


def test_sampled_states_need_campaign_files_and_say_so_before_any_member_trains(tmp_path, monkeypatch):
    """distill.sampled_states on files not named by a campaign family failed after every member had
    trained with 'need at least one array to concatenate'."""
    from conftest import random_states

    from dodo.training import ensemble_train as et

    table = rest_table(random_states(np.random.default_rng(4), 20, max_flux_factor=0.6), lambda p: p, True)
    fitted = []
    monkeypatch.setattr(et, "fit_ensemble", lambda *a, **k: fitted.append(1))
    config = et.EnsembleConfig(members=2, width=8, steps=5, distill_width=8, distill_sampled_states=100,
                               checkpoint=str(tmp_path / "e.pt"))
    with pytest.raises(ValueError, match="distill.sampled_states"):
        et.train_on(table, np.arange(20), config)
    assert not fitted


def test_export_needs_a_test_vector_and_synth_a_seed_it_can_store(capsys, tmp_path):
    for count in ("0", "-3"):
        refused(capsys, ["export", str(tmp_path / "none.pt"), "-o", str(tmp_path / "x.onnx"), "--test-vectors", count],
                "--test-vectors")
    refused(capsys, ["synth", "-o", str(tmp_path / "s.h5"), "-n", "10", "--seed", str(2**64)], "--seed")


def test_plot_writes_the_format_its_file_name_says(capsys, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"history": {"train": [{"total": 1.0}, {"total": 0.5}],
                                               "val": [{"total": 1.1}, {"total": 0.6}]}, "metric_table": {}}))
    assert run(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "curve.pdf")])[0] == 0
    assert (tmp_path / "curve.pdf").read_bytes().startswith(b"%PDF")
    refused(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "curve.jpg")], "curve.jpg", ".png")


def test_campaign_scripts_refuse_bad_jobs_skip_an_empty_plan_and_report_failed_chunks(tmp_path, stub_venv):
    """JOBS 0 started every chunk at once (xargs -P 0); an empty plan ran a chunk named "bash"; a
    relative plan was looked up in the repository root; every chunk failing still exited 0."""
    repo, env = stub_venv
    script = str(repo / "scripts" / "qke_campaign.sh")

    def campaign(*args, cwd=tmp_path):
        return subprocess.run(["bash", script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)

    for jobs in ("0", "abc", "-1", "1.5"):
        result = campaign(jobs)
        assert result.returncode == 2 and "JOBS must be a positive integer" in result.stderr
    (tmp_path / "empty.txt").write_text("# nothing planned\n\n")
    result = campaign("1", "empty.txt")
    assert result.returncode == 0 and "stub dodo" not in result.stderr
    (tmp_path / "plan.txt").write_text("# two chunks\nemu 1 3\n\nemu 2 3\n")
    result = campaign("2", "plan.txt")  # relative to the caller's directory
    assert result.returncode != 0 and result.stderr.count("stub dodo") == 2
    assert "not every chunk finished" in result.stderr
    assert campaign("1", "missing.txt").returncode == 2
    relabel = subprocess.run(["bash", str(repo / "scripts" / "relabel_growth.sh"), "0"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert relabel.returncode == 2 and "JOBS must be a positive integer" in relabel.stderr


@pytest.mark.parametrize("signal_name, whole_group", [("SIGINT", True), ("SIGTERM", False)])
def test_stopping_a_campaign_stops_its_chunks(tmp_path, stub_venv, signal_name, whole_group):
    """Ctrl-C (SIGINT to the terminal's foreground group) or a kill of the script's pid killed only
    an `exec setsid` wrapper: the campaign, in a session of its own, ran on with its chunks."""
    import signal
    import time

    repo, env = stub_venv
    pids = tmp_path / "pids"
    pids.mkdir()
    stub = tmp_path / "venv" / "bin" / "dodo"  # a chunk that runs until it is stopped
    stub.write_text(f"#!/bin/bash\necho $$ > {pids}/$$\nexec sleep 600\n")
    (tmp_path / "plan.txt").write_text("emu 1 3\nemu 2 3\n")
    # As from a terminal: SIGINT at its default. A suite started in the background by a
    # non-interactive shell (`pytest ... &`) inherits SIGINT ignored, which bash cannot trap: the
    # campaign's parent then never saw the Ctrl-C and this test hung for its two minutes.
    campaign = subprocess.Popen(["bash", str(repo / "scripts" / "qke_campaign.sh"), "2", "plan.txt"], cwd=tmp_path,
                                env=env, start_new_session=True, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def wait_for(condition, what):
        deadline = time.monotonic() + 120  # generous: only a hang reaches it
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    try:
        wait_for(lambda: len([p for p in pids.iterdir() if p.read_text().strip()]) == 2, "chunks did not start")
        chunk_pids = [int(p.read_text()) for p in pids.iterdir()]
        sent = getattr(signal, signal_name)
        if whole_group:
            os.killpg(campaign.pid, sent)
        else:
            os.kill(campaign.pid, sent)
        assert campaign.wait(timeout=120) != 0
        wait_for(lambda: not any(alive(pid) for pid in chunk_pids), "a chunk outlived its stopped campaign")
    finally:
        for pid in [int(p.read_text() or 0) for p in pids.iterdir()]:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        if campaign.poll() is None:
            campaign.kill()


@pytest.mark.parametrize("key, value", [("data.split_seed", -1), ("training.seed", -1), ("training.seed", 2**32),
                                        ("training.threads", -2), ("data.num_workers", -1),
                                        ("training.stop_after_epoch", 0), ("output.parity_samples", -5)])
def test_train_config_integers_are_checked_by_key(tmp_path, key, value):
    """These failed with the libraries' messages (no key named) or were taken as something else."""
    import yaml

    from dodo.training.config import ConfigError, ExperimentConfig

    section, name = key.split(".")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({section: {name: value}}))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ExperimentConfig.load(str(path), create_dirs=False)
