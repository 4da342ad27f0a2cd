"""Conservation projection, realizability limiter and head assembly (physics.md sections 3-4)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dodo.training.conservation import conservation_constraints, conservation_projector, conservation_violation
from dodo.training.frames import boost_from_rest, boost_to_rest, random_velocity
from dodo.training.physics_torch import (ConservationProjection, ResidualClosureHead, assemble_head, limiter_theta,
                                         realizability_margin)

RNG = np.random.default_rng(12)


def realizable_states(n, max_flux_factor=0.8):
    n_dens = RNG.uniform(0.05, 1.0, (n, 6))
    direction = RNG.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F = np.empty((n, 6, 4))
    F[..., 0] = n_dens
    F[..., 1:] = (n_dens * RNG.uniform(0, max_flux_factor, (n, 6)))[..., None] * direction
    return F / n_dens.sum(axis=1)[:, None, None]


def random_rotation():
    q, r = np.linalg.qr(RNG.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_conserving_subspace_has_dimension_14():
    P = conservation_projector()
    assert np.allclose(P, P.T) and np.allclose(P @ P, P)
    assert round(np.trace(P)) == 14
    assert np.linalg.matrix_rank(conservation_constraints()) == 10


def test_projection_conserves_flavour_summed_flux_and_lepton_number_per_flavour():
    dF = torch.from_numpy(RNG.normal(size=(50, 6, 4)))
    projected = ConservationProjection()(dF).numpy()
    for s in range(2):
        assert np.abs(projected[:, 3 * s:3 * s + 3, :].sum(axis=1)).max() < 1e-14
    assert np.abs(projected[:, :3, 0] - projected[:, 3:, 0]).max() < 1e-14
    assert conservation_violation(projected).max() < 1e-14


def test_projection_leaves_a_conserving_change_alone():
    allowed = (conservation_projector() @ RNG.normal(size=(24, 8))).T.reshape(8, 6, 4)
    again = ConservationProjection()(torch.from_numpy(allowed)).numpy()
    assert np.allclose(again, allowed, atol=1e-14)


def test_projection_commutes_with_rotations():
    R = np.eye(4)
    R[1:, 1:] = random_rotation()
    dF = RNG.normal(size=(10, 6, 4))
    project = ConservationProjection()
    rotated_then_projected = project(torch.from_numpy(dF @ R.T)).numpy()
    projected_then_rotated = project(torch.from_numpy(dF)).numpy() @ R.T
    assert np.allclose(rotated_then_projected, projected_then_rotated, atol=1e-13)


def test_limiter_keeps_every_species_realizable_and_is_maximal():
    base = torch.from_numpy(realizable_states(400))
    dF = torch.from_numpy(RNG.normal(scale=0.03, size=(400, 6, 4)))
    theta = limiter_theta(base, dF)
    assert torch.all((theta >= 0) & (theta <= 1))
    after = base + theta[:, None, None] * dF
    assert realizability_margin(after).min() >= -1e-12
    limited = theta < 1
    assert limited.any() and (~limited).any()
    nudged = base + (theta + 1e-6)[:, None, None] * dF
    assert torch.all(realizability_margin(nudged[limited]).min(dim=-1).values < 0)


def test_limiter_does_nothing_to_a_small_correction():
    base = torch.from_numpy(realizable_states(100, max_flux_factor=0.5))
    dF = torch.from_numpy(RNG.normal(scale=1e-4, size=(100, 6, 4)))
    assert torch.all(limiter_theta(base, dF) == 1)


def test_limiter_never_pushes_an_unrealizable_species_further_out():
    base = torch.from_numpy(realizable_states(50))
    base[:, 0, 1:] = base[:, 0, 1:] / torch.linalg.vector_norm(base[:, 0, 1:], dim=-1, keepdim=True) * base[:, 0, :1] * 1.001
    dF = torch.from_numpy(RNG.normal(scale=0.1, size=(50, 6, 4)))
    theta = limiter_theta(base, dF)
    before = realizability_margin(base)[:, 0]
    after = realizability_margin(base + theta[:, None, None] * dF)[:, 0]
    assert torch.all(after >= before - 1e-12)


def test_equivariant_head_rotates_with_its_inputs():
    R = np.eye(4)
    R[1:, 1:] = random_rotation()
    F_init = realizable_states(20)
    dF_box = (conservation_projector() @ RNG.normal(scale=0.05, size=(24, 20))).T.reshape(20, 6, 4)
    output = torch.from_numpy(RNG.normal(size=(20, 78)))
    plain = assemble_head("equivariant", output, torch.from_numpy(F_init), torch.from_numpy(dF_box)).numpy()
    rotated = assemble_head("equivariant", output, torch.from_numpy(F_init @ R.T), torch.from_numpy(dF_box @ R.T)).numpy()
    assert np.allclose(rotated, plain @ R.T, atol=1e-13)


def test_direct_head_is_the_24_numbers_species_major():
    output = torch.arange(24.0)[None]
    dF = assemble_head("direct", output, None, None)
    assert dF.shape == (1, 6, 4)
    assert float(dF[0, 1, 0]) == 4.0  # species nu_mu, component t


def test_closure_head_output_conserves_and_is_realizable_in_fp32():
    F_init = realizable_states(300, max_flux_factor=0.6)
    dF_box = 0.1 * (conservation_projector() @ RNG.normal(size=(24, 300))).T.reshape(300, 6, 4)
    F_box = F_init + 0.2 * dF_box  # some species may leave the cone: the limiter must cope
    head = ResidualClosureHead("equivariant")
    output = torch.from_numpy(RNG.normal(scale=2.0, size=(300, 78)).astype(np.float32))
    F_init32, F_box32 = (torch.from_numpy(a.astype(np.float32)) for a in (F_init, F_box))
    base_margin = realizability_margin(F_box32)
    dF = head(output, F_init32, F_box32).double().numpy()
    assert conservation_violation(dF).max() < 1e-6
    after = realizability_margin(F_box32.double() + torch.from_numpy(dF))
    assert torch.all(after >= torch.clamp(base_margin.double(), max=0) - 1e-6)


def test_boost_round_trip_and_identity_at_rest():
    F = RNG.normal(size=(30, 6, 4))
    u = random_velocity(RNG, 30, max_speed=0.9)
    assert np.allclose(boost_from_rest(boost_to_rest(F, u[:, None, :]), u[:, None, :]), F, atol=1e-12)
    assert np.array_equal(boost_to_rest(F, np.array([1.0, 0, 0, 0])), F)
    rest = boost_to_rest(u, u)  # u itself becomes (1, 0, 0, 0)
    assert np.allclose(rest, [1, 0, 0, 0], atol=1e-12)
