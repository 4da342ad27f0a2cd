"""Emu databases -> Dodo's preprocessed training file (data.md), chunked and atomic."""
from __future__ import annotations

import datetime
import glob
import json
import os
import reprlib
import time
from pathlib import Path

import numpy as np

from .._atomic import _identity, atomic_hdf5, check_outputs, sha256_file
from .._state_hashes import row_hashes
from .._output_guard import is_synthetic_mark
from .._shown import counted
from .config import PreprocessConfig
from .readers import (DataFileError, FilterCounts, apply_hygiene, average_mu_tau_change, iter_emu_chunks,
                      open_emu_file)
from ..emu_files import GROWTH, growth_rate_note, open_hdf5, unfinished_run_note

PREPROCESSED_FORMAT = "dodo-preprocessed-v1"
FLOAT_DATASETS = {"F_init": (6, 4), "F_true": (6, 4), "F_box": (6, 4), "invariants": (27,), "residual": (24,),
                  "u": (4,), "growth_rate": (), "box3d_growth_rate": ()}


def resolve_inputs(patterns: list, log=None) -> list[Path]:
    """Expand globs; every pattern must match at least one file. A pattern that is the name of an
    existing file (``run[1].h5``) is that file, whatever it would match as a pattern. A file matched twice (overlapping
    globs, a file listed twice, a symlink or hard link to a listed file) is read once, at its first place:
    duplicate rows would put copies of one cell on both sides of the train/test split.
    ``log``: told how many duplicates were dropped."""
    files, seen, duplicates = [], set(), 0
    for pattern in patterns:
        # A nested list (YAML `- [a.h5, b.h5]`) was a TypeError traceback, and null, a number or ""
        # "matches no file: None" (outside probe, round 25).
        if not isinstance(pattern, (str, os.PathLike)) or not str(pattern):
            raise DataFileError(f"inputs: each entry must be a file name or a glob pattern (a non-empty string); "
                                f"got {reprlib.repr(pattern)}")
        if glob.has_magic(str(pattern)) and Path(pattern).exists():
            # A file whose name holds [, * or ?: `run[1].h5` as a pattern matched run1.h5, which was
            # read in its place without a word (outside probe, round 23). An existing name is read as named.
            others = sorted(set(glob.glob(str(pattern))) - {str(pattern)})
            if others and log is not None:
                log(f"preprocess: {pattern} is a file: read as named, not as a pattern (which would match "
                    f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''})")
            matches = [str(pattern)]
        else:
            matches = sorted(glob.glob(str(pattern)))
        if not matches:
            from .._atomic import relative_to_cwd

            raise DataFileError(f"input pattern matches no file: {pattern}{relative_to_cwd(pattern)}")
        for match in matches:
            status = Path(match).stat()
            key = (status.st_dev, status.st_ino)  # the same file through a symlink or hard link too
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            files.append(Path(match))
    if duplicates and log is not None:
        log(f"preprocess: {duplicates} input file(s) matched more than once; each is read once")
    return files


def _without_own_earlier_output(files: list[Path], output, log) -> list[Path]:
    """The inputs without the preprocessed file at ``output``, when a glob matched it. A config whose
    output lies where its input pattern looks (``inputs: [pdata/*.h5]``, ``output: pdata/pre.h5``) ran
    once, and every rerun of the same command was refused ("output pdata/pre.h5 is the same file as
    the input"), its earlier output counted as an Emu input. A preprocessed file is never an Emu
    database, so it is left out (and replaced by the rerun); any other file at ``output`` that an
    input names stays an input, and check_outputs refuses to write over it."""
    from .._output_guard import PREPROCESSED, file_kind

    try:
        target = Path(output).stat()
    except (OSError, ValueError):
        return files
    own = [path for path in files if (path.stat().st_dev, path.stat().st_ino) == (target.st_dev, target.st_ino)
           and file_kind(path) == PREPROCESSED]
    kept = [path for path in files if path not in own]
    if not own or not kept:  # nothing else to read: check_outputs names the clash, as before
        return files
    if log is not None:
        log(f"preprocess: {own[0]} is this command's earlier output (a preprocessed file), not an Emu database: "
            "not read as an input; it is replaced")
    return kept


