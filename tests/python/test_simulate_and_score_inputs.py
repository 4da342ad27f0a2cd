"""`dodo simulate` and `dodo score` on inputs an outside probe sent (round six): every one a clear
error or a documented result, never a traceback, a silently wrong answer, a lost file or a hang."""
import json
import os

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from cli_helpers import digest, interrupted_linear_only_run, refused, run  # noqa: E402
from dodo.qke.directions import uniform_sphere  # noqa: E402
from dodo.qke.io import write_emu_database  # noqa: E402
from dodo.qke.states import family_states  # noqa: E402

SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]


def emu_input(path, states, **extra):
    write_emu_database(str(path), {"initial": states, "final": states, "final_stddev": 0 * states,
                                   "growth_rate": np.ones(len(states)), **extra}, {})
    return str(path)


@pytest.mark.parametrize("option", [["--axis", "x"], ["--box-length", "4"]])
def test_linear_only_refuses_options_it_cannot_honour(capsys, tmp_path, option):
    """--linear-only labels each state along its fastest axis in its own box: an --axis or a
    --box-length would have been ignored, exit 0, with labels of another box."""
    refused(capsys, ["simulate", str(tmp_path / "x.h5"), "--random", "1", "--linear-only", *option, *SMALL],
            "--linear-only", "--axis", "--box-length")
    assert not (tmp_path / "x.h5").exists()


def test_linear_only_never_replaces_an_unfinished_file_of_other_settings(capsys, tmp_path, monkeypatch):
    """The label file is its own checkpoint: an unfinished one of other settings (or an unreadable
    file) is left untouched with exit 2; a finished one is replaced, as a full run replaces its output."""
    output = tmp_path / "labels.h5"
    # Interrupted (Ctrl-C: one line and exit 130, docs/reliability_python.md section 11) after the first chunk.
    interrupted_linear_only_run(capsys, monkeypatch, output, SMALL)
    before = digest(output)
    refused(capsys, ["simulate", str(output), "--random", "4", "--linear-only", "--ncell", "18", "--nphi", "8",
                     "--quiet"], str(output), "unfinished", "left untouched")
    assert digest(output) == before
    assert run(capsys, ["simulate", str(output), "--random", "4", "--linear-only", *SMALL])[0] == 0  # resumes
    with h5py.File(output, "r") as f:
        assert f.attrs["complete"]
    # Finished: kept unless --overwrite (kill sweep, docs/reliability_python.md section 14), then replaced.
    refused(capsys, ["simulate", str(output), "--random", "3", "--linear-only", *SMALL], "complete solver database")
    assert run(capsys, ["simulate", str(output), "--random", "3", "--linear-only", *SMALL, "--overwrite"])[0] == 0
    with h5py.File(output, "r") as f:
        assert f.attrs["nstates_requested"] == 3
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an HDF5 file")
    refused(capsys, ["simulate", str(garbage), "--random", "2", "--linear-only", *SMALL], "cannot be read")
    assert garbage.read_bytes() == b"not an HDF5 file"


def test_a_state_that_cannot_be_reconstructed_is_dropped_not_the_whole_run(capsys, tmp_path):
    """State 21 of the emu family's seed-0 draw has no maximum-entropy fit on the 24-direction set:
    it is dropped with its reason, the other states are labelled / simulated."""
    from dodo.qke.campaign import RECONSTRUCTION_FAILED, relative_cost

    states = family_states("emu", 30, np.random.default_rng(0))[[20, 21, 22]]
    cost = relative_cost(states, uniform_sphere(8), None)
    assert np.isnan(cost[1]) and np.all(np.isfinite(cost[[0, 2]]))
    source = emu_input(tmp_path / "in.h5", states)
    for extra in (["--linear-only"], []):
        output = tmp_path / f"out{len(extra)}.h5"
        assert run(capsys, ["simulate", str(output), "--input", source, "--ignore-rotation", *extra, *SMALL])[0] == 0
        with h5py.File(output, "r") as f:
            dropped = json.loads(f.attrs["dropped"])
            assert list(dropped) == ["1"] and dropped["1"].startswith(RECONSTRUCTION_FAILED)
            assert list(f["input_index"][()]) == [0, 2]


