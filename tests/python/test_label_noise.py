"""The label-noise member of the density-residual ensemble (docs/training.md, "Label-noise gate")."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from test_growth_labels import rest_table  # noqa: E402
from test_score_and_ensemble import _tiny_ensemble  # noqa: E402


def test_noise_member_learns_where_the_residuals_are_large():
    """Laplace-likelihood fit: a(x) follows E|e| (here 0.002 on one half of the inputs, 0.02 on the other)."""
    from dodo.training.ensemble import fit_noise_member

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 3))
    scale = np.where(X[:, 0] > 0, 0.02, 0.002)
    abs_e = np.abs(rng.laplace(scale=scale))
    member = fit_noise_member(X, abs_e, r_scale=0.01, seed=1, width=16, batch_size=256, epochs=30)
    with torch.no_grad():
        a = torch.exp(member(torch.as_tensor(X, dtype=torch.float32))[:, 0]).numpy() * 0.01
    for side in (X[:, 0] > 0.5, X[:, 0] < -0.5):
        assert np.median(a[side]) == pytest.approx(scale[side][0], rel=0.3)


def test_the_gate_adds_the_label_noise_beside_the_spread_and_the_checkpoint_keeps_it(tmp_path):
    """uncertainty^2 = spread^2 + (k a / c)^2, so the gate is r^2 / (r^2 + (c spread)^2 + (k a)^2);
    the member and k survive a checkpoint, and an earlier checkpoint loads with k = 0."""
    from dodo.training.ensemble import fit_noise_member, spread_gate
    from dodo.training.ensemble_train import EnsembleConfig, load_ensemble, save_checkpoint

    ensemble, X = _tiny_ensemble()
    ensemble.error_per_spread.fill_(2.5)
    x = torch.as_tensor(X, dtype=torch.float32)
    r_mean, spread, _ = ensemble.teacher_outputs(x)
    ensemble.noise_member = fit_noise_member(X, np.full(len(X), 0.004), float(ensemble.r_scale), seed=0, width=8,
                                             batch_size=32, epochs=2)
    ensemble.label_noise_weight.fill_(1.5)
    a = ensemble.label_noise(x)
    _, sigma, _ = ensemble.teacher_outputs(x)
    torch.testing.assert_close(sigma, torch.sqrt(spread ** 2 + (1.5 * a / 2.5) ** 2))
    head = ensemble.outputs(x)[0][:, -1]
    distance = torch.exp(-torch.relu(ensemble.squared_distance(x) - ensemble.d2_max) / ensemble.d2_max).to(r_mean.dtype)
    expected = r_mean * r_mean ** 2 / (r_mean ** 2 + (2.5 * spread) ** 2 + (1.5 * a) ** 2) * distance
    torch.testing.assert_close(head, expected * ensemble.pattern[-1], rtol=1e-5, atol=1e-9)
    assert (spread_gate(r_mean, sigma, ensemble.sigma0, ensemble.error_per_spread)
            <= spread_gate(r_mean, spread, ensemble.sigma0, ensemble.error_per_spread) + 1e-7).all()

    config = EnsembleConfig(members=len(ensemble.members), width=16, noise_width=8, error_per_spread=2.5)
    table = {"box3d": {}, "sha256": "0" * 64, "kind": "test"}
    save_checkpoint(ensemble, config, table, np.arange(len(X)), {}, str(tmp_path / "e.pt"))
    loaded = load_ensemble(torch.load(tmp_path / "e.pt", weights_only=False))
    assert float(loaded.label_noise_weight) == 1.5
    torch.testing.assert_close(loaded.outputs(x)[1], ensemble.outputs(x)[1])
    state = {k: v for k, v in ensemble.state_dict().items() if not k.startswith("noise_member")
             and k != "label_noise_weight"}
    earlier = load_ensemble({"kind": "density_residual_ensemble", "n_inputs": X.shape[1], "members": len(ensemble.members),
                             "config": {"width": 16, "depth": 2, "features": ensemble.features}, "state_dict": state})
    assert earlier.noise_member is None and float(earlier.label_noise_weight) == 0.0
    torch.testing.assert_close(earlier.outputs(x)[1], spread)


def _pool_table(n=60):
    from conftest import random_states

    table = rest_table(random_states(np.random.default_rng(21), n, max_flux_factor=0.6, mu_equals_tau=True),
                       lambda proxy: proxy, True)
    table["sources"] = np.array([f"data/qke/emu_seed{k % 6}.h5" for k in range(n)])
    table["delta_true"] = table["delta_box"] + 0.01 * np.sin(np.arange(n))
    table["r"] = table["delta_true"] - table["delta_box"]
    return table


def _out_of_fold_file(path, table, config, folds, r=None):
    from dodo.training.ensemble_train import pool_folds

    order, fold_of = pool_folds(table, config, folds)
    rows = np.concatenate([order[fold_of == k] for k in range(folds)])
    r = np.zeros(len(rows)) if r is None else r
    np.savez(path, delta_box=table["delta_box"][rows], delta_true=table["delta_true"][rows], r=r,
             sigma=np.full(len(rows), 1e-3), d2=np.zeros(len(rows)), emu=np.ones(len(rows), bool))
    return rows


def test_train_on_fits_the_noise_member_from_a_gate_studys_file_and_refuses_another_tables(tmp_path):
    """The file's states are found in the table by their deltas: all of them in the table it was
    made on, those it shares with a grown table, none in another table (refused)."""
    from dodo.training.ensemble_train import EnsembleConfig, train_on
    from dodo.training.label_noise import out_of_fold_rows

    table = _pool_table()
    config = EnsembleConfig(members=2, width=8, steps=20, error_per_spread=2.5, noise_oof=str(tmp_path / "oof.npz"),
                            noise_weight=1.0, noise_width=8, noise_epochs=2, noise_batch_size=32, mirror=False)
    rows = _out_of_fold_file(tmp_path / "oof.npz", table, config, 3)
    found, residual = out_of_fold_rows(config.noise_oof, table, config)
    np.testing.assert_array_equal(found, rows)
    np.testing.assert_allclose(residual, table["r"][rows])
    ensemble = train_on(table, np.arange(60), config)
    assert ensemble.noise_member is not None and float(ensemble.label_noise_weight) == 1.0

    extra = np.linspace(0.1, 0.2, 20)  # 20 states made after the study, listed first
    grown = {key: np.concatenate([extra, table[key]]) for key in ("delta_box", "delta_true", "r")}
    grown["sources"] = np.concatenate([np.array(["data/qke/emu_seed7.h5"] * 20), table["sources"]])
    found, residual = out_of_fold_rows(config.noise_oof, grown, config)
    np.testing.assert_array_equal(found, rows + 20)
    np.testing.assert_allclose(residual, table["r"][rows])
    # a new state with the same pair of deltas as one of the study's: that pair names neither
    grown = {key: np.concatenate([table[key][:1], table[key]]) for key in ("delta_box", "delta_true", "r", "sources")}
    found, _ = out_of_fold_rows(config.noise_oof, grown, config)
    np.testing.assert_array_equal(found, rows[rows != 0] + 1)
    other = _pool_table()
    other["delta_true"] = other["delta_true"] + 1e-3
    with pytest.raises(ValueError, match="holds no state of this table"):
        out_of_fold_rows(config.noise_oof, other, config)
    np.savez(tmp_path / "other.npz", r=np.zeros(3))
    with pytest.raises(ValueError, match="not a gate study's out-of-fold file"):
        out_of_fold_rows(str(tmp_path / "other.npz"), table, config)


@pytest.mark.parametrize("settings, message", [
    ({"noise_weight": 1.0}, "noise.weight needs noise.oof"),
    ({"noise_oof": "f.npz"}, "noise.oof needs ensemble.error_per_spread > 0"),
    ({"noise_oof": "f.npz", "error_per_spread": 2.5, "noise_width": 0}, "noise.width must be a positive integer"),
    ({"noise_oof": "f.npz", "error_per_spread": 2.5, "noise_weight": -1.0}, "noise.weight must be a finite number >= 0"),
])
def test_noise_config_errors(settings, message):
    from dodo.training.ensemble_train import ConfigError, EnsembleConfig

    with pytest.raises(ConfigError, match=message):
        EnsembleConfig(**settings).validate()


def test_a_foreign_out_of_fold_file_is_refused_before_any_member_is_fitted(tmp_path, monkeypatch):
    """A user's own table with the shipped config (noise.oof of the default model's pool): a clear
    error at once, not after the members' training."""
    from dodo.training import ensemble_train
    from dodo.training.ensemble_train import EnsembleConfig, train_on

    table = _pool_table()
    config = EnsembleConfig(members=2, width=8, steps=20, error_per_spread=2.5, noise_oof=str(tmp_path / "oof.npz"),
                            noise_weight=1.0, mirror=False)
    _out_of_fold_file(tmp_path / "oof.npz", table, config, 3)
    other = _pool_table()
    other["delta_true"] = other["delta_true"] + 1e-3

    def no_fit(*args, **kwargs):
        raise AssertionError("a member was fitted")

    monkeypatch.setattr(ensemble_train, "fit_ensemble", no_fit)
    with pytest.raises(ValueError, match="holds no state of this table.*leave noise.oof empty"):
        train_on(other, np.arange(60), config)


@pytest.mark.parametrize("write, message", [
    (lambda p: np.save(p, np.zeros(3)), "one array, not an .npz"),
    (lambda p: p.write_text("not numpy"), "is not a gate study's out-of-fold file"),
    (lambda p: np.savez(p, r=np.zeros(2)), "no delta_box, delta_true, sigma, d2, emu"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_a_file_that_is_no_out_of_fold_file_is_a_clear_error(tmp_path, write, message):
    from dodo.training.ensemble_train import EnsembleConfig
    from dodo.training.label_noise import out_of_fold_rows

    path = tmp_path / "oof"
    write(path)
    path = next(p for p in (path, tmp_path / "oof.npy", tmp_path / "oof.npz") if p.exists())  # NumPy adds its suffix
    with pytest.raises(ValueError, match=message):
        out_of_fold_rows(str(path), _pool_table(), EnsembleConfig())
