"""Running as another user without being one: root with the capabilities that let it write any file
dropped (setpriv), and files made as another user's (uid 65534) in a sticky directory. Shared by the
data-loss probes' tests (rounds eleven and twelve)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SETPRIV = shutil.which("setpriv")
#: Root without the capabilities that let it replace another user's file in a sticky directory (and
#: write any file): what an ordinary user is there (an ordinary user cannot run these tests' set-up).
AS_A_USER = [SETPRIV, "--inh-caps=-dac_override,-dac_read_search,-fowner",
             "--bounding-set=-dac_override,-dac_read_search,-fowner"]
needs_setpriv = pytest.mark.skipif(SETPRIV is None or not hasattr(os, "geteuid") or os.geteuid() != 0,
                                   reason="needs root (to make another user's file) and setpriv (to drop CAP_FOWNER)")


def skip_without_setpriv(done: subprocess.CompletedProcess) -> None:
    """Skips where setpriv could not drop the capabilities (a container that forbids it)."""
    if "setpriv:" in done.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {done.stderr.strip()}")


def dodo_as_a_user(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`dodo ARGS` as AS_A_USER, its output captured; skips where setpriv cannot drop the capabilities."""
    done = subprocess.run([*AS_A_USER, sys.executable, "-m", "dodo", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    skip_without_setpriv(done)
    return done


def another_users_lock(directory: Path, name: str, text: str) -> Path:
    """DIRECTORY/NAME as another user's run leaves it (uid 65534, mode 644: umask 022), DIRECTORY mode 1777."""
    directory.mkdir(exist_ok=True)
    lock = directory / name
    lock.write_text(text)
    os.chown(lock, 65534, 65534)
    lock.chmod(0o644)
    directory.chmod(0o1777)
    return lock


#: A process that holds exclusive_directory(DIRECTORY) as `dodo train-ensemble` and prints its pid.
_HOLD = ("import os, sys\nfrom dodo._atomic import exclusive_directory\n"
         "with exclusive_directory({directory!r}, 'dodo train-ensemble'):\n"
         "    print(os.getpid(), flush=True)\n    sys.stdin.read()\n")


@contextlib.contextmanager
def holding_directory(directory: Path):
    """AS_A_USER holding ``directory``'s lock until the block ends; yields (its pid, a function that runs a
    second such take and returns its CompletedProcess). Skips where setpriv cannot drop the capabilities."""
    take = _HOLD.format(directory=str(directory))
    with subprocess.Popen([*AS_A_USER, sys.executable, "-c", take], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as holder:
        try:
            first = holder.stdout.readline().strip()
            if not first.isdigit():
                holder.stdin.close()
                err = holder.stderr.read()
                if "setpriv:" in err:
                    pytest.skip(f"setpriv cannot drop capabilities here: {err.strip()}")
                raise AssertionError(err)
            yield first, lambda: subprocess.run([*AS_A_USER, sys.executable, "-c", take], capture_output=True,
                                                text=True, timeout=300, stdin=subprocess.DEVNULL)
        finally:
            if not holder.stdin.closed:
                holder.stdin.close()
            holder.wait(timeout=300)
        assert holder.returncode == 0, holder.stderr.read()
