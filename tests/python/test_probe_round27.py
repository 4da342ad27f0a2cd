"""Outside probe, round 27 (docs/reliability_python.md, section 29)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import digest, refused, run_tool

REPO = Path(__file__).resolve().parents[2]


# --- dodo simulate: direction sets too coarse to hold a state ---------------------------------------------

@pytest.mark.parametrize("nphi, directions", [(1, 2), (2, 2), (3, 3)])
def test_simulate_refuses_an_nphi_whose_directions_lie_in_one_plane(capsys, tmp_path, nphi, directions):
    """`dodo simulate --nphi 2` (or 3) ran, then dropped every state as "the maximum-entropy fit did
    not converge", blaming the states: 2 or 3 directions in the equatorial plane hold no flux out of
    it. Now refused before any work, naming the count."""
    output = tmp_path / "out.h5"
    message = refused(capsys, ["simulate", str(output), "--random", "2", "--nphi", str(nphi), "--linear-only", "-q"],
                      "--nphi")
    assert f"gives {directions} directions, all in one plane" in message
    assert not output.exists()


def test_simulate_refuses_a_zero_or_negative_nphi_with_the_bound():
    from dodo.qke.solver import MIN_NPHI_EQUATOR, SolverConfig

    for nphi in (0, -3):
        with pytest.raises(ValueError, match=f"must be >= {MIN_NPHI_EQUATOR}; got {nphi}"):
            SolverConfig(nphi_equator=nphi).validate()
    SolverConfig(nphi_equator=MIN_NPHI_EQUATOR).validate()  # an octahedron: accepted


def test_a_state_with_no_fit_on_a_coarse_set_is_told_a_larger_nphi_may_fit_it():
    """The reason a state is dropped names the direction count and the way out."""
    from dodo.qke.campaign import RECONSTRUCTION_FAILED, reconstruction_failure
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.states import family_states

    states = family_states("emu", 30, np.random.default_rng(0))
    directions = uniform_sphere(8)
    reason = reconstruction_failure(states[21], directions)  # no fit on 24 directions (test_simulate_and_score_inputs)
    assert reason.startswith(RECONSTRUCTION_FAILED)
    assert f"on {len(directions)} directions; a larger --nphi may fit it" in reason


# --- the gate studies: how the out-of-fold file was given, and where --save writes ---------------------

_tool = run_tool  # tests/python/cli_helpers.py


def _last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def _study_config(tmp_path) -> Path:
    """The default ensemble config with its table moved to a text file under tmp_path: a study
    that got past its checks fails reading the table, before any fit or write."""
    table = tmp_path / "table.h5"
    table.write_text("not a table\n")
    config = tmp_path / "ensemble.yaml"
    text = (REPO / "training/configs/ensemble_default.yaml").read_text().replace("path: pdata/qke.h5",
                                                                               f"path: {table}", 1)
    assert str(table) in text
    config.write_text(text)
    return config


def _out_of_fold_file(path: Path) -> Path:
    from dodo._atomic import numpy_savez_atomic
    from dodo.training.label_noise import OUT_OF_FOLD_KEYS

    numpy_savez_atomic(path, {key: np.zeros(4) for key in OUT_OF_FOLD_KEYS})
    return path


def test_the_out_of_fold_reader_names_the_option_the_file_came_from(tmp_path):
    """`gate_study.py --load notes.npz` (and learned/noise_gate_study.py --oof) answered
    `noise.oof: notes.npz is not a gate study's out-of-fold file`, naming a config key the user never
    set (round 26, left). Now the option the file was given as; the config's key keeps its name."""
    pytest.importorskip("torch")
    notes = tmp_path / "notes.npz"
    notes.write_text("not an npz\n")
    for tool, option in (("gate_study.py", "--load"), ("learned_gate_study.py", "--oof"),
                         ("noise_gate_study.py", "--oof")):
        last = _last_line(_tool(tool, option, notes, cwd=REPO))
        assert f"{option}: {notes} is not a gate study's out-of-fold file" in last and "noise.oof" not in last, last
    from dodo.training.label_noise import read_out_of_fold

    with pytest.raises(ValueError, match=r"^noise\.oof: "):
        read_out_of_fold(str(notes))


