"""Ctrl-C (and running out of memory) while the `dodo` command starts up.

The console script (``dodo``) and ``python -m dodo`` import the package (numpy, the compiled core,
the subcommands' modules) before :func:`dodo.cli.main` runs and installs its own handling, which
turns Ctrl-C into one line and exit status 130. A Ctrl-C in that first fraction of a second (most
likely on a loaded machine) printed a ``KeyboardInterrupt`` traceback from inside an import
instead. When, and only when, the process is one of those commands (or ``python -m dodo.test`` or
``python -m dodo.qke.validate``), :func:`guard` installs a
SIGINT handler that prints the same line as main() and ends the process with 130 at once (nothing
has been written yet: no file is at risk, and no half-imported module is left to run);
:func:`release` (called by main) puts Python's own handler back, after which Ctrl-C unwinds the
command as before. A program that imports dodo as a library is never touched. An import that runs
out of memory meanwhile (numpy's, under `ulimit -v`) is one line and exit status 1, not a traceback or,
from OpenBLAS's own SIGINT, "interrupted" (outside probe, Python round fifty-four).
"""
from __future__ import annotations

import _thread
import os
import signal
import sys

_memory = None  # dodo._memory, imported by guard() for a command: when memory runs short later, that fails too

#: `python -m` modules that are commands: dodo.test and dodo.qke.validate (and the old entries
#: dodo.qke.cli, dodo.training.cli, which run `dodo`'s main) printed a KeyboardInterrupt traceback from
#: inside numpy's import for a Ctrl-C in their first tenth of a second (outside probe, round 37); each
#: calls release() where its own handling begins.
_COMMAND_MODULES = ("dodo", "dodo.cli", "dodo.test", "dodo.qke.validate", "dodo.qke.cli", "dodo.training.cli")


