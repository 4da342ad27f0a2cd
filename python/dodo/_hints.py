"""The type hints of dodo's public calls (the package is typed, PEP 561: python/dodo/py.typed).

The calls read NumPy integers and reals where they take a number (``lebedev_order=np.int64(41)``,
``threads=np.int32(2)``, ``max_flux_factor=np.float32(0.9)``), and arrays, nested lists of numbers,
buffers (memoryview, array.array) and objects with ``__array__`` (a CPU torch tensor) where they take
cells; the hints say so, so that a type checker refuses a str or a float thread count and passes what
computes (outside probe, typing round sixty-six).
"""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from numpy._typing import _ArrayLikeFloat_co
else:
    try:  # NumPy's array-likes of real numbers: unlike npt.ArrayLike, a str is not one (NumPy 1.23 on)
        from numpy._typing import _ArrayLikeFloat_co
    except ImportError:  # an older NumPy: its ArrayLike
        _ArrayLikeFloat_co = npt.ArrayLike

#: Cells or four-velocities: arrays of real numbers (any real dtype; converted to float64), nested
#: sequences of numbers, buffers, objects with ``__array__``.
RealArrayLike = Union[_ArrayLikeFloat_co, memoryview]
#: A whole number: int, bool or a NumPy integer (a float is refused).
Integer = Union[int, np.integer]
#: A real number: float, int or a NumPy real or integer.
Real = Union[float, np.floating, np.integer]
#: The float64 arrays the calls return.
Float64Array = npt.NDArray[np.float64]

#: What each alias above means, in the words ``help()`` shows: the signatures name the aliases
#: (``F_init: 'RealArrayLike'``), which a user who never opens this module could not read.
MEANINGS = {
    "RealArrayLike": "a NumPy array of any real dtype (converted to float64), a nested list or tuple of "
                     "numbers, a buffer (memoryview, array.array) or an object with __array__ (a CPU torch "
                     "tensor); not a str",
    "Integer": "an int or a NumPy integer (np.int64(2)); a float is refused",
    "Real": "a float, an int, or a NumPy real or integer (np.float32(0.9))",
    "Float64Array": "a NumPy array of float64",
}

_HEADING = "Type names in the signature (dodo._hints):"


def _annotation_texts(obj: object) -> list[str]:
    """The annotations of a function, or of a class's fields and constructor, as text."""
    holders = [obj]
    if isinstance(obj, type):
        holders = [vars(obj).get(name) for name in ("__init__", "__new__")]
        holders.append(obj)
    texts: list[str] = []
    for holder in holders:
        if isinstance(holder, type):  # its own fields, not a base class's
            annotations = vars(holder).get("__annotations__") or {}
        else:
            annotations = getattr(holder, "__annotations__", None) or {}
        texts.extend(str(value) for value in annotations.values())
    return texts


def _with_meanings(doc: Optional[str], names: list[str]) -> str:
    """``doc`` with a closing paragraph on ``names``, indented as its body so that inspect.cleandoc
    (help) strips both alike."""
    doc = doc or ""
    if _HEADING in doc:
        return doc
    body = [line for line in doc.expandtabs().splitlines()[1:] if line.strip()]
    margin = " " * min((len(line) - len(line.lstrip()) for line in body), default=0)
    lines = [_HEADING]
    for name in names:
        lines += textwrap.wrap(f"{name}: {MEANINGS[name]}.", 96, initial_indent="    ", subsequent_indent="        ")
    opening = doc.rstrip() + "\n\n" if doc.strip() else ""  # under -OO the paragraph alone
    return opening + "\n".join(margin + line for line in lines) + "\n"


def explain_type_names(*objects: object) -> None:
    """Close the docstring of each public function, and of each class and its public methods, whose
    signature names an alias of this module with what it means (outside probe, Python round sixty-seven)."""
    import re

    for obj in objects:
        constructor = obj.__new__ if isinstance(obj, type) and "__new__" in vars(obj) else None
        annotations = getattr(constructor, "__annotations__", None)
        if annotations:  # a NamedTuple's: help(dodo.ClosureResult) showed "F_pred: ForwardRef('Float64Array')"
            for name, value in annotations.items():
                annotations[name] = getattr(value, "__forward_arg__", value)
        members = [obj]
        if isinstance(obj, type):
            members += [value for name, value in vars(obj).items()
                        if not name.startswith("_") or name == "__call__"]
        for member in members:
            function = getattr(member, "__func__", member)  # classmethod, staticmethod
            if not (isinstance(function, type) or callable(function)):
                continue
            text = " ".join(_annotation_texts(function))
            names = [name for name in MEANINGS if re.search(rf"\b{name}\b", text)]
            if names:
                try:
                    function.__doc__ = _with_meanings(function.__doc__, names)
                except (AttributeError, TypeError):  # a builtin's docstring cannot be set
                    pass
