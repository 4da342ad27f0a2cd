"""Where initial states come from: random ELN-crossing moments, files, and box orientation."""
from __future__ import annotations

import numpy as np

from ..conventions import from_emu_layout, total_density
from .directions import uniform_sphere
from .constants import SELF_INTERACTION_PER_DENSITY, SPEED_OF_LIGHT
from .linear import (box_growth_rate, fastest_wavevector, growth_rates,
                     pair_lepton_numbers, refine_fastest_wavevector, unstable_candidates)

#: Emu validation recipe: the fastest |k| sits at 4.5 cm^-1 in a 4 cm box, i.e. k L = 18.
FASTEST_K_TIMES_BOX_LENGTH = 18.0
#: Default run length in units of the inverse linear box growth rate (Emu validation recipe).
END_TIME_GROWTH_TIMES = 80.0
#: A given end time (``--use-input-end-time``) longer than this many growth times (1 / the linear
#: box growth rate, 125 times the default) is refused for its state: 1e300 s, or end times in
#: nanoseconds taken as seconds, would integrate for ever.
MAX_END_TIME_GROWTH_TIMES = 1e4
#: How ``axis="fastest"`` finds the axis, recorded in the settings of every run and label file
#: (a chunk begun with the earlier 24-axis search does not resume with this one).
AXIS_SEARCH = "24 axes, then pattern search (refine_fastest_wavevector)"
#: Emu's validation recipe's own axis search (``axis="emu"``): the fastest of the 38 directions of
#: uniform_sphere(10). Read off the recipe, not fitted: every box axis of emu_1d_validation.h5
#: (its rotation_R) is one of these directions to rounding, and no other uniform_sphere set from 2
#: to 39 holds them all (docs/dataset.md, "Emu's axis search").
EMU_SEARCH_AXES_NPHI = 10
EMU_AXIS_SEARCH = "Emu's validation search: the fastest of uniform_sphere(10)'s 38 directions, no refinement"
#: The NSM1 point as Emu's 1D reference runs start from it (F4_initial of emu_nsm1_1d.h5, row 0,
#: Emu's discrete moments) in Dodo's layout [6 species, (t,x,y,z)], cm^-3; box 4 cm, end 1.2e-9 s.
NSM1_EMU_1D = np.array([
    [1.42195423e33, 1.39657e32, 6.04436e31, -1.88104e32],
    [4.91135197e32, -1.07252e31, 3.68151e31, -2.60504e32],
    [4.91135197e32, -1.07252e31, 3.68151e31, -2.60504e32],
    [1.91462371e33, 1.39738e32, 6.04844e31, -6.51290e32],
    [4.91135197e32, -1.07252e31, 3.68151e31, -2.60504e32],
    [4.91135197e32, -1.07252e31, 3.68151e31, -2.60504e32]])
#: Largest ``count`` of random states one call draws (~190 bytes each in memory; far beyond what one
#: run can simulate: the data/qke campaign holds 36,000): a mistyped 10^12 is refused, not drawn for ever.
MAX_RANDOM_STATES = 10_000_000
#: Draws allowed per state asked for (at least the functions' max_tries): room for families whose
#: states cross rarely (the emu family: 2 in 3) without drawing for ever where none crosses.
TRIES_PER_STATE = 20
#: A pair crosses when both signed parts of its lepton-number difference exceed this (in N_tot).
MIN_CROSSING_FRACTION = 1e-3
#: Draws after which a draw that has found no crossing state at all stops: `dodo simulate --random 2
#: --max-flux-factor 0.001` (states too near isotropy ever to cross by MIN_CROSSING_FRACTION) drew
#: 100,000 states, about 10 minutes without a line, then said "found only 0 crossing states"
#: (outside probe, round 27). Every family crosses in about 2 draws of 3, so none stops here.
DRAWS_BEFORE_GIVING_UP = 2000


