"""Validation of the QKE solver against the real Emu code (documented commands; docs/qke.md).

    python3 -m dodo.qke.validate nsm1  --reference emu_nsm1_1d.h5 --box3d-cases box3d_cases.json
    python3 -m dodo.qke.validate emu32 --reference emu_1d_validation.h5 [--output results.h5]

Metric (shared README): |dn| / N_tot per species after averaging mu and tau (nu and nubar
separately), averaged over the six species (and over states for emu32).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from .._atomic import check_outputs, exclusive_output, json_safe, write_json_atomic
from .._cli_common import file_output_path, input_path
from ..conventions import from_emu_layout
from .asymptotic import asymptotic_states
from .backends import make_box, resolve_backend
from .solver import SolverConfig


def mu_tau_averaged_densities(four_flux: np.ndarray) -> np.ndarray:
    """Densities ``[..., 6]`` with mu and tau averaged, from four-fluxes ``[..., 6, 4]``."""
    density = np.array(four_flux[..., 0], dtype=float, copy=True)
    for pair in ((1, 2), (4, 5)):
        density[..., list(pair)] = density[..., list(pair)].mean(axis=-1, keepdims=True)
    return density


def density_error(predicted: np.ndarray, reference: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """Mean over species of |dn| / N_tot (mu/tau averaged), per state."""
    total = initial[..., 0].sum(axis=-1)
    difference = np.abs(mu_tau_averaged_densities(predicted) - mu_tau_averaged_densities(reference))
    return difference.mean(axis=-1) / total


def box3d_prediction(initial: np.ndarray) -> np.ndarray | None:
    """Dodo's Box3D answer (C++ core), or None when the compiled core is unavailable."""
    try:
        import dodo
    except ImportError:
        return None
    return np.asarray(dodo.box3d(initial).F_box)


@contextlib.contextmanager
def _reference_file(reference: str, name: str):
    """The open reference file; a dataset it lacks is one line naming the file and the dataset
    (h5py's "Unable to synchronously open object (object 'F4_initial(1|ccm)' doesn't exist)" named
    neither file nor what it should be)."""
    import h5py

    try:
        handle = h5py.File(reference, "r")
    except OSError as error:  # "Unable to synchronously open file (file signature not found)" named no file
        raise ValueError(f"{reference}: not a readable HDF5 file ({error}): not an Emu reference file like {name} of "
                         "the repository's tests/data/qke/") from None
    with handle:
        try:
            yield handle
        except KeyError as error:
            missing = str(error).split("object '")[1].split("'")[0] if "object '" in str(error) else str(error)
            raise ValueError(f"{reference}: no dataset {missing!r}: not an Emu reference file like {name} of the "
                             "repository's tests/data/qke/") from None
        except OSError as error:  # a dataset HDF5 cannot read (a damaged chunk): h5py's text named no file
            from .._memory import hdf5_ran_out_of_memory, more_memory_advice

            # "memory allocation failed for chunk" (an address-space limit) is no damaged file (outside
            # probe, data-loss round ten).
            cause = f"not enough memory to read it (the file is not damaged): {more_memory_advice()}" \
                if hdf5_ran_out_of_memory(str(error)) else f"the file is damaged (a corrupted or truncated copy of {name}?)"
            raise ValueError(f"{reference}: cannot read it ({' '.join(str(error).split())}): {cause}") from None


def _nsm1_configuration(reference: str, name: str) -> tuple[int, float, int]:
    """(cells, box length in cm, nphi) from an emu_nsm1_1d.h5 directory name such as
    nsm1_1d_nz64_L4_nphi16. Another file's names (emu_1d_validation.h5's validation_000, given as
    --reference by mistake) were an IndexError traceback (outside probe, solver round 3)."""
    try:
        ncell = int(name.split("_nz")[1].split("_")[0])
        length = float(name.split("_L")[1].split("_")[0])
        nphi = int(name.split("_nphi")[1])
    except (IndexError, ValueError):
        raise ValueError(f"{reference}: directorynames holds {name!r}, not an NSM1 configuration such as "
                         "nsm1_1d_nz64_L4_nphi16 (cells, box length in cm, nphi): not an Emu reference file like "
                         "emu_nsm1_1d.h5 of the repository's tests/data/qke/ (emu_1d_validation.h5 is emu32's)") from None
    return ncell, length, nphi


