"""`dodo study GRID | head -1`: a study is a grid of trainings, and it ended with 141 in its first run,
run_000 empty and no summary, when the reader of its standard output went away; `dodo train` and the
other training commands go on (outside probe, data-loss round eight)."""
import json
import os
import subprocess
import sys

import pytest

from cli_helpers import synthetic_preprocessed, tiny_study_base


def test_a_study_whose_reader_went_away_runs_every_run_and_writes_its_summary(tmp_path):
    pytest.importorskip("torch")
    synthetic_preprocessed(tmp_path, cells=200)
    tiny_study_base(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: base.yaml\ntag: gone\noutput_root: {tmp_path / 'studies'}\n"
                    "grid: {training.lr: [1.0e-3, 2.0e-3]}\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the first line
    try:
        result = subprocess.run([sys.executable, "-m", "dodo", "study", str(grid)], cwd=tmp_path, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=900)
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "studies" / "gone" / "summary.json").read_text())
    assert [(row["run"], row["status"]) for row in rows] == [("run_000", "completed"), ("run_001", "completed")]