def test_a_state_with_a_negative_density_or_no_flux_limit_is_dropped_naming_its_defect(capsys, tmp_path):
    """Probe round thirteen: such states were dropped as 'the maximum-entropy fit did not converge'."""
    states = family_states("emu", 30, np.random.default_rng(0))[[20, 22, 22]].copy()
    states[0, 3, 0] = -abs(states[0, 3, 0])  # nubar_e with a negative density
    states[1, 1, 3] = 1.2 * states[1, 1, 0]  # nu_mu with |F| > n
    source = emu_input(tmp_path / "in.h5", states)
    for extra in (["--linear-only"], []):
        output = tmp_path / f"out{len(extra)}.h5"
        assert run(capsys, ["simulate", str(output), "--input", source, "--ignore-rotation", *extra, *SMALL])[0] == 0
        with h5py.File(output, "r") as f:
            dropped = json.loads(f.attrs["dropped"])
            assert list(f["input_index"][()]) == [2]
        assert "non-negative" in dropped["0"] and "flux factor" in dropped["1"], dropped


def test_a_box_far_below_the_instability_scale_is_dropped_at_once():
    """At |k| many orders beyond the self-interaction scale the eigenvalues' rounding read as growth
    (a 1e-15 cm box: a run of ~1e18 steps followed); such growth is noise: no unstable box mode."""
    from dodo.qke.linear import box_growth_rate
    from dodo.qke.states import box_setup

    F = family_states("emu", 1, np.random.default_rng(0))[0]
    assert box_growth_rate(F, uniform_sphere(8), 1e-15, 16)[0] == 0.0
    with pytest.raises(ValueError, match="no unstable box mode"):
        box_setup(F, uniform_sphere(8), 16, box_length_cm=1e-15)
    assert box_growth_rate(F, uniform_sphere(8), 4.0, 16)[0] > 0


@pytest.mark.parametrize("rotation, message", [
    (lambda R: 1.01 * R, "not a proper rotation"), (lambda R: 0 * R, "not a proper rotation"),
    (lambda R: np.where(np.arange(9).reshape(3, 3) == 4, np.nan, R), "non-finite"),
    (lambda R: R[:, :2], "shape"), (lambda R: R[:1], "shape"),
])
def test_simulate_refuses_a_rotation_that_is_not_one_per_state(capsys, tmp_path, rotation, message):
    """A scaled rotation_R changed the summed flux by 2.4e-3 N_tot with exit 0; others dropped every
    state blaming the state. Now one clear error naming rotation_R, and --ignore-rotation."""
    states = family_states("emu", 2, np.random.default_rng(1))
    R = rotation(np.tile(np.eye(3), (2, 1, 1)))
    source = str(tmp_path / "in.h5")
    with h5py.File(source, "w") as f:
        f["F4_initial(1|ccm)"] = np.moveaxis(states.reshape(2, 2, 3, 4), -1, 1)
        f["rotation_R"] = R
    for extra in ([], ["--linear-only"]):
        refused(capsys, ["simulate", str(tmp_path / "x.h5"), "--input", source, *extra, *SMALL],
                "rotation_R", message, "--ignore-rotation")


@pytest.mark.parametrize("tend", [np.array([1e-9]), np.array([1e-9, -1.0]), np.array([1e-9, np.nan])])
def test_simulate_refuses_input_end_times_that_are_not_one_positive_time_per_state(capsys, tmp_path, tend):
    states = family_states("emu", 2, np.random.default_rng(1))
    source = emu_input(tmp_path / "in.h5", states)
    with h5py.File(source, "a") as f:
        if "tend(s)" in f:
            del f["tend(s)"]
        f["tend(s)"] = tend
    refused(capsys, ["simulate", str(tmp_path / "x.h5"), "--input", source, "--use-input-end-time", *SMALL], "tend(s)")


