"""Simulating a list of states in chunks, resumably: the engine behind ``dodo simulate``.

After each chunk the results so far go to ``<output>.partial.npz`` and the valid runs so far to
the Emu-format database ``<output>`` (both atomically; attribute ``complete`` says whether all
states are done); a rerun with the same states and settings skips the chunks already done.
The partial file is removed at the end. Runs that do not saturate or do not conserve are
dropped from the database and listed (index and reason) in its ``dropped`` attribute.

Under MPI (``mpirun -n N dodo simulate ...``; dodo.qke.parallel) the batches are shared out over
the ranks by estimated cost; rank r checkpoints to ``<output>.partial.rank<r>.npz``, a rerun with
any N resumes from every checkpoint it finds, and rank 0 writes the database at the end. The
batches, hence the rows, are the same as in one process.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import math
import pickle
import time
import zipfile
from dataclasses import asdict, replace
from typing import Callable

import numpy as np

from .asymptotic import MINIMUM_END_TSAT, asymptotic_states
from .directions import uniform_sphere
from .initial import species_direction_densities
from .._atomic import DirectoryMovedError, OutputPathError, atomic_write
from .._shown import counted
from .io import require_h5py, write_emu_database
from .parallel import assign_batches, plan_batches, raised_on_every_rank, waited_for_text, world
from .backends import make_box, resolve_backend
from .solver import SolverConfig
from .states import AXIS_SEARCH, EMU_AXIS_SEARCH, END_TIME_GROWTH_TIMES, NSM1_EMU_1D, box_setup, rotate_four_flux


def _comparable_settings(settings: dict) -> dict:
    """The settings a resume must match: all but the kernel (backend)."""
    return {**settings, "solver": {key: value for key, value in settings["solver"].items() if key != "backend"}}


def _fingerprint(four_flux: np.ndarray, settings: dict) -> str:
    """What a resume must match: the states and the settings, except the kernel (backend).

    Both kernels compute the same runs (to rounding), so a campaign started with one resumes with
    the other, and partial files written before the compiled kernel existed stay usable.
    """
    digest = hashlib.sha256(np.ascontiguousarray(four_flux, dtype=float).tobytes())
    digest.update(json.dumps(_comparable_settings(settings), sort_keys=True).encode())
    return digest.hexdigest()


def _states_digest(four_flux: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(four_flux, dtype=float).tobytes()).hexdigest()


def reproduction_provenance(four_flux: np.ndarray) -> dict:
    """What an output needs, beside its settings, seed and command, to be reproduced: the code's version
    and the states it was given. A database recorded neither (solver probe, round four): its rows hold only
    the valid states, yet the states dropped before or after their runs shaped the batches, and with them
    each state's perturbation seed and time step; and a rerun by a later version, or of an input file edited
    since, could not be told from the original. ``states_sha256``: SHA-256 of all requested states, in
    input order, as float64 [n, 6 species, 4 (n, Fx, Fy, Fz)] in C order, cm^-3, Dodo's species order."""
    from .. import __version__

    return {"dodo_version": str(__version__), "states_sha256": _states_digest(four_flux)}


class CheckpointMismatchError(ValueError):
    """A checkpoint ``OUT.partial*.npz`` of another campaign (or unreadable): never overwritten or removed."""


class NoValidStateError(ValueError):
    """Every state of a run was dropped: no output is written (an empty database marked complete
    read as a finished run, and replaced whatever file was there; outside probe, round eighteen)."""


def no_valid_state(output: str, nstates: int, dropped: dict, what: str = "gave a valid run") -> NoValidStateError:
    """The error for a run of ``nstates`` states none of which ``what``; ``dropped``: index -> reason."""
    reasons = [f"state {int(index)}: {reason}" for index, reason in sorted(dropped.items(), key=lambda item: int(item[0]))]
    shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    return NoValidStateError(f"none of the {counted(nstates, 'state')} {what}, so {output} is not written"
                             + (f" (dropped: {shown})" if shown else ""))


