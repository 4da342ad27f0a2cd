"""`dodo info` names the commit its libdodo was built from (dodo_build_id, C outside probe round
forty-one): "dodo 0.1.0" alone was the same for every build."""
import re
import subprocess
import sys

import pytest

import dodo


@pytest.mark.skipif(not dodo.runtime_available(), reason="Box3D-only build: no libdodo")
def test_dodo_info_prints_the_libdodo_build_id():
    result = subprocess.run([sys.executable, "-m", "dodo", "info"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("libdodo build: ")]
    assert len(lines) == 1, result.stdout
    build = lines[0].removeprefix("libdodo build: ")
    # A commit (with "-dirty" for local changes), "unknown" (a source archive), or a packager's id.
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?|unknown|[A-Za-z0-9._+:/@-]+", build), build
    assert not build.startswith("unknown ("), build  # the library was found and answered