def validate_nsm1(reference: str, box3d_cases: str | None, seeds: list[int], flavour_cfl: float, only: str | None = None,
                  hamiltonian_filter: str = SolverConfig.hamiltonian_filter, backend: str = SolverConfig.backend) -> dict:
    with _reference_file(reference, "emu_nsm1_1d.h5") as f:
        # "replace": a name that is not UTF-8 was the codec's error, naming no file (outside probe, round 37).
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in f["directorynames"][()]]
        emu_initial = from_emu_layout(f["F4_initial(1|ccm)"][()])
        emu_final = from_emu_layout(f["F4_final(1|ccm)"][()])
        emu_growth = f["growthRate(1|s)"][()]
        emu_wall = f["walltime(s)"][()]
        emu_end = f["tend(s)"][()]
    case = None
    if box3d_cases:  # read before the runs: a bad file was found only after them
        try:  # "Expecting value: line 1 column 1 (char 0)" named no file; no nsm1 case was a StopIteration traceback
            with open(box3d_cases) as stream:
                case = next(c for c in json.load(stream)["cases"] if c["name"] == "nsm1")
        except (ValueError, KeyError, TypeError, StopIteration) as error:
            raise ValueError(f"{box3d_cases}: not Dodo's box3d_cases.json with an 'nsm1' case "
                             f"({type(error).__name__}: {error})") from None
    if only and not any(only in name for name in names):  # ran nothing and exited 0 (round eighteen)
        raise ValueError(f"--only {only!r} matches none of the configurations of {reference}: {', '.join(names)}")
    configurations = [_nsm1_configuration(reference, name) for name in names]
    report = {"runs": []}
    for row, (name, (ncell, length, nphi)) in enumerate(zip(names, configurations)):
        if only and only not in name:
            continue
        for seed in seeds:
            config = SolverConfig(ncell=ncell, nphi_equator=nphi, flavour_cfl=flavour_cfl, seed=seed,
                                  hamiltonian_filter=hamiltonian_filter, backend=backend)
            box = make_box(emu_initial[row:row + 1], length, config)
            started = time.time()
            history = box.run(np.array([emu_end[row]]))
            wall = time.time() - started
            state = asymptotic_states(history.time, history.four_flux, history.offdiag_magnitude)
            final = state.final[0].reshape(6, 4)
            errors = {other: float(density_error(final, emu_final[j], emu_initial[row])) for j, other in enumerate(names)}
            report["runs"].append({"configuration": name, "seed": seed, "growth_rate": float(state.growth_rate[0]),
                                   "emu_growth_rate": float(emu_growth[row]), "valid": bool(state.valid[0]),
                                   "mean_abs_dn_over_ntot_vs_emu": errors, "wall_s": wall, "emu_wall_s": float(emu_wall[row]),
                                   "steps": int(history.time.shape[1] - 1),
                                   "densities_over_ntot": (mu_tau_averaged_densities(final) / emu_initial[row, :, 0].sum()).tolist()})
            print(json.dumps(json_safe(report["runs"][-1]), allow_nan=False), flush=True)  # strict JSON: NaN as null
    box3d = box3d_prediction(emu_initial[:1])
    if box3d is not None:
        report["box3d_vs_emu"] = {other: float(density_error(box3d[0], emu_final[j], emu_initial[0])) for j, other in enumerate(names)}
    if box3d_cases:
        emu3d = np.asarray(case["emu_final"])
        report["emu3d_vs_emu1d"] = {other: float(density_error(emu3d, emu_final[j], emu_initial[0])) for j, other in enumerate(names)}
        report["emu3d_densities_over_ntot"] = (mu_tau_averaged_densities(emu3d) / np.asarray(case["F_init"])[:, 0].sum()).tolist()
    report["emu_densities_over_ntot"] = {name: (mu_tau_averaged_densities(emu_final[j]) / emu_initial[j, :, 0].sum()).tolist()
                                         for j, name in enumerate(names)}
    return report


