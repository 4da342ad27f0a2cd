"""`dodo` subcommands of the training side. Registering imports neither torch nor h5py:
handlers import what they need, so `dodo --help` works on a runtime-only install."""
from __future__ import annotations

import contextlib
import functools
import os
import shlex
import sys
from pathlib import Path

from .._atomic import check_outputs, file_key, same_file
from .._shown import counted, extra_install
from .._output_guard import (MODEL_PACKAGE, PREPROCESSED, SYNTHETIC, refuse_replacing, refuse_replacing_with_plot,
                             refuse_replacing_with_report, marked_report)
from .._cli_common import (add_json_argument, add_output_argument, add_quiet_argument, file_output_path,
                           input_path, json_target_file, one_line)


def _overrides(pairs) -> dict:
    """--set key=value (value parsed as YAML) -> {dotted key: value}."""
    import yaml

    from .. import _yaml as unique_key_yaml

    result, given = {}, {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value (e.g. training.lr=1e-3); got {pair!r}")
        key = key.strip()
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            # A byte that is not UTF-8 (a Latin-1 file name) was advised "quote it as YAML", which cannot
            # hold it (outside probe, data-loss rounds seven and eight).
            raise ValueError(f"--set {key}=...: the value holds bytes that are not UTF-8 ({os.fsencode(value)!r}), "
                             "which no YAML value can hold; name the path in UTF-8, e.g. a symbolic link to it "
                             "(ln -s) or a directory named in UTF-8")
        try:
            parsed = unique_key_yaml.safe_load(value)  # {a: 1, a: 2}: an error
        except yaml.YAMLError as error:  # *syn* (an alias), [x, {x: a YAML error, never a guessed string
            problem = " ".join(str(getattr(error, "problem", None) or error).split())
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({problem}); quote it as YAML, "
                             f"e.g. --set '{key}=\"text\"' or --set 'data.holdout=[\"*x*\"]'") from None
        # One setting given twice (`--set training.lr=1e-3 ... --set training.lr=3e-3`), or a section and
        # one of its keys (`--set 'filters={...}' --set filters.max_flux_factor=0.5`): the later silently
        # replaced the earlier, as a YAML key given twice did before round 22 (outside probe, round 28).
        for earlier in given:
            if earlier == key and result[key] == parsed:
                continue  # the same value twice: one setting, no conflict
            if earlier == key or earlier.startswith(key + ".") or key.startswith(earlier + "."):
                raise ValueError(f"--set {given[earlier]!r} and --set {pair!r} both set {max(earlier, key, key=len)}: "
                                 "one would silently win over the other; give each setting once")
        result[key], given[key] = parsed, pair
    return result


def _refuse_two_values(overrides: dict, key: str, value, option: str) -> None:
    """An option that sets ``key`` given together with ``--set key=OTHER``: `dodo preprocess -o A
    --set output=B` wrote A and said nothing of B (outside probe, round 23), the value meant unknown.
    Refused unless both name the same thing."""
    import os

    if key not in overrides:
        return
    other = overrides[key]
    if other is not None and (str(other) == str(value) or os.path.abspath(str(other)) == os.path.abspath(str(value))):
        return
    raise ValueError(f"{option} {value} and --set {key}={other} give two values for one setting: give one of them")


#: The commands whose modules import torch (the others need none; its import takes seconds).
_TORCH_COMMANDS = frozenset({"train", "evaluate", "inspect", "study", "export", "train-ensemble", "learning-curve"})


def _import_torch_holding_signals() -> None:
    """Imports torch with Ctrl-C, SIGTERM and SIGHUP held, then gives a held signal to its handler.

    torch is imported by the command, after dodo's start-up guard has let go of Ctrl-C; a Ctrl-C (or
    dodo's SIGTERM handler's exception) raised inside that import could surface inside torch's C++
    initialisation, which cannot pass it on: `terminate called after throwing an instance of
    'pybind11::error_already_set'  what(): KeyboardInterrupt`, SIGABRT, exit 134 and a core file in
    place of `dodo study: interrupted` (1 Ctrl-C in about 100 at a random moment of the first seconds;
    outside probe, data-loss round seven). Held, the signal ends the command as usual once torch is
    whole. Only Python-level handlers are held (an ignored signal stays ignored); main thread only."""
    import signal
    import threading

    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        return
    held: list[int] = []
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None and callable(signal.getsignal(signum)):
                previous[signum] = signal.signal(signum, lambda number, frame: held.append(number))
        try:
            import torch  # noqa: F401
        except ImportError:  # the command's own import says what is missing
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        previous[held[0]](held[0], None)


