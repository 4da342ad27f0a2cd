"""Outside probe, training command line round six."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The tools/ studies that choose their training rows (or pool) from a table by data.holdout.
STUDIES_THAT_TRAIN = ("tools/student_width_study.py", "tools/refit_growth.py", "tools/targeted_sampling_study.py")


def _called_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


@pytest.mark.parametrize("study", STUDIES_THAT_TRAIN)
def test_tools_studies_hold_out_by_state_as_train_ensemble(study):
    # They held out by file name alone (holdout_mask), so a held-out run copied under another name was in
    # their training pool; train-ensemble and learning-curve leave such copies out (training round five).
    called = _called_names(ROOT / study)
    assert "held_out_rows" in called, study
    assert "holdout_mask" not in called, study