@pytest.mark.parametrize("tool", ["gate_study.py", "noise_gate_study.py"])
def test_study_save_never_writes_over_its_inputs(tmp_path, tool):
    """`noise_gate_study.py --save` (and gate_study.py --save) wrote over whatever path it was given,
    its --oof file, config or table included (round 26, left). Now refused before any work, the file kept."""
    pytest.importorskip("torch")
    config = _study_config(tmp_path)
    oof = _out_of_fold_file(tmp_path / "oof.npz")
    extra = ["--oof", oof] if tool == "noise_gate_study.py" else []
    targets = [config, tmp_path / "table.h5"] + ([oof] if extra else [])
    for target in targets:
        before = digest(target)
        last = _last_line(_tool(tool, "--config", config, *extra, "--save", target, cwd=tmp_path))
        assert f"output {target} is the same file as the input" in last, last
        assert digest(target) == before


@pytest.mark.parametrize("tool", ["gate_study.py", "noise_gate_study.py"])
def test_study_save_keeps_an_unrelated_file_unless_overwrite(tmp_path, tool):
    pytest.importorskip("torch")
    config = _study_config(tmp_path)
    extra = ["--oof", _out_of_fold_file(tmp_path / "oof.npz")] if tool == "noise_gate_study.py" else []
    notes = tmp_path / "notes.txt"
    notes.write_text("a week of notes\n")
    last = _last_line(_tool(tool, "--config", config, *extra, "--save", notes, cwd=tmp_path))
    assert f"{notes} exists and is not" in last and "--overwrite" in last, last
    assert notes.read_text() == "a week of notes\n"
    # With --overwrite the guard lets it through: the run goes on to the table (a text file here).
    last = _last_line(_tool(tool, "--config", config, *extra, "--save", notes, "--overwrite", cwd=tmp_path))
    assert "table.h5" in last and "exists and is not" not in last, last
    # An earlier --save's own kind is replaced without --overwrite (a rerun).
    own = _out_of_fold_file(tmp_path / "earlier.npz") if tool == "gate_study.py" else tmp_path / "earlier.npy"
    if tool == "noise_gate_study.py":
        np.save(own, np.zeros(3))
    last = _last_line(_tool(tool, "--config", config, *extra, "--save", own, cwd=tmp_path))
    assert "table.h5" in last and "exists and is not" not in last, last


# --- dodo apply: cells the closure rejects ---------------------------------------------------------------

def test_apply_leaves_out_cells_the_closure_rejects_as_score_does(capsys, tmp_path):
    """`dodo apply` on an Emu file whose first states have |F| > n scored the closure's clamped
    fallback as its answer and printed `largest conservation violation / N_tot: 1.5e+00`: the
    closure's own projection onto the flux cone read as a conservation failure. Now those cells are
    left out of every number, counted (dodo score has done so since round six); all of them: refused
    before -o is written."""
    import h5py

    from cli_helpers import emu_file, run

    with h5py.File(REPO / "tests/data/qke/emu_1d_validation.h5", "r") as handle:
        initial = handle["F4_initial(1|ccm)"][:8]
        final = handle["F4_final(1|ccm)"][:8]
    initial[:5, :3] *= 5.0  # (x, y, z, t): the spatial fluxes of five states past their densities
    path = emu_file(tmp_path / "superluminal.h5", initial, final)
    code, out, err = run(capsys, ["apply", str(path), "--grid", "2x2x2", "--max-speed", "0", "--threads", "1", "-q"])
    assert code == 0, err
    assert "cells scored: 3 of 8 (5 whose input the closure rejects as unphysical" in out, out
    violation = float(out.split("largest conservation violation / N_tot: ")[1].split(";")[0])
    assert violation < 1e-12, out
    assert "FLUX_FACTOR 5" in out

    initial[:, :3] *= 5.0
    every = emu_file(tmp_path / "all_rejected.h5", initial, final)
    output = tmp_path / "cells.h5"
    refused(capsys, ["apply", str(every), "--grid", "2x2x2", "--threads", "1", "-q", "-o", str(output)],
            "all_rejected.h5", "rejects every cell")
    assert not output.exists()


# --- dodo simulate --random: flux factors too small to cross ----------------------------------------------

