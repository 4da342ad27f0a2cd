"""Issue 5, model files: truncated, bit-flipped, wrong-opset, wrong-IR, wrong-shape and tampered
model packages fail cleanly with a message naming the problem (metadata mismatches: see
test_closure_errors.py); the embedded self-test catches weights altered after export."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from closure_helpers import onnx, save_resigned, write

import dodo
from dodo._closure import Closure

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model_files") / "model.onnx"
    write(path, "equivariant", n_test_vectors=4)
    return path


def edited(tmp_path, good_model, name, edit, resign=True):
    """The good model after `edit`; resign: with a fresh content digest, as if it had been
    exported that way (so the checks behind the digest are reached)."""
    model = onnx.load(str(good_model))
    edit(model)
    path = tmp_path / f"{name}.onnx"
    if resign:
        save_resigned(model, path)
    else:
        onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.75, 0.99, -1])
def test_truncated_model_fails_naming_the_file(tmp_path, good_model, fraction):
    data = good_model.read_bytes()
    keep = len(data) - 1 if fraction == -1 else int(len(data) * fraction)
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[:keep])
    with pytest.raises(RuntimeError, match=r"DODO_ERROR_MODEL_(FORMAT|METADATA)") as raised:
        Closure(path)
    assert "truncated.onnx" in str(raised.value) or "dodo." in str(raised.value), raised.value


@pytest.mark.parametrize("version, words", [
    (99, ("Opset 99", "official support")),   # newer than this ONNX Runtime knows
    (1, ("Could not find an implementation", "Sub")),  # older than the operators the graph uses
])
def test_wrong_opset_is_refused_naming_it(tmp_path, good_model, version, words):
    def edit(model):
        model.opset_import[0].version = version
    with pytest.raises(RuntimeError, match="DODO_ERROR_MODEL_FORMAT: cannot load") as raised:
        Closure(edited(tmp_path, good_model, f"opset{version}", edit))
    for word in words:
        assert word in str(raised.value), raised.value
    assert "/onnxruntime_src/" not in str(raised.value)  # ORT's source location is cut off


def test_unsupported_ir_version_is_refused_naming_it(tmp_path, good_model):
    def edit(model):
        model.ir_version = 99
    with pytest.raises(RuntimeError, match=r"Unsupported model IR version: 99"):
        Closure(edited(tmp_path, good_model, "ir99", edit))


def set_dims(value_info, dims):
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, str):
            entry.dim_param = dim
        else:
            entry.dim_value = dim


@pytest.mark.parametrize("where, dims, message", [
    ("input", ["N", 26], r"Incompatible dimensions|\[N, 27\]"),
    ("input", [1024, 27], r'"invariants" must have shape \[N, 27\] with a dynamic N'),
    ("input", ["N", 27, 1], r'"invariants" must have shape \[N, 27\]|rank'),
    ("output", [64, 78], r'"head_output" must have shape \[N, K\] with a dynamic N'),
])
def test_wrong_graph_shapes_are_refused(tmp_path, good_model, where, dims, message):
    def edit(model):
        set_dims(model.graph.input[0] if where == "input" else model.graph.output[0], dims)
    with pytest.raises(RuntimeError, match=message):
        Closure(edited(tmp_path, good_model, f"{where}_{'_'.join(map(str, dims))}", edit))


def test_output_width_that_does_not_match_the_head_is_refused(tmp_path, good_model):
    """The last layer cut to 77 columns (the equivariant head needs 78), metadata unchanged."""
    from onnx import numpy_helper

    def edit(model):
        for name in ("W2", "b2"):
            tensor = initializer(model, name)
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)[..., :77].copy(), name))
        set_dims(model.graph.output[0], ["N", 77])
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_METADATA: .*"head_output" has 77 columns; '
                                           r'head "equivariant" needs 78'):
        Closure(edited(tmp_path, good_model, "width77", edit))


def initializer(model, name):
    return next(tensor for tensor in model.graph.initializer if tensor.name == name)


@pytest.mark.parametrize("change", ["one weight +0.05", "one bias +0.05", "exponent bit flip", "normalisation"])
def test_self_test_catches_weights_altered_after_export(tmp_path, good_model, change):
    from onnx import numpy_helper

    def edit(model):
        name = {"one weight +0.05": "W1", "one bias +0.05": "b2", "exponent bit flip": "W2",
                "normalisation": "input_std"}[change]
        tensor = initializer(model, name)
        values = numpy_helper.to_array(tensor).copy()
        flat = values.reshape(-1)
        if change == "exponent bit flip":
            flat.view(np.uint32)[5] ^= np.uint32(1 << 29)
        elif change == "normalisation":
            flat[3] *= 1.5
        else:
            flat[0] += 0.05
        tensor.CopyFrom(numpy_helper.from_array(values, name))

    # First line of defence: the content digest, whatever the change.
    path = edited(tmp_path, good_model, change.replace(" ", "_"), edit, resign=False)
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == \
        {p.key: p.value for p in onnx.load(str(good_model)).metadata_props}  # metadata untouched
    with pytest.raises(RuntimeError, match=r"DODO_ERROR_MODEL_FORMAT: .*model file is damaged: its content .* has "
                                           r"SHA-256 [0-9a-f]{64} but \"dodo.content_sha256\" says [0-9a-f]{64}"):
        Closure(path, self_test=False)

    # Second: weights changed and the digest recomputed (a broken export, a hand-edited model):
    # the self-test compares the closure with the test vectors recorded at export.
    path = edited(tmp_path, good_model, change.replace(" ", "_") + "_resigned", edit)
    with pytest.raises(RuntimeError, match=r"DODO_ERROR_SELF_TEST: self-test failed: test vector \d+ differs by"):
        Closure(path)
    tampered = Closure(path, self_test=False)  # loading without the check works, and the check still fails
    with pytest.raises(RuntimeError, match="DODO_ERROR_SELF_TEST"):
        tampered.self_test()


def test_model_without_content_digest_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "unsigned.onnx"
    write(path, "equivariant", n_test_vectors=0, metadata_overrides={"dodo.content_sha256": None})
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_METADATA: .*model metadata has no "dodo.content_sha256"'):
        Closure(path)


def test_content_digest_is_the_sha256_of_the_file_without_its_metadata(good_model):
    """The contract of docs/model_package.md, checked with hashlib and onnx (independent of the
    runtime's own protobuf reader): SHA-256 of the serialized model with metadata_props emptied."""
    import hashlib

    from dodo import _core

    model = onnx.load(str(good_model))
    stored = {p.key: p.value for p in model.metadata_props}["dodo.content_sha256"]
    del model.metadata_props[:]
    assert hashlib.sha256(model.SerializeToString()).hexdigest() == stored
    assert _core.model_content_sha256(good_model.read_bytes()) == stored
    assert _core.model_metadata(good_model.read_bytes()) == {p.key: p.value for p in onnx.load(str(good_model)).metadata_props}


@pytest.mark.parametrize("damage, message", [
    (lambda data: data + b"\x0a\x05", r"a field's length runs past the end at byte \d+"),  # 5 bytes promised
    (lambda data: data + b"\x0a", r"a number runs past the end at byte \d+"),             # a tag, no length
    (lambda data: data + b"\x0b", r"wire type 3 \(not used by ONNX\) at byte \d+"),      # a group
    (lambda data: data + b"\x80" * 11, r"a number longer than 10 bytes at byte \d+"),
    (lambda data: b"\x00" + data, r"field number 0 at byte \d+"),
    (lambda data: b"\x08\x07", "the file has no graph"),                                 # ir_version only
])
def test_malformed_protobuf_is_refused_with_the_byte_offset(tmp_path, good_model, damage, message):
    path = tmp_path / "malformed.onnx"
    path.write_bytes(damage(good_model.read_bytes()))
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_FORMAT: model file ".*malformed.onnx": not an ONNX model.*' + message):
        Closure(path)


def test_duplicate_metadata_key_is_refused(tmp_path, good_model):
    model = onnx.load(str(good_model))
    entry = model.metadata_props.add()
    entry.key, entry.value = "dodo.head", "direct"
    path = tmp_path / "duplicate.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_METADATA: .*model metadata key "dodo.head" appears twice'):
        Closure(path)


FLIP_CAMPAIGN = r"""
import collections, json, random, sys
import numpy as np
from dodo._closure import Closure
source, target, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = bytearray(open(source, "rb").read())
chooser = random.Random(seed)
F = np.zeros((3, 6, 4)); F[:, :, 0] = [1.0, 0.5, 0.5, 0.8, 0.3, 0.3]; F[:, 0, 3] = 0.4; F[:, 3, 3] = -0.5
outcomes = collections.Counter()
reference = Closure(source).apply(F).F_pred
for _ in range(count):
    at, bit = chooser.randrange(len(data)), chooser.randrange(8)
    data[at] ^= 1 << bit
    open(target, "wb").write(data)
    data[at] ^= 1 << bit
    try:
        closure = Closure(target)
    except RuntimeError as error:
        text = str(error)
        assert text.startswith("DODO_ERROR_"), text
        outcomes[text.split(":")[0]] += 1
        continue
    result = closure.apply(F)
    assert np.all(np.isfinite(result.F_pred)), (at, bit)
    change = float(np.abs(result.F_pred - reference).max() / F[0, :, 0].sum())
    outcomes["loaded (self-test passed), output finite, change < 1e-5 N_tot" if change < 1e-5
             else "loaded (self-test passed), output finite, change >= 1e-5 N_tot"] += 1
print(json.dumps(outcomes))
"""


def test_random_bit_flips_never_crash_and_fail_with_a_code(tmp_path, good_model):
    """Single-bit flips anywhere in the file (run in a subprocess so a crash would show as one):
    each either fails with a DODO_ERROR_ code and message or loads a model that passed its
    self-test and gives finite, unchanged output."""
    run = subprocess.run([sys.executable, "-c", FLIP_CAMPAIGN, str(good_model), str(tmp_path / "flipped.onnx"), "150",
                          "20261126"], capture_output=True, text=True, timeout=600, cwd=HERE)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    assert sum(outcomes.values()) == 150
    print(f"150 random bit flips: {outcomes}")
    # The content digest covers the graph and weights, dodo.metadata_sha256 every metadata entry
    # (a date and a description included, issue 11): no flipped file loads at all.
    assert not any(outcome.startswith("loaded") for outcome in outcomes), outcomes


def test_error_quoting_invalid_utf8_from_the_file_is_still_a_clean_error(tmp_path):
    """A corrupted metadata value is quoted in the message: bytes that are not UTF-8 (and control
    characters) come out as \\xNN instead of a UnicodeDecodeError (found by the bit-flip campaign)."""
    path = tmp_path / "model.onnx"
    write(path, "equivariant", n_test_vectors=0, metadata_overrides={"dodo.head": "clairvoyant"})
    data = path.read_bytes()
    assert data.count(b"clairvoyant") == 1
    # Same length: the protobuf stays valid; signed again so that the head check is reached.
    # Bytes that are not UTF-8 are refused as such before the head is read (C round twenty-one).
    path.write_bytes(dodo._core.with_content_digest(data.replace(b"clairvoyant", b"clai\xe1\x80\x01yant")))
    with pytest.raises(RuntimeError, match=r'DODO_ERROR_MODEL_METADATA: .*"dodo.head" is not UTF-8 text \(byte 4 '):
        Closure(path)
    # Control characters (UTF-8, but not printable) still reach the head check, escaped.
    path.write_bytes(dodo._core.with_content_digest(data.replace(b"clairvoyant", b"clai\x1b\x01\x7fyant")))
    with pytest.raises(RuntimeError, match=r"DODO_ERROR_MODEL_METADATA: .*unknown head") as raised:
        Closure(path)
    assert "clai\\x1b\\x01\\x7fyant" in str(raised.value), raised.value
