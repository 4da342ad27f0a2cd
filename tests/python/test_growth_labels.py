"""Growth-rate labels in bulk (`dodo simulate --linear-only`) and the growth members trained on them."""
import json
import os

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")

from dodo.qke import growth_labels  # noqa: E402
from dodo.qke.directions import uniform_sphere  # noqa: E402
from dodo.qke.solver import SolverConfig  # noqa: E402
from dodo.qke.states import box_setup, family_states  # noqa: E402
from cli_helpers import interrupt_linear_labels_at  # noqa: E402
from test_qke_cli import run_cli  # noqa: E402

SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]


def test_linear_only_labels_are_the_full_runs_linear_rates(tmp_path):
    """Same seed and family: the same states and the same box-mode linear rates as a full run's set-up."""
    output = str(tmp_path / "labels.h5")
    assert run_cli(["simulate", output, "--random", "3", "--seed", "7", "--family", "emu", "--linear-only", *SMALL]) == 0
    states = family_states("emu", 3, np.random.default_rng(7))
    with h5py.File(output, "r") as f:
        assert f.attrs["kind"] == "linear_growth_labels" and f.attrs["complete"]
        assert "F4_final(1|ccm)" not in f  # labels only: no time integration
        index = f["input_index"][()]
        rates = f["linear_growthRate_box(1|s)"][()]
        from dodo.conventions import from_emu_layout

        np.testing.assert_array_equal(from_emu_layout(f["F4_initial(1|ccm)"][()]), states[index])
    assert len(index) >= 2
    for row, i in enumerate(index):
        expected = box_setup(states[i], uniform_sphere(8), 16)[3]
        assert rates[row] == pytest.approx(expected, rel=1e-12) and rates[row] > 0


def test_linear_only_resumes_after_a_crash(tmp_path, monkeypatch):
    states = family_states("emu", 5, np.random.default_rng(3))
    config = SolverConfig(ncell=16, nphi_equator=8)
    straight = growth_labels.linear_growth_labels(states, str(tmp_path / "straight.h5"), config, report=lambda m: None)
    real_setup = interrupt_linear_labels_at(monkeypatch, 4)
    output = str(tmp_path / "resumed.h5")
    with pytest.raises(KeyboardInterrupt):
        growth_labels.linear_growth_labels(states, output, config, report=lambda m: None)
    with h5py.File(output, "r") as f:
        assert f.attrs["nstates_processed"] == 2 and not f.attrs["complete"]
    messages = []
    monkeypatch.setattr(growth_labels, "box_setup", real_setup)
    resumed = growth_labels.linear_growth_labels(states, output, config, report=messages.append)
    assert any("resuming: 2 states" in m for m in messages)
    np.testing.assert_array_equal(resumed["input_index"], straight["input_index"])
    np.testing.assert_array_equal(resumed["linear_growth_rate"], straight["linear_growth_rate"])
    with h5py.File(output, "r") as f:
        assert f.attrs["complete"] and f.attrs["nstates_processed"] == 5


def test_linear_only_starts_from_an_inputs_box_axes_and_reaches_the_same_labels(tmp_path):
    """An input's rotation_R (a Dodo run's box axis: the best of the coarse search) starts the refined
    search in place of the 24 coarse axes: the same labels at about half the cost; an input end time
    is refused (no time integration)."""
    from dodo.qke.io import write_emu_database
    from dodo.qke.linear import fastest_wavevector
    from dodo.qke.states import rotation_to_z

    states = family_states("emu", 3, np.random.default_rng(1))
    search = uniform_sphere(8)  # SMALL's direction set (<= 54 directions: the search's own)
    rotations = np.array([rotation_to_z(fastest_wavevector(F, search, np.linspace(0.0, 1.0, 21), uniform_sphere(8))[1])
                          for F in states])
    source = str(tmp_path / "in.h5")
    write_emu_database(source, {"initial": states, "final": states, "final_stddev": 0 * states,
                                "growth_rate": np.ones(3), "rotation": rotations, "end_time": np.ones(3)}, {})
    started, searched = str(tmp_path / "started.h5"), str(tmp_path / "searched.h5")
    assert run_cli(["simulate", started, "--input", source, "--linear-only", *SMALL]) == 0
    assert run_cli(["simulate", searched, "--input", source, "--linear-only", "--ignore-rotation", *SMALL]) == 0
    with h5py.File(started, "r") as a, h5py.File(searched, "r") as b:
        assert "axis_start" in json.loads(a.attrs["settings"]) and "axis_start" not in json.loads(b.attrs["settings"])
        np.testing.assert_array_equal(a["input_index"][()], b["input_index"][()])
        np.testing.assert_allclose(a["linear_growthRate_box(1|s)"][()], b["linear_growthRate_box(1|s)"][()], rtol=1e-6)
    assert run_cli(["simulate", str(tmp_path / "x.h5"), "--input", source, "--linear-only", "--use-input-end-time",
                    *SMALL]) == 2


