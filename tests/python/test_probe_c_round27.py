"""Outside probe of the C interface, round twenty-seven (docs/reliability_cpp.md, "Round
twenty-seven"): numbers in messages (written with the fewest digits that read back, in the "C"
locale), a package followed by zero bytes, an onnxruntime wheel directory that cannot be listed,
the Julia wrapper's message buffer;
and, held without a change, batch invariance across chunk sizes and threads and failing creates
that leave nothing behind."""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from libdodo_ctypes import cells_at_rest, create_closure, default_model_or_skip, libdodo_beside_junk_onnxruntime, load_libdodo, sized_options

POINTER = ctypes.POINTER
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lib():
    return load_libdodo()


_default_model = default_model_or_skip
_create = create_closure


def _create_from_memory(lib, data: bytes, **fields):
    handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(8192)
    status = lib.dodo_closure_create_from_memory(data, len(data), ctypes.byref(sized_options(lib, **fields)),
                                                 ctypes.byref(handle), message, 8192)
    if handle:
        lib.dodo_closure_destroy(handle)
    return status, message.value.decode()


def _resigned(model: bytes, key: str, rewrite) -> bytes:
    """The package with metadata entry `key` rewritten, digests recomputed (a deliberate editor)."""
    onnx = pytest.importorskip("onnx")
    import dodo

    package = onnx.load_from_string(Path(model.decode()).read_bytes())
    entry = next(e for e in package.metadata_props if e.key == key)
    entry.value = rewrite(entry.value)
    return dodo._core.with_content_digest(package.SerializeToString())


# --- numbers in messages ---------------------------------------------------------------------


@pytest.mark.parametrize("given, shown", [(1.1, "1.1"), (1.0000001, "1.0000001"), (-0.3, "-0.3"), (2.0, "2")])
def test_an_option_the_host_gave_is_echoed_with_the_digits_it_gave(lib, given, shown):
    """Before: "%.17g", so max_flux_factor 1.1 came back as "got 1.1000000000000001" and -0.3 as
    "got -0.29999999999999999": a host reading its input deck's value back saw another number."""
    status, message, _ = _create(lib, b"box3d", max_flux_factor=given)
    assert status == 1, message
    assert message == f"max_flux_factor must lie in (0, 1), or 0 for the model's; got {shown}", message


def test_a_model_setting_other_than_the_requested_is_named_as_both_were_written(lib):
    """Before: 'max_flux_factor is 0.97999999999999998 but max_flux_factor 0.94999999999999996
    was requested' for the package's 0.98 and the host's 0.95."""
    status, message, _ = _create(lib, _default_model(lib), max_flux_factor=0.95)
    assert status == 4, message
    assert message.endswith('model "dodo.box3d" max_flux_factor is 0.98 but max_flux_factor 0.95 was requested'), message


def test_a_metadata_number_in_a_refusal_reads_as_the_package_writes_it(lib):
    """A re-signed package whose self-test tolerance is 0.1: before, '"atol_over_ntot" is
    0.10000000000000001; it must lie in (0, 0.001]'."""
    model = _default_model(lib)

    def loose(text):
        vectors = json.loads(text)
        vectors["atol_over_ntot"] = 0.1
        return json.dumps(vectors)

    status, message = _create_from_memory(lib, _resigned(model, "dodo.test_vectors", loose))
    assert status == 4, message
    assert '"atol_over_ntot" is 0.1; it must lie in (0, 0.001] (a larger one disables the self-test)' in message, message


@pytest.mark.parametrize("given, shown", [(1.0000001, "1.0000001"), (-1e-07, "-1e-07"), (2.0, "2"), (1.5, "1.5")])
def test_box3d_refuses_a_flux_factor_limit_naming_the_value_given(given, shown):
    """Box3D's own check (dodo.box3d, dodo._core.Box3D) wrote the value with std::to_string, "%f":
    1.0000001 read "got 1.000000" and -1e-07 "got -0.000000", values that look like other ones
    (1 is the bound itself; -0 looks like 0, which elsewhere means the model's)."""
    import dodo

    F = cells_at_rest(2)
    for call in (lambda: dodo.box3d(F, max_flux_factor=given), lambda: dodo._core.Box3D(max_flux_factor=given)):
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value) == f"max_flux_factor must lie in (0, 1); got {shown}", str(caught.value)


