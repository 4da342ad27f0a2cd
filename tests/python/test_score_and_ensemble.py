"""The fidelity tools (issue 10): `dodo score`, the density-residual ensemble, its features,
the campaign's state families."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dodo
from dodo.score import bootstrap_interval, mu_tau_averaged, state_errors

DATA = Path(__file__).resolve().parents[1] / "data" / "qke"
EMU = DATA / "emu_1d_validation.h5"


def _conserving_random_change(rng, n):
    """Random density changes obeying the fast-flavour conservation laws, mu = tau."""
    delta = rng.normal(scale=0.05, size=n)
    pattern = np.array([1.0, -0.5, -0.5, 1.0, -0.5, -0.5])
    return delta, delta[:, None] * pattern


def test_metric_is_two_thirds_of_the_nu_e_error():
    """For conserving, mu/tau-symmetric changes the shared metric is (2/3)|delta error|."""
    from dodo.training.ensemble import METRIC_PER_DELTA, nu_e_change

    rng = np.random.default_rng(1)
    F_init = np.zeros((50, 6, 4))
    F_init[..., 0] = rng.uniform(0.05, 0.3, (50, 6))
    F_init /= F_init[..., 0].sum(axis=1)[:, None, None]
    d_true, change_true = _conserving_random_change(rng, 50)
    d_pred, change_pred = _conserving_random_change(rng, 50)
    F_true, F_pred = F_init.copy(), F_init.copy()
    F_true[..., 0] += change_true
    F_pred[..., 0] += change_pred
    metric = state_errors(F_pred, F_true, np.ones(50))
    np.testing.assert_allclose(metric, METRIC_PER_DELTA * np.abs(d_pred - d_true), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(nu_e_change(F_true, F_init), d_true, atol=1e-15)


def test_mu_tau_average_and_bootstrap():
    F = np.arange(48, dtype=float).reshape(2, 6, 4)
    averaged = mu_tau_averaged(F)
    np.testing.assert_array_equal(averaged[:, 1], averaged[:, 2])
    np.testing.assert_array_equal(averaged[:, 1], 0.5 * (F[:, 1] + F[:, 2]))
    np.testing.assert_array_equal(averaged[:, 0], F[:, 0])
    values = np.random.default_rng(0).normal(1.0, 0.1, 200)
    low, high = bootstrap_interval(values, 2000, np.random.default_rng(1))
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(200), rel=0.2)


def _dodo(*args):
    return subprocess.run([sys.executable, "-m", "dodo", *args], capture_output=True, text=True, timeout=600)


def test_score_box3d_against_itself_and_default_model():
    """Box3D-only scores zero difference; Box3D's own mean is the shared README's 0.0065."""
    run = _dodo("score", "box3d", str(EMU), "--bootstrap", "500")
    assert run.returncode == 0, run.stderr
    assert "model - Box3D           +0.00000" in run.stdout
    assert "Box3D (anchor)           0.0064" in run.stdout or "Box3D (anchor)           0.0065" in run.stdout
    assert "worse than Box3D by > 0.0025 N_tot: 0 of 32" in run.stdout
    assert "growth rate / measured growthRate(1|s) on 32 states" in run.stdout


@pytest.mark.parametrize("args, message", [
    (("box3d", "/nonexistent.h5"), "cannot read"),
    (("box3d", str(EMU), "--bootstrap", "5"), "--bootstrap must be >= 100"),
    (("box3d", str(EMU), "--threshold", "nan"), "--threshold"),
])
def test_score_errors_are_one_line(args, message):
    run = _dodo("score", *args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_score_refuses_a_file_without_final_states(tmp_path):
    import h5py

    path = tmp_path / "initial_only.h5"
    with h5py.File(path, "w") as f:
        f["F4_initial(1|ccm)"] = np.ones((2, 4, 2, 3))
    run = _dodo("score", "box3d", str(path))
    assert run.returncode == 2 and "F4_final(1|ccm)" in run.stderr


def test_box_features_match_box3d_in_any_frame():
    """invariants27+box7: the box columns are Box3D's comoving density changes and proxy, frame-free."""
    from dodo.training.features import FEATURE_SIZES, INVARIANTS_AND_BOX, lab_features

    from conftest import random_states, random_velocities

    rng = np.random.default_rng(3)
    F = random_states(rng, 40, max_flux_factor=0.7)
    u = random_velocities(rng, 40, max_speed=0.6)
    at_rest = lab_features(INVARIANTS_AND_BOX, F)
    assert at_rest.shape == (40, FEATURE_SIZES[INVARIANTS_AND_BOX])
    box = dodo.box3d(F)
    ntot = F[..., 0].sum(axis=1)
    np.testing.assert_allclose(at_rest[:, 27:33], (box.F_box[..., 0] - F[..., 0]) / ntot[:, None], atol=1e-14)
    np.testing.assert_allclose(at_rest[:, 33], box.growth_over_ntot, rtol=1e-13)
    # The same cells seen from a moving frame: the same features (boost invariance).
    from dodo.training.frames import boost_from_rest

    moving = lab_features(INVARIANTS_AND_BOX, boost_from_rest(F, u[:, None, :]), u)
    np.testing.assert_allclose(moving, at_rest, atol=1e-9)


