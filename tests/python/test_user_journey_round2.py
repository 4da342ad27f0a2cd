"""A new user's journey from a fresh clone, round two (outside probe): training one's own model on
one's own Emu-layout database and using it from Python, C and the command line; the Julia
interface read against the C API; the subcommands' --help.

- `dodo apply FILE` on a database of fewer states than the default 16x16x16 grid said "db.h5 holds 7
  cells; the grid needs 4096 (--grid 16x16x16)" and stopped there, and `dodo apply --help` said nothing
  of which cells fill the grid: the message now names a grid that fits (`--grid 1x1x7`), the help
  says the first NX*NY*NZ states are laid on the grid.
- `dodo apply --model PACKAGE` printed "ONNX Runtime 1.32.0" where the package's network runs on
  Dodo's own kernels (every distilled ensemble, the default model): it now says so.
- docs/training.md had no way through `dodo train-ensemble` on a database of one's own: the shipped
  config reads three inputs of Dodo's own campaign (growth.data, noise.oof, distill.sampled_states)
  and stopped at "growth calibration: only 7 training states carry ... (need >= 20)" or "cannot read
  training/out_of_fold/gate_oof_36101.npz: no such file". The new section's commands run as written.
- julia/README.md told the user to `pip install` the bare name (another project on the package index)
  and to rely on `python3 -m dodo`, which is the system Python's unless the venv is activated.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dodo

ROOT = Path(__file__).resolve().parents[2]
EMU_FILE = ROOT / "tests" / "data" / "qke" / "emu_1d_validation.h5"  # 32 real Emu runs
TIMEOUT_S = 600  # a hang guard only


def _dodo(*args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dodo", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


# --- dodo apply -------------------------------------------------------------------------------------


def test_apply_on_a_file_smaller_than_the_default_grid_names_a_grid_that_fits(tmp_path):
    pytest.importorskip("h5py")
    shutil.copy(EMU_FILE, tmp_path / "mine.h5")
    refused = _dodo("apply", "mine.h5", "--model", "box3d", "-q", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert ("mine.h5 holds 32 cells; the grid needs 4096 (--grid 16x16x16); give a grid of at most 32 cells, "
            "e.g. --grid 1x1x32") in refused.stderr, refused.stderr
    suggested = _dodo("apply", "mine.h5", "--model", "box3d", "--grid", "1x1x32", cwd=tmp_path)
    assert suggested.returncode == 0, suggested.stderr
    assert suggested.stdout.startswith("closure on a 1x1x32 grid (32 cells from mine.h5), fluid speeds up to 0.3")


def test_apply_help_says_which_cells_fill_the_grid(tmp_path):
    result = _dodo("apply", "--help", cwd=tmp_path)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert "Lay the first NX*NY*NZ states of an Emu-format file" in text, text
    assert "--grid 1x1xN for a file of N" in text, text


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_apply_says_which_evaluator_runs_the_network(tmp_path):
    pytest.importorskip("h5py")
    env = {key: value for key, value in os.environ.items() if key != "DODO_NETWORK_EVALUATOR"}
    native = _dodo("apply", EMU_FILE, "--grid", "1x1x4", "--threads", "1", cwd=tmp_path, env=env)
    assert native.returncode == 0, native.stderr
    (line,) = [line for line in native.stdout.splitlines() if line.startswith("model: ")]
    assert "network on Dodo's native evaluator (ONNX Runtime " in line and "checked it at load)" in line, line
    graph = _dodo("apply", EMU_FILE, "--grid", "1x1x4", "--threads", "1", cwd=tmp_path,
                  env={**env, "DODO_NETWORK_EVALUATOR": "onnxruntime"})
    assert graph.returncode == 0, graph.stderr
    (line,) = [line for line in graph.stdout.splitlines() if line.startswith("model: ")]
    assert "; ONNX Runtime " in line and "native" not in line, line


# --- docs/training.md: the default model's recipe on one's own database ------------------------------


def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    assert heading in text, f"{path.relative_to(ROOT)} has no section {heading!r}"
    start = text.index(heading)
    following = text.find("\n## ", start + len(heading))
    return text[start:following if following >= 0 else len(text)]


def _commands(block: str) -> list[list[str]]:
    import shlex

    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_the_ensemble_recipe_on_ones_own_database_runs_as_documented(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("h5py")
    pytest.importorskip("onnx")
    section = _section(ROOT / "docs" / "training.md",
                       "## Your own database with the default model's recipe (`dodo train-ensemble`)")
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    trial = re.search(r"A trial of seconds, to see the pipeline through before a real run, adds `([^`]*)`",
                      " ".join(section.split()))
    assert trial, section
    shutil.copy(EMU_FILE, tmp_path / "your_emu_file.h5")
    config = tmp_path / "pre.yaml"
    config.write_text((ROOT / "training" / "configs" / "pre_process.yaml").read_text()
                      .replace("  - data/*.h5", "  - your_emu_file.h5")
                      .replace("output: pdata/preprocessed_all.h5", "output: pdata/mine.h5"))
    prepared = _dodo("preprocess", "--config", config, "-q", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    commands = _commands(block)
    assert [command[:2] for command in commands] == [["dodo", "train-ensemble"], ["dodo", "export"], ["dodo", "score"]]
    for command in commands:
        arguments = [str(ROOT / argument) if argument.startswith("training/configs/") else argument
                     for argument in command[1:]]
        if arguments[0] == "train-ensemble":
            arguments += trial.group(1).split()
        result = _dodo(*arguments, cwd=tmp_path)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    assert "dodo score: mine.onnx on your_emu_file.h5 (32 states" in result.stdout, result.stdout
    closure = dodo.Closure(str(tmp_path / "mine.onnx"), threads=1)
    assert closure.optional_outputs == ["uncertainty", "log_growth_ratio"]


def test_training_readme_points_own_data_to_the_ensemble_section():
    text = " ".join((ROOT / "training" / "README.md").read_text(encoding="utf-8").split())
    assert "docs/training.md, \"Your own database with the default model's recipe\"" in text


# --- julia/ ------------------------------------------------------------------------------------------


BARE_INSTALL = re.compile(r"pip install dodo(?![\w.\[/'\"-])")


def test_no_install_instruction_names_the_bare_project():
    """`pip install dodo` fetches another project from the package index (round one fixed `dodo[...]`)."""
    places = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "julia").rglob("*"),
              *(ROOT / "examples").rglob("*"), *(ROOT / "training").glob("*.md")]
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for path in places if path.is_file() and not path.name.startswith("reliability_")
                 for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if BARE_INSTALL.search(line)]
    assert not offenders, offenders


def test_julia_readme_names_the_library_without_an_activated_venv(tmp_path):
    """The README's DODO_LIBRARY line, with this interpreter for `.venv/bin/python`, names libdodo."""
    text = (ROOT / "julia" / "README.md").read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith("export DODO_LIBRARY=")]
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")  # a link would leave the venv
    venv_python.chmod(0o755)
    result = subprocess.run(["bash", "-c", f"{line} && printf %s \"$DODO_LIBRARY\""], capture_output=True,
                            text=True, cwd=tmp_path, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    if dodo.runtime_available():
        assert Path(result.stdout).is_file() and Path(result.stdout).name == "libdodo.so", result.stdout


# Dodo.jl is not run here (no Julia on these machines): its ccall signatures and struct layouts are
# compared with dodo.h by reading both, argument by argument, in kinds of C type.
_C_KINDS = {"int": "i32", "dodo_status": "i32", "size_t": "size", "double": "f64", "long": "long",
            "void": "void", "uint64_t": "u64", "uint32_t": "u32"}
_JULIA_KINDS = {"Cint": "i32", "Csize_t": "size", "Cdouble": "f64", "Clong": "long", "Cvoid": "void",
                "UInt64": "u64", "UInt32": "u32", "Cstring": "ptr"}


def _c_kind(declaration: str) -> str:
    declaration = declaration.replace("const ", "").strip()
    if "*" in declaration:
        return "ptr"
    return _C_KINDS[declaration.split()[0]]


def _julia_kind(type_: str) -> str:
    type_ = type_.strip()
    if type_.startswith(("Ptr{", "Ref{")):
        return "ptr"
    return _JULIA_KINDS[type_]


def _c_prototypes() -> dict[str, list[str]]:
    header = (ROOT / "cpp" / "include" / "dodo" / "dodo.h").read_text(encoding="utf-8")
    header = re.sub(r"/\*.*?\*/", " ", header, flags=re.S)
    prototypes = {}
    for returned, name, arguments in re.findall(r"DODO_API\s+([\w\s\*]+?)\s*\**\s*(dodo_\w+)\s*\(([^)]*)\)\s*;",
                                                header):
        star = re.search(rf"DODO_API\s+{re.escape(returned)}\s*(\*?)\s*{name}\b", header).group(1)
        kinds = [] if arguments.strip() == "void" else [_c_kind(argument) for argument in arguments.split(",")]
        prototypes[name] = ["ptr" if star else _c_kind(returned)] + kinds
    return prototypes


def _c_struct(header: str, name: str) -> list[str]:
    body = re.search(rf"typedef struct {name} \{{(.*?)\}} {name};", header, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", " ", body, flags=re.S)
    return [_c_kind(field.rsplit(None, 1)[0] + (" *" if "*" in field else "")) for field in body.split(";")
            if field.strip()]


def _julia_struct(source: str, name: str) -> list[str]:
    body = re.search(rf"struct {name}\n(.*?)\nend", source, re.S).group(1)
    return [_julia_kind(line.split("#")[0].split("::")[1]) for line in body.splitlines() if "::" in line]


def test_julia_ccalls_match_the_c_header():
    prototypes = _c_prototypes()
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "julia" / "src").glob("*.jl"))
    calls = re.findall(r"ccall\(\(:(dodo_\w+),\s*[\w.()]+\),\s*([\w{}]+),\s*\(([^()]*(?:\([^()]*\))?[^()]*)\)",
                       source)
    assert len(calls) >= 12, calls
    for name, returned, arguments in calls:
        assert name in prototypes, f"Dodo.jl calls {name}, which dodo.h does not declare"
        julia = [_julia_kind(returned)] + [_julia_kind(argument) for argument in arguments.split(",")
                                           if argument.strip()]
        assert julia == prototypes[name], f"{name}: Dodo.jl {julia}, dodo.h {prototypes[name]}"
    header = (ROOT / "cpp" / "include" / "dodo" / "dodo.h").read_text(encoding="utf-8")
    assert _julia_struct(source, "Options") == _c_struct(header, "dodo_options")
    assert _julia_struct(source, "Counters") == _c_struct(header, "dodo_counters")
