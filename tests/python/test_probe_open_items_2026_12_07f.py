"""Open items of data-loss round fourteen and training round three (outside probe follow-up, section 118 of
docs/reliability_python.md): a `dodo train` whose run directory is moved, the output lock left in a moved
directory, `dodo study` setting a whole section to null, `dodo evaluate --split all` of the training file
under data.max_samples, and a mapping given for a whole section. Each test fails on the code before its fix."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_helpers import run, synthetic_preprocessed, tiny_study_base, tiny_train_config

# --- dodo train whose run directory is moved (renamed) while it trains ----------------------------------------


def _move_after_first_epoch(monkeypatch, tree: Path, moved: Path, make_again: bool = False) -> None:
    """After epoch 1's best.pt and last.pt, the user renames the run's directory (``mv tr tr2``), and with
    ``make_again`` makes tr/ck and tr/res again."""
    import dodo.training.train as training

    saved, calls = training.save_checkpoint, []

    def save_then_move(state, path, *args, **kwargs):
        saved(state, path, *args, **kwargs)
        calls.append(path)
        if len(calls) == 2:
            os.rename(tree, moved)
            if make_again:
                (tree / "ck").mkdir(parents=True)
                (tree / "res").mkdir()

    monkeypatch.setattr(training, "save_checkpoint", save_then_move)


def test_a_train_run_whose_directory_is_moved_says_where_it_is_and_that_its_last_pt_resumes(tmp_path, capsys,
                                                                                         monkeypatch):
    """Before: `dodo train: error: [Errno 2] No such file or directory: 'tr/res/train.log'`, exit 2, and
    .train.log.lock left in the moved tr2/res. Now one line: the directory was moved, where it is now, the
    epoch of the last.pt kept there and the two ways to resume; no lock left; the advice resumes the run."""
    table = synthetic_preprocessed(tmp_path, 200)
    tree, moved = tmp_path / "tr", tmp_path / "tr2"
    config = tiny_train_config(tmp_path, table, epochs=3, outputs=tree)
    _move_after_first_epoch(monkeypatch, tree, moved)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and "Errno" not in err, err
    line = lines[-1]
    assert f"its directory {tree / 'ck'} was moved or renamed (it is now {moved / 'ck'})" in line, line
    assert f"{tree / 'res'} was moved or renamed (it is now {moved / 'res'})" in line, line
    assert "stopped after epoch 1" in line and f"--resume {moved / 'ck' / 'last.pt'}" in line, line
    assert not tree.exists()
    assert sorted(p.name for p in (moved / "res").iterdir()) == ["train.log"]  # no .train.log.lock left
    monkeypatch.undo()
    advice = line.split("resume it where it is now: dodo train ")[1].split()
    code, _, err = run(capsys, ["train", *advice])
    assert code == 0, err
    assert "resumed from" in (moved / "res" / "train.log").read_text() and (moved / "ck" / "final.pt").is_file()


def test_a_train_run_whose_directory_is_moved_and_made_again_writes_nothing_into_the_new_one(tmp_path, capsys,
                                                                                            monkeypatch):
    """Before: `mv tr tr2; mkdir -p tr/ck tr/res` between epochs, and the run went on in the new directories
    (a train.log of its later epochs, best.pt, last.pt, final.pt there, outside its lock). Now it stops and
    says both directories moved and another made in their place; the new ones stay empty."""
    table = synthetic_preprocessed(tmp_path, 200)
    tree, moved = tmp_path / "tr", tmp_path / "tr2"
    config = tiny_train_config(tmp_path, table, epochs=3, outputs=tree)
    _move_after_first_epoch(monkeypatch, tree, moved, make_again=True)
    code, _, err = run(capsys, ["train", "--config", str(config)])
    assert code == 2 and "another directory made in its place" in err and "Traceback" not in err, err
    assert list((tree / "ck").iterdir()) == [] and list((tree / "res").iterdir()) == []
    assert (moved / "ck" / "last.pt").is_file()


def test_a_train_run_whose_directory_stays_is_not_stopped(tmp_path, capsys):
    """Guard: a run whose directories stay where they are trains to the end."""
    table = synthetic_preprocessed(tmp_path, 200)
    config = tiny_train_config(tmp_path, table, epochs=2, outputs=tmp_path / "tr")
    code, _, err = run(capsys, ["train", "--config", str(config)])
    assert code == 0 and (tmp_path / "tr" / "ck" / "final.pt").is_file(), err


# --- an output's lock in a directory moved while the command runs ---------------------------------------------


def test_an_output_lock_is_removed_where_its_directory_went(tmp_path):
    """Before: `dodo simulate d/OUT` whose directory was moved left .OUT.lock in the moved directory (removed
    by its old path, which was gone). Now it is removed where the directory went."""
    from dodo._atomic import exclusive_output

    directory, moved = tmp_path / "d", tmp_path / "d2"
    directory.mkdir()
    with exclusive_output(directory / "out.h5", "dodo simulate"):
        os.rename(directory, moved)
    assert list(moved.iterdir()) == []


def test_an_output_lock_leaves_the_lock_of_a_directory_made_in_its_place(tmp_path):
    """Before: moved and made again, with another process's lock of the same name in the new directory: the
    lock was removed by its path, the other's lock, not its own. Now its own goes, the other stays."""
    from dodo._atomic import exclusive_output

    directory, moved = tmp_path / "d", tmp_path / "d2"
    directory.mkdir()
    with exclusive_output(directory / "out.h5", "dodo simulate"):
        os.rename(directory, moved)
        directory.mkdir()
        (directory / ".out.h5.lock").write_text("12345\ndodo simulate")
    assert (directory / ".out.h5.lock").read_text() == "12345\ndodo simulate"
    assert list(moved.iterdir()) == []


