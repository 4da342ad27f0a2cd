"""dodo.conventions.total_density of integer densities: NumPy summed them in int64, which wraps without a
word (six densities of 2^62 gave N_tot = -2^63, a negative total of positive densities); now they are summed
as float64. Float inputs keep their dtype (the lead, from the list of things left alone, 2026-12-07)."""
from __future__ import annotations

import numpy as np
import pytest

from dodo import conventions


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint64])
def test_integer_densities_are_summed_as_float64_without_wrapping(dtype):
    F = np.zeros((2, 6, 4), dtype=dtype)
    F[..., 0] = np.iinfo(dtype).max // 2
    total = conventions.total_density(F)
    assert total.dtype == np.float64
    assert np.all(total > 0) and np.allclose(total, 6.0 * float(np.iinfo(dtype).max // 2))


def test_float_densities_keep_their_dtype_and_absolute_sums_magnitudes():
    F = np.zeros((6, 4), dtype=np.float32)
    F[:, 0] = [1, -2, 3, 0, 0, 0]
    assert conventions.total_density(F).dtype == np.float32
    assert conventions.total_density(F) == 2.0 and conventions.total_density(F, absolute=True) == 6.0
    assert conventions.total_density(np.ones((6, 4), dtype=bool)) == 6.0
