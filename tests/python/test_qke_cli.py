"""``dodo simulate``: Emu-format output, atomic and resumable writing, clear errors."""
import argparse
import os

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
yaml = pytest.importorskip("yaml")

from dodo.conventions import from_emu_layout  # noqa: E402
from dodo.qke import cli  # noqa: E402
from dodo.qke.campaign import simulate_states  # noqa: E402
from dodo.qke.solver import SolverConfig  # noqa: E402

STATES = [
    [[1.0, 0, 0, 1 / 3], [0, 0, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, -1 / 3], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[1.42, 0.14, 0.06, -0.19], [0.49, -0.01, 0.04, -0.26], [0.49, -0.01, 0.04, -0.26],
     [1.91, 0.14, 0.06, -0.65], [0.49, -0.01, 0.04, -0.26], [0.49, -0.01, 0.04, -0.26]],
]
SMALL = ["--ncell", "16", "--nphi", "8", "--quiet"]


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="dodo")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def yaml_states(tmp_path):
    path = tmp_path / "states.yaml"
    path.write_text(yaml.safe_dump({"states": (np.array(STATES) * 1e33).tolist()}))
    return str(path)


def test_simulate_writes_an_emu_database_with_provenance(tmp_path, yaml_states):
    output = str(tmp_path / "out.h5")
    assert run_cli(["simulate", output, "--input", yaml_states, "--batch-size", "2", *SMALL]) == 0
    with h5py.File(output, "r") as f:
        for name in ("F4_initial(1|ccm)", "F4_final(1|ccm)", "F4_final_stddev(1|ccm)"):
            assert f[name].shape == (2, 4, 2, 3)
        assert f["growthRate(1|s)"].shape == (2,) and np.all(f["growthRate(1|s)"][()] > 0)
        assert int(f["nf"][()]) == 3
        initial = from_emu_layout(f["F4_initial(1|ccm)"][()])
        final = from_emu_layout(f["F4_final(1|ccm)"][()])
        assert "settings" in f.attrs and "created_utc" in f.attrs and "solver" in f.attrs
    np.testing.assert_allclose(initial, np.array(STATES) * 1e33)
    total = initial[:, :, 0].sum(axis=1)[:, None]
    # Rhea's bad_data checks: flavour-summed four-flux and per-flavour lepton number.
    for s in (slice(0, 3), slice(3, 6)):
        np.testing.assert_allclose(final[:, s].sum(axis=1) / total, initial[:, s].sum(axis=1) / total, atol=1e-10)
    np.testing.assert_allclose((final[:, :3, 0] - final[:, 3:, 0]) / total, (initial[:, :3, 0] - initial[:, 3:, 0]) / total,
                               atol=1e-10)
    assert np.any(np.abs(final[:, 0, 0] - initial[:, 0, 0]) / total[:, 0] > 0.05)  # flavour did convert
    assert sorted(os.listdir(tmp_path)) == ["out.h5", "states.yaml"]  # no temporary or partial files left


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    output = str(tmp_path / "resume.h5")
    states = np.array(STATES) * 1e33
    config = SolverConfig(ncell=16, nphi_equator=8)

    def crash_after_first_chunk(message):
        if "1/2 states done" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_states(states, output, config, batch_size=1, report=crash_after_first_chunk)
    assert os.path.exists(output + ".partial.npz")
    with h5py.File(output, "r") as f:  # the finished chunk is already usable
        assert f["F4_final(1|ccm)"].shape[0] == 1 and not f.attrs["complete"]
    messages = []
    simulate_states(states, output, config, batch_size=1, report=messages.append)
    assert messages[0].startswith("resuming: 1/2")
    assert os.path.exists(output) and not os.path.exists(output + ".partial.npz")
    with h5py.File(output, "r") as f:
        assert f["F4_final(1|ccm)"].shape[0] == 2 and f.attrs["complete"]


