"""A new user's journey from a fresh clone, round four (outside probe): Dodo installed the ways users install
packages, not through the repository's scripts: `pip wheel .` and the wheel installed into a fresh venv
elsewhere, `pip install /path/to/clone` (non-editable), `pip install git+file://...`, then `pip uninstall`.

- A missing optional part's hint (`dodo simulate` without h5py, `dodo train` without the training extras) said
  "pip install '.[train]' in Dodo's repository" to every install but an editable one: a wheel or a git-URL install
  has no repository beside it, so the user had to find one and rebuild Dodo for a few pure-Python packages.
  The hint now lists the extra's packages as the installed distribution's metadata declares them.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _shown_outside_a_checkout(tmp_path):
    """dodo._shown as a wheel installs it: the same file in site-packages/dodo/, with no repository two levels up."""
    package = tmp_path / "lib" / "site-packages" / "dodo"
    package.mkdir(parents=True)
    import dodo._shown

    shutil.copy(dodo._shown.__file__, package / "_shown.py")
    spec = importlib.util.spec_from_file_location("dodo_shown_as_installed", package / "_shown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared(extra):
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]


@pytest.mark.parametrize("extra", ["train", "qke", "mpi"])
def test_an_install_without_a_repository_is_told_the_extras_packages(tmp_path, extra):
    """A wheel, `pip install /path/to/dodo` or `pip install git+URL`: the hint names the packages, which pip
    installs without Dodo's repository or a rebuild (before: "pip install '.[train]' in Dodo's repository")."""
    shown = _shown_outside_a_checkout(tmp_path)
    hint = shown.extra_install(extra)
    assert hint.startswith("pip install "), hint
    for requirement in _declared(extra):
        assert f"'{requirement}'" in hint, (requirement, hint)
    assert "Dodo's repository" not in hint and "dodo[" not in hint, hint


def test_an_install_without_metadata_falls_back_to_the_repository_in_words(tmp_path, monkeypatch):
    from importlib import metadata

    shown = _shown_outside_a_checkout(tmp_path)

    def no_distribution(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "requires", no_distribution)
    assert shown.extra_install("train") == "pip install '.[train]' in Dodo's repository (Dodo is not on a package index)"
