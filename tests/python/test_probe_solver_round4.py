"""Solver probe, round four (outside probe of `dodo simulate` and `python -m dodo.qke.validate`, as an
astrophysicist making their own ground truth uses them; /work/notes/solver_probe_round4_section.md).
Each test of a fix failed against the code before it (its docstring says what that code did); the
others pin laws that held. Tiny runs: 16 cells x 24 directions, one to three states."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

# CROSSING: a crossing state, mu != tau (round three's), and round three's helpers.
from test_probe_solver_round3 import CROSSING, _emu_layout, _run_cli

# Every species alike and isotropic: no crossing, linearly stable (dropped before its run).
STABLE = np.tile([1.0e33, 0.0, 0.0, 0.0], (6, 1))
TINY = ["--ncell", "16", "--nphi", "8", "-q"]


def _write_yaml(path, states) -> str:
    yaml = pytest.importorskip("yaml")
    path.write_text(yaml.safe_dump({"states": np.asarray(states, float).tolist()}))
    return str(path)


def _database(path) -> tuple[dict, dict]:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


@pytest.mark.parametrize("linear_only", [False, True])
def test_the_database_records_the_version_and_the_states_it_was_given(tmp_path, linear_only):
    """A `dodo simulate` database (and a --linear-only label file) recorded its settings, seed and command
    but neither the code's version nor the states it was given: its rows hold only the valid states, yet
    the states dropped before or after their runs shaped the batches (each state's perturbation seed and
    time step), and a rerun by another version, or of an input file edited since (its `source` is the
    path as typed), could not be told from the original. Now `dodo_version` and `states_sha256` (SHA-256
    of all requested states, float64 [n, 6, 4] C order, cm^-3) are attributes; the states recovered from
    the input reproduce the digest, and rerunning the recorded command reproduces the rows bit for bit."""
    pytest.importorskip("h5py")
    import dodo

    states = np.stack([CROSSING, STABLE, CROSSING[[1, 2, 0, 4, 5, 3]]])  # one dropped between two that run
    source = _write_yaml(tmp_path / "states.yaml", states)
    options = ["--linear-only"] if linear_only else ["--batch-size", "1"]
    for name in ("a.h5", "b.h5"):
        assert _run_cli(["simulate", str(tmp_path / name), "--input", source, "--seed", "5", *TINY, *options]) == 0
    rows, attrs = _database(tmp_path / "a.h5")
    assert attrs["dodo_version"] == dodo.__version__, attrs
    assert attrs["states_sha256"] == hashlib.sha256(np.ascontiguousarray(states, float).tobytes()).hexdigest()
    assert list(rows["input_index"]) == [0, 2]
    if not linear_only:
        assert json.loads(attrs["settings"])["solver"]["seed"] == 5
    again, again_attrs = _database(tmp_path / "b.h5")
    assert again_attrs["states_sha256"] == attrs["states_sha256"]
    for name, values in rows.items():
        assert np.array_equal(values, again[name]), name


def test_use_input_end_time_with_a_yaml_input_says_yaml_holds_no_end_times(tmp_path, capsys):
    """`dodo simulate OUT --input s.yaml --use-input-end-time` said `s.yaml has no tend(s) dataset`, the
    words of an HDF5 file missing a dataset: a YAML input cannot hold one (its only key is 'states').
    Now it says where end times come from and what to do; the HDF5 message is unchanged."""
    source = _write_yaml(tmp_path / "s.yaml", [CROSSING])
    assert _run_cli(["simulate", str(tmp_path / "o.h5"), "--input", source, "--use-input-end-time", *TINY]) == 2
    error = capsys.readouterr().err
    assert "--use-input-end-time takes each state's end time from an Emu-layout HDF5 input's tend(s)" in error, error
    assert "a YAML input holds states only" in error and "dataset\n" not in error, error
    assert not (tmp_path / "o.h5").exists()
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["F4_initial(1|ccm)"] = _emu_layout([CROSSING])
    assert _run_cli(["simulate", str(tmp_path / "o.h5"), "--input", str(tmp_path / "s.h5"), "--use-input-end-time",
                     *TINY]) == 2
    assert "s.h5 has no tend(s) dataset" in capsys.readouterr().err


def test_the_solver_is_scale_free_over_fifty_decades_of_density(tmp_path):
    """Law (held): the equations have no scale (docs/qke.md), so a state times s, run with the same seed,
    gives the same rows in units of N_tot, a growth rate times s and times and lengths / s, to rounding,
    from N_tot ~ 1e9 to 1e59 cm^-3; and each row conserves the flavour-summed four-flux and each
    flavour's lepton number."""
    pytest.importorskip("h5py")
    rows = []
    for index, scale in enumerate((1.0, 1e-25, 1e25)):
        source = _write_yaml(tmp_path / f"s{index}.yaml", [CROSSING * scale])
        assert _run_cli(["simulate", str(tmp_path / f"o{index}.h5"), "--input", source, "--seed", "3", *TINY]) == 0
        data, _ = _database(tmp_path / f"o{index}.h5")
        initial, final = data["F4_initial(1|ccm)"][0], data["F4_final(1|ccm)"][0]
        total = initial[3].sum()
        assert np.abs((final - initial).sum(axis=2)).max() / total < 1e-13  # flavour-summed, nu and nubar
        assert np.abs((final[3, 0] - final[3, 1]) - (initial[3, 0] - initial[3, 1])).max() / total < 1e-13
        rows.append([final / total, data["F4_final_stddev(1|ccm)"][0] / total, data["growthRate(1|s)"][0] / total,
                     data["tsat(s)"][0] * total, data["tend(s)"][0] * total, data["box_length_cm"][0] * total,
                     data["linear_growthRate_box(1|s)"][0] / total])
    for other in rows[1:]:
        for mine, theirs in zip(rows[0], other):
            assert np.allclose(theirs, mine, rtol=1e-9, atol=1e-9 * np.abs(mine).max()), (mine, theirs)