def test_numbers_in_messages_are_written_with_a_point_under_a_comma_decimal_locale(tmp_path):
    """A Python host under de_DE.UTF-8: Box3D's std::to_string and the QKE kernel's snprintf
    followed LC_NUMERIC ("got 1,500000", "has length 1,5"), unlike every runtime message since
    round eighteen (number_text, "C" locale)."""
    from test_probe_c_round18 import _comma_locale

    env = _comma_locale(tmp_path)
    script = textwrap.dedent("""
        import locale
        locale.setlocale(locale.LC_ALL, "de_DE.UTF-8")
        assert locale.localeconv()["decimal_point"] == ","
        import numpy as np
        import dodo
        from dodo import _core
        for call in (lambda: dodo.box3d(np.ones((1, 6, 4)) * [1, 0, 0, 0], max_flux_factor=1.5),
                     lambda: _core.QkeKernel(np.array([[0.0, 0.0, 1.5]]), 8, np.array([1.0]), np.ones(8), None,
                                             1.9e-22, 3e10)):
            try:
                call()
            except ValueError as error:
                print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines == ["max_flux_factor must lie in (0, 1); got 1.5",
                     "directions must be unit vectors: direction 0 has length 1.5 (|length - 1| must be <= 1e-10)"], lines


# --- a package followed by zero bytes ----------------------------------------------------------


@pytest.mark.parametrize("padding", [1, 100, 4096])
def test_a_package_followed_by_zero_bytes_is_named_as_such(lib, tmp_path, padding):
    """An MPI or Fortran host passing a buffer larger than the package with the buffer's size (an
    int8 array allocated for the largest file, a fixed-size MPI_Bcast). Before: 'not an ONNX model
    (truncated or damaged file?): field number 0 at byte 51700', the package blamed for the size
    it was given. The same from a file padded with zeros. Bytes other than zeros after the package,
    and a buffer of zeros alone, keep their messages."""
    model = _default_model(lib)
    raw = Path(model.decode()).read_bytes()
    expected = (f"not an ONNX model as given: {padding} zero byte{'s follow' if padding > 1 else ' follows'} the "
                f"package's first {len(raw)} bytes, and no ONNX field begins with one (a buffer larger than the "
                "package passed with the buffer's size, or a file padded with zeros?)")
    status, message = _create_from_memory(lib, raw + bytes(padding))
    assert status == 3 and message == f"model in memory ({len(raw) + padding} bytes): {expected}", message
    padded = tmp_path / "padded.onnx"
    padded.write_bytes(raw + bytes(padding))
    status, message, _ = _create(lib, str(padded).encode())
    assert status == 3 and message.endswith(f'padded.onnx": {expected}'), message
    for data, text in [(raw + bytes(5) + b"x", f"field number 0 at byte {len(raw)}"), (bytes(16), "field number 0 at byte 0")]:
        status, message = _create_from_memory(lib, data)
        # bytes, not a file (C round forty-six: test_probe_c_round46 asks the file's words too)
        assert status == 3 and message.endswith("not an ONNX model (truncated or damaged bytes? give the whole .onnx "
                                                "file's bytes and its size): " + text), message


# --- an onnxruntime wheel whose directory cannot be listed -----------------------------------

EXHAUSTED_DESCRIPTORS = r"""
import ctypes, os, resource, sys
sys.path.insert(0, sys.argv[1])
from libdodo_ctypes import load_libdodo
lib = load_libdodo()
lib.dodo_closure_create_from_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                                ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
package = open(sys.argv[2], "rb").read()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
limit = len(os.listdir("/proc/self/fd")) + 8
resource.setrlimit(resource.RLIMIT_NOFILE, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(16384)
status = lib.dodo_closure_create_from_memory(package, len(package), None, ctypes.byref(handle), message, 16384)
for fd in held:
    os.close(fd)
print(status)
print(message.value.decode())
status = lib.dodo_closure_create_from_memory(package, len(package), None, ctypes.byref(handle), message, 16384)
print(status)
"""


def test_an_onnxruntime_wheel_directory_that_cannot_be_listed_is_named(lib, tmp_path):
    """A host at its descriptor limit (RLIMIT_NOFILE; a transport code with many open files) makes
    its first closure with a model. glob() of the onnxruntime wheel's directory failed without a
    word, so the message listed only the loader's two names and advised "pip install onnxruntime"
    for a wheel that is installed. Now the directory is named with the reason, first, and the
    advice says that it could not be listed. With descriptors free again the same call loads."""
    from dodo._closure import runtime_paths

    model = _default_model(lib).decode()
    lib_dir = Path(runtime_paths()["lib_dir"])
    wheels = [lib_dir / up for up in ("../../onnxruntime/capi", "../onnxruntime/capi", "onnxruntime/capi")]
    wheel = next((w.resolve() for w in wheels if list(w.glob("libonnxruntime.so*"))), None)
    if wheel is None:
        pytest.skip("no onnxruntime wheel beside the dodo package (ONNX Runtime found another way)")
    env = {k: v for k, v in os.environ.items() if k not in ("DODO_ONNXRUNTIME_LIBRARY", "DODO_NETWORK_EVALUATOR")}
    result = subprocess.run([sys.executable, "-c", EXHAUSTED_DESCRIPTORS, str(Path(__file__).parent), model],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[-1] == "0", lines  # descriptors free again: it loads
    status, message = lines[0], "\n".join(lines[1:-1])
    if status == "0":
        pytest.skip("ONNX Runtime loaded without a free descriptor (a build hint or a preloaded library)")
    assert status == "5", message
    assert message.startswith("cannot load the ONNX Runtime library (an onnxruntime wheel's directory could not be "
                              "listed"), message
    second = message.splitlines()[1]
    assert second.endswith("/libonnxruntime.so*: the directory cannot be listed (Too many open files)"), message
    assert Path(second.strip().split(": ")[0]).parent.resolve() == wheel, (second, wheel)


# --- the Julia wrapper's messages ------------------------------------------------------------


def test_the_julia_wrapper_sizes_its_message_buffer_from_the_returned_length():
    """Dodo.jl read every message into zeros(UInt8, 1024): a message over 1,023 bytes (the list of
    ONNX Runtime libraries tried, one line each) lost its end, its reason, where dodo.hpp and
    dodo.f90 read the whole text (rounds seventeen and twenty-six). No Julia runs here: this holds
    the source to the rule; the next test runs it where julia is on PATH."""
    source = (ROOT / "julia/src/Dodo.jl").read_text()
    assert "zeros(UInt8, 1024)" not in source
    assert "n = LibDodo.last_error(C_NULL, UInt8[])" in source and "zeros(UInt8, n + 1)" in source


LONG_MESSAGE_JULIA = r"""
using Dodo
try
    Dodo.Closure(ARGS[1])
    println("created")
catch error
    error isa DodoError || rethrow()
    println(error.status, " ", sizeof(error.message))
    print(error.message)
end
"""


@pytest.mark.skipif(shutil.which("julia") is None, reason="julia is not on PATH (no Julia on these machines)")
def test_the_julia_wrapper_keeps_a_long_list_of_onnxruntime_libraries_tried_whole(lib, tmp_path):
    """As round twenty-six's C++ and Fortran test: libdodo copied into a deep tree beside four junk
    libonnxruntime.so* files gives a message of well over 1,024 bytes; DodoError holds it whole."""
    prefix = libdodo_beside_junk_onnxruntime(tmp_path)
    (tmp_path / "host.jl").write_text(LONG_MESSAGE_JULIA)
    env = {k: v for k, v in os.environ.items() if k not in ("DODO_ONNXRUNTIME_LIBRARY", "LD_LIBRARY_PATH")}
    env["DODO_LIBRARY"] = str(prefix / "dodo/lib/libdodo.so")
    result = subprocess.run(["julia", f"--project={ROOT / 'julia'}", str(tmp_path / "host.jl"),
                             _default_model(lib).decode()], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    head, _, text = result.stdout.partition("\n")
    if head == "created":
        pytest.skip("this libdodo found an ONNX Runtime past the wheel's (a build hint)")
    fields = head.split()
    assert fields[0] == "5" and int(fields[1]) > 1024 and int(fields[1]) == len(text.encode()), (fields, len(text))
    assert text.endswith("libonnxruntime.so: cannot open shared object file: No such file or directory"), text[-200:]


# --- held without a change -------------------------------------------------------------------

P = POINTER(ctypes.c_double)


def _apply_all(lib, handle, F, u):
    n = len(F)
    out, status = np.zeros_like(F), np.zeros(n, np.uint32)
    growth, spread = np.zeros(n), np.zeros(n)
    assert lib.dodo_apply_diagnostics(handle, n, F.ctypes.data_as(P), None, u.ctypes.data_as(P), None,
                                      out.ctypes.data_as(P), None, status.ctypes.data_as(POINTER(ctypes.c_uint32)),
                                      growth.ctypes.data_as(P), spread.ctypes.data_as(P)) == 0
    return [out, status, growth, spread]


@pytest.mark.parametrize("model", ["box3d", "default"])
def test_results_do_not_depend_on_chunk_size_threads_or_a_cells_place_in_the_batch(lib, model):
    """A transport code's decomposition decides how many cells each call gets and where a cell
    sits in it: chunk_size 1, 7, 64 (threads 2), 1024 and 2^20, one cell alone and a batch shifted
    by 13 cells give the same bits for every output (F_pred, status, growth rate, uncertainty) on
    moving cells. Probed also with the graph in ONNX Runtime (DODO_NETWORK_EVALUATOR): the same."""
    path = b"box3d" if model == "box3d" else _default_model(lib)
    n = 600
    F = cells_at_rest(n, 27)
    rng = np.random.default_rng(27)
    v = rng.uniform(-0.5, 0.5, (n, 3))
    W = 1 / np.sqrt(1 - (v ** 2).sum(1))
    u = np.concatenate([W[:, None], W[:, None] * v], 1)
    u[::3] = [1, 0, 0, 0]
    F[5] = F[6]
    F[5, :, 1:] = 0  # isotropic: no crossing, returned bit for bit
    handles = []
    try:
        status, message, reference = _create(lib, path)
        assert status == 0, message
        handles.append(reference)
        expected = _apply_all(lib, reference, F, u)
        assert expected[1][5] & 1 and np.array_equal(expected[0][5], F[5])
        for threads, chunk in [(0, 1), (0, 7), (2, 64), (0, 1024), (0, 1 << 20)]:
            status, message, handle = _create(lib, path, threads=threads, chunk_size=chunk)
            assert status == 0, message
            handles.append(handle)
            got = _apply_all(lib, handle, F, u)
            for a, b in zip(expected, got):
                assert a.tobytes() == b.tobytes(), (threads, chunk)
            shifted = _apply_all(lib, handle, F[13:].copy(), u[13:].copy())
            for a, b in zip(expected, shifted):
                assert a[13:].tobytes() == b.tobytes(), (threads, chunk, "shifted")
            for k in (0, 299, n - 1):
                alone = _apply_all(lib, handle, F[k:k + 1].copy(), u[k:k + 1].copy())
                for a, b in zip(expected, alone):
                    assert a[k:k + 1].tobytes() == b.tobytes(), (threads, chunk, k)
    finally:
        for handle in handles:
            lib.dodo_closure_destroy(handle)


def test_failing_creates_leave_no_descriptor_thread_or_memory(lib):
    """A host retrying a create that fails (damaged package, metadata refused after ONNX Runtime's
    session was made, a setting the package refuses, a missing file), threads 0 and 2: after 10
    warm-up tries, 60 more leave open descriptors and threads as they were and resident memory
    within 16 MiB (probed over 150: flat within 1 MiB)."""
    model = _default_model(lib)
    raw = Path(model.decode()).read_bytes()
    flipped = raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:]
    edited = _resigned(model, "dodo.box3d", lambda text: text.replace('"max_flux_factor": 0.98', '"max_flux_factor": 1.5'))
    assert b'"max_flux_factor": 1.5' in edited

    def counts():
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), rss

    tries = [
        lambda threads: _create_from_memory(lib, flipped, threads=threads),
        lambda threads: _create_from_memory(lib, edited, threads=threads),
        lambda threads: _create_from_memory(lib, raw, threads=threads, lebedev_order=41),
        lambda threads: _create(lib, b"/no/such/dir/model.onnx", threads=threads)[:2],
    ]
    for attempt in tries:
        for threads in (0, 2):
            for _ in range(10):
                status, message = attempt(threads)
            assert status in (2, 3, 4), message
            before = counts()
            for _ in range(60):
                attempt(threads)
            after = counts()
            assert after[:2] == before[:2], (message, before, after)
            assert after[2] - before[2] < 16 << 20, (message, before, after)
