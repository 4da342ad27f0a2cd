"""Outside probe of the C runtime, round thirty-one (docs/reliability_cpp.md, "Round thirty-one"):
hostile and tampered model packages, re-signed on purpose with ``dodo._core.with_content_digest``
(an edit without re-signing is refused by the digests, rounds one to thirty), and the C API's
contract for metadata buffers. Every package is a copy of the shipped default model, edited in
memory; the shipped file is only read."""
from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest

import dodo
from dodo import _core
from libdodo_ctypes import load_libdodo

onnx = pytest.importorskip("onnx")
numpy_helper = pytest.importorskip("onnx.numpy_helper")


def _graph_copy_of_error_per_spread() -> str:
    """The default graph's own unnamed copy of error_per_spread (2.0), "onnx::Mul_N" with N as the
    exporter's trace numbered it: 203 until 2026-12-07, 81 in the re-export of that day."""
    model = onnx.load(dodo.models.default_model_path())
    return next(t.name for t in model.graph.initializer
                if t.name.startswith("onnx::") and not t.dims and float(numpy_helper.to_array(t)) == 2.0)


ERROR_PER_SPREAD_COPY = _graph_copy_of_error_per_spread()



def _resigned(model, *, metadata=None, edit=None) -> bytes:
    """The model's bytes after ``edit(model_copy)`` and with metadata entries replaced (``{key: value}``;
    value None removes the entry), signed again as an author who edits on purpose signs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if edit:
        edit(copy)
    if metadata:
        entries = [(e.key, e.value) for e in copy.metadata_props]
        del copy.metadata_props[:]
        for key, value in entries:
            value = metadata.get(key, value)
            if value is not None:
                entry = copy.metadata_props.add()
                entry.key, entry.value = key, value
    return _core.with_content_digest(copy.SerializeToString())


def _meta(model) -> dict:
    return {e.key: e.value for e in model.metadata_props}


def _refusal(package: bytes, **options) -> Exception:
    with pytest.raises((RuntimeError, ValueError)) as caught:
        dodo.Closure(package, threads=1, **options)
    return caught.value


def _one_line(text: str) -> None:
    assert "\n" not in text, text


# --- defect 1: test-vector keys the runtime does not read were ignored, and the checks they carried skipped

@pytest.mark.parametrize("entry, change, named", [
    # the growth rates' check skipped without a word: the key misspelt
    ("dodo.test_vectors", lambda v: {**{k: x for k, x in v.items() if k != "growth_over_ntot"},
                                     "growth_over_NTOT": v["growth_over_ntot"]}, '"growth_over_NTOT"'),
    ("dodo.test_vectors", lambda v: {**v, "Uncertainty": v["uncertainty"]}, '"Uncertainty"'),
    ("dodo.test_vectors", lambda v: {**v, "atol": 1e-9}, '"atol"'),
    ("dodo.test_vectors", lambda v: {**{k: x for k, x in v.items() if k != "u"}, "U": v["u"]}, '"U"'),
])
def test_a_key_the_runtime_does_not_read_is_refused_naming_it(default_package, entry, change, named):
    value = json.dumps(change(json.loads(_meta(default_package)[entry])))
    error = _refusal(_resigned(default_package, metadata={entry: value}))
    text = str(error)
    assert text.startswith("DODO_ERROR_MODEL_METADATA"), text
    assert f'"{entry}" has the key {named}, which this runtime does not read' in text, text
    _one_line(text)


@pytest.mark.parametrize("removed, output", [("growth_over_ntot", "log_growth_ratio"),
                                             ("uncertainty", "uncertainty")])
def test_test_vectors_without_an_optional_outputs_values_are_refused(default_package, removed, output):
    """The default model has the outputs "uncertainty" and "log_growth_ratio"; its test vectors
    check both. Removed (and re-signed), the package loaded and those outputs went untested."""
    vectors = json.loads(_meta(default_package)["dodo.test_vectors"])
    del vectors[removed]
    text = str(_refusal(_resigned(default_package, metadata={"dodo.test_vectors": json.dumps(vectors)})))
    assert text.startswith("DODO_ERROR_MODEL_METADATA"), text
    assert f'has no "{removed}", but the graph has the output "{output}"' in text, text


def test_a_json_entry_of_the_wrong_kind_is_called_so(default_package):
    """ "dodo.box3d" as a list was refused as 'JSON object has no key "scheme"' (it is no object)."""
    box3d = _meta(default_package)["dodo.box3d"]
    text = str(_refusal(_resigned(default_package, metadata={"dodo.box3d": "[" + box3d + "]"})))
    assert 'model metadata "dodo.box3d" is malformed: JSON value is not an object: [{' in text, text


# --- defect 2: a NaN or infinite weight was reported as a disagreement, "nan instead of nan" ------

def _with_value(name: str, value: float, index: int = 0):
    def edit(model):
        for tensor in model.graph.initializer:
            if tensor.name == name:
                array = numpy_helper.to_array(tensor).copy()
                array.flat[index] = value
                tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
                return
        raise AssertionError(f"no initializer {name}")
    return edit


@pytest.mark.parametrize("tensor, value, index, shown", [
    ("ensemble.student.body.0.weight", np.nan, 5, 'layer weight "ensemble.student.body.0.weight" holds NaN at element 5 of 3328'),
    ("ensemble.student.body.2.bias", np.inf, 0, 'tensor "ensemble.student.body.2.bias" (a layer\'s bias) holds +infinity at element 0 of 64'),
    ("ensemble.student.mean", -np.inf, 51, 'tensor "ensemble.student.mean" (input_mean) holds -infinity at element 51 of 52'),
    ("ensemble.feature_precision", np.nan, 35, 'tensor "ensemble.feature_precision" (feature_precision) holds NaN at element 35'),
])
def test_a_non_finite_network_value_is_refused_naming_the_tensor(default_package, tensor, value, index, shown):
    text = str(_refusal(_resigned(default_package, edit=_with_value(tensor, value, index))))
    assert text.startswith("DODO_ERROR_MODEL_METADATA"), text
    assert shown in text and "must be finite" in text, text
    assert "instead of" not in text, text


def test_a_non_finite_graph_constant_the_description_does_not_read_is_named_as_the_graphs(default_package):
    """The graph's copy of error_per_spread (2, ERROR_PER_SPREAD_COPY) set to NaN: the native description
    reads its own 2, and the probes compared "0 instead of nan" (blaming the description)."""
    text = str(_refusal(_resigned(default_package, edit=_with_value(ERROR_PER_SPREAD_COPY, np.nan))))
    assert text.startswith("DODO_ERROR_MODEL_FORMAT"), text
    assert "is NaN at probe row" in text and "a weight or constant of the graph is not finite" in text, text
    assert "instead of" not in text, text


@pytest.mark.parametrize("index", [None, 3])
def test_a_zero_input_spread_is_refused_as_the_graphs_division_by_zero(default_package, index):
    """ensemble.student.std (the inputs' divisor) zero everywhere or at one element: every probe row NaN,
    refused as "does not reproduce the graph's head_output (probe row 0: -0 instead of -nan)". (A
    description naming a tensor with zeros or negative values as input_std is refused by the probes,
    test_native_network.py.)"""
    def edit(model):
        tensor = next(t for t in model.graph.initializer if t.name == "ensemble.student.std")
        array = numpy_helper.to_array(tensor).copy()
        array[slice(None) if index is None else index] = 0
        tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor.name))

    text = str(_refusal(_resigned(default_package, edit=edit)))
    assert text.startswith("DODO_ERROR_MODEL_FORMAT"), text
    assert "the graph's head_output is NaN at probe row 0" in text and "or divides by zero" in text, text
    assert "instead of" not in text, text


# --- defect 4: a second definition of an initializer's name, which ONNX Runtime computes with -----

def _constant_named(name: str, value: float):
    def edit(model):
        node = onnx.helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32)))
        model.graph.node.insert(0, node)
    return edit


def _sparse_copy(name: str, scale: float):
    def edit(model):
        dense = next(t for t in model.graph.initializer if t.name == name)
        array = numpy_helper.to_array(dense).astype(np.float32)
        values = numpy_helper.from_array((array * scale).ravel().astype(np.float32), name)
        indices = numpy_helper.from_array(np.arange(array.size, dtype=np.int64), name + ".indices")
        model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, list(array.shape)))
    return edit


@pytest.mark.parametrize("edit, words", [
    # ONNX Runtime took the Constant's 0.0196, the native network the initializer's 0.01958:
    # F_pred 2e-4 apart between the evaluators, within the load-time comparison, test vectors passed
    (_constant_named("ensemble.r_scale", 0.0196),
     'a node of the graph writes "ensemble.r_scale", the name of an initializer'),
    (_constant_named(ERROR_PER_SPREAD_COPY, 2.0008),
     f'a node of the graph writes "{ERROR_PER_SPREAD_COPY}", the name of an initializer'),
    # ONNX Runtime computed with the sparse copy (x 1.0004), the native network with the dense one
    (_sparse_copy(ERROR_PER_SPREAD_COPY, 1.0004),
     f'the graph has two initializers named "{ERROR_PER_SPREAD_COPY}", one of them sparse'),
    (_sparse_copy("ensemble.student.body.2.weight", 1.0001),
     'the graph has two initializers named "ensemble.student.body.2.weight", one of them sparse'),
])
def test_a_second_definition_of_an_initializers_name_is_refused(default_package, edit, words):
    package = _resigned(default_package, edit=edit)
    text = str(_refusal(package))
    assert text.startswith("DODO_ERROR_MODEL_FORMAT"), text
    assert words in text, text
    _one_line(text)


# --- defect 5: ONNX Runtime's refusals ended in a line break ----------------------------------

def _set_ir_version(model):
    model.ir_version = 99


def _set_opset(model):
    model.opset_import[0].version = 99


@pytest.mark.parametrize("edit, words", [
    (_set_ir_version, "Unsupported model IR version: 99, max supported IR version: "),
    (_set_opset, "Opset 99 is under development"),
])
def test_onnx_runtimes_refusal_is_one_line_without_a_trailing_line_break(default_package, edit, words):
    text = str(_refusal(_resigned(default_package, edit=edit)))
    assert text.startswith("DODO_ERROR_MODEL_FORMAT: cannot load model in memory"), text
    assert words in text, text
    assert text == text.rstrip() and "\n" not in text and "\r" not in text, repr(text)


# --- defect 6: a Loop in the graph kept the load (and every call) running ------------------------

def _signed_by_hand(model) -> bytes:
    """The package signed as docs/model_package.md describes the digests (with_content_digest reads
    the package first, and so refuses what the runtime refuses)."""
    import hashlib
    import struct

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    entries = {e.key: e.value for e in copy.metadata_props
               if e.key not in ("dodo.content_sha256", "dodo.metadata_sha256")}
    del copy.metadata_props[:]
    entries["dodo.content_sha256"] = hashlib.sha256(copy.SerializeToString()).hexdigest()
    text = b"".join(struct.pack("<Q", len(part)) + part
                    for key in sorted(entries, key=str.encode)
                    for part in (key.encode(), entries[key].encode()))
    entries["dodo.metadata_sha256"] = hashlib.sha256(text).hexdigest()
    for key, value in entries.items():
        entry = copy.metadata_props.add()
        entry.key, entry.value = key, value
    return copy.SerializeToString()


LOAD_IN_A_CHILD = """
import sys
import dodo
try:
    dodo.Closure(open(sys.argv[1], "rb").read(), threads=1)
    print("loaded")
except Exception as error:
    print(type(error).__name__, error)
"""


def test_a_graph_with_a_loop_is_refused_at_once(default_package, tmp_path):
    """head_output passed through a Loop of 2^62 empty iterations (re-signed): dodo_closure_create
    ran ONNX Runtime's probe evaluation for ever (10^8 iterations: over a minute)."""
    import subprocess
    import sys

    helper = onnx.helper
    copy = onnx.ModelProto()
    copy.CopyFrom(default_package)
    graph = copy.graph
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])],
        "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", onnx.TensorProto.FLOAT, None)])
    graph.initializer.append(numpy_helper.from_array(np.array(2 ** 62, np.int64), "loop.trips"))
    graph.initializer.append(numpy_helper.from_array(np.array(True), "loop.go_on"))
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name == "head_output":
                node.output[index] = "head_output.before_loop"
    graph.node.append(helper.make_node("Loop", ["loop.trips", "loop.go_on", "head_output.before_loop"], ["head_output"],
                                       body=body))
    path = tmp_path / "loop.onnx"
    path.write_bytes(_signed_by_hand(copy))
    try:  # a hang guard only: the refusal takes milliseconds
        result = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD, str(path)], capture_output=True, text=True,
                                timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("dodo.Closure of a package with a Loop of 2^62 iterations did not return within 120 s")
    assert result.stdout.startswith("RuntimeError DODO_ERROR_MODEL_FORMAT: model in memory"), result
    assert "the graph has a Loop node (at byte " in result.stdout and "feed-forward" in result.stdout, result.stdout


