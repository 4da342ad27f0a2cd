"""`dodo score MODEL DATA.h5`: a closure scored against asymptotic states in an Emu-layout file.

The metric of the shared README: per state, |n_pred - n_true| / N_tot per species after averaging
mu and tau (nu and nubar separately), averaged over the six species; the closure is applied in
the fluid rest frame to `F4_initial(1|ccm)` and compared with `F4_final(1|ccm)`. Printed for the
model and for Box3D (the anchor), each with a 95% bootstrap interval over states, the paired
interval of their difference, the per-state worst cases, the number of states where the model
is worse than Box3D by more than a threshold, and growth rates against `growthRate(1|s)`.
Runs on the C++ runtime (`dodo.Closure`): no training code, h5py only to read the file.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .conventions import MAX_THREADS, from_emu_layout, total_density
from ._cli_common import add_json_argument, emit, input_path, json_target_file, one_line
from ._cli_common import shown_name as _shown
from ._shown import counted
from ._output_guard import marked_report
from ._status import REJECTED_MASK
from .emu_files import (growth_rate_note, hdf5_item, known_file_problem, nf_problem, numeric_dataset, open_hdf5,
                        reversed_axes_problem, same_dataset_problem, unfinished_run_note)

#: A state counts as "worse than Box3D" when the model's error exceeds Box3D's by this (N_tot).
WORSE_THRESHOLD = 0.0025
#: A state's model and Box3D errors closer than this (N_tot) are "as Box3D": a correction gated or
#: learned down to rounding size (the float32 network, the gate's r^2/(r^2 + ...)) changes the error
#: by 1e-11 to 1e-7, which the count of states "better than Box3D" took as improvements.
AS_BOX3D_TOLERANCE = 1e-6
#: A growth rate counts as right when within this relative error of the measured one.
GROWTH_TOLERANCE = 0.10
#: Truth (F4_final) whose flavour-summed four-fluxes or per-flavour lepton numbers differ from
#: F4_initial's by more than this (units of N_tot) is not a fast-flavour outcome of its input:
#: `dodo score` warns (the tolerance `dodo preprocess` drops such rows with by default).
TRUTH_CONSERVATION_TOLERANCE = 1e-3


def mu_tau_averaged(F: np.ndarray) -> np.ndarray:
    """[..., 6, 4] -> the same with mu and tau replaced by their mean (nu and nubar separately)."""
    out = np.array(F, dtype=float, copy=True)
    for mu, tau in ((1, 2), (4, 5)):
        mean = 0.5 * (out[..., mu, :] + out[..., tau, :])
        out[..., mu, :] = mean
        out[..., tau, :] = mean
    return out


def state_errors(F_pred: np.ndarray, F_true: np.ndarray, ntot: np.ndarray) -> np.ndarray:
    """Per state: mean over species of |dn| / N_tot after mu/tau averaging ([n, 6, 4] -> [n])."""
    dn = mu_tau_averaged(F_pred)[..., 0] - mu_tau_averaged(F_true)[..., 0]
    return np.abs(dn).mean(axis=-1) / ntot


#: Most resamples `dodo score --bootstrap` takes: each resample's mean is held (80 MB at the limit);
#: 10^12 asked for 7.3 TiB (a MemoryError traceback), and far fewer already fix a 95% interval's digits.
MAX_BOOTSTRAP = 10_000_000
#: Resampled values held at once by bootstrap_interval (8 bytes each, twice: indices and values).
BOOTSTRAP_BLOCK_VALUES = 1 << 22


def bootstrap_interval(values: np.ndarray, resamples: int, rng: np.random.Generator,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling states)."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    # In blocks of resamples: one (resamples, states) index array took 2.7 GB for the default 10,000
    # resamples of 34,000 states (and its gathered values as much again); an out-of-memory traceback
    # for larger --bootstrap. Successive draws give the same numbers as one draw of the whole array.
    means = np.empty(resamples)
    block = max(1, BOOTSTRAP_BLOCK_VALUES // len(values))
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        picks = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[picks].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class EmuStates:
    F_init: np.ndarray  # [n, 6, 4] cm^-3, rest frame
    F_final: np.ndarray  # [n, 6, 4]
    growth_rate: np.ndarray | None  # [n] s^-1 (measured), or None
    #: What was read but cannot be used (a growthRate(1|s) of the wrong length), for the report.
    notes: list[str] = field(default_factory=list)
    #: Where each state was read ("FILE#ROW", ROW counted from 0 in FILE as given), when several
    #: files were joined or some of their states dropped as repeats: report indices alone would
    #: not say which file's row a state is. None: the states are one file's rows in order.
    origins: list[str] | None = None


def read_emu_states(path: str) -> EmuStates:
    """Initial and asymptotic states (and measured growth rates, if present) of an Emu-layout file."""
    from ._atomic import check_input_file

    try:
        import h5py
    except ModuleNotFoundError:  # pragma: no cover - depends on the installation
        # Not installed. One that is installed but fails to import (no libhdf5) goes on to dodo's main,
        # which names it: "needs h5py: pip install h5py" was said of it too (outside probe, round 30).
        from ._shown import extra_install

        # The 'qke' extra (h5py, PyYAML), not the 'train' one: torch and the rest are not needed to score
        # (new user's journey, round five)
        raise ValueError(f"reading HDF5 files needs h5py: pip install h5py (or {extra_install('qke')})") from None
    try:
        check_input_file(path, "an Emu-layout HDF5 file")  # a FIFO would block h5py for ever
    except ValueError as error:
        if not os.path.isdir(path):
            raise
        # A run directory (`dodo score default runs/`) said only "is a directory": name its files, which
        # dodo score takes together (outside probe, Python round forty-nine).
        from ._atomic import file_names_in

        held = sorted(name for name in file_names_in(path) if name.endswith((".h5", ".hdf5")))
        if not held:
            raise
        pattern = os.path.join(path, "*.h5" if all(name.endswith(".h5") for name in held) else "*.h*5")
        raise type(error)(f"{error} (it holds {len(held)} HDF5 file(s), e.g. {held[0]!r}: dodo score scores several "
                          f"files together, e.g. dodo score MODEL {pattern})") from None
    notes = []
    try:
        with open_hdf5(path) as f:
            for key in ("F4_initial(1|ccm)", "F4_final(1|ccm)"):
                problem = known_file_problem(f, key) if key not in f else ""
                if problem:  # another command's output, named
                    raise ValueError(f"{_shown(path)}: {problem}")
                if key not in f or not isinstance(hdf5_item(f, path, key), h5py.Dataset):
                    raise ValueError(f"{_shown(path)}: no dataset '{key}' (not an Emu-layout file)")
            problem = same_dataset_problem(f)
            if problem:  # as dodo apply and preprocess read it (emu_files.open_emu_file)
                raise ValueError(f"{_shown(path)}: {problem}")
            emu_initial = numeric_dataset(f, path, "F4_initial(1|ccm)")
            emu_final = numeric_dataset(f, path, "F4_final(1|ccm)")
            growth, null_growth = None, False
            if "growthRate(1|s)" in f:
                item = hdf5_item(f, path, "growthRate(1|s)")
                null_growth = isinstance(item, h5py.Dataset) and item.shape is None  # noted, as preprocess does
                growth = None if null_growth else numeric_dataset(f, path, "growthRate(1|s)")
            problem = nf_problem(f, emu_initial.shape) if emu_initial.ndim == 4 else ""
            if problem:  # as dodo apply and preprocess read it (emu_files.open_emu_file)
                raise ValueError(f"{_shown(path)}: {problem}")
            unfinished = unfinished_run_note(f, path)
            if unfinished:  # scored, but not silently as if they were the whole run's states
                notes.append(unfinished)
    except OSError as error:
        raise ValueError(f"{_shown(path)}: cannot read ({error})") from None
    for key, emu in (("F4_initial(1|ccm)", emu_initial), ("F4_final(1|ccm)", emu_final)):
        if emu.ndim != 4 or emu.shape[1:] != (4, 2, 3):
            raise ValueError(f"{_shown(path)}: " + (reversed_axes_problem(key, emu.shape) or (
                f"'{key}' has shape {emu.shape}; it must be [n, 4 (x,y,z,t), 2, 3] (three flavours)")))
    if len(emu_initial) != len(emu_final):
        raise ValueError(f"{_shown(path)}: F4_initial(1|ccm) holds {counted(len(emu_initial), 'state')} and F4_final(1|ccm) "
                         f"{len(emu_final)}; they must hold the same states")
    if len(emu_initial) == 0:
        raise ValueError(f"{_shown(path)}: no states")
    if growth is not None or null_growth:
        unusable = growth_rate_note(None if null_growth else growth.shape, len(emu_initial))  # [n] or [n, 1]
        if unusable:
            notes.append(f"{_shown(path)}: {unusable}; not used (no growth-rate comparison)")
            growth = None
        else:
            growth = growth.reshape(-1)
    return EmuStates(from_emu_layout(emu_initial), from_emu_layout(emu_final), growth, notes)


def non_conserving_truth(states: EmuStates, tolerance: float = TRUTH_CONSERVATION_TOLERANCE) -> tuple[int, float]:
    """(number of states, largest violation in N_tot) whose F_final breaks a conservation law of
    F_init (rest frame; dodo.reference.conservation_error) by more than ``tolerance``; states
    with a non-finite row or N_tot <= 0 are not counted here (the score leaves them out anyway)."""
    from .reference import conservation_error

    ntot = total_density(states.F_init)
    with np.errstate(invalid="ignore"):
        checked = (np.isfinite(states.F_init).all(axis=(1, 2)) & np.isfinite(states.F_final).all(axis=(1, 2))
                   & np.isfinite(ntot) & (ntot > 0))
    if not checked.any():
        return 0, 0.0
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        error = conservation_error(states.F_init[checked], states.F_final[checked])
    bad = ~(error <= tolerance)  # NaN (an overflow) counts as broken
    return int(bad.sum()), float(np.nanmax(error)) if bad.any() else 0.0


def _left_out_reasons(states: EmuStates, ntot: np.ndarray, scored: np.ndarray, rejected: np.ndarray) -> dict:
    """Why each state that cannot be scored is left out: {reason: count}, most specific first."""
    finite_input = np.isfinite(states.F_init).all(axis=(1, 2))
    finite_truth = np.isfinite(states.F_final).all(axis=(1, 2))
    reasons: dict[str, int] = {}
    for index in np.flatnonzero(~scored):
        if not finite_input[index]:
            reason = "non-finite input (F4_initial)"
        elif not finite_truth[index]:
            reason = "non-finite truth (F4_final)"
        elif not np.isfinite(ntot[index]):  # finite densities whose sum overflows: "N_tot <= 0" misled
            reason = "non-finite N_tot (the densities' sum overflows float64)"
        elif not ntot[index] > 0:
            reason = "no neutrinos (N_tot <= 0)"
        elif rejected[index]:
            # dodo.CellStatus: "dodo.status" was no name of the package (outside probe, docs round three)
            reason = "closure rejected input (unphysical, e.g. n < 0 or |F| > n: see dodo.CellStatus)"
        else:
            reason = "non-finite model or Box3D error"
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def score(closure, states: EmuStates, resamples: int = 10000, seed: int = 0,
          threshold: float = WORSE_THRESHOLD) -> dict:
    """Scores of a `dodo.Closure` on ``states`` (closure applied at rest), model beside Box3D.

    States whose model or Box3D error is not finite (a NaN row, an empty state), or whose truth row
    holds a NaN or Inf in any component, are left out of
    every mean, interval, count and growth ratio, and counted in ``left_out`` (with the reasons)
    instead of turning every number into NaN; their per-state errors are None.

    The report (a dict; ``dodo score --json`` writes it with ``"dodo_report": "dodo score"`` first, and
    null for None, NaN and Inf). Errors are the README's metric, in units of N_tot; keys marked
    "(only ...)" are present only then, every other key always:

    - ``n_states``: states given; ``n_scored``: states scored; ``threshold``: the margin of
      ``states_worse_than_box3d`` (N_tot).
    - ``left_out``: ``count``, ``reasons`` (a reason's words: its number of states), ``indices``
      (state numbers, from 0, in the order the states were given).
    - ``model``, ``box3d``: ``mean``, ``ci95`` ([low, high], bootstrap over states), ``max``;
      ``difference`` (model - Box3D, paired per state): ``mean``, ``ci95``.
    - ``states_worse_than_box3d`` (model - Box3D > threshold), ``states_better_than_box3d`` (< 0),
      ``states_as_box3d`` (within ``as_box3d_tolerance`` N_tot of Box3D's error).
    - ``worst_states``: up to five states of the largest model - Box3D, each ``index``, ``model``,
      ``box3d``, and ``origin`` (only where states carry one: several files, or repeats left out).
    - ``per_state``: lists over all states, None where left out: ``model``, ``box3d``,
      ``uncertainty`` (the closure's, N_tot; only where the closure gives one: a ``dodo.Closure``
      always), ``origin`` (only as in ``worst_states``: each state's file and row).
    - ``growth_rate`` (only where the states have measured rates): ``model`` and ``box3d_proxy``, each
      ``median_ratio``, ``min_ratio``, ``max_ratio`` (of the finite ratios predicted / measured; null
      when none), ``within_10_percent`` (share of the states with a measured rate > 0), and where any
      state has a measured rate > 0 ``non_finite`` and ``ratio_overflow`` (counts), and
      ``smallest_measured_overflowing`` (only where a ratio overflowed); ``n_states``: states with a
      measured rate > 0 among the scored.
    - ``box3d_settings``: ``lebedev_order``, ``z_method``, ``max_flux_factor`` of the anchor row.
    - ``notes`` (only where there is one): the lines printed under the table, as a list of strings.
    - ``training_states_scored`` (``dodo score`` only, and only for a package that records
      ``dodo.training_states``: exported since 2026-12-07, not the shipped default): how many of the
      scored states the model was trained or validated on (0 where none; where any, a warning on stderr).
    """
    from . import box3d

    # From a program's call, resamples=0 ended in an IndexError, -1 in "negative dimensions are not allowed",
    # and threshold=nan counted no state worse than Box3D without a word (outside probe, Python round
    # fifty-five); `dodo score` checks its options itself.
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1 (the bootstrap's resamples); got {resamples!r}")
    # resamples=10**12 ended in numpy's "MemoryError: Unable to allocate 7.28 TiB ...", naming no argument
    # (outside probe, Python round fifty-seven): the bound of `dodo score --bootstrap`.
    if resamples > MAX_BOOTSTRAP:
        raise ValueError(f"resamples must be at most {MAX_BOOTSTRAP:,} (each resample's mean is held: 8 bytes "
                         f"each); got {resamples:,}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) or \
            not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0 (N_tot); got {threshold!r}")
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as error:  # numpy's words name no argument
        raise ValueError(f"seed must be a non-negative integer (numpy.random.default_rng); got {seed!r} ({error})") \
            from None
    # A closure given as its model's name ("box3d", a path) or None, and the states as a tuple, ended in
    # AttributeErrors ("'str' object has no attribute 'apply'"); an F_init of shape () in "object of type
    # 'numpy.float64' has no len()" (outside probe, Python round fifty-six).
    if not callable(getattr(closure, "apply", None)) or not hasattr(closure, "box3d_settings"):
        raise TypeError('closure must be a dodo.Closure (e.g. dodo.Closure("box3d") or dodo.Closure("model.onnx")); '
                        f"got {type(closure).__name__}")
    if not all(hasattr(states, name) for name in ("F_init", "F_final", "growth_rate")):
        raise TypeError("states must be a dodo.score.EmuStates(F_init, F_final, growth_rate) (e.g. "
                        f"dodo.score.read_emu_states(path)); got {type(states).__name__}")
    F_init = states.F_init
    # Checked first, from a program's call (outside probe, Python round fifty-five): 0 states said
    # "no state can be scored: " with no reason, and a growth rate of shape (n, 1) (as the file stores
    # it) ended in an IndexError from the ratios' masks.
    n = np.shape(F_init)[0] if np.ndim(F_init) else None
    if n == 0:
        raise ValueError("no state can be scored: states.F_init holds no states (shape "
                         f"{tuple(np.shape(F_init))}); give at least one")
    # F_final of other states than F_init's (a list cut short, [n, 24]) ended in a broadcast ValueError or an
    # IndexError naming neither array; a growth rate given as a list, in a TypeError (round fifty-five's probe)
    if np.shape(F_init) != (n, 6, 4) or np.shape(states.F_final) != np.shape(F_init):
        wrong = "F_init" if np.shape(F_init) != (n, 6, 4) else "F_final"
        raise ValueError(f"states.{wrong} has shape {tuple(np.shape(getattr(states, wrong)))}; states.F_init and "
                         "states.F_final must both be [n, 6 species, 4 (t,x,y,z)], the same n")
    if states.growth_rate is not None and np.shape(states.growth_rate) != (n,):
        raise ValueError(f"states.growth_rate has shape {tuple(np.shape(states.growth_rate))}; it must be ({n},), "
                         f"one measured rate per state of states.F_init (e.g. growth_rate.reshape(-1)), or None")
    if np.asarray(states.F_final).dtype.kind not in "fiu":  # complex: scored on its real part, bool as 0/1 (round 56)
        raise ValueError("states.F_final must hold real numbers (any float or integer dtype); got dtype "
                         f"{np.asarray(states.F_final).dtype}")
    if states.growth_rate is not None and np.asarray(states.growth_rate).dtype.kind not in "fiuO":
        # complex rates lost their imaginary part with a ComplexWarning, text ("1.5e3") was parsed (round fifty-six)
        raise ValueError("states.growth_rate must hold real numbers (s^-1); got dtype "
                         f"{np.asarray(states.growth_rate).dtype}")
    ntot = total_density(F_init)  # inf for densities near 1e308: such a state is left out, with its reason
    result = closure.apply(F_init)
    settings = closure.box3d_settings
    box = box3d(F_init, lebedev_order=int(settings["lebedev_order"]), z_method=str(settings["z_method"]),
                max_flux_factor=float(settings["max_flux_factor"]))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        model_all = state_errors(result.F_pred, states.F_final, ntot)
        box_all = state_errors(box.F_box, states.F_final, ntot)
    # A state the closure rejects (negative density, |F| > n, ...) is returned as a fallback, not
    # predicted: it is no score of the model.
    rejected = (np.asarray(result.status).astype(np.int64) & REJECTED_MASK) != 0
    # A truth row with a NaN or Inf flux component (a damaged F4_final) has finite density errors: it
    # was scored, and non_conserving_truth, which checks finite rows only because "the score leaves
    # them out", named it nowhere (outside probe, Python round fifty). Left out with its reason.
    finite_rows = np.isfinite(states.F_final).all(axis=(1, 2)) & np.isfinite(F_init).all(axis=(1, 2))
    scored = np.isfinite(model_all) & np.isfinite(box_all) & ~rejected & finite_rows
    if not scored.any():  # say why: "non-finite or empty" was said of states the closure had rejected too
        reasons = _left_out_reasons(states, ntot, scored, rejected)
        raise ValueError("no state can be scored: " + ", ".join(
            f"{count} with a {reason}" if not reason.startswith("no ") else f"{count} with {reason}"
            for reason, count in reasons.items()))
    kept = np.flatnonzero(scored)  # original state numbers of the scored states
    model_error, box_error = model_all[kept], box_all[kept]
    difference = model_error - box_error
    report: dict[str, Any] = {"n_states": int(len(F_init)), "n_scored": int(len(kept)), "threshold": threshold,
              "left_out": {"count": int(len(F_init) - len(kept)),
                           "reasons": _left_out_reasons(states, ntot, scored, rejected),
                           "indices": np.flatnonzero(~scored).tolist()},
              "model": {"mean": float(model_error.mean()), "ci95": bootstrap_interval(model_error, resamples, rng),
                        "max": float(model_error.max())},
              "box3d": {"mean": float(box_error.mean()), "ci95": bootstrap_interval(box_error, resamples, rng),
                        "max": float(box_error.max())},
              "difference": {"mean": float(difference.mean()), "ci95": bootstrap_interval(difference, resamples, rng)},
              "states_worse_than_box3d": int(np.sum(difference > threshold)),
              "states_better_than_box3d": int(np.sum(difference < 0)),
              # Of those and the others, the states where the model's error is Box3D's to
              # AS_BOX3D_TOLERANCE: a model that learned nothing scored "better than Box3D on 10 of
              # 19" (differences of 1e-11 to 6e-8 N_tot) without a word (outside probe, round 41).
              "states_as_box3d": int(np.sum(np.abs(difference) <= AS_BOX3D_TOLERANCE)),
              "as_box3d_tolerance": AS_BOX3D_TOLERANCE,
              "worst_states": [{"index": int(kept[i]), "model": float(model_error[i]), "box3d": float(box_error[i]),
                                **({"origin": states.origins[kept[i]]} if states.origins else {})}
                               for i in np.argsort(difference)[::-1][:5]],
              "per_state": {"model": [float(e) if ok else None for e, ok in zip(model_all, scored)],
                            "box3d": [float(e) if ok else None for e, ok in zip(box_all, scored)]}}
    uncertainty = getattr(result, "uncertainty", None)
    if uncertainty is not None:
        # None where a state is left out (as its errors), and so never NaN in strict JSON
        report["per_state"]["uncertainty"] = [value if ok and np.all(np.isfinite(value)) else None for value, ok
                                              in zip(np.asarray(uncertainty, float).tolist(), scored)]
    if states.growth_rate is not None:
        measured = np.asarray(states.growth_rate, dtype=float)
        with np.errstate(invalid="ignore"):
            usable = scored & np.isfinite(measured) & (measured > 0)
        growth: dict[str, Any] = {}
        proxy = np.asarray(getattr(result, "growth_rate_proxy", box.growth_rate), float)
        for name, rate in (("model", np.asarray(result.growth_rate, float)), ("box3d_proxy", proxy)):
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                ratio = rate[usable] / measured[usable]
            # A rate that is not finite (NaN, inf) on a state with a measured rate is a state whose
            # rate is not within 10%: it stays in the share's denominator. Dropped from it, a model
            # with NaN rates on 2 of 10 states and right ones elsewhere printed "on 10 states ...
            # within 10%: 100%" (scoring probe, 2026-12-06). Median and range: of the finite ratios.
            finite = np.isfinite(ratio)
            # A finite rate over a measured one near 1e-300 (or subnormal) overflows: "a non-finite rate"
            # was said of the model's finite rate; the ratio is what is not finite (outside probe, Python
            # round forty-nine). Counted apart, and still not within 10%.
            overflow = np.isfinite(rate[usable]) & ~finite
            within = float(np.mean(finite & (np.abs(ratio - 1) <= GROWTH_TOLERANCE))) if ratio.size else None
            ratio = ratio[finite]
            if ratio.size:
                growth[name] = {"median_ratio": float(np.median(ratio)), "min_ratio": float(ratio.min()),
                                "max_ratio": float(ratio.max()), "within_10_percent": within}
            else:  # no measured rate > 0, say: null, never a median of NaN or a 0% that reads like a result
                growth[name] = dict.fromkeys(("median_ratio", "min_ratio", "max_ratio", "within_10_percent"))
                if within is not None:  # rates measured, none predicted finite: none within 10%
                    growth[name]["within_10_percent"] = within
            if within is not None:  # with no measured rate, every entry stays null
                growth[name]["non_finite"] = int(np.sum(~finite & ~overflow))
                growth[name]["ratio_overflow"] = int(np.sum(overflow))
                if overflow.any():
                    growth[name]["smallest_measured_overflowing"] = float(measured[usable][overflow].min())
        growth["n_states"] = int(usable.sum())
        report["growth_rate"] = growth
    if states.origins:
        report["per_state"]["origin"] = list(states.origins)
    report["box3d_settings"] = {key: settings[key] for key in ("lebedev_order", "z_method", "max_flux_factor")}
    notes = list(states.notes)
    default = _default_box3d_settings()
    if (int(settings["lebedev_order"]), str(settings["z_method"]), float(settings["max_flux_factor"])) != default:
        # The anchor row is the model's own prior (the paired difference is against it); a package trained
        # against other Box3D settings showed that row under the name "Box3D (anchor)" alone, beside the
        # README's anchor numbers (Lebedev 17, exact Z, 0.98), which it is not (scoring probe, 2026-12-06).
        notes.append("the Box3D (anchor) row uses the model's Box3D settings (lebedev_order "
                     f"{settings['lebedev_order']}, z_method {settings['z_method']}, max_flux_factor "
                     f"{float(settings['max_flux_factor']):g}), not Dodo's default ({default[0]}, {default[1]}, "
                     f"{default[2]:g}) of `dodo score box3d` and the README's Box3D numbers")
    if len(kept) == 1:
        # `dodo score box3d one.h5` printed "95% bootstrap CI [0.00081, 0.00081]": every resample of one state
        # is that state, an interval of no width that reads as certainty (outside probe, Python round 54).
        notes.append("1 state scored: its 95% bootstrap intervals are that state's value, of no width; they say "
                     "nothing of the uncertainty (score more states)")
    if notes:
        report["notes"] = notes
    return report


def _default_box3d_settings() -> tuple:
    """(lebedev_order, z_method, max_flux_factor) of dodo.box3d's defaults: the README's anchor."""
    from ._box3d import DEFAULT_LEBEDEV_ORDER, DEFAULT_MAX_FLUX_FACTOR, DEFAULT_Z_METHOD

    return (int(DEFAULT_LEBEDEV_ORDER), str(DEFAULT_Z_METHOD), float(DEFAULT_MAX_FLUX_FACTOR))


def _ratio_text(ratio: float) -> str:
    """A growth-rate ratio for the table: three decimals where they show it, else three significant
    digits. Measured rates in other units than s^-1 (per microsecond: ratios of 1e-6) printed as
    `median 0.000, range [0.000, 0.000]`, hiding the factor that would have told the user so (outside
    probe, round forty-four)."""
    return f"{ratio:.3f}" if ratio == 0 or 1e-2 <= abs(ratio) < 1e6 else f"{ratio:.3g}"


#: Data files a report's header and notes name one by one; past this, the first few and a count.
_NAMED_FILES = 4


def _files_label(paths, joiner: str = " + ") -> str:
    """The data files' names for a one-line header or note: all of up to a few, else the first three
    and how many more. `dodo score` on hundreds of files (a campaign's glob) printed every name in
    its header line, thousands of characters before the table (outside probe, Python round fifty-one)."""
    names = [_shown(path) for path in paths]
    if len(names) <= _NAMED_FILES:
        return joiner.join(names)
    return joiner.join(names[:_NAMED_FILES - 1]) + f"{joiner}{len(names) - _NAMED_FILES + 1} more files ({len(names)} in all)"


def format_report(report: dict, model_label: str, data_label: str) -> str:
    """The human-readable table of `dodo score`."""
    m, b, d = report["model"], report["box3d"], report["difference"]
    n_scored = report.get("n_scored", report["n_states"])
    lines = [f"dodo score: {model_label} on {data_label} ({counted(report['n_states'], 'state')}; closure at rest; "
             "|dn|/N_tot per species, mu and tau averaged, mean over species)"]
    left_out = report.get("left_out", {})
    if left_out.get("count"):
        why = ", ".join(f"{count} with a {reason}" if not reason.startswith("no ") else f"{count} with {reason}"
                        for reason, count in left_out["reasons"].items())
        lines.append(f"states scored: {n_scored} of {report['n_states']} ({left_out['count']} left out of every "
                     f"number below, growth ratios included: {why})")
    lines += [
             f"{'':<22} {'mean':>9} {'95% bootstrap CI':>22} {'worst state':>12}",
             f"{'model':<22} {m['mean']:9.5f} {'[%.5f, %.5f]' % tuple(m['ci95']):>22} {m['max']:12.5f}",
             f"{'Box3D (anchor)':<22} {b['mean']:9.5f} {'[%.5f, %.5f]' % tuple(b['ci95']):>22} {b['max']:12.5f}",
             f"{'model - Box3D':<22} {d['mean']:+9.5f} {'[%+.5f, %+.5f]' % tuple(d['ci95']):>22}",
             f"states where the model is worse than Box3D by > {report['threshold']:g} N_tot: "
             f"{report['states_worse_than_box3d']} of {n_scored} "
             f"(better than Box3D on {report['states_better_than_box3d']}"
             + (f"; {report['states_as_box3d']} of {n_scored} within {report.get('as_box3d_tolerance', AS_BOX3D_TOLERANCE):g} "
                "N_tot of Box3D's error, where the model does as Box3D" if report.get("states_as_box3d") else "") + ")",
             "largest (model - Box3D) states: " + ", ".join(
                 f"#{w['index']}{' (' + _shown(w['origin']) + ')' if 'origin' in w else ''} {w['model']:.4f} vs "
                 f"{w['box3d']:.4f}" for w in report["worst_states"])]
    if "growth_rate" in report:
        g = report["growth_rate"]
        if g["n_states"] == 0:
            lines.append("growth rate / measured growthRate(1|s): no usable measured rates (none of the scored "
                         "states has a finite rate > 0)")
        else:
            lines.append(f"growth rate / measured growthRate(1|s) on {counted(g['n_states'], 'state')}:")
            for name in ("model", "box3d_proxy"):
                row = g[name]
                bad, over = row.get("non_finite", 0), row.get("ratio_overflow", 0)
                problems = ([f"a non-finite rate on {bad} of {counted(g['n_states'], 'state')}"] if bad else []) + (
                    [f"a ratio beyond float64's range on {over} of {counted(g['n_states'], 'state')} (a finite rate over a "
                     f"measured rate as small as {row['smallest_measured_overflowing']:.3g} s^-1)"] if over else [])
                if row["median_ratio"] is None:
                    lines.append(f"  {name:<12} no finite ratio" + (f" ({'; '.join(problems)}: within 10% on none)"
                                                                     if problems else ""))
                    continue
                lines.append(f"  {name:<12} median {_ratio_text(row['median_ratio'])}, range "
                             f"[{_ratio_text(row['min_ratio'])}, {_ratio_text(row['max_ratio'])}], within 10%: "
                             f"{100 * row['within_10_percent']:.0f}%"
                             + (f" ({'; '.join(problems)}, counted as not within; median and range of the finite "
                                "ones)" if problems else ""))
    lines += [f"note: {note}" for note in report.get("notes", ())]
    return "\n".join(lines)


#: Files with a non-conserving truth warned of one line each; more are counted in one line.
_WARNED_FILES = 3


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score a model (and Box3D beside it) on an Emu-layout file: |dn|/N_tot with bootstrap "
                      "intervals, states worse than Box3D, growth-rate ratios",
        description="Apply the closure at rest to F4_initial(1|ccm) of an Emu-layout HDF5 file and compare with "
                    "F4_final(1|ccm) and growthRate(1|s) (docs/training.md, 'Commands').")
    parser.add_argument("model", help="ONNX model package, 'default' (the shipped model) or 'box3d' (no model)")
    parser.add_argument("data", nargs="+", type=input_path, help="Emu-layout HDF5 file(s); several are scored together")
    parser.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    parser.add_argument("--threshold", type=float, default=WORSE_THRESHOLD,
                        help=f"'worse than Box3D' margin in N_tot (default {WORSE_THRESHOLD})")
    parser.add_argument("--threads", type=int, default=1, help="closure worker threads (default 1)")
    add_json_argument(parser, "the full report (per state; a state left out: null; its keys: "
                              "help(dodo.score.score))")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the --json file when it exists and is not an earlier dodo score report; "
                             "an HDF5 file, a checkpoint or a model package is never replaced")
    parser.set_defaults(func=_run)


def _state_keys(states: EmuStates) -> list[bytes]:
    """One key per state as scored (initial, final and measured growth rate, float64 bytes)."""
    n = len(states.F_init)
    rows = [np.ascontiguousarray(states.F_init, dtype=np.float64).reshape(n, -1),
            np.ascontiguousarray(states.F_final, dtype=np.float64).reshape(n, -1)]
    if states.growth_rate is not None:
        rows.append(np.ascontiguousarray(states.growth_rate, dtype=np.float64).reshape(n, 1))
    joined = np.concatenate(rows, axis=1)
    return [row.tobytes() for row in joined]


def _states_trained_on(closure, states: EmuStates, left_out) -> int | None:
    """How many of ``states`` (less the indices ``left_out``, not scored) the model was trained or validated
    on, by the package's dodo.training_states (their initial four-fluxes, bit for bit); None where the
    package records none (Box3D alone, a package exported before 2026-12-07). `dodo score` of a package on
    its own training states said nothing (outside probe, training rounds three and five)."""
    from ._state_hashes import package_training_states, row_hashes

    trained = package_training_states(closure.metadata)
    if trained is None:
        return None
    scored = np.ones(len(states.F_init), dtype=bool)
    scored[np.asarray(left_out, dtype=np.int64)] = False
    hashes = row_hashes(np.asarray(states.F_init, dtype=np.float64).reshape(len(states.F_init), -1))
    # Sorted once and searched: np.isin hashed the whole record (1,000,000 states: 1 s, score's own run
    # time again; outside probe, training round six).
    trained = np.sort(trained)
    at = np.minimum(np.searchsorted(trained, hashes[scored]), max(len(trained) - 1, 0))
    return int((trained[at] == hashes[scored]).sum()) if len(trained) else 0


def _run(args: argparse.Namespace) -> int:
    from ._closure import Closure, model_file

    try:
        if not 100 <= args.bootstrap <= MAX_BOOTSTRAP:  # the resampled means are held: 8 bytes each
            raise ValueError(f"--bootstrap must be >= 100 and at most {MAX_BOOTSTRAP:,}; got {args.bootstrap}")
        if not (np.isfinite(args.threshold) and args.threshold >= 0):
            raise ValueError(f"--threshold must be a finite number >= 0; got {args.threshold}")
        if args.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0; got {args.seed}")
        if not 0 <= args.threads <= MAX_THREADS:  # before the files are read, naming the option (round 44)
            raise ValueError(f"--threads must be an integer from 0 to {MAX_THREADS} (0 and 1: the calling thread "
                             f"only); got {args.threads}")
        if args.model == "":  # an unset shell variable: Closure's message speaks of Python's None
            raise ValueError("MODEL is empty: give a model package (.onnx file), 'default' for the model shipped "
                             "with dodo, or 'box3d' for Box3D without a learned correction")
        model = None if args.model == "default" else args.model  # Closure's None: the shipped model
        if json_target_file(args.json):
            from ._atomic import check_outputs

            # The model read is an input too, the implicit default one included.
            check_outputs([args.json], [*args.data, model_file(model)])
            from ._output_guard import refuse_replacing_with_report

            refuse_replacing_with_report(args.json, "dodo score --json", args.overwrite, "--overwrite")
        # A file named twice is scored once (its states counted twice would narrow the intervals),
        # also through a symlink or a hard link (the same device and inode; realpath alone missed links).
        from ._atomic import file_key

        data = list({file_key(path): path for path in args.data}.values())
        parts = [read_emu_states(path) for path in data]
        # A copy of a file (the same states under another name: a backup, a download), or a file
        # that shares some states with another (a subset, a merge of two runs), would count those
        # states twice: each state is scored once, by content, where it is first given.
        # Within one file too (round 40): a user's merge of two runs into one database counted the
        # shared states twice, where the same runs given as two files counted them once.
        named, kept, seen, repeated, repeated_within = len(data), [], set(), 0, 0
        for path, part in zip(data, parts):
            keys = _state_keys(part)
            fresh = np.array([key not in seen for key in keys], dtype=bool)
            seen.update(keys)
            if not fresh.any():
                continue  # every state given before: the file is a copy
            repeated += int((~fresh).sum())
            # Rows of NaN or of zeros (unfinished or never-written rows), and rows whose N_tot overflows,
            # are left out with their reason, each counted there, not called repeats of each other.
            n = len(keys)
            with np.errstate(over="ignore"):
                ntot_finite = np.isfinite(part.F_init.reshape(n, 6, 4)[:, :, 0].sum(axis=1))
            real = (np.all(np.isfinite(part.F_init.reshape(n, -1)), axis=1)
                    & np.all(np.isfinite(part.F_final.reshape(n, -1)), axis=1)
                    & np.any(part.F_init.reshape(n, -1) != 0, axis=1) & ntot_finite)
            within, earlier = np.zeros(n, dtype=bool), set()
            for row in np.flatnonzero(fresh & real):
                within[row] = keys[row] in earlier
                earlier.add(keys[row])
            fresh &= ~within
            repeated_within += int(within.sum())
            rows = np.flatnonzero(fresh)
            part = EmuStates(part.F_init[fresh], part.F_final[fresh],
                             None if part.growth_rate is None else part.growth_rate[fresh], part.notes,
                             [f"{path}#{row}" for row in rows])
            kept.append((path, part))
        data, parts = [path for path, _ in kept], [part for _, part in kept]
        # Truth that is not a fast-flavour outcome of its input (edited, mislabelled rows) is
        # scored as given, but not silently: the scores then measure the distance to it.
        why = ("a truth (F4_final) that does not conserve F4_initial's flavour-summed four-fluxes or each "
               "flavour's lepton number")
        broken_files = []
        for path, part in zip(data, parts):
            broken, largest = non_conserving_truth(part)
            if broken:
                broken_files.append((path, broken, len(part.F_init), largest))
        if len(broken_files) <= _WARNED_FILES:
            for path, broken, count, largest in broken_files:
                print(f"dodo score: warning: {_shown(path)}: {broken} of {counted(count, 'state')} "
                      f"{'has' if count == 1 else 'have'} {why} (by up to "
                      f"{largest:.2g} N_tot; tolerance {TRUTH_CONSERVATION_TOLERANCE:g}); scored as given",
                      file=sys.stderr)
        else:  # one line for many files (a line per file buried the table under hundreds: Python round fifty-one)
            print(f"dodo score: warning: {sum(b for _, b, _, _ in broken_files)} states of {len(broken_files)} files "
                  f"({_files_label([path for path, _, _, _ in broken_files], ', ')}) have {why} (by up to "
                  f"{max(w for _, _, _, w in broken_files):.2g} N_tot; tolerance {TRUTH_CONSERVATION_TOLERANCE:g}); "
                  "scored as given", file=sys.stderr)
        notes = [note for part in parts for note in part.notes]
        if named < len(args.data):
            notes.append(f"{len(args.data) - named} data file(s) named more than once: each scored once")
        if len(data) < named:
            notes.append(f"{named - len(data)} data file(s) hold the same states as another one given (a copy): "
                         "each set of states scored once")
        if repeated:
            notes.append(f"{repeated} state(s) repeat states of another data file given (the same initial and final "
                         "four-fluxes and growth rate): each scored once")
        if repeated_within:
            notes.append(f"{repeated_within} state(s) repeat an earlier state of the same file (the same initial and "
                         "final four-fluxes and growth rate): each scored once")
        growth = None
        if all(p.growth_rate is not None for p in parts):
            growth = np.concatenate([p.growth_rate for p in parts])
        elif any(p.growth_rate is not None for p in parts):
            # Rates in A.h5 alone gave no growth comparison at all (outside probe, Python round fifty-seven):
            # the states without a rate are NaN, which the comparison leaves out, as a file's own NaN rate.
            missing = [path for path, p in zip(data, parts) if p.growth_rate is None]
            growth = np.concatenate([np.full(len(p.F_init), np.nan) if p.growth_rate is None else
                                     np.asarray(p.growth_rate, float) for p in parts])
            given = sum(len(p.F_init) for p in parts if p.growth_rate is not None)
            notes.append(f"no usable growthRate(1|s) in {_files_label(missing, ', ')}: growth rates compared on the "
                         f"{counted(given, 'state')} of the other file{'' if len(parts) - len(missing) == 1 else 's'} only")
        # Indices in the report count the states as joined: with several files, or repeats left
        # out, each state also names its file and row there.
        origins = [origin for p in parts for origin in p.origins] if len(parts) > 1 or repeated or repeated_within else None
        states = EmuStates(np.concatenate([p.F_init for p in parts]), np.concatenate([p.F_final for p in parts]),
                           growth, notes, origins)
        closure = Closure(model, threads=args.threads)
        report = score(closure, states, resamples=args.bootstrap, seed=args.seed, threshold=args.threshold)
        trained = _states_trained_on(closure, states, report["left_out"]["indices"])
        if trained is not None:
            report["training_states_scored"] = trained
        if trained:
            print(f"dodo score: warning: {trained} of the {counted(report['n_scored'], 'state')} scored "
                  f"{'is a state' if trained == 1 else 'are states'} {_shown(args.model)} was trained or validated on "
                  "(its dodo.training_states): their errors are training errors, not held-out ones; for a held-out "
                  "score, give states it did not train on", file=sys.stderr)
        # Inside the try: a JSON file that cannot be written is one line, as for every other command.
        # Marked as dodo score's report: a rerun's --json replaces it, a user's JSON file is kept.
        emit(format_report(report, _shown(args.model), _files_label(data)), marked_report(report, "dodo score"),
             args.json)
    except BrokenPipeError:  # the reader went away (`| head`): dodo.cli.main ends quietly, 141
        raise
    except (ValueError, OSError, RuntimeError) as error:
        hint = ""
        if args.json not in (None, "-") and (args.json in ("default", "box3d") or args.json.endswith(".onnx")) and \
                not (args.model in ("default", "box3d") or args.model.endswith(".onnx")):
            # `dodo score --json box3d a.h5 b.h5` (the report meant for standard output): --json took the
            # model, a.h5 became the model, "an HDF5 file (a data file?), not an ONNX model package", and
            # `--json m.onnx a.h5 b.h5` "does not write a report over it" (outside probe, Python round 48).
            # Only where MODEL is then no model: `dodo score box3d d.h5 --json m.onnx`, the report's file
            # written last, was told --json had taken it (outside probe, Python round forty-nine).
            hint = (f"; --json took {args.json!r}, a model, as the file for its report (PATH is optional, so "
                    "--json takes the word after it): for the report on standard output, put --json after the "
                    "other arguments or write --json -")
        from ._memory import with_memory_advice  # HDF5's "memory allocation failed" (round fifty-six)

        print(f"dodo score: error: {with_memory_advice(one_line(error))}{hint}", file=sys.stderr)
        return 2
    return 0