def rest_table(F, growth, with_density):
    """A training table (ensemble_train.table_from_rest) of cells F at rest; growth(proxy) gives the
    measured growth rates; without density, r = NaN (growth-label rows)."""
    import dodo
    from dodo.training.dataset import rest_frame_arrays
    from dodo.training.ensemble_train import table_from_rest

    u = np.tile([1.0, 0, 0, 0], (len(F), 1))
    box = dodo.box3d(F, u)
    rest = rest_frame_arrays(F, np.asarray(box.F_box), np.asarray(box.F_box), u, np.asarray(dodo.invariants(F, u)))
    rest["ntot"] = np.asarray(dodo.comoving_density(F, u), float)
    table = table_from_rest(rest, growth(np.asarray(box.growth_rate)), np.asarray(box.growth_rate),
                            np.array(["x_seed1.h5"] * len(F)), box3d=dodo.box3d_settings())
    if not with_density:
        table["r"] = np.full(len(F), np.nan)
    return table


def test_growth_members_learn_from_label_rows_and_survive_a_checkpoint(tmp_path):
    """Growth-only rows (r = NaN) train the growth members and never the density members."""
    from conftest import random_states

    from dodo.training.ensemble import predict
    from dodo.training.ensemble_train import EnsembleConfig, load_ensemble, save_checkpoint, train_on, training_arrays

    rng = np.random.default_rng(11)
    table_of = rest_table
    F_density = random_states(rng, 40, max_flux_factor=0.6, mu_equals_tau=True)
    F_labels = random_states(rng, 400, max_flux_factor=0.6, mu_equals_tau=True)
    # Label rows say growth = 2 x proxy; the density rows carry no growth information (NaN).
    density = table_of(F_density, lambda proxy: np.full(len(proxy), np.nan), True)
    labels = table_of(F_labels, lambda proxy: 2.0 * proxy, False)
    config = EnsembleConfig(members=2, width=8, steps=20, growth_members=2, growth_width=8, growth_steps=300,
                            checkpoint=str(tmp_path / "e.pt"))
    ensemble = train_on(density, np.arange(40), config, growth_table=labels)
    X, r, _ = training_arrays(density, np.arange(40), config)
    out = predict(ensemble, X)
    np.testing.assert_allclose(out["log_growth_ratio"], np.log(2.0), atol=0.1)
    assert np.all(np.isfinite(out["r_mean"]))
    save_checkpoint(ensemble, config, density, np.arange(40), {}, config.checkpoint)
    loaded = load_ensemble(torch.load(config.checkpoint, weights_only=False))
    assert len(loaded.growth_members) == 2
    np.testing.assert_array_equal(predict(loaded, X)["log_growth_ratio"], out["log_growth_ratio"])


