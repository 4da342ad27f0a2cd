"""Standard output guarded for the package's programs (`dodo`, `python -m dodo.test`, `python -m
dodo.qke.validate`): a reader that went away ends a program quietly with 141, an output that cannot be
written with one line and 2 (outside probe, rounds 22 and 23). Its own module so that the programs
share it without importing each other (dodo.cli runs dodo.test's check as `dodo test`)."""
from __future__ import annotations

import codecs
import errno
import os
import sys

class StandardOutputError(Exception):
    """Standard output cannot be written (a full disk, ``> /dev/full``, a closed descriptor, an
    I/O error). Not an OSError on purpose: the commands' own ``except OSError`` handlers, meant for
    their input and output files, must not report it as a problem of those files."""


class _WrappedStream:
    """A standard stream during a command: its writes and flushes go through _call, which each
    wrapper below defines; everything else reaches the stream itself."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text):
        return self._call("write", text)

    def writelines(self, lines):
        return self._call("writelines", lines)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _GuardedStdout(_WrappedStream):
    """sys.stdout during a command: a write or flush that fails (other than a reader that went
    away, BrokenPipeError, which ends the command quietly) raises StandardOutputError, so that
    main() ends with one line instead of an OSError traceback. A closed standard output (the shell's
    ``>&-``: Python then sets sys.stdout to None and print() drops the text silently) fails on the
    first write in the same way."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.failure: OSError | None = None
        #: (command name) set by :func:`main` for a long command that goes on when its reader goes away.
        self.outlives_its_reader: str | None = None
        self.reader_gone = False

    def _call(self, method: str, *args):
        if self._stream is None:
            self._fail(OSError(errno.EBADF, "standard output is closed"))
        try:
            return getattr(self._stream, method)(*args)
        except BrokenPipeError:
            if self.outlives_its_reader is None:
                raise
            self._reader_went_away()
            return None
        except OSError as error:
            if self.outlives_its_reader is None:
                self._fail(error)
            self._unwritable_for_a_long_command(error)
            return None

    def _reader_went_away(self) -> None:
        """A long command's reader went away (`dodo train ... | head -1`): its results go to files,
        so it goes on, its standard output now /dev/null (the text the pipe refused is dropped), and
        says so once on stderr. Before, `| head` ended an hour of training with exit 141 and no model
        (data-loss probe, round two)."""
        if self.reader_gone:
            return
        self.reader_gone = True
        _silence_stdout()
        try:
            self._stream.flush()  # what the pipe refused goes to /dev/null now
        except (OSError, ValueError):
            pass
        print(f"{self.outlives_its_reader}: note: the reader of standard output went away; the command goes on "
              "(its files and logs are written as usual; its printed lines are dropped)", file=sys.stderr)

    def _unwritable_for_a_long_command(self, error: OSError) -> None:
        """A long command's standard output cannot be written (``> /dev/full``, a log on a full disk):
        it goes on as when its reader goes away (its results are files), says so once on stderr, and
        ends with 2 and ``cannot write to standard output`` once its work is done (the failure is
        kept for with_guarded_stdout). Before, `dodo learning-curve --json F --plot P > /dev/full`
        ended at its first progress line, the cross-validation lost (data-loss probe, round three)."""
        if self.failure is not None:
            return
        self.failure = error
        _silence_stdout()
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass
        print(f"{self.outlives_its_reader}: note: standard output cannot be written ({error.strerror or error}); "
              "the command goes on (its files and logs are written as usual; its printed lines are dropped)",
              file=sys.stderr)

    def _fail(self, error: OSError):
        self.failure = error
        raise StandardOutputError(error.strerror or str(error)) from error

    def flush(self):
        if self._stream is None:  # nothing was written, nothing to flush (flush() of print(flush=True) too)
            return None
        return self._call("flush")


class _ForgivingStderr(_WrappedStream):
    """sys.stderr during a command: a diagnostic that cannot be written (``2>/dev/full``, a closed
    stderr) is dropped, as argparse drops its own, so that the command's exit status (2 for a
    refused input) is not replaced by an OSError's 1 from the line that reports it."""

    def _call(self, method: str, *args):
        if self._stream is None:
            return None
        try:
            return getattr(self._stream, method)(*args)
        except (OSError, ValueError):  # ValueError: a stream closed under us
            return None

    def flush(self):
        return self._call("flush")


