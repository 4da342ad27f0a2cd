"""Which process of a launcher's job this is (torchrun, mpirun, srun): `dodo info`'s launcher line and
`dodo test`'s summary (one module, so that dodo.test does not import the command line that runs it)."""
from __future__ import annotations

import os


def launch_line(environ=None) -> str | None:
    """`dodo info`'s line on the launcher that started this process as one of several (torchrun, mpirun or
    srun): which process it is and what runs over them; None otherwise. `torchrun --nproc-per-node 2 -m dodo
    info` was refused ("only dodo train runs data-parallel") where `mpirun -n 2 dodo info` printed the same
    listing once per rank, and neither said a word of the ranks (outside probe, scale-out round four)."""
    environ = os.environ if environ is None else environ
    shared = "dodo info, dodo reference and dodo test run in each; every other command is refused"
    if str(environ.get("TORCHELASTIC_RUN_ID", "")).strip():
        world, rank = str(environ.get("WORLD_SIZE", "")).strip(), str(environ.get("RANK", "")).strip()
        if world.isdecimal() and int(world) > 1:
            return (f"launcher: torchrun, process {rank or '?'} of {world} (RANK={rank}, WORLD_SIZE={world}): dodo "
                    f"train runs data-parallel over the processes; {shared}")
    from .qke.parallel import replicated_launch

    ranks, variables = replicated_launch(environ)
    if ranks <= 1:
        return None
    rank = next((environ[name] for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")
                 if str(environ.get(name, "")).isdecimal()), "?")
    import importlib.util

    from ._shown import extra_install

    mpi = "" if importlib.util.find_spec("mpi4py") else f" once mpi4py is installed ({extra_install('mpi')})"
    return (f"launcher: MPI, rank {rank} of {ranks} ({variables}): dodo simulate shares its work over the "
            f"ranks{mpi}; {shared}")


def launched_process(environ=None) -> str | None:
    """"MPI rank 1 of 2" or "torchrun process 1 of 2" for a process a launcher started as one of several;
    None otherwise. `dodo test` ends its summary with it: one line per process, each naming its own."""
    line = launch_line(environ)
    if line is None:
        return None
    kind, which = line.split(": ", 1)[1].split(" (", 1)[0].split(", ", 1)
    return f"{kind} {which}"
