#!/usr/bin/env python3
"""atheris target for the Python API: dodo.box3d, dodo.Closure(...).apply and dodo.closure.

Bytes -> F_init and u of arbitrary shape, dtype, memory layout (non-contiguous, negative strides,
Fortran order) and values (NaN, Inf, huge, tiny, negative densities, spacelike u). Each call must
either raise ValueError or TypeError (a clear error) or return finite float64 results of the right
shape whose rejected cells are realizable and whose other cells conserve the flavour sums and
lepton numbers and stay realizable. Anything else (another exception, NaN output, a crash of the
extension) is a finding.

    python fuzz/python/fuzz_python_api.py -runs=20000 build/fuzz/seeds/python   (fuzz/README.md)
    DODO_FUZZ_MODEL=python/dodo/models/qke_default.onnx python fuzz/python/fuzz_python_api.py ...
"""
from __future__ import annotations

import gc
import os
import sys
import types
from importlib import resources

import atheris

import numpy as np

import dodo

# $DODO_FUZZ_MODEL as fuzz_apply reads it (the default model: Dodo's native evaluator unless
# DODO_NETWORK_EVALUATOR=onnxruntime), else the shipped test model.
MODEL = os.environ.get("DODO_FUZZ_MODEL") or str(resources.files("dodo.models") / "synthetic-test-equivariant.onnx")
CLOSURES = {
    "model": dodo.Closure(MODEL, threads=0, chunk_size=4),
    "model_threads": dodo.Closure(MODEL, threads=2, chunk_size=4),
    "box3d": dodo.Closure("box3d", threads=0, chunk_size=4),
}
EDGES = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 1e300, -1e300, 1e-310, 5e-324, 2.2250738585072014e-308,
         1.7976931348623157e308, np.inf, -np.inf, np.nan, 1e33, 0.98, 0.9799999999999999, 1.0000001]
REJECTED = 62
DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.complex128, np.bool_, object]


def number(data: atheris.FuzzedDataProvider) -> float:
    tag = data.ConsumeIntInRange(0, 3)
    if tag == 0:
        return data.ConsumeRegularFloat() if data.ConsumeBool() else data.ConsumeFloat()
    if tag == 1:
        return EDGES[data.ConsumeIntInRange(0, len(EDGES) - 1)]
    return (2.0 * data.ConsumeProbability() - 1.0) * 10.0 ** data.ConsumeIntInRange(-40, 40)


def physical_cells(data: atheris.FuzzedDataProvider, n: int) -> tuple[np.ndarray, np.ndarray]:
    F = np.empty((n, 6, 4))
    u = np.empty((n, 4))
    for c in range(n):
        scale = 10.0 ** data.ConsumeIntInRange(-60, 60)
        for a in range(6):
            density = scale * (0.01 + data.ConsumeProbability())
            flux_factor = data.ConsumeProbability()
            cos_t = 2 * data.ConsumeProbability() - 1
            phi = 6.283185307179586 * data.ConsumeProbability()
            sin_t = np.sqrt(max(0.0, 1 - cos_t * cos_t))
            F[c, a] = [density, density * flux_factor * sin_t * np.cos(phi),
                       density * flux_factor * sin_t * np.sin(phi), density * flux_factor * cos_t]
        speed = 0.999 * data.ConsumeProbability()
        W = 1 / np.sqrt(1 - speed * speed)
        u[c] = [W, W * speed, 0.0, 0.0]
    return F, u


def make_inputs(data: atheris.FuzzedDataProvider):
    n = data.ConsumeIntInRange(0, 9)
    F, u = physical_cells(data, n)
    for _ in range(data.ConsumeIntInRange(0, 4)):  # a few arbitrary values
        if n:
            if data.ConsumeBool():
                F[data.ConsumeIntInRange(0, n - 1), data.ConsumeIntInRange(0, 5), data.ConsumeIntInRange(0, 3)] = number(data)
            else:
                u[data.ConsumeIntInRange(0, n - 1), data.ConsumeIntInRange(0, 3)] = number(data)
    shape_kind = data.ConsumeIntInRange(0, 7)
    if shape_kind == 1:
        F = F.reshape((n, 24)) if n else np.zeros((0, 24))
    elif shape_kind == 2 and n:
        F = F[0]
        u = u[0]
    elif shape_kind == 3:
        F = F[..., :3]
    elif shape_kind == 4 and n:
        F = F.reshape((1, n, 6, 4))
        u = u.reshape((1, n, 4))
    layout = data.ConsumeIntInRange(0, 4)
    if layout == 1 and F.ndim >= 1 and F.shape[0] > 1:
        F = F[::-1]
        u = u[::-1] if u.ndim == 2 else u
    elif layout == 2:
        F = np.asfortranarray(F)
    elif layout == 3 and F.ndim == 3:
        F = np.repeat(F, 2, axis=0)[::2]
    dtype = DTYPES[data.ConsumeIntInRange(0, len(DTYPES) - 1)] if data.ConsumeIntInRange(0, 3) == 0 else np.float64
    with np.errstate(all="ignore"):
        try:
            F = F.astype(dtype)
        except (ValueError, OverflowError):
            pass
    u_kind = data.ConsumeIntInRange(0, 4)
    if u_kind == 0:
        u = None
    elif u_kind == 1:
        u = [number(data) for _ in range(4)]
    elif u_kind == 2:
        u = np.array([1.0, 0.0, 0.0, 0.0])
    return F, u