# --- defect 3: dodo_get_metadata cut a value inside a character ---------------------------------

def test_get_metadata_cuts_a_value_between_characters_and_returns_its_length(default_package):
    """A re-signed package whose (unchecked) "dodo.version" holds multi-byte characters; every buffer
    size from 0 to the value's length + 1: the return value is the value's length in bytes, the
    buffer NUL-terminated and UTF-8 (a prefix of the value), whole when the size exceeds the length."""
    lib = load_libdodo()
    value = "0.1.0+\u00e9t\u00e9-\u2603-\U0001f600"
    package = _resigned(default_package, metadata={"dodo.version": value})
    handle = ctypes.c_void_p()
    message = ctypes.create_string_buffer(4096)
    status = lib.dodo_closure_create_from_memory(package, len(package), None, ctypes.byref(handle), message, 4096)
    assert status == 0, message.value
    try:
        encoded = value.encode()
        assert lib.dodo_get_metadata(handle, b"dodo.version", None, 0) == len(encoded)
        for size in range(0, len(encoded) + 2):
            buffer = ctypes.create_string_buffer(b"\x7f" * (size + 8))
            assert lib.dodo_get_metadata(handle, b"dodo.version", buffer, size) == len(encoded)
            raw = buffer.raw
            assert raw[size:size + 8] == b"\x7f" * 8, size  # nothing written past the size given
            if size == 0:
                assert raw[0] == 0x7f
                continue
            text = raw[:raw.index(b"\0")]
            assert len(text) <= size - 1
            decoded = text.decode("utf-8")  # never cut inside a character
            assert value.startswith(decoded)
            assert len(text) > size - 1 - 4  # cut at most one character short
            if size > len(encoded):
                assert decoded == value
    finally:
        lib.dodo_closure_destroy(handle)


