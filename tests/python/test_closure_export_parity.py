"""Parity along the whole chain: trained torch model == exported ONNX == C++ runtime == dodo.Closure.

A tiny model is trained on synthetic data and exported with `dodo export`; the runtime must pass
the package's own test vectors (written by the torch float64 closure) and agree with the torch
closure on fresh cells within fp32 tolerance, for both heads.
"""
from __future__ import annotations


import numpy as np
import pytest

from closure_helpers import CONSERVED_TOLERANCE, FP32_TOLERANCE, conservation_residual, ntot, synthetic

torch = pytest.importorskip("torch", reason="training and export need torch")

import dodo  # noqa: E402
from dodo.cli import main as dodo_main  # noqa: E402
from dodo._closure import Closure  # noqa: E402
from training_helpers import synth_and_preprocess, train  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from dodo.training.train import closure_from_checkpoint, load_checkpoint

    root = tmp_path_factory.mktemp("parity")
    data = synth_and_preprocess(root, 300, seed=5)
    packages = {}
    for head in ("equivariant", "direct"):
        checkpoint = train(root, data, head, model={"head": head}) / "best.pt"
        assert dodo_main(["export", str(checkpoint), "-o", str(root / f"{head}.onnx")]) == 0
        packages[head] = (root / f"{head}.onnx", closure_from_checkpoint(load_checkpoint(checkpoint)).network)
    return packages


@pytest.mark.parametrize("head", ["equivariant", "direct"])
def test_runtime_passes_the_exported_test_vectors(exported, head):
    runtime = Closure(exported[head][0], self_test=True)
    assert runtime.head == head
    assert runtime.self_test() < FP32_TOLERANCE


@pytest.mark.parametrize("head", ["equivariant", "direct"])
def test_runtime_matches_the_torch_closure_on_fresh_cells(exported, head):
    from dodo.training.export import closure_float64

    path, network = exported[head]
    F, u = synthetic.test_cells(200, seed=31)
    expected = closure_float64(network, F, u, dodo.box3d_settings(), flavour_images=True)["F_pred"]
    got = Closure(path, threads=2)(F, u)
    error = np.abs(got - np.asarray(expected)).max(axis=(1, 2)) / ntot(F, u)
    assert error.max() < FP32_TOLERANCE
    assert conservation_residual(got, F, u).max() < CONSERVED_TOLERANCE
