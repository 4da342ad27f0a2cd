"""Issue 11, item 21: the justfile's recipes run the documented `dodo` commands, arguments intact
(`just` from PyPI: rust-just, in the test extra). A stand-in `dodo` records its arguments."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JUST = shutil.which("just") or str(Path(sys.executable).parent / "just")

pytestmark = pytest.mark.skipif(not (ROOT / "justfile").is_file() or not os.access(JUST, os.X_OK),
                                reason="needs the source tree's justfile and `just` (pip install rust-just)")


@pytest.fixture
def recorded(tmp_path):
    """Run `just ARGS` with a venv whose `dodo` prints its arguments one per line."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "dodo").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (bin_dir / "dodo").chmod(0o755)

    def run(*args: str) -> list[str]:
        env = dict(os.environ, DODO_VENV=str(tmp_path / "venv"))
        result = subprocess.run([JUST, "--justfile", str(ROOT / "justfile"), *args], capture_output=True, text=True,
                                env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    return run


@pytest.mark.parametrize("argv, expected", [
    (["train", "config=training/configs/demo_synthetic.yaml"], ["train", "--config", "training/configs/demo_synthetic.yaml"]),
    (["train"], ["train", "--config", "training/configs/model.yaml"]),
    (["train", "training/x.yaml", "--set", "training.lr=1e-3 "], ["train", "--config", "training/x.yaml", "--set",
                                                                 "training.lr=1e-3 "]),
    (["preprocess"], ["preprocess", "--config", "training/configs/pre_process.yaml"]),
    (["preprocess", "config=my configs/p.yaml", "-q"], ["preprocess", "--config", "my configs/p.yaml", "-q"]),
    (["synth", "out=data/s.h5", "-n", "50"], ["synth", "-o", "data/s.h5", "-n", "50"]),
    (["evaluate", "checkpoint=checkpoints/demo/best.pt"], ["evaluate", "checkpoints/demo/best.pt"]),
    (["export", "checkpoint=c.pt", "-o", "m.onnx"], ["export", "c.pt", "-o", "m.onnx"]),
    (["simulate", "out=o.h5", "--random", "4"], ["simulate", "o.h5", "--random", "4"]),
    (["apply", "data=a.h5", "--grid", "2x2x2"], ["apply", "a.h5", "--grid", "2x2x2"]),
    (["reference", "--lebedev-order", "41"], ["reference", "--lebedev-order", "41"]),
])
def test_recipes_run_the_documented_commands(recorded, argv, expected):
    assert recorded(*argv) == expected


def test_recipes_are_listed():
    result = subprocess.run([JUST, "--justfile", str(ROOT / "justfile"), "--summary"], capture_output=True, text=True,
                            timeout=60)
    names = set(result.stdout.split())
    assert {"setup", "test", "main-job", "synth", "preprocess", "train", "evaluate", "export", "simulate",
            "apply"} <= names