def _launched_as_command() -> bool:
    """True for the `dodo` console script and for ``python -m`` of a module in _COMMAND_MODULES."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if script and getattr(main, "__spec__", None) is None and \
            os.path.basename(script).removesuffix(".exe") == "dodo":
        try:  # the script pip writes for the entry point dodo.cli:main, not a user's program of that name
            with open(script, "rb") as handle:
                return b"from dodo.cli import main" in handle.read(4096)
        except OSError:
            return False
    argv = getattr(sys, "orig_argv", None) or []
    if sys.argv[:1] != ["-m"]:  # runpy sets argv[0] to "-m" while it imports the module's package
        return False
    # The interpreter's own options may come first, some with a value (`python -X dev -W error -m dodo`).
    for index, word in enumerate(argv[1:], start=1):
        if word == "-m":
            return index + 1 < len(argv) and argv[index + 1] in _COMMAND_MODULES
        if word.startswith("-m"):
            return word[2:] in _COMMAND_MODULES
    return False


def _interrupted_while_starting(signum, frame) -> None:
    if _memory is not None and not _threads_can_start():
        # Not a Ctrl-C: OpenBLAS (numpy's) raises SIGINT itself when it cannot start its threads
        # (blas_thread_init, pthread_create failed: `ulimit -v 125000`), which said `dodo: interrupted`,
        # exit 130, of a memory failure (outside probe, Python round fifty-four; section 89's not-fixed).
        _write_error(f"{_memory.out_of_memory_while_importing()}; a library could not start its threads and "
                     "raised SIGINT itself, no Ctrl-C was pressed (where memory is not short, the process count "
                     "limit, ulimit -u, is reached)")
        os._exit(1)
    try:
        os.write(2, b"dodo: interrupted\n")
    except OSError:  # stderr closed or full: the exit status still says it
        pass
    os._exit(128 + signum)


#: Stack of the trial thread: room for a library's thread (an 8 MiB stack and OpenBLAS's buffers) with
#: some to spare. OpenBLAS may fail its own thread and free what it had taken before SIGINT, so a trial
#: of Python's 8 MiB stack still started at `ulimit -v 132500` and said "interrupted" (found by the test
#: suite run on a build without the per-CPU clones, whose memory layout differs; 2026-12-07).
_TRIAL_STACK = 64 << 20


def _threads_can_start() -> bool:
    """Whether a thread with a 64 MiB stack can be started now (one is, and ends at once): under an
    address-space limit that the libraries' threads do not fit with room to spare, it cannot, and a Ctrl-C
    can be told from OpenBLAS's SIGINT (Python hides the sender, the siginfo). Without such a limit a
    stack is only reserved address space, so a real Ctrl-C is still "interrupted"."""
    try:
        previous = _thread.stack_size(_TRIAL_STACK)
    except (ValueError, RuntimeError):  # a platform without settable stacks: the default one
        previous = None
    try:
        _thread.start_new_thread(int, ())
    except BaseException:  # RuntimeError: can't start new thread (a MemoryError too, as short as memory is)
        return False
    finally:
        if previous is not None:
            _thread.stack_size(previous)
    return True


def _write_error(text: str) -> None:
    try:
        os.write(2, f"dodo: error: {text}\n".encode("utf-8", "replace"))
    except OSError:  # stderr closed or full: the exit status still says it
        pass


def _failed_while_starting(kind, error, traceback) -> None:
    """sys.excepthook while the command imports its modules: an import that ran out of memory (a
    MemoryError out of numpy's import, a SystemError under an address-space limit, or the loader's `failed
    to map segment` under numpy's own ImportError) is one line and exit status 1, where a 30-line traceback said it (outside probe,
    Python round fifty-four); any other error keeps the traceback."""
    try:
        # A SystemError too (an extension's failed allocation that set no error; import_ran_out_of_memory
        # counts it only under an address-space limit): it kept its traceback here (Python round 56's list).
        memory = (isinstance(error, ImportError) or isinstance(error, (MemoryError, SystemError)) and
                  _memory.raised_inside_an_import(error)) and _memory.import_ran_out_of_memory(error)
    except BaseException:  # _memory None (not loaded), or memory too short even for this
        memory = False
    if memory:
        _write_error(_memory.out_of_memory_while_importing())
        return
    _previous_excepthook(kind, error, traceback)


_previous_excepthook = sys.__excepthook__


#: Whether guard() found this process to be one of the commands (_launched_as_command reads how the
#: interpreter was started, which only holds while the package is imported: runpy's "-m" is gone by
#: the time the command runs).
launched_as_command = False


def end_at_once(signum, frame) -> None:
    """A SIGINT handler for a command that has already unwound: ends the process with 128 + the
    signal, no line (the first Ctrl-C printed it) and no exit handlers (cli.main installs it)."""
    os._exit(128 + signum)


def guard() -> None:
    """Installs the start-up handler when this process is the `dodo` command and SIGINT is Python's
    default (a shell that made the command ignore SIGINT keeps that); and, for a command, puts
    /dev/null on a closed standard descriptor (reserve_standard_descriptors)."""
    global launched_as_command
    try:
        command = _launched_as_command()
    except (ValueError, OSError, AttributeError):
        return
    launched_as_command = command
    if command:
        reserve_standard_descriptors()
        _load_memory_words()
    try:
        if command and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupted_while_starting)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no signals here
        pass
    if command and sys.excepthook is sys.__excepthook__:  # a hook of the user's (sitecustomize) is kept
        global _previous_excepthook
        _previous_excepthook = sys.excepthook
        sys.excepthook = _failed_while_starting


def _load_memory_words() -> None:
    global _memory
    try:
        from . import _memory as words
    except (ImportError, MemoryError):  # a part-copied package, or memory short already: as before
        return
    _memory = words


def reserve_standard_descriptors() -> None:
    """/dev/null on each of descriptors 0-2 that is closed (`dodo simulate out.h5 2>&-`, a daemon
    that closed them). Otherwise the next file the command opens, an output's temporary, gets that
    descriptor, and whatever writes to stderr at the C level (ONNX Runtime, libgomp, a crash
    handler) writes into the output (data-loss probe, round two). Only for the `dodo` commands: a
    program that imports dodo keeps its descriptors as they are."""
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            try:
                opened = os.open(os.devnull, os.O_RDWR)
            except OSError:
                return
            if opened != descriptor:  # a lower one was free after all: not ours to fill
                os.dup2(opened, descriptor)
                os.close(opened)


def release() -> None:
    """Python's own SIGINT handler again (KeyboardInterrupt), if :func:`guard` installed its own."""
    try:
        if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):
        pass
    if sys.excepthook is _failed_while_starting:
        sys.excepthook = _previous_excepthook
