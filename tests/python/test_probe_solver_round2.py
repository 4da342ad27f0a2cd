"""Solver probe, round two (outside probe of `dodo simulate` as a user who makes their own ground truth;
docs/reliability_python.md, section 51). The tests of the three fixes (the reduction's two, the empty
YAML input) failed against the code before them (their docstrings say what it did); the others pin laws
and behaviour that held, on tiny runs (16-32 cells, 24 directions)."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from dodo.qke import cli  # noqa: E402
from dodo.qke.asymptotic import asymptotic_states  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]
# Dodo's species order (nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, nubar_tau), [n, Fx, Fy, Fz], x 1e33 cm^-3.
CROSSING = np.array([[1.42, 0.14, 0.06, -0.19], [0.59, -0.01, 0.04, -0.26], [0.39, -0.02, 0.05, -0.22],
                     [1.91, 0.14, 0.06, -0.65], [0.55, -0.01, 0.03, -0.25], [0.45, -0.01, 0.04, -0.21]]) * 1e33
ZERO_HEAVY = np.array([[1.0, 0, 0, 1 / 3], [0, 0, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, -1 / 3], [0, 0, 0, 0],
                       [0, 0, 0, 0]]) * 1e33
STABLE = np.array([[1.0, 0, 0, 0.1]] * 6) * 1e33  # every species alike: no lepton-number crossing
BEAMED = CROSSING.copy()
BEAMED[0, 1:] *= 0.95 * BEAMED[0, 0] / np.linalg.norm(BEAMED[0, 1:])  # nu_e at flux factor 0.95 (to rounding)


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="dodo")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def emu_layout(states: np.ndarray) -> np.ndarray:
    """[n, 6, 4 (n, Fx, Fy, Fz)] -> Emu's F4 [n, 4 (x, y, z, t), 2, 3]."""
    states = np.asarray(states, float).reshape(-1, 2, 3, 4)
    return np.transpose(states[..., [1, 2, 3, 0]], (0, 3, 1, 2))


def write_input(path, states, **datasets) -> str:
    with h5py.File(path, "w") as f:
        f["F4_initial(1|ccm)"] = emu_layout(states)
        for name, value in datasets.items():
            f[name] = value
    return str(path)


def read(path) -> dict:
    with h5py.File(path, "r") as f:
        data = {name: f[name][()] for name in f}
        data["dropped"] = f.attrs["dropped"]
    return data


# --- the reduction (asymptotic.py) with odd histories --------------------------------------------------