# --- the refusals above, from a file, in the Fortran module -----------------------------------

FORTRAN_TAMPERED = """
program tampered
  use dodo
  implicit none
  type(dodo_closure) :: closure
  character(len=4096) :: path
  character(len=400) :: message
  integer :: stat, i
  do i = 1, command_argument_count()
    call get_command_argument(i, path)
    message = ""
    call dodo_create(closure, trim(path), threads=1, stat=stat, errmsg=message)
    write (*, "(i0, 1x, a)") stat, trim(message)
    call dodo_destroy(closure)
  end do
end program tampered
"""


def test_tampered_package_files_are_refused_by_the_fortran_module_naming_the_problem(default_package, tmp_path):
    from capi_host import compile_fortran, run_host

    vectors = json.loads(_meta(default_package)["dodo.test_vectors"])
    vectors["growth_over_NTOT"] = vectors.pop("growth_over_ntot")
    packages = {
        "misspelt": (_resigned(default_package, metadata={"dodo.test_vectors": json.dumps(vectors)}),
                     '4 model file "{path}": model metadata "dodo.test_vectors" has the key "growth_over_NTOT"'),
        "nan_weight": (_resigned(default_package, edit=_with_value("ensemble.student.body.0.weight", np.nan)),
                       '4 model file "{path}": metadata "dodo.native_network" layer weight '
                       '"ensemble.student.body.0.weight" holds NaN at element 0'),
        "shadowed": (_resigned(default_package, edit=_constant_named("ensemble.r_scale", 0.0196)),
                     '3 model file "{path}": a node of the graph writes "ensemble.r_scale"'),
    }
    paths = []
    for name, (package, _) in packages.items():
        path = tmp_path / f"odd dir \u00e9 'q' $x/{name}.onnx"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(package)
        paths.append(str(path))
    program = compile_fortran(tmp_path, "tampered", FORTRAN_TAMPERED)
    lines = run_host(program, *paths, timeout=300)
    assert len(lines) == len(packages), lines
    for line, path, (_, expected) in zip(lines, paths, packages.values(), strict=True):
        assert line.startswith(expected.format(path=path)[:399]), (line, expected)


