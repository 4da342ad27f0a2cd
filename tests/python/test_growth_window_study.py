"""tools/growth_window_study.py (issue 10, docs/training.md "The growth target's ceiling"): its
smooth window is the metric's window, and the student-row fit leaves the densities bit for bit."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli_helpers import run_tool  # noqa: E402
from dodo.training.ensemble import Member  # noqa: E402

TOOL = Path(__file__).resolve().parents[2] / "tools" / "growth_window_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("growth_window_study", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smooth_window_counts_what_dodo_score_counts(study):
    """Away from the edges (more than 5 widths) 1 - window_loss is the share within 10% as dodo score
    counts it, |predicted / true - 1| <= 0.1, i.e. ln 0.9 <= d <= ln 1.1 (not symmetric in d)."""
    rng = np.random.default_rng(3)
    d = rng.uniform(-0.3, 0.3, 20000)
    d = d[(np.abs(d - math.log(0.9)) > 0.05) & (np.abs(d - math.log(1.1)) > 0.05)]
    soft = 1 - float(study.window_loss(torch.as_tensor(d)))
    assert abs(100 * soft - study.within(d, np.zeros_like(d))) < 0.1
    ratio = np.exp(d)
    assert study.within(d, np.zeros_like(d)) == pytest.approx(100 * np.mean(np.abs(ratio - 1) <= 0.1))
    # -0.1 is inside (ratio 0.905), +0.1 outside (ratio 1.105)
    assert study.within(np.array([-0.1]), np.zeros(1)) == 100 and study.within(np.array([0.1]), np.zeros(1)) == 0


def test_fitting_the_student_growth_row_leaves_its_density_outputs_bit_for_bit(study):
    torch.manual_seed(0)
    student = Member(52, 16, 2, n_outputs=3).eval()
    X = np.random.default_rng(1).normal(size=(2048, 52)).astype(np.float32)
    with torch.no_grad():
        before = student(torch.as_tensor(X))
    # Labels just outside the window's upper side of the current growth output: the fit must pull them in.
    labels = before[:, 2].double().numpy() - 0.099
    tuned = study.window_tuned_student_row(student, X, labels, seed=5, epochs=20)
    with torch.no_grad():
        after = tuned(torch.as_tensor(X))
    assert torch.equal(after[:, :2], before[:, :2])
    assert not torch.equal(after[:, 2], before[:, 2])
    loss = lambda out: float(study.window_loss(out[:, 2].double() - torch.as_tensor(labels)))  # noqa: E731
    assert loss(after) < loss(before)
    with torch.no_grad():  # the input is not changed in place
        assert torch.equal(student(torch.as_tensor(X)), before)


def test_a_checkpoint_without_growth_members_is_refused_in_one_line(ensemble_run):
    result = run_tool("growth_window_study.py", ensemble_run["checkpoint"], "--dev", ensemble_run["table"])
    assert result.returncode == 2
    assert "needs growth members and a student" in result.stderr
    assert "Traceback" not in result.stderr
