"""Solver reliability round 3 (outside probe of `dodo simulate`, its campaign scripts and
`python -m dodo.qke.validate`; docs/reliability_python.md, section 33). Each test failed against the
code before its fix; its docstring says what that code did. Below the second rule: "Solver probe, round
three" (odd inputs, interruptions, MPI; its own section of docs/reliability_python.md)."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import stand_in_venv

ROOT = Path(__file__).resolve().parents[2]


# --- scripts/qke_campaign.sh: the plan's lines ---------------------------------------------------------

@pytest.fixture()
def campaign_copy(tmp_path):
    """The campaign scripts in a scratch repository, with a `dodo` that logs its arguments and fails."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("qke_campaign.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    log = tmp_path / "calls.txt"
    venv = stand_in_venv(tmp_path, f"echo \"$*\" >> {log}\nexit 2")
    env = dict(os.environ, DODO_VENV=str(venv), DODO_CAMPAIGN_DIR=str(tmp_path / "out"),
               DODO_CAMPAIGN_NICE="0")

    def campaign(plan_text: str):
        (tmp_path / "plan.txt").write_text(plan_text)
        result = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", "plan.txt"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120)
        calls = log.read_text().splitlines() if log.exists() else []
        if log.exists():
            log.unlink()
        return result, calls

    return campaign


@pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash scripts for Linux")
def test_campaign_runs_every_plan_line_and_refuses_a_malformed_one(campaign_copy):
    """A plan line ending in a blank (`emu 1 3 ` then `emu 2 3`): xargs -L 1 read it as continued on
    the next line, so chunk emu 2 never ran (its words went to chunk 1 as extra arguments, dropped),
    and a campaign of chunks that all succeeded ended 0 with a chunk missing. A fourth field was
    dropped without a word, and a line of two fields started `dodo simulate --random ''` (argparse's
    usage, per chunk). Now every line is read as FAMILY SEED COUNT (a comment may follow) and a
    malformed one stops the campaign before any chunk starts, naming the line."""
    result, calls = campaign_copy("emu 1 3 \nemu 2 3\r\n\tmerger 3 3\n# note\n\nemu 4 3  # a note\n")
    seeds = sorted(call.split("--seed ")[1].split()[0] for call in calls)
    assert seeds == ["1", "2", "3", "4"], (calls, result.stderr)
    for line in ("emu 4", "emu 4 3 extra", "emu x 3", "emu 4 0", "bogus 4 3", "emu 4 -3", "emu 04 3"):
        result, calls = campaign_copy(f"emu 1 3\n{line}\n")
        assert result.returncode == 2, (line, result.stderr)
        assert calls == [], line  # nothing started
        assert "plan.txt, line 2: expected FAMILY SEED COUNT" in result.stderr and line in result.stderr, result.stderr
    # The same chunk twice: run twice onto one file (the second refused by its lock), or skipped as
    # complete whatever its second COUNT said.
    result, calls = campaign_copy("emu 1 3\nmerger 1 3\nemu 1 5\n")
    assert result.returncode == 2 and calls == [], result.stderr
    assert "plan.txt, line 3: chunk emu 1 is also on line 1" in result.stderr, result.stderr


# --- dodo simulate --box-length far below the state's wavelength ----------------------------------------

def test_a_box_needing_billions_of_steps_is_dropped_not_run_for_ever(tmp_path, monkeypatch):
    """`dodo simulate OUT --random 2 --seed 3 --ncell 16 --nphi 8 --box-length 1e-6` (a box length in
    the wrong unit): the step is at most two cells' light-crossing time (4e-18 s here) and the end
    time 80 growth times of the box's slow tail mode (3e-6 s), so the run took ~7e11 steps: after 10
    minutes it was still in its first batch with 4 GB of history and growing (0.01 cm: the same at
    7e7 steps). Now such a state is dropped before its box is made, its reason giving the step
    count and what to change. (The box is never made here: make_box fails the test.)"""
    pytest.importorskip("h5py")
    from dodo.qke import campaign
    from dodo.qke.solver import SolverConfig
    from dodo.qke.states import random_crossing_states

    state = random_crossing_states(2, np.random.default_rng(3))[:1]  # `--random 2 --seed 3`'s state 0

    def no_box(*args, **kwargs):
        raise AssertionError("a box was made for a run of ~10^11 steps")

    monkeypatch.setattr(campaign, "make_box", no_box)
    config = SolverConfig(ncell=16, nphi_equator=8)
    with pytest.raises(campaign.NoValidStateError) as caught:
        campaign.simulate_states(state, str(tmp_path / "out.h5"), config, batch_size=1,
                                 box_length_cm=1e-6, report=lambda message: None)
    text = str(caught.value)
    assert "time steps to reach its end time" in text and "more than the 1,000,000" in text, text
    assert "--box-length" in text and not (tmp_path / "out.h5").exists()
    assert campaign.too_many_steps(1e-9, 4.0, SolverConfig()) is None  # NSM1's box: a few hundred steps


