"""Outside probe, data-loss round fourteen (docs/reliability_python.md, section 113).

- An output's directory moved (renamed) while the file was written (`mv run run.old`, a cleaner's rename, another
  client of a network file system): the temporary went with the directory, where its path no longer reached it. It
  was left there, as large as the output (a 291 MB `.big.h5.*.tmp` of `dodo synth d/big.h5 -n 400000`), and the
  message said the directory was removed, or, with a new directory made at the old path, that the temporary "was
  removed by another process".
Hang guards only: no test waits on time."""
from __future__ import annotations

import os

import pytest

import dodo._atomic as atomic


def _left(directory) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def test_a_directory_moved_during_a_write_keeps_no_temporary_and_says_moved(tmp_path):
    directory, moved = tmp_path / "d", tmp_path / "d2"
    directory.mkdir()
    with pytest.raises(atomic.OutputPathError) as refused:
        with atomic.atomic_path(directory / "out.bin") as tmp:
            with open(tmp, "wb") as stream:  # the writer's open file, as HDF5 holds it
                stream.write(b"x" * 100_000)
                os.rename(directory, moved)
                stream.write(b"y" * 100_000)
    assert _left(moved) == []  # before: the temporary of 200 kB, left in d2
    text = str(refused.value)
    assert "was moved or renamed" in text and str(moved) in text and "nothing was written" in text, text
    assert not directory.exists()


def test_a_directory_moved_and_made_again_during_a_write_is_named_so(tmp_path):
    """`mv d d2; mkdir d` during the write. Before: "its temporary ... was removed by another process while this
    command wrote it", and the temporary left in d2."""
    directory, moved = tmp_path / "d", tmp_path / "d2"
    directory.mkdir()
    with pytest.raises(atomic.OutputPathError) as refused:
        with atomic.atomic_path(directory / "out.bin") as tmp:
            with open(tmp, "wb") as stream:
                stream.write(b"x" * 100_000)
                os.rename(directory, moved)
                directory.mkdir()
    assert _left(moved) == [] and _left(directory) == []
    text = str(refused.value)
    assert "another directory made in its place" in text and "removed by another process" not in text, text


def test_a_write_that_opens_its_temporary_after_the_directory_was_replaced_is_refused(tmp_path):
    """A writer that opens the temporary by its path (np.save, json) after `mv d d2; mkdir d`: before, the output
    was written into the new d (a directory the command never checked or locked) and mkstemp's empty temporary
    was left in d2."""
    directory, moved = tmp_path / "d", tmp_path / "d2"
    directory.mkdir()
    with pytest.raises(atomic.OutputPathError, match="moved or renamed"):
        with atomic.atomic_path(directory / "out.json") as tmp:
            os.rename(directory, moved)
            directory.mkdir()
            tmp.write_text("{}")
    assert _left(moved) == [] and _left(directory) == []


def test_an_hdf5_write_whose_directory_is_moved_leaves_nothing(tmp_path):
    h5py = pytest.importorskip("h5py")
    import numpy as np

    directory, moved = tmp_path / "d", tmp_path / "d2"
    directory.mkdir()
    with pytest.raises(atomic.OutputPathError, match="moved or renamed"):
        with atomic.atomic_hdf5(directory / "out.h5") as (handle, check):
            handle.create_dataset("a", data=np.arange(50_000.0))
            check()
            os.rename(directory, moved)
            handle.create_dataset("b", data=np.arange(50_000.0))
    assert _left(moved) == []
    assert h5py is not None


def test_a_directory_removed_during_a_write_is_still_called_removed(tmp_path):
    """Guard: `rm -rf d` during the write keeps its words (data-loss round three)."""
    import shutil

    directory = tmp_path / "d"
    directory.mkdir()
    with pytest.raises(atomic.OutputPathError, match="was removed while this command wrote it; nothing was written"):
        with atomic.atomic_path(directory / "out.bin") as tmp:
            with open(tmp, "wb") as stream:
                stream.write(b"x" * 1000)
                shutil.rmtree(directory)


def test_a_write_whose_directory_stays_is_written(tmp_path):
    """Guard: the directory held open changes nothing for an ordinary write, nor leaves a descriptor open."""
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with atomic.atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"done")
    assert (tmp_path / "out.bin").read_bytes() == b"done" and _left(tmp_path) == ["out.bin"]
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


# --- a second campaign refused by a running or stopped one: who holds the directory ----------------------------------

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 60  # only a guard against a hang

