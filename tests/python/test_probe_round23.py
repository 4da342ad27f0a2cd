"""Outside probe, round twenty-three (docs/reliability_python.md, section 25): each test failed on
the code before its fix, except where its docstring says otherwise."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import digest, refused, run, synthetic_preprocessed, tiny_train_config

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
#: Generous: the commands below answer in the time Python takes to start and read a small file.
SUBPROCESS_TIMEOUT_S = 300
SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]


# --- an output given twice: -o and --set output= ---------------------------------------------------

def test_preprocess_refuses_an_output_given_twice_with_two_values(tmp_path, capsys):
    """`dodo preprocess --config C -o A.h5 --set output=B.h5` wrote A.h5 and said nothing of B.h5:
    two values for one setting, the one the user meant unknown. Now refused in one line naming
    both, nothing written; the same value twice still runs."""
    pytest.importorskip("h5py")
    assert run(capsys, ["synth", str(tmp_path / "syn.h5"), "-n", "10", "-q"])[0] == 0
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{tmp_path / 'syn.h5'}]\noutput: {tmp_path / 'pre.h5'}\n")
    a, b = tmp_path / "A.h5", tmp_path / "B.h5"
    refused(capsys, ["preprocess", "--config", str(config), "-o", str(a), "--set", f"output={b}", "-q"],
            str(a), str(b), "--set output")
    assert not a.exists() and not b.exists()
    assert run(capsys, ["preprocess", "--config", str(config), "-o", str(a), "--set", f"output={a}", "-q"])[0] == 0
    assert a.exists()


def test_train_refuses_a_resume_checkpoint_given_twice_with_two_values(tmp_path, capsys):
    """`dodo train --resume X --set training.resume_from=Y`: the same silent choice of one of two
    values (X, the --set dropped). Now refused in one line naming both, before any directory is made."""
    pytest.importorskip("torch")
    table = synthetic_preprocessed(tmp_path, 60)
    config = _train_config(tmp_path, table)
    refused(capsys, ["train", "--config", str(config), "--resume", str(tmp_path / "x.pt"),
                     "--set", f"training.resume_from={tmp_path / 'y.pt'}"], "x.pt", "y.pt", "training.resume_from")
    assert not (tmp_path / "ck").exists()


# --- a failed dodo train leaves no directory of its own ---------------------------------------------

def _train_config(root: Path, table: Path) -> Path:
    return tiny_train_config(root, table, batch_size=64, outputs=root / "runs")


@pytest.mark.parametrize("resume", ["missing", "text"])
def test_a_failed_train_leaves_no_directory_it_made(tmp_path, capsys, resume):
    """`dodo train --resume BAD` (a file that is missing, or of another kind) failed in one line but
    left the checkpoint directory it had made (with the parents it made), empty but for its lock
    file `.dodo.lock`, and an empty results directory. Now the directories the failed run made are
    removed; a directory that existed before is kept as it was (the other side)."""
    pytest.importorskip("torch")
    table = synthetic_preprocessed(tmp_path, 60)
    config = _train_config(tmp_path, table)
    bad = tmp_path / "bad.pt"
    if resume == "text":
        bad.write_text("not a checkpoint\n")
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", str(bad)])
    assert code == 2 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists(), sorted(p.name for p in (tmp_path / "runs").rglob("*"))
    # A checkpoint directory the user made beforehand (empty) is theirs: kept, and left empty.
    (tmp_path / "runs" / "ck").mkdir(parents=True)
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", str(bad)])
    assert code == 2, err
    assert (tmp_path / "runs" / "ck").is_dir() and not (tmp_path / "runs" / "res").exists()


# --- python -m dodo.qke.validate and its standard output ---------------------------------------------

def _validate(reference: Path, stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dodo.qke.validate", "nsm1", "--reference", str(reference),
                           "--box3d-cases", ""], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


def test_validate_ends_quietly_when_its_reader_goes_away(tiny_nsm1_reference):
    """`python -m dodo.qke.validate nsm1 | head -1`: `python -m dodo.qke.validate: error: [Errno 32]
    Broken pipe`, exit 2, where `dodo` and `python -m dodo.test` end quietly with 141. The pipe's
    reading end is closed before the start, so every write fails whatever the machine's speed."""
    reading, writing = os.pipe()
    os.close(reading)
    try:
        result = _validate(tiny_nsm1_reference, writing)
    finally:
        os.close(writing)
    assert result.returncode == 141 and result.stderr == "", (result.returncode, result.stderr)


