"""Targeted campaign chunks (`dodo simulate --select-by`, the plan's `targeted` lines): the kept
states are the candidates of largest model uncertainty, the choice is recorded, and what cannot
rank states is refused in one line before any work (docs/dataset.md, "Targeted chunks")."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dodo.conventions import from_emu_layout
from dodo.qke.selection import model_identity, model_uncertainty, most_uncertain
from dodo.qke.states import family_states

ROOT = Path(__file__).resolve().parents[2]
DODO = [sys.executable, "-m", "dodo"]


def test_most_uncertain_keeps_the_largest_in_draw_order_and_refuses_nan():
    assert most_uncertain(np.array([0.1, 0.5, 0.2, 0.5, 0.0]), 3).tolist() == [1, 2, 3]
    assert most_uncertain(np.array([0.3, 0.3, 0.3]), 2).tolist() == [0, 1]  # ties: the earlier draw
    with pytest.raises(ValueError, match="non-finite uncertainty"):
        most_uncertain(np.array([0.1, np.nan]), 1)


def test_the_default_models_uncertainty_ranks_fresh_family_states():
    states = family_states("emu", 40, np.random.default_rng(11))
    uncertainty = model_uncertainty(states, "default")
    assert uncertainty.shape == (40,) and np.all(np.isfinite(uncertainty)) and np.all(uncertainty > 0)
    assert len(np.unique(uncertainty)) > 30  # a ranking, not a constant


def test_the_recorded_digest_is_of_the_bytes_that_ranked(tmp_path):
    """One read serves the digest and the ranking: a model file replaced after it was hashed does not
    rank the states under the first file's digest (outside probe, round 37)."""
    import hashlib
    import shutil

    from dodo.models import default_model_path

    copy = tmp_path / "model.onnx"
    shutil.copyfile(default_model_path(), copy)
    name, digest, package = model_identity(str(copy))
    assert name == str(copy) and digest == hashlib.sha256(copy.read_bytes()).hexdigest()
    copy.write_bytes(b"not a model any more")  # swapped between the digest and the ranking
    states = family_states("emu", 8, np.random.default_rng(5))
    np.testing.assert_array_equal(model_uncertainty(states, str(copy), package), model_uncertainty(states, "default"))


