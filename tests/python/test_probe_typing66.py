"""Outside probe, typing round sixty-six: dodo declares itself typed (python/dodo/py.typed, round
sixty-five), so its public hints and the compiled core's stub (python/dodo/_core.pyi) must be true.

Before this round: the stub lacked Closure, NativeNetwork, boost_four_vectors and the model-digest
functions, and named the binding's positional-only parameters (``arg0``) as keywords; mypy on dodo's own
sources reported 21 errors in _closure, _box3d and _status; and the public calls' cells (``F_init``, ``u``)
had no hint, so ``dodo.box3d("F")`` passed ``mypy --strict``, while ``lebedev_order=np.int64(41)``,
``threads=np.int32(2)`` and ``max_flux_factor=np.float32(0.9)``, which compute, were refused by it.
The mypy tests run where mypy is importable (it is no dependency of dodo); the others everywhere.
"""
from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import numpy as np
import pytest

import dodo
import dodo._core as core

REPO = Path(__file__).resolve().parents[2]
STUB = REPO / "python" / "dodo" / "_core.pyi"
ALLOWLIST = Path(__file__).with_name("core_stub_allowlist.txt")


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def _stub_names(body) -> dict:
    """name -> node of a stub body's functions, classes and annotated variables."""
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _binding_members(owner) -> set:
    """The attributes the binding defines (pybind11's own plumbing left out)."""
    names = set(vars(owner)) if isinstance(owner, type) else set(dir(owner))
    return {name for name in names if name == "__init__" or name == "__version__" or not name.startswith("__")
            } - {"_pybind11_conduit_v1_"}


def test_the_core_stub_names_every_attribute_of_the_binding():
    stub = _stub_names(_stub_tree().body)
    module_names = _binding_members(core)
    assert sorted(module_names - set(stub)) == [], "in dodo._core, not in _core.pyi"
    assert sorted(name for name in set(stub) - module_names if not name.startswith("_")) == [], \
        "in _core.pyi, not in dodo._core"
    for name in sorted(module_names):
        value = getattr(core, name)
        if isinstance(value, type):
            assert isinstance(stub[name], ast.ClassDef), name
            members = _stub_names(stub[name].body)
            assert sorted(_binding_members(value) - set(members)) == [], f"{name}: members missing from the stub"
            assert sorted(set(members) - _binding_members(value)) == [], f"{name}: stub members the binding lacks"
            for member, node in members.items():
                is_property = isinstance(vars(value).get(member), property)
                declared = any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)
                assert is_property == declared, f"{name}.{member}: property in one, not in the other"


def _split_top_level(text: str) -> list:
    parts, depth, start = [], 0, 0
    for index, character in enumerate(text):
        depth += character in "[(" and 1 or character in "])" and -1 or 0
        if character == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def _binding_parameters(function, name: str) -> list:
    """[(name, default or None)] of pybind11's signature line, ``self`` left out."""
    line = function.__doc__.splitlines()[0]
    assert line.startswith(name + "("), line
    depth, end = 0, None
    for index, character in enumerate(line[len(name):], len(name)):
        depth += character in "[(" and 1 or character in "])" and -1 or 0
        if depth == 0:
            end = index
            break
    parameters = []
    for part in _split_top_level(line[len(name) + 1:end]):
        head, _, default = part.partition(" = ")
        parameter = head.split(":")[0].strip()
        if parameter != "self":
            parameters.append((parameter, ast.literal_eval(default) if default else None, bool(default)))
    return parameters


def _stub_parameters(node: ast.FunctionDef) -> list:
    arguments = node.args
    positional = arguments.posonlyargs + arguments.args
    defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    found = []
    for index, (argument, default) in enumerate(zip(positional, defaults)):
        if argument.arg == "self":
            continue
        found.append((argument.arg, index < len(arguments.posonlyargs),
                      None if default is None else ast.literal_eval(default), default is not None))
    return found


def _functions_of_the_binding():
    stub = _stub_names(_stub_tree().body)
    for name in sorted(_binding_members(core)):
        value = getattr(core, name)
        if isinstance(value, type):
            members = _stub_names(stub[name].body)
            for member in sorted(_binding_members(value)):
                if not isinstance(vars(value)[member], property):
                    yield f"{name}.{member}", getattr(value, member), member, members[member]
        elif callable(value):
            yield name, value, name, stub[name]


def test_the_core_stub_signatures_are_the_bindings():
    """Names, defaults and positional-only parameters (pybind11's ``arg0``: a keyword call is a
    TypeError, as ``dodo._core.invariants(F=F, u=None)`` was under the old stub's ``F``, ``u``)."""
    compared = 0
    for label, function, name, node in _functions_of_the_binding():
        binding = _binding_parameters(function, name)
        stub = _stub_parameters(node)
        assert len(binding) == len(stub), (label, binding, stub)
        for (bound, default, has_default), (declared, positional_only, stub_default, stub_has_default) in zip(
                binding, stub):
            if re.fullmatch(r"arg\d+", bound):
                assert positional_only, f"{label}: {declared} is positional-only in the binding ({bound})"
            else:
                assert (declared, positional_only) == (bound, False), (label, bound, declared)
            assert (has_default, default) == (stub_has_default, stub_default), (label, bound, default, stub_default)
        compared += 1
    assert compared >= 30


