"""Outside probe, round eight (docs/reliability_python.md section 11): inputs a first-time user
sent to the Emu readers and the less-probed commands; each case failed before its fix."""
from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import emu_file, refused, run

h5py = pytest.importorskip("h5py")

import dodo  # noqa: E402
from dodo.conventions import to_emu_layout  # noqa: E402


def _cell_rows(n: int) -> np.ndarray:
    """n crossing cells at rest, Emu layout [n, 4, 2, 3]."""
    F = np.zeros((n, 6, 4))
    F[:, 0] = [1.0, 0, 0, 0.5]
    F[:, 3] = [1.0, 0, 0, -0.5]
    F[:, [1, 2, 4, 5], 0] = 0.3
    return to_emu_layout(F)


@pytest.mark.parametrize("command", ["apply", "preprocess"])
@pytest.mark.parametrize("damage", ["external link", "soft-link loop", "complex", "strings"])
def test_emu_datasets_that_cannot_be_read_as_real_numbers_are_refused_naming_the_file(tmp_path, capsys,
                                                                                      command, damage):
    """A dangling external link gave a KeyError traceback; a soft-link loop HDF5's bare message
    without the file; a complex F4_initial lost its imaginary part silently (rc 0); strings of the
    right shape were parsed as numbers or failed inside NumPy."""
    rows = _cell_rows(8)
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle["F4_final(1|ccm)"] = rows
        if damage == "external link":
            handle["F4_initial(1|ccm)"] = h5py.ExternalLink("nonexistent.h5", "/x")
        elif damage == "soft-link loop":
            handle["F4_initial(1|ccm)"] = h5py.SoftLink("/F4_initial(1|ccm)")
        elif damage == "complex":
            handle["F4_initial(1|ccm)"] = rows * (1 + 0.5j)
        else:
            handle["F4_initial(1|ccm)"] = rows.astype("S8")
    if command == "apply":
        argv = ["apply", str(path), "--grid", "2x2x2", "--model", "box3d", "-q"]
    else:
        config = tmp_path / "pre.yaml"
        config.write_text(f"inputs: [{path}]\noutput: {tmp_path / 'out.h5'}\n")
        argv = ["preprocess", "--config", str(config), "-q"]
    line = refused(capsys, argv, "bad.h5", "F4_initial(1|ccm)")
    assert "Traceback" not in line
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("values", [np.array([b"fast"] * 8), np.ones(8) * (1 + 1j)], ids=["strings", "complex"])
def test_a_growth_rate_dataset_of_strings_or_complex_numbers_is_refused_naming_it(tmp_path, capsys, values):
    """`dodo preprocess` on a file whose growthRate(1|s) held strings: "could not convert string to
    float: np.bytes_(b'fast')" (no file, no dataset); complex rates lost their imaginary part."""
    path = emu_file(tmp_path / "rates.h5", _cell_rows(8), **{"growthRate(1|s)": values})
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{path}]\noutput: {tmp_path / 'out.h5'}\n")
    refused(capsys, ["preprocess", "--config", str(config), "-q"], "rates.h5", "growthRate(1|s)")
    assert not (tmp_path / "out.h5").exists()


def test_apply_names_non_positive_densities_as_such(tmp_path, capsys):
    """Rows with negative densities were reported as 'a non-finite or empty input', 'flagged
    NONFINITE below', and the run stopped with 'no cell ... has a finite input': all untrue."""
    rows = _cell_rows(8)
    path = emu_file(tmp_path / "negative.h5", -rows)
    line = refused(capsys, ["apply", str(path), "--grid", "2x2x2", "--model", "box3d", "-q"], "negative.h5")
    assert "N_tot <= 0" in line and "has a finite input" not in line
    rows_mixed = _cell_rows(8)
    rows_mixed[:2] *= -1
    path = emu_file(tmp_path / "mixed.h5", rows_mixed)
    code, out, err = run(capsys, ["apply", str(path), "--grid", "2x2x2", "--model", "box3d", "-q"])
    assert code == 0, err
    note = next(line for line in out.splitlines() if line.startswith("cells scored"))
    assert "6 of 8" in note and "N_tot" in note and "NEGATIVE_DENSITY" in note


