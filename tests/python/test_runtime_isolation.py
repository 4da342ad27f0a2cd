"""Issue 11, item 22: the run-time package depends on nothing of training.

In a fresh interpreter where `dodo.training` cannot be imported (as on an install without the
training code), every other module of the package imports, `dodo.closure` and `dodo.box3d` run,
`dodo --help`, `dodo reference` and `dodo apply` work, and no training module was loaded.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dodo

ROOT = Path(__file__).resolve().parents[2]
EMU_FILE = ROOT / "tests" / "data" / "qke" / "emu_1d_validation.h5"

SCRIPT = r"""
import importlib, importlib.abc, pkgutil, sys

class NoTraining(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "dodo.training" or name.startswith("dodo.training."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, NoTraining())
import numpy as np
import dodo

imported = []
for module in pkgutil.walk_packages(dodo.__path__, "dodo."):
    if module.name.startswith("dodo.training") or module.name == "dodo.__main__":
        continue
    importlib.import_module(module.name)
    imported.append(module.name)

F = np.zeros((4, 6, 4))
F[:, 0] = [1.0, 0, 0, 0.5]
F[:, 3] = [1.0, 0, 0, -0.5]
assert np.isfinite(dodo.box3d(F).F_box).all()
if dodo.runtime_available():
    assert np.isfinite(dodo.closure(F)).all()

from dodo.cli import main
assert main(["reference"]) == 0
try:
    main(["--help"])
except SystemExit as exit_:
    assert exit_.code == 0
if dodo.runtime_available() and len(sys.argv) > 1:
    assert main(["apply", sys.argv[1], "--grid", "2x2x2", "--threads", "1", "-q"]) == 0
loaded = sorted(name for name in sys.modules if name.startswith("dodo.training"))
assert not loaded, loaded
print("imported", len(imported), "run-time modules")
"""


def test_runtime_package_imports_and_runs_without_training():
    argv = [sys.executable, "-c", SCRIPT]
    if EMU_FILE.is_file() and __import__("importlib").util.find_spec("h5py"):
        argv.append(str(EMU_FILE))
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "imported" in run.stdout


def test_no_runtime_module_imports_training_code():
    """Also statically: no module outside dodo/training names it in an import."""
    import re

    package = Path(dodo.__file__).resolve().parent
    pattern = re.compile(r"^\s*(from\s+(\.+training|dodo\.training)\b|import\s+dodo\.training\b)", re.M)
    offenders = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if "training" not in path.relative_to(package).parts and pattern.search(path.read_text())]
    # dodo/cli.py registers the training subcommands by name (importlib, optional): allowed.
    assert offenders == [], offenders


@pytest.mark.skipif(not (ROOT / "python" / "dodo").is_dir(), reason="needs the source tree")
def test_synthetic_model_generator_lives_with_training():
    assert not (ROOT / "python" / "dodo" / "models" / "synthetic.py").exists()
    assert (ROOT / "python" / "dodo" / "training" / "synthetic_model.py").is_file()