def validate_emu32(reference: str, output: str, batch_size: int, flavour_cfl: float, seed: int,
                   hamiltonian_filter: str = SolverConfig.hamiltonian_filter, backend: str = SolverConfig.backend,
                   write_progress: bool = True, print_summary: bool = True) -> dict:
    """The solver on the 32 Emu validation states; returns the report (printed unless ``print_summary``
    is false: the command prints it after writing --json, see _main)."""
    from .campaign import simulate_states

    with _reference_file(reference, "emu_1d_validation.h5") as f:
        def numbers(name: str) -> np.ndarray:
            try:
                return np.asarray(f[name][()], float)
            except (TypeError, ValueError):  # strings, a compound type
                raise ValueError(f"{reference}: {name} must hold numbers; it holds {f[name].dtype} values") from None

        try:
            initial = from_emu_layout(numbers("F4_initial(1|ccm)"))
            emu_final = from_emu_layout(numbers("F4_final(1|ccm)"))
        except ValueError as error:  # the wrong shape: from_emu_layout's words, then the file's name
            raise ValueError(error if str(error).startswith(reference) else f"{reference}: {error}") from None
        emu_growth, linear_growth, end_time, emu_wall = (
            numbers(name) for name in ("growthRate(1|s)", "linear_growthRate_box(1|s)", "tend(s)", "walltime(s)"))
        rotation = f["rotation_R"][()]
    _check_emu32_reference(reference, initial, emu_final, rotation,
                           {"growthRate(1|s)": emu_growth, "linear_growthRate_box(1|s)": linear_growth,
                            "tend(s)": end_time, "walltime(s)": emu_wall})
    config = SolverConfig(flavour_cfl=flavour_cfl, seed=seed, hamiltonian_filter=hamiltonian_filter, backend=backend)
    started = time.time()
    results = simulate_states(initial, output, config, batch_size=batch_size, rotation=rotation, box_length_cm=4.0,
                              end_time_s=end_time, attributes={"validation_reference": reference},
                              write_progress=write_progress)
    wall = time.time() - started
    valid = results["valid"]
    errors = density_error(results["final"], emu_final, initial)
    report = {"nstates": len(initial), "nvalid": int(valid.sum()), "wall_s_total": wall, "backend": resolve_backend(config)[0],
              "wall_s_per_state": wall / len(initial), "emu_wall_s_per_state": float(np.mean(emu_wall)),
              "solver_vs_emu_mean_abs_dn_over_ntot": None, "solver_vs_emu_max": None,
              "growth_rate_ratio_to_emu": {"mean": None, "min": None, "max": None},
              "linear_growth_ratio_to_file": None,
              "per_state_error": errors.tolist()}
    if not valid.any():
        # No valid state (every run unfinished or failed): the statistics over valid states are null and
        # the report still written and printed. np.max of nothing ended the command with "zero-size array
        # to reduction operation maximum which has no identity" and two NumPy warnings after the whole
        # run, and no --json report (scoring probe, 2026-12-06).
        report["note"] = "no valid state: nothing to compare with Emu (see the database's per-state status)"
        if print_summary:
            _print_emu32_summary(report)
        return report
    # Ratios only where the reference's rate is a positive number: a reference of one's own with an Emu
    # growthRate(1|s) of 0 (or NaN) for a state divided by it, warned "divide by zero" and printed the
    # ratio's mean and max as null beside a finite min, with no word of why (solver probe, round five).
    emu_rated = valid & np.isfinite(emu_growth) & (emu_growth > 0)
    linear_rated = valid & np.isfinite(linear_growth) & (linear_growth > 0)
    growth_ratio = results["growth_rate"][emu_rated] / emu_growth[emu_rated]
    ratio_summary = ({"mean": float(np.mean(growth_ratio)), "min": float(np.min(growth_ratio)),
                      "max": float(np.max(growth_ratio))} if emu_rated.any() else {"mean": None, "min": None, "max": None})
    report.update({"solver_vs_emu_mean_abs_dn_over_ntot": float(np.mean(errors[valid])),
                   "solver_vs_emu_max": float(np.max(errors[valid])),
                   "growth_rate_ratio_to_emu": ratio_summary,
                   "linear_growth_ratio_to_file": (float(np.max(np.abs(results["linear_growth_rate"][linear_rated]
                                                                       / linear_growth[linear_rated] - 1)))
                                                   if linear_rated.any() else None)})
    for name, rated, given in (("growthRate(1|s)", emu_rated, emu_growth),
                               ("linear_growthRate_box(1|s)", linear_rated, linear_growth)):
        left_out = np.flatnonzero(valid & ~rated)
        if len(left_out):
            report.setdefault("note", "")
            report["note"] += ((" " if report["note"] else "") + f"{len(left_out)} valid state(s) left out of the "
                               f"{'growth_rate_ratio_to_emu' if name.startswith('growth') else 'linear_growth_ratio_to_file'}"
                               f": the reference's {name} is not a positive number there (state {left_out[0]}: "
                               f"{float(given[left_out[0]]):g})")
    box3d = box3d_prediction(initial)
    if box3d is not None:
        # Over the solver's valid states, the set its own mean is taken over: a dropped state counted in
        # Box3D's mean and not in the solver's, so the two numbers printed side by side compared different
        # states (solver probe, round three).
        report["box3d_vs_emu_mean_abs_dn_over_ntot"] = float(np.mean(density_error(box3d, emu_final, initial)[valid]))
    if print_summary:
        _print_emu32_summary(report)
    return report