def _crossing_states(count: int, draw, max_flux_factor: float, total_density: float,
                     directions: np.ndarray | None, max_tries: int) -> np.ndarray:
    """``count`` states ``[count, 6, 4]`` from ``draw()`` (one state per call, any scale), each
    scaled to ``total_density`` cm^-3, keeping only those that cross (_crossing)."""
    if count < 0:
        raise ValueError("count must be non-negative")
    if count > MAX_RANDOM_STATES:
        raise ValueError(f"at most {MAX_RANDOM_STATES:,} random states per run (asked for {count:,}): "
                         "split the campaign into runs with other seeds")
    if not (0 < max_flux_factor <= 0.95):
        raise ValueError("max_flux_factor must be in (0, 0.95]")
    directions = uniform_sphere(16) if directions is None else directions
    # The draws allowed grow with the count: about 2 in 3 random states cross, so a fixed 100,000
    # draws stopped `--random 100000` (docs/qke.md's SLURM example) with "found only ~66,000".
    # The draws stop at `count` crossing states, so the states of a smaller count are unchanged.
    max_tries = max(max_tries, TRIES_PER_STATE * count)
    states = []
    for tries in range(max_tries):
        if len(states) == count:
            break
        if tries == DRAWS_BEFORE_GIVING_UP and not states:
            raise ValueError(f"no crossing state in the first {tries:,} draws with flux factors below "
                             f"{max_flux_factor:g}: states this near isotropy have no ELN crossing of more than "
                             f"{MIN_CROSSING_FRACTION:g} N_tot; raise the largest flux factor (--max-flux-factor)")
        state = draw()
        state *= total_density / state[:, 0].sum()
        if _crossing(state, directions):
            states.append(state)
    if len(states) < count:
        raise ValueError(f"found only {len(states)} crossing states in {max_tries} draws with flux factors below "
                         f"{max_flux_factor:g}; a larger flux factor (--max-flux-factor) crosses more often")
    return np.array(states).reshape(count, 6, 4)


def random_crossing_states(count: int, rng: np.random.Generator, max_flux_factor: float = 0.8,
                           heavy_equal: bool = True, total_density: float = 1e33,
                           directions: np.ndarray | None = None, max_tries: int = 100000) -> np.ndarray:
    """``count`` random four-fluxes ``[count, 6, 4]`` whose e-x lepton number crosses in angle.

    Densities uniform on the simplex (then scaled to ``total_density`` cm^-3), flux directions
    isotropic, flux factors uniform in [0, max_flux_factor). With ``heavy_equal`` the four heavy
    species are identical (as in Emu's random campaigns), so mu = tau and nu_x = nubar_x.
    """
    def draw() -> np.ndarray:
        independent = 3 if heavy_equal else 6
        weights = rng.dirichlet(np.ones(independent))
        flux_dir = rng.normal(size=(independent, 3))
        flux_dir /= np.linalg.norm(flux_dir, axis=1, keepdims=True)
        flux = weights[:, None] * rng.uniform(0, max_flux_factor, size=(independent, 1)) * flux_dir
        species = np.concatenate([weights[:, None], flux], axis=1)
        if heavy_equal:  # nu_e, nubar_e, one heavy species repeated 4 times, then normalise
            heavy = species[2]
            state = np.stack([species[0], heavy, heavy, species[1], heavy, heavy])
        else:
            state = species
        return state

    return _crossing_states(count, draw, max_flux_factor, total_density, directions, max_tries)


#: Families of random initial states for data campaigns (docs/dataset.md has the recipes).
STATE_FAMILIES = ("emu", "three_flavour", "merger")
#: Largest flux factor of each family (the emu family matches emu_1d_validation.h5's recipe:
#: its 32 states reach flux factors of 0.89).
FAMILY_MAX_FLUX_FACTOR = {"emu": 0.9, "three_flavour": 0.9, "merger": 0.95}


def _crossing(state: np.ndarray, directions: np.ndarray) -> bool:
    """Whether any flavour pair's lepton number changes sign in angle (both parts > 1e-3 N_tot)."""
    total = state[:, 0].sum()
    lepton = pair_lepton_numbers(state, directions)
    positive = np.clip(lepton, 0, None).sum(axis=1) / total
    negative = np.clip(-lepton, 0, None).sum(axis=1) / total
    return bool(np.any(np.minimum(positive, negative) > MIN_CROSSING_FRACTION))