def _flatten(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _mismatch_reason(stored, four_flux: np.ndarray, settings: dict) -> str:
    """Why the checkpoint ``stored`` (an open .npz) does not belong to this campaign, in words."""
    if "settings" not in stored.files or "states_sha256" not in stored.files:
        return ("its fingerprint differs from this run's: other states or settings (it was written by an older "
                "version, which does not record which)")
    reasons = []
    if str(stored["states_sha256"]) != _states_digest(four_flux):
        count = int(stored["nstates"]) if "nstates" in stored.files else None
        reasons.append("other initial states" + (f" ({count} states there, {len(four_flux)} here)"
                                                 if count is not None and count != len(four_flux) else ""))
    theirs = _flatten(json.loads(str(stored["settings"])))
    ours = _flatten(json.loads(json.dumps(_comparable_settings(settings), sort_keys=True)))
    changed = sorted(key for key in set(theirs) | set(ours) if theirs.get(key) != ours.get(key))
    shown = []
    for key in changed:
        there, here = theirs.get(key), ours.get(key)
        if isinstance(there, list) or isinstance(here, list):
            shown.append(f"{key} differs")
        elif key.endswith("_sha256"):  # a digest of arrays: their name, not two hex strings
            shown.append(f"{key[:-len('_sha256')]} differs")
        else:
            shown.append(f"{key} {there!r} there, {here!r} here")
    if shown:
        reasons.append("other settings: " + ", ".join(shown))
    if "batch_size" in changed:
        hint = (f" (rerun with --batch-size {theirs.get('batch_size')} to resume)"
                if changed == ["batch_size"] and len(reasons) == 1 else "")
        reasons.append(f"the batch size decides each state's batch, hence its perturbation seed and time step, so "
                       f"states done with --batch-size {theirs.get('batch_size')} cannot be mixed with this run's{hint}")
    return "; ".join(reasons) or "its fingerprint differs from this run's"


#: Most time steps the light-crossing limit of the step may ask of one run (a default box takes a few
#: hundred to ~20,000: its cells are 0.28 / k_fastest long). A --box-length far below
#: the default (1e-6 cm) needed ~10^11 steps of at most 2 cells' light-crossing time: the run never
#: ended and its history grew by gigabytes (outside probe, solver round 3); such a state is dropped.
MAX_ADVECTIVE_STEPS = 10**6


def too_many_steps(end_time_s: float, box_length_cm: float, config: SolverConfig) -> str | None:
    """Why a run of ``end_time_s`` in a box of ``box_length_cm`` cannot be integrated, or None: the
    step is at most ``advection_cfl`` cells' light-crossing time (FastFlavourBox.time_steps)."""
    from .constants import SPEED_OF_LIGHT

    step = config.advection_cfl * box_length_cm / config.ncell / SPEED_OF_LIGHT
    steps = end_time_s / step
    if not steps > MAX_ADVECTIVE_STEPS:
        return None
    return (f"its box of {box_length_cm:g} cm in {config.ncell} cells needs {steps:.3g} time steps to reach its end "
            f"time {end_time_s:.3g} s (a step is at most {config.advection_cfl:g} cells' light-crossing time, "
            f"{step:.3g} s), more than the {MAX_ADVECTIVE_STEPS:,} a run may take: the box is far smaller than its "
            "fastest wavelength (is --box-length in cm?), or the end time very long (is tend(s) in s?); leave "
            "--box-length out for k L = 18, or give a larger one")


#: Rhea's reduction (asymptotic.py) needs t_end > MINIMUM_END_TSAT t_sat, and before t_sat the flavour
#: off-diagonal has grown from its seeds (perturbation_amplitude of the diagonal differences) through
#: Rhea's window (from 1e-3 of its peak) to its peak: ln(min(1 / amplitude, 1e3)) growth times at least
#: at the linear box rate (ln 10 at least: the window's top decade). An end time shorter than
#: MINIMUM_END_TSAT times that cannot give a valid run. Measured (16 cells, 24 directions, 10 random
#: states of the three families and 4 shallow crossings): t_sat 14.6-33 growth times with the default
#: 1e-6 seeds (no valid run below 56 of them; the bound is 20.7), 7.0-12 with 1e-2 seeds (bound 13.8;
#: valid from 25) and 3.7-6.5 with 1e-1 (bound 6.9; valid from 16). With --use-input-end-time such a
#: state ran to its end before being dropped as "no exponential growth found" or "not saturated early
#: enough" (solver probe, round three).
MIN_GROWTH_DECADES = 3.0


def min_end_growth_times(perturbation_amplitude: float) -> float:
    """The fewest growth times (1 / linear box rate) an end time must hold for a valid run (above)."""
    decades = min(MIN_GROWTH_DECADES, max(1.0, -math.log10(perturbation_amplitude)))
    return MINIMUM_END_TSAT * decades * math.log(10.0)


def too_few_growth_times(end_time_s: float, linear_rate: float, config: SolverConfig) -> str | None:
    """Why a run to ``end_time_s`` of a state whose fastest box mode grows at ``linear_rate`` (s^-1)
    cannot saturate early enough for Rhea's reduction, or None."""
    needed = min_end_growth_times(config.perturbation_amplitude)
    held = end_time_s * linear_rate
    if not held < needed:
        return None
    return (f"its end time {end_time_s:.3g} s is {held:.3g} growth times of its fastest box mode (1/rate = "
            f"{1 / linear_rate:.3g} s; the default is {END_TIME_GROWTH_TIMES:g}), fewer than the {needed:.3g} a valid "
            "run needs (it would stop with its flavour off-diagonal still growing at the end time; Rhea's reduction "
            f"needs t_end > {MINIMUM_END_TSAT:g} t_sat): the end time is too short for this state; dropped before "
            "its run")


#: Why a state with a NaN relative_cost is dropped.
RECONSTRUCTION_FAILED = "its angular distribution cannot be reconstructed (the maximum-entropy fit did not converge)"


def reconstruction_failure(state: np.ndarray, directions: np.ndarray) -> str:
    """Why one state [6, 4] has no angular distribution: its own defect (a negative density, a flux
    factor at or past the limit, a non-finite entry) when it has one, else RECONSTRUCTION_FAILED."""
    try:
        species_direction_densities(np.asarray(state, float)[None], directions)
    except ValueError as exc:
        if "did not converge" not in str(exc):
            return f"its angular distribution cannot be reconstructed: {exc}"
    return no_fit_reason(directions)


#: Total densities (cm^-3) the solver's arithmetic holds: squares of per-direction densities overflow
#: above ~1e154 and the linear analysis underflows far below 1e-100 (physical states: 1e20-1e40).
DENSITY_RANGE = (1e-100, 1e100)


def density_scale_failure(state: np.ndarray) -> str | None:
    """Why one state [6, 4] is out of the solver's density range, or None. A state of total density
    1e186 cm^-3 was dropped as "the maximum-entropy fit did not converge ...; a larger --nphi may fit
    it" (its cost estimate overflowed) and one of 1e-150 as "its fastest growth is the homogeneous mode"
    (the linear analysis underflowed), though the problem is scale free and both states are the same
    as one at 1e32 (parity and solver-laws probe, round one)."""
    state = np.asarray(state, float)
    if not np.all(np.isfinite(state)):
        return None  # the reconstruction names it
    total = float(state[:, 0].sum())
    if total == 0 or DENSITY_RANGE[0] <= total <= DENSITY_RANGE[1]:
        return None
    return (f"its total density {total:.3g} cm^-3 is outside the range the solver's float64 arithmetic holds "
            f"({DENSITY_RANGE[0]:g} to {DENSITY_RANGE[1]:g} cm^-3); the equations are scale free: simulate "
            "the state divided by s and multiply its densities by s, its times and lengths by 1/s")


def no_fit_reason(directions: np.ndarray) -> str:
    """RECONSTRUCTION_FAILED with the direction count: on a coarse set (--nphi 4 or 5) most states
    have no fit, and the reason blamed the state alone (outside probe, round 27)."""
    return f"{RECONSTRUCTION_FAILED} on {len(directions)} directions; a larger --nphi may fit it"


def relative_cost(four_flux: np.ndarray, directions: np.ndarray, end_time_s: np.ndarray | None) -> np.ndarray:
    """Estimated steps per state (up to a common factor): V_max t_end, with t_end ~ 1/(Box3D growth proxy).

    Used to batch states of similar cost together (a batch runs as many steps as its costliest member).
    Both factors are rotation invariant, so no linear analysis is needed here. NaN for a state whose
    angular distribution cannot be reconstructed (RECONSTRUCTION_FAILED): one such state must not
    stop the others of a run.
    """
    four_flux = np.asarray(four_flux, float)
    try:
        per_direction = species_direction_densities(four_flux, directions)
    except ValueError:
        if len(four_flux) <= 1:
            return np.full(len(four_flux), np.nan)
        return np.concatenate([relative_cost(four_flux[i:i + 1], directions,
                                             None if end_time_s is None else np.asarray(end_time_s, float)[i:i + 1])
                               for i in range(len(four_flux))])
    per_direction = per_direction.reshape(len(four_flux), 2, 3, -1)
    with np.errstate(over="ignore", invalid="ignore"):  # densities past the solver's range: dropped by name
        return _relative_cost(per_direction, directions, end_time_s)


def _relative_cost(per_direction: np.ndarray, directions: np.ndarray, end_time_s) -> np.ndarray:
    traceless = np.sqrt(np.sum((per_direction - per_direction.mean(axis=2, keepdims=True)) ** 2, axis=2))
    weight = traceless[:, 0] + traceless[:, 1]  # [n, ndir]
    # max_v sum_u weight_u (1 - v . u) = max_v (sum_u weight_u - v . sum_u weight_u u): the same
    # bound without the ndir x ndir kernel matrix (1.6 GiB at nphi 200).
    bound = (weight.sum(axis=1)[:, None] - (weight @ directions) @ directions.T).max(axis=1)
    if end_time_s is not None:  # an end time of 1e300 s: an infinite cost, dropped by the caller
        return bound * np.asarray(end_time_s, float)
    lepton = per_direction[:, 0] - per_direction[:, 1]  # [n, flavour, ndir]
    proxy = np.zeros(len(per_direction))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        difference = lepton[:, i] - lepton[:, j]
        proxy = np.maximum(proxy, np.sqrt(np.clip(difference, 0, None).sum(1) * np.clip(-difference, 0, None).sum(1)))
    return bound / np.maximum(proxy, 1e-300 * bound + 1e-300)


def _empty_results(nstates: int) -> dict:
    return {"final": np.full((nstates, 6, 4), np.nan), "final_stddev": np.full((nstates, 6, 4), np.nan),
            "growth_rate": np.zeros(nstates), "saturation_time": np.zeros(nstates), "end_time": np.zeros(nstates),
            "box_length_cm": np.zeros(nstates), "rotation": np.tile(np.eye(3), (nstates, 1, 1)),
            "linear_growth_rate": np.zeros(nstates), "done": np.zeros(nstates, bool), "valid": np.zeros(nstates, bool),
            "reason": np.array([""] * nstates, dtype=object), "wall_time_s": np.zeros(nstates),
            "skipped": np.zeros(nstates, bool),  # dropped by max_cost: not part of the batch plan
            # The kernel that ran each state (KERNEL_CODES; 0: not run, or read from a checkpoint written before
            # this was recorded). A run resumed with another --backend mixes kernels, while the settings name
            # the last run's only (solver probe, round four): the database's `kernels` attribute counts them.
            "kernel": np.zeros(nstates, np.int8)}


#: Codes of the kernels in the results' "kernel" (an int8 array: a checkpoint holds no pickle for it).
KERNEL_CODES = {"cpp": 1, "numpy": 2}


def _kernels_used(codes: np.ndarray) -> dict:
    """{kernel name: number of states} of ``codes``; "unknown": states of an earlier version's checkpoint."""
    names = {code: name for name, code in KERNEL_CODES.items()}
    counts = {}
    for code in np.asarray(codes).tolist():
        name = names.get(int(code), "unknown (a checkpoint of an earlier version)")
        counts[name] = counts.get(name, 0) + 1
    return counts


def _checkpoint_path(output: str, rank: int, nranks: int) -> str:
    return output + (".partial.npz" if nranks == 1 else f".partial.rank{rank}.npz")


def _checkpoints(output: str) -> list[str]:
    """Every checkpoint of ``output``: one process's and each rank's, from any earlier run.

    Only OUT.partial.npz and OUT.partial.rank<r>.npz: the glob OUT.partial*.npz also took the
    checkpoint of another output named OUT.partial<anything> (OUT.partialX.h5.partial.npz), which
    stopped this run as "not of this campaign", or was merged and then removed (solver round 3)."""
    prefix = glob.escape(output) + ".partial"
    found = glob.glob(prefix + ".npz") + glob.glob(prefix + ".rank*.npz")
    return sorted(path for path in found
                  if path == output + ".partial.npz" or path[len(output) + len(".partial.rank"):-len(".npz")].isdigit())


def _merge(into: dict, part: dict, indices: np.ndarray) -> None:
    """Copy the rows ``indices`` of ``part`` (arrays over those rows) into ``into`` where not done yet."""
    fresh = ~into["done"][indices]
    for key in into:
        if key in part:
            into[key][indices[fresh]] = part[key][fresh]


class _CheckpointUnpickler(pickle.Unpickler):
    """Unpickles what np.savez writes for an object array (the "reason" texts) and nothing else:
    np.load(allow_pickle=True) ran any pickle found in a file named OUT.partial*.npz, so a file put
    beside the output (a shared directory) ran its code in `dodo simulate OUT`."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it holds a pickled {module}.{name}, which a checkpoint never does")


class _Checkpoint(dict):
    """The arrays of a checkpoint .npz (``files`` as np.load's NpzFile has)."""

    @property
    def files(self) -> list[str]:
        return list(self)


def _read_checkpoint(path: str) -> _Checkpoint:
    """Every array of the .npz at ``path``, object arrays through :class:`_CheckpointUnpickler`."""
    arrays = _Checkpoint()
    with np.load(path, allow_pickle=False) as stored:  # a bare pickle is refused here (ValueError)
        for key in stored.files:
            try:
                arrays[key] = stored[key]
            except ValueError:  # an object array: its .npy holds a pickle of the array
                with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)(member)
                    arrays[key] = np.asarray(_CheckpointUnpickler(member).load())
    return arrays


def _max_cost_mismatch(stored, max_cost: float | None) -> str | None:
    """Why a checkpoint of this campaign's states and settings was written under another --max-cost, or None.

    The cap is kept beside the fingerprint, not in it: checkpoints written before it was recorded
    (no ``max_cost`` entry) resume as before. A resume with another cap was taken (outside probe,
    round 34): a lower cap kept the states done above it while the database recorded the lower cap,
    and either way the batches (each state's perturbation seed and time step) differ from a run
    with the new cap from the start."""
    if "max_cost" not in stored.files:
        return None
    there = json.loads(str(stored["max_cost"]))
    if there == max_cost:
        return None
    def shown(value):
        return "none" if value is None else f"{value:g}"
    return (f"other settings: --max-cost {shown(there)} there, {shown(max_cost)} here; the cap decides which states "
            "are run and how they are batched (each state's perturbation seed and time step), so states done under "
            f"one cap cannot be mixed with another's (rerun with "
            f"{'no --max-cost' if there is None else '--max-cost ' + shown(there)} to resume)")


#: The errors of a read that say nothing about the file's bytes (a truncated .npz raises others).
_SYSTEM_READ_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EIO", "EMFILE", "ENFILE", "ENOMEM", "ENOBUFS", "EACCES", "EPERM", "EAGAIN", "EINTR", "ESTALE", "ETIMEDOUT")
    if hasattr(errno, name))


