"""Data-loss, hang and signal probe, round sixteen (outside probe): the package tools' scratch file, a
checkpoint tool on a full disk, and `dodo train-ensemble`'s worker processes on a full temporary folder.

The full-disk cases stand in for a full file system with the process's file-size limit (`ulimit -f`,
RLIMIT_FSIZE: Python ignores SIGXFSZ, so a write over it fails as a full disk's does, short or EFBIG),
set in the child alone; no timing is involved.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_helpers import run_tool

pytest.importorskip("torch")

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _file_size_limited(limit: int):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def _skip_without_a_settable_file_size_limit():
    resource = pytest.importorskip("resource")
    if resource.getrlimit(resource.RLIMIT_FSIZE)[1] != resource.RLIM_INFINITY:
        pytest.skip("a hard file-size limit is already set")


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_named_like_the_reexport_scratch_is_kept(tmp_path, kind):
    """`python tools/scale_correction_in_package.py IN --factor 1.1 -o OUT` (and tools/gate_growth_in_package.py)
    exported the new package to the fixed name OUT.reexport-tmp.onnx, read it back and removed it. Before: a
    user's file of that name was overwritten and deleted without a word, exit 0; a symbolic link of that name
    had its target (here notes.txt) replaced by the package. Now the scratch file is made in a directory of
    the run's own beside OUT (mkdtemp) and removed with it; what was there is kept byte for byte."""
    pytest.importorskip("onnx")
    import dodo.models

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    out = tmp_path / "scaled.onnx"
    scratch_name = tmp_path / "scaled.onnx.reexport-tmp.onnx"
    if kind == "file":
        scratch_name.write_text("my notes\n")
    else:
        scratch_name.symlink_to(notes.name)
    done = run_tool("scale_correction_in_package.py", dodo.models.default_model_path(), "--factor", "1.1", "-o", out)
    assert done.returncode == 0, done.stderr
    assert (scratch_name.read_text() if kind == "file" else notes.read_text()) == "my notes\n"
    assert scratch_name.is_symlink() == (kind == "link")
    assert notes.read_text() == "my notes\n"
    assert out.read_bytes()[:1] != b""  # the new package was written
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == sorted(["notes.txt", "scaled.onnx", "scaled.onnx.reexport-tmp.onnx"]), leftovers


def test_regate_checkpoint_on_a_full_disk_says_so_in_one_line(ensemble_run, tmp_path):
    """`python tools/regate_checkpoint.py CK 1.5 --table T -o NEW` whose NEW cannot be written whole (a full
    disk; here `ulimit -f 8`). Before: torch.save wrote into the temporary itself and failed with a traceback
    ending in "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 5632 vs 5528" (the
    same on a real 16 KiB tmpfs). Now the checkpoint is serialised in memory first and written by Python:
    one line naming the limit ("[Errno 27] File too large (this process may write files of at most ..."),
    exit 2, nothing left (a full tmpfs: "[Errno 28] No space left on device: 'NEW'")."""
    _skip_without_a_settable_file_size_limit()
    out = tmp_path / "regated.pt"
    done = subprocess.run([sys.executable, str(TOOLS / "regate_checkpoint.py"), str(ensemble_run["checkpoint"]), "1.5", "--table", str(ensemble_run["table"]), "-o", str(out)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          preexec_fn=_file_size_limited(8192))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "unexpected pos" not in done.stderr
    assert "File too large" in lines[0] and "ulimit -f" in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


def test_train_ensemble_workers_on_a_full_temporary_folder_say_where_and_what_to_do(ensemble_run, tmp_path):
    """`dodo train-ensemble --set ensemble.processes=2` passes the table to its worker processes as .npy files
    in a private folder under TMPDIR (/tmp). A full /tmp (here `ulimit -f 10`, which NumPy's writer meets as a
    full disk: a short write). Before: the one line was NumPy's "dodo train-ensemble: error: 20800 requested
    and 1264 written" (on a full 16 KiB tmpfs "20800 requested and 2032 written"): neither the folder, nor the
    cause, nor what to do. Now it names the temporary folder and the limit (a full file system: its free
    bytes, TMPDIR, and ensemble.processes: 1, which needs no such files)."""
    _skip_without_a_settable_file_size_limit()
    out = tmp_path / "e2.pt"
    done = subprocess.run([sys.executable, "-m", "dodo", "train-ensemble", "--config", str(ensemble_run["config"]),
                           "--set", "ensemble.processes=2", "--set", f"output.checkpoint={out}"],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, TMPDIR=str(tmp_path)), preexec_fn=_file_size_limited(10240))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert "cannot write the table's arrays for the worker processes into the temporary folder" in last, last
    assert str(tmp_path) in last and "ulimit -f" in last and "ensemble.processes: 1" in last, last
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dodo-members-")]  # the folder removed