def _limited_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a failure, never the OOM killer


def test_synth_of_many_rows_neither_fills_memory_nor_starts_beyond_the_free_disk(tmp_path):
    """`dodo synth -n 100000000000` was killed by the kernel's OOM killer after 24 GB (the contiguous
    variable-length `directorynames` dataset made HDF5 fill its whole extent at the first write; at
    -n 1e9 the first chunk took 20 s writing 16 GB of fill). Now every dataset is chunked (next
    test), and a run whose output cannot fit on the disk is refused before anything is written.
    Run in a child limited to 3 GiB of address space, so that a regression fails instead of
    taking the machine's memory."""
    import subprocess
    import sys

    output = tmp_path / "many.h5"
    child = subprocess.run([sys.executable, "-m", "dodo", "synth", str(output), "-n", str(10**11), "-q"],
                           capture_output=True, text=True, timeout=120, preexec_fn=_limited_memory)
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert child.returncode == 2 and len(lines) == 1 and "Traceback" not in child.stderr, child.stderr
    assert "many.h5" in lines[0] and "free" in lines[0] and "TB" in lines[0], lines[0]
    assert not list(tmp_path.iterdir())


def test_synth_datasets_are_chunked_and_read_back(tmp_path):
    from dodo.training.synth import write_synthetic_database

    path = tmp_path / "small.h5"
    write_synthetic_database(path, 10, chunk_size=4)
    with h5py.File(path) as handle:
        for name in ("F4_initial(1|ccm)", "F4_final(1|ccm)", "F4_final_stddev(1|ccm)", "growthRate(1|s)",
                     "directorynames"):
            assert handle[name].chunks is not None, name
            assert handle[name].shape[0] == 10
        assert handle["directorynames"][9].decode() == "synthetic/0/9"


def test_info_refuses_two_paths_at_once(capsys):
    """`dodo info --cmake-dir --lib-dir` printed the lib directory alone (the last flag won)."""
    code, _, err = run(capsys, ["info", "--cmake-dir", "--lib-dir"])
    assert code == 2 and "not allowed with" in err


@pytest.fixture(scope="module")
def small_preprocessed(tmp_path_factory):
    """A 300-row synthetic database, preprocessed: (directory, preprocessed file)."""
    from cli_helpers import synthetic_preprocessed

    root = tmp_path_factory.mktemp("study")
    return root, synthetic_preprocessed(root)


def _study_grid(root, tag: str, grid: str, overrides: str):
    (root / "base.yaml").write_text(
        f"data: {{path: {root / 'pre.h5'}, batch_size: 64}}\nmodel: {{head: equivariant, hidden_dim: 8, n_blocks: 1}}\n"
        "training: {epochs: 1, lr: 1.0e-3, threads: 1, log_interval: 1000}\n"
        f"output: {{results_dir: {root / 'unused'}, checkpoint_dir: {root / 'unused'}}}\n")
    grid_file = root / f"{tag}.yaml"
    grid_file.write_text(f"base_config: base.yaml\ntag: {tag}\noutput_root: {root / 'studies'}\n"
                         f"overrides: {overrides}\ngrid: {grid}\n")
    return grid_file


def test_a_diverging_grid_point_does_not_end_the_study(small_preprocessed, capsys):
    """`dodo study` over learning rates stopped at the first diverging one ('non-finite loss'): the
    remaining runs never ran and the finished ones got no summary. Now the run is recorded as
    diverged, the others train, the summary is written, and the exit status is 1."""
    pytest.importorskip("torch")
    import json

    root, _ = small_preprocessed
    grid = _study_grid(root, "lr", "{training.lr: [1.0e+8, 1.0e-3]}", "{}")
    code, out, err = run(capsys, ["study", str(grid)])
    assert code == 1 and "1 of 2 runs did not finish (run_000 diverged)" in err, err
    summary = json.loads((root / "studies" / "lr" / "summary.json").read_text())
    assert [(row["run"], row["status"]) for row in summary] == [("run_000", "diverged"), ("run_001", "completed")]
    assert "non-finite loss" in summary[0]["error"] and summary[0]["best_val_loss"] is None
    assert summary[1]["best_val_loss"] > 0
    table = (root / "studies" / "lr" / "summary.txt").read_text().splitlines()
    assert table[1].split()[0] == "run_001" and table[2].split()[0] == "run_000"  # finished runs first


