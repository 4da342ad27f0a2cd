"""Arguments shared by `dodo` subcommands, so that they are spelt the same everywhere (issue 11):
the output file as `OUT` or `-o/--output OUT`, `-q/--quiet`, `--json [PATH]`."""
from __future__ import annotations

import argparse
import json
import sys


def one_line(text: object) -> str:
    """An error's text as one line of a command's report: its lines joined by one space each (white space
    around a line break goes with it). Runs of spaces within a line are kept: joining every run of white
    space (``" ".join(text.split())``) printed the quoted name 'a  b.h5' as 'a b.h5', a file that is not
    the one given (outside probe, Python round sixty-four)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def output_path(text: str) -> str:
    """argparse type of every output-file argument: an empty path (``-o "$OUT"`` with OUT unset) is
    refused with a usage error. It was ignored (``apply -o ''`` wrote no file, ``--json ''`` no
    JSON, ``preprocess -o ''`` wrote the config's output, each with exit status 0) or reported as
    ``cannot write .: it exists and is a directory``."""
    if text == "":
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?): give a file name")
    return text


def input_path(text: str) -> str:
    """argparse type of an input-file option: an empty path (``--resume "$CKPT"`` with CKPT unset)
    is a usage error. `dodo train --resume ''` was taken for no --resume and started a fresh run,
    `dodo simulate --input ''` ended in a TypeError traceback, `--data ''` and `--config ''` said
    `. is a directory` (outside probe, round 23)."""
    if text == "":
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?): give a file name")
    return text


def file_output_path(text: str) -> str:
    """argparse type of an output that is a file and only a file (HDF5 databases, checkpoints, model
    packages, plots, python -m dodo.qke.validate's --json): an empty path is refused as by :func:`output_path`, and so is ``-``, which by
    convention (and in these commands' own ``--json -``) means standard output. `dodo synth -o -`
    wrote an HDF5 file named '-' in the working directory, `dodo plot -o -` also '-_parity.png'
    (outside probe, round 22); a file of that name is still ``./-``."""
    if output_path(text) == "-":
        raise argparse.ArgumentTypeError("'-' means standard output, which this option does not write to: give a "
                                         "file name (./- for a file named '-')")
    return text


def shown_name(path: str) -> str:
    """A file name as a command's table or progress line shows it: as given, or quoted with its escapes
    (Python's repr) where it holds a newline, tab or other character that does not print: `dodo score
    box3d $'new\\nline.h5'` split its header over two lines, and so did `dodo apply`'s first line and its
    "cells written to" (outside probe, Python round forty-nine)."""
    # A byte that is not UTF-8 (a Latin-1 name, held surrogate-escaped) is printed as its byte, as the
    # output guard writes it (round 31): only characters that do not print are the reason to quote, and
    # white space at either end, which prints as nothing: `dodo apply D -o "out.h5 "` (a quoted line of a
    # job script) said "cells written to out.h5 ", and the file later opened as out.h5 was not there
    # (outside probe, Python round fifty).
    if path == path.strip() and all(char.isprintable() or "\udc80" <= char <= "\udcff" for char in path):
        return path
    return repr(path)


def add_output_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The output file, positional or with -o/--output (one of the two)."""
    parser.add_argument("output_positional", nargs="?", metavar="OUT", type=file_output_path,
                        help=help_text + " (or -o OUT)")
    parser.add_argument("-o", "--output", dest="output_option", metavar="OUT", type=file_output_path, help=help_text)


def resolve_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The output path of :func:`add_output_argument`; exits with argparse's usage error (2)
    when neither or two different ones are given."""
    given = {value for value in (args.output_positional, args.output_option) if value is not None}
    if len(given) != 1:
        parser.error("give the output file once: OUT or -o OUT" if given else "the output file OUT is required")
    return given.pop()


def json_target_file(target):
    """The file of a --json argument of add_json_argument (None for none or stdout)."""
    return None if target in (None, "-") else target


def add_quiet_argument(parser: argparse.ArgumentParser, help_text: str = "no progress output") -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=help_text)


def add_json_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", type=output_path,
                        help=f"{what} as JSON: written to PATH (atomically; the table is still printed), "
                             "or printed instead of the table with --json alone or --json -")


def json_took_a_word_hint(argv) -> str:
    """What to add to a usage error when ``--json`` (whose PATH is optional) took the word after it:
    `dodo score --json box3d data.h5`, meant as the report on standard output, said only "the
    following arguments are required: data", of a command line that gave it (outside probe, Python
    round forty-eight). Empty unless a separate ``--json`` token is followed by a word that is not an
    option (``--json=PATH`` is the user's PATH as written)."""
    argv = list(argv or ())
    for position, token in enumerate(argv[:-1]):
        if token == "--":
            break
        word = argv[position + 1]
        if token == "--json" and not word.startswith("-"):
            return (f"; --json took {word!r} as the file for its report (PATH is optional, so --json takes the "
                    "word after it): for the report on standard output, put --json after the other arguments or "
                    "write --json -")
    return ""


def dash_file_hint(argv) -> str:
    """What to add to a usage error when a word of the command line that begins with '-' names a file
    there: `dodo score box3d -data.h5` said only "the following arguments are required: data", and
    `dodo apply cells.h5 --model -m.onnx` "argument --model: expected one argument" (argparse reads such
    a word as an option; outside probe, Python round forty-nine). Empty otherwise."""
    import os

    for token in list(argv or ()):
        if token == "--":
            break
        if token.startswith("-") and token not in ("-", "--") and not token.startswith("--") and \
                os.path.isfile(token):
            return (f"; {token!r} begins with '-', so it was read as an option, though a file of that name is "
                    f"here: write ./{token}")
    return ""


def emit(table_text: str, data, json_target, inputs=()) -> None:
    """Print the table, or the JSON, or both (the JSON to a file), as add_json_argument says.
    The JSON is strict (NaN and Inf as null); a JSON file that is one of ``inputs`` is refused."""
    from ._atomic import check_outputs, json_safe, write_json_atomic

    if json_target == "-":
        print(json.dumps(json_safe(data), indent=1, default=_plain, allow_nan=False))
        return
    if json_target:
        # The file first, then the table: printed first, a reader that went away (`dodo score M F --json
        # r.json | head -1`: exit 141, quietly) or a full standard output (`> /dev/full`) ended the
        # command before the report was written, the scoring lost (outside probe, data-loss round two).
        # A report that cannot be written still leaves the table on the screen; so does one refused by
        # the check here (a directory or a FIFO put at the path during the scoring: the table was lost
        # with it, data-loss round three).
        try:
            check_outputs([json_target], inputs)
            write_json_atomic(json_target, data)
        except (OSError, ValueError):
            print(table_text)
            raise
    print(table_text)
    if json_target:
        print(f"wrote {shown_name(json_target)}", file=sys.stderr)


def _plain(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