def test_random_states_too_near_isotropy_to_cross_are_refused_early(capsys, monkeypatch, tmp_path):
    """`dodo simulate OUT --random 2 --max-flux-factor 0.001` drew 100,000 states (about ten
    minutes, not a line), then `found only 0 crossing states in 100000 draws`, naming no option. Now
    a draw that finds no crossing state at all stops after DRAWS_BEFORE_GIVING_UP draws (2,000;
    50 here, to be quick), naming --max-flux-factor."""
    import dodo.qke.states as states

    monkeypatch.setattr(states, "DRAWS_BEFORE_GIVING_UP", 50, raising=False)
    with pytest.raises(ValueError, match="no crossing state in the first 50 draws with flux factors below 0.001"):
        states.random_crossing_states(2, np.random.default_rng(0), max_flux_factor=1e-3, max_tries=200)
    output = tmp_path / "out.h5"
    line = refused(capsys, ["simulate", str(output), "--random", "2", "--max-flux-factor", "0.001", "--nphi", "6",
                            "--ncell", "8", "-q"], "--max-flux-factor")
    assert "no crossing state" in line and not output.exists()
    # Families that cross are drawn as before (the same first states).
    np.testing.assert_array_equal(states.random_crossing_states(3, np.random.default_rng(1)),
                                  states.random_crossing_states(5, np.random.default_rng(1))[:3])


def _validation_states(count: int):
    import h5py

    with h5py.File(REPO / "tests/data/qke/emu_1d_validation.h5", "r") as handle:
        return handle["F4_initial(1|ccm)"][:count], handle["tend(s)"][:count]


def test_simulate_names_the_end_time_that_is_not_positive(capsys, tmp_path):
    """`--use-input-end-time` with a tend(s) of zeros (or negative, NaN) said `... one positive, finite
    end time per state (2); got shape (2,)`: the right shape, named as the fault."""
    from cli_helpers import emu_file

    initial, _ = _validation_states(2)
    for name, end in (("zero", [1e-9, 0.0]), ("negative", [-1e-9, -2e-9]), ("nan", [np.nan, 1e-9])):
        path = emu_file(tmp_path / f"{name}.h5", initial, **{"tend(s)": np.array(end)})
        line = refused(capsys, ["simulate", str(tmp_path / "out.h5"), "--input", str(path), "--use-input-end-time",
                                "--ignore-rotation", "--nphi", "6", "--ncell", "8", "-q"], path.name, "tend(s)")
        bad = int(np.flatnonzero(~(np.isfinite(end) & (np.array(end) > 0)))[0])
        assert f"state {bad} has {end[bad]:g} s" in line and "got shape" not in line, line


def test_a_state_that_loses_its_fit_in_the_box_setup_gets_the_same_reason(capsys, tmp_path):
    """A state whose fit fails only in its box setup (here: state 1 of the validation file on the 14
    directions of --nphi 6, with an end time too short to grow) was dropped with the fitter's own
    `maximum-entropy reconstruction did not converge (flux factor too close to the set's limit?)`,
    unlike the same failure found before the run."""
    from cli_helpers import emu_file, run

    from dodo.qke.campaign import RECONSTRUCTION_FAILED

    initial, _ = _validation_states(2)
    path = emu_file(tmp_path / "short.h5", initial, **{"tend(s)": np.full(2, 1e-300)})
    code, _, err = run(capsys, ["simulate", str(tmp_path / "out.h5"), "--input", str(path), "--use-input-end-time",
                                "--ignore-rotation", "--nphi", "6", "--ncell", "8", "-q"])
    assert code == 2, err
    assert f"state 1: {RECONSTRUCTION_FAILED} on 14 directions; a larger --nphi may fit it" in err, err
    assert "flux factor too close" not in err


def test_simulate_on_a_full_disk_says_what_of_the_run_is_kept(capsys, monkeypatch, tmp_path):
    """`dodo simulate` whose checkpoint could not be written (a full disk: a 64 KiB tmpfs in the
    probe) said only `[Errno 28] No space left on device: 'OUT.partial.npz'`. Now the message says
    whether an earlier checkpoint is kept and that rerunning resumes from it."""
    import errno

    from cli_helpers import run

    import dodo.qke.campaign as campaign

    real_write, calls = campaign.atomic_write, []

    def full_after_the_first(path, write):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, write)

    monkeypatch.setattr(campaign, "atomic_write", full_after_the_first)
    output = tmp_path / "out.h5"
    argv = ["simulate", str(output), "--random", "2", "--seed", "3", "--nphi", "6", "--ncell", "8", "--batch-size", "1",
            "-q"]
    code, _, err = run(capsys, argv)
    checkpoint = Path(f"{output}.partial.npz")
    assert code == 2 and "Traceback" not in err, err
    assert f"cannot write the checkpoint {checkpoint} (No space left on device); its earlier version" in err, err
    assert "rerun the same command to resume from it" in err and checkpoint.exists()
    # A full disk at the first batch: nothing is kept, and the message does not promise a resume.
    checkpoint.unlink()
    calls.append("every call fails from now on")
    code, _, err = run(capsys, argv)
    assert code == 2 and "no earlier checkpoint exists" in err and "resume" not in err, err


