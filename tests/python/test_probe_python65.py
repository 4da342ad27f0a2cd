"""Outside probe, Python round sixty-five: what a type checker sees of dodo (the py.typed marker, the
hints of Closure's model and of CellStatus), and objects made before dodo's entries in sys.modules
were deleted and dodo imported again (docs/reliability_python.md)."""
from __future__ import annotations

import ast
import importlib.resources
import mmap
import os
import subprocess
import sys
import textwrap
import typing

import numpy as np
import pytest

import dodo
from dodo import _core


def test_the_package_tells_type_checkers_that_it_is_typed():
    # Without the PEP 561 marker mypy stopped at `import dodo` in a user's code: "Skipping analyzing
    # "dodo": module is installed, but missing library stubs or py.typed marker [import-untyped]".
    assert importlib.resources.files("dodo").joinpath("py.typed").is_file()


@pytest.mark.parametrize("function", [dodo.Closure.__init__, dodo.closure], ids=["Closure", "closure"])
def test_the_model_hint_names_every_documented_kind_of_model(function):
    # Closure's hint said Optional[Union[str, os.PathLike]]: mypy refused the documented Closure(data)
    # of a package's bytes ("incompatible type bytes; expected str | PathLike[Any] | None").
    hint = typing.get_type_hints(function)["model"]
    accepted = set(typing.get_args(hint))
    for kind in (str, os.PathLike, bytes, bytearray, memoryview, mmap.mmap, np.ndarray, type(None)):
        assert kind in accepted, (kind, hint)


def test_the_other_hints_name_what_the_calls_take():
    # onnxruntime_library took a name that is not UTF-8 as bytes (os.fsencode), describe_status a 0-d array
    # (one cell's result.status), where their hints said str/PathLike and int/np.integer alone.
    assert bytes in typing.get_args(typing.get_type_hints(dodo.Closure.__init__)["onnxruntime_library"])
    assert np.ndarray in typing.get_args(typing.get_type_hints(dodo.describe_status)["status"])
    assert dodo.describe_status(dodo.box3d(_cells()[0]).status) == dodo.describe_status(0)


def test_the_conventions_hints_take_the_array_likes_the_functions_read():
    # total_density([[...]]) and minkowski_dot([1, 0, 0, 0], ...) compute (they read any array-like), but
    # their hints said np.ndarray: mypy refused a list.
    import numpy.typing as npt

    from dodo import conventions

    for function, names in [(conventions.total_density, ["F"]), (conventions.minkowski_dot, ["a", "b"]),
                            (conventions.from_emu_layout, ["emu"]), (conventions.to_emu_layout, ["F"])]:
        hints = typing.get_type_hints(function)
        assert [hints[name] for name in names] == [npt.ArrayLike] * len(names), function.__name__
    assert conventions.minkowski_dot([1, 0, 0, 0], (1, 0, 0, 0)) == -1.0
    assert conventions.to_emu_layout(conventions.from_emu_layout(np.ones((1, 4, 2, 3)).tolist())).shape == (1, 4, 2, 3)


