"""Outside probe of the C runtime, round thirty-three (docs/reliability_cpp.md, "Round thirty-three"):
hostile or broken model packages, signed again on purpose (by hand, as docs/model_package.md describes
the digests: ``dodo._core.with_content_digest`` reads the package first and so refuses what the runtime
refuses). Every package is a copy of the shipped default model, edited in memory; the shipped file is
only read. Loads that could hang or take the machine's memory run in a child process under a timeout
and an address-space limit, as hang and memory guards only: the refusals take milliseconds."""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

import dodo

onnx = pytest.importorskip("onnx")
helper = onnx.helper
numpy_helper = pytest.importorskip("onnx.numpy_helper")
TensorProto = onnx.TensorProto


# --- protobuf written by hand ----------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes, tag: bytes | None = None) -> bytes:
    """A length-delimited field; ``tag`` replaces the canonical tag bytes."""
    return (tag if tag is not None else _varint(number << 3 | 2)) + _varint(len(payload)) + payload


def _tag_beyond_32_bits(number: int, wire_type: int = 2) -> bytes:
    """The tag of field ``number`` with bit 32 set: protobuf reads a tag as 32 bits and drops it."""
    return _varint((number << 3 | wire_type) + (1 << 32))


def _signed(content: bytes, metadata: dict) -> bytes:
    """content (a ModelProto without metadata_props, as bytes) with the metadata and both digests."""
    entries = {k: v for k, v in metadata.items() if k not in ("dodo.content_sha256", "dodo.metadata_sha256")}
    entries["dodo.content_sha256"] = hashlib.sha256(content).hexdigest()
    text = b"".join(struct.pack("<Q", len(part)) + part
                    for key in sorted(entries, key=str.encode) for part in (key.encode(), entries[key].encode()))
    entries["dodo.metadata_sha256"] = hashlib.sha256(text).hexdigest()
    return content + b"".join(_field(14, _field(1, k.encode()) + _field(2, v.encode())) for k, v in entries.items())


def _package(model, *, edit=None, graph_tail: bytes = b"") -> bytes:
    """The default model after ``edit(copy)``, its graph followed by ``graph_tail`` (raw GraphProto
    fields), signed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    metadata = {e.key: e.value for e in copy.metadata_props}
    del copy.metadata_props[:]
    if edit:
        edit(copy)
    graph = copy.graph.SerializeToString() + graph_tail
    copy.ClearField("graph")
    return _signed(copy.SerializeToString() + _field(7, graph), metadata)


def _head_through(*nodes, initializers=()):
    """An edit: head_output renamed head_raw where the graph computes it, then ``nodes`` compute
    head_output from it."""
    def edit(model):
        for node in model.graph.node:
            for index, name in enumerate(node.output):
                if name == "head_output":
                    node.output[index] = "head_raw"
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(initializers)
    return edit


LOAD_IN_A_CHILD = """
import resource, sys
limit = 4 << 30  # a memory guard: the refusals need some hundred MB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import dodo
try:
    dodo.Closure(open(sys.argv[1], "rb").read(), threads=1)
    print("loaded")
except Exception as error:
    print(type(error).__name__, error)
