"""An allocation that fails inside Box3D's kernels is an error the host gets back, never an abort.

GCC 12 cannot unwind an exception out of a multiversioned function (target_clones or hand-written
target versions, DODO_MULTIVERSION): it ends in std::terminate whatever catch its callers have. Box3D
sized its per-thread scratch inside `angular_change` (a clone) at a thread's first crossing cell, so a
failed allocation there aborted the host (SIGABRT; outside probe, C round forty-five, under an
address-space limit). The host below fails exactly that allocation (the six species' distributions
at order 17: 6 x 110 doubles) by replacing operator new, in a thread of its own, deterministically.
It also reports which of Box3D's code paths ran (dodo._core.box3d_instruction_set)."""
from __future__ import annotations

import pytest

from capi_host import CROSSING_CELLS, compile_host, needs_runtime, run_host

HOST = r"""
#include <dodo/dodo.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <thread>

// Fails the one allocation of `refused` bytes made on a thread that asked for it.
static thread_local bool refuse_here = false;
static std::atomic<std::size_t> refused{0};
static std::atomic<int> refusals{0};

void* operator new(std::size_t size) {
  if (refuse_here && size == refused.load()) {
    refusals.fetch_add(1);
    throw std::bad_alloc();
  }
  if (void* memory = std::malloc(size ? size : 1)) return memory;
  throw std::bad_alloc();
}
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t) noexcept { std::free(memory); }

extern "C" {
""" + CROSSING_CELLS + r"""
}

int main() {
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 1;
  dodo_closure* closure = nullptr;
  char error[512] = "";
  if (dodo_closure_create(DODO_BOX3D_ONLY, &options, &closure, error, sizeof error) != DODO_OK) return 2;
  static double F[4][6][4] = {}, out[4][6][4];
  fill_crossing_cells(F, 4, 0.01);
  refused = 6 * 112 * sizeof(double);  // the species' distributions: 110 points, padded to whole vectors
  dodo_status failed = DODO_OK, again = DODO_OK;
  std::thread first([&] {  // a thread of the host's own: its first crossing cell sizes the scratch
    refuse_here = true;
    failed = dodo_apply(closure, 4, &F[0][0][0], nullptr, nullptr, nullptr, &out[0][0][0], nullptr, nullptr);
    refuse_here = false;
    again = dodo_apply(closure, 4, &F[0][0][0], nullptr, nullptr, nullptr, &out[0][0][0], nullptr, nullptr);
  });
  first.join();
  char message[512] = "";
  dodo_last_error(closure, message, sizeof message);
  std::printf("refusals %d\nfailed %s\nagain %s\n", refusals.load(), dodo_status_name(failed), dodo_status_name(again));
  dodo_closure_destroy(closure);
  return 0;
}
"""


@needs_runtime
def test_a_failed_allocation_in_box3d_kernels_is_an_error_not_an_abort(tmp_path):
    program = compile_host(tmp_path, "kernel_allocation", HOST, language="c++")
    lines = run_host(program, timeout=120)  # before: SIGABRT, "terminate called after throwing ... bad_alloc"
    assert lines[0] == "refusals 1", lines
    assert lines[1] == "failed DODO_ERROR_OUT_OF_MEMORY", lines
    assert lines[2] == "again DODO_OK", lines  # the thread's next call sizes its scratch and runs


def test_box3d_names_the_code_path_it_runs(capsys):
    """dodo._core.box3d_instruction_set() and `dodo info`'s line (where machines' last bits differ, the
    path is the first thing to compare)."""
    from cli_helpers import run

    from dodo import _core

    path = _core.box3d_instruction_set()
    assert path in ("x86-64-v4", "x86-64-v3", "baseline")
    with open("/proc/cpuinfo") as cpuinfo:
        flags = set(next(line for line in cpuinfo if line.startswith("flags")).split())
    if path == "x86-64-v4":  # the clone GCC's dispatch picked needs these
        assert {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags
    code, out, err = run(capsys, ["info"])
    assert code == 0, err
    assert f"Box3D code path: {path} (" in out, out
