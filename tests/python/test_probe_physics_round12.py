"""Outside probe of the physics laws, round twelve (docs/reliability_python.md, "Physics-law probe, round
twelve"): the same laws across Box3D's CPU code paths (x86-64-v4, x86-64-v3 and baseline clones,
dodo._core.box3d_instruction_set()), which sum in other orders and so differ by ~1e-15 N_tot on deep
crossings; cells at the stability threshold (a pair's lobe at the lobe-noise bound, where the paths may
decide differently); and the default model's distance gate toward Box3D across its threshold d^2 = d2_max.

Every test here must pass on any CPU path: where the paths differ, the tolerances say by how much the
probe measured them to differ (this machine's AVX-512 build against a build without the per-CPU clones).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import dodo

sys.path.insert(0, os.path.dirname(__file__))
from conftest import random_states  # noqa: E402
from test_box3d_screen import m1_like  # noqa: E402
from test_probe_physics_round11 import _nearly_stable  # noqa: E402

NO_CROSSING = int(dodo.CellStatus.NO_CROSSING)

# Box3D's F_box of three deep crossings (rest; M1-like at v = 0.99; mu = tau at v = 0.6), made on the
# x86-64-v4 path; the baseline build gave the same to 2.8e-16 N_tot (proxies 0.127, 0.026, 0.079).
PINNED_F_BOX = [
    [[0.4367038507469858, -0.08115496101901848, 0.03106040722657049, -0.07255595687494065],
     [0.2795210676799709, -0.026144467005985796, -0.025891770900355417, -0.03784205454336619],
     [0.801330800950805, -0.0794440360353282, 0.02193064150997176, -0.11019232067463614],
     [0.41727287513100086, -0.12459633641334647, -0.1673210707059205, 0.04287821992873824],
     [0.2658168636441721, -0.09944911113584795, -0.01429910292691107, -0.0019199033573815139],
     [0.387123328480951, -0.17980028816888344, -0.05538544978318842, 0.08405830053975488]],
    [[3.7731359186006466, 1.8535424412958714, 3.241650326062131, 0.2791209870981588],
     [4.427030857274812, 2.2281245862168144, 3.7642393099167157, 0.3929794524683532],
     [4.427030857274812, 2.2281245862168144, 3.7642393099167157, 0.3929794524683532],
     [2.4088303634406034, 1.234926622120605, 2.0399223587170194, 0.12366152675737435],
     [4.379732538120422, 2.2132094400577427, 3.718946522993845, 0.37709020887991423],
     [4.379732538120422, 2.2132094400577427, 3.718946522993845, 0.37709020887991423]],
    [[0.11395738580245318, -0.0012476356051866755, -0.024053337090713528, -0.028873960629988555],
     [0.24500554549137232, -0.07685456944955704, 0.005434266619067971, -0.05438249718974247],
     [0.24500554549137232, -0.07685456944955704, 0.005434266619067971, -0.05438249718974247],
     [0.7934289250222966, -0.3650003466747344, -0.2778754943068231, -0.12243861333171802],
     [0.6888838334410243, -0.299519644717655, -0.2275914589178416, -0.13602898078216563],
     [0.6888838334410243, -0.299519644717655, -0.2275914589178416, -0.13602898078216563]],
]


def _pinned_cells():
    rng = np.random.default_rng(9512)
    F = np.concatenate([random_states(rng, 1) / 1e33, m1_like(rng, 1) / 1e33,
                        random_states(rng, 1, mu_equals_tau=True) / 1e33])
    speed = np.array([0.0, 0.99, 0.6])
    direction = rng.normal(size=(3, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    W = 1 / np.sqrt(1 - speed**2)
    u = np.concatenate([W[:, None], (W * speed)[:, None] * direction], axis=1)
    return dodo.boost_from_rest(F, u[:, None, :]), u


def test_deep_crossings_give_the_same_box3d_answer_on_every_cpu_path():
    """Pinned on x86-64-v4; the baseline build (no clones) was 2.8e-16 N_tot from it, random deep cells
    of both builds 6.7e-16 (borderline ones 3.4e-15, proxies 5e-15 relative): 1e-13 N_tot leaves room for
    the AVX2 path's other order without hiding a real change (Box3D moves these cells by 0.03-0.19)."""
    F, u = _pinned_cells()
    result = dodo.box3d(F, u)
    ntot = dodo.comoving_density(F, u)
    assert np.array_equal(result.status, np.zeros(3, np.uint32))
    deviation = np.abs(result.F_box - np.array(PINNED_F_BOX)).reshape(3, -1).max(axis=1) / ntot
    assert deviation.max() <= 1e-13, (dodo._core.box3d_instruction_set(), deviation)
    np.testing.assert_allclose(result.growth_over_ntot, [0.12655973, 0.02627339, 0.07937901], rtol=1e-7)


