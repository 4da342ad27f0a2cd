"""Outside probe of the C interface, round twenty-nine (docs/reliability_cpp.md, "Round
twenty-nine"): control characters in a value a host gave, quoted by its refusal (escaped since this
round); and, held without a change, what a transport code meets: every batch size from 0 to 33 and
around 1,024 cells against the Python path (dodo.Closure) bit for bit, in place too; densities
1e-100 ... 1e100, flux factors exactly 1 and W up to 1e4 with the diagnostics; valid ONNX packages
whose input width is wrong; bad DODO_NETWORK_EVALUATOR values; zero cell strides for inputs;
OpenMP threads sharing one handle (counters included) and creating and destroying their own."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dodo
from libdodo_ctypes import cells_at_rest, create_closure, default_model_or_skip, load_libdodo

POINTER = ctypes.POINTER
DOUBLES = POINTER(ctypes.c_double)
UINT32S = POINTER(ctypes.c_uint32)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lib():
    return load_libdodo()


_default_model = default_model_or_skip
_create = create_closure


def _moving_cells(n: int, seed: int):
    """n realizable cells (flux factors below 0.9), a third at rest, the others moving with v < 0.8."""
    rng = np.random.default_rng(seed)
    F = np.zeros((n, 6, 4))
    F[..., 0] = rng.uniform(0.1, 1.0, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[..., 1:] = direction * (rng.uniform(0, 0.9, (n, 6)) * F[..., 0])[..., None]
    v = rng.normal(size=(n, 3))
    v *= rng.uniform(0, 0.8, (n, 1)) / np.linalg.norm(v, axis=-1, keepdims=True)
    W = 1 / np.sqrt(1 - (v ** 2).sum(-1))
    u = np.concatenate([W[:, None], W[:, None] * v], axis=1)
    u[::3] = [1.0, 0.0, 0.0, 0.0]
    return F, u


# --- the defect: control characters of a host's value in a message --------------------------

@pytest.mark.parametrize("value, shown", [
    (b"exact\n", r'"exact\x0a"'),          # a z_method read from an input deck with fgets
    (b"exact\r\n", r'"exact\x0d\x0a"'),
    (b"jedynak\t", r'"jedynak\x09"'),
])
def test_a_z_method_holding_a_line_break_or_tab_is_quoted_escaped_on_one_line(lib, value, shown):
    status, message, handle = _create(lib, b"box3d", z_method=value)
    assert status == 1 and not handle.value, (status, message)
    assert message == f'unknown z_method {shown} (known: "exact", "jedynak")', message
    assert "\n" not in message and "\t" not in message


@pytest.mark.parametrize("value, shown", [("onnxruntime\n", r'"onnxruntime\x0a"'), ("onnxruntime\t", r'"onnxruntime\x09"'),
                                          ("native", '"native"'), ("ONNXRUNTIME", '"ONNXRUNTIME"'),
                                          (" onnxruntime", '" onnxruntime"')])
def test_a_bad_network_evaluator_variable_is_refused_naming_it_on_one_line(lib, monkeypatch, value, shown):
    """DODO_NETWORK_EVALUATOR is read by a create with a model (a Box3D-only handle has no network and
    does not read it); a value other than "auto" or "onnxruntime" is refused, never ignored."""
    model = _default_model(lib)
    monkeypatch.setenv("DODO_NETWORK_EVALUATOR", value)
    status, message, handle = _create(lib, model)
    assert status == 1 and not handle.value, (status, message)
    assert message == (f'unknown network evaluator {shown} (known: "auto", "onnxruntime"; option or '
                       f'DODO_NETWORK_EVALUATOR)'), message
    text = ctypes.create_string_buffer(4096)
    lib.dodo_last_error(None, text, len(text))
    assert text.value.decode() == message
    status, message, handle = _create(lib, b"box3d")
    assert status == 0, message
    lib.dodo_closure_destroy(handle)


# --- held without a change ---------------------------------------------------------------------

@pytest.mark.parametrize("box3d_only", [True, False], ids=["box3d", "default_model"])
def test_every_small_and_odd_batch_size_gives_the_python_closures_bits(lib, box3d_only):
    """0 ... 33 cells and 1023, 1024, 1025 (around the default chunk), chunk sizes 1024 (threads 0)
    and 7 (threads 2): F_pred and the statuses equal dodo.Closure.apply's bit for bit; in place
    (F_pred == F_init, as dodo.h allows) equal to the separate call; cell_status NULL allowed."""
    path = b"box3d" if box3d_only else _default_model(lib)
    for threads, chunk in [(0, 1024), (2, 7)]:
        python = dodo.Closure("box3d" if box3d_only else None, threads=max(threads, 1), chunk_size=chunk)
        status, message, handle = _create(lib, path, threads=threads, chunk_size=chunk)
        assert status == 0, message
        try:
            for n in [*range(34), 1023, 1024, 1025]:
                F, u = _moving_cells(n, seed=n)
                out, cell_status = np.full_like(F, np.nan), np.full(n, 7777, np.uint32)
                assert lib.dodo_apply(handle, n, F.ctypes.data_as(DOUBLES), None, u.ctypes.data_as(DOUBLES), None,
                                      out.ctypes.data_as(DOUBLES), None, cell_status.ctypes.data_as(UINT32S)) == 0
                expected = python.apply(F, u)
                assert np.array_equal(out, expected.F_pred), (threads, chunk, n)
                assert np.array_equal(cell_status, expected.status), (threads, chunk, n)
                in_place = F.copy()
                assert lib.dodo_apply(handle, n, in_place.ctypes.data_as(DOUBLES), None, u.ctypes.data_as(DOUBLES),
                                      None, in_place.ctypes.data_as(DOUBLES), None, None) == 0
                assert np.array_equal(in_place, out), (threads, chunk, n)
        finally:
            lib.dodo_closure_destroy(handle)


@pytest.mark.parametrize("box3d_only", [True, False], ids=["box3d", "default_model"])
def test_extreme_densities_unit_flux_factors_and_fast_cells_give_the_python_closures_bits(lib, box3d_only):
    """Densities scaled by 1e-100 ... 1e100, W 1 ... 1e4 (docs/runtime.md's boost range), half the
    cells with a species at flux factor exactly 1 along an axis: dodo_apply_diagnostics equals
    dodo.Closure.apply in F_pred, status, growth rate and uncertainty bit for bit; every output finite,
    the flux-factor-1 cells flagged FLUX_FACTOR and returned as given."""
    rng = np.random.default_rng(29)
    cells, velocities, unit = [], [], []
    for scale in (1e-100, 1e-30, 1.0, 1e30, 1e100):
        for W in (1.0, 1.5, 10.0, 1e3, 1e4):
            for at_one in (False, True):
                for k in range(3):
                    F = np.zeros((6, 4))
                    F[:, 0] = rng.uniform(0.1, 1.0, 6)
                    direction = rng.normal(size=(6, 3))
                    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
                    F[:, 1:] = direction * (rng.uniform(0, 0.9, 6) * F[:, 0])[:, None]
                    if at_one:
                        F[k, 1:] = 0.0
                        F[k, 1 + k] = F[k, 0]
                    v = rng.normal(size=3)
                    v /= np.linalg.norm(v)
                    cells.append(F * scale)
                    velocities.append(np.concatenate([[W], W * np.sqrt(1 - 1 / W ** 2) * v]))
                    unit.append(at_one)
    F, u, unit = np.array(cells), np.array(velocities), np.array(unit)
    n = len(F)
    path = b"box3d" if box3d_only else _default_model(lib)
    status, message, handle = _create(lib, path)
    assert status == 0, message
    try:
        out, cell_status = np.full_like(F, np.nan), np.zeros(n, np.uint32)
        growth, uncertainty = np.full(n, np.nan), np.full(n, np.nan)
        assert lib.dodo_apply_diagnostics(handle, n, F.ctypes.data_as(DOUBLES), None, u.ctypes.data_as(DOUBLES), None,
                                          out.ctypes.data_as(DOUBLES), None, cell_status.ctypes.data_as(UINT32S),
                                          growth.ctypes.data_as(DOUBLES), uncertainty.ctypes.data_as(DOUBLES)) == 0
    finally:
        lib.dodo_closure_destroy(handle)
    expected = dodo.Closure("box3d" if box3d_only else None).apply(F, u)
    assert np.array_equal(out, expected.F_pred)
    assert np.array_equal(cell_status, expected.status)
    assert np.array_equal(growth, expected.growth_rate)
    assert np.array_equal(uncertainty, expected.uncertainty)
    assert np.isfinite(out).all() and np.isfinite(growth).all() and np.isfinite(uncertainty).all()
    assert (cell_status[unit] & 2).all()  # FLUX_FACTOR
    assert np.array_equal(out[unit], F[unit])


def test_a_valid_onnx_package_with_the_wrong_input_width_is_refused_naming_the_width(lib, monkeypatch):
    """The default package re-signed with (a) the graph's input width 51 (its body unchanged), (b)
    "dodo.features" naming the 34-wide set, (c) the first layer, normalisation and input cut to 51
    consistently: each DODO_ERROR_MODEL_FORMAT at create, native evaluator and ONNX Runtime's alike."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    base = onnx.load(str(_default_model(lib).decode()))

    def variant(edit):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        edit(model)
        return dodo._core.with_content_digest(model.SerializeToString())

    def graph_51(model):
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 51

    def features_34(model):
        for entry in model.metadata_props:
            if entry.key == "dodo.features":
                entry.value = "invariants27+box7-v1"

    def cut_51(model):
        graph_51(model)
        for tensor in model.graph.initializer:
            values = numpy_helper.to_array(tensor)
            if tensor.name in ("ensemble.student.mean", "ensemble.student.std"):
                tensor.CopyFrom(numpy_helper.from_array(values[:51].copy(), tensor.name))
            elif tensor.name == "ensemble.student.body.0.weight":
                tensor.CopyFrom(numpy_helper.from_array(values[:, :51].copy(), tensor.name))

    if not any(t.name == "ensemble.student.body.0.weight" for t in base.graph.initializer):
        pytest.skip("the default package's first layer is named otherwise")
    expectations = [(graph_51, r"Incompatible dimensions"),
                    (features_34, r'"invariants" must have shape \[N, 34\].*the graph\'s is \[N, 52\]'),
                    (cut_51, r'"invariants" must have shape \[N, 52\].*the graph\'s is \[N, 51\]')]
    import re
    for evaluator in ("auto", "onnxruntime"):
        monkeypatch.setenv("DODO_NETWORK_EVALUATOR", evaluator)
        for edit, pattern in expectations:
            data = variant(edit)
            handle, message = ctypes.c_void_p(), ctypes.create_string_buffer(4096)
            status = lib.dodo_closure_create_from_memory(data, len(data), None, ctypes.byref(handle), message,
                                                         len(message))
            assert status == 3 and not handle.value, (evaluator, edit.__name__, status, message.value)
            assert re.search(pattern, message.value.decode()), (evaluator, edit.__name__, message.value)


def test_inputs_with_a_zero_cell_stride_are_broadcast_and_an_output_with_one_is_refused(lib):
    """One four-velocity for every cell (u strides {0, 1}) and one cell for every cell (F_init strides
    {0, 4, 1}), as a code with a uniform background may pass: the repeated arrays' bits. F_pred
    with a zero cell stride is refused, naming its strides, nothing written."""
    status, message, handle = _create(lib, _default_model(lib))
    assert status == 0, message
    try:
        n = 37
        F, u1 = cells_at_rest(n, seed=3), np.array([1.25, 0.75, 0.0, 0.0])
        U = np.tile(u1, (n, 1))
        reference, reference_status = np.zeros_like(F), np.zeros(n, np.uint32)
        assert lib.dodo_apply(handle, n, F.ctypes.data_as(DOUBLES), None, U.ctypes.data_as(DOUBLES), None,
                              reference.ctypes.data_as(DOUBLES), None, reference_status.ctypes.data_as(UINT32S)) == 0
        strides3, strides2 = ctypes.c_ssize_t * 3, ctypes.c_ssize_t * 2
        out, cell_status = np.zeros_like(F), np.zeros(n, np.uint32)
        assert lib.dodo_apply(handle, n, F.ctypes.data_as(DOUBLES), None, u1.ctypes.data_as(DOUBLES), strides2(0, 1),
                              out.ctypes.data_as(DOUBLES), None, cell_status.ctypes.data_as(UINT32S)) == 0
        assert np.array_equal(out, reference) and np.array_equal(cell_status, reference_status)
        one = F[0].copy()
        out[:] = 0
        assert lib.dodo_apply(handle, n, one.ctypes.data_as(DOUBLES), strides3(0, 4, 1), u1.ctypes.data_as(DOUBLES),
                              strides2(0, 1), out.ctypes.data_as(DOUBLES), None, None) == 0
        assert np.array_equal(out, np.broadcast_to(reference[0], F.shape))
        out[:] = -1
        assert lib.dodo_apply(handle, n, one.ctypes.data_as(DOUBLES), strides3(0, 4, 1), u1.ctypes.data_as(DOUBLES),
                              strides2(0, 1), out.ctypes.data_as(DOUBLES), strides3(0, 4, 1), None) == 1
        text = ctypes.create_string_buffer(1024)
        lib.dodo_last_error(handle, text, len(text))
        assert text.value.decode() == "F_pred strides {0, 4, 1} make two output values share memory (a zero or " \
                                      "overlapping stride)"
        assert (out == -1).all()
    finally:
        lib.dodo_closure_destroy(handle)


OPENMP_HOST = r"""
#include <dodo/dodo.h>
#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 257, CALLS = 12 };
static double F[N * 24], u[N * 4], ref[N * 24];
static uint32_t ref_status[N];

static int entries(const char* path) {
  DIR* dir = opendir(path);
  int n = 0;
  for (struct dirent* e; (e = readdir(dir)) != NULL;) n += e->d_name[0] != '.';
  closedir(dir);
  return n;
}

static void fill(void) {
  unsigned state = 12345u;
#define NEXT() ((state = state * 1103515245u + 12345u) / 4294967296.0)
  for (int c = 0; c < N; ++c) {
    for (int a = 0; a < 6; ++a) {
      double* f = F + 24 * c + 4 * a;
      double x = 2 * NEXT() - 1, y = 2 * NEXT() - 1, z = 2 * NEXT() - 1;
      double r = sqrt(x * x + y * y + z * z) + 1e-9;
      f[0] = 0.1 + NEXT();
      double s = 0.8 * NEXT() * f[0] / r;
      f[1] = x * s; f[2] = y * s; f[3] = z * s;
    }
    double vx = c % 3 ? 0.5 * NEXT() : 0, vy = c % 3 ? 0.2 : 0, vz = c % 3 ? -0.1 : 0;
    double W = 1 / sqrt(1 - vx * vx - vy * vy - vz * vz);
    u[4 * c] = W; u[4 * c + 1] = W * vx; u[4 * c + 2] = W * vy; u[4 * c + 3] = W * vz;
  }
}

int main(int argc, char** argv) {
  if (argc < 3) return 9;
  const char* model = argv[1];
  const int loops = atoi(argv[2]);
  fill();
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  options.chunk_size = 33;
  dodo_closure* shared = NULL;
  char message[4096];
  if (dodo_closure_create(model, &options, &shared, message, sizeof message)) { printf("create: %s\n", message); return 1; }
  if (dodo_apply(shared, N, F, NULL, u, NULL, ref, NULL, ref_status)) return 2;
  dodo_reset_counters(shared);
  const int descriptors = entries("/proc/self/fd");
  int wrong = 0, unclear = 0, refused = 0, team = 0;
  /* One handle, eight OpenMP threads; every fourth call refused (F_pred misaligned by 4 bytes). */
#pragma omp parallel num_threads(8) reduction(+ : wrong, unclear, refused)
  {
#pragma omp single
    team = omp_get_num_threads();
    double* out = malloc(sizeof(double) * (N * 24 + 1));
    uint32_t status[N];
    for (int k = 0; k < CALLS; ++k) {
      char text[512];
      if (k % 4 == 3) {
        refused += dodo_apply(shared, N, F, NULL, u, NULL, (double*)((char*)out + 4), NULL, status) ==
                   DODO_ERROR_INVALID_ARGUMENT;
        dodo_last_error(NULL, text, sizeof text);
        unclear += strstr(text, "F_pred") == NULL;
        continue;
      }
      memset(out, 0xff, sizeof(double) * N * 24);
      if (dodo_apply(shared, N, F, NULL, u, NULL, out, NULL, status)) { wrong++; continue; }
      unclear += dodo_last_error(NULL, text, sizeof text) != 0;
      wrong += memcmp(out, ref, sizeof ref) != 0 || memcmp(status, ref_status, sizeof status) != 0;
    }
    free(out);
  }
  dodo_counters counters;
  dodo_get_counters(shared, &counters);
  const unsigned long long expected = (unsigned long long)team * (CALLS - CALLS / 4) * N;
  printf("shared team %d wrong %d unclear %d refused %d cells %llu of %llu\n", team, wrong, unclear, refused,
         (unsigned long long)counters.cells, expected);
  dodo_closure_destroy(shared);
  /* Eight OpenMP threads creating, applying and destroying handles of their own, at once. */
  const int tasks = entries("/proc/self/task");
  int failed = 0;
#pragma omp parallel num_threads(8) reduction(+ : failed)
  {
    static _Thread_local double out[N * 24];
    uint32_t status[N];
    for (int k = 0; k < loops; ++k) {
      dodo_options own;
      dodo_options_init(&own);
      own.threads = k % 3;
      own.chunk_size = 1 + 50 * (k % 3);
      dodo_closure* handle = NULL;
      char text[1024];
      if (dodo_closure_create(model, &own, &handle, text, sizeof text)) { printf("create: %s\n", text); failed++; continue; }
      failed += dodo_apply(handle, N, F, NULL, u, NULL, out, NULL, status) != DODO_OK ||
                memcmp(out, ref, sizeof ref) != 0 || memcmp(status, ref_status, sizeof status) != 0;
      dodo_closure_destroy(handle);
    }
  }
  printf("own failed %d descriptors %d %d tasks %d %d\n", failed, descriptors, entries("/proc/self/fd"), tasks,
         entries("/proc/self/task"));
  return 0;
}
"""


@pytest.mark.parametrize("model", ["box3d", "default", "default_onnxruntime"])
def test_openmp_threads_sharing_one_handle_and_making_their_own_give_one_calls_bits(lib, tmp_path, model):
    """A C host under OpenMP: eight threads x 12 calls on one handle (2 workers, chunk 33, moving
    cells), every fourth call refused (misaligned F_pred) with the thread's own message naming
    F_pred: every other call gives the single call's bits and statuses, and the counters count
    exactly the accepted calls' cells. Then eight threads create, apply and destroy handles of their
    own at once (threads 0/1/2, chunk 1/51/101): the same bits, no descriptor or thread left behind."""
    from test_native_programs import pkg_config

    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    source = tmp_path / "omp_host.c"
    source.write_text(OPENMP_HOST)
    program = tmp_path / "omp_host"
    build = subprocess.run(["gcc", "-std=c11", "-fopenmp", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}",
                            str(source), *pkg_config("--cflags", "--libs"), "-lm", "-o", str(program)],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "omp.h" in build.stderr:
        pytest.skip("no OpenMP with this gcc")
    assert build.returncode == 0, build.stderr
    path = "box3d" if model == "box3d" else _default_model(lib).decode()
    env = dict(os.environ)
    env.pop("DODO_NETWORK_EVALUATOR", None)
    if model == "default_onnxruntime":
        env["DODO_NETWORK_EVALUATOR"] = "onnxruntime"
    try:
        result = subprocess.run([str(program), path, "6"], capture_output=True, text=True, timeout=300, env=env,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("the OpenMP host did not finish within 300 s (hang)")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    shared, own = result.stdout.splitlines()
    words = shared.split()
    team = int(words[2])
    assert words[3:9] == ["wrong", "0", "unclear", "0", "refused", str(team * 3)], shared
    assert words[10] == words[12] and int(words[10]) == team * 9 * 257, shared
    words = own.split()
    assert words[2] == "0", own
    assert words[4] == words[5] and words[7] == words[8], own
