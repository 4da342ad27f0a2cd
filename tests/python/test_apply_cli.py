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


def test_apply_output_holds_the_closures_growth_rates_and_uncertainty(tmp_path):
    """`dodo apply -o` keeps every per-cell output of the closure, not F_pred and status alone:
    the growth rate (s^-1), Box3D's proxy and the uncertainty, each [nx, ny, nz] with its units,
    equal bit for bit to dodo.Closure().apply on the file's own cells."""
    from pathlib import Path

    import h5py
    import numpy as np

    import dodo

    data = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    out = tmp_path / "cells.h5"
    assert main(["apply", str(data), "--grid", "2x4x4", "--max-speed", "0.5", "--threads", "1", "-q",
                 "-o", str(out)]) == 0
    with h5py.File(out, "r") as cells:
        F_init, u = cells["F_init"][...].reshape(-1, 6, 4), cells["u"][...].reshape(-1, 4)
        written = {name: cells[name][...] for name in ("status", "growth_rate", "growth_rate_proxy", "uncertainty")}
        units = {name: cells[name].attrs["units"] for name in ("growth_rate", "growth_rate_proxy", "uncertainty")}
    expected = dodo.Closure(threads=1).apply(F_init, u)
    for name, values in written.items():
        assert values.shape == (2, 4, 4), name
        np.testing.assert_array_equal(values.reshape(-1), getattr(expected, name), err_msg=name)
    assert units["growth_rate"].startswith("s^-1") and "N_tot" in units["uncertainty"]
    crossing = written["growth_rate_proxy"] > 0
    assert crossing.sum() >= 16  # real Emu runs: most cells cross
    assert (written["growth_rate"][crossing] > 0).all() and (written["uncertainty"][crossing] > 0).any()
