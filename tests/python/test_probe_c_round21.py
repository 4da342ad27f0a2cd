"""Outside probe of the C interface, round twenty-one (docs/reliability_cpp.md, "Round
twenty-one"). Each test failed on the code as it was before its fix, then passed (against a build
of the fixed library: LD_LIBRARY_PATH, until the installed one is rebuilt). Hosts through
capi_host.py."""
from __future__ import annotations

from pathlib import Path

import pytest

import dodo
from capi_host import compile_host, default_model, needs_runtime, run_host

# Loads a package, says the status and message; when it loads, the bytes of one metadata value as
# dodo_get_metadata returns them, in hex.
LOAD_AND_READ_METADATA = r"""
#include <stdio.h>
#include "dodo/dodo.h"

int main(int argc, char** argv) {
  if (argc != 3) return 1;
  dodo_closure* closure = NULL;
  char err[1024];
  dodo_status s = dodo_closure_create(argv[1], NULL, &closure, err, sizeof err);
  printf("create %d\n", (int)s);
  if (s != DODO_OK) {
    printf("message %s\n", err);
    return 0;
  }
  char value[256];
  long length = dodo_get_metadata(closure, argv[2], value, sizeof value);
  printf("length %ld\nvalue", length);
  for (long i = 0; i < length && i < (long)sizeof value - 1; ++i) printf(" %02x", (unsigned char)value[i]);
  printf("\n");
  dodo_closure_destroy(closure);
  return 0;
}
"""


def _edited(tmp_path: Path, old: bytes, new: bytes, name: str) -> Path:
    """The default model with `old` (found once) replaced by `new` of the same length, re-signed."""
    content = Path(default_model()).read_bytes()
    assert content.count(old) == 1 and len(old) == len(new)
    path = tmp_path / name
    path.write_bytes(dodo._core.with_content_digest(content.replace(old, new)))
    return path


@needs_runtime
def test_a_package_whose_metadata_is_not_utf8_is_refused_by_the_c_loader(tmp_path):
    """The default model re-signed with two bytes of its `dodo.export_time` value replaced by 0xff
    0xfe (not UTF-8, which ONNX's strings must be), and one with a byte of an optional key
    (`dodo.metrics`) replaced by 0xff: the C loader loaded both (status 0), and
    dodo_get_metadata handed the 0xff 0xfe to every C, Fortran and Julia caller as they were (only
    Python refused the package, after the load, round thirty-one). Now each is refused as it is
    made, DODO_ERROR_MODEL_METADATA (4), naming the entry (the key's bytes escaped)."""
    stamp = dodo.Closure().metadata["dodo.export_time"].encode()
    value_edit = _edited(tmp_path, stamp, stamp[:18] + b"\xff\xfe" + stamp[20:], "value.onnx")
    key_edit = _edited(tmp_path, b"dodo.metrics", b"dodo.metr\xffcs", "key.onnx")
    host = compile_host(tmp_path, "load_and_read", LOAD_AND_READ_METADATA)
    lines = run_host(host, str(value_edit), "dodo.export_time")
    assert lines[0] == "create 4", lines
    assert lines[1] == (f'message model file "{value_edit}": model metadata entry "dodo.export_time" is not UTF-8 text (byte 18 '
                        f"of its value of {len(stamp)} bytes; ONNX's strings are UTF-8): a damaged or edited "
                        "package; export it again with `dodo export`"), lines
    lines = run_host(host, str(key_edit), "dodo.export_time")
    assert lines[0] == "create 4", lines
    assert 'model metadata key "dodo.metr\\xffcs" is not UTF-8 text (byte 9 of the key;' in lines[1], lines
    # The clean model, re-signed the same way, loads and reads its value whole.
    clean = _edited(tmp_path, stamp, stamp, "clean.onnx")
    lines = run_host(host, str(clean), "dodo.export_time")
    assert lines[:2] == ["create 0", f"length {len(stamp)}"], lines
    assert bytes.fromhex(lines[2].removeprefix("value").replace(" ", "")) == stamp
    # Python's own check (round thirty-one, a ValueError) stays; the runtime's refusal now comes
    # first, a RuntimeError as for every other DODO_ERROR_MODEL_METADATA.
    with pytest.raises(RuntimeError, match='DODO_ERROR_MODEL_METADATA.*"dodo.export_time" is not UTF-8'):
        dodo.Closure(str(value_edit), threads=1)


# One cell applied in place through two descriptions of the same memory that differ only in the
# cell stride, which one cell never reads (a view of cell 5 of a block keeps the block's stride of
# 24; the same cell described alone has 0, or any other).
ONE_CELL_IN_PLACE = r"""
#include <stdio.h>
#include <string.h>
#include "dodo/dodo.h"

int main(void) {
  dodo_closure* closure = NULL;
  char err[512];
  if (dodo_closure_create(DODO_BOX3D_ONLY, NULL, &closure, err, sizeof err)) return 2;
  double F[8][6][4], expected[6][4];
  memset(F, 0, sizeof F);
  for (int c = 0; c < 8; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1 + 0.1 * a + 0.01 * c;
      F[c][a][3] = a == 3 ? -0.4 : 0.3;
    }
  double copy[8][6][4];
  memcpy(copy, F, sizeof F);
  dodo_status s = dodo_apply(closure, 1, &copy[5][0][0], NULL, NULL, NULL, &expected[0][0], NULL, NULL);
  printf("separate %d\n", (int)s);
  const ptrdiff_t block[3] = {24, 4, 1}, alone[3] = {0, 4, 1}, far[3] = {1000000, 4, 1};
  const ptrdiff_t* descriptions[3] = {block, alone, far};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      memcpy(F, copy, sizeof F);
      s = dodo_apply(closure, 1, &F[5][0][0], descriptions[i], NULL, NULL, &F[5][0][0], descriptions[j], NULL);
      if (s != DODO_OK) {
        dodo_last_error(closure, err, sizeof err);
        printf("in place %d %d: status %d %s\n", i, j, (int)s, err);
      } else {
        printf("in place %d %d: %s\n", i, j, memcmp(F[5], expected, sizeof expected) == 0 ? "same" : "differs");
      }
    }
  dodo_closure_destroy(closure);
  return 0;
}
"""


@needs_runtime
def test_one_cell_in_place_is_in_place_whatever_cell_stride_describes_it(tmp_path):
    """dodo_apply on one cell, F_pred the same pointer as F_init, species and component strides the
    same, cell strides different (24 against 0 or 1,000,000; one cell reads no cell stride, as
    round seventeen found for a single array): refused, DODO_ERROR_INVALID_ARGUMENT "F_pred
    overlaps F_init: pass the same pointer and strides for in-place use", though the two describe
    the same 24 doubles. Now in place, bit for bit the result into a separate array."""
    lines = run_host(compile_host(tmp_path, "one_cell", ONE_CELL_IN_PLACE))
    assert lines[0] == "separate 0", lines
    assert lines[1:] == [f"in place {i} {j}: same" for i in range(3) for j in range(3)], lines
