"""The cap on ONNX Runtime's memory for Dodo's sessions (cpp/src/runtime/ort_library.cpp,
docs/model_package.md): the allowed operators broadcast, so a package re-signed on purpose can make
a [K, K] tensor from a [K, 1] and a [1, K] initializer (C round 33: 116 KB of package took 557 MB,
212 KB asked for 1.6 GB). ONNX Runtime folded that constant at load with memory outside any arena;
now constant folding is off in Dodo's sessions and their arena is capped (half the usable memory,
or DODO_ONNXRUNTIME_MEMORY_LIMIT bytes), so the load is refused with a clear MemoryError instead of
meeting the out-of-memory killer. The cap is read once per process, so every case runs in a child;
the child's address-space limit and the timeouts are guards only."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from capi_host import CAP_ADDRESS_SPACE

from dodo._closure import model_file, runtime_available

if not runtime_available():
    pytest.skip("dodo was built without the closure runtime", allow_module_level=True)
onnx = pytest.importorskip("onnx")
numpy_helper = pytest.importorskip("onnx.numpy_helper")

sys.path.insert(0, os.path.dirname(__file__))
from test_probe_c_round33 import _head_through, _package  # noqa: E402  (the signed-package builder)

VARIABLE = "DODO_ONNXRUNTIME_MEMORY_LIMIT"

LOAD = """
import resource, sys
limit = 4 << 30  # a memory guard only
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import dodo
try:
    dodo.Closure(sys.argv[1], threads=1, evaluator=sys.argv[2])
    print("loaded")
except Exception as error:
    print(type(error).__name__, error)
"""


def _run(code: str, *arguments: str, limit: str | None) -> str:
    environment = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if limit is not None:
        environment[VARIABLE] = limit
    try:  # a hang guard only
        result = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True,
                                timeout=300, env=environment)
    except subprocess.TimeoutExpired:
        pytest.fail("the child did not return within 300 s")
    return result.stdout + result.stderr


def _broadcasting_package(K: int) -> bytes:
    """The default model whose head_output adds the sum of a [K, 1] + [1, K] broadcast (0 + 0)."""
    helper = onnx.helper
    nodes = [helper.make_node("Add", ["bomb_a", "bomb_b"], ["bomb_ab"]),
             helper.make_node("ReduceSum", ["bomb_ab"], ["bomb_sum"], keepdims=0),
             helper.make_node("Add", ["head_raw", "bomb_sum"], ["head_output"])]
    initializers = (numpy_helper.from_array(np.zeros((K, 1), np.float32), "bomb_a"),
                    numpy_helper.from_array(np.zeros((1, K), np.float32), "bomb_b"))
    return _package(onnx.load(str(model_file(None))), edit=_head_through(*nodes, initializers=initializers))


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_a_package_that_broadcasts_past_the_cap_is_refused_at_load(tmp_path, evaluator):
    path = tmp_path / "broadcast.onnx"
    path.write_bytes(_broadcasting_package(20_000))  # 212 KB asking for 1.6 GB
    output = _run(LOAD, str(path), evaluator, limit=str(256 << 20))
    assert output.startswith("MemoryError DODO_ERROR_OUT_OF_MEMORY"), output
    assert "probe batch" in output and "1600000000" in output and VARIABLE in output, output


def test_the_default_cap_is_half_the_memory(tmp_path):
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    physical = pages * page
    K = math.ceil(math.sqrt(0.75 * physical / 4))  # asks for 3/4 of the memory: past the default cap
    if 8 * K > 64 << 20:
        pytest.skip("a machine this large needs a package of more than 64 MB for this case")
    path = tmp_path / "broadcast.onnx"
    path.write_bytes(_broadcasting_package(K))
    output = _run(LOAD, str(path), "auto", limit=None)
    assert output.startswith("MemoryError DODO_ERROR_OUT_OF_MEMORY"), output
    assert VARIABLE in output, output


APPLY = """
import sys
import numpy as np
import dodo
sys.path.insert(0, sys.argv[1])
from test_native_network import moving_cells
F, u = moving_cells(3000, seed=5)
result = dodo.Closure(threads=1, evaluator="onnxruntime").apply(F, u)
np.save(sys.argv[2], np.concatenate([np.ravel(result.F_pred), np.ravel(result.growth_rate),
                                     np.ravel(result.uncertainty)]))
