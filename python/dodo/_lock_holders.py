"""Who holds a lock: the pid of a file's flock holder (/proc/locks), whether that process is stopped,
and the dodo command it runs; the words of the refusals of _atomic (output locks) and _hdf5_locks (an
HDF5 file open for writing elsewhere). Standard library only, as _atomic."""
from __future__ import annotations

import os
import re
from typing import Optional


def pid_text(pid: int) -> str:
    """" (pid N)", with a word where that process is stopped: a holder suspended with Ctrl-Z (or SIGSTOP,
    a batch system's suspend) keeps its lock, and "wait for it to end" was said of a process that does
    not run until it is continued (outside probe, data-loss round twelve)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        state = b""
    if state in (b"T", b"t"):
        return (f" (pid {pid}, stopped: it holds the lock until it is continued and ends; fg in its shell, or "
                f"kill -CONT {pid})")
    return f" (pid {pid})"


def flock_holder_pid(descriptor: int) -> Optional[int]:
    """The pid that holds an flock on the file open as ``descriptor``, from /proc/locks (Linux); None
    where it cannot be told (no /proc, no such lock, a pid this process cannot see)."""
    try:
        status = os.fstat(descriptor)
        with open("/proc/locks") as table:
            lines = table.read().splitlines()
    except (OSError, ValueError):
        return None
    device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    exact, same_inode = set(), set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":  # "->": a waiter, not a holder
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        if pid <= 0 or pid == os.getpid():
            continue
        if fields[5] == device:
            exact.add(pid)
        elif fields[5].rsplit(":", 1)[-1] == str(status.st_ino):  # an overlay file system's device
            same_inode.add(pid)
    found = exact or same_inode
    return found.pop() if len(found) == 1 else None


def dodo_command_of(pid: int) -> str:
    """"dodo COMMAND" when process ``pid`` runs a dodo command (``dodo train ...``, ``python -m dodo
    train ...``), from /proc/PID/cmdline; "" otherwise."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = [os.fsdecode(word) for word in handle.read().split(b"\0")]
    except (OSError, ValueError):
        return ""
    for number, word in enumerate(words[:-1]):
        dodo = os.path.basename(word) == "dodo" or (word == "dodo" and number > 0 and words[number - 1] == "-m")
        following = words[number + 1]
        if dodo and re.fullmatch(r"[a-z][a-z-]*", following):
            return f"dodo {following}"
    return ""
