"""``dodo simulate``: run the fast-flavour QKE solver on many states, write an Emu database."""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import traceback

import numpy as np

from .._atomic import OutputPathError, check_outputs, exclusive_output
from .._cli_common import add_output_argument, add_quiet_argument, input_path, one_line, resolve_output
from .._shown import counted
from .parallel import is_raised_on_every_rank, raised_on_every_rank
from .selection import (DEFAULT_OVERSAMPLE, MAX_OVERSAMPLE, MIN_OVERSAMPLE, model_identity, model_uncertainty,
                        most_uncertain)
from .solver import SolverConfig


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "simulate", help="simulate fast-flavour instabilities (QKE solver) and write an Emu-format database",
        description="Simulate random or given initial states in periodic 1D boxes with Dodo's fast-flavour "
                    "QKE solver and write their asymptotic states in Emu's database layout (docs/qke.md).")
    add_output_argument(parser, "output HDF5 file (written atomically; resumable via OUT.partial*.npz); under "
                                "mpirun/srun the states are shared out over the ranks (docs/qke.md)")
    parser.set_defaults(parser=parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=input_path, help="initial states, in the fluid rest frame (the solver's box is at rest; "
                        "a moving cell's lab-frame F and u: dodo.boost_to_rest(F, u[..., None, :])): "
                        "Emu-layout HDF5 (F4_initial(1|ccm)) or YAML ('states' list)")
    source.add_argument("--random", type=int, metavar="N", help="simulate N random ELN-crossing states")
    parser.add_argument("--seed", type=int, default=0, help="random seed for states and perturbations (default 0)")
    parser.add_argument("--family", default=None, choices=("emu", "three_flavour", "merger"),
                        help="random states: emu (Emu's validation recipe, mu = tau, flux factors to 0.9), "
                             "three_flavour (same, mu != tau) or merger (aligned fluxes, nubar_e-rich, fewer "
                             "heavy leptons, flux factors to 0.95); docs/dataset.md. Without --family: the "
                             "emu recipe with flux factors to 0.8 (the first campaigns)")
    parser.add_argument("--three-flavour", action="store_true", help="random states with independent mu and tau")
    # input_path: '' (an unset shell variable) is a usage error, as every input (outside probe, round 38)
    parser.add_argument("--select-by", metavar="MODEL", default=None, type=input_path,
                        help="targeted sampling (with --random N --family F): draw --oversample x N states of the "
                             "family and keep the N of largest uncertainty under MODEL (a model package with an "
                             "uncertainty output, or 'default' for the shipped one); docs/dataset.md, \"Targeted chunks\"")
    parser.add_argument("--oversample", type=int, default=None, metavar="K",
                        help=f"with --select-by: candidates drawn per state kept (default 6, {MIN_OVERSAMPLE} to {MAX_OVERSAMPLE})")
    parser.add_argument("--max-flux-factor", type=float, default=None,
                        help="random states: largest flux factor (default: the family's, 0.8 without --family)")
    parser.add_argument("--batch-size", type=int, default=8, help="simulations integrated together (default 8)")
    parser.add_argument("--ncell", type=int, default=64, help="cells along the box axis (default 64)")
    parser.add_argument("--nphi", type=int, default=16,
                        help="angular resolution: the directions of Emu's uniform_sphere(nphi), 92 for 16, 54 for "
                             "12, 24 for 8 (default 16)")
    parser.add_argument("--axis", default="fastest", choices=("fastest", "emu", "x", "y", "z"),
                        help="box axis: fastest-growing wavevector (default), the fastest of the 38 axes Emu's "
                             "validation runs were searched on (emu), or a fixed axis; an input file's "
                             "rotation_R, when present, sets the axes (a full run refuses --axis other than "
                             "fastest with it unless --ignore-rotation)")
    parser.add_argument("--ignore-rotation", action="store_true", help="ignore rotation_R in the input file")
    parser.add_argument("--box-length", type=float, default=None, help="box length in cm (default: k_fastest L = 18)")
    parser.add_argument("--use-input-end-time", action="store_true", help="use the input file's tend(s)")
    parser.add_argument("--flavour-cfl", type=float, default=None,
                        help=f"time step in units of 1/V_max (default {SolverConfig.flavour_cfl})")
    # default None: --linear-only must tell the emu filter asked for from the default (it does not use it)
    parser.add_argument("--hamiltonian-filter", default=None, choices=("emu", "none"),
                        help="emu (default): couple through Emu's particle-mesh transfer function, so growth "
                             "rates match Emu's; none: the continuum equations (--linear-only: neither, "
                             "its labels are the continuum linear theory's)")
    parser.add_argument("--max-cost", type=float, default=None, metavar="X",
                        help="skip (drop, with the reason) states estimated to cost more than X times the NSM1 run, "
                             "as Emu's validation set did with X = 2.5 (default: no limit)")
    parser.add_argument("--backend", default=SolverConfig.backend, choices=("auto", "cpp", "numpy"),
                        help="time stepping: the compiled C++ kernel (cpp: ~6x cheaper per step; needs --ncell a "
                             "power of two), the NumPy solver (numpy), or auto (default: cpp where it can run, else "
                             "numpy with a message); the output's settings record the one that ran")
    parser.add_argument("--threads", type=int, default=1,
                        help="compiled kernel: step a batch's simulations on up to this many threads (default 1; "
                             "--threads 2 --batch-size 2 uses both cores of a 2-core machine; same results)")
    parser.add_argument("--linear-only", action="store_true",
                        help="growth-rate labels only: the linear theory of the box modes for each state, no time "
                             "integration (about 20x cheaper; output without final states; docs/dataset.md); an input's "
                             "rotation_R starts each state's fastest-axis search (unless --ignore-rotation)")
    parser.add_argument("--device", default="cpu", choices=("cpu",), help="compute device (the solver runs on the CPU)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT when it is a complete solver database or any other file that is not an "
                             "unfinished dodo simulate database (refused without it: hours of simulations, or an "
                             "Emu database, are not lost to a rerun or to a run killed after its first batch)")
    add_quiet_argument(parser, "no progress lines")
    parser.set_defaults(func=run_simulate)
    return parser


