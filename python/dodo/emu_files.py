"""Reading Emu asymptotic databases (data.md), for the run-time side (`dodo apply`) and training.

Emu/Rhea files store [sim, (x,y,z,t), (nu,nubar), flavour] in the fluid rest frame; rows are
converted to Dodo's [sim, 6, (t,x,y,z)] here, at the boundary, and nowhere else. Needs h5py.
The read-time hygiene filters of training live in dodo.training.readers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ._hdf5_locks import held_for_writing_by, held_open_for_writing, lock_refused_problem
from ._output_guard import LINEAR_LABELS_KIND  # `dodo simulate --linear-only`'s label files (no final states)
from ._shown import counted
from .conventions import N_FLAVOURS, from_emu_layout

INITIAL = "F4_initial(1|ccm)"
FINAL = "F4_final(1|ccm)"
GROWTH = "growthRate(1|s)"
DIRNAMES = "directorynames"


class DataFileError(ValueError):
    """An input or preprocessed file is missing, unreadable or not in the expected layout."""


@dataclass
class EmuChunk:
    """A block of rows from one Emu file, in Dodo's layout (rest frame, caller's units)."""

    F_init: np.ndarray      # [n, 6, 4]
    F_final: np.ndarray     # [n, 6, 4]
    growth_rate: np.ndarray  # [n], s^-1, NaN where unknown
    dirname: np.ndarray     # [n] str
    row: np.ndarray         # [n] row index in the source file

    def select(self, keep: np.ndarray) -> "EmuChunk":
        return EmuChunk(self.F_init[keep], self.F_final[keep], self.growth_rate[keep], self.dirname[keep], self.row[keep])

    def __len__(self) -> int:
        return len(self.row)


def _named(path) -> str:
    """``path`` for a message: quoted where it holds white space or a character that does not print
    (_atomic.named; `bad\\nname.h5` was named `bad name.h5`: outside probe, Python round sixty-four)."""
    from ._atomic import named

    return named(path)


def open_hdf5(path: str | Path):
    """``h5py.File(path, "r")``; an OSError becomes a :class:`DataFileError` naming the file, and a
    file that another process holds open for writing (HDF5's file lock: an h5py session, a writer
    still running) is called that, not "not a readable HDF5 file"."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        text = " ".join(str(error).split())
        if held_open_for_writing(error):
            # The writer named where /proc/locks can (its pid, its program, and that it is stopped where it is:
            # a suspended writer holds the file until it is continued; outside probe, data-loss round fourteen).
            raise DataFileError(f"{_named(path)}: another process has it open for writing{held_for_writing_by(path) or ''} "
                                f"(HDF5 file lock: {text}); wait until that writer closes it, or read a copy") from None
        refused = lock_refused_problem(error)
        if refused:
            raise DataFileError(f"{_named(path)}: {refused}") from None
        raise DataFileError(f"{_named(path)}: not a readable HDF5 file ({text}){_what_else(path)}") from None
    problem = _external_link_problem(handle, path)
    if problem:
        handle.close()
        raise DataFileError(f"{_named(path)}: {problem}")
    return handle


def _linked_file_candidates(target: str, directory: str, prefix_variable: str) -> list[str]:
    """Where HDF5 looks, in order, for the file a link or virtual dataset names: an absolute name as
    it is; else under each entry of ``prefix_variable`` (HDF5_EXT_PREFIX, HDF5_VDS_PREFIX; colon-separated,
    ``${ORIGIN}`` the linking file's ``directory``), in that directory, then in the working directory."""
    if os.path.isabs(target):
        return [target]
    prefixes = [entry.replace("${ORIGIN}", directory) for entry in os.environ.get(prefix_variable, "").split(":") if entry]
    return [os.path.join(prefix, target) for prefix in prefixes] + [os.path.join(directory, target), target]


def _external_link_problem(handle, path) -> str:
    """Why a top-level name of the open file cannot be followed safely, or '': the link it is, or a soft
    link it leads through (to any depth, and through the groups on the way), is an external link whose
    target file (looked for as HDF5 does: HDF5_EXT_PREFIX, the file's directory, the working directory)
    is a FIFO, a device or a directory. HDF5 opens it when the link is followed, and a FIFO without a
    writer blocked `dodo score` and `dodo apply` for ever, SIGTERM included (section 34 left it open;
    round 37 refused a top-level external link; round 44 the same link reached through a soft link,
    `F4_initial(1|ccm) -> /g/x`, which still blocked in the FIFO's open for ever)."""
    directory = os.path.dirname(os.path.abspath(os.fsdecode(path)))
    try:
        names = list(handle.keys())
    except (OSError, RuntimeError, ValueError):
        return ""
    for name in names:
        problem = _unsafe_link_on_path(handle, "/" + name, directory, name)
        if problem:
            return problem
    return ""