#: dodo.CellStatus bits meaning "input rejected, output = input" (cpp/src/cell_status.hpp).
REJECTING_FLAGS = ("FLUX_FACTOR", "NEGATIVE_DENSITY", "NONFINITE", "ZERO_DENSITY", "BAD_VELOCITY")


def source_kind(attrs) -> str:
    """'synthetic' (dodo synth), 'qke' (dodo simulate, the QKE solver) or 'emu' (anything else)."""
    if is_synthetic_mark(attrs.get("synthetic")):  # dodo synth's boolean, not any true value
        return "synthetic"
    solver = attrs.get("solver", "")
    if isinstance(solver, bytes):  # "replace": bytes that are not UTF-8 stopped preprocess naming no file (round 37)
        solver = solver.decode("utf-8", "replace")
    return "qke" if str(solver).startswith("dodo.qke") else "emu"


def simulated_campaign(attrs) -> tuple | None:
    """(states digest, settings) of a `dodo simulate` database, or None for another file: two databases
    of one campaign (its rerun under another name, `mpirun` beside one process: the same rows bit for bit,
    docs/qke.md) differ in their bytes (`created_utc`, `command`, timings) but not in these. The kernel
    that ran (`settings.solver.backend`) is left out: the other kernel gives the same states' rows."""
    if source_kind(attrs) != "qke" or "states_sha256" not in attrs or "settings" not in attrs:
        return None
    try:
        settings = json.loads(attrs["settings"])
        settings.get("solver", {}).pop("backend", None)
        return str(attrs["states_sha256"]), json.dumps(settings, sort_keys=True)
    except (TypeError, ValueError, AttributeError):  # unreadable settings: the bytes' check alone, as before
        return None


def box3d_rejected_mask(status: np.ndarray) -> np.ndarray:
    """Cells whose Box3D output is just the input because the input was rejected."""
    import dodo

    reject = sum(int(getattr(dodo.CellStatus, name)) for name in REJECTING_FLAGS)
    return (np.asarray(status).astype(np.int64) & reject) != 0