def _friendly(name: str):
    """Turn expected failures (bad config, bad file, missing dependency) into one-line errors."""

    def wrap(handler):
        @functools.wraps(handler)
        def run(args) -> int:
            try:
                if name in _TORCH_COMMANDS:
                    _import_torch_holding_signals()
                return int(handler(args) or 0)
            except BrokenPipeError:  # the reader went away (`| head`): dodo.cli.main ends quietly, 141
                raise
            except ModuleNotFoundError as exc:
                # Exit 2, as dodo score, apply and simulate say a missing h5py and as the README promises
                # (was 3, in these commands alone: outside probe, round 30).
                print(f"dodo {name}: error: {exc.name} is not installed; install the training extra: "
                      f"{extra_install('train')}", file=sys.stderr)
                return 2
            except (ValueError, FileNotFoundError, RuntimeError, OSError, ArithmeticError) as exc:
                # One line, whatever the message holds (torch's load_state_dict report is several); HDF5's
                # "memory allocation failed" with the advice for memory (outside probe, Python round fifty-six).
                from .._memory import with_memory_advice

                print(f"dodo {name}: error: {with_memory_advice(one_line(exc))}", file=sys.stderr)
                return 2
            except MemoryError as exc:  # a config asking for more than the machine has (model.n_blocks: 10^8)
                from .._memory import raised_inside_an_import

                # The advice below is for the commands whose configuration sets the model's and the batch's size.
                if raised_inside_an_import(exc) or name not in ("train", "study"):
                    # torch's import under `ulimit -v 600000` (also matplotlib's, h5py's), and `dodo preprocess`
                    # hashing its input under `ulimit -v 170000`, blamed model.hidden_dim and data.batch_size,
                    # which neither has: dodo.cli.main says it, in its words for an import or for the input
                    # and the options (outside probe, Python round fifty-four).
                    raise
                print(f"dodo {name}: error: out of memory ({str(exc) or 'MemoryError'}): the configuration needs "
                      "more memory than the machine gives; lower model.hidden_dim, model.n_blocks or "
                      "data.batch_size (or the number of rows)", file=sys.stderr)
                return 2

        return run

    return wrap


@_friendly("preprocess")
def _preprocess(args) -> int:
    from .config import PreprocessConfig
    from .preprocess import preprocess

    overrides = _overrides(args.set)
    if args.output:
        _refuse_two_values(overrides, "output", args.output, "-o")
        overrides["output"] = args.output
    config = PreprocessConfig.load(args.config, overrides)
    # The input files too, before refuse_replacing: an output that is one of the inputs (a synth
    # database) was refused as "not a preprocessed file ... or --overwrite to replace it", advice that
    # only met the input check then (outside probe, round 28). preprocess() resolves them again and logs.
    from .preprocess import _without_own_earlier_output, resolve_inputs

    check_outputs([config.output], [args.config, *_without_own_earlier_output(resolve_inputs(config.inputs),
                                                                              config.output, None)])
    refuse_replacing(config.output, PREPROCESSED, "dodo preprocess", args.overwrite)
    preprocess(config, progress=not args.quiet)
    return 0


@_friendly("synth")
def _synth(args) -> int:
    from .._cli_common import resolve_output
    from .synth import write_synthetic_database

    output = resolve_output(args.parser, args)
    check_outputs([output])
    refuse_replacing(output, SYNTHETIC, "dodo synth", args.overwrite)
    summary = write_synthetic_database(output, args.n, seed=args.seed, heavy_symmetric=not args.asymmetric_heavy,
                                       max_flux_factor=args.max_flux_factor, lebedev_order=args.lebedev_order,
                                       z_method=args.z_method, threads=args.threads, progress=not args.quiet)
    rows = counted(summary["rows"], "row")  # "1 rows" before (round fifty-six)
    print(f"synth: {rows} -> {summary['path']} (Box3D finds a crossing in "
          f"{summary['crossing_fraction']:.1%})")
    return 0


