"""Fits an ensemble's independent members in worker processes, one torch thread each.

Why processes and not torch's threads: the members are small networks fitted on mini-batches of
a few hundred rows, where intra-op threads gain little on a quiet machine and lose badly on a
busy one: on a 2-core VM with other jobs running, one step of a 128 x 3 member took ~300 ms with
torch.set_num_threads(2) against ~8 ms with one thread (OpenMP's barriers wait for a thread the
scheduler has put aside; measured 2026-12-06 23:50 UTC), and a retrain that way did not finish
its first member in 22 minutes. The members are independent (each its own seed and bootstrap
resample), so K processes fit K members at once, and each member is the same bits as when it is
fitted alone in one thread (tests/python/test_member_processes.py).

The shared arrays go to the workers once, as .npy files in a private temporary folder that the
workers read; each worker writes its member there and the parent reads it back. A worker
ignores Ctrl-C (the parent handles it and ends its workers) and dies with the parent (Linux:
PR_SET_PDEATHSIG), so no fit outlives the command.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np


def fit_members(fit, shared: dict, tasks: list, processes: int = 1, log=None, done_message=None) -> list:
    """[fit(**shared, **task) for task in tasks], with up to ``processes`` fits at once.

    ``fit``: a module-level function (workers import it by name) returning a torch module.
    ``shared``: keyword arguments common to every fit (NumPy arrays among them go to the workers as
    .npy files). ``done_message(k)``: the log line when fit k is done (in completion order).
    processes 1 (or one task): in this process, with its torch threads, as before."""
    tasks = list(tasks)
    if processes <= 1 or len(tasks) <= 1:
        results = []
        for k, task in enumerate(tasks):
            results.append(fit(**shared, **task))
            if log and done_message:
                log(done_message(k))
        return results
    _remove_stale_folders()
    with tempfile.TemporaryDirectory(prefix=_folder_prefix()) as folder:
        held = _hold_folder(folder)
        try:
            return _fit_in_processes(fit, shared, tasks, processes, Path(folder), log, done_message)
        finally:
            if held is not None:
                os.close(held)  # lets go of the flock


def _folder_prefix(with_pid: bool = True) -> str:
    """``dodo-members-HOST.PID.``: the private folder's name says whose it is (a /tmp may be shared)."""
    from .._atomic import _host

    return f"dodo-members-{_host()}." + (f"{os.getpid()}." if with_pid else "")


def _remove_stale_folders() -> None:
    """Removes the folders of runs on this host that no longer run. A run ended by SIGKILL (the OOM
    killer, a batch system's kill after its grace period) cannot remove its own: each left the shared
    arrays (the training pool's features) and the finished members in the temporary directory, one
    more folder per kill, never removed (outside probe, data-loss round ten)."""
    import re
    import shutil

    from .._atomic import _running

    pattern = re.compile(re.escape(_folder_prefix(with_pid=False)) + r"(\d+)\..+")
    try:
        candidates = list(Path(tempfile.gettempdir()).iterdir())
    except OSError:
        return
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        try:
            if match and not candidate.is_symlink() and candidate.is_dir() and \
                    candidate.stat().st_uid == os.getuid() and not _running(int(match.group(1))) and \
                    not _folder_in_use(candidate):
                shutil.rmtree(candidate, ignore_errors=True)
        except OSError:
            continue


#: Flags of the private folder's open for its flock: a directory, never a link, not inherited by the workers.
_FOLDER_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _hold_folder(folder) -> int | None:
    """The private folder held open with a shared flock while the run uses it: what tells another run that
    its owner still runs where the pid in its name cannot (a run in another pid namespace, a container
    sharing /tmp and the host's name, whose pid is no process here: its live folder was removed as a dead
    run's, and its fits failed; outside probe, data-loss round sixteen, as round twelve's temporaries).
    None where there are no flocks."""
    try:
        import fcntl

        descriptor = os.open(folder, _FOLDER_OPEN_FLAGS)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return descriptor
    except OSError:
        os.close(descriptor)
        return None


def _folder_in_use(folder: Path) -> bool:
    """Whether a run holds ``folder``'s flock (:func:`_hold_folder`); False where it cannot be told."""
    from .._atomic import flock_is_held

    return flock_is_held(folder, _FOLDER_OPEN_FLAGS) is True


def _fit_in_processes(fit, shared: dict, tasks: list, processes: int, folder: Path, log, done_message) -> list:
    import multiprocessing
    from multiprocessing.connection import wait

    import torch

    arrays, options = {}, {}
    for name, value in shared.items():
        if isinstance(value, np.ndarray):
            try:
                np.save(folder / f"{name}.npy", value)
            except OSError as error:
                # NumPy's short write says only "20800 requested and 2032 written": `dodo train-ensemble` with
                # a full /tmp ended with that one line (outside probe, data-loss round sixteen).
                words = (f"cannot write the table's arrays for the worker processes into the temporary folder "
                         f"{folder}: {error.strerror or error}{_temporary_space_hint(folder, value.nbytes)}")
                raise (OSError(error.errno, words) if error.errno else OSError(words)) from None
            arrays[name] = str(folder / f"{name}.npy")
        else:
            options[name] = value
    # spawn, not fork: this process may already run torch's and OpenMP's threads, which a forked
    # child inherits as locks held by no one.
    context = multiprocessing.get_context("spawn")
    pending = list(enumerate(tasks))
    running: dict = {}
    said: set = set()  # the worker pids said to be stopped (said once each)
    results: list = [None] * len(tasks)
    try:
        while pending or running:
            while pending and len(running) < processes:
                k, task = pending.pop(0)
                worker = context.Process(target=_fit_one, name=f"dodo-member-{k}", daemon=True,
                                         args=(fit.__module__, fit.__qualname__, arrays, options, task,
                                               str(folder / f"fit{k}.pt"), str(folder / f"fit{k}.error"),
                                               os.getpid()))
                _start_without_sigint(worker)
                running[worker.sentinel] = (k, worker)
            ready = wait(list(running), timeout=STOPPED_CHECK_S)
            if not ready:
                _say_stopped_workers(running, len(tasks), said, log)
            for sentinel in ready:
                k, worker = running.pop(sentinel)
                worker.join()
                if worker.exitcode != 0:
                    raise RuntimeError(f"fit {k + 1} of {len(tasks)} failed in its worker process: "
                                       f"{_worker_failure(worker.exitcode, folder / f'fit{k}.error')}"
                                       f"{_temporary_space_hint(folder)}")
                # Our own file, written by our worker into a private folder (mode 0700).
                results[k] = torch.load(folder / f"fit{k}.pt", weights_only=False)
                if log and done_message:
                    log(done_message(k))
    finally:
        for _, worker in running.values():
            worker.terminate()
            # A stopped worker keeps SIGTERM pending until it is continued: the join below waited for ever
            # after a Ctrl-C (or a failed fit) while another worker was stopped.
            if worker.pid is not None:
                try:
                    os.kill(worker.pid, signal.SIGCONT)
                except OSError:
                    pass
        for _, worker in running.values():
            worker.join()
    return results


