"""`dodo train-ensemble` and `dodo learning-curve`: the default model's recipe (docs/training.md).
Registering imports neither torch nor h5py."""
from __future__ import annotations

import json
import sys

from .._atomic import check_outputs
from .._cli_common import file_output_path, input_path, output_path
from .cli import REPORT_OVERWRITE_HELP, _friendly, _overrides


@_friendly("train-ensemble")
def _train_ensemble(args) -> int:
    from .ensemble_train import EnsembleConfig, growth_data_files, train_command

    config = EnsembleConfig.load(args.config, _overrides(args.set))
    # noise.oof too (a gate study's out-of-fold file, read by the label-noise member): output.checkpoint
    # naming it was refused without --overwrite only as "a zip archive that is not a checkpoint", and the
    # --overwrite that refusal offered replaced the input with the checkpoint (data-loss probe, round five).
    check_outputs([config.checkpoint], [args.config, config.data_path, *growth_data_files(config.growth_data),
                                        config.noise_oof])
    from pathlib import Path

    from .._atomic import OutputPathError, exclusive_directory, missing_directories, remove_empty_directories

    directory = Path(config.checkpoint).resolve().parent
    # A run that fails (a missing data file, a bad config value, Ctrl-C) removes the directories it
    # made if it left nothing in them but its lock, as dodo train does (outside probe, round 23).
    made = missing_directories([directory])
    # Held from the check to the end: two runs started together would both pass the check and the
    # later one would replace the earlier one's checkpoint.
    with exclusive_directory(directory, "dodo train-ensemble"):
        try:
            if not args.overwrite:
                _refuse_to_replace_a_checkpoint(Path(config.checkpoint))
            train_command(config)
        except OutputPathError as error:
            remove_empty_directories(made, directory)
            if "while this command ran" not in str(error) or str(config.checkpoint) not in str(error):
                raise
            # The line said where the directory went, not that the trained ensemble went nowhere: the checkpoint
            # is written once, at the end (outside probe, open items of training round three).
            raise OutputPathError(f"{error}; the trained ensemble was not saved anywhere (dodo train-ensemble writes "
                                  "its checkpoint once, at its end): run dodo train-ensemble again, with "
                                  "output.checkpoint in a directory that stays") from None
        except BaseException:
            remove_empty_directories(made, directory)
            raise
    return 0


def _refuse_to_replace_a_checkpoint(checkpoint) -> None:
    """A run writes its checkpoint at its end (atomically), over a finished one of an earlier run
    (tens of minutes of training, perhaps the model exported and shipped): refuse unless asked."""
    import datetime
    import os

    if not os.path.isfile(checkpoint) or os.path.getsize(checkpoint) == 0:
        return
    from .._output_guard import CHECKPOINT, file_kind

    kind = file_kind(checkpoint)
    if kind != CHECKPOINT:
        # Any file was "the checkpoint of an earlier run": a model package, a preprocessed table or a
        # solver database given as output.checkpoint was called one, and --overwrite offered as for
        # a rerun (outside probe, round 32). Say what it is, as the other commands' guard does.
        raise ValueError(f"{checkpoint} exists and is {kind}, not {CHECKPOINT}: it is not replaced; give "
                         "output.checkpoint another path (--set output.checkpoint=PATH), or --overwrite to replace it")
    written = datetime.datetime.fromtimestamp(os.path.getmtime(checkpoint), datetime.timezone.utc)
    raise ValueError(f"{checkpoint} holds the checkpoint of an earlier run (written {written:%Y-%m-%d %H:%M} UTC); "
                     "this run would replace it at its end: --overwrite replaces it, or give another path "
                     "(--set output.checkpoint=PATH)")


#: More folds than any training pool has states (63,261 in data/qke): a bound that names --folds.
MAX_FOLDS = 1_000_000
#: learning-curve's --sizes when none is given.
DEFAULT_SIZES = "500,1000,all"


