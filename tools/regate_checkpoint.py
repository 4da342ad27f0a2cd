"""Set a density-residual-ensemble checkpoint's Wiener gate factor and recompute its held-out record.

    python tools/regate_checkpoint.py CHECKPOINT FACTOR --table pdata/qke.h5 -o NEW_CHECKPOINT
    dodo export NEW_CHECKPOINT -o model.onnx

The gate r^2 / (r^2 + (c sigma)^2) (docs/training.md, "Gate toward Box3D") does not enter training:
the members and the student fit the ungated mean and the spread. So a more (larger c) or less
conservative closure needs no retraining: this sets c, scores the held-out states of the table the
checkpoint was trained on exactly as `dodo train-ensemble` does (members and student, all held-out
states and each family) and writes a new checkpoint (atomically; never over its input) whose
config and metrics say the new factor. The default model of 2026-12-02 was made so from the
2026-12-01 20:30 checkpoint (training/models/README.md).
"""
from __future__ import annotations

import argparse
import numpy as np

from dodo._atomic import check_input_file, torch_save_atomic
from dodo.training import ensemble_train as et
from dodo.training.safe_load import UntrustedCheckpointError, load_torch_file

from checkpoint_inputs import add_table_and_output_arguments, refuse_output_over_inputs, trained_table
from study_common import run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("factor", type=float, help="the Wiener gate factor c (> 0)")
    add_table_and_output_arguments(parser)
    args = parser.parse_args()
    if not np.isfinite(args.factor) or args.factor <= 0:
        parser.error(f"factor must be a finite number > 0; got {args.factor}")
    # before any work: never over an input (the table), nor over another kind of file
    refuse_output_over_inputs(parser, args, [args.checkpoint, args.table], "tools/regate_checkpoint.py")
    try:  # a FIFO given as either input blocked for ever; a directory or a file that is no checkpoint was a traceback
        check_input_file(args.checkpoint, "a checkpoint of dodo train-ensemble")
        checkpoint = load_torch_file(args.checkpoint)
        ensemble = et.ensemble_checkpoint_of(checkpoint, args.checkpoint)  # a dodo train checkpoint: one line
        check_input_file(args.table, "the preprocessed table the checkpoint was trained on")
    except (UntrustedCheckpointError, ValueError, OSError) as exc:
        parser.error(str(exc))
    if ensemble.noise_member is not None and ensemble.student is not None:
        # The student learnt sqrt(spread^2 + (k a / c)^2) at the checkpoint's c: another c here
        # would change k with it. tools/refit_growth.py distils a student for the config's c and k.
        parser.error(f"{args.checkpoint} has a label-noise member, whose term the student learnt at its own c: "
                     "set ensemble.error_per_spread (and noise.weight) in the config and run tools/refit_growth.py")
    ensemble.error_per_spread.fill_(args.factor)
    table = trained_table(parser, args, checkpoint)
    config = checkpoint["config"]
    held_rows = np.flatnonzero(et.holdout_mask(table["sources"], config["holdout"]))
    report = {**checkpoint["metrics"], **et.heldout_report(ensemble, table, held_rows)}
    checkpoint["state_dict"] = ensemble.state_dict()
    checkpoint["config"] = {**config, "error_per_spread": args.factor}
    checkpoint["metrics"] = report
    # Serialised in memory first: torch's own writer turned a full disk (or `ulimit -f`) into a traceback ending
    # in "[enforce fail at inline_container.cc:672] . unexpected pos 5632 vs 5528" (outside probe, data-loss
    # round sixteen); Python's write is an OSError, run_study's one line.
    torch_save_atomic(checkpoint, args.output)
    print(f"wrote {args.output} (error_per_spread {float(config.get('error_per_spread', 0.0)):g} -> {args.factor:g})")


if __name__ == "__main__":
    run_study(main)  # one line, exit 2; an output another process wrote meanwhile is kept
