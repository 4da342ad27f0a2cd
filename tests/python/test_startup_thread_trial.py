"""dodo's start-up tells OpenBLAS's own SIGINT (it cannot start its threads under `ulimit -v`) from a
Ctrl-C by trying to start a thread (dodo._startup._threads_can_start). OpenBLAS may free what it took
before raising the signal, so a trial thread of Python's 8 MiB stack still started a few tens of MB
below the limit and the command said "dodo: interrupted" (exit 130) of a memory failure: seen at
`ulimit -v 132500` in test_probe_round54 on a build whose memory layout differed. The trial now asks
for a 64 MiB stack."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import resource, sys
    from dodo import _startup
    headroom = int(sys.argv[1]) << 20
    if headroom:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, mapped + headroom))
    print(_startup._threads_can_start())
""")


def trial(headroom_mib: int) -> str:
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(headroom_mib)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_no_room_for_a_librarys_thread_is_memory_short():
    """32 MiB under the limit: Python's default 8 MiB thread starts (before: True, 'interrupted'), a
    library's thread with its buffers would not."""
    assert trial(32) == "False"


@pytest.mark.parametrize("headroom_mib", [0, 512])
def test_without_a_near_limit_a_ctrl_c_stays_a_ctrl_c(headroom_mib):
    assert trial(headroom_mib) == "True"