def test_simulate_whose_database_cannot_be_written_points_to_the_checkpoint(capsys, monkeypatch, tmp_path):
    """The database written after each batch, on a full disk: `[Errno 28] writing
    .out.h5.vm.8315.vv7no_pz.tmp: No space left on device`, naming a temporary. Now OUT, the cause,
    that an earlier OUT is untouched and that the checkpoint resumes the run; the rerun does."""
    import errno

    from cli_helpers import run

    import dodo.qke.campaign as campaign

    def full(output, *database):
        raise OSError(errno.ENOSPC, f"writing .{Path(output).name}.vm.1.tmp: No space left on device")

    monkeypatch.setattr(campaign, "_write_database", full)
    output = tmp_path / "out.h5"
    argv = ["simulate", str(output), "--random", "2", "--seed", "3", "--nphi", "8", "--ncell", "16", "--batch-size",
            "1", "-q"]
    code, _, err = run(capsys, argv)
    assert code == 2 and "Traceback" not in err, err
    assert f"cannot write {output} (writing .out.h5.vm.1.tmp: No space left on device)" in err, err
    assert f"the checkpoint {output}.partial.npz holds the batches done" in err and not output.exists()
    monkeypatch.undo()
    code, _, err = run(capsys, argv)
    assert code == 0 and output.exists() and not Path(f"{output}.partial.npz").exists(), err


def test_a_lock_file_that_cannot_be_written_is_named_and_removed(monkeypatch, tmp_path):
    """On a disk with a few bytes left (`dodo simulate --linear-only` onto a full 64 KiB tmpfs), the
    output's lock file was created but its pid could not be written: `[Errno 28] No space left on
    device`, naming no file (the buffered write failed again in close())."""
    import errno
    import os

    import dodo._atomic as atomic

    output = tmp_path / "labels.h5"

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match=f"cannot write the lock file {atomic.output_lock_path(output)}: No space left"):
        with atomic.exclusive_output(output, "dodo simulate"):
            pytest.fail("the block ran without its lock")
    monkeypatch.undo()
    assert not atomic.output_lock_path(output).exists()
    with atomic.exclusive_output(output, "dodo simulate"):  # and a later run takes the lock
        assert atomic.output_lock_path(output).read_text() == f"{os.getpid()}\ndodo simulate"  # pid, then command


def test_a_label_file_that_cannot_be_written_says_so_by_name(capsys, monkeypatch, tmp_path):
    import errno

    from cli_helpers import run

    import dodo.qke.growth_labels as growth_labels

    def full(output, *rest):
        raise OSError(errno.ENOSPC, f"writing .{Path(output).name}.vm.1.tmp: No space left on device")

    monkeypatch.setattr(growth_labels, "_write", full)
    output = tmp_path / "labels.h5"
    code, _, err = run(capsys, ["simulate", str(output), "--random", "2", "--seed", "3", "--nphi", "8", "--linear-only",
                                "-q"])
    assert code == 2 and "Traceback" not in err, err
    assert f"cannot write {output} (writing .labels.h5.vm.1.tmp: No space left on device); no labels were written" in err


