"""Discrete momentum directions of the QKE solver (equal solid-angle weights).

The default set is the one Emu's initial-condition scripts call ``uniform_sphere(nphi)``
(Emu, Scripts/initial_conditions/initial_condition_tools.py; the construction follows
Deserno-style latitude rings, Exp. Math. 12, 2003, section 3.3): an equatorial ring of
``nphi`` directions, then rings at latitude steps ``pi sqrt(3) / nphi`` with
``round(nphi cos(theta))`` directions each, every ring paired with its antipodal ring.
Using exactly Emu's set lets the solver reproduce Emu's initial angular distribution.
nphi = 16 gives 92 directions, nphi = 12 gives 54, nphi = 8 gives 24.
"""
from __future__ import annotations

import numpy as np


def uniform_sphere(nphi_at_equator: int) -> np.ndarray:
    """Unit vectors ``[ndir, 3]`` of Emu's ``uniform_sphere`` set (equal weights 4 pi / ndir)."""
    if int(nphi_at_equator) != nphi_at_equator or nphi_at_equator < 1:
        raise ValueError(f"nphi_at_equator must be a positive integer; got {nphi_at_equator!r}")
    nphi_at_equator = int(nphi_at_equator)
    latitude_step = np.pi * np.sqrt(3.0) / nphi_at_equator
    directions = []
    latitude = 0.0
    while latitude < np.pi / 2:
        ring_size = nphi_at_equator if latitude == 0 else int(round(nphi_at_equator * np.cos(latitude)))
        if ring_size == 1:  # a single direction closes the ring at the pole
            latitude = np.pi / 2
        for iphi in range(ring_size):
            phi = 2.0 * np.pi * iphi / ring_size
            point = np.array([np.cos(latitude) * np.cos(phi), np.cos(latitude) * np.sin(phi), np.sin(latitude)])
            directions.append(point)
            if latitude > 0:
                directions.append(-point)
        latitude += latitude_step
    return np.array(directions)


def solid_angle_weights(directions: np.ndarray) -> np.ndarray:
    """Equal weights summing to 4 pi (the sets here are equal-area by construction)."""
    return np.full(len(directions), 4.0 * np.pi / len(directions))
