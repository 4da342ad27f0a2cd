"""Training on the flavour images (ensemble.flavour_images; docs/training.md, "Flavour images"):
each row also in its mu <-> tau image (and, with the nu <-> nubar mirror, in both exchanges). An
image must be the state relabelled, feature for feature, as the runtime would compute it from the
relabelled cell; nu_e's change and the growth rate follow the state unchanged."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dodo.conventions import MU_TAU_EXCHANGE, NU_NUBAR_EXCHANGE  # noqa: E402
from dodo.training.ensemble_train import ConfigError, EnsembleConfig, train_on  # noqa: E402
from dodo.training.pool import features_of, training_arrays, training_images  # noqa: E402
from test_growth_labels import rest_table  # noqa: E402


def _states(n, seed):
    from conftest import random_states

    return random_states(np.random.default_rng(seed), n, max_flux_factor=0.6, mu_equals_tau=False)


@pytest.mark.parametrize("name", ["nu_nubar", "mu_tau", "both"])
def test_an_image_has_the_features_of_the_relabelled_cells_computed_from_scratch(name):
    species = {"nu_nubar": np.array(NU_NUBAR_EXCHANGE), "mu_tau": np.array(MU_TAU_EXCHANGE),
               "both": np.array(NU_NUBAR_EXCHANGE)[np.array(MU_TAU_EXCHANGE)]}[name]
    F = _states(24, 5)
    features = "invariants27+box7+eln18-v1"
    rows = np.arange(len(F))
    table = rest_table(F, lambda proxy: 2.0 * proxy, True)
    relabelled = rest_table(F[:, species], lambda proxy: 2.0 * proxy, True)
    image = features_of(table, rows, features, species=species)
    from_scratch = features_of(relabelled, rows, features)
    assert not np.allclose(image, features_of(table, rows, features))  # mu != tau: a different input
    np.testing.assert_allclose(image, from_scratch, rtol=1e-9, atol=1e-11)


def test_the_images_follow_the_config_and_carry_the_states_labels():
    F = _states(10, 8)
    table = rest_table(F, lambda proxy: 2.0 * proxy, True)
    rows = np.arange(len(F))
    for mirror, flavour, count in ((False, False, 1), (True, False, 2), (False, True, 2), (True, True, 4)):
        config = EnsembleConfig(mirror=mirror, flavour_images=flavour, features="invariants27+box7+eln18-v1")
        images = training_images(config)
        assert len(images) == count
        X, r, g = training_arrays(table, rows, config)
        assert X.shape[0] == r.shape[0] == g.shape[0] == count * len(rows)
        for k in range(count):  # one block per image, the state's own labels in each
            np.testing.assert_array_equal(r[k * len(rows):(k + 1) * len(rows)], table["r"][rows])
            np.testing.assert_array_equal(g[k * len(rows):(k + 1) * len(rows)], table["log_growth"][rows])
        blocks = {X[k * len(rows):(k + 1) * len(rows)].tobytes() for k in range(count)}
        assert len(blocks) == count  # mu != tau and n_nu != n_nubar: every image is another input
    # The mirror alone is the recipe before flavour images, row for row.
    plain = EnsembleConfig(features="invariants27+box7+eln18-v1")
    assert plain.mirror and not plain.flavour_images
    X, _, _ = training_arrays(table, rows, plain)
    np.testing.assert_array_equal(X[len(rows):], features_of(table, rows, plain.features, swapped=True))


def test_flavour_images_is_a_boolean_read_from_the_ensemble_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ensemble:\n  flavour_images: true\n")
    assert EnsembleConfig.load(str(path)).flavour_images is True
    path.write_text("ensemble:\n  flavour_images: yes please\n")
    with pytest.raises(ConfigError, match="flavour_images must be true or false"):
        EnsembleConfig.load(str(path))
    with pytest.raises(ConfigError, match="unknown key 'growth.flavour_images'"):
        EnsembleConfig.load(str(path), overrides={"growth.flavour_images": True})


def test_an_ensemble_trained_on_the_flavour_images_answers_alike_on_each_image(tmp_path):
    """Members, growth members and student fitted on all four images (the whole train_on path runs):
    the members' residuals for a state and its mu <-> tau image are closer than without the images
    (measured 0.0075 against 0.0123 here; the growth output of so small a fit is too noisy to tell)."""
    from dodo.training.ensemble import predict

    def symmetric_rate(F):  # a rate that depends on the state, the same for its mu <-> tau image
        return lambda proxy: proxy * (1 + 3 * np.abs(F[:, 1, 0] - F[:, 2, 0]) / F[:, :, 0].sum(axis=1))

    F, F_labels = _states(60, 3), _states(60, 4)
    table = rest_table(F, symmetric_rate(F), True)
    labels = rest_table(F_labels, symmetric_rate(F_labels), False)
    rows = np.arange(len(F))
    gaps = {}
    for flavour in (False, True):
        config = EnsembleConfig(members=2, width=16, steps=300, growth_members=1, growth_width=16, growth_steps=300,
                                distill_width=16, distill_steps=300, flavour_images=flavour,
                                features="invariants27+box7+eln18-v1", checkpoint=str(tmp_path / "e.pt"))
        ensemble = train_on(table, rows, config, growth_table=labels)
        own = predict(ensemble, features_of(table, rows, config.features))
        image = predict(ensemble, features_of(table, rows, config.features, species=np.array(MU_TAU_EXCHANGE)))
        assert all(np.all(np.isfinite(v)) for v in own.values())
        gaps[flavour] = np.mean(np.abs(own["r_mean"] - image["r_mean"]))
    assert gaps[True] < 0.8 * gaps[False]
