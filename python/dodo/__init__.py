"""Dodo: a machine-learned closure for the neutrino fast flavour instability.

``F_pred = F_box + dF_ml``: the analytic Box3D closure (C++ core) plus a learned correction
(an ONNX model run by the same C++ runtime that hydro codes link): :func:`closure`,
:class:`Closure`, :func:`box3d`.
Conventions (species, components, metric, frames) are in :mod:`dodo.conventions`.

What ``import dodo`` does to a program's process: it imports numpy (and ``numpy.ma``) and the compiled
core; it starts no thread, writes no file and keeps none open, installs no signal handler (the ``dodo``
command alone installs one for a Ctrl-C while it starts up: ``dodo._startup``) and reads no variable of
the environment. Loading the compiled core sets ``ORT_DISABLE_TELEMETRY=1`` in the process's C
environment where it is unset (docs/runtime.md: a forked child's exit waited on ONNX Runtime's telemetry
thread): child processes (``subprocess``, ``os.system``) inherit it, while ``os.environ``, read at
Python's start, does not show it. Read later, at each use (outside probe, Python round sixty-three):
``DODO_ONNXRUNTIME_LIBRARY`` (which ONNX Runtime library a :class:`Closure` with a model loads),
``DODO_NETWORK_EVALUATOR`` (a closure made with ``evaluator="auto"``, also by :func:`closure`),
``DODO_ONNXRUNTIME_MEMORY_LIMIT`` (once a process, when ONNX Runtime's library is loaded),
``DODO_ALLOW_UNTESTED_MODEL`` (a package without test vectors), and with ``threads=None`` the CPU
affinity, the control group's CPU quota and an MPI launcher's ``OMPI_COMM_WORLD_LOCAL_SIZE`` or
``MPI_LOCALNRANKS`` (never ``OMP_NUM_THREADS`` or another OpenMP variable: give ``threads=``).
Worker threads start with a :class:`Closure` (``threads`` - 1 of them, until it is collected) and per
call of :func:`box3d`. The ``dodo`` commands read more (a launcher's variables for their check of a
replicated launch, HDF5's ``HDF5_EXT_PREFIX``, ``HDF5_VDS_PREFIX`` and
``HDF5_EXTFILE_PREFIX`` for an input's linked files). In a sub-interpreter the import is refused with an
ImportError: the compiled core runs in the main interpreter only.
"""
from __future__ import annotations


def _in_a_subinterpreter() -> bool:
    """Whether this import runs in a sub-interpreter (``_xxsubinterpreters.run_string``, mod_wsgi's
    application groups, Python 3.14's ``concurrent.futures.InterpreterPoolExecutor``). False where
    the interpreter cannot say."""
    import importlib

    for name in ("_interpreters", "_xxsubinterpreters"):  # Python 3.13 on; 3.9 to 3.12
        try:
            module = importlib.import_module(name)
            current, main = module.get_current(), module.get_main()
            number = [int(value[0] if isinstance(value, tuple) else value) for value in (current, main)]
        except (ImportError, AttributeError, TypeError, ValueError, RuntimeError, IndexError):
            continue
        return number[0] != number[1]
    return False


if _in_a_subinterpreter():
    # The compiled core (pybind11) takes the main interpreter's GIL state when it loads: in a
    # sub-interpreter `import dodo` waited for ever in PyGILState_Ensure (outside probe, Python round
    # sixty-three).
    raise ImportError("dodo cannot be imported in a Python sub-interpreter (its compiled core, pybind11, runs in "
                      "the main interpreter only, and its import there would wait for ever): import dodo in the "
                      "main interpreter and use threads (the GIL is released while Dodo computes) or processes "
                      "(concurrent.futures.ProcessPoolExecutor); under mod_wsgi, WSGIApplicationGroup %{GLOBAL}")

from . import _startup  # noqa: E402

_startup.guard()  # Ctrl-C while the `dodo` command imports: one line, exit 130 (no traceback)



def _core_missing(error: ImportError) -> str:
    """Why ``dodo._core`` is missing, for the ImportError. `python -m dodo.test` run from the
    repository's python/ directory (or with PYTHONPATH at it) beside an installed dodo imported the
    source tree, which has no compiled core, and was told to build and install the package, which
    was installed (outside probe, round 30): that case names both directories."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        from importlib import metadata

        installed_dist = metadata.distribution("dodo")
        installed = os.path.abspath(str(installed_dist.locate_file("dodo")))
    except Exception:  # no installed distribution, or an unreadable one
        installed_dist = installed = None
    if installed and installed != here and os.path.isfile(os.path.join(installed, "__init__.py")):
        return (f"dodo was imported from {here}, a source tree without its compiled core (dodo._core), ahead of "
                f"the installed dodo {installed_dist.version} in {installed}: the current directory or PYTHONPATH "
                "puts the source tree first on sys.path; run from another directory (or unset PYTHONPATH). "
                f"Original error: {error}")
    return ("dodo's compiled core (dodo._core) could not be imported. Build and install the package "
            "with `pip install .` (needs a C++17 compiler and Python headers); see the README. "
            f"Original error: {error}")


try:
    from . import _core
except ImportError as error:  # pragma: no cover - only on a broken install
    raise ImportError(_core_missing(error)) from error

from . import conventions
from ._box3d import (
    Box3DResult,
    boost_from_rest,
    boost_to_rest,
    box3d,
    box3d_settings,
    comoving_density,
    crossing_features,
    invariants,
)
from ._closure import BOX3D_ONLY, Closure, ClosureResult, closure, runtime_available
from ._status import CellStatus, describe_status

__version__ = _core.__version__

__all__ = [
    "BOX3D_ONLY",
    "Box3DResult",
    "Closure",
    "ClosureResult",
    "CellStatus",
    "boost_from_rest",
    "boost_to_rest",
    "box3d",
    "box3d_settings",
    "closure",
    "comoving_density",
    "conventions",
    "crossing_features",
    "describe_status",
    "invariants",
    "runtime_available",
    "__version__",
]