class _RefusedArguments(argparse.ArgumentParser):
    """A parser that raises ValueError where argparse would print its usage and exit."""

    def error(self, message):
        raise ValueError(message)


def settings_differing(attrs, argv) -> list[tuple[str, str, str]]:
    """What a complete database's recorded settings (``attrs``, its HDF5 attributes) and the run of ``dodo
    simulate ARGV`` (argv after the command's name) set differently: [(option, the file's value, ARGV's)], for
    the resolution, time step, coupling, axis, box and cost cap, and the random states' flux-factor limit and
    oversampling; settings a file does not record (earlier versions) are not compared, nor are arguments that
    cannot be parsed ([]). scripts/qke_campaign.sh took a complete chunk made with other options
    (DODO_CAMPAIGN_ARGS=--ncell 16) for this campaign's (outside probe, data-loss round fifteen)."""
    import json

    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    def comparable(value):  # a number as a float (2.5 recorded as text "2.5"), else its text; None: not given
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value)

    def shown(value):
        return "not given" if value is None else f"{value:g}" if isinstance(value, float) else value

    parser = _RefusedArguments(add_help=False)
    register(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["simulate", *argv])
        settings = json.loads(text(attrs.get("settings", "{}")))
    except ValueError:
        return []
    if not isinstance(settings, dict):
        return []
    solver_run = isinstance(settings.get("solver"), dict)
    solver = settings["solver"] if solver_run else settings  # --linear-only's label files record a flat dict
    # (the dict that records it, its key there, the option that sets it, its value in ARGV)
    compared = [(solver, "ncell", "--ncell", args.ncell), (solver, "nphi_equator", "--nphi", args.nphi)]
    if solver_run:
        cost = text(attrs.get("max_cost_vs_nsm1", "none"))
        compared += [
            (solver, "flavour_cfl", "--flavour-cfl", SolverConfig.flavour_cfl if args.flavour_cfl is None
             else args.flavour_cfl),
            (solver, "hamiltonian_filter", "--hamiltonian-filter",
             args.hamiltonian_filter or SolverConfig.hamiltonian_filter),
            (settings, "axis", "--axis", args.axis), (settings, "box_length_cm", "--box-length", args.box_length),
            ({"max_cost": None if cost == "none" else cost} if "max_cost_vs_nsm1" in attrs else {}, "max_cost",
             "--max-cost", args.max_cost)]
    else:
        compared.append((settings, "max_cost", "--max-cost", args.max_cost))
    # How the random states were drawn (source): a chunk drawn to flux factor 0.9 was taken as done by a campaign
    # with DODO_CAMPAIGN_ARGS="--max-flux-factor 0.7" (outside probe, original findings round four). The first
    # campaign's files record a limit and no family: compared only where --max-flux-factor is given.
    try:
        source = json.loads(text(attrs.get("source", "{}")))
    except ValueError:
        source = {}
    source = source if isinstance(source, dict) else {}
    if args.random is not None and source.get("max_flux_factor") is not None and (
            "family" in source or args.max_flux_factor is not None):
        from .states import FAMILY_MAX_FLUX_FACTOR

        limit = args.max_flux_factor if args.max_flux_factor is not None else \
            FAMILY_MAX_FLUX_FACTOR.get(args.family, 0.8) if args.family is not None else 0.8
        compared.append((source, "max_flux_factor", "--max-flux-factor", limit))
    if args.select_by is not None and "selected_by" in source and source.get("oversample") is not None:
        compared.append((source, "oversample", "--oversample", args.oversample or DEFAULT_OVERSAMPLE))
    return [(option, shown(comparable(record[key])), shown(comparable(given)))
            for record, key, option, given in compared
            if key in record and comparable(record[key]) != comparable(given)]