def _refuse_to_replace_a_run(checkpoints: Path, resume_from: str | None = None) -> None:
    """A fresh run would replace another run's checkpoints at its first epochs: refuse unless asked.
    So would a run resumed from a checkpoint outside ``checkpoints`` (another run's last.pt): every
    --resume skipped this check, and `--resume A/last.pt` into a directory holding a finished run C
    replaced C's best.pt and final.pt without --overwrite (outside probe, round 22). Resuming a
    checkpoint of the directory itself continues its run, as intended."""
    from .train import REPLACED_RUN_DIR, kept_replaced_run, resumes_its_own_run

    if resumes_its_own_run(checkpoints, resume_from):
        return
    # last.prev.pt too: a run stopped between the two renames of its last.pt (a second Ctrl-C, a kill)
    # holds best.pt and last.prev.pt, which `--resume ck/last.pt` continues (from last.prev.pt, with a
    # warning); the refusal offered --overwrite alone (data-loss probe, round four).
    found = [name for name in ("final.pt", "last.pt", "best.pt", "last.prev.pt") if (checkpoints / name).exists()]
    kept = kept_replaced_run(checkpoints)
    # The run an unfinished --overwrite run replaced: a run that finishes here removes it.
    kept_note = (f" ({checkpoints / REPLACED_RUN_DIR} keeps the run it replaced with --overwrite until it "
                 "finishes)" if kept else "")
    if not found and kept:
        raise ValueError(f"{checkpoints / REPLACED_RUN_DIR} keeps a run replaced by an --overwrite run that did not "
                         f"finish ({', '.join(path.name for path in kept)}); a new run here would remove it when it "
                         f"finishes: move those files back to {checkpoints} to keep that run, --overwrite replaces "
                         "it, or set output.checkpoint_dir to another directory")
    if not found:
        return
    what = ("a finished run (final.pt)" if "final.pt" in found else "an unfinished run (" + ", ".join(found) + ")") + kept_note
    if resume_from:
        own = (f"--resume {shlex.quote(str(checkpoints / 'last.pt'))} continues that run, "
               if "last.pt" in found or "last.prev.pt" in found else "")
        raise ValueError(f"{checkpoints} holds {what} of its own; resuming {resume_from} (another directory's "
                         f"checkpoint) there would replace it: {own}--overwrite replaces it, or set "
                         "output.checkpoint_dir to another directory")
    resumable = "last.pt" in found or "last.prev.pt" in found
    # A shell word: a directory "c k" was told `--resume /x/c k/last.pt` (outside probe, training round five).
    hint = (f"--resume {shlex.quote(str(checkpoints / 'last.pt'))} continues it, "
            if "final.pt" not in found and resumable else "")
    raise ValueError(f"{checkpoints} holds {what}; a new run would replace it: {hint}--overwrite replaces it, "
                     f"or set output.checkpoint_dir to another directory")


#: The end of a refusal of results_dir/train.log's lock (held by another run: _train_log_lock).
TRAIN_LOG_IN_USE = ("; two runs appending to one train.log would mix their lines: set output.results_dir to another "
                    "directory")


@contextlib.contextmanager
def _train_log_lock(log: Path):
    """The lock of results_dir/train.log for the run (dodo._atomic.exclusive_output, removed at its end).
    The checkpoint directory's lock kept two runs from one checkpoint directory, but two runs into two
    checkpoint directories with one results_dir (a config copied with its checkpoint_dir changed) both
    appended to the same train.log at once, each run's log interleaved with the other's epochs
    (data-loss probe, round five). The second is refused at once."""
    from .._atomic import OutputInUseError, exclusive_output

    lock = exclusive_output(log, "dodo train")
    try:
        lock.__enter__()
    except OutputInUseError as error:
        raise OutputInUseError(f"{error}{TRAIN_LOG_IN_USE}") from None
    with contextlib.ExitStack() as held:
        held.push(lock)  # released (and its file removed) however the run ends
        yield


