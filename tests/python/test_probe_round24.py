"""Outside probe, round twenty-four (docs/reliability_python.md, section 26): each test failed on
the code before its fix, except where its docstring says otherwise."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cli_helpers import digest, refused, refused_then_replaced_with_overwrite, run

REPO = Path(__file__).resolve().parents[2]
EMU = REPO / "tests/data/qke/emu_1d_validation.h5"
SCORE = ["score", "box3d", str(EMU), "--bootstrap", "100"]

#: Files a mistyped `--json PATH` may name: none is a report, each was replaced by one.
NOT_REPORTS = {
    "notes.txt": b"results of the 3 December run, to keep\n",
    "model.yaml": b"training:\n  lr: 1.0e-3\n  epochs: 40\n",
    "run.sh": b"#!/bin/sh\ndodo score default data.h5\n",
    "latin1.txt": "d\xe9j\xe0 vu\n".encode("latin-1"),
}


# --- a JSON report written over a file that is not a report -----------------------------------------

@pytest.mark.parametrize("name", sorted(NOT_REPORTS))
def test_score_json_does_not_replace_a_file_that_is_not_a_report(tmp_path, capsys, name):
    """`dodo score M DATA --json notes.txt` (a YAML config, a script: any path given by mistake)
    replaced that file with the JSON report, exit 0: only HDF5 files, checkpoints and model packages
    were kept. Now one line, exit 2, the file untouched; --overwrite replaces it."""
    pytest.importorskip("h5py")
    target = tmp_path / name
    target.write_bytes(NOT_REPORTS[name])
    report = refused_then_replaced_with_overwrite(capsys, SCORE, target, "not a JSON document")
    assert report["n_states"] == 32


def test_score_json_still_replaces_an_earlier_report(tmp_path, capsys):
    """The other side: a rerun writes over its own earlier report (marked, or unmarked as written
    before round 25: known by its keys) or an empty file (mktemp) without --overwrite, as before;
    data stays refused even with the new --overwrite (that last call is a usage error on the code
    before, which had no such option). Round 25: any other JSON document is no longer replaced
    (test_probe_round25.py); the JSON contents here were '{"n_states": 1}' and "[1, 2]"."""
    pytest.importorskip("h5py")
    report = tmp_path / "report.json"
    unmarked = {"n_states": 1, "model": {}, "box3d": {}, "difference": {}, "per_state": {}}
    for content in (None, json.dumps(unmarked), ""):
        if content is not None:
            report.write_text(content)
        code, _, err = run(capsys, [*SCORE, "--json", str(report)])
        assert code == 0, err
        assert json.loads(report.read_text())["n_states"] == 32
    data = tmp_path / "copy.h5"
    data.write_bytes(EMU.read_bytes())
    refused(capsys, [*SCORE, "--json", str(data), "--overwrite"], data, "Emu database")
    assert digest(data) == digest(EMU)


def test_validate_json_does_not_replace_a_file_that_is_not_a_report(tmp_path, capsys, tiny_nsm1_reference):
    """`python -m dodo.qke.validate nsm1 --json notes.txt`: the file replaced by the report, exit 0.
    Now refused before any run, one line, exit 2; an earlier report is still replaced."""
    from dodo.qke.validate import main

    target = tmp_path / "notes.txt"
    target.write_bytes(NOT_REPORTS["notes.txt"])
    before = digest(target)
    argv = ["nsm1", "--reference", str(tiny_nsm1_reference), "--box3d-cases", "", "--json", str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a JSON document" in lines[0] and str(target) in lines[0], err
    assert digest(target) == before

    report = tmp_path / "report.json"  # an earlier nsm1 report, unmarked as before round 25 (was "{}")
    report.write_text('{"runs": [], "emu_densities_over_ntot": {}}')
    argv[-1] = str(report)
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["runs"] != []


# --- dodo.cli.main and with_guarded_stdout: one handling of standard output -----------------------------

def test_main_guards_standard_output_through_the_shared_helper(capsys, monkeypatch):
    """Review item, not a defect of released code: `main` repeated `with_guarded_stdout`'s
    BrokenPipeError / StandardOutputError tail and now calls it (on the code before, the spy sees
    no call). The behaviour is pinned as before: an error writing standard output is one line
    naming the subcommand, exit 2; a reader that went away is 141, quietly."""
    import dodo.cli as cli

    calls = []
    real = cli.with_guarded_stdout

    def spy(name, call):
        calls.append(name)
        return real(name, call)

    monkeypatch.setattr(cli, "with_guarded_stdout", spy)
    import dodo._stdout_guard as guard

    monkeypatch.setattr(guard, "_silence_stdout", lambda: None)  # the test runner's own descriptor 1 stays

    class Failing:
        def __init__(self, error):
            self.error = error

        def write(self, text):
            raise self.error

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Failing(OSError(28, "No space left on device")))
    assert cli.main(["reference"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "dodo reference: error: cannot write to standard output: No space left on device", err
    monkeypatch.setattr(sys, "stdout", Failing(BrokenPipeError(32, "Broken pipe")))
    assert cli.main(["reference"]) == 141
    assert capsys.readouterr().err == ""
    assert len(calls) == 2


# --- scripts/qke_campaign.sh: a chunk's path read as Python source -------------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="the campaign scripts are bash scripts for Linux")
def test_campaign_rerun_skips_a_complete_chunk_in_a_directory_named_with_an_apostrophe(tmp_path):
    """`DODO_CAMPAIGN_DIR="runs/o'brien" bash scripts/qke_campaign.sh 1 PLAN`, run again once its
    chunk was complete: the completeness check put the chunk's path into Python source
    (`h5py.File('$out')`), a SyntaxError for a path with an apostrophe, read as "not complete", so
    `dodo simulate` was started onto the complete database, refused it, and the rerun failed
    (exit 123) instead of skipping it. Now the path is passed as an argument (the same in
    scripts/relabel_growth.sh)."""
    import os
    import subprocess

    pytest.importorskip("h5py")
    directory = tmp_path / "o'brien"
    directory.mkdir()
    plan = tmp_path / "plan.txt"
    plan.write_text("emu 2 1\n")
    environment = {**os.environ, "DODO_CAMPAIGN_DIR": str(directory), "DODO_CAMPAIGN_NICE": "0",
                   "DODO_CAMPAIGN_ARGS": "--ncell 16 --nphi 8", "DODO_VENV": sys.prefix}
    for attempt in range(2):
        result = subprocess.run(["bash", str(REPO / "scripts/qke_campaign.sh"), "1", str(plan)], env=environment,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (attempt, result.stderr)
        assert (directory / "emu_seed2.h5").is_file()
    assert "failed" not in result.stderr and "complete solver database" not in result.stderr, result.stderr


# --- scripts/main_job.sh with a relative DODO_VENV ---------------------------------------------------

def test_main_job_runs_with_a_relative_venv_path(tmp_path):
    """`DODO_VENV=.venv bash scripts/main_job.sh` (the default, spelt relative; every script reads
    DODO_VENV from the repository root): the venv was set up and step 1 ran, then step 2 changed
    into the work directory and `.venv/bin/dodo` named nothing there: `No such file or directory`,
    exit 127, after the whole install. Now a relative DODO_VENV is taken from the repository root
    throughout. (A stand-in venv whose python and dodo do nothing, as in test_probe_round22.py.)"""
    import os
    import subprocess

    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "dodo"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    relative = os.path.relpath(tmp_path / "venv", REPO)
    environment = {**os.environ, "DODO_VENV": relative, "DODO_MAIN_JOB_DIR": str(tmp_path / "work")}
    result = subprocess.run(["bash", str(REPO / "scripts" / "main_job.sh")], capture_output=True, text=True,
                            env=environment, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== 4." in result.stdout


@pytest.mark.parametrize("argv", [
    ["evaluate", "missing.pt", "--data", "missing.h5"],
    ["inspect", "missing.pt", "--data", "missing.h5"],
    ["learning-curve", "--config", str(REPO / "training/configs/ensemble_default.yaml"), "--sizes", "500"],
], ids=["evaluate", "inspect", "learning-curve"])
def test_training_commands_json_does_not_replace_a_file_that_is_not_a_report(tmp_path, capsys, argv):
    """Round 24 left `dodo evaluate`, `dodo inspect` and `dodo learning-curve` replacing a text file
    given as --json (training code was being edited then); they refuse it as `dodo score` does,
    before any work, the file untouched."""
    target = tmp_path / "notes.txt"
    target.write_bytes(NOT_REPORTS["notes.txt"])
    before = digest(target)
    refused(capsys, [*argv, "--json", str(target)], target, "not a JSON document")
    assert digest(target) == before