def reduce(time_s, magnitude, four_flux=None):
    time_s, magnitude = np.asarray(time_s, float), np.asarray(magnitude, float)
    if four_flux is None:
        four_flux = np.ones((len(time_s), 2, 3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return asymptotic_states(time_s[None], four_flux[None], magnitude[None])


def test_odd_histories_are_dropped_with_a_reason_never_a_numpy_error():
    """An empty history raised numpy's "attempt to get argmax of an empty sequence" (the error the
    reduction once gave); now it is dropped as "empty history". Constant, all-zero, falling, NaN/Inf and
    one-sample histories were already dropped with a reason and are pinned here."""
    state = reduce([], [])
    assert not state.valid[0] and state.reason[0] == "empty history: no samples to reduce"
    assert np.isnan(state.end_time[0]) and state.growth_rate[0] == 0
    t = np.linspace(0.0, 1e-8, 50)
    growing = np.minimum(1e-6 * np.exp(3e9 * t), 1e-6 * np.exp(3e9 * t[16]))
    with_nan, with_inf = growing.copy(), growing.copy()
    with_nan[10], with_inf[-3] = np.nan, np.inf
    cases = {"constant": (t, np.full(50, 1e-6)), "zero": (t, np.zeros(50)), "falling": (t, np.exp(-1e9 * t)),
             "one sample": ([0.0], [1e-6]), "one sample later": ([1e-9], [1e-6]),
             "NaN": (t, with_nan), "Inf": (t, with_inf), "all NaN": (t, np.full(50, np.nan))}
    for name, (time_s, magnitude) in cases.items():
        state = reduce(time_s, magnitude)
        assert not state.valid[0], name
        assert state.reason[0] in ("no exponential growth found", "non-finite values"), (name, state.reason[0])
    state = reduce(t, growing)  # the same history without the NaN: valid, rate 3e9 s^-1
    assert state.valid[0] and abs(state.growth_rate[0] / 3e9 - 1) < 1e-9
    fluxes = np.ones((50, 2, 3, 4))
    fluxes[20, 1, 2, 3] = np.nan
    assert reduce(t, growing, fluxes).reason[0] == "non-finite values"


def test_a_history_still_growing_at_its_end_says_the_end_time_is_too_short():
    """A run whose off-diagonal was still growing at its last sample, below Rhea's window (an end time
    too short for the state, e.g. a small tend(s) with --use-input-end-time), was dropped as "no
    exponential growth found", the words for a state that does not grow; now the reason goes on to say
    it was still growing at t_end (by how much) and that the end time is too short."""
    t = np.linspace(0.0, 1e-9, 40)
    state = reduce(t, 1e-6 * np.exp(1e9 * t))
    assert not state.valid[0]
    assert state.reason[0].startswith("no exponential growth found: the flavour off-diagonal was still growing at "
                                      "the end time t_end = 1e-09 s (x2.72 over the run")
    assert "the end time is too short for this state" in state.reason[0]
    assert reduce(t, 1e-6 * np.exp(-1e9 * t)).reason[0] == "no exponential growth found"  # falling: as before


def test_use_input_end_time_too_short_is_dropped_and_named_beside_a_valid_state(tmp_path):
    """Through `dodo simulate --use-input-end-time`: a state given a fiftieth of a usable end time is
    dropped with the new reason; the other state of the file runs and is valid."""
    source = write_input(tmp_path / "in.h5", [CROSSING, ZERO_HEAVY], nf=np.int64(3))
    first = str(tmp_path / "first.h5")
    assert run_cli(["simulate", first, "--input", source, *SMALL]) == 0
    tend = read(first)["tend(s)"]
    short = write_input(tmp_path / "short.h5", [CROSSING, ZERO_HEAVY], **{"tend(s)": tend * np.array([0.02, 1.0])})
    output = str(tmp_path / "short_out.h5")
    assert run_cli(["simulate", output, "--input", short, "--use-input-end-time", *SMALL]) == 0
    data = read(output)
    assert data["input_index"].tolist() == [1]
    assert "still growing at the end time" in data["dropped"] and "too short" in data["dropped"], data["dropped"]


# --- laws of the output -------------------------------------------------------------------------------

def check_laws(data: dict) -> None:
    initial, final = data["F4_initial(1|ccm)"], data["F4_final(1|ccm)"]  # [n, 4 (x,y,z,t), 2, 3]
    total = initial[:, 3].sum(axis=(1, 2))
    scale = total[:, None, None]
    # Flavour-summed four-flux, nu and nubar separately (8 numbers), and so the total number.
    assert np.abs((final - initial).sum(axis=3)).max(axis=(1, 2)).max() / total.min() < 1e-12
    # Lepton number of each flavour, hence of each flavour pair.
    lepton = (final[:, 3, 0] - final[:, 3, 1]) - (initial[:, 3, 0] - initial[:, 3, 1])
    assert np.abs(lepton).max() / total.min() < 1e-12
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(lepton[:, a] - lepton[:, b]).max() / total.min() < 1e-12
    # Realizability of every species of every row: n >= 0, |F| <= n.
    density, flux = final[:, 3], np.linalg.norm(final[:, :3], axis=1)
    assert np.all(density / scale > -1e-12) and np.all((density - flux) / scale > -1e-12)
    assert np.all(np.isfinite(data["F4_final_stddev(1|ccm)"])) and np.all(data["growthRate(1|s)"] > 0)


def test_mixed_input_file_rows_obey_the_laws_and_each_drop_is_named(tmp_path):
    """An Emu-layout file with extra datasets (growthRate, F4_final, one unknown) and no `nf`: a crossing
    state, a stable one (nothing written for it: dropped, 'linearly stable'), one with a species at
    flux factor 0.95 (dropped: its angular distribution cannot be reconstructed), one with empty heavy-lepton species (runs), and the
    crossing state's mu<->tau image. Rows: conservation to rounding, realizable; threads 2 bit-equal to 1;
    the NumPy kernel equal to rounding."""
    states = np.array([CROSSING, STABLE, BEAMED, ZERO_HEAVY, CROSSING[[0, 2, 1, 3, 5, 4]]])
    source = write_input(tmp_path / "mixed.h5", states, **{"growthRate(1|s)": np.ones(5), "unrelated": np.arange(3),
                                                          "F4_final(1|ccm)": emu_layout(states)})
    outputs = {}
    for name, extra in (("one", ["--threads", "1"]), ("two", ["--threads", "2"]), ("numpy", ["--backend", "numpy"])):
        outputs[name] = str(tmp_path / f"{name}.h5")
        assert run_cli(["simulate", outputs[name], "--input", source, "--batch-size", "2", *extra, *SMALL]) == 0
    one, two, numpy_run = (read(outputs[name]) for name in ("one", "two", "numpy"))
    assert one["input_index"].tolist() == [0, 3, 4]
    assert "linearly stable" in one["dropped"] and "its angular distribution cannot be reconstructed" in one["dropped"], one["dropped"]
    np.testing.assert_array_equal(one["F4_initial(1|ccm)"], emu_layout(states[[0, 3, 4]]))
    for data in (one, two, numpy_run):
        check_laws(data)
    for name in ("F4_final(1|ccm)", "F4_final_stddev(1|ccm)", "growthRate(1|s)", "tsat(s)", "tend(s)"):
        np.testing.assert_array_equal(one[name], two[name])
        np.testing.assert_allclose(numpy_run[name], one[name], rtol=1e-10, atol=1e-10 * np.abs(one[name]).max())
    # mu<->tau image: the same linear rate, box and end time; the asymptotic state equal in the
    # mu/tau-averaged numbers within the run-to-run scatter (the seeds break mu/tau symmetry: docs/qke.md).
    assert one["linear_growthRate_box(1|s)"][2] == pytest.approx(one["linear_growthRate_box(1|s)"][0], rel=1e-12)
    final, total = one["F4_final(1|ccm)"], one["F4_initial(1|ccm)"][0, 3].sum()
    swapped = final[2][..., [0, 2, 1]]
    averaged = lambda f: np.concatenate([f[..., :1], f[..., 1:].mean(axis=-1, keepdims=True)], axis=-1)  # noqa: E731
    scatter = max(one["F4_final_stddev(1|ccm)"][0].max(), one["F4_final_stddev(1|ccm)"][2].max()) / total
    assert np.abs(averaged(swapped) - averaged(final[0])).max() / total < 3 * scatter


def test_a_database_fed_back_as_input_gives_its_own_rows_bit_for_bit(tmp_path):
    """`dodo simulate B --input A` with A a `dodo simulate` output (its rotation_R, tend(s)), the same
    seed and settings: B's rows are A's, bit for bit (with and without --use-input-end-time)."""
    first = str(tmp_path / "a.h5")
    assert run_cli(["simulate", first, "--random", "2", "--seed", "5", *SMALL]) == 0
    for extra in ([], ["--use-input-end-time"]):
        again = str(tmp_path / f"b{len(extra)}.h5")
        assert run_cli(["simulate", again, "--input", first, "--seed", "5", *extra, *SMALL]) == 0
        a, b = read(first), read(again)
        for name in ("F4_initial(1|ccm)", "F4_final(1|ccm)", "F4_final_stddev(1|ccm)", "growthRate(1|s)",
                     "rotation_R", "tend(s)", "tsat(s)", "box_length_cm"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# --- resumption after SIGTERM --------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="signals and process groups as on Linux")
def test_sigterm_mid_run_then_the_same_command_gives_the_uninterrupted_rows_and_no_partial_files(tmp_path):
    """A run stopped by SIGTERM after its first checkpoint exits 143 and keeps OUT.partial.npz; the rerun
    gives every row bit-equal to an uninterrupted run's and leaves neither the checkpoint nor the lock."""
    source = write_input(tmp_path / "in.h5", [CROSSING, STABLE, ZERO_HEAVY, CROSSING[[0, 2, 1, 3, 5, 4]],
                                              CROSSING[[3, 4, 5, 0, 1, 2]]])
    common = ["--input", source, "--ncell", "32", "--nphi", "8", "--batch-size", "1", "--quiet"]
    whole = str(tmp_path / "whole.h5")
    assert run_cli(["simulate", whole, *common]) == 0
    out = tmp_path / "out.h5"
    command = [sys.executable, "-m", "dodo", "simulate", str(out), *common]
    # The installed dodo, from a directory outside the source tree: a non-editable install (CI's) has
    # no compiled core in python/dodo, so PYTHONPATH or a working directory at the root would import that.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = Path(str(out) + ".partial.npz")
    deadline = time.monotonic() + 120  # a hang guard only
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    interrupted = process.poll() is None
    if interrupted:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    if interrupted:
        assert process.returncode == 143, stderr
        assert partial.exists()
    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))) == ["out.h5"]
    a, b = read(whole), read(out)
    assert a["dropped"] == b["dropped"]
    for name in a:
        if name != "dropped":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("text", ["states: []\n", "states:\n"])
def test_a_yaml_input_without_states_says_it_holds_no_states(tmp_path, capsys, text):
    """`states: []` was refused as "each state must be 6 species x [n, Fx, Fy, Fz]; got shape (0,)", of a
    list without any state (and `states:` alone as "got shape ()"); an empty HDF5 input already said
    "holds no states: nothing to simulate". Now both say so; nothing is written."""
    pytest.importorskip("yaml")
    source = tmp_path / "empty.yaml"
    source.write_text(text)
    output = tmp_path / "out.h5"
    assert run_cli(["simulate", str(output), "--input", str(source), *SMALL]) == 2
    assert f"{source} holds no states: nothing to simulate" in capsys.readouterr().err
    assert not output.exists()
