"""A number as error messages show it: short where its text is long, and past Python's 4,300-digit
limit on int-to-text conversion without that conversion. Imports nothing of dodo, so that
dodo._box3d and dodo.conventions both use it without importing each other."""
from __future__ import annotations

import math
import numbers


def _shown_number(element, text=str, short: bool = True) -> str:
    """``text(element)`` (str or repr), its first 12 characters and length where longer than 24 (``short``). A number
    past Python's 4,300-digit limit on int-to-text conversion (an int, a Fraction): the first 12 digits
    of its integer part and their count, computed without that conversion, which raised "Exceeds the limit
    (4300 digits) for integer string conversion" in place of the message, naming neither the argument nor
    the cell (outside probe, Python round fifty-two)."""
    try:
        shown = text(element)
    except ValueError:
        if not isinstance(element, numbers.Rational):
            raise
        number = abs(int(element))  # the integer part
        digits = int((number.bit_length() - 1) * math.log10(2)) + 1  # this many, or one more
        digits += number >= 10 ** digits
        where = "digits" if isinstance(element, numbers.Integral) else "digits before the point"
        return f"{'-' if element < 0 else ''}{number // 10 ** (digits - 12)}... ({digits} {where})"
    return shown if len(shown) <= 24 or not short else f"{shown[:12]}... ({len(shown)} characters)"


def counted(count, noun: str, plural: str | None = None) -> str:
    """"1 state", "3 states" ("1 cell", "2 cells"): a count with its noun in the number the count asks for; a
    fixed plural said "none of the 1 states", "metric table on 1 cells" (outside probe, Python round fifty-seven)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def extra_install(extra: str) -> str:
    """The command that installs Dodo's optional part ``extra`` ("train", "qke", "mpi"). Dodo is not on a
    package index, so a hint to pip-install the name "dodo" with an extra fetched another project (and failed to
    build it; new user's journey, round one): the checkout this package runs from where there is one (an
    editable install); else the extra's own packages, as the installed distribution's metadata lists them
    (a wheel, `pip install /path/to/dodo` or `pip install git+URL` has no repository beside it, and "'.[train]'
    in Dodo's repository" sent such a user to find one and rebuild Dodo: new user's journey, round four);
    else the repository's directory in words."""
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "python" / "dodo").is_dir():
        return f"pip install {shlex.quote(f'{root}[{extra}]')}"
    packages = _extra_requirements(extra)
    if packages:
        return f"pip install {' '.join(shlex.quote(package) for package in packages)} (Dodo's {extra!r} extra)"
    return f"pip install '.[{extra}]' in Dodo's repository (Dodo is not on a package index)"


def _extra_requirements(extra: str) -> list:
    """The requirements (``'h5py>=3'``) that the installed dodo distribution declares for ``extra``, in order;
    [] where there is no such distribution, extra or readable metadata."""
    import re

    try:
        from importlib import metadata

        requirements = metadata.requires("dodo") or []
    except Exception:  # no installed distribution, or unreadable metadata
        return []
    marker = re.compile(r"""^\s*extra\s*==\s*(['"])(?P<name>[^'"]+)\1\s*$""")
    packages = []
    for requirement in requirements:
        package, _, condition = requirement.partition(";")
        found = marker.match(condition)
        if found and found["name"] == extra and package.strip():
            packages.append(package.strip())
    return packages