"""


def _load_in_a_child(package: bytes, tmp_path, what: str) -> str:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(package)
    try:  # a hang guard only
        result = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD, str(path)], capture_output=True, text=True,
                                timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dodo.Closure of a package with {what} did not return within 300 s")
    return result.stdout + result.stderr


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


# --- defect 1: a field tag of more than 32 bits hid a node's operator (and a tensor's data location) ---

def _loop_node_bytes(op_type_tag: bytes | None) -> bytes:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None)])
    node = helper.make_node("Loop", ["loop.trips", "loop.go_on", "head_raw"], ["head_output"], body=body)
    node.ClearField("op_type")
    return node.SerializeToString() + _field(4, b"Loop", tag=op_type_tag)


@pytest.mark.parametrize("tag, message", [
    # protobuf reads field 4 (op_type) where this reader read field 2^29 + 4 and skipped it
    (_tag_beyond_32_bits(4), "a field tag of more than 32 bits (field number 536870916; protobuf's largest is "
                             "536870911) at byte "),
    # the canonical tag: the Loop refusal of round thirty-one
    (None, "the graph has a Loop node (at byte "),
])
def test_a_loop_behind_a_tag_of_more_than_32_bits_is_refused(default_package, tmp_path, tag, message):
    """A Loop of 2^62 empty iterations whose op_type field was written with bit 32 of its tag set:
    ONNX Runtime read "Loop", Dodo's reader an unknown field, and dodo.Closure ran the loop (10^7
    iterations: 16.8 s; 2^62: for ever)."""
    edit = _head_through(initializers=[_i64("loop.trips", 2 ** 62), numpy_helper.from_array(np.array(True), "loop.go_on")])
    package = _package(default_package, edit=edit, graph_tail=_field(1, _loop_node_bytes(tag)))
    text = _load_in_a_child(package, tmp_path, "a Loop of 2^62 iterations")
    assert text.startswith("RuntimeError DODO_ERROR_MODEL_FORMAT: model in memory"), text
    assert message in text, text


def _external_initializer(location_field: bytes, data_field_tag: bytes | None = None) -> bytes:
    """An int64 initializer "outside" whose data lie in the file "outside.bin" (raw TensorProto bytes)."""
    tensor = numpy_helper.from_array(np.zeros(2, np.int64), "outside")
    tensor.ClearField("raw_data")
    entry = onnx.StringStringEntryProto(key="location", value="outside.bin")
    fields = tensor.SerializeToString() + location_field
    if data_field_tag is not None:
        fields += _field(13, entry.SerializeToString(), tag=data_field_tag)
    return _field(5, fields)


@pytest.mark.parametrize("location, data_tag, message", [
    # data_location EXTERNAL as 2^32 + 1: protobuf keeps an enum's low 32 bits, 1
    (_varint(14 << 3) + _varint(1 + (1 << 32)), None, "refers to tensor data stored outside it"),
    # both fields behind tags of more than 32 bits
    (_tag_beyond_32_bits(14, 0) + _varint(1), _tag_beyond_32_bits(13), "a field tag of more than 32 bits"),
    # a varint of more than 64 bits (its tenth byte above 1): protobuf drops the high bits
    (_varint(14 << 3) + b"\x81\x80\x80\x80\x80\x80\x80\x80\x80\x02", None, "a number of more than 64 bits"),
])
def test_external_data_written_against_the_reader_is_refused(default_package, tmp_path, location, data_tag, message):
    """The check for ONNX external data compared data_location's whole varint with 1 and read tags
    as 64 bits: a location of 2^32 + 1, or fields behind long tags, reached ONNX Runtime as external
    data (ONNX Runtime 1.32 then refused it by its own rules; the contract is Dodo's refusal)."""
    edit = _head_through(
        helper.make_node("Cast", ["outside"], ["outside.f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["outside.f"], ["outside.sum"], keepdims=0),
        helper.make_node("Mul", ["outside.sum", "outside.zero"], ["outside.none"]),
        helper.make_node("Add", ["head_raw", "outside.none"], ["head_output"]),
        initializers=[numpy_helper.from_array(np.array(0.0, np.float32), "outside.zero")])
    (tmp_path / "outside.bin").write_bytes(bytes(16))
    package = _package(default_package, edit=edit, graph_tail=_external_initializer(location, data_tag))
    with pytest.raises(RuntimeError) as caught:
        dodo.Closure(package, threads=1)
    text = str(caught.value)
    assert text.startswith("DODO_ERROR_MODEL_FORMAT: model in memory"), text
    assert message in text, text


# --- defect 2: operators that `dodo export` never writes: control flow, tensors from a few bytes ---

def _scan_in_a_scan(n: int):
    """Scan over a [n, 1] tensor of zeros whose body scans the same tensor again: n^2 iterations of
    ONNX Runtime's per-iteration work (some microseconds each) from 4 n bytes."""
    inner_body = helper.make_graph([helper.make_node("Identity", ["b_in"], ["b_out"])], "inner",
                                   [helper.make_tensor_value_info("b_in", TensorProto.FLOAT, [1])],
                                   [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [1])])
    outer_body = helper.make_graph(
        [helper.make_node("Scan", ["scan.seq"], ["a_scanned"], body=inner_body, num_scan_inputs=1),
         helper.make_node("Identity", ["a_in"], ["a_out"])], "outer",
        [helper.make_tensor_value_info("a_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("a_out", TensorProto.FLOAT, [1])])
    return _head_through(
        helper.make_node("Scan", ["scan.seq"], ["scanned"], body=outer_body, num_scan_inputs=1),
        helper.make_node("ReduceSum", ["scanned"], ["scan.sum"], keepdims=0),
        helper.make_node("Add", ["head_raw", "scan.sum"], ["head_output"]),
        initializers=[numpy_helper.from_array(np.zeros((n, 1), np.float32), "scan.seq")])


def _sum_into_head(node, *initializers):
    """head_output = head_raw + 0 * sum(node's output "big"; with node None, a tensor "big" of the graph)."""
    return _head_through(
        *([node] if node is not None else []),
        helper.make_node("ReduceSum", ["big"], ["big.sum"], keepdims=0),
        helper.make_node("Mul", ["big.sum", "big.zero"], ["big.none"]),
        helper.make_node("Add", ["head_raw", "big.none"], ["head_output"]),
        initializers=[numpy_helper.from_array(np.array(0.0, np.float32), "big.zero"), *initializers])


_ZERO = numpy_helper.from_array(np.array([0.0], np.float32), "big.one")
_BRANCH = helper.make_graph([helper.make_node("Identity", ["head_raw"], ["branch_out"])], "branch", [],
                            [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)])

HOSTILE_OPERATORS = {
    # 10^5 x 10^5 iterations: hours (10^5 alone took 0.16 s)
    "Scan": _scan_in_a_scan(100_000),
    # 40 GB asked for at the load's probe evaluation, from 16 bytes (obtained where the memory exists)
    "Expand": _sum_into_head(helper.make_node("Expand", ["big.one", "big.shape"], ["big"]), _ZERO,
                             _i64("big.shape", [100_000, 100_000])),
    "ConstantOfShape": _sum_into_head(helper.make_node("ConstantOfShape", ["big.shape"], ["big"]),
                                      _i64("big.shape", [100_000, 100_000])),
    "Tile": _sum_into_head(helper.make_node("Tile", ["big.one", "big.repeats"], ["big"]), _ZERO,
                           _i64("big.repeats", [10 ** 10])),
    "Range": _sum_into_head(helper.make_node("Range", ["big.start", "big.limit", "big.delta"], ["big"]),
                            *(numpy_helper.from_array(np.array(v, np.float32), n)
                              for n, v in (("big.start", 0.0), ("big.limit", 1e10), ("big.delta", 1.0)))),
    "Pad": _sum_into_head(helper.make_node("Pad", ["big.one", "big.pads"], ["big"]), _ZERO,
                          _i64("big.pads", [0, 10 ** 10])),
    # training_mode true: values dropped at random (a ratio of 1e-6: now and then, past the self-test)
    "Dropout": _head_through(helper.make_node("Dropout", ["head_raw", "drop.ratio", "drop.training"], ["head_output"]),
                             initializers=[numpy_helper.from_array(np.array(1e-6, np.float32), "drop.ratio"),
                                           numpy_helper.from_array(np.array(True), "drop.training")]),
    "If": _head_through(helper.make_node("If", ["if.cond"], ["head_output"], then_branch=_BRANCH, else_branch=_BRANCH),
                        initializers=[numpy_helper.from_array(np.array(True), "if.cond")]),
}


@pytest.mark.parametrize("operator", sorted(HOSTILE_OPERATORS))
def test_an_operator_that_dodo_export_does_not_write_is_refused_naming_it(default_package, tmp_path, operator):
    package = _package(default_package, edit=HOSTILE_OPERATORS[operator])
    text = _load_in_a_child(package, tmp_path, f"a hostile {operator}")
    assert text.startswith("RuntimeError DODO_ERROR_MODEL_FORMAT: model in memory"), text
    assert f'the graph has a node of operator "{operator}" (at byte ' in text, text
    assert "which `dodo export` does not write" in text, text


def test_a_node_without_an_operator_is_refused(default_package):
    node = helper.make_node("Identity", ["head_raw"], ["head_output"])
    node.op_type = ""  # written, empty
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_FORMAT: model in memory .*the graph has a node of '
                                           r'operator "" \(none named\) \(at byte \d+\)'):
        dodo.Closure(_package(default_package, edit=_head_through(node)), threads=1)


@pytest.mark.parametrize("domain, operator", [("com.microsoft", "Gelu"), ("com.example", "Relu"), ("ai.onnx.ml", "Abs")])
def test_an_operator_of_another_domain_is_refused_naming_the_domain(default_package, domain, operator):
    """Named like an allowed operator (ONNX Runtime's contrib Gelu, a custom Relu): the domain decides."""
    def edit(model):
        _head_through(helper.make_node(operator, ["head_raw"], ["head_output"], domain=domain))(model)
        model.opset_import.append(helper.make_opsetid(domain, 1))

    with pytest.raises(RuntimeError) as caught:
        dodo.Closure(_package(default_package, edit=edit), threads=1)
    text = str(caught.value)
    assert text.startswith("DODO_ERROR_MODEL_FORMAT: model in memory"), text
    assert f'the graph has a node of operator domain "{domain}" (at byte ' in text, text


def test_an_operator_in_a_function_is_checked_too(default_package):
    """A model-local function's body holds nodes too: its Range is refused like one in the graph."""
    def edit(model):
        function = helper.make_function("local", "grow", ["x"], ["y"],
                                        [helper.make_node("Range", ["x", "x", "x"], ["y"])],
                                        [helper.make_opsetid("", 17)])
        model.functions.append(function)

    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_FORMAT: .*the graph has a node of operator "Range"'):
        dodo.Closure(_package(default_package, edit=edit), threads=1)


def test_every_operator_dodo_export_writes_is_allowed():
    """The allow-list holds what the exporter writes: residual networks with each activation, with and
    without batch normalisation, for each feature width, and the density-residual ensemble member by
    member and fused (read by the runtime's package reader, which refuses another operator)."""
    torch = pytest.importorskip("torch")
    from dodo import _core
    from dodo.training import ensemble as ensembles
    from dodo.training import export
    from dodo.training.ensemble_train import _ensemble_onnx_bytes
    from dodo.training.model import ACTIVATIONS, ResidualFFIModel

    torch.manual_seed(0)
    seen = set()
    graphs = []
    for activation in ACTIVATIONS:
        for batch_norm in (False, True):
            graphs.append(export._onnx_bytes(ResidualFFIModel("direct", 8, 1, activation, 0.1, batch_norm)))
    for width, features in ((34, "invariants27+box7-v1"), (52, "invariants27+box7+eln18-v1")):
        members = [ensembles.Member(width, 8, 2) for _ in range(2)]
        ensemble = ensembles.DensityResidualEnsemble(members, 0.02, 0.01, np.zeros(width), np.eye(width), 10.0, 0.5)
        ensemble.features = features
        graphs += [_ensemble_onnx_bytes(ensemble, fused) for fused in (False, True)]
    for graph in graphs:
        _core.with_content_digest(graph)  # raises on an operator outside the allow-list
        seen |= {node.op_type for node in onnx.load_from_string(graph).graph.node}
    assert {"Gemm", "Sigmoid", "BatchNormalization", "Erf", "ReduceMean", "Sqrt"} <= seen, seen


# --- defect 3: a sparse tensor that ONNX Runtime makes dense at load -----------------------------------

@pytest.mark.parametrize("where", ["sparse_initializer", "Constant"])
def test_a_sparse_tensor_larger_than_the_package_is_refused(default_package, tmp_path, where):
    """One value in a sparse [10000, 10000] tensor: 60 bytes of a 52 KB package, 830 MB resident and
    1.3 s before any check of the numbers (ONNX Runtime's bound: 2 GiB of dense data)."""
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0], np.float32), "big"),
                                       _i64("big.indices", [0]), [10_000, 10_000])

    def edit(model):
        if where == "Constant":
            _sum_into_head(helper.make_node("Constant", [], ["big"], sparse_value=sparse))(model)
        else:
            model.graph.sparse_initializer.append(sparse)
            _sum_into_head(None)(model)

    text = _load_in_a_child(_package(default_package, edit=edit), tmp_path, "a sparse [10000, 10000] tensor")
    assert text.startswith("RuntimeError DODO_ERROR_MODEL_FORMAT: model in memory"), text
    assert "holds a sparse tensor (at byte " in text and "whose dense form has 1e+08 elements, more than the" in text, text