print("done")
"""


def test_the_default_model_fits_a_small_cap_with_the_same_bits(tmp_path):
    here = os.path.dirname(__file__)
    outputs = []
    for name, limit in (("capped", str(64 << 20)), ("default", None)):
        target = tmp_path / f"{name}.npy"
        output = _run(APPLY, here, str(target), limit=limit)
        assert output.strip().endswith("done"), output
        outputs.append(np.load(target))
    assert np.array_equal(outputs[0], outputs[1])
    assert np.all(np.isfinite(outputs[0]))


@pytest.mark.parametrize("value", ["12x", "0", "1048575", "-5", " 300000000", "1e9", "\u0663\u0660\u0660\u0660\u0660\u0660\u0660\u0660"])
def test_an_unusable_cap_is_refused_naming_the_variable(value):
    output = _run(LOAD, str(model_file(None)), "auto", limit=value)
    assert output.startswith("ValueError DODO_ERROR_INVALID_ARGUMENT"), output
    assert VARIABLE in output and "at least 1048576" in output, output


def test_an_empty_variable_keeps_the_default():
    assert _run(LOAD, str(model_file(None)), "auto", limit="").strip() == "loaded"



# A first closure loads ONNX Runtime with no limit (its own start-up under a limit can crash inside
# the library, in a static initialiser that meets std::bad_alloc: not Dodo's to catch); then the
# address space is limited to what the process maps now plus argv[2] bytes, and a second closure is
# made and applied: its session, the load's probes, Dodo's workspaces and the runs meet the limit.
OUT_OF_MEMORY_HOST = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/resource.h>
#include "dodo/dodo.h"
""" + CAP_ADDRESS_SPACE + r"""
static double F[1000 * 24], G[1000 * 24];
/* A segmentation fault: exit 7 when the faulting instruction is ONNX Runtime's, else 9. */
static void on_fault(int signal_number, siginfo_t* info, void* context) {
  (void)signal_number; (void)info;
  void* pc = NULL;
#if defined(__x86_64__)
  pc = (void*)((ucontext_t*)context)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
  pc = (void*)((ucontext_t*)context)->uc_mcontext.pc;
#endif
  Dl_info where;
  _exit(pc && dladdr(pc, &where) && where.dli_fname && strstr(where.dli_fname, "onnxruntime") ? 7 : 9);
}
int main(int argc, char** argv) {
  if (argc != 3) return 2;
  static char alternate[1 << 16];
  stack_t stack = {.ss_sp = alternate, .ss_size = sizeof alternate, .ss_flags = 0};
  sigaltstack(&stack, NULL);
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &action, NULL);
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 1;
  for (int c = 0; c < 1000; ++c)
    for (int s = 0; s < 6; ++s) {
      F[24 * c + 4 * s] = 1.0;
      F[24 * c + 4 * s + 3] = s == 3 ? -0.4 : 0.3;
    }
  char message[4096] = "";
  dodo_closure *first = NULL, *closure = NULL;
  if (dodo_closure_create(argv[1], &options, &first, message, sizeof message) != DODO_OK) {
    printf("first %s\n", message);
    return 4;
  }
  rlim_t bytes = 0;
  const int capped = cap_address_space(atol(argv[2]), 1, &bytes);
  if (capped != 0) return capped;
  dodo_status status = dodo_closure_create(argv[1], &options, &closure, message, sizeof message);
  if (status == DODO_OK) {
    status = dodo_apply(closure, 1000, F, NULL, NULL, NULL, G, NULL, NULL);
    if (status != DODO_OK) dodo_last_error(closure, message, sizeof message);
    dodo_closure_destroy(closure);
  }
  printf("%d %s\n", (int)status, message);
  dodo_closure_destroy(first);
  return 0;
}
"""


def test_onnxruntime_running_out_of_the_process_memory_is_out_of_memory(tmp_path):
    """ONNX Runtime's own failed allocations (std::bad_alloc, "Failed to allocate memory for requested
    buffer") under an address-space limit came back as DODO_ERROR_ONNXRUNTIME, or as
    DODO_ERROR_MODEL_FORMAT from the load (the package blamed), though the process was out of memory
    (outside probe, C round 38: a rank under `ulimit -v 90000`). A second closure made and applied
    under limits 1 MiB apart, from no room at all to enough, crosses every place memory runs out:
    each gives OUT_OF_MEMORY or success, never another status. ONNX Runtime 1.32 itself now and then
    dies of a segmentation fault inside CreateSessionFromArray within a few hundred KiB of the memory
    a session needs (docs/runtime.md): such a run (the faulting instruction in libonnxruntime, exit 7)
    is let pass; a fault anywhere else fails."""
    from capi_host import compile_host

    program = compile_host(tmp_path, "out_of_memory", OUT_OF_MEMORY_HOST)
    environment = {**os.environ, "DODO_NETWORK_EVALUATOR": "onnxruntime"}
    environment.pop(VARIABLE, None)
    seen = {}
    for kibibytes in range(0, 256 << 10, 32):
        result = subprocess.run([str(program), model_file(None), str(kibibytes << 10)], capture_output=True,
                                text=True, timeout=120, env=environment)
        if result.returncode == 7:  # ONNX Runtime's own fault
            continue
        assert result.returncode == 0, (kibibytes, result.returncode, result.stdout, result.stderr[-2000:])
        status, _, message = result.stdout.strip().partition(" ")
        seen[kibibytes] = (int(status), message[:200])
        assert int(status) in (0, 8), (kibibytes, status, message)  # DODO_OK, DODO_ERROR_OUT_OF_MEMORY
        if int(status) == 0:
            break
    assert seen and min(seen.values())[0] == 0 and max(seen.values())[0] == 8, seen
    assert any("ONNX Runtime" in message or "node" in message for _, message in seen.values()), seen
