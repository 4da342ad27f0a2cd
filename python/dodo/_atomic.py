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
    which keeps the first error and from then on holds writes in memory. ``check()`` raises that
    error (call it between large blocks to stop early); on leaving, after HDF5 closed the file
    cleanly, it is raised as ``OSError`` and the temporary is removed, so ``final`` is untouched.
    """
    import h5py

    with atomic_path(final) as tmp:
        sink = WriteErrorLatch(tmp)
        try:
            try:
                handle = h5py.File(sink, "w")
                try:
                    yield handle, sink.check
                finally:
                    handle.close()
            except Exception:
                sink.check()  # the disk filled up first: that is the error to report
                raise
            sink.check()
        finally:
            sink.close()


class WriteErrorLatch(io.RawIOBase):
    """A read/write binary file that records the first failed write instead of raising it.

    From that write on, writes are kept in memory (and served to reads), so a library writing
    through it (HDF5) sees a consistent file and never enters its error paths; :meth:`check`
    raises the recorded error. The memory held is what is written after the failure: callers
    stop soon after it (``check()`` between blocks).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self._name = str(path)
        self._position = 0
        self._held: list[tuple[int, bytes]] = []  # (offset, data) written after the failure
        self.error: OSError | None = None

    def check(self) -> None:
        if self.error is not None:
            raise OSError(self.error.errno, f"writing {self._name}: {self.error.strerror or self.error}")

    def _pwrite(self, view: memoryview, offset: int) -> int:
        return os.pwrite(self._fd, view, offset)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        target = memoryview(buffer).cast("B")
        size, start = len(target), self._position
        data = os.pread(self._fd, size, start)
        target[:len(data)] = data
        target[len(data):] = bytes(size - len(data))  # past the end: zeros, as HDF5 expects
        for offset, held in self._held:  # later writes win
            low, high = max(start, offset), min(start + size, offset + len(held))
            if low < high:
                target[low - start:high - start] = held[low - offset:high - offset]
        self._position += size
        return size

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        if self.error is None:
            try:
                while done < len(view):
                    done += self._pwrite(view[done:], self._position + done)
            except OSError as error:
                self.error = error
        if done < len(view):
            self._held.append((self._position + done, bytes(view[done:])))
        self._position += len(view)
        return len(view)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._position = offset
        elif whence == io.SEEK_CUR:
            self._position += offset
        else:
            self._position = self._size() + offset
        return self._position

    def _size(self) -> int:
        end = os.fstat(self._fd).st_size
        return max([end] + [offset + len(held) for offset, held in self._held])

    def tell(self) -> int:
        return self._position

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as error:
                self.error = error
        return size

    def flush(self) -> None:
        pass  # unbuffered: every write is already in the kernel (or held)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
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
