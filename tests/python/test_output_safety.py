"""Outputs never destroy inputs or special files (dodo._atomic.check_outputs, atomic_path), a
`dodo simulate` checkpoint of another campaign is never overwritten or removed, `dodo score`
leaves non-finite states out and writes strict JSON, `dodo synth` refuses unphysical options, and
the small API refusals (Closure chunk_size, *Result.empty sizes, apply's paths)."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import digest, refused
from dodo.cli import main

EMU = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


# -- 1. an output that is one of the inputs ------------------------------------------------------

def test_apply_and_score_refuse_their_input_as_output(tmp_path, capsys):
    pytest.importorskip("h5py")
    data = tmp_path / "a.h5"
    shutil.copy(EMU, data)
    before = digest(data)
    line = refused(capsys, ["apply", str(data), "--grid", "2x2x2", "-q", "-o", str(data)], data)
    assert "same file as the input" in line
    refused(capsys, ["score", "box3d", str(data), "--bootstrap", "100", "--json", str(data)], data)
    link = tmp_path / "link.h5"  # another name for the input: refused too
    link.symlink_to(data)
    refused(capsys, ["apply", str(data), "--grid", "2x2x2", "-q", "-o", str(link)], data, link)
    hard = tmp_path / "hard.h5"
    os.link(data, hard)
    refused(capsys, ["score", "box3d", str(data), "--bootstrap", "100", "--json", str(hard)], data, hard)
    assert digest(data) == before and listing(tmp_path) == ["a.h5", "hard.h5", "link.h5"]


def test_preprocess_refuses_an_input_as_output(tmp_path, capsys, monkeypatch):
    pytest.importorskip("h5py")
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    shutil.copy(EMU, "s.h5")
    Path("p.yaml").write_text("inputs: [s.h5]\noutput: s.h5\n")
    before = digest("s.h5")
    refused(capsys, ["preprocess", "--config", "p.yaml", "-q"], "s.h5")
    refused(capsys, ["preprocess", "--config", "p.yaml", "-q", "-o", "p.yaml"], "p.yaml")  # the config is an input
    assert digest("s.h5") == before and listing(tmp_path) == ["p.yaml", "s.h5"]


@pytest.mark.parametrize("command", [["export", "X.pt", "-o", "X.pt"], ["evaluate", "X.pt", "--json", "X.pt"],
                                     ["inspect", "X.pt", "--json", "X.pt"],
                                     ["evaluate", "X.pt", "--data", "d.h5", "--json", "d.h5"],
                                     ["plot", "metrics", "m.json", "-o", "m.json"]])
def test_training_commands_refuse_an_input_as_output(tmp_path, capsys, monkeypatch, command):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    for name in ("X.pt", "d.h5", "m.json"):
        Path(name).write_bytes(b"not read: refused before")
    line = refused(capsys, command, command[-1])
    assert "same file as the input" in line  # refused before reading X.pt (which is no checkpoint)
    assert all(Path(name).read_bytes() == b"not read: refused before" for name in ("X.pt", "d.h5", "m.json"))
    assert listing(tmp_path) == ["X.pt", "d.h5", "m.json"]


def test_simulate_refuses_its_input_as_output(tmp_path, capsys):
    pytest.importorskip("h5py")
    data = tmp_path / "in.h5"
    shutil.copy(EMU, data)
    before = digest(data)
    refused(capsys, ["simulate", str(data), "--input", str(data), "--ncell", "16", "--nphi", "8", "-q"], data)
    assert digest(data) == before and listing(tmp_path) == ["in.h5"]  # no checkpoint either


# -- 3. outputs that are not regular files ---------------------------------------------------------

def test_outputs_that_are_fifos_or_directories_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    pytest.importorskip("h5py")
    import dodo.runtime_cli as runtime_cli

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "dir"
    directory.mkdir()

    def no_work(*args, **kwargs):
        raise AssertionError("worked although the output cannot be written")

    monkeypatch.setattr(runtime_cli, "_apply", no_work)
    for target, kind in ((fifo, "FIFO"), (directory, "directory")):
        line = refused(capsys, ["apply", str(EMU), "--grid", "2x2x2", "-q", "-o", str(target)], target)
        assert kind in line and "not a regular file" in line
        line = refused(capsys, ["synth", "-o", str(target), "-n", "10", "-q"], target)
        assert kind in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and directory.is_dir() and listing(directory) == []
    assert listing(tmp_path) == ["dir", "fifo"]


def test_atomic_writers_refuse_special_files_and_follow_symlinks(tmp_path):
    from dodo._atomic import OutputPathError, atomic_path, write_json_atomic

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="FIFO"):
        write_json_atomic(fifo, {"a": 1})
    with pytest.raises(OutputPathError, match="directory"):
        with atomic_path(tmp_path) as tmp:
            tmp.write_text("x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A file put in the output's directory is reported as such (it used to be "[Errno 17] File exists").
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputPathError, match="afile is not a directory"):
        write_json_atomic(tmp_path / "afile" / "sub" / "x.json", {})
    # A symlink to a regular file: the target is replaced atomically and the link is kept.
    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json_atomic(link, {"b": 2})
    assert link.is_symlink() and json.loads(target.read_text()) == {"b": 2}
    # A symlink to a FIFO is refused like the FIFO.
    fifo_link = tmp_path / "fifo_link"
    fifo_link.symlink_to(fifo)
    with pytest.raises(OutputPathError, match="FIFO"):
        write_json_atomic(fifo_link, {})
    assert not [name for name in listing(tmp_path) if name.endswith(".tmp")]


def test_apply_names_a_directory_input_and_a_file_in_the_output_path(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    line = refused(capsys, ["apply", str(EMU), "--grid", "2x2x2", "-q", "-o", str(tmp_path / "afile" / "x.h5")])
    assert "afile is not a directory" in line
    line = refused(capsys, ["apply", str(tmp_path), "-q"])
    assert "is a directory" in line and "no such file" not in line


def test_json_is_strict(tmp_path):
    from dodo._atomic import write_json_atomic

    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": float("nan"), "b": [np.inf, np.float64(-np.inf), 1.5], "c": np.array([np.nan, 2.0])})

    def no_constants(name):
        raise ValueError(f"not strict JSON: {name}")

    assert json.loads(path.read_text(), parse_constant=no_constants) == {"a": None, "b": [None, None, 1.5],
                                                                         "c": [None, 2.0]}


# -- 2. simulate checkpoints of other campaigns ----------------------------------------------------

STATES = np.array([
    [[1.0, 0, 0, 1 / 3], [0, 0, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, -1 / 3], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[1.42, 0.14, 0.06, -0.19], [0.49, -0.01, 0.04, -0.26], [0.49, -0.01, 0.04, -0.26],
     [1.91, 0.14, 0.06, -0.65], [0.49, -0.01, 0.04, -0.26], [0.49, -0.01, 0.04, -0.26]],
]) * 1e33


def interrupted_campaign(output: str, batch_size: int = 1) -> str:
    """Campaign A (the two STATES) stopped after its first batch; returns its checkpoint's digest."""
    from dodo.qke.campaign import simulate_states
    from dodo.qke.solver import SolverConfig

    def crash_after_first_batch(message):
        if "1/2 states done" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=batch_size,
                        report=crash_after_first_batch)
    return digest(output + ".partial.npz")


