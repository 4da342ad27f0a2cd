"""Outside probe, round twenty (docs/reliability_python.md, section 22): each test failed on the
code before its fix."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import digest, refused

DATA = Path(__file__).resolve().parents[1] / "data" / "qke"
EMU = DATA / "emu_1d_validation.h5"


# --- a report never replaces a model package, with or without the onnx package ------------------

@pytest.mark.parametrize("name", ["model.onnx", "model_v2", "model.bin"])
@pytest.mark.parametrize("onnx_installed", [True, False])
def test_a_report_never_replaces_a_model_package(capsys, tmp_path, monkeypatch, name, onnx_installed):
    """`dodo score M DATA --json PATH` with PATH a model package: kept only where the onnx package
    was importable and the name ended in .onnx. A run-time install (numpy, onnxruntime) has no
    onnx, so the package was replaced by the JSON table, exit 0."""
    from dodo.models import default_model_path

    if onnx_installed:
        pytest.importorskip("onnx")
    else:
        monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    package = tmp_path / name
    shutil.copy(default_model_path(), package)
    before = digest(package)
    line = refused(capsys, ["score", "box3d", str(EMU), "--bootstrap", "100", "--json", str(package)],
                   package.name, "does not write a report")
    assert "model package" in line
    assert digest(package) == before


def test_files_that_only_look_like_packages_are_not_called_packages(tmp_path, monkeypatch):
    """The byte test needs both the ONNX start and the metadata key: a note that names the key, or a
    file starting with byte 0x08 without it, stays a file of another kind (a report replaces it;
    since round 24 only with --overwrite, the case checked here)."""
    from dodo._output_guard import MODEL_PACKAGE, file_kind, refuse_replacing_with_report

    monkeypatch.setitem(sys.modules, "onnx", None)
    note = tmp_path / "notes.txt"
    note.write_text("every package carries dodo.format_version\n")
    other = tmp_path / "other.bin"
    other.write_bytes(b"\x08\x07 not a package")
    for path in (note, other):
        assert file_kind(path) != MODEL_PACKAGE
        refuse_replacing_with_report(path, "dodo score --json", overwrite=True)  # not data: no refusal


# --- dodo train: launcher variables that describe no place in a job ------------------------------

@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    from cli_helpers import synthetic_preprocessed, tiny_study_base

    root = tmp_path_factory.mktemp("train")
    synthetic_preprocessed(root)
    return tiny_study_base(root)


@pytest.mark.parametrize("environment, named", [
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be an integer"),
    ({"WORLD_SIZE": "-3"}, "WORLD_SIZE must be an integer >= 1"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK is 5 but WORLD_SIZE is 2"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK must be an integer >= 0"),
])
def test_train_names_a_launcher_variable_that_describes_no_job(capsys, train_config, monkeypatch, environment, named):
    """`WORLD_SIZE=2 dodo train ...` (a variable left in the shell, no torchrun): a KeyError 'RANK'
    traceback, exit 1; a word gave `invalid literal for int()` naming no variable; RANK 5 of 2 went
    on to the rendezvous. Now one line naming the variable, exit 2, before any file is made."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    line = refused(capsys, ["train", "--config", str(train_config)], named)
    assert "Traceback" not in line
    assert not (train_config.parent / "unused").exists()


def test_the_launcher_variables_of_a_real_job_still_read():
    from dodo.training.distributed import Distribution

    assert Distribution.from_environment({}).world_size == 1
    assert Distribution.from_environment({"WORLD_SIZE": "1"}).world_size == 1
    assert Distribution.from_environment({"WORLD_SIZE": ""}).world_size == 1
    job = Distribution.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (job.rank, job.world_size, job.local_rank) == (3, 4, 1)


# --- python -m dodo.training.synthetic_model: --help writes nothing ------------------------------

