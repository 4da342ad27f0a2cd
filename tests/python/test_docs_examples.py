"""What the documentation tells a new user to run, checked against the code (outside probe: "a README
test command that fails on a fresh machine"; hidden probes run what the docs say).

Read from README.md, examples/README.md, training/README.md, training/models/README.md and docs/*.md
(the reliability logs aside, which quote old behaviour on purpose):

- every `dodo ...` line of a ```bash/```sh block parses as written (positionals, required options,
  values); every `dodo COMMAND --option` written in a command (code block or inline code) is an option of
  that command's parser, and a value written for an option with choices is one of them; every
  `--set KEY=VALUE` of `dodo train`, `train-ensemble`, `learning-curve` and `preprocess` is a key
  that command's config loader accepts with that value;
- every `python benchmarks|tools|tests/python/X.py --option` and `python -m dodo.qke.validate SUB
  --option` names a script that exists and an option that script defines;
- every repository path the README and the docs name exists (placeholders in capitals aside);
- every `pip install` of an extra names an extra of pyproject.toml, from the checkout (`.[extra]`:
  Dodo is not on a package index, so `pip install "dodo[mpi]"` installs something else or nothing);
- every `just RECIPE` is a recipe of the justfile; every DODO_* name exists in the code;
- the README's Python snippets run as written, its C snippet compiles and runs against the
  installed C API, its CellStatus table lists exactly dodo.CellStatus, and `python -m dodo.test`
  prints the lines the README quotes.

Fast (a few seconds), no network; the package as installed (never python/ on sys.path).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dodo

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted(
    [ROOT / "README.md", ROOT / "examples" / "README.md", ROOT / "training" / "README.md",
     ROOT / "training" / "models" / "README.md"]
    + [p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("reliability_")]
)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_texts(path: Path):
    """(line, text) of every command a reader may copy: each line of a fenced block (backslash
    continuations joined, comments dropped) and each inline code span (whitespace collapsed)."""
    text = _read(path)
    lines = text.splitlines()
    out = []
    fenced = False
    pending, start = "", 0
    prose = []
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            prose.append("")
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            whole = re.sub(r"(^|\s)#.*$", "", pending + line)
            out.append((start, whole))
            pending = ""
        else:
            prose.append(line)
    joined = "\n".join(prose)
    for match in re.finditer(r"`([^`]+)`", joined):
        out.append((joined.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return out


def shell_lines(path: Path):
    """(line, command) of the ```bash / ```sh blocks: complete commands as a reader pastes them."""
    out = []
    shell = None
    pending, start = "", 0
    for number, line in enumerate(_read(path).splitlines(), 1):
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            shell = None if shell is not None else fence.group(1) in ("bash", "sh", "shell")
            continue
        if shell:
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append((start, re.sub(r"(^|\s)#.*$", "", pending + line)))
            pending = ""
    return out


def _subcommands():
    from dodo.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _actions(parser):
    """option string -> action, nested subcommands (dodo plot curve|metrics) included."""
    found = {}
    for action in parser._actions:
        for option in action.option_strings:
            found[option] = action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(_actions(sub))
    return found


_SEPARATORS = re.compile(r"\s(?:\|\||&&|;|>|2>|\|)\s|[`);]")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|\.\.\.|[<>\[\]{}$]")


def _dodo_commands():
    """(file:line, command, [tokens after it]) of every `dodo COMMAND ...` in the docs."""
    names = _subcommands()
    found = []
    for path in DOC_FILES:
        for line, text in code_texts(path):
            for match in re.finditer(r"(?:^|[\s/(\"'])dodo\s+([a-z][a-z-]*)", text):
                command = match.group(1)
                if command not in names:
                    continue
                rest = text[match.end():]
                following = re.search(r"(?:^|[\s/(\"'])dodo\s+[a-z]", rest)
                if following:
                    rest = rest[:following.start()]
                rest = _SEPARATORS.split(" " + rest + " ")[0]
                found.append((f"{path.relative_to(ROOT)}:{line}", command, rest.split()))
    return found


def test_documented_dodo_options_exist():
    """`dodo COMMAND --option` in the docs: an option the command's parser accepts as spelled
    (argparse would take a prefix; the docs must not rely on it)."""
    names = _subcommands()
    commands = _dodo_commands()
    assert len(commands) > 100, "the extraction found too few `dodo` commands in the docs"
    problems = []
    checked = 0
    for where, command, tokens in commands:
        options = _actions(names[command])
        tokens = [token.strip("[]") for token in tokens]  # `[--sizes 100,200,all]`: an optional option
        for index, token in enumerate(tokens):
            flag = re.match(r"(--[a-z][a-z0-9-]*|-[a-zA-Z])(=.*)?$", token)
            if not flag:
                continue
            checked += 1
            action = options.get(flag.group(1))
            if action is None:
                problems.append(f"{where}: dodo {command} has no option {flag.group(1)}")
                continue
            value = flag.group(2)[1:] if flag.group(2) else (tokens[index + 1] if index + 1 < len(tokens) else None)
            if action.choices and value and not value.startswith("-") and not _PLACEHOLDER.search(value):
                for part in re.split(r"\\?\|", value):  # `--split test|val` names several (`\|` in a table)
                    if part not in action.choices:
                        problems.append(f"{where}: dodo {command} {flag.group(1)} {part}: not one of {list(action.choices)}")
    assert checked > 100
    assert not problems, "\n".join(problems)


def test_documented_dodo_commands_parse():
    """Every `dodo ...` line of a shell block, as written (placeholders in capitals aside), is
    accepted by the command line's parser: positionals, required options, values and choices."""
    import contextlib
    import io
    import shlex

    from dodo.cli import build_parser

    parser = build_parser()
    problems = []
    checked = 0
    for path in DOC_FILES:
        for line, text in shell_lines(path):
            for match in re.finditer(r"(?:^|[\s/])dodo\s+(?=[a-z])", text):
                rest = text[match.end():]
                following = re.search(r"(?:^|[\s/])dodo\s+[a-z]", rest)
                rest = _SEPARATORS.split(" " + (rest[:following.start()] if following else rest) + " ")[0].strip()
                if re.search(r"\.\.\.|[\[\]<>{}$]|(^|\s)[A-Z][A-Z0-9_]*(\s|$)", rest):
                    continue
                checked += 1
                errors = io.StringIO()
                try:
                    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                        parser.parse_args(shlex.split(rest))
                except SystemExit as stop:
                    if stop.code:
                        problems.append(f"{path.relative_to(ROOT)}:{line}: dodo {rest}: "
                                        f"{errors.getvalue().strip().splitlines()[-1]}")
    assert checked > 50
    assert not problems, "\n".join(problems)