def _unreadable_checkpoint(path: str, error: BaseException) -> CheckpointMismatchError:
    # An unreadable checkpoint belongs to no campaign that could resume it: no "rerun the command
    # that wrote it", which was the command just run (scale-out probe, round three).
    return CheckpointMismatchError(
        f"{path} cannot be read as a checkpoint ({' '.join(str(error).split()) or type(error).__name__}): "
        f"no run can resume from it. It is left untouched: remove {path} (its states are lost) and rerun "
        "to simulate them again, or choose another output file")


def _load_checkpoints(output: str, fingerprint: str, four_flux: np.ndarray, settings: dict,
                      report: Callable[[str], None], max_cost: float | None = None):
    """(results merged from every checkpoint, the number of the checkpoint each done row came from
    (-1: none), the checkpoint paths). A checkpoint of other states or settings, or one that
    cannot be read, raises :class:`CheckpointMismatchError`: it is never overwritten or removed."""
    nstates = len(four_flux)
    results = _empty_results(nstates)
    origin = np.full(nstates, -1)
    paths = _checkpoints(output)
    for number, path in enumerate(paths):
        try:
            stored = _read_checkpoint(path)
            why = (_max_cost_mismatch(stored, max_cost) if str(stored["fingerprint"]) == fingerprint
                   else _mismatch_reason(stored, four_flux, settings))
        except (OSError, MemoryError) as error:
            if not isinstance(error, MemoryError) and error.errno not in _SYSTEM_READ_ERRNOS:
                raise _unreadable_checkpoint(path, error) from None
            # A read the system failed (too many open files, an I/O error, no memory) says nothing about
            # the file; it was called unreadable, with "remove it (its states are lost)" as the way on:
            # hours of solver work for `ulimit -n 5` (outside probe, data-loss round seven).
            raise OSError(f"{path} could not be read ({type(error).__name__}: {' '.join(str(error).split())}); this "
                          "says nothing about the file, which is left as it is and holds the states done: rerun the "
                          "same command once the cause is gone (too many open files: ulimit -n; an I/O error; no "
                          "memory) to resume from it") from None
        except Exception as error:  # noqa: BLE001 - any failure to read it (truncated, not .npz, no fingerprint)
            raise _unreadable_checkpoint(path, error) from None
        if why is not None:
            raise CheckpointMismatchError(
                f"{path} does not belong to this campaign: {why}. It is left untouched: to resume it, rerun the "
                f"command that wrote it; to start this campaign, remove {path} (its states are lost) or choose "
                "another output file")
        if "indices" in stored.files:  # the rows it holds
            indices = stored["indices"]
            part = {key: stored[key] for key in results if key in stored.files}
        else:  # written before checkpoints held only their rows: every row, "done" says which
            indices = np.flatnonzero(stored["done"])
            part = {key: stored[key][indices] for key in results if key in stored.files}
        origin[indices[~results["done"][indices]]] = number
        _merge(results, part, indices)
    if results["done"].any():
        report(f"resuming: {int(results['done'].sum())}/{nstates} states already simulated")
    return results, origin, paths