def _threshold_family(seed, angles, speed, direction):
    """One nearly stable cell (round eleven: nubar = nu, nubar_e's flux turned by `angle`), boosted to
    `speed` along `direction`."""
    rng = np.random.default_rng(seed)
    F = _nearly_stable(rng, 1, 0.0)[0]
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    v = F[3, 1:].copy()
    a = np.asarray(angles, dtype=float)[:, None]
    cells = np.repeat(F[None], len(a), axis=0)
    cells[:, 3, 1:] = v * np.cos(a) + np.cross(axis, v) * np.sin(a) + axis * (axis @ v) * (1 - np.cos(a))
    W = 1 / np.sqrt(1 - speed**2)
    u = np.tile(np.concatenate([[W], W * speed * direction]), (len(a), 1))
    return (dodo.boost_from_rest(cells, u[:, None, :]) if speed > 0 else cells), u


def _threshold_cells(bases=24):
    """Per family, the angle where this path's status flips (bisection to adjacent doubles) and 201
    angles about it 8 eps apart (relative): the two paths' flips were up to 3.6e-4 apart (relative)."""
    rng = np.random.default_rng(1212)
    out = []
    for b in range(bases):
        speed = 0.0 if b % 2 == 0 else float(rng.choice([0.3, 0.6, 0.9, 0.99]))
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)

        def stable(a):
            F, u = _threshold_family(b, [a], speed, d)
            return dodo.box3d(F, u).status[0] == NO_CROSSING

        lo, hi = 1e-17, 1e-4
        assert stable(lo) and not stable(hi)
        for _ in range(200):
            mid = np.sqrt(lo * hi) if hi / lo > 1.01 else (lo + hi) / 2
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if stable(mid) else (lo, mid)
        F, u = _threshold_family(b, hi * (1 + np.arange(-100, 101) * 8 * np.finfo(float).eps), speed, d)
        out.append((F, u))
    return out


def _laws(F, u, F_out, status, ntot):
    """Flavour sums (lab, per W N_tot) and lepton numbers (rest frame, per N_tot) of the change, its
    rest-frame realizability, and stable cells returned bit for bit."""
    change = F_out - F
    flavour = np.abs(change.reshape(-1, 2, 3, 4).sum(axis=2)).reshape(len(F), -1).max(axis=1) / (ntot * u[:, 0])
    rest = dodo.boost_to_rest(F_out, u[:, None, :]) - dodo.boost_to_rest(F, u[:, None, :])
    lepton = np.abs(rest[:, :3, 0] - rest[:, 3:, 0]).max(axis=1) / ntot
    out_rest = dodo.boost_to_rest(F_out, u[:, None, :])
    excess = (np.linalg.norm(out_rest[..., 1:], axis=-1) - out_rest[..., 0]).max(axis=1) / ntot
    stable = (status & NO_CROSSING) != 0
    return flavour, lepton, excess, stable


