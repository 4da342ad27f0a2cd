#!/usr/bin/env python3
"""Writes tests/data/box3d_regression.npz: Box3D's outputs (order 17, exact Z) on a fixed set of
cells, so that a later speed-up of the kernel can be checked against the code of this moment
(tests/python/test_box3d_regression.py; issue 13). Run once, with the code to be pinned:

    python tools/make_box3d_regression.py

The file stores the inputs too (no dependence on NumPy's random streams). Cells: random boosted
states (flux factors up to 0.9, and up to 0.97), mu = tau states, and M1-like states (the heavy
species equal) whose nu_e/nubar_e pair is stable, borderline or crossing.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import dodo  # noqa: E402
from dodo._atomic import numpy_savez_atomic  # noqa: E402
from conftest import random_states, random_velocities  # noqa: E402


def cells(rng: np.random.Generator) -> np.ndarray:
    parts = [random_states(rng, 300), random_states(rng, 60, max_flux_factor=0.97),
             random_states(rng, 80, mu_equals_tau=True)]
    # M1-like (heavy species equal): fewer nubar_e than nu_e, mostly stable (as bench_speed's grid)
    m1 = random_states(rng, 400, max_flux_factor=0.6)
    m1[:, 2] = m1[:, 4] = m1[:, 5] = m1[:, 1]
    m1[:, 3] *= rng.uniform(0.2, 0.7, (400, 1))
    stable = m1[dodo.box3d(m1).status == int(dodo.CellStatus.NO_CROSSING)][:100]
    # borderline: nubar_e close to nu_e (density, flux factor and direction), crossing or not
    near = random_states(rng, 100, max_flux_factor=0.6)
    near[:, 2] = near[:, 4] = near[:, 5] = near[:, 1]
    turned = near[:, 0, 1:] + rng.normal(scale=0.05, size=(100, 3)) * near[:, 0, :1]
    flux = np.linalg.norm(near[:, 0, 1:], axis=-1) * rng.uniform(0.8, 1.3, 100)
    near[:, 3, 1:] = turned / np.linalg.norm(turned, axis=-1, keepdims=True) * flux[:, None]
    near[:, 3, 0] = near[:, 0, 0]
    near[:, 3] *= rng.uniform(0.6, 1.0, (100, 1))
    near[:, 3, 1:] *= np.minimum(1.0, 0.9 * near[:, 3, :1] / np.linalg.norm(near[:, 3, 1:], axis=-1, keepdims=True))
    return np.concatenate(parts + [stable, near])


def main(argv=None) -> int:
    # No options: --help (or any argument) rewrote the committed reference file.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    rng = np.random.default_rng(20261130)
    F_rest = cells(rng)
    u = random_velocities(rng, len(F_rest), max_speed=0.6)
    u[: len(u) // 4] = [1.0, 0.0, 0.0, 0.0]  # a quarter at rest
    F = dodo.boost_from_rest(F_rest, u[:, None, :])
    result = dodo.box3d(F, u, lebedev_order=17, z_method="exact")
    out = ROOT / "tests" / "data" / "box3d_regression.npz"
    arrays = dict(F_init=F, u=u, F_box=result.F_box, growth_over_ntot=result.growth_over_ntot, status=result.status)
    numpy_savez_atomic(out, arrays, compressed=True)  # a failed run leaves the committed reference whole
    print(f"{out}: {len(F)} cells, {np.mean(result.status == int(dodo.CellStatus.NO_CROSSING)):.0%} stable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