@_friendly("train")
def _train(args) -> int:
    from .config import ExperimentConfig
    from .train import train

    overrides = _overrides(args.set)
    if args.resume:
        import os

        if os.path.isdir(args.resume):
            # `--resume ck` (the run's directory) was taken for another directory's checkpoint: "ck holds
            # a finished run of its own; resuming ck (another directory's checkpoint) there would replace
            # it" (outside probe, round 30).
            from .._atomic import check_input_file

            check_input_file(args.resume, f"a checkpoint file, e.g. {Path(args.resume) / 'last.pt'}")
        _refuse_two_values(overrides, "training.resume_from", args.resume, "--resume")
        overrides["training.resume_from"] = args.resume
    config = ExperimentConfig.load(args.config, overrides, create_dirs=False)
    # The run's files must not be its training data (resuming from last.pt and writing it is intended).
    checkpoints, results = Path(config.output.checkpoint_dir), Path(config.output.results_dir)
    # last.prev.pt is made as a hard link of last.pt before the new last.pt is renamed in
    # (train._keep_as_previous): a run killed between the two leaves both names on one file, the
    # rotation's own state, which the same-file check refused, so that run could never resume
    # (CI's kill-at-random-points test, 2026-12-06). That pair is left out of the check.
    last, previous = checkpoints / "last.pt", checkpoints / "last.prev.pt"
    rotating = last.is_file() and previous.is_file() and not previous.is_symlink() and same_file(last, previous)
    import os

    from .._atomic import OutputInUseError, exclusive_directory, missing_directories, remove_empty_directories
    from .distributed import Distribution

    # Held from the check to the end: two runs started together would both pass the check and then
    # write the same checkpoints. By rank 0 only under torchrun: the one that writes the files.
    distribution = Distribution.from_environment(os.environ)
    writer = distribution.rank == 0
    try:
        # Not the output locks on torchrun's other processes: rank 0 holds train.log's for the job.
        check_outputs([checkpoints / "best.pt", last, None if rotating else previous,
                       checkpoints / "final.pt", results / "train.log"], [config.data.path, args.config],
                      check_locks=writer, appended=[results / "train.log"])
    except OutputInUseError as error:  # train.log's lock, held by a run into another checkpoint directory
        raise OutputInUseError(f"{error}{TRAIN_LOG_IN_USE}") from None
    distribution.check_rendezvous_variables(os.environ)  # before any directory is made
    made = missing_directories([checkpoints, results]) if writer else []
    with exclusive_directory(checkpoints, "dodo train") if writer else contextlib.nullcontext():
        try:
            with contextlib.ExitStack() as log_lock:
                if writer:
                    from .train import refuse_linked_run_files

                    refuse_linked_run_files(checkpoints)
                    log_lock.enter_context(_train_log_lock(results / "train.log"))
                if not args.overwrite:
                    _refuse_to_replace_a_run(checkpoints, config.training.resume_from)
                config.make_dirs()
                summary = train(config, config_path=args.config, sets=args.set)
        except BaseException as error:
            from .train import RunDirectoryMovedError

            # The directories at those paths now are not the ones this run made (moved, and perhaps made
            # again by the user): nothing of theirs is removed.
            if not isinstance(error, RunDirectoryMovedError):
                remove_empty_directories(made, checkpoints)
            raise
    return 0 if summary["status"] in ("completed", "interrupted") else 1


@_friendly("evaluate")
def _evaluate(args) -> int:
    from .._cli_common import emit
    from .evaluate import describe, evaluate_checkpoint, rows_left_out_note, training_states_note

    check_outputs([json_target_file(args.json)], [args.checkpoint, args.data])
    refuse_replacing_with_report(json_target_file(args.json), "dodo evaluate --json", args.overwrite, "--overwrite")
    table, _ = evaluate_checkpoint(args.checkpoint, args.data, args.split)
    if args.json == "-" and training_states_note(table).startswith("\nnote:"):
        print(training_states_note(table).strip(), file=sys.stderr)  # the table (and its note) is not printed
    if args.json == "-" and rows_left_out_note(table):
        print(rows_left_out_note(table).strip(), file=sys.stderr)
    emit(describe(table), marked_report(table, "dodo evaluate"), args.json, inputs=[args.checkpoint, table["data"]])
    return 0


