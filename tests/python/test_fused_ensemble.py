"""The fused export of the density-residual ensemble (issue 13, item 2): the stacked graph that
`dodo export` writes computes what the member-by-member torch module computes, in far fewer
ONNX nodes, for any number of members, width and depth."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _random_ensemble(members=5, width=12, depth=2, n_inputs=34, seed=3):
    """An ensemble with random weights and feature statistics (no training needed to test the algebra)."""
    from dodo.training.ensemble import DensityResidualEnsemble, Member
    from dodo.training.features import INVARIANTS_AND_BOX

    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    stack = []
    for _ in range(members):
        member = Member(n_inputs, width, depth)
        with torch.no_grad():
            for parameter in member.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            member.mean.copy_(torch.as_tensor(rng.normal(0, 0.1, n_inputs)))
            member.std.copy_(torch.as_tensor(rng.uniform(0.01, 0.2, n_inputs)))
        stack.append(member)
    mean = rng.normal(0, 0.1, n_inputs)
    root = rng.normal(0, 1, (n_inputs, n_inputs)) / np.sqrt(n_inputs)
    precision = root @ root.T + np.eye(n_inputs)
    ensemble = DensityResidualEnsemble(stack, r_scale=0.02, sigma0=1.0, feature_mean=mean,
                                       feature_precision=precision, d2_max=0.5)
    ensemble.features = INVARIANTS_AND_BOX
    return ensemble.eval(), mean


def _inputs(mean, n=4000, seed=9):
    """Rows near the feature mean (gate open) and far from it (distance gate closing)."""
    rng = np.random.default_rng(seed)
    x = mean + rng.normal(0, 0.05, (n, len(mean))) * rng.uniform(0.2, 8.0, (n, 1))
    return torch.as_tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("members,width,depth", [(5, 12, 2), (1, 8, 1), (3, 16, 3)])
def test_fused_members_reproduce_each_member(members, width, depth):
    """fuse_members on any list of same-shape Members: output j of member k, times its scale."""
    from dodo.training.fused import fuse_members

    ensemble, mean = _random_ensemble(members, width, depth)
    x = _inputs(mean, 500)
    fused = fuse_members(ensemble.members, output_scale=(3.0, 0.5))
    with torch.no_grad():
        got = fused(x)  # [K, 2, N]
        expected = ensemble.member_outputs(x) * torch.tensor([3.0, 0.5])  # [K, N, 2]
    assert got.shape == (members, 2, len(x))
    # float32 rounding of the sums: relative to the size of the outputs
    np.testing.assert_allclose(got.permute(0, 2, 1).numpy(), expected.numpy(), rtol=1e-5,
                               atol=2e-6 * float(expected.abs().max()))


def test_fuse_members_refuses_members_of_different_shapes():
    from dodo.training.ensemble import Member
    from dodo.training.fused import fuse_members

    with pytest.raises(ValueError, match="one shape"):
        fuse_members([Member(34, 8, 2), Member(34, 16, 2)])
    with pytest.raises(ValueError, match="at least one"):
        fuse_members([])


def test_fused_graph_equals_the_unfused_torch_module_in_far_fewer_nodes():
    """The exported fused graph (onnxruntime) against DensityResidualEnsemble.outputs (torch): all
    three outputs to float32 rounding, with the gate both open and closing; 8 members of width 32
    (the default model's shape) in under a third of the nodes of the member-by-member export."""
    import onnx
    import onnxruntime

    from dodo.training.ensemble_train import ENSEMBLE_OUTPUTS, _ensemble_onnx_bytes, check_graph_outputs

    ensemble, mean = _random_ensemble(members=8, width=32, depth=2)
    x = _inputs(mean)
    fused_bytes = _ensemble_onnx_bytes(ensemble, fused=True)
    session = onnxruntime.InferenceSession(fused_bytes, providers=["CPUExecutionProvider"])
    got = session.run(list(ENSEMBLE_OUTPUTS), {"invariants": x.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in ensemble.outputs(x)]
    head, sigma, growth = expected
    # The inputs exercise the gate: open for some rows, nearly shut by the distance for others.
    gate = head[:, -6] / (ensemble.r_scale.item() * ensemble.member_outputs(x)[..., 0].mean(0).detach().numpy())
    assert gate.max() > 0.1 and gate.min() < 1e-3
    for name, g, e in zip(ENSEMBLE_OUTPUTS, got, expected):
        scale = np.abs(e).max()
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6 * scale, err_msg=name)
    assert check_graph_outputs(ensemble, fused_bytes) < 1.0

    fused_nodes = len(onnx.load_from_string(fused_bytes).graph.node)
    unfused_nodes = len(onnx.load_from_string(_ensemble_onnx_bytes(ensemble)).graph.node)
    assert fused_nodes * 3 < unfused_nodes, (fused_nodes, unfused_nodes)


def test_fused_graph_has_the_wiener_gate_of_the_unfused_module():
    """With error_per_spread > 0 (the shipped gate form) the fused graph gates as the torch module."""
    import onnxruntime

    from dodo.training.ensemble_train import ENSEMBLE_OUTPUTS, _ensemble_onnx_bytes

    ensemble, mean = _random_ensemble(members=8, width=32, depth=2)
    x = _inputs(mean)
    with torch.no_grad():
        sigma0_head = ensemble.outputs(x)[0].numpy()
        ensemble.error_per_spread.fill_(1.74)
        expected = [t.numpy() for t in ensemble.outputs(x)]
    assert not np.allclose(expected[0], sigma0_head)  # the Wiener gate is really in use
    session = onnxruntime.InferenceSession(_ensemble_onnx_bytes(ensemble, fused=True), providers=["CPUExecutionProvider"])
    got = session.run(list(ENSEMBLE_OUTPUTS), {"invariants": x.numpy()})
    for name, g, e in zip(ENSEMBLE_OUTPUTS, got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6 * np.abs(e).max(), err_msg=name)


def test_graph_check_catches_a_graph_that_differs():
    """check_graph_outputs is what the export relies on: a graph of another ensemble fails it."""
    from dodo.training.ensemble_train import _ensemble_onnx_bytes, check_graph_outputs
    from dodo.training.export import ExportError

    ensemble, _ = _random_ensemble(seed=3)
    other, _ = _random_ensemble(seed=4)
    with pytest.raises(ExportError, match="differs from the torch ensemble"):
        check_graph_outputs(ensemble, _ensemble_onnx_bytes(other, fused=True))


def test_fused_package_gives_the_closure_of_the_unfused_one(tmp_path):
    """`dodo export --fused`: a package the C++ runtime loads (its self-test passes) and whose
    closure equals the member-by-member package's to float32 rounding, outputs included."""
    import dodo
    from conftest import random_states, random_velocities
    from dodo import cli
    from dodo.training.ensemble_train import EnsembleConfig, save_checkpoint

    ensemble, _ = _random_ensemble(members=4, width=16, depth=2)
    ensemble.d2_max.fill_(1e4)  # keep the distance gate open on random cells: the correction shows
    with torch.no_grad():  # log growth ratios of order 0.1, as a trained model's (random weights give ~10)
        for member in ensemble.members:
            member.body[-1].weight[1].mul_(0.02)
            member.body[-1].bias[1].mul_(0.02)
    table = {"box3d": {"scheme": "pairwise", "form": "delta", "lebedev_order": 17, "z_method": "exact",
                       "max_flux_factor": 0.98}, "sha256": "0" * 64, "kind": "qke"}
    checkpoint = tmp_path / "ensemble.pt"
    save_checkpoint(ensemble, EnsembleConfig(width=16, members=4), table, np.arange(10), {}, str(checkpoint))
    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    assert cli.main(["export", str(checkpoint), "-o", str(plain)]) == 0
    assert cli.main(["export", str(checkpoint), "-o", str(fused), "--fused"]) == 0

    rng = np.random.default_rng(21)
    u = random_velocities(rng, 3000, max_speed=0.6)
    F = dodo.boost_from_rest(random_states(rng, 3000), u[:, None, :])
    a, b = dodo.Closure(str(plain)).apply(F, u), dodo.Closure(str(fused)).apply(F, u)
    ntot = dodo.comoving_density(F, u)
    corrected = np.abs(a.F_pred - F).max(axis=(1, 2)) / ntot
    assert np.median(corrected) > 1e-4  # the learned correction is really there
    assert np.max(np.abs(a.F_pred - b.F_pred).max(axis=(1, 2)) / ntot) < 1e-6
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_allclose(b.growth_rate, a.growth_rate, rtol=1e-5)
    np.testing.assert_allclose(b.uncertainty, a.uncertainty, rtol=1e-4, atol=1e-7)


def test_fused_flag_refuses_a_checkpoint_that_is_not_an_ensemble(tmp_path, capsys):
    from dodo import cli

    checkpoint = tmp_path / "other.pt"
    torch.save({"kind": "something else"}, checkpoint)
    assert cli.main(["export", str(checkpoint), "-o", str(tmp_path / "x.onnx"), "--fused"]) == 2
    assert "--fused applies to density-residual-ensemble checkpoints" in capsys.readouterr().err


def test_fused_flag_refuses_an_ensemble_with_members_it_would_leave_out(tmp_path, capsys):
    """FusedEnsemble stacks the density members only: a label-noise member (or growth members) would
    be dropped from the package's outputs, so --fused refuses such a checkpoint."""
    from dodo import cli
    from dodo.training.ensemble import fit_noise_member
    from dodo.training.ensemble_train import EnsembleConfig, save_checkpoint

    ensemble, mean = _random_ensemble(members=2, width=8, depth=2)
    ensemble.error_per_spread.fill_(2.5)
    X = _inputs(mean, n=64).numpy()
    ensemble.noise_member = fit_noise_member(X, np.full(len(X), 0.01), 1.0, seed=0, width=8, batch_size=16, epochs=1)
    ensemble.label_noise_weight.fill_(1.0)
    table = {"box3d": {"scheme": "pairwise", "form": "delta", "lebedev_order": 17, "z_method": "exact",
                       "max_flux_factor": 0.98}, "sha256": "0" * 64, "kind": "qke"}
    checkpoint = tmp_path / "ensemble.pt"
    save_checkpoint(ensemble, EnsembleConfig(width=8, members=2, noise_width=8), table, np.arange(10), {}, str(checkpoint))
    assert cli.main(["export", str(checkpoint), "-o", str(tmp_path / "x.onnx"), "--fused"]) == 2
    assert "--fused stacks the density members only" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
