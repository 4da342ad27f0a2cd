"""Issue 12: a model package loaded from memory (what an MPI code does after broadcasting the file)
passes exactly the checks a file does (content digest, metadata digest, metadata, required test
vectors, the size bound, self-test; issue 11) and gives the same closure; and device selection
fails with a clear error where ONNX Runtime has no CUDA provider."""
from __future__ import annotations

import ctypes
import json
import mmap
import re

import numpy as np
import pytest

from closure_helpers import onnx, write
from libdodo_ctypes import Options, load_libdodo, sized_options

from dodo import _core
from dodo._closure import Closure, runtime_available
from dodo.models import default_model_path

pytestmark = pytest.mark.skipif(not runtime_available(), reason="dodo built without the closure runtime")


def cells(n=64, seed=3):
    rng = np.random.default_rng(seed)
    F = np.zeros((n, 6, 4))
    F[:, :, 0] = rng.uniform(0.5, 1.5, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[:, :, 1:] = direction * (rng.uniform(0, 0.6, (n, 6)) * F[:, :, 0])[..., None]
    v = rng.uniform(-0.2, 0.2, (n, 3))
    W = 1 / np.sqrt(1 - np.sum(v**2, axis=-1))
    return F, np.concatenate([W[:, None], W[:, None] * v], axis=-1)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8)],
                         ids=["bytes", "bytearray", "memoryview", "uint8-array"])
def test_closure_from_memory_equals_closure_from_file_bit_for_bit(wrap):
    path = default_model_path()
    from_file = Closure(path, threads=1)
    from_memory = Closure(wrap(path.read_bytes()), threads=1)
    F, u = cells()
    a, b = from_file.apply(F, u), from_memory.apply(F, u)
    assert np.array_equal(a.F_pred, b.F_pred) and np.array_equal(a.status, b.status)
    assert from_memory.metadata == from_file.metadata
    assert from_memory.model_path is None and "in memory" in repr(from_memory)


def edited_metadata(data: bytes, key: str, edit, resign: bool) -> bytes:
    """`data` with metadata entry `key` replaced by edit(its value) (None: removed); resign: signed
    again as a deliberate re-export would be, else as an edit after export."""
    model = onnx.load_from_string(data)
    kept = [(entry.key, entry.value) for entry in model.metadata_props]
    del model.metadata_props[:]
    for name, value in kept:
        value = edit(value) if name == key else value
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = name, value
    return _core.with_content_digest(model.SerializeToString()) if resign else model.SerializeToString()


def wrong_expected_output(text: str) -> str:
    vectors = json.loads(text)
    vectors["F_pred"][0][0][0] *= 1.01
    return json.dumps(vectors)


def tampered_test_vectors(data: bytes) -> bytes:
    # Re-signed: both digests hold, so only the self-test can see that the package is wrong.
    return edited_metadata(data, "dodo.test_vectors", wrong_expected_output, resign=True)


def flipped_weight_bit(data: bytes) -> bytes:
    # A byte in the middle of the weights: the content digest no longer matches.
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x10
    return bytes(changed)


