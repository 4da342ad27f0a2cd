"""Outside probe, round twenty-two (docs/reliability_python.md, section 24): each test failed on the
code before its fix, except where its docstring says otherwise."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import digest, run_tool, synthetic_preprocessed
from dodo.cli import main

REPO = Path(__file__).resolve().parents[2]
#: Generous: the refusals answer in the time Python takes to start.
SUBPROCESS_TIMEOUT_S = 300


# --- the checkpoint tools never write over their own inputs or another command's file -------------

_tool = run_tool  # tests/python/cli_helpers.py


def _copied(run: dict, root: Path) -> dict:
    """The run's table, config and checkpoint copied into ROOT (the same contents)."""
    return {key: Path(shutil.copy(run[key], root / run[key].name)) for key in ("table", "checkpoint", "config")}


def _tool_args(name: str, run: dict, output) -> list:
    if name == "regate_checkpoint.py":
        return [run["checkpoint"], "2.5", "--table", run["table"], "-o", output]
    return [run["checkpoint"], "--config", run["config"], "--table", run["table"], "-o", output]


@pytest.mark.parametrize("name, which", [("regate_checkpoint.py", "table"), ("refit_growth.py", "table"),
                                         ("refit_growth.py", "config")])
def test_checkpoint_tools_do_not_write_over_their_inputs(ensemble_run, name, which, tmp_path):
    """`tools/regate_checkpoint.py CKPT C --table pdata/qke.h5 -o pdata/qke.h5` (and
    `tools/refit_growth.py ... -o` its table or its config) replaced that input with the new
    checkpoint, exit 0: the tools compared the output with the input checkpoint only. Now refused
    before any work, exit 2, the input kept byte for byte."""
    run = _copied(ensemble_run, tmp_path)  # on the old code the tool destroys what it is given
    target = run[which]
    before = digest(target)
    result = _tool(name, *_tool_args(name, run, target))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "same file as the input" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert digest(target) == before


