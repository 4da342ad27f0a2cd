"""The type hints of dodo's public calls (the package is typed, PEP 561: python/dodo/py.typed).

The calls read NumPy integers and reals where they take a number (``lebedev_order=np.int64(41)``,
``threads=np.int32(2)``, ``max_flux_factor=np.float32(0.9)``), and arrays, nested lists of numbers,
buffers (memoryview, array.array) and objects with ``__array__`` (a CPU torch tensor) where they take
cells; the hints say so, so that a type checker refuses a str or a float thread count and passes what
computes (outside probe, typing round sixty-six).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

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
