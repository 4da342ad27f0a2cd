"""Outside probe, Python round fifty-nine: the runtime from Python and `dodo apply` at corners a simulation
code reaches (four-velocities past float64's range, grids of one or two cells along each axis)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dodo
from cli_helpers import run

DATA = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"


def _cell() -> np.ndarray:
    F = np.zeros((6, 4))
    F[:, 0] = [1.0, 0.8, 0.8, 1.2, 0.8, 0.8]
    F[3, 3] = 0.6  # a beamed nubar_e: an ELN crossing
    return F


@pytest.mark.parametrize("u", [[1e300, 0.0, 0.0, 0.0], [1e155, 1e155, 0.0, 0.0]])
def test_a_four_velocity_whose_square_overflows_is_not_blamed_on_rounding(u):
    """u^t past ~1.3e154: u^t^2 is inf, and u = (1e300, 0, 0, 0), no unit vector at all (|u.u + 1| = inf),
    was told that "at u^t = 1e+300 the rounding of float64 alone gives |u.u + 1| up to ~inf ... a u computed
    exactly as told": every bound of that branch was inf. Now the plain remedy, and that such a u^t is
    beyond every Lorentz factor Dodo supports; (1e155, 1e155, 0, 0) (|u.u + 1| NaN) says so too."""
    for call in (lambda: dodo.box3d(_cell(), u), lambda: dodo.boost_to_rest(_cell(), u)):
        with pytest.raises(ValueError) as refused:
            call()
        message = str(refused.value)
        assert "rounding of float64 alone" not in message, message
        assert "is beyond every Lorentz factor Dodo supports (u^t up to ~2e7 is accepted)" in message, message
        assert "pass u = (W, W v) with W = 1/sqrt(1 - v^2)" in message, message


def test_a_four_velocity_that_float64_rounds_past_the_cap_is_still_told_so():
    """Guard: u = (W, W v) at W = 1e8, computed as told, whose u.u float64 alone rounds beyond the cap, keeps
    its words (physics-law probe, round nine); a u of u^t 10 that is no unit vector keeps the plain remedy."""
    W = 1e8
    v = np.sqrt(1.0 - 1.0 / W**2)
    with pytest.raises(ValueError, match="the rounding of float64 alone gives"):
        dodo.box3d(_cell(), [W, W * v, 0.0, 0.0])
    with pytest.raises(ValueError) as refused:
        dodo.box3d(_cell(), [10.0, 0.0, 0.0, 0.0])
    assert "rounding" not in str(refused.value) and "beyond every Lorentz factor" not in str(refused.value)


@pytest.mark.parametrize("grid", ["1x1x1", "2x2x2", "2x1x2"])
def test_apply_on_a_grid_where_the_velocity_field_vanishes_says_every_cell_is_at_rest(capsys, grid):
    """`dodo apply data.h5 --grid 2x2x2` printed "fluid speeds up to 0.3" while its swirl (x, y, z components
    sin(y), sin(z), sin(x) times cosines) is 0 at every point of a grid of at most 2 points along each axis:
    every cell was at rest, and the closure was never run in a moving frame. Now the report says so."""
    pytest.importorskip("h5py")
    from dodo.runtime_cli import velocity_field

    shape = tuple(int(n) for n in grid.split("x"))
    u = velocity_field(shape, 0.3)
    assert np.abs(u[..., 1:]).max() < 1e-15  # the truth the report must tell
    code, out, err = run(capsys, ["apply", str(DATA), "--grid", grid, "--model", "box3d", "-q"])
    assert code == 0, err
    first = out.splitlines()[0]
    assert "fluid speeds 0 (every cell at rest: the velocity field vanishes on a grid of at most 2 cells" in first, first
    assert "up to 0.3" not in first, first


@pytest.mark.parametrize("grid, moving", [("3x1x1", True), ("2x4x4", True), ("2x2x2", False)])
def test_apply_says_the_fluid_speed_where_cells_move_or_none_was_asked(capsys, grid, moving):
    """Guard: a grid with 3 points or more along one axis moves its cells, and says "fluid speeds up to
    0.3"; --max-speed 0 says "up to 0.0" as before, whatever the grid."""
    pytest.importorskip("h5py")
    from dodo.runtime_cli import velocity_field

    shape = tuple(int(n) for n in grid.split("x"))
    assert (np.abs(velocity_field(shape, 0.3)[..., 1:]).max() > 0.1) == moving
    if moving:
        code, out, err = run(capsys, ["apply", str(DATA), "--grid", grid, "--model", "box3d", "-q"])
        assert code == 0 and out.splitlines()[0].endswith("fluid speeds up to 0.3"), out + err
    code, out, err = run(capsys, ["apply", str(DATA), "--grid", grid, "--model", "box3d", "-q", "--max-speed", "0"])
    assert code == 0 and out.splitlines()[0].endswith("fluid speeds up to 0.0"), out + err
