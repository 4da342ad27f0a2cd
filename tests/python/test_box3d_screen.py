"""The stability screen (Box3D step 1, issue 13) decides stable cells from their moments alone; it
may only skip work: with it and without it (every cell through the direction loops) statuses,
outputs and growth rates are identical bit for bit, on random, M1-like and borderline cells."""
import numpy as np
import pytest

import dodo
from conftest import random_states, random_velocities

NO_CROSSING = int(dodo.CellStatus.NO_CROSSING)


def m1_like(rng, n, *, nubar_scale=(0.2, 0.7)):
    """Heavy species equal (ELN_mu = ELN_tau = 0); fewer nubar_e than nu_e."""
    F = random_states(rng, n, max_flux_factor=0.6)
    F[:, 2] = F[:, 4] = F[:, 5] = F[:, 1]
    F[:, 3] *= rng.uniform(*nubar_scale, (n, 1))
    return F


def borderline(rng, n):
    """nubar_e close to nu_e in density, flux factor and direction: crossing or not, narrowly."""
    F = m1_like(rng, n, nubar_scale=(1.0, 1.0))
    turned = F[:, 0, 1:] + rng.normal(scale=0.03, size=(n, 3)) * F[:, 0, :1]
    flux = np.linalg.norm(F[:, 0, 1:], axis=-1) * rng.uniform(0.9, 1.1, n)
    F[:, 3, 1:] = turned / np.linalg.norm(turned, axis=-1, keepdims=True) * flux[:, None]
    F[:, 3] *= rng.uniform(0.8, 1.0, (n, 1))
    F[:, 3, 1:] *= np.minimum(1.0, 0.95 * F[:, 3, :1] / np.linalg.norm(F[:, 3, 1:], axis=-1, keepdims=True))
    return F


def weak_heavy_eln(rng, n):
    """Four different heavy species with small ELNs beside a large nu_e excess: the pairs' bounds,
    not the flavours' signs, decide many of these."""
    F = m1_like(rng, n)
    F[:, 4] = F[:, 1] * rng.uniform(0.97, 1.03, (n, 1))
    F[:, 5] = F[:, 2] = F[:, 1] * rng.uniform(0.97, 1.03, (n, 1))
    F[:, 5] *= rng.uniform(0.97, 1.03, (n, 1))
    F[:, 0] *= 3.0
    return F


def isotropic_excess(rng, n):
    """Nearly isotropic species (small flux factors): the bounds are tight, the decisions close."""
    F = random_states(rng, n, max_flux_factor=0.05)
    F[:, 0, 0] = F[:, 3, 0] * rng.uniform(0.99, 1.01, n)
    return F


def between_points(rng, n):
    """M1-like cells whose ELN_e changes sign on the sphere but only near its edge, where the
    ratio nu_e/nubar_e spans 1 by a little: on the quadrature's points mostly of one sign (Box3D
    sees no crossing), which the screen then decides from the points themselves."""
    from dodo import _core

    F = m1_like(rng, n, nubar_scale=(0.3, 0.9))

    def across_and_exponent(species):  # n A e^{-Z}, Z Fhat
        flux = np.linalg.norm(species[:, 1:], axis=1)
        Z = _core.inverse_langevin(flux / species[:, 0], "exact")
        amplitude = np.where(Z > 1e-8, 2 * Z / -np.expm1(-2 * np.maximum(Z, 1e-300)), 1.0)
        return species[:, 0] * amplitude * np.exp(-Z), Z[:, None] * species[:, 1:] / np.maximum(flux, 1e-300)[:, None]

    (across, exponent), (across_bar, exponent_bar) = across_and_exponent(F[:, 0]), across_and_exponent(F[:, 3])
    log_ratio = np.log(across / across_bar)
    spread = np.linalg.norm(exponent - exponent_bar, axis=1)
    # Scaling nubar_e by k keeps its Z and direction and moves ln(ratio) by -ln k: put |ln ratio|
    # at 0.9-0.999 of its range over the sphere.
    target = np.sign(log_ratio) * rng.uniform(0.9, 0.999, n) * spread
    F[:, 3] *= np.exp(log_ratio - target)[:, None]
    return F