# --- dodo simulate: the engine's checks in the options' words --------------------------------------------

@pytest.mark.parametrize("options, words", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1; got 0"),
    (["--threads", "-2"], "--threads must be an integer >= 1; got -2"),
    (["--max-cost", "0"], "--max-cost must be a number > 0"),
    (["--max-cost", "nan"], "--max-cost must be a number > 0"),
    (["--max-flux-factor", "0.99"], "--max-flux-factor must be in (0, 0.95]"),
    (["--family", "merger", "--max-flux-factor", "nan"], "--max-flux-factor must be in (0, 0.95]"),
    (["--max-cost", "2", "--use-input-end-time"], "--max-cost estimates each state's cost from the default end time"),
])
def test_simulate_names_the_option_it_refuses(tmp_path, capsys, options, words):
    """These said `batch_size must be >= 1`, `threads must be an integer >= 1; got -2`, `max_cost must
    be positive`, `max_flux_factor must be in (0, 0.95]`, `max_cost needs the default end times (not
    --use-input-end-time)`: the engine's parameter names, which no option of `dodo simulate` has (and
    after the states were read or drawn)."""
    pytest.importorskip("h5py")
    import argparse

    from dodo.qke import cli

    parser = argparse.ArgumentParser(prog="dodo")
    cli.register(parser.add_subparsers(dest="command", required=True))
    output = tmp_path / "out.h5"
    args = parser.parse_args(["simulate", str(output), "--random", "1", "--ncell", "16", "--nphi", "8", "-q", *options])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dodo simulate: error: ") and words in err and err.count("\n") == 1, err
    assert not output.exists()