#: Seconds between the parent's looks at its workers' states while none has finished (/proc, cheap).
STOPPED_CHECK_S = 5.0


def _process_state(pid: int) -> str:
    """The one-letter state of ``pid`` in /proc/PID/stat ("T": stopped), "" where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return ""


def _say_stopped_workers(running: dict, total: int, said: set, log) -> None:
    """Say once of each worker found stopped (SIGSTOP to it, a batch system's suspend of some processes)
    which fit it holds and how to continue it: `dodo train-ensemble` with a worker stopped waited for it
    without a word, for ever (outside probe, open items of data-loss round fourteen; dodo simulate's
    ranks are named so since that round)."""
    for k, worker in sorted(running.values(), key=lambda item: item[0]):
        pid = worker.pid
        if pid is None or pid in said or _process_state(pid) not in ("T", "t"):
            continue
        said.add(pid)
        line = (f"waiting for fit {k + 1} of {total}: its worker process (pid {pid}) is stopped (SIGSTOP, Ctrl-Z, a "
                f"batch system's suspend); the run waits until it is continued: kill -CONT {pid}")
        if log is not None:
            log(line)
        else:
            print(line, file=sys.stderr, flush=True)


def _start_without_sigint(worker) -> None:
    """Starts the worker with Ctrl-C ignored from its first instruction (an ignored signal stays
    ignored across exec; Python then installs no KeyboardInterrupt handler): a Ctrl-C reaches the
    whole process group, and a worker still importing torch would print a traceback. Signal
    dispositions can only be changed from the main thread; elsewhere the worker ignores it itself."""
    if threading.current_thread() is not threading.main_thread():
        worker.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker.start()
    finally:
        signal.signal(signal.SIGINT, previous)


#: Free bytes below which the private folder's file system is called full in a failure's words.
_NEARLY_FULL_BYTES = 1 << 20


def _temporary_space_hint(folder: Path, size: int | None = None) -> str:
    """What to do when the private folder's file system is (nearly) full, or a file of ``size`` bytes is
    over the process's file-size limit: a full /tmp (or $TMPDIR) is where `ensemble.processes` > 1
    fails, not the run's own directory; "" otherwise."""
    import shutil

    way_out = "or set ensemble.processes: 1, which writes no such files"
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if size is not None and limit != resource.RLIM_INFINITY and size > limit:
            return (f" (this process may write files of at most {limit:,} bytes: its file-size limit, ulimit -f; "
                    f"raise it, e.g. ulimit -f unlimited, {way_out})")
    except (ImportError, OSError, ValueError):
        pass
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    if free >= _NEARLY_FULL_BYTES:
        return ""
    return (f" (the temporary-files folder {folder.parent} has {free:,} bytes free: ensemble.processes > 1 passes "
            f"the table and the members between processes as files there; free space in it, set TMPDIR to a "
            f"folder with room, {way_out})")


def _worker_failure(exitcode: int, error_file: Path) -> str:
    if error_file.exists():
        return error_file.read_text(errors="replace").strip() or f"exit status {exitcode}"
    if exitcode is not None and exitcode < 0:
        try:
            return f"ended by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"ended by signal {-exitcode}"
    return f"exit status {exitcode}"


def _die_with_parent(parent: int) -> None:
    """The worker receives SIGTERM when its parent dies, even by SIGKILL (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _fit_one(module: str, name: str, arrays: dict, options: dict, task: dict, output: str, error_file: str,
             parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    try:
        import importlib

        import torch

        from .safe_load import write_torch_file

        torch.set_num_threads(1)
        fit = importlib.import_module(module)
        for part in name.split("."):
            fit = getattr(fit, part)
        loaded = {key: np.load(path) for key, path in arrays.items()}  # writable: torch.as_tensor shares them
        member = fit(**loaded, **options, **task)
        partial = output + ".partial"
        write_torch_file(member, partial)  # a full disk: Python's "[Errno 28]", not torch's "unexpected pos"
        os.replace(partial, output)
    except BaseException as error:  # reported by the parent as this fit's failure
        text = f"{type(error).__name__}: {error}"
        try:
            Path(error_file).write_text(text)
        except OSError:  # the folder's disk is full: the parent then says so; the reason goes to stderr
            print(f"dodo: member fit failed: {text}", file=sys.stderr, flush=True)
        os._exit(1)