def test_a_write_into_a_locked_directory_moved_and_made_again_says_where_it_went(tmp_path):
    """Before: `mv d d2; mkdir d` under `dodo simulate d/OUT` (between two writes): the next checkpoint went
    into the new d. Now refused, naming where d is now and the new directory in its place."""
    from dodo._atomic import OutputPathError, atomic_path, check_outputs, exclusive_output, outputs_as_found

    directory, moved = tmp_path / "d", tmp_path / "d2"
    directory.mkdir()
    output = directory / "out.txt"
    output.write_text("x")
    with outputs_as_found():
        check_outputs([output])
        with exclusive_output(output, "dodo simulate"):
            os.rename(directory, moved)
            directory.mkdir()
            with pytest.raises(OutputPathError) as caught:
                with atomic_path(output) as temporary:
                    temporary.write_text("y")
    assert f"(it is now {moved}) and another directory made in its place" in str(caught.value)
    assert list(directory.iterdir()) == [] and (moved / "out.txt").read_text() == "x"


# --- dodo study with a section set to null ---------------------------------------------------------------------


@pytest.mark.parametrize("grid_text, named", [
    ("overrides: {model: null}\ngrid: {training.lr: [1.0e-3]}", "overrides model: null"),
    ("grid: {model: [null]}", "grid model: null"),
    ("overrides: {data: {box3d: null}}\ngrid: {training.lr: [1.0e-3]}", "overrides data.box3d: null"),
    ("overrides: {training: {}}\ngrid: {model.hidden_dim: [4]}", "overrides training: {}"),
])
def test_a_study_that_sets_a_whole_section_to_null_is_refused(tmp_path, capsys, grid_text, named):
    """Before: `overrides: {model: null}` (a grid value null, a nested section null, or {}) replaced the base
    config's section by its defaults without a word (a 128-wide model in every run). Now refused as
    `--set model=null` is: one line naming the key and how to set it."""
    tiny_study_base(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text(f"base_config: base.yaml\noutput_root: {tmp_path / 'out'}\n{grid_text}\n")
    code, out, err = run(capsys, ["study", str(grid), "--dry-run"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and named in lines[0] and "would replace the whole" in lines[0], err + out
    assert not (tmp_path / "out").exists()


def test_a_mapping_given_for_a_section_keeps_its_other_keys(tmp_path):
    """Before: `--set 'training={epochs: 2}'` (or a study's `overrides: {training: {epochs: 2}}`) replaced the
    config's training section, its threads and log_interval falling back to their defaults without a word.
    Now the mapping is merged key by key, each of its keys checked as its own override; `--set training={}`
    (or a section null inside the mapping) is refused as null is."""
    from dodo.training.config import ConfigError, ExperimentConfig

    table = synthetic_preprocessed(tmp_path, 50)
    config = tiny_train_config(tmp_path, table, epochs=5)
    loaded = ExperimentConfig.load(config, {"training": {"epochs": 2}}, create_dirs=False)
    assert (loaded.training.epochs, loaded.training.threads, loaded.training.log_interval) == (2, 1, 1000)
    with pytest.raises(ConfigError, match=r"override training \(--set\): .*would replace the whole training section"):
        ExperimentConfig.load(config, {"training": {}}, create_dirs=False)
    # A section null inside the mapping (`--set 'data={box3d: null}'`) is refused as `--set data.box3d=null` is.
    with pytest.raises(ConfigError, match=r"override data\.box3d \(--set\): .*would replace the whole data\.box3d"):
        ExperimentConfig.load(config, {"data": {"box3d": None}}, create_dirs=False)


# --- dodo evaluate --split all of the training file under data.max_samples --------------------------------------


def test_evaluate_split_all_of_the_training_file_says_how_many_rows_max_samples_left_out(tmp_path, capsys):
    """Before: `dodo evaluate CKPT --split all` (and `dodo inspect`) of a run with data.max_samples 60 of a 200-row
    file scored the run's 60 rows as split 'all' without saying the file holds 140 more. Now a note (the table,
    and stderr with --json -) and JSON rows_left_out; a run of every row says nothing."""
    import json

    table = synthetic_preprocessed(tmp_path, 200)
    config = tiny_train_config(tmp_path, table, epochs=1)
    code, _, err = run(capsys, ["train", "--config", str(config), "--set", "data.max_samples=60"])
    assert code == 0, err
    best = tmp_path / "ck" / "best.pt"
    code, out, err = run(capsys, ["evaluate", str(best), "--split", "all"])
    assert code == 0, err
    assert (f"note: split 'all' is the run's 60 rows (data.max_samples: 60) of the 200 in {table}; the other 140 "
            "are in no split") in out, out
    code, out, err = run(capsys, ["evaluate", str(best), "--split", "all", "--json", "-"])
    assert code == 0 and "the other 140 are in no split" in err, err
    assert json.loads(out)["rows_left_out"] == {"rows": 60, "file_rows": 200, "left_out": 140, "max_samples": 60}
    code, out, err = run(capsys, ["inspect", str(best), "--split", "all"])  # inspect says it as evaluate does
    assert code == 0 and out.startswith("60 cells, split 'all'") and "the other 140 are in no split" in out, out
    code, _, err = run(capsys, ["train", "--config", str(config), "--overwrite"])
    assert code == 0, err
    code, out, err = run(capsys, ["evaluate", str(best), "--split", "all"])
    assert code == 0 and "no split" not in out, out


# --- train-ensemble with a worker process suspended ---------------------------------------------------------------


def stopping_fit(X, seed):
    """A fit whose worker stops itself (SIGSTOP: a batch system's suspend) before it starts, for seed 2."""
    import signal

    import torch

    if seed == 2:
        os.kill(os.getpid(), signal.SIGSTOP)
    return torch.nn.Linear(1, 1)


def test_an_ensemble_worker_that_is_stopped_is_named_with_how_to_continue_it(monkeypatch):
    """Before: fit_members (dodo train-ensemble's ensemble.processes) waited for a stopped worker without a
    word, for ever. Now it says which fit waits, the worker's pid and kill -CONT; continued (here by the log's
    reader, on that line), the fits finish."""
    import re
    import signal

    import numpy as np

    import dodo.training.member_processes as members

    monkeypatch.setattr(members, "STOPPED_CHECK_S", 0.05)
    lines = []

    def log(line):
        lines.append(line)
        found = re.search(r"kill -CONT (\d+)", line)
        if found:
            os.kill(int(found.group(1)), signal.SIGCONT)

    fits = members.fit_members(stopping_fit, {"X": np.zeros((4, 2))}, [{"seed": 1}, {"seed": 2}], processes=2, log=log)
    assert len(fits) == 2
    stopped = [line for line in lines if "is stopped" in line]
    assert len(stopped) == 1 and stopped[0].startswith("waiting for fit 2 of 2: its worker process (pid "), lines


def test_an_ensemble_whose_other_fit_fails_while_a_worker_is_stopped_ends(monkeypatch):
    """Before: a fit failing while another worker was stopped ended in terminate() and a join() that waited for
    ever (a stopped process keeps SIGTERM pending). Now the stopped worker is continued to take it: the error
    is raised and no worker is left."""
    import multiprocessing

    import numpy as np

    import dodo.training.member_processes as members

    import signal
    import threading

    monkeypatch.setattr(members, "STOPPED_CHECK_S", 0.05, raising=False)
    outcome = []

    def call():
        try:
            members.fit_members(stopping_or_failing_fit, {"X": np.zeros((4, 2))}, [{"seed": 8}, {"seed": 2}],
                                processes=2, log=lambda line: None)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 (handed to the test's thread)
            outcome.append(error)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(60)  # a hang guard only: the call ends within seconds
    if caller.is_alive():  # the old code: join() waits for the stopped worker; continue it so that it ends
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGCONT)
        caller.join(60)
        pytest.fail("fit_members waited for a stopped worker after another fit failed")
    assert isinstance(outcome[0], RuntimeError), outcome
    assert "fit 1 of 2 failed in its worker process: ValueError: no member for seed 8" in str(outcome[0])
    assert not [child for child in multiprocessing.active_children() if child.name.startswith("dodo-member-")]


def stopping_or_failing_fit(X, seed):
    """seed 2: stops itself (SIGSTOP); seed 8: fails once the seed-2 worker is stopped (seen in /proc)."""
    import signal

    import torch

    if seed == 2:
        os.kill(os.getpid(), signal.SIGSTOP)
        return torch.nn.Linear(1, 1)
    # Wait (by /proc, no timing) until the other worker, a sibling under the same parent, is stopped.
    parent = os.getppid()
    while True:
        siblings = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
        for pid in siblings:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] in (b"T", b"t") and int(fields[1]) == parent:
                raise ValueError(f"no member for seed {seed}")
        os.sched_yield()


# --- train-ensemble whose checkpoint directory is moved while it trains (fresh probe) ------------------------------


def test_a_write_into_a_moved_locked_directory_is_refused_though_the_file_was_never_there(tmp_path):
    """Before: `dodo train-ensemble` (output.checkpoint ens/e.pt) whose directory was moved while it trained wrote
    e.pt into a directory made again at ens, outside the run's lock (which went with ens2), exit 0. Now a write
    into a directory whose lock this process holds is refused once the directory is not at its path, found file
    or not."""
    from dodo._atomic import OutputPathError, atomic_path, exclusive_directory

    directory, moved = tmp_path / "ens", tmp_path / "ens2"
    with exclusive_directory(directory, "dodo train-ensemble"):
        os.rename(directory, moved)
        said = f"its directory {directory} was moved or renamed \\(it is now {moved}\\) while this command ran"
        with pytest.raises(OutputPathError, match=said):
            with atomic_path(directory / "e.pt") as temporary:
                temporary.write_text("x")
    assert not directory.exists()


def test_train_ensemble_whose_checkpoint_directory_is_moved_writes_no_checkpoint_elsewhere(tmp_path, capsys,
                                                                                         monkeypatch):
    """The command: the directory renamed at the end of training (just before the checkpoint is written); one
    line saying it moved and where, nothing made at the old path."""
    import h5py

    from cli_helpers import REPO
    from dodo.qke.growth_labels import KIND

    emu = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"
    table = tmp_path / "emu.h5"
    code, _, err = run(capsys, ["preprocess", "--config", str(REPO / "training" / "configs" / "pre_process_qke.yaml"),
                                "--set", f"inputs=[{str(emu)!r}]", "-o", str(table), "-q"])
    assert code == 0, err
    labels = tmp_path / "labels.h5"
    with h5py.File(emu, "r") as source, h5py.File(labels, "w") as out:
        out.attrs["kind"] = KIND
        out["F4_initial(1|ccm)"] = source["F4_initial(1|ccm)"][...] * 1.01
        out["linear_growthRate_box(1|s)"] = source["linear_growthRate_box(1|s)"][...]
    directory, moved = tmp_path / "ens", tmp_path / "ens2"
    move_during_the_checkpoint(monkeypatch, directory, moved)
    code, _, err = run(capsys, [
        "train-ensemble", "--config", str(REPO / "training" / "configs" / "ensemble_default.yaml"),
        "--set", f"data.path={table}", "--set", "data.holdout=[]", "--set", "noise.weight=0", "--set", "noise.oof=",
        "--set", "distill.sampled_states=0", "--set", "ensemble.members=2", "--set", "ensemble.epochs=2",
        "--set", "growth.members=1", "--set", "growth.epochs=2", "--set", "distill.epochs=2",
        "--set", f"growth.data=[{str(labels)!r}]", "--set", f"output.checkpoint={directory / 'e.pt'}"])
    assert code == 2 and f"its directory {directory} was moved or renamed (it is now {moved})" in err, err
    assert "another directory made in its place" not in err and not directory.exists()


def test_a_study_grid_of_section_mappings_keeps_the_overrides_of_other_keys(tmp_path, capsys):
    """Before: `grid: {training: [{lr: 1e-3}, {lr: 2e-3}]}` beside `overrides: {training.epochs: 2}` was refused
    ("each run would take the grid's value and drop the override"), the mapping then replacing the section.
    Now the mapping is merged into the section: accepted, each run with epochs 2, the grid's lr and the base's
    threads; the same key in both is still refused."""
    from dodo.training.config import ExperimentConfig, merge_dotted, read_yaml_mapping
    from dodo.training.study import grid_points, load_grid

    tiny_study_base(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text(f"base_config: base.yaml\noutput_root: {tmp_path / 'out'}\noverrides: {{training.epochs: 2}}\n"
                    "grid: {training: [{lr: 1.0e-3}, {lr: 2.0e-3}]}\n")
    code, _, err = run(capsys, ["study", str(grid), "--dry-run"])
    assert code == 0, err
    spec = load_grid(grid)
    runs = [ExperimentConfig.from_mapping(merge_dotted(read_yaml_mapping(spec["base_config"]),
                                                       {**spec["overrides"], **point})).training
            for point in grid_points(spec["grid"])]
    assert [(t.epochs, t.lr, t.threads, t.log_interval) for t in runs] == [(2, 1e-3, 1, 1000), (2, 2e-3, 1, 1000)]
    grid.write_text(f"base_config: base.yaml\noutput_root: {tmp_path / 'out'}\n"
                    "overrides: {training: {lr: 3.0e-3}}\ngrid: {training: [{lr: 1.0e-3}]}\n")
    code, _, err = run(capsys, ["study", str(grid), "--dry-run"])
    assert code == 2 and "training.lr is set by both overrides and grid" in err, err


def move_during_the_checkpoint(monkeypatch, directory, moved) -> None:
    """train-ensemble's run directory renamed to `moved` while its checkpoint's contents are put together
    (dodo_version is asked then), before the checkpoint is written."""
    import dodo.training.ensemble_train as ensemble_train

    version = ensemble_train._dodo_version

    def move_then_version():
        if directory.exists():
            os.rename(directory, moved)
        return version()

    monkeypatch.setattr(ensemble_train, "_dodo_version", move_then_version)