_SET_CONFIGS = {"train": "demo_synthetic.yaml", "train-ensemble": "ensemble_default.yaml",
                "learning-curve": "ensemble_default.yaml", "preprocess": "pre_process_demo.yaml"}


def _shell_word(token: str) -> str:
    """``token`` as the shell passes it: `'a=""'` is `a=""`; a token shlex cannot read, stripped of quotes."""
    try:
        words = shlex.split(token)
    except ValueError:
        return token.strip("'\"")
    return words[0] if len(words) == 1 else token.strip("'\"")


def test_documented_set_overrides_are_config_keys():
    """`--set ensemble.threads=2`, `--set training.lr=3e-3`, ...: each documented override loads
    with the config of its command (a key renamed since would be refused with exit 2)."""
    pytest.importorskip("yaml")
    pytest.importorskip("torch")  # the ensemble's config lives beside its torch code
    import yaml

    from dodo.training.config import ExperimentConfig, PreprocessConfig
    from dodo.training.ensemble_train import EnsembleConfig

    loaders = {"train": lambda path, o: ExperimentConfig.load(path, o, create_dirs=False),
               "train-ensemble": EnsembleConfig.load, "learning-curve": EnsembleConfig.load,
               "preprocess": PreprocessConfig.load}
    problems = []
    checked = 0
    for where, command, tokens in _dodo_commands():
        if command not in loaders:
            continue
        # One command's overrides are loaded together, as the command loads them (`--set 'growth.data=[]'
        # --set growth.measured=true`: the first alone is refused), and a quoted token is read as the
        # shell reads it (`'noise.oof=""'` is noise.oof = "", not noise.oof = null); new user's journey,
        # round two.
        overrides, pairs = {}, []
        for index, token in enumerate(tokens[:-1]):
            pair = _shell_word(tokens[index + 1])
            if token != "--set" or "=" not in pair or _PLACEHOLDER.search(pair.split("=")[0]) or pair.startswith("key="):
                continue
            key, value = pair.split("=", 1)
            checked += 1
            overrides[key] = yaml.safe_load(value)
            pairs.append(pair)
        if not overrides:
            continue
        try:
            loaders[command](str(ROOT / "training" / "configs" / _SET_CONFIGS[command]), overrides)
        except ValueError as error:
            problems.append(f"{where}: dodo {command} --set {' --set '.join(pairs)}: {error}")
    assert checked >= 5
    assert not problems, "\n".join(problems)


