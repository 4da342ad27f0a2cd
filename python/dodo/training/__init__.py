"""Training side of Dodo (needs ``pip install ".[train]"`` in the repository): data, model, losses, loop, export.

Importing this package does not import torch; the submodules that need it do.
See docs/training.md for the pipeline (synth -> preprocess -> train -> evaluate -> export).
"""