@pytest.mark.parametrize("where", ["full", "closed"])
def test_validate_says_when_its_report_is_lost(tiny_nsm1_reference, where):
    """`python -m dodo.qke.validate nsm1 > /dev/full`: `error: [Errno 28] No space left on device`
    (named nothing); with standard output closed (`>&-`) the report was dropped without a word,
    exit 0. Now as `dodo` says it: `cannot write to standard output: ...`, exit 2."""
    if where == "full":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        with open("/dev/full", "w") as full:
            result = _validate(tiny_nsm1_reference, full)
    else:
        import shlex

        command = " ".join(shlex.quote(str(part)) for part in (sys.executable, "-m", "dodo.qke.validate", "nsm1",
                                                                "--reference", tiny_nsm1_reference, "--box3d-cases", ""))
        result = subprocess.run(command + " >&-", shell=True, stderr=subprocess.PIPE, text=True,
                                timeout=SUBPROCESS_TIMEOUT_S)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("python -m dodo.qke.validate: error: cannot write to standard output"), lines


# --- the tools that write committed files write them atomically --------------------------------------

#: A subprocess limit on the size of any file it writes (RLIMIT_FSIZE, SIGXFSZ ignored): a write past
#: it fails with EFBIG, as on a full disk, at a place that does not depend on the machine's speed.
_LIMITED_WRITES = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), TOOLS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_lebedev_keeps_the_earlier_table_when_its_write_fails(tmp_path):
    """`tools/generate_lebedev.py --output F` wrote F with `write_text` (truncate, then write): a
    write that failed part way (a full disk, a kill) left F torn, where F is by default the committed
    `cpp/src/box3d/lebedev_tables.cpp`. Now written through `dodo._atomic.atomic_path`: F stays whole.
    Runs on a temporary --output only (order 3: six points)."""
    pytest.importorskip("scipy")
    output = tmp_path / "tables.cpp"
    output.write_text("// the earlier tables\n" * 200)
    before = digest(output)
    program = _LIMITED_WRITES.format(limit=600) + textwrap.dedent(f"""
        import sys
        sys.argv = ["generate_lebedev.py", "--orders", "3", "--output", {str(output)!r}]
        sys.path.insert(0, {str(TOOLS)!r})
        import generate_lebedev
        generate_lebedev.main()
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode != 0, result.stdout + result.stderr  # the table needs more than 600 bytes
    assert digest(output) == before
    assert [p.name for p in tmp_path.iterdir()] == ["tables.cpp"]  # no temporary left
    # Without the limit it writes the table, as before.
    result = subprocess.run([sys.executable, str(TOOLS / "generate_lebedev.py"), "--orders", "3", "--output",
                             str(output)], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert "kOrder3[6][4]" in output.read_text()


def test_dataset_card_keeps_the_earlier_figure_when_its_write_fails(tmp_path):
    """`tools/dataset_card.py` wrote `docs/figures/dataset_sampling.png` with `fig.savefig` in place
    (the card itself is written atomically): a write that failed part way left the committed figure
    torn. Now through `atomic_path`. The tool runs on a copy of the repository's layout in a
    temporary directory (its ROOT replaced: nothing committed is read or written), one small
    campaign file, with file writes limited to 4000 bytes (the figure is tens of kB)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("h5py")
    root = tmp_path / "repo"
    (root / "data/qke").mkdir(parents=True)
    (root / "docs/figures").mkdir(parents=True)
    _campaign_file(root / "data/qke/random_seed1.h5")
    (root / "docs/dataset.md").write_text("# Dataset\n\n<!-- dataset-card:begin -->\n<!-- dataset-card:end -->\n")
    figure = root / "docs/figures/dataset_sampling.png"
    figure.write_bytes(b"\x89PNG the earlier figure" * 10)
    before = digest(figure)
    program = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(TOOLS)!r})
        import dataset_card
        dataset_card.ROOT = Path({str(root)!r})
        import matplotlib.pyplot  # its font cache made before the limit
    """) + _LIMITED_WRITES.format(limit=4000) + "dataset_card.main([])\n"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S, cwd=tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert digest(figure) == before
    assert sorted(p.name for p in figure.parent.iterdir()) == ["dataset_sampling.png"]


def _campaign_file(path: Path) -> None:
    """A complete `dodo simulate`-like campaign file of 8 states (their final states the initial)."""
    import h5py

    from dodo.conventions import to_emu_layout

    rng = np.random.default_rng(3)
    states = np.zeros((8, 6, 4))
    states[..., 0] = rng.uniform(1, 2, (8, 6)) * 1e32
    states[..., 3] = states[..., 0] * rng.uniform(-0.3, 0.3, (8, 6))
    with h5py.File(path, "w") as handle:
        handle["F4_initial(1|ccm)"] = to_emu_layout(states)
        handle["F4_final(1|ccm)"] = to_emu_layout(states)
        handle["growthRate(1|s)"] = np.full(8, 1e10)


# --- dodo simulate --linear-only onto an unfinished full run --------------------------------------------

def test_linear_only_names_an_unfinished_full_run_for_what_it_is(tmp_path, capsys):
    """`dodo simulate OUT --linear-only` with OUT an unfinished full-run database (a campaign stopped
    after its first batch, its checkpoint OUT.partial.npz beside it): refused and kept, but the
    message called OUT `an unfinished growth-label file of other states or settings` and said that
    removing it loses `its labels`. Now it names a full run's unfinished database, how to resume it
    (the command without --linear-only) and its checkpoint."""
    pytest.importorskip("h5py")
    yaml = pytest.importorskip("yaml")
    from test_output_safety import STATES, interrupted_campaign

    output = str(tmp_path / "out.h5")
    kept = interrupted_campaign(output)
    database = digest(output)
    states = tmp_path / "states.yaml"
    states.write_text(yaml.safe_dump({"states": STATES.tolist()}))
    line = refused(capsys, ["simulate", output, "--input", str(states), "--linear-only", *SMALL], output,
                   "unfinished solver database", "without --linear-only")
    assert "growth-label" not in line and "labels are lost" not in line, line
    assert "1 of 2 states done" in line, line  # the full run's own count (it has no nstates_processed)
    assert digest(output) == database and digest(output + ".partial.npz") == kept


# --- a preprocess input whose name holds glob characters -----------------------------------------------

def test_preprocess_reads_an_input_named_with_brackets_as_named(tmp_path, capsys, monkeypatch):
    """`inputs: ["run[1].h5"]` with the files `run[1].h5` (10 states) and `run1.h5` (30) beside each
    other: the name was taken as a glob pattern, `[1]` a character class, so run1.h5 was read
    instead, without a word (30 rows, its source recorded as run1.h5). A name that is an existing
    file is now read as named; a pattern that names no file is still a pattern."""
    h5py = pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["synth", "run[1].h5", "-n", "10", "--seed", "1", "-q"])[0] == 0
    assert run(capsys, ["synth", "run1.h5", "-n", "30", "--seed", "2", "-q"])[0] == 0
    (tmp_path / "c.yaml").write_text('inputs: ["run[1].h5"]\noutput: out.h5\n')
    assert run(capsys, ["preprocess", "--config", "c.yaml", "-q"])[0] == 0
    with h5py.File("out.h5", "r") as handle:
        assert len(handle["F_init"]) == 10
        assert '"path": "run[1].h5"' in handle.attrs["sources"]
    (tmp_path / "c.yaml").write_text('inputs: ["run[12].h5"]\noutput: out2.h5\n')  # a pattern: run1.h5
    assert run(capsys, ["preprocess", "--config", "c.yaml", "-q"])[0] == 0
    with h5py.File("out2.h5", "r") as handle:
        assert len(handle["F_init"]) == 30


# --- a study grid that sets one key twice ------------------------------------------------------------------

@pytest.mark.parametrize("overrides, grid_key", [("{training.lr: 1.0e-2}", "training.lr"),
                                                 ("{training: {lr: 1.0e-2}}", "training.lr"),
                                                 ("{training.lr: 1.0e-2}", "training")])
def test_study_refuses_a_key_set_by_both_overrides_and_grid(tmp_path, capsys, overrides, grid_key):
    """A grid file whose `overrides:` and `grid:` both set `training.lr` (or one a section holding the
    other): the grid's values were used and the override dropped without a word, even by --dry-run,
    which lists the grid points only. Now refused in one line naming the key, before any run."""
    (tmp_path / "base.yaml").write_text("data: {path: pre.h5}\n")
    values = "[1.0e-3, 3.0e-3]" if grid_key == "training.lr" else "[{lr: 1.0e-3}]"
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: base.yaml\noutput_root: {tmp_path / 'studies'}\noverrides: {overrides}\n"
                    f"grid:\n  {grid_key}: {values}\n")
    refused(capsys, ["study", str(grid), "--dry-run"], "training", "overrides", "grid")
    assert not (tmp_path / "studies").exists()
    # The other side: an override of another key of the same section is no clash.
    grid.write_text(f"base_config: base.yaml\noutput_root: {tmp_path / 'studies'}\n"
                    "overrides: {training: {epochs: 2}, training.weight_decay: 1.0e-5}\ngrid:\n  training.lr: [1.0e-3]\n")
    assert run(capsys, ["study", str(grid), "--dry-run"])[0] == 0


# --- dodo export of a network whose weights are not finite ------------------------------------------------

@pytest.mark.parametrize("check", [[], ["--no-check"]])
def test_export_refuses_a_network_with_weights_that_are_not_finite(tmp_path, capsys, check):
    """A checkpoint whose network holds a NaN weight (a run whose last step blew up at an epoch's end;
    here one weight set to NaN and the checkpoint's digest recomputed, as the trainer writes it):
    `dodo export --no-check` wrote a package, exit 0, whose every load fails its self-test
    (`DODO_ERROR_SELF_TEST: ... test vector 0 is not finite`): its test vectors were NaN. Without
    --no-check the round trip refused it as `differ by up to nan`. Now refused before anything is
    written, naming the weight, with or without --no-check."""
    torch = pytest.importorskip("torch")
    from dodo.training.train import checkpoint_digest

    table = synthetic_preprocessed(tmp_path, 60)
    config = _train_config(tmp_path, table)
    assert run(capsys, ["train", "--config", str(config)])[0] == 0
    state = torch.load(tmp_path / "runs/ck/best.pt", weights_only=False)
    name = next(key for key, value in state["model_state"].items() if key.endswith("weight")
                and value.dtype.is_floating_point)
    state["model_state"][name].view(-1)[0] = float("nan")
    state["sha256"] = checkpoint_digest(state)
    torch.save(state, tmp_path / "nan.pt")
    output = tmp_path / "nan.onnx"
    refused(capsys, ["export", str(tmp_path / "nan.pt"), "-o", str(output), *check], "not finite", name)
    assert not output.exists()


# --- the modules' own entry points ---------------------------------------------------------------------

def test_the_training_module_entry_point_guards_its_output_as_dodo_does(tmp_path):
    """`python -m dodo.training.cli synth F -n 5 -q | head -0` (the module's stand-alone entry, left from
    before `dodo` wired its commands): a `BrokenPipeError` traceback, exit 1, where `dodo synth` ends
    quietly with 141; it skipped every guard of `dodo.cli.main` (signals, standard output, memory).
    Both stand-alone entries (`dodo.training.cli`, `dodo.qke.cli`) now run `dodo.cli.main`. The
    pipe's reading end is closed before the start: every write fails, whatever the machine's speed."""
    pytest.importorskip("h5py")
    reading, writing = os.pipe()
    os.close(reading)
    try:
        result = subprocess.run([sys.executable, "-m", "dodo.training.cli", "synth", str(tmp_path / "s.h5"), "-n", "5",
                                 "-q"],
                                stdout=writing, stderr=subprocess.PIPE, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        os.close(writing)
    assert result.returncode == 141 and result.stderr == "", (result.returncode, result.stderr)
    assert (tmp_path / "s.h5").is_file()  # the file is written before the line that reports it


def test_the_test_model_writer_ends_quietly_when_its_reader_goes_away(tmp_path):
    """`python -m dodo.training.synthetic_model -o F | head -0`: `error: [Errno 32] Broken pipe`,
    exit 2, after writing F; now 141 and nothing on stderr, as `dodo` (F written all the same)."""
    pytest.importorskip("onnx")
    reading, writing = os.pipe()
    os.close(reading)
    output = tmp_path / "test.onnx"
    try:
        result = subprocess.run([sys.executable, "-m", "dodo.training.synthetic_model", "-o", str(output)],
                                stdout=writing, stderr=subprocess.PIPE, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        os.close(writing)
    assert result.returncode == 141 and result.stderr == "", (result.returncode, result.stderr)
    assert output.is_file()


# --- dodo.qke.box_growth_rate's arguments ------------------------------------------------------------------

_NSM_LIKE = np.array([[1.0, 0, 0, 1 / 3], [0.5, 0, 0, 0], [0.5, 0, 0, 0], [1.0, 0, 0, -1 / 3], [0.5, 0, 0, 0],
                      [0.5, 0, 0, 0]]) * 1e33


@pytest.mark.parametrize("change, said", [
    ({"box_length_cm": -4.0}, "box_length_cm"), ({"box_length_cm": float("nan")}, "box_length_cm"),
    ({"box_length_cm": 0.0}, "box_length_cm"), ({"ncell": 0}, "ncell"), ({"ncell": 2.5}, "ncell"),
    ({"axis": (0.0, 0.0, 0.0)}, "axis"), ({"axis": (0.0, float("nan"), 1.0)}, "axis"),
    ({"four_flux": np.stack([_NSM_LIKE, _NSM_LIKE])}, "one state"),
    ({"hamiltonian_filter": "Emu"}, "hamiltonian_filter"),
])
def test_box_growth_rate_names_an_argument_it_cannot_use(change, said):
    """`dodo.qke.box_growth_rate` (public, `dodo.qke.__all__`): a negative box length gave the growth
    rate of the positive one without a word; NaN `LinAlgError: Array must not contain infs or NaNs`;
    `ncell=0` `attempt to get argmax of an empty sequence`; a zero axis a RuntimeWarning and the
    LinAlgError; two states a matmul shape error; `hamiltonian_filter="Emu"` (any text but "emu")
    silently the unfiltered rate. Now a ValueError naming the argument."""
    from dodo.qke import box_growth_rate, uniform_sphere

    arguments = {"four_flux": _NSM_LIKE, "directions": uniform_sphere(8), "box_length_cm": 4.0, "ncell": 16}
    arguments.update(change)
    with pytest.raises(ValueError, match=said):
        box_growth_rate(**arguments)
    arguments = {"four_flux": _NSM_LIKE, "directions": uniform_sphere(8), "box_length_cm": 4.0, "ncell": 16}
    assert box_growth_rate(**arguments)[0] > 0  # the other side
    assert box_growth_rate(**{**arguments, "four_flux": _NSM_LIKE[None]}) == box_growth_rate(**arguments)


# --- dodo evaluate / inspect --data on a file other than the training file ------------------------------------

@pytest.fixture(scope="module")
def trained_and_superset(tmp_path_factory) -> dict:
    """A one-epoch `dodo train` run on a preprocessed file of 60 synthetic states, and a second
    preprocessed file holding those 60 states and 40 more (the table re-preprocessed after the
    campaign grew): another file (its SHA-256 differs) that shares the training states."""
    pytest.importorskip("torch")
    from dodo.cli import main

    root = tmp_path_factory.mktemp("superset")
    table = synthetic_preprocessed(root, 60)
    config = _train_config(root, table)
    assert main(["train", "--config", str(config)]) == 0
    assert main(["synth", str(root / "more.h5"), "-n", "40", "--seed", "7", "-q"]) == 0
    (root / "grown.yaml").write_text(f"inputs: [{root / 'syn.h5'}, {root / 'more.h5'}]\noutput: {root / 'grown.h5'}\n")
    assert main(["preprocess", "--config", str(root / "grown.yaml"), "-q"]) == 0
    return {"checkpoint": root / "runs/ck/best.pt", "table": table, "grown": root / "grown.h5"}


@pytest.mark.parametrize("command, split", [("evaluate", "test"), ("inspect", "val")])
def test_a_split_of_another_file_is_not_taken_for_the_checkpoints_split(trained_and_superset, capsys, command, split):
    """`dodo evaluate CKPT --data grown.h5` (a file other than the one trained on, here one holding
    the training states and more): the default `--split test` drew a 'test' split of grown.h5 by the
    checkpoint's seed and fractions, rows that include states the model trained on, reported as
    "split 'test' of grown.h5" without a word (`dodo inspect`: its 'val'). The checkpoint's split
    describes its training file only: on another file the default is now all its rows (said so),
    and an explicit train/val/test split is refused in one line naming --split all. The training
    file itself (same SHA-256, by --data or by default) keeps its own split (the other side)."""
    checkpoint, grown = trained_and_superset["checkpoint"], trained_and_superset["grown"]
    code, out, err = run(capsys, [command, str(checkpoint), "--data", str(grown)])
    assert code == 0, err
    assert f"split '{split}'" not in out and "'all'" in out + err, out
    refused(capsys, [command, str(checkpoint), "--data", str(grown), "--split", split], "--split all", str(grown))
    for argv in ([], ["--data", str(trained_and_superset["table"])]):
        code, out, err = run(capsys, [command, str(checkpoint), *argv])
        assert code == 0 and f"split '{split}'" in out + err, out + err


# --- dodo simulate --axis with an input that sets its own axes -------------------------------------------------

@pytest.mark.parametrize("axis", ["x", "emu"])
def test_simulate_refuses_an_axis_that_the_inputs_rotation_overrides(tmp_path, capsys, axis):
    """`dodo simulate OUT --input F --axis x` with F carrying rotation_R (every Emu validation file
    does): the boxes were set along F's axes and --axis dropped without a word, the output's
    settings even recording `"axis": "x"`. Now refused in one line naming --ignore-rotation,
    nothing written; with --ignore-rotation --axis is used (the other side)."""
    h5py = pytest.importorskip("h5py")
    source = tmp_path / "two.h5"
    with h5py.File(REPO / "tests/data/qke/emu_1d_validation.h5", "r") as reference, h5py.File(source, "w") as handle:
        for name in ("F4_initial(1|ccm)", "rotation_R", "tend(s)"):
            handle[name] = reference[name][()][:1]
    output = tmp_path / "out.h5"
    arguments = ["simulate", str(output), "--input", str(source), "--axis", axis, *SMALL]
    refused(capsys, arguments, f"--axis {axis}", "rotation_R", "--ignore-rotation")
    assert not output.exists()
    if axis == "x":
        assert run(capsys, [*arguments, "--ignore-rotation"])[0] == 0
        with h5py.File(output, "r") as handle:
            assert np.allclose(np.abs(handle["rotation_R"][0][2]), [1, 0, 0])  # the box along x


def test_a_failed_study_leaves_no_empty_run_directory(tmp_path, capsys):
    """`dodo study GRID` whose runs cannot train (here its data file is missing) failed in one line
    but left OUTPUT_ROOT/TAG/ with its lock file and an empty run_000/{checkpoints,results}: the
    next study of the tag then numbered its runs from run_001, and the summary's earlier runs had a
    gap. Now the directories the failed run made are removed when they hold nothing; a study that
    runs keeps its directories (the other side)."""
    pytest.importorskip("torch")
    table = synthetic_preprocessed(tmp_path, 60)
    config = _train_config(tmp_path, table)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base_config: {config}\noutput_root: {tmp_path / 'studies'}\n"
                    f"overrides: {{data.path: {tmp_path / 'missing.h5'}}}\ngrid:\n  training.lr: [1.0e-3]\n")
    code, _, err = run(capsys, ["study", str(grid)])
    assert code == 2 and "missing.h5" in err, err
    assert not (tmp_path / "studies").exists(), sorted(str(p) for p in (tmp_path / "studies").rglob("*"))
    grid.write_text(f"base_config: {config}\noutput_root: {tmp_path / 'studies'}\ngrid:\n  training.lr: [1.0e-3]\n")
    assert run(capsys, ["study", str(grid)])[0] == 0
    assert (tmp_path / "studies/grid/run_000/checkpoints/best.pt").is_file()


def test_a_failed_write_leaves_no_directory_it_made(tmp_path, capsys):
    """`dodo preprocess` with `output: new/dir/out.h5` whose rows all fail the filters: refused in one
    line, the output not written, but `new/dir/` (made for it) left behind, empty; so for every
    output written through `dodo._atomic.atomic_path` whose write fails. Now the directories made
    for a write that fails are removed when they hold nothing; an existing directory is kept."""
    pytest.importorskip("h5py")
    assert run(capsys, ["synth", str(tmp_path / "syn.h5"), "-n", "10", "-q"])[0] == 0
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{tmp_path / 'syn.h5'}]\noutput: {tmp_path / 'new/dir/out.h5'}\n"
                      "filters: {max_flux_factor: 1.0e-6}\n")
    refused(capsys, ["preprocess", "--config", str(config), "-q"], "no rows survived")
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    refused(capsys, ["preprocess", "--config", str(config), "-q"], "no rows survived")
    assert sorted(p.name for p in tmp_path.rglob("*") if "new" in p.parts) == ["new"]


@pytest.mark.parametrize("key", ["output.checkpoint_dir", "output.results_dir"])
def test_train_refuses_an_empty_output_directory(tmp_path, capsys, monkeypatch, key):
    """`output.checkpoint_dir: ''` (a YAML empty string, or `--set "output.checkpoint_dir=''"`) ran
    the training and wrote best.pt, last.pt, final.pt and the lock file into the working directory
    (Path('') is '.'); `results_dir: ''` train.log and the metrics there. An unset value (null) was
    already refused. Now refused in one line naming the key, nothing written."""
    pytest.importorskip("torch")
    table = synthetic_preprocessed(tmp_path, 60)
    config = _train_config(tmp_path, table)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    refused(capsys, ["train", "--config", str(config), "--set", f"{key}=''"], key)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("change, said", [({"record_every": 2.5}, "record_every"), ({"record_every": True}, "record_every"),
                                          ({"ncell": 16.0}, "ncell"), ({"nphi_equator": 8.0}, "nphi_equator")])
def test_solver_config_takes_whole_numbers_only(change, said):
    """`SolverConfig(record_every=2.5)` validated and ran, recording every fifth step (`istep % 2.5`),
    a history of 2 records where 5 were asked, without a word; `True` ran as 1; `ncell=16.0` failed in
    NumPy (`n should be an integer`, naming nothing); `nphi_equator=8.0` ran. Now a ValueError naming
    the setting, as `seed` has been since round 22."""
    from dodo.qke import SolverConfig

    with pytest.raises(ValueError, match=said):
        SolverConfig(**{"ncell": 16, "nphi_equator": 8, **change}).validate()
    SolverConfig(ncell=np.int64(16), nphi_equator=8, record_every=np.int32(2)).validate()  # NumPy integers: fine


# --- an input option given as an empty path (an unset shell variable) ---------------------------------------

def test_train_resume_of_an_empty_path_is_refused_not_a_fresh_run(tmp_path, capsys):
    """`dodo train --config C --resume "$CKPT"` with CKPT unset: `--resume ''` was taken for no
    --resume, and a fresh run trained into an empty checkpoint directory, exit 0: the run meant to
    be continued was started over. Now a usage error naming the empty path, before any file or
    directory is made (empty outputs have been refused so since round two)."""
    pytest.importorskip("torch")
    table = synthetic_preprocessed(tmp_path, 60)
    config = _train_config(tmp_path, table)
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", ""])
    assert code == 2 and "--resume" in err and "empty path" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["simulate", "{out}", "--input", ""], ["evaluate", "x.pt", "--data", ""],
                                  ["preprocess", "--config", ""]])
def test_an_empty_input_path_is_a_usage_error(tmp_path, capsys, argv):
    """`dodo simulate OUT --input ''`: a `TypeError: '<' not supported between instances of
    'NoneType' and 'int'` traceback, exit 1 (the empty path taken for no --input, then --random
    missing); `evaluate --data ''` and `preprocess --config ''`: `. is a directory`. Now the usage
    error of an empty path, exit 2."""
    argv = [part.replace("{out}", str(tmp_path / "out.h5")) for part in argv]
    code, _, err = run(capsys, argv)
    assert code == 2 and "empty path" in err and "Traceback" not in err, err
    assert not (tmp_path / "out.h5").exists()


def test_an_output_hard_linked_to_an_input_is_named_as_such(tmp_path, capsys):
    """`dodo apply syn.h5 -o link.h5` with link.h5 a hard link of syn.h5: refused (the input kept),
    but the message said `(both are .../link.h5)`, which syn.h5 is not: two names of one file
    (the same inode), not one path. Now it says they are hard links to one file; a symlink still
    names the path both resolve to."""
    pytest.importorskip("h5py")
    assert run(capsys, ["synth", str(tmp_path / "syn.h5"), "-n", "5", "-q"])[0] == 0
    os.link(tmp_path / "syn.h5", tmp_path / "link.h5")
    line = refused(capsys, ["apply", str(tmp_path / "syn.h5"), "--model", "box3d", "--grid", "2x2x2", "-o",
                            str(tmp_path / "link.h5"), "-q"], "same file as the input", "hard link")
    assert f"both are {tmp_path / 'link.h5'}" not in line, line
    os.symlink(tmp_path / "syn.h5", tmp_path / "soft.h5")
    refused(capsys, ["apply", str(tmp_path / "syn.h5"), "--model", "box3d", "--grid", "2x2x2", "-o",
                     str(tmp_path / "soft.h5"), "-q"], f"both are {tmp_path / 'syn.h5'}")


# --- dodo train-ensemble / learning-curve (found by the round, fixed after it) ------------------------

def test_a_failed_train_ensemble_removes_the_directory_it_made(tmp_path, capsys):
    """`dodo train-ensemble` on a data file that is not a preprocessed table (here: a solver file
    of the wrong kind) failed with a clear line but left the checkpoint directory it had made,
    holding only its `.dodo.lock`, as `dodo train` did before round 23. Now removed; a directory
    that existed before is kept."""
    pytest.importorskip("torch")
    pytest.importorskip("h5py")
    import h5py

    bad = tmp_path / "not_a_table.h5"
    with h5py.File(bad, "w") as handle:
        handle["x"] = np.zeros(3)
    made = tmp_path / "new" / "dir"
    config = REPO / "training" / "configs" / "ensemble_default.yaml"
    argv = ["train-ensemble", "--config", str(config), "--set", f"data.path={bad}",
            "--set", f"output.checkpoint={made / 'ensemble.pt'}", "--set", "growth.measured=true",
            "--set", "growth.data=[]", "--set", "noise.oof=''", "--set", "noise.weight=0"]
    code, _, err = run(capsys, argv)
    assert code == 2 and "not a Dodo preprocessed file" in err and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    argv[argv.index(f"output.checkpoint={made / 'ensemble.pt'}")] = f"output.checkpoint={kept / 'ensemble.pt'}"
    code, _, err = run(capsys, argv)
    assert code != 0 and kept.is_dir()


def test_learning_curve_refuses_members_given_twice(tmp_path, capsys):
    """`dodo learning-curve --members 3 --set ensemble.members=5` fitted 3 members without a word
    (two values for one setting); now one line, before any work."""
    config = REPO / "training" / "configs" / "ensemble_default.yaml"
    refused(capsys, ["learning-curve", "--config", str(config), "--members", "3", "--set", "ensemble.members=5"],
            "--members", "ensemble.members")