def preprocess(config: PreprocessConfig, progress: bool = True, log=print) -> dict:
    """Run the whole preprocessing; returns a summary (also stored in the file attributes)."""
    import h5py

    import dodo

    files = _without_own_earlier_output(resolve_inputs(config.inputs, log), config.output, log)
    check_outputs([config.output], files)  # before anything is read or written: never overwrite an input
    settings = dodo.box3d_settings(lebedev_order=config.box3d.lebedev_order, z_method=config.box3d.z_method)
    sources, kinds = [], set()
    total_rows = 0
    read, seen, campaigns = [], {}, {}
    found = {}  # path: the file it named when first opened (_identity), checked again once its rows are read
    for path in files:
        handle, nsims = open_emu_file(path)  # first: it refuses a FIFO, which sha256_file would wait on
        found[path] = _identity(Path(path))
        with handle:
            kind = source_kind(handle.attrs)
            campaign = simulated_campaign(handle.attrs)
            unfinished = unfinished_run_note(handle, path)  # as dodo score and apply say it (round 29)
            growth = handle[GROWTH] if GROWTH in handle else None  # open_emu_file opened it: no broken link
            unusable = growth_rate_note(growth.shape, nsims) if isinstance(growth, h5py.Dataset) else ""
        if unfinished:
            log(f"preprocess: note: {unfinished}")
        if unusable:  # its rows' rates are stored as NaN (as without the dataset), not silently (round 35)
            log(f"preprocess: note: {path}: {unusable}; not used: its rows' growth rates are stored as NaN")
        digest = sha256_file(path)
        if digest in seen:
            # A copy (cp, a download) of a file read already: its states would be read twice, and
            # `dodo train` would put the two copies of a state on both sides of its train/test split
            # (outside probe, round 22). Read once, as a file named twice or reached through a link is.
            log(f"preprocess: {path} holds the same bytes as {seen[digest]} (a copy): read once")
            continue
        if campaign is not None and campaign in campaigns:
            # Not a copy of the bytes, but the same states simulated with the same settings: `mpirun -n 2
            # dodo simulate a.h5 ...` and the one-process `dodo simulate b.h5 ...` of one command were both
            # read, every state twice, on both sides of the train/test split (outside probe, scale-out
            # round three). Read once, as a copy is.
            first, first_rows = campaigns[campaign]
            if nsims <= first_rows:
                log(f"preprocess: {path} holds the states of {first} simulated with the same settings (the same dodo "
                    f"simulate campaign run twice; {counted(nsims, 'row')} here, {first_rows} there): read once")
                continue
            # The earlier one is the campaign unfinished (its database rewritten after every batch): the
            # one with more rows is read in its place.
            log(f"preprocess: {first} holds the states of {path} simulated with the same settings (the same dodo "
                f"simulate campaign run twice; {counted(first_rows, 'row')} there, {nsims} here): {path} is read in its place")
            at = read.index(first)
            del read[at], sources[at]
            total_rows -= first_rows
        seen[digest] = path
        if campaign is not None:
            campaigns[campaign] = (path, int(nsims))
        read.append(path)
        kinds.add(kind)
        sources.append({"path": str(path), "sha256": digest, "rows": int(nsims), "kind": kind})
        total_rows += nsims
    files = read
    # One of "synthetic", "qke", "emu" (docs/model_package.md); a mixture lists its kinds ("emu+qke").
    data_kind = "+".join(sorted(kinds))

    if total_rows == 0:  # "no rows survived the filters" with rows_read=0 blamed the filters (round 41)
        raise DataFileError(f"no states to preprocess: {', '.join(str(p) for p in files)} "
                            f"{'holds' if len(files) == 1 else 'hold'} 0 rows; {config.output} not written")
    counts = FilterCounts()
    written = 0
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_rows, desc="preprocess", unit="cell")
    output = Path(config.output)
    try:
        with atomic_hdf5(output) as (out, check):
            written = _write_output(out, check, files, sources, config, settings, data_kind, counts, bar)
            repeats = repeated_states(out)
            _refuse_inputs_changed_meanwhile(files, found, output)
            if written == 0:  # before the commit: a good earlier output is never replaced by an empty one
                raise DataFileError(f"no rows survived the filters, {output} not written: {counts.as_dict()}")
    except OSError as exc:  # HDF5 write errors (a full disk) span many lines
        raise DataFileError(f"{output} not written: {_os_error_text(exc)}; "
                            "an earlier file under that name is untouched") from None
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    summary = {"output": str(output), "rows_written": written, "data_kind": data_kind, "filter_counts": counts.as_dict(),
               "seconds": elapsed, "cells_per_second": counts.rows_read / elapsed if elapsed > 0 else float("inf")}
    log(f"preprocess: {counted(written, 'row')} -> {output} ({elapsed:.2f} s, {summary['cells_per_second']:.3g} cells/s)")
    log("filters: " + ", ".join(f"{k}={v}" for k, v in counts.as_dict().items()))
    summary["repeated_states"] = len(repeats["rows"])
    if repeats["rows"]:
        log(f"preprocess: note: {repeated_states_note(repeats, written, files)}")
    return summary


#: Rows hashed at a time by repeated_states.
_HASH_ROWS = 65536