@pytest.mark.parametrize("name", ["regate_checkpoint.py", "refit_growth.py"])
def test_checkpoint_tools_do_not_replace_a_file_of_another_kind(ensemble_run, name, tmp_path):
    """`-o` naming an existing file that is not a checkpoint (here a `dodo synth` database, as
    `dodo export`, `apply -o`, `synth` and `preprocess` refuse since round two): replaced by the
    checkpoint, exit 0. Now refused unless --overwrite; a checkpoint (a rerun's own output) is still
    replaced without it."""
    database = tmp_path / "syn.h5"
    assert main(["synth", str(database), "-n", "5", "-q"]) == 0
    before = digest(database)
    result = _tool(name, *_tool_args(name, ensemble_run, database))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "synthetic database" in result.stderr and "--overwrite" in result.stderr, result.stderr
    assert digest(database) == before
    from dodo._output_guard import check_tool_output

    rerun = Path(shutil.copy(ensemble_run["checkpoint"], tmp_path / "out.pt"))  # an earlier run's output
    check_tool_output(rerun, [ensemble_run["checkpoint"], ensemble_run["table"]], name, overwrite=False)  # no refusal
    result = _tool(name, *_tool_args(name, ensemble_run, database), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert database.read_bytes()[:4] == b"PK\x03\x04"


# --- scripts/main_job.sh removes only a work directory of its own ---------------------------------

def _fake_venv(root: Path) -> Path:
    """A stand-in for the venv: bin/python and bin/dodo that succeed at once and do nothing, so that
    the script runs through without installing or computing anything."""
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "dodo"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    return root / "venv"


def _main_job(venv: Path, work: Path) -> subprocess.CompletedProcess:
    import os

    environment = {**os.environ, "DODO_VENV": str(venv), "DODO_MAIN_JOB_DIR": str(work)}
    return subprocess.run(["bash", str(REPO / "scripts" / "main_job.sh")], capture_output=True, text=True,
                          env=environment, timeout=SUBPROCESS_TIMEOUT_S, cwd=REPO)


def test_main_job_does_not_delete_a_directory_it_did_not_make(tmp_path):
    """`DODO_MAIN_JOB_DIR=DIR bash scripts/main_job.sh` ran `rm -rf DIR` first thing: a directory
    of the user's (their runs, the repository itself given as $PWD) was deleted with everything in
    it. Now a DIR that holds files and was not made by an earlier main job is refused (exit 2,
    before the venv is set up), and kept whole."""
    venv = _fake_venv(tmp_path)
    work = tmp_path / "my_runs"
    work.mkdir()
    (work / "results.h5").write_bytes(b"hours of work")
    result = _main_job(venv, work)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "DODO_MAIN_JOB_DIR" in result.stderr and str(work) in result.stderr, result.stderr
    assert (work / "results.h5").read_bytes() == b"hours of work"


def test_main_job_reuses_its_own_work_directory(tmp_path):
    """The other side: a new or empty DIR, and DIR as an earlier main job left it, are (re)made as
    before, so the main job can be rerun into the same directory."""
    venv = _fake_venv(tmp_path)
    work = tmp_path / "main_job"
    for _ in range(2):
        result = _main_job(venv, work)
        assert result.returncode == 0, result.stdout + result.stderr
        assert work.is_dir()
        (work / "left_by_the_run.h5").write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _main_job(venv, empty).returncode == 0


# --- masked arrays: a masked entry is no value, and is not computed with ------------------------

def _cells() -> "np.ndarray":
    import numpy as np

    F = np.array([[1.0, 0, 0, 0.5], [0.5, 0, 0, 0.1], [0.5, 0, 0, 0.1],
                  [1.2, 0, 0, -0.6], [0.5, 0, 0, 0.1], [0.5, 0, 0, 0.1]]) * 1e32
    return np.stack([F, F * 2.0, F * 0.5])


def _api_calls():
    import dodo

    calls = [("box3d", lambda F, u: dodo.box3d(F, u)), ("invariants", lambda F, u: dodo.invariants(F, u)),
             ("comoving_density", lambda F, u: dodo.comoving_density(F, u)),
             ("crossing_features", lambda F, u: dodo.crossing_features(F, u)),
             ("boost_to_rest", lambda F, u: dodo.boost_to_rest(F, u if u is None else u[..., None, :])),
             ("boost_from_rest", lambda F, u: dodo.boost_from_rest(F, u if u is None else u[..., None, :]))]
    if dodo.runtime_available():
        calls += [("closure", lambda F, u: dodo.closure(F, u, model="box3d")),
                  ("Closure.apply", lambda F, u: dodo.Closure("box3d", threads=1).apply(F, u).F_pred)]
    return calls


@pytest.mark.parametrize("name, call", _api_calls(), ids=[name for name, _ in _api_calls()])
@pytest.mark.parametrize("which", ["F", "u"])
def test_a_masked_entry_is_refused_not_computed_with(name, call, which):
    """A numpy.ma masked array (what netCDF4 returns for a variable with missing values) was read
    through np.asarray, which drops the mask: the masked entries' underlying data (a fill value,
    anything) went into Box3D and the closure as if they were four-fluxes or velocities, and the
    call returned results for them without a word. Now a ValueError naming the argument and the
    first masked cell."""
    import numpy as np

    F = _cells()
    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F), 1))
    if which == "F":
        mask = np.zeros(F.shape, dtype=bool)
        mask[1, 3, 0] = True  # one density of cell 1
        F = np.ma.masked_array(F, mask=mask, fill_value=9.96921e36)
    else:
        mask = np.zeros(u.shape, dtype=bool)
        mask[1, 2] = True
        u = np.ma.masked_array(u, mask=mask)
    with pytest.raises(ValueError, match=r"masked.*cell \(?1"):
        call(F, u)


@pytest.mark.parametrize("name, call", _api_calls(), ids=[name for name, _ in _api_calls()])
def test_a_masked_array_without_masked_entries_is_taken_as_its_data(name, call):
    """The other side: a masked array none of whose entries is masked (np.ma.nomask, or a mask of
    False) gives the bits a plain array gives."""
    import numpy as np

    F = _cells()
    u = np.tile([1.0, 0.0, 0.0, 0.0], (len(F), 1))
    plain = np.asarray(getattr(call(F, u), "F_box", call(F, u)))
    for masked in (np.ma.masked_array(F), np.ma.masked_array(F, mask=np.zeros(F.shape, dtype=bool))):
        result = call(masked, np.ma.masked_array(u))
        np.testing.assert_array_equal(np.asarray(getattr(result, "F_box", result)), plain)


# --- dodo simulate: an option for the other source of states is refused, not ignored -------------

