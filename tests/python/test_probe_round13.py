"""Outside probe, round thirteen (docs/reliability_python.md section 15): each test failed on the
code before its fix."""
from __future__ import annotations

import json
import os
import stat
import tempfile

import numpy as np
import pytest

from cli_helpers import refused, run

import dodo  # noqa: E402
from dodo import _atomic  # noqa: E402

needs_runtime = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


def _crossing_cell() -> np.ndarray:
    F = np.zeros((6, 4))
    F[0] = [1.0, 0, 0, 0.5]
    F[3] = [1.0, 0, 0, -0.5]
    F[[1, 2, 4, 5], 0] = 0.3
    return F


def _emu(path):
    pytest.importorskip("h5py")
    from cli_helpers import emu_file
    from dodo.conventions import to_emu_layout

    return emu_file(path, to_emu_layout(np.stack([_crossing_cell()] * 4)))


# --- Output files: the atomic writer -----------------------------------------------------------

def test_a_long_but_legal_output_name_is_written(tmp_path, capsys):
    """The temporary `.NAME.HOST.PID.XXXXXXXX.tmp` is ~35 bytes longer than NAME: an output name of
    240 bytes (legal: NAME_MAX is 255) failed with `[Errno 36] File name too long: '.../.aaa...tmp'`."""
    target = tmp_path / ("a" * 245 + ".json")
    _atomic.write_json_atomic(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert sorted(os.listdir(tmp_path)) == [target.name]
    wide = tmp_path / ("\u00e9" * 120 + ".json")  # 245 bytes in UTF-8
    _atomic.write_json_atomic(wide, {"y": 2})
    assert json.loads(wide.read_text()) == {"y": 2}
    code, _, err = run(capsys, ["apply", str(_emu(tmp_path / "d.h5")), "--model", "box3d", "--grid", "2x2x1", "-q",
                                "-o", str(tmp_path / ("b" * 248 + ".h5"))])
    assert code == 0, err
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_long_name_still_has_its_stale_temporaries_removed(tmp_path):
    """remove_stale_temporaries matches the shortened name the writer used."""
    target = tmp_path / ("c" * 250 + ".h5")
    prefix = _atomic._temporary_prefix(target, with_pid=False)
    assert len(os.fsencode(prefix)) + 10 + 1 + 8 + 4 <= 255
    stale = tmp_path / f"{prefix}999999999.abcdefgh.tmp"  # no such process
    stale.write_text("left by a killed writer")
    _atomic.write_json_atomic(target, {})
    assert not stale.exists()


def _unwritable_directory(monkeypatch):
    """Temporaries cannot be created (as in a directory without write permission, which root
    cannot get; /proc behaves so for everyone)."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_atomic.tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("command", ["score", "apply", "synth"])
def test_an_output_that_cannot_be_created_is_one_line_naming_it(tmp_path, capsys, monkeypatch, command):
    """`dodo score ... --json /proc/x.json` ended in a FileNotFoundError traceback (emit ran outside
    score's error handling); every other command named the temporary (`[Errno 2] No such file or
    directory: '/proc/.x.json.HOST.PID.XXXX.tmp'`), not the output asked for."""
    data = str(_emu(tmp_path / "d.h5"))
    out = tmp_path / "out.file"
    argv = {"score": ["score", "box3d", data, "--bootstrap", "100", "--json", str(out)],
            "apply": ["apply", data, "--model", "box3d", "--grid", "2x2x1", "-q", "-o", str(out)],
            "synth": ["synth", str(out), "-n", "10", "-q"]}[command]
    _unwritable_directory(monkeypatch)
    line = refused(capsys, argv, f"cannot write {out}", "Permission denied")
    assert ".tmp" not in line
    assert not out.exists()


def test_an_output_below_a_dangling_symlink_says_so(tmp_path, capsys):
    """`-o results/x.h5` with `results` a symlink to a directory that is not there (an unmounted
    disk): `cannot write results/x.h5: cannot create a file in results: File exists`."""
    (tmp_path / "results").symlink_to(tmp_path / "unmounted" / "dir")
    out = tmp_path / "results" / "x.h5"
    refused(capsys, ["apply", str(_emu(tmp_path / "d.h5")), "--model", "box3d", "--grid", "2x2x1", "-q", "-o", str(out)],
            "is a symbolic link to", "which does not exist")
    assert not (tmp_path / "unmounted").exists()


def test_score_piped_into_head_still_ends_quietly(tmp_path):
    """Guard for the fix above (score's JSON output now inside its error handling): a reader that
    goes away is still exit 141 without a message, not 'error'."""
    import subprocess
    import sys

    data = str(_emu(tmp_path / "d.h5"))
    child = subprocess.Popen([sys.executable, "-m", "dodo", "score", "box3d", data, "--bootstrap", "100", "--json", "-"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # gone before the JSON is printed
    _, err = child.communicate(timeout=300)
    assert child.returncode == 141 and not err.strip(), err


def test_a_replaced_output_keeps_its_permissions(tmp_path):
    """A private (0600) result rewritten by a command came back 0644 (the temporary's mode):
    readable by every user of the machine."""
    target = tmp_path / "private.json"
    target.write_text("{}")
    target.chmod(0o600)
    _atomic.write_json_atomic(target, {"x": 1})
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.json"
    _atomic.write_json_atomic(fresh, {})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~mask


def _run_unprivileged(function) -> str:
    """``function()`` in a child process without root's override of file permissions (uid/gid
    65534 when the tests run as root); returns what it returns (a string)."""
    if os.geteuid() != 0:
        return function()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
            except OSError:  # a user namespace without that id: cannot test here
                os.write(write, b"SKIP")
                return ""
            os.write(write, function().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as handle:
        text = handle.read()
    os.waitpid(pid, 0)
    return text


def test_a_read_only_output_is_not_replaced():
    """A finished result made read-only (chmod a-w) was replaced silently: the rename needs only
    the directory's permission, where open(path, "w") is refused. Now refused like open."""
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o777)
        target = os.path.join(directory, "done.json")
        with open(target, "w") as handle:
            handle.write('{"kept": true}')
        os.chmod(target, 0o444)

        def attempt() -> str:
            try:
                _atomic.write_json_atomic(target, {"kept": False})
            except _atomic.OutputPathError as error:
                return str(error)
            return "written"

        outcome = _run_unprivileged(attempt)
        if outcome == "SKIP":
            pytest.skip("cannot drop root's privileges here (setuid refused)")
        assert "read-only" in outcome and target in outcome, outcome
        with open(target) as handle:
            assert json.load(handle) == {"kept": True}
        assert os.listdir(directory) == ["done.json"]


# --- Command arguments -------------------------------------------------------------------------

def test_export_refuses_a_test_vector_count_it_cannot_draw(tmp_path, capsys):
    """`dodo export --test-vectors 100000000` ended in a MemoryError traceback (71.5 GiB for the
    candidate cells) after loading the checkpoint; refused at once now."""
    pytest.importorskip("torch")
    refused(capsys, ["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx"),
                     "--test-vectors", "100000000"], "--test-vectors", "10000")


def test_score_refuses_a_bootstrap_it_cannot_hold(tmp_path, capsys):
    """`dodo score box3d DATA --bootstrap 1000000000000` ended in a MemoryError traceback (7.3 TiB
    for the resampled means, after the closure had run); refused at once now."""
    refused(capsys, ["score", "box3d", str(_emu(tmp_path / "d.h5")), "--bootstrap", "1000000000000"],
            "--bootstrap must be >= 100 and at most 10,000,000")


def test_a_study_grid_of_billions_of_runs_is_refused_before_building_them(tmp_path, capsys):
    """Four grid lists of 300 values (8.1e9 runs): `dodo study --dry-run` built every run's config
    first and ran out of memory (a MemoryError traceback under a 4 GB limit; without one, the
    machine's). Refused from the list lengths now."""
    pytest.importorskip("yaml")
    (tmp_path / "base.yaml").write_text("data: {path: pre.h5}\n")
    values = list(range(1, 301))
    grid = tmp_path / "huge.yaml"
    grid.write_text("base_config: base.yaml\ngrid:\n" + "".join(
        f"  {key}: {values}\n" for key in ("training.lr", "model.hidden_dim", "training.epochs", "data.batch_size")))
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)
    pytest.importorskip("torch")
    import dodo.training.train  # noqa: F401  (imported before the limit: run_study imports it)

    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), limit[1]))
    try:  # a regression fails with a MemoryError here instead of taking the machine's memory
        refused(capsys, ["study", str(grid), "--dry-run"], "8,100,000,000 runs", "at most 10,000")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limit)


def test_random_state_draws_grow_with_the_count():
    """About 2 in 3 random states cross, and the draws were capped at 100,000 whatever the count:
    docs/qke.md's `dodo simulate out.h5 --random 100000 --seed 1` stopped after minutes of drawing
    with 'found only ~66,000 crossing states in 100000 draws' (here: the same cap, scaled down)."""
    from dodo.qke.states import random_crossing_states

    states = random_crossing_states(20, np.random.default_rng(1), max_tries=20)
    assert states.shape == (20, 6, 4)
    # The draws stop at the count: a smaller count gives the first states of a larger one (seeded
    # campaigns are unchanged).
    fewer = random_crossing_states(12, np.random.default_rng(1), max_tries=20)
    np.testing.assert_array_equal(fewer, states[:12])


def test_a_random_state_count_beyond_any_run_is_refused_at_once(capsys):
    """`dodo simulate out.h5 --random 1000000000000` drew states for minutes, then said 'found only N
    crossing states in 100000 draws'; with draws that grow with the count it would draw for ever."""
    from dodo.qke.states import MAX_RANDOM_STATES, random_crossing_states

    with pytest.raises(ValueError, match="at most 10,000,000 random states"):
        random_crossing_states(MAX_RANDOM_STATES + 1, np.random.default_rng(1), max_tries=10)
    pytest.importorskip("h5py")
    refused(capsys, ["simulate", "never.h5", "--random", "1000000000000", "--seed", "1", "-q"], "at most")


# --- Python API -------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["box3d", "crossing_features", "box3d_settings"])
def test_an_unhashable_z_method_is_a_value_error_naming_it(call):
    """`dodo.box3d(F, z_method=["exact"])` raised `TypeError: unhashable type: 'list'` (the engine cache)."""
    F = _crossing_cell()
    function = {"box3d": lambda: dodo.box3d(F, z_method=["exact"]),
                "crossing_features": lambda: dodo.crossing_features(F, z_method=["exact"]),
                "box3d_settings": lambda: dodo.box3d_settings(z_method=["exact"])}[call]
    with pytest.raises(ValueError, match="z_method must be 'exact' or 'jedynak'; got \\['exact'\\]"):
        function()


@needs_runtime
@pytest.mark.parametrize("options, name", [({"model": 3}, "model"), ({"model": [1, 2]}, "model"),
                                           ({"onnxruntime_library": 3}, "onnxruntime_library")])
def test_a_model_or_library_of_the_wrong_type_is_named(options, name):
    """`dodo.Closure(3)` and `Closure(onnxruntime_library=3)` raised os.fspath's `expected str,
    bytes or os.PathLike object, not int`, naming no argument."""
    options = dict(options)
    model = options.pop("model", None)
    with pytest.raises(TypeError, match=f"^{name} must be a path"):
        dodo.Closure(model, **options)
    if name == "model":
        with pytest.raises(TypeError, match="^model must be a path"):
            dodo.closure(_crossing_cell(), model=model)


# --- Signals -----------------------------------------------------------------------------------

def test_sighup_at_the_rename_keeps_the_good_file_and_removes_the_temporary(tmp_path):
    """SIGHUP (the terminal or ssh session that started the command closed) took Python's default
    action after SIGTERM was handled: the process ended with no message and left its temporary
    `.OUT.HOST.PID.XXXX.tmp` beside the output. It now unwinds as SIGTERM does: exit 129, one line."""
    import signal

    from cli_helpers import digest
    from test_kill_sweep import _signal_while_temporary_exists

    target = tmp_path / "db.h5"
    target.write_bytes(b"a good file from an earlier run\n" * 100)  # not HDF5: replaced only with --overwrite
    good = digest(target)
    code, err, temporaries = _signal_while_temporary_exists(
        tmp_path, ["synth", "-o", str(target), "-n", "50", "--seed", "4", "-q", "--overwrite"], target, signal.SIGHUP)
    assert len(temporaries) == 1, temporaries
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 129 and lines == ["dodo synth: hung up (SIGHUP: the terminal closed)"], (code, err)
    assert digest(target) == good
    assert list(tmp_path.glob(".db.h5.*")) == []


def test_main_restores_the_sighup_disposition(capsys):
    """The handler is dodo's only while a command runs; `nohup`'s ignored SIGHUP is left alone."""
    import signal

    from dodo.cli import main

    before = signal.getsignal(signal.SIGHUP)
    assert main(["info"]) == 0
    assert signal.getsignal(signal.SIGHUP) is before
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(["info"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    capsys.readouterr()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity masks on this platform")
def test_threads_none_means_the_cores_this_process_may_run_on():
    """`threads=None` ("all cores") took os.cpu_count(), the machine's count: an MPI rank bound to one
    core (`mpirun --bind-to core`, `taskset -c 0`, SLURM --cpus-per-task=1) started a worker thread
    per core of the node, all on its one core. Now the process's affinity mask."""
    from dodo._box3d import _threads

    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert _threads(None) == 1
        if dodo.runtime_available():
            assert dodo.Closure("box3d").threads == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert _threads(None) == min(len(allowed), dodo.conventions.MAX_THREADS)


# --- Damaged input files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    pytest.importorskip("torch")
    from cli_helpers import synthetic_preprocessed, tiny_study_base

    root = tmp_path_factory.mktemp("round13")
    synthetic_preprocessed(root, cells=120)
    return tiny_study_base(root)


@pytest.mark.parametrize("value, problem", [("{bad json", "is not valid JSON"), ("[1, 2]", "must be a JSON object")])
def test_a_damaged_box3d_attribute_of_a_preprocessed_file_is_named(preprocessed, tmp_path, capsys, value, problem):
    """A preprocessed file whose `box3d` attribute was damaged or edited: `dodo train` said
    `Expecting property name enclosed in double quotes: line 1 column 2 (char 1)` (no file, no
    attribute), or ended in `AttributeError: 'list' object has no attribute 'get'`."""
    import shutil

    import h5py

    damaged = tmp_path / "damaged.h5"
    shutil.copy(preprocessed.parent / "pre.h5", damaged)
    with h5py.File(damaged, "a") as handle:
        handle.attrs["box3d"] = value
    refused(capsys, ["train", "--config", str(preprocessed), "--set", f"data.path={damaged}"],
            str(damaged), "'box3d'", problem)


def test_a_covariant_four_velocity_is_named_as_such():
    """A code that stores the covariant u_mu = (-W, W v) and passes it as u got "u^t = -1.15... is not
    positive (past-directed or zero)", which does not say what to change."""
    W = 1 / np.sqrt(1 - 0.25)
    with pytest.raises(ValueError, match=r"covariant components u_mu\? pass the contravariant u\^mu = \(W, W v\)"):
        dodo.box3d(_crossing_cell(), [-W, 0.5 * W, 0.0, 0.0])
    with pytest.raises(ValueError, match="past-directed or zero\\); pass u") as caught:  # not a unit vector: no hint
        dodo.box3d(_crossing_cell(), [-2.0, 0.0, 0.0, 0.0])
    assert "covariant" not in str(caught.value)


def _pickle_that_runs(marker) -> bytes:
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    return pickle.dumps(Payload())


def test_a_planted_simulate_checkpoint_cannot_run_code(tmp_path, capsys):
    """`dodo simulate OUT` reads every OUT.partial*.npz beside OUT with np.load(allow_pickle=True):
    a pickle planted there (a shared directory) ran its code (here: made a directory) before being
    refused as 'not a checkpoint'. Now refused without being unpickled."""
    pytest.importorskip("h5py")
    marker = tmp_path / "code_ran"
    planted = tmp_path / "out.h5.partial.rank7.npz"
    planted.write_bytes(_pickle_that_runs(marker))
    refused(capsys, ["simulate", str(tmp_path / "out.h5"), "--random", "1", "--seed", "1", "--ncell", "16",
                     "--nphi", "4", "-q"], str(planted), "cannot be read as a checkpoint")
    assert not marker.exists()
    assert planted.exists()  # left untouched, as any checkpoint of another campaign


def test_a_checkpoint_array_holding_another_pickle_is_not_run(tmp_path):
    """The object arrays a checkpoint holds (the "reason" texts, pickled by np.savez) are read by an
    unpickler that takes numpy arrays of Python objects and nothing else."""
    import io
    import pickle
    import zipfile

    from dodo.qke.campaign import _read_checkpoint

    marker = tmp_path / "code_ran"
    planted = tmp_path / "out.h5.partial.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    with zipfile.ZipFile(planted, "w") as archive:
        archive.writestr("fingerprint.npy", _npy(np.array("x")))
        archive.writestr("reason.npy", header.getvalue() + _pickle_that_runs(marker))
    with pytest.raises(pickle.UnpicklingError, match="posix.mkdir"):
        _read_checkpoint(str(planted))
    assert not marker.exists()


def _npy(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_checkpoint_with_reason_texts_still_reads_as_before(tmp_path):
    """The restricted reader gives what np.load(allow_pickle=True) gave for what the campaign writes."""
    from dodo.qke.campaign import _read_checkpoint

    path = tmp_path / "out.h5.partial.npz"
    reasons = np.array(["", "state is linearly stable: nothing to simulate", "\u00e9"], dtype=object)
    np.savez(path, fingerprint="abc", indices=np.arange(3), reason=reasons, done=np.ones(3, bool))
    read = _read_checkpoint(str(path))
    with np.load(path, allow_pickle=True) as expected:
        assert sorted(read.files) == sorted(expected.files)
        for key in expected.files:
            np.testing.assert_array_equal(read[key], expected[key])
    assert read["reason"].dtype == object and read["reason"].tolist() == reasons.tolist()


@pytest.mark.parametrize("status, error", [(1.5, TypeError), ("3", TypeError), (True, TypeError), (-1, ValueError),
                                           (2 ** 40, ValueError), (np.array([1, 2], np.uint32), TypeError)])
def test_describe_status_takes_one_cells_status_only(status, error):
    """describe_status took int() of anything: 1.5 as NO_CROSSING, "3" as two flags, -1 as every
    flag plus 'bits -0x200', and a batch's status array failed with NumPy's 'only 0-dimensional
    arrays can be converted to Python scalars'."""
    with pytest.raises(error, match="status"):
        dodo.describe_status(status)
    assert dodo.describe_status(np.uint32(2)) == dodo.describe_status(np.array(2, np.uint32)) \
        == dodo.describe_status(dodo.CellStatus.FLUX_FACTOR) == dodo.describe_status(2)


@pytest.mark.skipif(os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE", reason="HDF5 file locking off")
@pytest.mark.parametrize("command", ["apply", "score", "simulate"])
def test_an_input_another_process_is_writing_is_called_that(tmp_path, capsys, command):
    """An Emu file held open for writing by another process (an h5py session, a writer still running):
    `not a readable HDF5 file ([Errno 11] ... unable to lock file ...)` (apply, preprocess, train,
    evaluate), `cannot read (...)` (score), and from `simulate --input` the HDF5 text alone,
    without the file's name."""
    import subprocess
    import sys

    data = _emu(tmp_path / "busy.h5")
    writer = subprocess.Popen([sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); sys.stdin.read()", str(data)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        argv = {"apply": ["apply", str(data), "--model", "box3d", "--grid", "2x2x1", "-q"],
                "score": ["score", "box3d", str(data)],
                "simulate": ["simulate", str(tmp_path / "out.h5"), "--input", str(data), "-q"]}[command]
        refused(capsys, argv, str(data), "another process has it open for writing")
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
        writer.stdout.close()


def test_simulate_names_an_input_that_is_not_hdf5(tmp_path, capsys):
    """`dodo simulate OUT --input garbage.h5`: `Unable to synchronously open file (file signature not
    found)`, no file named."""
    pytest.importorskip("h5py")
    garbage = tmp_path / "garbage.h5"
    garbage.write_text("not HDF5\n")
    refused(capsys, ["simulate", str(tmp_path / "out.h5"), "--input", str(garbage), "-q"], str(garbage),
            "not a readable HDF5 file")


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_learning_curve_refuses_an_empty_output_path(tmp_path, capsys, option):
    """`dodo learning-curve --json "$OUT"` with OUT unset ran the whole cross-validation and wrote no
    file, exit 0 (round eleven made every other output argument refuse it)."""
    pytest.importorskip("yaml")
    code, _, err = run(capsys, ["learning-curve", "--config", str(tmp_path / "none.yaml"), option, ""])
    assert code == 2 and "empty path" in err and "Traceback" not in err, err


@needs_runtime
def test_apply_takes_scores_name_for_the_shipped_model(tmp_path, capsys):
    """`dodo score default DATA` scores the shipped model; `dodo apply DATA --model default` said
    `cannot read default: no such file`."""
    from dodo.models import default_model_path

    code, out, err = run(capsys, ["apply", str(_emu(tmp_path / "d.h5")), "--model", "default", "--grid", "2x2x1", "-q"])
    assert code == 0, err
    assert f"model: {default_model_path()}" in out


@needs_runtime
def test_closure_of_default_points_to_none(tmp_path, monkeypatch):
    """`dodo.Closure("default")` (the CLI's name) said only that the file does not exist."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="model=None"):
        dodo.Closure("default")


@pytest.mark.parametrize("argv", [["emu32", "--output", ""], ["emu32", "--json", ""], ["nsm1", "--json", ""]])
def test_the_validation_command_refuses_an_empty_output_path(capsys, argv, tmp_path, monkeypatch):
    """`python -m dodo.qke.validate emu32 --output "$OUT"` with OUT unset: `cannot write .: it exists and
    is a directory`; `--json ''` simulated all 32 states and wrote no report."""
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)  # where a regression would write its default output
    from dodo.qke.validate import main

    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2 and "empty path" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "study", "evaluate --data", "plot"])
def test_a_config_that_is_not_a_regular_file_is_called_what_it_is(tmp_path, capsys, command):
    """`dodo train --config DIR` (or /dev/zero, a FIFO): `config file not found: DIR` of a path that is
    there; likewise `preprocessed file not found` (`evaluate --data`, `train`'s data.path) and `metrics
    file not found` (`dodo plot`)."""
    pytest.importorskip("yaml")

    def argv(path):
        return {"train": ["train", "--config", str(path)], "study": ["study", str(path)],
                "evaluate --data": ["evaluate", str(tmp_path / "missing.pt"), "--data", str(path)],
                "plot": ["plot", "metrics", str(path), "-o", str(tmp_path / "p.png")]}[command]

    if command == "evaluate --data":  # the data file is read before the checkpoint
        pytest.importorskip("torch")
        from dodo.training.preprocess import read_preprocessed_attrs

        with pytest.raises(ValueError, match="is a directory, not a regular file"):
            read_preprocessed_attrs(tmp_path)
        return
    if command == "plot":
        pytest.importorskip("matplotlib")
    refused(capsys, argv(tmp_path), f"{tmp_path} is a directory, not a regular file")
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    refused(capsys, argv(fifo), "is a FIFO (named pipe)")


def test_simulate_out_of_memory_names_the_error(tmp_path, capsys, monkeypatch):
    """A bare MemoryError (no message, as Python's own allocations raise it) printed `out of memory ():`."""
    pytest.importorskip("h5py")
    import dodo.qke.campaign as campaign

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(campaign, "simulate_states", no_memory)
    line = refused(capsys, ["simulate", str(tmp_path / "out.h5"), "--random", "1", "--seed", "1", "-q"],
                   "out of memory (MemoryError)")
    assert "()" not in line


def test_simulate_refuses_keys_its_yaml_input_does_not_read(tmp_path, capsys):
    """`states.yaml` with `end_time: 1e-6` (or a misspelt key) beside `states`: ignored without a word,
    the run used its default end time."""
    pytest.importorskip("h5py")
    pytest.importorskip("yaml")
    states = tmp_path / "states.yaml"
    cell = _crossing_cell() * 1e32
    states.write_text(f"states: [{cell.tolist()}]\nend_time: 1.0e-6\n")
    refused(capsys, ["simulate", str(tmp_path / "out.h5"), "--input", str(states), "-q"], "unknown key(s) ['end_time']")
    assert not (tmp_path / "out.h5").exists()


def test_dodo_answers_version(capsys):
    """`dodo --version` / `-V`: `unrecognized arguments: --version`, exit 2."""
    for flag in ("--version", "-V"):
        code, out, err = run(capsys, [flag])
        assert code == 0 and out.strip() == f"dodo {dodo.__version__}", (code, out, err)


@pytest.mark.parametrize("content", [{"history": "abc", "metric_table": 5},
                                     {"history": [1, 2], "metric_table": {}},
                                     {"history": {"train": [{"total": "x"}], "val": []}, "best_val_loss": 1.0,
                                      "test_loss": {"total": 1.0},
                                      "metric_table": {"box3d": {"mean_abs_dn_over_ntot_all": 0.1},
                                                       "model": {"mean_abs_dn_over_ntot_all": 0.1}}},
                                     {"history": {"train": [{"total": 1.0}], "val": [{"total": 1.0}]},
                                      "best_val_loss": 1.0, "test_loss": {"total": 1.0},
                                      "metric_table": {"box3d": {"mean_abs_dn_over_ntot_all": 0.1},
                                                       "model": {"mean_abs_dn_over_ntot_all": 0.1}},
                                      "parity": {"n_true": [[1.0, 2.0]], "n_box3d": "x", "n_model": []}}])
@pytest.mark.parametrize("what", ["metrics", "curve"])
def test_plot_names_a_metrics_file_with_wrong_entries(tmp_path, capsys, content, what):
    """A metrics JSON with history and metric_table but not dodo train's entries (edited, or another
    tool's): `KeyError: 'best_val_loss'` or `TypeError: string indices must be integers` tracebacks."""
    pytest.importorskip("matplotlib")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(content))
    refused(capsys, ["plot", what, str(metrics), "-o", str(tmp_path / "p.png")], str(metrics),
            "not a Dodo metrics JSON of dodo train")
    assert not (tmp_path / "p.png").exists()  # refused before the first of plot curve's two files


def test_a_training_config_beyond_the_memory_is_one_line(preprocessed, tmp_path, capsys, monkeypatch):
    """`dodo train --set model.n_blocks=100000000` under a 6 GB limit: a MemoryError traceback (40 lines)
    while building the network; every other training failure was one line."""
    import dodo.training.train as training

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(training, "train", no_memory)
    refused(capsys, ["train", "--config", str(preprocessed), "--set", f"output.checkpoint_dir={tmp_path / 'c'}",
                     "--set", f"output.results_dir={tmp_path / 'r'}"], "out of memory (MemoryError)", "model.n_blocks")


def test_any_command_ends_a_memory_error_with_one_line(tmp_path, capsys, monkeypatch):
    """`dodo score` / `dodo apply` (inputs or options beyond the memory): a MemoryError traceback."""
    import dodo.score as scoring

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.28 TiB")

    monkeypatch.setattr(scoring, "score", no_memory)
    refused(capsys, ["score", "box3d", str(_emu(tmp_path / "d.h5"))], "dodo score: error: out of memory (Unable to allocate")


@pytest.mark.parametrize("raised, status, word", [("KeyboardInterrupt", 130, "interrupted"),
                                                  ("SIGTERM", 143, "terminated"), ("SIGHUP", 129, "hung up")])
def test_validate_ends_on_ctrl_c_and_sigterm_with_one_line(capsys, monkeypatch, raised, status, word):
    """`python -m dodo.qke.validate` printed a KeyboardInterrupt traceback on Ctrl-C and ended without a
    word on SIGTERM; it now unwinds as `dodo` does (one line, 128 + the signal) and restores the handlers."""
    import signal

    from dodo import cli
    from dodo.qke import validate

    def interrupted(argv):
        assert signal.getsignal(signal.SIGTERM) is cli._on_terminating_signal  # installed while it works
        if raised == "KeyboardInterrupt":
            raise KeyboardInterrupt
        os.kill(os.getpid(), getattr(signal, raised))  # the real signal, through the installed handler
        raise AssertionError("the signal did not unwind the run")

    monkeypatch.setattr(validate, "_main", interrupted)
    # As from a terminal: under `nohup` SIGHUP is ignored, and dodo leaves an ignored SIGHUP alone.
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        before = signal.getsignal(signal.SIGTERM)
        assert validate.main(["emu32"]) == status
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"python -m dodo.qke.validate: {word}"), lines
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous_hup)
