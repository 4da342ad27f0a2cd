"""Outside probe, round seventeen (docs/reliability_python.md section 19): each test failed on the
code before its fix."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# --- Ctrl-C while the command imports its modules -----------------------------------------------

# A sitecustomize that sends the process SIGINT when a chosen module is about to be imported: the
# Ctrl-C arrives at a known point of the start-up, whatever the machine's speed.
_SIGINT_AT_IMPORT = textwrap.dedent("""
    import os, signal, sys

    class _InterruptAt:
        def find_spec(self, name, path=None, target=None):
            if name == os.environ["PROBE_SIGINT_AT"]:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None

    if os.environ.get("PROBE_SIGINT_AT"):
        sys.meta_path.insert(0, _InterruptAt())
""")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a terminal, whatever ran the tests


def _run_interrupted(tmp_path: Path, argv: list[str], module: str) -> subprocess.CompletedProcess:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SIGINT_AT_IMPORT)
    env = dict(os.environ, PROBE_SIGINT_AT=module,
               PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=_default_sigint)


def _console_script() -> str:
    script = Path(sys.executable).parent / "dodo"
    if not script.is_file():
        pytest.skip("no `dodo` console script beside this Python")
    return str(script)


# numpy and the compiled core: imported by dodo/__init__.py; dodo._closure by the package too;
# argparse: by dodo.cli, still before main(); dodo.score: inside main() (handled before the fix).
@pytest.mark.parametrize("module", ["numpy", "dodo._core", "dodo._closure", "argparse", "dodo.score"])
@pytest.mark.parametrize("launcher", ["console script", "python -m dodo", "python -X dev -m dodo.cli"])
def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(tmp_path, module, launcher):
    """A Ctrl-C before main() ran (the imports of numpy, the core, the CLI) printed a KeyboardInterrupt
    traceback from inside an import; now the same line as a Ctrl-C later, `dodo: interrupted`, exit 130."""
    command = [_console_script()] if launcher == "console script" else [sys.executable] + launcher.split()[1:]
    finished = _run_interrupted(tmp_path, command + ["info"], module)
    assert finished.returncode == 130, (finished.returncode, finished.stderr)
    assert "Traceback" not in finished.stderr, finished.stderr
    assert finished.stderr.strip().splitlines()[-1] in ("dodo: interrupted", "dodo info: interrupted"), finished.stderr
    assert finished.stdout == ""


def test_a_program_that_imports_dodo_still_gets_keyboard_interrupt(tmp_path):
    """The start-up handling is the command's alone: a program importing dodo sees its own
    KeyboardInterrupt, and after the import Python's SIGINT handler is in place."""
    program = ("import signal\ntry:\n    import dodo\nexcept KeyboardInterrupt:\n    print('caught')\n"
               "import dodo\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    finished = _run_interrupted(tmp_path, [sys.executable, "-c", program], "numpy")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["caught", "True"]
    # A script that happens to be called `dodo` is a program too.
    script = tmp_path / "dodo"
    script.write_text(program)
    finished = _run_interrupted(tmp_path, [sys.executable, str(script)], "numpy")
    assert finished.stdout.split() == ["caught", "True"], finished.stderr


def test_after_start_up_ctrl_c_unwinds_the_command_as_before(tmp_path):
    """main() puts Python's own handler back, so a later Ctrl-C is a KeyboardInterrupt that main()
    turns into its line (removing the temporaries of files being written)."""
    program = textwrap.dedent("""
        import signal, sys
        from dodo import cli
        def record(args):
            print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
            raise KeyboardInterrupt
        cli._info = record
        sys.exit(cli.main())
    """)
    script = tmp_path / "dodo"  # what pip writes for the entry point, with the command replaced
    script.write_text("import sys\nfrom dodo.cli import main\n" + program)
    finished = subprocess.run([sys.executable, str(script), "info"], capture_output=True, text=True, timeout=300,
                              preexec_fn=_default_sigint)
    assert finished.returncode == 130, finished.stderr
    assert finished.stdout.split() == ["True"]
    assert finished.stderr.strip() == "dodo info: interrupted"


# --- a config file that is not valid YAML, or not text ----------------------------------------

_NOT_YAML = {"unclosed bracket": "training:\n  epochs: [1\n", "tab indent": "training:\n\tepochs: 1\n",
             "unclosed flow": "a: [\n"}


@pytest.mark.parametrize("command", ["preprocess", "train", "train-ensemble"])
@pytest.mark.parametrize("case", sorted(_NOT_YAML))
def test_a_config_that_is_not_valid_yaml_is_one_line_with_its_line_and_column(tmp_path, capsys, command, case):
    """PyYAML's error text (five lines: a "while parsing" context, the problem, `in "<unicode string>"`,
    the source line and a caret) was printed as it is; now one line naming the file, the problem
    and where it is."""
    pytest.importorskip("yaml")
    from cli_helpers import refused

    config = tmp_path / "config.yaml"
    config.write_text(_NOT_YAML[case])
    line = refused(capsys, [command, "--config", str(config)], config, "not valid YAML", "at line ")
    assert "<unicode string>" not in line


@pytest.mark.parametrize("command", ["preprocess", "train", "train-ensemble", "simulate"])
def test_a_binary_config_or_states_file_is_named_in_its_one_line(tmp_path, capsys, command):
    """A config (or `dodo simulate --input` states file) that is not text gave "'utf-8' codec can't
    decode byte 0xff in position 0: invalid start byte", naming no file."""
    pytest.importorskip("yaml")
    if command == "simulate":
        pytest.importorskip("h5py")
    from cli_helpers import refused

    config = tmp_path / "config.yaml"
    config.write_bytes(b"\xff\xfe\x00training: {}\n")
    argv = ([command, str(tmp_path / "out.h5"), "--input", str(config), "-q"] if command == "simulate"
            else [command, "--config", str(config)])
    line = refused(capsys, argv, config, "not a text file")
    assert "codec" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# --- training.threads beyond any machine -------------------------------------------------------

@pytest.mark.parametrize("threads", ["100000", "1025"])
def test_train_refuses_a_thread_count_beyond_the_limit_instead_of_crashing(tmp_path, threads):
    """`dodo train` with training.threads 100000 reached torch.set_num_threads(100000) and the process
    ended in a segmentation fault (exit 139) after its error line; now refused like dodo's own
    `threads` (at most 1024) before anything runs: exit 2, one line naming the key."""
    pytest.importorskip("torch")
    pytest.importorskip("yaml")
    config = tmp_path / "model.yaml"
    config.write_text("training:\n  epochs: 1\n")
    finished = subprocess.run([sys.executable, "-m", "dodo", "train", "--config", str(config), "--set",
                               f"training.threads={threads}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
    lines = finished.stderr.strip().splitlines()
    assert finished.returncode == 2 and len(lines) == 1, (finished.returncode, finished.stderr)
    assert "training.threads must be an integer in [0, 1024]" in lines[0], lines[0]


def test_train_ensemble_refuses_a_thread_count_beyond_the_limit_instead_of_crashing(tmp_path):
    """`dodo train-ensemble --set ensemble.threads=100000` reached torch.set_num_threads(100000), a
    segmentation fault; now refused before the table is read: exit 2, one line naming the key."""
    pytest.importorskip("torch")
    pytest.importorskip("yaml")
    config = tmp_path / "ensemble.yaml"
    config.write_text("data:\n  path: missing.h5\nensemble:\n  members: 1\n")
    finished = subprocess.run([sys.executable, "-m", "dodo", "train-ensemble", "--config", str(config), "--set",
                               "ensemble.threads=100000"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = finished.stderr.strip().splitlines()
    assert finished.returncode == 2 and len(lines) == 1, (finished.returncode, finished.stderr)
    assert "threads must be an integer in [1, 1024]" in lines[0], lines[0]


# --- Closure(threads=1024) on a small machine ---------------------------------------------------

@pytest.mark.parametrize("model", [None, "box3d"])
def test_a_closure_starts_no_more_workers_than_the_cpus_allow(model):
    """Closure(threads=1024) started 1024 workers, each with its workspace made and touched at
    creation: ~5-17 s and ~1,000 idle threads on a 2-core machine, for no speed. Now at most the CPUs
    this process may run on (at least 64) are started; `threads` says how many; results unchanged."""
    import numpy as np

    import dodo
    import dodo._closure
    from dodo._box3d import _usable_cpus

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    cap = max(getattr(dodo._closure, "MIN_WORKER_CAP", 64), _usable_cpus())
    closure = dodo.Closure(model, threads=1024)
    assert 1 <= closure.threads <= cap, closure.threads
    assert f"threads={closure.threads}" in repr(closure)
    if cap >= 8:  # a count under the cap is started as asked
        assert dodo.Closure(model, threads=8).threads == 8
    rng = np.random.default_rng(17)
    F = np.zeros((3000, 6, 4))
    F[..., 0] = rng.uniform(0.1, 1.0, (3000, 6))
    F[..., 3] = rng.uniform(-0.5, 0.5, (3000, 6)) * F[..., 0]
    single = dodo.Closure(model, threads=1).apply(F)
    many = closure.apply(F)
    np.testing.assert_array_equal(many.F_pred, single.F_pred)
    np.testing.assert_array_equal(many.status, single.status)
    # The bound is on the workers started, not on what may be asked: above 1024 is still refused.
    with pytest.raises(ValueError, match=r"threads must be an integer in \[0, 1024\]"):
        dodo.Closure(model, threads=1025)


# --- dodo export reads the checkpoint once ------------------------------------------------------

def test_export_loads_an_ensemble_checkpoint_once(tmp_path, capsys, monkeypatch):
    """`dodo export` loaded an ensemble checkpoint twice, tensors and all: once to learn its kind,
    once to export it (a file replaced between the two was taken for one kind and exported as the
    other). The kind is now read from the checkpoint's pickle alone, which runs nothing in the file;
    the one full load is the export's, and the package is the same."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import dodo

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    from cli_helpers import run
    from test_score_and_ensemble import _tiny_ensemble

    from dodo.training.ensemble_train import EnsembleConfig, save_checkpoint

    ensemble, _ = _tiny_ensemble(steps=5)
    table = {"box3d": {"scheme": "pairwise", "form": "delta", "lebedev_order": 17, "z_method": "exact",
                       "max_flux_factor": 0.98}, "sha256": "0" * 64, "kind": "qke"}
    checkpoint = tmp_path / "ensemble.pt"
    save_checkpoint(ensemble, EnsembleConfig(width=16), table, np.arange(10), {}, str(checkpoint))
    loads = []
    original = torch.load

    def counting_load(f, *args, **kwargs):
        loads.append(str(f))
        return original(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    output = tmp_path / "ensemble.onnx"
    code, _, err = run(capsys, ["export", str(checkpoint), "-o", str(output), "--no-check"])
    assert code == 0, err
    assert loads.count(str(checkpoint)) == 1, loads
    assert dodo.Closure(str(output)).has_model


def test_the_one_read_of_a_checkpoint_runs_nothing_in_its_pickle(tmp_path, capsys):
    """The export's single read is the restricted load: a checkpoint whose pickle would call os.system
    is refused without running it, and so is a text file (one line, nothing written)."""
    import pickle
    import zipfile

    from cli_helpers import run

    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    archive = tmp_path / "crafted.pt"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("crafted/data.pkl", pickle.dumps({"kind": "density_residual_ensemble", "x": Planted()}))
    code, _, err = run(capsys, ["export", str(archive), "-o", str(tmp_path / "crafted.onnx")])
    assert code == 2 and not marker.exists(), err
    (tmp_path / "text.pt").write_text("not a checkpoint")
    code, _, err = run(capsys, ["export", str(tmp_path / "text.pt"), "-o", str(tmp_path / "text.onnx")])
    # Refused as what it is since round eighteen (it was "asks to run Python code ... not loaded").
    assert code == 2 and "not a checkpoint (it is a text file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.pt", "text.pt"]


# --- dodo apply -o is not replaced by a run that fails -----------------------------------------

def test_apply_that_can_score_no_cell_keeps_the_earlier_output(tmp_path, capsys):
    """`dodo apply DATA -o OUT` where no cell of DATA can be scored (all NaN, or all negative
    densities) wrote OUT first and then failed (exit 2): the earlier good OUT (an earlier `dodo apply
    -o` of real data, which the command replaces by design) was lost to a failing run. The check now
    comes before anything is computed or written."""
    h5py = pytest.importorskip("h5py")
    import dodo

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    from cli_helpers import digest, run

    validation = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    output = tmp_path / "cells.h5"
    code, _, err = run(capsys, ["apply", str(validation), "--grid", "2x4x4", "--model", "box3d", "-q",
                                "-o", str(output)])
    assert code == 0, err
    good = digest(output)
    for name, fill in (("nan.h5", np.nan), ("negative.h5", -1.0)):
        bad = tmp_path / name
        with h5py.File(bad, "w") as handle:
            handle["F4_initial(1|ccm)"] = np.full((32, 4, 2, 3), fill)
            handle["F4_final(1|ccm)"] = np.full((32, 4, 2, 3), fill)
        code, _, err = run(capsys, ["apply", str(bad), "--grid", "2x4x4", "--model", "box3d", "-q",
                                    "-o", str(output)])
        assert code == 2 and "can be scored" in err, err
        assert digest(output) == good
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- a report written to a full disk names its file ---------------------------------------------

def test_a_json_report_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    """`dodo score M DATA --json F` on a full disk said only `[Errno 28] No space left on device` (a
    failed write names no file); now the line names F. F keeps its earlier content, no temporary left."""
    pytest.importorskip("h5py")
    import errno

    import dodo._atomic
    from cli_helpers import run

    validation = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    report = tmp_path / "report.json"
    earlier = '{"dodo_report": "dodo score", "earlier": true}\n'  # round 25: a report of dodo score (was any JSON)
    report.write_text(earlier)

    def full_disk_write_text(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() that runs out of room

    monkeypatch.setattr(dodo._atomic.Path, "write_text", full_disk_write_text)
    code, _, err = run(capsys, ["score", "box3d", str(validation), "--bootstrap", "100", "--json", str(report)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "No space left on device" in lines[0] and str(report) in lines[0], lines[0]
    monkeypatch.undo()
    assert report.read_text() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


# --- an unknown option is reported by the subcommand that was run ------------------------------

@pytest.mark.parametrize("argv", [["reference", "--threads", "0"], ["info", "--bogus"],
                                  ["apply", "cells.h5", "--bogus"], ["score", "box3d", "a.h5", "--bogus"]])
def test_an_unknown_option_of_a_subcommand_shows_that_subcommands_usage(capsys, argv):
    """`dodo reference --threads 0` printed dodo's top-level usage (`usage: dodo [-h] [--version]
    COMMAND ...`) and `dodo: error: ...`, naming no option of the command run (left open in round
    fifteen); now that command's usage and `dodo reference: error: unrecognized arguments: ...`."""
    from cli_helpers import run

    code, _, err = run(capsys, argv)
    assert code == 2
    assert err.startswith(f"usage: dodo {argv[0]} "), err
    assert f"dodo {argv[0]}: error: unrecognized arguments: {' '.join(argv[-2:] if argv[-1] == '0' else argv[-1:])}" \
        in err, err


def test_an_unknown_option_before_any_subcommand_keeps_the_top_level_usage(capsys):
    from cli_helpers import run

    code, _, err = run(capsys, ["--bogus"])
    assert code == 2 and err.startswith("usage: dodo [-h]") and "dodo: error: unrecognized arguments: --bogus" in err


# --- dodo preprocess reruns when its output lies where its input pattern looks ------------------

def test_preprocess_reruns_when_its_input_pattern_matches_its_own_earlier_output(tmp_path, capsys):
    """`inputs: [data/*.h5]` with `output: data/pre.h5`: the first run worked and every rerun of the same
    command was refused ("output data/pre.h5 is the same file as the input data/pre.h5"), its own
    earlier output counted as an Emu input. Now that preprocessed file is left out of the inputs (it is
    never an Emu database) and replaced; an Emu database at the output path is still refused."""
    pytest.importorskip("h5py")
    pytest.importorskip("yaml")
    import shutil

    import h5py
    from cli_helpers import refused, run

    validation = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(validation, data / "emu.h5")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: ['{data}/*.h5']\noutput: '{data}/pre.h5'\n")
    for attempt in range(2):
        code, _, err = run(capsys, ["preprocess", "--config", str(config), "-q"])
        assert code == 0, (attempt, err)
        with h5py.File(data / "pre.h5") as handle:
            assert handle.attrs["format"].startswith("dodo-preprocessed")
            assert json.loads(handle.attrs["sources"])[0]["path"].endswith("emu.h5")
            assert len(json.loads(handle.attrs["sources"])) == 1
    # The output path naming the Emu input itself is refused as before.
    config.write_text(f"inputs: ['{data}/*.h5']\noutput: '{data}/emu.h5'\n")
    refused(capsys, ["preprocess", "--config", str(config), "-q", "--overwrite"], "same file as the input")
