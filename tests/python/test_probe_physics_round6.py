"""Outside probe of the physics laws, round six (docs/reliability_python.md, "Physics-law probe, round
six"): stable cells under the inputs a merger code produces (species exactly zero or subnormal,
densities spanning 1e-30 ... 1, nearly isotropic cells, the six species equal, mu != tau by 1e-9,
flux factors up to 0.97, fluids moving at W up to 1e4 with u exactly and slightly off normalised),
through every path: dodo.box3d, dodo.Closure (Box3D alone, the default model with the native and the
ONNX Runtime evaluator), dodo.closure, the C API (ctypes) and `dodo apply -o`.

One violation found and fixed (cpp/src/box3d/box3d.cpp, prepare_block): a cell whose values as given
are not realizable while the values Box3D checks are (a subnormal species the caller's boost left at
n = -4.9e-323 beside a realizable rest-frame species; at rest, a subnormal species with |F| > n that
division by N_tot rounds onto the cone) was NO_CROSSING and returned as its unrealizable input. Now
the input is checked as given too, in every frame.
A second violation, outside this round's files, fixed by the lead after it (its test was a strict
xfail until then): the rejected-cell fallback dropped the whole flux of a species one ulp outside the
cone in ~22% of such species (cpp/src/realizability.cpp, realizable_fallback).

Stable cells here are stable by construction: every species of a cell shares one flux factor and one
direction, so every ELN, and every pair's G, is a multiple of one positive function (no crossing
whatever the densities), or nu = nubar in every flavour (no ELN at all).
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import pytest

import dodo

if not dodo.runtime_available():
    pytest.skip("dodo built without the closure runtime", allow_module_level=True)

from dodo._box3d import boost_from_rest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

NO_CROSSING, FLUX_FACTOR, NEGATIVE_DENSITY = 1, 2, 4
REJECTED = 2 | 4 | 8 | 16 | 32
SUBNORMALS = (5e-324, 1e-323, 2e-323, 1e-320, 1e-310)


# 'native' means native whatever the caller's environment (bit-for-bit tests below).
pytestmark = pytest.mark.usefixtures("native_evaluator")


@pytest.fixture(scope="module")
def closures(native_evaluator):
    return {"box3d": dodo.Closure("box3d", threads=1), "model": dodo.Closure(threads=1)}


def _unit(rng, n):
    d = rng.normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _shared_shape_cells(rng, n):
    """Rest-frame cells whose six species share one flux factor (0 ... 0.97) and direction: stable for
    any densities. Densities log-uniform in 1e-30 ... 1; a sixth of the cells with all six equal, a
    sixth with mu != tau by 1e-9; 15% of the species exactly zero, 10% subnormal."""
    d, f = _unit(rng, n), rng.uniform(0.0, 0.97, n)
    density = 10.0 ** rng.uniform(-30, 0, (n, 6))
    kind = rng.integers(0, 6, n)
    density[kind == 0] = 1.0
    density[kind == 1, 2] = density[kind == 1, 1] * (1 + 1e-9)
    density[rng.random((n, 6)) < 0.15] = 0.0
    tiny = rng.random((n, 6)) < 0.1
    density[tiny] = rng.choice(SUBNORMALS, size=int(tiny.sum()))
    F = np.zeros((n, 6, 4))
    F[..., 0] = density
    F[..., 1:] = density[..., None] * (f[:, None, None] * d[:, None, :])
    return F


def _eln_free_cells(rng, n):
    """nu = nubar in every flavour (no ELN at all), densities 1e-30 ... 1, flux factors up to 0.97."""
    F = np.zeros((n, 6, 4))
    F[:, :3, 0] = 10.0 ** rng.uniform(-30, 0, (n, 3))
    F[:, :3, 1:] = _unit(rng, 3 * n).reshape(n, 3, 3) * (rng.uniform(0, 0.97, (n, 3)) * F[:, :3, 0])[..., None]
    F[:, 3:] = F[:, :3]
    return F


def _crossing_cells(rng, n):
    F = np.zeros((n, 6, 4))
    F[..., 0] = rng.uniform(0.1, 1.0, (n, 6))
    F[..., 1:] = _unit(rng, 6 * n).reshape(n, 6, 3) * (rng.uniform(0, 0.8, (n, 6)) * F[..., 0])[..., None]
    return F


def _velocities(rng, n, W, off=0.0):
    """u = (sqrt(1 + s^2), s d), s = sqrt(W^2 - 1); with off, u^t moved so that |u.u + 1| is `off` times
    the accepted tolerance min(1e-6 max(1, W^2), 0.5) (the API boosts by the normalised u)."""
    s = np.sqrt(W * W - 1.0)
    u = np.zeros((n, 4))
    u[:, 1:] = _unit(rng, n) * s
    u[:, 0] = np.sqrt(1.0 + s * s)
    if off:
        u[:, 0] *= np.sqrt(1.0 + off * min(1e-6 * max(1.0, W * W), 0.5) / u[:, 0] ** 2)
    return u


def _lab(R, u):
    return boost_from_rest(R, u[:, None, :])


def _realizable(F):
    """Every species n >= 0 and sqrt(Fx^2 + Fy^2 + Fz^2) <= n, in that order (docs/runtime.md)."""
    norm = np.sqrt(F[..., 1] * F[..., 1] + F[..., 2] * F[..., 2] + F[..., 3] * F[..., 3])
    return np.isfinite(F).all(axis=-1) & (F[..., 0] >= 0) & (norm <= F[..., 0])


def _capi(F, u, model):
    """dodo_apply_diagnostics of a handle on `model` (bytes path or None: Box3D alone): (F_pred, status)."""
    from libdodo_ctypes import create_closure, load_libdodo

    lib = load_libdodo()
    code, message, handle = create_closure(lib, model, threads=1)
    assert code == 0, message
    doubles = ctypes.POINTER(ctypes.c_double)
    try:
        F, u = np.ascontiguousarray(F), np.ascontiguousarray(u)
        out, status = np.full_like(F, np.nan), np.zeros(len(F), np.uint32)
        growth, spread = np.full(len(F), np.nan), np.full(len(F), np.nan)
        assert lib.dodo_apply_diagnostics(handle, len(F), F.ctypes.data_as(doubles), None, u.ctypes.data_as(doubles),
                                          None, out.ctypes.data_as(doubles), None,
                                          status.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                                          growth.ctypes.data_as(doubles), spread.ctypes.data_as(doubles)) == 0
    finally:
        lib.dodo_closure_destroy(handle)
    return out, status


def _every_path(F, u):
    """{path: (F_pred, status)} of every way into the closure (native evaluator unless named)."""
    from libdodo_ctypes import default_model_or_skip, load_libdodo

    box = dodo.box3d(F, u, threads=1)
    paths = {"dodo.box3d": (box.F_box, box.status)}
    for name, closure in (("box3d", dodo.Closure("box3d", threads=1)), ("model", dodo.Closure(threads=1)),
                          ("onnxruntime", dodo.Closure(threads=1, evaluator="onnxruntime"))):
        result = closure.apply(F, u)
        paths[name] = (result.F_pred, result.status)
    paths["dodo.closure"] = (dodo.closure(F, u), paths["model"][1])
    paths["C box3d"] = _capi(F, u, None)
    paths["C model"] = _capi(F, u, default_model_or_skip(load_libdodo()))
    return paths


# Lab cells of three stable rest cells (nu_e 1 and nubar_e 0.5 sharing a shape, heavy nu = nubar) with
# one subnormal species, boosted to W = 10, 1e3 and 3e6 by the C++ boost: a lab density of -5e-323,
# -5e-321 and -3.7e-316 for a species whose computed rest-frame values are realizable (n >= 0, flux
# factor below 0.97). Before the fix: NO_CROSSING, and the output was this input (n < 0, |F| > n).
_LAB_UNREALIZABLE = [
    ([['0x1.5b8be816beef5p+1', '-0x1.6baf64d4da2e0p-3', '0x1.2c649035d4d82p+0', '0x1.2f0a013dd95f5p+1'],
      ['0x1.a10e49b4e51f2p-1', '-0x1.b46c129905d0ep-5', '0x1.6878ad0d65d00p-2', '0x1.6ba59b1704d8ap-1'],
      ['0x1.a10e49b4e51f2p-1', '-0x1.b46c129905d0ep-5', '0x1.6878ad0d65d00p-2', '0x1.6ba59b1704d8ap-1'],
      ['-0x0.000000000000ap-1022', '-0x0.0p+0', '-0x0.0000000000005p-1022', '-0x0.0000000000008p-1022'],
      ['0x1.a10e49b4e51f2p-1', '-0x1.b46c129905d0ep-5', '0x1.6878ad0d65d00p-2', '0x1.6ba59b1704d8ap-1'],
      ['0x1.a10e49b4e51f2p-1', '-0x1.b46c129905d0ep-5', '0x1.6878ad0d65d00p-2', '0x1.6ba59b1704d8ap-1']],
     ['0x1.4000000000000p+3', '0x1.5ea3a6b3ddf1fp-2', '0x1.4139dbf0936d9p+2', '0x1.12b2e06904294p+3']),
    ([['0x1.b6a06def29dfcp+7', '0x1.63217777727acp+7', '-0x1.7b7e680ac743cp-1', '0x1.016efa7d9268cp+7'],
      ['0x1.072d0ec2b2b96p+6', '0x1.aa2828f5bc931p+5', '-0x1.c7647cd9bbeaap-3', '0x1.34eb92fd16172p+5'],
      ['0x1.072d0ec2b2b96p+6', '0x1.aa2828f5bc931p+5', '-0x1.c7647cd9bbeaap-3', '0x1.34eb92fd16172p+5'],
      ['0x1.b6a06def29dfcp+6', '0x1.63217777727acp+6', '-0x1.7b7e680ac743cp-2', '0x1.016efa7d9268cp+6'],
      ['-0x0.00000000003e8p-1022', '-0x0.0000000000328p-1022', '0x0.0000000000003p-1022', '-0x0.000000000024cp-1022'],
      ['0x1.072d0ec2b2b96p+6', '0x1.aa2828f5bc931p+5', '-0x1.c7647cd9bbeaap-3', '0x1.34eb92fd16172p+5']],
     ['0x1.f3fffffffffffp+9', '0x1.948889d637209p+9', '-0x1.6afa13cc423b7p+1', '0x1.25dac4d072462p+9']),
    ([['0x1.382461b9621cdp+19', '-0x1.2f0b676cad6d3p+17', '-0x1.01adb73f8b806p+19', '-0x1.3e160eb3f22f9p+18'],
      ['-0x0.00000002dc557p-1022', '0x0.00000000b1bf4p-1022', '0x0.000000025c8dcp-1022', '0x0.000000017523ep-1022'],
      ['0x1.76920ede75bc7p+17', '-0x1.6ba748e8d01cfp+15', '-0x1.3536dbe5da9a5p+17', '-0x1.7db411a4bc396p+16'],
      ['0x1.382461b9621cdp+18', '-0x1.2f0b676cad6d3p+16', '-0x1.01adb73f8b806p+18', '-0x1.3e160eb3f22f9p+17'],
      ['0x1.76920ede75bc7p+17', '-0x1.6ba748e8d01cfp+15', '-0x1.3536dbe5da9a5p+17', '-0x1.7db411a4bc396p+16'],
      ['0x1.76920ede75bc7p+17', '-0x1.6ba748e8d01cfp+15', '-0x1.3536dbe5da9a5p+17', '-0x1.7db411a4bc396p+16']],
     ['0x1.6e36000000000p+21', '-0x1.6389885f5e913p+19', '-0x1.2e502f6d37063p+21', '-0x1.752f568e5321dp+20']),
]


def _hex_cells():
    F = np.array([[[float.fromhex(x) for x in row] for row in cell] for cell, _ in _LAB_UNREALIZABLE])
    u = np.array([[float.fromhex(x) for x in velocity] for _, velocity in _LAB_UNREALIZABLE])
    return F, u


def test_a_moving_cell_whose_lab_values_are_unrealizable_is_rejected_on_every_path():
    """The input is unrealizable as given (the test checks that it is, and that its rest frame is
    not what rejects it); every path flags it (NEGATIVE_DENSITY, as at rest) and returns a realizable
    output, the same bits everywhere; a stable neighbour in the batch is still returned bit for bit."""
    F, u = _hex_cells()
    assert not _realizable(F).all(axis=-1).any()
    rest = dodo.boost_to_rest(F, u[:, None, :])
    norm = np.linalg.norm(rest[..., 1:], axis=-1)
    assert (rest[..., 0] >= 0).all() and (norm <= 0.97 * rest[..., 0] + 1e-300).all()
    # Beside each, a stable neighbour: the same cell at rest without the subnormal species (W = 1).
    neighbour = dodo.boost_to_rest(F, u[:, None, :])
    neighbour[np.abs(neighbour[..., 0]) < 1e-300] = 0.0
    cells = np.concatenate([F, neighbour])
    velocities = np.concatenate([u, np.tile([1.0, 0.0, 0.0, 0.0], (len(u), 1))])
    paths = _every_path(cells, velocities)
    reference, _ = paths["box3d"]
    for name, (F_pred, status) in paths.items():
        assert (status[:3] & REJECTED).all(), (name, status)
        assert (status[:3] == NEGATIVE_DENSITY).all(), (name, status)
        assert _realizable(F_pred).all(), name
        assert (status[3:] == NO_CROSSING).all(), (name, status)
        assert F_pred[3:].tobytes() == neighbour.tobytes(), name
        assert F_pred.tobytes() == reference.tobytes(), name


def _realizable_scaled(F):
    """n >= 0 and |F| <= n after scaling each species by a power of two (exact) into the normal range:
    the test realizable_fallback applies (a subnormal flux's squares underflow in the plain order)."""
    largest = np.abs(F).max(axis=-1, keepdims=True)
    exponent = np.frexp(np.where(largest > 0, largest, 1.0))[1]
    scaled = np.ldexp(F, -exponent)
    norm = np.sqrt(scaled[..., 1] ** 2 + scaled[..., 2] ** 2 + scaled[..., 3] ** 2)
    return (F[..., 0] >= 0) & (norm <= scaled[..., 0])


def test_a_subnormal_species_outside_the_cone_is_flagged_at_rest_and_with_u_at_rest_alike():
    """At rest: nubar_e = (9, -7, 7, 4) ulp of the subnormal grid (|F| = 1.19 n) beside a stable cell of
    N_tot 15.4; divided by N_tot it is an isotropic species of 1 ulp, so the cell was NO_CROSSING and
    came back with |F| > n. And 2,000 such cells (subnormal nubar_e of 1-60 ulp per component, |F| > n):
    every one is FLUX_FACTOR with a realizable output, u = None and u = (1, 0, 0, 0) the same bits, the
    C API and the model the same status."""
    ulp = 5e-324
    F = np.zeros((1, 6, 4))
    F[0, :, 0] = [float.fromhex(x) for x in ('0x1.47cf38242dc32p+2', '0x1.47cf38242dc32p+1', '0x1.47cf38242dc32p+1',
                                             '0x0.0000000000009p-1022', '0x1.47cf38242dc32p+1', '0x1.47cf38242dc32p+1')]
    F[0, 3] = np.array([9, -7, 7, 4]) * ulp
    rng = np.random.default_rng(5)
    n = 2000
    more = np.zeros((n, 6, 4))
    more[:, :, 0] = np.array([1, 0.5, 0.5, 0.5, 0.5, 0.5]) * rng.uniform(1, 20, (n, 1))
    k = rng.integers(1, 60, (n, 3))
    more[:, 3, 1:] = k * ulp * rng.choice([-1, 1], (n, 3))
    more[:, 3, 0] = np.floor(np.sqrt((k ** 2).sum(1)) * rng.uniform(0.9, 1.0, n)) * ulp
    cells = np.concatenate([F, more])
    assert not _realizable_scaled(cells[:, 3]).any()
    at_rest = np.tile([1.0, 0.0, 0.0, 0.0], (len(cells), 1))
    for closure in (dodo.Closure("box3d", threads=1), dodo.Closure(threads=1)):
        plain, moving = closure.apply(cells), closure.apply(cells, at_rest)
        assert (plain.status == FLUX_FACTOR).all()
        assert _realizable_scaled(plain.F_pred).all() and _realizable(plain.F_pred).all()
        assert plain.F_pred.tobytes() == moving.F_pred.tobytes() and plain.status.tobytes() == moving.status.tobytes()
    F_pred, status = _capi(cells, at_rest, None)
    assert (status == FLUX_FACTOR).all() and F_pred.tobytes() == plain.F_pred.tobytes()


@pytest.mark.parametrize("W", [1.0, 1.5, 100.0, 1e4])
def test_stable_merger_cells_come_back_bit_for_bit_and_every_output_is_realizable(W):
    """Stable-by-construction cells (shared shape, no ELN) with zero, subnormal and 1e-30 species, at W
    with u exact and off by +-0.9 of the tolerance, mixed with crossing cells: on every path every
    output is finite and realizable; a NO_CROSSING cell is its input's bytes; a cell of these families
    is NO_CROSSING or rejected for its input (never crossing); the paths give the same bits."""
    rng = np.random.default_rng(int(W * 7) + 6)
    n = 120
    rest = np.concatenate([_shared_shape_cells(rng, n), _eln_free_cells(rng, n // 2), _crossing_cells(rng, n // 2)])
    stable_family = np.arange(len(rest)) < n + n // 2
    if W == 1.0:
        u = np.tile([1.0, 0.0, 0.0, 0.0], (len(rest), 1))
        F = rest
    else:
        u = np.concatenate([_velocities(rng, len(rest) // 3, W, off) for off in (0.0, 0.9, -0.9)])
        F = _lab(rest, u)
    order = rng.permutation(len(F))
    F, u, stable_family = F[order], u[order], stable_family[order]
    paths = _every_path(F, u)
    box_status = paths["box3d"][1]
    assert ((box_status[stable_family] == NO_CROSSING) | ((box_status[stable_family] & REJECTED) != 0)).all()
    assert (box_status[stable_family] == NO_CROSSING).mean() > 0.7
    for name, (F_pred, status) in paths.items():
        assert _realizable(F_pred).all(), name
        stable = status == NO_CROSSING
        same = np.array([F_pred[i].tobytes() == F[i].tobytes() for i in range(len(F))])
        assert same[stable].all(), name
        assert np.array_equal(status & np.uint32(REJECTED | NO_CROSSING), box_status & np.uint32(REJECTED | NO_CROSSING)), name
        if name in ("box3d", "dodo.box3d", "C box3d"):
            assert F_pred.tobytes() == paths["box3d"][0].tobytes(), name
        elif name != "onnxruntime":
            assert F_pred.tobytes() == paths["model"][0].tobytes(), name
        else:  # float32 rounding apart, where the network runs; stable and rejected cells the same bits
            skip = (status & np.uint32(REJECTED | NO_CROSSING)) != 0
            assert F_pred[skip].tobytes() == paths["model"][0][skip].tobytes()
    # A stable cell's result does not depend on its company: the stable cells alone, reversed.
    for closure in (dodo.Closure("box3d", threads=2, chunk_size=7), dodo.Closure(threads=2, chunk_size=7)):
        stable = paths["box3d"][1] == NO_CROSSING
        alone = closure.apply(F[stable][::-1], u[stable][::-1])
        assert alone.F_pred[::-1].tobytes() == F[stable].tobytes()
        assert (alone.status == NO_CROSSING).all()


def test_dodo_apply_returns_stable_merger_cells_bit_for_bit(tmp_path):
    """`dodo apply -o` of an Emu-format file of the stable families at --max-speed 0.99999999 (W up to
    7,071): the file's F_pred is Closure().apply's bits, NO_CROSSING cells their F_init's bytes, every
    output realizable."""
    h5py = pytest.importorskip("h5py")
    from dodo.cli import main
    from dodo.conventions import to_emu_layout
    from dodo.training.synth import write_synthetic_database

    rng = np.random.default_rng(66)
    rest = np.concatenate([_shared_shape_cells(rng, 40), _eln_free_cells(rng, 16), _crossing_cells(rng, 8)])
    data, out = tmp_path / "cells.h5", tmp_path / "out.h5"
    write_synthetic_database(data, n=64, seed=3)
    with h5py.File(data, "r+") as f:
        f["F4_initial(1|ccm)"][...] = to_emu_layout(rest)
        f["F4_final(1|ccm)"][...] = to_emu_layout(rest)
    assert main(["apply", str(data), "--grid", "4x4x4", "--max-speed", "0.99999999", "--threads", "1", "-q",
                 "-o", str(out)]) == 0
    with h5py.File(out, "r") as cells:
        F, u = cells["F_init"][...].reshape(-1, 6, 4), cells["u"][...].reshape(-1, 4)
        F_pred, status = cells["F_pred"][...].reshape(-1, 6, 4), cells["status"][...].reshape(-1)
    assert u[:, 0].max() > 1000
    expected = dodo.Closure(threads=1).apply(F, u)
    assert F_pred.tobytes() == expected.F_pred.tobytes() and status.tobytes() == expected.status.tobytes()
    stable = status == NO_CROSSING
    assert stable.sum() >= 30
    assert all(F_pred[i].tobytes() == F[i].tobytes() for i in np.flatnonzero(stable))
    assert _realizable(F_pred).all()


def test_a_species_one_ulp_outside_the_cone_keeps_its_flux_and_the_cube_symmetry():
    """A rejected cell (a species at flux factor 1, 1 ulp outside the cone in the host's order) comes
    back as its input with that species' flux scaled onto the cone by a few ulp, whatever the axis
    order: x -> y -> z maps the cell onto itself, so the output must map the same way."""
    F = np.zeros((1, 6, 4))
    F[0, :, 0] = [0.9703946155208285, 0.1263294776194545, 0.1398392836646305, 0.9432115808846023,
                  0.5011040486642879, 0.5758332333110795]
    F[0, 0, 1:] = [-0.4421156519916732, -0.8053645079658942, 0.31238993166337425]
    F[0, 1:, 1:] = 0.1 * F[0, 1:, :1]
    closure = dodo.Closure("box3d", threads=1)
    result = closure.apply(F)
    cyclic = closure.apply(F[..., [0, 3, 1, 2]]).F_pred[..., [0, 2, 3, 1]]
    assert result.status[0] == FLUX_FACTOR
    assert _realizable(result.F_pred).all() and _realizable(cyclic).all()
    assert np.abs(result.F_pred - F).max() < 1e-14
    assert np.abs(cyclic - F).max() < 1e-14