def _random_unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def merger_like_states(count: int, rng: np.random.Generator, max_flux_factor: float = 0.95,
                       total_density: float = 1e33, directions: np.ndarray | None = None,
                       max_tries: int = 200000) -> np.ndarray:
    """``count`` ELN-crossing states ``[count, 6, 4]`` shaped like a neutron-star-merger remnant's.

    Fluxes roughly aligned (each species' flux within 45 degrees of a common random axis), the
    medium nubar_e-rich (n_nubar_e / n_nu_e in [1, 2.5]), heavy-lepton species less abundant
    (each heavy species 0.05-0.6 of n_nu_e) and more forward-peaked (they decouple deeper):
    flux factors nu_e U(0, 0.5), nubar_e U(0.05, 0.7), heavy U(0.1, max_flux_factor); mu and tau
    drawn independently with probability 1/2 (else identical), as are nu_x and nubar_x.
    """
    def draw() -> np.ndarray:
        axis = _random_unit_vectors(rng, 1)[0]
        heavy_independent = rng.random() < 0.5
        n_e = 1.0
        n_ebar = rng.uniform(1.0, 2.5)
        nheavy = 4 if heavy_independent else 1
        n_heavy = rng.uniform(0.05, 0.6, size=nheavy)
        ff_heavy = rng.uniform(0.1, max_flux_factor, size=nheavy)
        densities = [n_e, n_ebar, *n_heavy]
        factors = [rng.uniform(0.0, 0.5), rng.uniform(0.05, min(0.7, max_flux_factor)), *ff_heavy]
        fluxes = []
        for density, factor in zip(densities, factors):
            # Direction: the common axis tilted by up to 45 degrees (|tilt| <= 0.7).
            tilt = axis + 0.7 * rng.uniform(0, 1) * _random_unit_vectors(rng, 1)[0]
            fluxes.append(density * factor * tilt / np.linalg.norm(tilt))
        rows = [np.concatenate([[d], f]) for d, f in zip(densities, fluxes)]
        if heavy_independent:  # nu_mu, nu_tau, nubar_mu, nubar_tau all different
            state = np.stack([rows[0], rows[2], rows[3], rows[1], rows[4], rows[5]])
        else:
            state = np.stack([rows[0], rows[2], rows[2], rows[1], rows[2], rows[2]])
        return state

    return _crossing_states(count, draw, max_flux_factor, total_density, directions, max_tries)


def heavy_species_equal(four_flux: np.ndarray) -> bool:
    """Whether mu and tau are the same in every state (nu_mu = nu_tau and nubar_mu = nubar_tau, exactly):
    the ``heavy_equal`` of a database's ``source``. [n, 6, 4] in Dodo's species order."""
    four_flux = np.asarray(four_flux, float).reshape(-1, 6, 4)
    return bool(np.array_equal(four_flux[:, [1, 4]], four_flux[:, [2, 5]]))


def family_states(family: str, count: int, rng: np.random.Generator,
                  max_flux_factor: float | None = None) -> np.ndarray:
    """Random crossing states of one campaign family ("emu", "three_flavour", "merger")."""
    if family not in STATE_FAMILIES:
        raise ValueError(f"family must be one of {STATE_FAMILIES}; got {family!r}")
    limit = FAMILY_MAX_FLUX_FACTOR[family] if max_flux_factor is None else max_flux_factor
    if family == "merger":
        return merger_like_states(count, rng, max_flux_factor=limit)
    return random_crossing_states(count, rng, max_flux_factor=limit, heavy_equal=(family == "emu"))


def homogeneous_reason(rate: float, where: str = "") -> str:
    """Why a state whose fastest growth (``where``) is the homogeneous mode gets no box: the recipe's
    length k L = 18 needs the fastest k to be non-zero."""
    return (f"its fastest growth {where}is the homogeneous mode (k = 0, {rate:.3g} s^-1): the box recipe "
            "(length k L = 18 for the fastest k) needs a fastest k > 0")


