"""Items Python round fifty-nine found and left open (docs/reliability_python.md, section 101),
mended by the lead."""
import numpy as np

import dodo


def test_comoving_density_of_an_empty_cell_is_plus_zero():
    """-F_a.u of a zero cell is -0.0, and six of them summed stay -0.0: printed as -0.0 beside
    dodo.box3d's and the closure's +0.0 N_tot of the same cell."""
    zeros = np.zeros((3, 6, 4))
    u = np.array([[1.0, 0, 0, 0], [1.25, 0.75, 0, 0], [1.0, 0, 0, 0]])
    for density in (dodo.comoving_density(zeros), dodo.comoving_density(zeros, u)):
        assert np.array_equal(density, np.zeros(3)) and not np.signbit(density).any()
    cell = np.zeros((6, 4))
    cell[:, 0] = [3.0, 1.0, 1.0, 2.0, 1.0, 1.0]
    assert dodo.comoving_density(cell) == 9.0  # other values keep their bits


def test_a_misaligned_out_array_is_told_how_to_make_an_aligned_one():
    """Round fifty-nine and docs truth round five: the refusal named alignment alone, no way on."""
    import pytest

    n = 3
    F = np.zeros((n, 6, 4))
    F[:, :, 0] = 1.0
    out = dodo.Box3DResult.empty(n)
    raw = bytearray(out.F_box.nbytes + 1)
    misaligned = np.frombuffer(raw, dtype=np.float64, count=out.F_box.size, offset=1).reshape(out.F_box.shape)
    assert not misaligned.flags.aligned
    with pytest.raises(ValueError, match=r"aligned for its dtype .*Box3DResult\.empty"):
        dodo.box3d(F, out=out._replace(F_box=misaligned))
