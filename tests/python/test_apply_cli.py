"""`dodo apply`: the runtime over a grid of moving cells, scored beside Box3D."""
import re

import pytest

from dodo.cli import main

pytest.importorskip("h5py")
if not __import__("dodo").runtime_available():
    pytest.skip("dodo built without the closure runtime", allow_module_level=True)


def test_apply_scores_the_default_model_on_a_grid(tmp_path, capsys):
    """The 32 real Emu runs of emu_1d_validation.h5 on a 2x4x4 grid of moving cells: the shipped
    (QKE-trained) default model beats Box3D, conserves and stays realizable."""
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    assert main(["apply", str(data), "--grid", "2x4x4", "--max-speed", "0.5", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    box, model = map(float, re.search(r"^all\s+(\S+)\s+(\S+)", out, re.M).groups())
    assert model < box
    violation = float(re.search(r"largest conservation violation / N_tot: (\S+);", out).group(1))
    assert violation <= 1e-12
    assert "unrealizable species: 0.0%" in out and "non-finite outputs: 0" in out


def test_apply_refuses_a_grid_larger_than_the_file(tmp_path, capsys):
    from dodo.training.synth import write_synthetic_database

    data = tmp_path / "small.h5"
    write_synthetic_database(data, n=8, seed=3)
    assert main(["apply", str(data), "--grid", "3x3x3"]) == 2
    assert "needs 27" in capsys.readouterr().err
    assert main(["apply", str(data), "--grid", "3x3"]) == 2
    assert "16x16x16" in capsys.readouterr().err