# --- defect 4: an output listed twice ----------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1])
def test_a_graph_output_listed_twice_is_refused(default_package, index):
    def edit(model):
        model.graph.output.add().CopyFrom(model.graph.output[index])

    name = default_package.graph.output[index].name
    with pytest.raises(RuntimeError) as caught:
        dodo.Closure(_package(default_package, edit=edit), threads=1)
    assert str(caught.value).startswith("DODO_ERROR_MODEL_FORMAT: model in memory"), caught.value
    assert f'the graph lists output "{name}" twice' in str(caught.value), caught.value


# --- no defect: what was already refused or safe, kept so -----------------------------------------------

def test_the_hand_signed_default_model_loads_and_computes_as_the_shipped_one(default_package):
    """The helpers above sign a package the runtime accepts: the refusals are the edits'."""
    vectors = json.loads({e.key: e.value for e in default_package.metadata_props}["dodo.test_vectors"])
    F_init, u = np.array(vectors["F_init"]), np.array(vectors["u"])
    signed = dodo.Closure(_package(default_package), threads=1).apply(F_init, u)
    shipped = dodo.Closure(default_package.SerializeToString(), threads=1).apply(F_init, u)
    np.testing.assert_array_equal(signed.F_pred, shipped.F_pred)


def test_a_graph_that_changes_the_batch_size_is_refused(default_package):
    """head_output's rows twice (N -> 2N): refused by the load's probe evaluation."""
    message = 'graph declares "head_output" float32 [N, 78] but computes [2, 78] for N = 1'
    edit = _head_through(helper.make_node("Concat", ["head_raw", "head_raw"], ["head_output"], axis=0))
    with pytest.raises(RuntimeError) as caught:
        dodo.Closure(_package(default_package, edit=edit), threads=1)
    assert message in str(caught.value), caught.value


