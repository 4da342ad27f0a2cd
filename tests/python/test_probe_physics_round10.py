"""Outside probe of the physics laws, round ten (docs/reliability_python.md, "Physics-law probe, round
ten"): the growth-rate and uncertainty outputs (never negative, finite, zero exactly where the cell is
stable or rejected, the same on every path: Python, the C API, `dodo apply -o`); cells built from the
real Emu-layout files of tests/data/qke (not emu_1d_validation.h5) perturbed by one ulp in each of their
24 inputs; grids of mixed cells (crossing, stable, rejected, tiny, huge, moving) checked cell by cell
against the same cells applied one at a time, at other chunk sizes and thread counts, on both network
evaluators.

One violation found and fixed (cpp/src/runtime/closure.cpp, process_chunk): with the ONNX Runtime
evaluator a chunk whose only network row was one cell (a cell applied alone, or the one crossing cell of
its chunk) was evaluated as a one-row batch, which ONNX Runtime's CPU kernels sum by a matrix-vector
kernel in another order: ~0.04% of crossing cells got other bits (up to 2e-9 N_tot) alone than in a grid.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

import dodo

if not dodo.runtime_available():
    pytest.skip("dodo built without the closure runtime", allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
from test_probe_physics_round8 import NO_CROSSING, REJECTED, _capi, closures  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("native_evaluator")

FIELDS = ("F_pred", "status", "growth_rate", "growth_over_ntot", "growth_rate_proxy", "uncertainty")
DATA = os.path.join(os.path.dirname(__file__), "..", "data", "qke")


def _random_cells(rng, n, largest_flux_factor=0.9):
    F = np.zeros((n, 6, 4))
    density = rng.uniform(0.1, 1.0, (n, 6))
    flux_factor = rng.uniform(0.0, largest_flux_factor, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 0] = density
    F[..., 1:] = (density * flux_factor)[..., None] * direction
    return F


def _real_cells():
    """F4_initial of every Emu-layout file in tests/data/qke but the validation file (73 cells)."""
    import h5py

    cells = []
    for path in sorted(glob.glob(os.path.join(DATA, "*.h5"))):
        if os.path.basename(path) == "emu_1d_validation.h5":
            continue
        with h5py.File(path, "r") as f:
            cells.append(dodo.conventions.from_emu_layout(f["F4_initial(1|ccm)"][()]))
    return np.concatenate(cells)


def _mixed_grid(n, seed):
    """Cells of every kind, half of them moving (|v| < 0.6): random crossing, real (Emu files), nu = nubar
    and shared-shape (stable), a negative density, a NaN, a species at flux factor 0.99, all zero, scaled
    by 10^-290 ... 10^290, a zero species, stable at 1e-40 of a real cell, one species times 1e-310."""
    rng = np.random.default_rng(seed)
    real = _real_cells()
    F = _random_cells(rng, n)
    kind = rng.integers(0, 12, n)
    which = rng.integers(0, len(real), n)
    F[kind == 1] = real[which[kind == 1]]
    m = kind == 2
    F[m, 3:] = F[m, :3]
    m = kind == 3
    F[m, 1:] = F[m, :1] * rng.uniform(0.01, 1, (m.sum(), 5, 1))
    F[kind == 4, 2, 0] *= -1
    F[kind == 5, 2, 1] = np.nan
    m = kind == 6
    F[m, 4, 1:] = F[m, 4, :1] * np.array([0.99, 0, 0])
    F[kind == 7] = 0.0
    m = kind == 8
    F[m] *= 10.0 ** rng.integers(-290, 290, m.sum())[:, None, None]
    F[kind == 9, 1] = 0.0
    m = kind == 10
    F[m] = real[which[m]] * 1e-40
    F[m, 3:] = F[m, :3]
    F[kind == 11, 5] *= 1e-310
    u = np.zeros((n, 4))
    u[:, 0] = 1.0
    moving = rng.random(n) < 0.5
    v = rng.normal(size=(n, 3))
    v *= rng.uniform(0, 0.6, (n, 1)) / np.linalg.norm(v, axis=1, keepdims=True)
    W = 1 / np.sqrt(1 - (v ** 2).sum(1))
    u[moving, 0] = W[moving]
    u[moving, 1:] = (W[:, None] * v)[moving]
    return F, u


def _fields(result):
    return {k: np.asarray(getattr(result, k)).copy() for k in FIELDS}


# -- the violation fixed this round ------------------------------------------------------------------

def test_with_onnx_runtime_a_cell_alone_gets_its_answer_in_a_grid():
    """A cell's answer must not depend on its neighbours or the chunking. With evaluator="onnxruntime" a
    chunk holding one network row ran as a one-row batch (ONNX Runtime's matrix-vector kernel): 13 of
    31,110 crossing cells got other bits with chunk_size=1 than in chunks of 1,024 (up to 2e-9 N_tot), and
    a cell applied alone other bits than in its grid. Now every cell the same bytes, every field."""
    try:
        alone = dodo.Closure(threads=1, chunk_size=1, evaluator="onnxruntime")
        grid = dodo.Closure(threads=1, evaluator="onnxruntime")
    except Exception as error:  # no ONNX Runtime on this machine
        pytest.skip(f"no ONNX Runtime evaluator: {error}")
    F = _random_cells(np.random.default_rng(4), 40000)
    ntot = F[..., 0].sum(-1)
    a_e = (F[:, 3, 0] - F[:, 0, 0]) / ntot
    a_mt = (F[:, 2, 0] + F[:, 5, 0] - F[:, 1, 0] - F[:, 4, 0]) / ntot
    F = F[(np.abs(a_e) > 0.02) & (np.abs(a_mt) > 0.02)]  # outside the images' blend band: one row a cell
    expected, got = _fields(grid.apply(F)), _fields(alone.apply(F))
    assert np.mean((expected["status"] & (REJECTED | NO_CROSSING)) == 0) > 0.99  # crossing: network rows
    for k in FIELDS:
        differ = np.flatnonzero((got[k] != expected[k]).reshape(len(F), -1).any(axis=1))
        assert differ.size == 0, (k, differ[:10])
    for c in range(0, len(F), 997):  # one at a time, as a host applying cell by cell
        single = _fields(grid.apply(F[c:c + 1]))
        assert all(single[k][0].tobytes() == expected[k][c].tobytes() for k in FIELDS), c