def test_a_study_whose_runs_stop_early_is_summarised(small_preprocessed, capsys):
    """overrides `training.stop_after_epoch` (a run stopped as asked, resumable) made `dodo study`
    end in a KeyError traceback ('metric_table')."""
    pytest.importorskip("torch")
    import json

    root, _ = small_preprocessed
    grid = _study_grid(root, "early", "{training.lr: [1.0e-3]}", "{training.epochs: 2, training.stop_after_epoch: 1}")
    code, out, err = run(capsys, ["study", str(grid)])
    assert code == 1 and "Traceback" not in err and "run_000 interrupted" in err, err
    [row] = json.loads((root / "studies" / "early" / "summary.json").read_text())
    assert row["status"] == "interrupted" and "last.pt" in row["error"]


@pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")
def test_a_path_object_named_box3d_loads_the_file_not_box3d_alone(tmp_path, monkeypatch):
    """`dodo.Closure(Path("box3d"))` (and `dodo.closure(F, model=Path("box3d"))`) with a model
    package of that name in the working directory ran Box3D alone: the runtime took the path's text
    for the literal "box3d" and dropped the learned correction without a word. Only the string
    "box3d" means Box3D alone (docs: a file of that name is "./box3d")."""
    import shutil
    from pathlib import Path

    from dodo.models import MODELS_DIR

    shutil.copy(Path(MODELS_DIR) / "synthetic-test-equivariant.onnx", tmp_path / "box3d")
    monkeypatch.chdir(tmp_path)
    F = np.zeros((6, 4))
    F[0], F[3], F[1], F[4] = [1, 0, 0, 0.5], [1, 0, 0, -0.5], [0.3, 0.1, 0, 0], [0.2, 0, 0.05, 0]
    closure = dodo.Closure(Path("box3d"), threads=1)
    assert closure.has_model and closure.model_path == "./box3d"
    expected = dodo.Closure("./box3d", threads=1).apply(F).F_pred
    assert np.array_equal(closure.apply(F).F_pred, expected)
    assert np.array_equal(dodo.closure(F, model=Path("box3d")), expected)
    assert not dodo.Closure("box3d").has_model  # the literal keeps its meaning
    assert not np.array_equal(dodo.closure(F, model="box3d"), expected)