def test_relabelled_states_replace_their_measured_rates_and_never_leak_from_outside_the_rows(tmp_path):
    """growth.relabelled: a training state's own label (scripts/relabel_growth.sh) replaces its measured
    rate; labels of states outside the training rows (a CV fold's test states) never train."""
    from conftest import random_states

    from dodo.training.ensemble import predict
    from dodo.training.ensemble_train import EnsembleConfig, growth_label_states, train_on, training_arrays

    rng = np.random.default_rng(12)
    F = random_states(rng, 60, max_flux_factor=0.6, mu_equals_tau=True)
    # Measured rates 0.5 x proxy (a slow run axis); the new labels 2 x proxy for states 0-39 and
    # 8 x proxy for states 40-59, which stay outside the training rows.
    density = rest_table(F, lambda proxy: 0.5 * proxy, True)
    labels = rest_table(F, lambda proxy: np.where(np.arange(len(proxy)) < 40, 2.0, 8.0) * proxy, False)
    config = EnsembleConfig(members=2, width=8, steps=20, growth_members=1, growth_width=8, growth_steps=400,
                            growth_data=["unused"], growth_relabelled=True, mirror=False,
                            checkpoint=str(tmp_path / "e.pt"))
    np.testing.assert_array_equal(growth_label_states(labels, density, config), np.arange(60))
    rows = np.arange(40)
    X, _, _ = training_arrays(density, rows, config)
    relabelled = predict(train_on(density, rows, config, growth_table=labels), X)["log_growth_ratio"]
    np.testing.assert_allclose(relabelled, np.log(2.0), atol=0.1)  # neither 0.5 (measured) nor 8 (leaked)
    config.growth_relabelled = False  # both labels of each state (an L1 fit: anywhere between them)
    both = predict(train_on(density, rows, config, growth_table=labels), X)["log_growth_ratio"]
    assert np.mean(both) < np.log(2.0) - 0.3


def test_refined_axis_search_is_nearly_rotation_invariant_where_the_coarse_one_is_not():
    """The 24 coarse axes of box_setup's first search miss the fastest direction by an amount that
    depends on the state's orientation; the pattern search after it finds (nearly) the same rate in
    every orientation, never below the coarse one."""
    from dodo.qke.linear import fastest_wavevector, refine_fastest_wavevector
    from dodo.qke.states import rotate_four_flux

    search = uniform_sphere(12)
    rng = np.random.default_rng(5)
    coarse_spread, refined_spread = [], []
    for F in family_states("emu", 3, np.random.default_rng(5)):
        coarse, refined = [], []
        for _ in range(3):
            q, r = np.linalg.qr(rng.normal(size=(3, 3)))
            rotation = q * np.sign(np.diag(r))
            rotation *= np.linalg.det(rotation)  # a proper rotation
            G = rotate_four_flux(F, rotation)
            rate, wavevector = fastest_wavevector(G, search, np.linspace(0.0, 1.0, 21), uniform_sphere(8))
            better, _ = refine_fastest_wavevector(G, search, wavevector)
            assert better >= rate
            coarse.append(rate)
            refined.append(better)
        coarse_spread.append(1 - min(coarse) / max(coarse))
        refined_spread.append(1 - min(refined) / max(refined))
    assert max(refined_spread) < 0.02 and np.mean(refined_spread) < 0.5 * np.mean(coarse_spread)


def test_box_setup_falls_back_to_the_coarse_axis_when_the_refined_one_has_no_box_mode():
    """On a coarse direction set the refined peak can be the set's own narrow mode, with no unstable
    box mode along it: the state keeps the coarse axis (as before the refinement), not dropped."""
    import dodo.qke.states as states_module
    from dodo.qke.linear import fastest_wavevector
    from dodo.qke.states import rotation_to_z

    F = family_states("emu", 1, np.random.default_rng(4))[0]
    rotation, _, _, rate = box_setup(F, uniform_sphere(8), 16)
    _, coarse = fastest_wavevector(F, uniform_sphere(8), np.linspace(0.0, 1.0, 21), uniform_sphere(8))
    np.testing.assert_allclose(rotation, rotation_to_z(coarse), atol=1e-12)
    assert rate > 0
    with pytest.raises(ValueError, match="no unstable (box )?mode"):
        states_module._box_along(F, rotation_to_z(states_module.refine_fastest_wavevector(
            F, uniform_sphere(8), coarse)[1]), uniform_sphere(8), uniform_sphere(8), 16, None, None)


