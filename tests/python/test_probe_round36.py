"""Outside probe, round 36 (docs/reliability_python.md section 39).

A count in the environment or on the command line spelled with a character that `str.isdigit` calls
a digit but `int` refuses (a superscript "²"): the checks took `isdigit()` for "int() will read it",
and the launcher check of `dodo simulate` ended in a traceback, `dodo learning-curve --sizes` in
Python's words naming no option. `isdecimal()` is exactly what int() reads.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run
from dodo import _atomic
from dodo.qke import parallel

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("environ", [{"OMPI_COMM_WORLD_SIZE": "²"}, {"PMI_SIZE": "2²"},
                                     {"SLURM_STEP_ID": "²", "SLURM_STEP_NUM_TASKS": "2"},
                                     {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "²"}])
def test_a_launcher_count_int_cannot_read_is_not_a_launch(environ):
    """Before: `ValueError: invalid literal for int() with base 10: '²'`, a traceback out of `dodo
    simulate` (parallel._launched) before any work."""
    assert parallel.launched_size(environ) == 1
    assert isinstance(parallel.world(environ), parallel.SerialCommunicator)


def test_launcher_counts_are_still_read():
    """Guard: ASCII counts, and other scripts' decimal digits (which int() reads), as before."""
    assert parallel.launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert parallel.launched_size({"PMI_SIZE": "\u0663"}) == 3  # ARABIC-INDIC DIGIT THREE
    assert parallel.launched_size({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}) == 4


def test_the_lock_refusal_hint_reads_no_count_int_cannot_read():
    """Before: the refusal of a held lock raised int()'s ValueError instead of its own line."""
    assert _atomic.launched_ranks_hint("train", {"OMPI_COMM_WORLD_SIZE": "²"}) == ""
    assert "OMPI_COMM_WORLD_SIZE=2" in _atomic.launched_ranks_hint("train", {"OMPI_COMM_WORLD_SIZE": "2"})


@pytest.mark.parametrize("sizes", ["²", "20,²"])
def test_learning_curve_names_sizes_for_a_superscript(capsys, sizes):
    """Before: `dodo learning-curve: error: invalid literal for int() with base 10: '²'`."""
    code, _, err = run(capsys, ["learning-curve", "--sizes", sizes,
                                "--config", str(REPO / "training" / "configs" / "ensemble_default.yaml")])
    assert code == 2
    assert "--sizes takes integers >= 10" in err and "'²'" in err
    assert "invalid literal" not in err