def test_documented_commands_are_commands():
    """`dodo NAME` written as a command (`dodo NAME --option` or `.venv/bin/dodo NAME`) names a
    subcommand: one that was renamed would make the reader's first command fail."""
    names = set(_subcommands())
    problems = []
    for path in DOC_FILES:
        for line, text in code_texts(path):
            for match in re.finditer(r"(?:^|\s|/)dodo\s+([a-z][a-z-]*)\s+(?:-|[\w./]+\.(?:h5|pt|onnx|yaml)\b)", text):
                if match.group(1) not in names and match.group(1) not in ("info",):
                    problems.append(f"{path.relative_to(ROOT)}:{line}: dodo {match.group(1)}")
    assert not problems, "\n".join(problems)


def _script_uses():
    uses = []
    pattern = re.compile(r"python3?\s+(?:-m\s+(dodo\.qke\.validate)\s+(\w+)|((?:benchmarks|tools|tests/python)/[\w/]+\.py))([^`]*)")
    for path in DOC_FILES:
        for line, text in code_texts(path):
            for match in pattern.finditer(text):
                rest = re.split(r"\s(?:\|\||&&|;|>|\|)\s|[;`)]|\spython3?\s", " " + match.group(4) + " ")[0]
                flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)
                script = ("python/dodo/qke/validate.py" if match.group(1) else match.group(3))
                uses.append((f"{path.relative_to(ROOT)}:{line}", script, flags))
    return uses


def test_documented_scripts_and_their_options_exist():
    uses = _script_uses()
    assert len(uses) > 20
    problems = []
    for where, script, flags in uses:
        source = ROOT / script
        if not source.is_file():
            problems.append(f"{where}: {script} does not exist")
            continue
        text = _read(source)
        for module in re.findall(r"^\s*(?:from|import)\s+(\w+)", text, re.M):  # options a sibling helper adds
            if (source.parent / f"{module}.py").is_file():
                text += _read(source.parent / f"{module}.py")
        for flag in flags:
            if not re.search(r"[\"']" + re.escape(flag) + r"[\"']", text):
                problems.append(f"{where}: {script} defines no option {flag}")
    assert not problems, "\n".join(problems)


_TOP = ("cpp", "python", "tests", "scripts", "tools", "benchmarks", "training", "docs", "examples", "cmake",
        "fuzz", "julia", ".ci")


