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
import math
import os
import re
import sys
import time

import numpy as np

from ._cli_common import file_output_path, input_path, one_line, shown_name
from .conventions import MAX_THREADS, SPECIES


def _cells(count: int) -> str:
    """``count`` cells in words: "1 cells" was printed of a one-cell file (outside probe, Python round
    fifty-five)."""
    return f"{count} cell" if count == 1 else f"{count} cells"


def register(subparsers) -> None:
    # `dodo apply --help` said nothing of which cells fill the grid, so a file of 7 states met the default
    # 16x16x16 grid as "db.h5 holds 7 cells; the grid needs 4096" (new user's journey, round two).
    parser = subparsers.add_parser(
        "apply", help="closure (C++ runtime) over a grid of cells from an Emu-format file, scored beside Box3D",
        description="Lay the first NX*NY*NZ states of an Emu-format file (fluid rest frame) on an NXxNYxNZ grid "
                    "(--grid; the file must hold that many states: --grid 1x1xN for a file of N), move each "
                    "cell with a smooth fluid velocity field of speeds up to --max-speed, apply Box3D alone "
                    "and the closure of --model (the shipped default without it; C++ runtime), and print each "
                    "species' errors against the file's asymptotic states, conservation, status counts and "
                    "throughput. dodo score MODEL FILE scores a model on every state of a file, at rest.")
    parser.add_argument("data", type=input_path, help="Emu-format HDF5 (F4_initial(1|ccm), F4_final(1|ccm), ...)")
    parser.add_argument("--model", default=None, help="ONNX model package, 'box3d' (no model) or 'default' "
                        "(the model shipped with dodo, also when --model is left out)")
    parser.add_argument("--grid", default="16x16x16", help="grid shape NXxNYxNZ (default 16x16x16)")
    parser.add_argument("--max-speed", type=float, default=0.3,
                        help="largest fluid speed of the velocity field, in [0, 1) (c = 1; default 0.3)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores this process may run on; under an MPI launcher, its share of the node)")
    parser.add_argument("-o", "--output", default=None, type=file_output_path,
                        help="also write the cells (F_init, u, F_true, F_box, F_pred, status, growth_rate, "
                             "growth_rate_proxy, uncertainty) to this HDF5 file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the -o file when it exists and is not a cell file of an earlier dodo apply -o "
                             "(a solver database, an Emu database, another command's output: refused without it)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=_apply_command)


#: Cells per closure call: long inputs are done in blocks, with a progress line after each.
BLOCK_CELLS = 1 << 16


class _UsageError(ValueError):
    """A bad argument of `dodo apply`."""


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad values before any work (issue 11, items 18-19)."""
    if not (np.isfinite(args.max_speed) and 0.0 <= args.max_speed < 1.0):
        raise _UsageError(f"--max-speed must be a finite speed in [0, 1) (units of c); got {args.max_speed}")
    # dodo.Closure's bound (MAX_THREADS): 5000 failed in the closure with "threads must be an integer in
    # [0, 1024]", naming no option (outside probe, round 44); one check, one message, for every value outside.
    if args.threads is not None and not 0 <= args.threads <= MAX_THREADS:
        raise _UsageError(f"--threads must be an integer from 0 to {MAX_THREADS} (dodo.Closure's bound; 0 and 1: the "
                          f"calling thread only); got {args.threads}")
    _grid_shape(args.grid)  # a malformed grid before any file is opened
    from ._atomic import check_input_file, check_outputs
    from ._closure import model_file
    from ._output_guard import APPLIED_CELLS, refuse_replacing

    if args.model == "":  # an unset shell variable (--model "$MODEL"): "cannot read : no such file" before
        raise _UsageError('--model is empty: give a model package (.onnx file), "box3d" for Box3D without a '
                          "learned correction, or leave --model out for the model shipped with dodo")
    if args.model == "default":  # dodo score's spelling of the shipped model ("cannot read default" before)
        args.model = None
    if args.model is not None and args.model != "box3d":
        word = args.model.strip().lower()
        if word in ("box3d", "default") and not os.path.exists(args.model):
            # `--model Box3D` (the docs' spelling of the method) read "cannot read Box3D: no such file"
            # (outside probe, Python round forty-seven).
            raise _UsageError(f"--model {args.model!r} is no file here; the keywords are lower case, without "
                              f"spaces: --model {word}")
        if os.path.isdir(args.model):
            from ._closure import directory_hint

            hint = directory_hint(args.model)
            if hint:  # "run is a directory, not a regular file; give a model package": of the one it holds (round 49)
                raise _UsageError(f"--model {args.model} is a directory, not a regular file{hint}")
        check_input_file(args.model, "a model package (one .onnx file)")
    check_input_file(args.data, "an Emu-format HDF5 file")
    if args.output is not None:
        # The model read is an input even when implicit: without --model, the shipped default.
        check_outputs([args.output], [args.data, model_file(args.model)])
        refuse_replacing(args.output, APPLIED_CELLS, "dodo apply -o", args.overwrite)


def _apply_command(args: argparse.Namespace) -> int:
    """`dodo apply` with expected failures as one line on stderr and exit code 2."""
    try:
        _check_arguments(args)
        return _apply(args)
    except BrokenPipeError:  # the reader went away (`| head`): dodo.cli.main ends quietly, 141
        raise
    except ModuleNotFoundError as error:
        print(f"dodo apply: error: {error.name} is not installed (needed to read the HDF5 input); "
              "pip install h5py", file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as error:
        from ._memory import with_memory_advice  # HDF5's "memory allocation failed" (round fifty-six)

        print(f"dodo apply: error: {with_memory_advice(one_line(error))}", file=sys.stderr)
    return 2


def _grid_shape(text: str) -> tuple[int, ...]:
    """NXxNYxNZ: three positive integers in ASCII digits joined by x. Python's int() alone took
    '1_0' (digit grouping) for 10, ' 2', '+2' and other scripts' digits: a typo ran a grid
    of another shape."""
    match = re.fullmatch(r"([0-9]+)[xX]([0-9]+)[xX]([0-9]+)", text)
    shape = tuple(int(part) for part in match.groups()) if match else ()
    if len(shape) != 3 or min(shape) < 1:
        raise _UsageError(f"--grid must look like 16x16x16: three positive whole numbers (digits 0-9) joined by x; "
                          f"got {text!r}")
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


def _check_grid_fits(path: str, grid: str, count: int) -> str:
    """Refuse, before reading any cell, a grid of more cells than the file holds (any size: the
    count is an exact integer). Returns a note for the report when the file is an unfinished
    `dodo simulate` run's database ('' otherwise)."""
    from .emu_files import open_emu_file, unfinished_run_note

    handle, nsims = open_emu_file(path)
    with handle:
        note = unfinished_run_note(handle, path)
    if count > nsims:
        # What to do, not only what failed: the default grid (16x16x16, not given on the command line)
        # left a user of a small file to guess (new user's journey, round two).
        fits = f"; give a grid of at most {_cells(nsims)}, e.g. --grid 1x1x{nsims}" if nsims >= 1 else ""
        raise _UsageError(f"{path} holds {_cells(nsims)}; the grid needs {count} (--grid {grid})"
                          + (f" ({note})" if note else "") + fits)
    return note


def _read_cells(path: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    from .emu_files import iter_emu_chunks

    initial, final, have = [], [], 0
    for chunk in iter_emu_chunks(path):
        initial.append(chunk.F_init)
        final.append(chunk.F_final)
        have += len(chunk)
        if have >= count:
            break
    if have < count:
        raise _UsageError(f"{path} holds {_cells(have)}; the grid needs {count}")
    return np.concatenate(initial)[:count], np.concatenate(final)[:count]


def _errors(F: np.ndarray, F_true: np.ndarray, u: np.ndarray, ntot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean |dn|/N_tot and |dF|/N_tot per species, in the fluid rest frame, over the cells given."""
    from ._box3d import boost_to_rest

    difference = boost_to_rest(F - F_true, u[..., None, :]) / ntot[..., None, None]
    dn = np.abs(difference[..., 0]).reshape(-1, 6).mean(axis=0)
    dF = np.linalg.norm(difference[..., 1:], axis=-1).reshape(-1, 6).mean(axis=0)
    return dn, dF


def _run_in_blocks(runtime, F_init: np.ndarray, u: np.ndarray, quiet: bool):
    """The closure over all cells, BLOCK_CELLS at a time, into one ClosureResult of every cell
    (the growth rates and the uncertainty too: -o wrote F_pred and status alone, so a user had the
    closure's growth rate only through Python or C); (result, seconds in the closure)."""
    from ._closure import ClosureResult

    result = ClosureResult.empty(len(F_init))
    seconds = 0.0
    for start in range(0, len(F_init), BLOCK_CELLS):
        stop = min(start + BLOCK_CELLS, len(F_init))
        began = time.perf_counter()
        runtime.apply(F_init[start:stop], u[start:stop], out=ClosureResult(*(array[start:stop] for array in result)))
        seconds += time.perf_counter() - began
        if not quiet and len(F_init) > BLOCK_CELLS:
            print(f"dodo apply: {stop:,} of {len(F_init):,} cells", file=sys.stderr, flush=True)
    return result, seconds


def _apply(args: argparse.Namespace) -> int:
    from . import CellStatus, box3d, comoving_density
    from ._box3d import boost_from_rest, boost_to_rest
    from ._closure import Closure
    from ._status import REJECTED_MASK
    from .reference import conservation_error

    shape = _grid_shape(args.grid)
    count = math.prod(shape)  # exact: np.prod wraps past int64 (a 2^32 x 2^32 grid counted 0 cells)
    runtime = Closure(args.model, threads=args.threads)  # before reading: a bad model fails fast
    unfinished = _check_grid_fits(args.data, args.grid, count)
    F_rest, F_true_rest = _read_cells(args.data, count)
    u = velocity_field(shape, args.max_speed).reshape(-1, 4)
    F_init = boost_from_rest(F_rest, u[:, None, :])
    F_true = boost_from_rest(F_true_rest, u[:, None, :])
    with np.errstate(invalid="ignore", over="ignore"):
        ntot = comoving_density(F_init, u)

    # Cells with non-finite input or truth (NaN rows of a database) are flagged and left out of
    # the scores, so one bad row cannot turn every mean into NaN (issue 11, item 19).
    scored = (np.isfinite(F_init).all(axis=(1, 2)) & np.isfinite(F_true).all(axis=(1, 2))
              & np.isfinite(ntot) & (ntot > 0))
    if not scored.any():  # before -o is written: a run that fails must not replace an earlier good file
        raise ValueError(f"no cell of {args.data} can be scored: each has a non-finite input or truth, or a comoving "
                         "density N_tot <= 0 (negative or zero densities)")

    result, seconds = _run_in_blocks(runtime, F_init, u, args.quiet)
    F_pred, status = result.F_pred, result.status
    # Cells the closure rejects (|F| > n, a flux factor past its limit) come back as their input put
    # onto the flux cone: scored, they read as a closure error, and apply printed a conservation
    # violation of 1.5 N_tot for the closure's own clamping (outside probe, round 27). `dodo score`
    # has left them out since round six; so does apply, counting them.
    rejected = scored & ((status.astype(np.int64) & REJECTED_MASK) != 0)
    # The flags are dodo.CellStatus's: both lines below said "dodo.status", which is no name of the package
    # (outside probe, docs round three).
    if not (scored & ~rejected).any():  # before -o is written, as above
        raise ValueError(f"no cell of {args.data} can be scored: the closure rejects every cell's input as "
                         "unphysical (e.g. n < 0 or |F| > n, or a flux factor past its limit: see dodo.CellStatus)")
    unusable = int(np.count_nonzero(~scored))
    scored &= ~rejected
    # Box3D at the closure's own settings, its flux-factor limit included (a model exported at
    # another limit than 0.98 had its Box3D column computed at 0.98: outside probe, round fifteen).
    F_box = box3d(F_init, u, **{k: runtime.box3d_settings[k] for k in ("lebedev_order", "z_method", "max_flux_factor")},
                  threads=args.threads).F_box
    if args.output:
        _write_output(args.output, F_init, u, F_true, F_box, result, shape)

    # The swirl's x, y and z components are sin(y), sin(z) and sin(x) times cosines: on a grid of at most 2
    # points along every axis (1x1x1, 2x2x2, 2x2x1) each sine is 0, and every cell was at rest while the
    # report said "fluid speeds up to 0.3" (outside probe, Python round fifty-nine).
    at_rest = args.max_speed > 0 and max(shape) <= 2
    print(f"closure on a {args.grid} grid ({_cells(count)} from {shown_name(args.data)}), "
          + ("fluid speeds 0 (every cell at rest: the velocity field vanishes on a grid of at most 2 cells along "
             "every axis, whatever --max-speed; give one axis 3 cells or more for moving cells)" if at_rest
             else f"fluid speeds up to {args.max_speed}"))
    # Box3D alone has no head: "head None" was Python's None printed (outside probe, docs round three).
    # A package that describes its network (the default model, every distilled ensemble) runs on Dodo's own
    # kernels: the line named ONNX Runtime alone, which then only checks the kernels at load (new user's
    # journey, round two).
    version = runtime.onnxruntime[1] or "-"
    network = (f"network on Dodo's native evaluator (ONNX Runtime {version} checked it at load)"
               if runtime.evaluator == "native" else f"ONNX Runtime {version}")
    print(f"model: {shown_name(runtime.model_path) if runtime.model_path else 'none (Box3D only)'}; head {runtime.head or '-'}; "
          f"{runtime.threads} thread(s); {network}")
    if unfinished:
        print(f"note: {unfinished}")
    if not scored.all():
        reasons = ([f"{unusable} with a non-finite input or truth, or a comoving density N_tot <= 0, left out; such "
                    "inputs are flagged NONFINITE, NEGATIVE_DENSITY or ZERO_DENSITY below"] if unusable else []) + \
                  ([f"{int(rejected.sum())} whose input the closure rejects as unphysical (|F| > n, a flux factor "
                    "past its limit), left out; their flags are below (dodo.CellStatus)"] if rejected.any() else [])
        print(f"cells scored: {int(scored.sum())} of {count} ({'; '.join(reasons)})")
    print("errors against the asymptotic states, fluid rest frame, mean over cells, units of N_tot")
    print(f"{'species':<11}{'|dn| box3d':>12}{'|dn| closure':>14}{'|dF| box3d':>12}{'|dF| closure':>14}")
    box_dn, box_dF = _errors(F_box[scored], F_true[scored], u[scored], ntot[scored])
    model_dn, model_dF = _errors(F_pred[scored], F_true[scored], u[scored], ntot[scored])
    for a, name in enumerate(SPECIES):
        print(f"{name:<11}{box_dn[a]:>12.3e}{model_dn[a]:>14.3e}{box_dF[a]:>12.3e}{model_dF[a]:>14.3e}")
    print(f"{'all':<11}{box_dn.mean():>12.3e}{model_dn.mean():>14.3e}{box_dF.mean():>12.3e}{model_dF.mean():>14.3e}")
    # In units of N_tot: the squares of fluxes of ~1e160 overflowed, and every species read unrealizable
    # (outside probe, physics round ten).
    rest = boost_to_rest(F_pred[scored], u[scored][:, None, :]) / ntot[scored][:, None, None]
    unrealizable = np.mean(np.linalg.norm(rest[..., 1:], axis=-1) > rest[..., 0] * (1 + 1e-12))
    print(f"largest conservation violation / N_tot: "
          f"{conservation_error(F_init[scored], F_pred[scored], u[scored]).max():.1e}; "
          f"unrealizable species: {unrealizable:.1%}; non-finite outputs: {np.count_nonzero(~np.isfinite(F_pred))}")
    statuses = {flag.name: int(np.count_nonzero(status & flag.value)) for flag in CellStatus if flag.value}
    print("status counts:", ", ".join(f"{name} {n}" for name, n in statuses.items() if n) or "all OK")
    print(f"runtime: {count / seconds:,.0f} cells/s ({seconds * 1e3:.1f} ms)")
    if args.output:
        print(f"cells written to {shown_name(args.output)}")
    return 0


#: Units of the per-cell diagnostics that -o writes (ClosureResult's, docs/runtime.md).
_DIAGNOSTIC_UNITS = {"growth_rate": "s^-1, comoving frame (the model's where it corrected the cell, else Box3D's "
                                    "proxy; 0 for stable and rejected cells)",
                     "growth_rate_proxy": "s^-1, comoving frame (Box3D's proxy alone)",
                     "uncertainty": "units of the comoving N_tot (the model's spread of its correction; 0 where "
                                    "no correction is applied)"}


def _write_output(path: str, F_init, u, F_true, F_box, result, shape) -> None:
    """The grid's cells, lab frame, Dodo's layout [nx, ny, nz, 6, 4], and the closure's per-cell
    status, growth rates and uncertainty [nx, ny, nz]; written atomically."""
    from ._atomic import atomic_hdf5
    from ._output_guard import APPLIED_CELLS_MARK

    grid = tuple(shape)
    with atomic_hdf5(path) as (out, _):
        for name, values in (("F_init", F_init), ("u", u), ("F_true", F_true), ("F_box", F_box),
                             ("F_pred", result.F_pred)):
            out[name] = values.reshape(grid + values.shape[1:])
        out["status"] = result.status.reshape(grid)
        for name, units in _DIAGNOSTIC_UNITS.items():
            out[name] = getattr(result, name).reshape(grid)
            out[name].attrs["units"] = units
        out.attrs["layout"] = "[nx, ny, nz, species (nu_e..nubar_tau), (t, x, y, z)], lab frame; u = (W, W v)"
        out.attrs["kind"] = APPLIED_CELLS_MARK