def test_plot_curve_writes_its_parity_plot_in_the_format_asked_for(small_preprocessed, tmp_path, capsys):
    """`dodo plot curve M -o curve.pdf` wrote curve.pdf and a PNG curve_parity.png; --help said
    "PNG path" although the extension sets the format (round seven)."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    root, _ = small_preprocessed
    grid = _study_grid(root, "plot", "{training.lr: [1.0e-3]}", "{}")
    assert run(capsys, ["study", str(grid)])[0] == 0
    [metrics] = (root / "studies" / "plot" / "run_000" / "results").glob("metrics_*.json")
    code, out, err = run(capsys, ["plot", "curve", str(metrics), "-o", str(tmp_path / "curve.pdf")])
    assert code == 0, err
    assert (tmp_path / "curve.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "curve_parity.pdf").read_bytes()[:4] == b"%PDF"
    assert not (tmp_path / "curve_parity.png").exists()
    code, out, err = run(capsys, ["plot", "--help"])
    assert "PNG path" not in out and ".pdf" in out


def test_ctrl_c_ends_a_command_with_one_line_and_no_output(tmp_path, capsys, monkeypatch):
    """Ctrl-C in any command printed a KeyboardInterrupt traceback (the temporary output was
    already removed); now one line and exit status 130, and still no file under the output name."""
    from dodo.training import synth

    original = synth.random_initial_states
    calls = []

    def interrupted_on_second_chunk(rng, n, *args, **kwargs):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(rng, n, *args, **kwargs)

    monkeypatch.setattr(synth, "random_initial_states", interrupted_on_second_chunk)
    monkeypatch.setattr(synth.write_synthetic_database, "__defaults__",
                        (0, 16) + synth.write_synthetic_database.__defaults__[2:])  # chunk_size 16
    try:
        code, out, err = run(capsys, ["synth", str(tmp_path / "out.h5"), "-n", "64", "-q"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped dodo's main: the user saw a traceback")
    assert code == 130 and err.strip() == "dodo synth: interrupted" and len(calls) == 2, err
    assert not list(tmp_path.iterdir())


def test_evaluate_from_another_directory_says_to_pass_data(small_preprocessed, tmp_path, capsys, monkeypatch):
    """A checkpoint records its training file as given (often relative); `dodo evaluate CKPT` from
    another directory said "preprocessed file not found: pre.h5 (run `dodo preprocess` first)",
    although the file exists where the training ran. Now it says so and names --data."""
    pytest.importorskip("torch")
    root, _ = small_preprocessed
    monkeypatch.chdir(root)
    grid = _study_grid(root, "relative", "{training.lr: [1.0e-3]}", "{}")
    grid.write_text(grid.read_text().replace(str(root / "pre.h5"), "pre.h5"))
    (root / "base.yaml").write_text((root / "base.yaml").read_text().replace(str(root / "pre.h5"), "pre.h5"))
    assert run(capsys, ["study", str(grid)])[0] == 0
    checkpoint = root / "studies" / "relative" / "run_000" / "checkpoints" / "best.pt"
    monkeypatch.chdir(tmp_path)
    for command in ("evaluate", "inspect"):
        line = refused(capsys, [command, str(checkpoint)], "pre.h5", "--data", str(tmp_path))
        assert "dodo preprocess" not in line
    code, out, err = run(capsys, ["evaluate", str(checkpoint), "--data", str(root / "pre.h5")])
    assert code == 0, err


def test_evaluate_refuses_a_preprocessed_file_with_non_finite_rows(small_preprocessed, tmp_path, capsys):
    """`dodo evaluate CKPT --data damaged.h5` (NaN in one F_true row, Inf in one invariants row:
    dodo preprocess never writes them) printed a metric table of nan with exit 0."""
    pytest.importorskip("torch")
    import shutil

    root, preprocessed = small_preprocessed
    grid = _study_grid(root, "nan", "{training.lr: [1.0e-3]}", "{}")
    assert run(capsys, ["study", str(grid)])[0] == 0
    checkpoint = root / "studies" / "nan" / "run_000" / "checkpoints" / "best.pt"
    damaged = tmp_path / "damaged.h5"
    shutil.copy(preprocessed, damaged)
    with h5py.File(damaged, "a") as handle:
        handle["F_true"][5] = np.nan
        handle["invariants"][7] = np.inf
    line = refused(capsys, ["evaluate", str(checkpoint), "--data", str(damaged), "--split", "all"],
                   "damaged.h5", "2 row(s) with non-finite values")
    assert "nan" not in line.lower().replace("nan or inf", "")


def test_a_package_whose_weights_live_outside_the_file_is_refused(tmp_path, monkeypatch):
    """ONNX external data: a package whose initializers sit in a weights.bin beside the working
    directory loaded under a valid content digest, which covers only the reference, so an edited
    weights.bin changed the outputs unnoticed. The loader now refuses such a file, and the signing
    step refuses to sign one."""
    onnx = pytest.importorskip("onnx")
    from onnx.external_data_helper import convert_model_to_external_data

    from dodo.models import default_model_path
    model = onnx.load(str(default_model_path()))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save_model(model, str(tmp_path / "external.onnx"))
    assert (tmp_path / "weights.bin").stat().st_size > 10_000
    monkeypatch.chdir(tmp_path)  # where ONNX Runtime would find weights.bin
    with pytest.raises(Exception, match="external data"):
        dodo.Closure(tmp_path / "external.onnx", threads=1)
    with pytest.raises(Exception, match="external data"):
        dodo._core.with_content_digest((tmp_path / "external.onnx").read_bytes())
    # The shipped package itself holds every tensor.
    assert dodo.Closure(default_model_path(), threads=1).has_model