@_friendly("learning-curve")
def _learning_curve(args) -> int:
    from .._atomic import json_safe, write_json_atomic
    from .ensemble_train import EnsembleConfig, growth_data_files, learning_curve, plot_curve

    config = EnsembleConfig.load(args.config, _overrides(args.set))
    if args.members is not None and any(item.split("=", 1)[0].strip() == "ensemble.members" for item in args.set or []):
        # Two values for one setting: --members won without a word (outside probe, round 23).
        raise ValueError("--members and --set ensemble.members=... both give the members per fit: give one")
    json_file = None if args.json == "-" else args.json  # "-": the JSON on stdout, as evaluate/inspect/score
    check_outputs([args.plot, json_file],
                  [args.config, config.data_path, args.emu, *growth_data_files(config.growth_data), config.noise_oof])
    from .._output_guard import marked_report, refuse_replacing_with_plot, refuse_replacing_with_report

    refuse_replacing_with_plot([args.plot], "dodo learning-curve", args.overwrite, "--overwrite")
    refuse_replacing_with_report(json_file, "dodo learning-curve --json", args.overwrite, "--overwrite")
    if args.plot:  # before the cross-validation, not after it
        from .plots import plot_format

        plot_format(args.plot)
    sizes = []
    for part in args.sizes.split(","):
        part = part.strip()
        if part == "all":
            sizes.append("all")
        elif part.isdecimal() and int(part) >= 10:  # "²".isdigit(), but int() refuses it
            sizes.append(int(part))
        else:
            raise ValueError(f"--sizes takes integers >= 10 and 'all', comma separated; got {part!r}")
    # Above the bound, "Python int too large to convert to C long" named no option (outside probe, round 26);
    # the fit checks again that the pool has as many states as folds.
    if not 2 <= args.folds <= MAX_FOLDS:
        raise ValueError(f"--folds must be >= 2 and at most {MAX_FOLDS:,} (and the pool's states); got {args.folds}")
    # With --json - the JSON alone goes to standard output: the per-size lines came first there, so
    # `--json - | jq` failed on them (outside probe, round 22); they go to standard error instead.
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if args.json == "-" else print
    # The default's sizes were refused as if given ("--sizes 500 and 1000 train on the same states") on a pool
    # too small for them (outside probe, training round three).
    named = f" (the default --sizes {DEFAULT_SIZES})" if args.sizes == DEFAULT_SIZES else ""
    rows = learning_curve(config, sizes, folds=args.folds, members=args.members, emu_path=args.emu, log=say,
                          sizes_named=named)
    # An object with the mark, as every other report: the bare list of rows carried none, so a later
    # run knew it by its rows' keys only (outside probe, rounds 25 and 26). Rows: the same as before.
    report = marked_report({"rows": rows}, "dodo learning-curve")
    # The files first, the table's before the plot drawn from it, then what is printed: a plot that
    # could not be written (a directory without write permission, a full disk) lost the JSON of the
    # finished cross-validation (outside probe, round 38); a standard output that could not be
    # written (`> /dev/full`) after "table written to F" ended the command before the plot was drawn
    # (data-loss round three). A failed plot still reports the table (printed, or the file's name).
    if args.json not in (None, "-"):
        write_json_atomic(args.json, report)
    try:
        if args.plot:
            plot_curve(rows, args.plot)
    finally:
        if args.json == "-":
            print(json.dumps(json_safe(report), indent=1, allow_nan=False, default=float))
        elif args.json:
            print(f"table written to {args.json}")
    if args.plot:
        say(f"plot written to {args.plot}")
    if args.json == "-" or (args.json is None and not args.plot):
        # The table is this command's result: with the reader of standard output gone (`--json - | jq` whose
        # jq failed), it was dropped as a progress line is, after the note "its files and logs are written as
        # usual", and the command ended with 0 (outside probe, data-loss round nine). Without --json and
        # --plot the printed per-size lines are its only record: the same (data-loss round ten).
        sys.stdout.flush()
        if getattr(sys.stdout, "reader_gone", False):
            table = "the table (--json -)" if args.json == "-" else "the table (its per-size lines)"
            raise RuntimeError(f"the reader of standard output went away, so {table} was not written: "
                               "run again with --json FILE to keep it in a file")
    return 0


def register(subparsers) -> None:
    # input_path: an empty path (an unset shell variable) is a usage error, as in dodo train and preprocess
    # (round 23): --config '' said ". is a directory", and --emu '' scored on no Emu file without a word
    # (outside probe, round 38).
    p = subparsers.add_parser("train-ensemble", help="train the density-residual ensemble (the default model's recipe)",
                              description="Train the density-residual ensemble (members, growth members, label-noise "
                                          "member, student) on a preprocessed file and write one checkpoint "
                                          "(output.checkpoint) for dodo export; docs/training.md.")
    p.add_argument("--config", required=True, type=input_path, help="YAML, e.g. training/configs/ensemble_default.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output.checkpoint when it exists (an earlier run's: refused without it)")
    p.set_defaults(func=_train_ensemble)

    p = subparsers.add_parser("learning-curve", help="k-fold CV error against training-set size (and on an Emu file)",
                              description="Cross-validate the ensemble recipe of the config on subsets of its "
                                          "training pool of each --sizes size and report the error against the "
                                          "size (docs/training.md).")
    p.add_argument("--config", required=True, type=input_path, help="YAML, e.g. training/configs/ensemble_default.yaml")
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help="training-set sizes, comma separated: integers >= 10 and 'all' (the whole pool) "
                        f"(default {DEFAULT_SIZES})")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold cross-validation (default 5)")
    p.add_argument("--members", type=int, default=None, help="ensemble members per fit (default: the config's)")
    p.add_argument("--emu", default=None, type=input_path,
                   help="also score each fit on this Emu-layout file (reported only), on its states that are not "
                        "in the training pool (a file all of whose states are is refused)")
    # output_path: an empty path (an unset shell variable) is a usage error, as in every other command;
    # it wrote no file and said nothing.
    p.add_argument("--plot", default=None, metavar="PLOT", type=file_output_path,
                   help="write the curve to this file: .png (also without an extension), .pdf or .svg")
    p.add_argument("--json", default=None, metavar="PATH", type=output_path,
                   help="write the table as JSON (- : to stdout)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--overwrite", action="store_true", help=REPORT_OVERWRITE_HELP)
    p.set_defaults(func=_learning_curve)