def test_validate_nsm1_refuses_a_repeated_seed(monkeypatch, capsys):
    """`python -m dodo.qke.validate nsm1 --seeds 0,0` ran seed 0 twice: bit-equal runs listed in the
    report (and --json) as if two samples of the run-to-run scatter, at twice the cost. Now refused
    before any work, naming the repeated seed; distinct seeds run as before."""
    from dodo.qke import validate

    calls = []
    monkeypatch.setattr(validate, "validate_nsm1", lambda *args, **kwargs: calls.append(args[2]) or {"runs": []})
    assert validate.main(["nsm1", "--seeds", "0,1,0"]) == 2
    error = capsys.readouterr().err
    assert "--seeds 0,1,0 repeats seed(s) 0" in error and error.count("\n") == 1, error
    assert calls == []
    validate.main(["nsm1", "--seeds", "1,0"])
    assert calls == [[1, 0]]


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and symlinks as on Linux")
def test_an_output_symlink_keeps_its_checkpoint_beside_the_target_and_resumes_by_either_name(tmp_path):
    """OUT a symlink (`link.h5 -> real/target.h5`): the lock was beside the target, the checkpoint beside
    the link (`link.h5.partial.npz`), the database written through to the target; a run killed after a
    checkpoint and rerun as `dodo simulate real/target.h5 ...` (the same file) was refused as "an
    unfinished dodo simulate database ... with no checkpoint", and --overwrite there would have lost the
    checkpoint's states. Now lock, checkpoint and database all go beside the target: the rerun through the
    target's name resumes, rows bit-equal to an uninterrupted run's, nothing left but the two names. A
    checkpoint an earlier version left beside the link is still used (the link's name kept)."""
    pytest.importorskip("h5py")
    arguments = ["--random", "3", "--seed", "11", "--batch-size", "1", *TINY]
    command = [sys.executable, "-m", "dodo", "simulate"]
    reference = tmp_path / "reference.h5"
    subprocess.run(command + [str(reference)] + arguments, check=True, timeout=600)
    (tmp_path / "real").mkdir()
    link, target = tmp_path / "link.h5", tmp_path / "real" / "target.h5"
    link.symlink_to("real/target.h5")
    checkpoint = tmp_path / "real" / "target.h5.partial.npz"
    process = subprocess.Popen(command + [str(link)] + arguments)
    deadline, killed = time.monotonic() + 300, False
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists():
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    process.wait(timeout=300)
    assert killed, "no checkpoint beside the target: " + str(sorted(p.name for p in tmp_path.rglob("*")))
    assert not (tmp_path / "link.h5.partial.npz").exists()
    resumed = subprocess.run(command + [str(target)] + arguments, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(os.listdir(tmp_path / "real")) == ["target.h5"]
    assert sorted(os.listdir(tmp_path)) == ["link.h5", "real", "reference.h5"]
    expected, got = _database(reference)[0], _database(link)[0]
    assert sorted(expected) == sorted(got)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    from dodo.qke.cli import _resolved_output

    (tmp_path / "link.h5.partial.npz").write_bytes(b"")  # an earlier version's checkpoint beside the link
    assert _resolved_output(str(link)) == str(link)
    (tmp_path / "link.h5.partial.npz").unlink()
    assert _resolved_output(str(link)) == os.path.realpath(target)


def _killed_after_first_checkpoint(command: list[str], checkpoint) -> None:
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if os.path.exists(checkpoint):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait(timeout=300) == -signal.SIGKILL


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL as on Linux")
def test_a_run_resumed_with_another_kernel_records_both(tmp_path):
    """`dodo simulate OUT ... --backend numpy`, killed after a checkpoint, resumed with `--backend cpp`
    (a resume matches all settings but the kernel): the database's settings said `"backend": "cpp"`
    alone, though some rows came from the NumPy kernel (rows differ by ~1e-14 between the kernels, so
    the recorded settings reproduce those rows only to rounding). Now the `kernels` attribute counts the
    states of each kernel ({"numpy": k, "cpp": 3 - k}); a checkpoint of an earlier version (no record of
    its kernel) counts as "unknown"; an uninterrupted run gives {"cpp": n}."""
    pytest.importorskip("h5py")
    from dodo.qke.campaign import _read_checkpoint
    from dodo.qke.compiled import compiled_unavailable_reason

    if compiled_unavailable_reason(16) is not None:
        pytest.skip(compiled_unavailable_reason(16))
    command = [sys.executable, "-m", "dodo", "simulate", str(tmp_path / "o.h5"), "--random", "3", "--seed", "2",
               "--batch-size", "1", *TINY]
    checkpoint = tmp_path / "o.h5.partial.npz"
    _killed_after_first_checkpoint(command + ["--backend", "numpy"], checkpoint)
    subprocess.run(command + ["--backend", "cpp"], check=True, timeout=600)
    _, attrs = _database(tmp_path / "o.h5")
    assert json.loads(attrs["settings"])["solver"]["backend"] == "cpp"
    kernels = json.loads(attrs["kernels"])
    assert set(kernels) == {"numpy", "cpp"} and sum(kernels.values()) == 3, kernels

    (tmp_path / "o.h5").unlink()
    _killed_after_first_checkpoint(command + ["--backend", "cpp"], checkpoint)
    stored = _read_checkpoint(str(checkpoint))
    done = int(stored["done"].sum())
    np.savez(checkpoint, **{key: value for key, value in stored.items() if key != "kernel"})  # as written before
    subprocess.run(command + ["--backend", "cpp"], check=True, timeout=600)
    kernels = json.loads(_database(tmp_path / "o.h5")[1]["kernels"])
    assert kernels.get("unknown (a checkpoint of an earlier version)") == done and sum(kernels.values()) == 3, kernels