def _selection_model_file(select_by):
    """The file ``--select-by`` reads (the shipped model's for "default"), None without one or for "box3d"."""
    if select_by is None or select_by in ("", "box3d"):
        return None
    from ..models import default_model_path

    return str(default_model_path()) if select_by == "default" else select_by


def _resolved_output(output: str) -> str:
    """OUT given as a symlink to a file (or to a path not there yet): its target, for the database, the
    lock and the checkpoint alike. The lock was beside the target and the checkpoint beside the link
    (`link.h5.partial.npz`), so an interrupted run rerun through the target's own name was refused as an
    unfinished database without a checkpoint, and --overwrite there would have lost the checkpoint's
    states (solver probe, round four). A checkpoint an earlier run left beside the link is still found:
    the name is then kept as given. Links to devices, directories and loops stay as given too (refused
    by the output checks, naming the link)."""
    from .campaign import _checkpoints

    if not os.path.islink(output) or _checkpoints(output):
        return output
    target = os.path.realpath(output)
    if os.path.islink(target) or (os.path.lexists(target) and not os.path.isfile(target)):
        return output
    return target


def run_simulate(args) -> int:
    """Handler of ``dodo simulate``; returns a process exit code."""
    from .campaign import simulate_states
    from .io import require_h5py
    from .parallel import world
    from .states import check_rotations, family_states, heavy_species_equal, random_crossing_states, read_states

    args.output = _resolved_output(resolve_output(args.parser, args))  # OUT or -o OUT, as `dodo synth`
    report = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        communicator = world()
    except RuntimeError as error:
        print(f"dodo simulate: error: {error}", file=sys.stderr)
        return 2
    hold = contextlib.ExitStack()  # OUT's lock, from the arguments' checks to the end
    checked = False  # whether the ranks have met after their checks (communicator.stop_together)
    try:
        require_h5py()  # before reading or sampling states: the output is HDF5
        # Never overwrite (or checkpoint over) the input file; refuse a device, FIFO or directory as OUT.
        # The --select-by model is read too: `simulate M.onnx ... --select-by M.onnx --overwrite` replaced
        # the package it ranked the states with (outside probe, round 37).
        try:
            check_outputs([args.output, args.output + ".partial.npz"], [args.input, _selection_model_file(args.select_by)],
                          writer="dodo simulate", check_locks=communicator.rank == 0)  # rank 0 holds the job's lock
        except OutputPathError as error:
            # A run to resume in a directory that takes no new file (made read-only, a read-only mount)
            # was told "choose another output", which starts it over (outside probe, data-loss round nine).
            partial = args.output + ".partial.npz"
            if "no permission to create files" not in str(error) or not os.path.isfile(partial):
                raise
            raise OutputPathError(f"{str(error).removesuffix('; choose another output')}; {partial} holds the "
                                  "batches done: make the directory writable and rerun the same command to resume "
                                  "from it (another output would start over)") from None
        if args.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0; got {args.seed}")
        # The engine's words named its parameters, not the options ("batch_size must be >= 1",
        # "threads must be ...", "max_cost must be positive", "max_flux_factor must be in (0, 0.95]";
        # outside probe, solver round 3), and came after the states were read or drawn.
        for option, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
            if value < 1:
                raise ValueError(f"{option} must be an integer >= 1; got {value}")
        if args.max_cost is not None and not args.max_cost > 0:
            raise ValueError(f"--max-cost must be a number > 0 (times NSM1's cost; inf: no limit); got {args.max_cost}")
        if args.max_cost is not None and args.use_input_end_time:  # was the engine's "max_cost needs ..."
            raise ValueError("--max-cost estimates each state's cost from the default end time (80 growth times), "
                             "so it cannot be used with --use-input-end-time: leave one of them out")
        if args.max_flux_factor is not None and not 0 < args.max_flux_factor <= 0.95:
            raise ValueError(f"--max-flux-factor must be in (0, 0.95] (the solver's angular distributions reach 0.95); "
                             f"got {args.max_flux_factor}")
        if args.box_length is not None and not (np.isfinite(args.box_length) and args.box_length > 0):
            raise ValueError(f"box length must be positive and finite; got {args.box_length}")
        if args.linear_only and args.flavour_cfl is not None:
            # Taken and dropped without a word, not even recorded in the label file's settings (outside
            # probe, round 30), as --hamiltonian-filter emu was (round 27).
            raise ValueError("--linear-only integrates nothing in time, so --flavour-cfl (the time step) would be "
                             "ignored: leave it out")
        # Resolution limits before any work: an absurd --nphi or --ncell is refused, not run out of memory.
        config = SolverConfig(ncell=args.ncell, nphi_equator=args.nphi,
                              flavour_cfl=SolverConfig.flavour_cfl if args.flavour_cfl is None else args.flavour_cfl,
                              hamiltonian_filter=args.hamiltonian_filter or SolverConfig.hamiltonian_filter,
                              seed=args.seed, backend=args.backend)
        config.validate()
        if args.threads != 1 and (args.linear_only or args.backend == "numpy"):
            # Taken and dropped without a word: the linear theory and the NumPy solver run on one thread
            # (outside probe, round 30), as --use-input-end-time with --random is refused (round 22).
            what = ("--linear-only integrates nothing in time" if args.linear_only
                    else "--backend numpy steps its batches on one thread")
            raise ValueError(f"--threads sets the compiled kernel's threads for its time stepping; {what}, so "
                             f"--threads {args.threads} would be ignored: leave it out")
        rotation = end_time = None
        # Was "count must be non-negative" or "states must have shape [n >= 1, 6, 4]; got (0, 6, 4)".
        if args.random is not None and args.random < 1:
            raise ValueError(f"--random must be a number of states >= 1; got {args.random}")
        # Options of the other source of states were dropped without a word: --input F --max-flux-factor
        # 0.5 simulated every state of F, --random N --use-input-end-time ran the default end times
        # (outside probe, round 22). Refused, as --three-flavour with --family is.
        if args.oversample is not None and args.select_by is None:
            raise ValueError("--oversample sets how many candidates --select-by ranks; without --select-by it would "
                             "be ignored: leave it out")
        if args.select_by is not None:
            if args.random is None or args.family is None:
                raise ValueError("--select-by chooses among random states of one family: give --random N and --family")
            if args.oversample is None:
                args.oversample = DEFAULT_OVERSAMPLE
            if not MIN_OVERSAMPLE <= args.oversample <= MAX_OVERSAMPLE:
                raise ValueError(f"--oversample must be an integer in [{MIN_OVERSAMPLE}, {MAX_OVERSAMPLE}]; got {args.oversample}")
            if _selection_model_file(args.select_by) is not None and args.select_by != "default" and \
                    os.path.exists(args.select_by):  # a missing one is selection.model_identity's "no such model file"
                from .._atomic import InputPathError, check_input_file

                try:  # a FIFO or a directory was "no such model file" (outside probe, round 37)
                    check_input_file(args.select_by, "a model package (one .onnx file), or 'default'")
                except InputPathError as error:
                    raise ValueError(f"--select-by: {error}") from None
        if args.input:
            stray = [name for name, given in (("--max-flux-factor", args.max_flux_factor is not None),
                                              ("--family", args.family is not None),
                                              ("--three-flavour", args.three_flavour)) if given]
            if stray:
                raise ValueError(f"{' and '.join(stray)} shape{'s' if len(stray) == 1 else ''} random states (--random); "
                                 f"with --input the states are {args.input}'s as they are, so "
                                 f"{'it' if len(stray) == 1 else 'they'} would be ignored: leave {'it' if len(stray) == 1 else 'them'} out")
        else:
            stray = [name for name, given in (("--use-input-end-time", args.use_input_end_time),
                                              ("--ignore-rotation", args.ignore_rotation)) if given]
            if stray:
                raise ValueError(f"{' and '.join(stray)} read{'s' if len(stray) == 1 else ''} the --input file's datasets; "
                                 "with --random there is no input file, so "
                                 f"{'it' if len(stray) == 1 else 'they'} would be ignored: leave {'it' if len(stray) == 1 else 'them'} out")
        if args.input:
            loaded = read_states(args.input)
            four_flux = loaded["four_flux"]
            if len(four_flux) == 0:  # was "states must have shape [n >= 1, 6, 4]; got (0, 6, 4)", naming no file
                raise ValueError(f"{args.input} holds no states: nothing to simulate")
            if args.ignore_rotation and args.input.lower().endswith((".yaml", ".yml")):
                # Accepted without a word, while --random --ignore-rotation is refused (outside probe, new
                # user's journey round two): a YAML input holds states only, never a rotation_R to leave out.
                raise ValueError(f"--ignore-rotation leaves out an HDF5 input's rotation_R; {args.input} is a YAML "
                                 "input, which holds states only, so it would be ignored: leave it out")
            if args.ignore_rotation and loaded["rotation"] is None:
                # Accepted without a word (outside probe, training round three); a note, not a refusal: the
                # campaign's scripts give --ignore-rotation to every input alike, and its files may lack rotation_R.
                report(f"note: --ignore-rotation has no effect: {args.input} has no rotation_R dataset to leave out")
            if not args.ignore_rotation and loaded["rotation"] is not None:
                rotation = loaded["rotation"]
                check_rotations(rotation, len(four_flux), f"{args.input}: rotation_R (or --ignore-rotation)")
            if args.use_input_end_time:
                if loaded["end_time"] is None:
                    # Of a YAML input this was "has no tend(s) dataset", a dataset it cannot hold (solver probe,
                    # round four): a YAML input holds states only.
                    if args.input.lower().endswith((".yaml", ".yml")):
                        raise ValueError(f"{args.input}: --use-input-end-time takes each state's end time from an "
                                         "Emu-layout HDF5 input's tend(s) dataset (s, one per state); a YAML input "
                                         "holds states only: give an HDF5 input, or leave --use-input-end-time out "
                                         "(each state then runs for 80 growth times of its fastest box mode)")
                    raise ValueError(f"{args.input} has no tend(s) dataset")
                end_time = loaded["end_time"]
                if end_time.shape != (len(four_flux),):
                    raise ValueError(f"{args.input}: tend(s) must hold one positive, finite end time per state "
                                     f"({len(four_flux)}); got shape {end_time.shape}")
                bad = np.flatnonzero(~(np.isfinite(end_time) & (end_time > 0)))
                if len(bad):  # "got shape (2,)" was said of a right shape holding zeros (outside probe, round 27)
                    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                    raise ValueError(f"{args.input}: tend(s) must hold one positive, finite end time per state; "
                                     f"state {bad[0]} has {float(end_time[bad[0]]):g} s{more}")
            source = {"input": args.input}
        else:
            from .states import FAMILY_MAX_FLUX_FACTOR

            rng = np.random.default_rng(args.seed)
            if args.family is not None:
                if args.three_flavour:
                    raise ValueError("--three-flavour and --family exclude each other (use --family three_flavour)")
                drawn = args.random * (args.oversample or 1)
                four_flux = family_states(args.family, drawn, rng, max_flux_factor=args.max_flux_factor)
                limit = FAMILY_MAX_FLUX_FACTOR[args.family] if args.max_flux_factor is None else args.max_flux_factor
            else:
                limit = 0.8 if args.max_flux_factor is None else args.max_flux_factor
                four_flux = random_crossing_states(args.random, rng, max_flux_factor=limit,
                                                   heavy_equal=not args.three_flavour)
            # The flux-factor limit the states were drawn with, and a family only where one was drawn: without
            # --family the file said "family": "emu" and "max_flux_factor": null, although its states were
            # drawn to 0.8, not the emu family's 0.9 (and --three-flavour's "three_flavour", the family's name;
            # outside probe, new user's journey round two). The campaign's first files say so: no family, 0.8.
            source = {"random": args.random, "random_seed": args.seed, "max_flux_factor": float(limit)}
            if args.family is not None:
                source["family"] = args.family
            if args.select_by is not None:
                model, digest, package = model_identity(args.select_by)
                four_flux = four_flux[most_uncertain(model_uncertainty(four_flux, args.select_by, package), args.random)]
                source.update({"selected_by": model, "selection_model_sha256": digest,
                               "oversample": args.oversample, "candidates": drawn,
                               "selection": "the largest uncertainty of the model's correction"})
            # Whether mu = tau in every state, read off the states themselves: it was `not --three-flavour`,
            # so `--family three_flavour` (mu != tau in every state) and `--family merger` (in about half)
            # recorded "heavy_equal": true (solver probe, round five).
            source["heavy_equal"] = heavy_species_equal(four_flux)
        if communicator.rank == 0:  # one lock per job: rank 0's (a refusal there stops every rank)
            hold.enter_context(exclusive_output(args.output, "dodo simulate"))
        if not args.overwrite:  # after the arguments' checks, before any work
            refuse_complete_database(args.output, linear_only=args.linear_only)
        if args.linear_only:
            if communicator.size > 1:
                raise ValueError("--linear-only runs in one process; start one process per output file")
            if end_time is not None:
                raise ValueError("--linear-only runs no time integration: leave out --use-input-end-time")
            if args.axis not in ("fastest", "emu") or args.box_length is not None:
                raise ValueError("--linear-only labels each state along its fastest axis (or with --axis emu, Emu's "
                                 "search's) in its own box (k L = 18): leave out --box-length and a fixed --axis")
            if args.hamiltonian_filter == "emu":  # "none" is what the labels are
                # Ignored before without a word (outside probe, round 27): the labels are the continuum
                # linear theory's whatever the filter, and the label file's settings did not record it.
                raise ValueError("--linear-only labels with the continuum linear theory (training rescales the "
                                 "labels by the pool's measured/linear ratio, docs/dataset.md), no particle-mesh "
                                 "filter: leave out --hamiltonian-filter emu")
            if args.axis == "emu" and rotation is not None:
                raise ValueError("--axis emu searches Emu's 38 axes itself: add --ignore-rotation to leave the "
                                 "input's rotation_R out")
            from .growth_labels import linear_growth_labels

            # An input's box axes (rotation_R: F_sim = R F, box along z, so the axis is R's third
            # row) start the refined search in place of the 24 coarse axes.
            # `command` (quoted by the refusal of a finished OUT, to rerun) as a shell reads it: joined
            # by blanks, `OUT "a b.h5"` came back as two words (outside probe, solver round 3).
            rows = linear_growth_labels(four_flux, args.output, config, max_cost=args.max_cost,
                                        attributes={"source": source, "command": shlex.join(sys.argv)}, report=report,
                                        start_axes=None if rotation is None else np.asarray(rotation)[:, 2, :],
                                        axis=args.axis, write_progress=_progress_may_replace(args.output, labels=True))
            report(f"wrote {args.output}: {len(rows['input_index'])} of {counted(len(four_flux), 'state')} labelled")
            return 0
        if rotation is not None and args.axis != "fastest":
            # The input's rotation_R sets every box's axis: --axis x was dropped without a word, the
            # output's settings recording "axis": "x" (outside probe, round 23).
            raise ValueError(f"--axis {args.axis} would not be used: {args.input}'s rotation_R sets each state's box "
                             f"axis; add --ignore-rotation to set the axes by --axis {args.axis}, or leave --axis out")
        # Every rank's arguments and inputs are checked: all go on, or all end together with one line.
        checked = True
        stop = communicator.stop_together(None)
        if stop is not None:
            raise raised_on_every_rank(ValueError(stop))
        results = simulate_states(four_flux, args.output, config, batch_size=args.batch_size, axis=args.axis,
                                  rotation=rotation, box_length_cm=args.box_length, end_time_s=end_time,
                                  attributes={"source": source, "command": shlex.join(sys.argv), "max_cost_vs_nsm1":
                                              "none" if args.max_cost is None else args.max_cost},
                                  report=report, max_cost=args.max_cost, threads=args.threads,
                                  communicator=communicator, write_progress=_progress_may_replace(args.output))
    except (ValueError, OSError, ImportError, MemoryError) as error:
        if isinstance(error, MemoryError):  # NumPy's message alone does not say what to change
            error = (f"out of memory ({str(error) or 'MemoryError'}): this run needs more memory than the machine "
                     "gives; lower --ncell, --nphi or --batch-size")
        line = one_line(error)
        if communicator.size > 1 and not is_raised_on_every_rank(error):
            if checked:  # this rank alone, during the campaign: the others may be waiting for it
                print(f"dodo simulate: error: rank {communicator.rank} of {communicator.size}: {line}; stopping all "
                      f"{communicator.size} ranks", file=sys.stderr, flush=True)
                hold.close()  # MPI_Abort ends this process here: the lock would outlive the job
                communicator.abort(2)
                return 2
            # A refusal of the arguments or inputs on this rank: the others learn it where they meet after
            # their checks, and every rank ends with exit 2; rank 0 prints the job's one line.
            line = communicator.stop_together(line)
        if communicator.rank == 0:
            print(f"dodo simulate: error: {line}", file=sys.stderr, flush=True)
        return 2
    except BaseException as error:
        # Under MPI, a rank that ends any other way (SIGTERM or SIGHUP to this rank alone, Ctrl-C, an
        # unexpected exception) must stop the job too: unwound to dodo's main and MPI_Finalize, it
        # left the other ranks waiting for it in their gather for ever (probe round fourteen). The
        # temporaries are already removed (the exception has unwound through the atomic writes).
        if communicator.size > 1:
            from ..cli import _signal_ending
            from .parallel import launcher_that_signalled

            code, line = _signal_ending(error) or (1, None)
            launcher = launcher_that_signalled(code - 128) if line is not None else None
            if launcher is not None:
                # The launcher signals every rank itself (Ctrl-C on mpirun, another rank ended, scancel): each
                # rank printed "terminated; stopping all N ranks" and called MPI_Abort again (scale-out round
                # five). Rank 0 says it once; each rank ends at once (MPI_Finalize would wait for the others).
                if communicator.rank == 0:
                    print(f"dodo simulate: {line} by the launcher, {launcher}, which stops all {communicator.size} "
                          "ranks (Ctrl-C, a cancelled job, or another rank ended: the lines around say which); "
                          "each rank's checkpoint is kept: the same command resumes", file=sys.stderr, flush=True)
                hold.close()
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):  # a reader gone: the exit status still says it
                        stream.flush()
                os._exit(code)
            if line is None:
                traceback.print_exc()
                line = f"error: {type(error).__name__} on rank {communicator.rank}"
            print(f"dodo simulate: {line}; stopping all {communicator.size} ranks", file=sys.stderr, flush=True)
            hold.close()  # as above: released before MPI_Abort, which does not return
            communicator.abort(code)
        raise
    finally:
        hold.close()
    if communicator.rank == 0:
        report(f"wrote {args.output}: {int(results['valid'].sum())} of {len(results['valid'])} states valid")
    return 0


