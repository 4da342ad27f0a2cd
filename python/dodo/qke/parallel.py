"""Campaigns over MPI ranks (``mpirun -n N dodo simulate ...``, ``srun dodo simulate ...``).

The states are cut into the batches a single process would run (the same batches whatever N, so
that every state gets the same perturbation seed and time step: rows identical bit for bit), and
the batches are shared out over the ranks by their estimated cost. MPI comes from mpi4py
(``pip install ".[mpi]"`` in the repository), imported only when the process was started by an MPI launcher with
more than one rank; otherwise the campaign runs in this process alone, as always.
"""
from __future__ import annotations

import os
import socket
import time

import numpy as np

#: Seconds a rank that has finished its batches waits for the others before rank 0 says which it waits
#: for (a rank suspended with SIGSTOP, or on a stopped node, kept the job waiting without a word).
WAIT_NOTE_S = 60.0
#: The tag of the message each rank sends rank 0 once its batches are done (wait_for_ranks).
_DONE_TAG = 7301
#: Seconds between the tests of a rank waiting for the others at a meeting (MPICommunicator._meet).
_MEET_POLL_S = 0.02
#: The names (/proc/PID/comm) of the processes that start ranks and stop a job by signalling each of them.
LAUNCHER_PROCESSES = frozenset({"mpirun", "mpiexec", "orterun", "orted", "prterun", "prted", "hydra_pmi_proxy",
                                "mpiexec.hydra", "slurmstepd", "srun"})


def where_this_runs() -> tuple[int, str]:
    """(pid, host name) of this process: what rank 0 names a rank by while it waits for it."""
    return os.getpid(), socket.gethostname()


def waited_for_text(ranks, where) -> str:
    """Words for the ranks rank 0 still waits for: "rank 1 (pid N on HOST, stopped: ...)"; ``where``: the
    (pid, host) of every rank (where_this_runs, gathered at the campaign's start)."""
    here = socket.gethostname()
    shown = []
    for rank in ranks:
        pid, host = where[rank]
        state = ""
        if host == here:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    state = handle.read().rsplit(b")", 1)[1].split()[0].decode()
            except (OSError, ValueError, IndexError):
                state = ""
        stopped = (", stopped (SIGSTOP, Ctrl-Z, a batch system's suspend): the job waits until it is continued, "
                   f"kill -CONT {pid}") if state in ("T", "t") else ""
        shown.append(f"rank {rank} (pid {pid} on {host}{stopped})")
    return ", ".join(shown)

# World size as launchers announce it: OpenMPI's mpirun, MPICH/Hydra and Intel MPI (srun: below).
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class SerialCommunicator:
    """One process: what the campaign needs of a communicator, without MPI."""

    rank = 0
    size = 1

    def gather(self, value, root: int = 0) -> list:
        return [value]

    def bcast(self, value, root: int = 0):
        return value

    def computed_by_root(self, function):
        """function() as rank 0 computes it, on every rank (here: this process computes it)."""
        return function()

    def stop_together(self, error: str | None) -> str | None:
        """One process: its own error, as given (see MPICommunicator.stop_together)."""
        return error

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        raise SystemExit(code)

    def identities(self) -> list:
        """[(pid, host)] of every rank (this process alone)."""
        return [where_this_runs()]

    def wait_for_ranks(self, note, note_after_s: float | None = None):
        """One process: nobody to wait for."""
        return None