def test_loads_of_one_package_from_many_threads_all_succeed(default_package):
    """24 threads create closures of one package at once through the C API (ctypes drops the GIL):
    each loads, none waits for ever."""
    import ctypes
    import threading

    from libdodo_ctypes import load_libdodo

    library = load_libdodo()
    package = _package(default_package)
    count = 24
    handles = [ctypes.c_void_p() for _ in range(count)]
    statuses = [None] * count
    barrier = threading.Barrier(count)

    def create(index):
        message = ctypes.create_string_buffer(1024)
        barrier.wait(timeout=120)
        statuses[index] = (library.dodo_closure_create_from_memory(package, len(package), None,
                                                                   ctypes.byref(handles[index]), message, 1024),
                           message.value)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)  # a hang guard only
    try:
        assert not any(thread.is_alive() for thread in threads), "a concurrent load did not return within 300 s"
        assert all(status == (0, b"") for status in statuses), statuses
    finally:
        for handle in handles:
            if handle.value:
                library.dodo_closure_destroy(handle)


# --- defect 5: ONNX Runtime's source locations inside its messages; a graph's failure as ONNX Runtime's --

def test_onnx_runtime_source_locations_inside_a_message_are_cut(default_package):
    """A Reshape of head_output to [10^6, 10^6]: the probe evaluation's refusal carried, after "Status
    Message: ", "/onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:91
    onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, ...)"."""
    edit = _head_through(helper.make_node("Reshape", ["head_raw", "huge.shape"], ["huge"]),
                         helper.make_node("ReduceSum", ["huge"], ["huge.sum"], keepdims=0),
                         helper.make_node("Add", ["head_raw", "huge.sum"], ["head_output"]),
                         initializers=[_i64("huge.shape", [10 ** 6, 10 ** 6])])
    with pytest.raises(RuntimeError) as caught:
        dodo.Closure(_package(default_package, edit=edit), threads=1)
    text = str(caught.value)
    assert text.startswith("DODO_ERROR_MODEL_FORMAT: model in memory"), text
    assert "evaluating the graph on a probe batch failed: " in text, text
    assert "The input tensor cannot be reshaped to the requested shape" in text, text
    assert "/onnxruntime_src/" not in text and "onnxruntime::" not in text and "\n" not in text, text


def test_a_graph_whose_rows_differ_beyond_three_is_refused_as_the_packages_fault(default_package):
    """head_output followed by its rows from the fourth on: N rows for N <= 3 (the shape probe), 2N - 3
    beyond. The 64-row comparison with the native network refused it as DODO_ERROR_ONNXRUNTIME,
    "evaluating the network: ..." with ONNX Runtime's source location."""
    edit = _head_through(helper.make_node("Slice", ["head_raw", "rows.start", "rows.end", "rows.axis"], ["rows.tail"]),
                         helper.make_node("Concat", ["head_raw", "rows.tail"], ["head_output"], axis=0),
                         initializers=[_i64("rows.start", [3]), _i64("rows.end", [2 ** 40]), _i64("rows.axis", [0])])
    with pytest.raises(RuntimeError) as caught:
        dodo.Closure(_package(default_package, edit=edit), threads=1)
    text = str(caught.value)
    assert text.startswith("DODO_ERROR_MODEL_FORMAT: model in memory"), text
    assert "evaluating the graph on 64 probe rows failed: " in text, text
    assert "has shape {64,78} but the computed output shape for this run is {125,78}" in text, text
    assert "/onnxruntime_src/" not in text, text
