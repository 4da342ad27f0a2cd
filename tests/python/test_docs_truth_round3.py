"""Do the docs tell the truth (outside probe, round three): claims of README.md and docs/*.md (the
reliability records aside, which quote history) that are cheap to keep true automatically, checked
against the code and the files the docs point to.

- docs/runtime.md's Fortran section counts and names the module's functions with a deferred-length
  text result (it said "the three functions" and named four: `dodo_build_id_string` came later);
- every `[text](path#anchor)` link names a file of the checkout and, for a Markdown file, one of
  its headings as GitHub makes anchors of them;
- every `FILE.md, "Section"` reference, in the docs and in the package's messages and help, names
  a heading of that file or the bold lead of one of its paragraphs;
- every `dodo_*` C/Fortran name and every `DODO_ERROR_*` / `DODO_CELL_*` code the docs cite is one
  the public headers declare;
- the Python defaults the README and docs/runtime.md state are the signatures' defaults.

Fast (about a second), no torch, no network, no compiler.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import dodo

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNTIME_MD = ROOT / "docs" / "runtime.md"
HEADERS = ROOT / "cpp" / "include" / "dodo"
#: The user-facing docs (the reliability records quote old behaviour on purpose and are left out).
DOCS = [README] + sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("reliability"))
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _line(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def test_fortran_text_functions_are_counted_and_named():
    """docs/runtime.md said "The three functions that return text to you, `dodo_get_metadata`,
    `dodo_version_string`, `dodo_build_id_string` and `dodo_default_model_path`", and that under
    -fno-automatic "the three text functions" return an empty string: the module has four such
    functions (gfortran 12 gives all four a length of 0 under that flag; outside probe, docs round three)."""
    module = _read(HEADERS / "dodo.f90")
    deferred = set()
    for name, result in re.findall(r"^\s*(?:recursive\s+)?function\s+(\w+)\s*\([^)]*\)\s*result\s*\((\w+)\)", module,
                                   flags=re.M | re.I):
        body = module[module.index(f"function {name}"):module.index(f"end function {name}")]
        if re.search(rf"character\(len=:\),\s*allocatable\s*::\s*{result}\b", body, flags=re.I):
            deferred.add(name)
    assert len(deferred) >= 4, deferred  # dodo_get_metadata, dodo_version_string, dodo_build_id_string, ...
    text = _squeezed(_read(RUNTIME_MD))
    listed = re.search(r"The (\w+) functions that return text to you, (.*?), have such results", text)
    assert listed, "docs/runtime.md no longer lists the Fortran text functions where this test looks"
    assert _NUMBER_WORDS.get(listed.group(1)) == len(deferred), listed.group(0)
    assert set(re.findall(r"`(\w+)`", listed.group(2))) == deferred
    later = re.search(r"so the (\w+) text functions then return", text)
    assert later and _NUMBER_WORDS.get(later.group(1)) == len(deferred), later and later.group(0)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation but '-' and '_' dropped,
    spaces as '-', a repeated heading numbered -1, -2, ...; plus explicit <a name/id>."""
    anchors, seen, fenced = set(), {}, False
    for line in _read(path).splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1).strip())
            slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
        anchors.update(re.findall(r"<a (?:name|id)=\"([^\"]+)\"", line))
    return anchors


def test_markdown_links_and_their_anchors_resolve():
    problems, checked = [], 0
    for doc in DOCS:
        text = _read(doc)
        for match in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = match.group(1)
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            checked += 1
            where = f"{doc.relative_to(ROOT)}:{_line(text, match.start())}: {target}"
            if not file.exists():
                problems.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                problems.append(f"{where}: no heading of {file.relative_to(ROOT)} makes that anchor")
    assert checked > 20
    assert not problems, "\n".join(problems)


#: `FILE.md, "Section"` (or 'Section'): a file of the checkout, then a quoted section name.
_SECTION_REFERENCE = re.compile(r"((?:[\w.-]+/)*[\w.-]+\.md),? \\?[\"'\u201c]([A-Z][^\"'\u201d\n\\]{2,100}?)\\?[\"'\u201d]")


def _section_problem(doc_name: str, section: str) -> str | None:
    """None where `doc_name` has a heading holding `section`, or a paragraph (or list item) that begins
    with it, bold or not (docs/runtime.md's "**Precision.**", docs/training.md's "Export: ...")."""
    path = ROOT / doc_name
    if not path.exists():
        return f"{doc_name} does not exist"
    lines = _read(path).splitlines()
    if any(line.startswith("#") and section in line for line in lines):
        return None
    lead = re.compile(r"\s*(?:[-*] )?(?:\*\*)?" + re.escape(section))
    if any(lead.match(line) for line in lines):
        return None
    return f"{doc_name} has no heading and no paragraph that begins {section!r}"


