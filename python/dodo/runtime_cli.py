"""`dodo apply`: the closure run by the C++ runtime over a grid of cells, scored beside Box3D.

Takes cells from an Emu-format database (initial and asymptotic states, fluid rest frame),
lays the first nx*ny*nz of them on a grid, moves each grid cell with a smooth fluid velocity
field (so the closure works in the lab frame as inside a hydro code), applies Box3D alone and
the full closure (`dodo.Closure`: Box3D + ONNX correction, projection, limiter), and prints
per-species errors against the asymptotic states, the conservation and realizability checks,
the per-cell status counts and the throughput. Needs h5py to read the file.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from .conventions import SPECIES


def register(subparsers) -> None:
    parser = subparsers.add_parser("apply", help="closure (C++ runtime) over a grid of cells from an Emu-format file, "
                                                 "scored beside Box3D")
    parser.add_argument("data", help="Emu-format HDF5 (F4_initial(1|ccm), F4_final(1|ccm), ...)")
    parser.add_argument("--model", default=None, help="ONNX model package (default: the model shipped with dodo)")
    parser.add_argument("--grid", default="16x16x16", help="grid shape NXxNYxNZ (default 16x16x16)")
    parser.add_argument("--max-speed", type=float, default=0.3, help="largest fluid speed of the velocity field (c = 1)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    parser.set_defaults(func=_apply)


def _grid_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise SystemExit(f"dodo apply: --grid must look like 16x16x16; got {text!r}")
    return shape


def velocity_field(shape: tuple[int, int, int], max_speed: float) -> np.ndarray:
    """A smooth periodic swirl of fluid four-velocities on the grid, |v| <= max_speed: (nx, ny, nz, 4)."""
    axes = [np.linspace(0.0, 2 * np.pi, n, endpoint=False) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    v = np.stack([np.sin(y) * np.cos(z), np.sin(z) * np.cos(x), np.sin(x) * np.cos(y)], axis=-1) * max_speed
    speed = np.linalg.norm(v, axis=-1, keepdims=True)
    v = np.where(speed > max_speed, v * max_speed / np.maximum(speed, 1e-300), v)
    W = 1.0 / np.sqrt(1.0 - np.sum(v * v, axis=-1))
    return np.concatenate([W[..., None], W[..., None] * v], axis=-1)


def _read_cells(path: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    from .training.readers import iter_emu_chunks

    initial, final, have = [], [], 0
    for chunk in iter_emu_chunks(path):
        initial.append(chunk.F_init)
        final.append(chunk.F_final)
        have += len(chunk)
        if have >= count:
            break
    if have < count:
        raise SystemExit(f"dodo apply: {path} holds {have} cells; the grid needs {count}")
    return np.concatenate(initial)[:count], np.concatenate(final)[:count]


def _errors(F: np.ndarray, F_true: np.ndarray, u: np.ndarray, ntot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean |dn|/N_tot and |dF|/N_tot per species, in the fluid rest frame."""
    from ._box3d import boost_to_rest

    difference = boost_to_rest(F - F_true, u[..., None, :]) / ntot[..., None, None]
    dn = np.abs(difference[..., 0]).reshape(-1, 6).mean(axis=0)
    dF = np.linalg.norm(difference[..., 1:], axis=-1).reshape(-1, 6).mean(axis=0)
    return dn, dF


def _apply(args: argparse.Namespace) -> int:
    from . import CellStatus, box3d, comoving_density
    from ._box3d import boost_from_rest, boost_to_rest
    from ._closure import Closure
    from .reference import conservation_error

    shape = _grid_shape(args.grid)
    count = int(np.prod(shape))
    F_rest, F_true_rest = _read_cells(args.data, count)
    u = velocity_field(shape, args.max_speed)
    F_init = boost_from_rest(F_rest.reshape(shape + (6, 4)), u[..., None, :])
    F_true = boost_from_rest(F_true_rest.reshape(shape + (6, 4)), u[..., None, :])
    ntot = comoving_density(F_init, u)

    runtime = Closure(args.model, threads=args.threads)
    start = time.perf_counter()
    result = runtime.apply(F_init, u)
    seconds = time.perf_counter() - start
    F_box = box3d(F_init, u, **{k: runtime.box3d_settings[k] for k in ("lebedev_order", "z_method")}).F_box

    print(f"closure on a {args.grid} grid ({count} cells from {args.data}), fluid speeds up to {args.max_speed}")
    print(f"model: {runtime.model_path or 'none (Box3D only)'}; head {runtime.head}; {runtime.threads} thread(s); "
          f"ONNX Runtime {runtime.onnxruntime[1] or '-'}")
    print("errors against the asymptotic states, fluid rest frame, mean over cells, units of N_tot")
    print(f"{'species':<11}{'|dn| box3d':>12}{'|dn| closure':>14}{'|dF| box3d':>12}{'|dF| closure':>14}")
    box_dn, box_dF = _errors(F_box, F_true, u, ntot)
    model_dn, model_dF = _errors(result.F_pred, F_true, u, ntot)
    for a, name in enumerate(SPECIES):
        print(f"{name:<11}{box_dn[a]:>12.3e}{model_dn[a]:>14.3e}{box_dF[a]:>12.3e}{model_dF[a]:>14.3e}")
    print(f"{'all':<11}{box_dn.mean():>12.3e}{model_dn.mean():>14.3e}{box_dF.mean():>12.3e}{model_dF.mean():>14.3e}")
    rest = boost_to_rest(result.F_pred, u[..., None, :])
    unrealizable = np.mean(np.linalg.norm(rest[..., 1:], axis=-1) > rest[..., 0] * (1 + 1e-12))
    print(f"largest conservation violation / N_tot: {conservation_error(F_init, result.F_pred, u).max():.1e}; "
          f"unrealizable species: {unrealizable:.1%}; non-finite outputs: {np.count_nonzero(~np.isfinite(result.F_pred))}")
    statuses = {flag.name: int(np.count_nonzero(result.status & flag.value)) for flag in CellStatus if flag.value}
    print("status counts:", ", ".join(f"{name} {n}" for name, n in statuses.items() if n) or "all OK")
    print(f"runtime: {count / seconds:,.0f} cells/s ({seconds * 1e3:.1f} ms)")
    return 0
