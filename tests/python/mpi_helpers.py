"""Starting test programs under MPI (issue 12): `mpirun -n N --oversubscribe`, skipped with a
reason where OpenMPI's mpirun is absent (CI installs it: .ci/run)."""
from __future__ import annotations

import os
import shutil

import pytest


def skip_without(reason: str) -> None:
    """Skip, unless DODO_REQUIRE_MPI=1 (CI, which installs MPI) makes a missing MPI a failure."""
    if os.environ.get("DODO_REQUIRE_MPI") == "1":
        pytest.fail(f"DODO_REQUIRE_MPI=1 but {reason}")
    pytest.skip(reason)


def mpirun(nranks: int) -> list:
    """The command prefix that starts `nranks` processes on this machine, even with fewer cores."""
    launcher = shutil.which("mpirun")
    if not launcher:
        skip_without("mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)")
    command = [launcher, "-n", str(nranks), "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-run-as-root")  # OpenMPI refuses root otherwise (CI containers run as root)
    return command


def mpi_environment() -> dict:
    """The environment for mpirun: OpenMPI's own chatter about missing network hardware is kept out."""
    return dict(os.environ, OMPI_MCA_btl="self,vader,tcp", OMPI_MCA_btl_base_warn_component_unused="0",
                OMPI_MCA_rmaps_base_oversubscribe="1")