class MPICommunicator:
    """mpi4py's COMM_WORLD behind the same small interface."""

    def __init__(self, comm) -> None:
        self._comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        record_signal_senders()

    def _meet(self) -> None:
        """Waits until every rank is here, testing a non-blocking barrier between short sleeps. In MPI's own
        blocking calls a rank runs no Python signal handler until the call returns: Ctrl-C or SIGTERM to ranks
        waiting for a slow one (its checks on a stalled file system, rank 0 reading the checkpoints) did
        nothing until that one came (scale-out round five). Each collective below meets first."""
        request = self._comm.Ibarrier()
        while not request.Test():
            time.sleep(_MEET_POLL_S)

    def gather(self, value, root: int = 0):
        self._meet()
        return self._comm.gather(value, root=root)

    def bcast(self, value, root: int = 0):
        self._meet()
        return self._comm.bcast(value, root=root)

    def computed_by_root(self, function):
        """function() computed by rank 0 alone and sent to every rank. An error that rank 0 raises (a
        checkpoint of another campaign) is sent too and raised on every rank (raised_on_every_rank): rank 0
        raised alone before, and stopped the job with MPI_Abort while the others waited for its answer,
        which Open MPI ended with SIGTERM ("terminated; stopping all 2 ranks" on each: scale-out round four)."""
        if self.rank != 0:
            value, error = self.bcast(None, root=0)
            if error is not None:
                raise raised_on_every_rank(error)
            return value
        try:
            value = function()
        except (ValueError, OSError) as error:
            self.bcast((None, _portable(error)), root=0)
            raise raised_on_every_rank(error)
        except BaseException:
            raise  # a signal or an unexpected error: the CLI stops every rank (MPI_Abort)
        self.bcast((value, None), root=0)
        return value

    def stop_together(self, error: str | None) -> str | None:
        """Called by every rank once its checks of the arguments and inputs are done, with the one-line error
        it met (None: ready). Returns, on every rank alike, None when every rank is ready, else the job's one
        line: the error alone when every rank met it, else each distinct error after the ranks that met it
        ("rank 1 of 2: cannot read IN: no such file ..."). The ranks then end together with exit 2, rank 0
        printing the line: a rank that refused alone used to print its line (a line every rank met: once per
        rank) and call MPI_Abort, Open MPI's page of it and "terminated; stopping all 2 ranks" from the
        ranks it killed following (scale-out round four)."""
        self._meet()
        held = self._comm.allgather(error)
        return joined_rank_errors(held)

    def barrier(self) -> None:
        self._meet()

    def abort(self, code: int) -> None:
        self._comm.Abort(code)

    def identities(self):
        """[(pid, host)] of every rank on rank 0 (None on the others)."""
        return self.gather(where_this_runs(), root=0)

    def wait_for_ranks(self, note, note_after_s: float | None = None):
        """Called by every rank once its batches are done, before the results are gathered: each other rank
        tells rank 0 so (a message, at once); rank 0 waits for every rank's word, polling (MPI's own wait spins
        a core at 100%), and after ``note_after_s`` seconds calls ``note(ranks still waited for)`` once. A rank
        stopped (SIGSTOP, a suspended node) kept rank 0 in the gather without a word, for ever. Returns what
        the caller passes to :meth:`done_waiting` after the gather (a rank's send request)."""
        if self.rank != 0:
            return self._comm.isend(True, dest=0, tag=_DONE_TAG)
        note_after_s = WAIT_NOTE_S if note_after_s is None else note_after_s
        pending, started, noted = set(range(1, self.size)), time.monotonic(), False
        while pending:
            for rank in sorted(pending):
                if self._comm.Iprobe(source=rank, tag=_DONE_TAG):
                    self._comm.recv(source=rank, tag=_DONE_TAG)
                    pending.discard(rank)
            if pending:
                if not noted and time.monotonic() - started >= note_after_s:
                    note(sorted(pending))
                    noted = True
                time.sleep(0.05)
        return None

    @staticmethod
    def done_waiting(request) -> None:
        if request is not None:
            request.wait()


def record_signal_senders() -> None:
    """From here on, the pid that sends SIGTERM, SIGINT or SIGHUP to this process is recorded
    (launcher_that_signalled); their handlers must be installed first (dodo's main has)."""
    import signal

    try:
        from .. import _core

        _core._record_signal_senders([int(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)])
    except (ImportError, AttributeError):  # a core built before the recording: every signal counts as a user's
        pass


def launcher_that_signalled(signum: int) -> str | None:
    """"mpirun (pid N)" when the last ``signum`` came from the launcher that started this rank, its parent
    (mpirun, orted, slurmstepd: LAUNCHER_PROCESSES), which stops the job by signalling every rank (Ctrl-C on
    mpirun, another rank ended, scancel); None when anyone else sent it (kill PID: this rank alone) or it
    cannot be told."""
    try:
        from .. import _core

        sender = int(_core._signal_sender(int(signum)))
    except (ImportError, AttributeError):
        return None
    parent = os.getppid()
    if sender <= 0 or sender != parent:
        return None
    try:
        with open(f"/proc/{parent}/comm", encoding="utf-8", errors="replace") as handle:
            name = handle.read().strip()
    except OSError:
        return None
    return f"{name} (pid {parent})" if name in LAUNCHER_PROCESSES else None