@pytest.mark.parametrize("command", ["simulate", "score"])
def test_a_group_or_strings_where_numbers_belong_is_one_line(capsys, tmp_path, command):
    for kind in ("group", "strings"):
        path = str(tmp_path / f"{kind}.h5")
        with h5py.File(path, "w") as f:
            if kind == "group":
                f.create_group("F4_initial(1|ccm)")
            else:
                f["F4_initial(1|ccm)"] = np.array([b"a", b"b"])
            f["F4_final(1|ccm)"] = np.zeros((1, 4, 2, 3))
        argv = ["simulate", str(tmp_path / "x.h5"), "--input", path, *SMALL] if command == "simulate" else \
            ["score", "box3d", path]
        refused(capsys, argv, path, "F4_initial(1|ccm)")


@pytest.mark.parametrize("command", [["score", "box3d", "DATA"], ["simulate", "OUT", "--random", "1", *SMALL]])
def test_a_negative_seed_is_refused_by_name(capsys, tmp_path, command):
    argv = [str(tmp_path / "x.h5") if a == "OUT" else a for a in command]
    argv = [os.path.join(os.path.dirname(__file__), "..", "data", "qke", "emu_1d_validation.h5") if a == "DATA" else a
            for a in argv]
    refused(capsys, [*argv, "--seed", "-1"], "--seed")


def test_score_leaves_out_states_the_closure_rejects_and_scores_a_file_named_twice_once(capsys, tmp_path):
    """A rejected state (negative density) was scored as the closure's fallback, its growth ratio 0
    in the statistics; a file named twice was counted twice (narrower intervals)."""
    states = family_states("emu", 4, np.random.default_rng(2))
    states[0, 0, 0] = -abs(states[0, 0, 0])  # a negative nu_e density: rejected by the closure
    path = emu_input(tmp_path / "data.h5", states)
    code, out, _ = run(capsys, ["score", "default", path, path, "--bootstrap", "100", "--json", "-"])
    assert code == 0
    report = json.loads(out)  # --json -: the JSON on stdout, no file named "-"
    assert not os.path.exists("-")
    assert report["n_states"] == 4 and report["n_scored"] == 3 and report["left_out"]["indices"] == [0]
    assert any("closure rejected" in reason for reason in report["left_out"]["reasons"])
    assert report["growth_rate"]["n_states"] == 3


def test_a_finished_solver_database_is_not_replaced_without_overwrite(tmp_path, capsys):
    """Kill sweep (docs/reliability_python.md section 14): simulate replaced a complete database of
    other settings batch by batch; now it refuses unless --overwrite, naming the file's command."""
    import h5py

    out = tmp_path / "done.h5"
    with h5py.File(out, "w") as handle:
        handle.attrs.update({"complete": True, "solver": "{}", "nstates_valid": 32,
                             "command": "dodo simulate done.h5 --random 32 --seed 1"})
    before = digest(out)
    line = refused(capsys, ["simulate", str(out), "--random", "2", "--seed", "2", "-q"], out)
    assert "complete solver database (32 states" in line and "--seed 1" in line and "--overwrite" in line
    assert digest(out) == before
    # --max-cost 1 keeps one of the two states (0.39x NSM1's): a run dropping every state writes
    # nothing since round eighteen (docs/reliability_python.md section 20).
    code, _, err = run(capsys, ["simulate", str(out), "--random", "2", "--seed", "2", "-q", "--max-cost", "1",
                                "--overwrite"])
    assert code == 0, err
    with h5py.File(out, "r") as handle:
        assert json.loads(handle.attrs["source"])["random_seed"] == 2  # the new run's database
