"""Model packages shipped inside Dodo (ONNX files, format: docs/model_package.md).

The default model is the one :class:`dodo.Closure` loads when given ``model=None``:
``qke_default.onnx``, trained on Dodo's own fast-flavour QKE-solver data (data/qke: 61,257
random ELN-crossing training states of three families, in their flavour images; recipe, record and
figures in training/models/README.md). Its metadata says so (``dodo.training_data_kind = "qke"``).
On 32 real Emu runs it never saw (emu_1d_validation.h5) it misses the asymptotic densities by
0.00247 N_tot against Box3D's 0.00649 (training/models/README.md has the table and its intervals).
``synthetic-test-equivariant.onnx`` is a random-weight test model for the runtime's own tests
(regenerate with ``python -m dodo.training.synthetic_model``, training side).
"""
from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent

#: File name (in this directory) of the model used when no model is given.
DEFAULT_MODEL_NAME = "qke_default.onnx"
#: Random-weight model for the runtime's tests and fuzzers (``python -m dodo.training.synthetic_model``).
TEST_MODEL_NAME = "synthetic-test-equivariant.onnx"


def default_model_path() -> Path:
    """Path of the default model package shipped with Dodo."""
    return MODELS_DIR / DEFAULT_MODEL_NAME


def available_models() -> list[str]:
    """File names of the model packages shipped with Dodo."""
    return sorted(path.name for path in MODELS_DIR.glob("*.onnx"))