def repeated_states(handle) -> dict:
    """The rows of a preprocessed file (open, ``handle``) whose initial state (F_init and u, bit for bit)
    is that of an earlier row: {"rows": [...], "first": [the earlier row of each], "copies": how many
    also repeat its F_true}. Found by a 64-bit hash per row, every match then compared bit for bit."""
    n = handle["F_init"].shape[0]
    hashes = np.empty(n, dtype=np.uint64)
    for start in range(0, n, _HASH_ROWS):
        stop = min(n, start + _HASH_ROWS)
        hashes[start:stop] = row_hashes(np.concatenate([handle["F_init"][start:stop].reshape(stop - start, -1),
                                                         handle["u"][start:stop]], axis=1))
    order = np.argsort(hashes, kind="stable")
    same = hashes[order][1:] == hashes[order][:-1]
    candidates = np.unique(np.concatenate([order[1:][same], order[:-1][same]])) if same.any() else np.zeros(0, int)
    rows, first, copies = [], [], 0
    if len(candidates):
        state = np.concatenate([handle["F_init"][candidates].reshape(len(candidates), -1), handle["u"][candidates]],
                               axis=1)
        final = handle["F_true"][candidates].reshape(len(candidates), -1)
        seen = {}
        for k, row in enumerate(candidates.tolist()):  # increasing: the first of equal states is seen first
            key = state[k].tobytes()
            if key in seen:
                rows.append(row)
                first.append(int(candidates[seen[key]]))
                copies += int(final[k].tobytes() == final[seen[key]].tobytes())
            else:
                seen[key] = k
    return {"rows": rows, "first": first, "copies": copies}


def repeated_states_note(repeats: dict, written: int, files) -> str:
    """The note of a preprocessed file holding an initial state twice or more (repeated_states): a database
    of the same runs twice (merged databases, a run copied under another directory name) was written
    without a word, and `dodo train`, which drew its split by row, put a state and its repeat on both sides
    of its train/validation/test split (outside probe, training round four; the split keeps a state's rows
    together since round five). A note, not a refusal: the same initial state run again (another
    perturbation seed) is another sample of its outcome."""
    count = len(repeats["rows"])
    pairs = ", ".join(f"row {row} = row {first}" for row, first in zip(repeats["rows"][:3], repeats["first"][:3]))
    more = f" and {count - 3} more" if count > 3 else ""
    copies = repeats["copies"]
    final = ("all of them with its final state too (copies of a run)" if copies == count else
             f"{copies} of them with its final state too (copies of a run)" if copies else
             "none with its final state (the same state run again)")
    return (f"{counted(count, 'row')} of the {written} written repeat the initial state (F_init and u, bit for bit) of "
            f"an earlier row ({pairs}{more}), {final}: dodo train keeps a state's rows in one of its "
            "train/validation/test splits (and learning-curve in one fold), where each copy weighs the state once "
            "more; if they are copies, leave them out of the inputs")


def _refuse_inputs_changed_meanwhile(files, found: dict, output) -> None:
    """Refuse (before the output is renamed into place) an input that another process replaced or changed
    since it was first opened: its row count and sha256 were taken from one file and its rows read from
    the other (a `dodo simulate` still running into it rewrites it after every batch; `dodo synth
    --overwrite`), and the preprocessed file said so of neither (outside probe, data-loss round twelve)."""
    for path in files:
        if _identity(Path(path)) != found.get(path):
            raise DataFileError(f"{path} was replaced or changed while dodo preprocess read it (another process wrote "
                                f"it; a dodo simulate still running into it?): {output} not written; run again once "
                                "its writer has finished")


