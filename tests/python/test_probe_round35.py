"""Outside probe, round thirty-five (Python side): docs/reliability_python.md section 38.

Each test failed against the code before its fix (unless its docstring calls it a guard); its
docstring says what that code did."""
import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from cli_helpers import refused, run  # noqa: E402


def _synth(tmp_path, cells=24):
    """A `dodo synth` database of ``cells`` states (three flavours, growthRate(1|s) [n], nf 3)."""
    from dodo.cli import main

    path = tmp_path / "syn.h5"
    assert main(["synth", "-o", str(path), "-n", str(cells), "--seed", "3", "-q"]) == 0
    return path


def _copy_with(source, target, **changes):
    """``source`` copied to ``target`` with datasets replaced (value None: removed) and attributes
    set (keys starting with 'attr_')."""
    with h5py.File(source, "r") as given, h5py.File(target, "w") as out:
        for key in given:
            if key not in changes:
                given.copy(key, out)
        for key, value in changes.items():
            if key.startswith("attr_"):
                out.attrs[key[5:]] = value
            elif value is not None:
                out[key] = value
    return target


def _preprocess(tmp_path, data, output="pre.h5"):
    from dodo.cli import main

    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{data}]\noutput: {tmp_path / output}\n")
    return main(["preprocess", "--config", str(config), "-q"])


# -- 1. nf against the flavour axis ------------------------------------------------------------------------

@pytest.mark.parametrize("where, value", [("dataset", 2), ("attribute", 2), ("dataset", np.int64(4)),
                                          ("dataset", "3"), ("attribute", [3, 3]), ("dataset", 2.5)],
                         ids=["dataset 2", "attribute 2", "int64 4", "string", "two values", "2.5"])
@pytest.mark.parametrize("command", ["score", "apply", "preprocess"])
def test_nf_that_contradicts_the_flavour_axis_is_refused(tmp_path, capsys, where, value, command):
    """A database saying `nf = 2` (a dataset, as data.md lays it out, or an attribute) with
    three-flavour arrays was read as three flavours by `dodo score`, `dodo apply` and `dodo
    preprocess`, without a word. Now one line naming the file, 'nf' and the array's shape."""
    data = _copy_with(_synth(tmp_path), tmp_path / "nf.h5",
                      **({"nf": value} if where == "dataset" else {"nf": None, "attr_nf": value}))
    if command == "preprocess":
        config = tmp_path / "pre.yaml"
        config.write_text(f"inputs: [{data}]\noutput: {tmp_path / 'pre.h5'}\n")
        argv = ["preprocess", "--config", str(config), "-q"]
    elif command == "score":
        argv = ["score", "box3d", str(data), "--bootstrap", "100"]
    else:
        argv = ["apply", str(data), "--model", "box3d", "-o", str(tmp_path / "cells.h5")]
    line = refused(capsys, argv, "nf.h5", "'nf'", "(24, 4, 2, 3)", "3 flavours")
    assert where in line
    assert not (tmp_path / "pre.h5").exists() and not (tmp_path / "cells.h5").exists()


def test_nf_that_agrees_with_the_flavour_axis_is_read(tmp_path, capsys):
    """Guard: nf 3 as a dataset (dodo synth's, dodo simulate's), as an attribute, as a float 3.0, or
    absent, is read as before."""
    source = _synth(tmp_path)
    for name, changes in (("a.h5", {}), ("b.h5", {"nf": None, "attr_nf": 3}), ("c.h5", {"nf": 3.0}),
                          ("d.h5", {"nf": None})):
        data = _copy_with(source, tmp_path / name, **changes)
        code, _, err = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100"])
        assert code == 0, err


# -- 2. growthRate(1|s) of shape (n, 1) ----------------------------------------------------------------------

def test_preprocess_reads_a_growth_rate_column_as_score_does(tmp_path, capsys):
    """growthRate(1|s) of shape (n, 1): `dodo score` flattened it and compared growth rates, `dodo
    preprocess` stored NaN rates for every row, as for a file without the dataset, without a word.
    Both read [n] and [n, 1] now: the preprocessed rates are the file's."""
    source = _synth(tmp_path)
    with h5py.File(source, "r") as handle:
        rates = handle["growthRate(1|s)"][()]
    data = _copy_with(source, tmp_path / "column.h5", **{"growthRate(1|s)": rates[:, None]})
    assert _preprocess(tmp_path, data) == 0
    with h5py.File(tmp_path / "pre.h5", "r") as handle:
        stored = handle["growth_rate"][()]
    assert np.isfinite(stored).all() and np.array_equal(np.sort(stored), np.sort(rates))
    code, out, err = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100", "--json", str(tmp_path / "r.json")])
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["growth_rate"]["n_states"] > 0