def _cell_status_as_type_checkers_see_it() -> dict:
    source = importlib.resources.files("dodo").joinpath("_status.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ClassDef) and statement.name == "CellStatus":
                    return {target.id: ast.literal_eval(assign.value) for assign in statement.body
                            if isinstance(assign, ast.Assign) for target in assign.targets}
    return {}


def test_type_checkers_see_cell_status_with_the_cores_flags():
    # Made at run time from the core's list, CellStatus was to mypy an instance of its base class:
    # `dodo.CellStatus(value)` "not callable", `dodo.CellStatus.NO_CROSSING` "has no attribute".
    seen = _cell_status_as_type_checkers_see_it()
    assert seen == {"OK": 0, **{name: bit for name, bit, _, _ in _core.cell_status_bits}}
    assert seen == {name: flag.value for name, flag in dodo.CellStatus.__members__.items()}  # made at run time


_USER_CODE = textwrap.dedent("""
    import mmap
    import numpy as np
    import dodo

    closure = dodo.Closure(threads=1)
    result = closure.apply(np.zeros((3, 6, 4)))
    data = open(closure.model_path or "", "rb").read()
    in_memory = [dodo.Closure(data), dodo.Closure(memoryview(data)), dodo.Closure(bytearray(data)),
                 dodo.Closure(np.frombuffer(data, np.uint8))]
    flags = dodo.CellStatus(np.uint32(3)) | dodo.CellStatus(int(result.status[0]))
    rejected = (result.status & dodo.CellStatus.FLUX_FACTOR) != 0
    names = [flag.name for flag in dodo.CellStatus if flag in flags]
    F_pred = dodo.closure(np.zeros((3, 6, 4)), model=data)
    meanings = dodo.describe_status(np.asarray(3, dtype=np.uint32)) + dodo.describe_status(np.uint32(1))
    library_by_bytes = dodo.Closure(onnxruntime_library=b"/opt/ort/lib/libonnxruntime.so")
    densities = dodo.conventions.total_density([[[1.0, 0.0, 0.0, 0.0]] * 6])
    norm = dodo.conventions.minkowski_dot([1.0, 0.0, 0.0, 0.0], (1.0, 0.0, 0.0, 0.0))
""")


def test_mypy_passes_a_simulation_codes_documented_calls(tmp_path):
    pytest.importorskip("mypy.api")  # not a dependency of dodo; run where a developer has it
    from mypy import api

    program = tmp_path / "simulation.py"
    program.write_text(_USER_CODE)
    report, errors, status = api.run([str(program), "--python-executable", sys.executable,
                                      "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"])
    assert status == 0, report + errors


# Objects made before every dodo entry of sys.modules was deleted and dodo imported again (a notebook's
# loop `for name in list(sys.modules): if name.startswith("dodo"): del sys.modules[name]`), then pickled
# for a process pool: "Can't pickle <class 'dodo._closure.ClosureResult'>: it's not the same object as
# dodo._closure.ClosureResult", likewise Box3DResult, CellStatus, UnusableClosure and the Closure's loader.
_REIMPORTED = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    import dodo
    from dodo._closure import UnusableClosure

    F = np.zeros((3, 6, 4)); F[..., 0] = 1.0; F[:, 0, 3] = 0.5; F[:, 3, 3] = -0.5
    closure = dodo.Closure("box3d", threads=1)
    made_before = {"Closure": closure, "ClosureResult": closure.apply(F), "Box3DResult": dodo.box3d(F, threads=1),
                   "CellStatus": dodo.CellStatus(3), "UnusableClosure": UnusableClosure(ValueError("gone"))}
    expected = closure.apply(F).F_pred
    for name in [name for name in sys.modules if name == "dodo" or name.startswith("dodo.")]:
        if name != "dodo._core" or "CORE" == "also":
            del sys.modules[name]
    import dodo as again
    import dodo._closure
    assert again.Closure is not type(closure)
    for name, value in made_before.items():
        try:
            back = pickle.loads(pickle.dumps(value))
        except Exception as error:
            print(name, "not pickled:", error)
            continue
        kind = getattr(again, name, None) or getattr(dodo._closure, name)
        print(name, "pickled as the new class" if type(back) is kind else f"pickled as {type(back)}")
    print("same bits", np.array_equal(pickle.loads(pickle.dumps(closure)).apply(F).F_pred, expected))
""")


@pytest.mark.parametrize("core", ["kept", "also"])
def test_objects_made_before_dodo_was_imported_again_still_pickle(core):
    done = subprocess.run([sys.executable, "-c", _REIMPORTED.replace("CORE", core)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Closure pickled as the new class", "ClosureResult pickled as the new class",
        "Box3DResult pickled as the new class", "CellStatus pickled as the new class",
        "UnusableClosure pickled as the new class", "same bits True"], done.stdout


def _cells() -> np.ndarray:
    F = np.zeros((3, 6, 4))
    F[..., 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    return F


@pytest.mark.parametrize("result_type", [dodo.ClosureResult, dodo.Box3DResult])
def test_an_out_of_torch_tensors_is_told_to_pass_their_numpy_views_which_are_filled(result_type):
    # A code that keeps its state in CPU torch tensors was told "out.F_pred must be a NumPy array; got
    # Tensor", naming no way on; NumPy's view of a tensor shares its memory and is filled in place.
    torch = pytest.importorskip("torch")
    call = (lambda F, out=None: dodo.Closure("box3d", threads=1).apply(F, out=out)) \
        if result_type is dodo.ClosureResult else (lambda F, out=None: dodo.box3d(F, threads=1, out=out))
    tensors = [torch.from_numpy(array) for array in result_type.empty((3,))]
    with pytest.raises(TypeError, match=rf"got Tensor, of whose memory np\.asarray\(x\) is a NumPy view \(no copy\): "
                                        rf"give the views, e.g. dodo\.{result_type.__name__}\(\*\(np\.asarray\(x\) "
                                        "for x in arrays\\)\\); the call fills them in place"):
        call(_cells(), out=result_type(*tensors))
    call(_cells(), out=result_type(*(np.asarray(x) for x in tensors)))  # as the message says
    for tensor, expected in zip(tensors, call(_cells())):
        assert np.array_equal(tensor.numpy(), expected)


def test_an_out_of_memoryviews_is_told_the_same_and_a_list_is_not():
    views = [memoryview(array) for array in dodo.ClosureResult.empty((3,))]
    with pytest.raises(TypeError, match="got memoryview, of whose memory np.asarray"):
        dodo.Closure("box3d", threads=1).apply(_cells(), out=dodo.ClosureResult(*views))
    lists = [array.tolist() for array in dodo.ClosureResult.empty((3,))]
    with pytest.raises(TypeError, match=r"^out\.F_pred must be a NumPy array; got list$"):  # no memory to write into
        dodo.Closure("box3d", threads=1).apply(_cells(), out=dodo.ClosureResult(*lists))


def test_apply_says_what_a_rejected_cell_gets_and_it_gets_that():
    # The docstring said rejected cells "get Box3D's result or their input, never NaN": a cell with a NaN
    # got zeros, one with a negative density that density set to 0, one beyond the flux-factor limit its
    # flux scaled onto the cone (docs/runtime.md had it right).
    doc = " ".join(dodo.Closure.apply.__doc__.split())
    assert "zeros where a value of its F_init is not finite" in doc
    assert "negative densities set to 0 and each flux scaled onto |F| <= n" in doc
    F = _cells()
    F[0, 0, 0], F[1, 2, 0], F[2, 1, 1] = np.nan, -0.5, 1.5
    result = dodo.Closure(threads=1).apply(F)
    assert [dodo.CellStatus(int(s)) for s in result.status] == [
        dodo.CellStatus.NONFINITE, dodo.CellStatus.NEGATIVE_DENSITY, dodo.CellStatus.FLUX_FACTOR]
    assert np.all(result.F_pred[0] == 0)
    assert result.F_pred[1, 2, 0] == 0 and np.array_equal(result.F_pred[1, :2], F[1, :2])
    assert np.linalg.norm(result.F_pred[2, 1, 1:]) <= result.F_pred[2, 1, 0]


def test_a_flat_buffer_from_c_or_fortran_is_told_the_reshape_that_reads_it():
    # array.array, ctypes or a memoryview of a C F[n][6][4] (or a Fortran F(4, 6, n)) and u[n][4]: refused
    # as "must have shape (..., 6, 4) ...; got (72,)" alone.
    import array
    import ctypes

    F = _cells()
    u = np.tile([1.0, 0.0, 0.0, 0.0], (3, 1))
    flat_F, flat_u = array.array("d", F.ravel()), (ctypes.c_double * 12)(*u.ravel())
    with pytest.raises(ValueError, match=r"got \(72,\): a flat buffer, cells one after another\? "
                                         r"np\.reshape\(F_init, \(-1, 6, 4\)\) reads it in Dodo's memory order"):
        dodo.box3d(flat_F, u)
    with pytest.raises(ValueError, match=r"got \(12,\): a flat buffer, cells one after another\? "
                                         r"np\.reshape\(u, \(-1, 4\)\)"):
        dodo.Closure("box3d", threads=1).apply(F, flat_u)
    with pytest.raises(ValueError, match=r"got \(72,\): a flat buffer, cells one after another\?"):
        dodo.invariants(memoryview(F.ravel()))
    expected = dodo.box3d(F, u, threads=1)
    followed = dodo.box3d(np.reshape(flat_F, (-1, 6, 4)), np.reshape(flat_u, (-1, 4)), threads=1)  # as it says
    assert all(np.array_equal(a, b) for a, b in zip(followed, expected))
    # Other shapes keep their words: swapped axes, a row of 24 values (Emu's [4, 2, 3] has 24 too: round
    # forty-seven's guard), nothing to reshape.
    with pytest.raises(ValueError, match=r"got \(3, 24\)$"):
        dodo.invariants(F.reshape(3, 24))
    with pytest.raises(ValueError, match=r"got \(3, 4, 6\): the last two axes swapped\?"):
        dodo.box3d(np.swapaxes(F, -1, -2))
    with pytest.raises(ValueError, match=r"got \(7,\)$"):
        dodo.box3d(np.zeros(7))


def test_one_cells_comoving_density_is_a_0d_array_as_every_other_one_cell_result():
    # comoving_density of one cell (batch shape ()) came back a NumPy scalar (its `+ 0.0`, which turns
    # -0.0 into +0.0, made one of the 0-d array), against its hint (np.ndarray) and box3d's, invariants'
    # and the boosts' 0-d arrays: `n[...] = 0` of it failed.
    one_cell = _cells()[0]
    density = dodo.comoving_density(one_cell)
    assert type(density) is np.ndarray and density.shape == () and density == 6.0
    assert type(dodo.box3d(one_cell).growth_rate) is np.ndarray  # as the other one-cell results
    zeros = dodo.comoving_density(np.zeros((6, 4)))
    assert type(zeros) is np.ndarray and zeros == 0 and not np.signbit(zeros)  # round fifty-nine's +0.0 kept
    assert not np.signbit(dodo.comoving_density(np.zeros((2, 6, 4)))).any()
    density[...] = 0.0  # an array's assignment, as for any batch


def test_help_of_the_result_types_says_each_fields_meaning_and_units():
    # help(dodo.ClosureResult) said "Alias for field number 3" of growth_rate (and of every field): the units
    # were source comments alone.
    import pydoc

    for result_type, units in [(dodo.ClosureResult, {"growth_rate": "s^-1 for densities in cm^-3",
                                                     "uncertainty": "units of N_tot", "F_pred": "lab frame"}),
                               (dodo.Box3DResult, {"growth_rate": "s^-1, comoving frame", "F_box": "lab frame",
                                                   "growth_over_ntot": "units of N_tot"})]:
        text = pydoc.render_doc(result_type, renderer=pydoc.plaintext)
        assert "Alias for field number" not in text
        for field, words in units.items():
            assert words in getattr(result_type, field).__doc__
        assert "dodo.describe_status" in result_type.status.__doc__


def test_every_public_member_of_closure_says_in_help_what_it_is():
    # help(dodo.Closure) listed threads, head, model_path, has_model, box3d_settings and reset_counters with
    # no word of what they hold (head: which output head; threads: as resolved, the calling thread included).
    import inspect

    undocumented = [name for name, member in inspect.getmembers(dodo.Closure)
                    if not name.startswith("_") and not ((member.fget if isinstance(member, property) else member).__doc__)]
    assert undocumented == []
    assert "calling one included" in dodo.Closure.threads.__doc__
    closure = dodo.Closure("box3d", threads=0)
    assert closure.threads == 1 and closure.head is None and closure.model_path is None and not closure.has_model


# A driver object whose __del__ makes the process's first call into the core as the interpreter exits
# (the lead's follow-up of round sixty-four made such calls compute once an earlier call had run).
_FIRST_CALL_AT_EXIT = textwrap.dedent("""
    import numpy as np
    import dodo

    F = np.zeros((3, 6, 4)); F[..., 0] = 1.0; F[:, 0, 3] = 0.5; F[:, 3, 3] = -0.5

    class Driver:
        def __del__(self):
            try:
                CALL
            except Exception as error:
                print("failed:", repr(error), flush=True)
            else:
                print("computed in __del__", flush=True)

    driver = Driver()
""")


@pytest.mark.parametrize("call", ["dodo.invariants(F)", "dodo.crossing_features(F)", "dodo.box3d(F)",
                                  "dodo.comoving_density(F)", "dodo.Closure('box3d', threads=1).apply(F)"])
def test_the_first_call_into_the_core_made_as_the_interpreter_exits_computes(call):
    # Before: "ImportError: sys.meta_path is None, Python is likely shutting down" (pybind11 imported numpy to
    # find NumPy's C API at the first array it took), and for dodo.box3d(F), whose threads=None reads the
    # cgroup's CPU quota, "NameError: name 'open' is not defined" (Python removes the builtin open then).
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL_AT_EXIT.replace("CALL", call)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["computed in __del__"], done.stdout
