"""Where does a checkpoint's growth rate lose its states, and does the metric's own window as the loss win them back?

    python tools/growth_window_study.py CHECKPOINT --dev DEV_LABELS... [--fastest-dir data/qke_growth]
                                        [--train-labels 'data/qke_emu_axis/*.h5'] [--epochs 10] [--threads 2]

DEV_LABELS: Emu-axis growth-label files (`dodo simulate --linear-only --axis emu`) of training chunks the
checkpoint never saw (made after it; never the held-out seeds 900-999 or the Emu file). Prints, per
family, the share of states whose growth is within 10% of the label as `dodo score` counts
(ln 0.9 <= ln(predicted / label) <= ln 1.1) for:

- the teacher (the growth members' mean) and the shipped student, on the dev states and on 20,000 of
  the checkpoint's own training label rows (a gap between the two says variance, none says a floor);
- with --fastest-dir (the same chunks' labels along the refined fastest axis, scripts/relabel_growth.sh):
  an oracle that knows each state's exact fastest-direction rate, times the best constant, and how
  much of the Emu-axis rate's loss against it the teacher predicts (their correlation);
- the teacher's growth members fine-tuned on their own training labels with the window as the loss,
  L = mean(1 - s(d)), s the smooth indicator (two logistic steps of width 0.01) of the window, AdamW,
  lr 1e-4 peak, one cycle, EPOCHS of 512 rows, the members' seeds; and the student's growth output
  row alone (its last layer's third row, 65 numbers, densities untouched) fitted the same way.

Training labels: the --train-labels files except the dev files (default: every Emu-axis label file
of data/qke_emu_axis, the four flavour images as the checkpoint trained them), at the checkpoint's
calibration. Measure only: nothing is written. Rule and result of 2026-12-05: docs/training.md,
"The growth target's ceiling". About 5 minutes on two cores.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import math
import os

import numpy as np
import torch

from dodo._atomic import check_input_file
from dodo.conventions import MAX_THREADS
from dodo.training import ensemble_train as et
from dodo.training.ensemble import _fit, _rows
from dodo.training.safe_load import UntrustedCheckpointError, load_torch_file

LOW, HIGH = math.log(0.9), math.log(1.1)  # |predicted / true - 1| <= 0.1, as dodo score counts
WIDTH = 0.01  # the smooth window's logistic steps
TRAIN_SAMPLE = 20000


def window_loss(d: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - (smooth indicator of LOW <= d <= HIGH): the share of rows outside the window, made differentiable."""
    return (1 - torch.sigmoid((d - LOW) / WIDTH) * torch.sigmoid((HIGH - d) / WIDTH)).mean()


def within(predicted: np.ndarray, label: np.ndarray) -> float:
    d = predicted - label
    return 100.0 * float(np.mean((d >= LOW) & (d <= HIGH)))


