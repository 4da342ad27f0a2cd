"""Outside probe, round thirty-four (Python side): docs/reliability_python.md section 37.

Each test failed against the code before its fix; its docstring says what that code did."""
import os

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from dodo.qke.campaign import CheckpointMismatchError, simulate_states  # noqa: E402
from dodo.qke.solver import SolverConfig  # noqa: E402

STATES = np.array([
    [[1.0, 0, 0, 1 / 3], [0, 0, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, -1 / 3], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[1.42, 0.14, 0.06, -0.19], [0.49, -0.01, 0.04, -0.26], [0.49, -0.01, 0.04, -0.26],
     [1.91, 0.14, 0.06, -0.65], [0.49, -0.01, 0.04, -0.26], [0.49, -0.01, 0.04, -0.26]],
]) * 1e33  # the first costs 0.37x NSM1's run, the second 1.0x


def _interrupted_after_the_first_state(output, max_cost):
    def stop(message):
        if "states done" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=1, report=stop,
                        max_cost=max_cost)
    assert os.path.exists(output + ".partial.npz")


@pytest.mark.parametrize("first, then", [(None, 0.5), (5.0, 0.5), (0.5, 5.0)],
                         ids=["cap added", "cap lowered", "cap raised"])
def test_simulate_resumed_with_another_max_cost_is_refused(tmp_path, first, then):
    """`dodo simulate OUT --max-cost 5` killed after a batch, rerun with `--max-cost 0.5`, resumed:
    the state run under the first cap stayed in OUT (here the 1.0x one, above 0.5) while OUT's
    `max_cost_vs_nsm1` said 0.5, and the batches (each state's seed and time step) were those of
    neither cap's run. The cap is now kept in the checkpoint and a resume with another is refused,
    the checkpoint untouched; the same cap resumes."""
    output = str(tmp_path / "out.h5")
    _interrupted_after_the_first_state(output, first)
    with open(output + ".partial.npz", "rb") as stream:
        before = stream.read()
    with pytest.raises(CheckpointMismatchError, match=r"--max-cost .* there, .* here.*rerun with"):
        simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=1,
                        report=lambda message: None, max_cost=then)
    with open(output + ".partial.npz", "rb") as stream:
        assert stream.read() == before
    messages = []
    simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=1,
                    report=messages.append, max_cost=first)
    assert messages[0].startswith("resuming: 1/2") and not os.path.exists(output + ".partial.npz")


def test_simulate_resumes_a_checkpoint_written_before_the_cap_was_recorded(tmp_path):
    """The running data campaign's partial files hold no cap: they still resume (the cap is kept
    beside the fingerprint, not in it)."""
    output = str(tmp_path / "out.h5")
    _interrupted_after_the_first_state(output, 5.0)
    checkpoint = output + ".partial.npz"
    with np.load(checkpoint, allow_pickle=True) as stored:
        arrays = {key: stored[key] for key in stored.files if key != "max_cost"}
    with open(checkpoint, "wb") as stream:
        np.savez(stream, **arrays)
    messages = []
    simulate_states(STATES, output, SolverConfig(ncell=16, nphi_equator=8), batch_size=1,
                    report=messages.append, max_cost=5.0)
    assert messages[0].startswith("resuming: 1/2")


def test_train_ensemble_takes_one_holdout_or_growth_pattern_as_a_string(tmp_path):
    """`data.holdout: "*_seed9*.h5"` (or `--set growth.data=labels/*.h5`) was refused with
    `data.holdout must be a list of file-name patterns`, where `dodo preprocess`'s inputs and
    `dodo train`'s list keys take a string as a one-item list."""
    from dodo.training.ensemble_train import EnsembleConfig

    path = tmp_path / "ensemble.yaml"
    path.write_text('data:\n  path: pre.h5\n  holdout: "*_seed9*.h5"\noutput:\n  checkpoint: ck.pt\n')
    config = EnsembleConfig.load(str(path), {"growth.data": "labels/*.h5", "growth.members": 1})
    assert config.holdout == ["*_seed9*.h5"] and config.growth_data == ["labels/*.h5"]
    from dodo.training.config import ConfigError

    for value in (5, "", [" "]):  # an empty pattern would hold nothing out without a word
        with pytest.raises(ConfigError, match="data.holdout must be a list"):
            EnsembleConfig.load(str(path), {"data.holdout": value})
    with pytest.raises(ConfigError, match="growth.data must be a list"):
        EnsembleConfig.load(str(path), {"growth.data": "", "growth.members": 1})


