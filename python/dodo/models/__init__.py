"""Model packages shipped inside Dodo (ONNX files, format: docs/model_package.md).

The default model is the one :class:`dodo.Closure` loads when given ``model=None``.

Until a physically trained model exists, the default is ``synthetic_demo.onnx``: trained by the
recipe in training/models/README.md on SYNTHETIC data (Box3D plus a known smooth correction,
``dodo synth``). Its metadata says so (``dodo.training_data_kind = "synthetic"``). It carries no
physics beyond Box3D: on real Emu runs it is worse than Box3D alone (training/models/README.md).
``synthetic-test-equivariant.onnx`` is a random-weight test model for the runtime's own tests
(regenerate with ``python -m dodo.models.synthetic``).
"""
from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent

#: File name (in this directory) of the model used when no model is given.
DEFAULT_MODEL_NAME = "synthetic_demo.onnx"
#: Random-weight model for the runtime's tests and fuzzers (``python -m dodo.models.synthetic``).
TEST_MODEL_NAME = "synthetic-test-equivariant.onnx"


def default_model_path() -> Path:
    """Path of the default model package shipped with Dodo."""
    return MODELS_DIR / DEFAULT_MODEL_NAME


def available_models() -> list[str]:
    """File names of the model packages shipped with Dodo."""
    return sorted(path.name for path in MODELS_DIR.glob("*.onnx"))