@torch.no_grad()
def members_growth(members, X: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(X, dtype=torch.float32)
    return torch.stack([member(x)[:, 0] for member in members]).mean(dim=0).double().numpy()


@torch.no_grad()
def student_growth(student, X: np.ndarray) -> np.ndarray:
    return student(torch.as_tensor(X, dtype=torch.float32))[:, 2].double().numpy()


def window_tuned_members(members, X: np.ndarray, g: np.ndarray, seed: int, weight_decay: float, epochs: int) -> list:
    """Copies of the growth members, each fine-tuned with window_loss on its own bootstrap of (X, g)."""
    inputs, target = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(g, dtype=torch.float32)
    tuned = []
    for k, member in enumerate(members):
        pick = torch.randint(0, len(inputs), (len(inputs),), generator=torch.Generator().manual_seed(seed + k))
        x, t = inputs[pick], target[pick]
        tuned.append(_fit(copy.deepcopy(member).train(),
                          lambda network, index, x=x, t=t: window_loss(network(_rows(x, index))[:, 0] - _rows(t, index)),
                          len(x), 0, 1e-4, weight_decay, 512, epochs, seed + k))
    return tuned


def window_tuned_student_row(student, X: np.ndarray, g: np.ndarray, seed: int, epochs: int):
    """A copy of the student whose growth output row alone is fitted with window_loss (the other rows,
    and so the densities, unchanged)."""
    student = copy.deepcopy(student)
    inputs, target = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(g, dtype=torch.float32)
    with torch.no_grad():
        hidden = student.body[:-1]((inputs - student.mean) / student.std)
    last = student.body[-1]
    row = torch.nn.Module()
    row.weight = torch.nn.Parameter(last.weight[2].detach().clone())
    row.bias = torch.nn.Parameter(last.bias[2].detach().clone())
    _fit(row, lambda module, index: window_loss(_rows(hidden, index) @ module.weight + module.bias - _rows(target, index)),
         len(target), 0, 1e-4, 0.0, 512, epochs, seed)
    with torch.no_grad():
        last.weight[2] = row.weight
        last.bias[2] = row.bias
    return student.eval()


def family_row(name: str, predicted: np.ndarray, label: np.ndarray, family: np.ndarray, train: str = "") -> str:
    cells = [f"{within(predicted, label):6.1f}%"]
    cells += [f"{within(predicted[family == f], label[family == f]):6.1f}%" for f in sorted(set(family))]
    return f"{name:<44} " + " ".join(f"{c:>14}" for c in cells) + (f" {train:>14}" if train else "")


def fastest_oracle(dev_files: list[str], fastest_dir: str, dev_table: dict, teacher: np.ndarray,
                   config: "et.EnsembleConfig", box3d: dict, calibration: float) -> None:
    """The exact-fastest-rate oracle on the dev chunks that have a fastest-axis label file."""
    pairs = [(path, os.path.join(fastest_dir, os.path.basename(path))) for path in dev_files]
    pairs = [pair for pair in pairs if os.path.exists(pair[1])]
    if not pairs:
        print(f"no fastest-axis label file in {fastest_dir} for the dev chunks")
        return
    emu_axis = et.growth_label_table([glob.escape(p) for p, _ in pairs], [], box3d, calibration)
    fastest = et.growth_label_table([glob.escape(f) for _, f in pairs], [], box3d, calibration)
    if len(emu_axis["r"]) != len(fastest["r"]) or not np.allclose(
            emu_axis["rest"]["F_init_rest"], fastest["rest"]["F_init_rest"]):
        print("the fastest-axis files do not hold the dev files' states row for row: oracle skipped")
        return
    X = et.features_of(emu_axis, np.arange(len(emu_axis["r"])), config.features)
    label, exact = emu_axis["log_growth"], fastest["log_growth"]
    predicted = members_growth(teacher, X)
    loss = label - exact
    print(f"\noracle on {len(label)} dev states ({len(pairs)} chunks with a fastest-axis label): Emu-axis / fastest rate "
          f"quantiles 5/25/50/75% {np.round(np.exp(np.quantile(loss, [0.05, 0.25, 0.5, 0.75])), 3).tolist()}")
    best = max(np.linspace(0.85, 1.0, 31), key=lambda c: within(exact + math.log(c), label))
    print(f"  exact fastest rate x best constant ({best:.3f}): {within(exact + math.log(best), label):.1f}% within 10%; "
          f"teacher {within(predicted, label):.1f}%; correlation of the teacher's predicted loss with the label's "
          f"{np.corrcoef(predicted - exact, loss)[0, 1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dev", nargs="+", required=True, help="Emu-axis label files of chunks the checkpoint never saw")
    parser.add_argument("--train-labels", default="data/qke_emu_axis/*.h5")
    parser.add_argument("--fastest-dir", default=None, help="fastest-axis label files of the same chunks (data/qke_growth)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if not 1 <= args.threads <= MAX_THREADS:  # torch.set_num_threads(100000): a segmentation fault (exit 139)
        parser.error(f"--threads must be an integer in [1, {MAX_THREADS}]; got {args.threads}")
    if args.fastest_dir is not None and not os.path.isdir(args.fastest_dir):  # said only after minutes of work
        parser.error(f"--fastest-dir {args.fastest_dir}: not a directory (the fastest-axis label files of the dev chunks)")
    try:
        for path in [args.checkpoint, *args.dev]:
            check_input_file(path, "a checkpoint or growth-label file")
        checkpoint = load_torch_file(args.checkpoint)
        ensemble = et.ensemble_checkpoint_of(checkpoint, args.checkpoint).eval()
    except (UntrustedCheckpointError, ValueError, OSError) as exc:
        parser.error(str(exc))
    if ensemble.student is None or not len(ensemble.growth_members):
        parser.error(f"{args.checkpoint}: needs growth members and a student")
    torch.set_num_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(et.EnsembleConfig)}
    config = et.EnsembleConfig(**{k: v for k, v in checkpoint["config"].items() if k in fields})
    metrics = checkpoint.get("metrics")
    calibration = metrics.get("growth_calibration") if isinstance(metrics, dict) else None
    # A checkpoint whose growth members learnt the measured rates alone (no growth.data) records no
    # calibration: it ended in KeyError: 'growth_calibration' (outside probe, round 32).
    if not isinstance(calibration, (int, float)) or isinstance(calibration, bool) or not math.isfinite(calibration) \
            or calibration <= 0:
        parser.error(f"{args.checkpoint}: records no growth calibration (metrics.growth_calibration): its growth "
                     "members were not trained on growth.data labels, which this study compares against")
    box3d, calibration = et.box3d_settings(checkpoint["data"]["box3d"]), float(calibration)

    dev_names = {os.path.basename(path) for path in args.dev}
    train_files = [p for p in sorted(glob.glob(args.train_labels)) if os.path.basename(p) not in dev_names]
    # A --dev or training file that is not a growth-label file (a solver database, a preprocessed
    # table) ended in growth_label_table's ValueError traceback, exit 1 (outside probe, round 32).
    # The dev files are paths, not patterns: a name holding [ or * is read as itself.
    try:
        train = et.growth_label_table([glob.escape(p) for p in train_files], config.holdout, box3d, calibration)
        dev = et.growth_label_table([glob.escape(p) for p in sorted(args.dev)], config.holdout, box3d, calibration)
    except (ValueError, OSError) as exc:
        parser.error(" ".join(str(exc).split()))
    if train is None or dev is None:
        parser.error("no training or no dev growth label left (--train-labels, --dev)")
    X_train, _, g_train = et.training_arrays(train, np.arange(len(train["r"])), config)
    finite = np.isfinite(g_train)
    X_train, g_train = X_train[finite], g_train[finite]
    X_dev = et.features_of(dev, np.arange(len(dev["r"])), config.features)
    label = dev["log_growth"]
    family = np.array([os.path.basename(str(s)).split("_seed")[0] for s in dev["sources"]])
    sample = np.random.default_rng(0).choice(len(g_train), min(TRAIN_SAMPLE, len(g_train)), replace=False)
    print(f"{len(train_files)} training label files ({len(g_train)} rows in {config.features}), "
          f"{len(dev_names)} dev files ({len(label)} states), calibration {calibration:.4f}\n")
    print(f"{'growth within 10% of the Emu-axis label':<44} " + " ".join(
        f"{c:>14}" for c in ["dev, all", *[f"dev, {f}" for f in sorted(set(family))], "training rows"]))

    def row(name, predict):
        print(family_row(name, predict(X_dev), label, family,
                         f"{within(predict(X_train[sample]), g_train[sample]):.1f}%"), flush=True)

    teacher = list(ensemble.growth_members)
    row("teacher (growth members' mean)", lambda X: members_growth(teacher, X))
    row("student (shipped)", lambda X: student_growth(ensemble.student, X))
    tuned_row = window_tuned_student_row(ensemble.student, X_train, g_train, config.seed + 2000, args.epochs)
    row("student, growth row fitted to the window", lambda X: student_growth(tuned_row, X))
    tuned = window_tuned_members(teacher, X_train, g_train, config.seed + 1000, config.weight_decay, args.epochs)
    row("teacher, members fine-tuned to the window", lambda X: members_growth(tuned, X))
    if args.fastest_dir:
        try:
            fastest_oracle(sorted(args.dev), args.fastest_dir, dev, teacher, config, box3d, calibration)
        except (ValueError, OSError) as exc:
            parser.error(f"--fastest-dir: {' '.join(str(exc).split())}")


if __name__ == "__main__":
    main()
