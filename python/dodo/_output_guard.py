"""Which existing files a command may replace with its output.

`dodo synth`, `dodo preprocess`, `dodo apply -o` and `dodo export` write their output atomically,
so a failed run never leaves a broken file; but a finished run still replaces whatever the output path held. Given
by mistake the path of a solver database (hours of `dodo simulate`), an Emu database or another
command's output, that file was lost (outside probe, left open in the reliability notes). Each
command now replaces only a file of its own kind (a rerun) or an empty one; anything else needs
its --overwrite. `dodo simulate` has its own, stricter rule (dodo.qke.cli.refuse_complete_database).
Report outputs (`--json` tables, plots) never replace data: an HDF5 file, a checkpoint or a model
package given as one is kept. A JSON report replaces only an earlier report of the same command
(marked `"dodo_report": COMMAND`, or one written before the mark, known by its keys) or an empty
file (`refuse_replacing_with_report`); a plot replaces only an image of its own format or an empty
file (`refuse_replacing_with_plot`). Anything else needs the command's --overwrite where it has one.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from ._hdf5_locks import held_open_for_writing, lock_refused_problem
from ._shown import counted

#: The kind each command writes (the attribute that marks it, see `file_kind`).
SYNTHETIC = "a synthetic database (dodo synth)"
PREPROCESSED = "a preprocessed training file (dodo preprocess)"
APPLIED_CELLS = "a cell file of dodo apply -o"
LINEAR_LABELS = "a growth-label file of dodo simulate --linear-only"
#: The ``kind`` attribute of those label files (dodo.qke.growth_labels.KIND).
LINEAR_LABELS_KIND = "linear_growth_labels"
MODEL_PACKAGE = "an ONNX model package (dodo export)"
#: What a torch.save zip archive is called (tools/regate_checkpoint.py and refit_growth.py write one).
CHECKPOINT = "a PyTorch checkpoint (dodo train / dodo train-ensemble)"

#: A zip archive that torch.save did not write (a NumPy .npz, a .zip, an office document).
ZIP_ARCHIVE = "a zip archive that is not a checkpoint (a NumPy .npz, a .zip)"

#: A NumPy array file (np.save; the study tools' --save and caches write them): data, which a report
#: never replaces, as an .npz (a zip) is not (outside probe, round 38).
NUMPY_ARRAY = "a NumPy array file (.npy)"
#: The first bytes of an .npy file (NumPy's format, every version).
NUMPY_SIGNATURE = b"\x93NUMPY"

#: What an HDF5 file is called that another process holds open for writing (HDF5's file lock): a
#: writer still running (`dodo simulate`'s own output, an h5py session). It was "an HDF5 file that
#: cannot be read", and the refusal offered --overwrite (outside probe, round 31).
OPEN_FOR_WRITING = "an HDF5 file another process has open for writing (HDF5 file lock)"
#: `dodo apply -o`'s mark (attrs["kind"]); files written before it carry only its layout string.
APPLIED_CELLS_MARK = "dodo-apply-cells-v1"
_APPLIED_CELLS_LAYOUT_PREFIX = "[nx, ny, nz, species"


#: Leading bytes of a compressed file or archive (a package downloaded or copied as model.onnx.gz,
#: .xz, .zst, .bz2 or in a tar): "not an ONNX model (truncated or damaged file?)" sent a user to fetch
#: a whole file again (outside probe, round forty-four). Whole magic numbers, none an ONNX model's start.
_COMPRESSED = ((b"\x1f\x8b", "gzip", "gunzip"), (b"\xfd7zXZ\x00", "xz", "unxz"),
               (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"))
#: bzip2: "BZh", a block size digit, then the block magic (0x42 alone may start an ONNX model).
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")
#: A POSIX tar archive's "ustar" at byte 257.
_TAR_MAGIC_OFFSET = 257


def compressed_kind(handle) -> Optional[tuple[str, str]]:
    """(format, command that unpacks it) when the open binary file ``handle`` is a compressed file or
    a tar archive, else None (model packages: dodo._closure; data files: dodo.emu_files)."""
    handle.seek(0)
    head = handle.read(_TAR_MAGIC_OFFSET + 5)
    for magic, kind, command in _COMPRESSED:
        if head.startswith(magic):
            return kind, command
    if _BZIP2.match(head[:10]):
        return "bzip2", "bunzip2"
    if head[_TAR_MAGIC_OFFSET:_TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "tar", "tar -xf"
    return None


def compressed_text(kind: str) -> str:
    """How a message names a format compressed_kind found: "a tar archive", "compressed with gzip"."""
    return "a tar archive" if kind == "tar" else f"compressed with {kind}"


def _attributes_and_names(path, **options) -> tuple[dict, set]:
    """(attributes, top-level names) of the HDF5 file at ``path``, opened for reading with ``options``."""
    import h5py

    with h5py.File(path, "r", **options) as handle:
        return dict(handle.attrs), set(handle.keys())


def file_kind(path: str | Path) -> str:
    """A short description of what the existing file at ``path`` holds, by its attributes."""
    signature = _signature(path)
    if signature is None:
        return "a file that cannot be read"
    if signature == "zip":  # a NumPy .npz (simulate's OUT.partial.npz) or any zip was called a checkpoint
        return ZIP_ARCHIVE if _is_other_zip(path) else CHECKPOINT
    if signature == "npy":
        return NUMPY_ARRAY
    if signature != "hdf5":
        return MODEL_PACKAGE if _is_model_package(path) else \
            "a file of another kind (neither HDF5, a checkpoint nor a model package)"
    try:
        attrs, names = _attributes_and_names(path)
    except (OSError, ValueError) as error:
        if not lock_refused_problem(error):
            return OPEN_FOR_WRITING if held_open_for_writing(error) else "an HDF5 file that cannot be read"
        # A file system that takes no locks (ENOLCK): a rerun's own output was "an HDF5 file another
        # process has open for writing" and needed --overwrite every time (outside probe, round
        # forty-four). Its attributes are read without the lock; a writer that changed it meanwhile is
        # caught before the rename (_atomic.refuse_written_meanwhile).
        try:
            attrs, names = _attributes_and_names(path, locking=False)
        except (OSError, ValueError, TypeError):
            return "an HDF5 file that cannot be read"
    # First: a preprocessed file carries its inputs' attributes (a solver database's included).
    if str(attrs.get("format", "")).startswith("dodo-preprocessed"):
        return PREPROCESSED
    if str(attrs.get("kind", "")) == LINEAR_LABELS_KIND:  # it has "solver" too: it was called a solver database
        return f"{LINEAR_LABELS} ({_run_state(attrs)})"
    if is_solver_database(attrs):
        return f"a dodo simulate database ({_run_state(attrs)})"
    if is_synthetic_mark(attrs.get("synthetic")):
        return SYNTHETIC
    if str(attrs.get("kind", "")) == APPLIED_CELLS_MARK or \
            str(attrs.get("layout", "")).startswith(_APPLIED_CELLS_LAYOUT_PREFIX):
        return APPLIED_CELLS
    if any(name.startswith("F4_initial") for name in names):
        return "an Emu database"
    return "an HDF5 file of another kind"


#: How the `solver` attribute of every database and label file `dodo simulate` writes begins
#: ("dodo.qke fast-flavour QKE solver (docs/qke.md)", "dodo.qke linear theory of the box modes ...").
SOLVER_ATTRIBUTE_PREFIX = "dodo.qke"


def is_solver_database(attrs) -> bool:
    """Whether HDF5 attributes ``attrs`` (a dict or h5py's AttributeManager) are those of a file
    `dodo simulate` wrote: its `solver` attribute names Dodo's solver, or its `command` attribute
    the `dodo simulate` run that wrote it. Any `solver` attribute was taken for it, so another
    program's database that records its solver so (`solver: "my FFI code v2"`) was an "unfinished
    dodo simulate database", and `dodo simulate` replaced it with its own output without --overwrite
    (outside probe, round 31)."""
    try:
        solver, command = attrs.get("solver"), attrs.get("command")
    except (OSError, RuntimeError, TypeError, ValueError):  # an attribute h5py cannot read
        return False
    solver, command = (value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                       for value in (solver, command))
    if isinstance(solver, str) and solver.startswith(SOLVER_ATTRIBUTE_PREFIX):
        return True
    return solver is not None and isinstance(command, str) and "dodo simulate " in f" {command} ".replace("/", " ")


def _run_state(attrs: dict) -> str:
    """"complete, 4 states" / "unfinished" of a solver database's or label file's attributes."""
    done = "complete" if _truth(attrs.get("complete", False)) else "unfinished"
    try:
        states = int(attrs.get("nstates_valid", attrs.get("nstates_processed", -1)))
    except (TypeError, ValueError, OverflowError):
        states = -1
    return done + (f", {counted(states, 'state')}" if states >= 0 else "")


def is_synthetic_mark(value) -> bool:
    """Whether an HDF5 ``synthetic`` attribute is the mark `dodo synth` writes: the boolean true
    (read back as numpy.bool_). Its truth was taken, so another program's database whose attribute
    reads "False" (a non-empty string) was "a synthetic database" that `dodo synth -o F` replaced
    without --overwrite, and `dodo preprocess` recorded its rows as data kind "synthetic"; an array of
    two values stopped preprocess with NumPy's "truth value of an array ... is ambiguous" (outside
    probe, round 34)."""
    import numpy as np

    return isinstance(value, (bool, np.bool_)) and bool(value)


def _truth(value) -> bool:
    """``bool(value)`` of an attribute, False where it has none (an array of several values). The
    attributes of a file that is in the way of an output are another program's: `dodo apply -o F`
    and `dodo synth -o F` over an HDF5 file whose `solver` attribute came with an `nstates_valid`
    of "n/a" or of two values, or a `complete` of two values, said `invalid literal for int()`,
    `The truth value of an array ... is ambiguous` or a TypeError traceback instead of what the file
    is and that --overwrite replaces it (outside probe, round 31)."""
    try:
        return bool(value)
    except (TypeError, ValueError):
        return False


def refuse_replacing(path: str | Path | None, own_kind: str, command: str, overwrite: bool) -> None:
    """A ValueError when ``path`` exists, is not empty, holds something other than ``own_kind``
    and ``overwrite`` is false; nothing otherwise (no file, an empty one, a rerun's own output)."""
    if path is None or overwrite:
        return
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return  # absent (or not a regular file: check_outputs refuses that), or empty (mktemp)
    kind = file_kind(path)
    if kind == own_kind:
        return
    if kind == OPEN_FOR_WRITING:  # "an HDF5 file that cannot be read", with --overwrite offered, before
        raise ValueError(f"{path} exists and is {kind}: it is not replaced; wait until that process closes it, or "
                         f"give {command} another output")
    raise ValueError(f"{path} exists and is {kind}, not {own_kind}: it is not replaced; "
                     f"give {command} another output, or --overwrite to replace it")


def check_tool_output(output: str | Path, inputs, command: str, overwrite: bool) -> None:
    """What a script that writes a checkpoint checks before any work (tools/regate_checkpoint.py,
    tools/refit_growth.py): ``output`` is none of ``inputs`` (they compared it with the input
    checkpoint only, so `-o` naming the table or the config replaced it) and, unless
    ``overwrite``, not an existing file other than a checkpoint. Raises ValueError."""
    from ._atomic import check_outputs

    check_outputs([output], inputs)
    refuse_replacing(output, CHECKPOINT, command, overwrite)


def _signature(path: str | Path) -> str | None:
    """"hdf5", "zip" (torch.save's archive), "npy" or "other" by the file's first bytes; None if unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head != HDF5_SIGNATURE and not head.startswith(b"PK\x03\x04") and _hdf5_after_user_block(handle):
                return "hdf5"
    except OSError:
        return None
    if head == HDF5_SIGNATURE:
        return "hdf5"
    if head.startswith(NUMPY_SIGNATURE):
        return "npy"
    return "zip" if head.startswith(b"PK\x03\x04") else "other"


#: The first bytes of HDF5's superblock.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hdf5_after_user_block(handle) -> bool:
    """Whether the open file ``handle`` is HDF5 with a user block: its superblock, and signature, at
    byte 512, 1024, 2048, ... (HDF5 looks there, as h5py.is_hdf5 does). Such a file (h5py's
    ``userblock_size``, h5jam) read as "other": an Emu database with one was "a file of another kind
    (neither HDF5, ...)", and `dodo score --json DB.h5 --overwrite` replaced it with its report,
    where a report never replaces data (outside probe, round 37)."""
    size = os.fstat(handle.fileno()).st_size
    offset = 512
    while offset + len(HDF5_SIGNATURE) <= size:
        handle.seek(offset)
        if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


def _is_other_zip(path: str | Path) -> bool:
    """Whether the file at ``path`` is a readable zip archive that torch.save did not write (it
    writes ``FOLDER/data.pkl``; the central directory alone is read). A zip that cannot be read
    (a torn or truncated checkpoint) is not known to be another one: False."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return not any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names)


def _is_model_package(path: str | Path) -> bool:
    """An ONNX file carrying Dodo's package metadata (dodo.format_version), at most 256 MiB. Read
    with the onnx package where it is installed (it is wherever `dodo export` runs). Without it (a
    run-time install: numpy and onnxruntime), by its bytes: an ONNX model's serialisation starts
    with its ir_version field (byte 0x08) and holds the metadata key as plain bytes; a package must
    never pass for "another kind of file" only because onnx is missing (`dodo score --json` would
    replace it)."""
    if os.path.getsize(path) > _LARGEST_PACKAGE:  # packages are kB to MB; never parse a large data file whole
        return False
    try:
        with open(path, "rb") as handle:
            content = handle.read(1)
            if content != b"\x08":
                return False  # not an ONNX model: nothing more is read
            content += handle.read()
    except OSError:
        return False
    if _PACKAGE_KEY not in content:
        return False  # not an ONNX model, or one without Dodo's metadata: no parse needed
    try:
        import onnx
    except ImportError:
        return True
    try:
        model = onnx.load_from_string(content)
    except Exception:  # noqa: BLE001 - any parse failure: not a package
        return False
    return any(entry.key == "dodo.format_version" for entry in model.metadata_props)


#: Model packages are kB to MB; a larger file is never read whole to find out.
_LARGEST_PACKAGE = 256 << 20
#: The metadata key every Dodo model package carries (docs/model_package.md).
_PACKAGE_KEY = b"dodo.format_version"


def _refuse_data(path, command: str) -> None:
    """A ValueError when ``path`` (a report's output: a JSON table, a plot) exists and is an HDF5
    file, a checkpoint (or another zip: a NumPy .npz), a NumPy .npy array or a model package: a
    report is never meant to replace those (a mistyped `--json run.h5`), so no option allows it."""
    if path is None or path == "-" or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    signature = _signature(path)
    if signature is None:
        return  # the writer reports an unreadable or unwritable output itself
    if signature in ("hdf5", "zip", "npy") or _is_model_package(path):  # a package by its content, whatever its name
        raise ValueError(f"{path} exists and is {file_kind(path)}: {command} does not write a report over it; "
                         "give another path")


#: The key that marks a JSON report as Dodo's, its value the command that wrote it (`marked_report`).
REPORT_MARK = "dodo_report"


def marked_report(report, command: str):
    """``report`` (a dict) with ``REPORT_MARK: command`` first, so that a later run of ``command``
    knows the file for its own report and replaces it (`refuse_replacing_with_report`)."""
    return {REPORT_MARK: command, **report}


#: Reports written before REPORT_MARK, known by the top-level keys each always had; by the command
#: as the guard's callers name it (their --json stripped).
_UNMARKED_REPORT_KEYS = {
    "dodo score": [{"n_states", "model", "box3d", "difference", "per_state"}],
    "dodo evaluate": [{"n_cells", "species", "box3d", "model", "limiter_active_fraction", "split", "data"}],
    "dodo inspect": [{"data", "cells", "split", "slice", "loss_terms_model", "loss_total", "flux_factor"}],
    "python -m dodo.qke.validate": [{"runs", "emu_densities_over_ntot"},  # nsm1
                                    {"nstates", "nvalid", "solver_vs_emu_mean_abs_dn_over_ntot", "per_state_error"}],
}
#: `dodo learning-curve --json` wrote a list of rows, each with these keys (now marked: {"dodo_report", "rows"}).
_LEARNING_CURVE_ROW_KEYS = {"train_size", "cv_model", "cv_box3d"}


def _report_name(command: str) -> str:
    return command.removesuffix(" --json")


def _report_of(document) -> str | None:
    """The command whose report ``document`` (parsed JSON) is, by its mark or, unmarked, by its keys."""
    if isinstance(document, dict):
        mark = document.get(REPORT_MARK)
        if isinstance(mark, str):
            return mark
        for name, key_sets in _UNMARKED_REPORT_KEYS.items():
            if any(keys <= document.keys() for keys in key_sets):
                return name
    elif isinstance(document, list) and document and \
            all(isinstance(row, dict) and _LEARNING_CURVE_ROW_KEYS <= row.keys() for row in document):
        return "dodo learning-curve"
    return None


def refuse_replacing_with_report(path, command: str, overwrite: bool = False, overwrite_option: str | None = None) -> None:
    """For a JSON report's output ``path``: never over data, whatever ``overwrite`` says; and, unless
    ``overwrite``, a ValueError when ``path`` exists, is not empty and is not an earlier report of
    ``command`` (`dodo score --json`, ...). A text file, then any JSON document (a package.json, a
    notebook, a config given by mistake) was replaced by the report, exit 0 (outside probe, rounds
    24 and 25). ``overwrite_option``: the option that allows it, named in the message (None: the
    command has none, give another path)."""
    _refuse_data(path, command)
    if path is None or path == "-" or overwrite or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    own = _report_name(command)
    document = _json_document(path)
    if document is _NOT_JSON:
        what = "is not a JSON document"
    else:
        report = _report_of(document)
        if report == own:
            return
        what = f"is a report of {report}" if report else "is a JSON document that is not a Dodo report"
    allow = f", or {overwrite_option} to replace it" if overwrite_option else ""
    raise ValueError(f"{path} exists and {what}, not an earlier report of {own}, so {command} does not replace "
                     f"it with its report: give another path{allow}")


_NOT_JSON = object()


def _json_document(path):
    """The JSON document the file at ``path`` holds (UTF-8, at most 256 MiB: reports are kB to MB), or _NOT_JSON."""
    try:
        if os.path.getsize(path) > _LARGEST_PACKAGE:
            return _NOT_JSON
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _NOT_JSON


#: The first bytes of each plot format (dodo.training.plots.plot_format: PNG, PDF, SVG).
_IMAGE_SIGNATURES = {"png": (b"\x89PNG\r\n\x1a\n",), "pdf": (b"%PDF-",), "svg": (b"<?xml", b"<svg")}


def _plot_format(path) -> str:
    """The format a plot at ``path`` is written in, by its name (as plot_format: no suffix, PNG)."""
    return Path(path).suffix.lower().lstrip(".") or "png"


#: The Creator written into the metadata of every plot Dodo makes (dodo.training.plots): what
#: marks a file as an earlier plot that a plotting command may replace. Any PNG, PDF or SVG had
#: passed, so `dodo plot metrics M.json -o thesis.pdf` replaced a user's paper (data-loss probe,
#: round five). Written as matplotlib writes metadata: a PNG text chunk and an SVG <dc:title> near the
#: start, a PDF's /Creator in its Info dictionary near the end.
PLOT_CREATOR = "Dodo plot"


def _is_earlier_plot(path, form: str) -> bool:
    """Whether the file at ``path`` is a plot Dodo wrote in format ``form``: it starts as such an image
    does (SVG: after whitespace or a byte-order mark, its XML declaration or <svg>, and an <svg
    element early on) and carries PLOT_CREATOR in its first or last 4 kB."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - 4096, 0))
            tail = handle.read(4096)
    except OSError:
        return False
    mark = PLOT_CREATOR.encode()
    signatures = _IMAGE_SIGNATURES.get(form, ())
    if form == "svg":
        start = head.removeprefix(b"\xef\xbb\xbf").lstrip()
        is_image = start.startswith(signatures) and b"<svg" in start
    else:
        is_image = head.startswith(signatures)
    return is_image and (mark in head or mark in tail)


def refuse_replacing_with_plot(paths, command: str, overwrite: bool = False, overwrite_option: str | None = None) -> None:
    """For plot outputs ``paths``: never over data, whatever ``overwrite`` says; and, unless
    ``overwrite``, a ValueError when one exists, is not empty and is not a plot Dodo wrote in the
    format its name asks for (an earlier plot, marked with PLOT_CREATOR). `dodo plot -o analysis.py`,
    `--plot notes.txt` (a path given by mistake) replaced that file with a figure (outside probe,
    round 25), and any image of the format passed (data-loss probe, round five)."""
    for path in paths:
        _refuse_data(path, command)
    for path in paths:
        if path is None or path == "-" or overwrite or not os.path.isfile(path) or os.path.getsize(path) == 0:
            continue
        form = _plot_format(path)
        if _is_earlier_plot(path, form):
            continue
        image = f"a {form.upper()} image" if form in _IMAGE_SIGNATURES else "an image (PNG, PDF or SVG)"
        allow = f", or {overwrite_option} to replace it" if overwrite_option else " (or remove it first)"
        raise ValueError(f"{path} exists and is not {image} that a Dodo plot command wrote (an earlier plot), so "
                         f"{command} does not replace it with its plot: give another path{allow}")


def refuse_replacing_data(paths, command: str) -> None:
    """The plot guard under its earlier name, without an --overwrite (the plotting commands now call
    :func:`refuse_replacing_with_plot` with theirs)."""
    refuse_replacing_with_plot(paths, command)