def test_the_core_stub_takes_numpy_integers_as_the_binding_does():
    """pybind11's integer caster takes a NumPy integer and refuses a float; the stub says SupportsIndex."""
    assert core.lebedev_rule(np.int64(17))[0].shape == (110, 3)
    with pytest.raises(TypeError):
        core.lebedev_rule(17.0)
    assert core.Box3D(np.int32(17), "exact", np.float32(0.9)).lebedev_order == 17
    text = STUB.read_text()
    assert "_Int = SupportsIndex" in text and "lebedev_order: _Int = 17" in text


def _flat_arguments(hint) -> set:
    arguments = set()
    for argument in typing.get_args(hint) or (hint,):
        arguments |= _flat_arguments(argument) if typing.get_args(argument) and typing.get_origin(argument) is \
            typing.Union else {argument}
    return arguments


_NUMBER_OPTIONS = [
    (dodo.box3d, "lebedev_order", np.integer), (dodo.box3d, "threads", np.integer),
    (dodo.box3d, "max_flux_factor", np.floating), (dodo.crossing_features, "lebedev_order", np.integer),
    (dodo.crossing_features, "max_flux_factor", np.floating), (dodo.box3d_settings, "lebedev_order", np.integer),
    (dodo.box3d_settings, "max_flux_factor", np.floating), (dodo.Closure.__init__, "threads", np.integer),
    (dodo.Closure.__init__, "chunk_size", np.integer), (dodo.Closure.__init__, "lebedev_order", np.integer),
    (dodo.Closure.__init__, "max_flux_factor", np.floating), (dodo.conventions.species_index, "antineutrino",
                                                              np.integer),
]


@pytest.mark.parametrize("function, parameter, scalar", _NUMBER_OPTIONS,
                         ids=[f"{f.__qualname__}-{p}" for f, p, _ in _NUMBER_OPTIONS])
def test_the_number_options_hint_the_numpy_scalars_they_take(function, parameter, scalar):
    assert scalar in _flat_arguments(typing.get_type_hints(function)[parameter])


def test_the_calls_compute_with_the_numpy_scalars_the_hints_name():
    F = np.zeros((2, 6, 4))
    F[..., 0] = 1.0
    expected = dodo.box3d(F, threads=1).F_box
    assert np.array_equal(dodo.box3d(F, lebedev_order=np.int64(17), threads=np.int32(1),
                                     max_flux_factor=np.float64(0.98)).F_box, expected)
    closure = dodo.Closure("box3d", threads=np.int64(1), chunk_size=np.uint16(8), lebedev_order=np.int8(17),
                           max_flux_factor=np.float32(0.98))
    assert closure.apply(F).F_pred.shape == (2, 6, 4)
    assert dodo.crossing_features(F, lebedev_order=np.int64(17), max_flux_factor=np.float32(0.9)).shape == (2, 18)
    assert dodo.box3d_settings(np.int64(41), max_flux_factor=np.float32(0.5))["lebedev_order"] == 41
    assert dodo.conventions.species_index(np.int64(1), np.uint8(2)) == 5


_CELL_CALLS = [dodo.closure, dodo.box3d, dodo.invariants, dodo.crossing_features, dodo.comoving_density,
               dodo.boost_to_rest, dodo.boost_from_rest, dodo.Closure.apply, dodo.Closure.__call__]


@pytest.mark.parametrize("function", _CELL_CALLS, ids=[f.__qualname__ for f in _CELL_CALLS])
def test_the_cell_arguments_and_results_are_hinted(function):
    hints = typing.get_type_hints(function)
    first = [name for name in inspect.signature(function).parameters if name != "self"][0]
    assert first in hints and "u" in hints, hints
    assert str not in _flat_arguments(hints[first]) and np.ndarray not in _flat_arguments(hints[first])
    if function not in (dodo.box3d, dodo.Closure.apply):
        assert typing.get_args(typing.get_args(hints["return"])[1]) == (np.float64,), hints["return"]


def test_the_result_fields_hint_their_float64_arrays():
    """The float fields are float64 arrays (arithmetic on them stays typed under mypy --strict); status,
    uint32, is any array, so that a result made of another's slices (out= in blocks) passes."""
    for result in (dodo.ClosureResult, dodo.Box3DResult):
        for field, hint in typing.get_type_hints(result).items():
            if field == "status":
                assert hint is np.ndarray
            else:
                assert typing.get_args(typing.get_args(hint)[1]) == (np.float64,), (result, field)


# --- mypy (no dependency of dodo: these run where a developer has it) ---------------------------------

