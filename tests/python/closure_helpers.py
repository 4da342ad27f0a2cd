"""Shared helpers of the closure-runtime tests (imported by test_closure*.py and test_capi_ctypes.py)."""
from __future__ import annotations

import numpy as np
import pytest

import dodo
from dodo._closure import runtime_available

if not runtime_available():
    pytest.skip("dodo was built without the closure runtime (no ONNX Runtime headers at build time)",
                allow_module_level=True)
onnx = pytest.importorskip("onnx", reason="writing test models needs the onnx package")

from dodo.training import synthetic_model as synthetic  # noqa: E402  (needs onnx)

CONSERVED_TOLERANCE = 1e-13   # in units of N_tot: rounding of a few dozen operations
FP32_TOLERANCE = 1e-5         # in units of N_tot: network evaluated in float32


def ntot(F: np.ndarray, u) -> np.ndarray:
    if u is None:
        return F[..., 0].sum(axis=-1)
    return -dodo.conventions.minkowski_dot(F, u[..., None, :]).sum(axis=-1)


def conservation_residual(F_pred: np.ndarray, F_init: np.ndarray, u) -> np.ndarray:
    """Largest violation per cell of the 11 conservation laws, in units of N_tot.

    Flavour sums hold in every frame; lepton number per flavour (dn_nu,f = dn_nubar,f) is a law
    for the comoving densities, so the change is taken to the fluid rest frame first.
    """
    dF = synthetic.boost_to_rest(u, F_pred - F_init)
    flavour_sums = np.abs(dF.reshape(-1, 2, 3, 4).sum(axis=2)).max(axis=(1, 2))
    lepton = np.abs(dF[:, :3, 0] - dF[:, 3:, 0]).max(axis=1)
    return np.maximum(flavour_sums, lepton) / ntot(F_init, u)


def realizability_margin_over_ntot(F: np.ndarray, u) -> np.ndarray:
    """min over species of (n - |F|) in the rest frame, in units of N_tot (>= 0: realizable)."""
    rest = synthetic.boost_to_rest(u, F)
    margin = rest[..., 0] - np.linalg.norm(rest[..., 1:], axis=-1)
    return margin.min(axis=-1) / ntot(F, u)


def write(path, head="equivariant", *, output_scale=0.02, hidden=(32, 32), seed=1, **kwargs):
    mlp = synthetic.SyntheticMLP.random(head, hidden=hidden, output_scale=output_scale, seed=seed)
    synthetic.write_model(path, mlp, **kwargs)
    return mlp


def save_resigned(model, path) -> None:
    """Saves an edited ONNX model with a fresh "dodo.content_sha256", as an exporter would: for
    tests of the checks behind the digest (opsets, shapes, self-test)."""
    path.write_bytes(dodo._core.with_content_digest(model.SerializeToString()))


def write_diagnostics_model(path, *, names=synthetic.DIAGNOSTIC_OUTPUTS, scale=0.3, bias=0.1, seed=1, **kwargs):
    """A package with the optional outputs `names` (scale 0: each the constant `bias`); its head
    equals that of write(path, seed=seed)."""
    mlp = synthetic.SyntheticMLP.random("equivariant", hidden=(32, 32), output_scale=0.02, seed=seed)
    mlp.with_diagnostics(names, scale=scale, bias=bias)
    synthetic.write_model(path, mlp, **kwargs)
    return mlp


def diagnostic_cells():
    """Moving cells with crossings, then one stable (isotropic) cell and three rejected ones."""
    F, u = synthetic.test_cells(96, seed=21)
    F[91, 2, 0] = np.nan                 # NONFINITE
    F[92, 4, 0] = -F[92, 4, 0]           # NEGATIVE_DENSITY
    F[93, 0, 1:] = 2.0 * F[93, 0, 0]     # FLUX_FACTOR
    rest_stable = np.zeros((6, 4))
    rest_stable[:, 0] = np.linspace(1.0, 2.0, 6) * 1e32
    F[90] = synthetic.boost_to_rest(u[90:91], rest_stable[None], sign=-1.0)[0]  # isotropic in the rest frame
    return F, u