def test_a_member_worker_on_a_full_disk_reports_the_disk_not_torchs_position(tmp_path):
    """A member worker whose fitted member cannot be written into the private folder (the folder's disk full
    once the table's arrays were there; `ulimit -f` stands in). Before: torch.save wrote into the file itself,
    and the fit's failure, as the parent reports it, was "RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos ..."; now the member is serialised in memory first and the
    failure is Python's "OSError: [Errno 27] File too large" (a full tmpfs: "[Errno 28] No space left on
    device"), with the parent's hint on the temporary folder."""
    _skip_without_a_settable_file_size_limit()
    (tmp_path / "bigfit.py").write_text(textwrap.dedent("""
        import torch

        def fit(**_):
            return torch.nn.Linear(120, 120)
    """))
    child = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from dodo.training.member_processes import _fit_one
        _fit_one("bigfit", "fit", {{}}, {{}}, {{}}, {str(tmp_path / "fit0.pt")!r}, {str(tmp_path / "fit0.error")!r},
                 os.getppid())
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, preexec_fn=_file_size_limited(16384))
    assert done.returncode == 1, done.stderr
    error = (tmp_path / "fit0.error").read_text()
    assert "unexpected pos" not in error and error.startswith("OSError: [Errno 27]"), error
    assert not (tmp_path / "fit0.pt").exists()


