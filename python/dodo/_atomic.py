"""Atomic file output: write to a temporary name in the same directory, fsync, os.replace.

An interrupted run therefore never leaves a half-written file under the final name. Temporary
names carry the writer's host and process id (``.NAME.HOST.PID.XXXX.tmp``), so the next write of
the same file removes the leftovers of a writer that was killed (SIGKILL, power loss) and is
no longer running on this host. Standard library only: used by the training side and by the
NumPy-only QKE solver alike.

Output safety, in one place for every command (:func:`check_outputs`, also applied by
:func:`atomic_path` itself): an output that is the same file as one of the command's inputs (same
path after resolving symlinks, or ``os.path.samefile``) is refused before anything is written; so
is an existing output that is not a regular file (a device such as ``/dev/null`` or ``/dev/full``,
a FIFO, a socket, a directory), which a rename would replace, and an output whose directory is
not a directory. An output that is a symlink is followed: the link's target is replaced
atomically and the link is kept. Inputs have their check here too (:func:`check_input_file`):
a data file must be a regular file, since opening a FIFO without a writer blocks for ever.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import signal
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from ._lock_holders import dodo_command_of as _dodo_command_of
from ._lock_holders import flock_holder_pid as _flock_holder_pid
from ._lock_holders import pid_text as _pid_text


class OutputPathError(ValueError):
    """An output path that must not be written: an input of the command, or not a regular file."""


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same path once symlinks are resolved, or
    (both existing) the same inode (``os.path.samefile``: hard links, bind mounts)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def file_key(path: str | Path):
    """What identifies the file ``path`` names, so that a file given twice (or through a link) is read
    once: (device, inode), or its resolved path when it cannot be stat'ed (its reader then says why)."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return os.path.realpath(path)
    return (status.st_dev, status.st_ino)


class InputPathError(ValueError):
    """An input path that cannot be read as a data file: missing, or not a regular file."""


def named(path) -> str:
    """``path`` as a message names it: as given, or quoted with its escapes (Python's repr) where it holds
    white space or a character that does not print. `dodo apply 'a  b.h5'` said "cannot read a b.h5", and
    $'new\\nfile.h5' "cannot read new file.h5": names that are not the file's (outside probe, Python round
    sixty-four). A byte that is not UTF-8 (held surrogate-escaped) prints as its byte, unquoted."""
    text = os.fsdecode(os.fspath(path))
    if all((char.isprintable() and not char.isspace()) or "\udc80" <= char <= "\udcff" for char in text):
        return text
    return repr(text)


