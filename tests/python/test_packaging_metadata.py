"""What a wheel or sdist carries besides the code (new user's journey, round four, left open there).

Before: pyproject.toml declared BSD-3-Clause but the repository had no licence text, so no wheel or
sdist carried it; `python -m build --sdist` packed the campaign's data/ (~150 MB unpacked, an 81 MB
tarball) that the build never reads. Now LICENSE holds the declared licence and the sdist leaves
data/ and the training outputs out (3.7 MB, 2026-12-07, scikit-build-core 1.1.2)."""
from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_declared_licence_is_the_licence_text_shipped():
    assert pyproject()["project"]["license"] == {"text": "BSD-3-Clause"}
    text = (REPO / "LICENSE").read_text()
    assert text.splitlines()[0] == "BSD 3-Clause License"
    assert "Neither the name of the copyright holder" in text  # the third clause


def test_the_sdist_leaves_out_what_the_build_never_reads():
    excluded = pyproject()["tool"]["scikit-build"]["sdist"]["exclude"]
    assert {"/data/", "/checkpoints/", "/pdata/"} <= set(excluded)
    # Anchored at the root: scikit-build-core reads them as .gitignore lines, where "data/" also matched
    # python/dodo/data/ and left the package's own data (box3d_cases.json) out of sdists and wheels alike.
    assert all(pattern.startswith("/") for pattern in excluded), excluded
    # Nothing the build or the installed package needs lies there.
    assert not any((REPO / "data").glob("**/*.py")) and not any((REPO / "data").glob("**/CMakeLists.txt"))
