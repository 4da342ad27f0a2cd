"""Outside probe, round eighteen (docs/reliability_python.md section 20): each test failed on the
code before its fix."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import dodo
from cli_helpers import digest, refused, run

SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]

# Two states that can never be simulated: a negative nu_e density (dropped before any batch).
_NEGATIVE = ("states:\n"
             "  - [[-1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], "
             "[1.0e32, 0, 0, 0]]\n"
             "  - [[-2.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], "
             "[1.0e32, 0, 0, 0]]\n")
# Two isotropic states: no crossing, dropped inside the batch loop (after a checkpoint is written).
_STABLE = ("states:\n"
           "  - [[1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], "
           "[1.0e32, 0, 0, 0]]\n"
           "  - [[2.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], [1.0e32, 0, 0, 0], "
           "[1.0e32, 0, 0, 0]]\n")


def _dropped_every_state(capsys, argv) -> str:
    code, _, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("dodo simulate: error: none of the 2 states"), lines
    return lines[-1]


# --- dodo simulate where every state is dropped -------------------------------------------------

@pytest.mark.parametrize("states, extra", [(_NEGATIVE, []), (_STABLE, []), (_NEGATIVE, ["--linear-only"]),
                                           (_STABLE, ["--linear-only"])],
                         ids=["negative", "stable", "negative-linear-only", "stable-linear-only"])
def test_simulate_that_drops_every_state_writes_nothing_and_fails(tmp_path, capsys, states, extra):
    """Every state dropped (negative densities, or linearly stable): an empty database marked
    complete was written, `wrote OUT: 0 of 2 states valid`, exit 0 (--linear-only: `0 of 2 states
    labelled`). Now exit 2, one error line naming OUT and why each state was dropped; no OUT, no
    checkpoint left."""
    pytest.importorskip("h5py")
    source = tmp_path / "states.yaml"
    source.write_text(states)
    out = tmp_path / "out.h5"
    line = _dropped_every_state(capsys, ["simulate", str(out), "--input", str(source), *SMALL, *extra])
    assert str(out) in line and "is not written" in line and "state 0:" in line and "state 1:" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states.yaml"]


@pytest.mark.parametrize("extra", [[], ["--linear-only"]])
def test_simulate_that_drops_every_state_keeps_the_earlier_output(tmp_path, capsys, extra):
    """With --overwrite onto a complete database, a run that drops every state replaced it with an
    empty one; now the earlier file is kept bit for bit (and an empty mktemp file stays empty;
    --linear-only refused an empty file as `cannot be read as a growth-label file`, while a full
    run writes over it)."""
    h5py = pytest.importorskip("h5py")
    source = tmp_path / "states.yaml"
    source.write_text(_NEGATIVE)
    out = tmp_path / "done.h5"
    with h5py.File(out, "w") as handle:
        handle["F4_initial(1|ccm)"] = np.ones((3, 4, 2, 3))
        handle.attrs.update({"complete": True, "solver": "{}", "nstates_valid": 3, "command": "dodo simulate ..."})
    before = digest(out)
    _dropped_every_state(capsys, ["simulate", str(out), "--input", str(source), *SMALL, "--overwrite", *extra])
    assert digest(out) == before
    empty = tmp_path / "empty.h5"
    empty.touch()
    _dropped_every_state(capsys, ["simulate", str(empty), "--input", str(source), *SMALL, *extra])
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.h5", "empty.h5", "states.yaml"]


def test_simulate_states_raises_when_no_state_is_valid(tmp_path):
    """The library call returned all-invalid results after writing the empty database."""
    pytest.importorskip("h5py")
    from dodo.qke.campaign import NoValidStateError, simulate_states
    from dodo.qke.growth_labels import linear_growth_labels
    from dodo.qke.solver import SolverConfig

    states = -np.ones((1, 6, 4)) * 1e32
    states[..., 1:] = 0
    config = SolverConfig(ncell=16, nphi_equator=8)
    with pytest.raises(NoValidStateError, match="none of the 1 state gave a valid run"):
        simulate_states(states, str(tmp_path / "a.h5"), config, report=lambda message: None)
    with pytest.raises(NoValidStateError, match="none of the 1 state could be labelled"):
        linear_growth_labels(states, str(tmp_path / "b.h5"), config, report=lambda message: None)
    assert list(tmp_path.iterdir()) == []


def test_a_run_with_some_valid_states_still_writes_them(tmp_path, capsys):
    """The other side: one state dropped by --max-cost, the other simulated, exit 0."""
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    code, _, err = run(capsys, ["simulate", str(out), "--random", "2", "--seed", "2", "--max-cost", "1", *SMALL])
    assert code == 0, err
    with h5py.File(out, "r") as handle:
        assert handle["F4_initial(1|ccm)"].shape[0] == 1 and bool(handle.attrs["complete"])


def test_linear_only_writes_over_an_empty_file_as_a_full_run_does(tmp_path, capsys):
    """`f=$(mktemp); dodo simulate $f --linear-only ...` was refused: `exists but cannot be read as a
    growth-label file (... file signature not found)`; a full run writes over an empty file."""
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "labels.h5"
    out.touch()
    code, _, err = run(capsys, ["simulate", str(out), "--random", "2", "--linear-only", *SMALL])
    assert code == 0, err
    with h5py.File(out, "r") as handle:
        assert len(handle["input_index"]) == 2 and bool(handle.attrs["complete"])


# --- dodo export / evaluate / inspect of a file that is not a checkpoint ------------------------

@pytest.mark.parametrize("content, said", [
    (b"hello world\n", "it is a text file, starting 'hello world'"),
    (b"model: x\nepochs: 3\n", "it is a text file, starting 'model: x'"),
    (b'{"a": 1}', "it is a text file"),
    (b"caf\xc3\xa9 notes", "it is a text file, starting 'caf\u00e9 notes'"),
    (b"", "the file is empty"),
    (bytes(range(7, 200)), "it starts with the bytes 07 08 09"),
], ids=["text", "yaml", "json", "utf8", "empty", "binary"])
@pytest.mark.parametrize("command", ["export", "evaluate", "inspect"])
def test_a_file_that_is_not_a_checkpoint_is_called_so(tmp_path, capsys, content, said, command):
    """torch.load reads any file that is not a zip archive as a legacy pickle: a text file given as
    a checkpoint was refused as one that "asks to run Python code ... (Unsupported operand 109)",
    an empty one as "truncated or corrupted ()", "hello world" as "... corrupted (101)". Now: not a
    checkpoint, what it is, and what to give; nothing is unpickled, nothing written."""
    pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    argv = [command, str(path)] + (["-o", str(tmp_path / "m.onnx")] if command == "export" else [])
    line = refused(capsys, argv, path, "not a checkpoint (", said)
    assert "Python code" not in line and "operand" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_text_pickle_is_not_a_checkpoint_and_never_runs(tmp_path, capsys):
    """A protocol-0 pickle is text: it is refused before any unpickling, its code never runs; a
    crafted pickle inside a zip archive (torch's format) is still refused as code to run."""
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    text = tmp_path / "text.pt"
    text.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    refused(capsys, ["export", str(text), "-o", str(tmp_path / "a.onnx")], "not a checkpoint (it is a text file")

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    archive = tmp_path / "crafted.pt"
    torch.save({"format": "dodo-checkpoint-v1", "x": Planted()}, archive)
    refused(capsys, ["export", str(archive), "-o", str(tmp_path / "b.onnx")], "refused", "not loaded")
    assert not marker.exists()


def test_a_train_resume_from_a_text_file_falls_back_to_the_previous_checkpoint(tmp_path):
    """A last.pt that is not a checkpoint is a corrupt one for resuming (the previous one is used)."""
    pytest.importorskip("torch")
    from dodo.training.train import CorruptCheckpointError, load_checkpoint

    path = tmp_path / "last.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CorruptCheckpointError, match="not a checkpoint \\(it is a text file"):
        load_checkpoint(path)


# --- ClosureResult.empty / Box3DResult.empty with a float size ----------------------------------

@pytest.mark.parametrize("shape", [(2.0,), 2.0, (2, 3.0), (np.float64(2),), (True,), (2, False)])
@pytest.mark.parametrize("kind", ["ClosureResult", "Box3DResult"])
def test_empty_results_refuse_a_float_or_bool_size(shape, kind):
    """`ClosureResult.empty((2.0,))` made arrays of 2 cells, although a shape holds integers
    (np.empty((2.0,)) refuses it); now a ValueError naming the shape."""
    with pytest.raises(ValueError, match="batch_shape must be an integer or a tuple of integers") as caught:
        getattr(dodo, kind).empty(shape)
    assert repr(shape) in str(caught.value)


def test_empty_results_take_integer_sizes_of_any_integer_type():
    assert dodo.ClosureResult.empty((np.int64(2), np.uint8(3))).F_pred.shape == (2, 3, 6, 4)
    assert dodo.Box3DResult.empty(np.int32(4)).status.shape == (4,)
    assert dodo.ClosureResult.empty(()).F_pred.shape == (6, 4)


# --- one bound, one message, for the thread count of every config ------------------------------

def test_every_config_bounds_its_thread_count_in_one_message(tmp_path, capsys):
    """The bound on threads was checked in three config classes, each in its own words
    (`training.threads must be an integer in [0, 1024] (0 or null: torch's default) or null`,
    `pre.yaml: threads must be >= 0 and <= 1024, or null`, `threads must be a positive integer`
    for 0 and `threads must be an integer in [1, 1024]` above). Now one helper and one message."""
    pytest.importorskip("yaml")
    pytest.importorskip("torch")
    (tmp_path / "train.yaml").write_text("training:\n  epochs: 1\n")
    (tmp_path / "pre.yaml").write_text("inputs: [x.h5]\noutput: o.h5\n")
    (tmp_path / "ensemble.yaml").write_text("data:\n  path: missing.h5\nensemble:\n  members: 1\n")
    cases = [("train", "train.yaml", "training.threads", "[0, 1024] or null"),
             ("preprocess", "pre.yaml", "threads", "[0, 1024] or null"),
             ("train-ensemble", "ensemble.yaml", "ensemble.threads", "[1, 1024]")]
    for command, config, key, bound in cases:
        for value in ("100000", "-1") + (("0",) if command == "train-ensemble" else ()):
            line = refused(capsys, [command, "--config", str(tmp_path / config), "--set", f"{key}={value}"])
            assert f"{key} must be an integer in {bound}; got {value}" in line, line


def test_the_thread_count_helper():
    from dodo.training.config import ConfigError, check_thread_count

    for value in (0, 1, 1024, None):
        check_thread_count("threads", value)
    for value in (-1, 1025, 2.0, True, "2"):
        with pytest.raises(ConfigError, match=r"^threads must be an integer in \[0, 1024\] or null; got "):
            check_thread_count("threads", value)
    with pytest.raises(ConfigError, match=r"^f.yaml: t must be an integer in \[1, 1024\]; got None$"):
        check_thread_count("t", None, lowest=1, nullable=False, where="f.yaml: ")


# --- a config value of the wrong type, in YAML's words ------------------------------------------

def test_a_wrong_type_for_an_optional_key_is_said_in_yaml_words(tmp_path, capsys):
    """`training.threads: 2.5` gave `expected int or NoneType, got 2.5`: Python's type names."""
    pytest.importorskip("yaml")
    config = tmp_path / "train.yaml"
    config.write_text("training:\n  epochs: 1\n  threads: 2.5\n")
    line = refused(capsys, ["train", "--config", str(config)], "training.threads: expected an integer or null, got 2.5")
    assert "NoneType" not in line


# --- dodo simulate --box-length far from the fastest wavelength --------------------------------

def test_a_box_far_longer_than_the_fastest_wavelength_runs(tmp_path, capsys):
    """`--box-length 1e30` dropped every state with numpy's "Maximum allowed size exceeded" (the
    box modes near the fastest k were an np.arange from ~1e29); a box of 1e5 cm, long enough to
    leave no mode near it too, ran on all the box's modes. Now 1e30 runs as 1e5 does."""
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "long.h5"
    code, _, err = run(capsys, ["simulate", str(out), "--random", "2", "--box-length", "1e30", *SMALL])
    assert code == 0, err
    with h5py.File(out, "r") as handle:
        assert handle.attrs["nstates_valid"] == 2
        assert np.all(np.isfinite(handle["F4_final(1|ccm)"][()]))


def test_a_box_too_small_for_its_wavenumbers_is_said_so(tmp_path, capsys):
    """`--box-length 1e-300`: a RuntimeWarning ("invalid value encountered in matmul") and each
    state dropped as "Array must not contain infs or NaNs" (linalg, on the overflowed rates)."""
    pytest.importorskip("h5py")
    out = tmp_path / "small.h5"
    code, _, err = run(capsys, ["simulate", str(out), "--random", "1", "--box-length", "1e-300", *SMALL])
    assert code == 2 and "Warning" not in err and "infs or NaNs" not in err, err
    assert "box length 1e-300 cm is too small" in err, err
    assert not out.exists()


# --- dodo train on a preprocessed file with NaN or Inf --------------------------------------------

def _damaged_copy(tmp_path: Path, dataset: str, index) -> Path:
    import shutil

    import h5py
    from cli_helpers import synthetic_preprocessed

    clean = tmp_path / "clean"
    clean.mkdir(exist_ok=True)
    source = clean / "pre.h5" if (clean / "pre.h5").exists() else synthetic_preprocessed(clean, cells=200)
    damaged = tmp_path / f"{dataset}.h5"
    shutil.copyfile(source, damaged)
    with h5py.File(damaged, "r+") as handle:
        values = handle[dataset][()]
        values[index] = np.nan if dataset == "F_init" else np.inf
        handle[dataset][...] = values
    return damaged


@pytest.mark.parametrize("dataset, index", [("F_init", (0, 0, 0)), ("invariants", (slice(None), 3))])
def test_train_on_a_preprocessed_file_with_nan_or_inf_is_one_line_naming_it(tmp_path, capsys, dataset, index):
    """NaN in F_init was refused as "rows with non-positive total comoving density N_tot" (no
    word of NaN); Inf in the invariants printed NumPy's RuntimeWarning ("invalid value
    encountered in subtract", from the training statistics) before the error: three lines."""
    pytest.importorskip("torch")
    damaged = _damaged_copy(tmp_path, dataset, index)
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{path: {damaged}, batch_size: 64}}\nmodel: {{head: equivariant, hidden_dim: 8, "
                      "n_blocks: 1}\ntraining: {epochs: 1, threads: 1}\n"
                      f"output: {{results_dir: {tmp_path / 'r'}, checkpoint_dir: {tmp_path / 'c'}}}\n")
    with _no_warning():
        line = refused(capsys, ["train", "--config", str(config)], damaged, "with non-finite values (NaN or Inf in F_init,")
    assert "non-positive" not in line


class _no_warning:
    """Fails the test on any warning inside the block (the one-line contract)."""

    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        assert not self._caught, [str(w.message) for w in self._caught]
        return False


# --- dodo train-ensemble on an edited preprocessed file --------------------------------------------

def _edit(handle, case: str) -> None:
    if case == "source index out of range":
        handle["source_file"][...] = 99
    elif case == "negative source index":
        handle["source_file"][0] = -1
    elif case == "float source indices":
        del handle["source_file"]
        handle["source_file"] = np.zeros(len(handle["F_init"]))
    elif case == "sources not objects":
        handle.attrs["sources"] = "[1, 2]"
    elif case == "source without path":
        handle.attrs["sources"] = '[{"rows": 3}]'
    elif case == "lebedev order 5":
        handle.attrs["box3d"] = '{"form": "delta", "lebedev_order": 5, "max_flux_factor": 0.98, "scheme": "pairwise", ' \
                                '"z_method": "exact"}'
    elif case == "flux-factor limit 1.5":
        handle.attrs["box3d"] = '{"form": "delta", "lebedev_order": 17, "max_flux_factor": 1.5, "scheme": "pairwise", ' \
                                '"z_method": "exact"}'
    elif case == "u a group":
        del handle["u"]
        handle.create_group("u")
    elif case == "u strings":
        rows = len(handle["F_init"])
        del handle["u"]
        handle["u"] = np.array([[b"a"] * 4] * rows)
    elif case == "short growth rates":
        del handle["growth_rate"]
        handle["growth_rate"] = np.zeros(10)
    elif case == "growth rates a group":
        del handle["growth_rate"]
        handle.create_group("growth_rate")
    elif case == "NaN in F_init":
        values = handle["F_init"][()]
        values[0, 0, 0] = np.nan
        handle["F_init"][...] = values


@pytest.mark.parametrize("case, said", [
    ("source index out of range", "dataset 'source_file' must hold one index per row"),
    ("negative source index", "dataset 'source_file' must hold one index per row"),
    ("float source indices", "dataset 'source_file' must hold one index per row"),
    ("sources not objects", "attribute 'sources' must list one"),
    ("source without path", "attribute 'sources' must list one"),
    ("lebedev order 5", "attribute 'box3d' holds settings Box3D does not have (lebedev_order 5"),
    ("flux-factor limit 1.5", "attribute 'box3d' holds settings Box3D does not have (max_flux_factor"),
    ("NaN in F_init", "1 row(s) with non-finite values"),
    ("u a group", "['u'] must be datasets, not groups"),
    ("u strings", "datasets that do not hold real numbers {'u': '|S1'}"),
    ("short growth rates", "datasets {'growth_rate': 'float64 (10,)'} must hold one real number per row"),
    ("growth rates a group", "preprocessed file without datasets ['growth_rate']"),
])
def test_train_ensemble_refuses_an_edited_preprocessed_file_in_one_line(tmp_path, capsys, case, said):
    """An out-of-range, negative or float `source_file` ended in an IndexError traceback (exit 1);
    a `sources` entry that is not an object with a path in a TypeError or KeyError traceback; a
    `box3d` attribute with settings Box3D does not have was trained on, and only `dodo export`
    refused it after the training; the non-finite-rows error named no file; `u` as a group ended in
    "AttributeError: 'Group' object has no attribute 'shape'", as strings in a TypeError from
    np.isfinite; short growth rates in NumPy's "operands could not be broadcast together". Now one
    line naming the file and what is wrong, before any training; no checkpoint written."""
    pytest.importorskip("torch")
    import shutil

    import h5py
    from cli_helpers import synthetic_preprocessed

    clean = synthetic_preprocessed(tmp_path, cells=200)
    edited = tmp_path / "edited.h5"
    shutil.copyfile(clean, edited)
    with h5py.File(edited, "r+") as handle:
        _edit(handle, case)
    config = tmp_path / "ensemble.yaml"
    config.write_text(f"data:\n  path: {edited}\n  holdout: []\nensemble:\n  members: 1\n  width: 8\n  depth: 1\n"
                      f"  batch_size: 64\n  epochs: 1\noutput:\n  checkpoint: {tmp_path / 'out' / 'ensemble.pt'}\n")
    refused(capsys, ["train-ensemble", "--config", str(config)], edited, said)
    assert not (tmp_path / "out" / "ensemble.pt").exists()


def test_train_refuses_box3d_settings_box3d_does_not_have(tmp_path, capsys):
    """`dodo train` called an edited `lebedev_order: 5` "other Box3D settings" than its config's:
    now what is wrong with the file itself."""
    pytest.importorskip("torch")
    import shutil

    import h5py
    from cli_helpers import synthetic_preprocessed, tiny_study_base

    clean = synthetic_preprocessed(tmp_path, cells=120)
    edited = tmp_path / "edited.h5"
    shutil.copyfile(clean, edited)
    with h5py.File(edited, "r+") as handle:
        _edit(handle, "lebedev order 5")
    base = tiny_study_base(tmp_path)
    refused(capsys, ["train", "--config", str(base), "--set", f"data.path={edited}"], edited,
            "attribute 'box3d' holds settings Box3D does not have (lebedev_order 5 is not available")


# --- dodo export of an edited train-ensemble checkpoint --------------------------------------------

def _trained(tmp_path_factory, folder: str, command: str, config_name: str, config_text) -> tuple:
    """`dodo COMMAND --config CONFIG` run to success in a fresh folder on 200 synthetic preprocessed
    cells, CONFIG (config_name in the folder) holding config_text(folder, preprocessed file): (the
    folder, CONFIG)."""
    pytest.importorskip("torch")
    from cli_helpers import synthetic_preprocessed
    from dodo.cli import main

    root = tmp_path_factory.mktemp(folder)
    pre = synthetic_preprocessed(root, cells=200)
    config = root / config_name
    config.write_text(config_text(root, pre))
    assert main([command, "--config", str(config)]) == 0
    return root, config


@pytest.fixture(scope="module")
def ensemble_checkpoint(tmp_path_factory):
    root, _ = _trained(tmp_path_factory, "round18_ensemble", "train-ensemble", "ensemble.yaml", lambda root, pre: (
        f"data:\n  path: {pre}\n  holdout: []\nensemble:\n  members: 2\n  width: 8\n  depth: 1\n"
        f"  batch_size: 64\n  epochs: 1\noutput:\n  checkpoint: {root / 'ensemble.pt'}\n"))
    return root / "ensemble.pt"


def _edited_checkpoint(checkpoint: dict, case: str) -> None:
    import torch

    state = checkpoint["state_dict"]
    edits = {
        "members as text": lambda: checkpoint.__setitem__("members", "2"),
        "members 0": lambda: checkpoint.__setitem__("members", 0),
        "unknown features": lambda: checkpoint["config"].__setitem__("features", "bogus"),
        "no box3d": lambda: checkpoint["data"].pop("box3d"),
        "no data": lambda: checkpoint.pop("data"),
        "config null": lambda: checkpoint.__setitem__("config", None),
        "state a list": lambda: checkpoint.__setitem__("state_dict", [1, 2]),
        "student without width": lambda: checkpoint.__setitem__("student", {"x": 1}),
        "a weight missing": lambda: state.pop("members.0.body.0.weight"),
        "three members claimed": lambda: checkpoint.__setitem__("members", 3),
        "lebedev order 5": lambda: checkpoint["data"]["box3d"].__setitem__("lebedev_order", 5),
        "NaN error_per_spread": lambda: state.__setitem__("error_per_spread", torch.tensor(float("nan"))),
        "negative sigma0": lambda: state.__setitem__("sigma0", torch.tensor(-1.0)),
        "zero r_scale": lambda: state.__setitem__("r_scale", torch.tensor(0.0)),
    }
    edits[case]()


@pytest.mark.parametrize("case, said", [
    ("members as text", "members is '2'; it must be an integer >= 1"),
    ("members 0", "members is 0"),
    ("unknown features", "its feature set 'bogus' is unknown"),
    ("no box3d", "it records no Box3D settings"),
    ("no data", "its 'data' is NoneType, not a mapping"),
    ("config null", "its 'config' is NoneType, not a mapping"),
    ("state a list", "its 'state_dict' is list, not a mapping"),
    ("student without width", "its 'student' must be null or a mapping"),
    ("a weight missing", "Missing key(s) in state_dict"),
    ("three members claimed", "Missing key(s) in state_dict"),
    ("lebedev order 5", "its Box3D settings (data.box3d) are not settings Box3D has (lebedev_order 5"),
    ("NaN error_per_spread", "its gate scalar error_per_spread is nan"),
    ("negative sigma0", "its gate scalar sigma0 is -1.0"),
    ("zero r_scale", "its gate scalar r_scale is 0.0"),
])
def test_export_refuses_an_edited_ensemble_checkpoint_in_one_line(ensemble_checkpoint, tmp_path, capsys, case, said):
    """Edited or damaged `dodo train-ensemble` checkpoints ended in KeyError / TypeError tracebacks
    (exit 1: no data or config, members as text, an unknown feature set, a student without its
    width), in torch's multi-line load_state_dict report, or were exported: a NaN error_per_spread
    (the package silently fell back to the sigma0 gate), a negative sigma0, r_scale 0 (no
    correction at all). Now one line naming the file and what is wrong; nothing written."""
    import torch

    from dodo.training.safe_load import load_torch_file

    checkpoint = load_torch_file(ensemble_checkpoint)
    _edited_checkpoint(checkpoint, case)
    edited = tmp_path / "edited.pt"
    torch.save(checkpoint, edited)
    refused(capsys, ["export", str(edited), "-o", str(tmp_path / "m.onnx")], edited,
            "not a usable `dodo train-ensemble` checkpoint", said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.pt"]


def test_export_of_the_unedited_ensemble_checkpoint_still_works(ensemble_checkpoint, tmp_path, capsys):
    code, _, err = run(capsys, ["export", str(ensemble_checkpoint), "-o", str(tmp_path / "m.onnx")])
    assert code == 0, err
    assert dodo.Closure(tmp_path / "m.onnx").has_model


# --- dodo export / evaluate / inspect / train resume of an edited dodo train checkpoint ----------

@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    root, config = _trained(tmp_path_factory, "round18_train", "train", "train.yaml", lambda root, pre: (
        f"data: {{path: {pre}, batch_size: 64}}\nmodel: {{head: equivariant, hidden_dim: 8, n_blocks: 1}}\n"
        "training: {epochs: 1, threads: 1, log_interval: 1000}\n"
        f"output: {{results_dir: {root / 'results'}, checkpoint_dir: {root / 'checkpoints'}}}\n"))
    return config, root / "checkpoints" / "last.pt"


def _edited_train_checkpoint(source: Path, target: Path, case: str) -> Path:
    import torch

    from dodo.training.safe_load import load_torch_file
    from dodo.training.train import checkpoint_digest

    checkpoint = load_torch_file(source)
    if case == "re-signed without a weight":
        checkpoint["model_state"].pop(next(iter(checkpoint["model_state"])))
        checkpoint["sha256"] = checkpoint_digest(checkpoint)
    else:
        checkpoint.pop("sha256")  # a checkpoint without a digest is read unverified
        if case == "config null":
            checkpoint["config"] = None
        else:
            checkpoint.pop(case)
    torch.save(checkpoint, target)
    return target


@pytest.mark.parametrize("case, said", [
    ("config null", "not a usable Dodo checkpoint: its 'config' is NoneType, not a mapping"),
    ("config", "not a usable Dodo checkpoint: its 'config' is NoneType"),
    ("data", "not a usable Dodo checkpoint: its 'data' is NoneType"),
    ("model_state", "not a usable Dodo checkpoint: its 'model_state' is NoneType"),
    ("re-signed without a weight", "its weights do not fit its model section (Error(s) in loading state_dict"),
])
@pytest.mark.parametrize("command", ["export", "evaluate", "inspect"])
def test_an_edited_train_checkpoint_is_one_line(train_run, tmp_path, capsys, case, said, command):
    """A `dodo train` checkpoint whose digest was removed (read unverified) or recomputed, with its
    config, data or weights removed: KeyError / TypeError tracebacks (exit 1), or torch's
    multi-line load_state_dict report. Now one line naming the file."""
    edited = _edited_train_checkpoint(train_run[1], tmp_path / "edited.pt", case)
    argv = [command, str(edited)] + (["-o", str(tmp_path / "m.onnx")] if command == "export" else [])
    refused(capsys, argv, edited, said)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("case", ["optimizer", "rng", "history", "epoch"])
def test_resuming_from_an_edited_train_checkpoint_is_one_line(train_run, tmp_path, capsys, case):
    """`dodo train` resuming from a checkpoint without its digest and without `optimizer` (`rng`,
    `history`, `epoch`) ended in a KeyError traceback."""
    config, last = train_run
    edited = _edited_train_checkpoint(last, tmp_path / "edited.pt", case)
    refused(capsys, ["train", "--config", str(config), "--set", f"training.resume_from={edited}", "--set",
                     "training.epochs=2", "--set", f"output.checkpoint_dir={tmp_path / 'c'}", "--set",
                     f"output.results_dir={tmp_path / 'r'}"], edited, f"cannot resume from it: KeyError '{case}'")


# --- dodo study grid files of the wrong shape ------------------------------------------------------

@pytest.mark.parametrize("lines, said", [
    ("tag: t\noverrides: [1, 2]\n", "overrides must be a mapping of dotted keys to values; got [1, 2]"),
    ("tag: 5\n", "tag must be a non-empty string (a name); got 5"),
    ("tag: t\noutput_root: 3\n", "output_root must be a non-empty string (a path); got 3"),
    ("tag: t\ngrid_extra: 1\n", "unknown key(s) ['grid_extra']"),
    ("tag: t\noverrides: {training.resume_from: x.pt}\n", "overrides sets ['training.resume_from'], which dodo study sets"),
    ("tag: t\noverrides: {output.checkpoint_dir: /tmp/x}\n", "overrides sets ['output.checkpoint_dir']"),
], ids=["overrides list", "int tag", "int root", "unknown key", "resume", "checkpoint dir"])
def test_a_study_grid_of_the_wrong_shape_is_one_line(tmp_path, capsys, lines, said):
    """A grid file with a list of overrides, a number as its tag or output root ended in TypeError
    tracebacks (exit 1); a run directory or resume set in the grid was shown by --dry-run and then
    silently replaced by the study's own."""
    pytest.importorskip("torch")
    (tmp_path / "train.yaml").write_text("training: {epochs: 1}\n")
    grid = tmp_path / "grid.yaml"
    # One output_root: a key given twice is refused as such since round 22 (dodo._yaml).
    root = "" if "output_root:" in lines else f"output_root: {tmp_path / 'studies'}\n"
    grid.write_text("base_config: train.yaml\n" + root + lines + "grid:\n  training.lr: [1.0e-3]\n")
    refused(capsys, ["study", str(grid), "--dry-run"], grid, said)


@pytest.mark.parametrize("grid_lines, said", [
    ("grid:\n  3: [1.0e-3]\n", "grid keys must be dotted config keys (section.key); got [3]"),
    ("grid:\n  output.results_dir: [a, b]\n", "grid sets ['output.results_dir']"),
])
def test_a_study_grid_key_that_is_not_a_config_key_is_one_line(tmp_path, capsys, grid_lines, said):
    """`3: [...]` in the grid ended in "AttributeError: 'int' object has no attribute 'split'"."""
    pytest.importorskip("torch")
    (tmp_path / "train.yaml").write_text("training: {epochs: 1}\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("base_config: train.yaml\ntag: t\n"
                    f"output_root: {tmp_path / 'studies'}\n" + grid_lines)
    refused(capsys, ["study", str(grid), "--dry-run"], grid, said)


def test_a_study_base_config_that_is_not_a_path_is_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    grid = tmp_path / "grid.yaml"
    grid.write_text("base_config: [a]\ntag: t\ngrid:\n  training.lr: [1.0e-3]\n")
    refused(capsys, ["study", str(grid), "--dry-run"], grid, "base_config must be a non-empty string (a path)")


# --- train-ensemble config keys in the wrong place, or of the wrong type ----------------------------

@pytest.mark.parametrize("setting, said", [
    ("data.seed=3", "unknown key 'data.seed' (the data section has ['features', 'holdout', 'path'])"),
    ("growth.seed=3", "unknown key 'growth.seed' (the growth section has"),
    ("noise.lr=1", "unknown key 'noise.lr'"),
    ("members=3", "unknown key 'members'"),
    ("ensemble.holdout=[]", "unknown key 'ensemble.holdout'"),
    ("ensemble=3", "'ensemble' is a section; set one of its keys"),
    ("growth.data={a: 1}", "growth.data must be a value, not a mapping"),
    ("data.path=[a]", "data.path must be a path (a non-empty string); got ['a']"),
    ("output.checkpoint=5", "output.checkpoint must be a path (a non-empty string); got 5"),
    ("ensemble.seed=1.5", "seed must be an integer >= 0; got 1.5"),
    ("ensemble.seed=-1", "seed must be an integer >= 0; got -1"),
    ("ensemble.mirror=maybe", "mirror must be true or false; got 'maybe'"),
])
@pytest.mark.parametrize("command", ["train-ensemble", "learning-curve"])
def test_ensemble_config_keys_are_known_in_their_own_section_only(tmp_path, capsys, setting, said, command):
    """Any `SECTION.x` (or a bare `x`) set the ensemble's field x: `data.seed`, `growth.seed` set the
    members' seed, `noise.lr` their learning rate, without a word; `ensemble: 3` was "unknown key
    'ensemble'"; a list or number as data.path or output.checkpoint ended in os.fspath's TypeError
    traceback; a float seed in torch's "manual_seed expected a long"; a negative seed and a string
    mirror were taken. Now one line each, before the table is read."""
    pytest.importorskip("torch")
    config = tmp_path / "ensemble.yaml"
    config.write_text(f"data:\n  path: {tmp_path / 'missing.h5'}\nensemble:\n  members: 1\noutput:\n"
                      f"  checkpoint: {tmp_path / 'out.pt'}\n")
    refused(capsys, [command, "--config", str(config), "--set", setting], said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble.yaml"]


def test_the_default_ensemble_config_still_loads():
    from dodo.training.ensemble_train import EnsembleConfig

    root = Path(__file__).resolve().parents[2]
    config = EnsembleConfig.load(str(root / "training" / "configs" / "ensemble_default.yaml"))
    assert config.members >= 1 and config.noise_oof is not None


# --- dodo simulate with no states to simulate ----------------------------------------------------

def test_simulate_of_no_states_names_the_input_or_the_option(tmp_path, capsys):
    """`--random 0` said "states must have shape [n >= 1, 6, 4]; got (0, 6, 4)", `--random -2` "count
    must be non-negative", an input with no states the same shape line without its name."""
    h5py = pytest.importorskip("h5py")
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as handle:
        handle["F4_initial(1|ccm)"] = np.zeros((0, 4, 2, 3))
    out = tmp_path / "out.h5"
    for extra in ([], ["--linear-only"]):
        refused(capsys, ["simulate", str(out), "--input", str(empty), *extra], empty, "holds no states")
    for count in ("0", "-2"):
        refused(capsys, ["simulate", str(out), "--random", count], f"--random must be a number of states >= 1; got {count}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.h5"]


# --- python -m dodo.test with arguments ------------------------------------------------------------

def test_the_smoke_test_answers_help_and_refuses_arguments(tmp_path):
    """`python -m dodo.test --help` ran the whole check (no usage); `python -m dodo.test bogus`
    ignored its argument without a word."""
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "dodo.test", "--help"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m dodo.test"), shown
    assert "OK" not in shown.stdout  # the check did not run
    refused = subprocess.run([sys.executable, "-m", "dodo.test", "bogus"], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "", refused
    assert refused.stderr.splitlines()[-1] == "python -m dodo.test: error: it takes no arguments; got bogus"


# --- python -m dodo.qke.validate -----------------------------------------------------------------

def _validate(capsys, argv) -> tuple[int, str]:
    from dodo.qke.validate import main

    code = main(argv)
    return code, capsys.readouterr().err


def test_validate_emu32_does_not_replace_a_file_that_is_not_its_own(tmp_path, capsys):
    """`python -m dodo.qke.validate emu32 --output syn.h5` replaced a `dodo synth` database (any
    file: an Emu database, a campaign chunk, notes) with its validation database, exit 0. Now
    refused before any work unless --overwrite; its own earlier database, an empty file and a new
    path are written as before."""
    h5py = pytest.importorskip("h5py")
    from dodo.cli import main
    from dodo.qke.validate import refuse_replacing_other_files

    synthetic = tmp_path / "syn.h5"
    assert main(["synth", str(synthetic), "-n", "20", "-q"]) == 0
    capsys.readouterr()
    notes = tmp_path / "notes.h5"
    notes.write_bytes(b"three days of notes")
    for path, kind in ((synthetic, "a synthetic database (dodo synth)"), (notes, "a file of another kind")):
        before = digest(path)
        code, err = _validate(capsys, ["emu32", "--output", str(path)])
        assert code == 2 and f"{path} exists and is {kind}" in err and "--overwrite" in err, err
        assert digest(path) == before
    own = tmp_path / "own.h5"
    with h5py.File(own, "w") as handle:
        handle.attrs.update({"solver": "dodo.qke", "validation_reference": "emu_1d_validation.h5", "complete": True})
    refuse_replacing_other_files(str(own))  # a rerun's own output: replaced as before
    (tmp_path / "empty.h5").touch()
    refuse_replacing_other_files(str(tmp_path / "empty.h5"))
    refuse_replacing_other_files(str(tmp_path / "new.h5"))


@pytest.mark.parametrize("argv, said", [
    (["nsm1", "--seeds", "abc"], "--seeds takes comma-separated integers, e.g. 0,1,2; got 'abc'"),
    (["nsm1", "--seeds", ""], "--seeds takes comma-separated integers"),
    (["nsm1", "--seeds", "-1"], "--seeds must be integers >= 0; got '-1'"),
    (["nsm1", "--only", "zzz"], "--only 'zzz' matches none of the configurations"),
])
def test_validate_nsm1_options_that_cannot_run_are_one_line(capsys, argv, said):
    """`--seeds abc` said "invalid literal for int() with base 10: 'abc'" (no option named); `--only`
    matching no configuration ran nothing and exited 0."""
    pytest.importorskip("h5py")
    code, err = _validate(capsys, argv)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, said", [
    (["nsm1", "--reference", "/dev/null"], "/dev/null is a character device, not a regular file"),
    (["nsm1", "--box3d-cases", "{notes}"], "not Dodo's box3d_cases.json with an 'nsm1' case (JSONDecodeError"),
    (["nsm1", "--box3d-cases", "{no_case}"], "not Dodo's box3d_cases.json with an 'nsm1' case (StopIteration"),
    (["nsm1", "--reference", "{synthetic}"], "no dataset 'walltime(s)': not an Emu reference file like emu_nsm1_1d.h5"),
    (["emu32", "--reference", "{synthetic}", "--output", "{out}"],
     "no dataset 'linear_growthRate_box(1|s)': not an Emu reference file like emu_1d_validation.h5"),
])
def test_validate_reference_and_case_files_of_another_kind_are_one_line(tmp_path, capsys, argv, said):
    """`--reference /dev/null` was "reference file not found"; a box3d-cases file that is not JSON
    was "Expecting value: line 1 column 1 (char 0)" (no file named, and only after the runs), one
    without an nsm1 case a StopIteration traceback; a reference file of another kind h5py's
    "Unable to synchronously open object (object '...' doesn't exist)"."""
    pytest.importorskip("h5py")
    from dodo.cli import main

    (tmp_path / "notes.json").write_text("three days of notes")
    (tmp_path / "none.json").write_text('{"cases": []}')
    assert main(["synth", str(tmp_path / "syn.h5"), "-n", "20", "-q"]) == 0
    capsys.readouterr()
    names = {"notes": tmp_path / "notes.json", "no_case": tmp_path / "none.json", "synthetic": tmp_path / "syn.h5",
             "out": tmp_path / "out.h5"}
    code, err = _validate(capsys, [part.format(**names) for part in argv])
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.h5").exists()