def _unsafe_link_on_path(handle, target: str, directory: str, name: str, seen: tuple = (), in_file: str = "") -> str:
    """Why following the path ``target`` of the open file (reached from its top-level ``name``) would
    open a file that is not regular through an external link, or ''. The path is walked one link at a
    time without following any (``getlink``): soft links are resolved here, a loop or a missing name is
    left to the readers' own messages. An external link into a regular HDF5 file is followed into it
    (``in_file``: that file's name, for the message)."""
    import stat

    import h5py

    parts = [part for part in target.split("/") if part]
    walked = ""
    for index, part in enumerate(parts):
        walked = f"{walked}/{part}"
        try:
            link = handle.get(walked, getlink=True)
        except (KeyError, OSError, RuntimeError, TypeError, ValueError):
            return ""
        rest = "/".join(parts[index + 1:])
        if isinstance(link, h5py.SoftLink):
            if walked in seen or len(seen) >= 32:  # a loop of soft links: HDF5 says so itself
                return ""
            parent = walked.rsplit("/", 1)[0]
            followed = link.path if link.path.startswith("/") else f"{parent}/{link.path}"
            return _unsafe_link_on_path(handle, followed + (f"/{rest}" if rest else ""), directory, name,
                                        seen + (walked,), in_file)
        if isinstance(link, h5py.ExternalLink):
            linked = os.fsdecode(link.filename)
            for candidate in _linked_file_candidates(linked, directory, "HDF5_EXT_PREFIX"):
                try:
                    mode = os.stat(candidate).st_mode
                except OSError:
                    continue
                if not stat.S_ISREG(mode):
                    what = f"'{name}' is an external link" if walked == f"/{name}" and not seen else \
                        f"'{name}' leads to {walked!r}{f' of {in_file!r}' if in_file else ''}, an external link"
                    return (f"{what} into {linked!r}, which is not a regular file (a FIFO, a device or a directory): "
                            "HDF5 would wait on it or fail; link a regular HDF5 file")
                if len(seen) >= 32:
                    return ""
                try:  # the object there may be such a link of that file's own
                    with h5py.File(candidate, "r") as other:
                        inner = link.path + (f"/{rest}" if rest else "")
                        return _unsafe_link_on_path(other, inner, os.path.dirname(os.path.abspath(candidate)), name,
                                                    seen + (f"{candidate}:{walked}",), linked)
                except (OSError, RuntimeError, ValueError):
                    return ""  # unreadable: HDF5's own read reports it
            return ""
    return ""


def _what_else(path) -> str:
    """``": it is a model package ..."`` for a file that is not HDF5 but one of Dodo's other files, or ''.
    `dodo score data.h5 model.onnx` (the two swapped) said only `model.onnx: not a readable HDF5 file
    (... file signature not found)` (outside probe, round 31)."""
    from ._output_guard import CHECKPOINT, MODEL_PACKAGE, ZIP_ARCHIVE, file_kind

    try:
        kind = file_kind(path)
    except (ImportError, OSError, ValueError):
        return ""
    if kind == MODEL_PACKAGE:
        return (f": it is {kind}, not data (`dodo score MODEL DATA ...` takes the model first; `dodo apply DATA "
                "--model MODEL`)")
    if kind in (CHECKPOINT, ZIP_ARCHIVE):
        return f": it is {kind}, not data"
    # A database copied or downloaded compressed (data.h5.gz): "file signature not found" alone (round 44).
    from ._output_guard import compressed_kind, compressed_text

    try:
        with open(path, "rb") as handle:
            packed = compressed_kind(handle)
    except OSError:
        return ""
    if packed is None:
        return _text_file_note(path)
    import shlex

    return f": it is {compressed_text(packed[0])}; unpack it first ({packed[1]} {shlex.quote(os.fsdecode(path))}) and give the HDF5 file"