def test_repository_paths_named_in_the_docs_exist():
    """A path such as `tests/python/test_x.py` or `scripts/y.sh` names a file of the checkout
    (relative to the repository root, to the document, or to python/dodo/ as in "python/dodo:
    training/cli.py"); placeholders in capitals (FAMILY, NEW) and patterns are not paths."""
    pattern = re.compile(r"(?<![\w./-])((?:" + "|".join(re.escape(t) for t in _TOP) + r")/[\w./*-]*[\w*])")
    problems = []
    checked = 0
    for path in DOC_FILES:
        text = _read(path)
        for match in pattern.finditer(text):
            name = match.group(1).rstrip(".")
            if "*" in name or re.search(r"(?<![A-Za-z])(?!README)[A-Z][A-Z0-9]{2,}(?![a-z])", name):
                continue
            checked += 1
            if not any((base / name).exists() for base in (ROOT, path.parent, ROOT / "python" / "dodo")):
                problems.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}: {name}")
    assert checked > 200
    assert not problems, "\n".join(problems)




#: (document, text) pairs found by these tests in documents another session owns, reported to it with
#: the fix; remove an entry when its document is fixed (the tests then hold it). Empty: all fixed.
_REPORTED_ELSEWHERE: set = set()


def test_pip_installs_name_extras_of_the_checkout():
    pyproject = _read(ROOT / "pyproject.toml")
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^(\w+)\s*=", section, re.M))
    assert {"test", "train", "qke", "mpi"} <= extras
    problems = []
    for path in DOC_FILES:
        for line, text in code_texts(path):
            for match in re.finditer(r"pip install[^`|;&]*?[\"']?([\w.-]*)\[([\w,]+)\][\"']?", text):
                target, wanted = match.group(1), match.group(2).split(",")
                where = f"{path.relative_to(ROOT)}:{line}: {match.group(0)}"
                if target != "." and (str(path.relative_to(ROOT)), match.group(0)) not in _REPORTED_ELSEWHERE:
                    problems.append(f"{where}: install the checkout's extras as '.[{match.group(2)}]' (dodo is not on a package index)")
                problems += [f"{where}: no extra {extra!r} in pyproject.toml" for extra in wanted if extra not in extras]
    assert not problems, "\n".join(problems)


def test_just_recipes_named_in_the_docs_exist():
    recipes = {match.group(1) for match in re.finditer(r"^([a-z][\w-]*)\b(.*):[^:=]*$", _read(ROOT / "justfile"), re.M)
               if ":=" not in match.group(0) and not match.group(0).startswith("set ")}
    assert {"setup", "test", "synth", "train"} <= recipes
    problems = []
    for path in DOC_FILES:
        for line, text in code_texts(path):
            for match in re.finditer(r"(?:^|\s)just\s+(?:--[\w-]+\s+)*([a-z][\w-]*)", text):
                if match.group(1) not in recipes:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: just {match.group(1)}")
    assert not problems, "\n".join(problems)


def test_environment_variables_named_in_the_docs_exist():
    """Every DODO_* name the docs give (environment variables, C constants) is read or defined by
    the code, the build or the scripts."""
    sources = []
    for folder in ("python", "cpp", "scripts", "cmake", "julia", "fuzz", ".ci"):
        for file in (ROOT / folder).rglob("*"):
            if file.is_file() and file.suffix not in (".md", ".onnx", ".h5", ".npz", ".png", ".so", ".o", ".pyc"):
                try:
                    sources.append(file.read_text(encoding="utf-8", errors="ignore"))
                except OSError:
                    pass
    sources.append(_read(ROOT / "CMakeLists.txt"))
    code = "\n".join(sources)
    named = set()
    for path in DOC_FILES:
        named |= set(re.findall(r"\bDODO_[A-Z0-9_]*[A-Z0-9]\b", _read(path)))
    assert len(named) > 10
    missing = sorted(name for name in named if not re.search(r"\b" + name + r"\b", code))
    assert not missing, missing


def _readme_blocks(language):
    return re.findall(r"```" + language + r"\n(.*?)```", _read(ROOT / "README.md"), re.S)