# --- held without a change: tampering the runtime already refuses --------------------------------

@pytest.mark.parametrize("entry, value, words", [
    ("dodo.format_version", "1 ", 'is "1 "; this runtime reads version "1"'),
    ("dodo.format_version", "\uff11", "this runtime reads version"),
    ("dodo.head", "equivariant\x00x", r'unknown head "equivariant\x00x"'),
    ("dodo.output_size", "078", 'is "078" but head "equivariant" has 78 outputs'),
    ("dodo.outputs", '["head_output", "uncertainty", "log_growth_ratio", "uncertainty"]', 'names "uncertainty" twice'),
    ("dodo.box3d", '{"scheme": "pairwise", "form": "delta", "lebedev_order": 17, "z_method": "exact", '
                   '"max_flux_factor": 0.98, "lebedev_order": 41}', 'key "lebedev_order" given twice'),
])
def test_resigned_metadata_edits_are_refused_naming_the_entry(default_package, entry, value, words):
    text = str(_refusal(_resigned(default_package, metadata={entry: value})))
    assert words in text and entry in text, text
    _one_line(text)


def test_resigned_edits_that_change_nothing_load_and_give_the_same_bits(default_package):
    """Entries in another order, an informational entry changed, lebedev_order written 17.0, a
    constant dodo.outputs permuted: the same closure, bit for bit."""
    rng = np.random.default_rng(31)
    F = np.zeros((40, 6, 4))
    F[..., 0] = rng.uniform(0.2, 1.0, (40, 6))
    direction = rng.normal(size=(40, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 1:] = direction * (rng.uniform(0, 0.8, (40, 6)) * F[..., 0])[..., None]
    reference = dodo.Closure(None, threads=1).apply(F)
    box3d = json.loads(_meta(default_package)["dodo.box3d"])
    for metadata in ({"dodo.version": "\u2603", "dodo.export_time": None},
                     {"dodo.box3d": json.dumps({**box3d, "lebedev_order": 17.0})},
                     {"dodo.outputs": json.dumps(["log_growth_ratio", "uncertainty", "head_output"])}):
        result = dodo.Closure(_resigned(default_package, metadata=metadata), threads=1).apply(F)
        np.testing.assert_array_equal(result.F_pred, reference.F_pred)
        np.testing.assert_array_equal(result.growth_rate, reference.growth_rate)
        np.testing.assert_array_equal(result.uncertainty, reference.uncertainty)