def test_the_test_model_writer_answers_help_without_writing(tmp_path):
    """`python -m dodo.training.synthetic_model --help` (or any argument) rewrote the package's
    shipped test model (python/dodo/models/synthetic-test-equivariant.onnx) in place. Now --help
    prints the usage, an unknown argument is refused, and -o names the file to write."""
    import subprocess

    from dodo.models import MODELS_DIR, TEST_MODEL_NAME

    shipped = MODELS_DIR / TEST_MODEL_NAME
    before = (digest(shipped), shipped.stat().st_mtime_ns)
    command = [sys.executable, "-m", "dodo.training.synthetic_model"]
    answer = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0 and "usage:" in answer.stdout, answer.stderr
    answer = subprocess.run([*command, "bogus"], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 2 and "unrecognized arguments: bogus" in answer.stderr
    assert (digest(shipped), shipped.stat().st_mtime_ns) == before
    output = tmp_path / "test-model.onnx"
    answer = subprocess.run([*command, "-o", str(output)], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    assert output.stat().st_size > 1000 and (digest(shipped), shipped.stat().st_mtime_ns) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["test-model.onnx"]  # no temporary left


def test_write_model_keeps_the_earlier_package_when_the_write_fails(tmp_path, monkeypatch):
    """write_model wrote with Path.write_bytes in place: a failed write left a torn package."""
    from pathlib import Path as RealPath

    from dodo.training import synthetic_model

    output = tmp_path / "model.onnx"
    output.write_bytes(b"the earlier package")
    mlp = synthetic_model.SyntheticMLP.random("equivariant", hidden=(4,), output_scale=0.02, seed=1)

    def full_disk(self, data):
        with open(self, "wb") as handle:
            handle.write(data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RealPath, "write_bytes", full_disk)
    with pytest.raises(OSError):
        synthetic_model.write_model(output, mlp)
    assert output.read_bytes() == b"the earlier package"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]


# --- HDF5 inputs whose datasets are links that cannot be followed --------------------------------

def _linked_copy(path: Path, name: str, link: str) -> Path:
    """EMU's datasets at ``path``, with ``name`` replaced by a dangling soft link or an external
    link to a file that does not exist."""
    import h5py

    with h5py.File(EMU, "r") as source, h5py.File(path, "w") as handle:
        for key in source:
            if key != name:
                handle[key] = source[key][()]
        handle[name] = h5py.SoftLink("/nowhere") if link == "soft" else h5py.ExternalLink("missing.h5", "/x")
    return path


@pytest.mark.parametrize("link", ["soft", "external"])
@pytest.mark.parametrize("name", ["F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)"])
def test_score_names_a_dataset_that_is_a_broken_link(capsys, tmp_path, name, link):
    """`name in file` is true for a link whose target is missing; opening it raised h5py's
    KeyError ("Unable to synchronously open object") as a traceback, exit 1 (`dodo apply` said so in
    one line)."""
    data = _linked_copy(tmp_path / "linked.h5", name, link)
    line = refused(capsys, ["score", "box3d", str(data), "--bootstrap", "100"], data, name, "cannot be opened")
    assert "broken or looping link" in line


@pytest.mark.parametrize("link", ["soft", "external"])
@pytest.mark.parametrize("name", ["F4_initial(1|ccm)", "rotation_R", "tend(s)"])
def test_simulate_names_an_input_dataset_that_is_a_broken_link(capsys, tmp_path, name, link):
    data = _linked_copy(tmp_path / "linked.h5", name, link)
    output = tmp_path / "out.h5"
    refused(capsys, ["simulate", str(output), "--input", str(data), "--linear-only", "--ncell", "16", "--nphi", "8",
                     "--quiet"], data, name, "cannot be opened")
    assert not output.exists()


@pytest.mark.parametrize("name", ["F_init", "invariants", "u"])
def test_train_names_a_preprocessed_dataset_that_is_a_broken_link(capsys, tmp_path, train_config, name):
    """`dodo train` / `train-ensemble` on a preprocessed file whose dataset is a dangling link:
    h5py's KeyError traceback, exit 1."""
    import h5py

    data = tmp_path / "linked.h5"
    shutil.copy(train_config.parent / "pre.h5", data)
    with h5py.File(data, "a") as handle:
        del handle[name]
        handle[name] = h5py.SoftLink("/nowhere")
    refused(capsys, ["train", "--config", str(train_config), "--set", f"data.path={data}",
                     "--set", f"output.checkpoint_dir={tmp_path / 'ck'}", "--set", f"output.results_dir={tmp_path / 'res'}"],
            data, f"'{name}' cannot be opened")
    (tmp_path / "ensemble.yaml").write_text(f"data:\n  path: {data}\noutput:\n  checkpoint: {tmp_path / 'e.pt'}\n")
    refused(capsys, ["train-ensemble", "--config", str(tmp_path / "ensemble.yaml")], data, f"'{name}' cannot be opened")


# --- the maintenance tools that rewrite committed files: --help writes nothing --------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tool, written", [
    ("dataset_card.py", ["docs/dataset.md", "docs/figures/dataset_sampling.png"]),
    ("make_box3d_regression.py", ["tests/data/box3d_regression.npz"]),
    ("add_reference_setting.py", ["python/dodo/data/box3d_cases.json"]),
])
def test_tools_that_rewrite_committed_files_answer_help_without_writing(tool, written):
    """`python tools/dataset_card.py --help` rewrote docs/dataset.md and its figure from data/qke,
    `tools/make_box3d_regression.py --help` the committed regression reference (both ignored
    their arguments); `tools/add_reference_setting.py --help` was `int('--help')`'s ValueError
    traceback. Now --help prints the usage and an argument they do not take is refused, exit 2."""
    import subprocess

    pytest.importorskip("scipy" if tool == "add_reference_setting.py" else "numpy")
    if tool == "dataset_card.py":
        pytest.importorskip("matplotlib")
    files = [ROOT / name for name in written]
    before = [(digest(path), path.stat().st_mtime_ns) for path in files]
    command = [sys.executable, str(ROOT / "tools" / tool)]
    answer = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0 and answer.stdout.startswith("usage:"), answer.stderr
    answer = subprocess.run([*command, "bogus", "words", "here"], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 2 and "error:" in answer.stderr and "Traceback" not in answer.stderr, answer.stderr
    assert [(digest(path), path.stat().st_mtime_ns) for path in files] == before


# --- dodo score: a copy of a data file counts its states once -----------------------------------

def test_score_counts_the_states_of_a_copied_file_once(capsys, tmp_path):
    """The same file named twice (or through a link) was scored once, since its states counted
    twice narrow the intervals; a copy under another name was counted twice: 64 states, a 95%
    interval a third narrower, no word."""
    import json

    from cli_helpers import run

    copy = tmp_path / "copy.h5"
    shutil.copy(EMU, copy)
    code, out, err = run(capsys, ["score", "box3d", str(EMU), "--bootstrap", "100", "--json", "-"])
    assert code == 0
    alone = json.loads(out)
    code, out, err = run(capsys, ["score", "box3d", str(EMU), str(copy), "--bootstrap", "100", "--json", "-"])
    assert code == 0
    both = json.loads(out)
    assert both["n_states"] == alone["n_states"] == 32
    assert both["box3d"] == alone["box3d"]
    assert any("same states as another one" in note for note in both["notes"])
    code, out, err = run(capsys, ["score", "box3d", str(EMU), str(copy), "--bootstrap", "100"])
    assert code == 0 and "(32 states;" in out and "a copy" in out


# --- dodo simulate --use-input-end-time: an end time that cannot be meant ------------------------

def _with_end_times(path: Path, scale: float, first: float | None = None) -> Path:
    """The first two states of EMU with their tend(s) multiplied by ``scale`` (the first set to
    ``first`` when given)."""
    import h5py

    with h5py.File(EMU, "r") as source, h5py.File(path, "w") as handle:
        for key in source:
            values = source[key][()]
            handle[key] = values[:2] if np.ndim(values) and len(values) == 32 else values
        end = handle["tend(s)"][()] * scale
        if first is not None:
            end[0] = first
        handle["tend(s)"][...] = end
    return path


SMALL_RUN = ["--use-input-end-time", "--ncell", "16", "--nphi", "8", "--quiet"]


def test_simulate_drops_end_times_in_another_unit_instead_of_running_for_ever(capsys, tmp_path):
    """tend(s) in nanoseconds (1.6 instead of 1.6e-9) was integrated as given: 1e9 times the
    run, a command that never ends (killed after 30 s in the probe). Each such state is now
    dropped with its reason; none valid: exit 2, nothing written."""
    data = _with_end_times(tmp_path / "ns.h5", 1e9)
    output = tmp_path / "out.h5"
    line = refused(capsys, ["simulate", str(output), "--input", str(data), *SMALL_RUN], "growth times",
                   "is tend(s) in seconds?")
    assert "state 0" in line and "state 1" in line
    assert not output.exists()


def test_simulate_names_an_end_time_whose_cost_overflows(capsys, tmp_path):
    """tend(s) = 1e300 s: a NumPy overflow warning, then the state dropped as 'the maximum-entropy
    fit did not converge'. Now no warning and the end time is named; the other state runs."""
    import warnings

    from cli_helpers import run

    data = _with_end_times(tmp_path / "huge.h5", 1.0, first=1e300)
    output = tmp_path / "out.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, out, err = run(capsys, ["simulate", str(output), "--input", str(data), *SMALL_RUN])
    assert code == 0, err
    assert "maximum-entropy" not in out + err
    import h5py

    with h5py.File(output, "r") as handle:
        assert int(handle.attrs["nstates_valid"]) == 1
        assert "its end time 1e+300 s is too long" in str(handle.attrs["dropped"])


def test_boost_refuses_a_per_cell_velocity_that_would_pair_with_the_species_axis():
    """Six cells of six species with u in box3d's per-cell form (6, 4): NumPy would broadcast u
    against the species axis (each species boosted with another cell's velocity). Refused with
    the way out named; u[..., None, :] gives each cell its own velocity, as box3d does."""
    import dodo

    rng = np.random.default_rng(5)
    F = rng.uniform(0.1, 1.0, (6, 6, 4))
    F[..., 1:] *= 0.1
    v = rng.uniform(-0.3, 0.3, (6, 3))
    W = 1.0 / np.sqrt(1.0 - (v ** 2).sum(axis=1))
    u = np.concatenate([W[:, None], W[:, None] * v], axis=1)
    for boost in (dodo.boost_to_rest, dodo.boost_from_rest):
        with pytest.raises(ValueError, match=r"u\[\.\.\., None, :\]"):
            boost(F, u)
    per_cell = dodo.boost_to_rest(F, u[:, None, :])
    for cell in range(6):  # each cell with its own velocity
        assert np.array_equal(per_cell[cell], dodo.boost_to_rest(F[cell], u[cell]))
    per_vector = dodo.boost_to_rest(F, np.broadcast_to(u, F.shape))  # the explicit other meaning still works
    assert np.array_equal(per_vector[0, 2], dodo.boost_to_rest(F[0, 2], u[2]))


def test_score_counts_states_shared_by_two_files_once(capsys, tmp_path):
    """A file that shares only some states with another (its first ten states, as a subset or a
    merge of two runs would) escaped the copy check, which compared whole files: 42 states
    scored, ten of them twice, and no word. Each state now counts once, with a note."""
    import json

    import h5py

    from cli_helpers import run

    subset = tmp_path / "first_ten.h5"
    with h5py.File(EMU, "r") as source, h5py.File(subset, "w") as target:
        for name, item in source.items():
            target[name] = item[()] if item.shape == () else item[:10]
    code, out, err = run(capsys, ["score", "box3d", str(EMU), "--bootstrap", "100", "--json", "-"])
    assert code == 0
    alone = json.loads(out)
    code, out, err = run(capsys, ["score", "box3d", str(subset), str(EMU), "--bootstrap", "100", "--json", "-"])
    assert code == 0, err
    both = json.loads(out)
    assert both["n_states"] == alone["n_states"] == 32
    assert both["box3d"]["mean"] == pytest.approx(alone["box3d"]["mean"], rel=1e-12)
    assert any("10 state(s) repeat states of another data file" in note for note in both["notes"])
    # Indices count the joined states; each also names its file and row there (the later file's
    # rows 0-9 were left out, so joined state 10 is its row 10).
    origins = both["per_state"]["origin"]
    assert len(origins) == 32 and origins[0] == f"{subset}#0" and origins[10] == f"{EMU}#10"
    assert all(w["origin"] == origins[w["index"]] for w in both["worst_states"])
    code, out, err = run(capsys, ["score", "box3d", str(subset), str(EMU), "--bootstrap", "100"])
    assert code == 0 and (f"({EMU}#" in out or f"({subset}#" in out)
