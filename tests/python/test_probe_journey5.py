"""A new user's journey from a fresh clone, round five (outside probe): what a user met that the docs and
messages did not say right."""
from __future__ import annotations

import sys
from pathlib import Path

from dodo._shown import extra_install

REPO = Path(__file__).resolve().parents[2]
EMU_FILE = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"


def test_dodo_score_without_h5py_names_h5py_not_the_training_extra(capsys, monkeypatch):
    # A wheel install without h5py: `dodo score default FILE` named torch, matplotlib, onnx, ... (the 'train'
    # extra) as the other way to read an HDF5 file; dodo apply and dodo simulate name h5py (the 'qke' extra).
    from cli_helpers import run

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ModuleNotFoundError
    code, _, err = run(capsys, ["score", "default", str(EMU_FILE)])
    assert code == 2 and "pip install h5py" in err, err
    assert extra_install("train") not in err and "torch" not in err, err
    assert extra_install("qke") in err, err


def test_the_simulate_docs_say_its_input_states_are_in_the_fluid_rest_frame(capsys):
    # A user with a moving cell's lab-frame F and u (what dodo.closure takes) who gave F to dodo simulate
    # --input got the asymptotic state of another physical set-up (the solver's box is at rest): for a cell at
    # u = (1.2, 0.3, 0, 0.6) nu_mu ended at 0.78e32 cm^-3 where its rest-frame state ends at 1.05e32, and
    # neither the README, docs/qke.md nor --help said which frame the states are in, or named
    # dodo.boost_to_rest.
    import re

    from cli_helpers import run

    code, out, _ = run(capsys, ["simulate", "--help"])
    assert code == 0
    help_text = " ".join(out.split())
    assert "fluid rest frame" in help_text and "dodo.boost_to_rest" in help_text, help_text
    qke = " ".join((REPO / "docs" / "qke.md").read_text(encoding="utf-8").split())
    yaml_paragraph = qke[qke.index("YAML input: `states:"):][:600]
    assert "fluid rest frame" in yaml_paragraph and "dodo.boost_to_rest(F, u[..., None, :])" in yaml_paragraph
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if line.startswith("dodo simulate out.h5 --input states.yaml"))
    assert re.search(r"rest frame", line), line


def test_the_named_boost_gives_the_rest_frame_state_dodo_simulate_takes():
    # The call the docs name: each species' time component becomes its comoving density -F.u, and the
    # closure of the lab cell is the lab image of the closure of that rest-frame state.
    import numpy as np

    import dodo

    F = np.zeros((3, 6, 4))
    F[:, 0] = [2e32, 0, 0, 0.6e32]
    F[:, 3] = [1.5e32, 0.2e32, 0, -0.5e32]
    F[:, 1] = F[:, 2] = F[:, 4] = F[:, 5] = [0.5e32, 0, 0, 0]
    u = np.array([1.2, 0.3, 0.0, np.sqrt(1.2 ** 2 - 1 - 0.09)])
    rest = dodo.boost_to_rest(F, u[..., None, :])
    comoving = u[0] * F[..., 0] - F[..., 1:] @ u[1:]
    np.testing.assert_allclose(rest[..., 0], comoving, rtol=1e-14)
    np.testing.assert_allclose(dodo.boost_to_rest(dodo.box3d(F, u).F_box, u[..., None, :]), dodo.box3d(rest).F_box,
                               rtol=0, atol=1e-12 * 6e32)


def test_the_docs_say_that_dodo_closure_returns_no_status_and_where_it_is():
    # dodo.closure returns F_pred alone: a NaN cell comes back as zeros, a rejected one as its input, with no flag
    # (a user who asked for the status flags of dodo.closure's cells found none, and the README's and runtime.md's
    # dodo.closure lines did not say that Closure.apply holds them).
    import numpy as np

    import dodo

    F = np.zeros((6, 4))
    F[0] = [1.0e33, 0, 0, 0.5e33]
    F[3] = [1.0e33, 0, 0, np.nan]
    assert isinstance(dodo.closure(F), np.ndarray) and not np.any(dodo.closure(F))  # zeros, and no flag
    assert dodo.Closure().apply(F).status == dodo.CellStatus.NONFINITE
    for doc in ("README.md", "docs/runtime.md"):
        text = (REPO / doc).read_text(encoding="utf-8")
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("F_pred = dodo.closure(F_init, u)"))
        comment = " ".join(lines[at:at + 2])  # the line and its comment's continuation
        assert "status" in comment and "apply" in comment and "F_pred alone" in comment, (doc, comment)


def test_help_of_dodo_closure_says_where_the_status_flags_are():
    import pydoc

    import dodo

    text = " ".join(pydoc.render_doc(dodo.closure, renderer=pydoc.plaintext).split())
    assert "F_pred alone" in text and "status flags" in text and "Closure(model).apply(F_init, u)" in text, text


def test_a_training_file_too_small_for_the_splits_is_told_how_many_rows_they_need(tmp_path, capsys, monkeypatch):
    # The tiniest quickstart (dodo synth -n 5, preprocess, train): 'the validation split is empty: add rows or
    # raise data.val_fraction', then at 6 and 7 rows 'the test split is empty: add rows ...': how many rows was
    # left to trial and error (8 at the default fractions 0.8 / 0.1).
    import pytest

    pytest.importorskip("torch")
    from cli_helpers import run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pre.yaml").write_text("inputs: [s.h5]\noutput: p.h5\n")
    assert run(capsys, ["synth", "-o", "s.h5", "-n", "5", "-q", "--seed", "3"])[0] == 0
    assert run(capsys, ["preprocess", "--config", "pre.yaml", "-q"])[0] == 0
    config = (REPO / "training" / "configs" / "demo_synthetic.yaml").read_text()
    (tmp_path / "train.yaml").write_text(config)
    code, _, err = run(capsys, ["train", "--config", "train.yaml", "--set", "data.path=p.h5",
                                "--set", "output.checkpoint_dir=ck", "--set", "output.results_dir=res"])
    assert code == 2, err
    assert ("the validation split is empty: add rows or raise data.val_fraction (8 rows give each split a row at "
            "data.train_fraction 0.8 and data.val_fraction 0.1; the file holds 5)") in err, err
