"""The `dodo` command line (also `python -m dodo`).

Subcommands of optional parts (training needs the `train` extra) are registered by their own
modules; registering never imports torch, so `dodo --help` works on a runtime-only install.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from . import _startup
from ._launcher import launch_line as _launch_line
# The words for an import that ran out of memory, shared with the training commands' handler and the
# start-up of the command (outside probe, Python round fifty-four).
from ._memory import address_space_limit_kb as _address_space_limit_kb
from ._memory import hdf5_ran_out_of_memory as _hdf5_ran_out_of_memory
from ._memory import import_ran_out_of_memory as _import_ran_out_of_memory
from ._memory import not_enough_memory_to_load as _not_enough_memory_to_load
from ._memory import out_of_memory_while_importing as _out_of_memory_while_importing
from ._memory import raised_inside_an_import as _raised_inside_an_import
from ._memory import with_memory_advice as _with_memory_advice
# dodo.cli.with_guarded_stdout and StandardOutputError: names the package's other programs used.
from ._stdout_guard import StandardOutputError, _ForgivingStderr, _GuardedStdout, with_guarded_stdout  # noqa: F401

# Modules that add subcommands through register(subparsers), if they are present.
_SUBCOMMAND_MODULES = ("dodo.training.cli", "dodo.qke.cli", "dodo.runtime_cli", "dodo.score",
                       "dodo.training.ensemble_cli")


def _reference(args: argparse.Namespace) -> int:
    from .reference import run

    try:
        return run(lebedev_order=args.lebedev_order, z_method=args.z_method)
    except ValueError as error:  # an unavailable Lebedev order
        print(f"dodo reference: error: {error}", file=sys.stderr)
        return 2


def _test(args: argparse.Namespace) -> int:
    from .test import main as check_installation

    return check_installation()


def _libdodo_build_id(lib_dir: str) -> str:
    """dodo_build_id() of the installed libdodo: the git commit it was built from ("-dirty" with local
    changes, "unknown" from a source archive), which `dodo info` printed nowhere: only "dodo 0.1.0", the
    same for every build (C outside probe, round forty-one's not-fixed item)."""
    import ctypes

    try:
        library = ctypes.CDLL(os.path.join(lib_dir, "libdodo.so"))
        library.dodo_build_id.restype = ctypes.c_char_p
        return library.dodo_build_id().decode("ascii", "replace")
    except (OSError, AttributeError) as error:  # not there, or a libdodo older than dodo_build_id
        return f"unknown ({error})"


def _info(args: argparse.Namespace) -> int:
    from ._closure import runtime_available, runtime_paths

    if args.path:
        paths = runtime_paths()  # one path alone, for build systems: `dodo info --cmake-dir`
        path = paths[args.path]
        if not os.path.exists(path):  # never hand a build system a directory that is not there
            why = ("this dodo was built without the closure runtime (Box3D only), so the C API is not installed"
                   if not runtime_available() else "the C API's files are not where this installation expects them")
            print(f"dodo info: error: {path} does not exist: {why}", file=sys.stderr)
            return 1
        print(path)
        return 0
    from ._cli_common import emit, json_target_file
    from ._output_guard import marked_report, refuse_replacing_with_report

    try:
        # A file that is not an earlier report of dodo info is never replaced by it (as dodo score --json)
        refuse_replacing_with_report(json_target_file(args.json), "dodo info --json")
        lines, data = info_report()
        emit("\n".join(lines), marked_report(data, "dodo info"), args.json)
    except (OSError, ValueError) as error:
        if isinstance(error, BrokenPipeError) or not json_target_file(args.json):
            raise  # standard output's own errors: the command's guard ends them (141 for a reader gone)
        from ._cli_common import one_line
        print(f"dodo info: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


def info_report() -> tuple[list[str], dict]:
    """The listing of `dodo info` (its lines) and the same facts as `dodo info --json` prints them (a dict,
    written with ``"dodo_report": "dodo info"`` first). There was no JSON form: a script or a build system
    that wanted the default model and the ONNX Runtime library at once parsed ``key: value`` lines whose
    values carry notes (outside probe, Python rounds sixty-three and sixty-four). Its keys, always present
    (null where the fact does not apply):

    - ``dodo_version``, ``numpy_version``: the versions; ``core_module``: the compiled core's file.
    - ``lebedev_orders``: the Lebedev orders available (a list of integers).
    - ``box3d_code_path``: Box3D's per-CPU code path that runs here ("x86-64-v4", "x86-64-v3" or
      "baseline"); ``box3d_vector_unit``: its instructions in words ("AVX-512", "AVX2 + FMA", "no vector
      clones").
    - ``closure_runtime``: true when the closure runtime (and the C API) is built; ``libdodo_build``:
      libdodo's dodo_build_id(), the git commit it was built from (null without the runtime).
    - ``include_dir``, ``lib_dir``, ``cmake_dir``, ``pkgconfig_dir``, ``default_model``: the paths, as
      ``dodo info --include-dir`` and the other flags print them; ``not_installed``: those of these keys
      whose path does not exist (a Box3D-only build).
    - ``onnxruntime_library``: the ONNX Runtime library a closure with a model loads first
      ($DODO_ONNXRUNTIME_LIBRARY's value where it is set, else the onnxruntime package's; null where
      neither: the system's library path is searched); ``onnxruntime_library_from``:
      "DODO_ONNXRUNTIME_LIBRARY", "the onnxruntime package" or null; ``onnxruntime_package_library``: the
      onnxruntime package's library, or null.
    - ``network_evaluator``, ``onnxruntime_memory_limit``, ``allow_untested_model``: the values of
      $DODO_NETWORK_EVALUATOR, $DODO_ONNXRUNTIME_MEMORY_LIMIT and $DODO_ALLOW_UNTESTED_MODEL (the
      development opt-out: "1" lets a package without test vectors load), or null where unset or empty.
    - ``launcher``: the launcher that started this process as one of several (torchrun, mpirun, srun), in
      words, or null.
    - ``problems``: the listing's lines that say NOT (the runtime not built, a variable's library NOT
      FOUND, a value NOT VALID): empty where the installation is usable as it is.
    """
    import numpy

    from . import __version__, _core
    from ._closure import runtime_available, runtime_paths

    paths = runtime_paths()
    given_paths = dict(paths)
    lines: list[str] = []
    lines.append(f"dodo {__version__}")
    lines.append(f"numpy {numpy.__version__}")
    lines.append(f"core module: {_core.__file__}")
    lines.append(f"Lebedev orders: {_core.available_lebedev_orders()}")
    # Which of Box3D's per-CPU code paths runs here: results differ across paths by ~1e-15 N_tot (README,
    # "Accuracy"), so a report of last-bit differences between machines starts from this line.
    paths_text = {"x86-64-v4": "AVX-512", "x86-64-v3": "AVX2 + FMA", "baseline": "no vector clones"}
    path_name = _core.box3d_instruction_set()
    lines.append(f"Box3D code path: {path_name} ({paths_text.get(path_name, '?')})")
    # The runtime is left out only by DODO_BUILD_RUNTIME=OFF (its headers ship with the source); "no
    # ONNX Runtime headers at build time" named no cause a user could act on (documentation probe).
    lines.append("closure runtime: " + ("built" if runtime_available() else
                 "NOT built (this dodo was built with DODO_BUILD_RUNTIME=OFF: Box3D only, no closure, no C API)"))
    build = _libdodo_build_id(paths["lib_dir"]) if runtime_available() else None
    if build is not None:
        lines.append(f"libdodo build: {build}")
    library = os.environ.get("DODO_ONNXRUNTIME_LIBRARY")
    if library:  # what a closure loads first (docs/runtime.md): the onnxruntime package's was shown instead
        from ._closure import _escaped

        # A path the variable names that is not there: every closure with a model fails to load it, which
        # `dodo info`, the installation's check, showed without a word; a newline in it split the line
        # (outside probe, round forty-four). A bare name (no slash) is the loader's search: not judged.
        missing = ("/" in library or not library.strip()) and not os.path.isfile(library)
        what = "not a regular file" if os.path.exists(library) else "no such file"
        if os.path.exists(library) and not os.path.isfile(library):  # which kind (outside probe, Python round fifty)
            from ._atomic import _file_kind

            try:
                what = f"not a regular file ({_file_kind(os.stat(library).st_mode)})"
            except OSError:  # gone meanwhile: the words above
                pass
        if not library.strip():  # " ": the runtime dlopens it and fails, where info said nothing (round 49)
            what = "a value of white space alone, no file name"
        elif library.strip() != library and not os.path.isfile(library):
            # "/opt/ort/libonnxruntime.so " (a quoted line of a job script) was "no such file", its space
            # unseen (outside probe, Python round forty-nine), as section 78's model paths.
            missing = True
            what += (" (its value has leading or trailing white space; "
                     + (f"{_escaped(library.strip())} exists: remove the white space)" if os.path.isfile(library.strip())
                        else "remove it)"))
        if not os.path.exists(library) and os.path.islink(library):  # "no such file" of a link there (round 48)
            try:
                what = f"a symbolic link to {_escaped(os.readlink(library))}, which does not exist"
            except OSError:
                pass
        from ._closure import bare_library_hint

        # A bare name that is a file here: the loader never looks in the current directory, so the closure
        # failed with "No such file" of that file, and info said nothing (outside probe, Python round fifty).
        bare = bare_library_hint(library)
        paths["onnxruntime_library"] = (
            f"{_escaped(library)} (DODO_ONNXRUNTIME_LIBRARY"
            + (f"; NOT FOUND: {what}, so a closure with a model fails to load it; fix or unset the variable"
               if missing else f";{bare[:-1].replace(' (', ' ', 1)}" if bare else "")
            + f"; the onnxruntime package's: {paths['onnxruntime_library'] or 'none'})")
    elif not paths["onnxruntime_library"]:  # was a blank after the colon (outside probe, round 30)
        paths["onnxruntime_library"] = ("none found: no onnxruntime package in this Python; a closure then looks "
                                        "for libonnxruntime on the system's library path (pip install onnxruntime, "
                                        "or set DODO_ONNXRUNTIME_LIBRARY)")
    for key in ("include_dir", "lib_dir", "cmake_dir", "pkgconfig_dir", "default_model", "onnxruntime_library"):
        value = paths[key]
        if key != "onnxruntime_library" and value and not os.path.exists(value):  # a Box3D-only build
            value = f"{value} (not installed)"
        lines.append(f"{key}: {value}")
    variable_lines = _runtime_variable_lines()
    lines += variable_lines
    launch = _launch_line()
    if launch:
        lines.append(launch)
    data = {
        "dodo_version": __version__, "numpy_version": numpy.__version__, "core_module": _core.__file__,
        "lebedev_orders": list(_core.available_lebedev_orders()),
        "box3d_code_path": path_name, "box3d_vector_unit": paths_text.get(path_name),
        "closure_runtime": runtime_available(), "libdodo_build": build,
        **{key: given_paths[key] for key in ("include_dir", "lib_dir", "cmake_dir", "pkgconfig_dir", "default_model")},
        "not_installed": [key for key in ("include_dir", "lib_dir", "cmake_dir", "pkgconfig_dir", "default_model")
                          if given_paths[key] and not os.path.exists(given_paths[key])],
        "onnxruntime_library": library or given_paths["onnxruntime_library"] or None,
        "onnxruntime_library_from": ("DODO_ONNXRUNTIME_LIBRARY" if library else
                                     "the onnxruntime package" if given_paths["onnxruntime_library"] else None),
        "onnxruntime_package_library": given_paths["onnxruntime_library"] or None,
        "network_evaluator": os.environ.get("DODO_NETWORK_EVALUATOR") or None,
        "onnxruntime_memory_limit": os.environ.get("DODO_ONNXRUNTIME_MEMORY_LIMIT") or None,
        "allow_untested_model": os.environ.get("DODO_ALLOW_UNTESTED_MODEL") or None,
        "launcher": launch.split(": ", 1)[1] if launch else None,
        "problems": [line for line in lines if " NOT " in line],
    }
    return lines, data


def _runtime_variable_lines() -> list[str]:
    """A line for each of DODO_NETWORK_EVALUATOR, DODO_ONNXRUNTIME_MEMORY_LIMIT (and DODO_ALLOW_UNTESTED_MODEL,
    below) that is set (not empty,
    which the runtime takes as unset), saying when the runtime refuses its value: then every closure with
    a model fails to load (DODO_ERROR_INVALID_ARGUMENT), which `dodo info`, the installation's check,
    showed without a word, as it had the library variable's missing file (outside probe, round
    forty-six). The rules are the runtime's (closure.cpp, ort_library.cpp): an evaluator "auto" or
    "onnxruntime"; a limit of decimal digits alone, at least 1 MiB, within 64 bits."""
    from ._closure import _escaped

    lines = []
    evaluator = os.environ.get("DODO_NETWORK_EVALUATOR")
    if evaluator:
        bad = evaluator not in ("auto", "onnxruntime")
        from ._closure import native_evaluator_hint

        lines.append(f"network_evaluator: {_escaped(evaluator)} (DODO_NETWORK_EVALUATOR"
                     + ('; NOT VALID: known "auto" and "onnxruntime", so every closure with a model fails to load '
                        '(but one made with evaluator="onnxruntime"); fix or unset the variable'
                        + native_evaluator_hint(evaluator) if bad else "") + ")")
    limit = os.environ.get("DODO_ONNXRUNTIME_MEMORY_LIMIT")
    if limit:
        digits = limit.isascii() and limit.isdigit()
        bad = not digits or not (1 << 20) <= int(limit) < (1 << 64)
        lines.append(f"onnxruntime_memory_limit: {_escaped(limit)} (DODO_ONNXRUNTIME_MEMORY_LIMIT, bytes"
                     + ("; NOT VALID: decimal digits alone, from 1048576 (1 MiB) to 2^64 - 1, so every closure "
                        "with a model fails to load; fix or unset the variable" if bad else "") + ")")
    # The development opt-out, left set in a job's environment, let packages without test vectors load with
    # no word from the installation's check; a value other than 1 (yes, true) did nothing, also without a
    # word (outside probe, Python round sixty-four). The rule is the runtime's (closure.cpp): exactly "1".
    allow = os.environ.get("DODO_ALLOW_UNTESTED_MODEL")
    if allow:
        lines.append(f"allow_untested_model: {_escaped(allow)} (DODO_ALLOW_UNTESTED_MODEL"
                     + ("; development only: a package without test vectors, or whose test vectors never reach "
                        "the network, loads untested" if allow == "1" else
                        "; has no effect: the runtime takes the value 1 alone") + ")")
    return lines


#: The command line being parsed (_parse), for _Parser.error's hints.
_argv_being_parsed: list[str] = []


class _Parser(argparse.ArgumentParser):
    """argparse's parser (also of every subcommand: add_subparsers makes them of its parser's class),
    whose "arguments are required" error says when --json took the word meant as one of them."""

    def error(self, message):
        if message.startswith("the following arguments are required"):
            from ._cli_common import json_took_a_word_hint

            message += json_took_a_word_hint(_argv_being_parsed)
        from ._cli_common import dash_file_hint

        message += dash_file_hint(_argv_being_parsed)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dodo", description="Dodo: Box3D + learned closure for the neutrino FFI")
    from . import __version__  # `dodo --version`, as most tools answer it (was "unrecognized arguments")

    parser.add_argument("--version", "-V", action="version", version=f"dodo {__version__}",
                        help="print the version and exit (dodo info: versions and paths)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # A description of their own: `dodo reference --help` and `dodo info --help` printed the options alone,
    # not what the command does (outside probe, Python round sixty).
    reference = subparsers.add_parser(
        "reference", help="Box3D over the shipped reference cases, as a table",
        description="Run Box3D (dodo.box3d) over the reference cases shipped with dodo and print, per case, N_tot, "
                    "the growth-rate proxy, the mu/tau-averaged rest-frame densities before and after (units of "
                    "N_tot), the largest conservation error, and the deviations from the stored reference F_box "
                    "and from Emu's asymptotic state where the case has one. Exit status 1 when the conservation "
                    "error or the deviation from the reference outputs exceeds its tolerance.")
    # Defaults as dodo.box3d's (issue 11): order 17, exact Z.
    reference.add_argument("--lebedev-order", type=int, default=17, help="Lebedev order (17, 41, 131; default 17)")
    reference.add_argument("--z-method", choices=("exact", "jedynak"), default="exact", help="default: exact")
    reference.set_defaults(func=_reference)
    info = subparsers.add_parser(
        "info", help="versions and paths of this installation (for CMake, pkg-config)",
        description="Print the versions of dodo and NumPy, the core module, the Lebedev orders, Box3D's code path "
                    "on this CPU, whether the closure runtime is built (and libdodo's build), the C API's include, "
                    "lib, CMake and pkg-config directories, the default model and the ONNX Runtime library; with "
                    "one of the path flags below, that path alone; with --json, the same facts as JSON.")
    info.set_defaults(func=_info, path=None)
    only = info.add_mutually_exclusive_group()  # one path per call: two flags printed the last alone
    for flag in ("include", "lib", "cmake", "pkgconfig"):
        only.add_argument(f"--{flag}-dir", dest="path", action="store_const", const=f"{flag}_dir",
                          help=f"print only the {flag} directory")
    only.add_argument("--default-model", dest="path", action="store_const", const="default_model",
                      help="print only the path of the shipped default model (C: dodo_default_model_path())")
    from ._cli_common import add_json_argument

    # The listing as JSON, its keys documented (outside probe, Python round sixty-four): a flag of the group,
    # as a path flag prints one path alone.
    add_json_argument(only, "the same facts (its keys: help(dodo.cli.info_report))")
    # `dodo test`, what a user types after `dodo info`, was "invalid choice: 'test'": the installation's
    # check is `python -m dodo.test` (README), under a name the command did not know (outside probe, Python
    # round sixty-four). The same check, the same words and exit status.
    check = subparsers.add_parser(
        "test", help="check this installation (the same as python -m dodo.test)",
        description="Installation smoke test (the same as python -m dodo.test): Box3D on the shipped reference "
                    "cases, then the closure runtime with the default model; exit 0 when both work (a Box3D-only "
                    "build says so), 1 when a check fails.")
    check.set_defaults(func=_test)
    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # that part is not part of this installation
            raise
        module.register(subparsers)
    parser.subcommand_parsers = subparsers.choices  # {name: parser}, for _parse's messages
    return parser


def _parse(parser: argparse.ArgumentParser, argv):
    """parse_args, except that an unknown option of a subcommand is reported by that subcommand's
    parser: its usage line, `dodo reference: error: unrecognized arguments: --threads 0`, where
    argparse printed dodo's top-level usage (`usage: dodo [-h] [--version] COMMAND ...`), which
    names no option of the command that was run."""
    _argv_being_parsed[:] = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        subcommand = getattr(parser, "subcommand_parsers", {}).get(getattr(args, "command", None))
        (subcommand or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args




class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM or SIGHUP while :func:`main` runs (a BaseException, as
    KeyboardInterrupt is, so that no ``except Exception`` swallows it); ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


#: Signals that unwind a command like Ctrl-C, with the line printed for each: SIGTERM (`kill PID`, a
#: batch system's time limit, `timeout`) and SIGHUP (the terminal or ssh session closed).
_TERMINATING_SIGNALS = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up (SIGHUP: the terminal closed)"}


def _on_terminating_signal(signum, frame) -> None:
    # A second signal while the first unwinds (temporaries being removed) ends the process at once.
    signal.signal(signum, signal.SIG_DFL)
    raise _Terminated(signum)


def _catch_terminating_signals() -> dict:
    """SIGTERM and SIGHUP unwind like Ctrl-C: the temporary of the file being written is removed
    (its target untouched), one line is printed, exit 128 + the signal (143, 129). Before, Python's
    default action ended the process on the spot: no message, and the temporary left beside the
    target (removed by the next write of that file); SIGHUP (a closed terminal) still did so after
    SIGTERM was handled. Returns {signal: handler to restore} for the handlers installed: none in
    another thread than the main one, nor for a signal not at its default (a caller that chose its
    own handling, or `nohup`, which ignores SIGHUP, keeps it)."""
    previous = {}
    for signum in _TERMINATING_SIGNALS:
        try:
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, _on_terminating_signal)
        except (ValueError, OSError):  # not the main thread of the main interpreter
            break
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    """Puts back the handlers :func:`_catch_terminating_signals` replaced."""
    for signum, handler in previous.items():
        try:
            signal.signal(signum, handler)
        except (ValueError, OSError):
            pass


def _second_interrupt_ends_at_once() -> None:
    """For the `dodo` command only (not main() called by a program): once a Ctrl-C or SIGTERM has
    unwound the command (its temporaries removed), a second Ctrl-C ends the process at once and
    quietly, as SIGTERM's second delivery does. Before, a second Ctrl-C raised KeyboardInterrupt in
    whatever ran then, the restoring of the handlers or an exit handler of a library (torch's),
    and printed a traceback after "dodo X: interrupted" (data-loss probe, round four)."""
    try:
        if _startup.launched_as_command:
            signal.signal(signal.SIGINT, _startup.end_at_once)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no signals here
        pass


def _signal_ending(error: BaseException) -> tuple[int, str] | None:
    """(exit status, word) for a command ended by Ctrl-C, SIGTERM or SIGHUP: 128 + the signal (130,
    143, 129), the status a shell shows for a process that signal ended; None for anything else."""
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(error, _Terminated):
        return 128 + int(error.signum), _TERMINATING_SIGNALS[error.signum]
    return None


def _argument_strings(argv):
    """``argv`` as argparse takes it: each word a str, an ``os.PathLike`` (and bytes) as its file-system
    text, as ``subprocess.run`` takes them. `main(["score", "box3d", Path("d.h5")])` from a program ended in
    argparse's `TypeError: 'PosixPath' object is not subscriptable`, naming no argument (outside probe,
    Python round fifty-four); any other type is a TypeError naming its place."""
    if argv is None:
        return None
    if isinstance(argv, (str, bytes, os.PathLike)):  # main("info") was parsed as the words i, n, f, o
        raise TypeError(f"dodo.cli.main: argv is one {type(argv).__name__} ({argv!r}); give a list of words, e.g. "
                        "shlex.split(line)")
    words = []
    for place, word in enumerate(argv):
        if isinstance(word, (os.PathLike, bytes)):
            word = os.fsdecode(word)
        if not isinstance(word, str):
            raise TypeError(f"dodo.cli.main: argv[{place}] is {type(word).__name__} {word!r}; each argument must be "
                            "a str or an os.PathLike (as for subprocess.run): e.g. str(value)")
        words.append(word)
    return words


def main(argv: list[str] | None = None) -> int:
    argv = _argument_strings(argv)
    original_stderr, forgiving = sys.stderr, _ForgivingStderr(sys.stderr)
    sys.stderr = forgiving
    command = None
    written: list[str] = []  # the command's outputs renamed into place, complete (outputs_as_found)
    previous_handlers = _catch_terminating_signals()

    def run() -> int:
        nonlocal command, written
        # The start-up handler of `dodo` and `python -m dodo` (dodo._startup) ends the process on a
        # Ctrl-C during the imports; from here on Ctrl-C unwinds the command (temporaries removed).
        _startup.release()
        try:
            parser = build_parser()
            args = _parse(parser, argv)
        except SystemExit:  # --help, a usage error: argparse's text must reach stdout too
            sys.stdout.flush()
            raise
        command = args.command
        if not hasattr(args, "func"):
            parser.print_help()
            return 2
        replicated = (_torchrun_replica_problem(command) or _mpi_replica_problem(command)
                      or _removed_working_directory(command))
        if replicated:
            print(f"{_name(command)}: error: {replicated}", file=sys.stderr)
            return 2
        # A dry run's listing is its whole result: it stops with its reader, as the other commands do.
        if command in _OUTLIVE_THEIR_READER and isinstance(sys.stdout, _GuardedStdout) and \
                not getattr(args, "dry_run", False):
            sys.stdout.outlives_its_reader = _name(command)
        from ._atomic import outputs_as_found

        try:
            with outputs_as_found() as outputs:  # an output another process writes during the command is not replaced
                written = outputs
                code = int(args.func(args) or 0)
                sys.stdout.flush()  # text still buffered fails here, where the outputs written are known
            return code
        except StandardOutputError as error:  # its line says which outputs were written, complete, before
            note = _written_note(command, written)
            if note:
                raise StandardOutputError(f"{error}; {note}") from None
            raise

    try:
        # Standard output as every program of the package guards it (one helper: a reader that went
        # away, 141; an output that cannot be written, one line and 2).
        return with_guarded_stdout(lambda: _name(command), run)
    except (KeyboardInterrupt, _Terminated) as ended:
        # Ctrl-C, SIGTERM, SIGHUP: one line instead of a traceback; outputs are written atomically, so
        # none is left half-written (a temporary is removed on the way out, the target untouched).
        _second_interrupt_ends_at_once()
        status, word = _signal_ending(ended)
        note = _written_note(command, written)
        print(f"{_name(command)}: {word}{f' after {note}' if note else ''}", file=sys.stderr)
        return status
    except MemoryError as error:
        # An input or option asking for more than the machine has (apply, score, synth ...: the solver and
        # training commands say which settings to lower themselves): one line, not a traceback.
        if _raised_inside_an_import(error):
            # `(ulimit -v 145000; dodo synth)` blamed "the input or the options" for an import that ran
            # out of memory (outside probe, Python round fifty-three).
            print(f"{_name(command)}: error: {_out_of_memory_while_importing()}", file=sys.stderr)
            return 2
        # Under an address-space limit, the limit too: `(ulimit -v 172500; dodo score box3d s.h5)` blamed the
        # input for "Unable to allocate 1.53 MiB" (outside probe, Python round fifty-four).
        limit = _address_space_limit_kb()
        print(f"{_name(command)}: error: out of memory ({str(error) or 'MemoryError'}): the input or the options "
              "ask for more memory than the machine gives"
              + (f" (or than the address-space limit, ulimit -v, of {limit} kB allows: raise it, e.g. ulimit -v "
                 "unlimited)" if limit is not None else ""), file=sys.stderr)
        return 2
    except ImportError as error:
        # An installed dependency that fails to import (torch without its CUDA libraries, h5py without
        # libhdf5): a traceback, exit 1, in apply, synth, preprocess and every torch command (outside
        # probe, round 30). A module that is not installed at all is named by the commands themselves.
        print(f"{_name(command)}: error: {_import_failure(error)}", file=sys.stderr)
        return 2
    except SystemError as error:
        # `dodo train` under `ulimit -v 700000` ended with `SystemError: error return without exception set`
        # raised inside an import, as a traceback, exit 1 (outside probe, Python round fifty-six; section 91).
        if not _import_ran_out_of_memory(error):
            raise
        print(f"{_name(command)}: error: {_out_of_memory_while_importing()}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as error:
        # An error no command's handler took whose text is HDF5's "memory allocation failed" (h5py under an
        # address-space limit): one line with the advice for memory, not a traceback (round fifty-six).
        if not _hdf5_ran_out_of_memory(str(error)):
            raise
        from ._cli_common import one_line
        print(f"{_name(command)}: error: {_with_memory_advice(one_line(error))}", file=sys.stderr)
        return 2
    finally:
        _restore_signal_handlers(previous_handlers)
        if sys.stderr is forgiving:
            sys.stderr = original_stderr


#: The commands whose outputs are their finished products, each written once at the end: a Ctrl-C,
#: SIGTERM or a failed standard output after one was renamed into place (while the summary prints)
#: said `dodo apply: interrupted`, exit 130, of a complete OUT, which a script taking 130 for "no
#: output" reran or deleted (outside probe, Python round forty-seven; section 66 proposed it). The
#: training and solver commands (checkpoints, resumable databases) say what they kept themselves.
_FINISHED_PRODUCT_COMMANDS = frozenset({"apply", "score", "synth", "preprocess", "export", "plot", "evaluate",
                                        "inspect"})


def _written_note(command, written) -> str:
    """'OUT was written, complete' for the outputs ``command`` had renamed into place; '' for none."""
    if command not in _FINISHED_PRODUCT_COMMANDS or not written:
        return ""
    names = ", ".join(written)
    return f"{names} {'was' if len(written) == 1 else 'were'} written, complete"


def _import_failure(error: ImportError) -> str:
    """One line for an ImportError that ended a command: the module whose import failed (the first
    frame of the traceback outside dodo), and its own words."""
    module = None
    frame = error.__traceback__
    while frame is not None:
        name = str(frame.tb_frame.f_globals.get("__name__", ""))
        if name and name.split(".")[0] not in ("dodo", "importlib", "__main__"):
            module = name.split(".")[0]
            break
        frame = frame.tb_next
    module = module or (error.name or "").split(".")[0] or None
    text = " ".join(str(error).split())
    if isinstance(error, ModuleNotFoundError):
        return f"{error.name or module} is not installed ({text})"
    if _import_ran_out_of_memory(error):
        # The loader could not map the library (an address-space limit, ulimit -v, or a full machine):
        # reinstalling does not help (outside probe, Python round fifty-three; section 88 found it).
        what = f"importing {module} failed" if module else "an import failed"
        return f"{what}: {text} ({_not_enough_memory_to_load()})"
    if module is None:
        return f"an import failed: {text}"
    return (f"importing {module} failed: {text} (its installation is broken or incomplete: reinstall it, e.g. "
            f"pip install --force-reinstall {module})")


#: The training commands (minutes to hours; their results are files, their standard output progress):
#: they go on when the reader of their standard output goes away. Every other command stops there, 141.
#: `dodo study` (a grid of trainings) stopped there in its first run, its summary unwritten (outside
#: probe, data-loss round eight).
_OUTLIVE_THEIR_READER = frozenset({"train", "train-ensemble", "learning-curve", "study"})

#: The one command that runs data-parallel over the processes torchrun starts (training/distributed.py).
_DATA_PARALLEL_COMMANDS = frozenset({"train"})


def _torchrun_replica_problem(command, environ=None) -> str | None:
    """Why ``command`` must not run in this process: started by torchrun (TORCHELASTIC_RUN_ID set,
    WORLD_SIZE > 1), every process would run the whole of a command other than `dodo train`.
    `torchrun --nproc-per-node 2 -m dodo train-ensemble` trained in one process while the other
    stopped at the output's lock with `... is in use by another dodo train-ensemble (pid N): wait for
    it to end`, naming its sibling as a stranger, and torchrun then killed the first (`dodo
    simulate`, the same with its lock; `dodo export` and `preprocess` wrote their file twice)
    (outside probe, round 30). None when the command may run."""
    environ = os.environ if environ is None else environ
    # info, reference and test only print: once per process, as under mpirun (_mpi_replica_problem).
    if command in _DATA_PARALLEL_COMMANDS or command in _EVERY_PROCESS_COMMANDS or \
            not str(environ.get("TORCHELASTIC_RUN_ID", "")).strip():
        return None
    try:
        world = int(str(environ.get("WORLD_SIZE", "1")).strip() or "1")
    except ValueError:
        return None
    if world <= 1:
        return None
    return (f"started by torchrun as one of {world} processes (WORLD_SIZE={world}), but only dodo train runs "
            f"data-parallel over them; each process would run the whole command: run dodo {command} as one "
            "process, without torchrun" + _REPLICA_HINTS.get(command, ""))


_REPLICA_HINTS = {"train-ensemble": " (its members train in ensemble.processes worker processes)",
                  "simulate": " (mpirun or srun shares a campaign over MPI ranks: docs/qke.md)"}

#: The one command that shares its work over the ranks of an MPI launcher (qke/parallel.py).
_MPI_PARALLEL_COMMANDS = frozenset({"simulate"})
_MPI_REPLICA_HINTS = {"train": " (dodo train runs data-parallel under torchrun: docs/training.md)",
                      "apply": " (a transport code calls the closure on its own cells through libdodo on every "
                               "rank: docs/runtime.md)"}


def _mpi_replica_problem(command, environ=None) -> str | None:
    """Why ``command`` must not run in this process: one of N > 1 ranks that mpirun or srun started,
    each of which would run the whole command. `mpirun -n 2 dodo apply` (or synth, preprocess, score,
    export) did the same work twice without a word, both ranks writing the same -o file. A child
    process that a rank's own program starts (`subprocess.run(["dodo", ...])`) inherits the world
    size but is no rank, and runs (dodo.qke.parallel.replicated_launch). None when the command may run."""
    if command in _MPI_PARALLEL_COMMANDS or command in _EVERY_PROCESS_COMMANDS:
        return None
    from .qke.parallel import replicated_launch

    ranks, variables = replicated_launch(os.environ if environ is None else environ)
    if ranks <= 1:
        return None
    return (f"started by an MPI launcher as one of {ranks} ranks ({variables}), but only dodo simulate shares its "
            f"work over MPI ranks; each rank would run the whole command: run dodo {command} as one process, "
            f"without mpirun or srun{_MPI_REPLICA_HINTS.get(command, '')} (if this process was not started by "
            "mpirun or srun, the variable is left from another job: unset it)")


#: Commands that resolve no path of the user's (they still run in a removed working directory).
_PATHLESS_COMMANDS = frozenset({"info", "reference"})
#: Commands that write no file and run in each process a launcher starts: `dodo test` checks each node's
#: installation. It was refused under mpirun and torchrun as if it wrote an output twice (scale-out round five).
_EVERY_PROCESS_COMMANDS = _PATHLESS_COMMANDS | {"test"}


def _removed_working_directory(command) -> str | None:
    """Why ``command`` cannot run here: the working directory was removed after the shell entered it
    (`rm -rf` of a results folder, then a rerun from inside it). `dodo score box3d x.h5` and `dodo synth
    -o s.h5` said `[Errno 2] No such file or directory`, naming nothing, and every torch command ended
    in `Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so` (outside probe, round 30)."""
    if command in _PATHLESS_COMMANDS:
        return None
    try:
        os.getcwd()
    except FileNotFoundError:
        where = os.environ.get("PWD", "")
        return (f"the current directory{f' ({where})' if where else ''} no longer exists (it was removed after "
                "this shell entered it): cd to an existing directory and run the command again")
    except OSError:
        return None
    return None


def _name(command) -> str:
    return f"dodo {command}" if command else "dodo"


if __name__ == "__main__":
    sys.exit(main())
