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
from test_probe_physics_round9 import _random_cells  # noqa: E402

pytestmark = pytest.mark.usefixtures("native_evaluator")

FIELDS = ("F_pred", "status", "growth_rate", "growth_over_ntot", "growth_rate_proxy", "uncertainty")
DATA = os.path.join(os.path.dirname(__file__), "..", "data", "qke")



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


# -- laws that held (regression tests; no defect found) ------------------------------------------------

def _quiet(status):
    """Stable or rejected: growth rate and uncertainty must be exactly 0 there."""
    return (status & (REJECTED | NO_CROSSING)) != 0


def test_growth_rate_and_uncertainty_obey_their_laws_on_a_mixed_grid_on_every_path(closures):
    """runtime.md, "Growth rate and uncertainty": finite, never negative, 0 exactly where the cell is stable
    or rejected, positive on crossing cells; growth_rate = growth_over_ntot N_tot 1.9255e-22 (N_tot the
    comoving density); the C API gives Python's bytes; ONNX Runtime agrees to float32 rounding."""
    from libdodo_ctypes import create_closure, load_libdodo
    import dodo.models

    F, u = _mixed_grid(20000, seed=3)
    finite = np.isfinite(F).all(axis=(1, 2))
    results = {name: closure.apply(F, u) for name, closure in closures.items()}
    for name, r in results.items():
        quiet = _quiet(r.status)
        assert 1000 < quiet.sum() < len(F) - 1000, name  # both kinds drawn
        for k in ("growth_rate", "growth_over_ntot", "growth_rate_proxy", "uncertainty"):
            value = np.asarray(getattr(r, k))
            assert np.isfinite(value).all() and not np.signbit(value).any(), (name, k)
            assert np.all(value[quiet] == 0), (name, k)
        assert np.all(r.growth_rate[~quiet] > 0) and np.all(r.growth_rate_proxy[~quiet] > 0), name
        ntot = dodo.comoving_density(np.where(finite[:, None, None], F, 0), u)
        crossing = ~quiet & (np.abs(F).max(axis=(1, 2)) < 1e200) & (np.abs(F).max(axis=(1, 2)) > 1e-200)
        expected = r.growth_over_ntot[crossing] * ntot[crossing] * dodo.conventions.GROWTH_RATE_PER_NTOT
        assert np.allclose(r.growth_rate[crossing], expected, rtol=1e-13, atol=0), name
    if "onnxruntime" in results:
        native, graph = results["model"], results["onnxruntime"]
        crossing = ~_quiet(native.status)
        assert np.array_equal(_quiet(native.status), _quiet(graph.status))
        assert np.allclose(graph.growth_rate[crossing], native.growth_rate[crossing], rtol=2e-5, atol=0)
        assert np.allclose(graph.uncertainty[crossing], native.uncertainty[crossing], rtol=2e-5, atol=0)
    lib = load_libdodo()
    for name, path in [("box3d", None), ("model", str(dodo.models.default_model_path()).encode())]:
        code, message, handle = create_closure(lib, path, threads=2)
        assert code == 0, message
        try:
            out, status, growth, spread = _capi(lib, handle, np.ascontiguousarray(F), np.ascontiguousarray(u))
        finally:
            lib.dodo_closure_destroy(handle)
        r = results[name]
        assert out.tobytes() == r.F_pred.tobytes() and status.tobytes() == r.status.tobytes(), name
        assert growth.tobytes() == r.growth_rate.tobytes() and spread.tobytes() == r.uncertainty.tobytes(), name


