"""Reading torch files without running code planted in them.

torch.load(weights_only=False) unpickles anything, so a crafted .pt runs its code before any digest
check. Dodo's checkpoints hold only tensors, plain Python data and NumPy arrays (the RNG state), so
they load through torch's restricted unpickler with NumPy's array reconstruction allowed; anything
else is refused with a message that names what the file asked for.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch


class UntrustedCheckpointError(ValueError):
    """A torch file that needs more than tensors, plain data and NumPy arrays to load."""


def _numpy_globals() -> list:
    # What np.random.get_state() and NumPy scalars/arrays pickle to (NumPy 1.x and 2.x spellings).
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    allowed += [type(np.dtype(name)) for name in ("uint32", "int64", "float64", "float32", "bool", "int32")]
    # A checkpoint pickled under NumPy 1.x names numpy.core.multiarray: the same functions.
    allowed += [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    return allowed


class NotATorchFileError(ValueError):
    """A file in neither of torch.save's formats (a zip archive; a pickle, torch's legacy format)."""


def _not_a_torch_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be a torch file, from its first bytes, or None when it may be one.

    torch.load reads any file that is not a zip archive as a legacy pickle, so a text file (notes,
    a YAML config, a JSON report given by mistake) was taken for pickle opcodes and refused as a
    file that "asks to run Python code" (outside probe, round eighteen): misleading, and a
    protocol-0 pickle is text too. torch.save writes a zip archive (PK\\x03\\x04); its legacy
    format, and any other pickle of protocol 2 or more, starts with PROTO (0x80) and the protocol.
    """
    with open(path, "rb") as stream:
        head = stream.read(64)
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return None
    if not head:
        return "the file is empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at byte 64 is still text
        text = head[:error.start].decode("utf-8") if len(head) == 64 and error.start >= 61 else None
    if text is not None and all(character.isprintable() or character in "\t\r\n" for character in text):
        first = (text.strip().splitlines() or [""])[0]
        return f"it is a text file, starting {first[:40]!r}"
    kind = _known_kind(path)
    if kind is not None:
        return kind
    return f"it starts with the bytes {head[:8].hex(' ')}"


def _known_kind(path: str | Path) -> str | None:
    """What Dodo file ``path`` is, where it is a model package or an HDF5 file Dodo knows, else None:
    `dodo evaluate model.onnx` (the package for the checkpoint it came from) said only "it starts with
    the bytes 08 08 12 07 ..." (outside probe, scale-out round three)."""
    from .._output_guard import MODEL_PACKAGE, file_kind

    try:
        kind = file_kind(path)
    except Exception:  # any doubt: the bytes, as before
        return None
    if kind == MODEL_PACKAGE:
        return (f"it is {kind}, the graph exported from a checkpoint: `dodo score MODEL DATA` scores a package, "
                "`dodo evaluate` the checkpoint it was exported from")
    if kind.startswith("a file of another kind") or kind.startswith("a file that cannot") or kind == "":
        return None
    return f"it is {kind}"


#: What a command that reads checkpoints of both kinds (dodo export) asks for.
ANY_CHECKPOINT = "a checkpoint of `dodo train` (e.g. checkpoints/best.pt) or `dodo train-ensemble`"
#: What dodo evaluate, dodo inspect and dodo train --resume ask for: they refuse a train-ensemble one.
TRAIN_CHECKPOINT = "a checkpoint of `dodo train` (e.g. checkpoints/best.pt)"


def load_torch_file(path: str | Path, map_location="cpu", expected: str = ANY_CHECKPOINT):
    """torch.load with weights_only=True and NumPy arrays allowed; UntrustedCheckpointError otherwise,
    NotATorchFileError for a file that is not in a format torch.save writes (nothing is unpickled).
    ``expected``: what the calling command reads, for the message ("give EXPECTED")."""
    why = _not_a_torch_file(path)
    if why is not None:
        # `dodo inspect notes.txt` was told to give a train-ensemble checkpoint, which inspect then refuses
        # (outside probe, Python round sixty): the calling command says what it reads.
        raise NotATorchFileError(f"{path}: not a checkpoint ({why}; torch.save writes a zip archive): give {expected}")
    with torch.serialization.safe_globals(_numpy_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as exc:
            if "Weights only load failed" not in str(exc):
                raise
            raise UntrustedCheckpointError(
                f"{path}: refused: the file asks to run Python code or build objects other than tensors, "
                f"plain data and NumPy arrays, which Dodo's checkpoints never hold "
                f"({_first_line_naming_global(str(exc))}); it was not loaded") from None


def _first_line_naming_global(message: str) -> str:
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()[:200]
    return "restricted unpickler"


def write_torch_file(obj, path: str | Path) -> None:
    """``torch.save(obj, path)`` by way of memory: serialised first, then written with Python's file
    I/O. torch's own writer turns a full disk into `[enforce fail at inline_container.cc:672] .
    unexpected pos 128 vs 0`, which `dodo train` printed as its one line (outside probe, round 30);
    Python's write says `[Errno 28] No space left on device`. Checkpoints are small (a few MB at most)."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as stream:
        stream.write(buffer.getbuffer())