def check_input_file(path: str | Path, expected: str = "a regular file") -> None:
    """Refuse, before opening it, an input that is missing or is not a regular file (a directory,
    a FIFO, a device, a socket; a symlink is judged by its target): opening a FIFO that has no
    writer blocks for ever, and HDF5's and YAML's own messages about the others are several raw
    lines. ``expected`` says what to give instead ("an Emu-layout HDF5 file"). Raises
    :class:`InputPathError`; the one check every command's data inputs go through."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):  # "no such file" of a link that is there (outside probe, Python round 48)
            try:
                raise InputPathError(f"cannot read {named(path)}: a symbolic link to {os.readlink(path)!r}, which does "
                                     "not exist (a dangling link: the file was moved or deleted)") from None
            except OSError:
                pass
        text = os.fspath(path)
        stripped = text.strip() if isinstance(text, str) else text
        if stripped != text and stripped and os.path.exists(stripped):  # 'data.h5\n' read from a list (round 48)
            raise InputPathError(f"cannot read {text!r}: no such file; its name has leading or trailing white space, "
                                 f"and {stripped!r} exists: give that name") from None
        hint = file_on_the_way_hint(path) or other_case_hint(path) or relative_to_cwd(path)
        if os.fspath(path) in ("-", b"-"):  # the shell's habit for standard input (outside probe, Python round 49)
            hint = " ('-' does not mean standard input here: each file is opened by its name; give the file's path)"
        elif os.fspath(path) in ("box3d", "default"):
            # `dodo score d.h5 box3d` (the arguments swapped) and `dodo apply box3d` (--model left out) said
            # "cannot read box3d: no such file" alone, of a word that names a model, never d.h5 (outside
            # probe, Python round fifty-four).
            hint = (f" ({os.fspath(path)!r} names a model, not a file: give the model where the command takes one, "
                    "e.g. dodo score MODEL DATA [DATA ...], dodo apply DATA --model MODEL)")
        raise InputPathError(f"cannot read {named(path)}: no such file{hint}") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputPathError(f"cannot read {named(path)}: {symbolic_link_loop_text(path)}: correct the link, or "
                                 "give the file's own path") from None
        raise InputPathError(f"cannot read {named(path)}: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        raise InputPathError(f"{named(path)} is {_file_kind(mode)}, not a regular file; give {expected}")


def symbolic_link_loop_text(path) -> str:
    """Words for a ``path`` whose resolution meets ELOOP: the links of the loop (``la -> lb -> la``), from the
    first link on the path that never reaches a file. "cannot write loop: Too many levels of symbolic links"
    said neither which link nor what to do (outside probe, data-loss round fourteen)."""
    text = os.fsdecode(os.fspath(path))
    parts = Path(text).parts
    for count in range(1, len(parts) + 1):
        prefix = str(Path(*parts[:count]))
        try:
            if not os.path.islink(prefix):
                continue
            os.stat(prefix)
            continue  # a link that reaches something
        except OSError as error:
            if error.errno != errno.ELOOP:
                break
        chain, seen, current = [prefix], {os.path.abspath(prefix)}, prefix
        for _ in range(8):  # a bound on the words; the loop is named by its first repeat
            try:
                target = os.readlink(current)
            except OSError:
                break
            chain.append(target)
            current = os.path.join(os.path.dirname(current), target)
            if os.path.abspath(current) in seen or not os.path.islink(current):
                break
            seen.add(os.path.abspath(current))
        where = "" if prefix == text else " on its path"
        return f"a symbolic link{where} leads into a loop of links ({' -> '.join(chain)}) and never reaches a file"
    return "a symbolic link on its path leads into a loop of links and never reaches a file"


def file_on_the_way_hint(path) -> str:
    """Where a path names nothing because a part of it before its end is a file: "m.onnx/" (a trailing
    slash, from "$RUN/model.onnx/" or a directory's completion habit) or "m.onnx/x.onnx" was "model
    package 'm.onnx/' does not exist" of a package that does, and `dodo score box3d data.h5/` "cannot read
    data.h5/: no such file" (outside probe, Python round forty-nine). Empty where no part is a file."""
    if not isinstance(path, str):
        path = os.fsdecode(path)
    stem = path.rstrip(os.sep)
    if stem and stem != path and os.path.isfile(stem):
        return f" (a trailing '/' asks for a directory; {stem!r} is a file: give it without the '/')"
    head = os.path.dirname(stem)
    while head and head != os.path.dirname(head):
        if os.path.isfile(head):
            return f" ({head!r}, a part of the path, is a file, not a directory)"
        head = os.path.dirname(head)
    return ""


#: Most directory entries a refusal's hint looks at: a hint must not cost a scan of a scratch directory
#: of millions of files (a stat each on a parallel file system) before the one-line refusal.
HINT_SCAN_ENTRIES = 10_000


def file_names_in(directory) -> list:
    """Names of the regular files (a symbolic link judged by its target) among the first
    HINT_SCAN_ENTRIES entries of ``directory``, for a refusal's hint; [] where it cannot be read."""
    names = []
    try:
        with os.scandir(directory) as entries:
            for count, entry in enumerate(entries):
                if count >= HINT_SCAN_ENTRIES:
                    break
                try:
                    if entry.is_file():
                        names.append(entry.name)
                except OSError:
                    continue
    except (OSError, ValueError):
        return []
    return names


def other_case_hint(path) -> str:
    """Where a path names nothing but a file of its directory differs from its name in letter case only:
    `Model.onnx` for `model.onnx`, a script written on a case-insensitive file system (macOS, Windows)
    and run on a cluster's: "does not exist" of a package that is there (outside probe, Python round
    forty-nine). Empty otherwise (several such files: none named)."""
    if not isinstance(path, str):
        path = os.fsdecode(path)
    directory, name = os.path.split(path)
    if not name:
        return ""
    # Also a name in the other Unicode form: `modèle.onnx` typed (NFC, one character for è) for a file that
    # macOS named in NFD (e and a combining accent), copied to Linux, where the two are different names
    # (outside probe, Python round fifty).
    import unicodedata

    def folded(text: str) -> str:
        return unicodedata.normalize("NFC", text).casefold()

    matches = [entry for entry in file_names_in(directory or os.curdir)
               if entry != name and folded(entry) == folded(name)]
    if len(matches) != 1:
        return ""
    found = matches[0]
    if unicodedata.normalize("NFC", found) == unicodedata.normalize("NFC", name):
        # The two print alike: both shown with their escapes.
        return (f" ({ascii(os.path.join(directory, found))} exists, and {ascii(path)} was given: file names differ in "
                "their Unicode form only (an accented letter as one character, NFC, or as a letter and a combining "
                "accent, NFD, as macOS writes names): give the name in the file's form (Python: "
                "unicodedata.normalize('NFD', name) or 'NFC'), or rename the file)")
    return f" ({os.path.join(directory, found)!r} exists: file names differ in letter case here)"


def relative_to_cwd(path) -> str:
    """`` (relative to the current directory D)`` for a relative path that is not there, else "": a
    config's relative paths are read from the current directory, so `dodo train --config
    /repo/training/configs/C.yaml` run from elsewhere said `cannot read pdata/x.h5: no such file` of a
    file that exists under /repo (outside probe, round 30)."""
    try:
        text = os.fsdecode(path)
        return "" if os.path.isabs(text) else f" (relative to the current directory {os.getcwd()})"
    except (OSError, TypeError, ValueError):
        return ""


def check_output_target(path: str | Path, appended: bool = False) -> None:
    """Refuse an output that a file written atomically cannot replace safely: an existing
    non-regular file (device, FIFO, socket, directory; a symlink is judged by its target), or
    a path below something that is not a directory, or a path ending in a slash (a directory's
    spelling: Path() drops the slash, so ``-o results/`` wrote a file named ``results``). Raises
    :class:`OutputPathError`. ``appended``: a file the command appends to in place (dodo train's
    train.log), not replaced: judged by whether it opens for appending, not by the sticky bit."""
    text = os.fspath(path)
    if isinstance(text, str) and text.endswith((os.sep, "/")) or isinstance(text, bytes) and text.endswith(b"/"):
        raise OutputPathError(f"cannot write {os.fsdecode(text)}: a path ending in / names a directory; give a "
                              f"file name (e.g. {os.fsdecode(text)}NAME)")
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        mode = None  # reported below, by the ancestor that is not a directory
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputPathError(f"cannot write {path}: {symbolic_link_loop_text(path)}: correct or remove the link, "
                                  "or choose another output") from None
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputPathError(f"cannot write {path}: it exists and is {_file_kind(mode)}, not a regular file; "
                              f"choose a regular file as the output{_standard_stream_hint(path)}")
    stream = _standard_stream_of(path) if mode is not None and not appended else None
    if stream is not None:
        # `dodo score D --json /dev/stdout >> run.log` (or --json run.log, or 2>> run.log): the rename put the
        # report in place of run.log, whose earlier lines were lost, and what the command printed went to the
        # replaced file, in no directory any more (outside probe, data-loss round fourteen).
        raise OutputPathError(f"cannot write {path}: it is the file this process's {stream} goes to "
                              f"({os.path.realpath(path)}); dodo writes a new file and renames it over the old one, "
                              f"which would replace that file (its earlier contents lost) and lose what the command "
                              f"prints: give another path{_standard_stream_hint(path, always=True)}")
    if mode is not None and not os.access(path, os.W_OK):
        # A rename replaces a file its owner made read-only (chmod a-w on a finished result), which
        # open(path, "w") refuses: refuse it too (root may write any file, as with open).
        raise OutputPathError(f"cannot write {path}: it exists and is read-only (no write permission); make it "
                              "writable or choose another output")
    if mode is not None and not appended:
        from ._hdf5_locks import held_for_writing_by

        holder = held_for_writing_by(path)
        if holder is not None:
            # `dodo synth OUT --overwrite` (any atomic write) of an HDF5 file that an h5py session, Emu or another
            # program still had open for writing, or one suspended with it open (Ctrl-Z, SIGSTOP): the rename took
            # the file from under that writer, whose writes from then on went to a file no longer in any
            # directory, lost when it closed it (outside probe, data-loss round fourteen).
            raise OutputPathError(f"cannot write {path}: another process has it open for writing{holder} (HDF5's "
                                  "file lock); dodo writes a new file and renames it over the old one, which would "
                                  "take the file from under that writer and lose what it writes from then on: wait "
                                  "until it closes the file, or choose another output")
    if mode is not None and not appended and _is_mount_point(path):
        # A file bind-mounted onto the output (`docker run -v $PWD/score.json:/work/score.json`, a batch
        # system's staged file): the rename over it fails with EBUSY, and `dodo score --json` did all its
        # work, then said "[Errno 16] Device or resource busy: 'score.json'" (outside probe, data-loss
        # round twelve).
        raise OutputPathError(f"cannot write {path}: it is a mount point (a file mounted there, e.g. by docker run "
                              "-v FILE:PATH); dodo writes a new file and renames it over the old one, which a mount "
                              "point refuses: mount its directory instead, or choose another output")
    sticky = _sticky_directory_refusing_replacement(path) if mode is not None else None
    if sticky is not None and appended:
        # Appended in place, as dodo train's train.log: the sticky bit does not stop that. It was refused
        # with "dodo writes a new file and renames it over the old one", of a file that is never renamed
        # (outside probe, data-loss round eleven, left). Where the kernel refuses the open itself
        # (fs.protected_regular: another user's file in a world-writable sticky directory), say so.
        try:
            os.close(os.open(os.path.realpath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NO_FOLLOW_NO_BLOCK))
            sticky = None
        except OSError as error:
            raise OutputPathError(f"cannot append to {path}: it belongs to another user and {sticky} is a sticky "
                                  f"directory (mode +t, as /tmp), where the system refuses to open it "
                                  f"({error.strerror or error}): have its owner remove it, or choose another "
                                  "directory") from None
    if sticky is not None:
        # Another user's file in a sticky directory (/tmp, a shared scratch directory of mode 1777) may be
        # written in place but not replaced by a rename: `dodo synth OUT --overwrite` (any atomic write)
        # of a colleague's world-writable OUT did all its work, then said "no permission to create files
        # in DIR (made read-only while this command wrote it?)" of a directory nobody had touched
        # (outside probe, data-loss round eleven).
        raise OutputPathError(f"cannot write {path}: it belongs to another user and {sticky} is a sticky directory "
                              "(mode +t, as /tmp), where only a file's owner may replace it; dodo writes a new file "
                              "and renames it over the old one: have its owner remove it, or choose another output")
    ancestor = Path(os.path.realpath(path)).parent if mode is None and os.path.islink(path) else path.parent
    while True:  # the nearest existing ancestor must be a directory
        try:
            ancestor_mode = os.stat(ancestor).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(ancestor):  # mkdir would say "File exists" of a directory that is not there
                raise OutputPathError(f"cannot write {path}: {ancestor} is a symbolic link to "
                                      f"{os.readlink(ancestor)}, which does not exist (a dangling link)") from None
            if ancestor == ancestor.parent:
                return
            ancestor = ancestor.parent
            continue
        except OSError:
            return  # let the write itself report it
        if not stat.S_ISDIR(ancestor_mode):
            raise OutputPathError(f"cannot write {path}: {ancestor} is not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            # Before any work: `dodo score --json DIR/F` into a directory the user cannot write
            # computed and printed its whole table, then failed at the write (deployment probe).
            raise OutputPathError(f"cannot write {path}: no permission to create files in {ancestor} (or it is on a "
                                  "read-only file system); choose another output")
        return


def check_outputs(outputs: Iterable[Optional[str | Path]], inputs: Iterable[Optional[str | Path]] = (),
                  writer: str | None = None, check_locks: bool = True, appended: Iterable = ()) -> None:
    """What every command that writes files checks before any work (None entries are skipped):
    no output is the same file as an input or as another output, and each output passes
    :func:`check_output_target`, and its directory, where it exists, takes a new file (one is made and
    removed at once). Raises :class:`OutputPathError` naming both paths; and no output is
    being written by another process (:func:`refuse_output_locked_elsewhere`: OutputInUseError;
    ``writer``, the asking command, names a holder whose lock does not say; ``check_locks`` false: not
    that, nor the file made, for the MPI ranks of a `dodo simulate` other than rank 0, which holds the
    job's lock and writes). ``appended``: those of ``outputs`` appended to in place, not replaced
    (:func:`check_output_target`)."""
    outputs = [output for output in outputs if output is not None and str(output) != ""]
    inputs = [given for given in inputs if given is not None and str(given) != ""]
    appended = list(appended)
    for number, output in enumerate(outputs):
        if check_locks:  # a running dodo simulate's OUT: before any work
            refuse_output_locked_elsewhere(output, writer=writer)
        for given in inputs:
            if same_file(output, given):
                # Two names of one inode (a hard link) do not resolve to one path: "(both are OUTPUT)"
                # said a thing of the input that was not so (outside probe, round 23).
                same = ("" if str(output) == str(given) else f" (both are {os.path.realpath(output)})"
                        if os.path.realpath(output) == os.path.realpath(given) else " (hard links to one file)")
                raise OutputPathError(f"output {output} is the same file as the input {given}{same}; writing it would "
                                      "destroy the input: choose another output")
        for other in outputs[:number]:
            if same_file(output, other):
                raise OutputPathError(f"outputs {other} and {output} are the same file; give different paths")
        check_output_target(output, appended=any(output == other for other in appended))
        if check_locks:  # not on the ranks of an MPI job that do not write (10^4 trial files at once)
            _refuse_directory_that_creates_no_files(output)
    for output in outputs:
        _remember_as_found(output)


def _refuse_directory_that_creates_no_files(output) -> None:
    """Refuse, before any work, an output whose existing directory will not take a new file: one
    temporary is made there and removed at once. ``os.access`` answers yes to root for any directory
    of a writable file system, but /proc refuses every new file ("No such file or directory") and
    /sys does ("Permission denied"): `dodo apply -o /proc/x.h5` (or /sys/...) as root did all its
    work, then failed at the write, /proc's refusal reported as "the directory keeps disappearing"
    (outside probe, round forty-four). A directory still to be made is judged by the write itself."""
    final = Path(os.path.realpath(output))
    if not final.parent.is_dir():
        return
    try:
        descriptor, trial = tempfile.mkstemp(prefix=_temporary_prefix(final), suffix=".tmp", dir=final.parent)
    except OSError as error:
        raise OutputPathError(f"cannot write {output}: cannot create a file in {final.parent}: "
                              f"{_creation_refusal(error, final.parent)}") from None
    os.close(descriptor)
    with contextlib.suppress(OSError):
        os.unlink(trial)


def _creation_refusal(error: OSError, directory: Path) -> str:
    """Why ``directory`` refused a new file (``error``, from creating it), for a message: ENOENT from
    a directory that is there is a file system that makes no files (/proc), not a missing directory."""
    text = error.strerror or str(error)
    if isinstance(error, FileNotFoundError) and directory.is_dir():
        return (f"its file system refuses new files ({text}, from a directory that exists: a pseudo file system "
                "such as /proc?); choose another output")
    return text


def _standard_stream_of(path) -> Optional[str]:
    """"standard output" or "standard error" when the existing regular file ``path`` is the file this process's
    descriptor 1 or 2 writes to (a shell's redirection: `> F`, `>> F`, named as F, /dev/stdout or /dev/fd/1),
    else None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    for descriptor, name in ((1, "standard output"), (2, "standard error")):
        try:
            stream = os.fstat(descriptor)
        except OSError:
            continue
        if stat.S_ISREG(stream.st_mode) and os.path.samestat(stream, status):
            return name
    return None


def _standard_stream_hint(path, always: bool = False) -> str:
    """For an output named as a standard stream (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N): where the
    command writes its report to standard output, '-' says so."""
    text = os.fsdecode(os.fspath(path))
    named = text in ("/dev/stdout", "/dev/stderr") or re.fullmatch(r"/(dev|proc/self)/fd/\d+", text) is not None
    return " (for standard output, give '-' where the command takes it, e.g. --json -)" if named or always else ""


def _is_mount_point(path) -> bool:
    """Whether the existing file ``path`` (a symlink's target) is a mount point: in /proc/self/mountinfo
    (Linux; mount points there are written with octal escapes for space, tab, newline and backslash).
    Not judged by the file's device against its directory's: on overlayfs (a container's root) files
    and directories report different devices. False where it cannot be told."""
    final = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", "rb") as table:
            lines = table.read().splitlines()
    except OSError:
        return False
    wanted = os.fsencode(final)
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:
            point = re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8)]), fields[4])
            if point == wanted:
                return True
    return False


def _sticky_directory_refusing_replacement(path) -> Optional[Path]:
    """The directory of the existing file ``path`` (a symlink's target) where a rename over it will be
    refused: a sticky directory (S_ISVTX) when neither the file nor the directory is this process's
    and the process lacks CAP_FOWNER; None otherwise, or where it cannot be told."""
    if not hasattr(os, "geteuid"):
        return None
    final = Path(os.path.realpath(path))
    try:
        file_status, directory_status = os.stat(final), os.stat(final.parent)
    except OSError:
        return None
    user = os.geteuid()
    if not directory_status.st_mode & stat.S_ISVTX or user in (file_status.st_uid, directory_status.st_uid):
        return None
    return None if _may_override_sticky_bit(user) else final.parent


def _may_override_sticky_bit(user: int) -> bool:
    """Whether this process has CAP_FOWNER (bit 3 of CapEff in /proc/self/status); without /proc,
    whether it is root."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 3 & 1)
    except (OSError, ValueError, IndexError):
        pass
    return user == 0


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def atomic_path(final: str | Path):
    """Yield a temporary path next to ``final``; on success fsync it and rename onto ``final``.

    ``final`` must be a regular file or absent (:func:`check_output_target`, checked before and
    again just before the rename); a symlink is followed, so its target is replaced and the link kept.
    """
    given = final
    final = Path(final)
    check_output_target(final)
    if os.path.islink(final):
        final = Path(os.path.realpath(final))
    refuse_output_locked_elsewhere(final, given)
    # The one file this write may replace: what the command found there when it checked its outputs
    # (check_outputs, inside outputs_as_found: dodo's commands), else what is there now.
    scope, key = (_FOUND_AT_START[-1] if _FOUND_AT_START else None), os.path.realpath(final)
    found = scope[key] if scope is not None and key in scope else _identity(final)
    # Where this process holds a lock in the directory (dodo simulate's .OUT.lock, dodo train's), what became
    # of it: moved, and where to, or moved and another directory made in its place (which is_dir() took for
    # the same directory: the write went into the new one).
    # Whether or not the command found the file: `dodo train-ensemble` whose checkpoint directory (its lock's)
    # was moved while it trained wrote its checkpoint into a directory made again at the path, outside its
    # lock, exit 0 (outside probe, open items of data-loss round fourteen).
    fate = held_directory_fate(final.parent)
    found_here = scope is not None and scope.get(key) is not None
    if fate is not None or (found_here and not final.parent.is_dir()):
        # The directory of a file the command found (or wrote) there is gone: `rm -rf ck` (or `mv ck
        # ck.old`) during `dodo train` was made again by the next checkpoint's mkdir, and the run went on
        # in a new ck without its lock (another run could start there) and without its best.pt (the end
        # then failed when no later epoch beat it) (data-loss probe, round five).
        if fate is None:
            what = "was removed (or moved)"
        elif fate[0] == "removed":
            what = "was removed"
        else:
            what = ("was moved or renamed" + (f" (it is now {fate[1]})" if fate[1] else "")
                    + (" and another directory made in its place" if fate[0] == "replaced" else ""))
        had = f", with the {final.name} it had found or written there" if found_here else ""
        raise OutputPathError(f"cannot write {given}: its directory {final.parent} {what} while this "
                              f"command ran{had}; it is not made again: nothing more is written there")
    # The directories made for this output, removed again (when empty) if the write fails: a failed
    # `dodo preprocess -o new/dir/out.h5` left new/dir/ behind (outside probe, round 23).
    made = missing_directories([final.parent])
    for attempt in range(3):
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(final)
            fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(final), suffix=".tmp", dir=final.parent)
            break
        except FileNotFoundError as error:  # another writer's failed write removed the new directory meanwhile
            if attempt < 2 and not final.parent.is_dir():
                continue
            remove_empty_directories(made)
            # A directory that is there and still gives ENOENT (/proc) did not "keep disappearing".
            why = _creation_refusal(error, final.parent) if final.parent.is_dir() else "the directory keeps disappearing"
            raise OutputPathError(f"cannot write {given}: cannot create a file in {final.parent}: {why}") from None
        except OSError as error:  # named by the output asked for, not by the temporary nobody knows of
            remove_empty_directories(made)
            raise OutputPathError(f"cannot write {given}: cannot create a file in {final.parent}: "
                                  f"{error.strerror or error}") from None
    # The temporary's (device, inode) and its directory held open: a directory moved (renamed) while the file was
    # written (`mv run run.old`, a cleaner's rename; a network file system's rename by another client) took the
    # temporary with it, where the path could no longer remove it: `dodo synth d/big.h5` left a 291 MB
    # `.big.h5.*.tmp` in the moved directory and said "its directory d was removed", or, with a new d made
    # meanwhile, "its temporary ... was removed by another process" (outside probe, data-loss round fourteen).
    written = _file_identity(fd)
    directory = _open_directory(final.parent)
    # Held open with a shared flock while the temporary is written: what tells another process that its
    # writer still runs (stale_temporaries), where the pid in its name cannot (a writer in another pid
    # namespace, a container with the host's name: its live temporary was removed as a dead writer's,
    # and the write ended with "[Errno 2] No such file or directory: OUT"; outside probe, data-loss round
    # twelve). Shared, so that HDF5's own lock of a reader is not refused.
    live = _hold_as_written(fd)
    try:
        # mkstemp makes 0600; a new file gets the usual mode, a replaced one keeps its own (a
        # private 0600 result must not become world-readable by being rewritten).
        try:
            _keep_owner(tmp, os.stat(final))
            os.chmod(tmp, stat.S_IMODE(os.stat(final).st_mode) & 0o777)
            _keep_extended_attributes(tmp, final)
        except FileNotFoundError:
            os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        _refuse_directory_moved(directory, final, given)  # the rename would go to another directory's file
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        check_output_target(final)  # nothing put a device, FIFO or directory there meanwhile
        refuse_output_locked_elsewhere(final, given)  # nor did a dodo simulate of that file start meanwhile
        refuse_written_meanwhile(final, given, found)  # nor did another command write it meanwhile
        live = _let_go(live)
        os.replace(tmp, final)
        if _WRITTEN and str(given) not in _WRITTEN[-1]:
            _WRITTEN[-1].append(str(given))
        if scope is not None:  # this command's own file from now on (dodo train writes best.pt each epoch)
            scope[key] = _identity(final)
        _fsync_directory(final.parent)
    except BaseException as error:
        live = _let_go(live)
        vanished = isinstance(error, FileNotFoundError) and not os.path.lexists(tmp)
        left = ""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as unlink_error:
            # A directory made read-only during the write (chmod a-w, a file system remounted read-only):
            # the rename and the removal both fail. The removal's "[Errno 13] Permission denied:
            # '/d/.o.h5.HOST.PID.x8k2ab.tmp'" replaced the error and named the temporary as if it were the
            # output, and nothing said that a file as large as the output was left (round three).
            left = (f" (its temporary {tmp} could not be removed: {unlink_error.strerror or unlink_error}; remove it "
                    "once the directory is writable)")
        _remove_moved_temporary(directory, os.path.basename(tmp), written)
        fate = _directory_fate(directory, final.parent)
        directory = _close_directory(directory)
        remove_empty_directories(made)
        if isinstance(error, OSError) and error.errno is not None and (
                error.filename is None or os.fsdecode(error.filename) == os.fsdecode(tmp)):
            if isinstance(error, FileNotFoundError) and fate is not None:
                raise DirectoryMovedError(_directory_moved_text(given, final.parent, fate)) from None
            if isinstance(error, FileNotFoundError) and not os.path.isdir(final.parent):
                # `rm -rf` of the output's directory during the write: "[Errno 2] No such file or
                # directory: '/d/.o.h5.HOST.PID.x8k2ab.tmp'", of a file nobody asked for (round three).
                raise OutputPathError(f"cannot write {given}: its directory {final.parent} was removed while this "
                                      "command wrote it; nothing was written") from None
            if vanished:
                # The temporary removed by another process (`rm .*.tmp`, a cleaner of old files): "[Errno 2] No
                # such file or directory: OUT" named the output, which had not been touched.
                raise OutputPathError(f"cannot write {given}: its temporary {tmp} was removed by another process "
                                      "while this command wrote it; nothing was written (an earlier "
                                      f"{final.name} is untouched): run the command again") from None
            if isinstance(error, PermissionError):
                raise OutputPathError(f"cannot write {given}: no permission to create files in {final.parent} (made "
                                      "read-only while this command wrote it?); the file there is untouched" + left
                                      ) from None
            # A failed write() names no file (`dodo score --json F` on a full disk said only "[Errno 28]
            # No space left on device"), nor should the temporary be named: the output asked for is
            # (same errno, same OSError subclass).
            raise OSError(error.errno, (error.strerror or str(error)) + _file_size_limit_hint(error, final) + left,
                          str(given)) from None
        if left and isinstance(error, OutputPathError):  # a refusal at the rename: say what it left
            raise type(error)(f"{error}{left}") from None
        raise
    finally:
        _close_directory(directory)


class DirectoryMovedError(OutputPathError):
    """The output's directory was moved, replaced or removed while atomic_path wrote the file."""


class HeldDirectory:
    """A directory held open (O_PATH) for a long command (dodo train's checkpoint and results directories):
    ``fate()`` says what became of it (None while it is still at its path, else as _directory_fate:
    ("removed", ""), ("moved", where it is now) or ("replaced", where it is now)); ``close()`` lets it go."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.descriptor = _open_directory(self.path)

    def fate(self) -> Optional[tuple[str, str]]:
        return _directory_fate(self.descriptor, self.path)

    def close(self) -> None:
        self.descriptor = _close_directory(self.descriptor)


def _file_identity(descriptor: int):
    """(device, inode) of the open file ``descriptor``; None where it cannot be told."""
    try:
        status = os.fstat(descriptor)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _open_directory(directory: Path) -> Optional[int]:
    """``directory`` held open (O_PATH where there is one: no read permission needed) for the write, so
    that the temporary can be found again if the directory is moved; None where it cannot be opened (too
    many open files: the write goes on as before, without that)."""
    flags = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(directory, flags)
    except OSError:
        return None


def _close_directory(directory: Optional[int]) -> None:
    if directory is not None:
        with contextlib.suppress(OSError):
            os.close(directory)
    return None


def _directory_fate(directory: Optional[int], path: Path) -> Optional[tuple[str, str]]:
    """What became of the directory held open as ``directory`` (opened at ``path``): None while ``path``
    is still that directory (or where it cannot be told); else ("removed", "") or ("moved", where it is
    now, "" if unknown), with "replaced" for a moved one whose path now names another directory."""
    if directory is None:
        return None
    try:
        held = os.fstat(directory)
    except OSError:
        return None
    try:
        if os.path.samestat(held, os.stat(path)):
            return None
        replaced = True
    except OSError:
        replaced = False
    if held.st_nlink == 0:
        return ("removed", "")
    try:
        where = os.readlink(f"/proc/self/fd/{directory}")
    except OSError:
        where = ""
    if where.endswith(" (deleted)"):
        return ("removed", "")
    return ("replaced" if replaced else "moved", where)


def _directory_moved_text(given, parent: Path, fate: tuple[str, str]) -> str:
    kind, where = fate
    if kind == "removed":
        return f"cannot write {given}: its directory {parent} was removed while this command wrote it; nothing was written"
    now = f" (it is now {where})" if where else ""
    instead = " and another directory made in its place" if kind == "replaced" else ""
    return (f"cannot write {given}: its directory {parent} was moved or renamed{now}{instead} while this command "
            "wrote it; nothing was written (the unfinished file was removed): run the command again with the output "
            "where you want it")


def _refuse_directory_moved(directory: Optional[int], final: Path, given) -> None:
    """Raise DirectoryMovedError when the output's directory is no longer at its path: the rename would put
    the file into another directory made there meanwhile, or fail."""
    fate = _directory_fate(directory, final.parent)
    if fate is not None:
        raise DirectoryMovedError(_directory_moved_text(given, final.parent, fate))


def _remove_moved_temporary(directory: Optional[int], name: str, written) -> None:
    """Remove the temporary ``name`` from the directory held open as ``directory`` when it is still the file
    this write made (``written``, its (device, inode)): where its path could not reach it (the directory
    moved), it was left there, as large as the output."""
    if directory is None or written is None:
        return
    with contextlib.suppress(OSError, NotImplementedError):
        status = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if (status.st_dev, status.st_ino) == written and stat.S_ISREG(status.st_mode):
            os.unlink(name, dir_fd=directory)


def _file_size_limit_hint(error: OSError, final: Path) -> str:
    """For EFBIG under a file-size limit (`ulimit -f`, a batch system's per-process file limit): the limit, and
    that the earlier file is untouched. "[Errno 27] File too large: 'a.h5'" alone named neither the limit nor
    what to do (outside probe, data-loss round thirteen)."""
    if error.errno != errno.EFBIG:
        return ""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return ""
    if limit == resource.RLIM_INFINITY:
        return ""
    kept = f"; the earlier {final.name} is untouched" if os.path.lexists(final) else "; nothing was written"
    return (f" (this process may write files of at most {limit:,} bytes: its file-size limit, ulimit -f; raise it, "
            f"e.g. ulimit -f unlimited, or write a smaller file{kept})")


def _hold_as_written(descriptor: int) -> Optional[int]:
    """``descriptor`` (the new temporary's) kept open with a shared flock, or closed and None where there
    are no flocks."""
    try:
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return descriptor
    except (ImportError, OSError):
        os.close(descriptor)
        return None


def _let_go(descriptor: Optional[int]) -> None:
    if descriptor is not None:
        # Unlocked before it is closed: a process forked (by another thread) during the write holds a copy
        # of the descriptor, and the flock of the open file it shares lived on until that child ended; the
        # file renamed into place kept a shared flock, and an HDF5 writer (an exclusive lock) of it was
        # refused meanwhile (outside probe, data-loss round thirteen; round twelve's open item).
        with contextlib.suppress(ImportError, OSError):
            import fcntl

            fcntl.flock(descriptor, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(descriptor)
    return None


def flock_is_held(path, open_flags: int) -> Optional[bool]:
    """Whether another open file holds a flock on ``path`` (opened with ``open_flags``): True, False, or None
    where it cannot be told (no flocks, a path this process may not open). Tried with an exclusive lock that
    is let go at once."""
    try:
        import fcntl

        descriptor = os.open(path, open_flags)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(descriptor)  # also lets go of the lock just taken


def _being_written(temporary: Path) -> Optional[bool]:
    """Whether a writer holds ``temporary``'s flock (:func:`_hold_as_written`): True, False, or None where it
    cannot be told (no flocks, a file this process may not open)."""
    try:
        if not stat.S_ISREG(os.lstat(temporary).st_mode):  # no open of a device or FIFO planted under its name
            return None
    except OSError:
        return None
    return flock_is_held(temporary, os.O_RDONLY | _NO_FOLLOW_NO_BLOCK)


def _keep_owner(tmp: str, earlier: os.stat_result) -> None:
    """Give the new file ``tmp`` the owner and group of the file it replaces, where this process may
    (its own group, a group it belongs to; root any): a result shared with a project group (chgrp proj
    out.h5; chmod 640) became the writer's primary group on its next write, and the group could no longer
    read it; root's rewrite of a user's file made it root's (outside probe, data-loss round twelve).
    What may not be kept is left as a new file gets it (as sed -i does)."""
    if not hasattr(os, "chown"):
        return
    try:
        mine = os.stat(tmp)
    except OSError:
        return
    uid = earlier.st_uid if earlier.st_uid != mine.st_uid else -1
    gid = earlier.st_gid if earlier.st_gid != mine.st_gid else -1
    for owner, group in ((uid, gid), (-1, gid)):
        if owner == -1 and group == -1:
            return
        try:
            os.chown(tmp, owner, group)
            return
        except OSError:
            continue


def _keep_extended_attributes(tmp: str, final: Path) -> None:
    """Copy the extended attributes of the file being replaced onto the new one, where this process may:
    its access control list (system.posix_acl_access: `setfacl -m u:bob:r out.h5`, a result shared with
    one colleague) and user.* attributes were lost on its next write, and the colleague could no longer
    read it (outside probe, data-loss round twelve). What may not be copied is left out."""
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(final)
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            os.setxattr(tmp, name, os.getxattr(final, name))


def _identity(path: Path):
    """(device, inode, size, modification time) of the file at ``path``; None when there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


class WrittenMeanwhileError(OutputPathError):
    """Another process wrote the output while this write ran (atomic_path's check before its rename)."""


#: One {real path: _identity} per command running in this process (outputs_as_found): what each
#: output was when the command checked it (check_outputs), or after the command's own last write of it.
_FOUND_AT_START: list[dict] = []
#: One list per command running in this process (outputs_as_found): the outputs (as given) that
#: atomic_path has renamed into place, complete, so far.
_WRITTEN: list[list[str]] = []


@contextlib.contextmanager
def outputs_as_found():
    """For the block (one command, dodo.cli.main): the outputs :func:`check_outputs` checks are
    remembered as they were then, and :func:`atomic_path` refuses to rename onto one that another
    process has written since (:func:`refuse_written_meanwhile`): the command's check of what it may
    replace (its own kind of file, or --overwrite) was made on that file, not on one that appeared
    during its work (the training of `dodo train-ensemble`, the bootstrap of `dodo score`, a long
    `dodo preprocess`). Outside such a block, the file there when the write begins is the one.
    Yields the list of the outputs written (renamed into place) so far, as they were given."""
    _FOUND_AT_START.append({})
    _WRITTEN.append([])
    try:
        yield _WRITTEN[-1]
    finally:
        _FOUND_AT_START.pop()
        _WRITTEN.pop()


def _remember_as_found(output) -> None:
    if _FOUND_AT_START:
        key = os.path.realpath(output)
        _FOUND_AT_START[-1].setdefault(key, _identity(key))  # the first check (the command's start) wins


def refuse_written_meanwhile(final: Path, given, found) -> None:
    """Refuse the rename onto ``final`` when a file is there that was not when the command checked
    its outputs (``found``, :func:`_identity` then; see :func:`outputs_as_found`), or when the write
    began: another process wrote it meanwhile (two `dodo synth -o OUT` at once; a `dodo simulate OUT`
    started and ended during a `dodo preprocess` to OUT; `cp` of a model onto output.checkpoint during
    a `dodo train-ensemble`). The rename replaced it without a word, after the command's check of what
    it may replace had passed on what was there when it began (outside probe, data-loss round two,
    left; round three). That file is kept; this command's output is not written. A file that went
    away meanwhile (the write's own rotation, `last.pt` -> `last.prev.pt`; `--overwrite` moving an
    earlier run aside) is no loss. Between this check and the rename a few system calls remain."""
    now = _identity(final)
    if now is None or now == found:
        return
    what = "appeared there" if found is None else "was replaced or changed there"
    raise WrittenMeanwhileError(
        f"cannot write {given}: a file {what} while this command ran (another process wrote it): it is kept as "
        "it is, and this command's output was not written; run the command again to replace it, or choose "
        "another output")


class InUseError(ValueError):
    """Another process holds the lock of a run's directory or output file."""


class DirectoryInUseError(InUseError):
    """Another process holds the directory's lock (exclusive_directory)."""


class OutputInUseError(InUseError):
    """Another process holds the output file's lock (exclusive_output)."""


#: The lock file exclusive_directory keeps in a run's directory (empty but for the holder's pid).
LOCK_NAME = ".dodo.lock"


@contextlib.contextmanager
def exclusive_directory(directory: str | Path, command: str):
    """Hold ``directory``'s lock for the block: a second process that asks for it (another `dodo
    train` into the same checkpoint directory, another `dodo study` of the same tag) is refused at
    once with DirectoryInUseError instead of writing the same files. An flock on LOCK_NAME: the
    kernel releases it when the holder exits, however it ends (killed too), so a stale file never
    blocks; on a file system without locks the block runs unguarded."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The holder is named by the command it wrote in the lock: `dodo train-ensemble` refused by a
    # running `dodo train` in the same directory said "in use by another dodo train-ensemble" (its
    # own name; data-loss probe, round four).
    with _flock(directory / LOCK_NAME, remove=False, command=command, refuse=lambda holder, holding: DirectoryInUseError(
            f"{directory} is in use by another {holding or command}{holder}: wait for it to end, or choose another "
            "directory" + launched_ranks_hint(command))):
        yield


def launched_ranks_hint(command: str, environ=None) -> str:
    """A refusal's tail when an MPI launcher's world size above 1 is in the environment: `mpirun -n 2
    dodo train` (or train-ensemble, or `dodo simulate` without mpi4py's ranks) ran the whole command in
    every rank, and all but one stopped at the run's lock, "in use by another dodo train (pid N)",
    their sibling named as a stranger (outside probe, round 30). Empty otherwise."""
    environ = os.environ if environ is None else environ
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        value = str(environ.get(name, "")).strip()
        if value.isdecimal() and int(value) > 1:  # "²".isdigit() but int("²") fails
            return (f" ({name}={value} in the environment: if this is one of {value} ranks of mpirun or srun, each "
                    f"rank runs the whole {command}, and another rank holds the lock; only dodo simulate shares its "
                    "work over MPI ranks (and dodo train over torchrun's processes): run it as one process)")
    return ""


def missing_directories(directories) -> list[Path]:
    """The directories that making ``directories`` (each with its parents) would create, deepest
    first: those a failed command removes again when it left nothing in them
    (:func:`remove_empty_directories`)."""
    missing: list[Path] = []
    for directory in directories:
        directory = Path(directory).absolute()
        while not directory.exists() and directory != directory.parent:
            if directory not in missing:
                missing.append(directory)
            directory = directory.parent
    return sorted(missing, key=lambda path: len(path.parts), reverse=True)


def remove_empty_directories(made, locked: str | Path | None = None) -> None:
    """After a failed `dodo train` or `dodo study`: remove the directories it made (``made``, from
    :func:`missing_directories`, deepest first) that hold nothing, or nothing but the lock file of
    :func:`exclusive_directory` in ``locked`` (held by the caller until its block ends; a process
    that asks for it meanwhile is refused as before). A failed `dodo train --resume` left an empty
    checkpoint directory with its `.dodo.lock`, and an empty results directory; a failed study an
    empty run_000 that shifted the next study's numbering (outside probe, round 23). Anything the
    command wrote keeps its directory."""
    lock = None if locked is None else Path(locked).absolute() / LOCK_NAME
    for directory in made:
        with contextlib.suppress(OSError):
            if lock is not None and os.listdir(directory) == [LOCK_NAME] and directory / LOCK_NAME == lock:
                os.unlink(lock)
            os.rmdir(directory)  # refused (kept) unless it is empty


def output_lock_path(output: str | Path) -> Path:
    """The lock file exclusive_output takes for ``output``: ``.NAME.lock`` beside the file it names
    (a symlink's target, which is the file atomic_path replaces)."""
    final = Path(os.path.realpath(output))
    return final.with_name(f".{final.name}.lock")


#: The output locks (output_lock_path) this process holds: its own writes of those files go ahead.
_HELD_OUTPUT_LOCKS: set[Path] = set()


def refuse_output_locked_elsewhere(output: str | Path, given: str | Path | None = None,
                                   writer: str | None = None) -> None:
    """Raise OutputInUseError when another process holds ``output``'s lock (:func:`exclusive_output`:
    a running `dodo simulate OUT`, `python -m dodo.qke.validate emu32`). Every atomic write checks
    it (atomic_path: before and again just before its rename). Only those two commands took the lock,
    so another writer of the same file went ahead: `dodo synth -o OUT` (or apply -o, preprocess,
    export, any report) started while `dodo simulate OUT` ran had its file replaced by the solver's
    next batch, and one finishing after the solver replaced its finished database (outside probe,
    data-loss round two). The lock file is opened, never made; a shared lock is tried and let go
    at once (refused where the holder's exclusive lock is there). The lock holds the holder's pid
    only: the holder is named as ``writer`` (the command asking, which takes such locks itself), else
    as a process of one of the two commands; a second line, if a lock has one, names it."""
    lock = output_lock_path(output)
    if lock in _HELD_OUTPUT_LOCKS:
        return
    try:
        import fcntl
    except ImportError:
        return
    try:
        # Non-blocking: a FIFO planted under the lock's name blocked open() for ever (outside probe,
        # data-loss round two); it is no lock dodo made, so it is passed over (fstat below).
        descriptor = os.open(lock, os.O_RDONLY | _NO_FOLLOW_NO_BLOCK)
    except OSError:  # no lock file (nobody writes it), or one we cannot open: as before
        return
    try:
        regular = stat.S_ISREG(os.fstat(descriptor).st_mode)
    except OSError:
        regular = False
    if not regular:  # a directory, a FIFO, a device: no lock of dodo's
        os.close(descriptor)
        return
    with open(descriptor, "r", closefd=True) as handle:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, command = _lock_holder(handle)
            who = (f"another {command or writer}{holder}" if command or writer else
                   f"another process{holder}, a dodo simulate or python -m dodo.qke.validate of that file")
            raise OutputInUseError(f"{given if given is not None else output} is being written by {who}: wait for it "
                                   f"to end, or choose another output (the lock is {lock})") from None
        except OSError:  # no locks on this file system
            return
        fcntl.flock(descriptor, fcntl.LOCK_UN)


#: Flags that keep a lock file's open from following a symbolic link or waiting on a FIFO.
_NO_FOLLOW_NO_BLOCK = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class LockFileError(OutputPathError):
    """A lock file's name holds something that is not a regular file (a symbolic link, a FIFO, a directory)."""


def _open_lock_file(path: Path):
    """``path`` opened for reading and appending (made if missing), refused unless it is a regular
    file. The lock's holder truncates it and writes its pid: opened as ``open(path, "a+")``, a
    symbolic link planted under the lock's name (`.OUT.lock -> ~/notes.txt` in a shared directory, a
    checkpoint directory made of links to another run's files) had its target truncated to the pid
    (outside probe, data-loss round two)."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | _NO_FOLLOW_NO_BLOCK, 0o666)
    except OSError as error:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = None
        if isinstance(error, PermissionError) and mode is not None and stat.S_ISREG(mode):
            # Another user's lock, left by their finished or killed run in a directory both write (a
            # train-ensemble's output.checkpoint in /tmp or a shared scratch directory leaves
            # /tmp/.dodo.lock, mode 644): every other user's run there was refused for good, "cannot open
            # the lock file ...: Permission denied" (outside probe, data-loss round eleven). An flock
            # needs no write permission: the lock is taken on the file opened for reading (the pid is
            # then not written in it).
            with contextlib.suppress(OSError):
                descriptor = os.open(path, os.O_RDONLY | _NO_FOLLOW_NO_BLOCK)
                if stat.S_ISREG(os.fstat(descriptor).st_mode):
                    return open(descriptor, "r", closefd=True)
                os.close(descriptor)
        if mode is None or stat.S_ISREG(mode):  # a full disk, no permission: the system's reason
            raise OSError(error.errno, f"cannot open the lock file {path}: {error.strerror or error}"
                                       f"{_another_users_lock_hint(path, error)}") from None
        target = f" (to {os.readlink(path)})" if stat.S_ISLNK(mode) else ""
        raise LockFileError(f"the lock file {path} is {_file_kind(mode)}{target}, not a regular file; dodo makes it "
                            "and writes its pid in it: remove it") from None
    try:
        mode = os.fstat(descriptor).st_mode
    except OSError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise LockFileError(f"the lock file {path} is {_file_kind(mode)}, not a regular file; dodo makes it and "
                            "writes its pid in it: remove it")
    return open(descriptor, "a+", closefd=True)


def _another_users_lock_hint(path: Path, error: OSError) -> str:
    """What to do about a lock file this user may not even read: another user's, left by their run
    under umask 077 (mode 600), refused every other user's run there with "Permission denied" alone
    (outside probe, data-loss round eleven, left; the lead's)."""
    try:
        owner = os.lstat(path).st_uid
    except OSError:
        return ""
    if not isinstance(error, PermissionError) or not hasattr(os, "geteuid") or owner == os.geteuid():
        return ""
    return (f" (it belongs to another user, uid {owner}, and only they may read it: a lock their run left; "
            "ask them to remove it, or write the output in another directory)")


def _lock_holder(handle) -> tuple[str, str]:
    """(" (pid N)" or "", the holder's command or "") of an open lock file that another process holds:
    the pid and command written in it, unless the kernel's table of locks (/proc/locks) names another
    process as the holder, which is then named with the dodo command of its command line. A run that
    took another user's lock file (opened for reading: it cannot write its pid there) was named without
    a pid, and the pid left in the file by the owner's earlier run was named when a process of that
    pid ran, the holder or not (outside probe, data-loss round eleven, left)."""
    try:
        handle.seek(0)
        pid, _, command = handle.read(4096).partition("\n")
    except (OSError, ValueError):
        pid, command = "", ""
    pid, command = pid.strip(), " ".join(command.split())
    locker = _flock_holder_pid(handle.fileno())
    if locker is not None and str(locker) != pid:
        return _pid_text(locker), _dodo_command_of(locker)
    return (_pid_text(int(pid)) if pid.isdigit() else ""), command


@contextlib.contextmanager
def exclusive_output(output: str | Path, command: str):
    """Hold ``output``'s lock for the block: a second process writing the same file (two `dodo
    simulate OUT` at once) is refused at once with OutputInUseError; without it both ran, each
    checkpointing over the other's OUT.partial.npz, and the one to end last replaced the other's
    database without a word. An flock on :func:`output_lock_path`, removed when the block ends (so
    no file stays beside each output); one left by a killed holder is taken over by the next run."""
    lock = output_lock_path(output)
    try:
        mode = os.lstat(lock).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        # A FIFO there blocked open(lock, "a") for ever (`dodo simulate OUT` hung, SIGTERM the only way
        # out); a directory was "cannot create a file in DIR: Is a directory", of DIR; a symbolic link
        # had its target truncated to the pid (outside probe, data-loss round two).
        raise OutputPathError(f"cannot write {output}: its lock file {lock} is {_file_kind(mode)}, not a regular "
                              "file (dodo makes it, empty but for the writer's pid): remove it or choose another output")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        if mode is None:  # one there (another user's, which cannot be opened for writing) is taken as it is
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NO_FOLLOW_NO_BLOCK, 0o666))
    except OSError as error:  # named by the output asked for, as atomic_path does, not by the lock file
        raise OutputPathError(f"cannot write {output}: cannot create a file in {lock.parent}: "
                              f"{error.strerror or error}") from None
    with _flock(lock, remove=True, command=command, refuse=lambda holder, holding: OutputInUseError(
            f"{output} is being written by another {holding or command}{holder}: wait for it to end, or choose another "
            f"output (the lock is {lock})")):
        _HELD_OUTPUT_LOCKS.add(lock)
        try:
            yield
        finally:
            _HELD_OUTPUT_LOCKS.discard(lock)


@contextlib.contextmanager
def _flock(path: Path, remove: bool, refuse, command: str = ""):
    """Exclusive, non-blocking flock on ``path`` for the block (the holder's pid written in it, and
    ``command`` on a second line); ``refuse(" (pid N)", "the holder's command or ''")`` is raised
    when another process holds it. remove: unlink the file before
    releasing it; a process that opened the old file meanwhile sees it is no longer ``path`` and
    opens the new one (so two processes never hold locks on two different files of one name)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    while True:
        handle = _open_lock_file(path)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, holding = _lock_holder(handle)
            if not handle.writable() and holder and not _running(int(re.sub(r"\D", "", holder))):
                holder, holding = "", ""  # a stale lock's words: its holder could not write its own
            handle.close()
            raise refuse(holder, holding) from None
        except OSError:  # no locks here (some network file systems): as before, unguarded
            # Nor is a lock file left there: `dodo simulate d/s.h5` on a file system without flocks (ENOLCK: an NFS
            # mount without its lock service) left `.s.h5.lock` beside every output it wrote (outside probe,
            # data-loss round fifteen). Removed only while the name is still the file this run opened.
            if remove:
                _remove_lock_file(handle, None, path)
            handle.close()
            yield
            return
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(handle.fileno()), current):
            break
        handle.close()  # removed by the holder we waited for: lock the file now at ``path``
    # The lock's directory held open (O_PATH) while the lock is held: the lock file is removed from it, by
    # name and only while that name is still this file, wherever the directory went. Removed by its path,
    # the lock of `dodo simulate d/OUT` (or of dodo train's results_dir/train.log) whose directory was moved
    # while it ran stayed in the moved directory, and a directory made again at the path lost another
    # process's lock of the same name (outside probe, open items of data-loss round fourteen). Held here,
    # it also tells atomic_path where a moved output directory went (held_directory_fate).
    directory = _open_directory(path.parent)
    key = os.path.abspath(path.parent)
    if directory is not None:
        _LOCKED_DIRECTORIES.setdefault(key, []).append(directory)
    try:
        try:
            if handle.writable():  # not another user's lock, taken on the file opened for reading
                handle.seek(0)
                handle.truncate()
                # Unbuffered: a buffered write that failed (a full disk) failed again in close(), and the
                # message was a bare "[Errno 28] No space left on device", naming no file (round 27).
                os.write(handle.fileno(), (f"{os.getpid()}\n{command}" if command else str(os.getpid())).encode())
        except OSError as error:
            raise OSError(error.errno, f"cannot write the lock file {path}: {error.strerror or error}"
                                       f"{_lock_write_hint(error)}") from None
        yield
    finally:
        if remove:
            # Not only gone meanwhile: another user's lock file (left by their killed run) in a sticky
            # directory cannot be removed (EPERM); left, it is taken over by the next run as any stale
            # lock is. `dodo simulate` wrote its database, then ended with a PermissionError traceback,
            # exit 1 (outside probe, data-loss round eleven).
            _remove_lock_file(handle, directory, path)
        if directory is not None:
            held = _LOCKED_DIRECTORIES.get(key, [])
            if directory in held:
                held.remove(directory)
            if not held:
                _LOCKED_DIRECTORIES.pop(key, None)
            _close_directory(directory)
        handle.close()  # releases the lock


def _lock_write_hint(error: OSError) -> str:
    """What to do when the few bytes of a lock file (the holder's pid) cannot be written: a full file system,
    a used-up quota, a file-size limit. "[Errno 28] cannot write the lock file d/.s.h5.lock: No space left on
    device" (`ulimit -f 0`: "File too large") said neither (outside probe, data-loss round fifteen)."""
    if error.errno == errno.ENOSPC:
        return " (its file system is full: free space there and rerun the command)"
    if error.errno == getattr(errno, "EDQUOT", None):
        return " (your disk quota there is used up: free space under it and rerun the command)"
    if error.errno == errno.EFBIG:
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        except (ImportError, OSError, ValueError):
            return ""
        if limit != resource.RLIM_INFINITY:
            return (f" (this process may write files of at most {limit:,} bytes: its file-size limit, ulimit -f; "
                    "raise it, e.g. ulimit -f unlimited, and rerun the command)")
    return ""


#: The directories of the locks this process holds (_flock), held open (O_PATH) by absolute path.
_LOCKED_DIRECTORIES: dict[str, list[int]] = {}


def held_directory_fate(directory: str | Path) -> Optional[tuple[str, str]]:
    """What became of ``directory`` when this process holds a lock in it (:func:`exclusive_directory`,
    :func:`exclusive_output`): None while it is still at its path (or where it cannot be told), else
    ("removed", ""), ("moved", where it is now) or ("replaced", where it is now), as _directory_fate."""
    held = _LOCKED_DIRECTORIES.get(os.path.abspath(directory)) or _LOCKED_DIRECTORIES.get(os.path.realpath(directory))
    return _directory_fate(held[0], Path(directory)) if held else None


def _remove_lock_file(handle, directory: Optional[int], path: Path) -> None:
    """Unlink the lock file ``handle`` holds: through ``directory`` (its directory held open) where there
    is one, else by ``path``; in both only while the name is still that file (another process's lock made
    under the name since is left)."""
    with contextlib.suppress(OSError, NotImplementedError):
        own = os.fstat(handle.fileno())
        if directory is not None:
            if os.path.samestat(own, os.stat(path.name, dir_fd=directory, follow_symlinks=False)):
                os.unlink(path.name, dir_fd=directory)
            return
        if os.path.samestat(own, os.stat(path, follow_symlinks=False)):
            os.unlink(path)


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
            with _signals_held_in_callbacks(sink):
                try:
                    handle = h5py.File(sink, "w")
                    try:
                        yield handle, sink.check
                    finally:
                        handle.close()
                except Exception:
                    sink.check()  # the disk filled up first (or a signal came in HDF5): that is what to report
                    raise
                sink.check()
        finally:
            sink.close()


#: Signals whose Python handler may raise (Ctrl-C's KeyboardInterrupt, dodo's SIGTERM and SIGHUP).
_HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _signals_held_in_callbacks(sink: "WriteErrorLatch"):
    """For the block, a Ctrl-C, SIGTERM or SIGHUP is held and given to its handler at the next
    ``sink.check()`` (the writers call it after every block of rows; atomic_hdf5 at the end), outside
    HDF5. Raised where it arrived, the handler's exception could reach HDF5 through h5py's file-object
    driver: when the callback was a flush of a dataset's chunks on its deallocation, h5py printed
    "Exception ignored in ObjectID.__dealloc__", HDF5 went on with a failed write, and the process
    died of a segmentation fault (exit 139, the temporary left behind); raised in a weak reference's
    callback of h5py's, it was ignored and the command finished with exit 0 (Ctrl-C or `kill` of `dodo
    preprocess` at the wrong moment; outside probe, data-loss round three). A second signal while one
    is held is handled at once, unless HDF5 is calling ``sink`` just then. Main thread only (signal
    handlers can be set there only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, writer = {}, os.getpid()

    def held(signum, frame):
        if os.getpid() != writer:
            # A process forked (by another thread) during the block inherited this handler and never
            # reaches a check() that hands a held signal on: it kept its first SIGTERM, SIGINT or SIGHUP
            # for ever (a `multiprocessing` process started while the main thread wrote
            # `dodo.training.synth.write_synthetic_database` outlived its terminate(), and join() waited;
            # outside probe, data-loss round eleven). There the signal goes on at once.
            _hand_on(previous, signum, frame)
            return
        if not sink.held_signals or _inside_latch_callback(frame):
            sink.held_signals.append((signum, frame))
            return
        _hand_on(previous, signum, frame)  # a second one: the user insists

    sink.hand_on_held = lambda: _hand_on_held(sink, previous)
    for signum in _HELD_SIGNALS:
        try:
            handler = signal.getsignal(signum)
            if callable(handler) or handler == signal.SIG_DFL:  # not an ignored signal, nor a C-level handler
                previous[signum] = handler
                signal.signal(signum, held)
        except (ValueError, OSError):
            pass
    _register_fork_hooks()
    _HOLDS.append((held, previous))
    leaving = None
    try:
        yield
    except BaseException as error:
        leaving = error
        raise
    finally:
        _HOLDS.remove((held, previous))
        sink.hand_on_held = None
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(signum) is held:  # a handler that replaced ours (SIG_DFL) stays
                    signal.signal(signum, handler)
        # A signal held after the last check() (during atomic_hdf5's final sink.check() or between it and
        # here; once the handlers are back, a later one goes to them directly) is handed on now. Before,
        # the block ended with it still held and it was dropped: the write completed and renamed, exit 0
        # after a Ctrl-C or SIGTERM (outside probe, data-loss round fifteen). Also over an error (a full disk):
        # the signal's exception, the error its context. Not while a KeyboardInterrupt, SystemExit or a
        # handler's own exception already ends the block (a second Ctrl-C, which is handed on at once): the
        # process is already being interrupted, and the held one would only raise again in the unwinding.
        if leaving is None or isinstance(leaving, Exception):
            _hand_on_held(sink, previous)


#: (holding handler, {signal: the handler before it}) of each _signals_held_in_callbacks block open in
#: this process, innermost last: what a child forked meanwhile puts back (_after_fork_in_child).
_HOLDS: list = []
#: {thread id: the signal mask before the fork} of a thread forking during such a block.
_FORK_MASKS: dict = {}
_FORK_HOOKS_REGISTERED = False


def _register_fork_hooks() -> None:
    """Once per process: a fork during a _signals_held_in_callbacks block (by any thread) blocks the held
    signals in the forking thread until the child has put the handlers from before the block back.
    CPython clears, in the child right after fork(), the signals its C handler has noted and the Python
    handler not yet run (``PyOS_AfterFork_Child``): a SIGTERM that reached the child before that, e.g.
    `multiprocessing` ``Process.terminate()`` at once after ``start()`` while the main thread wrote an
    HDF5 file, was lost (36 of 40 such children still ran 5 s after it; outside probe, data-loss round
    eleven, left). Blocked, the signal waits (pending) for the child's hook, which unblocks it."""
    global _FORK_HOOKS_REGISTERED
    if _FORK_HOOKS_REGISTERED or not hasattr(os, "register_at_fork") or not hasattr(signal, "pthread_sigmask"):
        return
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
    _FORK_HOOKS_REGISTERED = True


def _before_fork() -> None:
    if _HOLDS:
        import threading

        with contextlib.suppress(ValueError, OSError):
            _FORK_MASKS[threading.get_ident()] = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)


def _after_fork_in_parent() -> None:
    import threading

    mask = _FORK_MASKS.pop(threading.get_ident(), None)
    if mask is not None:
        with contextlib.suppress(ValueError, OSError):
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _after_fork_in_child() -> None:
    """In a child forked during a hold: the handlers from before the holds go back (the child is no
    writer; the forking thread is the child's main thread), then the signals are unblocked, so that one
    sent meanwhile is handled now (SIG_DFL: the child ends at once; a Python handler is called after the
    signal is taken, and its SystemExit ends the child with that status)."""
    import threading

    mask = _FORK_MASKS.pop(threading.get_ident(), None)
    _FORK_MASKS.clear()
    holds = list(_HOLDS)
    _HOLDS.clear()
    if mask is None:
        return
    for held, previous in reversed(holds):
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(signum) is held:
                    signal.signal(signum, handler)
    try:
        pending = [signum for signum in _HELD_SIGNALS if signum in signal.sigpending()]
    except (ValueError, OSError, AttributeError):
        pending = []
    handlers = {signum: signal.getsignal(signum) for signum in pending}
    taken = []
    for signum in pending:
        if callable(handlers[signum]) and hasattr(signal, "sigtimedwait"):
            # A Python handler of the caller's: the signal is taken here, still blocked, and the handler called
            # below, where its SystemExit can be honoured. Unblocked, it ran inside this hook, where nothing
            # takes an exception: a child whose handler raised SystemExit(143) ended by the signal's default
            # action (-15), not with 143 (round twelve's open item; outside probe, data-loss round thirteen).
            with contextlib.suppress(ValueError, OSError):
                if signal.sigtimedwait([signum], 0) is not None:
                    taken.append(signum)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal sent meanwhile is handled here
    except (ValueError, OSError):
        pass
    except BaseException:
        # A Python handler (dodo's, KeyboardInterrupt's) raised for it: nothing at a child's fork takes an
        # exception (CPython prints it as ignored and the child ran on): the signal's default action.
        for signum in pending[:1]:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        raise
    for signum in taken:
        try:
            handlers[signum](signum, None)
        except SystemExit as leaving:  # as the child's own code would have ended (os._exit: no parent's buffers)
            code = leaving.code
            if code is not None and not isinstance(code, int):
                with contextlib.suppress(Exception):
                    os.write(2, f"{code}\n".encode())
            os._exit(0 if code is None else code & 0xFF if isinstance(code, int) else 1)
        except BaseException:
            # Any other exception (KeyboardInterrupt) cannot reach the child's code from here either: the
            # signal's default action, as before.
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            raise


def _hand_on(previous: dict, signum: int, frame) -> None:
    """Give ``signum`` to the handler that was there before :func:`_signals_held_in_callbacks`."""
    handler = previous.get(signum, signal.SIG_DFL)
    if callable(handler):
        handler(signum, frame)
        return
    # SIG_DFL: the default action (the process ends): put it back and send the signal again.
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _hand_on_held(sink: "WriteErrorLatch", previous: dict) -> None:
    if sink.held_signals:
        signum, frame = sink.held_signals[0]
        sink.held_signals.clear()
        _hand_on(previous, signum, frame)


def _inside_latch_callback(frame) -> bool:
    """Whether ``frame`` (the one a signal interrupted) is in, or called from, a method of
    WriteErrorLatch that HDF5 calls."""
    while frame is not None:
        if frame.f_code in _LATCH_CALLBACK_CODES:
            return True
        frame = frame.f_back
    return False


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
        #: (signal, frame) of signals held while HDF5 called this file (_signals_held_in_callbacks), and
        #: the function that gives them to their handlers; check() calls it first.
        self.held_signals: list = []
        self.hand_on_held = None

    def check(self) -> None:
        if self.held_signals and self.hand_on_held is not None:
            self.hand_on_held()  # a Ctrl-C or SIGTERM held during an HDF5 callback: raised here, outside HDF5
        if self.error is not None:
            # Without the temporary's name (`[Errno 27] writing /d/.out.h5.host.123.x8k2.tmp: File too large:
            # 'out.h5'`, of a file nobody asked for): atomic_path names the output asked for.
            raise OSError(self.error.errno, self.error.strerror or str(self.error))

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


#: The code of WriteErrorLatch's methods that HDF5 calls (through h5py's file-object driver), and of
#: what they call: a signal that interrupts one of them is held (_signals_held_in_callbacks).
_LATCH_CALLBACK_CODES = frozenset(
    getattr(WriteErrorLatch, name).__code__
    for name in ("readinto", "write", "seek", "tell", "truncate", "flush", "_pwrite", "_size", "readable",
                 "writable", "seekable"))


def stale_temporaries(final: str | Path) -> list[Path]:
    """The temporaries of ``final`` left by writers that no longer run on this host (a SIGKILL, a
    power loss): what the next atomic write of ``final`` removes."""
    final = Path(final)
    pattern = re.compile(re.escape(_temporary_prefix(final, with_pid=False)) + r"(\d+)\.[^.]+\.tmp")
    stale = []
    with contextlib.suppress(OSError):
        for candidate in final.parent.iterdir():
            match = pattern.fullmatch(candidate.name)
            if match and _writer_gone(int(match.group(1)), candidate) and _removable(candidate):
                stale.append(candidate)
    return stale


def _writer_gone(pid: int, temporary: Path) -> bool:
    """Whether the writer ``pid`` of ``temporary`` no longer runs: no such process, or the process of
    that pid started after the temporary was last written, so it is another one that reuses the pid
    (the writer made the file after it started and wrote it since). A temporary of a writer killed
    days ago whose pid a running process had been given was kept, and counted by `dodo synth` as used
    space, until that process ended (outside probe, data-loss round eleven, left). A temporary whose
    flock a writer holds is that writer's, whatever its pid says (:func:`_hold_as_written`)."""
    if _being_written(temporary):
        return False
    if not _running(pid):
        return True
    if pid == os.getpid():
        return False
    started = _process_start_time(pid)
    try:
        written = os.stat(temporary).st_mtime
    except OSError:
        return False
    return started is not None and started > written + _START_TIME_MARGIN_S


#: Seconds by which a process must have started after a temporary's last write to be another process
#: than its writer: the boot time that /proc/stat gives is whole seconds, the clock may have been set, and
#: a network file system's times are its server's clock (a live writer's temporary there, where flocks are
#: not to be had, may look older than its writer by the clocks' difference).
_START_TIME_MARGIN_S = 600.0


def _process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch) from /proc; None where it cannot be told."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, in clock ticks since boot (the fields after "comm)")
        with open("/proc/stat", "rb") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


def _removable(candidate: Path) -> bool:
    """Whether this process may remove ``candidate``: not another user's file in a sticky directory (where
    only its owner, the directory's owner or CAP_FOWNER may). `dodo synth` counted such a temporary, left by
    another user's killed run in /tmp, as free space it would remove, and met a full disk at the write
    instead of its refusal (outside probe, data-loss round eleven, left)."""
    return _sticky_directory_refusing_replacement(candidate) is None


def remove_stale_temporaries(final: str | Path) -> list[Path]:
    """Delete temporaries of ``final`` left by writers that no longer run on this host."""
    removed = []
    for candidate in stale_temporaries(final):
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's in a sticky directory
            candidate.unlink()
            removed.append(candidate)
    return removed


#: Bytes a temporary's name adds to the final one beyond HOST: the dots, a PID (at most 10 digits),
#: mkstemp's 8 letters and ".tmp"; the file name is shortened so that the whole stays within NAME_MAX.
_TEMPORARY_EXTRA = len(".." + "." + "9" * 10 + "." + "x" * 8 + ".tmp")


def _temporary_prefix(final: Path, with_pid: bool = True) -> str:
    """``.NAME.HOST.PID.`` for a temporary of ``final`` (mkstemp adds 8 letters and ``.tmp``), with
    NAME shortened where the whole could exceed the file system's longest name (NAME_MAX, 255 bytes
    on Linux): a legal output name of 240 bytes got "File name too long" for its temporary. Without
    the PID: the part that remove_stale_temporaries matches (the same for every writer's PID)."""
    try:
        limit = os.pathconf(final.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room, name = max(limit - _TEMPORARY_EXTRA - len(os.fsencode(_host())), 1), final.name
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}.{_host()}." + (f"{os.getpid()}." if with_pid else "")


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


def json_safe(value):
    """``value`` with NumPy scalars and arrays as Python numbers and lists, paths as strings, and
    every non-finite float (NaN, +-Inf) as None, so that ``json.dumps(..., allow_nan=False)``
    writes strict JSON (bare NaN and Infinity are not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            return json_safe(value.tolist())
        if isinstance(value, np.generic):
            return json_safe(value.item())
    return value


def write_json_atomic(path: str | Path, data) -> None:
    """Strict JSON (non-finite numbers written as null, :func:`json_safe`), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2, sort_keys=False, default=_json_default, allow_nan=False))


def torch_save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` atomically, serialised in memory first so that a full disk is Python's
    `[Errno 28] No space left on device`, not torch's `unexpected pos` (dodo.training.safe_load)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def numpy_save_atomic(path: str | Path, array) -> None:
    """``np.save`` atomically. Through a handle: given a file name, NumPy appends ".npy" to it,
    and the temporary's contents would land beside it instead of being moved onto ``path``."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def numpy_savez_atomic(path: str | Path, arrays: dict, compressed: bool = False) -> None:
    """``np.savez`` (``np.savez_compressed``) of ``arrays`` atomically, through a handle as above
    (NumPy appends ".npz" to a name)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)


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