def _what_to_fix(error: OSError) -> str:
    """What to do before a rerun: "free space" said of a file-size limit (ulimit -f: EFBIG) pointed at the
    disk, not the limit (outside probe, data-loss round thirteen)."""
    if error.errno == errno.EFBIG:
        return "raise the file-size limit (ulimit -f)"
    return "free space (or fix the cause)"


def _unwritable_directory(path: str) -> tuple[str, str] | None:
    """(why files cannot be made beside ``path``, what to do) where its directory is there but this process
    cannot write it; None otherwise. A directory made read-only after a checkpoint ended the run with
    "no permission to create files in d ...; choose another output", which would start the run over and
    leave its checkpoint behind (outside probe, data-loss round fifteen)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory) or os.access(directory, os.W_OK | os.X_OK):
        return None
    try:
        read_only_mount = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_mount = False
    if read_only_mount:
        return (f"the file system of {directory} is mounted read-only (since this command started?)",
                f"remount it read-write (or copy {directory} to a writable place)")
    return (f"no permission to create files in {directory} (made read-only while this command ran?)",
            f"make {directory} writable again (chmod u+w {directory})")


def _write_database_keeping(checkpoint: str, output: str, *database) -> None:
    """_write_database, saying on failure what survives: a full disk said only "[Errno 28] writing
    .out.h5.vm.8315.vv7no_pz.tmp: No space left on device", naming a temporary, not that the
    checkpoint holds the batches done (outside probe, round 27)."""
    try:
        _write_database(output, *database)
    except (OSError, OutputPathError) as error:
        unwritable = None if isinstance(error, DirectoryMovedError) else _unwritable_directory(output)
        if unwritable is None and not isinstance(error, OSError):
            raise
        fix = unwritable[1] if unwritable else _what_to_fix(error)
        kept = (f"the checkpoint {checkpoint} holds the batches done: {fix} and rerun the "
                "same command to resume from it" if os.path.exists(checkpoint) else "no checkpoint holds its batches")
        if unwritable:
            raise OutputPathError(f"cannot write {output}: {unwritable[0]}; an earlier {output} is untouched, and "
                                  f"{kept}") from None
        raise OSError(error.errno, f"cannot write {output} ({error.strerror or error}); an earlier {output} is "
                                   f"untouched, and {kept}") from None


def _write_database(output: str, four_flux: np.ndarray, results: dict, settings: dict, attributes: dict | None) -> None:
    """Write the valid runs finished so far as an Emu database (atomically)."""
    valid = results["valid"] & results["done"]
    dropped = {int(i): str(results["reason"][i]) for i in np.flatnonzero(results["done"] & ~results["valid"])}
    database = {"initial": four_flux[valid], "final": results["final"][valid], "final_stddev": results["final_stddev"][valid],
                "growth_rate": results["growth_rate"][valid], "saturation_time": results["saturation_time"][valid],
                "end_time": results["end_time"][valid], "box_length_cm": results["box_length_cm"][valid],
                "rotation": results["rotation"][valid], "linear_growth_rate": results["linear_growth_rate"][valid],
                "input_index": np.flatnonzero(valid)}
    provenance = dict(attributes or {})
    provenance.update(reproduction_provenance(four_flux))
    provenance.update({"solver": "dodo.qke fast-flavour QKE solver (docs/qke.md)", "settings": settings,
                       "dropped": dropped, "nstates_requested": len(four_flux), "nstates_done": int(results["done"].sum()),
                       "nstates_valid": int(valid.sum()), "complete": bool(results["done"].all()),
                       "kernels": _kernels_used(results["kernel"][valid]),
                       "wall_time_per_state_s": float(np.mean(results["wall_time_s"][valid])) if valid.any() else 0.0,
                       "frame": "fluxes in the input frame; the box axis was z after applying rotation_R (F_sim = R F)",
                       "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    write_emu_database(output, database, provenance)


def simulate_states(four_flux: np.ndarray, output: str, config: SolverConfig, batch_size: int = 8, axis: str = "fastest",
                    rotation: np.ndarray | None = None, box_length_cm: float | None = None,
                    end_time_s: np.ndarray | None = None, attributes: dict | None = None,
                    report: Callable[[str], None] = print, max_cost: float | None = None, threads: int = 1,
                    communicator=None, write_progress: bool = True) -> dict:
    """Simulate states ``[n, 6, 4]`` (cm^-3, original frame) and write an Emu database to ``output``.

    max_cost: states whose estimated cost exceeds this many times the NSM1 run's are not
    simulated but dropped with the reason (Emu's validation set skipped candidates above 2.5x
    NSM1: a tenth of random states take half the CPU time). Recorded in the checkpoint beside the
    fingerprint: a resume with another cap is refused (checkpoints written before it was recorded
    resume with any). threads: the compiled kernel steps a batch's simulations on up to
    this many threads (use it with batch_size >= threads; results do not depend on it, so it is
    not a setting either); under MPI, per rank.
    communicator: None = MPI's world when started by an MPI launcher with several ranks, else
    this process alone (dodo.qke.parallel.world). Every rank returns the merged results.
    write_progress: write the database of the batches so far to ``output`` after each batch (one
    process); False: only at the end (the checkpoint holds the progress), for an ``output`` that
    holds another file being replaced, which a run killed or failing midway must not destroy.
    """
    four_flux = np.asarray(four_flux, float)
    if four_flux.ndim != 3 or four_flux.shape[1:] != (6, 4) or len(four_flux) == 0:
        raise ValueError(f"states must have shape [n >= 1, 6, 4]; got {four_flux.shape}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if box_length_cm is not None and not (math.isfinite(box_length_cm) and box_length_cm > 0):
        raise ValueError(f"box length must be positive and finite; got {box_length_cm}")
    if max_cost is not None and not max_cost > 0:
        raise ValueError("max_cost must be positive")
    if max_cost is not None and end_time_s is not None:
        raise ValueError("max_cost needs the default end times (not --use-input-end-time)")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
    require_h5py()  # before any computing: the results go to HDF5
    config.validate()
    comm = world() if communicator is None else communicator
    say = report if comm.rank == 0 else (lambda message: None)  # campaign-wide news: once
    backend, fallback = resolve_backend(config)
    if fallback is not None:
        # `--threads 2` with the fallback was dropped without a word (solver probe, round three); with
        # `--backend numpy` it is refused (the CLI), but auto is the default and a campaign's options
        # may meet an ncell the compiled kernel cannot run, so here it is said, not refused.
        threads_note = f"; it steps on one thread, so --threads {threads} has no effect" if threads > 1 else ""
        say(f"using the NumPy kernel: {fallback}{threads_note}")
    config = replace(config, backend=backend)  # the settings record the kernel that ran
    nstates = len(four_flux)
    settings = {"solver": asdict(config), "axis": axis, "box_length_cm": box_length_cm, "batch_size": batch_size,
                "rotation_given": rotation is not None,
                "end_time_given": None if end_time_s is None else np.asarray(end_time_s, float).tolist()}
    if rotation is not None:
        # The rotations themselves, not only that there were some: a run killed on A.h5 resumed on
        # B.h5 of the same states with other rotation_R, mixing boxes along other axes into one
        # database (outside probe, round 27). --linear-only's label files record theirs (axis_start_digest).
        settings["rotation_sha256"] = hashlib.sha256(np.ascontiguousarray(rotation, dtype=float).tobytes()).hexdigest()
    if axis == "fastest" and rotation is None:  # chunks of the earlier search do not resume with this one
        settings["axis_search"] = AXIS_SEARCH
    if axis == "emu" and rotation is None:
        settings["axis_search"] = EMU_AXIS_SEARCH
    fingerprint = _fingerprint(four_flux, settings)
    # Stored beside the fingerprint so that a mismatch can be explained (which states or settings).
    states_digest, settings_text = _states_digest(four_flux), json.dumps(_comparable_settings(settings), sort_keys=True)
    # Every rank must hold rank 0's states, settings and cost cap: a rank started with other
    # arguments (or reading another copy of the input) would simulate other states, and rank 0
    # would write them beside its own initial states (outside probe, round nine). All ranks see
    # the same verdict, so all of them raise (the CLI then stops the job), none waits.
    # And the same OUT: a rank given another (`sh -c '... $RANK'`, a node's own path) checkpointed beside its
    # own, where neither rank 0's clean-up nor a rerun looks: the job wrote OUT and left that checkpoint
    # for ever, and a job killed midway lost that rank's batches (scale-out round four).
    agreement = (fingerprint, max_cost, os.path.abspath(output))
    held = comm.gather(agreement, root=0)
    differing, root_output, other_outputs = comm.computed_by_root(lambda: (
        [rank for rank, value in enumerate(held) if value[:2] != agreement[:2]], agreement[2],
        {rank: value[2] for rank, value in enumerate(held) if value[2:3] != agreement[2:3] and len(value) > 2}))
    # Each rank's pid and host: whom rank 0 names while it waits for a rank at the end (wait_for_ranks).
    where = comm.identities()
    if differing:  # every rank raises it: printed once, no MPI_Abort (raised_on_every_rank)
        raise raised_on_every_rank(ValueError(
            f"the MPI ranks do not hold the same states and settings: rank(s) {', '.join(map(str, differing))} "
            "differ from rank 0 (start every rank with the same arguments, reading the same input file)"))
    if other_outputs:
        shown = "; ".join(f"rank {rank}: {path}" for rank, path in list(other_outputs.items())[:3])
        more = f"; and {len(other_outputs) - 3} more" if len(other_outputs) > 3 else ""
        raise raised_on_every_rank(ValueError(
            f"the MPI ranks do not name the same output: rank 0 names {root_output}, "
            f"{shown}{more}; rank 0 writes OUT, each rank checkpoints beside it and a rerun looks for the "
            "checkpoints there: give every rank the same OUT (one shared file system)"))
    # Rank 0 alone reads the checkpoints (thousands of ranks must not all scan the directory).
    results, origin, paths = comm.computed_by_root(
        lambda: _load_checkpoints(output, fingerprint, four_flux, settings, say, max_cost))
    checkpoint = _checkpoint_path(output, comm.rank, comm.size)
    # A rank's checkpoint holds its own rows only: those of the file it replaces, and those it computes.
    owned = origin == (paths.index(checkpoint) if checkpoint in paths else -2)
    computed = np.zeros(nstates, bool)
    directions = uniform_sphere(config.nphi_equator)
    # Costs of all states, whatever is done: the batch plan must not depend on the progress.
    # Computed once (rank 0) and sent: every rank then plans with the very same numbers.
    cost = comm.computed_by_root(
        lambda: relative_cost(four_flux, directions, None if end_time_s is None else np.asarray(end_time_s)))
    for index in np.flatnonzero(~results["done"]):
        reason = density_scale_failure(four_flux[index])
        if reason is not None:
            results["done"][index], results["skipped"][index], results["reason"][index] = True, True, reason
    for index in np.flatnonzero(~results["done"] & ~np.isfinite(cost)):
        results["done"][index], results["skipped"][index] = True, True
        if np.isnan(cost[index]) or end_time_s is None:
            results["reason"][index] = reconstruction_failure(four_flux[index], directions)
        else:  # was called a failed maximum-entropy fit
            results["reason"][index] = (f"its end time {float(np.asarray(end_time_s)[index]):g} s is too long to "
                                        "simulate (its estimated cost overflows float64): is tend(s) in seconds?")
    if max_cost is not None:
        cost_vs_nsm1 = cost / relative_cost(NSM1_EMU_1D[None], directions, None)[0]
        expensive = np.flatnonzero(~results["done"] & (cost_vs_nsm1 > max_cost))
        for index in expensive:
            results["done"][index], results["skipped"][index] = True, True
            results["reason"][index] = f"estimated cost {cost_vs_nsm1[index]:.2f}x NSM1's exceeds max_cost {max_cost:g}"
        if len(expensive):
            say(f"skipping {len(expensive)} states estimated to cost more than {max_cost:g}x NSM1's")
    batches = [batch for batch in plan_batches(cost, ~results["skipped"], batch_size) if not results["done"][batch].all()]
    owner = assign_batches([len(batch) * cost[batch].max() for batch in batches], comm.size)
    mine = [batch for batch, rank in zip(batches, owner) if rank == comm.rank]
    prefix = f"[rank {comm.rank}/{comm.size}] " if comm.size > 1 else ""
    started = time.time()
    for number, batch in enumerate(mine, start=1):
        todo = batch[~results["done"][batch]]
        _simulate_batch(todo, four_flux, results, config, directions, axis, rotation, box_length_cm, end_time_s, threads)
        computed[todo] = True
        owned[todo] = True

        def write_partial(temporary: str) -> None:
            rows = np.flatnonzero(owned & results["done"])
            with open(temporary, "wb") as stream:
                np.savez(stream, fingerprint=fingerprint, indices=rows, states_sha256=states_digest, nstates=nstates,
                         settings=settings_text, max_cost=json.dumps(max_cost), **{key: value[rows] for key, value in results.items()})

        try:
            atomic_write(checkpoint, write_partial)
        except (OSError, OutputPathError) as error:
            # A full disk said only "[Errno 28] No space left on device: 'OUT.partial.npz'": whether the
            # work done so far survived, and how to go on, went unsaid (outside probe, round 27).
            unwritable = None if isinstance(error, DirectoryMovedError) else _unwritable_directory(checkpoint)
            if unwritable is None and not isinstance(error, OSError):
                raise
            fix = unwritable[1] if unwritable else _what_to_fix(error)
            kept = (f"its earlier version (the batches before this one) is kept: {fix} and "
                    "rerun the same command to resume from it" if os.path.exists(checkpoint) else
                    f"no earlier checkpoint exists: {fix} and rerun the same command")
            if unwritable:
                raise OutputPathError(f"cannot write the checkpoint {checkpoint}: {unwritable[0]}; {kept}") from None
            raise OSError(error.errno, f"cannot write the checkpoint {checkpoint} ({error.strerror or error}); {kept}"
                          ) from None
        if comm.size == 1 and write_progress and (results["valid"] & results["done"]).any():
            # Usable while the campaign runs; not while it holds no valid run (an empty database).
            _write_database_keeping(checkpoint, output, four_flux, results, settings, attributes)
        elapsed = time.time() - started
        remaining = elapsed / number * (len(mine) - number)
        report(f"{prefix}{int(results['done'].sum())}/{nstates} states done ({int(results['valid'].sum())} valid), "
               f"{elapsed:.0f} s elapsed, about {remaining:.0f} s left (cheapest states first, so likely more)")

    # Rank 0 (which has every row of the checkpoints) collects what the ranks computed, writes the
    # database, and removes the checkpoints.
    rows = np.flatnonzero(computed)
    # Said once when a rank keeps the others waiting (a rank stopped with SIGSTOP kept rank 0 in the gather
    # without a word, spinning a core, for ever; outside probe, data-loss round fourteen).
    waiting = comm.wait_for_ranks(lambda ranks: say(
        f"{prefix}this rank's batches are done; waiting for {waited_for_text(ranks, where)} to finish its batches"))
    parts = comm.gather((rows, {key: value[rows] for key, value in results.items()}), root=0)
    if waiting is not None:
        comm.done_waiting(waiting)
    if comm.rank == 0:
        for indices, part in parts[1:]:
            _merge(results, part, indices)
        for index in np.flatnonzero(~results["valid"]):
            report(f"dropped state {int(index)}: {results['reason'][index]}")
        if results["valid"].any():
            _write_database_keeping(checkpoint, output, four_flux, results, settings, attributes)
        # Only the checkpoints this campaign read or wrote: a file that appeared meanwhile is not ours.
        # Removed also when no run is valid: the campaign is finished, its checkpoints hold drops only.
        ours = set(paths) | {_checkpoint_path(output, rank, comm.size) for rank in range(comm.size)}
        for path in sorted(ours):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    results = comm.bcast(results if comm.rank == 0 else None, root=0)
    if not results["valid"].any():  # on every rank: the CLI then ends them all, printing it once
        raise raised_on_every_rank(no_valid_state(output, nstates,
                                                  {int(i): str(results["reason"][i]) for i in range(nstates)}))
    return results


#: Drop reasons of a run whose off-diagonal grew too slowly for its end time.
_SLOW_GROWTH_REASONS = ("no exponential growth found", "not saturated early enough")


def coarse_coupling_hint(config: SolverConfig, box_length_cm) -> str:
    """The end of the drop reason of a run that grew too slowly, where the particle-mesh coupling
    (``hamiltonian_filter = "emu"``) at a coarse ``ncell`` weakens the box's fastest mode: the end time
    (80 growth times) comes from the continuum linear rate, and in a default box (k dz = 18 / ncell for the
    fastest k) the coupling there is sinc(9 / ncell)^6 of the continuum's, 0.73 at 16 cells, 0.26 at 8.
    Such runs were dropped as "no exponential growth found" or "not saturated early enough" alone, as if the
    state were at fault (solver probe, round five); "" where the factor is above 0.9 (32 cells and more) or
    the box length was given (the caller adds it only where the end time is the default one)."""
    if config.hamiltonian_filter != "emu" or box_length_cm is not None:
        return ""
    half_step = 9.0 / config.ncell  # k dz / 2 for the recipe's fastest k
    factor = float(np.sinc(half_step / np.pi) ** 6)
    if factor > 0.9:
        return ""
    return (f"; at {config.ncell} cells the particle-mesh coupling (--hamiltonian-filter emu) is {factor:.2g} of the "
            f"continuum's at the fastest-growing k (k dz = 18/{config.ncell}), whose linear rate set the end time "
            f"(80 growth times), so the run grows too slowly for it: use more cells (64, the default: 0.98) or "
            f"--hamiltonian-filter none")


def _simulate_batch(batch: np.ndarray, four_flux: np.ndarray, results: dict, config: SolverConfig,
                    directions: np.ndarray, axis: str, rotation, box_length_cm, end_time_s, threads: int) -> None:
    """Integrate one batch of states together and store their asymptotic states in ``results``."""
    batch_started = time.time()
    runnable, rotated, lengths, ends = [], [], [], []
    for index in batch:
        try:
            if rotation is not None:
                R = np.asarray(rotation[index], float)
                setup = box_setup(rotate_four_flux(four_flux[index], R), directions, config.ncell, axis="z",
                                  box_length_cm=box_length_cm,
                                  end_time_s=None if end_time_s is None else float(end_time_s[index]))
                setup = (R,) + setup[1:]
            else:
                setup = box_setup(four_flux[index], directions, config.ncell, axis=axis, box_length_cm=box_length_cm,
                                  end_time_s=None if end_time_s is None else float(end_time_s[index]))
        except ValueError as error:
            # A state rotated onto its box axis (rotation_R) can lose the fit that it had unrotated:
            # the same reason as before the run, not the fitter's "flux factor too close ... ?".
            reason = no_fit_reason(directions) if "did not converge" in str(error) else str(error)
            results["done"][index], results["reason"][index] = True, reason
            continue
        R, length, end, linear_rate = setup
        results["rotation"][index], results["box_length_cm"][index] = R, length
        results["end_time"][index], results["linear_growth_rate"][index] = end, linear_rate
        endless = too_many_steps(end, length, config) or too_few_growth_times(end, linear_rate, config)
        if endless is not None:
            results["done"][index], results["reason"][index] = True, endless
            continue
        runnable.append(index)
        rotated.append(rotate_four_flux(four_flux[index], R))
        lengths.append(length)
        ends.append(end)
    if not runnable:
        return
    # The perturbation seed follows the batch (its first state), and the batch does not depend
    # on the number of ranks: a state gets the same seed in every run.
    batch_config = SolverConfig(**{**asdict(config), "seed": config.seed + int(runnable[0])})
    box = make_box(np.array(rotated), np.array(lengths), batch_config, directions, threads=threads)
    history = box.run(np.array(ends))
    # Rotate the box-averaged history back to the input frame before reducing it, so that
    # means and standard deviations are those of the input-frame components.
    back = np.transpose(results["rotation"][runnable], (0, 2, 1))  # R^-1 = R^T
    history_flux = history.four_flux.copy()
    history_flux[..., 1:] = np.einsum("bij,btsfj->btsfi", back, history_flux[..., 1:])
    state = asymptotic_states(history.time, history_flux, history.offdiag_magnitude)
    for slot, index in enumerate(runnable):
        results["final"][index] = state.final[slot].reshape(6, 4)
        results["final_stddev"][index] = state.final_stddev[slot].reshape(6, 4)
        results["growth_rate"][index] = state.growth_rate[slot]
        results["saturation_time"][index] = state.saturation_time[slot]
        results["valid"][index], results["reason"][index] = state.valid[slot], state.reason[slot]
        if not state.valid[slot] and end_time_s is None and state.reason[slot].startswith(_SLOW_GROWTH_REASONS):
            results["reason"][index] += coarse_coupling_hint(config, box_length_cm)
        results["wall_time_s"][index] = (time.time() - batch_started) / len(runnable)
        results["kernel"][index] = KERNEL_CODES.get(config.backend, 0)
        results["done"][index] = True
