"""The default model's distance gate as tests see it: d^2 / d2_max of cells from a package's own
initializers, and windows of cells that straddle d^2 = d2_max (physics-law probes, rounds twelve and
thirteen; tests/python/test_growth_distance_gate.py)."""
from __future__ import annotations

import numpy as np


def distance_ratio(package=None):
    """A function F (cells at rest, [n, 6, 4]) -> d^2 / d2_max of ``package``'s gate (default: the
    shipped default model), computed in float64 from its initializers on the distance's columns."""
    import onnx
    from onnx import numpy_helper

    from dodo.models import default_model_path
    from dodo.training.features import lab_features

    graph = onnx.load(str(default_model_path() if package is None else package))
    tensors = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.graph.initializer}
    mean, precision = tensors["ensemble.feature_mean"], tensors["ensemble.feature_precision"]
    d2_max = float(tensors["ensemble.d2_max"])
    features = {m.key: m.value for m in graph.metadata_props}["dodo.features"]

    def ratio(F):
        centred = lab_features(features, F)[:, :mean.size] - mean
        return np.einsum("ni,ij,nj->n", centred, precision, centred) / d2_max

    return ratio


def windows_across_the_gate(closure, ratio, near, far, pairs: int = 4, half_width: float = 1e-6,
                            points: int = 401):
    """For up to ``pairs`` lines from a crossing cell of ``near`` to one of ``far`` (d^2 > 2 d2_max),
    the ``points`` cells within ``half_width`` (in the line's parameter) of where the line crosses
    d^2 = d2_max, found to the doubles by bisection. Yields each window, which straddles the threshold."""
    near_crossing = np.flatnonzero(closure.apply(near).status == 0)[:pairs]
    far_crossing = np.flatnonzero((closure.apply(far).status == 0) & (ratio(far) > 2))[:pairs]
    for i, j in zip(near_crossing, far_crossing):
        def line(t):
            t = np.asarray(t, dtype=float)[:, None, None]
            return (1 - t) * near[i] + t * far[j]

        t = np.linspace(0, 1, 401)
        r = ratio(line(t))
        k = np.flatnonzero((r[:-1] - 1) * (r[1:] - 1) <= 0)
        if len(k) == 0 or t[k[0] + 1] >= 1:
            continue
        lo, hi = t[k[0]], t[k[0] + 1]
        for _ in range(60):  # d^2 = d2_max to the doubles
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (ratio(line([mid]))[0] - 1) * (r[k[0]] - 1) > 0 else (lo, mid)
        window = line(lo + np.linspace(-half_width, half_width, points))
        side = ratio(window)
        assert side.min() < 1 < side.max()
        yield window