def test_section_references_of_the_docs_name_a_heading_or_a_lead():
    problems, checked = [], 0
    for doc in DOCS:
        text = _squeezed(_read(doc))
        for name, section in _SECTION_REFERENCE.findall(text):
            if "/" not in name and name != "README.md":
                continue
            checked += 1
            problem = _section_problem(name, section)
            if problem:
                problems.append(f"{doc.relative_to(ROOT)}: {problem}")
    assert checked > 20
    assert not problems, "\n".join(problems)


def test_section_references_of_the_packages_messages_name_a_heading_or_a_lead():
    """Error messages and help of the package send the reader to a section by name: that section must
    exist (`dodo score --help` once named a section docs/training.md did not have)."""
    problems, checked = [], 0
    for source in sorted((ROOT / "python" / "dodo").rglob("*.py")):
        # Strings continued over lines ("... docs/training.md, " "'Section'") read as one.
        text = _squeezed(re.sub(r"[\"']\s*\n\s*f?[\"']", "", _read(source)))
        for name, section in _SECTION_REFERENCE.findall(text):
            if not name.startswith(("docs/", "training/")) and name != "README.md":
                continue
            checked += 1
            problem = _section_problem(name, section)
            if problem:
                problems.append(f"{source.relative_to(ROOT)}: {problem}")
    assert checked > 10
    assert not problems, "\n".join(problems)


#: `dodo_*` names the docs use that are not functions or types of the public headers, and why.
_NOT_IN_THE_HEADERS = {
    "dodo_": "the prefix itself",
    "dodo_fortran": "the name docs/runtime.md gives a host's CMake library target",
    "dodo_report": "the JSON mark of a report (docs: \"dodo_report\")",
    "dodo_onnxruntime_session_creation_lock_v1": "the shared lock's symbol, defined in cpp/src/runtime",
}


def test_c_and_fortran_names_the_docs_cite_are_declared():
    declared = " ".join(_read(HEADERS / name) for name in ("dodo.h", "dodo.hpp", "dodo.f90"))
    problems = []
    for doc in DOCS:
        text = _read(doc)
        for name in sorted(set(re.findall(r"\bdodo_\w*", text))):
            if name in _NOT_IN_THE_HEADERS:
                continue
            if not re.search(rf"\b{name}\b", declared):
                problems.append(f"{doc.relative_to(ROOT)}: {name}")
    assert not problems, "not declared in cpp/include/dodo: " + ", ".join(problems)


def test_status_codes_and_cell_flags_the_docs_cite_exist():
    header = _read(HEADERS / "dodo.h")
    status_list = header[header.index("#define DODO_STATUS_LIST"):header.index("typedef enum dodo_status")]
    codes = set(re.findall(r"X\((DODO_\w+),", status_list))
    flags = set(re.findall(r"#define (DODO_CELL_\w+)", header))
    python_flags = {flag.name for flag in dodo.CellStatus}
    problems = []
    for doc in DOCS:
        text = _read(doc)
        for name in set(re.findall(r"\bDODO_ERROR_[A-Z_]*[A-Z]\b", text)) - codes:
            problems.append(f"{doc.relative_to(ROOT)}: {name} is not in DODO_STATUS_LIST")
        for name in set(re.findall(r"\bDODO_CELL_[A-Z_]*[A-Z]\b", text)) - flags:
            problems.append(f"{doc.relative_to(ROOT)}: {name} is not a cell flag of dodo.h")
    # The per-cell flags of the README's table are dodo.h's, by the same names.
    assert {f"DODO_CELL_{name}" for name in python_flags} <= flags
    assert not problems, "\n".join(problems)


def test_python_defaults_the_docs_state_are_the_signatures():
    """README, "Using Box3D from Python": `lebedev_order` 17 (of 17, 41, 131), `z_method` "exact",
    `max_flux_factor` 0.98, `threads` None; docs/runtime.md: `evaluator="auto"` the default, `None`
    the default model, `device` "cpu"."""
    readme = _squeezed(_read(README))
    assert re.search(r"Options: `lebedev_order` \(17, 41 or 131\), `z_method` \(`\"exact\"`", readme)
    assert "`max_flux_factor` (0.98)" in readme and "`threads` (None = all cores" in readme
    box3d = inspect.signature(dodo.box3d).parameters
    assert (box3d["lebedev_order"].default, box3d["z_method"].default) == (17, "exact")
    assert box3d["max_flux_factor"].default == 0.98 and box3d["threads"].default is None
    assert list(dodo._core.available_lebedev_orders()) == [17, 41, 131]
    runtime = _squeezed(_read(RUNTIME_MD))
    assert '`Closure(..., evaluator="auto")`, the default' in runtime
    assert "Python's `None` means the default model" in runtime
    closure = inspect.signature(dodo.Closure).parameters
    assert closure["evaluator"].default == "auto" and closure["model"].default is None
    assert closure["device"].default == "cpu"


