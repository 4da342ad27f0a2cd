"""`ensemble.processes`: the members fitted in worker processes, one torch thread each
(dodo.training.member_processes). The same members as fitted one at a time in one thread, bit for
bit; a worker's failure a clear error naming it; no worker outlives the call."""
import json
import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dodo.training.ensemble import fit_ensemble, fit_growth_member  # noqa: E402
from dodo.training.member_processes import fit_members  # noqa: E402


def _data(rows=240, columns=9, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, columns))
    r = np.tanh(X[:, 0]) * 0.01 + 0.001 * rng.normal(size=rows)
    g = 0.1 * X[:, 1]
    g[::7] = np.nan  # rows without a growth label
    return X, r, g


OPTIONS = dict(width=8, depth=2, batch_size=32, epochs=3, lr=2e-3, growth_weight=0.5)


def _one_thread_ensemble(X, r, g, processes):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit_ensemble(X, r, g, members=3, seed=5, processes=processes, **OPTIONS)
    finally:
        torch.set_num_threads(threads)


def test_members_in_processes_are_the_members_fitted_one_at_a_time():
    X, r, g = _data()
    lines = []
    alone = _one_thread_ensemble(X, r, g, processes=1)
    together = fit_ensemble(X, r, g, members=3, seed=5, processes=2, log=lines.append, **OPTIONS)
    assert sorted(lines) == ["member 1/3 trained", "member 2/3 trained", "member 3/3 trained"]
    assert len(together.members) == 3
    for first, second in zip(alone.members, together.members):
        a, b = first.state_dict(), second.state_dict()
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    # Different seeds give different members: the comparison above could fail.
    assert not torch.equal(together.members[0].state_dict()["body.0.weight"],
                           together.members[1].state_dict()["body.0.weight"])


def test_growth_members_in_processes_keep_their_order():
    X, _, g = _data()
    g = np.where(np.isfinite(g), g, 0.0)
    shared = dict(X=X, log_growth=g, width=8, depth=1, batch_size=64, epochs=2)
    tasks = [{"seed": 11}, {"seed": 12}, {"seed": 13}]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = fit_members(fit_growth_member, shared, tasks, processes=1)
    finally:
        torch.set_num_threads(threads)
    together = fit_members(fit_growth_member, shared, tasks, processes=3)
    for first, second in zip(alone, together):
        for name, value in first.state_dict().items():
            assert torch.equal(value, second.state_dict()[name])


def failing_fit(X, seed):
    if seed == 8:
        raise ValueError(f"no member for seed {seed}")
    return torch.nn.Linear(1, 1)


def killed_fit(X, seed):
    if seed == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return torch.nn.Linear(1, 1)


def test_a_failing_fit_is_a_clear_error_naming_it():
    X, _, _ = _data(rows=10)
    with pytest.raises(RuntimeError, match=r"fit 2 of 2 failed in its worker process: ValueError: no member for seed 8"):
        fit_members(failing_fit, {"X": X}, [{"seed": 1}, {"seed": 8}], processes=2)


def test_a_killed_worker_is_a_clear_error_and_no_worker_is_left():
    import multiprocessing

    X, _, _ = _data(rows=10)
    with pytest.raises(RuntimeError, match=r"fit 3 of 4 failed in its worker process: ended by signal SIGKILL"):
        fit_members(killed_fit, {"X": X}, [{"seed": 0}, {"seed": 1}, {"seed": 2}, {"seed": 3}], processes=2)
    assert not [child for child in multiprocessing.active_children() if child.name.startswith("dodo-member-")]


def test_processes_is_checked_like_threads(tmp_path):
    from dodo.training.config import ConfigError
    from dodo.training.ensemble_train import EnsembleConfig

    config = tmp_path / "ens.json"
    config.write_text(json.dumps({"ensemble": {"members": 2}}))
    assert EnsembleConfig.load(str(config), {"ensemble.processes": 2}).processes == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match=r"ensemble\.processes must be an integer in \[1, "):
            EnsembleConfig.load(str(config), {"ensemble.processes": bad})


def test_train_ensemble_with_two_processes(ensemble_run, tmp_path):
    """The whole command with members in processes: the checkpoint loads and has its members."""
    from dodo.cli import main
    from dodo.training.ensemble_train import checked_ensemble

    config = json.loads(ensemble_run["config"].read_text())
    config["ensemble"]["processes"] = 2
    config["output"]["checkpoint"] = str(tmp_path / "ens2.pt")
    path = tmp_path / "ens2.json"
    path.write_text(json.dumps(config))
    assert main(["train-ensemble", "--config", str(path)]) == 0
    checkpoint = torch.load(tmp_path / "ens2.pt", weights_only=False)
    ensemble = checked_ensemble(checkpoint, tmp_path / "ens2.pt")
    assert len(ensemble.members) == 2