@pytest.fixture(scope="module")
def one_emu_state(tmp_path_factory) -> Path:
    """An Emu-layout file holding the first state of tests/data/qke/emu_1d_validation.h5."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path_factory.mktemp("one") / "one.h5"
    with h5py.File(REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5", "r") as source, \
            h5py.File(path, "w") as target:
        for key in ("F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)", "rotation_R", "tend(s)"):
            target[key] = source[key][:1]
    return path


@pytest.mark.parametrize("options, named", [
    (["--input", "{input}", "--max-flux-factor", "0.5"], "--max-flux-factor"),
    (["--input", "{input}", "--family", "merger"], "--family"),
    (["--input", "{input}", "--three-flavour"], "--three-flavour"),
    (["--random", "1", "--use-input-end-time"], "--use-input-end-time"),
    (["--random", "1", "--ignore-rotation"], "--ignore-rotation"),
])
def test_simulate_refuses_an_option_that_does_not_apply_to_its_states(capsys, tmp_path, one_emu_state, options,
                                                                        named):
    """`dodo simulate OUT --input F --max-flux-factor 0.5` (or `--family merger`, `--three-flavour`)
    simulated every state of F, whatever its flux factor: those options shape random states and
    were silently dropped with --input; `--random N --use-input-end-time` (or `--ignore-rotation`)
    ran with the default end times, there being no input file. `--three-flavour` with `--family`
    was already refused. Now one line naming the option, exit 2, nothing written."""
    from cli_helpers import refused

    out = tmp_path / "out.h5"
    argv = ["simulate", str(out), *[part.format(input=one_emu_state) for part in options], "--linear-only", "-q"]
    line = refused(capsys, argv, named)
    assert "--input" in line and "--random" in line, line
    assert not out.exists()


# --- dodo train --resume: never into a directory holding another run ------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict:
    """Two finished one-epoch `dodo train` runs, A and C, of the same config into two directories."""
    pytest.importorskip("torch")
    from cli_helpers import tiny_study_base

    root = tmp_path_factory.mktemp("runs")
    synthetic_preprocessed(root, 200)
    base = tiny_study_base(root)
    for name in ("A", "C"):
        assert main(["train", "--config", str(base), "--set", f"output.checkpoint_dir={root / name}",
                     "--set", f"output.results_dir={root / ('results_' + name)}"]) == 0
    return {"root": root, "base": base}


def _train(base: Path, directory: Path, *extra) -> list:
    return ["train", "--config", str(base), "--set", f"output.checkpoint_dir={directory}",
            "--set", f"output.results_dir={directory.parent / 'results'}", "--set", "training.epochs=2", *extra]


def test_resuming_another_run_does_not_replace_the_run_in_the_checkpoint_directory(capsys, two_runs):
    """`dodo train --resume A/last.pt` with output.checkpoint_dir C, where C holds another finished
    run (best.pt, final.pt): the check that refuses a new run over another run's checkpoints was
    skipped for any --resume, so C's run was replaced without --overwrite, exit 0. Now refused
    (one line naming both, exit 2), C kept byte for byte; --overwrite still replaces it."""
    from cli_helpers import refused

    root = two_runs["root"]
    before = {path.name: digest(path) for path in (root / "C").glob("*.pt")}
    line = refused(capsys, _train(two_runs["base"], root / "C", "--resume", str(root / "A" / "last.pt")),
                   str(root / "C"), "--overwrite")
    assert "last.pt" in line
    assert {path.name: digest(path) for path in (root / "C").glob("*.pt")} == before


def test_resuming_a_run_in_its_own_or_an_empty_directory_still_runs(capsys, two_runs, tmp_path):
    """The other side: resuming a run's own last.pt into its directory, and another run's into an
    empty directory (a branch of that run), train as before; --overwrite replaces another run."""
    from cli_helpers import run

    root = two_runs["root"]
    own = tmp_path / "own"
    shutil.copytree(root / "A", own)
    assert run(capsys, _train(two_runs["base"], own, "--resume", str(own / "last.pt")))[0] == 0
    assert run(capsys, _train(two_runs["base"], tmp_path / "empty", "--resume", str(root / "A" / "last.pt")))[0] == 0
    other = tmp_path / "other"
    shutil.copytree(root / "C", other)
    assert run(capsys, _train(two_runs["base"], other, "--resume", str(root / "A" / "last.pt"), "--overwrite"))[0] == 0


# --- the QKE solver's seed: refused before any work, not at the first batch -----------------------

def test_emu32_validation_refuses_a_negative_seed_before_any_work(capsys, tmp_path):
    """`python -m dodo.qke.validate emu32 --seed -1` (`dodo simulate` refuses --seed -1) set up every
    state's box and ran the cheaper ones for seconds, then stopped with NumPy's `expected
    non-negative integer` (naming no option) when it reached state 0, whose perturbation seed is
    seed + 0, leaving a partial database behind. Now SolverConfig.validate, which every run calls
    before its work, refuses it: exit 2 naming the seed, nothing written."""
    from dodo.qke.validate import main as validate_main

    out = tmp_path / "v.h5"
    code = validate_main(["emu32", "--output", str(out), "--seed", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "seed" in err and "-1" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value", [("seed", -1), ("seed", 1.5), ("seed", True), ("perturbation_amplitude", float("nan")),
                                          ("advection_cfl", float("nan"))])
def test_solver_config_refuses_a_seed_or_amplitude_that_cannot_run(field, value):
    """SolverConfig(seed=-1).validate() passed (the run failed later, in NumPy), as did a float or
    bool seed and a NaN perturbation amplitude or advection CFL (NaN <= 0 is false: a NaN
    amplitude seeds NaN into every off-diagonal)."""
    from dodo.qke.solver import SolverConfig

    with pytest.raises(ValueError, match=field):
        SolverConfig(**{field: value}).validate()


# --- '-' as a file output: standard output by convention, not a file named '-' ------------------

@pytest.mark.parametrize("argv", [
    ["synth", "-o", "-", "-n", "3", "-q"],
    ["synth", "-", "-n", "3", "-q"],
    ["apply", "missing.h5", "-o", "-"],
    ["preprocess", "--config", "missing.yaml", "-o", "-"],
    ["export", "missing.pt", "-o", "-"],
    ["plot", "curve", "missing.json", "-o", "-"],
    ["simulate", "-", "--input", "missing.h5"],
    ["learning-curve", "--config", "missing.yaml", "--plot", "-"],
], ids=["synth -o -", "synth -", "apply -o -", "preprocess -o -", "export -o -", "plot -o -", "simulate -",
        "learning-curve --plot -"])
def test_a_dash_is_not_taken_for_a_file_name(capsys, tmp_path, monkeypatch, argv):
    """`dodo synth -o -` wrote an HDF5 file named '-' in the working directory (exit 0), as did
    `dodo apply -o -`, `dodo plot -o -` ('-' and '-_parity.png'), `dodo simulate -`, ...: '-' is
    standard output by convention, and these commands' own `--json -` means it. A binary output
    cannot go there: now a usage error (exit 2) that says so, and no file '-'."""
    from cli_helpers import run

    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, argv)
    assert code == 2 and "standard output" in err and "Traceback" not in err, err
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("argv", [["emu32", "--output", "-"], ["emu32", "--json", "-"], ["nsm1", "--json", "-"]],
                         ids=["emu32 --output -", "emu32 --json -", "nsm1 --json -"])
def test_validate_dash_is_not_a_file_name(capsys, tmp_path, monkeypatch, argv):
    """The same for `python -m dodo.qke.validate emu32 --output -` (its database) and `--json -`
    (written to a file '-' after the runs; this command prints no JSON to standard output)."""
    from dodo.qke.validate import main as validate_main

    monkeypatch.chdir(tmp_path)
    try:
        code = validate_main([*argv, "--reference", "missing.h5"])
    except SystemExit as ended:  # argparse's usage error
        code = ended.code
    assert code == 2 and "standard output" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


# --- YAML: a key given twice in one mapping -------------------------------------------------------

def test_a_config_with_a_section_given_twice_is_refused(capsys, tmp_path):
    """A config whose mapping names a key twice (a second `output:` or `training:` appended to the
    file) was read by PyYAML keeping the last one without a word: the first section's settings were
    dropped whole. `dodo preprocess` wrote the second output, exit 0. Now one line naming the file,
    the key and both lines, exit 2, nothing written."""
    from cli_helpers import refused

    assert main(["synth", str(tmp_path / "syn.h5"), "-n", "5", "-q"]) == 0
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{tmp_path / 'syn.h5'}]\noutput: {tmp_path / 'first.h5'}\n"
                      f"output: {tmp_path / 'second.h5'}\n")
    line = refused(capsys, ["preprocess", "--config", str(config), "-q"], "pre.yaml", "'output'", "line 2", "line 3")
    assert "twice" in line
    assert not (tmp_path / "first.h5").exists() and not (tmp_path / "second.h5").exists()


def test_a_training_config_with_a_nested_key_given_twice_is_refused(tmp_path):
    """The same one level down (`training: {lr: 1e-3, ..., lr: 1e-2}`), for every config read by
    dodo.training.config.read_yaml_mapping (train, study grids, train-ensemble, learning-curve);
    YAML merge keys (`<<: *base`, overriding what they merge) are no duplicates and still load."""
    from dodo.training.config import ConfigError, read_yaml_mapping

    twice = tmp_path / "twice.yaml"
    twice.write_text("training:\n  lr: 1.0e-3\n  epochs: 3\n  lr: 1.0e-2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml.*'lr'.*twice.*line 2.*line 4"):
        read_yaml_mapping(twice)
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base {lr: 1.0e-3, epochs: 3}\ntraining:\n  <<: *base\n  lr: 1.0e-2\n")
    assert read_yaml_mapping(merged)["training"] == {"lr": 1.0e-2, "epochs": 3}


def test_simulate_refuses_a_states_file_with_two_state_lists(capsys, tmp_path):
    """`dodo simulate OUT --input states.yaml` where the file holds `states:` twice (two lists pasted
    together): the first list was dropped without a word and only the second simulated."""
    from cli_helpers import refused

    state = "[[1.0e32, 0, 0, 5.0e31], [5.0e31, 0, 0, 1.0e31], [5.0e31, 0, 0, 1.0e31], " \
            "[1.2e32, 0, 0, -6.0e31], [5.0e31, 0, 0, 1.0e31], [5.0e31, 0, 0, 1.0e31]]"
    states = tmp_path / "states.yaml"
    states.write_text(f"states: [{state}]\nstates: [{state}]\n")
    out = tmp_path / "out.h5"
    line = refused(capsys, ["simulate", str(out), "--input", str(states), "--linear-only", "-q"], "'states'", "twice")
    assert "states.yaml" in line
    assert not out.exists()


# --- a pickled Closure names its ONNX Runtime library by an absolute path, as it does its model ---

@pytest.mark.skipif(not __import__("dodo").runtime_available(), reason="closure runtime not built")
def test_a_closure_with_a_relative_onnxruntime_library_unpickles_in_another_directory(tmp_path, monkeypatch):
    """`dodo.Closure(model, onnxruntime_library="lib/libonnxruntime.so")` pickled, then loaded by a
    worker started in another directory (or after os.chdir): the pickle carried the relative path
    as given, so the worker failed with DODO_ERROR_ONNXRUNTIME_UNAVAILABLE (`lib/...: cannot open
    shared object file`), while the model path had been made absolute for this very reason. Now a
    relative path (one with a slash; a bare name is the loader's search name and is kept) is made
    absolute when the closure is made."""
    import os
    import pickle

    import dodo
    from dodo._closure import onnxruntime_library_path

    library = onnxruntime_library_path()
    if library is None:
        pytest.skip("no onnxruntime package to point at")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / os.path.basename(library)).symlink_to(library)
    monkeypatch.chdir(tmp_path)
    relative = os.path.join("lib", os.path.basename(library))
    closure = dodo.Closure(None, threads=1, onnxruntime_library=relative)
    data = pickle.dumps(closure)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", "import pickle, sys; closure = pickle.loads(sys.stdin.buffer.read()); "
                             "print(closure.onnxruntime[0])"], input=data, capture_output=True, cwd=elsewhere,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()[-600:]
    assert result.stdout.decode().strip() == str(tmp_path / relative)


# --- python -m dodo.test with a standard output that cannot take its lines ----------------------

def _smoke_test(stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dodo.test"], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


def test_the_smoke_test_ends_quietly_when_its_reader_goes_away():
    """`python -m dodo.test | head -1` (or any reader that closed early) ended in a BrokenPipeError
    traceback, exit 1, where `dodo` commands stop quietly with 141 (the shell's status for
    SIGPIPE). Here the pipe's reading end is closed before the check starts, so every write fails."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = _smoke_test(write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_the_smoke_test_says_when_its_output_is_lost():
    """`python -m dodo.test > /dev/full` (a full disk) ended in an OSError traceback, exit 1. Now one
    line, exit 2, as `dodo` commands say it."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        result = _smoke_test(full)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "python -m dodo.test: error: cannot write to standard output" in lines[0], lines


# --- dodo preprocess: a copy of an input file is read once ---------------------------------------

def test_preprocess_reads_a_copied_input_once(capsys, tmp_path):
    """`dodo preprocess` with inputs [run.h5, backup/run.h5] (a byte-for-byte copy: `cp`, a download)
    wrote every state twice, without a word (a file named twice, or reached through a link, was
    already read once): `dodo train` then split the copies between the training and test sets, so
    its test metrics measured recall of training states. Now the copy is left out (by the SHA-256
    the file's sources record already), with a line saying so."""
    h5py = pytest.importorskip("h5py")
    from cli_helpers import run

    assert main(["synth", str(tmp_path / "run.h5"), "-n", "20", "-q"]) == 0
    (tmp_path / "backup").mkdir()
    shutil.copy(tmp_path / "run.h5", tmp_path / "backup" / "run.h5")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{tmp_path / 'run.h5'}, {tmp_path / 'backup' / 'run.h5'}]\n"
                      f"output: {tmp_path / 'pre.h5'}\n")
    code, out, err = run(capsys, ["preprocess", "--config", str(config), "-q"])
    assert code == 0, err
    assert "same bytes as" in out and str(tmp_path / "backup" / "run.h5") in out, out
    with h5py.File(tmp_path / "pre.h5", "r") as handle:
        assert handle["F_init"].shape[0] == 20
        assert [source["path"] for source in json.loads(handle.attrs["sources"])] == [str(tmp_path / "run.h5")]