def _text_file_note(path) -> str:
    """``": it is a text file, starting '{"history": ...'"`` for a file of printable UTF-8 text (a metrics
    JSON, a dodo score report, a YAML config, a CSV), or ''. `dodo score box3d metrics.json` said only
    `not a readable HDF5 file (Unable to synchronously open file (file signature not found))` (outside
    probe, Python round fifty-four)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):  # a multi-byte character cut at byte 64: no note, as before
        return ""
    if not text.strip() or not all(character.isprintable() or character in "\t\r\n" for character in text):
        return ""
    first = text.strip().splitlines()[0]
    return f": it is a text file, starting {first[:40]!r}, not HDF5 (an Emu-layout database is an HDF5 file)"


def open_emu_file(path: str | Path):
    """Open an Emu database with h5py, checking the layout; returns (h5py.File, nsims)."""
    from ._atomic import InputPathError, check_input_file

    path = Path(path)
    try:
        check_input_file(path, "an Emu database (HDF5)")  # a FIFO would block h5py for ever
    except InputPathError as error:
        raise DataFileError(f"Emu database: {error}") from None
    handle = open_hdf5(path)
    problem = _layout_problem(handle)
    if problem:  # the message is made while the file is open, then the file is closed (issue 11)
        handle.close()
        raise DataFileError(f"{_named(path)}: {problem}")
    return handle, handle[INITIAL].shape[0]


def _attribute(handle, name: str):
    """Attribute ``name`` of an open HDF5 file as str where it is text; None where absent or unreadable."""
    try:
        value = handle.attrs.get(name)
    except (OSError, RuntimeError, TypeError, ValueError):  # an attribute h5py cannot read
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def known_file_problem(handle, name: str) -> str:
    """Why an open file of another Dodo command lacks dataset ``name`` of an Emu database, naming
    what the file is, or '' for any other file. `dodo score` and `dodo apply` called Dodo's own
    outputs "not an Emu-layout file": a label file of `dodo simulate --linear-only` (its states'
    F4_initial(1|ccm) and linear growth rates, no F4_final(1|ccm)), a preprocessed training file, a
    cell file of `dodo apply -o` (outside probe, round 29)."""
    from ._output_guard import APPLIED_CELLS, APPLIED_CELLS_MARK, PREPROCESSED

    kind, form = _attribute(handle, "kind"), _attribute(handle, "format")
    if isinstance(kind, str) and kind == LINEAR_LABELS_KIND and FINAL not in handle:
        return (f"a growth-label file of `dodo simulate --linear-only` (its states' linear growth rates, no "
                f"asymptotic states): there is no '{FINAL}' to compare with; give a database of a full `dodo "
                "simulate` run (without --linear-only) or an Emu database")
    if isinstance(form, str) and form.startswith("dodo-preprocessed"):
        what = PREPROCESSED + " (its rows are in Dodo's layout, Box3D added)"
    elif isinstance(kind, str) and kind == APPLIED_CELLS_MARK:
        what = APPLIED_CELLS + " (a grid of lab-frame cells)"
    else:
        return ""
    return (f"{what}, not an Emu-layout database: no dataset '{name}'; give the Emu-layout file it was made from "
            "(a dodo simulate, dodo synth or Emu database)")


def unfinished_run_note(handle, path) -> str:
    """A note for an open database that an unfinished `dodo simulate` run wrote (attribute
    ``complete`` false: the run writes its database after each batch, so a killed or still running
    one leaves some of its states under the final name), or '' for any other file. `dodo score` and
    `dodo apply` scored the states done so far as if they were the run's (outside probe, round 29)."""
    try:
        complete = handle.attrs.get("complete")
        done, requested = handle.attrs.get("nstates_done"), handle.attrs.get("nstates_requested")
    except (OSError, RuntimeError, TypeError, ValueError):
        return ""
    if complete is None or not isinstance(complete, (bool, np.bool_)) or complete:
        return ""
    count = (f"{int(done)} of its {counted(int(requested), 'state')} done so far" if isinstance(done, (int, np.integer))
             and isinstance(requested, (int, np.integer)) else "not all of its states done")
    return (f"{_named(path)} is the database of an unfinished `dodo simulate` run ({count}: the run was stopped, or is "
            "still running); only the states it holds are used. Rerun its command (the `command` attribute) to "
            "finish it")


