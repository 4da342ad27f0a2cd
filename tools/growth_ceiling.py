"""How well can any rotation-invariant growth rate match an Emu file's measured rates? (issue 10)

Each random Emu case was rotated so that the fastest-growing wavevector of a discrete search lies
along z and run in a 1D box along z (the file's `rotation_R` and `frame` attribute). Where that
search missed the fastest direction, the measured rate is that of a slower axis: a property of the
run's orientation against the search's grid, which no function of the rotation invariants (what
a closure sees) can know. This prints, per state, the fastest continuous growth along the run's
axis and along the fastest direction found by a finer search (the 24 axes of `dodo simulate`'s
search, then 150 random axes around the best), and the share of measured rates that the best
constant multiple of the fastest-direction box rate places within 10%: an upper bound for any
rotation-invariant predictor (the constant is fitted on the file itself, so the bound is generous).

    python tools/growth_ceiling.py tests/data/qke/emu_1d_validation.h5 [--states 32]

Report only: nothing here chooses a model setting. About 2 s per state on one core.
"""
from __future__ import annotations

import argparse

import numpy as np

from dodo.conventions import from_emu_layout
from dodo.qke.constants import SELF_INTERACTION_PER_DENSITY, SPEED_OF_LIGHT
from dodo.qke.directions import uniform_sphere
from dodo.qke.linear import box_growth_rate, fastest_wavevector, growth_rates, pair_lepton_numbers, unstable_candidates
from dodo.qke.states import FASTEST_K_TIMES_BOX_LENGTH, rotate_four_flux, rotation_to_z

SEARCH = uniform_sphere(12)  # the 54-direction set of the solver's own searches
K_OVER_MU = np.linspace(0.02, 1.0, 25)


def fastest_along(four_flux: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Fastest continuous growth rate (s^-1) along each axis over |k| (either sign of the axis)."""
    k_scale = SELF_INTERACTION_PER_DENSITY * four_flux[:, 0].sum() / SPEED_OF_LIGHT
    both = np.concatenate([axes, -axes])
    wavevectors = (K_OVER_MU[None, :, None] * k_scale * both[:, None, :]).reshape(-1, 3)
    candidates = unstable_candidates(pair_lepton_numbers(four_flux, SEARCH))
    rates = growth_rates(four_flux, SEARCH, wavevectors, candidates=candidates).reshape(len(both), -1).max(axis=1)
    return np.maximum(rates[:len(axes)], rates[len(axes):])


def fastest_direction(four_flux: np.ndarray, seed: int) -> np.ndarray:
    """The fastest-growing direction: the solver's 24-axis search, then 150 random axes around it."""
    _, wavevector = fastest_wavevector(four_flux, SEARCH, np.linspace(0.0, 1.0, 21), uniform_sphere(8))
    first = wavevector / np.linalg.norm(wavevector)
    around = first + 0.5 * np.random.default_rng(seed).normal(size=(150, 3))
    axes = np.concatenate([first[None], around / np.linalg.norm(around, axis=1, keepdims=True)])
    return axes[int(np.argmax(fastest_along(four_flux, axes)))]


def box_rate(four_flux: np.ndarray, axis: np.ndarray, ncell: int = 64) -> float:
    """Fastest box-mode rate with the box along ``axis`` and k L = 18 (the validation recipe)."""
    rotated = rotate_four_flux(four_flux, rotation_to_z(axis))
    _, k = fastest_wavevector(rotated, SEARCH, np.linspace(0.0, 1.0, 41), np.array([[0, 0, 1.0], [0, 0, -1.0]]))
    length = FASTEST_K_TIMES_BOX_LENGTH / float(np.linalg.norm(k))
    nearest = FASTEST_K_TIMES_BOX_LENGTH / (2 * np.pi)
    modes = np.arange(max(1, int(np.floor(0.5 * nearest))), min(ncell // 2, int(np.ceil(1.5 * nearest)) + 1) + 1)
    return box_growth_rate(rotated, uniform_sphere(16), length, ncell, modes=np.concatenate([modes, -modes]))[0]


def read_emu_run_file(path: str, states: int | None):
    """The first ``states`` rows of an Emu file's initial four-fluxes (Dodo's layout), measured growth
    rates and run rotations, or a ValueError naming the file and what is missing or malformed."""
    from dodo.emu_files import GROWTH, INITIAL, numeric_dataset, open_emu_file

    handle, _ = open_emu_file(path)  # checks the file (not a FIFO, a directory) and the Emu layout
    with handle:
        F = from_emu_layout(numeric_dataset(handle, path, INITIAL))[:states]
        for key in (GROWTH, "rotation_R"):
            if key not in handle:
                raise ValueError(f"{path}: no dataset '{key}'; give an Emu file of the validation recipe "
                                 "(e.g. tests/data/qke/emu_1d_validation.h5)")
        measured = numeric_dataset(handle, path, GROWTH)[:states]
        rotation = numeric_dataset(handle, path, "rotation_R")[:states]
    if measured.shape != F.shape[:1] or rotation.shape != (len(F), 3, 3):
        raise ValueError(f"{path}: '{GROWTH}' {measured.shape} and 'rotation_R' {rotation.shape} do not match "
                         f"{len(F)} states (expected ({len(F)},) and ({len(F)}, 3, 3))")
    return F, measured, rotation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("emu_file")
    parser.add_argument("--states", type=int, default=None, help="the first N states (default: all)")
    args = parser.parse_args()
    if args.states is not None and args.states < 1:  # a negative N sliced from the end without a word
        parser.error(f"--states must be >= 1; got {args.states}")
    try:  # a FIFO blocked for ever, another kind of file ended in a traceback (outside probe, round 26)
        F, measured, rotation = read_emu_run_file(args.emu_file, args.states)
    except ValueError as error:
        parser.error(str(error))
    along_run, best = [], []
    print("state  run axis / fastest direction (continuous rates)  measured / fastest-direction box rate")
    for i, four_flux in enumerate(F):
        simulated = rotate_four_flux(four_flux, rotation[i])  # the run's frame: its box along z
        direction = fastest_direction(simulated, seed=i)
        run_axis, fastest = fastest_along(simulated, np.array([[0.0, 0.0, 1.0], direction]))
        along_run.append(run_axis / fastest)
        best.append(box_rate(simulated, direction))
        print(f"{i:5d}  {along_run[-1]:.3f}  {measured[i] / best[-1]:.3f}", flush=True)
    along_run, ratio = np.array(along_run), measured / np.array(best)
    finite = np.isfinite(ratio) & (ratio > 0)
    constants = np.linspace(0.7, 1.2, 501)
    shares = [np.mean(np.abs(ratio[finite] / c - 1) <= 0.1) for c in constants]
    print(f"run axis / fastest direction: median {np.median(along_run):.3f}, below 0.9 on "
          f"{int(np.sum(along_run < 0.9))} of {len(along_run)} states")
    print(f"measured / fastest-direction box rate: median {np.median(ratio[finite]):.3f}, 10-90% "
          f"[{np.percentile(ratio[finite], 10):.3f}, {np.percentile(ratio[finite], 90):.3f}]; the best constant "
          f"({constants[int(np.argmax(shares))]:.3f}) puts {100 * max(shares):.0f}% of {int(finite.sum())} within 10%")


if __name__ == "__main__":
    main()