def test_simulate_keeps_a_checkpoint_of_another_campaign(tmp_path, capsys):
    pytest.importorskip("h5py")
    yaml = pytest.importorskip("yaml")
    from dodo.qke.campaign import simulate_states
    from dodo.qke.solver import SolverConfig

    output = str(tmp_path / "out.h5")
    kept = interrupted_campaign(output)
    other = tmp_path / "other.yaml"  # other states: refused, the checkpoint kept
    other.write_text(yaml.safe_dump({"states": STATES[1:].tolist()}))
    line = refused(capsys, ["simulate", output, "--input", str(other), "--ncell", "16", "--nphi", "8",
                            "--batch-size", "1", "-q"], output + ".partial.npz")
    assert "other initial states" in line and "remove" in line and "another output" in line
    assert digest(output + ".partial.npz") == kept
    # The same states with other settings: the message names them.
    with pytest.raises(ValueError, match=r"solver.ncell 16 there, 32 here"):
        simulate_states(STATES, output, SolverConfig(ncell=32, nphi_equator=8), batch_size=1, report=lambda m: None)
    with pytest.raises(ValueError, match=r"rerun with --batch-size 1 to resume"):
        simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=2, report=lambda m: None)
    assert digest(output + ".partial.npz") == kept
    # The campaign itself still resumes from it, and removes it at the end.
    messages = []
    simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=1, report=messages.append)
    assert messages[0].startswith("resuming: 1/2") and not os.path.exists(output + ".partial.npz")


