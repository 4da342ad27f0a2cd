"""Training loop: AdamW, warmup + cosine, clipping, AMP on CUDA, exact resume, atomic checkpoints."""
from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import math
import multiprocessing.connection
import os
import random
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .._atomic import OutputPathError, atomic_path, sha256_file, write_json_atomic
from .._shown import counted
from .config import ExperimentConfig
from .dataset import (SPLIT_BY_STATE, CellDataset, check_preprocessed, collate_batch, count_rows, first_row_of_each_state,
                      invariant_statistics, make_splits, percentile_target_scale, rest_state_hashes_of)
from .distributed import Distribution, RankBatches, loss_weight
from .losses import LOSS_TERMS, loss_terms, weighted_loss
from .metrics import format_metric_table, metric_table
from .model import ResidualClosure, ResidualFFIModel
from .safe_load import (ANY_CHECKPOINT, TRAIN_CHECKPOINT, NotATorchFileError, UntrustedCheckpointError, load_torch_file,
                        write_torch_file)

CHECKPOINT_FORMAT = "dodo-checkpoint-v1"


class RunLog:
    """Lines to the console and to results/train.log (appended, so a resumed run continues it). ``watch``
    (RunDirectories): checked before each line is appended, so that no line goes into a directory made
    where the results directory was before it moved."""

    def __init__(self, path: Path, echo=print, watch: "RunDirectories | None" = None) -> None:
        self.path = path
        self.echo = echo
        self.watch = watch
        path.parent.mkdir(parents=True, exist_ok=True)
        _own_copy_of_a_linked_file(path)

    def __call__(self, message: str) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        line = f"[{stamp}] {message}"
        if self.echo is not None:
            self.echo(line)
        if self.watch is not None:
            self.watch.check()
        try:
            with open(self.path, "a") as handle:
                handle.write(line + "\n")
        except OSError as error:
            # The buffered write fails at close with no file named: `dodo train: error: [Errno 27] File
            # too large` (a full disk, a file size limit) named neither the log nor any file (data-loss
            # probe, round three).
            if error.filename is not None:
                raise
            raise OSError(error.errno, error.strerror or str(error), str(self.path)) from None


class RunDirectoryMovedError(OutputPathError):
    """The run's checkpoint or results directory was moved, renamed or removed while it trained."""


class RunDirectories:
    """output.checkpoint_dir and output.results_dir held open (O_PATH) while the run trains, by the process
    that writes them. A run whose directory was moved (`mv tr tr2` during `dodo train`, tr holding res/ and
    ck/) ended in "[Errno 2] No such file or directory: 'tr/res/train.log'", saying neither that the
    directory moved nor that the last.pt kept there resumes the run; moved and made again, the run went on
    writing into the new directory (outside probe, open items of data-loss round fourteen). ``check()`` raises
    RunDirectoryMovedError, saying where each moved directory is now and how to resume; ``last_written``: the
    epoch of the last.pt this run wrote (or resumed) in the checkpoint directory."""

    def __init__(self, checkpoint_dir: Path, results_dir: Path, config_path: str | None = None,
                 sets: list[str] | None = None) -> None:
        from .._atomic import HeldDirectory

        self.checkpoint_dir, self.results_dir = Path(checkpoint_dir), Path(results_dir)
        self.held = {"checkpoint": HeldDirectory(checkpoint_dir), "results": HeldDirectory(results_dir)}
        self.last_written: int | None = None
        self.config_path = config_path
        self.sets = list(sets or [])

    def _config(self, *replaced: str) -> str:
        """``--config PATH`` and the run's own --set items (``sets``, KEY=VALUE), less training.resume_from and
        the keys ``replaced`` (the advice gives them anew). The advice gave the config file alone: a run started
        with `--set model.hidden_dim=8` (or a dodo study run, every setting of its grid point an override) was
        told a resume that failed ("the network was trained with another model section"; outside probe,
        training round four)."""
        left_out = {"training.resume_from", *replaced}
        items = "".join(f" --set {shlex.quote(item)}" for item in self.sets
                        if item.split("=", 1)[0].strip() not in left_out)
        return f"--config {shlex.quote(str(self.config_path)) if self.config_path else '...'}{items}"

    def text(self) -> str | None:
        """The error's text when a directory is no longer at its path, else None."""
        fates = {role: held.fate() for role, held in self.held.items()}
        if not any(fates.values()):
            return None
        checkpoints, results = fates["checkpoint"], fates["results"]
        said = []
        for role, directory, key in (("checkpoint", self.checkpoint_dir, "output.checkpoint_dir"),
                                     ("results", self.results_dir, "output.results_dir")):
            fate = fates[role]
            if fate is None or (said and os.path.abspath(directory) == os.path.abspath(self.checkpoint_dir)):
                continue  # where it is, or one directory for both
            if fate[0] == "removed":
                what = "was removed"
            else:
                what = ("was moved or renamed" + (f" (it is now {fate[1]})" if fate[1] else "")
                        + (" and another directory made in its place" if fate[0] == "replaced" else ""))
            said.append(f"and {directory} {what} ({key})" if said else
                        f"its directory {directory} {what} while the run trained ({key})")
        stopped = f"after epoch {self.last_written}" if self.last_written is not None else "before its first last.pt"
        text = f"{', '.join(said)}; the run stopped {stopped} and writes nothing more, at the old paths or the new"
        config = self._config()
        # Paths as shell words: a directory named "c k" gave --resume /x/c k/last.pt (outside probe, training round five).
        last = shlex.quote(str(self.checkpoint_dir / "last.pt"))
        if checkpoints is not None and checkpoints[0] == "removed":
            return f"{text}: its checkpoints went with the directory: train again"
        if self.last_written is None:
            return f"{text}: no last.pt of this run was written yet: train again"
        if checkpoints is None:  # the results directory only
            where = results[1] if results[0] != "removed" else ""
            how = (f"move {where} back to {self.results_dir} and run dodo train {config} --resume {last}, or resume "
                   f"it there: dodo train {self._config('output.results_dir')} --resume {last} --set "
                   f"{shlex.quote(f'output.results_dir={where}')}" if where else
                   f"dodo train {config} --resume {last}")
            return f"{text}: {last} (epoch {self.last_written}) resumes it: {how}"
        if not checkpoints[1]:
            return (f"{text}: the last.pt in the moved directory (epoch {self.last_written}) resumes it: move the "
                    f"directory back and run dodo train {config} --resume {last}")
        now = Path(checkpoints[1])
        sets, replaced = f" --set {shlex.quote(f'output.checkpoint_dir={now}')}", ["output.checkpoint_dir"]
        if results is not None and results[0] != "removed" and results[1]:
            sets += f" --set {shlex.quote(f'output.results_dir={results[1]}')}"
            replaced.append("output.results_dir")
        return (f"{text}: {now / 'last.pt'} (epoch {self.last_written}) resumes it: move the directory back and run "
                f"dodo train {config} --resume {last}, or resume it where it is now: dodo train "
                f"{self._config(*replaced)} --resume {shlex.quote(str(now / 'last.pt'))}{sets}")

    def check(self) -> None:
        text = self.text()
        if text is not None:
            raise RunDirectoryMovedError(text)

    def close(self) -> None:
        for held in self.held.values():
            held.close()


