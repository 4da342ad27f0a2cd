"""A `dodo` command started with a standard descriptor closed (`dodo simulate out.h5 2>&-`, a daemon
that closed 0-2) puts /dev/null there first: otherwise the output's temporary file, opened next,
got descriptor 2, and anything written to stderr at the C level (ONNX Runtime, libgomp, a crash
handler) went into the output. A program that imports dodo keeps its descriptors as they are."""
import subprocess
import sys

from dodo import _startup

CHILD = """
import os, sys
os.close({closed})
{call}
descriptor = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
try:
    target = os.readlink('/proc/self/fd/{closed}')
except OSError:
    target = 'closed'
os.write(descriptor, f'{{descriptor}} {{target}}'.encode())
"""


def _child(tmp_path, closed, call):
    out = tmp_path / f"out{closed}.txt"
    subprocess.run([sys.executable, "-c", CHILD.format(closed=closed, call=call), str(out)], check=True, timeout=120,
                   stdin=subprocess.DEVNULL if closed else None)
    descriptor, target = out.read_text().split()
    return int(descriptor), target


def test_a_closed_standard_descriptor_gets_dev_null_before_any_output_is_opened(tmp_path):
    call = "from dodo import _startup; _startup.reserve_standard_descriptors()"
    for closed in (0, 1, 2):
        descriptor, target = _child(tmp_path, closed, call)
        assert descriptor >= 3 and target == "/dev/null", (closed, descriptor, target)


def test_without_it_the_output_takes_the_closed_descriptor(tmp_path):
    """The hazard itself (so the test above can fail): the output lands on descriptor 2."""
    assert _child(tmp_path, 2, "import dodo") == (2, str(tmp_path / "out2.txt"))


def test_guard_reserves_them_for_commands_only(monkeypatch):
    calls = []
    monkeypatch.setattr(_startup, "reserve_standard_descriptors", lambda: calls.append(True))
    monkeypatch.setattr(_startup, "_launched_as_command", lambda: False)
    _startup.guard()
    assert calls == []
    monkeypatch.setattr(_startup, "_launched_as_command", lambda: True)
    _startup.guard()
    _startup.release()
    assert calls == [True]