def _write_output(out, check, files, sources, config: PreprocessConfig, settings: dict, data_kind: str,
                  counts: FilterCounts, bar) -> int:
    """Fill the preprocessed file ``out``; returns the rows written. ``check()`` raises a write
    error (a full disk) recorded so far: called after every block, so a full disk stops the run."""
    import h5py

    import dodo

    written = 0
    datasets = {}
    # No chunk larger than the rows there are to write: a 7- or 32-row file took chunks of 16,384 rows,
    # 17 MB on disk (outside probe, new user's journey round two); large files keep 16,384.
    total_rows = sum(int(source["rows"]) for source in sources)
    chunk_rows = max(1, min(config.chunk_size, 16384, total_rows))
    for name, tail in FLOAT_DATASETS.items():
        datasets[name] = out.create_dataset(name, (0,) + tail, maxshape=(None,) + tail, dtype="f8",
                                            chunks=(chunk_rows,) + tail)
    for name, dtype in (("sim_id", "i8"), ("source_file", "i4"), ("box3d_status", "u4"),
                        ("dirname", h5py.string_dtype())):
        datasets[name] = out.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(chunk_rows,))
    sim_offset = 0
    for file_index, path in enumerate(files):
        for chunk in iter_emu_chunks(path, config.chunk_size):
            n_read = len(chunk)
            chunk, chunk_counts = apply_hygiene(chunk, config.filters, source=str(path))
            block = _process_chunk(chunk, config, sim_offset, file_index, chunk_counts)
            counts.add(chunk_counts)
            n = len(block["sim_id"])
            if bar is not None:
                bar.update(n_read)
            if n == 0:
                continue
            for name, values in block.items():
                dataset = datasets[name]
                dataset.resize(written + n, axis=0)
                dataset[written:written + n] = values
            written += n
            check()
        sim_offset += sources[file_index]["rows"]
    attrs = {
        "format": PREPROCESSED_FORMAT,
        "box3d": json.dumps(settings, sort_keys=True),
        "sources": json.dumps(sources),
        "filters": json.dumps(_as_dict(config.filters)),
        "filter_counts": json.dumps(counts.as_dict()),
        "average_mu_tau": bool(config.average_mu_tau),
        "data_kind": data_kind,
        "synthetic": data_kind == "synthetic",
        "dodo_version": str(getattr(dodo, "__version__", "unknown")),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "frame_note": "F_init, F_true, F_box lab frame (u); residual = F_true - F_box, caller's units",
    }
    for key, value in attrs.items():
        out.attrs[key] = value
    return written


def _os_error_text(exc: OSError) -> str:
    """One line for an OSError, HDF5's multi-line ones included."""
    import errno
    import os

    text = str(exc)
    if exc.errno == errno.ENOSPC or "errno = 28" in text or "No space left on device" in text:
        return os.strerror(errno.ENOSPC)
    return " ".join(text.split())[:300]


def _process_chunk(chunk, config: PreprocessConfig, sim_offset: int, file_index: int, counts: FilterCounts) -> dict:
    import dodo

    F_init = chunk.F_init
    F_true = average_mu_tau_change(F_init, chunk.F_final) if config.average_mu_tau else chunk.F_final
    u = np.zeros((len(chunk), 4))
    u[:, 0] = 1.0  # Emu databases are in the fluid rest frame
    result = dodo.box3d(F_init, u, lebedev_order=config.box3d.lebedev_order, z_method=config.box3d.z_method,
                        threads=config.threads)
    status = np.asarray(result.status).astype(np.uint32)
    keep = np.ones(len(chunk), dtype=bool)
    if config.filters.drop_box3d_rejected:
        keep = ~box3d_rejected_mask(status)
        counts.box3d_rejected_dropped = int((~keep).sum())
        counts.rows_kept -= counts.box3d_rejected_dropped
    F_box = np.asarray(result.F_box, dtype=np.float64)
    invariants = np.asarray(dodo.invariants(F_init, u), dtype=np.float64)
    return {
        "F_init": F_init[keep], "F_true": F_true[keep], "F_box": F_box[keep], "invariants": invariants[keep],
        "residual": (F_true - F_box)[keep].reshape(-1, 24), "u": u[keep],
        "growth_rate": chunk.growth_rate[keep], "box3d_growth_rate": np.asarray(result.growth_rate)[keep],
        "sim_id": sim_offset + chunk.row[keep], "source_file": np.full(int(keep.sum()), file_index, dtype=np.int32),
        "box3d_status": status[keep], "dirname": chunk.dirname[keep].astype(str).tolist() if keep.any() else [],
    }


def _as_dict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


