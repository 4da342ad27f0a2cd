"""Which distilled student? Trains the config's teacher (members + growth member) once on folds 1-4
of the training pool and distils students of several widths, step counts and growth weights; prints
for each, on fold 0, the mean |dn|/N_tot, the states worse than Box3D by more than 0.0025 N_tot and
the share of measured growth rates within 10%, for all states and the Emu-recipe ones, and the
share of states whose growth is more than 5% from the teacher's (a distillation loss that needs no
label), beside the teacher's (docs/training.md, "Distilled student").

    python tools/student_study.py [--config training/configs/ensemble_default.yaml] [--threads 2]
                                  [--students WIDTH:STEPS:GROWTH_WEIGHT[:BATCH:EPOCHS[:SAMPLED]],...]

A student with BATCH and EPOCHS is fitted on mini-batches (STEPS unused), as distill.batch_size /
distill.epochs in the config do; SAMPLED sets that student's unlabelled sampled states (default:
--sampled-states, else the config's distill.sampled_states).

Held-out files are excluded as in training; the split is tools/gate_study.py's. Minutes on two cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import numpy as np
import torch

from dodo.training import ensemble_train as et
from dodo.training.ensemble import fit_student, predict, state_error
from study_common import MAX_THREADS, check_count, growth_labels_of, run_study

# (width, steps, growth weight, batch size, epochs, sampled states); batch size 0: full batch;
# sampled states None: the run's default; --students overrides
STUDENTS = ((32, 3000, 2.0, 0, 0, None), (48, 3000, 2.0, 0, 0, None), (64, 3000, 2.0, 0, 0, None),
            (32, 6000, 2.0, 0, 0, None), (32, 3000, 5.0, 0, 0, None))


def parse_student(item: str) -> tuple:
    """One --students item. A ValueError naming it (run_study's one line, exit 2): a wrong count of
    fields was a SystemExit with exit status 1, a field that is not a number int()'s "invalid literal
    for int() with base 10", naming no option (outside probe, round 28)."""
    fields = item.split(":")
    problem = ValueError(f"--students: {item!r} is not WIDTH:STEPS:GROWTH_WEIGHT[:BATCH:EPOCHS[:SAMPLED]] "
                         "(integers, a growth weight >= 0, the width >= 1)")
    if len(fields) not in (3, 5, 6):
        raise problem
    try:
        batch_size, epochs = (int(fields[3]), int(fields[4])) if len(fields) >= 5 else (0, 0)
        sampled = int(fields[5]) if len(fields) == 6 else None
        width, steps, weight = int(fields[0]), int(fields[1]), float(fields[2])
    except ValueError:
        raise problem from None
    if width < 1 or min(steps, batch_size, epochs, sampled or 0) < 0 or not weight >= 0 or weight == float("inf"):
        raise problem
    return width, steps, weight, batch_size, epochs, sampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/ensemble_default.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--students", default=None,
                        help="WIDTH:STEPS:GROWTH_WEIGHT[:BATCH:EPOCHS],... (default: the five of the table in "
                             "docs/training.md)")
    parser.add_argument("--sampled-states", type=int, default=None,
                        help="unlabelled sampled states added to the students' inputs (default: the config's "
                             "distill.sampled_states)")
    args = parser.parse_args()
    check_count("--threads", args.threads, 1, MAX_THREADS)
    check_count("--sampled-states", args.sampled_states, 0)
    students = STUDENTS if args.students is None else tuple(parse_student(item) for item in args.students.split(","))
    config = dataclasses.replace(et.EnsembleConfig.load(args.config), threads=args.threads, distill_width=0)
    torch.set_num_threads(args.threads)
    table = et.load_table(config.data_path)
    order, fold_of = et.pool_folds(table, config, 5)
    test, train = order[fold_of == 0], order[fold_of != 0]
    emu = et.is_emu_recipe(table["sources"][test])
    growth_table = growth_labels_of(config, table, train, args.config)
    ensemble = et.train_on(table, train, config, growth_table=growth_table)
    labelled_inputs = np.concatenate([et.training_arrays(table, train, config)[0],
                                      et.training_arrays(growth_table, np.arange(len(growth_table["r"])), config)[0]])
    default_sampled = config.distill_sampled_states if args.sampled_states is None else args.sampled_states

    @functools.cache  # students with the same count share one draw
    def student_inputs(sampled_states: int) -> np.ndarray:
        if not sampled_states:
            return labelled_inputs
        extra = et.sampled_inputs(table, train, config, sampled_states)  # as train_on adds them
        print(f"students: {len(labelled_inputs) + len(extra)} input rows with {len(extra)} sampled state rows "
              f"(mirrored)", flush=True)
        return np.concatenate([labelled_inputs, extra])
    X_test = et.features_of(table, test, config.features)
    box = state_error(table["delta_box"][test], table["delta_true"][test])

    def report(name: str, out: dict, teacher: dict) -> None:
        # How far the growth is from the teacher's (the distillation loss, no labels needed).
        off_teacher = np.abs(np.exp(out["log_growth_ratio"] - teacher["log_growth_ratio"]) - 1)
        error = state_error(table["delta_box"][test] + out["r_gated"], table["delta_true"][test])
        miss = table["log_growth"][test] - out["log_growth_ratio"]
        finite = np.isfinite(miss)
        hit = np.abs(np.exp(-miss[finite]) - 1) <= 0.1
        worse = error - box > 0.0025
        print(f"{name:<26} all {error.mean():.5f} worse {int(worse.sum()):4d} | Emu recipe {error[emu].mean():.5f} "
              f"worse {int(worse[emu].sum()):3d} | growth within 10% {100 * hit.mean():.1f}% "
              f"(Emu recipe {100 * hit[emu[finite]].mean():.1f}%) | growth off the teacher's: "
              f"median {100 * np.median(off_teacher):.1f}%, > 5% on {100 * (off_teacher > 0.05).mean():.1f}%", flush=True)

    print(f"fold 0: {len(test)} states (Box3D {box.mean():.5f}); teacher on {len(train)}")
    teacher = predict(ensemble, X_test)  # no student yet: the members' outputs
    report("teacher (members)", teacher, teacher)
    for width, steps, growth_weight, batch_size, epochs, sampled in students:
        sampled = default_sampled if sampled is None else sampled
        inputs = student_inputs(sampled)
        started = time.monotonic()
        ensemble.student = fit_student(ensemble, inputs, width=width, depth=config.distill_depth, steps=steps,
                                       lr=config.lr, seed=config.seed + 2000, growth_weight=growth_weight,
                                       batch_size=batch_size, epochs=epochs)
        schedule = f"{epochs} epochs of {batch_size}" if batch_size else f"{steps} steps"
        print(f"  (fitted in {time.monotonic() - started:.0f} s)", flush=True)
        report(f"student {width} wide, {schedule}, growth weight {growth_weight:g}, {sampled} sampled",
               predict(ensemble, X_test), teacher)
        ensemble.student = None


if __name__ == "__main__":
    run_study(main)  # one line, exit 2, for a config or input file that is not its own
