"""Outside probe, round twenty-eight (docs/reliability_python.md, section 30): each test failed on
the code before its fix (the docstrings say what that code did)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cli_helpers import digest, refused, run, run_tool, synthetic_preprocessed, tiny_study_base
from dodo.cli import main



_tool = run_tool  # tests/python/cli_helpers.py


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


# --- the study scripts in tools/: their own options, and a config without growth labels -----------------

@pytest.mark.parametrize("name, args, named", [
    ("member_size_study.py", ["--members", "0"], "--members must be an integer >= 1; got 0"),
    ("member_size_study.py", ["--threads", "0"], "--threads must be an integer in [1, 1024]; got 0"),
    ("member_size_study.py", ["--variants", "abc"], "--variants: 'abc' is not WIDTH:DEPTH"),
    ("member_size_study.py", ["--variants", "8:0"], "--variants: '8:0' is not WIDTH:DEPTH"),
    ("image_mirror_study.py", ["--members", "-1"], "--members must be an integer >= 1; got -1"),
    ("growth_inputs_study.py", ["--width", "0"], "--width must be an integer >= 1; got 0"),
    ("growth_labels_study.py", ["--folds", "0", "9"], "--folds (a fold of the 5-fold split) must be an integer in [0, 4]"),
    ("growth_emu_axis_study.py", ["--members", "0"], "--members must be an integer >= 1; got 0"),
    ("growth_fit_study.py", ["--folds", "1"], "--folds must be an integer >= 2; got 1"),
    ("gate_study.py", ["--folds", "1"], "--folds must be an integer >= 2; got 1"),
    ("learned_gate_study.py", ["--oof", "unused.npz", "--epochs", "0"], "--epochs must be an integer >= 1; got 0"),
    ("learned_gate_study.py", ["--oof", "unused.npz", "--lambdas", "1", "nan"], "--lambdas must be a finite number >= 0"),
    ("noise_gate_study.py", ["--oof", "unused.npz", "--weights", "0", "-1"], "--weights must be a finite number >= 0"),
    ("noise_gate_study.py", ["--oof", "unused.npz", "--reference", "-1"], "--reference must be a finite number > 0"),
    ("noise_gate_study.py", ["--oof", "unused.npz", "--min-cut", "2"], "--min-cut must be a finite number >= 0 and <= 1"),
    ("noise_gate_study.py", ["--oof", "unused.npz", "--inner-folds", "1"], "--inner-folds must be an integer >= 2"),
    ("student_study.py", ["--threads", "0"], "--threads must be an integer in [1, 1024]; got 0"),
    ("student_study.py", ["--students", "8:x:0.5"], "--students: '8:x:0.5' is not WIDTH:STEPS:GROWTH_WEIGHT"),
])
def test_study_scripts_refuse_their_own_bad_options_in_one_line(ensemble_run, name, args, named):
    """Each ended, before this round, in a traceback after the table's read (torch's "stack expects a
    non-empty TensorList", "set_num_threads expects a positive integer", "random_ expects 'from' to be
    less than 'to'"), in a line naming no option ("invalid literal for int() with base 10: 'abc'", "need
    at least one array to concatenate"), with exit status 1 (`--variants 8:0`), or in a study of a NaN or
    negative gate setting whose gate the rule then "adopted". Now one line naming the option, exit 2."""
    _one_line_refusal(_tool(name, "--config", ensemble_run["config"], *args), named)


@pytest.mark.parametrize("name", ["growth_fit_study.py", "growth_inputs_study.py", "student_study.py"])
def test_growth_studies_refuse_a_config_without_growth_labels(ensemble_run, name):
    """`tools/growth_fit_study.py` ended in `NameError: name 'pool' is not defined` on every run, whatever
    its config (6206585 moved the split into `pool_folds` and left `pool` behind; the study of
    docs/training.md could not be rerun). Past that line, it and growth_inputs_study.py and
    student_study.py, given a config without growth.data, ended in "'NoneType' object is not
    subscriptable" (student_study.py after training an ensemble). Now one line naming the config."""
    _one_line_refusal(_tool(name, "--config", ensemble_run["config"]), ensemble_run["config"],
                      "growth.data is empty")


def test_noise_gate_study_refuses_states_of_one_file_in_one_line(ensemble_run, tmp_path):
    """The nested split of `--inner-folds` is by solver file: on a table whose states come from one file
    (a `dodo synth` database) a group trained on no state, `ZeroDivisionError: integer division or
    modulo by zero` after the table's read (tools/noise_gate_study.py, and learned_gate_study.py, which
    shares the code)."""
    oof = tmp_path / "oof.npz"
    saved = _tool("gate_study.py", "--config", ensemble_run["config"], "--folds", "2", "--save", oof)
    assert saved.returncode == 0, saved.stderr
    for name in ("noise_gate_study.py", "learned_gate_study.py"):
        _one_line_refusal(_tool(name, "--config", ensemble_run["config"], "--oof", oof),
                          "come from 1 solver file", "needs at least 2")


# --- --overwrite's help names the command's own outputs -------------------------------------------------

@pytest.mark.parametrize("command, says, absent", [("plot", "replace the -o file", "--json"),
                                                   ("evaluate", "replace the --json file", "plot"),
                                                   ("inspect", "replace the --json file", "plot"),
                                                   ("learning-curve", "replace the --json or --plot file", None)])
def test_overwrite_help_names_the_commands_own_outputs(capsys, command, says, absent):
    """`dodo plot --help` said --overwrite replaces "an output file (--json, plot)": plot has no --json;
    evaluate and inspect, which write no plot, said the same (one text for four commands)."""
    code, out, _ = run(capsys, [command, "--help"])
    assert code == 0
    text = " ".join(out.split("--overwrite ", 1)[1].split("\n  -", 1)[0].split())
    assert says in text, text
    assert absent is None or absent not in text, text