def test_crossing_features_match_the_python_oracle_and_are_frame_free():
    """invariants27+box7+eln18: the 18 crossing inputs of the C++ kernel equal the NumPy oracle's
    (scipy's Lebedev rule, the exact inverse Langevin Z) and do not depend on the frame; the nu <->
    nubar mirror swaps I+ and I- and the lobe lengths, and takes the G > 0 fraction to its complement."""
    from box3d_oracle import crossing_features_oracle
    from dodo.training.features import FEATURE_SIZES, INVARIANTS_AND_BOX, INVARIANTS_BOX_AND_CROSSING, lab_features
    from dodo.training.frames import boost_from_rest

    from conftest import random_states, random_velocities

    rng = np.random.default_rng(11)
    F = random_states(rng, 60, max_flux_factor=0.8)
    F[:20, 2] = F[:20, 1]  # mu = tau in a third of them
    F[:20, 5] = F[:20, 4]
    ntot = F[..., 0].sum(axis=1)
    kernel = dodo.crossing_features(F)
    np.testing.assert_allclose(kernel, crossing_features_oracle(F / ntot[:, None, None]), rtol=0, atol=1e-12)
    crossing = dodo.box3d(F).status & dodo.CellStatus.NO_CROSSING == 0
    assert crossing.sum() >= 20 and np.all(kernel[crossing][:, 0::6] * kernel[crossing][:, 1::6] >= 0)
    features = lab_features(INVARIANTS_BOX_AND_CROSSING, F)
    assert features.shape == (60, FEATURE_SIZES[INVARIANTS_BOX_AND_CROSSING]) == (60, 52)
    np.testing.assert_array_equal(features[:, :34], lab_features(INVARIANTS_AND_BOX, F))
    np.testing.assert_allclose(features[:, 34:], kernel, rtol=0, atol=1e-12)
    u = random_velocities(rng, 60, max_speed=0.6)
    np.testing.assert_allclose(lab_features(INVARIANTS_BOX_AND_CROSSING, boost_from_rest(F, u[:, None, :]), u),
                               features, atol=1e-9)
    mirrored = dodo.crossing_features(F[:, [3, 4, 5, 0, 1, 2]])
    for p in range(3):
        np.testing.assert_allclose(mirrored[:, 6 * p], kernel[:, 6 * p + 1], atol=1e-13)
        np.testing.assert_allclose(mirrored[:, 6 * p + 3], kernel[:, 6 * p + 4], atol=1e-12)
        np.testing.assert_allclose(mirrored[:, 6 * p + 5], kernel[:, 6 * p + 5], atol=1e-12)
        has_both = (kernel[:, 6 * p] > 0) & (kernel[:, 6 * p + 1] > 0)
        np.testing.assert_allclose(mirrored[has_both, 6 * p + 2], 1 - kernel[has_both, 6 * p + 2], atol=1e-12)
    bad = F.copy()
    bad[0, 0, 0] = np.nan
    assert np.isnan(dodo.crossing_features(bad)[0]).all() and np.isfinite(dodo.crossing_features(bad)[1:]).all()