def aligned_near_isotropic(rng, n, max_flux_factor, jitter_degrees, density_spread=0.5):
    """Six species with small flux factors along nearly one (radial) direction, as in the optically
    thick part of a merger: the [floor, peak] bounds span +-Z of each density there."""
    radial = rng.normal(size=(n, 3))
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    F = np.empty((n, 6, 4))
    for a in range(6):
        direction = radial + rng.normal(scale=np.radians(jitter_degrees), size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        F[:, a, 0] = rng.uniform(1 - density_spread, 1 + density_spread, n)
        F[:, a, 1:] = direction * (F[:, a, 0] * rng.uniform(0.0, max_flux_factor, n))[:, None]
    return F


def heavy_species_apart(rng, n):
    """Optically thick cells whose four heavy species differ by ~1% (mu != tau, nu_x != nubar_x):
    the linearised pair bounds decide most of their stable cells, the [floor, peak] bounds few."""
    F = aligned_near_isotropic(rng, n, 0.05, 20)
    F[:, 2] = F[:, 1] * rng.uniform(0.99, 1.01, (n, 1))
    F[:, 4] = F[:, 1] * rng.uniform(0.99, 1.01, (n, 1))
    F[:, 5] = F[:, 2] * rng.uniform(0.99, 1.01, (n, 1))
    return F


def near_isotropic_tiny_eln(rng, n):
    """Six nearly isotropic, nearly equal species: ELN differences of 1e-7 to 1e-2 against
    anisotropies of the same order, so that many cells sit at the bounds' edges."""
    F = aligned_near_isotropic(rng, n, 1e-3, 90, density_spread=0.0)
    F[:, :, 0] *= 1 + 10.0 ** rng.uniform(-7, -2, (n, 1)) * rng.uniform(-1, 1, (n, 6))
    F[:, :, 1:] *= (10.0 ** rng.uniform(-4, 0, (n, 6)))[..., None]
    return F


KINDS = {"random": lambda rng, n: random_states(rng, n), "mu=tau": lambda rng, n: random_states(rng, n, mu_equals_tau=True),
         "m1_like": m1_like, "borderline": borderline, "weak_heavy_eln": weak_heavy_eln,
         "isotropic_excess": isotropic_excess, "between_points": between_points,
         "heavy_species_apart": heavy_species_apart, "near_isotropic_tiny_eln": near_isotropic_tiny_eln}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("moving", [False, True], ids=["rest", "moving"])
def test_screen_changes_nothing_bit_for_bit(kind, moving):
    rng = np.random.default_rng([list(KINDS).index(kind), moving])
    n = 4000
    F = KINDS[kind](rng, n)
    u = random_velocities(rng, n) if moving else None
    if moving:
        F = dodo.boost_from_rest(F, u[:, None, :])
    screened = dodo._core.Box3D(17, "exact", 0.98).apply(F, u, 1)
    full = dodo._core.Box3D(17, "exact", 0.98, screen_stable_cells=False).apply(F, u, 1)
    for name, a, b in zip(("F_box", "growth_over_ntot", "ntot", "status"), screened, full):
        assert np.array_equal(a, b), f"{name} differs in {np.sum(np.any((a != b).reshape(n, -1), axis=1))} cells"
    stable = screened[3] == NO_CROSSING
    if kind not in ("random", "mu=tau"):
        assert 0.05 < stable.mean() < 0.95  # both answers


@pytest.mark.parametrize("z_method", ["exact", "jedynak"])
def test_screen_changes_nothing_at_other_orders_and_z_methods(z_method):
    rng = np.random.default_rng(7)
    F = np.concatenate([m1_like(rng, 500), borderline(rng, 500), weak_heavy_eln(rng, 500), heavy_species_apart(rng, 500),
                        near_isotropic_tiny_eln(rng, 500)])
    for order in (17, 41):
        screened = dodo._core.Box3D(order, z_method, 0.98).apply(F, None, 1)
        full = dodo._core.Box3D(order, z_method, 0.98, screen_stable_cells=False).apply(F, None, 1)
        for a, b in zip(screened, full):
            assert np.array_equal(a, b), (order, z_method)
