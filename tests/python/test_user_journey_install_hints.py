"""A missing optional part is installed from the checkout, not from a package index.

Dodo is not on a package index: the hints "pip install 'dodo[train]'" (and [qke], [mpi]) made pip fetch
another project named dodo and fail to build it (outside probe, new user's journey, round one). The
hints now name this checkout (an editable install) or the repository in words."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dodo._shown import extra_install

REPO = Path(__file__).resolve().parents[2]


def test_the_hint_installs_the_extra_from_this_checkout():
    import dodo

    hint = extra_install("train")
    if Path(dodo.__file__).resolve().parents[2] == REPO:  # the editable install of this checkout
        assert hint == f"pip install '{REPO}[train]'" or hint == f"pip install {REPO}[train]"
    else:  # a wheel or a non-editable install (CI's): the extra's packages (new user's journey, round four)
        assert "'torch" in hint and "(Dodo's 'train' extra)" in hint, hint
    assert "dodo[" not in hint


def test_a_missing_training_module_names_the_checkout(tmp_path, capsys, monkeypatch):
    from cli_helpers import run

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ModuleNotFoundError
    code, _, err = run(capsys, ["synth", "-o", str(tmp_path / "s.h5"), "-n", "5", "-q"])
    assert code == 2 and "dodo[train]" not in err and extra_install("train") in err, err


def test_no_message_in_the_package_sends_users_to_a_package_index():
    offenders = [f"{path.relative_to(REPO)}:{number}"
                 for path in (REPO / "python" / "dodo").rglob("*.py")
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if "dodo[" in line and "extra_install" not in line]
    assert not offenders, offenders


@pytest.mark.parametrize("extra", ["qke", "mpi"])
def test_every_extra_the_hints_name_is_declared(extra):
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extra in declared and "train" in declared