def _tiny_ensemble(members=2, steps=30, sigma0=0.01):
    from dodo.training.ensemble import fit_ensemble
    from dodo.training.features import INVARIANTS_AND_BOX, lab_features

    rng = np.random.default_rng(5)
    from conftest import random_states

    F = random_states(rng, 64, max_flux_factor=0.6, mu_equals_tau=True)
    X = lab_features(INVARIANTS_AND_BOX, F)
    r = 0.01 * np.tanh(X[:, 0] - X[:, 3])
    ensemble = fit_ensemble(X, r, np.zeros(len(X)), members=members, sigma0=sigma0, steps=steps, width=16)
    ensemble.features = INVARIANTS_AND_BOX
    return ensemble, X


def test_ensemble_head_is_a_conserving_density_change_and_the_gate_moves_it_to_box3d():
    import torch

    from dodo.training.conservation import conservation_projector
    from dodo.training.ensemble import DENSITY_PATTERN

    ensemble, X = _tiny_ensemble()
    x = torch.as_tensor(X, dtype=torch.float32)
    head, sigma, growth = ensemble.outputs(x)
    assert head.shape == (len(X), 78) and sigma.shape == (len(X),) and growth.shape == (len(X),)
    assert torch.all(head[:, :72] == 0)
    pattern = np.zeros((6, 4))
    pattern[:, 0] = DENSITY_PATTERN
    projector = conservation_projector()
    np.testing.assert_allclose(projector @ pattern.ravel(), pattern.ravel(), atol=1e-12)
    assert torch.all(sigma >= 0)
    # A vanishing sigma0 (no trust) returns Box3D: no correction at all.
    ensemble.sigma0.fill_(1e-30)
    assert torch.all(ensemble.outputs(x)[0].abs() < 1e-12)
    # Far outside the training features: the Mahalanobis gate closes.
    ensemble.sigma0.fill_(1e30)
    far = x + 1e3 * x.std(dim=0)
    assert torch.all(ensemble.outputs(far)[0].abs() < 1e-6 * (ensemble.outputs(x)[0].abs().max() + 1e-30))


def test_member_row_weights_decide_which_rows_are_fitted():
    """fit_member's row weights (used to measure noise-aware training, docs/training.md): rows of
    weight 0 are ignored, so two disagreeing halves give the weighted half's answer."""
    import torch

    from dodo.training.ensemble import fit_member

    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    r = np.where(np.arange(200) < 100, 1.0, -1.0)  # the same inputs' distribution, opposite targets
    weights = (np.arange(200) < 100).astype(float) * 2.0
    member = fit_member(X, r, np.full(200, np.nan), seed=0, width=8, steps=300, weights=weights)
    with torch.no_grad():
        prediction = member(torch.as_tensor(X, dtype=torch.float32))[:, 0].numpy()
    assert np.median(prediction) > 0.8


def test_mini_batch_members_fit_what_full_batch_ones_fit_and_are_reproducible():
    """batch_size/epochs (docs/training.md): for the same arithmetic (20 passes over the rows)
    mini-batch members fit a smooth target better than full-batch ones, the same seed gives the
    same network, and growth members take the same options."""
    import torch

    from dodo.training.ensemble import fit_growth_member, fit_member

    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 4))
    r = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2]
    x = torch.as_tensor(X, dtype=torch.float32)

    def error(member):
        with torch.no_grad():
            return float(np.mean(np.abs(member(x)[:, 0].numpy() - r)))

    full = fit_member(X, r, np.full(2000, np.nan), seed=0, width=32, steps=20)
    mini = fit_member(X, r, np.full(2000, np.nan), seed=0, width=32, batch_size=256, epochs=20)
    again = fit_member(X, r, np.full(2000, np.nan), seed=0, width=32, batch_size=256, epochs=20)
    assert error(mini) < 0.5 * np.mean(np.abs(r - r.mean()))  # learned, not the mean
    assert error(mini) < 0.5 * error(full)
    assert all(torch.equal(a, b) for a, b in zip(mini.state_dict().values(), again.state_dict().values()))
    growth = fit_growth_member(X, r, seed=0, width=32, batch_size=256, epochs=20)
    assert error(growth) < 0.5 * np.mean(np.abs(r - r.mean()))


