"""Outside probe, Python round fifty-eight: the open items of round fifty-seven (section 96): `dodo plot metrics`
of a file named twice, `dodo inspect`'s two notations of one slice; and the runtime from Python
(`dodo.Closure` / `dodo.closure` with array-likes, threads, processes, copies, `-X dev -W error`, `-O`)."""
from __future__ import annotations

import os

import pytest

from cli_helpers import run
from test_probe_round51 import _metrics
from test_probe_round54 import _labels_drawn
from test_probe_round57 import _preprocessed


# --- round fifty-seven's open items ---------------------------------------------------------------------


def test_plot_metrics_draws_a_file_named_twice_once_with_a_note(tmp_path, capsys, monkeypatch):
    """`dodo plot metrics m1.json m1.json` drew one run twice (`tmp/m1 [1]`, `tmp/m1 [2]`), where `dodo score`
    scores a file named twice once, with a note. Now drawn once, with a note; also through a symbolic link.
    Two files alike in name (run_000 of two studies) are still two runs."""
    pytest.importorskip("matplotlib")
    one = _metrics(tmp_path / "m1.json", [1.0, 0.5], [1.0, 0.6])
    link = tmp_path / "link.json"
    os.symlink(one, link)
    drawn = _labels_drawn(monkeypatch)
    code, out, err = run(capsys, ["plot", "metrics", str(one), str(one), str(link), "-o", str(tmp_path / "m.png")])
    assert code == 0, err
    assert len(drawn[-1]) == 1, drawn
    assert f"note: {one} named more than once (or through a link): each drawn once" in out, out
    other = tmp_path / "b"
    other.mkdir()
    two = _metrics(other / "m1.json", [1.0, 0.5], [1.0, 0.6])  # guard: another file of the same name
    code, out, err = run(capsys, ["plot", "metrics", str(one), str(two), "-o", str(tmp_path / "n.png")])
    assert code == 0 and len(drawn[-1]) == 2 and "note:" not in out, (out, drawn)


def test_inspect_writes_its_slice_as_its_empty_slice_error_does(tmp_path, capsys):
    """`dodo inspect` printed `slice [0, 30]` in its table and `slice [5:5]` in its empty slice's error:
    now `[start:stop]` in both (the JSON's `slice` stays a list of two numbers)."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("torch")
    import json

    _preprocessed(capsys, tmp_path, n=30, seed=3)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "p.h5")},
        "model": {"hidden_dim": 8, "n_blocks": 1}, "training": {"epochs": 1, "threads": 1},
        "output": {"results_dir": str(tmp_path / "r"), "checkpoint_dir": str(tmp_path / "c")}}))
    code, out, err = run(capsys, ["train", "--config", str(tmp_path / "t.yaml")])
    assert code == 0, err
    best = str(tmp_path / "c" / "best.pt")
    code, out, err = run(capsys, ["inspect", best, "--start", "1", "--stop", "3", "--json", str(tmp_path / "i.json")])
    assert code == 0, err
    assert "2 cells, split 'val' slice [1:3]" in out.splitlines()[0], out
    assert json.loads((tmp_path / "i.json").read_text())["slice"] == [1, 3]
    code, out, err = run(capsys, ["inspect", best, "--start", "2", "--stop", "2"])
    assert code == 2 and "error: slice [2:2] of split 'val'" in err, err