def rotation_to_z(axis: np.ndarray) -> np.ndarray:
    """Rotation matrix R with R axis_hat = z_hat (Rodrigues' formula; identity for axis = z)."""
    axis = np.asarray(axis, float)
    length = float(np.linalg.norm(axis)) if axis.shape == (3,) else float("nan")
    if not (np.isfinite(length) and length > 0):  # a zero axis made a NaN matrix (and a RuntimeWarning)
        raise ValueError(f"box axis must be a finite non-zero 3-vector; got {axis!r}")
    axis = axis / length
    z = np.array([0.0, 0.0, 1.0])
    cross, cosine = np.cross(axis, z), float(axis @ z)
    if np.linalg.norm(cross) < 1e-14:
        return np.eye(3) if cosine > 0 else np.diag([1.0, -1.0, -1.0])
    skew = np.array([[0, -cross[2], cross[1]], [cross[2], 0, -cross[0]], [-cross[1], cross[0], 0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + cosine)


def rotate_four_flux(four_flux: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Apply R to the spatial part of ``[..., 6, 4]`` four-fluxes (F_sim = R F)."""
    out = np.array(four_flux, dtype=float, copy=True)
    out[..., 1:] = np.einsum("...ij,...sj->...si", rotation, out[..., 1:])
    return out


def box_setup(four_flux: np.ndarray, directions: np.ndarray, ncell: int, axis: str = "fastest",
              box_length_cm: float | None = None, end_time_s: float | None = None,
              start_axis: np.ndarray | None = None):
    """Rotation, box length (cm) and end time (s) for one state ``[6, 4]`` (original frame).

    axis: "fastest" (the fastest-growing wavevector of the linear problem, refined), "emu" (the
    fastest of the 38 directions Emu's validation set searched: its runs' axes, whose rates
    the issue's growth target measures), or "x", "y", "z". Box length defaults to k L = 18 for the fastest k along the axis;
    end time to 80 / (linear growth rate of the box modes). Returns (R, L, t_end, linear_rate).
    ``start_axis`` (with "fastest"): refine from this axis (e.g. an earlier run's box axis, the
    best of the same coarse search) instead of searching the 24 coarse axes first.
    """
    four_flux = np.asarray(four_flux, float)
    # The searches only need rough answers: on more than 54 directions, search on Emu's
    # 54-direction set (eigenproblems ~5x cheaper than on 92 directions).
    search_directions = uniform_sphere(12) if len(directions) > 54 else directions
    if axis == "fastest":
        rate = 0.0
        if start_axis is not None:  # the fastest |k| along the given axis (either sign), then the refinement
            start_axis = np.asarray(start_axis, float)
            if start_axis.shape != (3,) or not np.all(np.isfinite(start_axis)) or not np.linalg.norm(start_axis) > 0:
                raise ValueError(f"start axis must be a finite non-zero 3-vector; got {start_axis!r}")
            unit = start_axis / np.linalg.norm(start_axis)
            rate, wavevector = fastest_wavevector(four_flux, search_directions, np.linspace(0.0, 1.0, 21),
                                                  np.array([unit, -unit]))
        if rate <= 0:  # no start axis, or one without growth: the 24 candidate axes
            rate, wavevector = fastest_wavevector(four_flux, search_directions, np.linspace(0.0, 1.0, 21),
                                                  uniform_sphere(8))
        if rate <= 0:
            raise ValueError("state is linearly stable: nothing to simulate")
        # The 24 axes alone left the box on a slower axis than Emu's search does (a quarter or
        # more of the rate lost on about one state in six; docs/qke.md, "Axis").
        _, refined = refine_fastest_wavevector(four_flux, search_directions, wavevector)
        if not np.linalg.norm(refined) > 0:  # no unstable pair for the refinement: the coarse axis
            refined = wavevector
        try:
            return _box_along(four_flux, rotation_to_z(refined), directions, search_directions, ncell, box_length_cm,
                              end_time_s)
        except ValueError:
            if not np.linalg.norm(wavevector) > 0:
                # Was dropped as "box axis must be a finite non-zero 3-vector; got array([0., 0., 0.])"
                # (older versions: "densities and fluxes must be finite"; outside probe, solver round 3).
                raise ValueError(homogeneous_reason(rate)) from None
            # The refined peak without an unstable box mode (seen only on coarse direction sets,
            # where it is the set's own narrow mode): the coarse axis, as before the refinement.
            return _box_along(four_flux, rotation_to_z(wavevector), directions, search_directions, ncell,
                              box_length_cm, end_time_s)
    if axis == "emu":
        rate, wavevector = emu_search_wavevector(four_flux, directions, search_directions)
        if rate <= 0:
            raise ValueError("state is linearly stable: nothing to simulate")
        if not np.linalg.norm(wavevector) > 0:
            raise ValueError(homogeneous_reason(rate))
        return _box_along(four_flux, rotation_to_z(wavevector), directions, search_directions, ncell, box_length_cm,
                          end_time_s)
    if axis not in ("x", "y", "z"):
        raise ValueError(f"axis must be 'fastest', 'emu', 'x', 'y' or 'z'; got {axis!r}")
    return _box_along(four_flux, rotation_to_z(np.eye(3)["xyz".index(axis)]), directions, search_directions, ncell,
                      box_length_cm, end_time_s)


def emu_search_wavevector(four_flux: np.ndarray, directions: np.ndarray,
                          search_directions: np.ndarray) -> tuple[float, np.ndarray]:
    """Fastest growth rate and wavevector over the 38 axes of Emu's validation search.

    The axes are scanned on the cheap search set (11 magnitudes each, then a golden-section search
    of |k| on the three best); those three are compared on the run's own direction set, as Emu's
    search compared them on its 92 beams: on the 54-direction set alone two of the 32 axes of
    emu_1d_validation.h5 came out otherwise, on the 92 none (docs/dataset.md, "Emu's axis search")."""
    four_flux = np.asarray(four_flux, float)
    axes = uniform_sphere(EMU_SEARCH_AXES_NPHI)
    grid = np.linspace(0.0, 1.0, 11)
    k_scale = SELF_INTERACTION_PER_DENSITY * four_flux[:, 0].sum() / SPEED_OF_LIGHT
    wavevectors = (grid[None, :, None] * k_scale * axes[:, None, :]).reshape(-1, 3)
    candidates = unstable_candidates(pair_lepton_numbers(four_flux, search_directions))
    per_axis = growth_rates(four_flux, search_directions, wavevectors, candidates=candidates).reshape(len(axes), -1)
    three_best = np.argsort(-per_axis.max(axis=1))[:3]
    found = [fastest_wavevector(four_flux, search_directions, grid, axes[i:i + 1]) for i in three_best]
    found = [(rate, k) for rate, k in found if rate > 0]
    if not found:
        return 0.0, np.zeros(3)
    if len(directions) == len(search_directions) and np.array_equal(directions, search_directions):
        return max(found, key=lambda pair: pair[0])
    # Each finalist on the run's own set at its |k| and 5% either side.
    run_candidates = unstable_candidates(pair_lepton_numbers(four_flux, directions))
    trial = np.concatenate([np.outer([0.95, 1.0, 1.05], k) for _, k in found])
    rates = growth_rates(four_flux, directions, trial, candidates=run_candidates)
    best = int(np.argmax(rates))
    return float(rates[best]), trial[best]


def _box_along(four_flux, rotation, directions, search_directions, ncell, box_length_cm, end_time_s):
    """box_setup's result for the box along ``rotation``'s z axis."""
    rotated = rotate_four_flux(four_flux, rotation)
    # Fastest |k| along the box axis (either sign), on the cheaper search set.
    along_axis = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    rate_along, k_fastest = fastest_wavevector(rotated, search_directions, np.linspace(0.0, 1.0, 41), along_axis)
    k_fastest = float(np.linalg.norm(k_fastest))
    if k_fastest == 0:
        # "no unstable mode along the box axis" was said also of growth at k = 0 (solver round 3).
        raise ValueError("no unstable mode along the box axis" if not rate_along > 0 else
                         homogeneous_reason(rate_along, "along the box axis "))
    if box_length_cm is None:
        box_length_cm = FASTEST_K_TIMES_BOX_LENGTH / k_fastest
    # A given box so small that its modes' rates overflow (c 2 pi n / L = inf): refused in words, not
    # as linalg's "Array must not contain infs or NaNs" after a RuntimeWarning (round eighteen).
    if not np.isfinite(SPEED_OF_LIGHT * 2 * np.pi * (ncell // 2) / box_length_cm):
        raise ValueError(f"box length {box_length_cm:g} cm is too small: its modes' wavenumbers 2 pi n / L overflow "
                         f"(the fastest mode has |k| = {k_fastest:.3g} cm^-1: k L = 18 gives "
                         f"{FASTEST_K_TIMES_BOX_LENGTH / k_fastest:.3g} cm)")
    # Box modes near the fastest k, on the solver's own direction set. Clipped to the grid's modes
    # before int(): in a box many times the fastest wavelength (--box-length 1e30) nearest is
    # ~1e30 or inf, and np.arange of such ints raised "Maximum allowed size exceeded" (round
    # eighteen); with no candidate left, box_growth_rate tries all the box's modes, as it did for
    # boxes long enough to leave none near the fastest k.
    nearest = k_fastest * box_length_cm / (2 * np.pi)
    half = ncell // 2
    lowest = int(min(max(1.0, np.floor(0.5 * nearest)), half + 1))
    highest = int(min(float(half), np.ceil(1.5 * nearest) + 1))
    candidates = np.arange(lowest, highest + 1)
    linear_rate, _ = box_growth_rate(rotated, directions, box_length_cm, ncell, modes=np.concatenate([candidates, -candidates]))
    if linear_rate <= 0:
        raise ValueError("no unstable box mode: nothing to simulate")
    if end_time_s is None:
        end_time_s = END_TIME_GROWTH_TIMES / linear_rate
    elif not end_time_s * linear_rate <= MAX_END_TIME_GROWTH_TIMES:
        raise ValueError(f"its end time {end_time_s:g} s is {end_time_s * linear_rate:.3g} growth times of its fastest box "
                         f"mode (1/rate = {1 / linear_rate:.3g} s; the default end time is {END_TIME_GROWTH_TIMES:g} of them, "
                         f"at most {MAX_END_TIME_GROWTH_TIMES:g} are run): is tend(s) in seconds?")
    return rotation, float(box_length_cm), float(end_time_s), float(linear_rate)


def _refuse_yaml_non_numbers(path: str, states) -> None:
    """A ValueError naming the states of a YAML ``states`` list that hold a boolean or an empty entry.

    YAML reads ``yes``, ``no``, ``on``, ``off``, ``true`` and ``false`` as booleans, which became
    densities 1 and 0 without a word (an HDF5 input of booleans is refused), and ``~``, ``null`` or an
    empty entry as null, refused as "non-finite (NaN or Inf)" (solver probe, round three). Text stays
    accepted: YAML 1.1 reads ``1e33`` and ``1.0e33`` (no sign in the exponent) as text."""
    if not isinstance(states, list):
        return
    found = {"a boolean (YAML reads yes, no, on, off, true and false as booleans)": [],
             "an empty entry (null, ~ or nothing)": []}

    def holds(value, kind) -> bool:
        if isinstance(value, (list, tuple)):
            return any(holds(item, kind) for item in value)
        return isinstance(value, bool) if kind == 0 else value is None

    for index, state in enumerate(states):
        for kind, what in enumerate(found):
            if holds(state, kind):
                found[what].append(index)
    problems = [f"{what} in state(s) {indices[:10]}{f' and {len(indices) - 10} more' if len(indices) > 10 else ''}"
                for what, indices in found.items() if indices]
    if problems:
        raise ValueError(f"{path}: 'states' holds {'; and '.join(problems)}, where a number belongs: give every "
                         "[n, Fx, Fy, Fz] entry as a number (cm^-3)")


def check_rotations(rotation: np.ndarray, count: int, what: str) -> None:
    """``rotation`` must be ``count`` proper rotations [count, 3, 3] (R R^T = 1 and det R = 1 to 1e-9):
    a scaled or skewed matrix would change the fluxes it rotates (and break the run's conservation)."""
    rotation = np.asarray(rotation, float)
    if rotation.shape != (count, 3, 3):
        raise ValueError(f"{what} must have shape [{count}, 3, 3] (one rotation per state); got {rotation.shape}")
    if not np.all(np.isfinite(rotation)):
        raise ValueError(f"{what} holds non-finite values")
    orthogonality = np.abs(np.einsum("nij,nkj->nik", rotation, rotation) - np.eye(3)).max(axis=(1, 2))
    determinant = np.linalg.det(rotation)
    bad = np.flatnonzero((orthogonality > 1e-9) | (np.abs(determinant - 1.0) > 1e-9))
    if len(bad):
        raise ValueError(f"{what}: matrix {bad[0]} (and {len(bad) - 1} more) is not a proper rotation "
                         f"(|R R^T - 1| = {orthogonality[bad[0]]:.2g}, det R = {determinant[bad[0]]:.6g})")


#: A ``rotation_R`` stored as float32 is a rotation to float32's precision only (|R R^T - 1| ~ 1e-7, above
#: check_rotations' 1e-9): within this many float32 epsilons it is read as the nearest proper rotation.
FLOAT32_ROTATION_EPSILONS = 16


def _rotations_of_stored_precision(rotation: np.ndarray, stored: np.dtype) -> np.ndarray:
    """``rotation`` (read as float64) as the nearest proper rotations (polar decomposition, U V^T of its
    SVD) where the dataset stored float32 and each matrix is a proper rotation to that precision; else
    unchanged (check_rotations then judges it at 1e-9 and names what is wrong). A float32 copy of a
    rotation was refused as "not a proper rotation (|R R^T - 1| = 3.5e-08, det R = 1)" (outside probe,
    round 40); applied as read, its rounding would break the run's conservation by ~1e-7."""
    if (np.dtype(stored) != np.float32 or rotation.ndim != 3 or rotation.shape[1:] != (3, 3)
            or not np.all(np.isfinite(rotation))):
        return rotation
    tolerance = FLOAT32_ROTATION_EPSILONS * float(np.finfo(np.float32).eps)
    orthogonality = np.abs(np.einsum("nij,nkj->nik", rotation, rotation) - np.eye(3)).max(axis=(1, 2), initial=0.0)
    if not (np.all(orthogonality <= tolerance) and np.all(np.abs(np.linalg.det(rotation) - 1.0) <= tolerance)):
        return rotation
    left, _, right = np.linalg.svd(rotation)
    return left @ right


def _is_hdf5(path: str) -> bool:
    """Whether the regular file at ``path`` carries HDF5's signature (h5py.is_hdf5: at byte 0, or after a
    user block); False where it cannot be read (the reader then says why)."""
    try:
        import h5py

        return bool(h5py.is_hdf5(path))
    except (ImportError, OSError, ValueError):
        return False


def read_states(path: str) -> dict:
    """Initial states from an Emu-layout HDF5 file or a YAML list.

    HDF5: ``F4_initial(1|ccm)`` [n, 4 (x,y,z,t), 2, 3]; optional ``rotation_R`` [n, 3, 3] and
    ``tend(s)`` [n] are used when present. YAML: ``states: [[[n, Fx, Fy, Fz] x 6 species], ...]``
    in Dodo's species order (nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, nubar_tau), cm^-3.
    Returns {"four_flux": [n, 6, 4], "rotation": [n,3,3] or None, "end_time": [n] or None}.
    """
    from .._atomic import check_input_file

    check_input_file(path, "an Emu-layout HDF5 file or a YAML file")  # a FIFO would block the read for ever
    # HDF5 by its content, whatever the name: `S.H5`, `runs.hdf`, `runs.he5` or a name without a suffix
    # were refused (`input must be .h5/.hdf5 or .yaml/.yml`) although `dodo score` and `dodo apply` read
    # them (outside probe, round 31). YAML by its suffix, as before.
    yaml_name = path.lower().endswith((".yaml", ".yml"))
    hdf5 = not yaml_name and (path.endswith((".h5", ".hdf5")) or _is_hdf5(path))
    if not yaml_name and not hdf5:
        raise ValueError(f"{path}: neither an HDF5 file (no HDF5 signature) nor YAML (.yaml/.yml); give an "
                         "Emu-layout HDF5 file or a YAML list of states")
    if hdf5:
        from ..emu_files import known_file_problem, nf_problem, numeric_dataset, open_hdf5, reversed_axes_problem

        with open_hdf5(path) as f:
            if "F4_initial(1|ccm)" not in f:  # a preprocessed file or an apply -o cell file is named (round 29)
                known = known_file_problem(f, "F4_initial(1|ccm)")
                raise ValueError(f"{path}: {known}" if known else f"{path} has no 'F4_initial(1|ccm)' dataset")
            initial = numeric_dataset(f, path, "F4_initial(1|ccm)")
            if initial.ndim != 4 or initial.shape[1:] != (4, 2, 3):  # a two-flavour Emu file: [n, 4, 2, 2]
                # A column-major writer's file (Julia, Fortran, MATLAB: the axes reversed) is named so, in
                # emu_files' words, as by dodo score and apply (outside probe, Python round fifty-five)
                raise ValueError(f"{path}: " + (reversed_axes_problem("F4_initial(1|ccm)", initial.shape) or (
                    f"'F4_initial(1|ccm)' has shape {initial.shape}; expected [nsims, 4 (x,y,z,t), 2, 3] (three "
                    "flavours)")))
            problem = nf_problem(f, initial.shape)  # `nf = 2` beside three-flavour arrays (round 35)
            if problem:
                raise ValueError(f"{path}: {problem}")
            four_flux = from_emu_layout(initial)
            rotation = None
            if "rotation_R" in f:
                rotation = _rotations_of_stored_precision(numeric_dataset(f, path, "rotation_R"), f["rotation_R"].dtype)
            end_time = numeric_dataset(f, path, "tend(s)") if "tend(s)" in f else None

    else:
        import yaml

        from .. import _yaml as unique_key_yaml

        try:
            with open(path, "rb") as stream:
                document = unique_key_yaml.safe_load(stream.read().decode("utf-8"))  # `states:` twice: an error
        except UnicodeDecodeError as error:  # was "'utf-8' codec can't decode byte 0xff ...", naming no file
            raise ValueError(f"{path}: not a text file (byte {error.start} is not UTF-8): give YAML states or an "
                             "Emu-layout HDF5 file") from None
        except yaml.YAMLError as error:  # malformed, or a tag safe_load refuses (!!python/object)
            raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
        except RecursionError:  # PyYAML's parser recurses per level: `[[[...` 500 deep was a traceback (round three)
            raise ValueError(f"{path}: its YAML nests lists too deeply to read (a state is 6 species x [n, Fx, Fy, "
                             "Fz]: three levels under 'states')") from None
        if not isinstance(document, dict) or "states" not in document:
            raise ValueError(f"{path}: expected a mapping with a 'states' list")
        unknown = sorted(str(key) for key in document if key != "states")
        if unknown:  # `end_time: 1e-6` or a misspelt key was ignored without a word: the run used the defaults
            raise ValueError(f"{path}: unknown key(s) {unknown}; a YAML input holds 'states' only (end times, "
                             "rotations and box lengths: an Emu-layout HDF5 input, or --box-length)")
        if document["states"] is None or (isinstance(document["states"], list) and not document["states"]):
            # `states: []` (or `states:` alone) was "each state must be 6 species x [n, Fx, Fy, Fz]; got shape
            # (0,)", of a list without any state; now `dodo simulate` says "holds no states", as of an empty HDF5
            # input (solver probe, round two)
            document["states"] = np.zeros((0, 6, 4))
        _refuse_yaml_non_numbers(path, document["states"])
        try:
            four_flux = np.asarray(document["states"], dtype=float)
        except (TypeError, ValueError):  # a state given as a mapping, ragged lists, strings
            raise ValueError(f"{path}: 'states' must be a list of states, each a list of 6 species x "
                             "[n, Fx, Fy, Fz] numbers (species order nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, "
                             "nubar_tau); got something else (a mapping?)") from None
        except OverflowError:  # an integer of 309 digits or more: an OverflowError traceback before
            raise ValueError(f"{path}: 'states' holds an integer beyond float64's range (1.8e308); give densities "
                             "in cm^-3 (Emu's are near 1e32)") from None
        if four_flux.ndim != 3 or four_flux.shape[1:] != (6, 4):
            raise ValueError(f"{path}: each state must be 6 species x [n, Fx, Fy, Fz]; got shape {four_flux.shape}")
        rotation = end_time = None
    non_finite = np.flatnonzero(~np.all(np.isfinite(four_flux), axis=(1, 2)))
    if len(non_finite):  # the state(s) named: "non-finite initial four-fluxes" left a user to search every row
        raise ValueError(f"{path}: non-finite initial four-fluxes (NaN or Inf) in state(s) {non_finite[:10].tolist()}"
                         f"{f' and {len(non_finite) - 10} more' if len(non_finite) > 10 else ''}; remove those "
                         "rows (a run needs every state finite)")
    overflowing = np.flatnonzero(~np.isfinite(total_density(four_flux, absolute=True)))
    if len(overflowing):  # densities near 1e308: NumPy overflow warnings, then "linearly stable" drops
        raise ValueError(f"{path}: the densities of state(s) {overflowing[:10].tolist()} sum beyond float64 (N_tot "
                         "is not finite); give densities in cm^-3 (Emu's are near 1e32)")
    return {"four_flux": four_flux, "rotation": rotation, "end_time": end_time}