def _layout_problem(handle) -> str:
    """What is wrong with an open Emu database's layout, or '' when nothing is."""
    import h5py

    for name in (INITIAL, FINAL):
        if name not in handle:
            return known_file_problem(handle, name) or f"missing dataset '{name}' (not an Emu asymptotic database?)"
        item, problem = _open_item(handle, name)
        if problem:
            return problem
        if not isinstance(item, h5py.Dataset):
            return f"'{name}' is a {type(item).__name__.lower()}, not a dataset (not an Emu asymptotic database?)"
        if item.dtype.kind not in "fiu":  # complex would lose its imaginary part, strings be parsed
            return f"'{name}' holds {item.dtype} values; four-fluxes must be real numbers (float or integer)"
    if GROWTH in handle:  # optional, but when present it must be numbers (strings failed in NumPy, complex lost i)
        growth, problem = _open_item(handle, GROWTH)
        if problem:
            return problem
        if isinstance(growth, h5py.Dataset) and growth.dtype.kind not in "fiu":
            return f"'{GROWTH}' holds {growth.dtype} values; growth rates must be real numbers (s^-1)"
    if DIRNAMES in handle:
        # Optional too (the rows' names: holdout patterns, reports), but a link that cannot be followed
        # (dangling, external to a missing file, a loop) ended `dodo apply` and `dodo preprocess` in
        # h5py's KeyError traceback, or in "Special link traversal failed (too many links)" naming
        # neither file nor dataset (outside probe, round 31): refused as a broken growthRate(1|s) is.
        _, problem = _open_item(handle, DIRNAMES)
        if problem:
            return problem
    problem = same_dataset_problem(handle)
    if problem:
        return problem
    shape = handle[INITIAL].shape
    for name in (INITIAL, FINAL):  # h5py.Empty (a null dataspace): shape None, no values
        if handle[name].shape is None:
            return f"'{name}' has a null dataspace (no values at all); expected [nsims, 4 (x,y,z,t), 2, {N_FLAVOURS}]"
    if len(shape) != 4 or shape[1] != 4 or shape[2] != 2 or shape[3] != N_FLAVOURS:
        return reversed_axes_problem(INITIAL, shape) or \
            f"'{INITIAL}' has shape {shape}; expected [nsims, 4 (x,y,z,t), 2, {N_FLAVOURS}]"
    if handle[FINAL].shape != shape:
        # F4_final(1|ccm) alone reversed (a column-major writer's) is named as `dodo score` names it; `dodo
        # apply` said only that the shapes differ (outside probe, Python round fifty-six).
        return reversed_axes_problem(FINAL, handle[FINAL].shape) or \
            f"'{FINAL}' shape {handle[FINAL].shape} differs from '{INITIAL}' {shape}"
    return nf_problem(handle, shape)


def same_dataset_problem(handle) -> str:
    """Why an open Emu database cannot be scored when its F4_final(1|ccm) is the very dataset of its
    F4_initial(1|ccm) (a hard link, or a soft or external link to it), or ''. Its asymptotic states
    are then the initial ones, and `dodo apply` and `dodo score` scored the closure against its own
    input without a word (outside probe, Python rounds sixty-two and sixty-three). A copy of equal
    values is another dataset and is read as it is (a stable state's final state is its initial one)."""
    try:
        same = handle[INITIAL].id == handle[FINAL].id  # h5py: the same file and object header
    except (KeyError, OSError, RuntimeError, ValueError, TypeError):  # the callers name a broken link
        return ""
    if not same:
        return ""
    return (f"'{FINAL}' is the same dataset as '{INITIAL}' (a hard link, or a link to it), so the asymptotic "
            "states would be the initial states themselves; give a database whose "
            f"'{FINAL}' holds the run's final states")


def reversed_axes_problem(name: str, shape) -> str:
    """Why four-fluxes of ``shape`` (N_FLAVOURS, 2, 4, nsims) are refused: the Emu layout with its axes in
    reverse order, as a column-major writer (Julia's HDF5.jl, Fortran, MATLAB) stores an array of
    [nsims, 4, 2, 3]; '' for any other shape. `dodo score` said `dataset 'nf' is 3 but 'F4_initial(1|ccm)'
    has shape (3, 2, 4, 20), 20 flavours on its last axis; the file contradicts itself (damaged or
    edited?)`, and `dodo apply` named the shape alone (outside probe, Python round fifty-four)."""
    shape = tuple(shape) if shape is not None else ()
    if len(shape) != 4 or shape[:3] != (N_FLAVOURS, 2, 4):
        return ""
    return (f"'{name}' has shape {shape}: the Emu layout [nsims, 4 (x,y,z,t), 2, {N_FLAVOURS}] with its axes in "
            "reverse order, as a column-major writer (Julia's HDF5.jl, Fortran, MATLAB) stores an array of "
            f"[nsims, 4, 2, {N_FLAVOURS}]; write the array with its axes reversed (Julia: permutedims(F, (4, 3, 2, 1)); "
            "Fortran: dimension F(3, 2, 4, nsims))")