@pytest.mark.parametrize("shape", [(12, 2), (1, 24), (24, 2)], ids=["(12, 2)", "(1, 24)", "(24, 2)"])
def test_a_growth_rate_of_another_shape_is_not_used_by_score_or_preprocess(tmp_path, capsys, shape):
    """growthRate(1|s) of shape (12, 2) or (1, 24) for 24 states: `dodo score` flattened it into 24
    rates and compared them with the states' as if each were a state's own; `dodo preprocess` stored
    NaN rates without a word (also for (24, 2)). Both now say it is not used, naming the shape."""
    source = _synth(tmp_path)
    values = np.arange(1, np.prod(shape) + 1, dtype=float).reshape(shape) * 1e8
    data = _copy_with(source, tmp_path / "odd.h5", **{"growthRate(1|s)": values})
    code, out, err = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100", "--json", str(tmp_path / "r.json")])
    assert code == 0, err
    assert "growthRate(1|s) has" in out and "not used" in out
    assert "growth_rate" not in json.loads((tmp_path / "r.json").read_text())
    from dodo.training.preprocess import preprocess
    from dodo.training.config import PreprocessConfig

    messages = []
    (tmp_path / "pre.yaml").write_text(f"inputs: [{data}]\noutput: {tmp_path / 'pre.h5'}\n")
    preprocess(PreprocessConfig.load(str(tmp_path / "pre.yaml")), progress=False, log=messages.append)
    assert any("growthRate(1|s) has" in m and "odd.h5" in m and "not used" in m for m in messages), messages
    with h5py.File(tmp_path / "pre.h5", "r") as handle:
        assert np.isnan(handle["growth_rate"][()]).all()


# -- 3. edited and re-signed checkpoints -------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch `dodo train` run: (its directory, its config, its final.pt)."""
    pytest.importorskip("torch")
    from cli_helpers import synthetic_preprocessed, tiny_train_config
    from dodo.cli import main

    root = tmp_path_factory.mktemp("round35")
    table = synthetic_preprocessed(root, 64)
    config = tiny_train_config(root, table, epochs=2)
    assert main(["train", "--config", str(config), "--set", "training.stop_after_epoch=1"]) == 0
    return root, config, root / "ck" / "last.pt"


def _edited(trained, tmp_path, edit):
    from dodo.training.train import load_checkpoint, save_checkpoint

    state = load_checkpoint(trained[2])
    edit(state)
    path = tmp_path / "edited.pt"
    save_checkpoint(state, path)  # the digest recomputed: the edit is not caught as corruption
    return path


def _nan_target_scale(state):
    state["target_scale"] = float("nan")


def _features_key(state):
    state["config"]["data"]["features"] = "all"


@pytest.mark.parametrize("edit, says", [(_nan_target_scale, "target_scale is nan"),
                                        (_features_key, "unknown key(s) ['features']")],
                         ids=["NaN target_scale", "data.features"])
@pytest.mark.parametrize("command", ["export", "evaluate", "inspect", "resume"])
def test_an_edited_resigned_checkpoint_is_refused_naming_it(trained, tmp_path, capsys, edit, says, command):
    """A checkpoint edited and signed anew: a NaN target_scale was blamed on the data file by
    evaluate and inspect (`pre.h5: 30 row(s) with non-finite values ... the file is damaged or was
    edited`) and ignored by export; an unknown data.features key was refused by evaluate and inspect
    but taken by `dodo export` and `dodo train --resume`. Now every command refuses the checkpoint
    the same way, naming it."""
    root, config, _ = trained
    path = _edited(trained, tmp_path, edit)
    argv = {"export": ["export", str(path), "-o", str(tmp_path / "m.onnx"), "--no-check"],
            "evaluate": ["evaluate", str(path)],
            "inspect": ["inspect", str(path)],
            "resume": ["train", "--config", str(config), "--resume", str(path),
                       "--set", f"output.checkpoint_dir={tmp_path / 'ck2'}",
                       "--set", f"output.results_dir={tmp_path / 'res2'}"]}[command]
    code, out, err = run(capsys, argv)
    assert code != 0, out
    assert "edited.pt" in err and says in err and "pre.h5" not in err.split("edited.pt", 1)[0], err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "ck2" / "final.pt").exists()


def test_an_unedited_checkpoint_still_exports_and_evaluates(trained, tmp_path, capsys):
    """Guard: the run's own checkpoint passes the new checks (export, evaluate)."""
    _, _, last = trained
    code, _, err = run(capsys, ["export", str(last), "-o", str(tmp_path / "m.onnx"), "--no-check"])
    assert code == 0, err
    code, _, err = run(capsys, ["evaluate", str(last)])
    assert code == 0, err


# -- growth-label files (train-ensemble's growth.data) --------------------------------------------------------

def _label_file(path, F, rates):
    from dodo.qke.growth_labels import KIND

    with h5py.File(path, "w") as handle:
        handle.attrs["kind"] = KIND
        handle["F4_initial(1|ccm)"] = F
        handle["linear_growthRate_box(1|s)"] = rates
        handle["nf"] = 3
    return path


