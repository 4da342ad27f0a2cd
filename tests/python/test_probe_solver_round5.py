"""Solver probe, round five (outside probe of `dodo simulate` and `python -m dodo.qke.validate`, as an
astrophysicist making their own ground truth uses them; /work/notes/solver_probe_round5_section.md).
Each test of a fix failed against the code before it (its docstring says what that code did); the
others pin laws that held. Tiny runs: 16 cells x 24 directions, one to three states."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_probe_solver_round3 import _run_cli

TINY = ["--ncell", "16", "--nphi", "8", "-q"]


def _database(path) -> tuple[dict, dict]:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


def _emu_to_dodo(f4: np.ndarray) -> np.ndarray:
    """Emu's F4 [n, 4 (x, y, z, t), 2, 3] -> [n, 6, 4 (n, Fx, Fy, Fz)]."""
    return np.transpose(f4, (0, 2, 3, 1))[..., [3, 0, 1, 2]].reshape(len(f4), 6, 4)


@pytest.mark.parametrize("family", ["three_flavour", "emu", None])
def test_source_heavy_equal_says_whether_mu_equals_tau_in_the_states(tmp_path, family):
    """`source.heavy_equal` of a random campaign was `not --three-flavour`: `--family three_flavour`,
    whose every state has mu != tau, recorded "heavy_equal": true (and so did `--family merger`, about
    half of whose states have mu != tau). Now it is read off the states themselves: true exactly when
    nu_mu = nu_tau and nubar_mu = nubar_tau in every state."""
    out = tmp_path / "labels.h5"
    chosen = ["--family", family] if family else ["--three-flavour"]
    assert _run_cli(["simulate", str(out), "--random", "3", "--seed", "3", *chosen, *TINY, "--linear-only"]) == 0
    rows, attrs = _database(out)
    states = _emu_to_dodo(rows["F4_initial(1|ccm)"])
    mu_equals_tau = bool(np.array_equal(states[:, [1, 4]], states[:, [2, 5]]))
    assert mu_equals_tau == (family == "emu")
    assert json.loads(attrs["source"])["heavy_equal"] is mu_equals_tau, attrs["source"]


def _history(t: np.ndarray, wiggle: bool) -> np.ndarray:
    """Grows 1e-6 -> 1 by t = 10, oscillates about 1 to 20, falls to 1e-5 by 25 (with a small local maximum, 3e-4,
    at t = 24 when ``wiggle``), grows again to 0.5 by 32 and oscillates about it."""
    m = np.empty_like(t)
    for i, x in enumerate(t):
        if x <= 10:
            m[i] = 1e-6 * 1e6 ** (x / 10)
        elif x <= 20:
            m[i] = 1.0 + 0.1 * np.sin(3.0 * x)
        elif x <= 25:
            m[i] = 1e-5 ** ((x - 20) / 5)
        elif x <= 32:
            m[i] = 1e-5 * (0.5 / 1e-5) ** ((x - 25) / 7)
        else:
            m[i] = 0.5 + 0.05 * np.sin(3.0 * x)
    if wiggle:
        m[np.argmin(np.abs(t - 24.0))] *= 3.0
    return m


def test_saturation_index_keeps_the_last_three_decade_pair_of_maxima_as_documented():
    """docs/qke.md and asymptotic.py's docstrings said t_sat is at the *first* >= 3-decade jump between local
    maxima; the code (Rhea's loop) keeps the *last* qualifying pair of consecutive maxima, a fall counting as
    a rise. The documents now say so; this pins the documented rule on a history that saturates, falls,
    and grows again: with a local maximum in the fall t_sat moves to the second peak, without it stays at
    the first."""
    from dodo.qke.asymptotic import saturation_index

    t = np.linspace(0.0, 40.0, 401)
    smooth, wiggled = _history(t, False), _history(t, True)
    first = t[saturation_index(smooth)]
    assert 10.0 <= first <= 20.0, first
    assert t[saturation_index(wiggled)] >= 32.0, t[saturation_index(wiggled)]