def test_distilled_student_reproduces_the_members_and_exports(tmp_path):
    """The student alone runs at inference: it must follow the members (mean, spread, growth), keep the
    gate, survive a checkpoint and export with the round trip and test vectors of any ensemble package."""
    from conftest import random_states

    import dodo
    from dodo.training.ensemble import fit_student, predict
    from dodo.training.ensemble_train import (EnsembleConfig, export_ensemble, load_ensemble, save_checkpoint)
    from test_score_and_ensemble import _tiny_ensemble

    ensemble, X = _tiny_ensemble(members=3, steps=200)
    teacher = predict(ensemble, X)
    ensemble.student = fit_student(ensemble, X, width=32, steps=1500)
    student = predict(ensemble, X)
    scale = np.abs(teacher["r_mean"]).mean()
    assert np.mean(np.abs(student["r_mean"] - teacher["r_mean"])) < 0.2 * scale
    assert np.mean(np.abs(student["sigma"] - teacher["sigma"])) < 0.5 * teacher["sigma"].mean() + 1e-6
    assert np.all(student["sigma"] >= 0)
    # The gate acts on the student's outputs too: no trust -> Box3D.
    x = torch.as_tensor(X, dtype=torch.float32)
    sigma0 = ensemble.sigma0.clone()
    ensemble.sigma0.fill_(1e-30)
    assert torch.all(ensemble.outputs(x)[0].abs() < 1e-12)
    ensemble.sigma0.copy_(sigma0)
    config = EnsembleConfig(members=3, width=16, distill_width=32, checkpoint=str(tmp_path / "s.pt"))
    table = {"box3d": dodo.box3d_settings(), "sha256": "", "kind": "qke"}
    save_checkpoint(ensemble, config, table, np.arange(len(X)), {}, config.checkpoint)
    loaded = load_ensemble(torch.load(config.checkpoint, weights_only=False))
    assert loaded.student is not None
    np.testing.assert_array_equal(predict(loaded, X)["r_gated"], student["r_gated"])
    output = tmp_path / "student.onnx"
    export_ensemble(config.checkpoint, str(output), log=lambda m: None)
    closure = dodo.Closure(str(output))
    F = random_states(np.random.default_rng(2), 16, max_flux_factor=0.6, mu_equals_tau=True)
    result = closure.apply(F, np.tile([1.0, 0, 0, 0], (16, 1)))
    assert np.all(np.isfinite(result.F_pred))
    # The runtime's own evaluator runs this package (the sigma0 form of the gate: c = 0 here) and
    # gives what the graph gives.
    assert closure.evaluator == "native"
    graph = dodo.Closure(str(output), evaluator="onnxruntime").apply(F, np.tile([1.0, 0, 0, 0], (16, 1)))
    ntot = np.abs(F[..., 0]).sum(axis=1)
    # Against the float64 ensemble (what was trained), on float32 features as the runtime builds
    # them: the native evaluator (distance in double) is within rounding; the graph's float32
    # distance may be off by ~1e-5 N_tot on a far-out cell.
    import copy

    from dodo.training.export import closure_float64
    exact = copy.deepcopy(ensemble).double()

    class Float64(torch.nn.Module):
        head, features = "equivariant", ensemble.features

        def forward(self, features):
            return exact.outputs(features.float().double())[0]

    u = np.tile([1.0, 0, 0, 0], (16, 1))
    reference = closure_float64(Float64(), F, u, dodo.box3d_settings(), flavour_images=True)["F_pred"]
    native_error = np.abs(result.F_pred - reference).max(axis=(1, 2)) / ntot
    graph_error = np.abs(graph.F_pred - reference).max(axis=(1, 2)) / ntot
    assert native_error.max() < 1e-7, native_error
    assert native_error.max() <= graph_error.max() + 1e-12
    with pytest.raises(ValueError, match="distilled"):
        export_ensemble(config.checkpoint, str(tmp_path / "f.onnx"), log=lambda m: None, fused=True)