def run_simulate(*args, cwd):
    return subprocess.run([*DODO, "simulate", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_targeted_chunk_simulates_the_most_uncertain_candidates_and_records_the_choice(tmp_path):
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "emu_seed7.h5"
    result = run_simulate(str(out), "--random", "2", "--seed", "7", "--family", "emu", "--select-by", "default",
                          "--oversample", "3", "--batch-size", "2", "--backend", "cpp", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    candidates = family_states("emu", 6, np.random.default_rng(7))  # the draw the command made
    expected = candidates[most_uncertain(model_uncertainty(candidates, "default"), 2)]
    with h5py.File(out, "r") as handle:
        source = json.loads(handle.attrs["source"])
        initial = from_emu_layout(np.asarray(handle["F4_initial(1|ccm)"]))
    assert source["selected_by"] == "default" and source["oversample"] == 3 and source["candidates"] == 6
    assert len(source["selection_model_sha256"]) == 64
    np.testing.assert_allclose(initial, expected, rtol=1e-12, atol=1e-12 * float(np.abs(expected).max()))


@pytest.mark.parametrize("args, words", [
    (["--random", "2", "--oversample", "3"], "without --select-by it would be ignored"),
    (["--random", "2", "--select-by", "default"], "give --random N and --family"),
    (["--random", "2", "--family", "emu", "--select-by", "default", "--oversample", "1"], "--oversample must be"),
    (["--random", "2", "--family", "emu", "--select-by", "box3d"], "Box3D alone has no uncertainty"),
    (["--random", "2", "--family", "emu", "--select-by", "missing.onnx"], "no such model file"),
    (["--random", "2", "--family", "emu", "--select-by", "tests/data/training/tiny_direct.onnx"],
     "no uncertainty output"),
])
def test_what_cannot_rank_states_is_refused_in_one_line_before_any_work(tmp_path, args, words):
    out = tmp_path / "x.h5"
    args = [str(ROOT / a) if a.startswith("tests/") else a for a in args]
    result = run_simulate(str(out), *args, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_the_plans_targeted_lines_select_and_the_others_do_not(tmp_path, stub_venv):
    repo, env = stub_venv
    (tmp_path / "plan.txt").write_text("emu 1 3 targeted\nmerger 2 4\nthree_flavour 3 5 targeted  # a comment\n")
    result = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", "plan.txt"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    lines = sorted(line for line in result.stderr.splitlines() if line.startswith("stub dodo"))
    assert len(lines) == 3, result.stderr
    by_family = {line.split("--family ")[1].split()[0]: line for line in lines}
    assert "--select-by default" in by_family["emu"] and "--random 3" in by_family["emu"]
    assert "--select-by" not in by_family["merger"] and "--random 4" in by_family["merger"]
    assert "--select-by default" in by_family["three_flavour"]


@pytest.mark.parametrize("line, words", [
    ("emu 5 3 targetted", "expected FAMILY SEED COUNT [targeted]"),
    ("emu 5 3 targeted extra", "expected FAMILY SEED COUNT [targeted]"),
    ("emu 950 3 targeted", "seeds 900-999 are the held-out chunks"),
])
def test_a_plan_line_that_is_not_a_chunk_is_refused_before_any_chunk(tmp_path, stub_venv, line, words):
    repo, env = stub_venv
    (tmp_path / "plan.txt").write_text(f"emu 1 3\n{line}\n")
    result = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", "plan.txt"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and words in result.stderr and "stub dodo" not in result.stderr


def run_study(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "targeted_sampling_study.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_targeted_sampling_study_runs_its_arms_and_keeps_the_family_shares(ensemble_run, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "study.json"
    result = run_study("--config", ensemble_run["config"], "--eval", 60, "--base", 40, "--add", 40, "--members", 2,
                       "--threads", 1, "--arms", "random,family-top-sigma,top-sigma", "--json", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    arms = summary["arms"]
    assert list(arms) == ["random", "family-top-sigma", "top-sigma"]
    assert arms["family-top-sigma"]["added_families"] == arms["random"]["added_families"]
    for arm in arms.values():
        assert sum(arm["added_families"].values()) == 40 and np.isfinite(arm["gated"])
    # the top of the ranking has at least the random draw's median spread
    assert arms["top-sigma"]["added_sigma_median"] >= arms["random"]["added_sigma_median"]
    assert len(arms["top-sigma"]["minus_random_ci"]) == 2


@pytest.mark.parametrize("args, words", [
    (["--arms", "random,best"], "--arms: unknown arm 'best'"),
    (["--eval", "150", "--base", "40", "--add", "40"], "exceeds the 200-state training pool"),
    (["--base", "1"], "--base must be an integer >= 2"),
])
def test_the_study_refuses_what_it_cannot_run_in_one_line(ensemble_run, tmp_path, args, words):
    pytest.importorskip("torch")
    result = run_study("--config", ensemble_run["config"], *args, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_the_campaign_skips_finished_chunks_before_starting_any(tmp_path, stub_venv):
    """The finished chunks are found by one Python process up front (a Python start per plan line took
    over half an hour on ~3,000 lines): a finished chunk is not run; an unfinished or unreadable one,
    which that scan must not drop, is."""
    h5py = pytest.importorskip("h5py")
    repo, env = stub_venv
    with h5py.File(repo / "data" / "qke" / "emu_seed1.h5", "w") as handle:
        handle.attrs["complete"] = True
    with h5py.File(repo / "data" / "qke" / "emu_seed2.h5", "w") as handle:
        handle.attrs["complete"] = False
    (repo / "data" / "qke" / "emu_seed3.h5").write_text("not HDF5")
    (tmp_path / "plan.txt").write_text("emu 1 3\nemu 2 3\nemu 3 3 targeted\nmerger 4 3\n")
    result = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", "plan.txt"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    ran = sorted(line.split("--seed ")[1].split()[0] for line in result.stderr.splitlines()
                 if line.startswith("stub dodo"))
    assert ran == ["2", "3", "4"], result.stderr