def nf_problem(handle, shape: tuple) -> str:
    """Why the file's ``nf`` (a scalar dataset in data.md's layout; an attribute is read the same way)
    contradicts the flavour axis of its four-fluxes, or ''. A file saying ``nf = 2`` with three-flavour
    arrays was read as three flavours without a word (outside probe, round 34, left open; round 35)."""
    import h5py

    if reversed_axes_problem(INITIAL, shape):  # its nf then "contradicts" the first axis, not the cause
        return reversed_axes_problem(INITIAL, shape)
    for where, present in (("dataset", "nf" in handle), ("attribute", "nf" in handle.attrs)):
        if not present:
            continue
        try:
            if where == "dataset":
                item, problem = _open_item(handle, "nf")  # a self-mapping virtual dataset crashed HDF5 (round 37)
                if problem:
                    return problem
            else:
                item = handle.attrs["nf"]
            if isinstance(item, h5py.Group):
                return (f"'nf' is a group; it must be the number of flavours ({shape[3]}, the last axis of "
                        f"'{INITIAL}' {shape})")
            if isinstance(item, h5py.Empty) or isinstance(item, h5py.Dataset) and item.shape is None:
                # h5py.Empty has no .item(): an AttributeError traceback in score and apply (round 37)
                return (f"{where} 'nf' has a null dataspace (no value); it must be the number of flavours "
                        f"({shape[3]}, the last axis of '{INITIAL}' {shape})")
            value = np.asarray(item[()] if isinstance(item, h5py.Dataset) else item)
        except (KeyError, OSError, RuntimeError, TypeError, ValueError) as error:
            return f"{where} 'nf' cannot be read ({' '.join(str(error).split())})"
        whole = value.size == 1 and value.dtype.kind in "fiu" and float(value.reshape(-1)[0]).is_integer()
        if not whole or int(value.reshape(-1)[0]) != shape[3]:
            first = value.reshape(-1)[:1]
            shown = first[0].item() if value.size == 1 else value.tolist() if value.size < 6 else f"{value.size} values"
            if value.dtype.kind not in "fiu":
                # Text "3" beside three flavours read `'nf' is '3' but ... 3 flavours on its last axis; the file
                # contradicts itself`, which it did not (outside probe, round forty-four).
                what = "text" if value.dtype.kind in "SUO" else f"a {value.dtype} value"
                return (f"{where} 'nf' holds {shown!r}, {what}, not a number; it must be the number of flavours: "
                        f"'{INITIAL}' has shape {shape}, {shape[3]} flavours on its last axis; write nf as an integer")
            return (f"{where} 'nf' is {shown!r} but '{INITIAL}' has shape {shape}, {shape[3]} flavours on its last "
                    f"axis; the file contradicts itself (damaged or edited?)")
    return ""


def growth_rate_note(shape, nsims: int) -> str:
    """Why a ``growthRate(1|s)`` dataset of ``shape`` does not hold one rate per state of a file of
    ``nsims`` states, or '' when it does: [nsims] or [nsims, 1] (a column vector). `dodo score` took
    any shape of nsims values (a [nsims/2, 2] too) and `dodo preprocess` only [nsims], storing NaN
    rates without a word for [nsims, 1] (outside probe, round 34, left open; round 35): both use this."""
    if shape is None:  # h5py.Empty
        return f"{GROWTH} has a null dataspace (no values) for {counted(nsims, 'state')}"
    shape = tuple(shape)
    if shape in ((nsims,), (nsims, 1)):
        return ""
    size = int(np.prod(shape))
    if size != nsims:
        return f"{GROWTH} has {counted(size, 'value')} for {counted(nsims, 'state')}"
    if shape == (1, nsims):
        # A column-major writer's [nsims, 1] (Julia's HDF5.jl, Fortran, MATLAB): said, but the reversed axes
        # were not named (outside probe, Python round fifty-six).
        return (f"{GROWTH} has shape {shape} for {nsims} states: a column of one rate per state [{nsims}, 1] with "
                "its axes in reverse order, as a column-major writer (Julia's HDF5.jl, Fortran, MATLAB) stores it; "
                f"write the rates as a vector [{nsims}] (Julia: vec(rates)) or with the axes reversed")
    return f"{GROWTH} has shape {shape} for {nsims} states (one rate per state: [{nsims}] or [{nsims}, 1])"