def test_random_states_cross_and_are_simulated(tmp_path):
    output = str(tmp_path / "random.h5")
    assert run_cli(["simulate", output, "--random", "2", "--seed", "5", *SMALL]) == 0
    with h5py.File(output, "r") as f:
        assert f["F4_initial(1|ccm)"].shape[0] + len(eval_dropped(f)) == 2


def eval_dropped(f):
    import json

    return json.loads(f.attrs["dropped"])


def test_bad_input_gives_a_clear_error_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"states": [[[1.0, 0.0, 0.0]]]}))
    assert run_cli(["simulate", str(tmp_path / "x.h5"), "--input", str(bad), *SMALL]) == 2
    assert "each state must be 6 species" in capsys.readouterr().err
    assert run_cli(["simulate", str(tmp_path / "x.h5"), "--input", str(tmp_path / "states.txt"), *SMALL]) == 2


def test_emu_hdf5_input_keeps_its_rotation_and_end_time(tmp_path):
    from pathlib import Path

    reference = Path(__file__).resolve().parents[1] / "data" / "qke" / "emu_1d_validation.h5"
    source = tmp_path / "in.h5"
    with h5py.File(reference, "r") as f, h5py.File(source, "w") as g:
        for name in ("F4_initial(1|ccm)", "rotation_R", "tend(s)"):
            g[name] = f[name][:1]
        expected_rotation, expected_end = f["rotation_R"][0], f["tend(s)"][0]
        expected_initial = f["F4_initial(1|ccm)"][:1]
    output = str(tmp_path / "out.h5")
    assert run_cli(["simulate", output, "--input", str(source), "--use-input-end-time", "--box-length", "4", *SMALL]) == 0
    with h5py.File(output, "r") as f:
        np.testing.assert_allclose(f["rotation_R"][0], expected_rotation)
        assert f["tend(s)"][0] == pytest.approx(expected_end)
        assert f["box_length_cm"][0] == 4.0
        np.testing.assert_allclose(f["F4_initial(1|ccm)"][()], expected_initial)


def test_max_cost_skips_expensive_states_and_says_why(tmp_path, yaml_states):
    """--max-cost X drops states estimated to cost more than X times NSM1's run (the second state
    is NSM1-like: 1.0x; the fiducial one 0.37x), with the reason in the file."""
    import json

    output = str(tmp_path / "out.h5")
    assert run_cli(["simulate", output, "--input", yaml_states, "--batch-size", "2", "--max-cost", "0.5", *SMALL]) == 0
    with h5py.File(output, "r") as f:
        assert f["F4_initial(1|ccm)"].shape[0] == 1
        np.testing.assert_allclose(from_emu_layout(f["F4_initial(1|ccm)"][()])[0], np.array(STATES[0]) * 1e33)
        dropped = json.loads(f.attrs["dropped"]) if isinstance(f.attrs["dropped"], str) else f.attrs["dropped"]
        assert list(dropped) == ["1"] and "exceeds max_cost 0.5" in dropped["1"]
    # Everything skipped: an error (exit 2), no database and no partial file (round eighteen: an
    # empty database marked complete was written, exit 0; docs/reliability_python.md section 20).
    empty = str(tmp_path / "empty.h5")
    assert run_cli(["simulate", empty, "--input", yaml_states, "--max-cost", "0.01", *SMALL]) == 2
    assert not os.path.exists(empty)
    assert not os.path.exists(empty + ".partial.npz")
    assert run_cli(["simulate", empty, "--input", yaml_states, "--max-cost", "-1", *SMALL]) == 2