def test_cells_at_the_stability_threshold_keep_the_laws_and_only_a_vanishing_proxy_is_path_dependent():
    """Where a pair's smaller lobe is at the lobe-noise bound (1e-12 of the pair's densities), the AVX-512
    and baseline paths decided differently on 72 of 150 such families, within up to 3.6e-4 (relative) of
    the flip, and their outputs there differed by the threshold's step (median 0.07 N_tot, documented in
    docs/runtime.md, "Continuity"). What every path must keep: the laws on both sides, and a flip only where
    the growth proxy is below ~1e-12 N_tot (the crossing is at rounding level: 2.2e-13 ... 8.7e-13 measured)."""
    closure = dodo.Closure()
    for F, u in _threshold_cells():
        box = dodo.box3d(F, u)
        model = closure.apply(F, u)
        ntot = dodo.comoving_density(F, u)
        assert len(np.unique(box.status)) == 2  # the family straddles this path's flip
        # the model adds CORRECTION_LIMITED (the crossing-strength bound) to the crossing side
        assert np.array_equal(box.status & NO_CROSSING, model.status & NO_CROSSING)
        for F_out, status in ((box.F_box, box.status), (model.F_pred, model.status)):
            assert np.isfinite(F_out).all()
            flavour, lepton, excess, stable = _laws(F, u, F_out, status, ntot)
            assert flavour.max() <= 1e-12 and lepton.max() <= 1e-12, (flavour.max(), lepton.max())
            assert excess.max() <= 1e-12
            assert np.array_equal(F_out[stable], F[stable])  # stable cells untouched, bit for bit
        crossing = box.status != NO_CROSSING
        assert np.all(box.growth_over_ntot[~crossing] == 0)
        assert 0 < box.growth_over_ntot[crossing].min() and box.growth_over_ntot[crossing].max() < 2e-12


@pytest.mark.xfail(strict=True, reason="Box3D steps at the stability threshold (docs/runtime.md, 'Continuity'; "
                   "spec matter reported in physics-law probe round twelve): a cell a hair past the lobe-noise "
                   "bound is moved by ~0.07 N_tot, and the CPU paths put that bound at inputs up to 3.6e-4 apart")
def test_a_cell_a_hair_past_the_stability_threshold_is_moved_by_almost_nothing():
    # physics.md asks stable cells untouched and outputs continuous: then the change just past the flip
    # would be near zero. Measured: median 0.095 N_tot (largest component) on 150 families.
    steps = []
    for F, u in _threshold_cells(bases=6):
        box = dodo.box3d(F, u)
        ntot = dodo.comoving_density(F, u)
        flips = np.flatnonzero(box.status[1:] != box.status[:-1])
        jump = np.abs(np.diff(box.F_box, axis=0)).reshape(len(F) - 1, -1).max(axis=1) / ntot[1:]
        steps.append(jump[flips].max())
    assert max(steps) <= 1e-6, steps


def test_the_distance_gate_toward_box3d_is_continuous_across_its_threshold():
    """The default model's gate exp(-max(0, d^2 - d2_max)/d2_max) (docs/training.md, "Gate toward Box3D")
    has a kink at d^2 = d2_max, no step: along a straight line from an in-distribution crossing cell to a
    far-out one (dodo.training.gate_graph.far_out_probe_cells, d^2 up to 8.9 d2_max), the learned part
    F_pred - F_box moves across d^2 = d2_max by float32 steps only (measured at most 3.2e-8 N_tot between
    points 5e-9 apart; it is 1e-4 ... 1.6e-2 N_tot there, a step of the gate would show at that size)."""
    pytest.importorskip("onnx")
    from gate_windows import distance_ratio, windows_across_the_gate

    from dodo.training.gate_graph import far_out_probe_cells

    closure = dodo.Closure()
    near = random_states(np.random.default_rng(5), 200) / 1e33
    crossed = 0
    for F in windows_across_the_gate(closure, distance_ratio(), near, far_out_probe_cells(400)):
        result, box = closure.apply(F), dodo.box3d(F)
        if len(np.unique(result.status)) != 1:
            continue  # a status change inside the window is Box3D's step, not the gate's
        learned = (result.F_pred - box.F_box) / dodo.comoving_density(F, None)[:, None, None]
        steps = np.abs(np.diff(learned, axis=0)).reshape(len(F) - 1, -1).max(axis=1)
        assert np.abs(learned).max() > 1e-5  # a correction the gate could cut
        assert steps.max() <= 1e-6, steps.max()
        crossed += 1
    assert crossed >= 3