@pytest.mark.parametrize("section, keys, message", [
    ("ensemble", {"batch_size": 256}, "ensemble.batch_size needs ensemble.epochs"),
    ("growth", {"batch_size": 64, "epochs": -1}, "growth.epochs must be an integer >= 0"),
    ("distill", {"batch_size": 64}, "distill.batch_size needs distill.epochs"),
    ("distill", {"sampled_states": 1.5}, "distill.sampled_states must be an integer >= 0"),
    ("growth", {"lr": -1.0}, "growth.lr must be a finite number >= 0"),
    ("growth", {"relabelled": "yes"}, "growth.relabelled must be true or false"),
    ("growth", {"relabelled": True}, "growth.relabelled: true needs growth.data"),
])
def test_mini_batch_config_errors(tmp_path, section, keys, message):
    import yaml

    from dodo.training.config import ConfigError
    from dodo.training.ensemble_train import EnsembleConfig

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "x.h5"}, section: keys}))
    with pytest.raises(ConfigError, match=message):
        EnsembleConfig.load(str(path))


def test_sampled_states_are_unlabelled_crossing_states_in_the_family_mix():
    """distill.sampled_states: states drawn by the campaign's samplers, split by the training
    files' family shares, every one crossing, with finite features and no labels."""
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.linear import pair_lepton_numbers
    from dodo.training import ensemble_train as et

    shares = et.family_shares(["a/emu_seed1.h5", "a/random_crossing_seed3.h5", "b/merger_seed2.h5",
                               "b/merger_seed4.h5"])
    assert shares == {"emu": 0.5, "merger": 0.5}
    table = et.sampled_state_table(40, shares, seed=0, box3d_settings=et.box3d_settings(""))
    n = len(table["r"])
    assert 36 <= n <= 40 and np.isnan(table["r"]).all() and np.isnan(table["log_growth"]).all()
    names = [Path(str(s)).name for s in table["sources"]]
    assert 15 <= names.count("emu_sampled.h5") <= 20 and 15 <= names.count("merger_sampled.h5") <= 20
    config = et.EnsembleConfig(features="invariants27+box7+eln18-v1")
    X = et.training_arrays(table, np.arange(n), config)[0]
    assert X.shape == (2 * n, 52) and np.isfinite(X).all()
    F_rest = np.asarray(table["rest"]["F_init_rest"])
    lepton = pair_lepton_numbers(F_rest[0], uniform_sphere(16))
    assert (lepton > 0).any() and (lepton < 0).any()


def test_wiener_spread_gate_keeps_large_corrections_and_drops_uncertain_ones():
    """The Wiener gate r^2 / (r^2 + (c sigma)^2): 1 without spread, 1/2 where |r| = c sigma, to 0
    where the correction is small against its expected error, never NaN (r = sigma = 0)."""
    import torch

    from dodo.training.ensemble import spread_gate

    c, sigma0 = torch.tensor(1.65), torch.tensor(0.01)
    r = torch.tensor([0.02, 0.02, 1.65e-3, 1e-6, 0.0, -0.02])
    sigma = torch.tensor([0.0, 1e-3, 1e-3, 1e-3, 0.0, 1e-3])
    gate = spread_gate(r, sigma, sigma0, c)
    expected = r**2 / (r**2 + (c * sigma) ** 2)
    assert torch.all(torch.isfinite(gate)) and torch.all((gate >= 0) & (gate <= 1))
    np.testing.assert_allclose(gate[:4].numpy(), [1.0, float(expected[1]), 0.5, float(expected[3])], rtol=1e-6)
    assert gate[3] < 1e-5 and gate[4] == 0 and gate[5] == gate[1]  # symmetric in the sign of r
    # c = 0 keeps the sigma0 gate of earlier models.
    np.testing.assert_allclose(spread_gate(r, sigma, sigma0, torch.tensor(0.0)).numpy(),
                               (1 / (1 + (sigma / sigma0) ** 2)).numpy(), rtol=1e-7)


