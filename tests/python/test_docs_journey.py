"""A new user's journey through the documentation (README, docs/training.md, docs/runtime.md):
regressions found by running the documented commands with small sizes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dodo


def test_mini_batch_fit_of_twenty_steps_trains():
    """A short `dodo train-ensemble --set distill.epochs=...` run whose fit came to exactly 20
    optimiser steps ended with `error: float division by zero`: torch's OneCycleLR divides by
    pct_start * total_steps - 1, which is 0 for the 5% warm-up of 20 steps."""
    torch = pytest.importorskip("torch")
    from dodo.training.ensemble import _fit

    for rows, batch_size, epochs in [(10, 1, 2), (20, 1, 1), (40, 4, 2)]:  # 20 steps each
        torch.manual_seed(0)
        module = torch.nn.Linear(3, 1)
        X = torch.randn(rows, 3)
        y = torch.randn(rows, 1)

        def loss_of(m, index, X=X, y=y):
            return (m(X[index]) - y[index]).abs().mean()

        fitted = _fit(module, loss_of, rows, steps=0, lr=1e-3, weight_decay=0.0, batch_size=batch_size,
                      epochs=epochs, seed=0)
        assert all(torch.isfinite(p).all() for p in fitted.parameters())


def test_mini_batch_fit_keeps_its_schedule_away_from_twenty_steps():
    """The fix touches only the 20-step case: other step counts follow the same rates as before."""
    torch = pytest.importorskip("torch")
    from dodo.training.ensemble import _fit

    def run(rows, fit):
        torch.manual_seed(1)
        module = torch.nn.Linear(3, 1)
        X = torch.randn(rows, 3)
        y = torch.randn(rows, 1)
        return fit(module, lambda m, index: (m(X[index]) - y[index]).abs().mean())

    def reference(module, loss_of, rows=64, batch_size=8, epochs=5):
        optimiser = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.0)
        per_epoch = (rows + batch_size - 1) // batch_size
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=epochs * per_epoch,
                                                       pct_start=0.05)
        generator = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for index in torch.randperm(rows, generator=generator).split(batch_size):
                loss = loss_of(module, index)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
        return module.eval()

    ours = run(64, lambda m, loss_of: _fit(m, loss_of, 64, steps=0, lr=1e-3, weight_decay=0.0, batch_size=8,
                                           epochs=5, seed=0))
    theirs = run(64, reference)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def _write(path, data: bytes):
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
@pytest.mark.parametrize("kind, head, expected", [
    ("checkpoint.pt", b"PK\x03\x04" + b"\0" * 60, r"PyTorch checkpoint.*dodo export .*checkpoint\.pt -o"),
    ("data.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 60, r"HDF5 file.*not an ONNX model package"),
])
def test_a_checkpoint_or_data_file_given_as_the_model_says_what_it_is(tmp_path, kind, head, expected):
    """The likeliest mistake after `dodo train`: `dodo.Closure("checkpoints/demo/best.pt")` (or
    `dodo score best.pt ...`) instead of the exported package. The runtime said "not an ONNX model
    (truncated or damaged file?)", which sends the user looking for damage."""
    path = _write(tmp_path / kind, head)
    with pytest.raises(RuntimeError, match=expected):
        dodo.Closure(path)


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_score_names_a_checkpoint_given_as_the_model(tmp_path, capsys):
    from dodo.cli import main

    checkpoint = _write(tmp_path / "best.pt", b"PK\x03\x04" + b"\0" * 60)
    data = os.path.join(os.path.dirname(__file__), "..", "data", "qke", "emu_1d_validation.h5")
    assert main(["score", checkpoint, data, "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err
    assert "PyTorch checkpoint" in err and "dodo export" in err


def test_readme_box3d_snippet_runs_as_written():
    """README, "Using Box3D from Python": the shapes and values its comments promise."""
    F_init = np.zeros((6, 4))
    F_init[0] = [1.0e33, 0, 0, 0.5e33]
    F_init[3] = [1.0e33, 0, 0, -0.5e33]
    u = [1.0, 0.0, 0.0, 0.0]
    result = dodo.box3d(F_init, u)
    assert result.F_box.shape == (6, 4)
    assert result.status == 0
    assert result.growth_over_ntot > 0 and result.growth_rate > 0
    assert dodo.invariants(F_init, u).shape == (27,)
    assert dodo.crossing_features(F_init, u).shape == (18,)
    assert dodo.comoving_density(F_init, u) == pytest.approx(2.0e33)


def test_sections_named_in_command_help_exist():
    """`dodo score --help` sent the reader to docs/training.md, 'Scoring', a section that did not
    exist. Every "docs/FILE.md, 'Section'" in a command's help must name a heading of that file."""
    import argparse
    import re

    from dodo.cli import build_parser

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in commands.choices.items():
        text = " ".join(sub.format_help().split())
        for doc, section in re.findall(r"(docs/[\w.]+\.md), ['\"]([^'\"]+)['\"]", text):
            with open(os.path.join(root, doc), encoding="utf-8") as handle:
                headings = [line.lstrip("#").strip() for line in handle if line.startswith("#")]
            assert any(section in heading for heading in headings), (name, doc, section)
            checked += 1
    assert checked >= 1


class _ClosedPipe:
    """A standard output whose reader went away (`dodo ... | head`)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_a_training_command_piped_into_head_ends_quietly(tmp_path, monkeypatch, capsys):
    """README, Reliability: a `dodo` command whose reader closes the pipe stops quietly, exit 141.
    `dodo evaluate CKPT --json - | head` said `dodo evaluate: error: [Errno 32] Broken pipe`, exit 2:
    the training commands' error handler took the BrokenPipeError for a file error."""
    pytest.importorskip("yaml")
    from dodo.cli import main

    config = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "training", "configs",
                                          "demo_synthetic.yaml"))
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: {config}\ntag: t\noutput_root: {tmp_path}\ngrid:\n  training.lr: [1.0e-3, 3.0e-3]\n")
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["study", str(grid), "--dry-run"]) == 141
    assert "Broken pipe" not in capsys.readouterr().err


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_dodo_apply_piped_into_head_ends_quietly(monkeypatch, capsys):
    """`dodo apply FILE | head -1` said `dodo apply: error: [Errno 32] Broken pipe`, exit 2."""
    pytest.importorskip("h5py")
    from dodo.cli import main

    data = os.path.join(os.path.dirname(__file__), "..", "data", "qke", "emu_1d_validation.h5")
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["apply", data, "--model", "box3d", "--grid", "2x2x2", "-q"]) == 141
    assert "Broken pipe" not in capsys.readouterr().err