# --- scripts/relabel_growth.sh on a campaign made with DODO_CAMPAIGN_DIR -----------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash scripts for Linux")
@pytest.mark.parametrize("axis, suffix", [("fastest", "_growth"), ("emu", "_emu_axis")])
def test_relabel_growth_labels_the_campaign_of_dodo_campaign_dir(tmp_path, axis, suffix):
    """`DODO_CAMPAIGN_DIR=DIR bash scripts/qke_campaign.sh` writes its chunks to DIR, but
    relabel_growth.sh read data/qke of the repository whatever the variable said and wrote its labels
    to data/qke_growth (data/qke_emu_axis): a campaign made elsewhere was never labelled, and the
    repository's pool was labelled into data/ instead (here: no chunk of DIR given to `dodo`). Now
    DIR's chunks are labelled into DIR_growth (DIR_emu_axis); held-out seeds 900-999 still never,
    and a directory name with a space is one path."""
    h5py = pytest.importorskip("h5py")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("relabel_growth.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    (repo / "data" / "qke").mkdir(parents=True)  # the repository's pool: not this campaign's
    with h5py.File(repo / "data" / "qke" / "emu_seed5.h5", "w") as f:
        f.attrs["complete"] = True
    campaign = tmp_path / "my campaign"
    campaign.mkdir()
    for name in ("emu_seed1.h5", "merger_seed2.h5", "emu_seed905.h5"):
        with h5py.File(campaign / name, "w") as f:
            f.attrs["complete"] = True
    log = tmp_path / "calls.txt"
    venv = stand_in_venv(tmp_path, f"echo \"$*\" >> '{log}'\nexit 0")
    env = dict(os.environ, DODO_VENV=str(venv), DODO_CAMPAIGN_DIR=f"{campaign}/", DODO_GROWTH_AXIS=axis,
               DODO_CAMPAIGN_NICE="0")
    result = subprocess.run(["bash", str(repo / "scripts" / "relabel_growth.sh"), "1"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = sorted(log.read_text().splitlines()) if log.exists() else []
    labels = f"{campaign}{suffix}"
    assert calls == sorted(f"simulate {labels}/{name} --input {campaign}/{name} --linear-only"
                           + (" --axis emu --ignore-rotation" if axis == "emu" else "") + " --quiet"
                           for name in ("emu_seed1.h5", "merger_seed2.h5")), calls
    assert Path(labels).is_dir() and not (repo / "data" / f"qke{suffix}").exists()


# --- dodo simulate: another output's checkpoint beside OUT ----------------------------------------------

def test_the_checkpoint_of_another_output_named_out_partial_something_is_not_read(tmp_path):
    """`dodo simulate c.h5` beside an interrupted `dodo simulate c.h5.partialX.h5`: the glob
    OUT.partial*.npz took that run's checkpoint c.h5.partialX.h5.partial.npz as one of c.h5's, so
    c.h5 stopped before any work ("does not belong to this campaign") when the other run had other
    states or settings, and when it had the same ones c.h5 merged it and then removed it, the other
    run's checkpoint. Now only OUT.partial.npz and OUT.partial.rank<r>.npz are OUT's."""
    pytest.importorskip("h5py")
    from dodo.qke import campaign
    from dodo.qke.solver import SolverConfig
    from dodo.qke.states import NSM1_EMU_1D

    output = tmp_path / "c.h5"
    other = tmp_path / "c.h5.partialX.h5.partial.npz"
    other.write_bytes(b"the checkpoint of another run")
    results = campaign.simulate_states(NSM1_EMU_1D[None], str(output), SolverConfig(ncell=16, nphi_equator=8),
                                       batch_size=1, report=lambda message: None)
    assert results["valid"].all() and output.is_file()
    assert other.read_bytes() == b"the checkpoint of another run"
    for name in ("c.h5.partial.npz", "c.h5.partial.rank0.npz", "c.h5.partial.rank12.npz"):
        (tmp_path / name).touch()
    for name in ("c.h5.partial.rankx.npz", "c.h5.partial.rank1.h5.partial.npz"):
        (tmp_path / name).touch()
    assert campaign._checkpoints(str(output)) == sorted(
        str(tmp_path / name) for name in ("c.h5.partial.npz", "c.h5.partial.rank0.npz", "c.h5.partial.rank12.npz"))


# --- dodo simulate: a run killed after its last batch ------------------------------------------------------

def test_a_run_killed_between_its_finished_database_and_its_checkpoint_removal_is_finished_by_the_rerun(
        tmp_path, monkeypatch, capsys):
    """Killed after writing its finished database (complete true) and before removing OUT.partial.npz,
    the rerun that docs/qke.md prescribes ("rerunning the same command resumes from it and removes
    it at the end, also when every state was already done") stopped with `OUT is a complete solver
    database ...: it is not replaced; give another OUT, or --overwrite`, and the checkpoint stayed
    for ever (qke_campaign.sh then skips the complete chunk). Now a checkpoint beside a complete OUT
    lets the run go on: its own campaign's is finished and removed, another's refused as always."""
    h5py = pytest.importorskip("h5py")
    import argparse

    from dodo.qke import campaign, cli

    def simulate(*extra):
        parser = argparse.ArgumentParser(prog="dodo")
        cli.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["simulate", str(output), "--random", "2", "--seed", "5", "--ncell", "16",
                                  "--nphi", "8", "--batch-size", "1", "-q", *extra])
        return args.func(args)

    output = tmp_path / "k.h5"
    checkpoint = tmp_path / "k.h5.partial.npz"
    real_remove = os.remove

    def killed_before_removing(path):  # the run "dies" here: its checkpoint stays
        if str(path) != str(checkpoint):
            real_remove(path)

    monkeypatch.setattr(campaign.os, "remove", killed_before_removing)
    assert simulate() == 0
    monkeypatch.setattr(campaign.os, "remove", real_remove)
    assert checkpoint.is_file()
    with h5py.File(output, "r") as f:
        assert f.attrs["complete"]
        before = f["F4_final(1|ccm)"][()]
    capsys.readouterr()
    assert simulate() == 0, capsys.readouterr().err
    assert not checkpoint.exists()
    with h5py.File(output, "r") as f:
        assert np.array_equal(f["F4_final(1|ccm)"][()], before)
    # Finished and without a checkpoint: refused as before.
    assert simulate() == 2 and "is a complete solver database" in capsys.readouterr().err
    # A checkpoint of another campaign beside a complete OUT: refused, both kept.
    monkeypatch.setattr(campaign.os, "remove", killed_before_removing)
    assert simulate("--overwrite", "--nphi", "12") == 0
    monkeypatch.setattr(campaign.os, "remove", real_remove)
    kept = checkpoint.read_bytes()
    assert simulate() == 2
    assert "does not belong to this campaign" in capsys.readouterr().err and checkpoint.read_bytes() == kept


# --- states whose fastest growth is the homogeneous mode ------------------------------------------------

@pytest.mark.parametrize("seed, index, words", [
    (780, 0, "its fastest growth is the homogeneous mode (k = 0, 2.21e+09 s^-1)"),
    (1199, 1, "its fastest growth along the box axis is the homogeneous mode (k = 0, 8.38e+08 s^-1)"),
])
def test_a_state_growing_fastest_at_k_zero_is_dropped_for_that_reason(seed, index, words):
    """`dodo simulate OUT --random 32 --seed 780 --family emu` (default resolution) dropped state 0,
    an unstable state (2.2e9 s^-1) whose fastest growth is the homogeneous mode, as "box axis must be
    a finite non-zero 3-vector; got array([0., 0., 0.])" (earlier versions: "densities and fluxes must
    be finite", of finite random moments; the pool data/qke holds 5 such drops), and seed 1199's
    state 1, growing along its box axis only at k = 0, as "no unstable mode along the box axis".
    The drops stay (the recipe's box length k L = 18 needs a fastest k > 0); their reasons now say
    why."""
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.states import box_setup, family_states

    state = family_states("emu", 32, np.random.default_rng(seed))[index]
    with pytest.raises(ValueError) as caught:
        box_setup(state, uniform_sphere(16), 64)
    assert words in str(caught.value) and "needs a fastest k > 0" in str(caught.value), str(caught.value)


@pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash scripts for Linux")
def test_relabel_growth_refuses_a_campaign_dir_that_is_not_there(tmp_path):
    """`DODO_CAMPAIGN_DIR=/tmp/mistyped bash scripts/relabel_growth.sh` (after its fix above): nothing
    labelled, exit 0, and an empty /tmp/mistyped_growth made. Now one line and exit 2, nothing made.
    (A copy of the scripts and a `dodo` that does nothing: never the repository's data.)"""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("relabel_growth.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    venv = stand_in_venv(tmp_path, "exit 0")
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    env = dict(os.environ, DODO_VENV=str(venv), DODO_CAMPAIGN_DIR=str(campaigns / "mistyped"),
               DODO_CAMPAIGN_NICE="0")
    result = subprocess.run(["bash", str(repo / "scripts" / "relabel_growth.sh"), "1"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "mistyped is not a directory" in result.stderr, result.stderr
    assert list(campaigns.iterdir()) == []


# --- dodo simulate --flavour-cfl near 0 -------------------------------------------------------------------

@pytest.mark.parametrize("cfl", [1e-300, 5e-324, 1e-9, 0.0009])
def test_a_flavour_cfl_that_would_never_end_is_refused_before_any_work(cfl):
    """`dodo simulate OUT --random 1 --ncell 16 --nphi 8 --flavour-cfl 1e-300` passed the check
    (0, 2] and ran ~10^302 steps: still running when stopped, its history growing (1e-9: ~10^11
    steps). Now `flavour_cfl (--flavour-cfl) must be in [0.001, 2]` (a thousand times the default's
    steps) before any work. (Only the check is called here: the old code would not return.)"""
    from dodo.qke.solver import SolverConfig

    with pytest.raises(ValueError, match=r"flavour_cfl \(--flavour-cfl\) must be in \[0.001, 2\]"):
        SolverConfig(ncell=16, nphi_equator=8, flavour_cfl=cfl).validate()
    SolverConfig(ncell=16, nphi_equator=8, flavour_cfl=0.001).validate()


# --- the output's `command` ----------------------------------------------------------------------------------

@pytest.mark.parametrize("linear_only", [False, True])
def test_the_recorded_command_reads_back_as_the_words_it_was_run_with(tmp_path, monkeypatch, linear_only):
    """`dodo simulate "/tmp/a b é.h5" --random 1 ...` recorded `command` = the arguments joined by
    blanks, `dodo simulate /tmp/a b é.h5 --random 1 ...`, which the refusal of a finished OUT quotes
    ("written by `...`") for a rerun: pasted into a shell it is another command (OUT `/tmp/a`, a
    stray `b`). Now quoted as a shell reads it (shlex.join), for the label files too."""
    h5py = pytest.importorskip("h5py")
    import argparse
    import shlex

    from dodo.qke import cli

    output = tmp_path / "a b 'c'.h5"
    argv = ["simulate", str(output), "--random", "1", "--ncell", "16", "--nphi", "8", "-q"]
    if linear_only:
        argv.append("--linear-only")
    monkeypatch.setattr(sys, "argv", ["dodo", *argv])
    parser = argparse.ArgumentParser(prog="dodo")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    with h5py.File(output, "r") as f:
        assert shlex.split(f.attrs["command"]) == ["dodo", *argv], f.attrs["command"]


# --- python -m dodo.qke.validate nsm1 with emu32's reference --------------------------------------------------

def test_validate_nsm1_names_a_reference_that_is_not_the_nsm1_file(capsys):
    """`python -m dodo.qke.validate nsm1 --reference tests/data/qke/emu_1d_validation.h5` (emu32's
    reference given to nsm1, the two files side by side): `IndexError: list index out of range`, a
    traceback from parsing its directory name `validation_000`. Now one line naming the file, the
    name and the file it should be, exit 2."""
    pytest.importorskip("h5py")
    from dodo.qke import validate

    reference = ROOT / "tests" / "data" / "qke" / "emu_1d_validation.h5"
    if not reference.is_file():
        pytest.skip("no tests/data/qke/emu_1d_validation.h5")
    assert validate.main(["nsm1", "--reference", str(reference), "--box3d-cases", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "directorynames holds 'validation_000', not an NSM1 configuration" in err, err
    assert "emu_nsm1_1d.h5" in err


def test_validate_emu32_names_its_batch_size_option(tmp_path, capsys):
    """`python -m dodo.qke.validate emu32 --batch-size 0` said `batch_size must be >= 1` (the engine's
    parameter; `dodo simulate` now names the option too), after taking the output's lock and reading
    the reference. Now `--batch-size must be an integer >= 1; got 0`, nothing written."""
    pytest.importorskip("h5py")
    from dodo.qke import validate

    reference = ROOT / "tests" / "data" / "qke" / "emu_1d_validation.h5"
    if not reference.is_file():
        pytest.skip("no tests/data/qke/emu_1d_validation.h5")
    output = tmp_path / "v.h5"
    assert validate.main(["emu32", "--reference", str(reference), "--output", str(output), "--batch-size", "0"]) == 2
    assert "--batch-size must be an integer >= 1; got 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# =====================================================================================================
# Solver probe, round three (outside probe of `dodo simulate` with odd inputs, interruptions and MPI;
# docs/reliability_python.md, "Solver probe, round three"). The tests of the fixes failed against the
# code before them (their docstrings say what it did); the others pin behaviour that held.
# =====================================================================================================

SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]
# Dodo's species order (nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, nubar_tau), [n, Fx, Fy, Fz], x 1e33 cm^-3;
# mu != tau. Its fastest box mode grows at ~6.6e10 s^-1 at 16 cells x 24 directions.
CROSSING = np.array([[1.42, 0.14, 0.06, -0.19], [0.59, -0.01, 0.04, -0.26], [0.39, -0.02, 0.05, -0.22],
                     [1.91, 0.14, 0.06, -0.65], [0.55, -0.01, 0.03, -0.25], [0.45, -0.01, 0.04, -0.21]]) * 1e33


def _run_cli(argv) -> int:
    import argparse

    from dodo.qke import cli

    parser = argparse.ArgumentParser(prog="dodo")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _emu_layout(states) -> np.ndarray:
    """[n, 6, 4 (n, Fx, Fy, Fz)] -> Emu's F4 [n, 4 (x, y, z, t), 2, 3]."""
    states = np.asarray(states, float).reshape(-1, 2, 3, 4)
    return np.transpose(states[..., [1, 2, 3, 0]], (0, 3, 1, 2))


def _rows(path) -> dict:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as f:
        data = {name: f[name][()] for name in f}
        data["dropped"] = f.attrs["dropped"]
    return data


def _conserves(data: dict) -> None:
    """Flavour-summed four-flux (nu and nubar) and per-flavour lepton number of F4_final vs F4_initial."""
    initial, final = data["F4_initial(1|ccm)"], data["F4_final(1|ccm)"]  # [n, 4 (x,y,z,t), 2, 3]
    total = initial[:, 3].sum(axis=(1, 2))
    assert (np.abs((final - initial).sum(axis=3)).max(axis=(1, 2)) / total).max() < 1e-12
    lepton = (final[:, 3, 0] - final[:, 3, 1]) - (initial[:, 3, 0] - initial[:, 3, 1])
    assert (np.abs(lepton).max(axis=1) / total).max() < 1e-12


def test_an_input_end_time_of_too_few_growth_times_is_dropped_before_its_run(tmp_path, monkeypatch):
    """`dodo simulate OUT --input F.h5 --use-input-end-time` with states given 20 growth times of their
    fastest box mode, or 1e-30 s: each ran to its end time with the batch (a box was made for all four
    states) before being dropped as "no exponential growth found" or "not saturated early enough" (the
    open item of section 51: "a state given fewer than ~21 growth times still runs before being
    dropped"). Rhea's reduction needs t_end > 3 t_sat, and the off-diagonal must first grow from the 1e-6
    seeds through the window (1e-3 of its peak) to its peak, ln(1e3) growth times at least: now such a
    state is dropped before its box is made, the reason giving its growth times and the 20.7 needed. A
    state given 25 growth times (above the bound, short of the ~60 a run needs here) still runs and is
    dropped by the reduction; the state at its default end time is valid and obeys the laws."""
    h5py = pytest.importorskip("h5py")
    from dodo.qke import campaign
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.solver import SolverConfig
    from dodo.qke.states import box_setup

    _, _, default_end, rate = box_setup(CROSSING, uniform_sphere(8), 16)
    assert default_end * rate == pytest.approx(80)
    source = str(tmp_path / "in.h5")
    with h5py.File(source, "w") as f:
        f["F4_initial(1|ccm)"] = _emu_layout([CROSSING] * 4)
        f["tend(s)"] = np.array([default_end, 20 / rate, 1e-30, 25 / rate])
    boxed = []
    real_make_box = campaign.make_box

    def counting_make_box(four_flux, *args, **kwargs):
        boxed.append(len(four_flux))
        return real_make_box(four_flux, *args, **kwargs)

    monkeypatch.setattr(campaign, "make_box", counting_make_box)
    output = str(tmp_path / "out.h5")
    assert _run_cli(["simulate", output, "--input", source, "--use-input-end-time", "--batch-size", "4", *SMALL]) == 0
    assert boxed == [2], boxed  # states 0 and 3 only
    data = _rows(output)
    assert data["input_index"].tolist() == [0]
    dropped = json.loads(data["dropped"])
    assert sorted(dropped) == ["1", "2", "3"], dropped
    for key, held in (("1", "is 20 growth times"), ("2", "e-20 growth times of its fastest box mode")):
        assert held in dropped[key] and "fewer than the 20.7 a valid run needs" in dropped[key], dropped[key]
        assert "still growing at the end time" in dropped[key] and "dropped before its run" in dropped[key]
    assert dropped["3"].startswith("not saturated early enough"), dropped["3"]
    _conserves(data)
    # The bound's premise on the valid row: saturation after more than ln(1e3) growth times, t_end > 3 t_sat.
    tsat, tend, linear = data["tsat(s)"][0], data["tend(s)"][0], data["linear_growthRate_box(1|s)"][0]
    assert tsat * linear > np.log(1e3) and tend > 3 * tsat, (tsat * linear, tend / tsat)
    assert campaign.min_end_growth_times(1e-6) == pytest.approx(3 * np.log(1e3))  # 20.7
    assert campaign.min_end_growth_times(1e-2) == pytest.approx(3 * np.log(1e2))  # larger seeds saturate sooner
    assert campaign.min_end_growth_times(0.1) == campaign.min_end_growth_times(0.5) == pytest.approx(3 * np.log(10))
    assert campaign.too_few_growth_times(21 / rate, rate, SolverConfig()) is None


def test_yaml_booleans_and_empty_entries_are_refused_naming_their_states(tmp_path):
    """YAML reads `yes`, `no`, `on`, `off`, `true` and `false` as booleans: in a state they became
    densities 1 and 0 and the run went ahead (an HDF5 input of booleans is refused); `~` or `null` was
    refused as "non-finite initial four-fluxes (NaN or Inf)". Now both are refused in one line naming the
    states. Text numbers stay accepted (YAML 1.1 reads `1e33` and `1.0e33` as text). A list nested 500
    deep was a RecursionError traceback from the YAML parser; now one line."""
    pytest.importorskip("yaml")
    from dodo.qke.states import read_states

    good = "[[1.42e+33,0,0,-1.9e+32],[5.9e32,0,0,0],[3.9e32,0,0,0],[1.91e33,0,0,-6.5e32],[5.5e32,0,0,0],[4.5e32,0,0,0]]"
    path = tmp_path / "s.yaml"
    path.write_text(f"states:\n- {good}\n- {good.replace('[5.9e32,0,0,0]', '[5.9e32,0,no,0]')}\n"
                    f"- {good.replace('[4.5e32,0,0,0]', '[~,0,0,0]')}\n- {good.replace('-1.9e+32', 'on')}\n")
    with pytest.raises(ValueError) as caught:
        read_states(str(path))
    text = str(caught.value)
    assert "holds a boolean" in text and "in state(s) [1, 3]" in text, text
    assert "an empty entry (null, ~ or nothing) in state(s) [2]" in text, text
    path.write_text(f"states:\n- {good}\n")
    states = read_states(str(path))["four_flux"]
    assert states.dtype == float and states[0, 0, 0] == 1.42e33 and states[0, 1, 0] == 5.9e32
    path.write_text("states: " + "[" * 500 + "1" + "]" * 500 + "\n")
    with pytest.raises(ValueError, match="nests lists too deeply"):
        read_states(str(path))


def _snapshot(path: str):
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and the flock of the output are Linux's")
def test_a_run_killed_after_each_checkpoint_ends_with_the_uninterrupted_rows(tmp_path):
    """`dodo simulate OUT --random 4 ... --batch-size 1` SIGKILLed right after each new checkpoint (so
    inside or just before the database rewrite of that batch), rerun, killed again, until it finishes:
    every row bit-equal to the uninterrupted run's, each state once, nothing left beside OUT (no
    checkpoint, lock or temporary). Held (pins the resume contract of docs/qke.md)."""
    pytest.importorskip("h5py")
    import signal
    import time

    arguments = ["--random", "4", "--seed", "44", "--batch-size", "1", "--ncell", "16", "--nphi", "8", "--quiet"]
    reference = str(tmp_path / "reference" / "out.h5")
    os.makedirs(os.path.dirname(reference))
    command = [sys.executable, "-m", "dodo", "simulate"]
    subprocess.run(command + [reference] + arguments, check=True, timeout=600)
    work = tmp_path / "killed"
    work.mkdir()
    output, checkpoint = str(work / "out.h5"), str(work / "out.h5.partial.npz")
    kills = 0
    for _ in range(12):
        before = _snapshot(checkpoint)
        process = subprocess.Popen(command + [output] + arguments)
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            now = _snapshot(checkpoint)
            if now is not None and now != before:
                process.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        code = process.wait(timeout=300)
        if code == 0:
            break
        assert code == -signal.SIGKILL, code
    assert code == 0 and kills >= 2, (code, kills)
    assert sorted(os.listdir(work)) == ["out.h5"], os.listdir(work)
    expected, got = _rows(reference), _rows(output)
    assert got["input_index"].tolist() == sorted(set(got["input_index"].tolist()))
    assert sorted(expected) == sorted(got)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_a_state_that_cannot_be_reconstructed_names_its_species_and_value(tmp_path):
    """A heavy-lepton species at -1e10 cm^-3 (-5e-24 N_tot: rounding in a user's conversion) was dropped
    as "number densities must be non-negative", a zero-density species with a flux of 1e10 cm^-3 and a
    species at flux factor 1 with no species named: the user had to search 24 numbers per state. Now
    the reason names the species and the value (in cm^-3 and N_tot); the prefixes are unchanged."""
    from dodo.qke.campaign import reconstruction_failure
    from dodo.qke.directions import uniform_sphere

    directions = uniform_sphere(8)
    negative, flux_only, beamed = CROSSING.copy(), CROSSING.copy(), CROSSING.copy()
    negative[4, 0] = -1e10
    flux_only[2] = [0.0, 0.0, 1e10, 0.0]
    beamed[3, 1:] *= beamed[3, 0] / np.linalg.norm(beamed[3, 1:])
    text = reconstruction_failure(negative, directions)
    assert "number densities must be non-negative (species nubar_mu): n = -1e+10 cm^-3 = -2.1e-24 N_tot" in text, text
    text = reconstruction_failure(flux_only, directions)
    assert "zero density has a non-zero flux" in text and "(species nu_tau): |F| = 1e+10 cm^-3" in text, text
    text = reconstruction_failure(beamed, directions)
    assert "flux factor 1.0000 >= 0.95: not representable (species nubar_e)" in text, text


def test_the_numpy_fallback_says_that_threads_have_no_effect(tmp_path):
    """`dodo simulate OUT --random 1 --ncell 24 --threads 2` (auto backend; 24 cells is no power of
    two): "using the NumPy kernel: ncell = 24 is not a power of two ..." and the run went on, on one
    thread, --threads 2 dropped without a word (with --backend numpy it is refused). Now the line says
    it has no effect. (A stable state: dropped before any run, so nothing is integrated here.)"""
    pytest.importorskip("h5py")
    from dodo.qke import campaign
    from dodo.qke.solver import SolverConfig

    stable = np.array([[1.0, 0, 0, 0.1]] * 6) * 1e33
    said = []
    for threads in (2, 1):
        with pytest.raises(campaign.NoValidStateError):
            campaign.simulate_states(stable[None], str(tmp_path / "out.h5"), SolverConfig(ncell=24, nphi_equator=8),
                                     batch_size=2, threads=threads, report=said.append)
    fallback = [line for line in said if line.startswith("using the NumPy kernel")]
    assert len(fallback) == 2, said
    assert fallback[0].endswith("it steps on one thread, so --threads 2 has no effect"), fallback[0]
    assert "--threads" not in fallback[1], fallback[1]


def test_a_run_that_never_saturated_says_so_beside_t_end_over_t_sat():
    """A history growing exponentially through Rhea's window up to its last sample (an end time of
    20-40 growth times: the growth rate is measured, the peak is the last sample) was dropped as "not
    saturated early enough: t_end = 1.00 t_sat < 3.0" alone: t_sat was merely the last sample. Now the
    reason adds that the off-diagonal was still growing at the end time and that the end time is too
    short; a run that saturated too late (its peak before the end) keeps the words it had."""
    from dodo.qke.asymptotic import asymptotic_states

    time = np.linspace(0.0, 25.0, 400)[None]
    four_flux = np.ones((1, 400, 2, 3, 4))
    growing = 1e-9 * np.exp(time)
    state = asymptotic_states(time, four_flux, growing)
    assert state.reason[0].startswith("not saturated early enough: t_end = 1.00 t_sat < 3.0: the flavour "
                                      "off-diagonal was still growing at the end time"), state.reason[0]
    assert "the end time is too short" in state.reason[0]
    saturated = np.minimum(growing, 1e-9 * np.exp(20.0))  # the peak reached at t = 20, flat after
    saturated[0, -1] *= 0.5
    state = asymptotic_states(time, four_flux, saturated)
    assert state.reason[0].startswith("not saturated early enough: t_end = 1.2"), state.reason[0]
    assert "still growing" not in state.reason[0]


def test_validate_emu32_compares_box3d_on_the_states_the_solver_kept(tmp_path, monkeypatch):
    """`python -m dodo.qke.validate emu32 --reference MINE.h5` (a user's own Emu-layout reference) with
    a state the solver drops (here its end time, 1e-30 s): the report's solver error was the mean over
    the valid states, Box3D's the mean over all of them, printed side by side as if of the same states
    (in the probe, two states of a `dodo simulate` output: Box3D 0.0108 over both, the solver 0.0044
    over one; over that one Box3D is at 0.0163). Now both are over the valid states."""
    h5py = pytest.importorskip("h5py")
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.states import box_setup
    from dodo.qke import validate
    from dodo.qke.solver import SolverConfig
    from dodo.qke.validate import box3d_prediction, density_error, validate_emu32

    # Emu's 64 cells x 92 directions made this test take 10 s; the report's arithmetic is the same at 16 x 24.
    monkeypatch.setattr(validate, "SolverConfig", functools.partial(SolverConfig, ncell=16, nphi_equator=8))
    _, _, end, rate = box_setup(CROSSING, uniform_sphere(8), 16, axis="z", box_length_cm=4.0)
    other = CROSSING.copy()
    other[3, 0] *= 1.2  # another state (its Box3D error differs), dropped by its end time
    states = np.array([CROSSING, other])
    final = states.copy()
    final[:, [0, 3], 0] *= 0.8  # any answer: e and ebar converted to heavy leptons
    final[:, [1, 2, 4, 5], 0] += 0.1 * states[:, [0, 3], 0].repeat(2, axis=1)
    reference = str(tmp_path / "mine.h5")
    with h5py.File(reference, "w") as f:
        f["F4_initial(1|ccm)"], f["F4_final(1|ccm)"] = _emu_layout(states), _emu_layout(final)
        f["growthRate(1|s)"], f["linear_growthRate_box(1|s)"] = np.full(2, rate), np.full(2, rate)
        f["tend(s)"], f["walltime(s)"] = np.array([end, 1e-30]), np.ones(2)
        f["rotation_R"] = np.tile(np.eye(3), (2, 1, 1))
    report = validate_emu32(reference, str(tmp_path / "out.h5"), batch_size=1, flavour_cfl=1.0, seed=0,
                            print_summary=False)
    assert report["nvalid"] == 1 and report["per_state_error"][1] != report["per_state_error"][1]  # NaN: dropped
    box3d = box3d_prediction(states)
    if box3d is not None:
        expected = density_error(box3d, final, states)[0]
        assert abs(density_error(box3d, final, states)[1] - expected) > 1e-3 * expected  # the two states differ
        assert report["box3d_vs_emu_mean_abs_dn_over_ntot"] == pytest.approx(expected, rel=1e-12)
    assert report["solver_vs_emu_mean_abs_dn_over_ntot"] == pytest.approx(report["per_state_error"][0], rel=1e-12)


def test_linear_only_names_its_dropped_states_on_stderr_as_a_full_run_does(tmp_path, capsys):
    """`dodo simulate OUT --input F.h5 --linear-only` with a stable state and one of a negative density
    beside a crossing state said "3/3 states processed (1 labelled)" and "wrote OUT: 1 of 3 states
    labelled", the reasons only in the file's `dropped` attribute, where a full run prints "dropped state
    i: reason" for each. Now the labeller prints them too (with -q neither does)."""
    h5py = pytest.importorskip("h5py")
    stable = np.array([[1.0, 0, 0, 0.1]] * 6) * 1e33
    negative = CROSSING.copy()
    negative[5, 0] = -1.0
    source = str(tmp_path / "in.h5")
    with h5py.File(source, "w") as f:
        f["F4_initial(1|ccm)"] = _emu_layout([CROSSING, stable, negative])
    output = str(tmp_path / "labels.h5")
    assert _run_cli(["simulate", output, "--input", source, "--linear-only", "--ncell", "16", "--nphi", "8"]) == 0
    err = capsys.readouterr().err
    assert "dropped state 1: state is linearly stable: nothing to simulate" in err, err
    assert ("dropped state 2: its angular distribution cannot be reconstructed: number densities must be "
            "non-negative (species nubar_tau)") in err, err
    assert _rows(output)["input_index"].tolist() == [0]
    quiet = str(tmp_path / "quiet.h5")
    assert _run_cli(["simulate", quiet, "--input", source, "--linear-only", "--ncell", "16", "--nphi", "8", "-q"]) == 0
    assert capsys.readouterr().err == ""
