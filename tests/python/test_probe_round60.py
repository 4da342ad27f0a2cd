"""Outside probe, Python round sixty: the result objects' API, lazy inputs, out= in a time loop
(docs/reliability_python.md, section 106)."""
from __future__ import annotations

import numpy as np
import pytest

import dodo


def _cells(n: int, seed: int = 60) -> np.ndarray:
    """n crossing-prone cells of six species (densities 1-2, flux factors up to 0.6), times 1e32."""
    rng = np.random.default_rng(seed)
    F = np.zeros((n, 6, 4))
    density = rng.uniform(1.0, 2.0, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 0] = density
    F[..., 1:] = direction * rng.uniform(0.0, 0.6, (n, 6, 1)) * density[..., None]
    return F * 1e32


@pytest.mark.parametrize("route", ["closure", "box3d"])
def test_feeding_a_result_back_into_itself_is_told_how_a_time_loop_steps(route):
    F = _cells(4)
    u = np.array([1.0, 0.0, 0.0, 0.0])
    closure = dodo.Closure("box3d")
    if route == "closure":
        step, field = (lambda F_init, out: closure.apply(F_init, u, out=out)), "F_pred"
    else:
        step, field = (lambda F_init, out: dodo.box3d(F_init, u, out=out)), "F_box"
    r = step(F, None)
    kept = [a.copy() for a in r]
    with pytest.raises(ValueError, match=rf"out.{field} shares memory with the input F_init: give output arrays of "
                                         rf"their own; .*keep two results and swap them each step .*"
                                         rf"r.{field}.copy\(\) as F_init"):
        step(getattr(r, field), r)
    assert all(np.array_equal(a, b) for a, b in zip(r, kept))  # refused before anything was written
    # The way the message names runs: two results, swapped, the same bits as new arrays each step.
    r_next = type(r).empty(F.shape[:-2])
    step(getattr(r, field), r_next)
    assert np.array_equal(getattr(r_next, field), getattr(step(getattr(r, field).copy(), None), field))
    # Other overlaps keep the runtime's words alone (guard).
    with pytest.raises(ValueError, match=r"shares memory with out\.growth_over_ntot: every output needs an array of "
                                         r"its own$"):
        step(F, r._replace(growth_rate=r.growth_over_ntot))


@pytest.mark.parametrize("make, kind, once", [
    (lambda F: (cell for cell in F), "a generator", True),
    (lambda F: map(np.asarray, F), "a map", True),
    (lambda F: iter(F), "an iterator", True),
    (lambda F: {i: cell for i, cell in enumerate(F)}.values(), "a dict_values", False),
])
def test_lazy_inputs_are_named_with_the_way_to_an_array(make, kind, once):
    F = _cells(3)
    for call in (dodo.box3d, dodo.Closure("box3d").apply, dodo.invariants, dodo.comoving_density):
        with pytest.raises(ValueError) as error:
            call(make(F))
        text = str(error.value)
        assert f"; got {kind}, whose items NumPy does not read as an array" in text
        assert text.endswith("make one first, F_init = np.stack(list(F_init))")
        assert ("yields them once" in text) == once
    with pytest.raises(ValueError, match=r"got an iterator, .*u = np\.stack\(list\(u\)\)$"):
        dodo.box3d(F, iter(np.array([1.0, 0.0, 0.0, 0.0])))
    # What the message says to do runs.
    cells = make(F)
    assert np.array_equal(dodo.box3d(np.stack(list(cells))).F_box, dodo.box3d(F).F_box)


def test_values_that_are_no_iterator_get_no_stack_hint_and_their_article():
    # a dict or an object is no lazy sequence of cells: no np.stack hint; "an object" (was "a object")
    for value, kind in (({"a": 1}, "a dict"), (object(), "an object")):
        with pytest.raises(ValueError) as error:
            dodo.box3d(value)
        assert str(error.value).endswith(f"; got {kind}")


def test_invariants_docstring_says_what_a_nan_anywhere_gives():
    """A NaN or Inf in a flux component or in u gives zeros, as a NaN N_tot does; the
    docstring named only cells whose N_tot is not a positive finite number."""
    F = _cells(1)[0]
    u = np.array([np.sqrt(1.09), 0.3, 0.0, 0.0])
    for bad in (np.nan, np.inf, -np.inf):
        for species, component in ((0, 1), (3, 2), (5, 3)):
            G = F.copy()
            G[species, component] = bad
            assert np.all(dodo.invariants(G, u) == 0)
        for component in range(1, 4):
            v = u.copy()
            v[component] = bad
            assert np.all(dodo.invariants(F, v) == 0)
    assert "NaN or Inf anywhere in\n    F_init or u" in dodo.invariants.__doc__


def test_a_read_only_out_is_told_what_to_give(tmp_path):
    F = _cells(3)
    r = dodo.box3d(F)
    np.save(tmp_path / "F_box.npy", r.F_box)
    mapped = np.load(tmp_path / "F_box.npy", mmap_mode="r")  # a file's results, opened read-only
    with pytest.raises(ValueError, match=r"^out\.F_box is read-only, and the call writes its results into it: give "
                                         r"writable arrays \(a previous result, or dodo\.Box3DResult\.empty\(batch_shape\); "
                                         r".*mode 'r\+'\)$"):
        dodo.box3d(F, out=r._replace(F_box=mapped))
    closure = dodo.Closure("box3d")
    out = closure.apply(F)
    out.status.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out\.status is read-only, .*dodo\.ClosureResult\.empty\(batch_shape\)"):
        closure.apply(F, out=out)
    # What it says runs: the file opened with mode 'r+' is written in place.
    writable = np.load(tmp_path / "F_box.npy", mmap_mode="r+")
    assert np.array_equal(dodo.box3d(F, out=r._replace(F_box=writable)).F_box, r.F_box)


@pytest.mark.parametrize("route", ["closure", "box3d"])
def test_an_out_made_from_the_whole_shape_of_F_init_is_told_its_batch_shape(route):
    F = _cells(5).reshape(5, 1, 6, 4)
    call, kind, field = ((dodo.Closure("box3d").apply, dodo.ClosureResult, "F_pred") if route == "closure"
                         else (dodo.box3d, dodo.Box3DResult, "F_box"))
    with pytest.raises(ValueError, match=rf"^out\.{field} has shape \(5, 1, 6, 4, 6, 4\); this call writes \(5, 1, 6, 4\) "
                                         rf"\(the batch shape \(5, 1\) of F_init\): made by {kind.__name__}\.empty\(F_init\.shape\)\? "
                                         r"its batch_shape is F_init\.shape\[:-2\], \(5, 1\)$"):
        call(F, out=kind.empty(F.shape))
    assert call(F, out=kind.empty(F.shape[:-2]))[0].shape == F.shape  # what it says runs
    # guard: another wrong shape keeps its plain words
    with pytest.raises(ValueError, match=rf"^out\.{field} has shape \(4, 6, 4\); this call writes \(5, 1, 6, 4\) "
                                         r"\(the batch shape \(5, 1\) of F_init\)$"):
        call(F, out=kind.empty(4))


@pytest.mark.parametrize("command, words", [("reference", "Run Box3D (dodo.box3d) over the reference cases shipped"),
                                            ("info", "Print the versions of dodo and NumPy")])
def test_reference_and_info_help_say_what_the_command_does(command, words, capsys):
    """`dodo reference --help` and `dodo info --help` printed their options alone."""
    from dodo.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert words in " ".join(capsys.readouterr().out.split())
