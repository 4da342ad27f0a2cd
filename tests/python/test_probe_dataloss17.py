"""Outside probe, data-loss round seventeen: tools and scripts that skip or rewrite a file another run made.

Scratch files under tmp_path only (a one-state chunk, its growth labels, a copy of the shipped reference cases);
no timing: a concurrent run is stood in for by a write made just before the tool's own one."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import stand_in_venv

ROOT = Path(__file__).resolve().parents[2]
DODO = Path(sys.executable).with_name("dodo")


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"probe17_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_add_reference_setting_runs_at_once_keep_both_settings(tmp_path, monkeypatch):
    """`python tools/add_reference_setting.py 17 exact` and `... 29 jedynak` at once: each read
    box3d_cases.json at its start and wrote the document as read plus its own entries at its end, so the
    run that wrote last dropped the other's additions (exit 0 both, no word). Now the entries are added to
    the file as it is at the write, under an exclusive lock: both settings are kept. (A copy of the cases
    with a stand-in oracle; the other run's write is made while this one computes its entries.)"""
    tool = _tool("add_reference_setting")
    cases = tmp_path / "box3d_cases.json"
    stored = {"scheme": "pairwise", "lebedev_order": 5, "z_method": "exact", "form": "delta", "F_box": [[0.0]],
              "growth_over_ntot": 0.0, "ntot_comoving": 1.0}
    cases.write_text(json.dumps({"cases": [{"F_init": [[1.0]], "u": [0.0], "expected": [stored]}
                                           for _ in range(2)]}, indent=1))
    monkeypatch.setattr(tool, "CASES", cases)

    written = []

    def oracle_entry(case, order, z_method):
        if (order, z_method) == (17, "exact") and not written:  # the other run writes its setting meanwhile
            written.append(True)
            document = json.loads(cases.read_text())
            for other in document["cases"]:
                other["expected"].append(dict(stored, lebedev_order=29, z_method="jedynak"))
            cases.write_text(json.dumps(document, indent=1))
        return dict(stored, lebedev_order=order, z_method=z_method)

    monkeypatch.setattr(tool, "oracle_entry", oracle_entry)
    assert tool.main(17, "exact") == 0
    for case in json.loads(cases.read_text())["cases"]:
        settings = sorted((e["lebedev_order"], e["z_method"]) for e in case["expected"])
        assert settings == [(5, "exact"), (17, "exact"), (29, "jedynak")], settings


def _chunk(path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    from dodo.conventions import to_emu_layout
    from dodo.qke.states import NSM1_EMU_1D

    with h5py.File(path, "w") as f:
        f["F4_initial(1|ccm)"] = to_emu_layout(np.asarray(NSM1_EMU_1D, float)[None])
        f.attrs["complete"] = True


def _relabel(tmp_path: Path, campaign: Path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    for name in ("relabel_growth.sh", "own_session.sh"):
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    log = tmp_path / "calls.txt"
    venv = stand_in_venv(tmp_path, f"echo \"$*\" >> '{log}'\nexit 0")
    env = dict(os.environ, DODO_VENV=str(venv), DODO_CAMPAIGN_DIR=str(campaign), DODO_CAMPAIGN_NICE="0")
    result = subprocess.run(["bash", str(repo / "scripts" / "relabel_growth.sh"), "1"], env=env,
                            capture_output=True, text=True, timeout=300)
    return result, (log.read_text().splitlines() if log.exists() else [])


@pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash scripts for Linux")
@pytest.mark.parametrize("made_with", [["--ncell", "16"], "other states"])
def test_relabel_growth_keeps_a_complete_label_file_of_other_settings_and_says_so(tmp_path, made_with):
    """`bash scripts/relabel_growth.sh` skipped any complete label file (attrs["complete"] alone): labels made
    by hand with --ncell 16, or of the chunk's states before the chunk was made again, were taken for its own,
    exit 0 and no word (open items round eight). Now, as qke_campaign.sh's check: the file is kept byte for
    byte, the chunk not labelled, one line names the difference, exit non-zero; labels of the chunk's states
    at the script's settings are still skipped."""
    campaign = tmp_path / "camp"
    campaign.mkdir()
    labels = tmp_path / "camp_growth"
    labels.mkdir()
    _chunk(campaign / "emu_seed1.h5")
    _chunk(campaign / "emu_seed2.h5")
    run = lambda out, chunk, *extra: subprocess.run(  # noqa: E731
        [str(DODO), "simulate", str(out), "--input", str(chunk), "--linear-only", "--quiet", *extra],
        check=True, capture_output=True, timeout=300)
    run(labels / "emu_seed2.h5", campaign / "emu_seed2.h5")  # this script's own labels: skipped
    if made_with == "other states":
        import h5py

        run(labels / "emu_seed1.h5", campaign / "emu_seed1.h5")
        with h5py.File(campaign / "emu_seed1.h5", "a") as f:  # the chunk made again: other states
            f["F4_initial(1|ccm)"][...] = f["F4_initial(1|ccm)"][...] * 1.5
        why = "other states"
    else:
        run(labels / "emu_seed1.h5", campaign / "emu_seed1.h5", *made_with)
        why = "--ncell 16"
    before = (labels / "emu_seed1.h5").read_bytes()
    result, calls = _relabel(tmp_path, campaign)
    assert result.returncode != 0, result.stderr
    assert calls == [], calls
    assert f"{labels}/emu_seed1.h5 is a complete file of another run" in result.stderr, result.stderr
    assert why in result.stderr and "it is kept" in result.stderr, result.stderr
    assert "emu_seed2" not in result.stderr, result.stderr
    assert (labels / "emu_seed1.h5").read_bytes() == before


def test_export_says_when_a_package_records_no_training_states(tmp_path, monkeypatch, capsys):
    """`dodo export` of a checkpoint trained on more states than a package records (1,000,000;
    MAX_RECORDED_TRAINING_STATES) wrote the package without dodo.training_states and said nothing, so
    `dodo score` of the package on its own training states gave no warning and the user took them for
    held-out scores. Now a note says the entry was left out and why. (The bound lowered to 10 here.)"""
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from dodo.cli import main as dodo_main
    from dodo.training import export
    from training_helpers import synth_and_preprocess, train

    data = synth_and_preprocess(tmp_path, 200, seed=17)
    checkpoint = train(tmp_path, data, "t", training={"epochs": 1}) / "best.pt"
    monkeypatch.setattr(export, "MAX_RECORDED_TRAINING_STATES", 10)
    capsys.readouterr()
    assert dodo_main(["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--no-check"]) == 0
    out = capsys.readouterr()
    keys = {entry.key for entry in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert "dodo.training_states" not in keys
    assert "dodo.training_states not recorded" in out.out + out.err, out
    assert "more than the 10 a package records" in out.out + out.err, out
