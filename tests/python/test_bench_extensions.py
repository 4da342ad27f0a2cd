"""benchmarks/bench_extensions.py, the A/B of two builds of dodo._core (docs/speed.md): it loads the
file it is given, not the installed extension, and refuses what it cannot run in one line."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dodo._core

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_extensions.py"


def run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def test_each_measurement_loads_the_build_it_names(tmp_path):
    """A copy of the installed extension is loaded from its own path in the child (its __file__)."""
    copy = tmp_path / "copy_core.so"
    shutil.copyfile(dodo._core.__file__, copy)
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(SCRIPT)!r}, {str(copy)!r}, {str(copy)!r}, '--child', {str(copy)!r}, 'box3d', "
            "'--cells', '500', '--seconds', '0.01']\n"
            "import atexit\n"
            "atexit.register(lambda: print('loaded', sys.modules['dodo._core'].__file__, file=sys.stderr))\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded {copy}" in result.stderr, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) > 0


def test_a_table_with_new_over_old_and_each_builds_closure_ratio(tmp_path):
    copy = tmp_path / "copy_core.so"
    shutil.copyfile(dodo._core.__file__, copy)
    result = run(dodo._core.__file__, str(copy), "--cells", "500", "--rounds", "1", "--seconds", "0.01")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert {"box3d", "closure"} <= set(rows), result.stdout
    assert re.search(r"closure / box3d, old: \d\.\d{3}", result.stdout), result.stdout
    assert re.search(r"closure / box3d, new: \d\.\d{3}", result.stdout), result.stdout


@pytest.mark.parametrize("arguments, words", [
    (["/nonexistent/old_core.so", "NEW"], "old: no extension file at /nonexistent/old_core.so"),
    (["OLD", "OLD", "--rounds", "0"], "--rounds"),
    (["OLD", "OLD", "--seconds", "0"], "--seconds"),
    (["OLD", "OLD", "--pipelines", "network"], "--pipelines"),
])
def test_bad_arguments_are_refused_in_one_line(arguments, words):
    arguments = [dodo._core.__file__ if a in ("OLD", "NEW") else a for a in arguments]
    result = run(*arguments)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert words in last and "Traceback" not in result.stderr, result.stderr