def _open_item(handle, name: str):
    """(``handle[name]``, "") or (None, why it cannot be opened). ``name in handle`` is true for a
    link whose target is missing (a dangling soft or external link, a soft-link loop); opening it
    raises KeyError / RuntimeError in h5py."""
    try:
        item = handle[name]
    except (KeyError, OSError, RuntimeError, ValueError) as error:
        return None, f"'{name}' cannot be opened ({' '.join(str(error).split())}; a broken or looping link?)"
    return item, (virtual_source_problem(item, handle.filename, name)
                  or external_storage_problem(item, handle.filename, name) or missing_filter_problem(item, name))


def missing_filter_problem(item, name: str) -> str:
    """Why dataset ``item`` cannot be read for want of an HDF5 filter, or '': it is compressed with a
    filter this HDF5 library lacks (blosc, bitshuffle, zstd, lz4: plugins that hdf5plugin or another
    program's HDF5 had), and its first element cannot be read. HDF5's own text ("can't open directory
    (/usr/local/lib/plugin)") came out as `cannot read rows 0 to 63 of 'F4_initial(1|ccm)' (...): the
    file is damaged (a corrupted or truncated copy?)` from `dodo apply` and `dodo score`, of a file that
    is whole (outside probe, round forty-four)."""
    import h5py

    if not isinstance(item, h5py.Dataset) or not item.size:
        return ""
    try:
        pipeline = item.id.get_create_plist()
        filters = [pipeline.get_filter(index) for index in range(pipeline.get_nfilters())]
        missing = [(code, label) for code, _, _, label in filters if not h5py.h5z.filter_avail(code)]
    except (OSError, RuntimeError, TypeError, ValueError):
        return ""
    if not missing:
        return ""
    try:
        item[tuple(slice(0, 1) for _ in item.shape)]  # an optional filter some chunks skipped: readable
        return ""
    except OSError:
        pass
    listed = ", ".join(f"{code}" + (f" ({os.fsdecode(label)})" if label else "") for code, label in missing)
    return (f"'{name}' is compressed with the HDF5 filter {listed}, which this HDF5 library (h5py's) does not have: "
            "its values cannot be read here (the file is not damaged); point HDF5_PLUGIN_PATH at a directory holding "
            "the filter's plugin (pip install hdf5plugin, whose directory python -c 'import hdf5plugin; "
            "print(hdf5plugin.PLUGIN_PATH)' prints), or have the file rewritten without it (h5repack -f NONE)")


def external_storage_problem(item, filename: str, name: str) -> str:
    """Why a dataset ``item`` stored in external raw files (HDF5's external storage) of the file
    ``filename`` cannot give all its values, or '': a raw file shorter than the bytes the dataset maps
    there. HDF5 reads zeros past its end without an error (a truncated copy of the raw file was scored
    as zero asymptotic states; outside probe, round 37). A raw file that is not there is HDF5's own
    read error ("unable to open external raw data file"), named by the readers."""
    import h5py

    try:
        segments = item.external if isinstance(item, h5py.Dataset) else None
    except (OSError, RuntimeError, ValueError):
        return ""
    if not segments:
        return ""
    directory = os.path.dirname(os.path.abspath(filename))
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX", "").replace("${ORIGIN}", directory)
    remaining = int(item.dtype.itemsize) * int(item.size or 0)
    for raw, offset, size in segments:
        if remaining <= 0:
            break
        covered = min(int(size), remaining)
        remaining -= covered
        raw = os.fsdecode(raw)
        path = raw if os.path.isabs(raw) or not prefix else os.path.join(prefix, raw)
        try:
            have = os.stat(path).st_size
        except OSError:
            continue  # not there: HDF5's read says so
        if have < int(offset) + covered:
            return (f"'{name}' is stored in the external raw file {raw!r}, which holds {have} bytes where the dataset "
                    f"needs {int(offset) + covered}: HDF5 would read zeros for the rest (a truncated copy?)")
    return ""


def _fill_text(item) -> str:
    """A virtual dataset's fill value as the refusal names it: "zeros" (HDF5's default), else the value
    ("nan": a file made with fillvalue=np.nan was said to read zeros; outside probe, Python round 49)."""
    try:
        value = np.asarray(item.fillvalue)
        if value.size and not np.any(value):
            return "zeros"
        return "NaN" if value.size == 1 and np.isnan(value) else f"{value.tolist()!r}"
    except (TypeError, ValueError, OSError, RuntimeError):
        return "zeros by default"


