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


def _grid(shape=(3, 5, 2)) -> tuple[np.ndarray, np.ndarray]:
    """A grid of cells in Dodo's C layout, F (nx, ny, nz, 6, 4) and u (nx, ny, nz, 4)."""
    rng = np.random.default_rng(59)
    n = int(np.prod(shape))
    F = np.zeros((n, 6, 4))
    F[:, :, 0] = rng.uniform(0.5, 1.5, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    F[:, :, 1:] = F[:, :, :1] * rng.uniform(0, 0.6, (n, 6, 1)) * direction / np.linalg.norm(direction, axis=-1,
                                                                                            keepdims=True)
    v = rng.normal(size=(n, 3)) * 0.2
    W = 1 / np.sqrt(1 - np.sum(v * v, axis=-1))
    u = np.concatenate([W[:, None], W[:, None] * v], axis=-1)
    return F.reshape(shape + (6, 4)), u.reshape(shape + (4,))


def test_arrays_in_dodos_fortran_layout_are_refused_with_the_conversion():
    """docs/runtime.md's Fortran layout F(4, 6, nx, ny, nz), u(4, nx, ny, nz), as NumPy sees such arrays (f2py,
    order="F"), was refused as "must have shape (..., 6, 4); got (4, 6, 3, 5, 2)" (and u "(..., 4); got
    (4, 3, 5, 2)") naming nothing of the layout. Now the message says it and how to convert; both ways it
    names give the C layout's results."""
    F, u = _grid()
    F_fortran = np.asfortranarray(np.moveaxis(F, (-1, -2), (0, 1)))  # F(4, 6, nx, ny, nz)
    u_fortran = np.asfortranarray(np.moveaxis(u, -1, 0))  # u(4, nx, ny, nz)
    with pytest.raises(ValueError) as refused:
        dodo.box3d(F_fortran, u_fortran)
    message = str(refused.value)
    assert "got (4, 6, 3, 5, 2): components and species first, as Dodo's Fortran layout F(4, 6, ...)" in message
    assert "F_init.T (with u.T" in message and "np.moveaxis(F_init, (0, 1), (-1, -2))" in message, message
    with pytest.raises(ValueError, match=r"got \(4, 3, 5, 2\): the components first, as Dodo's Fortran layout "
                                         r"u\(4, \.\.\.\) reads in NumPy\? move them last: np\.moveaxis\(u, 0, -1\)"):
        dodo.box3d(np.moveaxis(F_fortran, (0, 1), (-1, -2)), u_fortran)
    expected = dodo.box3d(F, u)
    moved = dodo.box3d(np.moveaxis(F_fortran, (0, 1), (-1, -2)), np.moveaxis(u_fortran, 0, -1))
    transposed = dodo.box3d(F_fortran.T, u_fortran.T)  # C-contiguous views: cells in reversed axis order
    assert F_fortran.T.flags.c_contiguous and u_fortran.T.flags.c_contiguous
    assert np.array_equal(moved.F_box, expected.F_box) and np.array_equal(moved.status, expected.status)
    assert np.array_equal(transposed.F_box, expected.F_box.transpose(2, 1, 0, 3, 4))
    with pytest.raises(ValueError, match=r"species and components first\? move them last: "
                                         r"np\.moveaxis\(F_init, \(0, 1\), \(-2, -1\)\)"):
        dodo.invariants(np.moveaxis(F, (-2, -1), (0, 1)))  # (6, 4, nx, ny, nz)
    assert np.array_equal(dodo.invariants(np.moveaxis(np.moveaxis(F, (-2, -1), (0, 1)), (0, 1), (-2, -1)), u),
                          dodo.invariants(F, u))


def test_the_layout_hints_before_stay():
    """Guard: the swapped last axes, Emu's layout and the three-velocity keep their hints."""
    F, u = _grid()
    with pytest.raises(ValueError, match=r"the last two axes swapped\?"):
        dodo.box3d(np.swapaxes(F, -1, -2))
    with pytest.raises(ValueError, match="Emu's layout"):
        dodo.box3d(np.zeros((2, 4, 2, 3)))
    with pytest.raises(ValueError, match="the three-velocity v"):
        dodo.box3d(F, u[..., 1:])
    with pytest.raises(ValueError) as refused:
        dodo.box3d(F, np.zeros((3, 5, 2, 5)))  # no hint: a u of 5 components
    assert str(refused.value).endswith("got (3, 5, 2, 5)"), refused.value


@pytest.mark.skipif(np.finfo(np.longdouble).tiny > np.longdouble("1e-4000"), reason="np.longdouble is float64 here: nothing below its range")
def test_longdouble_values_below_float64s_range_under_seterr_raise_are_a_vacuum_not_a_traceback():
    """Under np.seterr(all="raise") (or np.errstate(all="raise"), a simulation code's debugging mode), a
    np.longdouble F_init holding values below float64's range (1e-4000: a vacuum cell) ended in
    `FloatingPointError: underflow encountered in cast` from dodo's own range check, a traceback for an
    input that is computed without the mode (zeros: ZERO_DENSITY). Now computed alike in both modes, and the
    other cells are the float64 input's bits."""
    F, u = _grid((4,))
    wide, wide_u = F.astype(np.longdouble), u.astype(np.longdouble)
    wide[0] = np.longdouble("1e-4000")
    wide_u[1] = [1, np.longdouble("1e-4000"), 0, 0]  # a u component below float64's range: 0
    u[1] = [1.0, 0.0, 0.0, 0.0]
    expected = dodo.box3d(np.concatenate([np.zeros((1, 6, 4)), F[1:]]), u)
    with np.errstate(all="raise"):
        box = dodo.box3d(wide, wide_u)
        applied = dodo.Closure("box3d").apply(wide, wide_u)
        boosted = dodo.boost_to_rest(wide, wide_u[:, None, :])
        features = dodo.invariants(wide, wide_u)
    assert box.status[0] == dodo.CellStatus.ZERO_DENSITY and np.array_equal(box.F_box[0], np.zeros((6, 4)))
    assert all(np.array_equal(a, b) for a, b in zip(box, expected))
    assert np.array_equal(applied.F_pred, expected.F_box) and np.array_equal(applied.status, expected.status)
    assert np.array_equal(boosted, dodo.boost_to_rest(np.concatenate([np.zeros((1, 6, 4)), F[1:]]), u[:, None, :]))
    assert np.array_equal(features, dodo.invariants(np.concatenate([np.zeros((1, 6, 4)), F[1:]]), u))
    with np.errstate(all="raise"), pytest.raises(ValueError, match="beyond the range of float64"):
        dodo.box3d(np.full((6, 4), np.longdouble("1e400")))  # guard: above the range, still refused


def test_a_u_in_the_form_boost_to_rest_takes_is_told_how_box3d_takes_it():
    """dodo.boost_to_rest asks for u[..., None, :] with cells (..., 6, 4); that u given to dodo.box3d or
    Closure.apply (one u per cell, (..., 4)) was refused as "u with shape (6, 1, 4) does not broadcast to
    the batch shape (6,) of F_init", naming neither form. Now the message names the conversion, which
    gives the per-cell u's result; other shapes that do not broadcast keep the plain message."""
    F, u = _grid((6,))
    for call in (dodo.box3d, dodo.Closure("box3d").apply, dodo.invariants):
        with pytest.raises(ValueError, match=r"u with shape \(6, 1, 4\) does not broadcast to the batch shape \(6,\) "
                                             r"of F_init: a u with an axis of length 1 before its components, as "
                                             r"dodo\.boost_to_rest takes it for cells \(u\[\.\.\., None, :\]\)\? this "
                                             r"takes one u per cell, \(\.\.\., 4\): pass u\[\.\.\., 0, :\]"):
            call(F, u[:, None, :])
    assert np.array_equal(dodo.box3d(F, u[:, None, :][..., 0, :]).F_box, dodo.box3d(F, u).F_box)
    for shape in ((1, 6, 4), (3, 1, 4), (6, 1, 1, 4)):
        with pytest.raises(ValueError) as refused:
            dodo.box3d(F, np.broadcast_to([1.0, 0, 0, 0], shape))
        assert str(refused.value) == f"u with shape {shape} does not broadcast to the batch shape (6,) of F_init"


@pytest.mark.skipif(not dodo.runtime_available(), reason="dodo built without the closure runtime")
def test_native_the_word_closure_evaluator_reports_is_told_how_to_ask_for_it(monkeypatch, capsys):
    """`Closure.evaluator` says "native" where "auto" runs Dodo's own kernels; `Closure(evaluator="native")`
    and DODO_NETWORK_EVALUATOR=native, asking for what a closure said it ran, were "unknown network evaluator
    "native" (known: "auto", "onnxruntime")" without a word of which of those it is; `dodo info` likewise, and
    it said every closure with a model fails to load, where one made with evaluator="onnxruntime" loads."""
    from dodo.cli import main

    assert dodo.Closure().evaluator == "native"
    hint = ('"native" is what Closure.evaluator reports where "auto" runs Dodo\'s own kernels (a package that '
            'describes its network, on the CPU): give "auto" for them, "onnxruntime" for ONNX Runtime\'s graph')
    with pytest.raises(ValueError) as refused:
        dodo.Closure(evaluator="native")
    assert str(refused.value).endswith(hint), refused.value
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "native")
    with pytest.raises(ValueError) as refused:
        dodo.Closure()
    assert "DODO_NETWORK_EVALUATOR" in str(refused.value) and str(refused.value).endswith(hint), refused.value
    assert dodo.Closure(evaluator="onnxruntime").evaluator == "onnxruntime"  # the variable is not read for it
    assert main(["info"]) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("network_evaluator:")][0]
    assert 'fails to load (but one made with evaluator="onnxruntime")' in line and hint in line, line
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", "fast")  # guard: another word, no such hint
    with pytest.raises(ValueError) as refused:
        dodo.Closure()
    assert "Closure.evaluator reports" not in str(refused.value)