def test_simulate_keeps_unreadable_and_old_checkpoints_it_cannot_match(tmp_path):
    pytest.importorskip("h5py")
    from dodo.qke.campaign import simulate_states
    from dodo.qke.solver import SolverConfig

    output = str(tmp_path / "out.h5")
    checkpoint = Path(output + ".partial.npz")
    checkpoint.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be read as a checkpoint") as refused:
        simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=1, report=lambda m: None)
    # no run can resume from it: not "rerun the command that wrote it", the command just run
    assert "rerun the command that wrote it" not in str(refused.value) and "remove" in str(refused.value)
    assert checkpoint.read_bytes() == b"garbage"
    np.savez(checkpoint, fingerprint="0" * 64, done=np.zeros(2, bool))  # an older version's, other campaign
    before = digest(checkpoint)
    with pytest.raises(ValueError, match="older version"):
        simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=1, report=lambda m: None)
    assert digest(checkpoint) == before and not os.path.exists(output)


# -- 4. score with non-finite states -----------------------------------------------------------------

def test_score_leaves_non_finite_states_out_and_writes_strict_json(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    data = tmp_path / "rows.h5"
    with h5py.File(EMU, "r") as source, h5py.File(data, "w") as target:
        for key in source:
            values = source[key][()]
            if key == "F4_initial(1|ccm)":
                values = values.copy()
                values[3] = np.nan
            if key == "F4_final(1|ccm)":
                values = values.copy()
                values[5] = np.inf
            target[key] = values
    report_path = tmp_path / "r.json"
    code = main(["score", "box3d", str(data), "--bootstrap", "100", "--json", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "states scored: 30 of 32" in out and "non-finite input" in out and "non-finite truth" in out
    assert "nan" not in out.lower()

    def no_constants(name):
        raise ValueError(f"not strict JSON: {name}")

    report = json.loads(report_path.read_text(), parse_constant=no_constants)
    assert report["n_states"] == 32 and report["n_scored"] == 30 and report["left_out"]["indices"] == [3, 5]
    for part in ("model", "box3d", "difference"):
        assert np.isfinite(report[part]["mean"]) and np.all(np.isfinite(report[part]["ci95"]))
    assert report["per_state"]["model"][3] is None and report["per_state"]["box3d"][5] is None
    assert {w["index"] for w in report["worst_states"]}.isdisjoint({3, 5})
    assert report["growth_rate"]["n_states"] <= 30 and np.isfinite(report["growth_rate"]["model"]["median_ratio"])

    # With a model that has an uncertainty output, a left-out state's is None too (outside probe,
    # round 29: it held a number beside the None errors; the NaN state's was NaN, not strict JSON).
    model_report = tmp_path / "m.json"
    assert main(["score", "default", str(data), "--bootstrap", "100", "--json", str(model_report)]) == 0
    capsys.readouterr()
    report = json.loads(model_report.read_text(), parse_constant=no_constants)
    uncertainty = report["per_state"]["uncertainty"]
    assert len(uncertainty) == 32 and uncertainty[3] is None and uncertainty[5] is None
    assert all(value is not None and np.all(np.isfinite(value)) for i, value in enumerate(uncertainty) if i not in (3, 5))


# -- 5. synth options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [["--max-flux-factor", "1.5"], ["--max-flux-factor", "1"],
                                    ["--max-flux-factor", "nan"], ["--max-flux-factor", "-0.5"],
                                    ["--seed", "-1"], ["--lebedev-order", "5"], ["--threads", "-1"]])
def test_synth_refuses_unphysical_or_crashing_options(tmp_path, capsys, option):
    pytest.importorskip("h5py")
    output = tmp_path / "s.h5"
    line = refused(capsys, ["synth", "-o", str(output), "-n", "10", "-q", *option])
    assert option[0].lstrip("-").replace("-", "_") in line.replace("-", "_")
    assert listing(tmp_path) == []


# -- 6. small API refusals ----------------------------------------------------------------------------------

def test_closure_chunk_size_and_empty_results_refuse_bad_sizes():
    import dodo

    if dodo.runtime_available():
        for size in (2**31, 0, 1.5):
            with pytest.raises(ValueError, match="chunk_size must be an integer"):
                dodo.Closure("box3d", chunk_size=size)
        dodo.Closure("box3d", chunk_size=2.0)  # integral floats are taken
        with pytest.raises(ValueError, match="batch_shape must be an integer"):
            dodo.ClosureResult.empty(1.5)
    for shape in (1.5, (2, 1.5)):
        with pytest.raises(ValueError, match="batch_shape must be an integer"):
            dodo.Box3DResult.empty(shape)
    with pytest.raises(ValueError, match="sizes >= 0"):
        dodo.Box3DResult.empty(-1)
    # An integral float was taken as a size; refused since round eighteen (docs/reliability_python.md
    # section 20), as np.empty refuses it: a shape holds integers.
    with pytest.raises(ValueError, match="batch_shape must be an integer"):
        dodo.Box3DResult.empty((2, 3.0))
    assert dodo.Box3DResult.empty((2, np.int32(3))).F_box.shape == (2, 3, 6, 4)
    assert dodo.Box3DResult.empty(np.int64(2)).status.shape == (2,)


def test_workspaces_beyond_the_machines_memory_are_refused_before_any_is_made(monkeypatch):
    """threads x chunk_size at their limits (1,024 x 2^20 cells: ~3 TiB of workspaces) was touched
    page by page at construction, so the kernel's out-of-memory killer ended the process; now a
    MemoryError says so at once, for a model and for Box3D alone."""
    import dodo
    import dodo._closure

    if not dodo.runtime_available():
        pytest.skip("no runtime")
    # Closure starts at most max(64, CPUs) workers (round seventeen): let all 1,024 through, as on a
    # machine with that many cores, so that the runtime's own check is the one that answers.
    monkeypatch.setattr(dodo._closure, "_most_workers", lambda: 1024)
    for model in (None, "box3d"):
        with pytest.raises(MemoryError, match=r"1024 thread\(s\) x chunk_size 1048576 need .* GiB of workspaces, "
                                              r"more than this machine's .* lower chunk_size or threads"):
            dodo.Closure(model, threads=1024, chunk_size=2**20)


# -- dodo.closure's cache loads what the path names now (outside probe, 2026-12-01) -------------

def test_closure_cache_follows_the_file_a_path_names_now(tmp_path, monkeypatch):
    import shutil

    import dodo
    from dodo.models import default_model_path

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    default = default_model_path()
    synthetic = default.parent / "synthetic-test-equivariant.onnx"
    rng = np.random.default_rng(3)
    from conftest import random_states

    F = random_states(rng, 64, max_flux_factor=0.6)
    expected_default = dodo.Closure(default).apply(F).F_pred
    expected_synthetic = dodo.Closure(synthetic).apply(F).F_pred
    assert not np.array_equal(expected_default, expected_synthetic)

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    shutil.copy(default, first / "model.onnx")
    shutil.copy(synthetic, second / "model.onnx")
    monkeypatch.chdir(first)
    np.testing.assert_array_equal(dodo.closure(F, model="model.onnx"), expected_default)
    monkeypatch.chdir(second)  # the same relative path now names the other package
    np.testing.assert_array_equal(dodo.closure(F, model="model.onnx"), expected_synthetic)
    shutil.copy(default, second / "model.onnx.new")  # a package rewritten in place (atomically)
    os.replace(second / "model.onnx.new", second / "model.onnx")
    np.testing.assert_array_equal(dodo.closure(F, model="model.onnx"), expected_default)


def test_a_strided_memoryview_of_a_package_loads_like_its_bytes():
    import dodo
    from dodo.models import default_model_path

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    data = default_model_path().read_bytes()
    doubled = bytearray(2 * len(data))
    doubled[::2] = data
    closure = dodo.Closure(memoryview(doubled)[::2])
    F = np.zeros((1, 6, 4))
    F[0, :, 0] = 1.0
    np.testing.assert_array_equal(closure.apply(F).F_pred, dodo.Closure().apply(F).F_pred)


def test_numpy_save_atomic_writes_exactly_the_named_file_and_keeps_it_on_failure(tmp_path):
    """The tools' np.save calls (noise_gate_study --save, growth_emu_axis_study --cache) wrote in
    place: a killed run left a torn file where a whole one had been."""
    from dodo._atomic import numpy_save_atomic

    target = tmp_path / "scale.npy"
    numpy_save_atomic(target, np.arange(3.0))
    assert np.array_equal(np.load(target), np.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.npy"]  # no ".npy.npy", no temporary left

    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("fails mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        numpy_save_atomic(target, Unsaveable())
    assert np.array_equal(np.load(target), np.arange(3.0))  # the earlier file is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.npy"]


@pytest.mark.parametrize("compressed", [False, True])
def test_numpy_savez_atomic_writes_exactly_the_named_file(tmp_path, compressed):
    """tools/gate_study.py --save (a NamedTemporaryFile left behind when a run failed) and
    tools/make_box3d_regression.py (the committed reference, written in place) use it."""
    from dodo._atomic import numpy_savez_atomic

    target = tmp_path / "oof"  # no suffix: np.savez given this name would write oof.npz
    numpy_savez_atomic(target, {"r": np.arange(4.0), "d2": np.ones(4)}, compressed=compressed)
    with np.load(target) as saved:
        assert np.array_equal(saved["r"], np.arange(4.0)) and np.array_equal(saved["d2"], np.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oof"]
