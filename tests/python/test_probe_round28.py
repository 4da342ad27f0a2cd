"""Outside probe, round twenty-eight (docs/reliability_python.md, section 30): each test failed on
the code before its fix (the docstrings say what that code did)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import digest, refused, run, synthetic_preprocessed, tiny_study_base
from dodo.cli import main

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
#: Generous: the refusals answer in the time Python takes to start and import torch.
SUBPROCESS_TIMEOUT_S = 300


def _tool(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, cwd=REPO)


def _one_line_refusal(result: subprocess.CompletedProcess, *names) -> str:
    """The tool's last stderr line, after asserting exit 2 and no traceback; it names every one of ``names``."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for name in names:
        assert str(name) in line, line
    return line


# --- --set given twice for one setting ----------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_database(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "syn.h5"
    assert main(["synth", str(path), "-n", "20", "-q"]) == 0
    return path


@pytest.mark.parametrize("first, second, named", [
    ("filters.max_flux_factor=0.5", "filters.max_flux_factor=0.9", "filters.max_flux_factor"),
    ("filters.max_flux_factor=0.5", "filters={drop_nonfinite: true}", "filters.max_flux_factor"),
    ("filters={max_flux_factor: 0.5}", " filters.max_flux_factor =0.9", "filters.max_flux_factor"),
])
def test_a_setting_given_twice_with_set_is_refused(tmp_path, capsys, synth_database, first, second, named):
    """`dodo preprocess --set filters.max_flux_factor=0.5 --set filters.max_flux_factor=0.9` ran with
    0.9, and `--set filters.max_flux_factor=0.5 --set 'filters={...}'` with the filter at its default:
    the later --set replaced the earlier without a word (a YAML key given twice has been refused since
    round 22, `-o` beside `--set output=` since round 23). Now one line naming both, before any output."""
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{synth_database}]\noutput: {tmp_path / 'pre.h5'}\n")
    line = refused(capsys, ["preprocess", "--config", str(config), "-q", "--set", first, "--set", second],
                   repr(first), repr(second), f"both set {named}", "give each setting once")
    assert not (tmp_path / "pre.h5").exists(), line


def test_train_ensemble_refuses_a_set_given_twice(tmp_path, capsys):
    """The same in the ensemble config (`dodo train-ensemble`, `learning-curve`): `--set ensemble.lr=1
    --set ensemble.lr=2` trained at 2. Refused before the config's data file is even looked at."""
    config = tmp_path / "ens.json"
    config.write_text('{"data": {"path": "%s"}, "output": {"checkpoint": "%s"}}' % (tmp_path / "none.h5",
                                                                                    tmp_path / "ens.pt"))
    for command in ("train-ensemble", "learning-curve"):
        refused(capsys, [command, "--config", str(config), "--set", "ensemble.lr=1", "--set", "ensemble.lr=2"],
                "both set ensemble.lr")
    assert not (tmp_path / "ens.pt").exists()
    from dodo.training.cli import _overrides

    # Not a conflict: one value given twice (a script that repeats itself), and two keys of one section.
    assert _overrides(["ensemble.lr=1", " ensemble.lr =1", "ensemble.seed=3"]) == {"ensemble.lr": 1, "ensemble.seed": 3}


# --- dodo preprocess with its output among its inputs -------------------------------------------------

def test_preprocess_names_an_output_that_is_its_input_before_offering_overwrite(tmp_path, capsys, synth_database):
    """A config whose `output:` is one of its `inputs:` (a synth database) was refused with `syn.h5
    exists and is a synthetic database ..., or --overwrite to replace it`; --overwrite then met the
    input check. The first refusal now says what is wrong, and offers no --overwrite."""
    database = Path(tmp_path / "syn.h5")
    database.write_bytes(synth_database.read_bytes())
    before = digest(database)
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{database}]\noutput: {database}\n")
    line = refused(capsys, ["preprocess", "--config", str(config), "-q"], "same file as the input", database)
    assert "--overwrite" not in line
    assert digest(database) == before


# --- the checkpoint tools: a table that is not one, a dodo train checkpoint ----------------------------

@pytest.mark.parametrize("name", ["regate_checkpoint.py", "refit_growth.py", "student_width_study.py"])
def test_checkpoint_tools_refuse_a_table_that_is_not_preprocessed_in_one_line(ensemble_run, synth_database, name,
                                                                              tmp_path):
    """`--table syn.h5` (a `dodo synth` database, not the preprocessed table) ended in a
    `dodo.emu_files.DataFileError` traceback, exit 1, in all three tools."""
    run_ = ensemble_run
    common = ["--table", synth_database]
    if name == "regate_checkpoint.py":
        args = [run_["checkpoint"], "2.5", *common, "-o", tmp_path / "out.pt"]
    elif name == "refit_growth.py":
        args = [run_["checkpoint"], "--config", run_["config"], *common, "-o", tmp_path / "out.pt"]
    else:
        args = [run_["checkpoint"], "--config", run_["config"], *common, "--widths", "4"]
    _one_line_refusal(_tool(name, *args), synth_database, "not a Dodo preprocessed file")
    assert not (tmp_path / "out.pt").exists()


@pytest.fixture(scope="module")
def train_checkpoint(tmp_path_factory) -> dict:
    """A one-epoch `dodo train` checkpoint (8 wide) on a small synthetic table."""
    root = tmp_path_factory.mktemp("train")
    table = synthetic_preprocessed(root, 100)
    assert main(["train", "--config", str(tiny_study_base(root))]) == 0
    return {"checkpoint": root / "unused" / "best.pt", "table": table}


@pytest.mark.parametrize("name", ["regate_checkpoint.py", "refit_growth.py", "student_width_study.py"])
def test_checkpoint_tools_name_a_dodo_train_checkpoint(ensemble_run, train_checkpoint, name, tmp_path):
    """A `dodo train` checkpoint given to the tools that read `dodo train-ensemble` checkpoints:
    regate_checkpoint.py and student_width_study.py ended in `ValueError: not a density-residual-ensemble
    checkpoint` (a traceback naming no file), refit_growth.py said the config and the checkpoint
    "differ in the density members' settings ...: retrain with dodo train-ensemble"."""
    checkpoint, table = train_checkpoint["checkpoint"], train_checkpoint["table"]
    if name == "regate_checkpoint.py":
        args = [checkpoint, "2.5", "--table", table, "-o", tmp_path / "out.pt"]
    elif name == "refit_growth.py":
        args = [checkpoint, "--config", ensemble_run["config"], "--table", table, "-o", tmp_path / "out.pt"]
    else:
        args = [checkpoint, "--config", ensemble_run["config"], "--table", table, "--widths", "4"]
    line = _one_line_refusal(_tool(name, *args), checkpoint, "a `dodo train` checkpoint",
                             "reads `dodo train-ensemble` checkpoints")
    assert "retrain" not in line
    assert not (tmp_path / "out.pt").exists()


def test_student_width_study_refuses_a_table_without_campaign_families(ensemble_run):
    """`tools/student_width_study.py` on a table of `dodo synth` data (the checkpoint trained on it):
    numpy's `ValueError: need at least one array to concatenate` traceback, after loading everything:
    its fresh states are drawn in the campaign families' mix, and this table has none."""
    result = _tool("student_width_study.py", ensemble_run["checkpoint"], "--config", ensemble_run["config"],
                   "--table", ensemble_run["table"], "--widths", "4", "--fresh-states", "50")
    _one_line_refusal(result, ensemble_run["table"], "campaign families", "no training file of this table")