def read_preprocessed_attrs(path: str | Path) -> dict:
    """Attributes of a preprocessed file, JSON fields decoded; fails clearly on a wrong file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        if path.exists():  # a directory, FIFO or device: say so ("not found" of a path that is there misled)
            from .._atomic import InputPathError, check_input_file

            try:
                check_input_file(path, "a preprocessed HDF5 file (dodo preprocess)")
            except InputPathError as error:
                raise DataFileError(str(error)) from None
        from .._atomic import relative_to_cwd

        raise DataFileError(f"preprocessed file not found: {path}{relative_to_cwd(path)}; run `dodo preprocess` first")
    with open_hdf5(path) as handle:
        attrs = dict(handle.attrs)
        missing = [n for n in ("F_init", "F_true", "F_box", "invariants", "u") if n not in handle]
    if attrs.get("format") != PREPROCESSED_FORMAT or missing:
        raise DataFileError(f"{path}: not a Dodo preprocessed file (format attribute {attrs.get('format')!r}, "
                            f"missing datasets {missing}); make it with `dodo preprocess`")
    from ..emu_files import hdf5_item

    with h5py.File(path, "r") as handle:
        for name in ("F_init", "F_true", "F_box", "invariants", "u"):
            hdf5_item(handle, path, name)  # a dangling soft or external link: one line, not h5py's KeyError
        groups = sorted(name for name in ("F_init", "F_true", "F_box", "invariants", "u")
                        if not isinstance(handle[name], h5py.Dataset))
        if groups:  # a group there ended in "AttributeError: 'Group' object has no attribute 'shape'"
            raise DataFileError(f"{path}: {groups} must be datasets, not groups; make it with `dodo preprocess`")
        n = handle["F_init"].shape[0] if handle["F_init"].ndim else 0
        expected = {"F_init": (n, 6, 4), "F_true": (n, 6, 4), "F_box": (n, 6, 4), "invariants": (n, 27), "u": (n, 4)}
        wrong = {name: handle[name].shape for name, shape in expected.items() if handle[name].shape != shape}
        # Strings or compound types ended in a TypeError traceback from np.isfinite (round eighteen).
        not_real = {name: str(handle[name].dtype) for name in expected if handle[name].dtype.kind not in "iuf"}
    if wrong:
        raise DataFileError(f"{path}: datasets with unexpected shapes {wrong}; expected {expected}")
    if not_real:
        raise DataFileError(f"{path}: datasets that do not hold real numbers {not_real}; dodo preprocess writes "
                            "float64: re-run `dodo preprocess`")
    for key, kind in (("box3d", dict), ("sources", list), ("filters", dict), ("filter_counts", dict)):
        if key in attrs:  # damaged or edited: one line naming the file and attribute, never a traceback
            try:
                attrs[key] = json.loads(attrs[key])
            except (TypeError, ValueError) as error:
                raise DataFileError(f"{path}: attribute {key!r} is not valid JSON ({error}); dodo preprocess writes "
                                    "it: re-run `dodo preprocess`") from None
            if not isinstance(attrs[key], kind):
                raise DataFileError(f"{path}: attribute {key!r} must be a JSON {'object' if kind is dict else 'list'}; "
                                    f"got {type(attrs[key]).__name__}; re-run `dodo preprocess`")
    if "box3d" in attrs:
        _check_box3d_attribute(path, attrs["box3d"])
    return attrs


def _check_box3d_attribute(path, stored: dict) -> None:
    """The Box3D settings a preprocessed file records must be settings Box3D has: an edited
    `lebedev_order: 5` was trained on by `dodo train-ensemble` (its crossing inputs and package
    take the file's settings) and refused only by `dodo export`, after the training (round
    eighteen). Keys left out are left to the callers' comparisons, as before."""
    import dodo

    try:
        settings = dodo.box3d_settings(**{key: stored[key] for key in ("lebedev_order", "z_method", "max_flux_factor")
                                          if key in stored})
    except (TypeError, ValueError) as error:
        raise DataFileError(f"{path}: attribute 'box3d' holds settings Box3D does not have ({error}); dodo preprocess "
                            "writes it: re-run `dodo preprocess`") from None
    for key in ("scheme", "form"):
        if key in stored and stored[key] != settings[key]:
            raise DataFileError(f"{path}: attribute 'box3d' holds {key} {stored[key]!r}; this Box3D computes "
                                f"{settings[key]!r}: re-run `dodo preprocess`")