HOLD = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)  # as the campaign's `exec {lock}< DIR`
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()  # until the test closes the pipe
"""


def _campaign_copy(tmp_path, dodo_script: str = "exit 3"):
    from cli_helpers import stand_in_venv

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("qke_campaign.sh", "relabel_growth.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    venv = stand_in_venv(tmp_path, dodo_script)  # "exit 3": no chunk runs (the campaign is refused before any)
    (tmp_path / "plan.txt").write_text("emu 1 3\n")
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    env = dict(os.environ, DODO_VENV=str(venv), DODO_CAMPAIGN_DIR=str(chunks), DODO_CAMPAIGN_NICE="0")
    return repo, env, chunks


needs_flock_and_proc = pytest.mark.skipif(
    sys.platform != "linux" or not any(Path(d, "flock").exists() for d in ("/usr/bin", "/bin")),
    reason="the campaign scripts' lock is flock(1) of util-linux, read back through /proc")


@needs_flock_and_proc
@pytest.mark.parametrize("script, locked", [("qke_campaign.sh", "chunks"), ("relabel_growth.sh", "chunks_growth")])
@pytest.mark.parametrize("stopped", [False, True], ids=["running", "stopped"])
def test_a_second_campaign_names_the_one_that_holds_the_directory(tmp_path, script, locked, stopped):
    """A campaign suspended (SIGSTOP to its group: a batch system's suspend) or running, and the same command again.
    Before: "another qke_campaign.sh (or its chunks) is running in DIR: wait for it to end", naming no process, and
    "running" of one that waits, stopped, until it is continued. Now the holder's pid, and that it is stopped with
    the way to continue it."""
    repo, env, chunks = _campaign_copy(tmp_path)
    directory = tmp_path / locked
    directory.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        if stopped:
            os.kill(holder.pid, signal.SIGSTOP)
            os.waitpid(holder.pid, os.WUNTRACED)  # stopped for certain before the second command looks
        second = subprocess.run(["bash", str(repo / "scripts" / script), "1", str(tmp_path / "plan.txt")],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    finally:
        if stopped:
            os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.close()
        holder.wait(timeout=HANG_GUARD_S)
        holder.stdout.close()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"(pid {holder.pid}" in lines[0], lines[0]
    if stopped:
        assert "stopped" in lines[0] and f"kill -CONT -- -{holder.pid}" in lines[0], lines[0]
    else:
        assert "stopped" not in lines[0], lines[0]


@needs_flock_and_proc
def test_a_campaign_whose_directory_is_moved_starts_no_chunk_in_a_new_one(tmp_path):
    """`mv chunks chunks.moved` while a campaign runs (here: during its first chunk, by the stand-in `dodo`). Before:
    the next chunks ran on (dodo simulate makes a missing output directory, so a new `chunks` appeared, outside the
    campaign's lock, which went with the moved one): the campaign's chunks split over two directories, exit 0. Now
    no chunk starts after the move, and the end names where the directory is now."""
    log = tmp_path / "calls.txt"
    moved = tmp_path / "chunks.moved"
    repo, env, chunks = _campaign_copy(tmp_path, f'echo "$*" >> {log}\n[ -e {moved} ] || mv {tmp_path / "chunks"} {moved}\n'
                                                 'exit 0')
    (tmp_path / "plan.txt").write_text("emu 1 3\nemu 2 3\nemu 3 3\n")
    done = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", str(tmp_path / "plan.txt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "emu_seed1.h5" in calls[0], calls  # before: all three chunks
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"was moved or renamed (it is now {moved})" in last and "DODO_CAMPAIGN_DIR" in last, done.stderr
    assert not chunks.exists()


@needs_flock_and_proc
def test_a_campaign_whose_directory_stays_runs_every_chunk(tmp_path):
    """Guard: the check starts every chunk of a campaign whose directory stays where it is."""
    log = tmp_path / "calls.txt"
    repo, env, chunks = _campaign_copy(tmp_path, f'echo "$*" >> {log}\nexit 0')
    (tmp_path / "plan.txt").write_text("emu 1 3\nemu 2 3\nemu 3 3\n")
    done = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", str(tmp_path / "plan.txt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert len(log.read_text().splitlines()) == 3


@needs_flock_and_proc
def test_a_relabelling_whose_label_directory_is_moved_starts_no_chunk_in_a_new_one(tmp_path):
    """relabel_growth.sh, the same: its label directory (CHUNKS_growth) moved during the first chunk."""
    h5py = pytest.importorskip("h5py")
    log = tmp_path / "calls.txt"
    moved = tmp_path / "labels.moved"
    labels = tmp_path / "chunks_growth"
    repo, env, chunks = _campaign_copy(tmp_path, f'echo "$*" >> {log}\n[ -e {moved} ] || mv {labels} {moved}\nexit 0')
    for seed in (1, 2, 3):
        with h5py.File(chunks / f"emu_seed{seed}.h5", "w") as handle:
            handle.attrs["complete"] = True
    done = subprocess.run(["bash", str(repo / "scripts" / "relabel_growth.sh"), "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    calls = log.read_text().splitlines()
    assert len(calls) == 1, calls  # before: all three
    assert done.returncode == 2, done.stderr
    assert f"was moved or renamed (it is now {moved})" in done.stderr.strip().splitlines()[-1], done.stderr
    assert not labels.exists()


# --- symbolic link loops as outputs and inputs ------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_an_output_that_is_a_symbolic_link_loop_names_the_loop(tmp_path):
    """`ln -s b a; ln -s a b; dodo synth a`. Before: "cannot write a: Too many levels of symbolic links" (which
    link, and what to do, unsaid)."""
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(atomic.OutputPathError) as refused:
        atomic.check_outputs([tmp_path / "a"])
    text = str(refused.value)
    assert f"({tmp_path / 'a'} -> b -> a)" in text and "correct or remove the link" in text, text
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_an_output_below_a_looping_directory_link_names_the_link(tmp_path):
    os.symlink("d", tmp_path / "d")
    with pytest.raises(atomic.OutputPathError) as refused:
        atomic.check_output_target(tmp_path / "d" / "out.h5")
    text = str(refused.value)
    assert "on its path" in text and f"({tmp_path / 'd'} -> d)" in text, text


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_an_input_that_is_a_symbolic_link_loop_names_the_loop(tmp_path):
    os.symlink("loop.h5", tmp_path / "loop.h5")
    with pytest.raises(atomic.InputPathError) as refused:
        atomic.check_input_file(tmp_path / "loop.h5")
    text = str(refused.value)
    assert f"({tmp_path / 'loop.h5'} -> loop.h5)" in text and "give the file's own path" in text, text


# --- an HDF5 output another process has open for writing (running or stopped) ------------------------------------------

needs_hdf5_locks = pytest.mark.skipif(
    os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() in ("FALSE", "0") or sys.platform != "linux",
    reason="HDF5 file locking off, or no flock and /proc/locks")

HOLD_H5 = "import sys, h5py\nf = h5py.File(sys.argv[1], sys.argv[2])\nprint('open', flush=True)\nsys.stdin.read()\n"


class _H5Holder:
    """A child process that holds ``path`` open through h5py (mode "a": HDF5's write lock; "r": its read lock)
    until the block ends; ``stopped``: suspended (SIGSTOP) for the block, continued at its end."""

    def __init__(self, path, mode: str = "a", stopped: bool = False):
        self.path, self.mode, self.stopped = path, mode, stopped

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", HOLD_H5, str(self.path), self.mode],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "open"
        if self.stopped:
            os.kill(self.process.pid, signal.SIGSTOP)
            os.waitpid(self.process.pid, os.WUNTRACED)
        return self.process

    def __exit__(self, *exc):
        if self.stopped:
            os.kill(self.process.pid, signal.SIGCONT)
        self.process.stdin.close()
        self.process.wait(timeout=HANG_GUARD_S)
        self.process.stdout.close()
        return False


def _synth(path, *more):
    return subprocess.run([sys.executable, "-m", "dodo", "synth", str(path), "-n", "20", "-q", *more],
                          capture_output=True, text=True, timeout=300)


@needs_hdf5_locks
@pytest.mark.parametrize("stopped", [False, True], ids=["running", "stopped"])
def test_an_output_another_process_has_open_for_writing_is_not_replaced_with_overwrite(tmp_path, stopped):
    """`dodo synth OUT --overwrite` (any atomic write) while an h5py session (Emu, another program) has OUT open for
    writing, or is suspended with it open. Before: replaced, exit 0; the writer's writes from then on went to a file
    no longer in any directory, lost when it closed it. Now refused before any work, naming the holder."""
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    assert _synth(out, "--seed", "1").returncode == 0
    inode = os.stat(out).st_ino
    with _H5Holder(out, "a", stopped=stopped) as holder:
        done = _synth(out, "--overwrite")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "another process has it open for writing" in lines[0] and f"(pid {holder.pid}" in lines[0], lines[0]
    assert ("stopped" in lines[0] and f"kill -CONT {holder.pid}" in lines[0]) == stopped, lines[0]
    assert os.stat(out).st_ino == inode  # the writer's file is still OUT (before: replaced)
    with h5py.File(out, "r"):
        pass
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["out.h5"]


@needs_hdf5_locks
def test_an_output_opened_for_writing_during_the_write_is_not_replaced(tmp_path):
    """The same, where the other writer opens the file after the command's first check (during its work): refused
    at the rename (atomic_path's last check), the temporary removed, the file kept."""
    pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    assert _synth(out).returncode == 0
    holder = _H5Holder(out, "a")
    try:
        with pytest.raises(atomic.OutputPathError, match="another process has it open for writing"):
            with atomic.atomic_path(out) as tmp:
                tmp.write_bytes(b"new")
                holder.__enter__()  # opened after the write began; the rename comes while it holds the file
    finally:
        holder.__exit__(None, None, None)
    assert out.read_bytes() != b"new" and sorted(entry.name for entry in tmp_path.iterdir()) == ["out.h5"]


@needs_hdf5_locks
def test_an_output_another_process_only_reads_is_replaced(tmp_path):
    """Guard: a reader (HDF5's shared lock) does not stop the rewrite; its open file stays readable as before."""
    pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    assert _synth(out).returncode == 0
    with _H5Holder(out, "r"):
        done = _synth(out, "--seed", "2", "--overwrite")
    assert done.returncode == 0, done.stderr


@needs_hdf5_locks
def test_an_input_another_process_has_open_for_writing_names_it(tmp_path):
    """`dodo score box3d F` while a suspended h5py session has F open for writing. Before: "another process has it
    open for writing (...); wait until that writer closes it", naming no process, of one that will not close it
    until it is continued."""
    pytest.importorskip("h5py")
    data = tmp_path / "data.h5"
    assert _synth(data).returncode == 0
    with _H5Holder(data, "a", stopped=True) as holder:
        done = subprocess.run([sys.executable, "-m", "dodo", "score", "box3d", str(data)], capture_output=True,
                              text=True, timeout=300)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and f"(pid {holder.pid}" in line and "stopped" in line, done.stderr


# --- an MPI rank suspended while the others wait for it ------------------------------------------------------------------

STOPPED_RANK = """
import os, signal, sys, time
import dodo.qke.campaign as campaign
import dodo.qke.parallel as parallel

parallel.WAIT_NOTE_S = 0.0  # the note at once (60 s by default)
simulate_batch, marker, guard = campaign._simulate_batch, sys.argv[2], float(sys.argv[3])


def stopped(pid):
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")


def batch(*args, **kwargs):
    if os.environ["OMPI_COMM_WORLD_RANK"] == "1" and not os.path.exists(marker):
        with open(marker + ".tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.rename(marker + ".tmp", marker)
        os.kill(os.getpid(), signal.SIGSTOP)  # suspended before its first batch (a batch system's suspend)
    elif os.environ["OMPI_COMM_WORLD_RANK"] == "0":
        deadline = time.monotonic() + guard  # a hang guard: rank 1 stops itself at once
        while not (os.path.exists(marker) and stopped(int(open(marker).read()))):
            assert time.monotonic() < deadline, "rank 1 never stopped"
            time.sleep(0.01)
    return simulate_batch(*args, **kwargs)


campaign._simulate_batch = batch
from dodo.cli import main

sys.exit(main(["simulate", sys.argv[1], "--random", "4", "--ncell", "16", "--nphi", "8", "--batch-size", "1",
               "--seed", "3"]))
"""


def test_an_mpi_rank_suspended_while_the_others_wait_is_named(tmp_path):
    """`mpirun -n 2 dodo simulate OUT` whose rank 1 is suspended (SIGSTOP, a batch system's suspend of one node).
    Before: rank 0 finished its batches and waited in the results' gather without a word, for ever (spinning a core).
    Now rank 0 says which rank it waits for, its pid and host, and that it is stopped, with the way to continue it;
    continued, the job finishes."""
    pytest.importorskip("mpi4py")
    import queue
    import threading

    from mpi_helpers import mpi_environment, mpirun

    script, marker, out = tmp_path / "stopped_rank.py", tmp_path / "rank1.pid", tmp_path / "out.h5"
    script.write_text(STOPPED_RANK)
    job = subprocess.Popen([*mpirun(2), sys.executable, str(script), str(out), str(marker), str(HANG_GUARD_S)],
                           env=mpi_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in job.stderr], daemon=True)
    reader.start()
    note = None
    try:
        while note is None:
            line = lines.get(timeout=HANG_GUARD_S)  # a hang guard (before: no such line ever came)
            if "waiting for rank 1" in line:
                note = line.strip()
    except queue.Empty:
        pass
    finally:
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGCONT)
        try:
            job.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        reader.join(timeout=HANG_GUARD_S)
        job.stderr.close()
    pid = marker.read_text()
    assert note is not None, "rank 0 never said whom it waited for"
    assert note.startswith("[rank 0/2] ") and f"rank 1 (pid {pid} on " in note, note
    assert "stopped" in note and f"kill -CONT {pid}" in note, note
    assert job.returncode == 0 and out.exists()


# --- an output that is the file the command's own standard output or error goes to ------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="no /dev/stdout")
@pytest.mark.parametrize("named", ["/dev/stdout", "the log"])
def test_an_output_that_is_the_commands_own_standard_output_is_refused(tmp_path, named):
    """`dodo score box3d D --json /dev/stdout --overwrite >> run.log` (or `--json run.log`). Before: exit 0, run.log
    replaced by the report (its earlier lines lost), and the table the command printed went to the replaced file, in
    no directory any more. Now refused before any work, run.log as it was."""
    data, log = tmp_path / "data.h5", tmp_path / "run.log"
    assert _synth(data).returncode == 0
    log.write_text("precious line 1\nprecious line 2\n")
    output = "/dev/stdout" if named == "/dev/stdout" else str(log)
    with open(log, "ab") as stream:
        done = subprocess.run([sys.executable, "-m", "dodo", "score", "box3d", str(data), "--json", output,
                               "--overwrite"], stdout=stream, stderr=subprocess.PIPE, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "standard output goes to" in lines[0] and "--json -" in lines[0], lines[0]
    assert log.read_text() == "precious line 1\nprecious line 2\n"


def test_an_output_that_is_the_commands_own_standard_error_is_refused(tmp_path):
    """`dodo synth run.log ... 2>> run.log`: the same for standard error (where the refusal itself then goes)."""
    log = tmp_path / "run.log"
    log.write_text("precious\n")
    with open(log, "ab") as stream:
        done = subprocess.run([sys.executable, "-m", "dodo", "synth", str(log), "-n", "20", "-q", "--overwrite"],
                              stdout=subprocess.DEVNULL, stderr=stream, timeout=300)
    assert done.returncode == 2
    text = log.read_text()
    assert text.startswith("precious\n") and "standard error goes to" in text, text


def test_an_output_beside_a_redirected_standard_output_is_written(tmp_path):
    """Guard: `dodo score box3d D --json report.json > table.txt` writes both."""
    data, table, report = tmp_path / "data.h5", tmp_path / "table.txt", tmp_path / "report.json"
    assert _synth(data).returncode == 0
    with open(table, "wb") as stream:
        done = subprocess.run([sys.executable, "-m", "dodo", "score", "box3d", str(data), "--json", str(report)],
                              stdout=stream, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "box3d" in table.read_text() and report.read_text().lstrip().startswith("{")


@needs_flock_and_proc
def test_a_campaign_plan_given_through_a_pipe_is_read(tmp_path):
    """`bash scripts/qke_campaign.sh 1 <(grep emu plan.txt)`: the plan is /dev/fd/N, a pipe. Before: "plan
    /dev/fd/63 not found", exit 2, of a plan that was there."""
    log = tmp_path / "calls.txt"
    repo, env, chunks = _campaign_copy(tmp_path, f'echo "$*" >> {log}\nexit 0')
    read, write = os.pipe()
    try:
        os.write(write, b"emu 1 3\nemu 2 3\n")
        os.close(write)
        write = None
        done = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", f"/dev/fd/{read}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
                              pass_fds=(read,))
    finally:
        os.close(read)
        if write is not None:
            os.close(write)
    assert done.returncode == 0, done.stderr
    assert len(log.read_text().splitlines()) == 2


def test_a_campaign_plan_that_is_a_directory_is_not_called_missing(tmp_path):
    repo, env, chunks = _campaign_copy(tmp_path)
    done = subprocess.run(["bash", str(repo / "scripts" / "qke_campaign.sh"), "1", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 2 and "is not a file of lines" in done.stderr and "not found" not in done.stderr, \
        done.stderr
