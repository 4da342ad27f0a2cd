"""Outside probe, round thirty (docs/reliability_python.md, section 32): a user's journey from a
fresh environment, the training commands on tiny inputs, interrupted commands and odd paths.
Each test failed on the code before its fix (the docstrings say what that code did)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cli_helpers import synthetic_preprocessed, tiny_train_config

REPO = Path(__file__).resolve().parents[2]
#: A hang guard only, never a measure of speed.
HANG_GUARD_S = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tiny_train_config(root: Path) -> Path:
    return tiny_train_config(root, synthetic_preprocessed(root, 64))


# --- dodo train with a data-parallel job's variables left in the environment -------------------------

@pytest.mark.parametrize("signum, status, word", [(signal.SIGTERM, 143, "terminated"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_train_waiting_for_absent_ranks_says_so_and_ends_on_a_signal(tmp_path, signum, status, word):
    """`dodo train` with WORLD_SIZE=2, RANK=0, MASTER_ADDR and MASTER_PORT in the environment (left from
    a torchrun job, or exported by hand), started alone: before, it waited in torch's rendezvous (C++,
    up to 30 minutes) without a word, and Ctrl-C and SIGTERM did nothing (Python's handlers never ran;
    `timeout -s INT 15` needed SIGKILL). Now the rendezvous runs in a helper thread: after
    ``RENDEZVOUS_NOTE_S`` (10 s) one line names the variables, and a signal ends the command as it
    ends any other (one line, 128 + the signal). Before the fix no line came: the wait below for it
    ran into the hang guard."""
    pytest.importorskip("torch")
    config = _tiny_train_config(tmp_path)
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    # SIGINT at its default in the child, as from a terminal: a suite started in the background by a
    # non-interactive shell (CI's `.ci/run &`) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler, so the command would never see the Ctrl-C this test sends.
    child = subprocess.Popen([sys.executable, "-m", "dodo", "train", "--config", str(config)], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    noted = threading.Event()

    def read() -> None:
        for line in child.stderr:
            lines.append(line)
            if "waiting for the other processes" in line:
                noted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert noted.wait(HANG_GUARD_S), "".join(lines)
        child.send_signal(signum)
        assert child.wait(HANG_GUARD_S) == status
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        reader.join(HANG_GUARD_S)
        child.stderr.close()
    text = "".join(lines)
    assert "Traceback" not in text, text
    note = next(line for line in lines if "waiting for the other processes" in line)
    for name in ("WORLD_SIZE=2", "RANK=0", "MASTER_ADDR=127.0.0.1", "unset them"):
        assert name in note, note
    assert lines[-1].strip() == f"dodo train: {word}", text
    assert not (tmp_path / "ck" / "final.pt").exists()


def test_rendezvous_helper_returns_and_raises_what_the_call_does(capsys):
    """The helper hands the call's value and exception to the main thread unchanged, and prints no note
    when the processes meet in time (a real torchrun job prints nothing more than before)."""
    pytest.importorskip("torch")
    from dodo.training.distributed import _meet_interruptibly

    assert _meet_interruptibly(lambda: 7, "note", note_after=60) == 7
    with pytest.raises(RuntimeError, match="rendezvous failed"):
        _meet_interruptibly(lambda: (_ for _ in ()).throw(RuntimeError("rendezvous failed")), "note", note_after=60)
    assert capsys.readouterr().err == ""


# --- commands other than dodo train started by torchrun ----------------------------------------------

def test_torchrun_of_a_command_other_than_train_is_refused_in_one_line(tmp_path):
    """`torchrun --nproc-per-node 2 -m dodo train-ensemble --config C`: before, one process trained
    while the other stopped at the output's lock with `TMP is in use by another dodo train-ensemble
    (pid N): wait for it to end, or choose another directory` (its own sibling, named as a stranger),
    and torchrun then ended the first (`dodo train-ensemble: terminated`): no checkpoint, a misleading
    reason. Now each process refuses at once: started by torchrun as one of 2 processes, only dodo train
    runs data-parallel, run it as one process; nothing is written."""
    pytest.importorskip("torch")
    config = tmp_path / "ens.json"
    config.write_text('{"data": {"path": "none.h5"}, "output": {"checkpoint": "%s"}}' % (tmp_path / "ens.pt"))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "dodo", "train-ensemble", "--config", str(config)], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode != 0
    # Each process refuses; torchrun may end the second (SIGTERM) before it prints its line.
    ours = [line for line in done.stderr.splitlines() if line.startswith("dodo train-ensemble")
            and line != "dodo train-ensemble: terminated"]
    assert 1 <= len(ours) <= 2 and len(set(ours)) == 1, done.stderr
    assert "started by torchrun as one of 2 processes (WORLD_SIZE=2)" in ours[0]
    assert "only dodo train runs data-parallel" in ours[0] and "without torchrun" in ours[0]
    assert "in use by another" not in done.stderr and not (tmp_path / "ens.pt").exists()


def test_torchrun_replica_check_leaves_train_and_plain_runs_alone():
    """`dodo train` under torchrun, and every command with WORLD_SIZE but no torchrun run id (an MPI
    job's or a shell's variables: round 29's cases), run as before."""
    from dodo.cli import _torchrun_replica_problem

    torchrun = {"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "2"}
    assert _torchrun_replica_problem("train", torchrun) is None
    assert _torchrun_replica_problem("simulate", {"WORLD_SIZE": "2"}) is None
    assert _torchrun_replica_problem("export", dict(torchrun, WORLD_SIZE="1")) is None
    assert _torchrun_replica_problem("export", dict(torchrun, WORLD_SIZE="x")) is None
    assert "mpirun or srun" in _torchrun_replica_problem("simulate", torchrun)


# --- dodo train --overwrite stopped before its end --------------------------------------------------

def test_overwrite_run_stopped_early_leaves_no_file_of_the_replaced_run(tmp_path, capsys):
    """`dodo train --overwrite` into a directory of a finished run replaced best.pt and last.pt as it
    went, moved the old last.pt to last.prev.pt and left the old final.pt: stopped (here by
    training.stop_after_epoch; Ctrl-C or a kill alike) before its end, the directory held the new
    run's best.pt and last.pt beside the replaced run's final.pt and last.prev.pt, so `dodo export
    final.pt` exported the replaced model without a word and the next `dodo train` said "holds a
    finished run (final.pt)" of an unfinished one. Now the replaced run's files leave the directory once
    the new run has written its first checkpoint (not before: a run that fails at its start destroys
    nothing); they wait in replaced_run/ until the new run finishes (test_train_overwrite.py)."""
    pytest.importorskip("torch")
    from cli_helpers import run
    from dodo.training.train import load_checkpoint

    config = _tiny_train_config(tmp_path)
    checkpoints = tmp_path / "ck"
    assert run(capsys, ["train", "--config", str(config)])[0] == 0
    assert (checkpoints / "final.pt").exists()
    # A replacing run that fails at its start (its data file unreadable) keeps the finished run whole.
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not HDF5")
    before = sorted(p.name for p in checkpoints.iterdir())
    assert run(capsys, ["train", "--config", str(config), "--overwrite", "--set", f"data.path={broken}"])[0] == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == before
    code, out, err = run(capsys, ["train", "--config", str(config), "--overwrite", "--set", "training.epochs=3",
                                  "--set", "training.stop_after_epoch=1", "--set", "training.seed=9"])
    assert code == 0, err
    assert sorted(p.name for p in checkpoints.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(checkpoints / name)
        assert state["config"]["training"]["seed"] == 9 and state["epoch"] == 1
    # The replaced run is kept aside until the new run finishes (tests/python/test_train_overwrite.py).
    assert "moved the replaced run's" in out + err
    line = refused_line(capsys, ["train", "--config", str(config)])
    assert "an unfinished run" in line and "--resume" in line and "finished run (final.pt)" not in line


def refused_line(capsys, argv) -> str:
    from cli_helpers import run

    code, _, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


# --- dodo train / train-ensemble started by mpirun --------------------------------------------------

def test_lock_refusal_under_an_mpi_launcher_says_every_rank_runs_the_command(tmp_path, capsys, monkeypatch):
    """`mpirun -n 2 dodo train --config C` (or train-ensemble): every rank ran the whole command and
    all but one stopped at the run's lock with `ck is in use by another dodo train (pid N): wait for it
    to end`, the sibling rank named as a stranger. The lock's refusal then said, when
    OMPI_COMM_WORLD_SIZE (or PMI_SIZE) above 1 is in the environment, that each rank runs the whole
    command; since 2026-12-05 `dodo` refuses such a rank before any lock (dodo.cli._mpi_replica_problem,
    test_mpi_replicas.py), and the lock's hint stays for library callers. (The lock is held here by
    this process, as the sibling rank holds it.)"""
    pytest.importorskip("torch")
    from dodo._atomic import exclusive_directory

    config = _tiny_train_config(tmp_path)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with exclusive_directory(tmp_path / "ck", "dodo train"):
        line = refused_line(capsys, ["train", "--config", str(config)])
    assert "OMPI_COMM_WORLD_SIZE=2" in line and "only dodo simulate shares its work over MPI ranks" in line
    assert "torchrun" in line and "is in use" not in line
    from dodo._atomic import launched_ranks_hint

    assert "each rank runs the whole dodo train" in launched_ranks_hint("dodo train", {"OMPI_COMM_WORLD_SIZE": "2"})
    assert launched_ranks_hint("dodo train", {"PMI_SIZE": "4"}).startswith(" (PMI_SIZE=4 in the environment")
    assert launched_ranks_hint("dodo train", {"OMPI_COMM_WORLD_SIZE": "1"}) == ""
    assert launched_ranks_hint("dodo train", {}) == ""


# --- dodo info without the onnxruntime package ------------------------------------------------------

def test_info_says_when_no_onnxruntime_library_was_found(capsys, monkeypatch):
    """In an environment made with `pip install --no-deps dodo*.whl` (no onnxruntime), `dodo info`
    printed `onnxruntime_library: ` and nothing after it, while `python -m dodo.test` failed with
    DODO_ERROR_ONNXRUNTIME_UNAVAILABLE. Now the line says none was found and what to do."""
    import dodo._closure
    from cli_helpers import run

    monkeypatch.delenv("DODO_ONNXRUNTIME_LIBRARY", raising=False)
    monkeypatch.setattr(dodo._closure, "onnxruntime_library_path", lambda: None)
    code, out, _ = run(capsys, ["info"])
    line = next(line for line in out.splitlines() if line.startswith("onnxruntime_library:"))
    assert code == 0 and line.startswith("onnxruntime_library: none found: no onnxruntime package"), line
    assert "pip install onnxruntime" in line and "DODO_ONNXRUNTIME_LIBRARY" in line


# --- dodo study interrupted inside a run -------------------------------------------------------------

def test_study_interrupted_inside_a_run_lists_that_run_as_interrupted(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or SIGTERM, `timeout`) while `dodo study` trains a run: before, the run's directory kept
    its resumable last.pt but no summary named it (none was written when it was the first run), and a
    rerun, numbering its runs past it, left it out of its summary too. Now the summary lists it as
    `interrupted` with the checkpoint to resume from, and a rerun keeps that row. (The run is
    interrupted here by a stand-in for train() that writes last.pt and raises KeyboardInterrupt, as
    Ctrl-C does after an epoch; the real case was checked with `timeout -s TERM 12 dodo study`.)"""
    pytest.importorskip("torch")
    import json

    import dodo.training.train as train_module
    from cli_helpers import run

    _tiny_train_config(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: {tmp_path / 'train.yaml'}\ntag: g\noutput_root: {tmp_path / 'studies'}\n"
                    "grid:\n  training.lr: [1.0e-3, 3.0e-3]\n")

    def interrupted(config, echo=print, **_):  # study also passes the resume advice's config_path and sets
        (Path(config.output.checkpoint_dir) / "last.pt").write_bytes(b"a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    code, _, err = run(capsys, ["study", str(grid)])
    assert code == 130 and "dodo study: interrupted" in err
    root = tmp_path / "studies" / "g"
    rows = json.loads((root / "summary.json").read_text())
    assert [(row["run"], row["status"]) for row in rows] == [("run_000", "interrupted")]
    assert str(root / "run_000" / "checkpoints" / "last.pt") in rows[0]["error"]
    assert "interrupted" in (root / "summary.txt").read_text()


# --- dodo train --resume DIRECTORY ------------------------------------------------------------------

def test_resume_from_a_directory_names_the_checkpoint_to_give(tmp_path, capsys):
    """`dodo train --config C --resume ck` (the run's checkpoint directory, not its last.pt): before,
    `ck holds a finished run (final.pt) of its own; resuming ck (another directory's checkpoint) there
    would replace it: ... --overwrite replaces it`, advice to replace the very run meant to be
    continued (with --overwrite the checkpoint reader refused the directory later). Now: `ck is a
    directory, not a regular file; give a checkpoint file, e.g. ck/last.pt`, before any check of the
    run, with or without --overwrite."""
    pytest.importorskip("torch")
    from cli_helpers import run

    config = _tiny_train_config(tmp_path)
    assert run(capsys, ["train", "--config", str(config)])[0] == 0
    checkpoints = tmp_path / "ck"
    for extra in ([], ["--overwrite"]):
        line = refused_line(capsys, ["train", "--config", str(config), "--resume", str(checkpoints), *extra])
        assert f"{checkpoints} is a directory, not a regular file" in line, line
        assert f"e.g. {checkpoints / 'last.pt'}" in line and "another directory's checkpoint" not in line
    assert (checkpoints / "final.pt").exists()


# --- dodo simulate --threads where nothing uses it -------------------------------------------------

@pytest.mark.parametrize("extra, what", [(["--linear-only"], "--linear-only integrates nothing in time"),
                                         (["--backend", "numpy"], "--backend numpy steps its batches on one thread")])
def test_simulate_refuses_threads_that_nothing_would_use(tmp_path, capsys, extra, what):
    """`dodo simulate OUT --random 1 --linear-only --threads 2` and `--backend numpy --threads 2` ran on
    one thread and said nothing: `--threads` reaches only the compiled kernel's time stepping. Now
    refused before any work, as the other options that would be ignored are (round 22); `--threads 1`
    still runs."""
    pytest.importorskip("h5py")
    from cli_helpers import run

    out = tmp_path / "out.h5"
    argv = ["simulate", str(out), "--random", "1", "--ncell", "16", "--nphi", "8", "-q", *extra]
    line = refused_line(capsys, [*argv, "--threads", "2"])
    assert what in line and "--threads 2 would be ignored: leave it out" in line, line
    assert not out.exists()
    if extra[0] == "--linear-only":  # cheap: the linear theory of one state
        code, _, err = run(capsys, [*argv, "--threads", "1"])
        assert code == 0 and out.exists(), err


# --- a full disk under a checkpoint ------------------------------------------------------------------

def test_a_full_disk_under_a_checkpoint_is_named_as_such(tmp_path, capsys, monkeypatch):
    """`dodo train` (and `dodo train-ensemble`) on a full file system (a 200 kB tmpfs) ended with
    `dodo train: error: [enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0`: torch's
    writer reports a failed write so. The checkpoint is now serialised in memory and written by Python,
    whose error names the cause: `[Errno 28] No space left on device: '.../best.pt'`. The full disk is
    /dev/full here, handed to the checkpoint writer as its temporary; the earlier files are untouched
    as before (atomic_path)."""
    pytest.importorskip("torch")
    import contextlib

    import dodo.training.train as train_module
    from dodo.training.safe_load import write_torch_file

    config = _tiny_train_config(tmp_path)

    @contextlib.contextmanager
    def onto_a_full_disk(path):
        try:
            yield Path("/dev/full")
        except OSError as error:  # as atomic_path names the final file, not its temporary
            raise OSError(error.errno, error.strerror, str(path)) from None

    monkeypatch.setattr(train_module, "atomic_path", onto_a_full_disk)
    line = refused_line(capsys, ["train", "--config", str(config)])
    assert "No space left on device" in line and "best.pt" in line and "enforce fail" not in line, line
    with pytest.raises(OSError) as raised:
        write_torch_file({"weights": [1.0, 2.0]}, "/dev/full")
    assert raised.value.errno == 28


def test_rendezvous_note_under_torchrun_does_not_blame_the_environment(monkeypatch):
    """Under torchrun (TORCHELASTIC_RUN_ID set) a process still waiting after 10 s has slow or failed
    siblings, not variables left from another job: its note says so."""
    pytest.importorskip("torch")
    from dodo.training.distributed import Distribution

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    note = Distribution(0, 2, 0)._waiting_note()
    assert "still starting, or failed to start" in note and "left from another job" not in note
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert "left from another job" in Distribution(0, 2, 0)._waiting_note()


# --- relative paths of a config, run from another directory ------------------------------------------

def test_a_missing_relative_path_names_the_directory_it_was_read_from(tmp_path, capsys, monkeypatch):
    """A config's relative paths are read from the current directory (training/configs/*.yaml name
    pdata/..., data/... of the repository root). `dodo train --config /repo/.../C.yaml` run from another
    directory said `preprocessed file not found: pdata/x.h5 (run dodo preprocess first)` of a file that
    exists, train-ensemble `cannot read pdata/x.h5: no such file`, preprocess `input pattern matches no
    file: data/x.h5`. Each now adds `(relative to the current directory D)`; absolute paths read as
    before."""
    pytest.importorskip("torch")
    table = synthetic_preprocessed(tmp_path, 64)
    config = tmp_path / "train.yaml"
    config.write_text("data: {path: pre.h5, batch_size: 32}\nmodel: {head: equivariant, hidden_dim: 8, n_blocks: 1}\n"
                      "training: {epochs: 1, threads: 1}\noutput: {results_dir: res, checkpoint_dir: ck}\n")
    ensemble = tmp_path / "ens.yaml"
    ensemble.write_text("data: {path: pre.h5}\noutput: {checkpoint: ens.pt}\n")
    pre = tmp_path / "pre2.yaml"
    pre.write_text("inputs: [syn.h5]\noutput: pre2.h5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    where = f"(relative to the current directory {elsewhere})"
    for argv, said in ((["train", "--config", str(config)], "preprocessed file not found: pre.h5"),
                       (["train-ensemble", "--config", str(ensemble)], "cannot read pre.h5: no such file"),
                       (["preprocess", "--config", str(pre)], "input pattern matches no file: syn.h5")):
        line = refused_line(capsys, argv)
        assert said in line and where in line, line
    line = refused_line(capsys, ["score", "box3d", str(table.with_name("missing.h5"))])
    assert "no such file" in line and "relative to the current directory" not in line


# --- python -m dodo.training.synthetic_model without the training extra ----------------------------

def test_synthetic_model_tool_names_a_missing_module_in_one_line(tmp_path, capsys, monkeypatch):
    """`python -m dodo.training.synthetic_model` (docs/runtime.md: regenerates the test model, "needs
    onnx") in an environment of `pip install dodo*.whl` alone ended in a `ModuleNotFoundError: No module
    named 'h5py'` traceback (and without onnx, likewise). Now one line naming the module and the
    extra, exit 2, nothing written."""
    from dodo.training import synthetic_model

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ModuleNotFoundError
    out = tmp_path / "test.onnx"
    with pytest.raises(SystemExit) as ended:
        synthetic_model.main(["-o", str(out)])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and "Traceback" not in err, err
    from dodo._shown import extra_install

    assert err.strip() == ("python -m dodo.training.synthetic_model: error: onnx is not installed; this tool needs "
                           f"the training extra: {extra_install('train')}")
    assert not out.exists()


# --- a missing training dependency: the exit status --------------------------------------------------

def test_a_missing_training_module_exits_2_as_the_other_commands_do(tmp_path, capsys, monkeypatch):
    """In an environment of `pip install dodo*.whl` (no training extra), `dodo synth`, `preprocess`,
    `train`, `export`, `evaluate`, ... said `... is not installed; install the training extra` and exited
    3, while `dodo score`, `apply` and `simulate` exit 2 for a missing h5py and the README says a missing
    h5py gives one line and exit 2. Now 2 for all."""
    from cli_helpers import run

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ModuleNotFoundError
    code, _, err = run(capsys, ["synth", "-o", str(tmp_path / "s.h5"), "-n", "5", "-q"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    from dodo._shown import extra_install

    assert lines[0] == f"dodo synth: error: h5py is not installed; install the training extra: {extra_install('train')}"
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("port", ["abc", " ", "70000"])
def test_a_bad_master_port_is_named(tmp_path, capsys, monkeypatch, port):
    """`WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=abc dodo train ...`: `dodo train: error:
    invalid literal for int() with base 10: 'abc'` (torch's int() inside the rendezvous), naming no
    variable; a blank the same. Now: `the environment variable MASTER_PORT must be a port number in [0,
    65535] (torchrun sets it); got 'abc'`, before any directory is made."""
    pytest.importorskip("torch")
    config = _tiny_train_config(tmp_path)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port)):
        monkeypatch.setenv(name, value)
    line = refused_line(capsys, ["train", "--config", str(config)])
    assert "the environment variable MASTER_PORT must be a port number in [0, 65535]" in line, line
    assert f"got {port!r}" in line and not (tmp_path / "ck").exists()


# --- a removed working directory --------------------------------------------------------------------

def test_a_removed_working_directory_is_named(tmp_path):
    """A shell inside a directory that was then removed (`rm -rf` of a results folder, then a rerun from
    inside it): `dodo synth -o s.h5` and `dodo score box3d x.h5` said `[Errno 2] No such file or
    directory`, naming nothing, and `dodo train` ended in `Intel oneMKL FATAL ERROR: Cannot load
    .../libtorch_cpu.so` at torch's import. Now one line says the current directory no longer exists,
    exit 2; `dodo info` still runs."""
    gone = tmp_path / "gone"
    gone.mkdir()
    for argv, code in ((["synth", "-o", "s.h5", "-n", "5", "-q"], 2), (["score", "box3d", "x.h5"], 2),
                       (["info"], 0)):
        script = f"cd '{gone}' && rmdir '{gone}' && exec '{sys.executable}' -m dodo " + " ".join(argv)
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=HANG_GUARD_S,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == code, done.stderr
        if code:
            assert done.stderr.strip() == (f"dodo {argv[0]}: error: the current directory ({gone}) no longer exists "
                                           "(it was removed after this shell entered it): cd to an existing "
                                           "directory and run the command again"), done.stderr
        gone.mkdir()


# --- a source tree ahead of the installed package --------------------------------------------------

def test_a_source_tree_ahead_of_the_installed_package_is_named(tmp_path):
    """`python -m dodo.test` run from the repository's python/ directory (or with PYTHONPATH at it) in
    an environment where dodo is installed from a wheel imported the source tree, which has no compiled
    core: `ImportError: dodo's compiled core (dodo._core) could not be imported. Build and install the
    package with pip install . ...`, advice for a package that was installed. Now the error names the
    source tree, the installed package and the cause (sys.path order). Here: a copy of the package's
    __init__ without its core, ahead of a stand-in installed distribution."""
    import shutil

    source, installed = tmp_path / "src" / "dodo", tmp_path / "inst"
    source.mkdir(parents=True)
    for name in ("__init__.py", "_startup.py"):
        shutil.copy(REPO / "python" / "dodo" / name, source / name)
    (installed / "dodo").mkdir(parents=True)
    (installed / "dodo" / "__init__.py").write_text("")
    (installed / "dodo-0.1.0.dist-info").mkdir()
    (installed / "dodo-0.1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: dodo\nVersion: 0.1.0\n")
    # -S: no site-packages, so no editable-install finder that would import the checkout instead.
    done = subprocess.run([sys.executable, "-S", "-c", "import dodo"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=f"{source.parent}{os.pathsep}{installed}"))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"dodo was imported from {source}, a source tree without its compiled core" in last, last
    assert f"ahead of the installed dodo 0.1.0 in {installed / 'dodo'}" in last and "PYTHONPATH" in last


def test_simulate_linear_only_refuses_a_time_step(tmp_path, capsys):
    """`dodo simulate OUT --random 1 --linear-only --flavour-cfl 0.5` wrote its labels as without the
    option and recorded nothing of it in the file's settings: the linear theory integrates nothing in
    time. Now refused before any work, as `--hamiltonian-filter emu` is (round 27); without the option
    the run is as before, and a full run takes it as ever."""
    pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    line = refused_line(capsys, ["simulate", str(out), "--random", "1", "--linear-only", "--flavour-cfl", "0.5", "-q"])
    assert "--linear-only integrates nothing in time, so --flavour-cfl (the time step) would be ignored" in line
    assert not out.exists()


# --- an installed dependency that fails to import --------------------------------------------------

@pytest.mark.parametrize("module, argv", [("torch", ["export", "none.pt", "-o", "m.onnx"]),
                                          ("h5py", ["synth", "-o", "s.h5", "-n", "3"]),
                                          ("h5py", ["apply", str(REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5")]),
                                          ("h5py", ["score", "box3d",
                                                    str(REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5")])])
def test_a_broken_dependency_is_one_line(tmp_path, module, argv):
    """torch installed without its CUDA libraries, h5py without libhdf5: the import raises ImportError
    (not ModuleNotFoundError). `dodo export`, `train`, `evaluate` ... , `dodo synth`, `preprocess` and
    `apply` ended in a traceback, exit 1; `dodo score` said `reading HDF5 files needs h5py: pip install
    h5py` of an h5py that is installed. Now one line: `importing torch failed: libcudnn.so.9: cannot
    open shared object file ... (its installation is broken or incomplete: reinstall it, e.g. pip install
    --force-reinstall torch)`, exit 2. (A stand-in package that raises so is put first on PYTHONPATH.)"""
    fake = tmp_path / "fake" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libstandin.so.9: cannot open shared object file")\n')
    done = subprocess.run([sys.executable, "-m", "dodo", *argv], capture_output=True, text=True, cwd=tmp_path,
                          timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=str(fake.parent)))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == (f"dodo {argv[0]}: error: importing {module} failed: libstandin.so.9: cannot open "
                                   "shared object file (its installation is broken or incomplete: reinstall it, "
                                   f"e.g. pip install --force-reinstall {module})"), done.stderr
