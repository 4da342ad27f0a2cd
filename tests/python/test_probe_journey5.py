"""A new user's journey from a fresh clone, round five (outside probe): what a user met that the docs and
messages did not say right."""
from __future__ import annotations

import sys
from pathlib import Path

from dodo._shown import extra_install

REPO = Path(__file__).resolve().parents[2]
EMU_FILE = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"


def test_dodo_score_without_h5py_names_h5py_not_the_training_extra(capsys, monkeypatch):
    # A wheel install without h5py: `dodo score default FILE` named torch, matplotlib, onnx, ... (the 'train'
    # extra) as the other way to read an HDF5 file; dodo apply and dodo simulate name h5py (the 'qke' extra).
    from cli_helpers import run

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ModuleNotFoundError
    code, _, err = run(capsys, ["score", "default", str(EMU_FILE)])
    assert code == 2 and "pip install h5py" in err, err
    assert extra_install("train") not in err and "torch" not in err, err
    assert extra_install("qke") in err, err