def refuse_complete_database(path: str, linear_only: bool = False) -> None:
    """A ValueError when ``path`` holds something a run must not replace without ``--overwrite``:
    a finished ``dodo simulate`` database (attribute complete true), or any other non-empty file
    that is not a ``dodo simulate`` database at all (an Emu database, a preprocessed file, a file
    that is not HDF5).

    The run replaces its output after every batch (the database of the batches so far), so a rerun
    onto a finished database, by mistake or with other settings, would destroy it batch by batch,
    and a run killed after its first batch left that partial database in place of whatever file
    was there (outside probe, round fifteen: a real Emu database of 32 runs); an unfinished
    ``dodo simulate`` database resumes (or is refused) through its checkpoint instead. An empty
    file (``mktemp``) holds nothing to lose. An unfinished ``--linear-only`` label file is its own
    checkpoint: a full run (``linear_only`` false) onto it would replace it, so it is refused too.
    """
    import h5py

    from .._output_guard import is_solver_database
    from .._hdf5_locks import held_open_for_writing

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except (OSError, ValueError, MemoryError) as error:
        if held_open_for_writing(error):  # was "not a dodo simulate database ... or --overwrite"
            raise ValueError(f"{path} exists and another process has it open for writing (HDF5 file lock: "
                             f"{' '.join(str(error).split())}): it is not replaced; wait until that process closes "
                             "it, or give another OUT") from None
        from .campaign import _SYSTEM_READ_ERRNOS

        if isinstance(error, MemoryError) or getattr(error, "errno", None) in _SYSTEM_READ_ERRNOS:
            # A read the system failed (too many open files, an I/O error, no permission) says nothing about
            # the file: a good database was called "not a dodo simulate database ... or --overwrite to
            # replace it" (outside probe, data-loss round eight; h5py's open names the errno).
            raise OSError(f"{path} could not be read ({type(error).__name__}: {' '.join(str(error).split())}); this "
                          "says nothing about the file, which is left as it is: rerun the same command once the cause "
                          "is gone (too many open files: ulimit -n; an I/O error; no permission; no memory)") from None
        raise ValueError(f"{path} exists and is not a dodo simulate database (it cannot be read as HDF5: "
                         f"{' '.join(str(error).split())}): it is not replaced; give another OUT, or --overwrite to "
                         "replace it") from None
    if not is_solver_database(attrs):  # any `solver` attribute passed: another program's database was replaced
        raise ValueError(f"{path} exists and is not a dodo simulate database (an HDF5 file without its 'solver' "
                         "record naming dodo.qke: an Emu database, a preprocessed file, another program's output, "
                         "...): it is not replaced, since the run writes the batches finished so far over it; give "
                         "another OUT, or --overwrite to replace it")
    # The attributes read through _truth, _count and _text: an edited file's `nstates_valid` of two values
    # or "n/a", or a `complete` of two values, ended in a TypeError traceback, "The truth value of an array
    # ... is ambiguous", or "it cannot be read as HDF5: invalid literal for int()" (outside probe, round 37).
    complete, labels = not _unfinished(attrs.get("complete")), _text(attrs.get("kind")) == "linear_growth_labels"
    if complete and not linear_only and not labels:
        from .campaign import _checkpoints

        # A run killed after its last batch, between writing the finished database and removing its
        # checkpoints: the rerun docs/qke.md prescribes ("resumes ... also when every state was
        # already done") was refused here, the checkpoint left for ever (outside probe, solver round
        # 3). The checkpoint decides: of this campaign, the run finishes it; of another, it is refused.
        if _checkpoints(path):
            return
    if not complete:
        if not linear_only and labels:
            processed = _count(attrs.get("nstates_processed"))
            raise ValueError(f"{path} is an unfinished growth-label file (dodo simulate --linear-only; "
                             f"{'some states' if processed is None else counted(processed, 'state')} processed): a full run would "
                             "replace it; to resume it, rerun the command that wrote it (with --linear-only); give another "
                             "OUT, or --overwrite to replace it")
        if not labels:
            from .campaign import _checkpoints

            if not _checkpoints(path):
                # Its checkpoint resumes it (or refuses another campaign); without one (removed, or the
                # database copied elsewhere) any run replaced its states without a word (round 37).
                states = _count(attrs.get("nstates_valid"))
                valid = "" if states is None else f" ({counted(states, 'valid state')})"
                raise ValueError(f"{path} is an unfinished dodo simulate database{valid} with no checkpoint "
                                 f"{os.path.basename(path)}.partial*.npz beside it to resume from: this run would "
                                 "replace its states; give another OUT, or --overwrite to replace it")
        return
    command, states = _quoted_command(_text(attrs.get("command")) or ""), _count(attrs.get("nstates_valid"))
    details = ", ".join(([] if states is None else [counted(states, "state")])
                        + ([f"written by `{command}`"] if command else []))
    raise ValueError(f"{path} is a complete solver database{f' ({details})' if details else ''}: it is not replaced; "
                     "give another OUT, or --overwrite to replace it")