def test_dodo_apply_writes_the_closures_growth_rate_and_uncertainty(tmp_path):
    """`dodo apply -o` of an Emu-layout file of mixed cells (NaN, negative, zero, beamed, huge, stable,
    crossing) at speeds up to 0.9: its F_pred, status, growth_rate, growth_rate_proxy and uncertainty are
    Closure.apply's bytes on the file's own F_init and u (Box3D and the default model)."""
    import h5py

    F, _ = _mixed_grid(512, seed=7)
    data = tmp_path / "mixed_emu.h5"
    with h5py.File(data, "w") as f:
        f["F4_initial(1|ccm)"] = dodo.conventions.to_emu_layout(F)
        f["F4_final(1|ccm)"] = dodo.conventions.to_emu_layout(F)
        f["growthRate(1|s)"] = np.ones(len(F))
        f["nf"] = 3
    for model in ("box3d", "default"):
        out = tmp_path / f"cells_{model}.h5"
        run = subprocess.run([sys.executable, "-m", "dodo", "apply", str(data), "--model", model, "--grid", "8x8x8",
                              "--max-speed", "0.9", "--threads", "2", "-q", "-o", str(out)],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        with h5py.File(out, "r") as f:
            written = {k: f[k][()] for k in ("F_init", "u", "F_pred", "status", "growth_rate", "growth_rate_proxy",
                                             "uncertainty")}
        r = dodo.Closure(None if model == "default" else "box3d", threads=1).apply(written["F_init"], written["u"])
        for k in ("F_pred", "status", "growth_rate", "growth_rate_proxy", "uncertainty"):
            assert written[k].tobytes() == np.asarray(getattr(r, k)).tobytes(), (model, k)


def _one_ulp_copies(F):
    """48 copies of each cell: each of its 24 values one ulp up and one ulp down."""
    P = np.repeat(F[:, None], 48, axis=1)
    for k in range(24):
        a, c = divmod(k, 4)
        P[:, 2 * k, a, c] = np.nextafter(F[:, a, c], np.inf)
        P[:, 2 * k + 1, a, c] = np.nextafter(F[:, a, c], -np.inf)
    return P.reshape(-1, 6, 4)


def test_one_ulp_in_any_input_of_a_real_cell_moves_the_answer_by_rounding_only(closures):
    """The 73 cells of the Emu-layout files (all crossing; nsm1 and the five ood_probe files), each of their
    24 values one ulp up and down (3,504 cells), at rest and moving at W = 1.5: statuses unchanged, F_pred
    within 4e-15 N_tot, growth rate within 1e-13, uncertainty the same bits (float32 features). The same
    cells made stable (nubar = nu; all six species sharing nu_e's shape) stay NO_CROSSING, their bytes."""
    real = _real_cells()
    ntot = np.repeat(real[..., 0].sum(-1), 48)
    rng = np.random.default_rng(8)
    v = rng.normal(size=(len(real), 3))
    v *= np.sqrt(1 - 1 / 1.5 ** 2) / np.linalg.norm(v, axis=1, keepdims=True)
    moving = np.concatenate([np.full((len(real), 1), 1.5), 1.5 * v], 1)
    for frame, u in [("rest", None), ("W = 1.5", moving)]:
        F = real if u is None else dodo.boost_from_rest(real, u[:, None, :])
        P, uP = _one_ulp_copies(F), None if u is None else np.repeat(u, 48, axis=0)
        for name, closure in closures.items():
            base, r = closure.apply(F, u), closure.apply(P, uP)
            assert np.all(base.status & (REJECTED | NO_CROSSING) == 0), (frame, name)
            assert np.array_equal(r.status, np.repeat(base.status, 48)), (frame, name)
            moved = np.abs(r.F_pred - np.repeat(base.F_pred, 48, axis=0)).max(axis=(1, 2)) / ntot
            assert moved.max() < 4e-15, (frame, name, moved.max())
            assert np.allclose(r.growth_rate, np.repeat(base.growth_rate, 48), rtol=1e-13, atol=0), (frame, name)
            assert np.array_equal(r.uncertainty, np.repeat(base.uncertainty, 48)), (frame, name)
    shared = real.copy()
    shared[:, 1:] = real[:, :1] * np.array([0.7, 0.3, 0.5, 0.2, 0.2])[None, :, None]
    mirrored = real.copy()
    mirrored[:, 3:] = real[:, :3]
    for stable in (shared, mirrored):
        P = _one_ulp_copies(stable)
        for name, closure in closures.items():
            r = closure.apply(P)
            assert np.all(r.status == NO_CROSSING) and r.F_pred.tobytes() == P.tobytes(), name
            assert np.all(r.growth_rate == 0) and np.all(r.uncertainty == 0), name


def test_a_mixed_grid_of_100000_cells_does_not_depend_on_neighbours_chunks_or_threads():
    """10^5 cells of every kind, half moving: threads 1, 2, 8 x chunk sizes 1, 7, 1,024, 4,096, the batch
    reversed and 500 cells applied one at a time give the same bytes in every field (Box3D, the default
    model on the native evaluator, and, since this round's fix, on ONNX Runtime)."""
    F, u = _mixed_grid(100000, seed=0)
    sample = np.random.default_rng(5).choice(len(F), 500, replace=False)
    kinds = [("box3d", {}), (None, {})]
    try:
        dodo.Closure(threads=1, evaluator="onnxruntime")
        kinds.append((None, {"evaluator": "onnxruntime"}))
    except Exception:  # no ONNX Runtime on this machine
        pass
    for model, options in kinds:
        expected = _fields(dodo.Closure(model, threads=1, **options).apply(F, u))
        for threads, chunk in [(2, 1024), (8, 7), (2, 1), (8, 4096)]:
            got = _fields(dodo.Closure(model, threads=threads, chunk_size=chunk, **options).apply(F, u))
            for k in FIELDS:
                assert got[k].tobytes() == expected[k].tobytes(), (model, options, threads, chunk, k)
        closure = dodo.Closure(model, threads=1, **options)
        reversed_ = _fields(closure.apply(F[::-1].copy(), u[::-1].copy()))
        for k in FIELDS:
            assert reversed_[k][::-1].tobytes() == expected[k].tobytes(), (model, options, "reversed", k)
        for c in sample:
            alone = _fields(closure.apply(F[c:c + 1], u[c:c + 1]))
            assert all(alone[k][0].tobytes() == expected[k][c].tobytes() for k in FIELDS), (model, options, c)


def test_scaling_a_mixed_grid_scales_the_answer_and_the_growth_rate(closures):
    """physics.md section 1 ("Scale"): F -> lambda F for lambda = 2^-100, 2^100 (exact), 1e-30, 1e30, 3,
    1e-7 (cells of scale 1e-10 ... 1e10, stable, crossing, rejected, moving): statuses and uncertainty the
    same, F_pred lambda times the answer (the bytes for powers of two, except where the unscaled answer
    was subnormal; else 2e-15 of the cell's scale), growth_over_ntot to 1e-14, growth rate lambda times to
    5e-14."""
    F, u = _mixed_grid(20000, seed=17)
    largest = np.nanmax(np.abs(F), axis=(1, 2))
    keep = ((largest < 1e10) & (largest > 1e-10)) | ~np.isfinite(F).all(axis=(1, 2)) | (largest == 0)
    F, u = F[keep], u[keep]
    scale = np.abs(np.where(np.isfinite(F), F, 0)).sum(axis=(1, 2))
    finite = np.isfinite(F).all(axis=(1, 2)) & (scale > 0)
    for name, closure in closures.items():
        base = closure.apply(F, u)
        crossing = base.growth_rate > 0
        for lam in (2.0 ** -100, 2.0 ** 100, 1e-30, 1e30, 3.0, 1e-7):
            r = closure.apply(F * lam, u)
            assert np.array_equal(r.status, base.status), (name, lam)
            assert np.array_equal(r.uncertainty, base.uncertainty), (name, lam)
            moved = np.abs(r.F_pred - lam * base.F_pred)[finite].max(axis=(1, 2)) / (lam * scale[finite])
            assert moved.max() <= (1e-300 if lam in (2.0 ** -100, 2.0 ** 100) else 2e-15), (name, lam, moved.max())
            assert np.abs(r.growth_over_ntot - base.growth_over_ntot).max() <= 1e-14, (name, lam)
            scaled_rate = lam * base.growth_rate[crossing]
            assert np.allclose(r.growth_rate[crossing], scaled_rate, rtol=5e-14, atol=0), (name, lam)
            assert np.all(r.growth_rate[~crossing] == 0), (name, lam)


def test_a_real_cell_and_its_time_reversed_and_mirrored_copies(closures):
    """The Emu-layout cells, at rest and moving (|v| < 0.3), with every flux and v reversed (time reversal:
    momenta reversed) or one axis mirrored (parity): statuses, growth rate (to 1e-15) and uncertainty the
    same, F_pred the transformed answer to 4e-16 N_tot."""
    real = _real_cells()
    F = np.concatenate([real] * 10)
    rng = np.random.default_rng(3)
    v = rng.normal(size=(len(F), 3))
    v *= rng.uniform(0, 0.3, (len(F), 1)) / np.linalg.norm(v, axis=1, keepdims=True)
    W = 1 / np.sqrt(1 - (v ** 2).sum(1))
    u = np.concatenate([W[:, None], W[:, None] * v], 1)
    u[:len(real)] = (1, 0, 0, 0)
    ntot = F[..., 0].sum(-1)
    for sign in (np.array([1, -1, -1, -1.0]), np.array([1, -1, 1, 1.0]), np.array([1, 1, 1, -1.0])):
        for name, closure in closures.items():
            a, b = closure.apply(F, u), closure.apply(F * sign, u * sign)
            assert np.array_equal(a.status, b.status), (name, sign)
            assert np.all(np.abs(b.F_pred - a.F_pred * sign).max(axis=(1, 2)) <= 4e-16 * ntot), (name, sign)
            assert np.allclose(b.growth_rate, a.growth_rate, rtol=1e-15, atol=0), (name, sign)
            assert np.array_equal(a.uncertainty, b.uncertainty), (name, sign)


def test_dodo_apply_counts_realizable_outputs_of_huge_densities_as_realizable(tmp_path):
    """`dodo apply`'s summary took |F| of the rest-frame outputs before dividing by N_tot: at densities of
    1e160 the squares overflowed and "unrealizable species: 100.0%" was printed (outside probe, physics
    round ten; fixed by the lead)."""
    import contextlib
    import io
    import warnings

    import h5py

    from dodo.cli import main as dodo_main

    rng = np.random.default_rng(0)
    F = np.zeros((512, 6, 4))
    F[..., 0] = rng.uniform(0.1, 1, (512, 6))
    d = rng.normal(size=(512, 6, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    F[..., 1:] = d * (F[..., :1] * rng.uniform(0, 0.5, (512, 6, 1)))
    F *= 1e160
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as handle:
        handle["F4_initial(1|ccm)"] = dodo.conventions.to_emu_layout(F)
        handle["F4_final(1|ccm)"] = dodo.conventions.to_emu_layout(F)
        handle["growthRate(1|s)"] = np.ones(512)
        handle["nf"] = 3
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warning was printed too
        with contextlib.redirect_stdout(out):
            assert dodo_main(["apply", str(path), "--model", "box3d", "--grid", "8x8x8"]) == 0
    assert "unrealizable species: 0.0%" in out.getvalue(), out.getvalue()
