"""A second Ctrl-C after the `dodo` command has unwound from the first ends it at once, quietly
(cli._second_interrupt_ends_at_once): no traceback from an exit handler that was running then
(data-loss probe, round four: torch's, in 2 of 9 double Ctrl-Cs of `dodo train`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")

# An exit handler that says it runs and then waits: where a library's slow exit handler would be.
SLOW_EXIT = """import atexit, os, time
def _slow():
    open(os.environ["MARK"], "w").close()
    time.sleep(60)
atexit.register(_slow)
"""

HANG_GUARD_S = 120


def wait_for(predicate, what: str, process) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        assert process.poll() is None, f"the command ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {HANG_GUARD_S} s"
        time.sleep(0.05)


def test_a_second_ctrl_c_during_an_exit_handler_ends_the_command_quietly(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_EXIT)
    mark = tmp_path / "exiting"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), MARK=str(mark))
    # A synthetic table large enough to be still writing when the first Ctrl-C comes.
    process = subprocess.Popen([sys.executable, "-m", "dodo", "synth", str(tmp_path / "out.h5"), "-n", "5000000",
                                "--threads", "1", "-q"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # The command is at work once its output's temporary exists.
        wait_for(lambda: any(p.name != "site" for p in tmp_path.iterdir() if p != mark), "temporary output", process)
        process.send_signal(signal.SIGINT)
        wait_for(mark.exists, "exit handler", process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=HANG_GUARD_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines() == ["dodo synth: interrupted"], err
    assert not (tmp_path / "out.h5").exists()
