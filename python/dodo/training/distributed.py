"""Data-parallel training over processes started by ``torchrun`` (PyTorch DDP).

``torchrun --nproc-per-node K -m dodo train --config ...``: every process builds the same model
and draws the same shuffled global batches (one shared seed); process r takes its slice of each
global batch; DDP averages the gradients. Each process's loss is rescaled by its share of the
global batch, so the averaged gradient is that of the whole global batch: a K-process run follows
the one-process run of the same ``data.batch_size`` within float rounding (without dropout,
whose masks are drawn per process). Backend: NCCL on CUDA (process r on GPU ``LOCAL_RANK``),
gloo on CPU. Only rank 0 writes checkpoints, logs, metrics and plots.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist


#: What :meth:`Distribution.agree` says to do by default.
_SAME_INPUTS = ("each process reads its own config and data file; give every process the same ones (one shared "
                "file system, or identical copies)")


#: What a collective's error says when another process of the job ended (gloo; NCCL names the peer too).
_PEER_ENDED = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def _peer_ended_words(text: str) -> str:
    """The backend's words without its source path and its closing remarks ("GLHF!")."""
    for sign in _PEER_ENDED:
        if sign in text:
            start = text.index(sign)
            end = text.find(". ", start)
            return text[start:end if end > 0 else len(text)]
    return text


