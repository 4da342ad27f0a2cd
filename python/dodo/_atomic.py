"""Atomic file output: write to a temporary name in the same directory, fsync, os.replace.

An interrupted run therefore never leaves a half-written file under the final name. Temporary
names carry the writer's host and process id (``.NAME.HOST.PID.XXXX.tmp``), so the next write of
the same file removes the leftovers of a writer that was killed (SIGKILL, power loss) and is
no longer running on this host. Standard library only: used by the training side and by the
NumPy-only QKE solver alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | Path):
    """Yield a temporary path next to ``final``; on success fsync it and rename onto ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_directory(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(temporary_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(str(tmp))


@contextlib.contextmanager
def atomic_hdf5(final: str | Path):
    """Yield ``(h5py.File, check)`` writing a temporary next to ``final``, renamed on success.

    HDF5 crashes the process when it closes objects after a write failed (a full disk: issue 11,
    item 8), so HDF5 never sees a failed write: its writes go through :class:`WriteErrorLatch`,
    which keeps the first error and drops later writes. ``check()`` raises that error (call it
    between large blocks to stop early); on leaving, after HDF5 closed the file cleanly, it is
    raised as ``OSError`` and the temporary is removed, so ``final`` is untouched.
    """
    import h5py

    with atomic_path(final) as tmp:
        sink = WriteErrorLatch(tmp)
        try:
            handle = h5py.File(sink, "w")
            try:
                yield handle, sink.check
            finally:
                handle.close()
        finally:
            sink.close()
        sink.check()


class WriteErrorLatch(io.RawIOBase):
    """A binary file (read/write) that records the first failed write instead of raising it.

    Later writes are dropped and reported as done, so a library that writes through it (HDF5)
    never enters its error paths; :meth:`check` raises the recorded error.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed in close())
        self.error: OSError | None = None

    def check(self) -> None:
        if self.error is not None:
            raise OSError(self.error.errno, f"writing {self._file.name}: {self.error.strerror or self.error}")

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self._file.write(view[done:])
            except OSError as error:
                self.error = error
        return len(view)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._file.truncate(size)
            except OSError as error:
                self.error = error
        return self._file.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: every write is already in the kernel

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        super().close()


def remove_stale_temporaries(final: str | Path) -> list[Path]:
    """Delete temporaries of ``final`` left by writers that no longer run on this host."""
    final = Path(final)
    pattern = re.compile(re.escape(f".{final.name}.{_host()}.") + r"(\d+)\.[^.]+\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        for candidate in final.parent.iterdir():
            match = pattern.fullmatch(candidate.name)
            if match and not _running(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: str | Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default))


def torch_save_atomic(obj, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