@_friendly("inspect")
def _inspect(args) -> int:
    from .._cli_common import emit
    from .evaluate import rows_left_out_note, training_states_note
    from .inspect import format_inspection, inspect_checkpoint

    check_outputs([json_target_file(args.json)], [args.checkpoint, args.data])
    refuse_replacing_with_report(json_target_file(args.json), "dodo inspect --json", args.overwrite, "--overwrite")
    report = inspect_checkpoint(args.checkpoint, args.data, args.split, args.start, args.stop)
    if args.json == "-" and training_states_note(report).startswith("\nnote:"):
        print(training_states_note(report).strip(), file=sys.stderr)  # the table (and its note) is not printed
    if args.json == "-" and rows_left_out_note(report):
        print(rows_left_out_note(report).strip(), file=sys.stderr)
    # report["data"]: the file read, the checkpoint's training file when --data is not given.
    emit(format_inspection(report), marked_report(report, "dodo inspect"), args.json, inputs=[args.checkpoint, report["data"]])
    return 0


@_friendly("plot")
def _plot(args) -> int:
    from .plots import parity_path, plot_curve, plot_metrics

    outputs = [args.output] if args.what == "metrics" else [args.output, parity_path(args.output)]
    check_outputs(outputs, args.files)
    refuse_replacing_with_plot(outputs, "dodo plot", args.overwrite, "--overwrite")
    if args.what == "metrics":
        # A file named twice (also through a link) was drawn as two runs, "m1 [1]" and "m1 [2]", where `dodo
        # score` scores such a file once with a note: drawn once, with a note (outside probe, Python round 58).
        first, repeated = {}, []
        for path in args.files:
            key = file_key(path)  # load_metrics says why a file cannot be read
            if key in first and first[key] not in repeated:
                repeated.append(first[key])
            first.setdefault(key, path)
        written = [plot_metrics(list(first.values()), args.output)]
        if repeated:  # said once drawn: a file that cannot be read is the error alone
            shown = ", ".join(repeated[:3]) + (f" and {len(repeated) - 3} more" if len(repeated) > 3 else "")
            print(f"note: {shown} named more than once (or through a link): each drawn once")
    else:
        if len(args.files) != 1:
            raise ValueError("plot curve takes exactly one metrics JSON")
        written = plot_curve(args.files[0], args.output)
    for path in written:
        print(f"wrote {path}")
    return 0


@_friendly("study")
def _study(args) -> int:
    from .study import run_study

    rows = run_study(args.grid, dry_run=args.dry_run)
    if args.dry_run:
        for row in rows:
            print(row)
        return 0
    unfinished = [f"{row['run']} {row['status']}" for row in rows if row.get("status") != "completed"]
    if unfinished:  # the summary is written; the exit status still says that not every run finished
        # "1 of 1 runs did not finish" (outside probe, Python round fifty-seven)
        print(f"dodo study: {len(unfinished)} of {counted(len(rows), 'run')} did not finish ({', '.join(unfinished)}); "
              "see the summary", file=sys.stderr)
        return 1
    return 0


#: Most test vectors `dodo export` embeds (about 1.3 kB of metadata each; the runtime self-tests them all at load).
MAX_TEST_VECTORS = 10_000


@_friendly("export")
def _export(args) -> int:
    from .ensemble_train import CHECKPOINT_KIND, export_ensemble
    from .export import export_checkpoint
    from .train import read_checkpoint_file

    # The package format needs one at least (the runtime's self-test reads them); each is drawn from 16
    # candidate cells and stored as JSON text in the metadata: 10^8 asked for 71.5 GiB (MemoryError traceback).
    if not 1 <= args.test_vectors <= MAX_TEST_VECTORS:
        raise ValueError(f"--test-vectors must be an integer in [1, {MAX_TEST_VECTORS}]; got {args.test_vectors}")
    check_outputs([args.output], [args.checkpoint])
    refuse_replacing(args.output, MODEL_PACKAGE, "dodo export", args.overwrite)
    # Read once and sent on by its kind: it was read twice (once to learn its kind, once to export
    # it), and a file replaced between the two reads was taken for one kind and exported as the other.
    checkpoint = read_checkpoint_file(args.checkpoint)
    if isinstance(checkpoint, dict) and checkpoint.get("kind") == CHECKPOINT_KIND:
        export_ensemble(args.checkpoint, args.output, n_test_vectors=args.test_vectors, fused=args.fused,
                        check=not args.no_check, checkpoint=checkpoint)
        return 0
    if args.fused:
        raise ValueError("--fused applies to density-residual-ensemble checkpoints (dodo train-ensemble) only")
    export_checkpoint(args.checkpoint, args.output, check=not args.no_check, n_test_vectors=args.test_vectors,
                      checkpoint=checkpoint)
    return 0


