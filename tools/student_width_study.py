"""How much does a narrower student lose against its teacher? Re-distils a trained checkpoint's
student at other widths and measures, on fresh unlabelled states, how far each student's gated
correction and growth are from the teacher's, beside the checkpoint's own student.

    python tools/student_width_study.py CHECKPOINT --config C --table pdata/qke.h5 --widths 32,48
                                        [--fresh-states 20000] [--fresh-seed-offset 7000] [--threads 1]
                                        [--growth-weight G] [--sampled-states S] [--save-dir DIR [--overwrite]]

The teacher (density members, label-noise member, growth members) is the checkpoint's; each
student is fitted as `dodo train-ensemble` fits it (ensemble_train.fit_distilled_student, the
config's distill section, only the width changed, or the growth weight and sampled states given)
on the same inputs. The fresh states are drawn
by the campaign's samplers in the training rows' family mix with a seed no training stage uses
(config.seed + 7000), in every flavour image the config trains on; the measure reads no label,
held-out state or Emu file. Per student:

- D_T: mean of METRIC_PER_DELTA |r_used(student) - r_used(teacher)| (N_tot; r_used is the gated
  correction the closure applies), with its 95th percentile;
- G: share of rows whose log growth differs from the teacher's by more than ln 1.05.

The student's error on labelled states is at most the teacher's plus D_T state by state, so D_T
bounds what the width costs. --save-dir writes each re-distilled checkpoint
(student_wW_gwG_sS.pt, with its own held-out record, not printed) for `dodo export`. About 20
minutes per student on one core (issue 13, docs/speed.md; issue 10, docs/training.md).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os

import numpy as np
import torch

from dodo._atomic import check_input_file
from dodo.training import ensemble_train as et
from dodo.conventions import MAX_THREADS, N_SPECIES
from dodo.training.ensemble import METRIC_PER_DELTA
from dodo.training.safe_load import UntrustedCheckpointError, load_torch_file

from checkpoint_inputs import TABLE_HELP, refuse_output_over_inputs, trained_table
from study_common import run_study

FRESH_SEED_OFFSET = 7000  # training uses config.seed + 0..999 (members), 1000s, 2000, 3000


@torch.no_grad()
def closure_outputs(ensemble, X: np.ndarray, teacher: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(gated correction r_used, log growth ratio) per row, of the student or of the teacher."""
    student = ensemble.student
    if teacher:
        ensemble.student = None
    try:
        head, _, growth = ensemble.outputs(torch.as_tensor(X, dtype=torch.float32))
    finally:
        ensemble.student = student
    # head = r_used * pattern; the pattern's last N_SPECIES entries are DENSITY_PATTERN, whose first is 1
    return head[:, -N_SPECIES].double().numpy(), growth.double().numpy()