def _print_emu32_summary(report: dict) -> None:
    print(json.dumps(json_safe({k: v for k, v in report.items() if k != "per_state_error"}), indent=1, allow_nan=False),
          flush=True)


def _check_emu32_reference(reference: str, initial, final, rotation, per_state: dict) -> None:
    """One line naming the file for a reference that is not 32 (or n) whole states: five states of
    F4_initial failed in NumPy (`operands could not be broadcast together with shapes (5,) (32,)`),
    zero end times as `end times must be positive and finite` naming no file, and matrices of zeros
    as rotation_R ran, as `dodo simulate --input` refuses them (outside probe, round 27)."""
    from .states import check_rotations

    count = len(initial)
    if count == 0:
        raise ValueError(f"{reference}: F4_initial(1|ccm) holds no states")
    if final.shape != initial.shape:
        raise ValueError(f"{reference}: F4_final(1|ccm) holds {len(final)} states and F4_initial(1|ccm) {count}; "
                         "they must hold the same states")
    for name, values in per_state.items():
        if values.shape != (count,):
            raise ValueError(f"{reference}: {name} must hold one value per state ({count}); got shape {values.shape}")
    if not (np.isfinite(initial).all() and np.isfinite(per_state["tend(s)"]).all() and (per_state["tend(s)"] > 0).all()):
        raise ValueError(f"{reference}: F4_initial(1|ccm) and tend(s) must be finite, and tend(s) positive")
    check_rotations(rotation, count, f"{reference}: rotation_R")


#: Where the reference files live in a source checkout (tests/data/qke/ of the repository).
REPOSITORY_REFERENCE_DIR = Path(__file__).resolve().parents[3] / "tests" / "data" / "qke"


def reference_path(given: str | None, name: str) -> str:
    """--reference as given; by default tests/data/qke/NAME of the repository this module belongs
    to (whatever the working directory), else of the working directory."""
    if given is not None:
        candidate = Path(given)
    else:
        candidate = REPOSITORY_REFERENCE_DIR / name
        if not candidate.is_file() and Path("tests/data/qke", name).is_file():
            candidate = Path("tests/data/qke", name)
    if candidate.exists() and not candidate.is_file():  # /dev/null, a directory: "not found" misled
        from .._atomic import check_input_file

        check_input_file(candidate, f"the Emu reference file {name}")
    if not candidate.is_file():
        where = "" if given is not None else (f" (the default: {REPOSITORY_REFERENCE_DIR / name} is not there; "
                                              "an installed package has no tests/)")
        raise FileNotFoundError(f"reference file not found: {candidate}{where}; pass --reference with the Emu file "
                                f"{name} of the repository's tests/data/qke/")
    return str(candidate)


