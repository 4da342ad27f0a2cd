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