def virtual_source_problem(item, filename: str, name: str, _seen: frozenset = frozenset()) -> str:
    """Why a virtual dataset ``item`` (HDF5 VDS) of the file ``filename`` cannot give its values, or '':
    a source file that is not there, or one without the source dataset: HDF5 then reads the fill value
    (zeros) for those rows without an error, and `dodo score` scored zeros as the asymptotic states (with
    a conservation warning), `dodo apply` printed errors against them, without a word about the missing
    file; or a dataset that maps itself (directly or through other virtual datasets), which crashed
    HDF5's read with a segmentation fault (outside probe, round 37). Source names with printf-style
    patterns (%b) are not judged."""
    import h5py

    if not isinstance(item, h5py.Dataset) or not getattr(item, "is_virtual", False):
        return ""
    try:
        sources = {(entry.file_name, entry.dset_name) for entry in item.virtual_sources()}
    except (OSError, RuntimeError, ValueError):
        return ""
    seen = _seen | {(os.path.realpath(filename), "/" + item.name.lstrip("/"))}
    directory = os.path.dirname(os.path.abspath(filename))
    for source_file, dataset in sorted(sources):
        if "%" in source_file:
            continue
        found: str | None
        if source_file == ".":
            found = os.path.abspath(filename)
        else:
            found = next((candidate for candidate in _linked_file_candidates(source_file, directory, "HDF5_VDS_PREFIX")
                          if os.path.isfile(candidate)), None)
        if found is None:
            candidates = _linked_file_candidates(source_file, directory, "HDF5_VDS_PREFIX")
            special = next((candidate for candidate in candidates if os.path.exists(candidate)), None)
            if special is not None:  # a FIFO was called missing (outside probe, round forty-four)
                return (f"'{name}' is a virtual dataset whose source file {source_file!r} is not a regular file (a "
                        "FIFO, a device or a directory): HDF5 would wait on it or fail; map a regular HDF5 file")
            return (f"'{name}' is a virtual dataset whose source file {source_file!r} is missing: HDF5 would read "
                    f"its fill value ({_fill_text(item)}) for those rows; put the source files beside it, or give a "
                    "copy with the data (h5repack)")
        if (os.path.realpath(found), "/" + dataset.lstrip("/")) in seen:
            return (f"'{name}' is a virtual dataset that maps itself (through {dataset!r} of {source_file!r}): it "
                    "holds no values, and HDF5 crashes reading it (the file was edited or damaged)")
        try:
            with h5py.File(found, "r") as source:
                present = dataset in source
                deeper = virtual_source_problem(source[dataset], found, name, seen) \
                    if present and len(seen) < 32 else ""
        except (KeyError, OSError, RuntimeError, ValueError):
            present, deeper = True, ""  # unreadable here (locked, damaged): HDF5's own read reports it
        if not present:
            return (f"'{name}' is a virtual dataset whose source dataset {dataset!r} is not in {source_file!r}: HDF5 "
                    f"would read its fill value ({_fill_text(item)}) for those rows")
        if deeper:
            return deeper
    return ""


def hdf5_item(handle, path, name: str):
    """``handle[name]`` of an open HDF5 file, or a :class:`DataFileError` naming the file and the
    item when it is a link that cannot be followed (not h5py's KeyError traceback)."""
    item, problem = _open_item(handle, name)
    if problem:
        raise DataFileError(f"{_named(path)}: {problem}")
    return item


def numeric_dataset(handle, path, key: str) -> np.ndarray:
    """Dataset ``key`` of an open HDF5 file as float64, or a ValueError naming the file and the
    dataset (a group, strings or compound values in its place, a broken link: not a traceback)."""
    import h5py

    item = hdf5_item(handle, path, key)
    if not isinstance(item, h5py.Dataset):
        raise ValueError(f"{_named(path)}: '{key}' must be a dataset of numbers; it is a group")
    if item.dtype.kind not in "fiu":
        raise ValueError(f"{_named(path)}: dataset '{key}' must hold numbers; it holds {item.dtype} values")
    if item.shape is None:  # h5py.Empty: item[()] is no array (a TypeError traceback in np.asarray)
        raise ValueError(f"{_named(path)}: dataset '{key}' has a null dataspace (no values at all)")
    try:
        values = item[()]
    except OSError as error:  # h5py's text named neither file nor dataset (`dodo simulate --input`, round 31)
        raise DataFileError(f"{_named(path)}: cannot read '{key}' ({' '.join(str(error).split())}): "
                            f"{_read_failure_cause(error)}") from None
    return as_float64(values, path, key)