def _own_copy_of_a_linked_file(path: Path) -> None:
    """``path`` becomes a file of its own when it is a hard link (a run's directory copied with `cp -al`
    or `rsync --link-dest` to branch or back it up): the log is the one file of a run appended to in
    place, so `dodo train --resume B/ck/last.pt` of such a copy B wrote its lines into the log of the run
    it was copied from as well (every other file is replaced by a rename, which leaves the other name's
    file as it was; data-loss probe, round five). A symbolic link is left as it is (its maker chose it)."""
    import os
    import shutil
    import stat

    try:
        status = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISREG(status.st_mode) or status.st_nlink < 2:
        return
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"training.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "sampler": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def warmup_cosine(total_steps: int, warmup_fraction: float, min_lr_fraction: float):
    """Learning-rate factor: linear warmup, then cosine decay to min_lr_fraction."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_fraction + (1.0 - min_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def batch_loss(closure: ResidualClosure, batch, loss_config, device, amp: bool, network=None):
    """network: the module to call instead of closure.network (its DDP wrapper in a distributed run)."""
    invariants, F_init, F_box, dF_true, weight = (t.to(device, non_blocking=True) for t in batch)
    # The closure the runtime applies (flavour images, stable cells uncorrected: ResidualClosure);
    # assembly, projection and limiter in fp32 (conservation to ~1e-7 N_tot).
    module = network or closure.network

    def run(x):  # AMP for the network only
        with torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
            return module(x)

    dF_pred, dF_unlimited, _ = closure(invariants, F_init, F_box, return_unlimited=True, network=run)
    return weighted_loss(loss_terms(dF_pred, dF_unlimited, dF_true, F_box, weight), loss_config)


@torch.no_grad()
def evaluate_loss(closure, loader, loss_config, device) -> dict:
    """Cell-weighted mean of every loss term over a loader."""
    closure.eval()
    sums = {name: 0.0 for name in (*LOSS_TERMS, "total")}
    count = 0
    for batch in loader:
        n = batch[0].shape[0]
        values = batch_loss(closure, batch, loss_config, device, amp=False).as_floats()
        for name in sums:
            sums[name] += values[name] * n
        count += n
    return {name: value / max(count, 1) for name, value in sums.items()}


@torch.no_grad()
def predict(closure, dataset: CellDataset, device, batch_size: int = 4096, box3d: dict | None = None) -> dict:
    """Model correction and the reference arrays for every row of ``dataset`` (float64 NumPy), as the
    runtime makes it: projection, the crossing-strength bound (Box3D's proxy of each row, from Box3D
    with settings ``box3d`` on its rest-frame input; docs/runtime.md, step 5), then the limiter.
    The training loss does not apply the bound (it never acts on the solver's data)."""
    import dodo

    from .features import box3d_keywords
    from .physics_torch import limiter_theta
    from .synthetic_model import crossing_bound_factor

    closure.eval()
    parts = {"F_init_rest": [], "F_box_rest": [], "dF_true_rest": [], "dF_model_rest": [], "theta": []}
    for start in range(0, len(dataset), batch_size):
        invariants, F_init, F_box, dF_true, _ = dataset.__getitems__(range(start, min(start + batch_size, len(dataset))))
        _, projected, _ = closure(invariants.to(device), F_init.to(device), F_box.to(device), return_unlimited=True)
        F_init64 = F_init.double().cpu().numpy()
        proxy = np.asarray(dodo.box3d(F_init64, **box3d_keywords(box3d)).growth_over_ntot, dtype=np.float64)
        factor = torch.as_tensor(crossing_bound_factor(projected.double().cpu().numpy(), proxy), dtype=projected.dtype,
                                 device=projected.device)
        bounded = projected * factor[:, None, None]
        theta = limiter_theta(F_box.to(device=projected.device, dtype=projected.dtype), bounded)
        dF = theta[:, None, None] * bounded
        for name, value in (("F_init_rest", F_init), ("F_box_rest", F_box), ("dF_true_rest", dF_true),
                            ("dF_model_rest", dF), ("theta", theta)):
            parts[name].append(value.double().cpu().numpy())
    return {name: np.concatenate(values) if values else np.zeros((0,)) for name, values in parts.items()}


def metrics_for(prediction: dict) -> dict:
    F_true = prediction["F_box_rest"] + prediction["dF_true_rest"]
    table = metric_table(prediction["F_init_rest"], prediction["F_box_rest"], F_true, prediction["dF_model_rest"])
    table["limiter_active_fraction"] = float(np.mean(prediction["theta"] < 1.0)) if len(prediction["theta"]) else 0.0
    return table


def parity_sample(prediction: dict, n: int) -> dict:
    """A few cells' densities (units of N_tot) for parity plots: true, Box3D, model."""
    F_true = prediction["F_box_rest"] + prediction["dF_true_rest"]
    F_model = prediction["F_box_rest"] + prediction["dF_model_rest"]
    take = slice(0, min(n, len(F_true)))
    return {"n_true": F_true[take, :, 0].tolist(), "n_box3d": prediction["F_box_rest"][take, :, 0].tolist(),
            "n_model": F_model[take, :, 0].tolist()}


def crossing_rows(path, rows) -> int | None:
    """How many of ``rows`` of a preprocessed file Box3D changes (no NO_CROSSING nor rejecting flag in
    its stored ``box3d_status``): the rows whose correction the runtime applies. None for a file
    without that dataset (made before it was written)."""
    import h5py

    import dodo

    from .preprocess import REJECTING_FLAGS

    with h5py.File(path, "r") as handle:
        stored = handle.get("box3d_status")
        if not isinstance(stored, h5py.Dataset) or stored.shape != (handle["F_init"].shape[0],):
            return None
        status = np.asarray(stored[:]).astype(np.int64)
    unchanged = int(dodo.CellStatus.NO_CROSSING) | sum(int(getattr(dodo.CellStatus, name)) for name in REJECTING_FLAGS)
    return int(np.count_nonzero((status[np.asarray(rows, np.int64)] & unchanged) == 0))


def _model_section_difference(trained, model_config) -> str:
    """Why a checkpoint's network cannot be resumed under ``model_config``, naming each key that
    differs with both values and the --set that matches the checkpoint: "model section differs from
    the config" named none, and a run started with `--set model.hidden_dim=32` left the user to find
    which of the section's keys a resume without it had changed (outside probe, round 41)."""
    wanted = dataclasses.asdict(model_config)
    trained = trained if isinstance(trained, dict) else {}
    keys = [key for key in sorted(set(trained) | set(wanted)) if trained.get(key) != wanted.get(key)]
    differences = ", ".join(f"model.{key} is {trained.get(key)!r} in the checkpoint and {wanted.get(key)!r} in the config"
                            for key in keys)
    fixes = " ".join(f"--set model.{key}={json.dumps(trained[key])}" for key in keys if key in trained)
    return (f"the network was trained with another model section ({differences}); cannot resume: give the "
            f"checkpoint's values" + (f" ({fixes})" if fixes else ""))


def _with_unrecorded_defaults(trained):
    """A checkpoint's model section with each key it does not record given this version's default, as `dodo
    export` and `dodo evaluate` build its network: a checkpoint of a Dodo before a model key (batch_norm) was
    exported, but its resume was refused, "model.batch_norm is None in the checkpoint and False in the config;
    ... give the checkpoint's values" (outside probe, training round four)."""
    from .config import ModelConfig

    if not isinstance(trained, dict):
        return trained
    return {**{key: value for key, value in dataclasses.asdict(ModelConfig()).items() if key not in trained}, **trained}


def build_closure(model_config, mean=None, std=None) -> ResidualClosure:
    network = ResidualFFIModel.from_config(model_config)
    if mean is not None:
        network.set_normalisation(mean, std)
    return ResidualClosure(network)


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be read or whose embedded SHA-256 digest does not match its content."""


class CheckpointReadError(OSError):
    """A checkpoint whose read failed for a reason of the system, not of the file (an I/O error, no
    memory, too many open files): nothing is known of the file, so it is not taken for damaged."""


# The errors of a read that say nothing about the file's bytes. torch raises EINVAL (and others) for a
# truncated file, so only these are set apart (outside probe, data-loss round seven).
_SYSTEM_READ_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EIO", "EMFILE", "ENFILE", "ENOMEM", "ENOBUFS", "EACCES", "EPERM", "EAGAIN", "EINTR", "ESTALE", "ETIMEDOUT")
    if hasattr(errno, name))


def _feed_digest(digest, value) -> None:
    """Canonical bytes of a checkpoint's content: tensors and arrays by dtype, shape and raw bytes,
    containers in order, scalars by repr (exact for floats)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"A{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed_digest(digest, key)
            _feed_digest(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _feed_digest(digest, item)
    else:
        digest.update(f"S{type(value).__name__}:{value!r};".encode())


class CheckpointNotWritten(OSError):
    """A checkpoint (or the metrics) of `dodo train` could not be written: the message says what is kept."""

    def __init__(self, errno_: int | None, text: str):
        super().__init__(errno_, text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _not_written(path: Path, error: OSError, epoch: int | None, checkpoint_dir: Path, last_epoch: int | None) -> str:
    """`dodo train` on a full disk (or past ulimit -f) said only the write's error, not that the last good
    last.pt was kept, nor how to go on (outside probe, training round three)."""
    where = f" after epoch {epoch}" if epoch is not None else " after its last epoch, writing the final files"
    last = checkpoint_dir / "last.pt"
    if last_epoch is None:
        kept = "no last.pt of this run was written yet; make room (or raise ulimit -f) and train again"
    else:
        kept = (f"{last} (epoch {last_epoch}) is kept whole, best.pt too: make room (or raise ulimit -f) and "
                f"resume: dodo train --config ... --resume {shlex.quote(str(last))}")
    return f"cannot write {path}: {' '.join(str(error).split())}; the run stopped{where}: {kept}"


def _stop_note(stop_after_epoch: int | None, start_epoch: int, epochs: int) -> str:
    """The end of `dodo train`'s first line when training.stop_after_epoch stops nothing."""
    if stop_after_epoch is None:
        return ""
    if stop_after_epoch < start_epoch:
        return (f"; training.stop_after_epoch: {stop_after_epoch} is past (the run resumes after epoch "
                f"{start_epoch - 1}): no stop")
    if stop_after_epoch >= epochs:
        return f"; training.stop_after_epoch: {stop_after_epoch} >= training.epochs ({epochs}): no stop"
    return ""


def _recorded_timing(value) -> dict | None:
    """A checkpoint's ``timing`` ({"seconds", "samples"} of every session so far), or None when it has none
    (checkpoints before 2026-12-07) or an odd one."""
    if not isinstance(value, dict):
        return None
    seconds, samples = value.get("seconds"), value.get("samples")
    if (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds >= 0
            and isinstance(samples, int) and not isinstance(samples, bool) and samples >= 0):
        return {"seconds": float(seconds), "samples": samples}
    return None


def _run_timing(elapsed: float, samples: int, start_epoch: int, epochs: int, before: dict | None) -> dict:
    """The metrics' ``timing``: this session's epochs, seconds and samples, and the whole run's (None for
    a resume whose checkpoint recorded no timing)."""
    session = {"epochs": [start_epoch, epochs] if start_epoch <= epochs else [], "seconds": elapsed,
               "samples": samples, "train_samples_per_second": samples / elapsed if elapsed > 0 else None}
    if before is None:
        whole = None
    else:
        seconds, total = before["seconds"] + elapsed, before["samples"] + samples
        whole = {"epochs": [1, epochs], "seconds": seconds, "samples": total,
                 "train_samples_per_second": total / seconds if seconds > 0 else None}
    return {"resumed": start_epoch > 1, "this_session": session, "whole_run": whole}


def _run_timing_line(timing: dict) -> str:
    session, whole = timing["this_session"], timing["whole_run"]
    epochs = (f"epochs {session['epochs'][0]}-{session['epochs'][1]}" if session["epochs"] else "no epoch")
    text = f"timing: this session (resumed) trained {epochs} in {session['seconds']:.1f} s (the metrics' `seconds`)"
    if whole is None:
        return text + "; the whole run's time is unknown (the resumed checkpoint records none: made before 2026-12-07)"
    return text + f"; the whole run, epochs 1-{whole['epochs'][1]}: {whole['seconds']:.1f} s (timing.whole_run)"


def checkpoint_digest(state: dict) -> str:
    """SHA-256 of a checkpoint's content (every key but "sha256"), stored in the checkpoint itself."""
    import hashlib

    digest = hashlib.sha256()
    _feed_digest(digest, {key: value for key, value in state.items() if key != "sha256"})
    return digest.hexdigest()


def previous_checkpoint_path(path: str | Path) -> Path:
    """Where save_checkpoint(..., keep_previous=True) keeps the one before: last.pt -> last.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


#: The files of a `dodo train` run in output.checkpoint_dir.
RUN_CHECKPOINTS = ("final.pt", "best.pt", "last.pt", "last.prev.pt")


def earlier_run_checkpoints(checkpoint_dir: Path, resume_from: str | None) -> list[Path]:
    """The checkpoints of another run in ``checkpoint_dir`` that this run replaces (`dodo train
    --overwrite`): all of them for a fresh run or one resumed from another directory; none when
    resuming a checkpoint of the directory itself (its own run, continued)."""
    if resumes_its_own_run(checkpoint_dir, resume_from):
        return []
    return [checkpoint_dir / name for name in RUN_CHECKPOINTS if (checkpoint_dir / name).exists()]


def resumes_its_own_run(checkpoint_dir: Path, resume_from: str | None) -> bool:
    """--resume of a checkpoint of ``checkpoint_dir`` itself: its run, continued."""
    import os

    if not resume_from:
        return False
    try:
        return os.path.samefile(os.path.dirname(os.path.abspath(resume_from)), checkpoint_dir)
    except OSError:
        return False


def refuse_linked_run_files(checkpoint_dir: Path) -> None:
    """ValueError when one of the run's files in ``checkpoint_dir`` is a symbolic link. The checkpoints
    are written atomically through dodo._atomic, which follows a link and replaces its target: a
    `ck/last.pt -> ../a/last.pt` made to continue run A in ck (`dodo train --resume ck/last.pt`, read as
    ck's own run) had A's last.pt replaced by this run's next checkpoint, in A's directory and outside
    its lock, and the rotation renamed the link itself to ck/last.prev.pt, so ck held no last.pt of its
    own (data-loss probe, round four)."""
    import os

    for name in RUN_CHECKPOINTS:
        path = Path(checkpoint_dir) / name
        if not path.is_symlink():
            continue
        target = os.path.realpath(path)
        resume = (f"; to continue the run it links to in {checkpoint_dir}, resume from the file itself: --resume "
                  f"{target}" if name in ("last.pt", "last.prev.pt") else "")
        raise ValueError(f"{path} is a symbolic link (to {os.readlink(path)}), not a file of this run: dodo train "
                         f"replaces its checkpoints in {checkpoint_dir} and would write through the link into {target}, "
                         f"another file: remove the link (its target is kept){resume}")
    # replaced_run/ too: `ck/replaced_run -> ../other/ck` (a replaced run meant to be kept on another disk,
    # a link left from a copy) made another run's directory the one --overwrite keeps the replaced run in,
    # and its checkpoints were deleted through the link, without its lock, when the run set aside its
    # earlier run and again when it finished (data-loss probe, round five).
    kept = Path(checkpoint_dir) / REPLACED_RUN_DIR
    if kept.is_symlink():
        raise ValueError(f"{kept} is a symbolic link (to {os.readlink(kept)}), not a directory of this run: dodo train "
                         f"--overwrite keeps the run it replaces there and deletes the checkpoints it finds there "
                         f"({', '.join(RUN_CHECKPOINTS)}) when the new run finishes, which through the link are "
                         f"those of {os.path.realpath(kept)}, another directory: remove the link (its target is "
                         "kept)")


#: Where `dodo train --overwrite` keeps the run it replaces until it finishes (in output.checkpoint_dir).
REPLACED_RUN_DIR = "replaced_run"


def kept_replaced_run(checkpoint_dir: Path) -> list[Path]:
    """The checkpoints of a run that an unfinished --overwrite run replaced, kept in replaced_run/."""
    kept = Path(checkpoint_dir) / REPLACED_RUN_DIR
    return [kept / name for name in RUN_CHECKPOINTS if (kept / name).is_file()]


def set_aside_earlier_run(files: list[Path], log) -> None:
    """Moves the replaced run's checkpoints into replaced_run/ when this run's first epoch has ended,
    just before its first checkpoints are written, so the directory never mixes two runs (outside
    probe, round 30: `dodo export final.pt` took the replaced run's model from such a mix).
    Before, they were deleted there, and a run stopped or killed after its first epoch lost the run it
    replaced as well as its own end: a finished model gone for an unfinished one. They now stay in
    replaced_run/ until this run finishes (finish_replacing removes them). A finished run always wins
    the place there; an unfinished one is not kept over a run kept earlier, the one that was replaced
    by it (run A finished, --overwrite B stopped, --overwrite C: A is kept until C finishes)."""
    import os

    if not files:
        return
    checkpoint_dir = files[0].parent
    kept_dir = checkpoint_dir / REPLACED_RUN_DIR
    finished = any(path.name == "final.pt" for path in files)
    already_kept = kept_replaced_run(checkpoint_dir)
    if already_kept and not finished:
        for path in files:
            path.unlink(missing_ok=True)
        log(f"removed the replaced unfinished run's {', '.join(path.name for path in files)} from "
            f"{checkpoint_dir} (--overwrite); {kept_dir} still keeps the run before it until this run finishes")
        return
    if kept_dir.exists() and not kept_dir.is_dir():
        raise ValueError(f"{kept_dir} is not a directory: the run replaced by --overwrite is kept there; "
                         "move it away and resume with --resume")
    for path in already_kept:
        path.unlink()
    kept_dir.mkdir(exist_ok=True)
    moved = []
    for path in files:
        try:
            os.replace(path, kept_dir / path.name)
            moved.append(path.name)
        except FileNotFoundError:
            pass
    if moved:
        log(f"moved the replaced run's {', '.join(moved)} to {kept_dir} (--overwrite): kept until this run "
            "finishes; move them back to keep that run")


def finish_replacing(checkpoint_dir: Path, log) -> None:
    """A run finished: the run it replaced (--overwrite), kept in replaced_run/, goes."""
    kept = kept_replaced_run(checkpoint_dir)
    for path in kept:
        path.unlink(missing_ok=True)
    kept_dir = Path(checkpoint_dir) / REPLACED_RUN_DIR
    try:
        kept_dir.rmdir()
    except OSError:
        pass  # absent, or holding files that are not a run's checkpoints: left as they are
    if kept:
        log(f"removed the replaced run's {', '.join(path.name for path in kept)} from {kept_dir}: "
            "this run has finished (--overwrite)")


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = False) -> None:
    """Atomic torch.save with an embedded SHA-256 of the content (verified by load_checkpoint).

    keep_previous: the file already at ``path`` (if any) becomes previous_checkpoint_path(path) (a hard link),
    so the last two checkpoints exist; a crash at any moment leaves ``path`` whole, old or new.
    """
    import os

    path = Path(path)
    state = dict(state)
    state["sha256"] = checkpoint_digest(state)
    with atomic_path(path) as tmp:
        write_torch_file(state, tmp)
        if keep_previous and path.exists():
            _keep_as_previous(path, previous_checkpoint_path(path))


def _keep_as_previous(path: Path, previous: Path) -> None:
    """``previous`` becomes the file now at ``path``, which stays there until the caller renames the new
    checkpoint onto it: a hard link, so no moment is left without ``path``. The rotation renamed
    ``path`` to ``previous`` first, and a second Ctrl-C or a kill before the new file's rename left the
    run without its last.pt (1 double Ctrl-C in 11 of a training run; a resume fell back to last.prev.pt
    with a warning). A file system without hard links renames, as before (data-loss probe, round four)."""
    import os

    try:
        os.unlink(previous)
    except FileNotFoundError:
        pass
    try:
        os.link(path, previous)
    except OSError:
        os.replace(path, previous)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Reads and verifies a checkpoint: CorruptCheckpointError (a ValueError) when the file is
    unreadable or its content does not match the embedded SHA-256 (checkpoints written before
    the digest was introduced have none and are accepted as they are)."""
    return verified_checkpoint(read_checkpoint_file(path, map_location, expected=TRAIN_CHECKPOINT), path)


def read_checkpoint_file(path: str | Path, map_location="cpu", expected: str = ANY_CHECKPOINT):
    """The object a checkpoint file holds (restricted load), of any kind: `dodo export` reads the
    file once and sends it on by its ``kind``. CorruptCheckpointError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        if path.exists():  # a directory (checkpoints/), a FIFO: say what it is, not "not found"
            from .._atomic import check_input_file

            check_input_file(path, "a checkpoint file (.pt), e.g. checkpoints/best.pt")
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = load_torch_file(path, map_location=map_location, expected=expected)
    except UntrustedCheckpointError:
        raise
    except NotATorchFileError as exc:  # its own words: "not a checkpoint (it is a text file ...)"
        raise CorruptCheckpointError(str(exc)) from None
    except (OSError, MemoryError) as exc:
        # Taken for a damaged file, a failed read made --resume fall back to last.prev.pt and replace the
        # good last.pt, and a best.pt read so was replaced by a worse epoch's model (the run's best lost);
        # under `ulimit -n 6` a whole last.pt read "truncated or corrupted" (data-loss round seven).
        if isinstance(exc, MemoryError) or exc.errno in _SYSTEM_READ_ERRNOS:
            raise CheckpointReadError(f"{path}: could not be read ({type(exc).__name__}: {exc}); this says nothing "
                                      "about the file, which is left as it is: run again once the cause is gone "
                                      "(an I/O error, no memory, too many open files: ulimit -n)") from exc
        raise CorruptCheckpointError(f"{path}: not a readable Dodo checkpoint, truncated or corrupted ({exc})") from exc
    except Exception as exc:  # torch raises several types for a corrupt file
        raise CorruptCheckpointError(f"{path}: not a readable Dodo checkpoint, truncated or corrupted ({exc})") from exc
    return checkpoint


def verified_checkpoint(checkpoint, path: str | Path) -> dict:
    """``checkpoint`` (read from ``path``) when it is a `dodo train` checkpoint whose content matches
    its stored SHA-256; ValueError / CorruptCheckpointError naming ``path`` otherwise."""
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
    if isinstance(checkpoint, dict) and checkpoint.get("kind") == "density_residual_ensemble":
        raise ValueError(f"{path}: a `dodo train-ensemble` checkpoint; this command reads `dodo train` checkpoints "
                         "(export it with `dodo export`, score the package with `dodo score`; its held-out report "
                         "is printed by train-ensemble)")
    if found != CHECKPOINT_FORMAT:
        if isinstance(found, str) and found.startswith("dodo-checkpoint-"):
            # "not a Dodo checkpoint" of a checkpoint another Dodo version wrote (outside probe, training round three)
            raise ValueError(f"{path}: a Dodo checkpoint of format {found!r}, which this dodo "
                             f"({_this_version()}) does not read (it reads {CHECKPOINT_FORMAT!r}); "
                             f"{_written_by(checkpoint, 'format')}")
        raise ValueError(f"{path}: not a Dodo checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    stored = checkpoint.get("sha256")
    if stored is not None:
        computed = checkpoint_digest(checkpoint)
        if computed != stored:
            raise CorruptCheckpointError(
                f"{path}: checkpoint is corrupted: SHA-256 of its content is {computed[:16]}..., the digest stored "
                f"at save time is {str(stored)[:16]}... (the file was altered after it was written)")
    problem = _layout_problem(checkpoint)
    if problem is not None:  # a checkpoint without its digest, or re-signed: KeyError / TypeError tracebacks
        raise CorruptCheckpointError(f"{path}: not a usable Dodo checkpoint: {problem} ({_edited_or_other(checkpoint)})")
    return checkpoint


def _this_version() -> str:
    import dodo

    return f"dodo {getattr(dodo, '__version__', 'unknown')}"


def _written_by(checkpoint, what: str = "layout") -> str:
    """Who wrote a checkpoint this dodo cannot read, and what to do."""
    version = checkpoint.get("dodo_version") if isinstance(checkpoint, dict) else None
    by = f"written by dodo {version}" if isinstance(version, str) else "its writer's version is not recorded"
    return f"{by}: read it with the dodo version that wrote it (dodo export there makes its model package), or retrain"


def _edited_or_other(checkpoint: dict) -> str:
    """Why a checkpoint's layout is not this dodo's: another version wrote it, or it was edited. Every such
    checkpoint was called "edited or damaged", also one of another Dodo version (outside probe, training round
    three)."""
    version = checkpoint.get("dodo_version")
    import dodo

    if isinstance(version, str) and version != str(getattr(dodo, "__version__", "unknown")):
        return f"{_written_by(checkpoint)}; or the file was edited or damaged"
    return "the file was edited or damaged"


def _layout_problem(checkpoint: dict) -> str | None:
    """What a `dodo train` checkpoint lacks of what export, evaluate and inspect read, or None."""
    for key in ("config", "model_state", "data"):
        if not isinstance(checkpoint.get(key), dict):
            return f"its {key!r} is {type(checkpoint.get(key)).__name__}, not a mapping"
    for key in ("data", "model", "loss"):
        if not isinstance(checkpoint["config"].get(key), dict):
            return f"its config has no {key!r} section"
    data = checkpoint["data"]
    if not isinstance(data.get("box3d"), dict):
        return "it records no Box3D settings (data.box3d)"
    for key in ("sha256", "kind", "path"):
        if not isinstance(data.get(key), str):
            return f"its data.{key} is {type(data.get(key)).__name__}, not a string"
    # The sections as evaluate and inspect read them: an unknown key (`data.features`) was refused
    # there but taken by export and resume, and a NaN target_scale was blamed on the data file
    # (`pp.h5: 30 row(s) with non-finite values`), not the checkpoint (outside probe, round 34; round 35).
    from .config import ConfigError, DataConfig, LossConfig, ModelConfig, from_dict

    for key, section in (("data", DataConfig), ("model", ModelConfig), ("loss", LossConfig)):
        try:
            from_dict(section, checkpoint["config"][key], f"config.{key}")
        except ConfigError as error:
            return f"its {error}"
    from .config import HEAD_NAMES

    head = checkpoint["config"]["model"].get("head", "equivariant")
    if head not in HEAD_NAMES:  # "unknown head 'x'" named no file (outside probe, training round three)
        return f"its config.model.head is {head!r}, a head this dodo does not build (it builds {list(HEAD_NAMES)})"
    scale = checkpoint.get("target_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        return f"its target_scale is {scale!r}, not a finite positive number (or null)"
    return None


#: Settings a resumed run cannot take from the config: the optimizer, the scheduler and the random
#: generators continue from the checkpoint (so a new lr, weight decay or seed was ignored while the
#: new checkpoints recorded it), and the split is drawn again from these (so a new one trained the
#: resumed epochs on rows of the first epochs' validation and test splits, the final metrics' rows).
#: Outside probe, round 32: `--resume last.pt --set training.lr=0.5` gave bit-identical weights.
RESUME_FIXED = {("training", "lr"): "the optimizer and scheduler it continues hold it",
                ("training", "weight_decay"): "the optimizer it continues holds it",
                ("training", "seed"): "the random generators it continues were seeded with it",
                ("data", "split_seed"): "the train/val/test split is drawn with it",
                ("data", "train_fraction"): "the train/val/test split is drawn with it",
                ("data", "val_fraction"): "the train/val/test split is drawn with it",
                ("data", "max_samples"): "the train/val/test split is drawn with it"}


def non_finite_loss_message(terms: dict, epoch: int, global_step: int, config) -> str:
    """The line for a training step whose loss is NaN or Inf, naming what can have made it. It said "lower
    training.lr or check the data file" whatever the cause: of finite terms whose weighted sum overflowed
    (loss.w_flux: 1e300), and of the first step, before any update (outside probe, training round four)."""
    head = f"non-finite loss at epoch {epoch}, step {global_step + 1} ({terms})"
    parts = {name: value for name, value in terms.items() if name != "total"}
    if parts and all(math.isfinite(value) for value in parts.values()):
        weights = ", ".join(f"loss.{key} = {value!r}" for key, value in dataclasses.asdict(config.loss).items())
        return f"{head}: every term is finite, their weighted sum is not: lower the loss weights ({weights})"
    if global_step == 0:
        scale = config.data.target_scale
        return (f"{head}: at the first step, before any update (so not training.lr): check the data file"
                + (f" and data.target_scale = {scale!r} (the loss weight N_tot / target_scale; 'p99' or null)"
                   if scale is not None else ""))
    return f"{head}{divergence_advice(config)}"


def divergence_advice(config) -> str:
    """The end of the line of a diverged run: "; lower training.lr or check the data file", or, where
    lr x weight_decay is 1 or more, that product named. AdamW multiplies every weight by 1 - lr x
    weight_decay each step: at 1 or more the weights are zeroed or flip sign and grow; weight_decay 1e30
    was told "lower training.lr" alone (outside probe, training round four)."""
    t = config.training
    if t.lr * t.weight_decay >= 1:
        return (f": training.lr x training.weight_decay = {t.lr!r} x {t.weight_decay!r} = {t.lr * t.weight_decay:.4g} "
                "is 1 or more (AdamW multiplies every weight by 1 - lr x weight_decay each step): lower "
                "training.weight_decay or training.lr")
    return "; lower training.lr or check the data file"


def refuse_settings_a_resume_cannot_change(checkpoint: dict, resume_path, config) -> None:
    """ValueError naming the first setting of RESUME_FIXED that the config gives another value than
    the run in ``checkpoint`` was started with (a setting the checkpoint does not record is not compared)."""
    recorded = checkpoint.get("config")
    for (section, key), why in RESUME_FIXED.items():
        saved = recorded.get(section) if isinstance(recorded, dict) else None
        if not isinstance(saved, dict) or key not in saved:
            continue
        given = getattr(getattr(config, section), key)
        if given != saved[key]:
            consequence = ("the resumed epochs would train on rows of the run's validation and test splits"
                           if section == "data" else f"{given!r} would be ignored")
            raise ValueError(f"{resume_path}: cannot resume with {section}.{key} = {given!r}: the run was started with "
                             f"{saved[key]!r} and {why}, so {consequence}; resume with {saved[key]!r}, or start a new "
                             f"run (another output.checkpoint_dir, or --overwrite)")


def _refuse_a_split_by_row_that_differs(checkpoint: dict, resume_path, config, n_rows: int, splits, data_path) -> None:
    """ValueError where the checkpoint's run split its file by row (a dodo before make_splits' state_of) and
    that split differs from this one (the file repeats a state): its validation and test rows would change."""
    if checkpoint.get("data", {}).get("split") == SPLIT_BY_STATE:
        return
    d = config.data
    by_row = make_splits(n_rows, d.train_fraction, d.val_fraction, d.split_seed, d.max_samples)
    if all(np.array_equal(by_row.get(name), splits.get(name)) for name in ("train", "val", "test")):
        return
    raise ValueError(f"{resume_path}: the run was started by a dodo that split {data_path} by row, and the file repeats "
                     "states (this dodo keeps each state's rows in one split), so the resumed epochs would train on "
                     "rows of the run's validation and test splits; start a new run (another output.checkpoint_dir, "
                     "or --overwrite)")


def load_resume_checkpoint(path: str | Path, log=print) -> tuple[dict, Path]:
    """The checkpoint to resume from: ``path``, or, when it is missing, unreadable or fails its
    checksum, the previous one kept beside it (last.prev.pt), with a message saying so."""
    path = Path(path)
    try:
        return load_checkpoint(path), path
    except (FileNotFoundError, CorruptCheckpointError) as error:
        previous = previous_checkpoint_path(path)
        if not previous.is_file():
            raise
        log(f"WARNING: cannot resume from {path}: {error}; using the previous checkpoint {previous}")
        try:
            return load_checkpoint(previous), previous
        except (FileNotFoundError, CorruptCheckpointError) as second:
            raise CorruptCheckpointError(f"no usable checkpoint to resume from: {error}; and {second}") from second


def _best_of_the_resumed_run(checkpoint: dict, resume_path: Path, checkpoint_dir: Path, nothing_left: bool,
                             log) -> tuple[float, dict | None]:
    """(best validation loss to go on from, checkpoint to write as checkpoint_dir/best.pt or None).

    The end of a run reads checkpoint_dir/best.pt, which a resumed run rewrote only when an epoch beat
    the best validation loss restored from last.pt. A resume into another directory (`--resume
    A/last.pt` with output.checkpoint_dir B), or of a run whose best.pt was deleted or damaged, trained
    every remaining epoch and then stopped with `checkpoint not found: B/best.pt` (or "truncated or
    corrupted"), writing no final.pt and no metrics; every later resume ended the same way, so the run
    could never finish (data-loss probe, round four). Now the run's best.pt is taken from beside the
    resumed checkpoint (and written into B at this run's first checkpoint); when there is none, or it is
    unreadable or of another run, the best is chosen among the resumed epochs, said once in the log."""
    own_best = Path(checkpoint_dir) / "best.pt"
    source = Path(resume_path).parent / "best.pt"
    same_place = resumes_its_own_run(checkpoint_dir, str(resume_path))
    best_val = float(checkpoint["best_val_loss"])
    try:
        best = load_checkpoint(source)
        if best.get("data", {}).get("sha256") != checkpoint["data"].get("sha256") or \
                _with_unrecorded_defaults(best.get("config", {}).get("model")) != \
                _with_unrecorded_defaults(checkpoint["config"].get("model")):
            raise CorruptCheckpointError(f"{source}: the best model of another run (other data or network)")
        if float(best.get("best_val_loss", math.nan)) > best_val:
            raise CorruptCheckpointError(f"{source}: its validation loss {best.get('best_val_loss')!r} is above the "
                                         f"best the resumed checkpoint records ({best_val!r}): another run's")
    except (FileNotFoundError, CorruptCheckpointError, ValueError) as error:
        reason = f"checkpoint not found: {source}" if isinstance(error, FileNotFoundError) else str(error)
        if nothing_left:
            log(f"WARNING: no usable best model of the resumed run ({reason}); with no epoch left to train, the "
                f"resumed checkpoint {resume_path} is written as {own_best}")
            return best_val, dict(checkpoint)
        log(f"WARNING: no usable best model of the resumed run ({reason}); {own_best} will be the best of the "
            "epochs trained from here on")
        return math.inf, None
    if same_place:
        return best_val, None  # in place already
    log(f"the resumed run's best model {source} is written as {own_best} with this run's first checkpoint")
    return best_val, best


def check_training_data(checkpoint: dict, checkpoint_path, data_path, action: str, hint: str = "",
                        data_sha256: str | None = None) -> None:
    """Refuse to ``action`` (resume, evaluate, inspect) a checkpoint with the data file
    ``data_path`` when its SHA-256 differs from the one the checkpoint was trained on: the same
    path may now hold other rows, and the checkpoint's train/val/test splits would silently be
    other cells. ``hint``: what to do instead, appended to the message; ``data_sha256``: the
    file's SHA-256 when already computed."""
    if checkpoint["data"].get("sha256") != (data_sha256 or sha256_file(data_path)):
        raise ValueError(f"{checkpoint_path}: trained on another data file (checksum differs: {data_path} is not "
                         f"the file it was trained on); cannot {action}{hint}")


def closure_from_checkpoint(checkpoint: dict, path: str | Path | None = None) -> ResidualClosure:
    """The checkpoint's network; weights that do not fit its model section (an edited checkpoint)
    are a CorruptCheckpointError naming ``path``, in one line, not torch's multi-line report."""
    from .config import ModelConfig, from_dict

    model_config = from_dict(ModelConfig, checkpoint["config"]["model"], "checkpoint model")
    closure = build_closure(model_config)
    try:
        closure.network.load_state_dict(checkpoint["model_state"])
    except RuntimeError as error:
        text = " ".join(str(error).split())
        raise CorruptCheckpointError(f"{path or 'checkpoint'}: its weights do not fit its model section ({text[:300]}"
                                     f"{' ...' if len(text) > 300 else ''}); {_edited_or_other(checkpoint)}") from None
    closure.eval()
    return closure


def non_finite_weight(network) -> str | None:
    """"weight NAME (k of n entries NaN or infinite)" for the first parameter or buffer of ``network``
    that is not finite, or None."""
    for kind, entries in (("weight", network.named_parameters()), ("buffer", network.named_buffers())):
        for name, value in entries:
            if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
                return f"{kind} {name} ({int((~torch.isfinite(value)).sum())} of {value.numel()} entries NaN or infinite)"
    return None


def refuse_weights_that_are_not_finite(closure, path, action: str) -> None:
    """A CorruptCheckpointError naming ``path`` when the checkpoint's network holds a NaN or infinite
    weight: `dodo evaluate` and `inspect` reported NaN metrics of it (inspect with NumPy's all-NaN
    warning), where `dodo export` refused it (outside probe, round 34, left alone; round 35)."""
    bad = non_finite_weight(closure.network)
    if bad is not None:
        raise CorruptCheckpointError(f"{path}: the network's {bad} is not finite (did the run diverge, or was the "
                                     f"file edited?): it would predict NaN on every cell; {action} another "
                                     "checkpoint (best.pt of the run, or an earlier one)")


def batch_norm_drops_last_batch(config: ExperimentConfig, train_rows: int, world_size: int = 1) -> bool:
    """Whether each epoch's last, partial training batch is left out: with model.batch_norm, a batch
    norm layer in training mode needs 2 rows or more a process, and a last batch of fewer than
    2 x world_size rows (160 rows in batches of 53: one row) ended the run at its first epoch's end
    in torch's `Expected more than 1 value per channel when training` (outside probe, round 32).
    Shuffled anew each epoch, no row is left out for good; runs that worked before are unchanged.
    A ValueError when no batch could hold 2 rows a process (data.batch_size, or the split, too small)."""
    if not config.model.batch_norm:
        return False
    batch, smallest = config.data.batch_size, 2 * world_size
    if batch < smallest or train_rows < smallest:
        processes = f" over {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"model.batch_norm needs at least 2 rows a batch in each process (batch statistics): "
                         f"data.batch_size {batch} and a training split of {train_rows} rows{processes} allow "
                         f"fewer; raise data.batch_size (to >= {smallest}) or set model.batch_norm: false")
    return 0 < train_rows % batch < smallest


# Data-loader workers hand each batch to the training process through file descriptors (torch's
# default sharing strategy). Where the process may not open enough files, a worker's sender thread
# failed with "[Errno 24] Too many open files" and the batch never came: `dodo train` with
# data.num_workers 2 under `ulimit -n 24` waited in poll for over an hour (outside probe, data-loss
# round six). The soft limit is raised to the hard one; below WORKER_FILE_LIMIT the run is refused
# before any work, and WORKER_BATCH_TIMEOUT_S bounds the wait for a batch should a worker still fail.
WORKER_FILE_LIMIT = 256
WORKER_BATCH_TIMEOUT_S = 600
#: Longest wait for each worker to end once a loop is left early (torch's own wait: MP_STATUS_CHECK_INTERVAL).
WORKER_SHUTDOWN_WAIT_S = 5.0
#: Longest wait for a worker whose batch hand-over failed to be seen ended (it is exiting: a few ms).
WORKER_EXIT_WAIT_S = 2.0


def _terminating_signals() -> list:
    return [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


#: The signals whose Python-level handlers a loader held while it forked its workers (_SignalSafeLoader),
#: which each worker sets back to Python's own handling (worker_init_fn).
_HANDLERS_BEFORE_FORK: dict = {}


def _restore_signal_handlers_in_worker(worker_id: int) -> None:
    """worker_init_fn: a worker is forked with Ctrl-C, SIGTERM and SIGHUP held (_SignalSafeLoader); it
    ignores them from here on, and the main process, which handles them, shuts it down (torch sends it
    the end of its work; a worker whose main process is gone ends by itself). A worker that a group's
    SIGTERM ended first made torch's SIGCHLD handler raise "DataLoader worker (pid N) is killed by signal:
    Terminated" in the main process while it unwound: that error replaced the signal (`dodo study:
    error: ...`, exit 2, the run given no row) or followed it as a 22-line traceback (data-loss round
    seven); with the command's own handler inherited, each worker printed a `_Terminated` traceback."""
    for signum in _HANDLERS_BEFORE_FORK:
        signal.signal(signum, signal.SIG_IGN)  # also discards one that came since the fork (held: blocked)
    if _HANDLERS_BEFORE_FORK and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, list(_HANDLERS_BEFORE_FORK))
    sys.excepthook = _quiet_about_abandoned_handovers(sys.excepthook)


def _quiet_about_abandoned_handovers(hook):
    """A worker's sys.excepthook that says nothing of a batch whose hand-over the main process abandoned:
    a worker passes each batch's tensors through file descriptors, served by multiprocessing's
    resource_sharer thread, which reported the main process's dropped connection (EOFError,
    ConnectionResetError) as a traceback after `dodo train: terminated` (3 group signals in 10, and a
    worker SIGKILLed alone 1 time in 4; outside probe, data-loss rounds seven and eight). The main
    process raises its own error where it still waits for that batch."""

    def excepthook(kind, value, traceback):
        first = traceback
        if (issubclass(kind, (EOFError, ConnectionError)) and first is not None
                and first.tb_frame.f_code.co_name == "_serve"
                and first.tb_frame.f_code.co_filename.endswith("resource_sharer.py")):
            return
        hook(kind, value, traceback)

    return excepthook


def _shut_down_workers_quietly(iterator) -> None:
    """Ends a loader iterator's workers on the way out of an exception (a signal, an error), where a
    worker that had died too (the group's SIGTERM in the moment before it ignored it, the OOM killer)
    made torch's SIGCHLD handler raise "DataLoader worker (pid N) is killed by signal" inside the
    iterator's __del__: a 20-line "Exception ignored" traceback after `dodo train: terminated` (outside
    probe, data-loss round eight). The exception on its way out says what ended the run."""
    cut_short = getattr(iterator, "_shutdown", False)  # torch's own shutdown begun, which it does not redo
    try:
        iterator._shutdown_workers()
    except RuntimeError as error:
        if "DataLoader worker" not in str(error):
            raise
        for worker in getattr(iterator, "_workers", []):  # the joins that error cut short; each was sent its end
            worker.join(timeout=WORKER_SHUTDOWN_WAIT_S)
    if cut_short:
        # A signal inside torch's shutdown at an epoch's end (which marks the iterator shut down before it sends
        # each worker its end) left a worker waiting for its end for ever, and the main process joining it at
        # exit: `dodo train` stayed after "dodo train: terminated" (1 group SIGTERM in 10 of data.num_workers 2;
        # outside probe, data-loss round nine). Such a worker ignores SIGTERM (_restore_signal_handlers_in_worker),
        # so torch's terminate() cannot end it.
        for worker in getattr(iterator, "_workers", []):
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=WORKER_SHUTDOWN_WAIT_S)


def _batches_then_shut_down(iterator):
    """The iterator's batches; its workers shut down quietly if the loop is left early."""
    finished = False
    try:
        yield from iterator
        finished = True
    except (ConnectionError, EOFError) as error:
        # A worker killed (the OOM killer) while it handed a batch's file descriptors over: the run ended
        # with `dodo train: error: [Errno 104] Connection reset by peer`, no word of a worker (1 SIGKILLed
        # worker in 8; outside probe, data-loss round eight).
        workers = list(getattr(iterator, "_workers", []))
        # The connection resets while the killed worker exits: a moment for that exit, seen by its sentinel
        # (by is_alive() alone, one such kill in 14 named no worker).
        ready = multiprocessing.connection.wait([worker.sentinel for worker in workers],
                                                timeout=WORKER_EXIT_WAIT_S) if workers else []
        ended = [str(worker.pid) for worker in workers if worker.sentinel in ready or not worker.is_alive()]
        # An EOFError (the connection closed before its first bytes) also left `dodo train` as a 60-line
        # traceback, exit 1.
        cause = f"{type(error).__name__}: {' '.join(str(error).split())}".rstrip(": ")
        raise RuntimeError((f"DataLoader worker (pid(s) {', '.join(ended)}) ended" if ended else
                            "a DataLoader worker failed") + f" while it handed a batch over ({cause})") from None
    finally:
        if not finished:
            _shut_down_workers_quietly(iterator)


class _SignalSafeLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers are forked with Ctrl-C, SIGTERM and SIGHUP held (their Python handlers
    replaced by one that notes the signal), the signal that came meanwhile given to its handler once the
    fork is over. Python runs the at-fork handlers (dodo's claims lock, logging's) as Python code, where
    the handler's exception was swallowed ("Exception ignored in: _release_running_lock_after_fork"): a
    SIGTERM to the job's process group (a batch system's cancel) at a worker's fork was lost and the run
    went on training, with the claims lock that handler should have released left held (2 group SIGTERMs
    in 16 of `dodo train` with data.num_workers 2; outside probe, data-loss round seven). Blocking the signals
    alone would not do: another thread (torch's) takes a signal it does not block, and Python still runs the
    handler in the main thread; they are blocked as well so that the workers start with them blocked (data-loss
    round nine)."""

    def __iter__(self):
        check_unchanged = getattr(self.dataset, "check_unchanged", None)
        if check_unchanged is not None:  # before each epoch's workers open the data file anew (data-loss round eight)
            check_unchanged()
        if self.num_workers == 0 or threading.current_thread() is not threading.main_thread():
            return super().__iter__()
        held: list[int] = []
        previous = {}
        iterator = None
        try:
            for signum in _terminating_signals():
                if callable(signal.getsignal(signum)):
                    previous[signum] = signal.signal(signum, lambda number, frame: held.append(number))
            _HANDLERS_BEFORE_FORK.clear()
            _HANDLERS_BEFORE_FORK.update(previous)
            # Blocked too, so that each worker starts with them blocked until its worker_init_fn ignores
            # them: one that came after torch's worker handlers (its SIGTERM handler re-raises a signal not
            # from the main process) and before worker_init_fn killed the worker, and a worker alone
            # signalled there ended the run with "DataLoader worker (pid N) is killed by signal:
            # Terminated" (outside probe, data-loss round nine; the known gap of round eight).
            mask = (signal.pthread_sigmask(signal.SIG_BLOCK, list(previous))
                    if previous and hasattr(signal, "pthread_sigmask") else None)
            try:
                iterator = _started_workers(super().__iter__, self.num_workers)
            finally:
                if mask is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one that came meanwhile is held
        except BaseException:
            # A worker the same group signal had killed: torch's SIGCHLD handler raised "DataLoader worker
            # (pid N) is killed by signal: Terminated" here, and `dodo study` ended with that error (exit 2,
            # its run given no row) in place of the signal that ended it.
            if not held:
                raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if held:  # its exception, outside the fork
            if iterator is not None:
                _shut_down_workers_quietly(iterator)
            previous[held[0]](held[0], None)
        return _batches_then_shut_down(iterator)


def _started_workers(start, num_workers: int):
    """``start()`` (a loader's iterator, which starts its workers), with a failure to make the workers'
    queues said as such. Their semaphores live in /dev/shm: where it is full or small (a container's 64 MB,
    a cluster node's) `dodo train` with data.num_workers 2 ended with "dodo train: error: [Errno 28] No
    space left on device", naming no file and so pointing at the run's own disk, then torch's 6-line
    "Exception ignored in ... _MultiProcessingDataLoaderIter.__del__ ... no attribute '_workers'" (outside
    probe, data-loss round sixteen). The half-made iterator is freed before the error goes on, its
    __del__'s complaint dropped."""
    failed = None
    hook = sys.unraisablehook

    def quiet(unraisable):
        if not (isinstance(unraisable.exc_value, AttributeError) and "DataLoaderIter" in repr(unraisable.object)):
            hook(unraisable)

    sys.unraisablehook = quiet
    try:
        try:
            return start()
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EACCES, errno.EROFS, errno.ENOENT):
                raise
            failed = error.errno, error.strerror or str(error)
        # The exception is gone here, and with it the half-made iterator (its __del__ ran, quiet).
    finally:
        sys.unraisablehook = hook
    import shutil

    try:
        size = f", {shutil.disk_usage('/dev/shm').total:,} bytes in all"
    except OSError:
        size = ""
    raise OSError(failed[0], f"cannot start the data loader's {num_workers} worker processes (data.num_workers): "
                             f"the semaphores of their queues, made in shared memory (/dev/shm{size}), could not be "
                             f"made: {failed[1]}. Free space in /dev/shm or give the machine more (a container: "
                             "docker run --shm-size=1g), or set data.num_workers: 0 (the data loaded in the "
                             "training process)")


def check_worker_file_limit(num_workers: int) -> None:
    """Raises the soft open-file limit to the hard one when workers load the data; a ValueError naming
    data.num_workers and `ulimit -n` where even the hard limit is below WORKER_FILE_LIMIT."""
    if num_workers <= 0:
        return
    try:
        import resource
    except ImportError:  # not POSIX: nothing to read
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < WORKER_FILE_LIMIT:
        raise ValueError(
            f"data.num_workers is {num_workers}: the workers hand each batch over through file descriptors, and this "
            f"process may open only {soft} files (ulimit -n, its hard limit): raise it to {WORKER_FILE_LIMIT} or more "
            "(ulimit -n 1024), or set data.num_workers: 0 (the data loaded in the training process)")


def train(config: ExperimentConfig, echo=print, config_path: str | None = None, sets: list[str] | None = None) -> dict:
    """Train per ``config``; returns a summary (the metrics JSON content, plus 'status').

    On CPU the run is deterministic for a given seed (and thread count); torch's global
    deterministic-algorithms switch is restored afterwards.
    Started by torchrun with several processes, it trains data-parallel (training/distributed.py).
    ``config_path``: the config file's path, and ``sets``: the run's --set items (KEY=VALUE), for the advice of
    an error.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    distribution = Distribution.from_environment()
    finished = False
    watch = None
    try:
        if distribution.is_main:  # the process that writes the run's files
            config.make_dirs()
            watch = RunDirectories(Path(config.output.checkpoint_dir), Path(config.output.results_dir), config_path,
                                   sets)
        try:
            summary = _train(config, echo, distribution, watch)
        except Exception as error:
            # Whatever failed first (train.log's append, a checkpoint's write, the metrics), a moved or
            # removed run directory is the cause to report, with where it is now and how to resume.
            text = watch.text() if watch is not None and not isinstance(error, RunDirectoryMovedError) else None
            if text is not None:
                raise RunDirectoryMovedError(text) from None
            raise
        finished = True
        return summary
    finally:
        if watch is not None:
            watch.close()
        try:
            torch.use_deterministic_algorithms(previous)
        except Exception:
            # The first call imports torch._inductor (seconds of imports): a SIGTERM or Ctrl-C inside
            # that import left it half done, and this call then failed on the half-imported module
            # (`AttributeError: partially initialized module 'torch._dynamo'`), a traceback and exit
            # 1 in place of `dodo train: terminated`, 143 (data-loss probe, round three). After a
            # run that ended by an exception, that exception is the one to report.
            if finished:
                raise
        # No leaving together after an exception or a signal: the others are not coming (round 39).
        distribution.stop(together=finished)


def _rows_every_split_needs(n_rows: int, train_fraction: float, val_fraction: float) -> str:
    """' (N rows give each split a row at data.train_fraction T and data.val_fraction V)': the fewest rows
    above n_rows for which make_splits' rounding leaves no split empty; '' where none up to 1,000 does."""
    for n in range(n_rows + 1, 1_001):
        splits = make_splits(n, train_fraction, val_fraction, 0)
        if len(splits.val) and len(splits.test):
            return (f" ({n} rows give each split a row at data.train_fraction {train_fraction} and "
                    f"data.val_fraction {val_fraction}; the file holds {n_rows})")
    return ""


def _settings_every_process_shares(config: ExperimentConfig) -> dict:
    """The config's settings that make the model (data, model, loss, training) by their config keys
    ("training.lr": 0.003), without what may differ between the processes of one job: the data's
    path (compared by content), the output directories, thread and worker counts, the log interval.
    Of ``training.resume_from`` only whether it is given: the checkpoints resumed are compared by content
    once read (a node-local copy at another path was refused as other settings; scale-out round three)."""
    left_out = {"data.path", "data.num_workers", "training.threads", "training.log_interval"}
    settings = {}

    def add(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}.{key}" if prefix else key, item)
        elif prefix == "training.resume_from":
            settings["training.resume_from (given)"] = bool(value)
        elif prefix not in left_out:
            settings[prefix] = value

    add("", {name: value for name, value in dataclasses.asdict(config).items() if name != "output"})
    return settings


def _train(config: ExperimentConfig, echo, distribution: Distribution, watch: RunDirectories | None = None) -> dict:
    import dodo

    results_dir = Path(config.output.results_dir)
    checkpoint_dir = Path(config.output.checkpoint_dir)
    config.make_dirs()
    log = RunLog(results_dir / "train.log", echo, watch) if distribution.is_main else (lambda message: None)
    t = config.training
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed)
    device = distribution.device(select_device(t.device))
    distribution.start(device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)

    data_path = Path(config.data.path)
    box3d_settings = dodo.box3d_settings(lebedev_order=config.data.box3d.lebedev_order, z_method=config.data.box3d.z_method)
    attrs = check_preprocessed(data_path, box3d_settings)
    data_sha256 = sha256_file(data_path)
    n_rows = count_rows(data_path)
    if n_rows < 3:  # "add rows or raise data.val_fraction": no fraction gives one row three splits
        raise ValueError(f"{data_path} holds {n_rows} row(s); training needs at least 3 (one each for the training, "
                         "validation and test splits), and more to learn anything: add states")
    if config.data.max_samples is not None and config.data.max_samples < 3:
        # "the validation split is empty: add rows or raise data.val_fraction", which no file or fraction
        # changes (outside probe, Python round fifty-seven)
        raise ValueError(f"data.max_samples is {config.data.max_samples}: training needs at least 3 rows (one each "
                         f"for the training, validation and test splits; {data_path} holds {n_rows}): raise "
                         "data.max_samples, or set it to null for every row")
    state_of = first_row_of_each_state(data_path)
    splits = make_splits(n_rows, config.data.train_fraction, config.data.val_fraction,
                         config.data.split_seed, config.data.max_samples, state_of=state_of)
    if state_of is not None:
        repeats = int(np.sum(state_of != np.arange(n_rows)))
        log(f"note: {counted(repeats, 'row')} of {data_path} repeat the initial state (F_init and u, bit for bit) "
            "of an earlier row: each state's rows are kept in one of the train/validation/test splits")
    crossing = crossing_rows(data_path, splits.train)
    if crossing == 0:
        raise ValueError(f"none of the {len(splits.train)} training rows of {data_path} has an ELN crossing (Box3D "
                         "returns each as given: stable states): the closure corrects crossing cells only, so there "
                         "is nothing to learn; add unstable states")
    capped = (f" (data.max_samples: {config.data.max_samples} of the file's {n_rows} rows: raise it, or set it to null)"
              if config.data.max_samples is not None and config.data.max_samples < n_rows else "")
    if state_of is not None and (len(splits.val) == 0 or len(splits.test) == 0):
        # "add rows or raise data.val_fraction" of a file of few states given many times: its rows of one
        # state stay in one split, so neither more rows of them nor a fraction helps (outside probe, training
        # round five)
        states = len(np.unique(state_of))
        capped += (f" (the file's {n_rows} rows hold {counted(states, 'distinct initial state')}, and a state's rows "
                   "stay in one split: add other states)")
    elif not capped and (len(splits.val) == 0 or len(splits.test) == 0):
        # "add rows" of a tiny file, with no word of how many: 5 rows at the default fractions got it, then 6
        # and 7 the test split's (new user's journey, round five)
        capped = _rows_every_split_needs(n_rows, config.data.train_fraction, config.data.val_fraction)
    if len(splits.val) == 0:
        raise ValueError(f"the validation split is empty: add rows or raise data.val_fraction{capped}")
    if len(splits.test) == 0:  # the final metrics are the test split's (docs/training.md), never another's
        raise ValueError(f"the test split is empty: add rows or lower data.train_fraction + data.val_fraction{capped}")
    # Every process must train one model on one data set: a data file of the same row count but other
    # rows (a node's stale copy), or a config read per RANK with another learning rate, trained without
    # a word (DDP averages the gradients; each optimiser stepped by its own settings). Compared before
    # any work, by content (a node-local copy at another path is the same data).
    distribution.agree({"data file SHA-256": data_sha256,
                        "split sizes (train, val, test)": (len(splits.train), len(splits.val), len(splits.test)),
                        **_settings_every_process_shares(config)})
    mean, std = invariant_statistics(data_path, splits.train)
    # The states trained or validated on, for the package's dodo.training_states (dodo score's warning).
    seen_states = rest_state_hashes_of(data_path, np.concatenate([splits.train, splits.val]))
    target_scale = config.data.target_scale
    if target_scale == "p99":
        target_scale = percentile_target_scale(data_path, splits.train)

    datasets = {name: CellDataset(data_path, splits.get(name), target_scale, config.data.in_memory,
                                  augment_nu_nubar=config.data.augment_nu_nubar and name == "train")
                for name in ("train", "val", "test")}
    drop_last = batch_norm_drops_last_batch(config, len(datasets["train"]), distribution.world_size)
    if drop_last:
        log(f"each epoch's last batch ({len(datasets['train']) % config.data.batch_size} of {len(datasets['train'])} "
            "shuffled training rows) is left out: model.batch_norm needs 2 rows a batch in each process")
    if config.model.batch_norm and distribution.enabled:
        # torch's BatchNorm normalises each process's slice of the batch by that slice's statistics (its
        # SyncBatchNorm runs on GPUs only), so such a run drifted from the one-process run of its config
        # (weights 1e-2 apart after 2 epochs, 6e-8 without) where the docs promised float rounding, and
        # nothing said so (outside probe, scale-out round three).
        log(f"model.batch_norm over {distribution.world_size} processes: each process normalises its own slice "
            "of every batch (batch statistics per process; the running statistics saved are process 0's), so "
            "this run does not follow a one-process run of this config within float rounding")
    generator = torch.Generator().manual_seed(t.seed)
    check_worker_file_limit(config.data.num_workers)
    loader_options = {"batch_size": config.data.batch_size, "collate_fn": collate_batch,
                      "num_workers": config.data.num_workers, "pin_memory": device.type == "cuda"}
    if config.data.num_workers > 0:
        loader_options["timeout"] = WORKER_BATCH_TIMEOUT_S
        loader_options["worker_init_fn"] = _restore_signal_handlers_in_worker
    if distribution.enabled:  # the same global batches in every process (one seed); each takes its slice
        global_batches = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(datasets["train"], generator=generator), config.data.batch_size, drop_last)
        train_loader = _SignalSafeLoader(  # generator: it also draws each epoch's worker seed
            datasets["train"], batch_sampler=RankBatches(global_batches, distribution), generator=generator,
            **{key: value for key, value in loader_options.items() if key != "batch_size"})
    else:
        train_loader = _SignalSafeLoader(datasets["train"], shuffle=True, drop_last=drop_last, generator=generator,
                                         **loader_options)
    val_loader = _SignalSafeLoader(datasets["val"], shuffle=False, **loader_options)

    closure = build_closure(config.model, mean, std).to(device)
    optimizer = torch.optim.AdamW(closure.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    total_steps = t.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, t.warmup_fraction, t.min_lr_fraction))
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, global_step, best_val = 1, 0, math.inf
    carried_best = None  # a resumed run's best.pt, to be written into checkpoint_dir (_best_of_the_resumed_run)
    # Whether the next last.pt keeps the one there as last.prev.pt. Not after a resume that fell back to
    # last.prev.pt because last.pt was damaged: the rotation made the damaged file last.prev.pt, the good
    # one gone, so for an epoch the run had no previous checkpoint to fall back to (data-loss probe, round four).
    keep_previous = True
    history = {"train": [], "val": []}
    # The training time of the epochs before this session's (a resume): a resumed run's metrics gave
    # `seconds` and samples per second of the resumed epochs only, as if of the run (outside probe,
    # training round three). None: the resumed checkpoint records none (made before 2026-12-07).
    timing_before = {"seconds": 0.0, "samples": 0}
    if t.resume_from:
        # CPU: RNG states must stay CPU tensors. A corrupt last.pt falls back to last.prev.pt.
        checkpoint, resume_path = load_resume_checkpoint(t.resume_from, log)
        keep_previous = Path(resume_path) == Path(t.resume_from)
        trained_model = _with_unrecorded_defaults(checkpoint["config"]["model"])
        if trained_model != dataclasses.asdict(config.model):
            raise ValueError(f"{resume_path}: {_model_section_difference(trained_model, config.model)}")
        refuse_settings_a_resume_cannot_change(checkpoint, resume_path, config)
        check_training_data(checkpoint, resume_path, data_path, "resume", data_sha256=data_sha256)
        _refuse_a_split_by_row_that_differs(checkpoint, resume_path, config, n_rows, splits, data_path)
        try:  # a checkpoint without its digest, or re-signed, may lack any of these: one line, not a KeyError traceback
            closure.network.load_state_dict(checkpoint["model_state"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            restore_rng_state(checkpoint["rng"], generator)
            start_epoch = int(checkpoint["epoch"]) + 1
            global_step = int(checkpoint["global_step"])
            best_val = float(checkpoint["best_val_loss"])
            history = checkpoint["history"]
            timing_before = _recorded_timing(checkpoint.get("timing"))
            if not (isinstance(history, dict) and all(isinstance(history.get(key), list) for key in ("train", "val"))):
                raise TypeError(f"history is {type(history).__name__}, not train and val lists")
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            text = " ".join(str(error).split())
            raise CorruptCheckpointError(
                f"{resume_path}: cannot resume from it: {type(error).__name__} {text[:300]}"
                f"{' ...' if len(text) > 300 else ''} (the file was edited or damaged)") from None
        if start_epoch - 1 > t.epochs:
            # It trained nothing and wrote final.pt as "epoch 1" of a model trained for 2, its config
            # saying epochs: 1, and called the run completed (outside probe, round 34).
            raise ValueError(
                f"{resume_path}: the run has trained {start_epoch - 1} epochs, more than training.epochs = "
                f"{t.epochs}: the resume would train none and record its final model as epoch {t.epochs}; "
                f"resume with training.epochs >= {start_epoch - 1} ({start_epoch - 1} only writes the final files), "
                "or use its best.pt or last.pt as they are")
        # Every process reads its own --resume file: the same path on another node's disk (a node-local
        # checkpoint directory, another run's there), or a last.pt damaged on one node only (that process
        # falls back to last.prev.pt), resumed the processes at different epochs and optimizer states with
        # the weights of process 0 (DDP's broadcast): the one that ran out of epochs first left while the
        # other waited in the next batch's all-reduce, silently and for ever (outside probe, scale-out
        # round three). DDP's start makes the weights equal, so compare the checkpoints, before any work.
        if distribution.enabled:
            digest = checkpoint.get("sha256") or checkpoint_digest(checkpoint)  # older checkpoints lack one
            distribution.agree(
                {"resumed checkpoint": f"epoch {checkpoint['epoch']}, step {global_step}, content SHA-256 "
                                       f"{str(digest)[:16]}"},
                what="resume from the same checkpoint",
                advice=f"each process reads its own --resume file ({t.resume_from}, a last.prev.pt beside it "
                       "where that is damaged): give every process the same checkpoint (one shared file system, "
                       "or identical copies)")
        log(f"resumed from {resume_path} after epoch {checkpoint['epoch']}")
        if distribution.is_main:  # the writer of best.pt
            best_val, carried_best = _best_of_the_resumed_run(checkpoint, resume_path, checkpoint_dir,
                                                              start_epoch > t.epochs, log)
    network = distribution.wrap(closure.network, device)  # DDP after loading: every process starts equal

    log(f"training {config.model.head} head on {len(splits.train)}/{len(splits.val)}/{len(splits.test)} "
        f"train/val/test cells of {data_path} ({attrs.get('data_kind')}), device {device}"
        + (f" x {distribution.world_size} processes" if distribution.enabled else "") + ", "
        f"{sum(p.numel() for p in closure.parameters())} parameters"
        # training.amp: true on a CPU run was dropped without a word (outside probe, Python round sixty-one)
        + (f"; training.amp: true has no effect on {device.type} (AMP is CUDA only): the run is fp32"
           if t.amp and not use_amp else "")
        + _stop_note(t.stop_after_epoch, start_epoch, t.epochs))

    def checkpoint_state(epoch: int, seconds: float | None = None) -> dict:
        seconds = time.perf_counter() - started if seconds is None else seconds
        return {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "global_step": global_step, "best_val_loss": best_val,
            "model_state": {k: v.detach().clone() for k, v in closure.network.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(generator),
            "history": history, "config": config.to_dict(),
            "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
            "target_scale": target_scale,
            "data": {"path": str(data_path), "sha256": data_sha256, "kind": str(attrs.get("data_kind", "unknown")),
                     "box3d": box3d_settings, "n_rows": int(len(splits.train) + len(splits.val) + len(splits.test)),
                     "split": SPLIT_BY_STATE, "states": seen_states},
            "dodo_version": str(getattr(dodo, "__version__", "unknown")),
            # Every session's training time and samples up to this epoch (None: a resumed run whose earlier
            # sessions recorded none).
            "timing": None if timing_before is None else {"seconds": timing_before["seconds"] + seconds,
                                                          "samples": timing_before["samples"] + samples_seen},
        }

    # The epoch of the last.pt in checkpoint_dir that this run (or the run it resumes there) wrote: what a
    # failed write leaves to resume from.
    last_written = (start_epoch - 1 if t.resume_from and Path(resume_path).name == "last.pt"
                    and resumes_its_own_run(checkpoint_dir, str(resume_path)) else None)
    if watch is not None:
        watch.last_written = last_written

    def saving(state: dict, path: Path, epoch: int | None, keep_previous: bool = False) -> None:
        """save_checkpoint, and on a failed write (a full disk, ulimit -f) the run's error names what is kept."""
        if watch is not None:
            watch.check()  # nothing into a directory made where the moved one was
        try:
            save_checkpoint(state, path, keep_previous=keep_previous)
        except OSError as error:
            raise CheckpointNotWritten(error.errno, _not_written(path, error, epoch, checkpoint_dir,
                                                                 last_written)) from None

    started = time.perf_counter()
    samples_seen = 0
    status = "completed"
    earlier_run = earlier_run_checkpoints(checkpoint_dir, t.resume_from) if distribution.is_main else []
    for epoch in range(start_epoch, t.epochs + 1):
        closure.train()
        sums, count = {}, 0
        for step_in_epoch, batch in enumerate(train_loader):
            global_rows = min(config.data.batch_size, len(datasets["train"]) - step_in_epoch * config.data.batch_size)
            begin, end = distribution.share(global_rows)
            loss = batch_loss(closure, batch, config.loss, device, use_amp, network)
            finite = bool(torch.isfinite(loss.total)) or end == begin
            if distribution.enabled:  # every process stops together, or none does
                finite = distribution.sum([0.0 if finite else 1.0], device)[0] == 0
            if not use_amp and not finite:  # with AMP the scaler skips such steps
                raise FloatingPointError(non_finite_loss_message(loss.as_floats(), epoch, global_step, config))
            optimizer.zero_grad(set_to_none=True)
            if distribution.enabled:
                scaler.scale(loss.total * loss_weight(end - begin, global_rows, distribution)).backward()
            else:
                scaler.scale(loss.total).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(closure.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            n = end - begin  # this process's rows (all of them in one process)
            samples_seen += global_rows
            for name, value in loss.as_floats().items():
                sums[name] = sums.get(name, 0.0) + value * n
            count += n
            if global_step % t.log_interval == 0:
                log(f"epoch {epoch} step {global_step} loss {loss.total.detach().item():.4e} lr {scheduler.get_last_lr()[0]:.3e}")
        if distribution.enabled:  # means over the global batches, as in one process
            names = sorted(sums)
            *totals, count = distribution.sum([sums[name] for name in names] + [count], device)
            sums = dict(zip(names, totals))
        train_losses = {name: value / max(count, 1) for name, value in sums.items()}
        val_losses = evaluate_loss(closure, val_loader, config.loss, device)
        history["train"].append(train_losses)
        history["val"].append(val_losses)
        improved = val_losses["total"] < best_val
        log(f"epoch {epoch}/{t.epochs} train {train_losses['total']:.4e} val {val_losses['total']:.4e}"
            + (" (best)" if improved else ""))
        if earlier_run:  # this run's first checkpoints are next: the replaced run's files go aside first
            set_aside_earlier_run(earlier_run, log=log)
            earlier_run = []
        if improved:
            best_val = val_losses["total"]
            if distribution.is_main:
                saving(checkpoint_state(epoch), checkpoint_dir / "best.pt", epoch)
        elif carried_best is not None:
            saving(carried_best, checkpoint_dir / "best.pt", epoch)
        carried_best = None
        if distribution.is_main:
            saving(checkpoint_state(epoch), checkpoint_dir / "last.pt", epoch, keep_previous=keep_previous)
            keep_previous = True
            last_written = epoch
            if watch is not None:
                watch.last_written = epoch
        # The epoch asked for only: a resume past it (the config's stop_after_epoch: 2, resumed after epoch 2)
        # stopped after every later epoch "as asked" (outside probe, training round three).
        if t.stop_after_epoch is not None and epoch == t.stop_after_epoch and epoch < t.epochs:
            status = "interrupted"
            log(f"stopping after epoch {epoch} as asked (training.stop_after_epoch); resume from {checkpoint_dir / 'last.pt'}")
            break
    elapsed = time.perf_counter() - started
    if status == "interrupted":
        return {"status": status, "last_checkpoint": str(checkpoint_dir / "last.pt")}
    if not math.isfinite(best_val) and carried_best is None:
        # Every epoch's validation loss NaN or infinite while the training loss stayed finite (training.lr:
        # 1e6): no best.pt was written, and the run ended in "checkpoint not found: .../best.pt", which `dodo
        # study` took for a broken study and stopped, where a diverged run is listed and the others train
        # (outside probe, Python round fifty-seven).
        last = history["val"][-1]["total"] if history["val"] else None
        advice = divergence_advice(config)
        raise FloatingPointError(f"no epoch gave a finite validation loss (the last one's: {last}); the model "
                                 f"diverged{advice if advice.startswith(':') else ': ' + advice[2:]}")
    if not distribution.is_main:  # rank 0 evaluates and writes the final files
        return {"status": status, "rank": distribution.rank}

    # The final metrics read the test split from the data file again: a `dodo preprocess` that rewrote it
    # while the run trained (new campaign chunks, the same output path) gave an IndexError traceback
    # after the last epoch, or, with as many rows or more, metrics of other rows than the test split,
    # recorded in best.pt and final.pt under the first file's SHA-256 (data-loss probe, round four).
    if sha256_file(data_path) != data_sha256:
        raise ValueError(
            f"{data_path} changed while this run trained (its SHA-256 is no longer that of the file read at the "
            "start: another command, e.g. dodo preprocess, rewrote it): the final metrics would be computed on other "
            f"rows than the run's test split, so final.pt and the metrics are not written; {checkpoint_dir / 'best.pt'} "
            f"and {checkpoint_dir / 'last.pt'} are kept: put the run's data file back and resume with --resume "
            f"{checkpoint_dir / 'last.pt'} (it only writes the final files), or train again on the new file")
    if earlier_run:  # no epoch ran (a resume with none left): the replaced run goes aside before the final files
        set_aside_earlier_run(earlier_run, log=log)
        earlier_run = []
    final_state = checkpoint_state(t.epochs, elapsed)
    if carried_best is not None:  # a resume with no epoch left to train
        saving(carried_best, checkpoint_dir / "best.pt", None)
    # Report on the best-validation model (what `dodo export` ships by default).
    best = load_checkpoint(checkpoint_dir / "best.pt")
    closure.network.load_state_dict(best["model_state"])
    test_name = "test"
    test_loader = _SignalSafeLoader(datasets[test_name], shuffle=False, **loader_options)
    test_losses = evaluate_loss(closure, test_loader, config.loss, device)
    # Metrics as the runtime computes them: fp32 network, float64 four-fluxes and head.
    prediction = predict(closure, CellDataset(data_path, splits.get(test_name), target_scale, dtype=torch.float64), device,
                         box3d=box3d_settings)
    table = metrics_for(prediction)
    table["split"] = test_name
    log(format_metric_table(table))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    metrics_path = results_dir / f"metrics_{stamp}.json"
    summary = {
        "status": status, "best_val_loss": best_val, "final_val_loss": history["val"][-1]["total"],
        "test_loss": test_losses, "history": history, "metric_table": table,
        "parity": parity_sample(prediction, config.output.parity_samples),
        "paths": {"data": str(data_path), "best": str(checkpoint_dir / "best.pt"),
                  "final": str(checkpoint_dir / "final.pt"), "log": str(results_dir / "train.log"),
                  "metrics": str(metrics_path)},
        "config": config.to_dict(), "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "target_scale": target_scale, "data_sha256": data_sha256, "data_kind": str(attrs.get("data_kind")),
        "box3d": box3d_settings, "seconds": elapsed,
        "train_samples_per_second": samples_seen / elapsed if elapsed > 0 else None,
        "timing": _run_timing(elapsed, samples_seen, start_epoch, t.epochs, timing_before),
    }
    if start_epoch > 1:  # `seconds` above is this session's: say so, and the whole run's where known
        log(_run_timing_line(summary["timing"]))
    final_state["metrics"] = table
    saving(final_state, checkpoint_dir / "final.pt", None)
    best["metrics"] = table
    saving(best, checkpoint_dir / "best.pt", None)
    try:
        write_json_atomic(metrics_path, summary)
    except OSError as error:
        raise CheckpointNotWritten(error.errno, _not_written(metrics_path, error, None, checkpoint_dir,
                                                             last_written)) from None
    log(f"wrote {metrics_path}")
    finish_replacing(checkpoint_dir, log=log)
    return summary