#: --overwrite of the report and plot outputs (dodo score's says the same): only dodo score had one,
#: so a file that was not an earlier report or plot had to be removed by hand (outside probe, round 26).
def report_overwrite_help(outputs: str, own: str) -> str:
    """--overwrite's help for a command whose outputs are reports or plots: ``outputs`` names its
    options, ``own`` what it replaces without being asked. One text for all four commands named
    "--json, plot" in each, though evaluate and inspect write no plot and plot has no --json
    (outside probe, round 28)."""
    return (f"replace {outputs} when it exists and is not {own}; an HDF5 file, a checkpoint or a model package is "
            "never replaced")


#: learning-curve's --overwrite (its --json report and its --plot).
REPORT_OVERWRITE_HELP = report_overwrite_help("the --json or --plot file", "an earlier report or plot of this command")

#: --overwrite of the commands that replace only their own kind of output (dodo._output_guard).
OVERWRITE_HELP = ("replace the output when it exists and is not a {own} of an earlier run (a solver "
                  "database, an Emu database, another command's output: refused without it)")


def register(subparsers) -> None:
    """Add preprocess, synth, train, evaluate, inspect, plot, study and export."""
    # The description lines of preprocess, train, train-ensemble and learning-curve: their --help had
    # none (outside probe, docs truth round four), as the help of several options and their defaults.
    p = subparsers.add_parser("preprocess", help="Emu databases -> preprocessed training file (HDF5)",
                              description="Read the Emu-layout databases the config's inputs name, run Box3D on "
                                          "their initial states, filter the rows and write the preprocessed "
                                          "training file (atomically; docs/data.md, docs/training.md).")
    p.add_argument("--config", required=True, type=input_path, help="YAML, e.g. training/configs/pre_process.yaml")
    p.add_argument("-o", "--output", type=file_output_path, help="override the output path of the config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(own="preprocessed file"))
    add_quiet_argument(p, "no progress bar")
    p.set_defaults(func=_preprocess)

    p = subparsers.add_parser("synth", help="synthetic Emu-format database with a known correction to Box3D")
    add_output_argument(p, "output HDF5 file (written atomically)")
    p.set_defaults(parser=p)
    p.add_argument("-n", type=int, default=10000, help="number of simulations (rows) (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the states (default 0)")
    p.add_argument("--asymmetric-heavy", action="store_true",
                   help="draw the four heavy-lepton densities independently (default: one density for all four)")
    p.add_argument("--max-flux-factor", type=float, default=0.6,
                   help="largest flux factor |F|/n drawn for each species, in [0, 1) (default 0.6)")
    p.add_argument("--lebedev-order", type=int, default=17,
                   help="Lebedev order of the Box3D that makes the final states (default 17)")
    p.add_argument("--z-method", choices=("exact", "jedynak"), default="exact",
                   help="Box3D's inverse Langevin function: exact (to machine precision) or jedynak (Jedynak's "
                        "rational approximation) (default exact)")
    p.add_argument("--threads", type=int, default=None,
                   help="Box3D worker threads (default: the cores this process may run on)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(own="synthetic database"))
    add_quiet_argument(p, "no progress bar")
    p.set_defaults(func=_synth)

    p = subparsers.add_parser("train", help="train the residual model",
                              description="Train the residual model on a preprocessed file (the config's "
                                          "data.path), writing checkpoints to output.checkpoint_dir and the run's "
                                          "metrics to output.results_dir (docs/training.md).")
    p.add_argument("--config", required=True, type=input_path, help="YAML, e.g. training/configs/model.yaml")
    p.add_argument("--resume", metavar="CHECKPOINT", type=input_path, help="continue exactly from a checkpoint (e.g. checkpoints/last.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoints of another run in output.checkpoint_dir (refused otherwise); the "
                        "replaced run waits in its replaced_run/ until this run finishes")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=_train)

    # The positional inputs (checkpoint, FILE, grid) take input_path, as the options do since round 23:
    # an empty one (an unset shell variable) said ". is a directory" (outside probe, round 38).
    p = subparsers.add_parser("evaluate", help="model-vs-Box3D metric table of a checkpoint")
    p.add_argument("checkpoint", type=input_path)
    p.add_argument("--data", type=input_path, help="preprocessed file (default: the checkpoint's training file)")
    p.add_argument("--split", default=None, choices=("train", "val", "test", "all"),
                   help="rows of the data (default: test of the checkpoint's training file, all of another file; "
                        "train/val/test describe the training file only)")
    add_json_argument(p, "the table")
    p.add_argument("--overwrite", action="store_true", help=report_overwrite_help("the --json file", "an earlier report of this command"))
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser("inspect", help="loss-term breakdown and flux-factor statistics on a slice")
    p.add_argument("checkpoint", type=input_path, help="a checkpoint of dodo train (e.g. checkpoints/best.pt)")
    p.add_argument("--data", type=input_path, help="preprocessed file (default: the checkpoint's training file)")
    p.add_argument("--split", default=None, choices=("train", "val", "test", "all"),
                   help="rows of the data (default: val of the checkpoint's training file, all of another file; "
                        "train/val/test describe the training file only)")
    p.add_argument("--start", type=int, default=0, help="first cell of the split inspected, from 0 (default 0)")
    p.add_argument("--stop", type=int, default=1000, help="cell after the last one inspected (default 1000)")
    add_json_argument(p, "the report")
    p.add_argument("--overwrite", action="store_true", help=report_overwrite_help("the --json file", "an earlier report of this command"))
    p.set_defaults(func=_inspect)

    p = subparsers.add_parser("plot", help="plots (PNG, PDF or SVG) from metrics JSON files")
    p.add_argument("what", choices=("metrics", "curve"),
                   help="metrics: losses and |dn| across runs (at most 30: of more files, the "
                        "30 runs of lowest best validation loss, in the order given, and the title says how many "
                        "were left out); curve: train/val curve of one run, and its parity plot beside it "
                        "(OUTPUT_parity.EXT)")
    p.add_argument("files", nargs="+", metavar="FILE", type=input_path, help="results/metrics_<timestamp>.json file(s)")
    p.add_argument("-o", "--output", required=True, type=file_output_path,
                   help="plot file; its extension sets the format: .png (also without one), .pdf or .svg")
    p.add_argument("--overwrite", action="store_true", help=report_overwrite_help("the -o file", "a plot of its format that a Dodo command wrote"))
    p.set_defaults(func=_plot)

    p = subparsers.add_parser(
        "study", help="grid of training runs with a summary table",
        description="Train one run per grid point under OUTPUT_ROOT/TAG/run_XXX/ and write OUTPUT_ROOT/TAG/"
                    "summary.{json,txt}. A rerun never overwrites earlier runs: its runs are numbered after the "
                    "highest run_XXX already there, and the summary lists the earlier runs and the new ones.")
    p.add_argument("grid", type=input_path, help="YAML grid file, e.g. training/studies/lr_width.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the runs without training")
    p.set_defaults(func=_study)

    p = subparsers.add_parser("export", help="checkpoint -> ONNX model package (docs/model_package.md)")
    p.add_argument("checkpoint", type=input_path, help="a checkpoint of dodo train or dodo train-ensemble")
    p.add_argument("-o", "--output", required=True, type=file_output_path,
                   help="the model package to write (.onnx; written atomically)")
    p.add_argument("--no-check", action="store_true", help="skip the torch vs onnxruntime round trip")
    p.add_argument("--test-vectors", type=int, default=6,
                   help="number of embedded test vectors drawn (default 6; an ensemble adds its probe cells of the "
                        "gate and Box3D settings: docs/model_package.md)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(own="model package"))
    p.add_argument("--fused", action="store_true",
                   help="ensemble checkpoints: write the members as one stacked graph (same outputs, a quarter "
                        "of the nodes; not faster with ONNX Runtime on CPU, docs/training.md)")
    p.set_defaults(func=_export)


def main(argv=None) -> int:
    """``python -m dodo.training.cli ...``: the `dodo` command itself. This entry was left from before
    `dodo` wired these commands and ran them without its guards (standard output, signals, memory):
    `| head` ended in a BrokenPipeError traceback (outside probe, round 23)."""
    from ..cli import main as dodo_main

    return dodo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