#: Most characters of a database's recorded command quoted in a refusal.
QUOTED_COMMAND_CHARS = 200


def _quoted_command(command: str) -> str:
    """The `command` attribute of a database, for a one-line refusal: control characters (a terminal's
    escape sequences, newlines) written as escapes and the text cut at QUOTED_COMMAND_CHARS; it was
    quoted whole (outside probe, round 38: an attribute is whatever wrote the file)."""
    text = " ".join(command.split())
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= QUOTED_COMMAND_CHARS else text[:QUOTED_COMMAND_CHARS] + "..."


def _progress_may_replace(path: str, labels: bool = False) -> bool:
    """Whether the run may write its database of the batches so far over ``path`` after each batch:
    no file there, an empty one, or an unfinished `dodo simulate` database (a run's own progress,
    resumed). Anything else, replaced with --overwrite (a complete database, another program's file),
    is replaced only when the run ends: `dodo simulate OUT --overwrite` stopped after its first batch
    (SIGTERM, Ctrl-C, a full disk) had already put that batch's database in place of a complete one
    (outside probe, round 37). The checkpoint OUT.partial.npz holds the progress either way. ``labels``:
    for --linear-only, whose own progress is an unfinished growth-label file (the file is its checkpoint:
    replacing another file, a run stopped midway starts over)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return True
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except (OSError, ValueError):
        return False
    from .._output_guard import is_solver_database
    from .campaign import _checkpoints

    own = is_solver_database(attrs) and _unfinished(attrs.get("complete")) and \
        (_text(attrs.get("kind")) == "linear_growth_labels") == labels
    # A full run's own progress has its checkpoint beside it (one of another campaign is refused before
    # any work); an unfinished database without one, replaced with --overwrite, is another run's states.
    return own and (labels or bool(_checkpoints(path)))


def _unfinished(complete) -> bool:
    """Whether a database's ``complete`` attribute says unfinished: absent, or one false boolean (or 0), as
    the solver writes it. Anything else (two values, text) is taken for complete, so that the file is
    refused rather than written over."""
    import numpy as np

    if complete is None:
        return True
    array = np.asarray(complete)
    return array.size == 1 and array.dtype.kind in "biu" and not bool(array.reshape(-1)[0])


def _count(value):
    """An HDF5 attribute as a count: an integer (or a one-value integer array), else None."""
    import numpy as np

    array = np.asarray(value) if value is not None else None
    if array is None or array.size != 1 or array.dtype.kind not in "iu":
        return None
    return int(array.reshape(-1)[0])


def _text(value):
    """An HDF5 attribute as text (bytes decoded), None when it is no text (absent, a number, an array)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def main(argv=None) -> int:
    """``python -m dodo.qke.cli simulate ...``: the `dodo` command itself. This entry was left from
    before `dodo` wired the subcommand and ran it without `dodo`'s guards (standard output, SIGTERM
    and SIGHUP, memory; outside probe, round 23)."""
    from ..cli import main as dodo_main

    return dodo_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