class Distribution:
    """This process's place in the job; one process (rank 0 of 1) when not started by torchrun."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ=os.environ) -> "Distribution":
        """Rank and world size as torchrun (or any launcher setting RANK/WORLD_SIZE) announces them.

        A ValueError naming the variable when they do not describe a place in a job (WORLD_SIZE
        without RANK, a word, a rank outside [0, WORLD_SIZE)): a variable left in the shell would
        otherwise end in a KeyError traceback, or in a rendezvous that waits for ranks never started.
        """
        world = _environment_integer(environ, "WORLD_SIZE", "1", 1)
        if world <= 1:
            return cls()
        if not str(environ.get("RANK", "")).strip():
            raise ValueError(f"WORLD_SIZE is {world} but RANK is not set: a data-parallel run is started by torchrun "
                             "(torchrun --nproc-per-node K -m dodo ...), which sets both; unset WORLD_SIZE to train "
                             "in one process")
        rank = _environment_integer(environ, "RANK", "0", 0)
        if rank >= world:
            raise ValueError(f"RANK is {rank} but WORLD_SIZE is {world}: a rank lies in [0, WORLD_SIZE); a "
                             "data-parallel run is started by torchrun, which sets both")
        if "MASTER_PORT" in environ:
            # torch read it with int() inside the rendezvous: "invalid literal for int() with base 10: 'abc'",
            # naming no variable (outside probe, round 30).
            port = str(environ["MASTER_PORT"]).strip()
            if not (port.isascii() and port.isdigit() and int(port) <= 65535):
                raise ValueError(f"the environment variable MASTER_PORT must be a port number in [0, 65535] "
                                 f"(torchrun sets it); got {environ['MASTER_PORT']!r}")
        return cls(rank, world, _environment_integer(environ, "LOCAL_RANK", "0", 0))

    def check_rendezvous_variables(self, environ=os.environ) -> None:
        """A ValueError naming MASTER_ADDR / MASTER_PORT when this process is one of a job
        (WORLD_SIZE > 1) and they are not set: torch's env:// rendezvous said only "environment
        variable MASTER_ADDR expected, but not set", naming neither the variables that made this a
        data-parallel run nor where they came from, after the run's directories were made (outside
        probe, round 32). Nothing for a one-process run."""
        if not self.enabled:
            return
        world, rank = self.world_size, self.rank
        missing = (["MASTER_ADDR"] if not str(environ.get("MASTER_ADDR", "")).strip() else []) + \
            (["MASTER_PORT"] if "MASTER_PORT" not in environ else [])  # a blank port: from_environment's check
        if missing:
            raise ValueError(f"WORLD_SIZE={world} and RANK={rank} in the environment make this one process of a "
                             f"data-parallel job, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                             "not set (torchrun sets all of them): if this process was not started by torchrun, "
                             "WORLD_SIZE and RANK are left from another job: unset them to train in one process")

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process: cuda:LOCAL_RANK when training on CUDA.

        A ValueError when this node has fewer GPUs than processes: NCCL refuses two ranks on one
        GPU only once the job runs, with a message that names neither torchrun nor the device.
        """
        if self.enabled and requested.type == "cuda":
            visible = torch.cuda.device_count()
            if self.local_rank >= visible:
                raise ValueError(f"process {self.rank} (LOCAL_RANK {self.local_rank}) has no GPU of its own: "
                                 f"{visible} GPU(s) visible on this node and one process per GPU on CUDA; start "
                                 f"at most {visible} process(es) per node (torchrun --nproc-per-node), or train "
                                 "on CPU (training.device: cpu, the gloo backend)")
            return torch.device("cuda", self.local_rank)
        return requested

    def start(self, device: torch.device) -> None:
        if not self.enabled or dist.is_initialized():
            return
        self.check_rendezvous_variables()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"

        def meet() -> None:
            if device.type == "cuda":  # CUDA's current device is per thread: the helper's too is LOCAL_RANK's
                torch.cuda.set_device(device)
            dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)

        _meet_interruptibly(meet, self._waiting_note())

    def _waiting_note(self) -> str:
        """What a process still waiting for the others after :data:`RENDEZVOUS_NOTE_S` prints."""
        where = ", ".join(f"{name}={os.environ[name]}" for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")
                          if name in os.environ)
        waiting = (f"dodo train: waiting for the other processes of a {self.world_size}-process data-parallel job "
                   f"to meet ({where} in the environment); ")
        if str(os.environ.get("TORCHELASTIC_RUN_ID", "")).strip():  # torchrun started this process
            return waiting + "the others are still starting, or failed to start (Ctrl-C ends the wait)"
        return waiting + ("if this process was not started by torchrun (or another launcher of all the job's "
                          "processes), these variables are left from another job: unset them to train in one "
                          "process (Ctrl-C ends the wait)")

    def stop(self, together: bool = True) -> None:
        """Leaves the process group. ``together`` (a run that ended normally): first a bounded barrier
        with the others. False for a run ending on an exception or a signal: the others may be inside
        a collective (the next batch's all-reduce) that this process will never join, and a barrier
        here waited for them while they waited for it: SIGTERM or Ctrl-C to one process of
        `torchrun --nproc-per-node 2` hung the whole job until torchrun itself was killed (outside
        probe, round 39). Leaving at once closes this process's connections, so the others' collective
        fails and torchrun stops the job."""
        if self.enabled and dist.is_initialized():
            if together and dist.get_backend() == "gloo":
                # Leave together: a rank that returns early (rank 1 skips the final evaluation) and
                # tears its gloo group down while rank 0 still holds the connection was seen to abort
                # at exit once. Bounded wait, so a rank that failed cannot hang the other.
                try:
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
                except RuntimeError:
                    pass
            dist.destroy_process_group()

    def wrap(self, network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module whose backward pass averages gradients over the processes (DDP), or itself."""
        if not self.enabled:
            return network
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    def share(self, global_rows: int) -> tuple[int, int]:
        """[begin, end) of this process's rows in a global batch of ``global_rows``."""
        return global_rows * self.rank // self.world_size, global_rows * (self.rank + 1) // self.world_size

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over the processes (float64)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        with self._peers_may_end("sum this process's metrics with theirs"):
            dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            with self._peers_may_end("meet them"):
                dist.barrier()

    @contextlib.contextmanager
    def _peers_may_end(self, what: str):
        """A collective whose failure because another process of the job ended (its input refused, killed)
        says so: the process still waiting printed gloo's "[.../gloo/transport/tcp/pair.cc:553] Connection
        closed by peer [127.0.0.1]:1722. This is typically caused by a remote worker crashing. Check the logs
        of the remote worker before reporting an error. GLHF! ...", below the other process's own line
        (outside probe, scale-out round four). Any other failure is left as it is."""
        try:
            yield
        except RuntimeError as error:
            text = " ".join(str(error).split())
            if not any(sign in text for sign in _PEER_ENDED):
                raise
            raise RuntimeError(f"another process of this {self.world_size}-process data-parallel job ended while "
                               f"process {self.rank} waited to {what} (its own line, or torchrun's report of its "
                               f"exit, says why; the backend said: {_peer_ended_words(text)}): this process stops "
                               "too") from None

    def agree(self, facts: dict, what: str = "train on the same data", advice: str = _SAME_INPUTS) -> None:
        """A ValueError in every process, naming each of ``facts`` (name: value) that differs between
        the processes of the job (``what`` they do not do, then ``advice``); nothing when they agree or
        in a one-process run. Every process reads
        its own config and data file: a process given another file (a node's stale copy, a config
        chosen per RANK) drew another number of batches, and the processes then waited for each other
        in different collectives, silently and for ever (SIGTERM to torchrun ended it only after its
        30 s SIGKILL; outside probe, scale-out round two). Nothing to compare before the process
        group starts (a RankBatches built by hand)."""
        if not self.enabled or not dist.is_initialized():
            return
        gathered: list = [None] * self.world_size
        with self._peers_may_end(f"compare that they {what}"):
            dist.all_gather_object(gathered, dict(facts))
        names = list(facts) + [name for other in gathered for name in other if name not in facts]
        differing = [name for name in dict.fromkeys(names) if len({repr(other.get(name)) for other in gathered}) > 1]
        if differing:
            details = "; ".join(f"{name}: " + ", ".join(f"{other.get(name)!r} in process {rank}"
                                                        for rank, other in enumerate(gathered)) for name in differing)
            raise ValueError(f"the {self.world_size} processes of this data-parallel job do not {what} "
                             f"({details}): {advice}")


class RankBatches(torch.utils.data.Sampler):
    """This process's slice of every global batch of ``batches`` (a BatchSampler shared by seed).

    A slice that would be empty (a last global batch with fewer rows than processes) holds the
    batch's first row instead; its loss counts with weight 0 (see loss_weight).
    """

    def __init__(self, batches, distribution: Distribution) -> None:
        self.batches, self.distribution = batches, distribution
        # Every process must draw the same global batches: differing counts left the processes in
        # different collectives (a hang), so they are compared here, before the first batch.
        try:
            rows = len(getattr(batches, "sampler", None))
        except TypeError:
            rows = None
        distribution.agree({"training rows": rows, "global batch size (data.batch_size)":
                            getattr(batches, "batch_size", None), "batches per epoch": len(batches)})

    def __iter__(self):
        for batch in self.batches:
            begin, end = self.distribution.share(len(batch))
            yield batch[begin:end] if end > begin else batch[:1]

    def __len__(self) -> int:
        return len(self.batches)


def loss_weight(local_rows: int, global_rows: int, distribution: Distribution) -> float:
    """Factor on a process's mean loss so that DDP's gradient average is the global batch's mean."""
    return local_rows * distribution.world_size / global_rows


#: Seconds a process waits for the others of its job before it says so (torchrun starts them together).
RENDEZVOUS_NOTE_S = 10.0


def _meet_interruptibly(call, note: str, note_after: float | None = None):
    """``call()`` (the process group's rendezvous) in a helper thread, the main thread waiting on it
    in short joins: a rendezvous waits in C++ (up to torch's 30-minute timeout) without running
    Python's signal handlers, so `dodo train` with RANK, WORLD_SIZE and MASTER_ADDR left from another
    job sat silent through Ctrl-C and SIGTERM (outside probe, round 30). Now Ctrl-C, SIGTERM and
    SIGHUP end it as they end any command, and ``note`` is printed once the wait has lasted
    ``note_after`` seconds. Returns ``call()``'s value or raises its exception."""
    import sys
    import threading

    outcome: dict = {}

    def meet() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    thread = threading.Thread(target=meet, name="dodo-rendezvous", daemon=True)
    thread.start()
    thread.join(RENDEZVOUS_NOTE_S if note_after is None else note_after)
    if thread.is_alive():
        print(note, file=sys.stderr, flush=True)
    while thread.is_alive():
        thread.join(0.25)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _environment_integer(environ, name: str, default: str, lowest: int) -> int:
    """The launcher variable ``name`` as an integer >= ``lowest`` (``default`` when unset or empty)."""
    text = str(environ.get(name, default) or default).strip()
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lowest:
        raise ValueError(f"the environment variable {name} must be an integer >= {lowest} (torchrun sets it); "
                         f"got {text!r}")
    return value