def test_the_scratch_of_a_killed_reexport_is_removed_by_the_next_run(tmp_path):
    """The scratch directory of a tool run killed while it exported (SIGTERM or SIGKILL: a tool removes
    nothing then) is named by host and pid; the next run on that output removes those of runs on this host
    that no longer run (shown: SIGTERM six times at random moments, one left each time, removed by the next
    run), and leaves alone one that holds anything but the scratch package."""
    pytest.importorskip("onnx")
    import dodo.models
    from dodo._atomic import _host

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = tmp_path / f".scaled.onnx.reexport-{_host()}.{ended.pid}.abcd1234"
    stale.mkdir()
    (stale / "package.onnx").write_bytes(b"half a package")
    foreign = tmp_path / f".scaled.onnx.reexport-{_host()}.{ended.pid}.mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes\n")
    out = tmp_path / "scaled.onnx"
    done = run_tool("scale_correction_in_package.py", dodo.models.default_model_path(), "--factor", "1.1", "-o", out)
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert (foreign / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([foreign.name, "scaled.onnx"])


def test_a_package_another_run_wrote_meanwhile_is_kept(tmp_path):
    """Two `python tools/scale_correction_in_package.py IN --factor A -o OUT` at once (different factors) on a
    new OUT, without --overwrite: each found no OUT at its start, and the second to finish renamed its package
    over the first's; both said "wrote OUT", exit 0 (shown: the file held 0.9's package, the 1.1 run's lost).
    The other run is stood in for by a copy made just before the tool's write. Now the tools run as dodo's
    commands do (outputs_as_found): the file that appeared meanwhile is kept, and the tool says so in one
    line, exit 2 (the same for gate_growth_in_package.py, probe_test_vectors.py and gate_distance_float64.py)."""
    pytest.importorskip("onnx")
    import dodo.models

    out, other = tmp_path / "scaled.onnx", tmp_path / "other.onnx"
    other.write_bytes(b"the package another run wrote")
    child = textwrap.dedent(f"""
        import runpy, shutil, sys
        sys.path.insert(0, {str(TOOLS)!r})
        import package_tool
        real = package_tool.write_package

        def write_package(path, package):
            shutil.copyfile({str(other)!r}, path)  # another run ends first and writes OUT
            real(path, package)

        package_tool.write_package = write_package
        sys.argv = ["scale_correction_in_package.py", {str(dodo.models.default_model_path())!r}, "--factor", "1.1",
                    "-o", {str(out)!r}]
        runpy.run_path({str(TOOLS / "scale_correction_in_package.py")!r}, run_name="__main__")
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr + done.stdout
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith("tools/scale_correction_in_package.py: cannot write") and "appeared there" in lines[0]
    assert out.read_bytes() == b"the package another run wrote"
    assert "wrote" not in done.stdout


def test_a_member_folder_whose_run_lives_in_another_pid_namespace_is_kept(tmp_path, monkeypatch):
    """`dodo train-ensemble` with ensemble.processes > 1 removes, before its fits, the private folders
    (dodo-members-HOST.PID.*) of runs on this host whose pid no longer runs. A run in another pid namespace
    (a container sharing /tmp and the host's name) has a pid that is no process here: its live folder, the
    table's arrays and finished members, was removed under it. Now a run holds its folder with a shared flock,
    and a folder whose flock is held is kept whatever its pid says (stood in for: a folder named by a pid that
    has ended, held by this test). A folder of an ended run that nobody holds is still removed."""
    import fcntl

    from dodo.training import member_processes

    monkeypatch.setattr(member_processes.tempfile, "gettempdir", lambda: str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    prefix = member_processes._folder_prefix(with_pid=False)
    live, stale = tmp_path / f"{prefix}{ended.pid}.live1234", tmp_path / f"{prefix}{ended.pid}.gone1234"
    for folder in (live, stale):
        folder.mkdir()
        (folder / "features.npy").write_bytes(b"arrays")
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        member_processes._remove_stale_folders()
        assert (live / "features.npy").read_bytes() == b"arrays"
        assert not stale.exists()
    finally:
        os.close(holder)


def test_train_with_workers_and_no_room_in_dev_shm_says_where(tmp_path, monkeypatch, capsys):
    """`dodo train --set data.num_workers=2` where /dev/shm is full or small (a container's 64 MB; shown with a
    16 KiB tmpfs mounted on /dev/shm in a mount namespace): the workers' queues need POSIX semaphores there.
    Before: "dodo train: error: [Errno 28] No space left on device", naming no file (the user looks at the
    run's own disk), then torch's 6-line "Exception ignored in: ..._MultiProcessingDataLoaderIter.__del__ ...
    AttributeError: ... no attribute '_workers'". Now one line naming the workers, /dev/shm and the ways out,
    and nothing from the half-made iterator (pytest turns that unraisable error into a failure). The
    semaphores' failure is stood in for by making _multiprocessing.SemLock refuse with ENOSPC."""
    import errno
    import json
    import multiprocessing.synchronize  # noqa: F401 (imported before the stand-in: it reads SemLock's constants)

    import _multiprocessing

    from cli_helpers import run, synthetic_preprocessed

    table = synthetic_preprocessed(tmp_path, 200)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "data": {"path": str(table), "batch_size": 16, "num_workers": 2},
        "model": {"head": "equivariant", "hidden_dim": 8, "n_blocks": 1},
        "training": {"epochs": 1, "threads": 1},
        "output": {"results_dir": str(tmp_path / "res"), "checkpoint_dir": str(tmp_path / "ck")}}))

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_multiprocessing, "SemLock", no_room)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    lines = [line for line in err.splitlines() if line.startswith("dodo train")]
    assert code == 2 and len(lines) == 1, err
    assert "cannot start the data loader's 2 worker processes (data.num_workers)" in lines[0], lines[0]
    assert "/dev/shm" in lines[0] and "data.num_workers: 0" in lines[0], lines[0]
    assert "Exception ignored" not in err and "Traceback" not in err


def test_a_reexport_scratch_held_by_a_live_run_elsewhere_is_kept(tmp_path):
    """The clean-up of ended runs' scratch directories (above) by pid alone would remove the live scratch of
    a run in another pid namespace writing the same output directory; a run holds its scratch directory
    with a shared flock, and one whose flock is held is kept whatever its pid says (stood in for: a
    directory named by an ended pid, held by this test)."""
    import fcntl

    pytest.importorskip("onnx")
    import dodo.models
    from dodo._atomic import _host

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    live = tmp_path / f".scaled.onnx.reexport-{_host()}.{ended.pid}.live1234"
    live.mkdir()
    (live / "package.onnx").write_bytes(b"a package being exported")
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        done = run_tool("scale_correction_in_package.py", dodo.models.default_model_path(), "--factor", "1.1",
                        "-o", tmp_path / "scaled.onnx")
        assert done.returncode == 0, done.stderr
        assert (live / "package.onnx").read_bytes() == b"a package being exported"
    finally:
        os.close(holder)
