"""What HDF5's file-lock errors mean: another process holds the file open for writing (no damage,
no other format: wait for it), or the file system takes no locks (read without the lock). Shared by
the readers (emu_files.py) and the output guard (_output_guard.py), which each name such a file."""
from __future__ import annotations

import errno
import os
import re

from ._lock_holders import dodo_command_of, flock_holder_pid, pid_text


def held_open_for_writing(error: BaseException) -> bool:
    """Whether h5py's ``error`` opening a file is HDF5's file lock: another process (an h5py session, a
    writer still running) holds it open for writing, which is no damage and no other format. A lock
    the file system refuses for another reason (ENOLCK from an NFS mount without a lock service) is
    not (:func:`lock_refused_problem`)."""
    text = str(error)
    if "unable to lock file" not in text:
        return False
    number = _lock_errno(text)
    return number is None or number in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


def _lock_errno(text: str):
    """The errno of HDF5's "unable to lock file, errno = N" in ``text``, or None."""
    match = re.search(r"unable to lock file, errno = (\d+)", text)
    return int(match.group(1)) if match else None


def lock_refused_problem(error: BaseException) -> str:
    """Why HDF5 could not lock a file it opens for reading when no other process holds it (ENOLCK: an
    NFS mount without a lock service; ENOSYS where HDF5 does not ignore it), or ''. Such a file was
    said to be open for writing in another process, to be waited for (outside probe, round forty-four):
    no wait ends it; reading without the lock does."""
    text = str(error)
    if "unable to lock file" not in text or held_open_for_writing(error):
        return ""
    number = _lock_errno(text)
    reason = os.strerror(number) if number is not None else "refused"
    return (f"HDF5 could not lock it for reading ({reason}, errno {number}): its file system takes no file locks (an "
            "NFS mount without a lock service?), which says nothing of other processes. Read it without the lock, "
            "once no program writes it: HDF5_USE_FILE_LOCKING=FALSE in the environment")


def held_for_writing_by(path) -> str | None:
    """Whether another process holds the existing regular file ``path`` open for writing through HDF5 (its
    write lock: an exclusive flock, which a shared one probed here is refused): None when not (or where it
    cannot be told: no flocks, a file this process may not open); else the holder's words, " (pid N,
    PROGRAM)" with ", stopped: ..." where that process is stopped, or "" where /proc/locks does not name it."""
    import stat

    try:
        import fcntl
    except ImportError:
        return None
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_words(descriptor)
        except OSError:  # no flocks on this file system
            return None
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def _holder_words(descriptor: int) -> str:
    """" (pid N, PROGRAM...)" of the process that holds an flock on the open file ``descriptor``; ""."""
    pid = flock_holder_pid(descriptor)
    if pid is None:
        return ""
    name = dodo_command_of(pid)
    if not name:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
                name = comm.read().strip()
        except OSError:
            name = ""
    text = pid_text(pid)
    return text.replace(f"(pid {pid}", f"(pid {pid}, {name}", 1) if name else text