@pytest.mark.parametrize("doc", ["docs/runtime.md", "docs/model_package.md", "README.md"])
def test_the_reference_checker_sees_this_documents_references(doc):
    """The checks above read the references they are meant to (a regular expression that matched
    nothing would pass any doc)."""
    text = _squeezed(_read(ROOT / doc))
    assert _SECTION_REFERENCE.search(text), doc


def _names_resolve(text: str) -> list[str]:
    """The `dodo.X.Y` names in ``text`` that are no module or attribute of the installed package."""
    import importlib

    missing = []
    for name in sorted(set(re.findall(r"\bdodo(?:\.[A-Za-z_]\w*)+", text))):
        parts = name.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                target = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            for attribute in parts[split:]:
                target = getattr(target, attribute, None)
                if target is None:
                    missing.append(name)
                    break
            break
    return missing


def _emu_states(count: int):
    """``count`` Emu-layout states [n, (x, y, z, t), (nu, nubar), flavour]: nu_e along +z, nubar_e along
    -z, heavy flavours isotropic (an ELN crossing)."""
    import numpy as np

    states = np.zeros((count, 4, 2, 3))
    states[:, 3, :, :] = 1.0e32  # densities
    states[:, 3, :, 0] = 1.0e33
    states[:, 2, 0, 0], states[:, 2, 1, 0] = 0.5e33, -0.5e33
    return states


def test_apply_names_the_cell_flags_by_a_name_the_package_has(capsys, tmp_path):
    """`dodo apply` sent the reader of its rejected cells to "dodo.status", which is no module or
    attribute of dodo (the flags are `dodo.CellStatus`, README's "Per-cell status"): both the report
    line of a file with some rejected cells and the refusal of one with only rejected cells (outside
    probe, docs round three)."""
    from cli_helpers import emu_file, refused, run

    initial = _emu_states(8)
    initial[:3, :3] *= 5.0  # three states' fluxes past their densities: rejected (FLUX_FACTOR)
    some = emu_file(tmp_path / "some.h5", initial)
    code, out, err = run(capsys, ["apply", str(some), "--grid", "2x2x2", "--model", "box3d", "--threads", "1", "-q"])
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("cells scored: 5 of 8"))
    assert "dodo.CellStatus" in line and not _names_resolve(line), line

    initial[:, :3] *= 5.0
    every = emu_file(tmp_path / "every.h5", initial)
    line = refused(capsys, ["apply", str(every), "--grid", "2x2x2", "--model", "box3d", "--threads", "1", "-q"],
                   "rejects every cell")
    assert "dodo.CellStatus" in line and not _names_resolve(line), line
    assert hasattr(dodo, "CellStatus")


def test_apply_of_box3d_alone_prints_no_python_none(capsys, tmp_path):
    """`dodo apply --model box3d` printed "model: none (Box3D only); head None; ...": the Python value of
    a head the handle does not have. Now "head -", as "ONNX Runtime -" beside it."""
    from cli_helpers import emu_file, run

    path = emu_file(tmp_path / "states.h5", _emu_states(8))
    code, out, err = run(capsys, ["apply", str(path), "--grid", "2x2x2", "--model", "box3d", "--threads", "1", "-q"])
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("model: "))
    assert line.startswith("model: none (Box3D only); head -;") and "None" not in line, line


def test_score_names_the_cell_flags_by_a_name_the_package_has(capsys, tmp_path):
    """`dodo score` left out rejected states "(... see dodo.status)", as apply did (above): now the
    flags' own name, also in --json's left_out (the lead, after docs round three's report)."""
    from cli_helpers import emu_file, run

    initial = _emu_states(4)
    initial[:1, :3] *= 5.0  # one state's fluxes past its densities: rejected
    path = emu_file(tmp_path / "s.h5", initial, final=_emu_states(4))
    code, out, err = run(capsys, ["score", "box3d", str(path), "--bootstrap", "100"])
    assert code == 0, err
    line = next(line for line in (out + err).splitlines() if "closure rejected input" in line)
    assert "dodo.CellStatus" in line and not _names_resolve(line), line