def test_a_run_killed_on_one_rotation_does_not_resume_on_another(capsys, monkeypatch, tmp_path):
    """`dodo simulate OUT --input A.h5` killed after its first batch, then `dodo simulate OUT --input
    B.h5` with the same initial states but other rotation_R: the checkpoint recorded only that there
    were rotations, so B's run resumed A's states, simulated along other axes, into one database.
    Now refused, the checkpoint kept, naming rotation_R; A's own rerun resumes."""
    import h5py

    from cli_helpers import emu_file, run

    import dodo.qke.campaign as campaign

    with h5py.File(REPO / "tests/data/qke/emu_1d_validation.h5", "r") as handle:
        initial, rotation = handle["F4_initial(1|ccm)"][:2], handle["rotation_R"][:2]
    first = emu_file(tmp_path / "a.h5", initial, rotation_R=rotation)
    second = emu_file(tmp_path / "b.h5", initial, rotation_R=rotation[::-1])
    output = tmp_path / "out.h5"
    small = ["--nphi", "8", "--ncell", "16", "--batch-size", "1", "-q"]
    real_batch, batches = campaign._simulate_batch, []

    def interrupted_after_one(*args, **kwargs):
        batches.append(1)
        if len(batches) > 1:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(campaign, "_simulate_batch", interrupted_after_one)
    code, _, err = run(capsys, ["simulate", str(output), "--input", str(first), *small])
    assert code == 130, err
    monkeypatch.undo()
    checkpoint = Path(f"{output}.partial.npz")
    before = digest(checkpoint)
    line = refused(capsys, ["simulate", str(output), "--input", str(second), *small], "rotation differs")
    assert "does not belong to this campaign" in line and digest(checkpoint) == before
    code, _, err = run(capsys, ["simulate", str(output), "--input", str(first), *small[:-1]])
    assert code == 0 and "resuming" in err, err


# --- python -m dodo.qke.validate emu32 on references that are not whole ----------------------------------

def _reference_with(path: Path, name: str, change) -> Path:
    import shutil

    import h5py

    shutil.copyfile(REPO / "tests/data/qke/emu_1d_validation.h5", path)
    with h5py.File(path, "r+") as handle:
        value = handle[name][()]
        del handle[name]
        handle[name] = change(value)
    return path


@pytest.mark.parametrize("name, change, expected", [
    ("F4_initial(1|ccm)", lambda v: v[:5], "F4_final(1|ccm) holds 32 states and F4_initial(1|ccm) 5"),
    ("tend(s)", lambda v: v * 0, "F4_initial(1|ccm) and tend(s) must be finite, and tend(s) positive"),
    ("rotation_R", lambda v: v * 0, "rotation_R: matrix 0 (and 31 more) is not a proper rotation"),
    ("walltime(s)", lambda v: np.array([b"x"] * len(v)), "walltime(s) must hold numbers"),
    ("growthRate(1|s)", lambda v: v[:4], "growthRate(1|s) must hold one value per state (32); got shape (4,)"),
], ids=["five-initial-states", "zero-end-times", "zero-rotations", "strings", "short-growth-rates"])
def test_validate_emu32_names_the_reference_and_what_is_wrong_with_it(capsys, tmp_path, name, change, expected):
    """`python -m dodo.qke.validate emu32 --reference R` read R's datasets as they were: five states
    of F4_initial ended in NumPy's `operands could not be broadcast together with shapes (5,) (32,)`,
    zero end times in `end times must be positive and finite` (no file named), and matrices of zeros
    as rotation_R were run (dodo simulate --input refuses them). Now one line naming R, before any work."""
    from dodo.qke.validate import main

    reference = _reference_with(tmp_path / "reference.h5", name, change)
    output = tmp_path / "validation.h5"
    code = main(["emu32", "--reference", str(reference), "--output", str(output), "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{reference}: {expected}" in err, err
    assert not output.exists() and not Path(f"{output}.partial.npz").exists()


def test_linear_only_refuses_the_emu_filter_it_does_not_apply(capsys, tmp_path):
    """`dodo simulate OUT --random 2 --linear-only --hamiltonian-filter emu` ran, exit 0: the labels
    are the continuum linear theory's whatever the filter, and the label file did not record it.
    Now refused; `none` (what the labels are) and no filter still run."""
    import h5py

    from cli_helpers import run

    output = tmp_path / "labels.h5"
    small = ["--random", "2", "--nphi", "8", "--linear-only", "-q"]
    refused(capsys, ["simulate", str(output), *small, "--hamiltonian-filter", "emu"], "--hamiltonian-filter emu")
    assert not output.exists()
    for extra in ([], ["--hamiltonian-filter", "none", "--overwrite"]):
        assert run(capsys, ["simulate", str(output), *small, *extra])[0] == 0
    full = tmp_path / "full.h5"  # a full run's default is still Emu's filter
    assert run(capsys, ["simulate", str(full), "--random", "1", "--nphi", "8", "--ncell", "16", "-q"])[0] == 0
    with h5py.File(full, "r") as handle:
        assert '"hamiltonian_filter": "emu"' in handle.attrs["settings"]