def test_preprocess_still_refuses_a_fifo_input_before_reading_it(tmp_path):
    """The other side of the copy check: each input is opened (and a FIFO, device or directory
    refused) before its bytes are hashed, so a FIFO among the inputs is one line, not a wait for ever
    in the hash (a first version of the fix hashed first; passes on the code before the fix)."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{fifo}]\noutput: {tmp_path / 'pre.h5'}\n")
    result = subprocess.run([sys.executable, "-m", "dodo", "preprocess", "--config", str(config), "-q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "FIFO" in result.stderr, result.stderr


# --- python -m dodo.training.synthetic_model -o: only over a model package ------------------------

def test_the_test_model_writer_does_not_replace_a_data_file(capsys, tmp_path):
    """`python -m dodo.training.synthetic_model -o F` with F a `dodo synth` database (any file that
    is not a model package) replaced it with the test model package, exit 0: `dodo export` has
    refused this since round two. Now refused (exit 2) unless --overwrite; a package (its own
    earlier output) is replaced as before."""
    pytest.importorskip("onnx")
    from dodo.training.synthetic_model import main as write_test_model

    database = tmp_path / "syn.h5"
    assert main(["synth", str(database), "-n", "5", "-q"]) == 0
    before = digest(database)
    try:
        code = write_test_model(["-o", str(database)])
    except SystemExit as ended:
        code = ended.code
    err = capsys.readouterr().err
    assert code == 2 and "synthetic database" in err and "--overwrite" in err, err
    assert digest(database) == before
    package = tmp_path / "test.onnx"
    assert write_test_model(["-o", str(package)]) == 0
    assert write_test_model(["-o", str(package)]) == 0  # over its own earlier output
    assert write_test_model(["-o", str(database), "--overwrite"]) == 0
    assert database.read_bytes()[:1] == b"\x08"


# --- dodo learning-curve --json -: standard output holds the JSON alone ---------------------------

def test_learning_curve_json_on_stdout_is_json_alone(capsys, ensemble_run):
    """`dodo learning-curve --json -` ("- : to stdout", as `--json -` of score, evaluate and
    inspect) printed its per-size summary lines (`train    50: CV model ...`) on standard output
    before the JSON, so `dodo learning-curve ... --json - | jq` (or json.load) failed on the first
    line. Now the progress lines go to standard error when the JSON takes standard output."""
    from cli_helpers import run

    code, out, err = run(capsys, ["learning-curve", "--config", str(ensemble_run["config"]), "--sizes", "50",
                                  "--folds", "2", "--members", "1", "--json", "-"])
    assert code == 0, err
    report = json.loads(out)  # round 26: an object with the mark, the rows under "rows" (a bare list before)
    assert report["dodo_report"] == "dodo learning-curve"
    assert [row["train_size"] for row in report["rows"]] == [50]
    assert "CV model" in err


# --- fuzz/make_seeds.py: --help is not a directory name -------------------------------------------

def test_the_seed_writer_answers_help_without_writing(tmp_path):
    """`python fuzz/make_seeds.py --help` took '--help' for its output directory and wrote the four
    seed corpora into ./--help/ (any first argument was the directory, a second one ignored). Now
    --help prints the usage and writes nothing; an extra argument is refused (exit 2); OUT works as
    before."""
    script = REPO / "fuzz" / "make_seeds.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
    result = subprocess.run([sys.executable, str(script), "a", "b"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 2 and list(tmp_path.iterdir()) == [], result.stderr
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "seeds")], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "seeds").iterdir()) == ["apply", "loader", "metadata", "python"]