def test_the_shipped_recipe_with_crossing_inputs_trains_checkpoints_and_runs_in_the_runtime(tmp_path):
    """The shipped config's feature set (invariants27+box7+eln18-v1: 52 inputs) through train_on with
    growth members and a student: the out-of-distribution distance uses the first 34 inputs, the
    checkpoint loads with both sizes, and the exported package passes the C++ runtime's self-test
    (which computes the 18 crossing inputs in Box3D's kernel)."""
    from conftest import random_states

    import dodo
    from dodo.training.ensemble import predict
    from dodo.training.ensemble_train import (EnsembleConfig, export_ensemble, load_ensemble, training_arrays,
                                              save_checkpoint, train_on)
    from dodo.training.features import INVARIANTS_BOX_AND_CROSSING, OOD_COLUMNS

    rng = np.random.default_rng(12)
    density = rest_table(random_states(rng, 60, max_flux_factor=0.7), lambda proxy: 1.2 * proxy, True)
    labels = rest_table(random_states(rng, 100, max_flux_factor=0.7), lambda proxy: 1.5 * proxy, False)
    config = EnsembleConfig(members=2, width=8, steps=30, growth_members=2, growth_width=8, growth_steps=50,
                            distill_width=16, distill_steps=100, features=INVARIANTS_BOX_AND_CROSSING,
                            error_per_spread=1.9, checkpoint=str(tmp_path / "c.pt"))
    ensemble = train_on(density, np.arange(60), config, growth_table=labels)
    X, _, _ = training_arrays(density, np.arange(60), config)
    assert X.shape[1] == 52 and ensemble.feature_mean.numel() == OOD_COLUMNS[INVARIANTS_BOX_AND_CROSSING] == 34
    assert np.ptp(X[:, 34:], axis=0).max() > 0  # the crossing inputs vary from state to state
    save_checkpoint(ensemble, config, density, np.arange(60), {}, config.checkpoint)
    loaded = load_ensemble(torch.load(config.checkpoint, weights_only=False))
    assert loaded.features == INVARIANTS_BOX_AND_CROSSING
    np.testing.assert_array_equal(predict(loaded, X)["r_gated"], predict(ensemble, X)["r_gated"])
    output = tmp_path / "crossing.onnx"
    export_ensemble(config.checkpoint, str(output), log=lambda m: None)
    closure = dodo.Closure(str(output))  # self-test: the runtime's 52 inputs give the test vectors
    assert closure.metadata["dodo.features"] == INVARIANTS_BOX_AND_CROSSING
    F = random_states(np.random.default_rng(3), 32, max_flux_factor=0.7)
    result = closure.apply(F)
    assert np.all(np.isfinite(result.F_pred)) and np.all(np.isfinite(result.growth_rate))


def test_label_table_is_calibrated_growth_only_and_skips_held_out_files(tmp_path):
    """growth_label_table: labels = calibration x linear rate over the Box3D proxy, r = NaN, held-out
    file names never read; growth_calibration: the median measured/linear ratio of solver files."""
    import dodo
    from dodo.qke.io import write_emu_database
    from dodo.training.ensemble_train import growth_calibration, growth_label_table

    states = family_states("emu", 4, np.random.default_rng(9))
    config = SolverConfig(ncell=16, nphi_equator=8)
    rows = growth_labels.linear_growth_labels(states, str(tmp_path / "emu_seed2100.h5"), config, report=lambda m: None)
    growth_labels.linear_growth_labels(states, str(tmp_path / "emu_seed950.h5"), config, report=lambda m: None)
    settings = dodo.box3d_settings()
    table = growth_label_table([str(tmp_path / "*.h5")], ["*_seed9[0-9][0-9].h5"], settings, calibration=0.9)
    assert table is not None and set(table["sources"]) == {str(tmp_path / "emu_seed2100.h5")}
    assert np.all(np.isnan(table["r"]))
    kept = np.asarray(rows["input_index"])
    proxy = np.asarray(dodo.box3d(states[kept]).growth_rate)
    expected = np.log(0.9 * np.asarray(rows["linear_growth_rate"]) / proxy)
    np.testing.assert_allclose(np.sort(table["log_growth"]), np.sort(expected[np.isfinite(expected)]), rtol=1e-10)

    # A solver file whose measured rates are 0.95 x its linear ones: calibration 0.95.
    solver_file = str(tmp_path / "full_seed1.h5")
    linear = np.linspace(1.0, 2.0, 30) * 1e10
    many = np.repeat(states[:1], 30, axis=0)
    write_emu_database(solver_file, {"initial": many, "final": many, "final_stddev": 0 * many,
                                     "growth_rate": 0.95 * linear, "linear_growth_rate": linear}, {})
    assert growth_calibration([solver_file]) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="need >= 20"):
        growth_calibration([str(tmp_path / "emu_seed2100.h5")])  # labels only: no measured rates


