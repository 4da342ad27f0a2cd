"""Refit a density-residual-ensemble checkpoint's stages after its density members: label-noise member, growth members, student.

    python tools/refit_growth.py CHECKPOINT --config C --table pdata/qke.h5 -o NEW_CHECKPOINT
    dodo export NEW_CHECKPOINT -o model.onnx

`dodo train-ensemble` fits the density members, then the growth members, then the student that
distils both (ensemble_train.train_on). The density members never see the growth members' labels,
so a change of growth labels (the config's `growth:` section) needs only the last two stages: this
keeps the checkpoint's density members, fits the growth members and the student exactly as
train_on does (ensemble_train.fit_growth_and_student) with the config's growth and distill
settings, recomputes the held-out record as train-ensemble does and writes a new checkpoint
(atomically; never over its input). The gate (ensemble.error_per_spread and the config's `noise:`
section: the label-noise member, fitted here as train_on fits it) is the config's too: the density
members never see it, but the student distils the gated uncertainty. The result is the one
`dodo train-ensemble --config C` makes on the same table (its members being the same fits of the
same seeds), at a third of the time. The config's member settings must be the checkpoint's
(features, members, holdout, ...): checked.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import torch

from dodo._atomic import check_input_file
from dodo.training import ensemble_train as et
from dodo.training.safe_load import UntrustedCheckpointError, load_torch_file

from checkpoint_inputs import add_table_and_output_arguments, refuse_output_over_inputs, trained_table
from study_common import run_study

# Settings that shape the density members: the checkpoint's and the config's must agree. (The gate's
# error_per_spread and sigma0 do not enter their fit; they are taken from the config.)
MEMBER_SETTINGS = ("features", "holdout", "members", "width", "depth", "steps", "batch_size", "epochs", "lr",
                   "weight_decay", "growth_weight", "mirror", "flavour_images", "seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--config", required=True, help="the train-ensemble config whose growth/distill sections apply")
    add_table_and_output_arguments(parser)
    args = parser.parse_args()
    # before any work: never over an input (the table, the config), nor over another kind of file
    refuse_output_over_inputs(parser, args, [args.checkpoint, args.table, args.config], "tools/refit_growth.py")
    try:  # a FIFO given as an input blocked for ever (outside probe, round 25)
        check_input_file(args.checkpoint, "a checkpoint of dodo train-ensemble")
        check_input_file(args.config, "the train-ensemble config (YAML)")
        checkpoint = load_torch_file(args.checkpoint)
        et.ensemble_checkpoint_of(checkpoint, args.checkpoint)  # a dodo train checkpoint: one line, not "settings differ"
        check_input_file(args.table, "the preprocessed table the checkpoint was trained on")
        config = et.EnsembleConfig.load(args.config)
    except (UntrustedCheckpointError, et.ConfigError, ValueError, OSError) as exc:
        parser.error(str(exc))
    # The files the config names are inputs too (the label-noise member's noise.oof, the growth members'
    # growth.data): -o naming one with --overwrite refitted from it and then replaced it with the
    # checkpoint (data-loss probe, round five).
    refuse_output_over_inputs(parser, args, [config.noise_oof, *et.growth_data_files(config.growth_data)],
                              "tools/refit_growth.py")
    earlier = checkpoint["config"]
    # A key a checkpoint lacks came after its run, which had it at the default (flavour_images).
    defaults = et.EnsembleConfig()
    differ = [key for key in MEMBER_SETTINGS if earlier.get(key, getattr(defaults, key)) != getattr(config, key)]
    if differ:
        parser.error(f"{args.config} and {args.checkpoint} differ in the density members' settings {differ}: "
                     "retrain with dodo train-ensemble")
    table = trained_table(parser, args, checkpoint)
    config = dataclasses.replace(config, data_path=args.table, checkpoint=args.output)
    ensemble = et.load_ensemble(checkpoint)
    ensemble.growth_members = torch.nn.ModuleList()
    ensemble.student = None
    ensemble.noise_member = None
    ensemble.label_noise_weight.fill_(0.0)
    ensemble.error_per_spread.fill_(float(config.error_per_spread))
    ensemble.sigma0.fill_(float(config.sigma0))
    # By state, as train-ensemble: a copy of a held-out run under another file name is not trained on.
    held, copies = et.held_out_rows(table, config.holdout)
    train_rows, held_rows = np.flatnonzero(~held & ~copies), np.flatnonzero(held)
    print(f"{len(train_rows)} training states, {len(held_rows)} held out; the checkpoint's "
          f"{len(ensemble.members)} density members kept", flush=True)
    if config.noise_oof:
        et.fit_label_noise(ensemble, table, config, et.training_residuals(table, train_rows, config), len(train_rows),
                           log=lambda m: print(m, flush=True))
    growth_table = et.load_growth_table(config, table, train_rows)
    et.fit_growth_and_student(ensemble, table, train_rows, config, log=lambda m: print(m, flush=True),
                              growth_table=growth_table)
    report = {"n_train": int(len(train_rows)), "n_heldout": int(len(held_rows)),
              "members_from": os.path.basename(args.checkpoint)}
    if growth_table is not None:
        report["growth_labels"] = int(len(growth_table["r"]))
        report["growth_calibration"] = float(growth_table["calibration"])
    report.update(et.heldout_report(ensemble, table, held_rows))
    et.save_checkpoint(ensemble, config, table, train_rows, report, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_study(main)  # one line, exit 2; an output another process wrote meanwhile is kept