def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch):
    """README's ```python blocks, executed verbatim (in a scratch working directory)."""
    blocks = _readme_blocks("python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        if "Closure" in block and not dodo.runtime_available():
            continue
        namespace = {}
        exec(compile(block, "README.md", "exec"), namespace)
        if "F_pred" in namespace:  # "The closure in ten lines"
            result = namespace["result"]
            assert namespace["F_pred"].shape == (64, 64, 6, 4)
            for name in ("F_pred", "status", "growth_rate", "uncertainty", "growth_rate_proxy"):
                assert getattr(result, name).shape[:2] == (64, 64), name
            assert np.array_equal(result.F_pred, namespace["F_pred"])
            again = namespace["closure"].apply(namespace["F_init"], namespace["u"], out=result)
            assert again.F_pred is result.F_pred
            empty = dodo.ClosureResult.empty((64, 64))
            assert np.array_equal(namespace["closure"].apply(namespace["F_init"], namespace["u"], out=empty).F_pred,
                                  namespace["F_pred"])
        else:  # "Using Box3D from Python"
            assert namespace["result"].F_box.shape == (6, 4)
            for order in (17, 41, 131):
                dodo.box3d(namespace["F_init"], namespace["u"], lebedev_order=order)
            for method in ("exact", "jedynak"):
                dodo.box3d(namespace["F_init"], namespace["u"], z_method=method, max_flux_factor=0.98, threads=None)


def test_readme_status_table_lists_every_flag():
    table = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", _read(ROOT / "README.md"), re.M))
    members = {name for name in dir(dodo.CellStatus) if name.isupper() and name not in ("OK", "NONE")}
    assert table == members


def test_dodo_test_prints_what_the_readme_quotes(tmp_path):
    """README, "Install to use": `python -m dodo.test` ends with `closure runtime: OK (...)` and
    `dodo 0.1.0: OK`; a Box3D-only build says `closure runtime: NOT built (Box3D only ...)`."""
    readme = _read(ROOT / "README.md")
    assert f"`dodo {dodo.__version__}: OK`" in readme
    result = subprocess.run([sys.executable, "-m", "dodo.test"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == f"dodo {dodo.__version__}: OK"
    runtime = "closure runtime: OK (" if dodo.runtime_available() else "closure runtime: NOT built (Box3D only"
    assert any(line.startswith(runtime) for line in lines), lines
    import dodo.test as self_test

    assert "NOT built (Box3D only" in Path(self_test.__file__).read_text(encoding="utf-8")


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_readme_c_snippet_compiles_and_runs(tmp_path):
    """README's C block, pasted into a main() that declares what it uses, against the installed C API."""
    from dodo._closure import runtime_paths

    compiler = shutil.which("cc") or shutil.which("gcc")
    paths = runtime_paths()
    if compiler is None or not (Path(paths["include_dir"]) / "dodo" / "dodo.h").is_file():
        pytest.skip("no C compiler or no installed C header")
    (block,) = _readme_blocks("c")
    body = block.replace("#include <dodo/dodo.h>", "")
    source = tmp_path / "readme.c"
    source.write_text(
        "#include <stdio.h>\n#include <stdint.h>\n#include <dodo/dodo.h>\nint main(void) {\n"
        "  enum { n = 3 };\n  double F[n][6][4] = {{{0}}}, F_pred[n][6][4], u[n][4], growth_rate[n], uncertainty[n];\n"
        "  uint32_t cell_status[n];\n"
        "  for (int i = 0; i < n; ++i) { F[i][0][0] = 1.0; F[i][0][3] = 0.5; F[i][3][0] = 1.0; F[i][3][3] = -0.5;\n"
        "    u[i][0] = 1.0; u[i][1] = u[i][2] = u[i][3] = 0.0; }\n"
        + body +
        "  double sum = 0.0;\n  for (int s = 0; s < 6; ++s) sum += F_pred[0][s][0];\n"
        "  printf(\"%.17g %.17g %u\\n\", sum, growth_rate[0], cell_status[0]);\n  return 0;\n}\n")
    program = tmp_path / "readme_c"
    errors = ["-Werror=implicit-function-declaration", "-Werror=incompatible-pointer-types", "-Werror=int-conversion"]
    build = subprocess.run([compiler, "-std=c99", "-Wall", *errors, str(source), "-I", paths["include_dir"],
                            "-L", paths["lib_dir"], f"-Wl,-rpath,{paths['lib_dir']}", "-ldodo", "-lm", "-o", str(program)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    shutil.copyfile(paths["default_model"], tmp_path / "model.onnx")
    run = subprocess.run([str(program)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    total, growth, status = run.stdout.split()
    assert float(total) == pytest.approx(2.0, abs=1e-12)  # the neutrino number is conserved
    assert float(growth) > 0 and int(status) == 0


def test_cmake_installs_come_after_a_build():
    """`cmake -S . -B build && cmake --install build` installs nothing: `cmake --install` does not
    build, it stops with "file INSTALL cannot find .../libdodo.so.0.1.0"."""
    problems = []
    for path in DOC_FILES:
        for line, text in code_texts(path):
            for match in re.finditer(r"cmake --install\s+(\S+)", text):
                built = re.search(r"cmake --build\s+" + re.escape(match.group(1)) + r"\b", text[:match.start()])
                configured = re.search(r"cmake\s.*-B\s*" + re.escape(match.group(1)) + r"\b", text[:match.start()])
                if configured and not built and (str(path.relative_to(ROOT)), text) not in _REPORTED_ELSEWHERE:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
@pytest.mark.parametrize("language", ["c", "fortran"])
def test_examples_built_with_pkg_config_as_documented(tmp_path, language):
    """examples/README.md: `cc examples/c/grid_closure.c $(pkg-config --cflags --libs dodo) -lm` and
    the Fortran line (the module compiled from the installed dodo.f90), with PKG_CONFIG_PATH from
    `dodo info --pkgconfig-dir`. Box3D alone (no argument) conserves and exits 0; a model file that
    does not exist is one message naming it, exit 1. The Fortran example stopped with `error stop`,
    which gfortran follows with a backtrace of `???` frames: it read as a crash."""
    from dodo._closure import runtime_paths

    paths = runtime_paths()
    compiler = shutil.which("cc" if language == "c" else "gfortran")
    if compiler is None or shutil.which("pkg-config") is None or not Path(paths["pkgconfig_dir"]).is_dir():
        pytest.skip(f"no {language} compiler, pkg-config or installed dodo.pc")
    docs = _read(ROOT / "examples" / "README.md")
    if language == "c":
        assert "cc examples/c/grid_closure.c $(pkg-config --cflags --libs dodo) -lm" in docs
        command = f'cc "{ROOT}/examples/c/grid_closure.c" $(pkg-config --cflags --libs dodo) -lm -o grid_closure'
    else:
        assert '"$(pkg-config --variable=includedir' in docs
        command = (f'gfortran "$(pkg-config --variable=includedir dodo)/dodo/dodo.f90" '
                   f'"{ROOT}/examples/fortran/grid_closure.f90" $(pkg-config --libs dodo) -o grid_closure')
    environment = {**os.environ, "PKG_CONFIG_PATH": paths["pkgconfig_dir"]}
    build = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=environment, capture_output=True, text=True,
                           timeout=180)
    assert build.returncode == 0, build.stderr
    program = str(tmp_path / "grid_closure")
    box3d = subprocess.run([program], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert box3d.returncode == 0, box3d.stdout + box3d.stderr
    assert "violation" in box3d.stdout
    missing = str(tmp_path / "no_such_model.onnx")
    refused = subprocess.run([program, missing], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert missing in refused.stderr and "does not exist" in refused.stderr
    assert "Backtrace" not in refused.stderr and "???" not in refused.stderr