def as_float64(values, path, name: str, first_row: int = 0) -> np.ndarray:
    """Values read from dataset ``name`` of file ``path`` as float64, or a :class:`DataFileError` where
    a wider float (an extended-precision dataset: C's long double, Fortran's real(16)) holds finite
    values beyond float64's range. NumPy made them inf with a RuntimeWarning and its source line on
    stderr, and `dodo score` and `dodo apply` then called the rows "non-finite input" (outside probe,
    round forty-four). ``first_row``: the file's row of ``values[0]``, for the message."""
    values = np.asarray(values)
    if values.dtype.kind != "f" or values.dtype.itemsize <= 8:
        return np.asarray(values, dtype=np.float64)  # no copy of float64 values
    with np.errstate(over="ignore", invalid="ignore"):
        converted = values.astype(np.float64)
        lost = np.isinf(converted) & np.isfinite(values)
    if lost.any():
        first = tuple(int(i) for i in np.argwhere(lost)[0])
        row = first[0] + first_row if first else ""
        raise DataFileError(f"{_named(path)}: '{name}' holds {np.format_float_scientific(values[first], precision=4)} "
                            f"(row {row}), beyond the range of float64 (largest {np.finfo(np.float64).max:.4g}), in "
                            f"which Dodo computes; the file stores {values.dtype} values: write them in other units")
    return converted


def _is_dataset(handle, name: str, shape: tuple) -> bool:
    import h5py

    return name in handle and isinstance(handle[name], h5py.Dataset) and handle[name].shape == shape


def _rows(handle, path, name: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of dataset ``name``, or a :class:`DataFileError` naming the file, the dataset
    and the rows when HDF5 cannot read them (a damaged compressed chunk, a bad checksum). h5py's OSError
    named neither: `dodo apply` said only `Can't synchronously read data (filter returned failure during
    read)`, and `dodo preprocess` blamed its output, `pre.h5 not written: Can't synchronously read
    data ...`, whichever of its inputs was damaged (outside probe, round 31)."""
    try:
        return handle[name][start:stop]
    except OSError as error:
        raise DataFileError(f"{_named(path)}: cannot read rows {start} to {stop - 1} of '{name}' "
                            f"({' '.join(str(error).split())}): {_read_failure_cause(error)}") from None


def _read_failure_cause(error: OSError) -> str:
    """Why HDF5 could not read a dataset: the file is damaged, or (its words say so) memory ran out. `dodo
    preprocess` under `ulimit -v 175000` said `... (Can't synchronously read data (memory allocation failed
    for chunk)): the file is damaged (a corrupted or truncated copy?)` of a sound file (outside probe,
    Python round fifty-four)."""
    from ._memory import hdf5_ran_out_of_memory, more_memory_advice

    if hdf5_ran_out_of_memory(str(error)):
        return f"not enough memory to read it (the file is not damaged): {more_memory_advice()}"
    return "the file is damaged (a corrupted or truncated copy?)"


def iter_emu_chunks(path: str | Path, chunk_size: int = 65536) -> Iterator[EmuChunk]:
    """Rows of one Emu database in blocks of at most ``chunk_size``."""
    import h5py

    handle, nsims = open_emu_file(path)
    with handle:
        has_growth = GROWTH in handle and isinstance(handle[GROWTH], h5py.Dataset) and \
            not growth_rate_note(handle[GROWTH].shape, nsims)  # [nsims] or [nsims, 1]
        has_dirs = _is_dataset(handle, DIRNAMES, (nsims,))
        for start in range(0, nsims, chunk_size):
            stop = min(start + chunk_size, nsims)
            growth = as_float64(_rows(handle, path, GROWTH, start, stop), path, GROWTH, start).reshape(-1) \
                if has_growth else np.full(stop - start, np.nan)
            if has_dirs:
                names = _rows(handle, path, DIRNAMES, start, stop)
                # Labels only (holdout patterns, reports): bytes that are not UTF-8 must not stop the read.
                dirs = np.array([d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d) for d in names],
                                dtype=object)
            else:
                dirs = np.array([f"{Path(path).name}:{i}" for i in range(start, stop)], dtype=object)
            yield EmuChunk(
                F_init=from_emu_layout(as_float64(_rows(handle, path, INITIAL, start, stop), path, INITIAL, start)),
                F_final=from_emu_layout(as_float64(_rows(handle, path, FINAL, start, stop), path, FINAL, start)),
                growth_rate=growth, dirname=dirs, row=np.arange(start, stop))