def test_threads_and_backends_are_recorded_and_checked(tmp_path, yaml_states, capsys):
    import json

    output = str(tmp_path / "threads.h5")
    assert run_cli(["simulate", output, "--input", yaml_states, "--batch-size", "2", "--threads", "2", *SMALL]) == 0
    with h5py.File(output, "r") as f:
        assert json.loads(f.attrs["settings"])["solver"]["backend"] == "cpp"
    assert run_cli(["simulate", output, "--input", yaml_states, "--threads", "0", *SMALL, "--overwrite"]) == 2
    assert "threads must be an integer >= 1" in capsys.readouterr().err
    # ncell 12 is not a power of two: auto falls back to NumPy and says so; cpp refuses.
    fallback = str(tmp_path / "fallback.h5")
    assert run_cli(["simulate", fallback, "--input", yaml_states, "--ncell", "12", "--nphi", "8"]) == 0
    assert "using the NumPy kernel: ncell = 12 is not a power of two" in capsys.readouterr().err
    with h5py.File(fallback, "r") as f:
        assert json.loads(f.attrs["settings"])["solver"]["backend"] == "numpy"
    assert run_cli(["simulate", fallback, "--input", yaml_states, "--ncell", "12", "--nphi", "8", "--backend", "cpp",
                    "--overwrite"]) == 2
    assert "backend 'cpp' cannot run" in capsys.readouterr().err


def test_rerunning_a_run_whose_states_are_all_done_finishes_it(tmp_path):
    """Issue 11 item 12: a .partial.npz whose states are all done (killed after the last chunk,
    before the final write) used to fail with 'zero-size array to reduction operation maximum'
    on every rerun, keeping the partial file and losing the results."""
    output = str(tmp_path / "done.h5")
    states = np.array(STATES) * 1e33
    config = SolverConfig(ncell=16, nphi_equator=8)

    def crash_after_the_last_chunk(message):
        if "2/2 states done" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_states(states, output, config, batch_size=1, report=crash_after_the_last_chunk)
    assert os.path.exists(output + ".partial.npz")
    messages = []
    results = simulate_states(states, output, config, batch_size=1, report=messages.append)
    assert messages[0].startswith("resuming: 2/2")
    assert results["done"].all() and results["valid"].sum() == 2
    assert not os.path.exists(output + ".partial.npz")
    with h5py.File(output, "r") as f:
        assert f["F4_final(1|ccm)"].shape[0] == 2 and f.attrs["complete"]


def test_a_run_resumes_across_kernels_and_from_partial_files_of_older_versions(tmp_path):
    """The backend is not part of the resume fingerprint: a campaign started with the NumPy
    kernel (or by a version without the compiled one, whose settings had no backend) resumes
    with the compiled kernel instead of starting over."""
    from dataclasses import asdict

    from dodo.qke.campaign import _fingerprint

    output = str(tmp_path / "mixed.h5")
    states = np.array(STATES) * 1e33

    def crash_after_first_chunk(message):
        if "1/2 states done" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_states(states, output, SolverConfig(ncell=16, nphi_equator=8, backend="numpy"), batch_size=1,
                        report=crash_after_first_chunk)
    messages = []
    simulate_states(states, output, SolverConfig(ncell=16, nphi_equator=8, backend="cpp"), batch_size=1,
                    report=messages.append)
    assert messages[0].startswith("resuming: 1/2")
    settings = {"solver": asdict(SolverConfig()), "axis": "fastest"}
    older = {"solver": {k: v for k, v in asdict(SolverConfig()).items() if k != "backend"}, "axis": "fastest"}
    assert _fingerprint(states, settings) == _fingerprint(states, older)


@pytest.mark.parametrize("length", ["0", "-5", "inf", "nan"])
def test_a_box_length_that_is_not_positive_and_finite_is_refused(tmp_path, yaml_states, capsys, length):
    output = tmp_path / "out.h5"
    assert run_cli(["simulate", str(output), "--input", yaml_states, "--box-length", length, *SMALL]) == 2
    error = capsys.readouterr().err
    assert "box length must be positive and finite" in error and error.count("\n") == 1
    assert not output.exists()


def test_missing_h5py_is_reported_before_any_computing(tmp_path, yaml_states, capsys, monkeypatch):
    import sys

    from dodo.qke import campaign

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated although the output cannot be written")

    monkeypatch.setattr(campaign, "make_box", no_simulation)
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    assert run_cli(["simulate", str(tmp_path / "out.h5"), "--input", yaml_states, *SMALL]) == 2
    error = capsys.readouterr().err
    assert "needs h5py" in error and error.count("\n") == 1
