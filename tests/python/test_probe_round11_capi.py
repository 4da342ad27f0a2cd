"""Outside probe of the C API, round eleven (docs/reliability_cpp.md, "Round eleven"). Each test
failed on the library built just before its fix."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import dodo

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


def _compile(tmp_path: Path, name: str, source: str) -> Path:
    from test_native_programs import ROOT, pkg_config, run

    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    path = tmp_path / (name + ".c")
    path.write_text(source)
    program = tmp_path / name
    run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'cpp/include'}", str(path),
         *pkg_config("--cflags", "--libs"), "-lm", "-o", str(program)])
    return program


# A host's array of structs: one struct per cell holding the input, the output and the
# four-velocity (strides in elements of sizeof(struct cell) / 8). Applied out of place (F -> G),
# in place (F -> F), and compared bit for bit with the same cells in separate contiguous arrays.
# Then two layouts that do share memory are still refused, the outputs untouched.
ARRAY_OF_STRUCTS = r"""
#include <dodo/dodo.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#define N 40
struct cell { double F[6][4]; double G[6][4]; double u[4]; };
static struct cell cells[N];
static double F[N][6][4], G[N][6][4], u[N][4];
int main(int argc, char** argv) {
  (void)argc;
  for (int c = 0; c < N; ++c) {
    double phase = 0.37 * c;
    for (int a = 0; a < 6; ++a) {
      double n = (0.3 + 0.1 * a + 0.2 * sin(phase + a)) * 1e32, f = 0.1 + 0.3 * fabs(sin(1.3 * phase + 0.7 * a));
      F[c][a][0] = n;
      F[c][a][1] = (a == 3 ? -1 : 1) * f * n * cos(phase + a);
      F[c][a][3] = (a == 3 ? -1 : 1) * f * n * sin(phase + a);
    }
    double v = 0.2 * cos(0.1 * c), W = 1.0 / sqrt(1.0 - v * v);
    u[c][0] = W; u[c][1] = W * v;
    memcpy(cells[c].F, F[c], sizeof F[c]);
    memcpy(cells[c].u, u[c], sizeof u[c]);
  }
  dodo_closure* h = NULL;
  char e[512];
  if (dodo_closure_create(argv[1], NULL, &h, e, sizeof e) != DODO_OK) { printf("create: %s\n", e); return 2; }
  if (dodo_apply(h, N, &F[0][0][0], NULL, &u[0][0], NULL, &G[0][0][0], NULL, NULL) != DODO_OK) return 3;
  const ptrdiff_t s = (ptrdiff_t)(sizeof(struct cell) / sizeof(double));
  const ptrdiff_t fs[3] = {s, 4, 1}, us[2] = {s, 1};
  dodo_status out = dodo_apply(h, N, &cells[0].F[0][0], fs, cells[0].u, us, &cells[0].G[0][0], fs, NULL);
  dodo_last_error(NULL, e, sizeof e);
  int same_out = out == DODO_OK;
  for (int c = 0; c < N && same_out; ++c) same_out = !memcmp(cells[c].G, G[c], sizeof G[c]);
  printf("out of place: %s %d %s\n", dodo_status_name(out), same_out, e);
  dodo_status in = dodo_apply(h, N, &cells[0].F[0][0], fs, cells[0].u, us, &cells[0].F[0][0], fs, NULL);
  dodo_last_error(NULL, e, sizeof e);
  int same_in = in == DODO_OK;
  for (int c = 0; c < N && same_in; ++c) same_in = !memcmp(cells[c].F, G[c], sizeof G[c]);
  printf("in place: %s %d %s\n", dodo_status_name(in), same_in, e);
  /* F_pred one double later than G: its last value of cell c is u[0] of cell c (shared). */
  memcpy(&cells[0], &cells[1], sizeof cells[0]);
  struct cell before[N];
  memcpy(before, cells, sizeof cells);
  dodo_status shared_u = dodo_apply(h, N, &cells[0].F[0][0], fs, cells[0].u, us, &cells[0].G[0][1], fs, NULL);
  /* F_pred = F of the next cell: shares every value but the first cell's with F_init. */
  dodo_status shared_f = dodo_apply(h, N - 1, &cells[0].F[0][0], fs, NULL, NULL, &cells[1].F[0][0], fs, NULL);
  printf("shared: %s %s untouched %d\n", dodo_status_name(shared_u), dodo_status_name(shared_f),
         !memcmp(before, cells, sizeof cells));
  dodo_closure_destroy(h);
  return 0;
}
"""


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_an_array_of_structs_holding_input_output_and_velocity_is_accepted(tmp_path, model):
    """dodo_apply refused every array of structs (one struct per cell with F_init, F_pred and u):
    "F_pred overlaps F_init" out of place and "F_pred overlaps u" in place, although no value is
    shared: the overlap test compared the arrays' address ranges, which interleave. It now asks
    whether an element is shared (exactly for arrays with the same cell stride); the results equal
    those of separate contiguous arrays bit for bit, and layouts that do share memory are refused."""
    path = "box3d"
    if model == "default":
        from dodo._closure import runtime_paths

        path = runtime_paths()["default_model"]
        if not path or not Path(path).is_file():
            pytest.skip("no default model")
    program = _compile(tmp_path, "array_of_structs", ARRAY_OF_STRUCTS)
    result = subprocess.run([str(program), path], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("out of place: DODO_OK 1"), lines
    assert lines[1].startswith("in place: DODO_OK 1"), lines
    assert lines[2] == "shared: DODO_ERROR_INVALID_ARGUMENT DODO_ERROR_INVALID_ARGUMENT untouched 1", lines
