"""Pure boosts between the lab tetrad and the fluid rest frame (physics.md section 1), NumPy.

Box3D itself lives in the C++ core; these boosts are only the glue the training data and the
export's test vectors need (rest-frame targets, boosting the learned change back).
"""
from __future__ import annotations

import numpy as np


def _boost(F: np.ndarray, W: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pure boost with Lorentz factor W and 3-velocity v (broadcast over F[..., 4])."""
    v2 = np.sum(v * v, axis=-1)
    v_dot_F = np.einsum("...i,...i->...", v, F[..., 1:])
    out = np.empty(np.broadcast_shapes(F.shape, v.shape[:-1] + (4,)), dtype=np.result_type(F, v, np.float64))
    out[..., 0] = W * (F[..., 0] - v_dot_F)
    # (W - 1)/v^2 = W^2/(W + 1): the second form has no 0/0 at rest.
    coef = (W * W / (W + 1.0)) * v_dot_F - W * F[..., 0]
    out[..., 1:] = F[..., 1:] + coef[..., None] * v
    return out


def boost_to_rest(F: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Components of four-vectors F[..., 4] in the frame where u = (1, 0, 0, 0).

    ``u`` broadcasts against F's leading axes (for F[..., 6, 4] pass u[..., None, :]).
    """
    F = np.asarray(F, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    W = u[..., 0]
    return _boost(F, W, u[..., 1:] / W[..., None])


def boost_from_rest(F_rest: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`boost_to_rest` (the pure boost with velocity -v)."""
    F_rest = np.asarray(F_rest, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    W = u[..., 0]
    return _boost(F_rest, W, -u[..., 1:] / W[..., None])


def rest_velocity(shape: tuple) -> np.ndarray:
    """u = (1, 0, 0, 0) with leading shape ``shape``."""
    u = np.zeros(tuple(shape) + (4,))
    u[..., 0] = 1.0
    return u


def random_velocity(rng: np.random.Generator, n: int, max_speed: float = 0.5) -> np.ndarray:
    """n four-velocities with isotropic directions and speeds uniform in [0, max_speed)."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    speed = rng.uniform(0.0, max_speed, size=n)
    W = 1.0 / np.sqrt(1.0 - speed**2)
    return np.concatenate([W[:, None], (W * speed)[:, None] * direction], axis=1)