def _silence_stdout() -> None:
    """Point the process's standard output at /dev/null, so that the interpreter's final flush of
    text still buffered cannot fail again (an 'Exception ignored' message and exit status 120)."""
    try:
        descriptor = (sys.__stdout__ or sys.stdout).fileno()
    except (AttributeError, OSError, ValueError):  # captured (pytest) or closed: nothing to redirect
        return
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), descriptor)
    except OSError:
        pass


#: The error handler of standard output and error during a command (registered below): see
#: :func:`_tolerant_encoding`.
_UNENCODABLE = "dodo.original_bytes_or_backslash"


def _original_bytes_or_backslash(error: UnicodeError):
    """Encoding error handler: a file name's bytes that are not valid in the locale's encoding (held by
    Python as lone surrogates, U+DC80-U+DCFF) are written back as those bytes, as `surrogateescape`
    does; any other character the stream cannot encode is written as a backslash escape."""
    if isinstance(error, UnicodeEncodeError):
        text = error.object[error.start:error.end]
        if all(0xDC80 <= ord(character) <= 0xDCFF for character in text):
            return bytes(ord(character) - 0xDC00 for character in text), error.end
        return codecs.backslashreplace_errors(error)
    raise error


codecs.register_error(_UNENCODABLE, _original_bytes_or_backslash)


def _tolerant_encoding(stream):
    """Make ``stream`` (standard output or error) write what its encoding cannot hold instead of failing;
    returns the function that puts its error handler back (None when nothing was changed). With a
    strict UTF-8 standard output (the default in a UTF-8 locale such as en_US.UTF-8) a command on a
    file whose name is not UTF-8 (`dodo apply $'r\xe9s.h5'`: Python holds the byte as a surrogate) did
    all its work, then failed as it printed the report: `dodo apply: error: 'utf-8' codec can't encode
    character '\udce9' ...: surrogates not allowed`, exit 2, the report lost (`dodo synth` said so of
    a file it had written); `PYTHONIOENCODING=ascii` likewise of any accented name (outside probe,
    round 31). Standard error's backslash escapes showed such a name as `r\udce9s.h5`."""
    reconfigure, errors = getattr(stream, "reconfigure", None), getattr(stream, "errors", None)
    if reconfigure is None or errors not in ("strict", "backslashreplace"):
        return None
    try:
        reconfigure(errors=_UNENCODABLE)
    except (AttributeError, OSError, TypeError, ValueError):
        return None
    return lambda: reconfigure(errors=errors)


def with_guarded_stdout(name, call) -> int:
    """``call()`` with standard output guarded, for :func:`main` and the package's other programs
    (``python -m dodo.test``, ``python -m dodo.qke.validate``): a reader that went away
    (``| head -1``) ends it quietly with 141, an output that cannot be written (``> /dev/full``,
    ``>&-``) with one line ``NAME: error: cannot write to standard output: ...`` and 2. Without it
    they ended with an ``[Errno 32] Broken pipe`` error or traceback, or (``>&-``) dropped their
    report without a word (outside probe, rounds 22 and 23). ``name`` is the program's name, or a
    function giving it when the line is printed (``main`` knows its subcommand only once parsed)."""
    original, guard = sys.stdout, _GuardedStdout(sys.stdout)
    restore = [undo for undo in (_tolerant_encoding(original), _tolerant_encoding(sys.stderr)) if undo]
    sys.stdout = guard
    try:
        code = call()
        # Text still buffered: a full disk shows here, not at the interpreter's exit.
        sys.stdout.flush()
        if guard.failure is not None:  # the program caught the StandardOutputError itself
            raise StandardOutputError(guard.failure.strerror or str(guard.failure))
        return code
    except BrokenPipeError:
        # The reader went away (`dodo score ... --json - | head`): stop quietly, as Unix tools do;
        # point stdout at /dev/null so that the interpreter's final flush does not fail again.
        _silence_stdout()
        return 141
    except StandardOutputError as error:
        # `dodo reference > /dev/full`, a full disk, `>&-`: the output is lost, say so in one line
        # (files the command wrote are complete: they are written atomically, independently of stdout).
        print(f"{name() if callable(name) else name}: error: cannot write to standard output: {error}",
              file=sys.stderr)
        _silence_stdout()
        return 2
    finally:
        if sys.stdout is guard:
            sys.stdout = original
        for undo in restore:
            try:
                undo()
            except (AttributeError, OSError, TypeError, ValueError):  # a stream closed meanwhile
                pass