def test_ensemble_with_wiener_gate_exports_and_old_checkpoints_load(tmp_path):
    """error_per_spread travels in the checkpoint and the ONNX graph reproduces the gated head;
    a checkpoint without it (trained before the Wiener gate) loads with the sigma0 gate."""
    import torch

    from dodo.training.ensemble_train import _ensemble_onnx_bytes, check_graph_outputs, load_ensemble

    ensemble, X = _tiny_ensemble()
    ensemble.error_per_spread.fill_(1.65)
    x = torch.as_tensor(X, dtype=torch.float32)
    wiener = ensemble.outputs(x)[0]
    ensemble.error_per_spread.fill_(0.0)
    assert not torch.allclose(wiener, ensemble.outputs(x)[0])
    ensemble.error_per_spread.fill_(1.65)
    assert check_graph_outputs(ensemble, _ensemble_onnx_bytes(ensemble)) <= 1.0
    state = {k: v for k, v in ensemble.state_dict().items() if k != "error_per_spread"}
    checkpoint = {"kind": "density_residual_ensemble", "n_inputs": X.shape[1], "members": len(ensemble.members),
                  "config": {"width": 16, "depth": 2, "features": ensemble.features}, "state_dict": state}
    old = load_ensemble(checkpoint)
    assert float(old.error_per_spread) == 0.0
    ensemble.error_per_spread.fill_(0.0)
    with torch.no_grad():
        np.testing.assert_allclose(old.outputs(x)[0].numpy(), ensemble.outputs(x)[0].numpy(), rtol=1e-6, atol=1e-9)


def test_ensemble_export_round_trip(tmp_path):
    """An ensemble package: onnxruntime gives the torch outputs; test vectors embedded; 3 outputs."""
    import json

    import onnx
    import torch

    from dodo.training.ensemble_train import ENSEMBLE_OUTPUTS, EnsembleConfig, export_ensemble, save_checkpoint

    ensemble, X = _tiny_ensemble()
    table = {"box3d": {"scheme": "pairwise", "form": "delta", "lebedev_order": 17, "z_method": "exact",
                       "max_flux_factor": 0.98}, "sha256": "0" * 64, "kind": "qke"}
    checkpoint = tmp_path / "ensemble.pt"
    save_checkpoint(ensemble, EnsembleConfig(width=16), table, np.arange(10), {}, str(checkpoint))
    output = tmp_path / "ensemble.onnx"
    result = export_ensemble(str(checkpoint), str(output), log=lambda *_: None)
    assert result["roundtrip"]["max_test_vector_error_over_ntot"] < 1e-6
    model = onnx.load(str(output))
    assert [o.name for o in model.graph.output] == list(ENSEMBLE_OUTPUTS)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["dodo.outputs"]) == list(ENSEMBLE_OUTPUTS)
    assert metadata["dodo.features"] == "invariants27+box7-v1"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(None, {"invariants": X.astype(np.float32)})
    with torch.no_grad():
        expected = [t.numpy() for t in ensemble.outputs(torch.as_tensor(X, dtype=torch.float32))]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family", ["emu", "three_flavour", "merger"])
def test_state_families_cross_and_follow_their_recipe(family):
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.linear import pair_lepton_numbers
    from dodo.qke.states import FAMILY_MAX_FLUX_FACTOR, family_states

    states = family_states(family, 12, np.random.default_rng(11))
    n = states[..., 0]
    ff = np.linalg.norm(states[..., 1:], axis=-1) / n
    assert states.shape == (12, 6, 4)
    np.testing.assert_allclose(n.sum(axis=1), 1e33, rtol=1e-12)
    assert np.all(ff < FAMILY_MAX_FLUX_FACTOR[family])
    for state in states:
        lepton = pair_lepton_numbers(state, uniform_sphere(16))
        assert np.any((lepton.max(axis=1) > 0) & (lepton.min(axis=1) < 0))
    if family == "emu":
        np.testing.assert_array_equal(states[:, 1], states[:, 2])
    if family == "three_flavour":
        assert np.all(states[:, 1, 0] != states[:, 2, 0])
    if family == "merger":
        assert np.all(n[:, 3] >= n[:, 0])  # nubar_e-rich
        assert np.all(n[:, [1, 2, 4, 5]] <= 0.6 * n[:, [0]] + 1e-9 * n[:, [0]])
        unit = states[..., 1:] / np.linalg.norm(states[..., 1:], axis=-1, keepdims=True)
        assert np.all(np.sum(unit[:, 0] * unit[:, 3], axis=-1) > 0.0)  # roughly aligned fluxes
