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


def test_score_counts_training_states_without_hashing_the_whole_record(monkeypatch):
    # dodo score's count went through np.isin, which hashes the package's whole record: a package of
    # 1,000,000 training states (the most export records) added about 1 s to every score, as much as the rest
    # of a 200-state score. The record is sorted once and searched; the count stays exact (unsorted records,
    # repeated hashes, states not recorded).
    import types

    import numpy as np

    from dodo import score
    from dodo._state_hashes import row_hashes, training_states_entry

    rng = np.random.default_rng(6)
    F_init = rng.normal(size=(50, 6, 4))
    own = row_hashes(F_init.reshape(50, -1))
    record = np.concatenate([rng.integers(0, 2**63, 200_000, dtype=np.int64).astype(np.uint64), own[:30], own[:5]])
    rng.shuffle(record)
    closure = types.SimpleNamespace(metadata={"dodo.training_states": training_states_entry(record)})
    states = types.SimpleNamespace(F_init=F_init)

    def no_isin(*args, **kwargs):
        raise AssertionError("np.isin hashes the whole record")

    monkeypatch.setattr(np, "isin", no_isin)
    assert score._states_trained_on(closure, states, [0, 40]) == 29  # states 1..29 recorded, 0 left out
    assert score._states_trained_on(types.SimpleNamespace(metadata={"dodo.training_states": training_states_entry(
        np.zeros(0, np.uint64))}), states, []) == 0
