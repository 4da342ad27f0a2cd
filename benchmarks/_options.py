"""Option types shared by the benchmark scripts: counts of cells, repeats, rounds and threads are
integers of at least 1 (0 or a negative count ended in a traceback after the set-up, or in a table
of zeros), refused by argparse in one line (exit status 2)."""
from __future__ import annotations

import argparse


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (where 0 has a documented meaning)."""
    return _int_at_least(text, 0)


def resolution(text: str) -> str:
    """argparse type: CELLSxNPHI with two integers >= 1 (bench_qke.py)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"not CELLSxNPHI with two positive integers: {text!r}")
    return text.lower()


def extra_install(extra: str) -> str:
    """The command that installs Dodo's optional part ``extra`` ("train", "mpi"): dodo._shown's, which names
    this checkout. Not the bare name with an extra in brackets, which asks the package index for another project named
    dodo (new user's journey, rounds one and three); in words where dodo itself does not import."""
    try:
        from dodo._shown import extra_install as dodos
    except ImportError:
        return f"pip install '.[{extra}]' in Dodo's repository (Dodo is not on a package index)"
    return dodos(extra)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_main(main, *args) -> int:
    """A benchmark's main(*args), with Ctrl-C (or SIGTERM, turned into the same) ending it in one
    line on stderr and exit status 130 instead of a traceback. The scripts keep their files in
    temporary folders whose context managers remove them on the way out (bench_training.py's
    --workdir excepted: kept, as documented)."""
    import os
    import signal
    import sys

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return main(*args)
    except KeyboardInterrupt:
        name = os.path.basename(sys.argv[0]) or "benchmark"
        print(f"{name}: interrupted; no temporary files left behind", file=sys.stderr)
        return 130
