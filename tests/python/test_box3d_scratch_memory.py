"""Box3D's per-thread scratch under an address-space limit (outside probe of the C side, round
forty-three): a worker thread's first crossing cell made its scratch, a thread_local object with a
destructor, whose registration glibc aborts on when it cannot allocate ("Fatal glibc error: failed
to register TLS destructor: out of memory", SIGABRT). Now the call ends with a status: the cells'
results, or DODO_ERROR_OUT_OF_MEMORY with a message."""
from __future__ import annotations

import pytest

from capi_host import CAP_ADDRESS_SPACE, CROSSING_CELLS, compile_host, run_host
from native_build import REQUIRES_C_API

pytestmark = REQUIRES_C_API

# Makes a Box3D-only closure with argv[1] worker threads, caps its address space at what it has
# mapped plus argv[2] bytes, then applies it to 2,000 crossing cells at rest (capi_host's):
# "STATUS_NAME crossing=N|message".
CAPPED_APPLY = r"""
#include <dodo/dodo.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
""" + CAP_ADDRESS_SPACE + CROSSING_CELLS + r"""
enum { kCells = 2000 };
static double F[kCells][6][4], F_pred[kCells][6][4];
static uint32_t status[kCells];

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  fill_crossing_cells(F, kCells, 1e-4);
  dodo_options options;
  dodo_options_init(&options);
  options.threads = atoi(argv[1]);
  dodo_closure* closure = NULL;
  char message[4096] = "";
  if (dodo_closure_create(DODO_BOX3D_ONLY, &options, &closure, message, sizeof message) != DODO_OK) {
    printf("create failed|%s\n", message);
    return 4;
  }
  rlim_t bytes = 0;
  const int capped = cap_address_space(atol(argv[2]), 1, &bytes);
  if (capped != 0) return capped;
  const dodo_status result = dodo_apply(closure, kCells, &F[0][0][0], NULL, NULL, NULL, &F_pred[0][0][0], NULL, status);
  int crossing = 0;
  for (int c = 0; c < kCells; ++c) crossing += result == DODO_OK && status[c] == 0;
  if (result != DODO_OK) dodo_last_error(closure, message, sizeof message);
  printf("%s crossing=%d|%s\n", dodo_status_name(result), crossing, result == DODO_OK ? "" : message);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("headroom", [0, 4096, 65536])
def test_worker_threads_first_cells_under_an_address_space_limit_end_with_a_status(tmp_path, threads, headroom):
    program = compile_host(tmp_path, "capped_apply", CAPPED_APPLY)
    (line,) = run_host(program, str(threads), str(headroom), timeout=120)
    head, _, message = line.partition("|")
    name, crossing = head.split()
    assert name in ("DODO_OK", "DODO_ERROR_OUT_OF_MEMORY"), line
    if name == "DODO_OK":
        assert crossing == "crossing=2000", line  # every cell computed, none flagged
    else:
        assert "memory" in message, line


def test_without_a_limit_every_worker_computes_its_cells(tmp_path):
    program = compile_host(tmp_path, "capped_apply", CAPPED_APPLY)
    (line,) = run_host(program, "4", str(1 << 40), timeout=120)
    assert line.startswith("DODO_OK crossing=2000|"), line