def check_cells(F_in, u, F_out, status) -> None:
    F_in = np.asarray(F_in, dtype=np.float64)
    batch = F_in.shape[:-2]
    F_in = F_in.reshape(-1, 6, 4)
    F_out = np.asarray(F_out).reshape(-1, 6, 4)
    status = np.asarray(status).reshape(-1)
    if u is None:
        U = np.tile([1.0, 0.0, 0.0, 0.0], (F_in.shape[0], 1))
    else:
        U = np.broadcast_to(np.asarray(u, dtype=np.float64), batch + (4,)).reshape(-1, 4)
    assert np.isfinite(F_out).all(), "non-finite output"
    with np.errstate(all="ignore"):
        for c in range(F_in.shape[0]):
            G = F_out[c]
            flux = np.hypot(G[:, 1], np.hypot(G[:, 2], G[:, 3]))
            if status[c] & REJECTED:
                assert (G[:, 0] >= 0).all() and (flux <= G[:, 0] * (1 + 1e-15) + 1e-322).all(), f"rejected cell {c} not realizable"
                continue
            W = U[c, 0]
            scale = max(np.abs(F_in[c]).max(), np.abs(G).max())
            tolerance = 1e-10 * W * W * scale * 24
            d = G - F_in[c]
            assert (np.abs(d[:3].sum(axis=0)) <= tolerance).all(), f"cell {c}: neutrino flavour sum not conserved"
            assert (np.abs(d[3:].sum(axis=0)) <= tolerance).all(), f"cell {c}: antineutrino flavour sum not conserved"
            comoving = W * d[:, 0] - d[:, 1:] @ U[c, 1:]
            assert (np.abs(comoving[:3] - comoving[3:]) <= tolerance).all(), f"cell {c}: lepton number not conserved"
            assert (G[:, 0] - flux >= -tolerance).all(), f"cell {c}: output not realizable"


def TestOneInput(raw: bytes) -> None:
    data = atheris.FuzzedDataProvider(raw)
    which = data.ConsumeIntInRange(0, 3)
    F, u = make_inputs(data)
    try:
        if which == 0:
            result = dodo.box3d(F, u)
            out, status = result.F_box, result.status
        elif which == 3:
            out = dodo.closure(F, u, model=MODEL)
            status = None
        else:
            closure = CLOSURES[["model", "model_threads", "box3d"][which - 1]]
            result = closure.apply(F, u)
            out, status = result.F_pred, result.status
    except (ValueError, TypeError) as error:
        assert str(error), "exception without a message"
        return
    assert out.dtype == np.float64, out.dtype
    if status is None:
        assert np.isfinite(out).all(), "dodo.closure returned a non-finite value"
        return
    check_cells(F, u, out, status)
    if which == 1:  # threads do not change results
        again = CLOSURES["model_threads"].apply(F, u)
        assert np.array_equal(again.F_pred, out) and np.array_equal(again.status, status), "threads changed results"


def instrument_dodo_and_this_file() -> int:
    """Coverage feedback for dodo's Python code and this file's input builder.

    The editable install loads dodo through its own loader, which atheris.instrument_imports() did
    not instrument: the target saw 46 edges, none in dodo, so libFuzzer kept one seed of 24 and only
    mutated it (fuzzing campaign 2026-12-06, docs/reliability_cpp.md). atheris.instrument_all()
    reaches dodo however it was imported, but patches all of numpy too (about a minute on a busy
    2-core machine); this patches the functions of dodo's modules loaded by now and of this file.
    """
    def ours(function) -> bool:
        module = getattr(function, "__module__", None) or ""
        return module in ("dodo", __name__) or module.startswith("dodo.")
    functions = [f for f in gc.get_objects() if isinstance(f, types.FunctionType) and ours(f)]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def main() -> None:
    instrument_dodo_and_this_file()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