_GOOD = textwrap.dedent('''
    """A simulation code's documented calls: mypy --strict accepts every line."""
    from __future__ import annotations

    import numpy as np
    import numpy.typing as npt

    import dodo
    from dodo import conventions


    def step(F: npt.NDArray[np.float64], u: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        closure = dodo.Closure("box3d", threads=np.int64(2), lebedev_order=np.int32(17),
                               max_flux_factor=np.float32(0.98), chunk_size=np.int64(64))
        result: dodo.ClosureResult = closure.apply(F, u)
        out = dodo.ClosureResult.empty(F.shape[:-2])
        closure.apply(F, None, out=out)
        for start in range(0, len(F), 2):  # out= in blocks, as dodo apply fills its result
            block = dodo.ClosureResult(*(array[start:start + 2] for array in out))
            closure.apply(F[start:start + 2], u[start:start + 2], out=block)
        box_out = dodo.Box3DResult.empty(F.shape[:-2])
        dodo.box3d(F[:1], u[:1], out=dodo.Box3DResult(*(a[:1] for a in box_out)))
        closure.apply([[[1.0, 0.0, 0.0, 0.0]] * 6], [1.0, 0.0, 0.0, 0.0])
        closure.apply(F.astype(np.float32), u.data)
        status: npt.NDArray[np.uint32] = result.status
        flags = dodo.CellStatus(status[0])
        stable: bool = bool(flags & dodo.CellStatus.NO_CROSSING)
        words: list[str] = dodo.describe_status(status[0]) + dodo.describe_status(3)
        box = dodo.box3d(F, u, lebedev_order=np.int64(17), threads=np.int32(1), max_flux_factor=np.float32(0.9))
        dodo.box3d(F, u, out=dodo.Box3DResult.empty(F.shape[:-2]), threads=None)
        features: npt.NDArray[np.float64] = dodo.crossing_features(F, u, lebedev_order=np.int64(17))
        inv: npt.NDArray[np.float64] = dodo.invariants(F, u) + dodo.comoving_density(F, u)[..., None]
        index: int = conventions.species_index(np.int64(1), 0)
        settings = dodo.box3d_settings(np.int64(41), max_flux_factor=np.float32(0.5))
        rest = dodo.boost_from_rest(dodo.boost_to_rest(F, u[..., None, :]), u[..., None, :])
        del stable, words, features, inv, index, settings, rest
        return dodo.closure(F, u) + closure(F, u) + box.F_box + result.growth_rate[..., None, None]
''')

def test_the_program_that_mypy_checks_computes():
    """Every call of the program that mypy --strict must pass runs (NumPy scalars, lists, float32 cells, a
    memoryview u, out= in blocks), so the hints name what the calls take."""
    namespace: dict = {}
    exec(compile(_GOOD, "simulation.py", "exec"), namespace)
    F = np.zeros((3, 6, 4))
    F[..., 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    u = np.zeros((3, 4))
    u[:, 0] = 1.0
    assert np.isfinite(namespace["step"](F, u)).all()


_BAD = textwrap.dedent('''
    import numpy as np
    import dodo

    F = np.zeros((2, 6, 4))
    dodo.closure("F.h5")
    dodo.box3d("F")
    dodo.invariants("F")
    dodo.crossing_features("F")
    dodo.comoving_density("F")
    dodo.Closure("box3d").apply("F")
    dodo.Closure("box3d")("F")
    dodo.box3d(F, threads=2.5)
    dodo.Closure(lebedev_order="17")
    text: str = dodo.closure(F)
''')


def _mypy(tmp_path, *arguments):
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (it is no dependency of dodo)")
    report, errors, status = api.run([*arguments, "--python-executable", sys.executable, "--cache-dir",
                                      str(tmp_path / "cache"), "--no-error-summary"])
    return report + errors, status


def test_mypy_strict_passes_documented_calls_with_numpy_scalars(tmp_path):
    program = tmp_path / "simulation.py"
    program.write_text(_GOOD)
    report, status = _mypy(tmp_path, "--strict", str(program))
    assert status == 0, report


def test_mypy_strict_refuses_a_str_where_cells_go_and_a_float_thread_count(tmp_path):
    program = tmp_path / "wrong.py"
    program.write_text(_BAD)
    report, status = _mypy(tmp_path, "--strict", str(program))
    flagged = {int(line.split(":")[1]) for line in report.splitlines() if ": error:" in line}
    calls = {number for number, line in enumerate(_BAD.splitlines(), 1) if line.startswith(("dodo.", "text"))}
    assert flagged == calls, report


def test_stubtest_and_mypy_accept_the_stub_and_dodos_sources(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed (it is no dependency of dodo)")
    done = subprocess.run([sys.executable, "-m", "mypy.stubtest", "dodo._core", "--allowlist", str(ALLOWLIST)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    sources = REPO / "python" / "dodo"
    files = [str(sources / name) for name in ("_core.pyi", "_hints.py", "_closure.py", "_box3d.py", "_status.py",
                                               "conventions.py")]
    report, status = _mypy(tmp_path, "--follow-imports=silent", *files)
    assert status == 0, report
    report, status = _mypy(tmp_path, "--strict", str(sources / "_core.pyi"), str(sources / "_hints.py"))
    assert status == 0, report
