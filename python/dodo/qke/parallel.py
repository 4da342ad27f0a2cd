"""Campaigns over MPI ranks (``mpirun -n N dodo simulate ...``, ``srun dodo simulate ...``).

The states are cut into the batches a single process would run (the same batches whatever N, so
that every state gets the same perturbation seed and time step: rows identical bit for bit), and
the batches are shared out over the ranks by their estimated cost. MPI comes from mpi4py
(``pip install dodo[mpi]``), imported only when the process was started by an MPI launcher with
more than one rank; otherwise the campaign runs in this process alone, as always.
"""
from __future__ import annotations

import os

import numpy as np

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

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        raise SystemExit(code)


class MPICommunicator:
    """mpi4py's COMM_WORLD behind the same small interface."""

    def __init__(self, comm) -> None:
        self._comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def gather(self, value, root: int = 0):
        return self._comm.gather(value, root=root)

    def bcast(self, value, root: int = 0):
        return self._comm.bcast(value, root=root)

    def computed_by_root(self, function):
        """function() computed by rank 0 alone and sent to every rank."""
        return self._comm.bcast(function() if self.rank == 0 else None, root=0)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int) -> None:
        self._comm.Abort(code)


def launched_size(environ=os.environ) -> int:
    """Number of ranks the launcher started (1 when not started by one)."""
    return _launched(environ)[0]


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
    # The count comes from the environment alone: name what set it, so that a variable inherited
    # from elsewhere (a shell or a parent process inside an MPI job) can be told from a real launch;
    # "started as 2 MPI ranks" of a command started by hand named nothing (outside probe, round 29).
    source = (f"; {expected} is what {variables} in the environment says: if this process was not started by "
              "mpirun or srun, that is left from another job (unset it)")
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise RuntimeError(f"started as {expected} MPI ranks, but mpi4py is not installed: pip install 'dodo[mpi]' "
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
