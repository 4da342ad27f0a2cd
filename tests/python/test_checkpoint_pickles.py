"""A checkpoint file is data, never code: every command that reads a .pt (export, evaluate, inspect,
train --resume, tools/regate_checkpoint.py) loads it through torch's restricted unpickler, so a file
crafted to run code on load is refused in one line and its code never runs (probe round thirteen
reported torch.load(weights_only=False) on every path; docs/reliability_python.md section 15)."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli_helpers import refused  # noqa: E402
from dodo.training.safe_load import UntrustedCheckpointError, load_torch_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class _Planted:
    """Unpickling this object creates a marker file (what a malicious checkpoint would do instead)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def planted_checkpoint(tmp_path: Path, **fields) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "planted.pt"
    torch.save({**fields, "payload": _Planted(marker)}, path)
    return path, marker


@pytest.mark.parametrize("kind", ["density_residual_ensemble", None])
@pytest.mark.parametrize("command", [["export", "{pt}", "-o", "{dir}/out.onnx"], ["evaluate", "{pt}"], ["inspect", "{pt}"]])
def test_a_checkpoint_that_runs_code_on_load_is_refused_and_its_code_never_runs(tmp_path, capsys, command, kind):
    fields = {"kind": kind} if kind else {"format": "dodo-checkpoint-v1"}
    path, marker = planted_checkpoint(tmp_path, **fields)
    argv = [part.format(pt=path, dir=tmp_path) for part in command]
    line = refused(capsys, argv, path, "refused")
    assert "not loaded" in line
    assert not marker.exists()
    assert not (tmp_path / "out.onnx").exists()


def test_train_resume_from_a_planted_checkpoint_runs_no_code(tmp_path):
    path, marker = planted_checkpoint(tmp_path, format="dodo-checkpoint-v1")
    from dodo.training.train import load_checkpoint

    with pytest.raises(UntrustedCheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_regate_tool_refuses_a_planted_checkpoint(tmp_path):
    path, marker = planted_checkpoint(tmp_path, kind="density_residual_ensemble")
    # The installed dodo (the test run's interpreter), as a user runs the tool from a checkout.
    result = subprocess.run([sys.executable, str(REPO / "tools" / "regate_checkpoint.py"), str(path), "2.5",
                             "--table", str(tmp_path / "table.h5"), "-o", str(tmp_path / "out.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "refused" in result.stderr
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_what_dodo_checkpoints_hold_still_loads(tmp_path):
    """Tensors, plain data, NumPy arrays and scalars, and every RNG state that `dodo train` saves."""
    state = {"rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
             "mean": np.arange(4.0), "counts": np.arange(3, dtype=np.int64), "flag": np.bool_(True),
             "scale": np.float64(2.5), "weights": {"w": torch.ones(2, 3)}, "config": {"lr": 1e-3, "layers": [64, 64]}}
    torch.save(state, tmp_path / "good.pt")
    loaded = load_torch_file(tmp_path / "good.pt")
    assert loaded["rng"]["numpy"][0] == "MT19937"
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert loaded["rng"]["python"] == state["rng"]["python"]
    assert np.array_equal(loaded["mean"], state["mean"]) and loaded["scale"] == 2.5
    assert torch.equal(loaded["weights"]["w"], state["weights"]["w"])


def test_a_checkpoint_pickled_under_numpy_1_still_loads(tmp_path):
    """NumPy 1.x pickles its arrays as numpy.core.multiarray._reconstruct (2.x: numpy._core)."""
    import io
    import zipfile

    torch.save({"mean": np.arange(4.0), "scale": np.float64(2.5)}, tmp_path / "new.pt")
    with zipfile.ZipFile(tmp_path / "new.pt") as source, zipfile.ZipFile(tmp_path / "old.pt", "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray" in data
            target.writestr(info, data)
    loaded = load_torch_file(tmp_path / "old.pt")
    assert np.array_equal(loaded["mean"], np.arange(4.0)) and loaded["scale"] == 2.5
