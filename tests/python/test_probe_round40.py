"""Outside probe, round 40: a user's data journey (docs/reliability_python.md section 45).

Each test failed on the code before its fix (its docstring says what that code did), except those
marked as guards. The round's findings: `dodo simulate --input` refused an Emu file whose
`rotation_R` is stored as float32 (its rounding, 3.5e-8, read as "not a proper rotation"); its refusal
of a non-finite initial state named no state; `dodo score` counted a state repeated within one file
twice (the same states given as two files counted once).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import refused, run

h5py = pytest.importorskip("h5py")

EMU = Path(__file__).resolve().parents[2] / "tests" / "data" / "qke" / "emu_1d_validation.h5"
SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]


def _emu_states(count: int) -> dict:
    with h5py.File(EMU, "r") as source:
        return {name: source[name][:count] for name in
                ("F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)", "rotation_R", "tend(s)")}


def _write(path, datasets: dict, **options):
    with h5py.File(path, "w") as f:
        for name, values in datasets.items():
            f.create_dataset(name, data=values, **options)
    return path


# --- dodo simulate --input: a rotation_R stored as float32 -------------------------------------------

def test_simulate_reads_a_float32_rotation_as_the_rotation_it_stores(capsys, tmp_path):
    """A user's Emu file with `rotation_R` written as float32 (chunked, gzip): `IN: rotation_R (or
    --ignore-rotation): matrix 0 (and 1 more) is not a proper rotation (|R R^T - 1| = 3.5e-08, det R
    = 1)`, exit 2: float32's rounding of a rotation was judged at 1e-9. Now read as the nearest proper
    rotation; the run gives what the float64 rotations give, to float32's precision."""
    states = _emu_states(2)
    inputs = {"F4_initial(1|ccm)": states["F4_initial(1|ccm)"]}
    wide = _write(tmp_path / "wide.h5", {**inputs, "rotation_R": states["rotation_R"]})
    narrow = _write(tmp_path / "narrow.h5", {**inputs, "rotation_R": states["rotation_R"].astype(np.float32)},
                    chunks=True, compression="gzip")
    for source in (wide, narrow):
        code, _, err = run(capsys, ["simulate", str(tmp_path / f"out_{source.stem}.h5"), "--input", str(source),
                                    "--linear-only", *SMALL])
        assert code == 0, err
    with h5py.File(tmp_path / "out_wide.h5", "r") as a, h5py.File(tmp_path / "out_narrow.h5", "r") as b:
        R = b["rotation_R"][()]
        assert np.abs(np.einsum("nij,nkj->nik", R, R) - np.eye(3)).max() < 1e-12
        assert np.allclose(R, a["rotation_R"][()], rtol=0, atol=1e-6)
        assert np.allclose(b["linear_growthRate_box(1|s)"][()], a["linear_growthRate_box(1|s)"][()], rtol=1e-5)


def test_a_float32_matrix_that_is_no_rotation_is_still_refused(capsys, tmp_path):
    """Guard: float32 storage loosens the check to float32's precision only; a matrix scaled by 1.001
    (|R R^T - 1| = 2e-3) is refused as before, naming rotation_R."""
    states = _emu_states(2)
    source = _write(tmp_path / "in.h5", {"F4_initial(1|ccm)": states["F4_initial(1|ccm)"],
                                         "rotation_R": (1.001 * states["rotation_R"]).astype(np.float32)})
    refused(capsys, ["simulate", str(tmp_path / "x.h5"), "--input", str(source), "--linear-only", *SMALL],
            "rotation_R", "not a proper rotation", "--ignore-rotation")
    assert not (tmp_path / "x.h5").exists()


def test_simulate_names_the_state_whose_initial_four_fluxes_are_not_finite(capsys, tmp_path):
    """One NaN row among a user's states: `IN: non-finite initial four-fluxes`, naming no state (in a
    file of thousands a user had to search every row). Now the state(s), still refused, nothing written."""
    states = _emu_states(3)
    initial = states["F4_initial(1|ccm)"].copy()
    initial[2, 3, 1, 0] = np.nan
    source = _write(tmp_path / "in.h5", {"F4_initial(1|ccm)": initial, "tend(s)": states["tend(s)"]})
    refused(capsys, ["simulate", str(tmp_path / "x.h5"), "--input", str(source), "--use-input-end-time", *SMALL],
            "non-finite initial four-fluxes", "state(s) [2]")
    assert not (tmp_path / "x.h5").exists()


# --- dodo score: a state repeated within one file ----------------------------------------------------

def test_score_counts_a_state_repeated_within_one_file_once(capsys, tmp_path):
    """A user's merge of two runs into one database (here four states written twice): 8 states scored,
    each twice, the intervals narrower, no word; the same states as two files counted once (round 20).
    Now each state once, with a note, and the scores of the four states alone."""
    states = _emu_states(4)
    keys = ("F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)")
    alone = _write(tmp_path / "four.h5", {key: states[key] for key in keys})
    merged = _write(tmp_path / "merged.h5", {key: np.concatenate([states[key], states[key]]) for key in keys})
    reports = []
    for source in (alone, merged):
        code, out, err = run(capsys, ["score", "default", str(source), "--bootstrap", "200", "--json", "-"])
        assert code == 0, err
        reports.append(json.loads(out))
    four, both = reports
    assert both["n_states"] == both["n_scored"] == 4
    for key in ("model", "box3d"):
        assert both[key]["mean"] == pytest.approx(four[key]["mean"], rel=1e-12)
        assert both[key]["ci95"] == pytest.approx(four[key]["ci95"], rel=1e-12)
    assert any("4 state(s) repeat an earlier state of the same file" in note for note in both["notes"])
    assert both["per_state"]["origin"] == [f"{merged}#{row}" for row in range(4)]


def test_score_leaves_out_each_non_finite_row_of_a_file_with_its_reason(capsys, tmp_path):
    """Guard: rows of NaN (an unfinished run's rows, all alike) are not called repeats of each other:
    each is left out and counted with its reason, as before."""
    states = _emu_states(8)
    initial = states["F4_initial(1|ccm)"].copy()
    initial[5:] = np.nan
    source = _write(tmp_path / "in.h5", {"F4_initial(1|ccm)": initial, "F4_final(1|ccm)": states["F4_final(1|ccm)"]})
    code, out, err = run(capsys, ["score", "default", str(source), "--bootstrap", "200", "--json", "-"])
    assert code == 0, err
    report = json.loads(out)
    assert report["n_states"] == 8 and report["n_scored"] == 5
    assert report["left_out"]["count"] == 3 and report["left_out"]["indices"] == [5, 6, 7]
    assert not any("repeat" in note for note in report.get("notes", []))