EMU_FILE = os.path.join(os.path.dirname(__file__), "..", "data", "qke", "emu_1d_validation.h5")


def test_every_run_axis_of_the_emu_file_is_one_of_the_38_axes_emus_search_knows():
    """The recipe fact behind axis="emu": each run of emu_1d_validation.h5 lies along a direction of
    uniform_sphere(10) (rotation_R's third row: F_sim = R F, box along z), to rounding."""
    from dodo.qke.states import EMU_SEARCH_AXES_NPHI

    with h5py.File(EMU_FILE, "r") as f:
        run_axes = f["rotation_R"][()][:, 2, :]
    cosines = np.abs(run_axes @ uniform_sphere(EMU_SEARCH_AXES_NPHI).T).max(axis=1)
    assert np.all(cosines > 1 - 1e-9)
    assert np.abs(run_axes @ uniform_sphere(8).T).max(axis=1).min() < 0.99  # not Dodo's own 24 coarse axes


def test_emu_axis_search_finds_the_fastest_of_the_38_axes():
    """box_setup(axis="emu"): the box lies along the one of Emu's 38 search directions whose own
    fastest |k| grows fastest on the run's direction set (a brute-force search over every axis)."""
    from dodo.qke.linear import fastest_wavevector
    from dodo.qke.states import EMU_SEARCH_AXES_NPHI

    directions = uniform_sphere(14)
    axes = uniform_sphere(EMU_SEARCH_AXES_NPHI)
    for F in family_states("emu", 2, np.random.default_rng(21)):
        rotation, _, _, rate = box_setup(F, directions, 16, axis="emu")
        chosen = rotation[2]
        assert np.abs(chosen @ axes.T).max() > 1 - 1e-9  # one of the 38 directions
        per_axis = np.array([fastest_wavevector(F, directions, np.linspace(0.0, 1.0, 11), axes[i:i + 1])[0]
                             for i in range(len(axes))])
        best = axes[np.argmax(per_axis)]
        assert abs(chosen @ best) > 1 - 1e-9 or per_axis.max() - per_axis[np.argmax(np.abs(axes @ chosen))] \
            < 0.01 * per_axis.max()  # a near tie may fall either way
        assert rate > 0


def test_emu_axis_search_picks_the_emu_files_own_axes():
    """On the first three runs of emu_1d_validation.h5 (their original-frame states, the run's 92
    directions), the search puts the box along the very axis Emu's run used."""
    from dodo.conventions import from_emu_layout

    with h5py.File(EMU_FILE, "r") as f:
        states = from_emu_layout(f["F4_initial(1|ccm)"][()][:3])
        run_axes = f["rotation_R"][()][:3, 2, :]
    for F, run_axis in zip(states, run_axes):
        rotation = box_setup(F, uniform_sphere(16), 64, axis="emu")[0]
        assert abs(rotation[2] @ run_axis) > 1 - 1e-9


def test_linear_only_labels_along_emus_axes_record_the_search_and_refuse_a_given_rotation(tmp_path):
    output = str(tmp_path / "emu_axis.h5")
    assert run_cli(["simulate", output, "--random", "2", "--seed", "7", "--family", "emu", "--linear-only",
                    "--axis", "emu", *SMALL]) == 0
    states = family_states("emu", 2, np.random.default_rng(7))
    with h5py.File(output, "r") as f:
        settings = json.loads(f.attrs["settings"])
        index, rates = f["input_index"][()], f["linear_growthRate_box(1|s)"][()]
    assert settings["axis_search"].startswith("Emu's validation search")
    for row, i in enumerate(index):
        assert rates[row] == pytest.approx(box_setup(states[i], uniform_sphere(8), 16, axis="emu")[3], rel=1e-12)
    # An input with box axes of its own: the search would ignore them, so the command asks.
    assert run_cli(["simulate", str(tmp_path / "again.h5"), "--input", output, "--linear-only", "--axis", "emu",
                    *SMALL]) == 2