def raised_on_every_rank(error: BaseException) -> BaseException:
    """``error``, marked as raised by every rank of the job at the same point (each knows it): the CLI prints
    it once (rank 0) and every rank ends with exit 2, with no MPI_Abort."""
    error.dodo_every_rank = True
    return error


def is_raised_on_every_rank(error: BaseException) -> bool:
    return bool(getattr(error, "dodo_every_rank", False))


def _portable(error: BaseException) -> BaseException:
    """``error`` as the other ranks can receive it (pickled): itself, or a ValueError of its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # an exception whose arguments do not pickle: its words
        return ValueError(" ".join(str(error).split()))


def _rank_ranges(ranks) -> str:
    """"rank 1", "ranks 1, 3", "ranks 2-7, 9" of sorted rank numbers."""
    spans = []
    for rank in ranks:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    words = [str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}-{b}" for a, b in spans]
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(words)


#: Most distinct errors of the ranks named in the job's line (thousands of ranks may each say another).
SHOWN_RANK_ERRORS = 3


def joined_rank_errors(errors) -> str | None:
    """The job's one line from each rank's error (None: that rank is ready), in rank order: None when no rank
    met one; the error alone when every rank met the same; else "rank 1 of 4: E1; ranks 2, 3 of 4: E2"."""
    size = len(errors)
    failed = {}
    for rank, error in enumerate(errors):
        if error is not None:
            failed.setdefault(error, []).append(rank)
    if not failed:
        return None
    if len(failed) == 1 and len(next(iter(failed.values()))) == size:
        return next(iter(failed))
    parts = [f"{_rank_ranges(ranks)} of {size}: {error}" for error, ranks in failed.items()]
    more = len(parts) - SHOWN_RANK_ERRORS
    ready = [rank for rank, error in enumerate(errors) if error is None]
    shown = "; ".join(parts[:SHOWN_RANK_ERRORS])
    if more > 0:
        shown += f"; and {more} other error{'s' if more > 1 else ''}"
    if ready:
        shown += f" ({_rank_ranges(ready)} {'was' if len(ready) == 1 else 'were'} ready; the job ends)"
    return shown


def launched_size(environ=os.environ) -> int:
    """Number of ranks the launcher started (1 when not started by one)."""
    return _launched(environ)[0]


# Processes that start MPI ranks (/proc/PID/comm, cut at 15 characters as the kernel keeps it):
# Open MPI's mpirun and its node daemons, MPICH/Intel MPI's Hydra proxy, Slurm's step daemon.
_LAUNCHER_PROGRAMS = frozenset({"mpirun", "mpiexec", "orterun", "orted", "prte", "prted", "prterun",
                                "hydra_pmi_proxy", "mpiexec.hydra", "slurmstepd", "srun"})
# Programs a rank is commonly started through that are not MPI programs themselves: shells of job
# scripts, process wrappers, container runtimes.
_WRAPPER_PROGRAMS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "tcsh", "csh", "fish", "env", "nice",
                               "ionice", "chrt", "timeout", "time", "numactl", "taskset", "stdbuf", "setsid",
                               "xargs", "apptainer", "singularity", "starter", "starter-suid", "conmon",
                               "podman", "shifter"})


def _parent_and_name(pid: int) -> tuple[int, str] | None:
    """(parent pid, program name) of ``pid`` from /proc; None where /proc does not say (not Linux, gone)."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            name = comm.read().strip()
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith("PPid:"):
                    return int(line.split()[1]), name
    except (OSError, ValueError, IndexError):
        return None
    return None


def rank_program_above(pid: int | None = None) -> str | None:
    """The program between this process and its MPI launcher, when there is one: a rank started by
    mpirun or srun that runs `dodo ...` as a child process of its own (a transport code or a Python
    driver calling `subprocess.run(["dodo", ...])`). The child inherits the launcher's world size
    (OMPI_COMM_WORLD_SIZE=N), but it is not a rank: it must run as one process. Its own MPI_Init
    failed (Open MPI: "ompi_rte_init failed ... Not found", exit 1) and a command that refuses to run
    replicated under a launcher refused it. Walks up the parents, past shells and process wrappers
    (a job script's `bash`, `env`, `numactl`, a container runtime), to the launcher; returns the
    first other program's name, or None (this process is a rank, or /proc cannot tell: then the
    environment is taken at its word, as before)."""
    pid = os.getppid() if pid is None else pid
    between = []  # the ancestors below the launcher, nearest first
    for _ in range(64):  # a bound on the walk, never met in practice
        found = _parent_and_name(pid)
        if found is None:
            return None
        parent, name = found
        if name in _LAUNCHER_PROGRAMS:
            programs = [program for program in between if program not in _WRAPPER_PROGRAMS]
            return programs[-1] if programs else None  # the rank's own program: the one nearest the launcher
        between.append(name)
        if parent <= 1:
            return None  # no launcher above: the variables were left in a shell (world() names them)
        pid = parent
    return None


