"""Small synthetic training runs through the CLI, shared by the training, export, parity and
crash-safety tests: synth -> preprocess, and a training config written as JSON (JSON is YAML)."""
from __future__ import annotations

import json
from pathlib import Path

from dodo.cli import main as dodo_main


def synth_and_preprocess(root: Path, n: int, seed: int) -> Path:
    """A synthetic Emu-layout file of n cells, preprocessed; returns the preprocessed path."""
    assert dodo_main(["synth", "-o", str(root / "synth.h5"), "-n", str(n), "--seed", str(seed), "-q"]) == 0
    (root / "pp.yaml").write_text(f"inputs: [{root / 'synth.h5'}]\noutput: {root / 'pre.h5'}\n")
    assert dodo_main(["preprocess", "--config", str(root / "pp.yaml"), "-q"]) == 0
    return root / "pre.h5"


def write_training_config(path: Path, data_path: Path, out: Path, /, **sections) -> Path:
    """A small model's config; `sections` ({"model": {...}, ...}) update the defaults key by key.
    Results go to out/results, checkpoints to out/checkpoints."""
    config = {
        "data": {"path": str(data_path), "batch_size": 64},
        "model": {"head": "equivariant", "hidden_dim": 16, "n_blocks": 1},
        "training": {"epochs": 1, "lr": 3e-3, "threads": 1, "log_interval": 1000},
        "output": {"results_dir": str(out / "results"), "checkpoint_dir": str(out / "checkpoints")},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(json.dumps(config))
    return path


def train(root: Path, data_path: Path, name: str, /, **sections) -> Path:
    """Trains into root/name; returns its checkpoint directory."""
    config = write_training_config(root / f"{name}.yaml", data_path, root / name, **sections)
    assert dodo_main(["train", "--config", str(config)]) == 0
    return root / name / "checkpoints"