def refuse_replacing_other_files(output: str) -> None:
    """emu32 writes its database over ``--output`` (and resumes an unfinished one of its own): any
    other non-empty file there, a `dodo synth` or Emu database, a campaign's solver database, was
    replaced without a word (outside probe, round eighteen). A ValueError unless the file is
    absent, empty or an earlier emu32 database (a `dodo simulate` database that records its
    validation reference)."""
    import os

    from .._output_guard import file_kind

    if not os.path.isfile(output) or os.path.getsize(output) == 0:
        return
    import h5py

    try:
        with h5py.File(output, "r") as handle:
            if "solver" in handle.attrs and "validation_reference" in handle.attrs:
                return
    except (OSError, ValueError):
        pass
    raise ValueError(f"{output} exists and is {file_kind(output)}, not an emu32 validation database: it is not "
                     "replaced; give another --output, or --overwrite to replace it")


def _main_as_found(argv) -> int:
    """_main with its outputs remembered as its start found them: a report another process writes
    during the (minutes-long) validation is not replaced at the rename, as in every `dodo` command
    (data-loss probe, round three)."""
    from .._atomic import outputs_as_found

    with outputs_as_found():
        return _main(argv)


def main(argv=None) -> int:
    """The command line; expected failures (missing h5py, a missing or bad file) end it with one
    line on stderr and exit status 2."""
    import sys

    from ..cli import _catch_terminating_signals, _restore_signal_handlers, _signal_ending, _Terminated

    from .._stdout_guard import with_guarded_stdout

    from .. import _startup

    name = "python -m dodo.qke.validate"
    _startup.release()  # from here on Ctrl-C unwinds (temporaries removed), as in `dodo`
    previous_handlers = _catch_terminating_signals()  # SIGTERM/SIGHUP unwind as Ctrl-C does, as in `dodo`
    try:
        # Its report goes to standard output: `| head -1` said "error: [Errno 32] Broken pipe" and
        # `>&-` dropped the report without a word (outside probe, round 23); now as `dodo` does.
        return with_guarded_stdout(name, lambda: _main_as_found(argv))
    except (KeyboardInterrupt, _Terminated) as ended:  # outputs are atomic: the target stays untouched
        status, word = _signal_ending(ended)
        print(f"{name}: {word}", file=sys.stderr)
        return status
    except ModuleNotFoundError as error:
        print(f"{name}: error: {error.name} is not installed; pip install h5py", file=sys.stderr)
    except (ValueError, OSError, RuntimeError, KeyError) as error:
        text = " ".join(str(error).split())
        print(f"{name}: error: {text}", file=sys.stderr)
    finally:
        _restore_signal_handlers(previous_handlers)
    return 2


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dodo.qke.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    nsm1 = sub.add_parser("nsm1", help="NSM1 point at Emu's four resolutions")
    nsm1.add_argument("--reference", default=None, type=input_path, help="default: tests/data/qke/emu_nsm1_1d.h5 of the repository")
    nsm1.add_argument("--box3d-cases", default=str(Path(__file__).resolve().parents[1] / "data" / "box3d_cases.json"))
    nsm1.add_argument("--seeds", default="0", help="comma-separated perturbation seeds")
    nsm1.add_argument("--only", default=None, help="run only configurations containing this text")
    emu32 = sub.add_parser("emu32", help="32 random states of emu_1d_validation.h5")
    emu32.add_argument("--reference", default=None, type=input_path, help="default: tests/data/qke/emu_1d_validation.h5 of the repository")
    emu32.add_argument("--output", default="qke_emu32_validation.h5", type=file_output_path)
    emu32.add_argument("--batch-size", type=int, default=8)
    emu32.add_argument("--seed", type=int, default=0)
    emu32.add_argument("--overwrite", action="store_true",
                       help="replace --output when it holds anything but an earlier emu32 validation database, "
                            "and --json when it holds anything but an earlier report (never data)")
    # nsm1 writes only its --json report: the option every report command has (outside probe, round 26).
    nsm1.add_argument("--overwrite", action="store_true",
                      help="replace --json when it holds anything but an earlier report of this command; an HDF5 "
                           "file, a checkpoint or a model package is never replaced")
    for p in (nsm1, emu32):
        p.add_argument("--flavour-cfl", type=float, default=SolverConfig.flavour_cfl)
        p.add_argument("--hamiltonian-filter", default=SolverConfig.hamiltonian_filter, choices=("emu", "none"))
        p.add_argument("--json", default=None, type=file_output_path, help="also write the report here")
        p.add_argument("--backend", default=SolverConfig.backend, choices=("auto", "cpp", "numpy"),
                       help="time stepping: compiled kernel (cpp; auto = cpp where it can run) or NumPy")
    args = parser.parse_args(argv)
    args.reference = reference_path(args.reference, "emu_nsm1_1d.h5" if args.which == "nsm1" else "emu_1d_validation.h5")
    import h5py  # noqa: F401  (both need it: one line before any work when it is missing)

    if getattr(args, "box3d_cases", None):  # a FIFO blocked for ever (after the reference was read), a directory was an Errno
        from .._atomic import check_input_file

        check_input_file(args.box3d_cases, "Dodo's box3d_cases.json, or --box3d-cases '' for no Box3D comparison")
    check_outputs([args.json, getattr(args, "output", None)], [args.reference, getattr(args, "box3d_cases", None)],
                  writer=f"python -m dodo.qke.validate {args.which}")
    from .._output_guard import marked_report, refuse_replacing_with_report

    refuse_replacing_with_report(args.json, "python -m dodo.qke.validate --json", args.overwrite, "--overwrite")
    if args.which == "emu32" and args.batch_size < 1:  # was the engine's "batch_size must be >= 1" (solver round 3)
        raise ValueError(f"--batch-size must be an integer >= 1; got {args.batch_size}")
    if args.which == "emu32":
        # Its database is written (and resumed) as `dodo simulate`'s is: one run per --output at a time.
        with exclusive_output(args.output, "python -m dodo.qke.validate emu32"):
            if not args.overwrite:
                refuse_replacing_other_files(args.output)
            from .cli import _progress_may_replace  # a file replaced with --overwrite: only at the end (round 37)

            report = validate_emu32(args.reference, args.output, args.batch_size, args.flavour_cfl, args.seed,
                                    args.hamiltonian_filter, args.backend,
                                    write_progress=_progress_may_replace(args.output), print_summary=False)
    else:
        try:  # int()'s "invalid literal for int() with base 10: 'abc'" named no option
            seeds = [int(seed) for seed in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args.seeds!r}") from None
        if any(seed < 0 for seed in seeds):
            raise ValueError(f"--seeds must be integers >= 0; got {args.seeds!r}")
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:  # `--seeds 0,0` ran seed 0 twice, bit-equal rows listed as if two samples of the scatter
            raise ValueError(f"--seeds {args.seeds} repeats seed(s) {', '.join(map(str, repeated))}: a seed gives the "
                             "same run every time (the report would list identical runs as if independent); give "
                             "each seed once")
        report = validate_nsm1(args.reference, args.box3d_cases, seeds, args.flavour_cfl, args.only,
                               args.hamiltonian_filter, args.backend)
    if args.json:  # marked as this command's report: a rerun replaces it, a user's JSON file is kept
        write_json_atomic(args.json, marked_report(report, "python -m dodo.qke.validate"))
    if args.which == "emu32":
        # After --json: printed first, a reader that went away (`| head -1`) or a full standard output
        # ended the command before the report file of the finished validation was written (outside
        # probe, data-loss round two).
        _print_emu32_summary(report)
        if report["nvalid"] == 0:  # the report and database are written; a script must not read this as a pass
            import sys

            print(f"python -m dodo.qke.validate: error: none of the {report['nstates']} states ran to a valid "
                  "asymptotic state: nothing was compared with Emu (report written)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