def test_growth_label_files_with_a_rate_too_few_and_too_many_are_refused(tmp_path):
    """Two growth-label files of 20 states, with 19 and 21 linear rates: `growth_label_table` (dodo
    train-ensemble's growth.data) joined them into 40 rows, the second file's labels one state off,
    without a word. Now the first is refused, naming it; a [n, 1] column is read as [n] (it ended in
    NumPy's "all the input arrays must have same number of dimensions")."""
    import dodo
    from dodo.training.ensemble_train import growth_label_table

    source = _synth(tmp_path, 40)
    with h5py.File(source, "r") as handle:
        F, rates = handle["F4_initial(1|ccm)"][()], np.abs(handle["growthRate(1|s)"][()]) + 1e9
    _label_file(tmp_path / "a.h5", F[:20], rates[:19])
    _label_file(tmp_path / "b.h5", F[20:], rates[19:])
    with pytest.raises(ValueError, match=r"a\.h5: 'linear_growthRate_box\(1\|s\)' has shape \(19,\) for 20 states"):
        growth_label_table([str(tmp_path / "[ab].h5")], [], dodo.box3d_settings(), 1.0)
    _label_file(tmp_path / "a.h5", F[:20], rates[:20, None])
    _label_file(tmp_path / "b.h5", F[20:], rates[20:])
    column = growth_label_table([str(tmp_path / "[ab].h5")], [], dodo.box3d_settings(), 1.0)
    _label_file(tmp_path / "a.h5", F[:20], rates[:20])
    assert np.array_equal(column["log_growth"], growth_label_table([str(tmp_path / "[ab].h5")], [],
                                                                     dodo.box3d_settings(), 1.0)["log_growth"])


def test_simulate_input_with_nf_that_contradicts_the_flavour_axis_is_refused(tmp_path):
    """`dodo simulate --input F` (qke.states.read_states) of a database saying `nf = 2` beside
    three-flavour arrays ran its states as three-flavour ones, as score and apply read them."""
    from dodo.qke.states import read_states

    data = _copy_with(_synth(tmp_path), tmp_path / "nf.h5", nf=2)
    with pytest.raises(ValueError, match=r"nf\.h5: dataset 'nf' is 2 but .* \(24, 4, 2, 3\), 3 flavours"):
        read_states(str(data))
    assert len(read_states(str(_synth(tmp_path)))["four_flux"]) == 24


@pytest.mark.parametrize("measured, linear", [(30, 29), (30, 1)], ids=["29 linear rates", "1 linear rate"])
def test_growth_calibration_of_a_solver_file_with_rates_of_other_lengths_names_it(tmp_path, measured, linear):
    """`growth_calibration` (train-ensemble with growth.relabelled) of a solver file holding 30
    measured and 29 (or 1) linear rates ended in NumPy's `operands could not be broadcast together with
    shapes (30,) (29,)` or a boolean-index IndexError, naming no file. A [n, 1] column is read as [n]."""
    from dodo.training.ensemble_train import growth_calibration

    path = tmp_path / "solver.h5"
    with h5py.File(path, "w") as handle:
        handle["growthRate(1|s)"] = np.full(measured, 2.0)
        handle["linear_growthRate_box(1|s)"] = np.full(linear, 1.0)
    with pytest.raises(ValueError, match=r"solver\.h5: 'growthRate\(1\|s\)' has shape \(30,\) and "
                                         rf"'linear_growthRate_box\(1\|s\)' \({linear},\)"):
        growth_calibration([str(path)])
    column = tmp_path / "column.h5"
    with h5py.File(column, "w") as handle:
        handle["growthRate(1|s)"] = np.full((30, 1), 2.0)
        handle["linear_growthRate_box(1|s)"] = np.full(30, 1.0)
    assert growth_calibration([str(column)]) == 2.0


def _nan_weight(state):
    import torch

    name = next(key for key, value in state["model_state"].items() if torch.is_floating_point(value))
    state["model_state"][name] = torch.full_like(state["model_state"][name], float("nan"))


@pytest.mark.parametrize("command", ["evaluate", "inspect"])
def test_evaluate_and_inspect_refuse_a_network_that_is_not_finite(trained, tmp_path, capsys, command):
    """A checkpoint whose network holds NaN (a normalisation buffer, a weight; edited and re-signed):
    `dodo evaluate` and `dodo inspect` reported NaN metrics, exit 0 (inspect with NumPy's all-NaN
    warning), where `dodo export` refused it. Now one line naming the checkpoint and the entry."""
    path = _edited(trained, tmp_path, _nan_weight)
    refused(capsys, [command, str(path)], "edited.pt", "is not finite", "NaN or infinite")


def test_a_null_growth_rate_is_noted_by_score_as_by_preprocess(tmp_path, capsys):
    """growthRate(1|s) with a null dataspace (h5py.Empty): `dodo preprocess` stored NaN rates (now
    with a note) while `dodo score` refused the whole file (`dataset 'growthRate(1|s)' has a null
    dataspace`), though it scores without growth rates. Both now note it and go on."""
    data = _copy_with(_synth(tmp_path), tmp_path / "null.h5", **{"growthRate(1|s)": h5py.Empty("f8")})
    code, out, err = run(capsys, ["score", "box3d", str(data), "--bootstrap", "100"])
    assert code == 0, err
    assert "null.h5: growthRate(1|s) has a null dataspace" in out and "not used" in out
    assert _preprocess(tmp_path, data) == 0
    assert "null.h5: growthRate(1|s) has a null dataspace" in capsys.readouterr().out