def replicated_launch(environ=os.environ) -> tuple[int, str]:
    """(ranks, the variables that say so) when this process is one of N > 1 ranks an MPI launcher
    started, else (1, ''): a child process of a rank (rank_program_above) is no rank."""
    size, variables = _launched(environ)
    if size <= 1 or rank_program_above() is not None:
        return 1, ""
    return size, variables


def _launched(environ) -> tuple[int, str]:
    """(number of ranks the launcher started, the environment variables that say so, as NAME=VALUE)."""
    # isdecimal, not isdigit: "²" is a digit that int() refuses (a traceback; outside probe, round 36).
    for name in _SIZE_VARIABLES:
        if environ.get(name, "").isdecimal():
            return int(environ[name]), f"{name}={environ[name]}"
    step = environ.get("SLURM_STEP_ID", "")
    # Inside `srun` (a job step, not the batch script itself, whose step id is 0xfffffffe): one task per rank.
    if step.isdecimal() and int(step) < 0xFFFFFFF0 and environ.get("SLURM_STEP_NUM_TASKS", "").isdecimal():
        return int(environ["SLURM_STEP_NUM_TASKS"]), \
            f"SLURM_STEP_ID={step} and SLURM_STEP_NUM_TASKS={environ['SLURM_STEP_NUM_TASKS']}"
    return 1, ""


def world(environ=os.environ):
    """The communicator of this run: MPI's world under a launcher with N > 1 ranks, else serial.

    Raises RuntimeError when launched as N ranks but mpi4py is missing or its world differs (the
    ranks would each run the whole campaign and overwrite each other's files).
    """
    expected, variables = _launched(environ)
    if expected <= 1:
        return SerialCommunicator()
    if environ is os.environ and rank_program_above() is not None:
        return SerialCommunicator()  # a child process of a rank's own program: one process
    # The count comes from the environment alone: name what set it, so that a variable inherited
    # from elsewhere (a shell or a parent process inside an MPI job) can be told from a real launch;
    # "started as 2 MPI ranks" of a command started by hand named nothing (outside probe, round 29).
    source = (f"; {expected} is what {variables} in the environment says: if this process was not started by "
              "mpirun or srun, that is left from another job (unset it)")
    try:
        from mpi4py import MPI
    except ImportError as error:
        from .._shown import extra_install

        raise RuntimeError(f"started as {expected} MPI ranks, but mpi4py is not installed: {extra_install('mpi')} "
                           f"(it needs an MPI such as Debian's openmpi-bin libopenmpi-dev){source}") from error
    communicator = MPICommunicator(MPI.COMM_WORLD)
    if communicator.size != expected:
        raise RuntimeError(f"the launcher started {expected} ranks but MPI's world has {communicator.size}: mpi4py is "
                           f"built against another MPI than the launcher's (with srun, try srun --mpi=pmix){source}")
    return communicator


def plan_batches(cost: np.ndarray, eligible: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The batches of a campaign: eligible state indices by increasing cost, batch_size at a time.

    Depends only on the states and settings (not on the ranks, nor on what is already done), so
    a batch, and with it every state's seed and time step, is the same in every run.
    """
    order = np.argsort(cost, kind="stable")
    order = order[np.asarray(eligible, bool)[order]]
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def assign_batches(batch_costs: np.ndarray, nranks: int) -> np.ndarray:
    """Rank of each batch: longest first to the least-loaded rank (deterministic; ties to the lower rank)."""
    batch_costs = np.asarray(batch_costs, float)
    owner = np.zeros(len(batch_costs), int)
    load = np.zeros(nranks)
    for index in np.argsort(-batch_costs, kind="stable"):
        rank = int(np.argmin(load))
        owner[index] = rank
        load[rank] += batch_costs[index]
    return owner
