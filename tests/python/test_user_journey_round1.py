"""A new user's journey from a fresh clone, round one (outside probe): what the docs tell a new user
to copy and run, run as written.

- docs/runtime.md's Python block, after the README's "The closure in ten lines" (which it names as
  the source of `F_init` and `u`), stopped at its third line with
  `FileNotFoundError: model package 'model.onnx' does not exist`: a new user has no model.onnx.
- examples/fortran/mpi_closure.f90 given a package it cannot read (or one every rank refuses) stopped
  with `error stop 1`, which gfortran follows on every rank with "Error termination. Backtrace:" and
  `#0 0x... in ???` frames: it read as a crash, as examples/fortran/grid_closure.f90 did before.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import dodo

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(path: Path):
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_runtime_md_python_block_runs_after_the_readme_ten_lines(tmp_path, monkeypatch):
    (ten_lines,) = [block for block in _python_blocks(ROOT / "README.md") if "dodo.Closure(" in block]
    (runtime_block,) = _python_blocks(ROOT / "docs" / "runtime.md")
    monkeypatch.chdir(tmp_path)  # no model.onnx here, as in a fresh clone
    namespace = {}
    exec(compile(ten_lines, "README.md", "exec"), namespace)
    namespace["steps"] = 2
    exec(compile(runtime_block, "docs/runtime.md", "exec"), namespace)
    out, F_pred = namespace["out"], namespace["F_pred"]
    assert np.array_equal(out.F_pred, namespace["result"].F_pred)
    assert np.array_equal(out.F_pred, F_pred)  # the default model, as dodo.closure's
    assert np.array_equal(namespace["box_out"].F_box, dodo.box3d(namespace["F_init"], namespace["u"]).F_box)
    assert namespace["closure"].optional_outputs  # the default model has its optional outputs


def test_fortran_mpi_example_refuses_an_unreadable_package_without_a_backtrace(tmp_path):
    from test_mpi_examples import build, launch

    program = build(tmp_path, "fortran")
    missing = tmp_path / "missing.onnx"
    not_a_package = tmp_path / "notes.txt"
    not_a_package.write_text("vm\n")
    for argument, words in ((missing, "cannot read the model package"), (not_a_package, "not an ONNX model package")):
        result = launch(program, argument)
        text = result.stdout + result.stderr
        assert result.returncode == 1, text
        assert words in text, text
        assert "Backtrace" not in text and "???" not in text, text


@pytest.mark.parametrize("language", ["c", "fortran"])
def test_mpi_examples_without_a_package_print_their_usage(tmp_path, language):
    """examples/README.md said that each example runs Box3D alone without an argument; the MPI
    examples need a package (rank 0 broadcasts its bytes) and print their usage, exit 2, as it now says."""
    from test_mpi_examples import build, launch

    docs = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    assert "the MPI examples 4 and 5 need a package" in " ".join(docs.split())
    result = launch(build(tmp_path, language))
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "usage:" in text and "MODEL.onnx" in text, text
