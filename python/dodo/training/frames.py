"""Frames for the training glue: the core's boosts (dodo.boost_to_rest / boost_from_rest) and
helpers that make four-velocities (physics.md section 1)."""
from __future__ import annotations

import numpy as np

from dodo import boost_from_rest, boost_to_rest  # noqa: F401  (the C++ core's boosts, re-exported)


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
