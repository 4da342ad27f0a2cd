"""Outside fidelity probe of the shipped default model on states outside its training families
(2026-12-06; docs/training.md, "OOD fidelity probe (2026-12-06)").

The default model promises to fall back toward Box3D where it does not know (issue 10, item 4). Five
families of physical (realizable, ELN-crossing) initial states lie outside the recipes it was trained
on (emu, three_flavour, merger; docs/dataset.md): ``supernova`` (nu_e-dominated, forward-peaked
nu_e), ``heavy`` (heavy leptons 60-80% of N_tot, nu_x != nubar_x), ``isotropic`` (every flux factor
< 0.15, shallow crossings), ``beamed`` (every flux factor 0.9-0.95, nu_e and nubar_e 60-120
degrees apart) and ``taupoor`` (mu != tau at the extreme: nu_tau, nubar_tau ~0.2% of N_tot). ``ood_states`` below draws them; tests/data/qke/ood_probe_FAMILY.h5 hold Dodo's
solver runs of them at its default resolution, made by

    .venv/bin/python tests/python/test_ood_fidelity.py FAMILY > /tmp/ood/FAMILY.yaml
    nice -n 10 .venv/bin/dodo simulate /tmp/ood/FAMILY.h5 --input /tmp/ood/FAMILY.yaml --seed 0 --threads 1

(14 states each; the solver dropped state 6 of ``heavy``: "not saturated early enough").

What is asserted:
- physics: the files' states are the recipe's (regenerated bit for bit), they cross and are
  realizable, the solver's asymptotic states conserve the flavour-summed four-fluxes and the
  per-flavour lepton numbers to rounding and stay realizable; the closure's answers on them do too;
- the current standing, as a REGRESSION GUARD (not a law of physics; a better model may move these
  numbers, a worse one must not pass): per family, states worse than Box3D by more than 0.0025 N_tot
  at most as many as measured (0 in every family but taupoor, 1 there: state 3, 0.0033 vs 0.0004),
  the model's mean error below Box3D's, and the model's growth rate within 10% of the solver's
  measured rate on at least as many states as measured.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests/data/qke"
FAMILIES = ("supernova", "heavy", "isotropic", "beamed", "taupoor")
#: Random seed of each family's recipe (numpy default_rng).
SEEDS = {"supernova": 20261206, "heavy": 20261207, "isotropic": 20261208, "beamed": 20261209, "taupoor": 20261210}
#: States drawn per family (the solver's file keeps the valid ones, `input_index`).
COUNT = 14
TOTAL_DENSITY = 1e33
#: Measured 2026-12-06 with the shipped default model (dodo score default FILE --bootstrap 2000):
#: (states scored, mean |dn|/N_tot model, Box3D, states whose model growth rate is within 10% of the
#: solver's measured rate).
MEASURED = {"supernova": (14, 0.00145, 0.01189, 13), "heavy": (13, 0.00174, 0.00284, 13),
            "isotropic": (14, 0.00124, 0.00626, 11), "beamed": (14, 0.00384, 0.02320, 14),
            "taupoor": (14, 0.00933, 0.01418, 12)}
WORSE_THRESHOLD = 0.0025
#: Worse-than-Box3D counts (by > WORSE_THRESHOLD N_tot) measured per family: the guard's ceilings.
MEASURED_WORSE = {"supernova": 0, "heavy": 0, "isotropic": 0, "beamed": 0, "taupoor": 1}


# --- the recipe -------------------------------------------------------------------------------

def _unit(rng):
    vector = rng.normal(size=3)
    return vector / np.linalg.norm(vector)


def _at_angle(rng, axis, low_deg, high_deg):
    """A direction at an angle uniform in [low_deg, high_deg] from ``axis`` (random azimuth)."""
    cosine = np.cos(np.radians(rng.uniform(low_deg, high_deg)))
    normal = _unit(rng)
    normal -= (normal @ axis) * axis
    normal /= np.linalg.norm(normal)
    return cosine * axis + np.sqrt(1 - cosine * cosine) * normal


def _tilted(rng, axis, max_deg):
    """A direction within ``max_deg`` of ``axis`` (uniform in cos theta on the cap)."""
    cosine = rng.uniform(np.cos(np.radians(max_deg)), 1.0)
    normal = _unit(rng)
    normal -= (normal @ axis) * axis
    normal /= np.linalg.norm(normal)
    return cosine * axis + np.sqrt(1 - cosine * cosine) * normal


def _row(density, flux_factor, direction):
    return np.concatenate([[density], density * flux_factor * direction])


def _draw(family, rng):
    """One state [6 species (nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, nubar_tau), (n, Fx, Fy, Fz)], any scale."""
    if family == "supernova":  # nu_e-dominated, nu_e forward-peaked, heavy 10-30% of N_tot with small flux
        axis = _unit(rng)
        n_e, n_ebar = 1.0, rng.uniform(0.5, 0.8)
        heavy_fraction = rng.uniform(0.10, 0.30)
        n_heavy = heavy_fraction * (n_e + n_ebar) / (1 - heavy_fraction) / 4
        e = _row(n_e, rng.uniform(0.45, 0.6), _tilted(rng, axis, 20))
        ebar = _row(n_ebar, rng.uniform(0.3, 0.45), _tilted(rng, axis, 20))
        x = _row(n_heavy, rng.uniform(0.0, 0.1), _tilted(rng, axis, 30))
        return np.stack([e, x, x, ebar, x, x])
    if family == "heavy":  # heavy species 60-80% of N_tot, nu_x != nubar_x (mu = tau)
        heavy_fraction = rng.uniform(0.6, 0.8)
        n_e, n_ebar = 1.0, rng.uniform(0.5, 2.0)
        n_heavy = heavy_fraction * (n_e + n_ebar) / (1 - heavy_fraction)
        split = rng.uniform(0.35, 0.65)
        e = _row(n_e, rng.uniform(0.0, 0.6), _unit(rng))
        ebar = _row(n_ebar, rng.uniform(0.0, 0.6), _unit(rng))
        x = _row(n_heavy * split / 2, rng.uniform(0.0, 0.5), _unit(rng))
        xbar = _row(n_heavy * (1 - split) / 2, rng.uniform(0.0, 0.5), _unit(rng))
        return np.stack([e, x, x, ebar, xbar, xbar])
    if family == "isotropic":  # every flux factor < 0.15: a shallow crossing
        n_e, n_ebar, n_heavy = 1.0, rng.uniform(0.8, 1.25), rng.uniform(0.2, 0.6)
        e = _row(n_e, rng.uniform(0.03, 0.15), _unit(rng))
        ebar = _row(n_ebar, rng.uniform(0.03, 0.15), _unit(rng))
        x = _row(n_heavy, rng.uniform(0.0, 0.15), _unit(rng))
        return np.stack([e, x, x, ebar, x, x])
    if family == "beamed":  # every flux factor 0.9-0.95; nubar_e and heavy 60-120 degrees from nu_e
        axis = _unit(rng)
        n_e, n_ebar, n_heavy = 1.0, rng.uniform(0.6, 1.6), rng.uniform(0.1, 0.6)
        e = _row(n_e, rng.uniform(0.9, 0.95), axis)
        ebar = _row(n_ebar, rng.uniform(0.9, 0.95), _at_angle(rng, axis, 60, 120))
        x = _row(n_heavy, rng.uniform(0.9, 0.95), _at_angle(rng, axis, 60, 120))
        return np.stack([e, x, x, ebar, x, x])
    if family == "taupoor":  # mu != tau at the extreme: nu_tau and nubar_tau ~1% of the others' scale
        e = _row(1.0, rng.uniform(0.0, 0.5), _unit(rng))
        ebar = _row(rng.uniform(0.5, 2.0), rng.uniform(0.0, 0.5), _unit(rng))
        mu = _row(rng.uniform(0.5, 2.0), rng.uniform(0.0, 0.6), _unit(rng))
        mubar = _row(rng.uniform(0.5, 2.0), rng.uniform(0.0, 0.6), _unit(rng))
        tau = _row(0.01, 0.0, _unit(rng))
        return np.stack([e, mu, tau, ebar, mubar, tau])
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def ood_states(family: str, count: int = COUNT) -> np.ndarray:
    """The first ``count`` ELN-crossing draws of ``family`` [count, 6, 4], N_tot = 1e33 cm^-3."""
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.states import _crossing

    directions = uniform_sphere(16)
    rng = np.random.default_rng(SEEDS[family])
    states = []
    while len(states) < count:
        state = _draw(family, rng)
        state = state * (TOTAL_DENSITY / state[:, 0].sum())
        if _crossing(state, directions):
            states.append(state)
    return np.array(states)


def yaml_text(states: np.ndarray) -> str:
    """`dodo simulate --input` YAML (docs/qke.md); repr keeps every float exactly."""
    lines = ["states:"]
    for state in states:
        lines.append("  - [" + ", ".join("[" + ", ".join(repr(float(v)) for v in row) + "]" for row in state) + "]")
    return "\n".join(lines) + "\n"


# --- the tests ----------------------------------------------------------------------------------

def _states(family):
    pytest.importorskip("h5py")
    from dodo.score import read_emu_states

    import h5py

    path = DATA / f"ood_probe_{family}.h5"
    with h5py.File(path, "r") as handle:
        index = handle["input_index"][()]
    return read_emu_states(str(path)), index


@pytest.fixture(scope="module")
def closure():
    import dodo

    return dodo.Closure()


@pytest.mark.parametrize("family", FAMILIES)
def test_files_hold_the_recipes_states(family):
    """The committed initial states are the recipe's draws (so the file says how it was made), to rounding:
    NumPy's sin, cos and the like take other SIMD code on other CPUs, so the draws made on an AVX-512 CPU
    differ from a CPU without it in their last bits (9.5e-15 relative seen; the test asked for the same bits
    and failed on every CPU without AVX-512, found by the fresh-clone CI of 2026-12-07 on such a machine)."""
    states, index = _states(family)
    assert len(index) == MEASURED[family][0]
    np.testing.assert_allclose(states.F_init, ood_states(family)[index], rtol=1e-13, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_solver_truth_is_physical(family):
    """Initial states cross and are realizable; the asymptotic states conserve the flavour-summed
    four-flux (nu and nubar apart) and each flavour's lepton number to rounding, and stay realizable."""
    from dodo.qke.directions import uniform_sphere
    from dodo.qke.states import _crossing

    states, _ = _states(family)
    directions = uniform_sphere(16)
    ntot = states.F_init[:, :, 0].sum(axis=1)
    for F in (states.F_init, states.F_final):
        assert np.all(F[..., 0] > 0)
        assert np.all(np.linalg.norm(F[..., 1:], axis=-1) <= F[..., 0] * (1 + 1e-12))
    assert all(_crossing(state, directions) for state in states.F_init)
    change = states.F_final - states.F_init
    flavour_summed = np.maximum(np.abs(change[:, :3].sum(axis=1)).max(axis=1),
                                np.abs(change[:, 3:].sum(axis=1)).max(axis=1)) / ntot
    lepton = np.abs(change[:, :3, 0] - change[:, 3:, 0]).max(axis=1) / ntot
    assert flavour_summed.max() < 1e-12 and lepton.max() < 1e-12
    # and something did happen: some species' density changed by at least 0.5% of N_tot in every state
    assert np.all(np.abs(change[..., 0]).max(axis=1) / ntot > 0.005)


