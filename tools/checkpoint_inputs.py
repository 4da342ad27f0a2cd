"""What the tools that rework a `dodo train-ensemble` checkpoint share (tools/refit_growth.py,
tools/regate_checkpoint.py, tools/student_width_study.py): their --table, -o and --overwrite
arguments, the check of the output against the inputs, and the table the checkpoint was trained on.
Imported by the scripts beside it (`python tools/X.py` puts this folder on the import path)."""
from __future__ import annotations

import argparse

TABLE_HELP = "the preprocessed file the checkpoint was trained on"


def add_table_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--table, -o/--output and --overwrite, in that order."""
    parser.add_argument("--table", required=True, help=TABLE_HELP)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output when it exists and is not a checkpoint (refused without it)")


def refuse_output_over_inputs(parser: argparse.ArgumentParser, args, inputs, tool: str) -> None:
    """Before any work: the output is none of ``inputs`` (the checkpoint, the table, the config),
    nor another kind of file unless --overwrite; parser.error (one line, exit 2) otherwise."""
    from dodo._output_guard import check_tool_output

    try:
        check_tool_output(args.output, inputs, tool, args.overwrite)
    except ValueError as exc:
        parser.error(str(exc))


def trained_table(parser: argparse.ArgumentParser, args, checkpoint: dict) -> dict:
    """The preprocessed table args.table, which must be the one ``checkpoint`` (read from
    args.checkpoint) was trained on: parser.error (one line, exit 2) for a file that is no
    preprocessed table (an Emu or synth database, a config: a traceback before) or another table."""
    from dodo.training import ensemble_train as et

    try:
        table = et.load_table(args.table)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if table["sha256"] != checkpoint["data"]["sha256"]:
        parser.error(f"{args.table} is not the table {args.checkpoint} was trained on (content digests differ)")
    return table