def test_growth_measured_false_trains_the_growth_members_on_the_labels_alone(tmp_path):
    """growth.measured: false: the training states' measured rates (0.5 x proxy, a slow run axis)
    do not train the growth members; only growth.data's labels (2 x proxy) do."""
    from conftest import random_states

    from dodo.training.ensemble import predict
    from dodo.training.ensemble_train import ConfigError, EnsembleConfig, train_on, training_arrays

    rng = np.random.default_rng(13)
    F = random_states(rng, 40, max_flux_factor=0.6, mu_equals_tau=True)
    density = rest_table(F, lambda proxy: 0.5 * proxy, True)
    labels = rest_table(F, lambda proxy: 2.0 * proxy, False)
    config = EnsembleConfig(members=2, width=8, steps=20, growth_members=1, growth_width=8, growth_steps=400,
                            growth_data=["unused"], growth_measured=False, mirror=False,
                            checkpoint=str(tmp_path / "e.pt"))
    rows = np.arange(40)
    X, _, _ = training_arrays(density, rows, config)
    np.testing.assert_allclose(predict(train_on(density, rows, config, growth_table=labels), X)["log_growth_ratio"],
                               np.log(2.0), atol=0.1)
    with pytest.raises(ConfigError, match="growth.measured: false needs growth.data"):
        EnsembleConfig(growth_members=1, growth_measured=False).validate()
    with pytest.raises(ConfigError, match="growth.measured must be true or false"):
        EnsembleConfig(growth_members=1, growth_data=["x"], growth_measured="no").validate()


def test_refitting_growth_and_student_on_kept_members_gives_train_ons_networks(tmp_path):
    """tools/refit_growth.py's premise: the growth members and the student fitted again on the same
    rows and labels, over the same density members, are train_on's own, weight for weight."""
    from conftest import random_states

    from dodo.training.ensemble_train import EnsembleConfig, fit_growth_and_student, train_on

    F = random_states(np.random.default_rng(14), 40, max_flux_factor=0.6, mu_equals_tau=True)
    density = rest_table(F, lambda proxy: 0.5 * proxy, True)
    labels = rest_table(F[:20], lambda proxy: 2.0 * proxy, False)
    config = EnsembleConfig(members=2, width=8, steps=20, growth_members=2, growth_width=8, growth_steps=50,
                            growth_data=["unused"], distill_width=8, distill_steps=50, mirror=False,
                            checkpoint=str(tmp_path / "e.pt"))
    rows = np.arange(40)
    trained = train_on(density, rows, config, growth_table=labels)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.growth_members = torch.nn.ModuleList()
    trained.student = None
    fit_growth_and_student(trained, density, rows, config, growth_table=labels)
    after = trained.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    with pytest.raises(ValueError, match="where there are none yet"):
        fit_growth_and_student(trained, density, rows, config, growth_table=labels)


def test_a_refinement_without_unstable_pairs_keeps_the_coarse_axis_without_a_nan_rotation(monkeypatch):
    """A refinement that found no unstable pair returned the zero vector, and rotation_to_z divided by
    its zero length: a NaN matrix and a RuntimeWarning in the campaign's log (the state then fell back
    to the coarse axis through _box_along's ValueError). The coarse axis is now taken at once, and a
    zero or non-finite axis is refused by rotation_to_z itself."""
    import warnings

    import dodo.qke.states as states_module
    from dodo.qke.linear import fastest_wavevector
    from dodo.qke.states import rotation_to_z

    for axis in (np.zeros(3), np.array([np.nan, 0.0, 1.0]), np.array([np.inf, 0.0, 0.0]), np.ones(2)):
        with pytest.raises(ValueError, match="finite non-zero 3-vector"):
            rotation_to_z(axis)
    F = family_states("emu", 1, np.random.default_rng(4))[0]
    monkeypatch.setattr(states_module, "refine_fastest_wavevector", lambda *args, **kwargs: (0.0, np.zeros(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rotation, _, _, rate = box_setup(F, uniform_sphere(8), 16)
    _, coarse = fastest_wavevector(F, uniform_sphere(8), np.linspace(0.0, 1.0, 21), uniform_sphere(8))
    np.testing.assert_allclose(rotation, rotation_to_z(coarse), atol=1e-12)
    assert rate > 0