@pytest.mark.parametrize("family", FAMILIES)
def test_closure_on_ood_states_conserves_and_is_realizable(family, closure):
    """The default model's answers conserve what fast flavour conversion conserves, stay realizable
    and carry a finite, positive uncertainty on these crossing cells."""
    states, _ = _states(family)
    result = closure.apply(states.F_init)
    F = np.asarray(result.F_pred)
    ntot = states.F_init[:, :, 0].sum(axis=1)
    change = F - states.F_init
    assert np.abs(change[:, :3].sum(axis=1)).max(axis=1).max() / ntot.min() < 1e-9
    assert np.abs(change[:, 3:].sum(axis=1)).max(axis=1).max() / ntot.min() < 1e-9
    assert (np.abs(change[:, :3, 0] - change[:, 3:, 0]).max(axis=1) / ntot).max() < 1e-9
    assert np.all(F[..., 0] > 0)
    assert np.all(np.linalg.norm(F[..., 1:], axis=-1) <= F[..., 0] * (1 + 1e-9))
    uncertainty = np.asarray(result.uncertainty)
    assert np.all(np.isfinite(uncertainty)) and np.all(uncertainty > 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_standing_against_box3d_regression_guard(family, closure):
    """REGRESSION GUARD, not physics: per family, states worse than Box3D by > 0.0025 N_tot do not
    exceed the count measured on 2026-12-06 (0), the model's mean stays below Box3D's, and its growth
    rate stays within 10% of the solver's on at least as many states as then."""
    from dodo.score import score

    states, _ = _states(family)
    report = score(closure, states, resamples=200, seed=0, threshold=WORSE_THRESHOLD)
    scored, model_mean, box_mean, growth_within = MEASURED[family]
    assert report["n_scored"] == scored
    assert report["box3d"]["mean"] == pytest.approx(box_mean, abs=1e-5)  # Box3D is fixed: a check of the data
    assert report["states_worse_than_box3d"] <= MEASURED_WORSE[family]
    assert report["model"]["mean"] < report["box3d"]["mean"]
    within = round(report["growth_rate"]["model"]["within_10_percent"] * report["growth_rate"]["n_states"])
    assert within >= growth_within


if __name__ == "__main__":  # python tests/python/test_ood_fidelity.py FAMILY > FAMILY.yaml
    if len(sys.argv) != 2 or sys.argv[1] not in FAMILIES:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(FAMILIES)}}} > FAMILY.yaml")
    sys.stdout.write(yaml_text(ood_states(sys.argv[1])))