def _emu_file_with_synthetic_attribute(tmp_path, value, name="other.h5"):
    """A small Emu-layout database of another program whose `synthetic` attribute is ``value``."""
    source = str(tmp_path / "synth.h5")
    from dodo.cli import main

    assert main(["synth", "-o", source, "-n", "12", "--seed", "1", "-q"]) == 0
    path = tmp_path / name
    with h5py.File(source, "r") as given, h5py.File(path, "w") as out:
        for key in given:
            given.copy(key, out)
        out.attrs["synthetic"] = value
    return str(path)


@pytest.mark.parametrize("value", ["False", "no", np.array([1, 0])], ids=["'False'", "'no'", "[1, 0]"])
def test_synth_does_not_replace_a_database_whose_synthetic_attribute_is_not_its_boolean(tmp_path, value, capsys):
    """`dodo synth -o F` over another program's database whose `synthetic` attribute reads "False"
    (a non-empty string, hence true) took it for a synthetic database of an earlier run and replaced
    it without --overwrite: the file was lost. Only dodo synth's boolean true is its mark now."""
    from dodo.cli import main

    path = _emu_file_with_synthetic_attribute(tmp_path, value)
    with open(path, "rb") as stream:
        before = stream.read()
    assert main(["synth", "-o", path, "-n", "5", "-q"]) == 2
    assert "is an Emu database, not a synthetic database" in capsys.readouterr().err
    with open(path, "rb") as stream:
        assert stream.read() == before


@pytest.mark.parametrize("value, kind", [("False", "emu"), (np.array([1, 0]), "emu"), (True, "synthetic")],
                         ids=["'False'", "[1, 0]", "True"])
def test_preprocess_reads_the_data_kind_from_synths_boolean_only(tmp_path, value, kind):
    """`dodo preprocess` of an Emu database whose `synthetic` attribute is the string "False"
    recorded its rows as data kind "synthetic"; with an attribute of two values it stopped with
    NumPy's "The truth value of an array with more than one element is ambiguous"."""
    from dodo.cli import main

    path = _emu_file_with_synthetic_attribute(tmp_path, value)
    output = str(tmp_path / "pre.h5")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{path}]\noutput: {output}\n")
    assert main(["preprocess", "--config", str(config), "-q"]) == 0
    with h5py.File(output, "r") as handle:
        assert str(handle.attrs["data_kind"]) == kind


def test_train_resume_with_fewer_epochs_than_done_is_refused(tmp_path, capsys):
    """`dodo train --resume ck/last.pt --set training.epochs=1` of a run stopped after epoch 2 trained
    nothing, wrote final.pt recording epoch 1 (its config `epochs: 1`) of a model trained for two, and
    the metrics called the run completed. Now one line before any file is written; the same number
    of epochs as done still writes the final files."""
    pytest.importorskip("torch")
    from cli_helpers import run, synthetic_preprocessed, tiny_train_config
    from dodo.training.train import load_checkpoint

    table = synthetic_preprocessed(tmp_path, 64)
    config = tiny_train_config(tmp_path, table, epochs=3)
    assert run(capsys, ["train", "--config", str(config), "--set", "training.stop_after_epoch=2"])[0] == 0
    last = str(tmp_path / "ck" / "last.pt")
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", last, "--set", "training.epochs=1"])
    assert code == 2 and "has trained 2 epochs, more than training.epochs = 1" in err, err
    assert not (tmp_path / "ck" / "final.pt").exists()
    assert not list((tmp_path / "res").glob("metrics_*.json"))
    code, _, err = run(capsys, ["train", "--config", str(config), "--resume", last, "--set", "training.epochs=2"])
    assert code == 0, err
    assert load_checkpoint(tmp_path / "ck" / "final.pt")["epoch"] == 2