CASES = {
    "truncated": lambda data: data[: len(data) // 2],
    "bit flip": flipped_weight_bit,
    "self-test": tampered_test_vectors,
    "metadata edited after export": lambda data: edited_metadata(data, "dodo.test_vectors", wrong_expected_output,
                                                                 resign=False),
    "no test vectors": lambda data: edited_metadata(data, "dodo.test_vectors", lambda value: None, resign=True),
    "not onnx": lambda data: b"\x00\x01 not a protobuf message at all",
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_package_is_refused_from_memory_as_from_a_file(tmp_path, case):
    good = tmp_path / "good.onnx"
    write(good, "equivariant", n_test_vectors=4)
    data = CASES[case](good.read_bytes())
    path = tmp_path / "damaged.onnx"
    path.write_bytes(data)
    with pytest.raises(RuntimeError) as from_file:
        Closure(path)
    with pytest.raises(RuntimeError) as from_memory:
        Closure(data)
    status = re.match(r"(DODO_\w+):", str(from_file.value)).group(1)
    assert str(from_memory.value).startswith(status + ":"), (from_file.value, from_memory.value)
    # Same text, the source named differently, and bytes the reader refused called bytes, not a file
    # (C round forty-six, test_probe_c_round46).
    as_memory = str(from_file.value).replace(f'model file "{path}"', f"model in memory ({len(data)} bytes)").replace(
        "(truncated or damaged file?)", "(truncated or damaged bytes? give the whole .onnx file's bytes and its size)")
    assert str(from_memory.value) == as_memory


@pytest.mark.parametrize("case, words", [("self-test", "DODO_ERROR_SELF_TEST"),
                                         ("metadata edited after export", '"dodo.metadata_sha256" says'),
                                         ("no test vectors", "DODO_ALLOW_UNTESTED_MODEL=1")])
def test_each_check_is_the_one_that_refuses_from_memory(tmp_path, case, words):
    good = tmp_path / "good.onnx"
    write(good, "equivariant", n_test_vectors=4)
    with pytest.raises(RuntimeError, match=re.escape(words)):
        Closure(CASES[case](good.read_bytes()))


def test_untested_package_from_memory_loads_only_with_the_development_opt_out(tmp_path, monkeypatch):
    path = tmp_path / "untested.onnx"
    write(path, "equivariant", n_test_vectors=0)
    with pytest.raises(RuntimeError, match="carries no test vectors"):
        Closure(path.read_bytes())
    monkeypatch.setenv("DODO_ALLOW_UNTESTED_MODEL", "1")
    assert Closure(path.read_bytes()).has_model


def test_box3d_settings_conflict_is_refused_from_memory_naming_the_key():
    with pytest.raises(RuntimeError, match=r"DODO_ERROR_MODEL_METADATA: .*lebedev_order"):
        Closure(default_model_path().read_bytes(), lebedev_order=41)


def test_empty_or_non_byte_buffers_are_refused_clearly():
    with pytest.raises(RuntimeError, match=r"DODO_ERROR_MODEL_FORMAT: model in memory \(0 bytes\) is empty"):
        Closure(b"")
    with pytest.raises(TypeError, match="uint8"):
        Closure(np.zeros(8, np.float64))


@pytest.fixture(scope="module")
def libdodo():
    library = load_libdodo()
    library.dodo_closure_create_from_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(Options),
                                                        ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                                        ctypes.c_size_t]
    return library


def create_from_memory(library, data, size=None, options=None):
    closure, message = ctypes.c_void_p(), ctypes.create_string_buffer(1024)
    buffer = ctypes.create_string_buffer(data, len(data)) if data is not None else None
    status = library.dodo_closure_create_from_memory(
        buffer, len(data) if size is None else size, ctypes.byref(options) if options else None,
        ctypes.byref(closure), message, len(message))
    if closure:
        library.dodo_closure_destroy(closure)
    return library.dodo_status_name(status).decode(), message.value.decode(), bool(closure)


def test_c_api_creates_from_memory_and_refuses_null_and_empty_buffers(libdodo):
    data = default_model_path().read_bytes()
    assert create_from_memory(libdodo, data) == ("DODO_OK", "", True)
    status, message, made = create_from_memory(libdodo, None, size=10)
    assert (status, made) == ("DODO_ERROR_INVALID_ARGUMENT", False) and "NULL" in message
    status, message, made = create_from_memory(libdodo, data, size=0)
    assert (status, made) == ("DODO_ERROR_MODEL_FORMAT", False) and "empty" in message
    status, message, _ = create_from_memory(libdodo, data, size=len(data) - 7)
    assert status == "DODO_ERROR_MODEL_FORMAT" and f"model in memory ({len(data) - 7} bytes)" in message


def test_c_api_refuses_a_buffer_above_the_model_size_limit(libdodo, tmp_path):
    # A sparse file mapped into memory: a buffer of DODO_MAX_MODEL_FILE_BYTES + 1 bytes that uses
    # neither RAM nor disk, and reads as zeros should the bound ever be skipped.
    limit = 256 * 2**20
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as handle:
        handle.truncate(limit + 1)
    with open(sparse, "r+b") as handle, mmap.mmap(handle.fileno(), limit + 1, access=mmap.ACCESS_COPY) as mapped:
        anchor = ctypes.c_char.from_buffer(mapped)
        closure, message = ctypes.c_void_p(), ctypes.create_string_buffer(1024)
        status = libdodo.dodo_closure_create_from_memory(ctypes.addressof(anchor), limit + 1, None,
                                                         ctypes.byref(closure), message, len(message))
        del anchor  # the mapping can close only without exported pointers
    assert libdodo.dodo_status_name(status) == b"DODO_ERROR_MODEL_FORMAT" and not closure
    assert message.value.decode() == (f"model in memory ({limit + 1} bytes) is larger than a model package may be: "
                                      f"at most {limit} bytes (DODO_MAX_MODEL_FILE_BYTES)")


def test_cuda_device_without_a_cuda_provider_fails_clearly(libdodo):
    data = default_model_path().read_bytes()
    status, message, made = create_from_memory(libdodo, data, options=sized_options(libdodo, device=1, device_id=3))
    assert (status, made) == ("DODO_ERROR_ONNXRUNTIME_UNAVAILABLE", False)
    assert "cuda:3" in message and "no CUDA execution provider" in message and "onnxruntime-gpu" in message
    with pytest.raises(RuntimeError, match="DODO_ERROR_ONNXRUNTIME_UNAVAILABLE: device cuda:1 requested"):
        Closure(default_model_path(), device="cuda:1")


@pytest.mark.parametrize("fields, words", [({"device": 7}, "DODO_DEVICE_CPU"), ({"device": 1, "device_id": -1},
                                                                               "device_id must be >= 0")])
def test_bad_device_options_are_refused(libdodo, fields, words):
    status, message, made = create_from_memory(libdodo, default_model_path().read_bytes(),
                                               options=sized_options(libdodo, **fields))
    assert (status, made) == ("DODO_ERROR_INVALID_ARGUMENT", False) and words in message
    with pytest.raises(ValueError, match='unknown device "gpu"'):
        Closure(default_model_path(), device="gpu")


class OptionsFirstRelease(ctypes.Structure):
    """dodo_options as API version 1 released it, before device and device_id."""
    _fields_ = Options._fields_[:8]


def test_first_release_options_init_writes_only_the_first_release_struct(libdodo):
    # A program built against the first dodo.h calls the symbol dodo_options_init on its smaller
    # struct: the growing struct must not make the library write past it.
    size = ctypes.sizeof(OptionsFirstRelease)
    memory = ctypes.create_string_buffer(b"\xab" * 128, 128)
    libdodo.dodo_options_init(memory)
    assert memory.raw[size:] == b"\xab" * (128 - size)
    initialised = OptionsFirstRelease.from_buffer_copy(memory.raw[:size])
    assert (initialised.struct_size, initialised.chunk_size, initialised.threads) == (size, 1024, 0)
    # The sized entry point (what dodo.h's dodo_options_init macro calls) fills exactly the size given.
    memory = ctypes.create_string_buffer(b"\xab" * 128, 128)
    libdodo.dodo_options_init_sized(ctypes.cast(memory, ctypes.POINTER(Options)), ctypes.sizeof(Options))
    assert memory.raw[ctypes.sizeof(Options):] == b"\xab" * (128 - ctypes.sizeof(Options))
    current = Options.from_buffer_copy(memory.raw[:ctypes.sizeof(Options)])
    assert (current.struct_size, current.chunk_size, current.device, current.device_id) == \
        (ctypes.sizeof(Options), 1024, 0, 0)
    memory = ctypes.create_string_buffer(b"\xab" * 16, 16)
    libdodo.dodo_options_init_sized(ctypes.cast(memory, ctypes.POINTER(Options)), 16)  # too small for any version
    assert memory.raw == b"\xab" * 16


def test_options_struct_of_the_first_release_is_still_accepted(libdodo):
    old = OptionsFirstRelease(struct_size=ctypes.sizeof(OptionsFirstRelease), threads=1, chunk_size=256)
    assert ctypes.sizeof(OptionsFirstRelease) < ctypes.sizeof(Options)
    closure, message = ctypes.c_void_p(), ctypes.create_string_buffer(512)
    status = libdodo.dodo_closure_create(str(default_model_path()).encode(), ctypes.cast(ctypes.byref(old),
                                         ctypes.POINTER(Options)), ctypes.byref(closure), message, len(message))
    assert libdodo.dodo_status_name(status) == b"DODO_OK", message.value
    libdodo.dodo_closure_destroy(closure)
    wrong = sized_options(libdodo)
    wrong.struct_size = ctypes.sizeof(Options) + 8
    assert create_from_memory(libdodo, default_model_path().read_bytes(), options=wrong)[0] == \
        "DODO_ERROR_INVALID_ARGUMENT"


CPP_FROM_MEMORY = r"""
#include <dodo/dodo.hpp>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
int main(int, char** argv) {
  std::ifstream file(argv[1], std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  dodo::Closure closure = dodo::Closure::from_memory(bytes.data(), bytes.size(), dodo::Options().run_self_test(true));
  std::printf("model %d head %s\n", closure.has_model() ? 1 : 0, closure.metadata("dodo.head").c_str());
  try {
    dodo::Closure::from_memory(bytes.data(), bytes.size() / 2);
  } catch (const dodo::Error& error) {
    std::printf("half: %s\n", dodo_status_name(error.status()));
  }
  try {
    dodo::Closure::from_memory(bytes.data(), bytes.size(), dodo::Options().cuda_device(0));
  } catch (const dodo::Error& error) {
    std::printf("cuda: %s\n", dodo_status_name(error.status()));
  }
}
"""


def test_cpp_wrapper_from_memory(tmp_path):
    import shutil
    import subprocess

    from test_native_programs import pkg_config, run

    compiler = shutil.which("c++") or shutil.which("g++")
    if not compiler:
        pytest.skip("no C++ compiler")
    source, program = tmp_path / "from_memory.cpp", tmp_path / "from_memory"
    source.write_text(CPP_FROM_MEMORY)
    run([compiler, "-std=c++17", "-Wall", "-Werror", str(source), *pkg_config("--cflags", "--libs"), "-o", str(program)])
    output = subprocess.run([str(program), str(default_model_path())], capture_output=True, text=True, timeout=60).stdout
    assert output.splitlines() == ["model 1 head equivariant", "half: DODO_ERROR_MODEL_FORMAT",
                                   "cuda: DODO_ERROR_ONNXRUNTIME_UNAVAILABLE"]
