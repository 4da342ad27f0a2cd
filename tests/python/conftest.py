"""Shared fixtures: random physical states, boosts and rotations, the reference cases."""
from __future__ import annotations

import importlib.util
import json
import sys
import os
import signal
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

# A suite started with `&` from a script (a shell without job control: a CI runner, `nohup ... &`) runs
# with SIGINT ignored, and an ignored signal stays ignored across exec: every child interpreter of the
# tests then had no KeyboardInterrupt handler, and the tests that send a child Ctrl-C saw it finish
# ("completed"; data-loss round fifteen). Python's own handler here is reset to the default by exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def random_states(rng: np.random.Generator, n: int, *, max_flux_factor: float = 0.9,
                  mu_equals_tau: bool = False, scale: float = 1e33) -> np.ndarray:
    """n random realizable cells (n, 6, 4) in the rest frame: densities, flux factors, directions."""
    density = rng.uniform(0.05, 1.0, (n, 6)) * scale
    flux_factor = rng.uniform(0.0, max_flux_factor, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F = np.empty((n, 6, 4))
    F[..., 0] = density
    F[..., 1:] = direction * (density * flux_factor)[..., None]
    if mu_equals_tau:
        F[:, 2] = F[:, 1]
        F[:, 5] = F[:, 4]
    return F


def random_velocities(rng: np.random.Generator, n: int, max_speed: float = 0.6) -> np.ndarray:
    """n fluid four-velocities (W, W v) with |v| < max_speed in random directions."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    speed = rng.uniform(0.0, max_speed, n)
    W = 1.0 / np.sqrt(1.0 - speed**2)
    return np.concatenate([W[:, None], (W * speed)[:, None] * direction], axis=1)


def lorentz_boost_matrix(u: np.ndarray) -> np.ndarray:
    """4x4 matrix of the pure boost that takes the rest frame to the frame where the fluid has u."""
    W, spatial = u[0], u[1:]
    L = np.eye(4)
    L[0, 0] = W
    L[0, 1:] = spatial
    L[1:, 0] = spatial
    L[1:, 1:] += np.outer(spatial, spatial) / (W + 1.0)
    return L


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def rows_written_when_interrupted(call, F, out, rows, delay_s: float = 0.005):
    """call(F, out) with ``rows`` (out's per-cell rows, (n, 6, 4)) set to NaN first and a timer that
    raises KeyboardInterrupt after ``delay_s``: a bool per cell, whether its row was written when the
    interrupt arrived; None when the call ended first (the tests of Ctrl-C between slices)."""
    previous = signal.signal(signal.SIGALRM, _raise_keyboard_interrupt)
    rows[...] = np.nan
    try:
        signal.setitimer(signal.ITIMER_REAL, delay_s)
        call(F, out)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except KeyboardInterrupt:
        return np.isfinite(rows).all(axis=(1, 2))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return None


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture(scope="module")
def native_evaluator():
    """For a module's tests: 'native' means the runtime's own evaluator whatever the caller's
    environment (DODO_NETWORK_EVALUATOR removed while the module runs; for bit-for-bit tests)."""
    patch = pytest.MonkeyPatch()
    patch.delenv("DODO_NETWORK_EVALUATOR", raising=False)
    yield
    patch.undo()


@pytest.fixture(scope="module")
def closures(native_evaluator):
    """A module's closures by name: "box3d" (Box3D alone), "model" (the default model, native evaluator)
    and "onnxruntime" (the same through ONNX Runtime, where its library is found). Modules that need
    other options define their own."""
    import dodo

    found = {"box3d": dodo.Closure("box3d", threads=2), "model": dodo.Closure(threads=2)}
    try:
        found["onnxruntime"] = dodo.Closure(threads=2, evaluator="onnxruntime")
    except Exception:  # no ONNX Runtime library on this machine: the native evaluator alone
        pass
    return found


@pytest.fixture(scope="module")
def default_package():
    """The shipped default model package as an onnx.ModelProto (for tests that edit copies of it);
    skips without onnx or without a shipped model."""
    onnx = pytest.importorskip("onnx")
    from dodo._closure import model_file

    path = model_file(None)
    if not path:
        pytest.skip("no default model shipped")
    return onnx.load(path)


@pytest.fixture(scope="module")
def make_seeds():
    """fuzz/make_seeds.py as a module (it is a script, not a package), for the fuzzing campaigns' tests."""
    path = Path(__file__).resolve().parents[2] / "fuzz" / "make_seeds.py"
    spec = importlib.util.spec_from_file_location("fuzz_make_seeds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference_cases() -> list[dict]:
    text = resources.files("dodo").joinpath("data/box3d_cases.json").read_text()
    return json.loads(text)["cases"]


@pytest.fixture(scope="module")
def tiny_nsm1_reference(tmp_path_factory) -> Path:
    """The NSM1 reference cut to one configuration of 16 cells run for 1e-11 s (a fraction of a
    second): python -m dodo.qke.validate runs it in the probe rounds' tests."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path_factory.mktemp("nsm1") / "tiny.h5"
    with h5py.File(Path(__file__).resolve().parents[2] / "tests/data/qke/emu_nsm1_1d.h5", "r") as source, h5py.File(path, "w") as handle:
        for name in ("F4_initial(1|ccm)", "F4_final(1|ccm)", "growthRate(1|s)", "walltime(s)"):
            handle[name] = source[name][()][:1]
        handle["directorynames"] = np.array([b"tiny_nz16_L4_nphi8"])
        handle["tend(s)"] = np.array([1e-11])
    return path


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> dict:
    """A preprocessed table of 200 synthetic cells, a two-member train-ensemble config on it and
    the checkpoint that config trains (a few seconds). Rounds 22 and 26 run the checkpoint tools
    and `dodo learning-curve` on it."""
    pytest.importorskip("torch")
    from cli_helpers import synthetic_preprocessed
    from dodo.cli import main

    root = tmp_path_factory.mktemp("ensemble")
    table = synthetic_preprocessed(root, 200)
    checkpoint = root / "ens.pt"
    config = root / "ens.json"
    config.write_text(json.dumps({
        "data": {"path": str(table), "holdout": [], "features": "invariants27+box7+eln18-v1"},
        "ensemble": {"members": 2, "width": 8, "depth": 1, "steps": 20, "threads": 1},
        "distill": {"width": 8, "depth": 1, "steps": 20}, "output": {"checkpoint": str(checkpoint)}}))
    assert main(["train-ensemble", "--config", str(config)]) == 0
    return {"table": table, "checkpoint": checkpoint, "config": config, "root": root}


@pytest.fixture()
def stub_venv(tmp_path):
    """A copy of the two campaign scripts with a `dodo` that always fails (exit 2)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "data" / "qke").mkdir(parents=True)
    for name in ("qke_campaign.sh", "relabel_growth.sh", "own_session.sh"):
        (repo / "scripts" / name).write_text((Path(__file__).resolve().parents[2] / "scripts" / name).read_text())
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "dodo").write_text("#!/bin/bash\necho \"stub dodo $*\" >&2\nexit 2\n")
    (venv / "dodo").chmod(0o755)
    (venv / "python").write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")
    (venv / "python").chmod(0o755)
    return repo, dict(os.environ, DODO_VENV=str(venv.parent))
