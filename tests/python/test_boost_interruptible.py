"""dodo.boost_to_rest / boost_from_rest run in slices without the GIL (module.cpp's boost_four_vectors,
like dodo.box3d): they held the GIL for the whole batch and saw Ctrl-C only at the call's end
(outside probe, round forty-four: about 3 s for 10^8 four-vectors)."""
from __future__ import annotations

import numpy as np
import pytest

import dodo
from conftest import random_states, random_velocities
from test_probe_round43 import _interrupted_inside_the_compiled_call


@pytest.mark.parametrize("boost", [dodo.boost_to_rest, dodo.boost_from_rest])
def test_ctrl_c_ends_a_long_boost_inside_it(boost):
    def call(F):
        u = np.zeros((len(F), 1, 4))
        u[..., 0] = 1.0
        return boost(F, u)

    events = _interrupted_inside_the_compiled_call(call, "boost_four_vectors", (1 << 16, 1 << 17, 1 << 18, 1 << 19) * 3)
    assert events == ["c_call", "c_exception"], events  # before: ["c_call"] (raised after it returned)


def test_sliced_boosts_give_the_same_bits():
    """Slices of 2^18 four-vectors: a batch across several gives what each vector's boost gives alone."""
    rng = np.random.default_rng(44)
    F = random_states(rng, 60_000)  # 360,000 four-vectors: two slices
    u = random_velocities(rng, 60_000, max_speed=0.9)[:, None, :]
    rest = dodo.boost_to_rest(F, u)
    assert np.array_equal(dodo.boost_to_rest(F[-10:], u[-10:]), rest[-10:])
    assert np.array_equal(dodo.boost_from_rest(rest, u)[:5], dodo.boost_from_rest(rest[:5], u[:5]))