def distance_row(name: str, r: np.ndarray, g: np.ndarray, r_teacher: np.ndarray, g_teacher: np.ndarray) -> str:
    gap = METRIC_PER_DELTA * np.abs(r - r_teacher)
    growth_off = np.mean(np.abs(g - g_teacher) > math.log(1.05))
    return f"{name:<50} {gap.mean():10.6f} {np.quantile(gap, 0.95):10.6f} {100 * growth_off:9.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--config", required=True, help="the train-ensemble config whose distill section applies")
    parser.add_argument("--table", required=True, help=TABLE_HELP)
    parser.add_argument("--widths", required=True, help="student widths to distil, comma-separated")
    parser.add_argument("--fresh-states", type=int, default=20000)
    parser.add_argument("--fresh-seed-offset", type=int, default=FRESH_SEED_OFFSET,
                        help=f"the fresh states' seed is config.seed + this (default {FRESH_SEED_OFFSET}; "
                             "keep it clear of the training stages' 0-3999)")
    parser.add_argument("--growth-weight", type=float, default=None, help="distill.growth_weight (default: the config's)")
    parser.add_argument("--sampled-states", type=int, default=None,
                        help="distill.sampled_states (default: the config's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-dir", default=None,
                        help="write each re-distilled checkpoint here as student_wW_gwG_sS.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --save-dir replace a file of a checkpoint's name that is not a checkpoint")
    args = parser.parse_args()
    try:
        widths = [int(item) for item in args.widths.split(",")]
    except ValueError:
        parser.error(f"--widths: {args.widths!r} is not a comma-separated list of integers")
    if not widths or min(widths) < 1 or args.fresh_states < 1:
        parser.error("--widths and --fresh-states must be positive")
    if args.fresh_seed_offset < 4000:
        parser.error("--fresh-seed-offset below 4000 draws states a training stage may have drawn")
    # --threads 0: torch's "set_num_threads expects a positive integer" traceback after the table's read;
    # 100000: a segmentation fault (exit 139; outside probe, round 32).
    if not 1 <= args.threads <= MAX_THREADS:
        parser.error(f"--threads must be an integer in [1, {MAX_THREADS}]; got {args.threads}")
    try:
        check_input_file(args.checkpoint, "a checkpoint of dodo train-ensemble")
        check_input_file(args.config, "the train-ensemble config (YAML)")
        check_input_file(args.table, "the preprocessed table the checkpoint was trained on")
        checkpoint = load_torch_file(args.checkpoint)
        et.ensemble_checkpoint_of(checkpoint, args.checkpoint)  # a dodo train checkpoint: one line, not a traceback
        config = et.EnsembleConfig.load(args.config)
    except (UntrustedCheckpointError, et.ConfigError, ValueError, OSError) as exc:
        parser.error(str(exc))
    table = trained_table(parser, args, checkpoint)
    # The checkpoint's own settings (images, holdout, seed, gate) rule; the config gives distill only.
    trained = et.EnsembleConfig(**{key: value for key, value in checkpoint["config"].items()
                                   if key in {f.name for f in dataclasses.fields(et.EnsembleConfig)}})
    distill = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name.startswith("distill_")}
    if args.growth_weight is not None:
        distill["distill_growth_weight"] = args.growth_weight
    if args.sampled_states is not None:
        distill["distill_sampled_states"] = args.sampled_states
    config = dataclasses.replace(trained, threads=args.threads, **distill)
    if args.save_dir:
        # Before any fit (about 20 minutes a width): the checkpoints were written after each fit unchecked,
        # so the study run on one of its own earlier checkpoints (CHECKPOINT = DIR/student_w32_...pt, to
        # compare widths again) replaced its input with the first re-distilled student, and a file of that
        # name that is no checkpoint was replaced without a word (data-loss probe, round five).
        for width in widths:
            refuse_output_over_inputs(parser, argparse.Namespace(output=save_path(args.save_dir, width, config),
                                                                 overwrite=args.overwrite),
                                      [args.checkpoint, args.config, args.table], "tools/student_width_study.py")
    torch.set_num_threads(args.threads)
    ensemble = et.load_ensemble(checkpoint).eval()
    if ensemble.student is None:
        parser.error(f"{args.checkpoint} has no student to compare with")

    # By state, as train-ensemble: a copy of a held-out run under another file name is not trained on.
    held, copies = et.held_out_rows(table, config.holdout)
    train_rows, held_rows = np.flatnonzero(~held & ~copies), np.flatnonzero(held)
    shares = et.family_shares(table["sources"][train_rows])
    if not shares:  # a table of other data (dodo synth, Emu files): numpy's "need at least one array" traceback
        parser.error(f"{args.table}: the fresh states are drawn in the campaign families' mix (files named "
                     "emu_seedN.h5, merger_seedN.h5, three_flavour_seedN.h5), and no training file of this table "
                     "is one: this study needs a table preprocessed from dodo simulate campaign files")
    fresh = et.sampled_state_table(args.fresh_states, shares,
                                   config.seed + args.fresh_seed_offset, et.box3d_settings(table["box3d"]))
    X_fresh = et.training_arrays(fresh, np.arange(len(fresh["r"])), config)[0]
    r_teacher, g_teacher = closure_outputs(ensemble, X_fresh, teacher=True)
    r_shipped, g_shipped = closure_outputs(ensemble, X_fresh)
    shipped_width = checkpoint["student"]["width"]
    print(f"{len(train_rows)} training states; {len(X_fresh)} fresh rows ({len(fresh['r'])} states in "
          f"{len(X_fresh) // len(fresh['r'])} images)", flush=True)

    # The student's inputs, as fit_growth_and_student builds them: training rows, then growth-label states.
    X = et.training_arrays(table, train_rows, config)[0]
    growth_table = et.load_growth_table(config, table, train_rows, log=lambda m: print(m, flush=True))
    if config.growth_members and growth_table is not None:
        X = np.concatenate([X, et.growth_member_rows(table, train_rows, config, growth_table)[2]])
    header = f"{'student':<50} {'D_T mean':>10} {'D_T p95':>10} {'G (>5%)':>10}"
    rows = [distance_row(f"{shipped_width} wide (checkpoint's)", r_shipped, g_shipped, r_teacher, g_teacher)]
    for width in widths:
        candidate = copy.deepcopy(ensemble)
        candidate.student = None
        wide = dataclasses.replace(config, distill_width=width)
        et.fit_distilled_student(candidate, table, train_rows, wide, X, log=lambda m: print(m, flush=True))
        r, g = closure_outputs(candidate, X_fresh)
        name = f"{width} wide, growth weight {wide.distill_growth_weight:g}, {wide.distill_sampled_states} sampled"
        rows.append(distance_row(name, r, g, r_teacher, g_teacher))
        print("\n".join([header, *rows]), flush=True)
        if args.save_dir:
            path = save_path(args.save_dir, width, wide)
            # The record a checkpoint carries (train-ensemble's): this student's held-out table, logged
            # only when saving, after the fresh-state table above (the study's measure) is printed.
            record = et.heldout_report(candidate, table, held_rows, log=lambda m: None)
            report = {**checkpoint.get("metrics", {}), **record}
            et.save_checkpoint(candidate, wide, table, train_rows, report, path)
            print(f"wrote {path}", flush=True)


def save_path(save_dir: str, width: int, config) -> str:
    """Where --save-dir keeps the student of ``width`` re-distilled with ``config``'s distill settings."""
    return os.path.join(save_dir, f"student_w{width}_gw{config.distill_growth_weight:g}_s{config.distill_sampled_states}.pt")


if __name__ == "__main__":
    run_study(main)  # one line, exit 2; an output another process wrote meanwhile is kept
